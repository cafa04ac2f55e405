//! Several instances, one minter (SPEC §8, `[cluster]`).
//!
//! The instances share a lease: a record in the coordination store (Vault/OpenBao KV v2 today, [`LeaseStore`]),
//! changed only by check-and-set, so that its version is a fencing token. The holder renews it every
//! `lease_duration / 3`; a standby that sees the same version for a whole `lease_duration` takes it over (on its
//! own monotonic clock: the hosts' wall clocks are never compared). The holder's [`Fence`] opens issuer calls and
//! shared-sink writes only while its last renewal was sent less than `2/3 × lease_duration` ago, so a holder cut
//! off from the store, or paused past its lease, has stopped acting a third of a lease before anyone else can take
//! over. The shared journal lives in the same store, so a new holder resumes an interrupted rotation exactly where
//! the old one stopped.
//!
//! - `vault.rs`: [`vault::VaultCoord`], the lease and the journal entries in KV v2;
//! - `fenced.rs`: the issuer and sink wrappers that consult the fence before every call.

pub mod fenced;
pub mod vault;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::policy::ClusterSettings;
use crate::sink::{SinkError, SinkErrorKind};
use crate::status::StatusBoard;

/// What the lease record holds (JSON in the store): for the instances, and for an operator reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's identity; `None` once released (SIGTERM): a standby takes it at once.
    pub holder: Option<String>,
    /// A random nonce of the writing process: a process restarted with the same identity is another instance.
    #[serde(default)]
    pub instance: Option<String>,
    /// Wall-clock times, for people: instances compare versions, never these.
    pub renewed_at: DateTime<Utc>,
    pub lease_duration_s: u64,
    /// Written at release: the holder's visits all finished (none aborted), so no request of it is still on its
    /// way and the next holder need not wait out the quiet period.
    #[serde(default)]
    pub quiet: bool,
}

/// The lease as read: its record (`None`: never written or deleted) and its version (`0`: never written).
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub record: Option<LeaseRecord>,
    pub version: u64,
}

/// The coordination store's lease (the seam a Kubernetes `Lease` backend would implement; see ARCHITECTURE.md).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    async fn read_lease(&self) -> Result<LeaseView, SinkError>;
    /// Writes `record` if the lease is still at version `cas`; returns the new version. A mismatch is a
    /// [`SinkErrorKind::Conflict`] and writes nothing.
    async fn write_lease(&self, record: &LeaseRecord, cas: u64) -> Result<u64, SinkError>;
}

/// This instance's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Whether this instance may act now: the lease version it holds and when its last renewal was sent.
pub struct Fence {
    identity: String,
    /// This process's nonce in the lease record.
    instance: String,
    fence_after: Duration,
    held: Mutex<Option<(u64, Instant)>>,
    role: watch::Sender<Role>,
    /// A new holder sends no issuer request before this: the previous holder's last requests may still be on
    /// their way (each lives at most `http::REQUEST_TIMEOUT`).
    quiet_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("identity", &self.identity)
            .field("held", &self.held())
            .finish()
    }
}

/// Why the fence refused a call.
pub const NOT_HOLDER: &str = "this instance does not hold the cluster lease (a standby never calls an issuer or writes a shared sink)";

impl Fence {
    pub fn new(identity: String, fence_after: Duration) -> Arc<Fence> {
        Arc::new(Fence {
            identity,
            instance: format!("{:016x}", crate::clock::random_u64()),
            fence_after,
            held: Mutex::new(None),
            role: watch::channel(Role::Standby).0,
            quiet_until: Mutex::new(None),
        })
    }

    /// Until when a new holder holds its issuer requests back (`None`: not waiting).
    pub fn quiet_until(&self) -> Option<Instant> {
        let until = *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|u| *u > Instant::now())
    }

    /// Holds issuer requests back until `until` at least (never shortened: a wait already running for a
    /// predecessor's requests is not cut by a later, shorter one).
    fn extend_quiet_until(&self, until: Instant) {
        let mut q = self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        *q = Some(q.map_or(until, |old| old.max(until)));
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lease version this instance holds, while its last renewal was sent less than `2/3 × lease_duration`
    /// ago. Checked before every issuer request and every shared-sink write.
    pub fn check(&self) -> Result<u64, &'static str> {
        match self.held() {
            Some((version, renewed)) if renewed.elapsed() < self.fence_after => Ok(version),
            _ => Err(NOT_HOLDER),
        }
    }

    /// Follows the role (the scheduler switches between minting and following).
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    fn held(&self) -> Option<(u64, Instant)> {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_held(&self, held: Option<(u64, Instant)>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }
}

