//! Strict local emulators of the HCP Terraform / Terraform Enterprise and Pulumi Cloud token APIs, and of the GitHub
//! Actions secrets API.
//!
//! They exist so that tests and the demo exercise token-rotator against something that behaves like the real
//! services (status codes, headers, JSON bodies, token validity), on loopback only.
#![forbid(unsafe_code)]

pub mod clock;
pub mod github;
pub mod pulumi;
pub mod tfc;
