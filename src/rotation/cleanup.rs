//! After a rotation: old tokens are revoked when their time comes, and tokens this daemon created but no longer
//! tracks (a create whose answer was lost, a crash before the journal write) are found by their label and revoked
//! (SPEC §5.3) — never one that any record or journal entry names (SPEC §5.11).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{delta, failpoint, AttemptError, Failure, Rotator};
use crate::issuer::{IssuedToken, Issuer};
use crate::journal::{id_digest, Entry, PendingRevocation};
use crate::policy::TokenPolicy;

/// How often an old token waiting for its successor's first use is looked at again.
const AFTER_USE_POLL: Duration = Duration::from_secs(60);
/// How often the last use of an old token in its grace is read (SPEC §10's previous-token metric), for types whose
/// issuer shows it.
const PREVIOUS_USE_POLL: Duration = Duration::from_secs(300);
/// The issuer stamps the daemon's own identity probe of a new token as a use, by its own clock: a use counts only
/// when later than the probe's end plus this margin (clock difference, a stamp recorded late).
pub(super) const PROBE_STAMP_MARGIN: Duration = Duration::from_secs(30);

/// The earliest time a pending revocation needs attention (`None`: nothing pending that a visit could do).
pub(super) fn wake_time(
    token: &TokenPolicy,
    entry: &Entry,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let notice = super::notify::wake_time(entry, now);
    // Nothing is revoked before the consumers are told of the rotation.
    if super::notify::rotated_pending(entry) {
        return notice;
    }
    let watch = token.kind.shows_last_use();
    let revocation = entry
        .revocations
        .iter()
        .filter(|r| !r.held)
        .map(|r| match (&r.after_use_of, watch) {
            (Some(_), _) if r.use_after.is_none() => now + delta(AFTER_USE_POLL),
            (Some(_), _) => r.not_before.min(now + delta(AFTER_USE_POLL)),
            (None, true) => r.not_before.min(now + delta(PREVIOUS_USE_POLL)),
            (None, false) => r.not_before,
        })
        .min();
    match (notice, revocation) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The successor `rev` waits for was just probed by the daemon (stamped as a use): only uses after this probe, by
/// the margin, and after the last use first read from now on are a consumer's.
pub(super) fn watch_uses_from(rev: &mut PendingRevocation, now: DateTime<Utc>) {
    rev.use_after = Some(now + delta(PROBE_STAMP_MARGIN));
    rev.baseline_taken = false;
    rev.use_baseline = None;
}

/// Whether the successor `rev` waits for has been used by a consumer (its own probe not counted), as `listed`
/// shows; takes the baseline the first time it is read.
fn successor_used(rev: &mut PendingRevocation, listed: Option<&[IssuedToken]>) -> (bool, bool) {
    let Some(successor) = &rev.after_use_of else {
        return (false, false);
    };
    let Some(t) = listed.and_then(|l| l.iter().find(|t| &t.token_id == successor)) else {
        return (false, false);
    };
    let Some(after) = rev.use_after else {
        // A successor the daemon never touches (an agent token): any use is a consumer's.
        return (t.last_used_at.is_some(), false);
    };
    if !rev.baseline_taken {
        rev.baseline_taken = true;
        rev.use_baseline = t.last_used_at;
        return (false, true);
    }
    let used = t
        .last_used_at
        .is_some_and(|u| u > after && rev.use_baseline.is_none_or(|b| u > b));
    tracing::debug!(successor = %successor, last_used = ?t.last_used_at, use_after = %after, baseline = ?rev.use_baseline, used, "the successor's last use, as the issuer shows it");
    (used, false)
}

impl Rotator {
    /// Revokes the pending old tokens whose time has come (their `grace` is over, or the successor they wait for
    /// was used); failures stay pending and are retried with backoff. Reads the issuer's list of the token's
    /// tokens where it shows their last use, for `revoke_after_use` and the previous-token metric.
    pub(super) async fn revoke_due(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        if entry.revocations.iter().all(|r| r.held) {
            self.show_previous_use(token, None);
            return Ok(());
        }
        if super::notify::rotated_pending(entry) {
            tracing::debug!(token = %token.name, "old tokens wait until the consumers are told of the rotation");
            return Ok(());
        }
        let listed = if token.kind.shows_last_use() {
            match issuer.list_own(token).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(token = %token.name, error = %e, "cannot read when the old and new tokens were last used; will look again");
                    None
                }
            }
        } else {
            None
        };
        let last_use = |id: &str| {
            listed
                .as_ref()
                .and_then(|l| l.iter().find(|t| t.token_id == id))
                .and_then(|t| t.last_used_at)
        };
        let mut kept = Vec::new();
        let mut changed = false;
        for mut rev in std::mem::take(&mut entry.revocations) {
            let (used, baseline) = if rev.held {
                (false, false)
            } else {
                successor_used(&mut rev, listed.as_deref())
            };
            changed |= baseline;
            // An agent token's successor is proven only by its use: with `revoke_after_use` the old one waits for
            // it whatever `grace` says (SPEC §3). Team and Pulumi tokens: the use or `grace`, whichever comes first
            // (SPEC §10).
            let grace_over =
                rev.not_before <= now && !(rev.after_use_of.is_some() && rev.use_after.is_none());
            let due = !rev.held && (grace_over || used);
            if !due {
                kept.push(rev);
                continue;
            }
            // SPEC §10: say so when a consumer was still on the old token after the new one was stored.
            if let (Some(used_at), Some(queued)) = (last_use(&rev.token_id), rev.queued_at) {
                if used_at > queued {
                    tracing::warn!(token = %token.name, token_id = %rev.token_id, last_used_at = %crate::record::rfc3339(used_at), successor_stored_at = %crate::record::rfc3339(queued), "revoking an old token that was used after its successor was stored: a consumer has not cut over and will now fail");
                }
            }
            failpoint("before-revoke");
            changed = true;
            match issuer.revoke(token, &rev.token_id).await {
                Ok(()) => {
                    failpoint("after-revoke");
                    self.metrics.count_revocation(&token.name, true);
                    let why = if used {
                        "its successor was used"
                    } else {
                        "grace is over"
                    };
                    tracing::info!(token = %token.name, token_id = %rev.token_id, outcome = "revoked", reason = why, "revoked the old token");
                }
                Err(e) => {
                    self.metrics.count_revocation(&token.name, false);
                    rev.attempts += 1;
                    tracing::warn!(token = %token.name, token_id = %rev.token_id, attempts = rev.attempts, error = %e, "revoking the old token failed; will retry");
                    // Retry with the attempt backoff rather than at once.
                    rev.not_before = now + delta(crate::retry::attempt_backoff(rev.attempts));
                    kept.push(rev);
                }
            }
        }
        entry.revocations = kept;
        let previous = entry
            .revocations
            .iter()
            .filter(|r| !r.held)
            .filter_map(|r| last_use(&r.token_id))
            .max();
        if listed.is_some() || entry.revocations.is_empty() {
            self.show_previous_use(token, previous);
        }
        // Nothing changed: no fsync'd rewrite on every visit of a token whose old token is still in its grace
        // period (callers save their own changes before calling this).
        if changed {
            self.journal.save(entry).await?;
        }
        Ok(())
    }

    /// `token_rotator_previous_token_last_used_timestamp_seconds`: the last use of an old token still in grace.
    pub(super) fn show_previous_use(&self, token: &TokenPolicy, at: Option<DateTime<Utc>>) {
        if let Some(board) = &self.board {
            board.update(&token.name, |s| s.previous_last_used = at);
        }
    }

    /// The daemon's own probe of `current` was just stamped as a use by the issuer: a revocation waiting for that
    /// token's first use takes a fresh baseline (SPEC §10: the daemon's probe is not a use).
    pub(super) fn probed_successor(entry: &mut Entry, current: &str, now: DateTime<Utc>) -> bool {
        let mut changed = false;
        for r in entry
            .revocations
            .iter_mut()
            .filter(|r| r.after_use_of.as_deref() == Some(current) && r.use_after.is_some())
        {
            watch_uses_from(r, now);
            changed = true;
        }
        changed
    }

    /// Revokes tokens that carry our label for this policy token but that no record and no journal entry names
    /// (SPEC §5.3, §5.11).
    pub(super) async fn sweep(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
    ) -> Result<(), Failure> {
        let listed = issuer
            .list_own(token)
            .await
            .map_err(|e| Failure::from(AttemptError::from(e)))?;
        if !listed.is_empty() {
            let mut claimed = self.claimed(token).await?;
            claimed.extend(entry.named_ids().map(id_digest));
            for t in listed {
                if claimed.contains(&id_digest(&t.token_id)) {
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
        }
        entry.sweep = false;
        self.journal.save(entry).await?;
        Ok(())
    }

    /// The [`id_digest`]s of every token id that the records and journal entries of the policy's tokens name
    /// (`token`'s included; every issuer's, since two issuer tables may reach one service with one credential). A
    /// token whose records were not read yet in this process is read now. A neighbour that cannot be read is passed
    /// over with a warning: labels are unique per scope (`check`), so this is the second line of defence, and one
    /// broken token must not stop another's housekeeping (SPEC §5.5). This token's own records must be read, or no
    /// sweep.
    async fn claimed(&self, token: &TokenPolicy) -> Result<HashSet<u64>, Failure> {
        let mut ids = HashSet::new();
        let others = self
            .tokens
            .iter()
            .filter(|t| t.name != token.name)
            .map(|t| t.as_ref());
        for t in std::iter::once(token).chain(others) {
            let own = t.name == token.name;
            let seen = match self.journal.seen(&t.name) {
                Some(seen) => Some(seen),
                None => {
                    let read = async {
                        let sinks = self.sinks_of(t)?;
                        self.observe(t, &sinks).await?;
                        Ok::<_, Failure>(self.journal.seen(&t.name).unwrap_or_default())
                    };
                    match read.await {
                        Ok(seen) => Some(seen),
                        Err(e) if own => return Err(e),
                        Err(e) => {
                            tracing::warn!(token = %token.name, neighbour = %t.name, error = %e.error, "the orphan sweep cannot read a neighbour's records; its labels are distinct, so it goes on");
                            None
                        }
                    }
                }
            };
            ids.extend(seen.into_iter().flatten());
            match self.journal.peek(&t.name).await {
                Ok(Some(e)) => ids.extend(e.named_ids().map(id_digest)),
                Ok(None) => {}
                Err(e) if own => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(token = %token.name, neighbour = %t.name, error = %e, "the orphan sweep cannot read a neighbour's journal entry; its labels are distinct, so it goes on")
                }
            }
        }
        Ok(ids)
    }
}
