//! Telling consumers (SPEC §9): the events a token's `notify` actions run for, journaled before any action runs
//! (a crash between the store and the action still runs it after the restart), run in order, each tried again
//! with backoff until it works or a newer event of the token supersedes it. While a `rotated` event is pending the
//! token's old tokens are not revoked: consumers are told before the token they hold goes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{delta, failpoint, Failure, Rotator};
use crate::journal::{Entry, PendingNotice};
use crate::notify::Message;
use crate::policy::notify::{ActionTarget, NotifyEvent};
use crate::policy::TokenPolicy;
use crate::record::MintedToken;
use crate::status::CurrentToken;

/// The first wait after a failed action, doubled per failure up to [`RETRY_MAX`] (SPEC §9: first retries within
/// seconds, capped at a few minutes).
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

fn retry_after(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(RETRY_MAX)
}

fn delivery_id() -> String {
    format!(
        "{:016x}{:016x}",
        crate::clock::random_u64(),
        crate::clock::random_u64()
    )
}

/// Whether a `rotated` event is still to be told: the token's old tokens wait for it.
pub(super) fn rotated_pending(entry: &Entry) -> bool {
    entry
        .notices
        .iter()
        .any(|n| n.event == NotifyEvent::Rotated.as_str())
}

/// How soon an event that was due but could not run (a `rotated` one whose token the sinks no longer all hold, or
/// one waiting behind a rotation in progress) is looked at again.
const BLOCKED_RECHECK: Duration = Duration::from_secs(60);

/// When a pending event may be tried again. A visit runs every event that is due and can run, so one still due
/// after it is blocked: looked at again in a minute rather than at once (a visit must never reschedule itself for
/// now).
pub(super) fn wake_time(entry: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    entry
        .notices
        .iter()
        .map(|n| {
            if n.not_before > now {
                n.not_before
            } else {
                now + delta(BLOCKED_RECHECK)
            }
        })
        .min()
}

/// Queues `rotated` for a rotation that just completed (into the entry of its closing write). It supersedes every
/// event still pending: the consumers are about to hear of the newest token.
pub(super) fn queue_rotated(
    token: &TokenPolicy,
    entry: &mut Entry,
    minted: &MintedToken,
    now: DateTime<Utc>,
) {
    if !token.notify.wants(NotifyEvent::Rotated) {
        entry.notices.clear();
        return;
    }
    entry.notices.clear();
    entry.notices.push(PendingNotice {
        delivery: delivery_id(),
        event: NotifyEvent::Rotated.as_str().into(),
        token_id: Some(minted.token_id.clone()),
        created_at: Some(minted.created_at),
        expires_at: minted.expires_at,
        done: 0,
        attempts: 0,
        not_before: now,
    });
}

impl Rotator {
    /// Runs the pending events whose time has come, oldest first, each action in order; stops at the first
    /// failure (the rest keep their order and wait). Saves the entry when anything changed.
    ///
    /// `holding`: the token id every sink target of the token was just seen to hold. A `rotated` event runs only
    /// for that token: its receivers must find it in the sinks (a rotation given up since may have stored another;
    /// the next completed one supersedes the event).
    pub(super) async fn deliver_notices(
        &self,
        token: &TokenPolicy,
        entry: &mut Entry,
        holding: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        let before = entry.notices.len();
        // A reload may have removed the actions or the event: nothing left to run for those.
        entry.notices.retain(|n| {
            [NotifyEvent::Rotated, NotifyEvent::Failed]
                .iter()
                .any(|e| e.as_str() == n.event && token.notify.wants(*e))
        });
        let mut changed = entry.notices.len() != before;
        let rotating = entry.rotation.is_some();
        let mut i = 0;
        while let Some(notice) = entry.notices.get_mut(i) {
            // A rotation in progress will supersede a `rotated` event when it closes; meanwhile (or after a
            // rotation given up) the sinks may hold another token than the one it names. Such an event waits, and
            // does not hold back a `failed` one behind it.
            let stale = notice.event == NotifyEvent::Rotated.as_str()
                && (rotating || holding.is_none() || notice.token_id.as_deref() != holding);
            if stale {
                i += 1;
                continue;
            }
            if notice.not_before > now {
                break;
            }
            let message = Message {
                event: notice.event.clone(),
                token: token.name.to_string(),
                token_id: notice.token_id.clone(),
                issuer: token.issuer.to_string(),
                token_type: token.kind.type_name().to_string(),
                created_at: notice.created_at,
                expires_at: notice.expires_at,
                delivery: notice.delivery.clone(),
            };
            let mut failed = false;
            while let Some(action) = token.notify.actions.get(notice.done) {
                let secret = match &action.target {
                    ActionTarget::Webhook { secret, .. } => match self.resolve_secret(secret).await
                    {
                        Ok(s) => Some(s),
                        Err(why) => {
                            failed = true;
                            self.notice_failed(
                                token,
                                notice,
                                action,
                                &format!("its secret ({secret}): {why}"),
                                now,
                            );
                            break;
                        }
                    },
                    ActionTarget::Exec { .. } => None,
                };
                let result = self
                    .deliverer
                    .deliver(action, &message, secret.as_ref())
                    .await;
                changed = true;
                match result {
                    Ok(()) => {
                        failpoint("after-notify");
                        self.metrics.count_notification(&token.name, true);
                        tracing::info!(token = %token.name, event = %message.event, token_id = message.token_id.as_deref().unwrap_or(""), action = %action, outcome = "notified", "a notify action succeeded");
                        notice.done += 1;
                        notice.attempts = 0;
                    }
                    Err(why) => {
                        failed = true;
                        self.notice_failed(token, notice, action, &why, now);
                        break;
                    }
                }
            }
            if failed {
                break;
            }
            entry.notices.remove(i);
        }
        if changed {
            self.journal.save(entry).await?;
        }
        Ok(())
    }

