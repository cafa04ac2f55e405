//! One token's rotation as a state machine over the journal: observe → mint → journal → store (per sink, CAS,
//! read back) → verify → done. See ARCHITECTURE.md for the states and what a restart does from each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use futures_util::future::join_all;

use crate::issuer::{Issuer, IssuerError, IssuerErrorKind};
use crate::journal::{Entry, Journal, JournalError, PendingRevocation, Phase, Rotation};
use crate::metrics::Metrics;
use crate::policy::{SinkTarget, TokenKind, TokenPolicy};
use crate::record::SinkRecord;
use crate::schedule::{self, Due, DueReason};
use crate::sink::{Observed, Sink, SinkError, SinkErrorKind, Version};
use crate::status::CurrentToken;

/// A token's sink targets with the sink that serves each.
type BoundSinks = Vec<(SinkTarget, Arc<dyn Sink>)>;

/// The issuers and sinks of one loaded policy. A part that could not be built keeps its reason, so that only
/// the tokens using it fail (SPEC §5.5).
pub struct Rotator {
    pub issuers: HashMap<String, Result<Arc<dyn Issuer>, String>>,
    /// Where each issuer's credential comes from, to notice a token that is its own issuer's credential.
    pub credential_refs: HashMap<String, crate::secret::SecretRef>,
    pub sinks: HashMap<String, Result<Arc<dyn Sink>, String>>,
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
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

/// How often an agent token waiting for its successor's first use is looked at again.
const AFTER_USE_POLL: Duration = Duration::from_secs(60);

/// The earliest time a pending revocation needs attention.
fn wake_time(entry: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    entry
        .revocations
        .iter()
        .map(|r| match r.after_use_of {
            Some(_) => now + TimeDelta::from_std(AFTER_USE_POLL).unwrap_or(TimeDelta::MAX),
            None => r.not_before,
        })
        .min()
}

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error("{0}")]
    Sinks(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Unusable(String),
}

