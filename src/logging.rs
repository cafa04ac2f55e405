//! Logs to stderr, `text` or `json`, filtered by `RUST_LOG` (default `info`, the Vault client's internals off).

use tracing_subscriber::EnvFilter;

use crate::policy::LogFormat;

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// Like `init`, with another default level when `RUST_LOG` is unset.
pub fn init_with_default(format: LogFormat, default: &str) {
    // The Vault client's HTTP layer (rustify, under vaultrs) opens `#[instrument]` spans at INFO on every request,
    // and logs every non-2xx answer at ERROR with no context ("Server returned error" for each expected 404 of a
    // record not yet written), in text we never redact (Vault's error strings). Our sink code reports each failure
    // itself, located and redacted, so theirs are off unless RUST_LOG asks for them.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},rustify=off,vaultrs=off")));
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
