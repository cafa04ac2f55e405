//! The one integration-test binary: real OpenBao, the in-repo TFC emulator, and the daemon as a process.

mod harness;
mod operations;
mod ops;
mod policy_check;
mod rotation;
mod tfc_types;