/// The default identity: the host name and process id.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// The lease loop of one instance: acquire, renew, step down, release. Awaited by a task the daemon spawns.
pub struct LeaseKeeper {
    /// Set by the daemon before it stops the keeper: every visit finished (none aborted), so the release can say
    /// the next holder need not wait ([`LeaseRecord::quiet`]).
    pub drained: Arc<std::sync::atomic::AtomicBool>,
    pub store: Arc<dyn LeaseStore>,
    pub fence: Arc<Fence>,
    pub settings: ClusterSettings,
    pub metrics: Arc<Metrics>,
    pub board: StatusBoard,
}

/// A standby's warnings about the store: the first at once, then at most one a minute while it lasts (the runbook
/// greps for them; one a second would drown everything else).
#[derive(Default)]
struct Complaints {
    last: Option<Instant>,
}

impl Complaints {
    fn note(&mut self, what: &str, error: &str) {
        if self
            .last
            .is_none_or(|l| l.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(error = %error, "{what}");
            self.last = Some(Instant::now());
        }
    }

    fn clear(&mut self) {
        self.last = None;
    }
}

/// How long a release at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a holder that took the lease from another instance (which may have died with requests on their way)
/// waits before its first issuer request: the longest an issuer request lives, and a second.
pub const QUIET_PERIOD: Duration = Duration::from_secs(crate::http::REQUEST_TIMEOUT.as_secs() + 1);

impl LeaseKeeper {
    fn lease_record(&self, holder: bool) -> LeaseRecord {
        LeaseRecord {
            holder: holder.then(|| self.fence.identity.clone()),
            instance: Some(self.fence.instance.clone()),
            renewed_at: crate::clock::now(),
            lease_duration_s: self.settings.lease_duration.as_secs(),
            // Nothing of this process is on its way, nor of a predecessor it is still waiting out.
            quiet: !holder
                && self.drained.load(std::sync::atomic::Ordering::SeqCst)
                && self.fence.quiet_until().is_none(),
        }
    }

    /// Whether `record` was written by this process (its identity and its instance nonce: a restarted process with
    /// the same identity is another instance).
    fn is_mine(&self, record: &LeaseRecord) -> bool {
        record.holder.as_deref() == Some(self.fence.identity.as_str())
            && record.instance.as_deref() == Some(self.fence.instance.as_str())
    }

    /// Shows and counts a change of role. Journal writes held in memory stay: check-and-set on each entry decides
    /// whether they may still be written (only if no other instance wrote the entry since).
    fn become_(&self, role: Role, why: &str) {
        let before = self.fence.role();
        if role == Role::Standby {
            self.fence.set_held(None);
        }
        self.board.set_role(role.as_str());
        let m = self.metrics.cluster();
        m.leader.set(if role == Role::Leader { 1.0 } else { 0.0 });
        if before != role {
            m.transitions.inc();
            match role {
                Role::Leader => {
                    tracing::info!(identity = %self.fence.identity, "this instance holds the cluster lease: it mints from now on ({why})")
                }
                Role::Standby => {
                    tracing::warn!(identity = %self.fence.identity, "this instance is a standby: it mints nothing ({why})")
                }
            }
            self.fence.role.send_replace(role);
        }
    }

