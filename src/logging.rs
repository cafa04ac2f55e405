//! Logs to stderr, `text` or `json`, filtered by `RUST_LOG` (default `info`, the Vault client's internals at `warn`).

use tracing_subscriber::EnvFilter;

use crate::policy::LogFormat;

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// Like `init`, with another default level when `RUST_LOG` is unset.
pub fn init_with_default(format: LogFormat, default: &str) {
    // The Vault client's HTTP layer (rustify, under vaultrs) opens `#[instrument]` spans at INFO on every request:
    // not ours to show at `info`, and their field formatting was a measurable part of a rotation's CPU.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},rustify=warn,vaultrs=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests running several commands in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
