//! One token's rotation as a state machine over the journal: observe → mint → journal → store (per sink, CAS,
//! read back) → verify → done. See ARCHITECTURE.md for the states and what a restart does from each.
//!
//! - `mod.rs`: the [`Rotator`], a visit ([`Rotator::tend`]) and the mint;
//! - `finish.rs`: pushing a journaled token to the sinks, proving it, closing the rotation;
//! - `cleanup.rs`: revoking old tokens when due, and the orphan sweep;
//! - `observe.rs`: reading the sinks a visit starts from, and what `plan` shows.

mod cleanup;
mod finish;
mod follow;
mod liveness;
mod notify;
mod observe;

pub use follow::FOLLOW_EVERY;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

use crate::issuer::{Issuer, IssuerError, IssuerErrorKind};
use crate::journal::{Entry, Journal, JournalError, Phase, Rotation};
use crate::metrics::Metrics;
use crate::policy::SecretRef;
use crate::policy::{SinkTarget, TokenPolicy};
use crate::schedule::{self, Due, DueReason};
use crate::sink::{Observed, Sink, SinkError, SinkErrorKind};
use crate::status::{CurrentToken, StatusBoard};
use observe::current_of;

/// A token's sink targets with the sink that serves each.
type BoundSinks = Vec<(SinkTarget, Arc<dyn Sink>)>;

/// The issuers and sinks of one loaded policy. A part that could not be built keeps its reason, so that only
/// the tokens using it fail (SPEC §5.5).
pub struct Rotator {
    pub issuers: HashMap<String, Result<Arc<dyn Issuer>, String>>,
    /// Where each issuer's credential comes from, to notice a token that is its own issuer's credential.
    pub credential_refs: HashMap<String, SecretRef>,
    pub sinks: HashMap<String, Result<Arc<dyn Sink>, String>>,
    /// The sinks every instance keeps its own copy of (files): a standby keeps them equal to the shared record.
    pub local_sinks: std::collections::HashSet<String>,
    /// Cluster mode: local targets are copies of the shared record, leveled before a visit decides to mint.
    pub level_locals: bool,
    /// Shared by every build of the rotator (reloads): entries, held writes, per-token visit locks, seen ids.
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
    /// Every token of the loaded policy: the orphan sweep never revokes what another token holds.
    pub tokens: Vec<Arc<TokenPolicy>>,
    /// Where the daemon shows each token's health; `None` for one-shot commands.
    pub board: Option<StatusBoard>,
    /// Tokens found dead and left alone, and when liveness last had each replaced (see `liveness.rs`).
    pub liveness: std::sync::Mutex<liveness::LivenessState>,
    /// How `notify` actions are run (processes and HTTPS, or the simulation's model).
    pub deliverer: Arc<dyn crate::notify::Deliver>,
}

/// What a successful visit to a token established.
#[derive(Clone, Debug)]
pub struct Tended {
    pub current: Option<CurrentToken>,
    pub stored_everywhere: bool,
    pub due: Due,
    pub rotated: bool,
    /// When pending revocations need the token visited again (before its next due time).
    pub wake_at: Option<DateTime<Utc>>,
    /// Why the token is not ready whatever its records say (a standby that sees the holder replacing a singleton).
    pub unready: Option<String>,
}

/// What `plan` shows of one token.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub current: Option<CurrentToken>,
    pub stored_everywhere: bool,
    pub due: Due,
    /// Journal state worth knowing (an interrupted rotation, pending revocations).
    pub notes: Vec<String>,
}

/// Every sink error of one attempt, each with its kind (retry decisions look at them one by one).
#[derive(Debug)]
pub struct SinkFailures(pub Vec<SinkError>);

impl std::fmt::Display for SinkFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error("{0}")]
    Sinks(SinkFailures),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The new token's identity probe was refused (SPEC §5.14).
    #[error("the new token {token_id} failed its identity probe ({attempt} of {MAX_PROBE_FAILURES}){}: {error}", if *.gave_up { "; it is given up and a fresh token is minted at the next attempt" } else { "" })]
    ProbeRefused {
        token_id: String,
        attempt: u32,
        gave_up: bool,
        error: IssuerError,
    },
    #[error("{0}")]
    Unusable(String),
}

