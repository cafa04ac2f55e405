//! Pulumi Cloud issuer (`kind = "pulumi"`): organization, team and personal access tokens.
//!
//! Wire facts (shared/reference/token-apis.md Part B; Pulumi docs `cloud-rest-api/api-basics`, `access-tokens`,
//! and the Pulumi Cloud OpenAPI spec as vendored by pulumi-pulumiservice):
//! - `Authorization: token <t>` (not `Bearer`), `Accept: application/vnd.pulumi+8`, `Content-Type: application/json`.
//! - Create: `POST /api/orgs/:org/tokens`, `POST /api/orgs/:org/teams/:team/tokens` (team by name),
//!   `POST /api/user/tokens`; 200 `{id, tokenValue}`; the value is never shown again. `?reason=` is the audit text.
//! - Org and team token `name`s are at most 40 characters and unique forever within the organization (deleted
//!   tokens included, org and team tokens share the namespace): a taken name is 409 "token name already exists".
//!   Personal tokens have no name; only a `description`.
//! - `expires` is unix seconds, at most two years ahead, 0 = never; an org expiry policy may cap it, so the real
//!   expiry is read back from the token list.
//! - Lists: `GET` the same collection, `{tokens: [...], continuationToken}`, `maxResults` ≤ 1000, `filter` =
//!   `active` (default) | `expired` | `all`. There is no get-one-token endpoint.
//! - Revoke: `DELETE …/tokens/:id` 204; 404 = already gone.
//! - Permissions: org tokens are created/deleted only with an org admin's *personal* token (machine tokens, even
//!   admin org tokens, cannot); team tokens also with an admin org token; personal tokens are the caller's own.
//! - Errors are `{"code": N, "message": "…"}`, sometimes plain text (mux 404). No documented rate limit: a 429 is
//!   handled generically, honouring `Retry-After` when present.
//! - Identity probe: `GET /api/user`.

mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeDelta, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::Url;
use serde_json::{json, Map, Value};

use super::api::{ApiBase, Call, Dialect, Effect, IssuerDeps, Reply};
use super::{IssuedToken, Issuer, IssuerError, IssuerErrorKind, LifetimeCap, MintedToken};
use crate::policy::{IssuerConfig, TokenPolicy};
use crate::secret::SecretString;
pub use types::{PulumiSpec, PulumiType};

/// The documented API version header (the provider sends +9; the docs require at least +8).
const ACCEPT_PULUMI: &str = "application/vnd.pulumi+8";
const JSON_TYPE: &str = "application/json";
/// Names are `<name_prefix>-<YYYYMMDDhhmmss>` (SPEC §3).
const LABEL_FORMAT: &str = "%Y%m%d%H%M%S";
/// Pulumi's limit on org and team token names.
const MAX_NAME_CHARS: usize = 40;
/// `-` plus the 14-digit timestamp.
const TIMESTAMP_CHARS: usize = 15;
/// `maxResults` of list calls: the documented maximum, so a list is usually one request.
const PAGE_SIZE: &str = "1000";
/// Pages read from a list at most: a bound, not an expected size.
const MAX_PAGES: u32 = 1000;
/// Only if a caller asks for no expiry, which never happens for Pulumi types (they always expire): a token that
/// never expires violates org expiry policies, so one is never requested.
const FALLBACK_LIFETIME: TimeDelta = TimeDelta::days(30);

/// How the Pulumi Cloud API spells things (see the module documentation).
static DIALECT: Dialect = Dialect {
    product: "the Pulumi Cloud API",
    auth_scheme: "token",
    accept: ACCEPT_PULUMI,
    content_type: JSON_TYPE,
    content_type_on: |_| true,
    error_text,
    // Pulumi documents no rate limit; a 429 is honoured through `Retry-After` when present (SPEC §5.4).
    rate_limit_wait: retry_after,
};

impl super::IssuerKind for PulumiSpec {
    fn build(
        &self,
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: IssuerDeps,
    ) -> Result<Arc<dyn Issuer>, IssuerError> {
        Ok(Arc::new(PulumiIssuer::new(cfg, credential, deps)?))
    }
}

/// `Debug` shows the issuer's name and address; the credential is never printed.
#[derive(Debug)]
pub struct PulumiIssuer {
    api: ApiBase,
    /// The last name timestamp handed out per policy token. Names are reserved forever, so within one process
    /// each new name is at least one second after the previous one even when rotations are forced faster than
    /// once a second (across processes the rotation's one retry on 409 covers two rotations in one second).
    last_label: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// What the token list says about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    id: String,
    /// `name` (org and team tokens) or `description` (personal tokens, which have no name).
    label: String,
    created: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    last_used: Option<DateTime<Utc>>,
    kind: Option<String>,
}

