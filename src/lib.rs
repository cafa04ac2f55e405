//! token-rotator: regenerates HCP Terraform / TFE tokens before they expire, stores them in Vault/OpenBao,
//! proves them, and exposes Prometheus metrics. See ARCHITECTURE.md for the map and the invariants.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod commands;
pub mod daemon;
pub mod http;
pub mod issuer;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod online;
pub mod policy;
pub mod record;
pub mod redact;
pub mod retry;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod status;