    fn notice_failed(
        &self,
        token: &TokenPolicy,
        notice: &mut PendingNotice,
        action: &crate::policy::notify::NotifyAction,
        why: &str,
        now: DateTime<Utc>,
    ) {
        notice.attempts += 1;
        let wait = retry_after(notice.attempts);
        // From when it failed: an action may have run for its whole timeout since the visit began.
        notice.not_before = crate::clock::now().max(now) + delta(wait);
        self.metrics.count_notification(&token.name, false);
        tracing::warn!(token = %token.name, event = %notice.event, token_id = notice.token_id.as_deref().unwrap_or(""), action = %action, attempts = notice.attempts, retry_in_s = wait.as_secs(), error = %why, "a notify action failed; will retry");
    }

    /// The token turned not ready (the scheduler saw it): journal a `failed` event and run its actions. A `failed`
    /// event still pending is replaced; a pending `rotated` one keeps its place before it.
    pub async fn notify_failed(
        &self,
        token: &TokenPolicy,
        current: Option<CurrentToken>,
        persist: bool,
    ) {
        if !token.notify.wants(NotifyEvent::Failed) {
            return;
        }
        let delivery = delivery_id();
        let mut pending = {
            let _visit = self.journal.visit(&token.name).await;
            let now = crate::clock::now();
            let run = async {
                self.journal.flush(&token.name).await?;
                let mut entry = self.journal.load(&token.name).await?.unwrap_or_else(|| {
                    Entry::new(&token.name, &token.issuer, token.kind.type_name())
                });
                entry
                    .notices
                    .retain(|n| n.event != NotifyEvent::Failed.as_str());
                entry.notices.push(PendingNotice {
                    delivery: delivery.clone(),
                    event: NotifyEvent::Failed.as_str().into(),
                    token_id: current.as_ref().map(|c| c.token_id.clone()),
                    created_at: current.as_ref().map(|c| c.created_at),
                    expires_at: current.as_ref().and_then(|c| c.expires_at),
                    done: 0,
                    attempts: 0,
                    not_before: now,
                });
                self.journal.save(&entry).await?;
                self.deliver_notices(token, &mut entry, None, now).await?;
                Ok::<_, Failure>(failed_retry_at(&entry, &delivery))
            };
            match run.await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(token = %token.name, error = %e.error, "the `failed` event could not be journaled or told; the next visit tries again");
                    None
                }
            }
        };
        // A failing token's own visits back off for up to an hour; its `failed` actions are tried again on their
        // own backoff (SPEC §9: first retries within seconds), a few times, then left to the visits. Not for
        // `run --once`, which ends when its visits do (the event stays journaled).
        let mut tries = 0;
        while let (true, Some(at)) = (persist && tries < FAILED_RETRIES_ALONE, pending) {
            tries += 1;
            let wait = (at - crate::clock::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            let _visit = self.journal.visit(&token.name).await;
            let now = crate::clock::now();
            pending = match self.journal.load(&token.name).await {
                Ok(Some(mut entry)) => {
                    if let Err(e) = self.deliver_notices(token, &mut entry, None, now).await {
                        tracing::warn!(token = %token.name, error = %e.error, "telling the `failed` event again failed");
                    }
                    failed_retry_at(&entry, &delivery)
                }
                _ => None,
            };
        }
    }
}

/// Tries of a `failed` event made by its own task after the first, before it is left to the token's visits.
const FAILED_RETRIES_ALONE: u32 = 5;

/// When the `failed` event `delivery` is due again, if it is still pending (a newer event replaces it).
fn failed_retry_at(entry: &Entry, delivery: &str) -> Option<DateTime<Utc>> {
    entry
        .notices
        .iter()
        .find(|n| n.delivery == delivery)
        .map(|n| n.not_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_within_seconds_and_cap_at_five_minutes() {
        assert_eq!(retry_after(1), Duration::from_secs(5));
        assert_eq!(retry_after(2), Duration::from_secs(10));
        assert_eq!(retry_after(6), Duration::from_secs(160));
        assert_eq!(retry_after(7), RETRY_MAX);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }
}
