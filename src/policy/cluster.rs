//! `[cluster]` (SPEC §8): several instances share one policy; the lease holder alone mints.

use std::time::Duration;

use super::diag::Diagnostics;
use super::reader::TableReader;
use super::{Named, SinkConfig, MAX_NAME_CHARS};

pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Renewed every third of it, so below this the renewals would hammer the store.
const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);
/// A dead holder is replaced within `lease_duration` plus a renew period: longer leaves tokens unattended.
const MAX_LEASE_DURATION: Duration = Duration::from_secs(600);

/// The `[cluster]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// A `[sinks.X]` that can hold the lease (a Vault/OpenBao KV v2 mount).
    pub store: String,
    /// The lease is `<path>/lease`, the shared journal `<path>/journal/<token>`.
    pub path: String,
    pub lease_duration: Duration,
    /// Shown in logs, `/readyz` and the lease; `None`: the host name and process id.
    pub identity: Option<String>,
}

impl ClusterSettings {
    /// The holder renews this often.
    pub fn renew_every(&self) -> Duration {
        self.lease_duration / 3
    }

    /// A holder that could not renew for this long starts no issuer call and no sink write.
    pub fn fence_after(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// Reads `[cluster]` (`None`: absent or invalid, the problems reported).
pub(super) fn read_cluster(
    root: &mut TableReader,
    d: &mut Diagnostics,
    sinks: &Named<SinkConfig>,
) -> Option<ClusterSettings> {
    let mut t = root.opt_table(d, "cluster")?;
    t.name = "[cluster]".into();
    let store = t.req_str(d, "store").and_then(|s| {
        match sinks.get(s.get_ref()) {
            None => {
                d.push(
                    s.span(),
                    format!(
                        "`store` names no sink: \"{}\" is not a [sinks.*] table",
                        s.get_ref()
                    ),
                );
                None
            }
            // An invalid sink table was reported already.
            Some((_, None)) => None,
            Some((_, Some(cfg))) => match cfg.spec.coordination(cfg.settings.as_ref()) {
                Ok(()) => Some(s.into_inner()),
                Err(why) => {
                    d.push(s.span(), format!("`store = \"{}\"`: {why}", s.get_ref()));
                    None
                }
            },
        }
    });
    let path = t.req_str(d, "path").and_then(|p| {
        let text = p.get_ref().trim_matches('/');
        if text.is_empty() {
            d.push(p.span(), "`path` must not be empty");
            None
        } else if text
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            d.push(
                p.span(),
                "`path` must be a KV path such as \"token-rotator/prod\" (no empty, `.` or `..` segments)",
            );
            None
        } else if text.chars().any(char::is_control) {
            d.push(p.span(), "`path` must not contain control characters");
            None
        } else {
            Some(text.to_string())
        }
    });
    let lease_duration = match t.opt_duration(d, "lease_duration") {
        None => Some(DEFAULT_LEASE_DURATION),
        Some(l) if *l.get_ref() < MIN_LEASE_DURATION || *l.get_ref() > MAX_LEASE_DURATION => {
            d.push(
                l.span(),
                "`lease_duration` must be between 3s and 10m (the holder renews every third of it)",
            );
            None
        }
        Some(l) => Some(l.into_inner()),
    };
    let identity = match t.opt_str(d, "identity") {
        None => Some(None),
        Some(i) => {
            let text = i.get_ref();
            if text.is_empty()
                || text.chars().count() > MAX_NAME_CHARS
                || text.chars().any(char::is_control)
            {
                d.push(
                    i.span(),
                    format!("`identity` must be 1 to {MAX_NAME_CHARS} characters without control characters"),
                );
                None
            } else {
                Some(Some(i.into_inner()))
            }
        }
    };
    t.finish(d);
    Some(ClusterSettings {
        store: store?,
        path: path?,
        lease_duration: lease_duration?,
        identity: identity?,
    })
}
