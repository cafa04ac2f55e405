//! The issuer seam: whoever mints, proves, lists and revokes tokens (HCP Terraform / TFE, Pulumi Cloud).

pub mod api;
pub mod pulumi;
pub mod tfe;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::policy::{IssuerConfig, IssuerSpec, TokenPolicy};
pub use crate::record::MintedToken;
use crate::secret::SecretString;

/// A token as an issuer's list shows it (never with a value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub token_id: String,
    pub label: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A cap an organization's policy puts on the lifetime of a type of token (TFC maximum TTL, Pulumi's access token
/// expiry policy), as the issuer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifetimeCap {
    pub max: Duration,
    /// Whose policy, for which tokens: "the maximum TTL of team tokens in organization \"acme\"".
    pub what: String,
}

impl LifetimeCap {
    /// "the maximum TTL of team tokens in organization \"acme\" (7d)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.what,
            crate::policy::duration::render(self.max)
        )
    }

    /// The key to change, and to what: "lower `lifetime` in [tokens.NAME] (now 30d) to 7d or less".
    pub fn advice(&self, token: &str, lifetime: Option<Duration>) -> String {
        let render = crate::policy::duration::render;
        let now = lifetime
            .map(|l| format!(" (now {})", render(l)))
            .unwrap_or_default();
        format!(
            "lower `lifetime` in [tokens.{token}]{now} to {} or less",
            render(self.max)
        )
    }
}

/// Bounded error kinds: decide retries and explain failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerErrorKind {
    /// 401: the credential is wrong, expired or revoked.
    Unauthorized,
    /// 403: the credential is valid but may not do this.
    Forbidden,
    /// 404: missing, or not allowed (TFC answers 404 for both).
    NotFound,
    /// The label (TFC description, Pulumi name) is already taken: pick a fresh one.
    Conflict,
    /// 429.
    RateLimited,
    /// 5xx, timeouts, connection errors, truncated bodies.
    Unavailable,
    /// Any other 4xx (400, 415, 422, …): the request itself is refused.
    Rejected,
    /// A 2xx whose body is not what the API documents.
    Protocol,
    /// The issuer cannot be used at all (bad credential reference, bad CA file).
    Config,
}

/// An issuer call that failed. `message` never holds a token value: text from the server passes through
/// `redact::outside_text` first.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: {message}")]
pub struct IssuerError {
    pub issuer: String,
    pub kind: IssuerErrorKind,
    pub status: Option<u16>,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// A create that may have reached the issuer (timeout, reset, 5xx, an answer cut off): a token may exist that
    /// we never saw, and a singleton's previous token may already be replaced (SPEC §5.10).
    pub outcome_unknown: bool,
}

impl IssuerError {
    pub fn new(
        issuer: &str,
        kind: IssuerErrorKind,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        IssuerError {
            issuer: issuer.to_string(),
            kind,
            status,
            message: message.into(),
            retry_after: None,
            outcome_unknown: false,
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            IssuerErrorKind::RateLimited | IssuerErrorKind::Unavailable
        )
    }
}

