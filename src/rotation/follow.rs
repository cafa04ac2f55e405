//! A standby's visit (SPEC §8.4): it reads the token's records, copies the newest shared record into its own local
//! targets (files) where they differ, and reports what it saw. It never calls an issuer and never writes a shared
//! sink: the lease holder does that.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Failure, Rotator, Tended};
use crate::policy::TokenPolicy;
use crate::schedule;

/// A standby looks at each token this often: its files follow a change of the shared record within it.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);

impl Rotator {
    /// Follows the shared record of `token` into the local targets.
    pub async fn follow(&self, token: &TokenPolicy, now: DateTime<Utc>) -> Result<Tended, Failure> {
        let sinks = self.sinks_of(token)?;
        let observed = self.observe(token, &sinks).await?;
        let is_local = |sink: &str| self.local_sinks.contains(sink);
        let shared = sinks
            .iter()
            .zip(&observed)
            .filter(|((st, _), _)| !is_local(&st.sink))
            .filter_map(|(_, o)| o.record())
            .max_by_key(|r| r.created_at);
        let wake_at = Some(now + TimeDelta::from_std(FOLLOW_EVERY).unwrap_or(TimeDelta::MAX));
        let Some(shared) = shared else {
            return Ok(Tended {
                current: None,
                stored_everywhere: false,
                due: schedule::next_due(&token.schedule, None, Duration::ZERO, now),
                rotated: false,
                wake_at,
                followed: true,
            });
        };
        let mut everywhere = true;
        let mut errors = Vec::new();
        for ((st, sink), o) in sinks.iter().zip(&observed) {
            if o.record().is_some_and(|r| r.same_as(shared)) {
                continue;
            }
            if !is_local(&st.sink) {
                // The holder is writing it (or will): not this instance's to fix.
                everywhere = false;
                continue;
            }
            if o.record().is_some_and(|r| r.created_at > shared.created_at) {
                // Newer than the shared record: left alone (the holder's next write brings the shared one level).
                everywhere = false;
                continue;
            }
            match self
                .store(token, sink.as_ref(), st, shared, Some(o.version))
                .await
            {
                Ok(()) => {
                    tracing::info!(token = %token.name, sink = %st.sink, target = %st.target, token_id = %shared.token_id, "copied the shared record into a local target");
                }
                Err(e) => {
                    everywhere = false;
                    errors.push(e);
                }
            }
        }
        let current = Some(super::to_current(
            shared.expires_at,
            shared.created_at,
            &shared.token_id,
        ));
        if !errors.is_empty() {
            return Err(Failure {
                error: super::AttemptError::Sinks(super::SinkFailures(errors)),
                learned: Some((current, false)),
                attempted: false,
            });
        }
        Ok(Tended {
            due: schedule::next_due(&token.schedule, current.as_ref(), Duration::ZERO, now),
            current,
            stored_everywhere: everywhere,
            rotated: false,
            wake_at,
            followed: true,
        })
    }
}
