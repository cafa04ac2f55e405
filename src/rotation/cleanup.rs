//! After a rotation: old tokens are revoked when their time comes, and tokens this daemon created but no longer
//! tracks (a create whose answer was lost, a crash before the journal write) are found by their label and revoked
//! (SPEC §5.3) — never one that any record or journal entry names (SPEC §5.11).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{delta, failpoint, AttemptError, Failure, Rotator};
use crate::issuer::Issuer;
use crate::journal::Entry;
use crate::policy::TokenPolicy;

/// How often an old token waiting for its successor's first use is looked at again.
const AFTER_USE_POLL: Duration = Duration::from_secs(60);

/// The earliest time a pending revocation needs attention (`None`: nothing pending that a visit could do).
pub(super) fn wake_time(entry: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let notice = super::notify::wake_time(entry);
    // Nothing is revoked before the consumers are told of the rotation.
    if super::notify::rotated_pending(entry) {
        return notice;
    }
    let revocation = entry
        .revocations
        .iter()
        .filter(|r| !r.held)
        .map(|r| match r.after_use_of {
            Some(_) => now + delta(AFTER_USE_POLL),
            None => r.not_before,
        })
        .min();
    match (notice, revocation) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Rotator {
    /// Revokes the pending old tokens whose time has come; failures stay pending and are retried with backoff.
    pub(super) async fn revoke_due(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        entry: &mut Entry,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        if entry.revocations.iter().all(|r| r.held) {
            return Ok(());
        }
        if super::notify::rotated_pending(entry) {
            tracing::debug!(token = %token.name, "old tokens wait until the consumers are told of the rotation");
            return Ok(());
        }
        let needs_list = entry
            .revocations
            .iter()
            .any(|r| !r.held && r.after_use_of.is_some());
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
            let due = !rev.held
                && match &rev.after_use_of {
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
                    rev.not_before = now + delta(crate::retry::attempt_backoff(rev.attempts));
                    kept.push(rev);
                }
            }
        }
        entry.revocations = kept;
        // Nothing was due: the entry is unchanged (callers save their own changes before calling this), so no
        // fsync'd rewrite on every visit of a token whose old token is still in its grace period.
        if attempted {
            self.journal.save(entry).await?;
        }
        Ok(())
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
            claimed.extend(entry.named_ids().map(str::to_string));
            for t in listed {
                if claimed.contains(&t.token_id) {
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

    /// Every token id that the records and journal entries of the policy's tokens name (`token`'s included; every
    /// issuer's, since two issuer tables may reach one service with one credential). A token whose records were
    /// not read yet in this process is read now. A neighbour that cannot be read is passed over with a warning:
    /// labels are unique per scope (`check`), so this is the second line of defence, and one broken token must
    /// not stop another's housekeeping (SPEC §5.5). This token's own records must be read, or no sweep.
    async fn claimed(&self, token: &TokenPolicy) -> Result<HashSet<String>, Failure> {
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
                Ok(Some(e)) => ids.extend(e.named_ids().map(str::to_string)),
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