impl PulumiIssuer {
    pub fn new(
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: IssuerDeps,
    ) -> Result<Self, IssuerError> {
        Ok(PulumiIssuer {
            api: ApiBase::new(cfg, credential, deps, &DIALECT)?,
            last_label: Mutex::new(HashMap::new()),
        })
    }

    /// `{address}/api/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        self.api.url(&["api"], segments)
    }

    /// A call made with the issuer's credential for `token`, with what to check added to its failures.
    async fn call(
        &self,
        token: &TokenPolicy,
        effect: Effect,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, IssuerError> {
        self.api
            .call_as_issuer(effect, url, body, what)
            .await
            .map_err(|e| self.explain(token, e))
    }

    /// The token collection of a policy token: `orgs/:org/tokens`, `orgs/:org/teams/:team/tokens` or
    /// `user/tokens`.
    fn collection<'t>(&self, token: &'t TokenPolicy) -> Result<Vec<&'t str>, IssuerError> {
        match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { organization, .. }) => {
                Ok(vec!["orgs", organization.as_str(), "tokens"])
            }
            Some(PulumiType::Team { organization, team }) => Ok(vec![
                "orgs",
                organization.as_str(),
                "teams",
                team.as_str(),
                "tokens",
            ]),
            Some(PulumiType::Personal) => Ok(vec!["user", "tokens"]),
            None => Err(self.api.error(
                IssuerErrorKind::Config,
                None,
                format!("token type {} is not a Pulumi type", token.kind.type_name()),
            )),
        }
    }

    /// "the organization token of \"acme\"", for messages.
    fn describe(token: &TokenPolicy) -> String {
        match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { organization, .. }) => {
                format!("an organization token of \"{organization}\"")
            }
            Some(PulumiType::Team { organization, team }) => {
                format!("a team token of \"{organization}/{team}\"")
            }
            _ => "a personal token".to_string(),
        }
    }

    /// Who may manage tokens of this type, for 401/403 explanations.
    fn permission_rule(&self, token: &TokenPolicy) -> String {
        let name = &self.api.name;
        match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { organization, .. }) => format!(
                "Pulumi organization tokens can only be created or deleted with the personal access token of an \
                 admin of \"{organization}\"; machine tokens (organization or team tokens, even admin ones) cannot, \
                 so `token` of [issuers.{name}] must be an org admin's personal token"
            ),
            Some(PulumiType::Team { organization, .. }) => format!(
                "Pulumi team tokens can be created and deleted with the personal access token of an admin of \
                 \"{organization}\" (or of the team), or with an admin organization token of \"{organization}\"; \
                 check `token` of [issuers.{name}]"
            ),
            _ => format!(
                "Pulumi personal tokens belong to the user whose personal access token is `token` of \
                 [issuers.{name}]; organization and team tokens have no personal tokens to manage"
            ),
        }
    }

    /// Adds what to check to an error made with the issuer's credential.
    fn explain(&self, token: &TokenPolicy, mut e: IssuerError) -> IssuerError {
        let hint = match e.kind {
            IssuerErrorKind::Unauthorized => format!(
                " (the credential was rejected: check `token` of [issuers.{}]; it may be wrong, expired or revoked. {})",
                self.api.name,
                self.permission_rule(token)
            ),
            IssuerErrorKind::Forbidden => format!(
                " (the credential is valid but not allowed to do this: {})",
                self.permission_rule(token)
            ),
            IssuerErrorKind::NotFound => match token.kind.downcast::<PulumiType>() {
                Some(PulumiType::Organization { organization, .. }) => format!(
                    " (no organization \"{organization}\", or the credential cannot see it)"
                ),
                Some(PulumiType::Team { organization, team }) => format!(
                    " (no organization \"{organization}\" or team \"{team}\" (teams are addressed by name), or the credential cannot see it)"
                ),
                _ => String::new(),
            },
            _ => String::new(),
        };
        e.message.push_str(&hint);
        e
    }

    /// The name prefix: the policy's `name_prefix`, shortened so that a name never exceeds 40 characters.
    fn prefix(token: &TokenPolicy) -> String {
        token
            .label
            .chars()
            .take(MAX_NAME_CHARS - TIMESTAMP_CHARS)
            .collect()
    }

    /// Reads every page of a token list.
    async fn list_pages(
        &self,
        token: &TokenPolicy,
        filter: &str,
        what: &str,
    ) -> Result<Vec<Listed>, IssuerError> {
        let segments = self.collection(token)?;
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&segments);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("filter", filter);
                q.append_pair("maxResults", PAGE_SIZE);
                if let Some(c) = &continuation {
                    q.append_pair("continuationToken", c);
                }
            }
            let reply = self.call(token, Effect::Read, url, None, what).await?;
            let Some(tokens) = reply.body.get("tokens").and_then(Value::as_array) else {
                return Err(self.api.error(
                    IssuerErrorKind::Protocol,
                    Some(reply.status),
                    format!("{what}: the {} response has no `tokens` list", reply.status),
                ));
            };
            items.extend(
                tokens
                    .iter()
                    .filter_map(|t| listed(t, token.kind.downcast())),
            );
            // Older API versions return one page without a continuation token.
            match reply.body.get("continuationToken").and_then(Value::as_str) {
                Some(next) if !next.is_empty() && continuation.as_deref() != Some(next) => {
                    continuation = Some(next.to_string());
                }
                _ => return Ok(items),
            }
        }
        Ok(items)
    }

    /// Finds a token just created in the list (expired ones included: an org policy may cap its expiry), for its
    /// real expiry and creation time.
    async fn find(
        &self,
        token: &TokenPolicy,
        token_id: &str,
    ) -> Result<Option<Listed>, IssuerError> {
        let what = format!(
            "reading back {} (token {token_id}) from the token list",
            Self::describe(token)
        );
        Ok(self
            .list_pages(token, "all", &what)
            .await?
            .into_iter()
            .find(|t| t.id == token_id))
    }
}