impl AttemptError {
    /// Another instance changed the token's shared journal entry (cluster mode): nothing failed but this process's
    /// view; the next attempt reads the entry again and can come at once.
    pub fn is_journal_conflict(&self) -> bool {
        matches!(self, AttemptError::Journal(e) if e.is_conflict())
    }

    /// Permanent failures wait for the next scheduled try instead of backing off quickly (SPEC §5.4).
    pub fn is_permanent(&self) -> bool {
        match self {
            AttemptError::Issuer(e) => !e.retryable(),
            // A conflict or an outage passes; a refusal (403, a bad mount) does not, whatever other sinks said.
            AttemptError::Sinks(f) => {
                f.0.iter()
                    .any(|e| matches!(e.kind, SinkErrorKind::Forbidden | SinkErrorKind::Permanent))
            }
            // A full disk or no file descriptors left passes; the entry is held in memory meanwhile.
            AttemptError::Journal(e) => !e.is_transient(),
            AttemptError::ProbeRefused { .. } => false,
            AttemptError::Unusable(_) => true,
        }
    }
}

/// A failed visit, with whatever it learned about the current token on the way.
#[derive(Debug)]
pub struct Failure {
    pub error: AttemptError,
    /// `Some` when the visit learned which token is current (for example a freshly minted singleton).
    pub learned: Option<(Option<CurrentToken>, bool)>,
    /// Whether a rotation was attempted (counted in `rotations_total`).
    pub attempted: bool,
}

impl<E: Into<AttemptError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            error: e.into(),
            learned: None,
            attempted: false,
        }
    }
}

/// Fresh labels tried when the issuer says a label is taken (labels carry a timestamp to the second).
const MAX_LABEL_BUMPS: i64 = 5;

/// Identity probes a new token may fail (401/403) before it is given up and replaced (SPEC §5.14).
pub const MAX_PROBE_FAILURES: u32 = 3;

/// Test-only crash points (cargo feature `failpoints`): abort the process when `TOKEN_ROTATOR_FAILPOINT` names
/// this step, to prove that a restart resumes from the journal; `<step>:panic` panics there instead (the
/// canary test scans panic output for secrets).
fn failpoint(_name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let set = std::env::var("TOKEN_ROTATOR_FAILPOINT").unwrap_or_default();
        if set == _name {
            eprintln!("failpoint {_name}: aborting");
            std::process::abort();
        }
        if set.strip_suffix(":panic") == Some(_name) {
            panic!("failpoint {_name}: panicking");
        }
    }
}

fn to_current(expires: Option<DateTime<Utc>>, created: DateTime<Utc>, id: &str) -> CurrentToken {
    CurrentToken {
        token_id: id.to_string(),
        created_at: created,
        expires_at: expires,
    }
}