impl AttemptError {
    /// Permanent failures wait for the next scheduled try instead of backing off quickly (SPEC §5.4).
    pub fn is_permanent(&self) -> bool {
        match self {
            AttemptError::Issuer(e) => !e.retryable(),
            AttemptError::Sinks(_) => false,
            AttemptError::Journal(_) | AttemptError::Unusable(_) => true,
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

impl Rotator {
    fn issuer(&self, token: &TokenPolicy) -> Result<Arc<dyn Issuer>, AttemptError> {
        match self.issuers.get(&token.issuer) {
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
            match self.sinks.get(&st.sink) {
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

    /// Visits one token: resumes a journaled rotation, revokes old tokens whose time has come, reads the sinks
    /// and rotates when due (or `force`).
    pub async fn tend(
        &self,
        token: &TokenPolicy,
        force: bool,
        jitter: Duration,
        now: DateTime<Utc>,
    ) -> Result<Tended, Failure> {
        let issuer = self.issuer(token)?;
        let sinks = self.sinks_of(token)?;
        let mut force = force;
        let mut entry = self
            .journal
            .load(&token.name)?
            .unwrap_or_else(|| Entry::new(&token.name, &token.issuer, token.kind.type_name()));
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
            // Interrupted before the issuer's answer was journaled: a token may exist that nobody tracks.
            tracing::warn!(token = %token.name, "a rotation was interrupted before its token was journaled; looking for orphans");
            entry.rotation = None;
            entry.sweep = true;
            self.journal.save_async(&entry).await?;
            // A singleton's old token may already be replaced: rotate again at once.
            force |= token.kind.is_singleton();
        }

        let observed = self.observe(token, &sinks).await?;
        let (current, stored_everywhere) = current_of(&observed);
        self.revoke_due(token, issuer.as_ref(), &mut entry, now)
            .await?;
        let due = if current.is_some() && !stored_everywhere {
            Due {
                at: Some(now),
                reason: DueReason::SinksDisagree,
            }
        } else {
            schedule::next_due(&token.schedule, current.as_ref(), jitter, now)
        };
        if !force && !due.is_due(now) {
            if entry.sweep {
                let keep: Vec<&str> = current.iter().map(|c| c.token_id.as_str()).collect();
                self.sweep(token, issuer.as_ref(), &mut entry, &keep)
                    .await?;
            }
            return Ok(Tended {
                current,
                stored_everywhere,
                due,
                rotated: false,
                wake_at: wake_time(&entry, now),
            });
        }
        let why = if force {
            "requested".to_string()
        } else {
            if due.reason.window_missed() {
                self.metrics.count_window_missed(&token.name);
            }
            due.reason.to_string()
        };
        tracing::info!(token = %token.name, issuer = %token.issuer, reason = %why, "rotation started");
        let started = Instant::now();

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
        });
        self.journal.save_async(&entry).await?;
        failpoint("before-create");
        // Whole seconds: what we ask for is exactly what the issuer echoes and what the metric shows.
        let expires_at = token
            .schedule
            .lifetime
            .filter(|_| token.kind.expires())
            .map(|l| now.trunc_subsecs(0) + TimeDelta::from_std(l).unwrap_or(TimeDelta::MAX));
        let mut minted = issuer.mint(token, &label, expires_at).await;
        if matches!(&minted, Err(e) if e.kind == IssuerErrorKind::Conflict) {
            // The label is taken (two rotations in one second, or a name reserved forever): a fresh one, once.
            let bumped = issuer.label(token, now + TimeDelta::seconds(1));
            label = if bumped != label {
                bumped
            } else {
                issuer.label(token, now + TimeDelta::seconds(2))
            };
            tracing::warn!(token = %token.name, "the token label is taken at the issuer; retrying once with a fresh one");
            if let Some(r) = entry.rotation.as_mut() {
                r.label = Some(label.clone());
            }
            // The label may be taken by our own create whose answer was lost (reset, timeout, cut-off body) and
            // that the transport retry repeated: that token is untracked, so sweep once this rotation is done.
            entry.sweep |= !token.kind.is_singleton();
            self.journal.save_async(&entry).await?;
            minted = issuer.mint(token, &label, expires_at).await;
        }
        let minted = match minted {
            Ok(m) => m,
            Err(e) => {
                // A transport failure may hide a token that was created: look for it next time.
                entry.sweep |= e.kind == IssuerErrorKind::Unavailable && !token.kind.is_singleton();
                entry.rotation = None;
                self.journal.save_async(&entry).await?;
                return Err(Failure {
                    error: e.into(),
                    learned: Some((current, stored_everywhere)),
                    attempted: true,
                });
            }
        };
        failpoint("after-create");
        let own_credential = observed
            .iter()
            .filter_map(Observed::record)
            .any(|r| issuer.credential_is(&r.token));
        if own_credential || self.credential_lives_in(token) {
            self.switch_credential(token, issuer.as_ref(), &minted.value);
        }
        if let Some(r) = entry.rotation.as_mut() {
            r.phase = Phase::Minted;
            r.minted = Some((&minted).into());
        }
        self.journal.save_async(&entry).await?;
        failpoint("after-journal");
        tracing::info!(token = %token.name, issuer = %token.issuer, token_id = %minted.token_id, "minted and journaled a new token");
        let versions: HashMap<String, Version> = token
            .sinks
            .iter()
            .zip(observed.iter())
            .map(|(st, o)| (st.to_string(), o.version))
            .collect();
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

    /// Whether this token is written to the sink target its issuer reads its credential from.
    fn credential_lives_in(&self, token: &TokenPolicy) -> bool {
        match self.credential_refs.get(&token.issuer) {
            Some(crate::secret::SecretRef::Sink { sink, target }) => token
                .sinks
                .iter()
                .any(|st| &st.sink == sink && &st.target == target),
            _ => false,
        }
    }

    /// Self-rotation: the issuer's own credential was just replaced; use the new value from now on.
    fn switch_credential(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        value: &crate::secret::SecretString,
    ) {
        issuer.set_credential(value.clone());
        match self.credential_refs.get(&token.issuer) {
            Some(crate::secret::SecretRef::Sink { .. }) => tracing::info!(
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

    /// What `plan` shows: the current token per the sinks, the next due time and why, and journal state.
    /// Changes nothing.
    pub async fn inspect(
        &self,
        token: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<Inspection, String> {
        let sinks = self.sinks_of(token).map_err(|e| e.to_string())?;
        let observed = self
            .observe(token, &sinks)
            .await
            .map_err(|f| f.error.to_string())?;
        let (current, stored_everywhere) = current_of(&observed);
        let due = if current.is_some() && !stored_everywhere {
            Due {
                at: Some(now),
                reason: DueReason::SinksDisagree,
            }
        } else {
            schedule::next_due(&token.schedule, current.as_ref(), Duration::ZERO, now)
        };
        let entry = self.journal.load(&token.name).map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        if let Some(e) = &entry {
            if let Some(r) = &e.rotation {
                notes.push(match &r.minted {
                    Some(m) => format!(
                        "interrupted rotation holds token {} for {} sink(s)",
                        m.token_id,
                        token.sinks.len().saturating_sub(r.stored.len())
                    ),
                    None => "interrupted rotation before the issuer answered".to_string(),
                });
            }
            for rev in &e.revocations {
                notes.push(match &rev.after_use_of {
                    Some(s) => format!("{} to be revoked once {s} is used", rev.token_id),
                    None => format!(
                        "{} to be revoked at {}",
                        rev.token_id,
                        crate::record::rfc3339(rev.not_before)
                    ),
                });
            }
        }
        Ok(Inspection {
            current,
            stored_everywhere,
            due,
            notes,
        })
    }

    async fn observe(
        &self,
        token: &TokenPolicy,
        sinks: &[(SinkTarget, Arc<dyn Sink>)],
    ) -> Result<Vec<Observed>, Failure> {
        let reads = join_all(sinks.iter().map(|(st, sink)| async move {
            let r = (|| sink.read(&st.target))
                .retry(crate::retry::transient().with_max_times(2))
                .when(SinkError::retryable)
                .await;
            if let Ok(Observed {
                content: crate::sink::Content::Garbage(why),
                ..
            }) = &r
            {
                tracing::warn!(token = %token.name, sink = %st.sink, target = %st.target, reason = %why, "the sink target holds something that is not our record; treating it as no record");
            }
            r
        }))
        .await;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for r in reads {
            match r {
                Ok(o) => out.push(o),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(AttemptError::Sinks(errors.join("; ")).into())
        }
    }

    /// Pushes the journaled token to every sink that lacks it, verifies it, schedules the old token's revocation,
    /// sweeps orphans, and closes the rotation.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        sinks: &[(SinkTarget, Arc<dyn Sink>)],
        mut entry: Entry,
        versions: Option<HashMap<String, Version>>,
        now: DateTime<Utc>,
        started: Instant,
    ) -> Result<Tended, Failure> {
        let rotation = entry
            .rotation
            .clone()
            .expect("finish is called with a rotation");
        let minted = rotation
            .minted
            .clone()
            .expect("finish is called with a minted token");
        let current = to_current(minted.expires_at, minted.created_at, &minted.token_id);
        let record = SinkRecord {
            token: minted.value.clone(),
            token_id: minted.token_id.clone(),
            issuer: token.issuer.clone(),
            token_type: token.kind.type_name().to_string(),
            created_at: minted.created_at,
            expires_at: minted.expires_at,
        };
        let pending: Vec<&(SinkTarget, Arc<dyn Sink>)> = sinks
            .iter()
            .filter(|(st, _)| !rotation.stored.contains(&st.to_string()))
            .collect();
        let results = join_all(pending.iter().map(|(st, sink)| {
            let version = versions
                .as_ref()
                .and_then(|v| v.get(&st.to_string()).copied());
            let record = &record;
            async move {
                (
                    st,
                    self.store(token, sink.as_ref(), st, record, version).await,
                )
            }
        }))
        .await;
        let mut errors = Vec::new();
        for (st, r) in results {
            match r {
                Ok(()) => {
                    if let Some(r) = entry.rotation.as_mut() {
                        r.stored.push(st.to_string());
                    }
                    failpoint("after-sink-write");
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            // Partial progress is worth keeping; when every sink took it, the closing write below records that.
            // (A crash before then re-reads each sink, finds the record and does not write it again.)
            self.journal.save_async(&entry).await?;
        }
        let fail = |error: AttemptError, stored_everywhere: bool| Failure {
            error,
            learned: Some((Some(current.clone()), stored_everywhere)),
            attempted: true,
        };
        if !errors.is_empty() {
            if token.kind.is_singleton() {
                // SPEC §5.2: the issuer already replaced the old token; keep pushing this one, never re-mint.
                tracing::error!(token = %token.name, token_id = %minted.token_id, errors = %errors.join("; "), "the new token is minted but not stored in every sink; consumers of the old token are failing; retrying the sinks");
            }
            return Err(fail(AttemptError::Sinks(errors.join("; ")), false));
        }
        if rotation.phase != Phase::Verified {
            if token.kind.can_prove_itself() {
                if let Err(e) = issuer.verify(token, &minted.value).await {
                    return Err(fail(e.into(), true));
                }
                tracing::info!(token = %token.name, token_id = %minted.token_id, "the new token proved itself with the identity probe");
            }
            // Not journaled on its own (`Phase::Verified` is only read, from journals of earlier builds): the
            // closing write follows at once, and a crash in between only repeats the read-only identity probe.
            failpoint("after-verify");
        }
        // The old token goes only now: the new one is stored, read back everywhere and proven (SPEC §5.2).
        if let Some(old) = rotation.replaces.filter(|old| *old != minted.token_id) {
            let after_use_of = match token.kind {
                TokenKind::TfeAgent {
                    revoke_after_use: true,
                    ..
                } => Some(minted.token_id.clone()),
                _ => None,
            };
            entry.revocations.push(PendingRevocation {
                token_id: old,
                not_before: now
                    + TimeDelta::from_std(token.schedule.grace).unwrap_or(TimeDelta::MAX),
                after_use_of,
                attempts: 0,
            });
        }
        entry.rotation = None;
        self.journal.save_async(&entry).await?;
        self.metrics
            .rotation_duration
            .with_label_values(&[token.issuer.as_str()])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            token = %token.name,
            issuer = %token.issuer,
            token_id = %minted.token_id,
            expires_at = %minted.expires_at.map(crate::record::rfc3339).unwrap_or_else(|| "never".into()),
            duration_ms = started.elapsed().as_millis() as u64,
            "rotation complete"
        );
        // Housekeeping after the rotation counts: its failures are logged and retried, never undo the rotation.
        if let Err(e) = self.revoke_due(token, issuer, &mut entry, now).await {
            tracing::warn!(token = %token.name, error = %e.error, "revocation bookkeeping failed");
        }
        if entry.sweep {
            if let Err(e) = self
                .sweep(token, issuer, &mut entry, &[minted.token_id.as_str()])
                .await
            {
                tracing::warn!(token = %token.name, error = %e.error, "orphan sweep failed; it is retried at the next visit");
            }
        }
        let due = schedule::next_due(&token.schedule, Some(&current), Duration::ZERO, now);
        Ok(Tended {
            current: Some(current),
            stored_everywhere: true,
            due,
            rotated: true,
            wake_at: wake_time(&entry, now),
        })
    }

    /// Revokes the pending old tokens whose time has come; failures stay pending and are retried.
    async fn revoke_due(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        if entry.revocations.is_empty() {
            return Ok(());
        }
        let needs_list = entry.revocations.iter().any(|r| r.after_use_of.is_some());
        let listed = if needs_list {
            match issuer.list_own(token).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(token = %token.name, error = %e, "cannot read last-used-at of the new token; will look again");
                    None
                }
            }
        } else {
            None
        };
        let mut kept = Vec::new();
        let mut attempted = false;
        for mut rev in std::mem::take(&mut entry.revocations) {
            let due = match &rev.after_use_of {
                None => rev.not_before <= now,
                Some(successor) => listed
                    .as_ref()
                    .and_then(|l| l.iter().find(|t| &t.token_id == successor))
                    .is_some_and(|t| t.last_used_at.is_some()),
            };
            if !due {
                kept.push(rev);
                continue;
            }
            failpoint("before-revoke");
            attempted = true;
            match issuer.revoke(token, &rev.token_id).await {
                Ok(()) => {
                    failpoint("after-revoke");
                    self.metrics.count_revocation(&token.name, true);
                    tracing::info!(token = %token.name, token_id = %rev.token_id, outcome = "revoked", "revoked the old token");
                }
                Err(e) => {
                    self.metrics.count_revocation(&token.name, false);
                    rev.attempts += 1;
                    tracing::warn!(token = %token.name, token_id = %rev.token_id, attempts = rev.attempts, error = %e, "revoking the old token failed; will retry");
                    // Retry with the attempt backoff rather than at once.
                    rev.not_before = now
                        + TimeDelta::from_std(crate::retry::attempt_backoff(rev.attempts))
                            .unwrap_or(TimeDelta::MAX);
                    kept.push(rev);
                }
            }
        }
        entry.revocations = kept;
        // Nothing was due: the entry is unchanged (callers save their own changes before calling this), so no
        // fsync'd rewrite on every visit of a token whose old token is still in its grace period.
        if attempted {
            self.journal.save_async(entry).await?;
        }
        Ok(())
    }

    /// Revokes tokens that carry our label for this policy token but are neither current nor pending (SPEC §5.3).
    async fn sweep(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
        keep: &[&str],
    ) -> Result<(), Failure> {
        let listed = issuer
            .list_own(token)
            .await
            .map_err(|e| Failure::from(AttemptError::from(e)))?;
        for t in listed {
            let tracked = keep.contains(&t.token_id.as_str())
                || entry.revocations.iter().any(|r| r.token_id == t.token_id)
                || entry
                    .rotation
                    .as_ref()
                    .and_then(|r| r.minted.as_ref())
                    .is_some_and(|m| m.token_id == t.token_id);
            if tracked {
                continue;
            }
            match issuer.revoke(token, &t.token_id).await {
                Ok(()) => {
                    self.metrics.count_revocation(&token.name, true);
                    tracing::warn!(token = %token.name, token_id = %t.token_id, label = %t.label, outcome = "revoked", "revoked an orphaned token this daemon had minted but no longer tracked");
                }
                Err(e) => {
                    self.metrics.count_revocation(&token.name, false);
                    return Err(AttemptError::from(e).into());
                }
            }
        }
        entry.sweep = false;
        self.journal.save_async(entry).await?;
        Ok(())
    }

    /// Writes one record with check-and-set, then reads it back and compares.
    async fn store(
        &self,
        token: &TokenPolicy,
        sink: &dyn Sink,
        st: &SinkTarget,
        record: &SinkRecord,
        version: Option<Version>,
    ) -> Result<(), SinkError> {
        let started = Instant::now();
        let result = async {
            let version = match version {
                Some(v) => v,
                // Resuming: re-read first (SPEC §5.8); the record may already be there from before the crash.
                None => {
                    let o = sink.read(&st.target).await?;
                    if o.record().is_some_and(|r| r.same_as(record)) {
                        return Ok(());
                    }
                    o.version
                }
            };
            let write = (|| sink.write(&st.target, record, version))
                .retry(crate::retry::transient())
                .when(SinkError::retryable)
                .notify(|e, wait| {
                    tracing::warn!(token = %token.name, sink = %st.sink, error = %e, retry_in_ms = wait.as_millis() as u64, "sink write failed; retrying");
                })
                .await;
            if let Err(e) = write {
                // A retried write whose first try landed meets its own version: accept it only if it is ours.
                if e.kind == SinkErrorKind::Conflict {
                    if let Ok(o) = sink.read(&st.target).await {
                        if o.record().is_some_and(|r| r.same_as(record)) {
                            return Ok(());
                        }
                    }
                }
                return Err(e);
            }
            let back = sink.read(&st.target).await?;
            match back.record() {
                Some(r) if r.same_as(record) => Ok(()),
                _ => Err(SinkError {
                    sink: st.sink.clone(),
                    kind: SinkErrorKind::Mismatch,
                    message: format!("read-back of {} does not match what was written", st.target),
                }),
            }
        }
        .await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .sink_writes
            .with_label_values(&[st.sink.as_str(), label])
            .inc();
        match &result {
            Ok(()) => {
                tracing::info!(token = %token.name, sink = %st.sink, target = %st.target, token_id = %record.token_id, outcome = "stored", duration_ms = started.elapsed().as_millis() as u64, "stored and read back")
            }
            Err(e) => {
                tracing::warn!(token = %token.name, sink = %st.sink, target = %st.target, outcome = "failed", error = %e, "sink write failed")
            }
        }
        result
    }
}

/// The newest record across the sinks, and whether every sink holds exactly it.
fn current_of(observed: &[Observed]) -> (Option<CurrentToken>, bool) {
    let newest = observed
        .iter()
        .filter_map(Observed::record)
        .max_by_key(|r| r.created_at);
    let Some(newest) = newest else {
        return (None, false);
    };
    let everywhere = observed
        .iter()
        .all(|o| o.record().is_some_and(|r| r.same_as(newest)));
    (
        Some(to_current(
            newest.expires_at,
            newest.created_at,
            &newest.token_id,
        )),
        everywhere,
    )
}
