//! The deadline loop: sleep until the earliest due token, wake on a completed visit, a reload, a `rotate` request
//! or shutdown. No polling while nothing is due. Visits are spawned into at most `MAX_CONCURRENT` places (an equal
//! share per issuer), at most one per token.

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::build::{build_rotator, Shared};
use super::control::{RotateRequest, RotateResult};
use crate::cluster::Role;
use crate::metrics::Metrics;
use crate::policy::{Policy, TokenPolicy};
use crate::rotation::{AttemptError, Failure, Rotator, Tended};
use crate::schedule;
use crate::status::{NextReason, StatusBoard};

/// How long in-flight rotations get to reach a journaled state after SIGTERM/SIGINT (SPEC §5.7).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most this many tokens are visited at once (issuers are paced separately). Visits beyond it are not even
/// spawned: a waiting task would hold its whole future (kilobytes) for as long as it waits.
const MAX_CONCURRENT: usize = 32;
/// Each issuer gets an equal share of them (`MAX_CONCURRENT` / issuers, at least this many), so that tokens queued
/// behind one issuer's pacer never take every place while the other issuers sit idle.
const MIN_CONCURRENT_PER_ISSUER: usize = 2;
/// Permanent failures are retried after this long, or on `rotate`.
const PERMANENT_RETRY: Duration = Duration::from_secs(3600);

/// Messages to the scheduler loop.
#[derive(Debug)]
pub enum Control {
    Reload(Box<Policy>),
}

/// What the loop listens to besides its timers and visits.
pub struct Inputs {
    pub cancel: CancellationToken,
    pub control: mpsc::Receiver<Control>,
    pub rotate: mpsc::Receiver<RotateRequest>,
}

/// A visit's token, whether it was a forced one, a standby's, and a liveness probe's, and its outcome.
type Visited = (Arc<str>, bool, bool, bool, Result<Tended, Failure>);

struct Slot {
    policy: Arc<TokenPolicy>,
    next_at: DateTime<Utc>,
    in_flight: bool,
    done: bool,
    force: bool,
    /// The jitter drawn for the current token (`jitter_for`), redrawn when the token changes.
    jitter: Duration,
    /// What is kept of the current token's id ([`crate::journal::id_digest`]): a collision only keeps a jitter
    /// that would have been redrawn.
    jitter_for: Option<u64>,
    /// After a failed attempt, no attempt before this (monotonic: a wall clock stepped forward must not cut a
    /// backoff short — after a create whose outcome is unknown, the next one comes only after it, SPEC §5.10).
    backoff_until: Option<tokio::time::Instant>,
    /// The next liveness probe of the current token (SPEC §10): the first visit at or after it probes, and only a
    /// visit that completed moves it on (a failed one leaves the probe due for the retry).
    verify_at: DateTime<Utc>,
    /// Whether the token was ready when its visit in flight started (`None`: its first visit in this process), so
    /// that a visit that leaves it not ready runs its `failed` actions (SPEC §9).
    ready_before: Option<bool>,
    /// A visit of this token completed in this process.
    visited: bool,
}

impl Slot {
    fn new(policy: Arc<TokenPolicy>, now: DateTime<Utc>) -> Self {
        Slot {
            policy,
            // At the first visit (a token revoked while the daemon was down is found at start-up), then on whole
            // minutes one interval apart, so that the tokens taken on together share their wake-ups with their
            // drift checks. The issuer's pacer spreads the probes themselves.
            verify_at: now,
            next_at: now,
            in_flight: false,
            done: false,
            force: false,
            jitter: Duration::ZERO,
            jitter_for: None,
            backoff_until: None,
            ready_before: None,
            visited: false,
        }
    }

    /// When this slot is next due, on the wall clock: its schedule, or later while it backs off.
    fn due_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.backoff_until {
            Some(until) if !self.force => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                self.next_at.max(after(now, left))
            }
            _ => self.next_at,
        }
    }
}

/// The next drift check, rounded up to a whole minute so that the checks of many tokens share one wake-up.
fn drift_at(now: DateTime<Utc>, drift: Duration) -> DateTime<Utc> {
    let t = after(now, drift);
    let rem = t.timestamp().rem_euclid(60);
    let base = t - TimeDelta::nanoseconds(i64::from(t.timestamp_subsec_nanos()));
    if rem == 0 && t.timestamp_subsec_nanos() == 0 {
        t
    } else {
        base + TimeDelta::seconds(60 - rem)
    }
}