/// When an organization policy caps lifetimes below the token's `lifetime`: what it allows and the key to change.
async fn lifetime_hint(token: &TokenPolicy, issuer: &dyn Issuer) -> Option<String> {
    let lifetime = token.schedule.lifetime?;
    let cap = issuer.lifetime_cap(token).await.ok()??;
    (lifetime > cap.max).then(|| {
        format!(
            "; {}: {}",
            cap.describe(),
            cap.advice(&token.name, Some(lifetime))
        )
    })
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl Rotator {
    fn issuer(&self, token: &TokenPolicy) -> Result<Arc<dyn Issuer>, AttemptError> {
        match self.issuers.get(&*token.issuer) {
            Some(Ok(i)) => Ok(i.clone()),
            Some(Err(why)) => Err(AttemptError::Unusable(format!(
                "issuer {} is unusable: {why}",
                token.issuer
            ))),
            None => Err(AttemptError::Unusable(format!(
                "issuer {} is not configured",
                token.issuer
            ))),
        }
    }

    fn sinks_of(&self, token: &TokenPolicy) -> Result<BoundSinks, AttemptError> {
        let mut out = Vec::new();
        let mut broken = Vec::new();
        for st in &token.sinks {
            match self.sinks.get(&*st.sink) {
                Some(Ok(s)) => out.push((st.clone(), s.clone())),
                Some(Err(why)) => broken.push(format!("sink {} is unusable: {why}", st.sink)),
                None => broken.push(format!("sink {} is not configured", st.sink)),
            }
        }
        if broken.is_empty() {
            Ok(out)
        } else {
            Err(AttemptError::Unusable(broken.join("; ")))
        }
    }

    /// Resolves a secret reference: env, file, or the `token` of a record this daemon keeps in one of its sinks.
    pub async fn resolve_secret(
        &self,
        r: &SecretRef,
    ) -> Result<crate::secret::SecretString, String> {
        match r {
            SecretRef::Sink { sink, target } => {
                let s = match self.sinks.get(sink) {
                    Some(Ok(s)) => s,
                    Some(Err(why)) => return Err(format!("sink {sink} is unusable: {why}")),
                    None => return Err(format!("no sink named {sink}")),
                };
                let observed = s.read(target).await.map_err(|e| e.to_string())?;
                match observed.content {
                    crate::sink::Content::Record(rec) => Ok(rec.token),
                    crate::sink::Content::Absent => {
                        Err(format!("sink {sink} holds no record at {target}"))
                    }
                    crate::sink::Content::Garbage(why) => {
                        Err(format!("sink {sink} at {target}: {why}"))
                    }
                    crate::sink::Content::Delivered(_) => Err(format!(
                        "sink {sink} at {target} is a delivery target: it holds no record to read a credential from"
                    )),
                }
            }
            other => other.resolve_local().map_err(|e| e.to_string()),
        }
    }

    /// Shows (or clears) why a token is not ready while this visit runs.
    fn show_pending(&self, token: &TokenPolicy, why: Option<String>) {
        if let Some(board) = &self.board {
            board.update(&token.name, |s| s.pending = why);
        }
    }

    /// Saves an entry on the way out of a failed visit: the visit's own error is what the caller reports; a failed
    /// write leaves the entry held in memory and is logged.
    async fn save_on_failure(&self, entry: &Entry) {
        if let Err(e) = self.journal.save(entry).await {
            tracing::error!(token = %entry.token, error = %e, "journal write failed; the entry is held in memory and written at the next visit");
        }
    }

    /// Visits one token: resumes a journaled rotation, revokes old tokens whose time has come, reads the sinks,
    /// proves the current token still works (`verify`, SPEC §10 liveness) and rotates when due (or `force`, or when
    /// the token turned out dead).
    pub async fn tend(
        &self,
        token: &TokenPolicy,
        force: bool,
        jitter: Duration,
        verify: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Tended, Failure> {
        // At most one visit of a token at a time, whatever asks (schedule, `rotate`, a reload re-adding it).
        let _visit = self.journal.visit(&token.name).await;
        // An entry whose last write failed is made durable before anything else happens (journal first), even
        // when this token's issuer or sinks cannot be built now.
        self.journal.flush(&token.name).await?;
        let mut entry = self
            .journal
            .load(&token.name)
            .await?
            .unwrap_or_else(|| Entry::new(&token.name, &token.issuer, token.kind.type_name()));
        // A `failed` event is told before anything else is tried (a broken issuer must not keep it from its
        // receivers); a `rotated` one once the sinks are read.
        if !entry.notices.is_empty() {
            self.deliver_notices(token, &mut entry, None, now).await?;
        }
        let issuer = self.issuer(token)?;
        let sinks = self.sinks_of(token)?;
        if let Some(rotation) = &entry.rotation {
            if rotation.minted.is_some() {
                tracing::info!(token = %token.name, phase = ?rotation.phase, "resuming an interrupted rotation from the journal");
                return self
                    .finish(
                        token,
                        issuer.as_ref(),
                        &sinks,
                        entry,
                        None,
                        now,
                        Instant::now(),
                    )
                    .await;
            }
            // Interrupted before the issuer's answer was journaled: a token may exist that nobody tracks, and a
            // singleton's old token may already be replaced.
            tracing::warn!(token = %token.name, "a rotation was interrupted before its token was journaled; looking for orphans");
            entry.rotation = None;
            if token.kind.is_singleton() {
                entry.must_rotate.get_or_insert_with(|| {
                    "an interrupted create may have replaced the stored token at the issuer".into()
                });
            } else {
                entry.sweep = true;
            }
            self.journal.save(&entry).await?;
        }

        let observed = self.observe(token, &sinks).await?;
        let (mut current, mut stored_everywhere) = current_of(&observed);
        // Cluster mode: a local file that lags the shared record is copied, never a reason to mint; one that cannot
        // be written leaves the token not ready here, and the visit goes on with the shared state.
        // A delivery target (SPEC §11) that lags the records gets the current token the same way, no new one
        // minted; one that cannot be written fails the visit once its housekeeping is done (not ready, retried).
        let mut shared_agree = false;
        let mut undelivered = Vec::new();
        let delivers = token.sinks.iter().any(|st| st.target.is_delivery());
        if (self.level_locals || delivers) && !stored_everywhere {
            let leveled = self.level_local(token, &sinks, &observed, true).await;
            if leveled.shared_agree {
                shared_agree = true;
                for e in leveled.errors {
                    if self.local_sinks.contains(&e.sink) && self.level_locals {
                        tracing::warn!(token = %token.name, error = %e, "this instance's copy of the shared record could not be written");
                    } else {
                        undelivered.push(e);
                    }
                }
                current = leveled.current;
                stored_everywhere = leveled.everywhere;
            }
        }
        if !entry.notices.is_empty() && entry.rotation.is_none() {
            let holding = current
                .as_ref()
                .filter(|_| stored_everywhere)
                .map(|c| c.token_id.as_str());
            self.deliver_notices(token, &mut entry, holding, now)
                .await?;
        }
        self.revoke_due(token, issuer.as_ref(), &mut entry, now)
            .await?;
        let due = if current.is_some() && !stored_everywhere && !shared_agree {
            let due = Due {
                at: Some(now),
                reason: DueReason::SinksDisagree,
            };
            if token.schedule.manual {
                schedule::manual(due)
            } else {
                due
            }
        } else {
            schedule::next_due(&token.schedule, current.as_ref(), jitter, now)
        };
        if let (Some(interval), false, None, true, Some(cur)) = (
            verify,
            force,
            &entry.must_rotate,
            stored_everywhere,
            &current,
        ) {
            // A token due anyway (expired, expiring, sinks disagreeing) is rotated by its schedule: its probe would
            // change nothing (a manual token's due time is none: it is probed).
            if !due.is_due(now) && cur.expires_at.is_none_or(|e| e > now) {
                // The probe stamps the current token's last use: an old token waiting for a consumer's first use
                // of it must not take that stamp for one. Its watch moves past the probe durably *before* the
                // probe goes out: a crash (or a journal write that fails and is lost with the process) right after
                // the probe must not leave the stamp looking like a consumer's use (simulation seed 2106).
                if token.kind.can_prove_itself()
                    && Self::probed_successor(&mut entry, &cur.token_id, crate::clock::now())
                {
                    self.journal.save(&entry).await?;
                }
                let verdict = self
                    .check_liveness(token, issuer.as_ref(), cur, &observed, interval, now)
                    .await;
                if let Some(liveness::Verdict::Rotate(why)) = verdict {
                    entry.must_rotate = Some(why);
                    self.journal.save(&entry).await?;
                }
            }
        }
        let forced = match (&entry.must_rotate, force) {
            // A manual token is rotated only when asked; what would force it shows as its not-ready reason.
            (Some(_), false) if token.schedule.manual => None,
            (Some(why), _) => Some(why.clone()),
            (None, true) => Some("requested".to_string()),
            (None, false) => None,
        };
        if forced.is_none() && !due.is_due(now) {
            let unready = manual_unready(token, current.as_ref(), &entry).or_else(|| {
                self.known_dead(token, current.as_ref()).map(|why| {
                    if token.schedule.manual {
                        format!(
                            "manual token: {why}; rotate it with `token-rotator rotate {}`",
                            token.name
                        )
                    } else {
                        why
                    }
                })
            });
            if entry.sweep {
                // Housekeeping: a sweep that cannot run now (the issuer's list refused, a neighbour unreadable)
                // stays pending and never makes a healthy token fail.
                if let Err(e) = self.sweep(token, issuer.as_ref(), &mut entry).await {
                    tracing::warn!(token = %token.name, error = %e.error, "orphan sweep failed; it is retried at the next visit");
                }
            }
            if !undelivered.is_empty() {
                return Err(Failure {
                    error: AttemptError::Sinks(SinkFailures(undelivered)),
                    learned: Some((current, false)),
                    attempted: false,
                });
            }
            return Ok(Tended {
                current,
                stored_everywhere,
                due,
                rotated: false,
                wake_at: cleanup::wake_time(token, &entry, now),
                unready,
            });
        }
        let why = forced.unwrap_or_else(|| {
            if due.reason.window_missed() {
                self.metrics.count_window_missed(&token.name);
            }
            due.reason.to_string()
        });
        tracing::info!(token = %token.name, issuer = %token.issuer, reason = %why, "rotation started");
        let started = Instant::now();
        let versions = token
            .sinks
            .iter()
            .zip(observed.iter())
            .map(|(st, o)| (st.to_string(), o.version))
            .collect();
        // The minted token is journaled; push it everywhere.
        let entry = self
            .mint(token, issuer.as_ref(), entry, &observed, now)
            .await
            .map_err(|mut f| {
                f.learned.get_or_insert((current, stored_everywhere));
                f
            })?;
        self.finish(
            token,
            issuer.as_ref(),
            &sinks,
            entry,
            Some(versions),
            now,
            started,
        )
        .await
    }

    /// Creates the new token and journals it (or, when the create failed, what its failure means). Returns the
    /// journaled entry, the minted token in it.
    async fn mint(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        mut entry: Entry,
        observed: &[Observed],
        now: DateTime<Utc>,
    ) -> Result<Entry, Failure> {
        let (current, _) = current_of(observed);
        let replaces = match (&current, token.kind.is_singleton()) {
            (Some(c), false) => Some(c.token_id.clone()),
            _ => None,
        };
        let mut label = issuer.label(token, now);
        entry.rotation = Some(Rotation {
            started_at: now,
            phase: Phase::Minting,
            label: Some(label.clone()),
            minted: None,
            stored: Vec::new(),
            replaces,
            probe_failures: 0,
            own_credential: false,
        });
        self.journal.save(&entry).await?;
        failpoint("before-create");
        if token.kind.is_singleton() {
            // From the moment the create goes out, the stored token may be dead (SPEC §5.10).
            self.show_pending(
                token,
                Some(
                    "a rotation is replacing this token at the issuer; the stored value may already be dead"
                        .into(),
                ),
            );
        }
        // Whole seconds: what we ask for is exactly what the issuer echoes and what the metric shows.
        let expires_at = token
            .schedule
            .lifetime
            .filter(|_| token.kind.expires())
            .map(|l| now.trunc_subsecs(0) + delta(l));
        let mut minted = issuer.mint(token, &label, expires_at).await;
        // The label is taken (rotations less than a second apart, or a name reserved forever): the create was
        // refused, so the next seconds' labels are tried, a few.
        let mut bump = 1;
        while matches!(&minted, Err(e) if e.kind == IssuerErrorKind::Conflict)
            && bump <= MAX_LABEL_BUMPS
        {
            let fresh = issuer.label(token, now + TimeDelta::seconds(bump));
            bump += 1;
            if fresh == label {
                continue;
            }
            label = fresh;
            tracing::warn!(token = %token.name, "the token label is taken at the issuer; trying a fresh one");
            if let Some(r) = entry.rotation.as_mut() {
                r.label = Some(label.clone());
            }
            // The label may be taken by an earlier create of ours whose answer was lost: look for it later.
            entry.sweep |= !token.kind.is_singleton();
            self.journal.save(&entry).await?;
            minted = issuer.mint(token, &label, expires_at).await;
        }
        let minted = match minted {
            Ok(m) => m,
            Err(mut e) => {
                if e.kind == IssuerErrorKind::Rejected && !e.outcome_unknown {
                    if let Some(hint) = lifetime_hint(token, issuer).await {
                        e.message.push_str(&hint);
                    }
                }
                if e.outcome_unknown {
                    if token.kind.is_singleton() {
                        // The issuer may have replaced the stored token: not ready until a new one is minted,
                        // once, after backoff (SPEC §5.10).
                        tracing::error!(token = %token.name, error = %e, "the create of a singleton token may have reached the issuer; the stored token may be dead; minting again after backoff");
                        entry.must_rotate = Some(
                            "a create whose outcome is unknown may have replaced the stored token at the issuer"
                                .into(),
                        );
                    } else {
                        // A token may exist that we never saw: found by its label and revoked.
                        entry.sweep = true;
                    }
                }
                entry.rotation = None;
                self.save_on_failure(&entry).await;
                return Err(Failure {
                    error: e.into(),
                    learned: None,
                    attempted: true,
                });
            }
        };
        failpoint("after-create");
        let own_credential = observed
            .iter()
            .filter_map(Observed::record)
            .any(|r| issuer.credential_is(&r.token))
            || self.credential_lives_in(token);
        if own_credential && token.kind.is_singleton() {
            // The old value died with this create: the issuer can only go on with the new one.
            self.switch_credential(token, issuer, &minted.value);
        }
        let current = to_current(minted.expires_at, minted.created_at, &minted.token_id);
        tracing::info!(token = %token.name, issuer = %token.issuer, token_id = %minted.token_id, "minted a new token");
        if let Some(r) = entry.rotation.as_mut() {
            r.phase = Phase::Minted;
            r.minted = Some(minted);
            // A coexisting token that is its issuer's credential is switched to once it is proven (`finish`).
            r.own_credential = own_credential && !token.kind.is_singleton();
        }
        // If this write fails the value is held in memory (never dropped) and written before the next step.
        self.journal.save(&entry).await.map_err(|e| Failure {
            error: e.into(),
            learned: Some((Some(current), false)),
            attempted: true,
        })?;
        failpoint("after-journal");
        self.settle(token, issuer, &mut entry, expires_at, now)
            .await?;
        Ok(entry)
    }

    /// The journaled new token as the issuer reports it (`read_back`): its real creation time and expiry. A token
    /// an organization's policy capped to no more than `rotate_before` would be due again at once, and every one
    /// after it: it is refused — revoked through the journal — and the attempt fails naming the keys to change.
    async fn settle(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
        requested: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        let Some(minted) = entry.rotation.as_ref().and_then(|r| r.minted.clone()) else {
            return Ok(());
        };
        let listed = match issuer.read_back(token, &minted.token_id).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(token = %token.name, token_id = %minted.token_id, error = %e, "could not read the new token back from the issuer; recording the requested expiry");
                return Ok(());
            }
        };
        let mut settled = minted.clone();
        if let Some(created) = listed.created_at {
            settled.created_at = created;
        }
        if let (Some(real), Some(requested)) = (listed.expires_at, requested) {
            if real < requested {
                let left = (real - now).to_std().unwrap_or(Duration::ZERO);
                if let Some(rb) = token.schedule.rotate_before.filter(|rb| *rb >= left) {
                    entry.rotation = None;
                    entry.revocations.push(crate::journal::PendingRevocation {
                        token_id: minted.token_id.clone(),
                        not_before: now,
                        after_use_of: None,
                        attempts: 0,
                        held: false,
                        ..Default::default()
                    });
                    self.journal.save(entry).await?;
                    let _ = self.revoke_due(token, issuer, entry, now).await;
                    let message = format!(
                        "the organization's token expiry policy capped the new token {} at {} ({} from now), not longer than `rotate_before` = \"{}\" of [tokens.{}], so it would be due again at once; it is revoked. Set `lifetime` and `rotate_before` of [tokens.{}] within the organization's maximum expiry",
                        minted.token_id,
                        crate::record::rfc3339(real),
                        crate::policy::duration::render(Duration::from_secs(left.as_secs())),
                        crate::policy::duration::render(rb),
                        token.name,
                        token.name,
                    );
                    return Err(Failure {
                        error: IssuerError::new(
                            &token.issuer,
                            IssuerErrorKind::Rejected,
                            None,
                            message,
                        )
                        .into(),
                        learned: None,
                        attempted: true,
                    });
                }
                tracing::warn!(token = %token.name, token_id = %minted.token_id, expires_at = %crate::record::rfc3339(real), requested = %crate::record::rfc3339(requested), "the organization's token expiry policy capped the new token's expiry; scheduling by the real expiry");
            }
            settled.expires_at = Some(real);
        }
        if settled.created_at != minted.created_at || settled.expires_at != minted.expires_at {
            if let Some(r) = entry.rotation.as_mut() {
                r.minted = Some(settled);
            }
            self.journal.save(entry).await?;
        }
        Ok(())
    }

    /// Whether this token is written to the sink target its issuer reads its credential from.
    pub(super) fn credential_lives_in(&self, token: &TokenPolicy) -> bool {
        match self.credential_refs.get(&*token.issuer) {
            Some(SecretRef::Sink { sink, target }) => token
                .sinks
                .iter()
                .any(|st| *st.sink == **sink && &st.target == target),
            _ => false,
        }
    }

    /// Whether any issuer of the policy calls its API with the record `token` keeps in one of its targets.
    fn is_a_credential(&self, token: &TokenPolicy) -> bool {
        self.credential_refs.values().any(|r| match r {
            SecretRef::Sink { sink, target } => token
                .sinks
                .iter()
                .any(|st| *st.sink == **sink && &st.target == target),
            _ => false,
        })
    }

    /// Self-rotation: the issuer's own credential was replaced; use the new value from now on.
    pub(super) fn switch_credential(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        value: &crate::secret::SecretString,
    ) {
        issuer.set_credential(value.clone());
        match self.credential_refs.get(&*token.issuer) {
            Some(SecretRef::Sink { .. }) => tracing::info!(
                token = %token.name,
                issuer = %token.issuer,
                "this token is its issuer's own credential: switched to the new value (read from the sink after a restart)"
            ),
            _ => tracing::warn!(
                token = %token.name,
                issuer = %token.issuer,
                "this token is its issuer's own credential: switched to the new value now, but the issuer reads `token` from env/file, which still holds the old value after a restart; use `token = {{ sink = \"…\", path = \"…\" }}` instead"
            ),
        }
    }
}

/// Why a `manual` token that is not rotated now is not ready: it has no record yet (nothing is minted for it until
/// someone asks), or the journal says its current token cannot be trusted. `None` for other tokens.
fn manual_unready(
    token: &TokenPolicy,
    current: Option<&CurrentToken>,
    entry: &Entry,
) -> Option<String> {
    if !token.schedule.manual {
        return None;
    }
    let ask = format!("rotate it with `token-rotator rotate {}`", token.name);
    if let Some(why) = &entry.must_rotate {
        return Some(format!("manual token: {why}; {ask}"));
    }
    current
        .is_none()
        .then(|| format!("manual token with no record yet: nothing is minted for it; {ask}"))
}