/// `Retry-After` as seconds or an HTTP date, bounded to an hour.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        Ok(_) => return None,
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// The message of a Pulumi error body (`{"code", "message", "errors"?}`), or its plain text (the mux's 404).
/// Shortened and redacted by the transport.
fn error_text(bytes: &[u8]) -> String {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => {
            let mut parts: Vec<String> = Vec::new();
            if let Some(m) = o.get("message").and_then(Value::as_str) {
                parts.push(m.to_string());
            }
            if let Some(errors) = o.get("errors").and_then(Value::as_array) {
                for e in errors {
                    let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                    let detail = [get("attribute"), get("errorType"), get("customMessage")]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !detail.is_empty() {
                        parts.push(detail);
                    }
                }
            }
            parts.join("; ")
        }
        Ok(Value::String(s)) => s,
        Ok(_) => String::new(),
        Err(_) => String::from_utf8_lossy(bytes).to_string(),
    }
}

/// `created` is ISO 8601: RFC 3339, or the `2006-01-02 15:04:05.000` form some endpoints use (taken as UTC).
fn parse_created(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

/// Unix seconds, 0 meaning none (`expires` 0 = never, `lastUsed` 0 = never used).
fn epoch(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_i64)
        .filter(|s| *s > 0)
        .and_then(|s| DateTime::from_timestamp(s, 0))
}

