//! The one integration-test binary: real OpenBao, the in-repo TFC emulator, and the daemon as a process.

mod canary;
mod cli_docs;
mod cluster;
mod crash;
mod delivery;
mod faults;
mod harness;
mod invariants;
mod notify;
mod operations;
mod ops;
mod policy_check;
mod pulumi;
mod rotation;
mod sinks;
mod tfc_types;
