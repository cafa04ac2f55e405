//! Cluster mode (SPEC §8.4): each instance keeps its own local targets (files) equal to the shared record. A
//! standby's visit (`follow`) does only that: it reads the token's records, copies the newest shared record into
//! its local targets where they differ, and reports what it saw. It never calls an issuer and never writes a shared
//! sink. The holder levels its own local targets the same way before deciding to rotate, so that a local file
//! that lags (a new holder's, or one deleted) is copied, never a reason to mint.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{to_current, AttemptError, BoundSinks, Failure, Rotator, SinkFailures, Tended};
use crate::policy::TokenPolicy;
use crate::schedule;
use crate::sink::{Observed, SinkError};
use crate::status::CurrentToken;

/// A standby looks at each token this often: its files follow a change of the shared record within it.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);

/// What leveling the local targets found and did.
pub(super) struct Leveled {
    /// The newest record of the shared targets.
    pub current: Option<CurrentToken>,
    /// Every target, shared and local, holds it now.
    pub everywhere: bool,
    /// Every shared target holds it (only local ones may lag): nothing for an issuer to do.
    pub shared_agree: bool,
    pub errors: Vec<SinkError>,
    /// The newest shared record's value (a standby switches its issuer to it when it is that issuer's credential).
    pub value: Option<crate::secret::SecretString>,
}

impl Rotator {
    /// Copies the newest shared record of `token` into the targets that follow it and hold something else
    /// (older, absent or not ours): in cluster mode this instance's local targets, and — when `deliver` (never on
    /// a standby) — the delivery targets (SPEC §11), which get the current token without a new one being minted.
    /// A local record newer than the shared one is left alone.
    pub(super) async fn level_local(
        &self,
        token: &TokenPolicy,
        sinks: &BoundSinks,
        observed: &[Observed],
        deliver: bool,
    ) -> Leveled {
        let is_local = |sink: &str| self.level_locals && self.local_sinks.contains(sink);
        let shared = sinks
            .iter()
            .zip(observed)
            .filter(|((st, _), _)| !is_local(&st.sink))
            .filter_map(|(_, o)| o.record())
            .max_by_key(|r| r.created_at);
        let Some(shared) = shared else {
            return Leveled {
                current: None,
                everywhere: false,
                shared_agree: false,
                errors: Vec::new(),
                value: None,
            };
        };
        // Every shared record holds it (the holder's rotation writes those, never a copy).
        let shared_agree = sinks
            .iter()
            .zip(observed)
            .all(|((st, _), o)| o.holds(shared) || is_local(&st.sink) || st.target.is_delivery());
        let mut local_newer = false;
        let mut errors = Vec::new();
        for ((st, sink), o) in sinks.iter().zip(observed) {
            if o.holds(shared) {
                continue;
            }
            if !is_local(&st.sink) {
                // A shared record is the holder's rotation's business. A delivery target (SPEC §11) gets a token
                // only once every record holds it, and only from the holder.
                if !st.target.is_delivery() || !deliver || !shared_agree {
                    continue;
                }
            }
            if o.record().is_some_and(|r| r.created_at > shared.created_at) {
                local_newer = true;
                continue;
            }
            match self
                .store(token, sink.as_ref(), st, shared, Some(o.version))
                .await
            {
                Ok(()) if st.target.is_delivery() => {
                    tracing::info!(token = %token.name, sink = %st.sink, target = %st.target, token_id = %shared.token_id, "delivered the current token to a target that lagged");
                }
                Ok(()) => {
                    tracing::info!(token = %token.name, sink = %st.sink, target = %st.target, token_id = %shared.token_id, "copied the shared record into a local target");
                }
                Err(e) => errors.push(e),
            }
        }
        Leveled {
            current: Some(to_current(
                shared.expires_at,
                shared.created_at,
                &shared.token_id,
            )),
            everywhere: shared_agree && !local_newer && errors.is_empty(),
            shared_agree,
            errors,
            value: Some(shared.token.clone()),
        }
    }

    /// A standby's visit: follows the shared record of `token` into the local targets.
    pub async fn follow(&self, token: &TokenPolicy, now: DateTime<Utc>) -> Result<Tended, Failure> {
        // A journal write this instance failed while it held the lease: written now if no other instance touched
        // the entry since (the next holder then resumes it instead of minting again), else dropped.
        if let Err(e) = self.journal.flush(&token.name).await {
            tracing::debug!(token = %token.name, error = %e, "a held journal write is still held");
        }
        // The holder delivers: a standby never reads a shared delivery target (GitHub's rate limit is per credential,
        // and this visit comes every few seconds).
        let sinks: BoundSinks = self
            .sinks_of(token)?
            .into_iter()
            .filter(|(st, _)| !st.target.is_delivery() || self.local_sinks.contains(&*st.sink))
            .collect();
        let observed = self.observe(token, &sinks).await?;
        let leveled = self.level_local(token, &sinks, &observed, false).await;
        // A token that is its issuer's own credential (self-rotation): the holder switched to each new value; a
        // standby does the same, or it would take over with a dead credential.
        if let (Some(value), true) = (&leveled.value, self.credential_lives_in(token)) {
            if let Ok(issuer) = self.issuer(token) {
                if !issuer.credential_is(value) {
                    self.switch_credential(token, issuer.as_ref(), value);
                }
            }
        }
        // The shared journal says what the holder is doing: a singleton it is replacing may already be dead at the
        // issuer (SPEC §5.10), and a token it no longer trusts is not ready here either.
        let entry = self.journal.peek_stored(&token.name).await?;
        // A standby never reads the delivery targets (SPEC §11): while the holder's rotation has a minted token
        // they may still lack it, and this instance, should it take over, must not report the token ready.
        let delivers = token
            .sinks
            .iter()
            .any(|st| st.target.is_delivery() && !self.local_sinks.contains(&*st.sink));
        let unready = entry.and_then(|e| match (&e.must_rotate, &e.rotation) {
            (Some(why), _) => Some(format!("the lease holder will replace this token: {why}")),
            (None, Some(_)) if token.kind.is_singleton() => Some(
                "the lease holder is replacing this token at the issuer; the stored value may already be dead"
                    .to_string(),
            ),
            (None, Some(r)) if delivers && r.minted.is_some() => Some(
                "the lease holder is delivering a new token; its delivery targets may not hold it yet".to_string(),
            ),
            _ => None,
        });
        if !leveled.errors.is_empty() {
            return Err(Failure {
                error: AttemptError::Sinks(SinkFailures(leveled.errors)),
                learned: Some((leveled.current, false)),
                attempted: false,
            });
        }
        Ok(Tended {
            due: schedule::next_due(
                &token.schedule,
                leveled.current.as_ref(),
                Duration::ZERO,
                now,
            ),
            current: leveled.current,
            stored_everywhere: leveled.everywhere,
            rotated: false,
            wake_at: Some(now + TimeDelta::from_std(FOLLOW_EVERY).unwrap_or(TimeDelta::MAX)),
            unready,
        })
    }
}
