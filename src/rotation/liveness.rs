//! Liveness (SPEC §10): every `verify_interval` the current token is proven to still work, so a token killed
//! behind the daemon's back (revoked in the UI, cut off by an organization's token-lifetime policy) is found and
//! replaced, instead of being found by its consumers.

use super::Rotator;
use crate::issuer::{Issuer, IssuerErrorKind};
use crate::policy::TokenPolicy;
use crate::sink::Observed;
use crate::status::CurrentToken;

impl Rotator {
    /// Why the current token is dead, or `None` while it works, or when the check could not tell (the issuer
    /// unreachable, rate limiting, a refused list): those say nothing of the token, and the next interval asks
    /// again.
    ///
    /// A type that can call the API is probed with the identity probe, using the value its sinks hold (a 401 is a
    /// dead token). An agent token cannot call the API: its pool's token list must still name it.
    pub(super) async fn liveness(
        &self,
        token: &TokenPolicy,
        issuer: &dyn Issuer,
        current: &CurrentToken,
        observed: &[Observed],
    ) -> Option<String> {
        let id = &current.token_id;
        if token.kind.can_prove_itself() {
            let value = observed
                .iter()
                .filter_map(Observed::record)
                .find(|r| &r.token_id == id)
                .map(|r| r.token.clone())?;
            return match issuer.verify(token, &value).await {
                Ok(()) => None,
                Err(e) if e.kind == IssuerErrorKind::Unauthorized => Some(format!(
                    "the current token {id} is refused by the issuer (401 at the liveness probe): it was revoked or \
                     expired outside token-rotator (a manual revoke, or an organization's token-lifetime policy)"
                )),
                Err(e) => {
                    tracing::warn!(token = %token.name, token_id = %id, error = %e, "liveness probe inconclusive; asked again at the next interval");
                    None
                }
            };
        }
        match issuer.still_listed(token, id).await {
            Ok(Some(false)) => Some(format!(
                "the current token {id} is no longer in the issuer's token list: it was revoked outside \
                 token-rotator"
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(token = %token.name, token_id = %id, error = %e, "liveness check inconclusive; asked again at the next interval");
                None
            }
        }
    }
}
