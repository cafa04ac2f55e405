//! Reading a token's sinks (what a visit starts from) and what `plan` shows of it; changes nothing.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;

use super::{to_current, AttemptError, Failure, Inspection, Rotator, SinkFailures};
use crate::policy::{SinkTarget, TokenPolicy};
use crate::schedule::{self, Due, DueReason};
use crate::sink::{Observed, Sink, SinkError};
use crate::status::CurrentToken;

impl Rotator {
    /// What `plan` shows: the current token per the sinks, the next due time and why, and journal state.
    /// Changes nothing.
    pub async fn inspect(
        &self,
        token: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<Inspection, AttemptError> {
        let sinks = self.sinks_of(token)?;
        let observed = self.observe(token, &sinks).await.map_err(|f| f.error)?;
        let (current, stored_everywhere) = current_of(&observed);
        let entry = self.journal.peek(&token.name).await?;
        let mut notes = Vec::new();
        // Delivery targets that lag records which agree get the current token at the next visit: no rotation.
        let newest = observed
            .iter()
            .filter_map(Observed::record)
            .max_by_key(|r| r.created_at);
        let behind: Vec<&SinkTarget> = match newest {
            Some(newest) if !stored_everywhere => token
                .sinks
                .iter()
                .zip(&observed)
                .filter(|(_, o)| !o.holds(newest))
                .map(|(st, _)| st)
                .collect(),
            _ => Vec::new(),
        };
        let lagging: Vec<String> = if behind.iter().all(|st| st.target.is_delivery()) {
            behind.iter().map(|st| st.to_string()).collect()
        } else {
            Vec::new()
        };
        if !lagging.is_empty() {
            notes.push(format!(
                "{} do(es) not hold the current token: it is delivered there at the next visit",
                lagging.join(", ")
            ));
        }
        let mut due = if current.is_some() && !stored_everywhere && lagging.is_empty() {
            Due {
                at: Some(now),
                reason: DueReason::SinksDisagree,
            }
        } else {
            schedule::next_due(&token.schedule, current.as_ref(), Duration::ZERO, now)
        };
        if let Some(e) = &entry {
            if let Some(why) = &e.must_rotate {
                due = Due {
                    at: Some(now),
                    reason: DueReason::Forced(why.clone()),
                };
            }
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
                notes.push(match (&rev.after_use_of, rev.held) {
                    (_, true) => format!(
                        "{} to be revoked after the next rotation completes",
                        rev.token_id
                    ),
                    (Some(s), false) => format!("{} to be revoked once {s} is used", rev.token_id),
                    (None, false) => format!(
                        "{} to be revoked at {}",
                        rev.token_id,
                        crate::record::rfc3339(rev.not_before)
                    ),
                });
            }
            for n in &e.notices {
                let about = n.token_id.as_deref().unwrap_or("the token");
                notes.push(if n.attempts == 0 {
                    format!("`{}` actions for {about} not run yet", n.event)
                } else {
                    format!(
                        "`{}` actions for {about} failed {} time(s); next try at {}",
                        n.event,
                        n.attempts,
                        crate::record::rfc3339(n.not_before)
                    )
                });
            }
            if super::notify::rotated_pending(e) && !e.revocations.is_empty() {
                notes.push("old tokens wait until the consumers are told".into());
            }
        }
        if token.schedule.manual && due.at.is_some() {
            // Disagreeing sinks or a distrusted token: reasons, not rotations, for a manual token.
            due = schedule::manual(due);
        }
        Ok(Inspection {
            current,
            stored_everywhere,
            due,
            notes,
        })
    }

    /// Reads every sink target of `token` (transient failures retried briefly), and notes the token ids they name.
    pub(super) async fn observe(
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
        for ((st, _), r) in sinks.iter().zip(reads) {
            match r {
                Ok(o) => out.push(o),
                // A delivery target (SPEC §11) never says what the token is: one that cannot be read now is taken
                // as lagging, so that a due rotation still happens (the records are the state) and the write to it
                // is tried, its failure keeping the token not ready and the old token alive.
                Err(e) if st.target.is_delivery() => {
                    tracing::warn!(token = %token.name, sink = %st.sink, target = %st.target, error = %e, "a delivery target cannot be read; it is written again");
                    out.push(Observed {
                        version: crate::sink::Version::Unversioned,
                        content: crate::sink::Content::Absent,
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(AttemptError::Sinks(SinkFailures(errors)).into());
        }
        self.journal.note_seen(
            &token.name,
            out.iter()
                .filter_map(Observed::record)
                .map(|r| r.token_id.as_str()),
        );
        Ok(out)
    }
}

/// The newest record across the sinks, and whether every sink holds exactly it.
pub(super) fn current_of(observed: &[Observed]) -> (Option<CurrentToken>, bool) {
    let newest = observed
        .iter()
        .filter_map(Observed::record)
        .max_by_key(|r| r.created_at);
    let Some(newest) = newest else {
        return (None, false);
    };
    let everywhere = observed.iter().all(|o| o.holds(newest));
    (
        Some(to_current(
            newest.expires_at,
            newest.created_at,
            &newest.token_id,
        )),
        everywhere,
    )
}
