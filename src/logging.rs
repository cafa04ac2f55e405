//! Logs to stderr, `text` or `json`, filtered by `RUST_LOG` (default `info`, the Vault client's internals off).

use tracing_subscriber::EnvFilter;

use crate::policy::LogFormat;

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// The filter: `RUST_LOG` (else `default`), with the Vault client's targets off unless `RUST_LOG` names them.
fn directives(rust_log: Option<&str>, default: &str) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default);
    if base.contains("rustify") || base.contains("vaultrs") {
        base.to_string()
    } else {
        format!("{base},rustify=off,vaultrs=off")
    }
}

/// Like `init`, with another default level when `RUST_LOG` is unset.
pub fn init_with_default(format: LogFormat, default: &str) {
    // The Vault client's HTTP layer (rustify, under vaultrs) opens `#[instrument]` spans at INFO on every request,
    // and logs every non-2xx answer at ERROR with no context ("Server returned error" for each expected 404 of a
    // record not yet written), in text we never redact (Vault's error strings). Our sink code reports each failure
    // itself, located and redacted, so theirs are off unless RUST_LOG names them (a unit's `RUST_LOG=info` does not).
    let filter = EnvFilter::new(directives(
        std::env::var("RUST_LOG").ok().as_deref(),
        default,
    ));
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

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn the_vault_clients_logs_stay_off_unless_rust_log_names_them() {
        assert_eq!(directives(None, "info"), "info,rustify=off,vaultrs=off");
        // The systemd unit sets RUST_LOG=info: still off.
        assert_eq!(
            directives(Some("info"), "warn"),
            "info,rustify=off,vaultrs=off"
        );
        assert_eq!(
            directives(Some(" "), "warn"),
            "warn,rustify=off,vaultrs=off"
        );
        assert_eq!(
            directives(Some("debug,vaultrs=debug"), "info"),
            "debug,vaultrs=debug"
        );
    }
}