#[async_trait]
pub trait Issuer: Send + Sync {
    fn name(&self) -> &str;
    /// The label (TFC description, Pulumi name) for a token of `token` minted at `at`: the policy's label plus a
    /// UTC timestamp, unique per second.
    fn label(&self, token: &TokenPolicy, at: DateTime<Utc>) -> String;
    /// Whether `label` is one this daemon gives to `token`'s tokens (so the orphan sweep never touches others).
    fn is_own_label(&self, token: &TokenPolicy, label: &str) -> bool;
    /// Creates a new token for `token`, labelled `label`, valid until `expires_at` where the type expires.
    async fn mint(
        &self,
        token: &TokenPolicy,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError>;
    /// What the issuer says of a token just created, read once it is journaled: its real creation time and expiry
    /// (an organization's policy may have capped it). `None`: nothing more to learn (the create's answer said it).
    async fn read_back(
        &self,
        _token: &TokenPolicy,
        _token_id: &str,
    ) -> Result<Option<IssuedToken>, IssuerError> {
        Ok(None)
    }
    /// Proves that `value` works (the identity probe).
    async fn verify(&self, token: &TokenPolicy, value: &SecretString) -> Result<(), IssuerError>;
    /// Revokes one token of a type whose tokens coexist; a token already gone counts as revoked.
    async fn revoke(&self, token: &TokenPolicy, token_id: &str) -> Result<(), IssuerError>;
    /// The tokens at the issuer that carry this daemon's label for `token` (coexisting types only).
    async fn list_own(&self, token: &TokenPolicy) -> Result<Vec<IssuedToken>, IssuerError>;
    /// For types whose tokens cannot prove themselves (agent tokens): whether the issuer still lists `token_id`
    /// among `token`'s tokens, whatever their label (the liveness check, SPEC §10). `None`: no such list.
    async fn still_listed(
        &self,
        _token: &TokenPolicy,
        _token_id: &str,
    ) -> Result<Option<bool>, IssuerError> {
        Ok(None)
    }
    /// The cap an organization policy puts on the lifetime of `token`'s tokens, read from the issuer (SPEC §10:
    /// read, not guessed). `None`: no such policy, or the type is not capped.
    async fn lifetime_cap(&self, _token: &TokenPolicy) -> Result<Option<LifetimeCap>, IssuerError> {
        Ok(None)
    }
    /// Proves the issuer's own credential works, changing nothing (`check --online`).
    async fn probe(&self) -> Result<(), IssuerError>;
    /// Whether `value` is the credential this issuer calls the API with (self-rotation detection).
    fn credential_is(&self, _value: &SecretString) -> bool {
        false
    }
    /// Switches the issuer to a new credential: its own token was just rotated.
    fn set_credential(&self, _value: SecretString) {}
    /// The credential itself, for a sink that borrows this issuer (`issuer = "…"` in a `tfe-variable` sink).
    fn live_credential(&self) -> Option<crate::secret::LiveSecret> {
        None
    }
}

/// An issuer kind: its policy side ([`IssuerSpec`], next to the issuer's code) and how it is built.
pub trait IssuerKind: IssuerSpec {
    /// Builds the issuer for `cfg` with its already-resolved credential.
    fn build(
        &self,
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: api::IssuerDeps,
    ) -> Result<Arc<dyn Issuer>, IssuerError>;
}

/// Every issuer kind of this build. A new kind is a new module and one line here.
pub static KINDS: &[&dyn IssuerKind] = &[&tfe::TfeSpec, &pulumi::PulumiSpec];

/// The policy side of [`KINDS`].
pub fn specs() -> Vec<&'static dyn IssuerSpec> {
    KINDS
        .iter()
        .map(|k| *k as &'static dyn IssuerSpec)
        .collect()
}

/// Builds the issuer for one `[issuers.NAME]` table with its already-resolved credential.
pub fn build(
    cfg: &IssuerConfig,
    credential: SecretString,
    deps: api::IssuerDeps,
) -> Result<Arc<dyn Issuer>, IssuerError> {
    let kind = KINDS.iter().find(|k| k.name() == cfg.kind).ok_or_else(|| {
        IssuerError::new(
            &cfg.name,
            IssuerErrorKind::Config,
            None,
            format!("kind \"{}\" is not built into this binary", cfg.kind),
        )
    })?;
    kind.build(cfg, credential, deps)
}

/// Labels shared by the issuers: `<prefix><sep><timestamp>`, where the timestamp parses back with `format`.
pub mod label {
    use chrono::{DateTime, NaiveDateTime, Utc};

    pub fn make(prefix: &str, sep: char, format: &str, at: DateTime<Utc>) -> String {
        format!("{prefix}{sep}{}", at.format(format))
    }

    pub fn is_own(prefix: &str, sep: char, format: &str, label: &str) -> bool {
        label
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sep))
            .is_some_and(|ts| NaiveDateTime::parse_from_str(ts, format).is_ok())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn labels_round_trip_and_foreign_ones_are_not_ours() {
            let at: DateTime<Utc> = "2026-11-23T19:45:01Z".parse().unwrap();
            let l = make("token-rotator ci", ' ', "%Y%m%dT%H%M%SZ", at);
            assert_eq!(l, "token-rotator ci 20261123T194501Z");
            assert!(is_own("token-rotator ci", ' ', "%Y%m%dT%H%M%SZ", &l));
            assert!(!is_own("token-rotator c", ' ', "%Y%m%dT%H%M%SZ", &l));
            assert!(!is_own(
                "token-rotator ci",
                ' ',
                "%Y%m%dT%H%M%SZ",
                "token-rotator ci manual"
            ));
            assert!(!is_own(
                "token-rotator ci",
                ' ',
                "%Y%m%dT%H%M%SZ",
                "someone else's token"
            ));
        }
    }
}
