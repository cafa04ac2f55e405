//! The second half of a rotation: the journaled token goes to every sink that lacks it (check-and-set, read back),
//! is proven with the identity probe, and only then is the old token queued for revocation (SPEC §5.2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use backon::Retryable;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;

use super::{
    delta, failpoint, to_current, AttemptError, Failure, Rotator, SinkFailures, Tended,
    MAX_PROBE_FAILURES,
};
use crate::issuer::Issuer;
use crate::issuer::IssuerErrorKind;
use crate::journal::{Entry, PendingRevocation, Phase, Rotation};
use crate::policy::{SinkTarget, TokenPolicy};
use crate::record::{MintedToken, SinkRecord};
use crate::schedule;
use crate::sink::{Sink, SinkError, SinkErrorKind, Version};

/// The first wait before a read-back that lagged is read again, doubling up to [`READ_BACK_LAG_MAX`] (about 3.75 s
/// of waiting in all).
const READ_BACK_LAG: std::time::Duration = std::time::Duration::from_millis(250);
const READ_BACK_LAG_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl Rotator {
    /// Pushes the journaled token to every sink that lacks it, verifies it, schedules the old token's revocation,
    /// sweeps orphans, and closes the rotation.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish(
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
        let fail = |error: AttemptError, stored_everywhere: bool| Failure {
            error,
            learned: Some((Some(current.clone()), stored_everywhere)),
            attempted: true,
        };
        if token.kind.is_singleton()
            && self.credential_lives_in(token)
            && !issuer.credential_is(&minted.value)
        {
            // Resumed after a restart: the issuer read its credential from a record that still held the value this
            // create replaced (dead now). Calls with it — a delivery target that borrows it, the next visit — must
            // use the new one.
            self.switch_credential(token, issuer, &minted.value);
        }
        let record = SinkRecord {
            token: minted.value.clone(),
            token_id: minted.token_id.clone(),
            issuer: token.issuer.to_string(),
            token_type: token.kind.type_name().to_string(),
            created_at: minted.created_at,
            expires_at: minted.expires_at,
        };
        let pending: Vec<&(SinkTarget, Arc<dyn Sink>)> = sinks
            .iter()
            // A local target (a file) is this instance's own: another instance's journal saying it holds the
            // value says nothing of this one's copy (a resumed write re-reads first and skips a copy in place).
            .filter(|(st, _)| {
                !rotation.stored.contains(&st.to_string())
                    || (self.level_locals && self.local_sinks.contains(&*st.sink))
            })
            .collect();
        // The records first; the delivery targets (SPEC §11) only once every record holds the new token, so that a
        // consumer never holds a token the daemon could lose track of.
        let (deliveries, records): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(st, _)| st.target.is_delivery());
        let mut errors = Vec::new();
        for (delivering, batch) in [(false, records), (true, deliveries)] {
            if !errors.is_empty() || batch.is_empty() {
                continue;
            }
            if delivering {
                failpoint("before-delivery");
            }
            let results = join_all(batch.iter().map(|(st, sink)| {
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
            for (st, r) in results {
                match r {
                    Ok(()) => {
                        if let Some(r) = entry.rotation.as_mut() {
                            r.stored.push(st.to_string());
                        }
                        failpoint("after-sink-write");
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if !errors.is_empty() {
            // Partial progress is worth keeping; when every sink took it, the closing write below records that.
            // (A crash before then re-reads each sink, finds the record and does not write it again.)
            self.save_on_failure(&entry).await;
            let errors = SinkFailures(errors);
            if token.kind.is_singleton() {
                // SPEC §5.2: the issuer already replaced the old token; keep pushing this one, never re-mint.
                tracing::error!(token = %token.name, token_id = %minted.token_id, errors = %errors, "the new token is minted but not stored in every sink; consumers of the old token are failing; retrying the sinks");
            }
            return Err(fail(AttemptError::Sinks(errors), false));
        }
        // Every record names the new token now (the sweep must never take it for an orphan).
        self.journal
            .note_seen(&token.name, [minted.token_id.as_str()]);
        if rotation.phase != Phase::Verified && token.kind.can_prove_itself() {
            if let Err(e) = issuer.verify(token, &minted.value).await {
                return Err(fail(
                    self.probe_refused(token, &mut entry, &rotation, &minted, e, now)
                        .await,
                    true,
                ));
            }
            tracing::info!(token = %token.name, token_id = %minted.token_id, "the new token proved itself with the identity probe");
            // Not journaled on its own (`Phase::Verified` is only read, from journals of earlier builds): the
            // closing write follows at once, and a crash in between only repeats the read-only identity probe.
            failpoint("after-verify");
        }
        if rotation.own_credential {
            self.switch_credential(token, issuer, &minted.value);
        }
        // `grace` runs from now, when the new token is stored everywhere and proven — not from the visit's start
        // (sink retries and probes can take minutes).
        let now = crate::clock::now().max(now);
        // The old token goes only now: the new one is stored, read back everywhere and proven (SPEC §5.2).
        // A token the daemon itself calls an issuer with is "used" by every request it makes: its first use says
        // nothing of the consumers, so its old token waits for `grace`.
        let daemon_uses = rotation.own_credential || self.is_a_credential(token);
        queue_revocations(token, &mut entry, &rotation, &minted, daemon_uses, now);
        // Consumers are told before the old token goes: the event is journaled with the closing write.
        super::notify::queue_rotated(token, &mut entry, &minted, now);
        entry.rotation = None;
        entry.must_rotate = None;
        self.journal.save(&entry).await.map_err(|e| {
            // Held in memory: the next visit writes it and closes the rotation from there.
            fail(e.into(), true)
        })?;
        self.metrics
            .rotation_duration
            .with_label_values(&[&*token.issuer])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            token = %token.name,
            issuer = %token.issuer,
            token_id = %minted.token_id,
            expires_at = %minted.expires_at.map(crate::record::rfc3339).unwrap_or_else(|| "never".into()),
            duration_ms = started.elapsed().as_millis() as u64,
            "rotation complete"
        );
        failpoint("before-notify");
        // Housekeeping after the rotation counts: its failures are logged and retried, never undo the rotation.
        if let Err(e) = self
            .deliver_notices(token, &mut entry, Some(&minted.token_id), now)
            .await
        {
            tracing::warn!(token = %token.name, error = %e.error, "notify bookkeeping failed");
        }
        // Right after a rotation, without `revoke_after_use`, only revocations whose time has come are worth the
        // issuer's token list, which costs a rate-limited request or two (two thirds of a team token's rotation,
        // BENCHMARKS.md row k); the list is read at the next visit. A revocation that waits for a use needs its
        // baseline read now (SPEC §10), so with one the list is read as before.
        if entry
            .revocations
            .iter()
            .any(|r| !r.held && (r.not_before <= now || r.after_use_of.is_some()))
        {
            if let Err(e) = self.revoke_due(token, issuer, &mut entry, now).await {
                tracing::warn!(token = %token.name, error = %e.error, "revocation bookkeeping failed");
            }
        } else if entry.revocations.iter().all(|r| r.held) {
            self.show_previous_use(token, None);
        }
        if entry.sweep {
            if let Err(e) = self.sweep(token, issuer, &mut entry).await {
                tracing::warn!(token = %token.name, error = %e.error, "orphan sweep failed; it is retried at the next visit");
            }
        }
        let due = schedule::next_due(
            &token.schedule,
            Some(&current),
            std::time::Duration::ZERO,
            now,
        );
        Ok(Tended {
            current: Some(current),
            stored_everywhere: true,
            due,
            rotated: true,
            wake_at: super::cleanup::wake_time(token, &entry, now),
            unready: None,
        })
    }

    /// The new token's probe failed. A transient failure (the issuer is down) is tried again with the same value;
    /// a refusal (401/403) is counted, and after [`MAX_PROBE_FAILURES`] the value is given up: the next attempt
    /// mints a fresh token, and the tokens of this rotation are revoked once that one is stored and verified
    /// (SPEC §5.14). The token never stays stuck on one failed value.
    async fn probe_refused(
        &self,
        token: &TokenPolicy,
        entry: &mut Entry,
        rotation: &Rotation,
        minted: &MintedToken,
        error: crate::issuer::IssuerError,
        now: DateTime<Utc>,
    ) -> AttemptError {
        // Only the issuer refusing the token counts; anything else (an outage, a refused certificate) says
        // nothing about the value and follows the ordinary retry rules.
        if !matches!(
            error.kind,
            IssuerErrorKind::Unauthorized | IssuerErrorKind::Forbidden
        ) {
            return error.into();
        }
        let attempt = rotation.probe_failures + 1;
        let gave_up = attempt >= MAX_PROBE_FAILURES;
        if gave_up {
            tracing::error!(token = %token.name, token_id = %minted.token_id, attempts = attempt, error = %error, "the new token keeps failing its identity probe; giving it up, a fresh one is minted at the next attempt");
            if !token.kind.is_singleton() {
                for id in rotation
                    .replaces
                    .iter()
                    .chain(std::iter::once(&minted.token_id))
                {
                    if !entry.revocations.iter().any(|r| &r.token_id == id) {
                        entry.revocations.push(PendingRevocation {
                            token_id: id.clone(),
                            not_before: now,
                            after_use_of: None,
                            attempts: 0,
                            held: true,
                            ..Default::default()
                        });
                    }
                }
            }
            entry.rotation = None;
            entry.must_rotate = Some(format!(
                "the new token {} failed its identity probe {attempt} times",
                minted.token_id
            ));
        } else if let Some(r) = entry.rotation.as_mut() {
            r.probe_failures = attempt;
        }
        self.save_on_failure(entry).await;
        AttemptError::ProbeRefused {
            token_id: minted.token_id.clone(),
            attempt,
            gave_up,
            error,
        }
    }

    /// Writes one record with check-and-set, then reads it back and compares.
    pub(super) async fn store(
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
                    if o.surely_holds(record) {
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
                        if o.surely_holds(record) {
                            return Ok(());
                        }
                    }
                }
                return Err(e);
            }
            // A store may answer reads from a replica that lags the write it just acknowledged (OpenBao's standby
            // nodes serve reads by default: https://openbao.org/docs/next/concepts/consistency/), so a read-back
            // that shows the old value is read again a few times before the write counts as failed.
            let mut lag = READ_BACK_LAG;
            loop {
                let back = sink.read(&st.target).await?;
                match back.holds(record) {
                    true => break Ok(()),
                    false if lag <= READ_BACK_LAG_MAX => {
                        tokio::time::sleep(lag).await;
                        lag *= 2;
                    }
                    false => {
                        break Err(SinkError {
                            sink: st.sink.to_string(),
                            kind: SinkErrorKind::Mismatch,
                            message: format!(
                                "read-back of {} does not match what was written",
                                st.target
                            ),
                        })
                    }
                }
            }
        }
        .await;
        // A store that echoes what it was sent must not show the value being written.
        let result = result.map_err(|mut e| {
            e.message = crate::redact::outside_text(&e.message, &[&record.token]);
            e
        });
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .sink_writes
            .with_label_values(&[&*st.sink, label])
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

/// The rotation is complete: its old token (coexisting types) is queued for revocation after `grace`, tokens held
/// for a verified successor get their `grace` from now, and a revocation waiting for the use of the token just
/// replaced now waits for the new one (an old agent token is never stranded behind a successor that was itself
/// replaced before it was used).
fn queue_revocations(
    token: &TokenPolicy,
    entry: &mut Entry,
    rotation: &Rotation,
    minted: &MintedToken,
    daemon_uses: bool,
    now: DateTime<Utc>,
) {
    let not_before = now + delta(token.schedule.grace);
    for r in entry.revocations.iter_mut().filter(|r| r.held) {
        r.held = false;
        r.not_before = not_before;
        r.queued_at = Some(now);
    }
    let Some(old) = rotation
        .replaces
        .as_ref()
        .filter(|old| **old != minted.token_id)
    else {
        return;
    };
    for r in &mut entry.revocations {
        if r.after_use_of.as_ref() == Some(old) {
            r.after_use_of = Some(minted.token_id.clone());
            // The new successor was just probed: its uses are counted from now on.
            if r.use_after.is_some() {
                super::cleanup::watch_uses_from(r, now);
            }
        }
    }
    if entry.revocations.iter().any(|r| &r.token_id == old) {
        return;
    }
    if token.schedule.revoke_after_use && daemon_uses {
        tracing::info!(token = %token.name, "this token is an issuer credential of the daemon, so its uses are the daemon's own: the old token is revoked after `grace`, not at the new one's first use");
    }
    let after_use_of =
        (token.schedule.revoke_after_use && !daemon_uses).then(|| minted.token_id.clone());
    // The identity probe just stamped the successor's last use: only a later one is a consumer's.
    let use_after = (after_use_of.is_some() && token.kind.can_prove_itself())
        .then(|| now + delta(super::cleanup::PROBE_STAMP_MARGIN));
    entry.revocations.push(PendingRevocation {
        token_id: old.clone(),
        not_before,
        after_use_of,
        attempts: 0,
        held: false,
        queued_at: Some(now),
        use_after,
        ..Default::default()
    });
}
