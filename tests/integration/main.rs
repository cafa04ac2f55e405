//! The one integration-test binary: real OpenBao, the in-repo TFC emulator, and the daemon as a process.

mod harness;
mod policy_check;
mod rotation;
