//! token-rotator: regenerates HCP Terraform / TFE and Pulumi Cloud tokens before they expire, stores them in
//! Vault/OpenBao KV, AWS Secrets Manager or files, proves them, and exposes Prometheus metrics. See ARCHITECTURE.md
//! for the map, the layers and the invariants.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod daemon;
pub mod http;
pub mod issuer;
pub mod journal;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod notify;
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

/// Every issuer and sink kind this build knows, for reading policies (`policy::load`).
pub fn kinds() -> policy::Kinds {
    policy::Kinds {
        issuers: issuer::specs(),
        sinks: sink::specs(),
    }
}