/// The liveness probe after one due at `previous` and run by a visit that ended `now`: an interval after the
/// *scheduled* time, on a whole minute (stepping from the visit's end would drift a minute later every time), or an
/// interval after now when the daemon overslept.
fn next_verify(previous: DateTime<Utc>, interval: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    let stepped = drift_at(previous - TimeDelta::nanoseconds(1), interval);
    if stepped > now {
        stepped
    } else {
        drift_at(now, interval)
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

struct Waiter {
    remaining: std::collections::BTreeSet<String>,
    results: Vec<RotateResult>,
    reply: Option<tokio::sync::oneshot::Sender<Vec<RotateResult>>>,
}

pub struct Daemon {
    policy: Policy,
    rotator: Arc<Rotator>,
    shared: Shared,
    metrics: Arc<Metrics>,
    board: StatusBoard,
    /// Keyed on the policy's own name allocation (`TokenPolicy::name`).
    slots: BTreeMap<Arc<str>, Slot>,
    /// The visits in flight (see [`Visited`]).
    tasks: JoinSet<Visited>,
    /// `rotate` requests waiting for their forced rotations to finish.
    waiters: Vec<Waiter>,
    /// The issuer of every token with a visit in flight, and the number of visits in flight per issuer.
    in_flight_issuer: HashMap<Arc<str>, Arc<str>>,
    per_issuer: HashMap<Arc<str>, usize>,
    /// Every token (its shared policy, for the name: not a copy of it), the issuers interleaved (a token of each
    /// issuer in turn), and where the last `spawn_due` scan stopped: the next one resumes there (round robin), so
    /// that a burst of due tokens costs about one pass over the slots rather than one per completed visit, and an
    /// issuer whose share is taken is stepped over one token at a time, not one whole issuer's tokens at a time.
    order: Vec<Arc<TokenPolicy>>,
    cursor: usize,
    failed: bool,
    /// A reload's issuers and sinks being built (off the loop, so that completions, `rotate` and shutdown are
    /// served meanwhile); a newer reload replaces it.
    building: Option<tokio::task::JoinHandle<(Policy, Rotator)>>,
    /// Shutdown had to abort visits still running after `SHUTDOWN_GRACE` (their requests may still be on their way).
    aborted_visits: bool,
    /// `failed` events being journaled and told (SPEC §9): waited for by `run --once` and at shutdown.
    telling: JoinSet<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(b) = self.building.take() {
            b.abort();
        }
    }
}

impl Daemon {
    /// Takes on tokens not taken on yet: their counters, status-board entries and slots, each map built in bulk
    /// (`status::insert_missing`: 10,000 tokens one insert at a time leave their leaves half full).
    fn register(&mut self, tokens: &[Arc<TokenPolicy>], now: DateTime<Utc>) {
        self.metrics.init_tokens(tokens.iter().map(|t| &t.name));
        self.board.add_all(
            tokens
                .iter()
                .map(|t| (&t.name, &t.issuer, t.kind.type_name())),
        );
        let slots: Vec<_> = tokens
            .iter()
            .map(|t| {
                let mut slot = Slot::new(Arc::clone(t), now);
                // Removed and added back while its visit was still running: that visit's completion frees the
                // slot, and no second visit of the token starts before it.
                slot.in_flight = self.in_flight_issuer.contains_key(&*t.name);
                (t.name.clone(), slot)
            })
            .collect();
        crate::status::insert_missing(&mut self.slots, slots);
    }

    /// Spawns visits for due tokens, up to `MAX_CONCURRENT` (and an equal share per issuer). Returns whether a
    /// due token had to wait for a place: then a completed visit, not a timer, is the next thing to wait for.
    fn spawn_due(&mut self, now: DateTime<Utc>) -> bool {
        if self.tasks.len() >= MAX_CONCURRENT {
            return true;
        }
        // Lazily, from the cursor round: stop as soon as every free place is taken.
        let room = MAX_CONCURRENT - self.tasks.len();
        let share =
            (MAX_CONCURRENT / self.policy.issuers.len().max(1)).max(MIN_CONCURRENT_PER_ISSUER);
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let mut waiting = false;
        // A new holder's quiet period: its visits start when it ends (all at once they would wait in the pacer and
        // leave together when it lifts).
        let quiet = self.quiet_until().is_some();
        let mut picked = Vec::new();
        let len = self.order.len();
        let mut next_cursor = self.cursor;
        for step in 0..len {
            if picked.len() >= room {
                waiting = true;
                break;
            }
            let i = (self.cursor + step) % len;
            let Some(slot) = self.slots.get(&self.order[i].name) else {
                continue;
            };
            if slot.in_flight
                || slot.done
                || slot.due_at(now) > now
                || self.in_flight_issuer.contains_key(&self.order[i].name)
                || quiet
            {
                continue;
            }
            let issuer = &*slot.policy.issuer;
            let extra = taken.entry(issuer).or_default();
            if self.per_issuer.get(issuer).copied().unwrap_or(0) + *extra >= share {
                waiting = true;
                continue;
            }
            *extra += 1;
            picked.push(self.order[i].name.clone());
            next_cursor = (i + 1) % len;
        }
        self.cursor = next_cursor;
        let lead = self.leading();
        let clustered = self.shared.fence.is_some();
        let verify_interval = self.policy.daemon.verify_interval;
        for name in picked {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            *self
                .per_issuer
                .entry(slot.policy.issuer.clone())
                .or_default() += 1;
            self.in_flight_issuer
                .insert(slot.policy.name.clone(), slot.policy.issuer.clone());
            slot.in_flight = true;
            slot.ready_before = slot
                .visited
                .then(|| self.board.get(&name).is_some_and(|s| s.is_ready(now)));
            let force = std::mem::take(&mut slot.force);
            let rotator = self.rotator.clone();
            let policy = slot.policy.clone();
            let jitter = slot.jitter;
            // Liveness rides on a visit that happens anyway (the schedule, a drift check) once it is due. Not in
            // cluster mode yet: a holder that loses the lease during a probe's confirmation wait would write the
            // shared journal late, and the two-engine simulation showed that racing the new holder's write (an
            // orphaned token); see the closing note of issue 17.
            let verify = (lead && !clustered && slot.verify_at <= now).then_some(verify_interval);
            self.tasks.spawn(
                async move {
                    // A panic must not leave the slot in flight for good (never visited again, `run --once` never
                    // ending): it becomes a failed attempt; the journal keeps whatever progress was made.
                    let now = crate::clock::now();
                    let visit = AssertUnwindSafe(async {
                        if lead {
                            rotator.tend(&policy, force, jitter, verify, now).await
                        } else {
                            rotator.follow(&policy, now).await
                        }
                    });
                    let result = match visit.catch_unwind().await {
                        Ok(result) => result,
                        Err(_) => Err(Failure::from(AttemptError::Unusable(
                            "the rotation panicked (a bug; the panic message is in the log)".into(),
                        ))),
                    };
                    (name, force, !lead, verify.is_some(), result)
                }
                .in_current_span(),
            );
        }
        waiting
    }

    /// While a new holder waits out its predecessor's requests: until when (its visits are held back till then).
    fn quiet_until(&self) -> Option<tokio::time::Instant> {
        self.shared
            .fence
            .as_ref()
            .filter(|f| f.role() == Role::Leader)
            .and_then(|f| f.quiet_until())
    }

    /// Whether this instance mints: always without `[cluster]`, else while it holds the lease.
    fn leading(&self) -> bool {
        self.shared
            .fence
            .as_ref()
            .is_none_or(|f| f.role() == Role::Leader)
    }

    /// The lease changed hands: every token is visited at once in the new role (a new holder resumes the shared
    /// journal; a standby starts following), and no backoff of the old role carries over.
    fn role_changed(&mut self, now: DateTime<Utc>) {
        let lead = self.leading();
        for (name, slot) in self.slots.iter_mut() {
            slot.next_at = now;
            slot.backoff_until = None;
            if lead && slot.policy.sinks.iter().any(|st| st.target.is_delivery()) {
                // A standby never looked at the delivery targets (SPEC §11): the previous holder may have left
                // them behind the records. Not ready until this instance's first visit has seen them.
                self.board.update(name, |s| {
                    s.pending = Some(
                        "this instance just took the lease over: its delivery targets are checked at its first visit"
                            .into(),
                    )
                });
            }
        }
        if !lead {
            // `rotate` requests waiting here will be answered by their visits; new ones are refused.
            tracing::info!(
                "following the shared records: this instance mints nothing while a standby"
            );
        }
    }

    /// Rebuilds `order` after the set of tokens changed: the tokens of each issuer, issuers interleaved.
    fn rebuild_order(&mut self) {
        let mut by_issuer: BTreeMap<&str, Vec<&Arc<TokenPolicy>>> = BTreeMap::new();
        for slot in self.slots.values() {
            by_issuer
                .entry(&*slot.policy.issuer)
                .or_default()
                .push(&slot.policy);
        }
        let longest = by_issuer.values().map(Vec::len).max().unwrap_or(0);
        let mut order = Vec::with_capacity(self.slots.len());
        for i in 0..longest {
            for names in by_issuer.values() {
                if let Some(t) = names.get(i) {
                    order.push(Arc::clone(t));
                }
            }
        }
        self.order = order;
        self.cursor = 0;
    }

    fn earliest(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.slots
            .values()
            .filter(|s| !s.in_flight && !s.done)
            .map(|s| s.due_at(now))
            .min()
    }

    /// A `rotate` request: force the named tokens now and answer when each forced visit finished.
    fn request_rotation(&mut self, req: RotateRequest, now: DateTime<Utc>) {
        let names: Vec<String> = if req.all {
            self.slots.keys().map(|k| k.to_string()).collect()
        } else {
            req.tokens
        };
        if !self.leading() {
            let results = names
                .into_iter()
                .map(|token| RotateResult {
                    token,
                    ok: false,
                    message: "this instance is a cluster standby and mints nothing: run `rotate` on the instance whose /readyz says \"role\": \"leader\"".into(),
                })
                .collect();
            let _ = req.reply.send(results);
            return;
        }
        let mut waiter = Waiter {
            remaining: Default::default(),
            results: Vec::new(),
            reply: Some(req.reply),
        };
        for name in names {
            match self.slots.get_mut(name.as_str()) {
                Some(slot) => {
                    slot.force = true;
                    if !slot.in_flight {
                        slot.next_at = now;
                    }
                    waiter.remaining.insert(name);
                }
                None => waiter.results.push(RotateResult {
                    token: name.clone(),
                    ok: false,
                    message: format!("no token named {name} in the policy"),
                }),
            }
        }
        if waiter.remaining.is_empty() {
            if let Some(reply) = waiter.reply.take() {
                let _ = reply.send(waiter.results);
            }
        } else {
            self.waiters.push(waiter);
        }
    }

    fn answer_waiters(&mut self, name: &str, ok: bool, message: String) {
        for w in &mut self.waiters {
            if w.remaining.remove(name) {
                w.results.push(RotateResult {
                    token: name.to_string(),
                    ok,
                    message: message.clone(),
                });
                if w.remaining.is_empty() {
                    if let Some(reply) = w.reply.take() {
                        let _ = reply.send(std::mem::take(&mut w.results));
                    }
                }
            }
        }
        self.waiters.retain(|w| w.reply.is_some());
    }

    fn complete(
        &mut self,
        name: Arc<str>,
        forced: bool,
        followed: bool,
        verified: bool,
        result: Result<Tended, Failure>,
        once: bool,
    ) {
        // The role changed while this visit ran (cluster mode): its outcome says little, and the next visit, in
        // the new role, is due now, with no backoff of the old role.
        let leading = self.leading();
        let role_changed = followed == leading;
        if let Some(issuer) = self.in_flight_issuer.remove(&name) {
            if let Some(count) = self.per_issuer.get_mut(&issuer) {
                *count = count.saturating_sub(1);
            }
        }
        if forced {
            let (ok, message) = match &result {
                Ok(t) if t.rotated => (
                    true,
                    format!(
                        "rotated; current token {}",
                        t.current
                            .as_ref()
                            .map(|c| c.token_id.as_str())
                            .unwrap_or("?")
                    ),
                ),
                _ if followed => (
                    false,
                    "not rotated: this instance lost the cluster lease before it could".to_string(),
                ),
                Ok(_) => (true, "visited; nothing to rotate".to_string()),
                Err(f) => (false, f.error.to_string()),
            };
            self.answer_waiters(&name, ok, message);
        }
        let now = crate::clock::now();
        let drift = self.policy.daemon.drift_check;
        let clustered = self.shared.fence.is_some();
        let Some(slot) = self.slots.get_mut(&name) else {
            return; // dropped by a reload while in flight
        };
        slot.in_flight = false;
        slot.done = once;
        let ready_before = slot.ready_before.take();
        // The first visit in this process: a failure turns a token of unknown health not ready (a start after the
        // issuer credential was revoked); a token simply not ready yet (a manual one without a record) is not news.
        let first_failed = !slot.visited && result.is_err();
        slot.visited = true;
        // A `rotate` that arrived while this visit was in flight runs right after it.
        let forced_next = slot.force;
        let mut run_again = false;
        match result {
            Ok(t) => {
                slot.backoff_until = None;
                if verified {
                    slot.verify_at =
                        next_verify(slot.verify_at, self.policy.daemon.verify_interval, now);
                }
                if t.rotated {
                    self.metrics.count_rotation(&name, true);
                }
                // A digest, not a copy of the id: one per token for the daemon's lifetime (issue 19).
                let current_id = t
                    .current
                    .as_ref()
                    .map(|c| crate::journal::id_digest(&c.token_id));
                if current_id != slot.jitter_for {
                    slot.jitter = crate::clock::random_up_to(slot.policy.schedule.jitter);
                    slot.jitter_for = current_id;
                }
                let due = if t.stored_everywhere || t.current.is_none() {
                    schedule::next_due(&slot.policy.schedule, t.current.as_ref(), slot.jitter, now)
                } else {
                    t.due.clone()
                };
                let mut next = match due.at {
                    Some(at) => at.min(drift_at(now, drift)),
                    None => drift_at(now, drift),
                };
                if followed {
                    // A standby follows on its own cadence; the holder rotates.
                    next = after(now, crate::rotation::FOLLOW_EVERY);
                }
                if let Some(wake) = t.wake_at {
                    // Never at once again: a visit that left work pending must not spin.
                    next = next.min(wake.max(after(now, Duration::from_secs(1))));
                }
                // Liveness (the next probe's time) only where it runs: a cluster holder never probes (see the spawn),
                // so its `verify_at` never moves, and waking for it revisited every token back to back, each visit
                // reading the records and, in grace, the issuer's token list (BENCHMARKS.md row m).
                if !followed && !clustered {
                    next = next.min(slot.verify_at.max(now));
                }
                if role_changed {
                    next = now;
                }
                slot.next_at = next;
                self.board.update(&name, |s| {
                    if t.rotated {
                        s.last_success = Some(now);
                    } else if followed || s.last_success.is_none() {
                        s.last_success = t.current.as_ref().map(|c| c.created_at);
                    }
                    s.current = t.current.clone();
                    s.stored_everywhere = t.stored_everywhere;
                    s.consecutive_failures = 0;
                    s.last_error = None;
                    s.next_due = due.at;
                    s.next_reason = NextReason::Due(due.reason.clone());
                    if role_changed && leading {
                        // A standby's follow that ended after this instance took the lease over: the takeover's
                        // mark stays until this instance's own first visit.
                        s.pending = s.pending.take().or_else(|| t.unready.clone());
                    } else {
                        s.pending.clone_from(&t.unready);
                    }
                });
            }
            // A visit that is run again at once (the role changed, or the shared entry changed under it) leaves a
            // lease holder's `pending` as it was: what the takeover or the visit showed holds until a visit
            // completes (two-engine simulation seed 587: a first visit that met another instance's write cleared
            // the takeover's mark while the stored singleton was already replaced at the issuer). Nothing failed:
            // no `failed` action runs for it.
            Err(f) if role_changed => {
                run_again = true;
                if !leading {
                    // Now a standby: its follow visits show what the holder does.
                    self.board.update(&name, |s| s.pending = None);
                }
                slot.next_at = now;
                slot.backoff_until = None;
                tracing::info!(token = %name, error = %f.error, "a visit failed as the cluster role changed; visiting again in the new role");
            }
            Err(f) if f.error.is_journal_conflict() => {
                run_again = true;
                // Only this process's view of the shared journal was stale: read it again in a second, without
                // counting a failure.
                slot.next_at = after(now, Duration::from_secs(1));
                slot.backoff_until = None;
                tracing::info!(token = %name, error = %f.error, "the shared journal entry changed under this visit; visiting again");
            }
            Err(f) => {
                self.failed = true;
                // Whatever this visit showed while it ran (a singleton being replaced) is over; it failed.
                self.board.update(&name, |s| s.pending = None);
                if f.attempted {
                    self.metrics.count_rotation(&name, false);
                }
                let mut failures = 0;
                self.board.update(&name, |s| {
                    s.consecutive_failures += 1;
                    failures = s.consecutive_failures;
                    s.last_error = Some(f.error.to_string());
                    if let Some((current, stored)) = &f.learned {
                        s.current = current.clone();
                        s.stored_everywhere = *stored;
                    }
                });
                let wait = if followed {
                    // A standby keeps looking at its pace: its files must follow the shared record (SPEC §8.4).
                    crate::rotation::FOLLOW_EVERY
                } else if f.error.is_permanent() {
                    PERMANENT_RETRY
                } else {
                    crate::retry::attempt_backoff(failures)
                };
                slot.next_at = after(now, wait);
                slot.backoff_until = Some(tokio::time::Instant::now() + wait);
                self.board.update(&name, |s| {
                    s.next_due = Some(slot.next_at);
                    s.next_reason = NextReason::Retry(failures);
                });
                tracing::error!(token = %name, failures, retry_in_s = wait.as_secs(), error = %f.error, "rotation attempt failed");
            }
        }
        if forced_next {
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.next_at = now;
            }
        }
        // Only the minting instance tells: not a standby's follow, nor a visit whose instance lost the lease.
        if !run_again && (ready_before == Some(true) || first_failed) {
            self.tell_if_failed(&name, followed || !leading, now);
        }
    }

    /// A token that was ready and is not any more runs its `failed` actions (SPEC §9), journaled and retried by
    /// the rotation. Only the minting instance tells (a standby's view lags the holder's).
    fn tell_if_failed(&mut self, name: &str, followed: bool, now: DateTime<Utc>) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        if followed
            || !slot
                .policy
                .notify
                .wants(crate::policy::notify::NotifyEvent::Failed)
        {
            return;
        }
        let Some(status) = self.board.get(name) else {
            return;
        };
        if status.is_ready(now) {
            return;
        }
        tracing::warn!(token = %name, reason = status.unready_reason(now).unwrap_or_default(), "the token turned not ready; running its `failed` actions");
        let rotator = self.rotator.clone();
        let policy = slot.policy.clone();
        let persist = !slot.done;
        self.telling.spawn(
            async move {
                rotator
                    .notify_failed(&policy, status.current, persist)
                    .await
            }
            .in_current_span(),
        );
    }

    /// A scheduler for `policy`, every token due at once (its first visit reads its records).
    pub async fn new(policy: Policy, shared: Shared, board: StatusBoard) -> Daemon {
        let rotator = Arc::new(build_rotator(&policy, &shared).await);
        shared.metrics.config_last_reload_success.set(1.0);
        let now = crate::clock::now();
        let tokens: Vec<Arc<TokenPolicy>> = policy.tokens.values().cloned().collect();
        let mut d = Daemon {
            policy,
            rotator,
            metrics: shared.metrics.clone(),
            shared,
            board,
            slots: BTreeMap::new(),
            tasks: JoinSet::new(),
            waiters: Vec::new(),
            in_flight_issuer: HashMap::new(),
            per_issuer: HashMap::new(),
            order: Vec::new(),
            cursor: 0,
            failed: false,
            building: None,
            aborted_visits: false,
            telling: JoinSet::new(),
        };
        d.register(&tokens, now);
        d.rebuild_order();
        d
    }

    pub fn token_count(&self) -> usize {
        self.slots.len()
    }

    /// After `run_loop`: every visit finished by itself (none was aborted at shutdown).
    pub fn drained(&self) -> bool {
        !self.aborted_visits
    }

    /// The loop, until `cancel` (then in-flight visits get `SHUTDOWN_GRACE` to reach a journaled state) or, with
    /// `once`, until every token was visited once. Returns whether every visit succeeded.
    pub async fn run_loop(&mut self, mut inputs: Inputs, once: bool) -> bool {
        let cancel = inputs.cancel.clone();
        let mut role = self.shared.fence.as_ref().map(|f| f.subscribe());
        loop {
            let now = crate::clock::now();
            let waiting = !cancel.is_cancelled() && self.spawn_due(now);
            if once
                && self.tasks.is_empty()
                && self.telling.is_empty()
                && self.slots.values().all(|s| s.done)
            {
                break;
            }
            // A due token waiting for a place is spawned when a visit completes; until then no timer is needed.
            let sleep_for = if let Some(until) = self.quiet_until() {
                until.saturating_duration_since(tokio::time::Instant::now())
            } else if waiting {
                Duration::from_secs(86_400)
            } else {
                self.earliest(now)
                    .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(86_400))
            };
            // `biased`: branches are polled in this order. An unbiased select draws its order from tokio's
            // per-runtime random seed, which a program cannot set (only with `tokio_unstable`): the simulation's
            // seeds did not replay exactly whenever a role change and a visit's end arrived together.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // A role change before visits' ends: a burst of them (a takeover makes every token due) must not
                // hold it back.
                Ok(()) = async {
                    match role.as_mut() {
                        Some(r) => r.changed().await,
                        None => std::future::pending().await,
                    }
                } => self.role_changed(crate::clock::now()),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match joined {
                        Ok((name, forced, followed, verified, result)) => {
                            self.complete(name, forced, followed, verified, result, once)
                        }
                        Err(e) => tracing::error!(error = %e, "a rotation task panicked"),
                    }
                }
                Some(_) = self.telling.join_next(), if !self.telling.is_empty() => {}
                Some(msg) = inputs.control.recv() => match msg {
                    Control::Reload(p) => self.start_reload(*p),
                },
                built = async {
                    match self.building.as_mut() {
                        Some(b) => b.await.ok(),
                        None => std::future::pending().await,
                    }
                }, if self.building.is_some() => {
                    self.building = None;
                    if let Some((policy, rotator)) = built {
                        self.reload(policy, rotator);
                    }
                }
                Some(req) = inputs.rotate.recv() => self.request_rotation(req, crate::clock::now()),
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
        if cancel.is_cancelled() && !self.tasks.is_empty() {
            tracing::info!(
                in_flight = self.tasks.len(),
                "shutting down; letting in-flight rotations reach a journaled state"
            );
            let drain = async {
                while let Some(joined) = self.tasks.join_next().await {
                    if let Ok((name, forced, followed, verified, result)) = joined {
                        self.complete(name, forced, followed, verified, result, true);
                    }
                }
            };
            if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                tracing::warn!("in-flight rotations did not finish within 10s; the journal resumes them at the next start");
                self.tasks.abort_all();
                self.aborted_visits = true;
            }
        }
        // `failed` events waiting to be tried again stay journaled for the next start.
        self.telling.abort_all();
        // Journal writes that failed are held in memory: the last chance to make them durable.
        let durable = self.shared.journal.flush_before_exit().await;
        !self.failed && durable
    }

    /// Builds a reloaded policy's issuers and sinks on a task of its own (credentials may be read from a sink,
    /// AWS configuration loaded: seconds); `reload` applies it when done.
    fn start_reload(&mut self, policy: Policy) {
        if let Some(previous) = self.building.take() {
            previous.abort();
            tracing::info!("a newer policy replaces one whose reload was still being prepared");
        }
        let shared = self.shared.clone();
        self.building = Some(tokio::spawn(
            async move {
                let rotator = build_rotator(&policy, &shared).await;
                (policy, rotator)
            }
            .in_current_span(),
        ));
    }

    fn reload(&mut self, mut policy: Policy, rotator: Rotator) {
        let now = crate::clock::now();
        if policy.daemon.listen != self.policy.daemon.listen
            || policy.daemon.state_dir != self.policy.daemon.state_dir
            || policy.daemon.state_key != self.policy.daemon.state_key
            || policy.cluster != self.policy.cluster
        {
            tracing::warn!(
                "`listen`, `state_dir`, `state_key` and `[cluster]` changes take effect at the next restart"
            );
        }
        self.rotator = Arc::new(rotator);
        let removed: Vec<Arc<str>> = self
            .slots
            .keys()
            .filter(|k| !policy.tokens.contains_key(*k))
            .cloned()
            .collect();
        for name in removed {
            self.slots.remove(&name);
            self.board.remove(&name);
            self.metrics.forget_token(&name);
            if !self.in_flight_issuer.contains_key(&name) {
                // A `rotate` waiting for it would wait forever.
                self.answer_waiters(&name, false, format!("{name} was removed from the policy"));
            }
            tracing::info!(token = %name, "token removed from the policy");
        }
        // An issuer or sink whose table changed (a fixed `ca_file`, `address`, credential reference): the tokens
        // that failed through it are tried again now, not at their backed-off time (up to an hour).
        let changed_issuers: HashSet<&str> = policy
            .issuers
            .iter()
            .filter(|(n, cfg)| self.policy.issuers.get(*n) != Some(*cfg))
            .map(|(n, _)| n.as_str())
            .collect();
        let changed_sinks: HashSet<&str> = policy
            .sinks
            .iter()
            .filter(|(n, cfg)| {
                self.policy.sinks.get(*n).map(|old| format!("{old:?}")) != Some(format!("{cfg:?}"))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        let mut added = Vec::new();
        for (name, t) in policy.tokens.iter_mut() {
            match self.slots.get_mut(name) {
                Some(slot) if slot.policy == *t => {
                    // The copy already held (and its name, the key of every map) stays; the reload's is dropped.
                    *t = slot.policy.clone();
                    let touched = changed_issuers.contains(&*t.issuer)
                        || t.sinks.iter().any(|st| changed_sinks.contains(&*st.sink));
                    if touched && slot.backoff_until.is_some() {
                        slot.backoff_until = None;
                        slot.next_at = now;
                        tracing::info!(token = %name, "its issuer or a sink changed; trying again now");
                    }
                }
                Some(slot) => {
                    slot.policy = t.clone();
                    slot.next_at = now;
                    // The expiry series carries `issuer` and `type`: follow a change of either.
                    self.board.update(name, |s| {
                        s.issuer.clone_from(&t.issuer);
                        s.token_type = t.kind.type_name().into();
                    });
                    tracing::info!(token = %name, "token changed; rescheduling");
                }
                None => {
                    added.push(t.clone());
                    tracing::info!(token = %name, "token added");
                }
            }
        }
        self.register(&added, now);
        // Keyed on the names kept above too.
        policy.tokens = std::mem::take(&mut policy.tokens)
            .into_values()
            .map(|t| (t.name.clone(), t))
            .collect();
        self.policy = policy;
        self.rebuild_order();
        // A removed token's held journal write has no next visit: written now (tokens still in the policy are
        // written by their own visits).
        let journal = self.shared.journal.clone();
        tokio::spawn(async move {
            for (token, e) in journal.flush_all().await {
                tracing::warn!(token = %token, error = %e, "a journal entry is still held in memory; it is written again later");
            }
        }.in_current_span());
        self.metrics.config_last_reload_success.set(1.0);
        tracing::info!(tokens = self.slots.len(), "policy reloaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_probes_step_from_their_schedule_not_from_the_visits_end() {
        let m: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let h = Duration::from_secs(3600);
        // The visit ended a little after the probe's minute: the next probe is an hour after that minute, not 61 min.
        assert_eq!(
            next_verify(m, h, m + TimeDelta::milliseconds(1500)),
            m + TimeDelta::hours(1)
        );
        // Taken on mid-minute: the first step rounds up to a whole minute.
        let t0 = m + TimeDelta::seconds(7);
        assert_eq!(
            next_verify(t0, h, t0 + TimeDelta::seconds(1)),
            m + TimeDelta::minutes(61)
        );
        // Overslept past the next probe (a suspend): an interval after now, on a whole minute.
        let late = m + TimeDelta::hours(3) + TimeDelta::seconds(5);
        assert_eq!(
            next_verify(m, h, late),
            m + TimeDelta::hours(4) + TimeDelta::minutes(1)
        );
    }

    #[test]
    fn drift_checks_coalesce_on_minute_boundaries() {
        let now: DateTime<Utc> = "2026-06-10T10:00:07.250Z".parse().unwrap();
        assert_eq!(
            drift_at(now, Duration::from_secs(3600)),
            "2026-06-10T11:01:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let exact: DateTime<Utc> = "2026-06-10T10:00:00Z".parse().unwrap();
        assert_eq!(
            drift_at(exact, Duration::from_secs(60)),
            "2026-06-10T10:01:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