/// One list item (spec schema `AccessToken`); the label is `name`, or `description` for personal tokens.
fn listed(item: &Value, kind: Option<&PulumiType>) -> Option<Listed> {
    let id = match item.get("id")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let label_key = match kind {
        Some(PulumiType::Personal) => "description",
        _ => "name",
    };
    Some(Listed {
        id,
        label: item
            .get(label_key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        created: item
            .get("created")
            .and_then(Value::as_str)
            .and_then(parse_created),
        expires: epoch(item.get("expires")),
        last_used: epoch(item.get("lastUsed")),
        kind: item.get("type").and_then(Value::as_str).map(str::to_string),
    })
}

#[async_trait]
impl Issuer for PulumiIssuer {
    fn name(&self) -> &str {
        &self.api.name
    }

    /// `<name_prefix>-<YYYYMMDDhhmmss>` (at most 40 characters); never the same second twice in this process.
    fn label(&self, token: &TokenPolicy, at: DateTime<Utc>) -> String {
        let at = at.trunc_subsecs(0);
        let at = {
            let mut last = self.last_label.lock().unwrap_or_else(|p| p.into_inner());
            let at = match last.get(&*token.name) {
                Some(prev) if *prev >= at => *prev + TimeDelta::seconds(1),
                _ => at,
            };
            last.insert(token.name.to_string(), at);
            at
        };
        super::label::make(&Self::prefix(token), '-', LABEL_FORMAT, at)
    }

    fn is_own_label(&self, token: &TokenPolicy, label: &str) -> bool {
        let prefix = Self::prefix(token);
        // Exactly 14 digits: chrono's parser alone also accepts shorter fields.
        let digits = label
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|ts| {
                ts.len() == TIMESTAMP_CHARS - 1 && ts.bytes().all(|b| b.is_ascii_digit())
            });
        digits && super::label::is_own(&prefix, '-', LABEL_FORMAT, label)
    }

    async fn mint(
        &self,
        token: &TokenPolicy,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError> {
        let segments = self.collection(token)?;
        let now = crate::clock::now();
        // Always an expiry: org expiry policies reject or cap never-expiring tokens (token-apis.md B.4).
        let requested = expires_at
            .unwrap_or_else(|| now + FALLBACK_LIFETIME)
            .trunc_subsecs(0);
        let description = format!("managed by token-rotator ({})", token.name);
        let mut body = Map::new();
        match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { admin, role_id, .. }) => {
                body.insert("name".into(), json!(label));
                body.insert("description".into(), json!(description));
                body.insert("admin".into(), json!(admin));
                if let Some(role) = role_id {
                    body.insert("roleID".into(), json!(role));
                }
            }
            Some(PulumiType::Team { .. }) => {
                body.insert("name".into(), json!(label));
                body.insert("description".into(), json!(description));
            }
            // No name: the label goes into the description, which is how the sweep recognises our tokens.
            _ => {
                body.insert("description".into(), json!(label));
            }
        }
        body.insert("expires".into(), json!(requested.timestamp()));
        if !matches!(
            token.kind.downcast::<PulumiType>(),
            Some(PulumiType::Personal)
        ) && label.chars().count() > MAX_NAME_CHARS
        {
            return Err(self.api.error(
                IssuerErrorKind::Config,
                None,
                format!("token name \"{label}\" is longer than Pulumi's {MAX_NAME_CHARS} characters; shorten `name_prefix` of [tokens.{}]", token.name),
            ));
        }
        let mut url = self.url(&segments);
        url.query_pairs_mut().append_pair(
            "reason",
            &format!("rotated by token-rotator ({})", token.name),
        );
        let what = format!("creating {} named \"{label}\"", Self::describe(token));
        let reply = self
            .call(
                token,
                Effect::Create,
                url,
                Some(&Value::Object(body)),
                &what,
            )
            .await?;
        let token_id = match reply.body.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                // A token may exist that we cannot name: the create's outcome is as good as lost, so the
                // rotation looks for it by its label and sweeps it.
                let mut e = self.api.error(
                    IssuerErrorKind::Unavailable,
                    Some(reply.status),
                    format!("{what}: the {} answer has no token id", reply.status),
                );
                e.outcome_unknown = true;
                return Err(e);
            }
        };
        let Some(value) = reply
            .body
            .get("tokenValue")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            // A token we can never use: revoke it rather than leave it behind; if that fails, the sweep finds it.
            let revoked = self.revoke(token, &token_id).await;
            if let Err(e) = &revoked {
                tracing::warn!(issuer = %self.api.name, token = %token.name, token_id = %token_id, error = %e, "could not revoke a token created without a value; the orphan sweep will");
            }
            let mut e = self.api.error(
                IssuerErrorKind::Protocol,
                Some(reply.status),
                format!(
                    "{what}: the {} answer carries no token value (token {token_id} {})",
                    reply.status,
                    if revoked.is_ok() {
                        "was revoked"
                    } else {
                        "is left for the orphan sweep"
                    }
                ),
            );
            e.outcome_unknown = revoked.is_err();
            return Err(e);
        };
        // The value is in hand: it goes back at once, to be journaled before anything else happens (the real
        // expiry and creation time are read back afterwards, `read_back`).
        Ok(MintedToken {
            value: SecretString::from(value.to_string()),
            token_id,
            created_at: crate::clock::now(),
            expires_at: Some(requested),
        })
    }

    async fn read_back(
        &self,
        token: &TokenPolicy,
        token_id: &str,
    ) -> Result<Option<IssuedToken>, IssuerError> {
        // Expired ones included: an organization's expiry policy may have capped it to the past.
        Ok(self.find(token, token_id).await?.map(|l| IssuedToken {
            token_id: l.id,
            label: l.label,
            created_at: l.created,
            expires_at: l.expires,
            last_used_at: l.last_used,
        }))
    }

    async fn verify(&self, _token: &TokenPolicy, value: &SecretString) -> Result<(), IssuerError> {
        self.api
            .prove(
                self.url(&["user"]),
                value,
                "proving the token (GET /api/user)",
            )
            .await
    }

    async fn revoke(&self, token: &TokenPolicy, token_id: &str) -> Result<(), IssuerError> {
        let mut segments = self.collection(token)?;
        segments.push(token_id);
        let mut url = self.url(&segments);
        url.query_pairs_mut().append_pair(
            "reason",
            &format!("revoked by token-rotator ({})", token.name),
        );
        let what = format!("revoking {} (token {token_id})", Self::describe(token));
        match self.call(token, Effect::Delete, url, None, &what).await {
            Ok(_) => Ok(()),
            // Already gone counts as revoked.
            Err(e) if e.kind == IssuerErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_own(&self, token: &TokenPolicy) -> Result<Vec<IssuedToken>, IssuerError> {
        let what = match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { organization, .. }) => {
                format!("listing the organization tokens of \"{organization}\"")
            }
            Some(PulumiType::Team { organization, team }) => {
                format!("listing the team tokens of \"{organization}/{team}\"")
            }
            _ => "listing the personal tokens of the calling user".to_string(),
        };
        Ok(self
            .list_pages(token, "active", &what)
            .await?
            .into_iter()
            // The personal list also holds refresh tokens from agent sign-up; they are not ours to touch.
            .filter(
                |t| match (token.kind.downcast::<PulumiType>(), t.kind.as_deref()) {
                    (_, None) => true,
                    (Some(PulumiType::Personal), Some(k)) => k == "personal",
                    (Some(PulumiType::Team { .. }), Some(k)) => k == "team",
                    (_, Some(k)) => k == "organization",
                },
            )
            .filter(|t| self.is_own_label(token, &t.label))
            .map(|t| IssuedToken {
                token_id: t.id,
                label: t.label,
                created_at: t.created,
                expires_at: t.expires,
                last_used_at: t.last_used,
            })
            .collect())
    }

    /// The access token expiry policy: `maxAccessTokenExpiryDays` of `GET /api/orgs/{org}/metadata` (pulumi/docs
    /// PR 20344; the service API spec). Organization and team tokens beyond it are refused at creation; a personal
    /// token's policy is the one of each organization it is used against, which the policy does not name.
    async fn lifetime_cap(&self, token: &TokenPolicy) -> Result<Option<LifetimeCap>, IssuerError> {
        let (org, label) = match token.kind.downcast::<PulumiType>() {
            Some(PulumiType::Organization { organization, .. }) => (organization, "organization"),
            Some(PulumiType::Team { organization, .. }) => (organization, "team"),
            _ => return Ok(None),
        };
        let reply = self
            .call(
                token,
                Effect::Read,
                self.url(&["orgs", org, "metadata"]),
                None,
                &format!("reading the token expiry policy of \"{org}\""),
            )
            .await?;
        let days = reply
            .body
            .get("maxAccessTokenExpiryDays")
            .and_then(Value::as_u64)
            .filter(|d| *d > 0);
        Ok(days.map(|d| LifetimeCap {
            max: Duration::from_secs(d * 86_400),
            what: format!(
                "the access token expiry policy of organization \"{org}\" (for its {label} tokens)"
            ),
        }))
    }

    async fn probe(&self) -> Result<(), IssuerError> {
        let credential = self.api.credential();
        self.api
            .call_once(Call {
                effect: Effect::Read,
                url: self.url(&["user"]),
                bearer: &credential,
                body: None,
                what: "proving the issuer credential (GET /api/user)",
            })
            .await
            .map(|_| ())
            .map_err(|mut e| {
            if e.kind == IssuerErrorKind::Unauthorized {
                e.message.push_str(&format!(
                    " (the credential was rejected: check `token` of [issuers.{}]; it may be wrong, expired or revoked)",
                    self.api.name
                ));
            }
            e
        })
    }

    fn credential_is(&self, value: &SecretString) -> bool {
        self.api.credential_is(value)
    }

    fn set_credential(&self, value: SecretString) {
        self.api.set_credential(value)
    }
}

#[cfg(test)]
mod tests;
