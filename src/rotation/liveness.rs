//! Liveness (SPEC §10): every `verify_interval` the current token is proven to still work, so a token killed
//! behind the daemon's back (revoked in the UI, cut off by an organization's token-lifetime policy) is found and
//! replaced, instead of being found by its consumers.
//!
//! A refusal is believed only when a second probe, [`CONFIRM_AFTER`] later, says the same (a stray 401 from an issuer
//! incident must not regenerate a singleton, which kills the value every consumer holds). A token found dead is
//! rotated at once, except:
//! - a `manual` token: it turns not ready with the reason, and waits for `rotate NAME`;
//! - a token found dead again within [`FLAP_INTERVALS`] intervals of liveness replacing it: something else
//!   regenerates or revokes it (a second rotator, a Terraform resource), and replacing it again would only break
//!   that other party's consumers in turn. It turns not ready with a reason that says so, and waits for a person.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::Rotator;
use crate::issuer::{Issuer, IssuerErrorKind};
use crate::policy::TokenPolicy;
use crate::sink::Observed;
use crate::status::CurrentToken;

/// How long a first refusal waits for its confirming probe.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(10);
/// A token found dead again this many intervals after liveness had it replaced is not replaced again by itself.
pub const FLAP_INTERVALS: u32 = 3;

/// What liveness remembers between probes (in memory: a restart probes every token at its first visit again).
#[derive(Default)]
pub struct LivenessState {
    /// Current tokens found dead and left as they are (manual, or flapping): token name → (token id, why).
    dead: HashMap<String, (String, String)>,
    /// When liveness last had each token replaced.
    replaced: HashMap<String, DateTime<Utc>>,
}

pub(super) enum Probe {
    Alive,
    Dead(String),
    /// The issuer could not tell (5xx, 429, a timeout, a refused list): nothing changes, the next interval asks.
    Unknown,
}

/// What a visit does about a dead current token.
pub(super) enum Verdict {
    /// Rotate it now (journaled as `must_rotate` with this reason).
    Rotate(String),
    /// Leave it and show it not ready (already remembered).
    Leave,
}

impl Rotator {
    /// Probes the current token (`current`, held in `observed`), confirming a refusal, and decides.
    /// `None`: alive, or the issuer could not tell.
    pub(super) async fn check_liveness(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        current: &CurrentToken,
        observed: &[Observed],
        interval: Duration,
        now: DateTime<Utc>,
    ) -> Option<Verdict> {
        let mut outcome = self.probe(token, issuer, current, observed).await;
        if matches!(outcome, Probe::Dead(_)) {
            tokio::time::sleep(CONFIRM_AFTER).await;
            outcome = self.probe(token, issuer, current, observed).await;
        }
        let mut state = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let reason = match outcome {
            Probe::Alive => {
                state.dead.remove(&*token.name);
                return None;
            }
            Probe::Unknown => return None,
            Probe::Dead(reason) => reason,
        };
        drop(state);
        // A lifetime policy is read, not guessed: when the token outlived what the organization now allows, say so
        // and which key to change (the replacement would otherwise die the same way, or be refused).
        // Whole minutes, rounded up: the expiry was asked for from the visit's start, the creation time is the
        // issuer's, a moment later.
        let lifetime = current
            .expires_at
            .map(|e| (e - current.created_at).num_milliseconds())
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_secs((ms as u64).div_ceil(60_000) * 60));
        let reason = match lifetime {
            Some(lived) => match issuer.lifetime_cap(token).await {
                Ok(Some(cap)) if lived > cap.max => format!(
                    "the current token {} is refused by the issuer: its lifetime ({}) is above {}; {}",
                    current.token_id,
                    crate::policy::duration::render(lived),
                    cap.describe(),
                    cap.advice(&token.name, None)
                ),
                _ => reason,
            },
            None => reason,
        };
        let mut state = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let window = TimeDelta::from_std(interval * FLAP_INTERVALS).unwrap_or(TimeDelta::MAX);
        let flapping = state
            .replaced
            .get(&*token.name)
            .is_some_and(|at| now - *at < window);
        if token.schedule.manual || flapping {
            let reason = if flapping && !token.schedule.manual {
                format!(
                    "{reason}; it was found dead again soon after token-rotator replaced it for the same reason: \
                     something else regenerates or revokes this token, so token-rotator leaves it; find that, then \
                     run `token-rotator rotate {}`",
                    token.name
                )
            } else {
                reason
            };
            tracing::error!(token = %token.name, token_id = %current.token_id, reason = %reason, "the current token is dead; not rotating it by itself");
            state
                .dead
                .insert(token.name.to_string(), (current.token_id.clone(), reason));
            return Some(Verdict::Leave);
        }
        tracing::warn!(token = %token.name, token_id = %current.token_id, reason = %reason, "the current token is dead; rotating it now");
        state.replaced.insert(token.name.to_string(), now);
        state.dead.remove(&*token.name);
        Some(Verdict::Rotate(reason))
    }

    /// Why the current token is known dead and left as it is (cleared once the token changes).
    pub(super) fn known_dead(
        &self,
        token: &TokenPolicy,
        current: Option<&CurrentToken>,
    ) -> Option<String> {
        let mut state = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        match (state.dead.get(&*token.name), current) {
            (Some((id, why)), Some(cur)) if *id == cur.token_id => Some(why.clone()),
            (Some(_), _) => {
                state.dead.remove(&*token.name);
                None
            }
            (None, _) => None,
        }
    }

    /// One probe. A type that can call the API is probed with the identity probe, using the value its sinks hold
    /// (a 401 is a dead token). An agent token cannot call the API: its pool's token list must still name it.
    async fn probe(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        current: &CurrentToken,
        observed: &[Observed],
    ) -> Probe {
        let id = &current.token_id;
        if token.kind.can_prove_itself() {
            let Some(value) = observed
                .iter()
                .filter_map(Observed::record)
                .find(|r| &r.token_id == id)
                .map(|r| r.token.clone())
            else {
                return Probe::Unknown;
            };
            return match issuer.verify(token, &value).await {
                Ok(()) => Probe::Alive,
                Err(e) if e.kind == IssuerErrorKind::Unauthorized => Probe::Dead(format!(
                    "the current token {id} is refused by the issuer (401 at the liveness probe, twice): it was revoked \
                     or expired outside token-rotator (a manual revoke, or an organization's token-lifetime policy)"
                )),
                Err(e) => {
                    tracing::warn!(token = %token.name, token_id = %id, error = %e, "liveness probe inconclusive; asked again at the next interval");
                    Probe::Unknown
                }
            };
        }
        match issuer.still_listed(token, id).await {
            Ok(Some(false)) => Probe::Dead(format!(
                "the current token {id} is no longer in the issuer's token list (checked twice): it was revoked \
                 outside token-rotator"
            )),
            Ok(Some(true)) => Probe::Alive,
            Ok(None) => Probe::Unknown,
            Err(e) => {
                tracing::warn!(token = %token.name, token_id = %id, error = %e, "liveness check inconclusive; asked again at the next interval");
                Probe::Unknown
            }
        }
    }
}