    /// Runs until `stop`; then releases the lease if held (a standby takes over at once).
    pub async fn run(&self, stop: CancellationToken) {
        let d = self.settings.lease_duration;
        let renew_every = self.settings.renew_every();
        let fence_after = self.settings.fence_after();
        // A standby looks at the lease this often: a released lease is taken within about a second.
        let poll = renew_every.min(Duration::from_secs(1));
        // The highest lease version seen: a replica that answers with an older one is lagging, not news.
        let mut last_seen: u64 = 0;
        // (standby) The version seen and since when.
        let mut watched: Option<(u64, Instant)> = None;
        // Since when lease reads have been older than `last_seen`.
        let mut lower_since: Option<Instant> = None;
        let mut complaints = Complaints::default();
        self.become_(Role::Standby, "starting");
        while !stop.is_cancelled() {
            if let Some((version, renewed)) = self.fence.held() {
                let due = renewed + renew_every;
                if Instant::now() < due {
                    // `biased` (here and below): polled in order, as in the scheduler's loop (a simulated seed
                    // replays exactly).
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    continue;
                }
                let sent = Instant::now();
                // A renewal answered after the fence closed is no use: it is not waited for beyond that.
                let left = fence_after.saturating_sub(renewed.elapsed());
                let answer = tokio::time::timeout(
                    left.max(Duration::from_millis(100)),
                    self.store.write_lease(&self.lease_record(true), version),
                )
                .await;
                match answer {
                    Ok(Ok(v)) => {
                        last_seen = last_seen.max(v);
                        self.fence.set_held(Some((v, sent)));
                        complaints.clear();
                    }
                    Ok(Err(e)) if e.kind == SinkErrorKind::Conflict => {
                        // Another instance took it, or an earlier renewal of ours landed and lost its answer: the
                        // standby branch reads the lease and, if the record is this process's, takes it again.
                        self.become_(Role::Standby, "the lease moved under a renewal");
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "the store did not answer in time".to_string(),
                        };
                        if renewed.elapsed() >= fence_after {
                            tracing::error!(error = %why, "cannot renew the cluster lease; stepping down: no issuer call and no sink write until it is renewed");
                            self.become_(Role::Standby, "the lease could not be renewed");
                        } else {
                            tracing::warn!(error = %why, "cannot renew the cluster lease; trying again");
                            tokio::select! {
                                biased;
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(poll.min(left)) => {}
                            }
                        }
                    }
                }
                continue;
            }
            // A standby.
            match tokio::time::timeout(d, self.store.read_lease()).await {
                Ok(Ok(view))
                    if view.version < last_seen
                        && lower_since.get_or_insert_with(Instant::now).elapsed() < d =>
                {
                    // A lagging replica, or the key was deleted or restored from a snapshot: believed after a
                    // whole lease of such answers.
                    tracing::debug!(
                        version = view.version,
                        last_seen,
                        "a lease read older than one already seen"
                    );
                }
                Ok(Ok(view)) => {
                    if lower_since.take().is_some() && view.version < last_seen {
                        tracing::warn!(
                            version = view.version,
                            last_seen,
                            "the lease's version went back (deleted, or restored from a snapshot); going on from it"
                        );
                    }
                    complaints.clear();
                    last_seen = view.version;
                    let mine = view.record.as_ref().is_some_and(|r| self.is_mine(r));
                    let free = view.record.as_ref().is_none_or(|r| r.holder.is_none());
                    // Released with every request of the old holder finished: no need to wait before acting.
                    let quiet = view.version == 0
                        || (free && view.record.as_ref().is_some_and(|r| r.quiet));
                    let expired = match watched {
                        Some((v, since)) if v == view.version => since.elapsed() >= d,
                        _ => {
                            watched = Some((view.version, Instant::now()));
                            false
                        }
                    };
                    if free || mine || expired {
                        let sent = Instant::now();
                        // Taking the lease from another instance, which may have left requests on their way (SPEC
                        // §8.1: a create in flight from the old holder must not meet one from the new): whatever
                        // becomes of this write, no issuer request before they have run out. Set before sending,
                        // so that a write that lands without its answer (taken again as ours) is covered too.
                        if !(mine || quiet) {
                            self.fence.extend_quiet_until(sent + QUIET_PERIOD);
                        }
                        match self
                            .store
                            .write_lease(&self.lease_record(true), view.version)
                            .await
                        {
                            Ok(v) if sent.elapsed() >= fence_after => {
                                // Acknowledged too late to act on (a store failing over): the next look finds
                                // the record this process's and takes it again, with a fresh clock.
                                tracing::warn!(after_ms = sent.elapsed().as_millis() as u64, "the store acknowledged the lease too late to act on it; taking it again");
                                last_seen = v;
                                watched = None;
                                continue;
                            }
                            Ok(v) => {
                                if let Some(until) = self.fence.quiet_until() {
                                    tracing::info!(quiet_s = until.saturating_duration_since(Instant::now()).as_secs(), "taking over from another instance: no issuer request before the previous holder's last ones have run out");
                                }
                                last_seen = v;
                                watched = None;
                                self.fence.set_held(Some((v, sent)));
                                let why = if mine {
                                    "took its own lease again"
                                } else if free {
                                    "the lease was free"
                                } else {
                                    "the holder stopped renewing"
                                };
                                self.become_(Role::Leader, why);
                                continue;
                            }
                            Err(e) if e.kind == SinkErrorKind::Conflict => {
                                tracing::debug!("another instance took the lease first");
                                watched = None;
                            }
                            Err(e) => {
                                complaints.note("cannot take the cluster lease", &e.to_string())
                            }
                        }
                    }
                }
                Ok(Err(e)) => complaints.note(
                    "cannot read the cluster lease; still a standby",
                    &e.to_string(),
                ),
                Err(_) => complaints.note(
                    "cannot read the cluster lease; still a standby",
                    "the store did not answer in time",
                ),
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        self.release().await;
    }

    /// At shutdown: a holder writes a released record (a standby takes over within a second or so).
    async fn release(&self) {
        let Some((version, _)) = self.fence.held() else {
            return;
        };
        self.become_(Role::Standby, "shutting down");
        match tokio::time::timeout(
            RELEASE_TIMEOUT,
            self.store.write_lease(&self.lease_record(false), version),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("released the cluster lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the cluster lease; a standby takes over when it expires")
            }
            Err(_) => tracing::warn!(
                "could not release the cluster lease in time; a standby takes over when it expires"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
