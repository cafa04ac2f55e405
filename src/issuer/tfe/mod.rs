//! HCP Terraform / Terraform Enterprise issuer (`kind = "tfe"`).
//!
//! Wire facts (shared/reference/token-apis.md A.0–A.1; developer.hashicorp.com/terraform/cloud-docs/api-docs):
//! `Authorization: Bearer`, `Content-Type: application/vnd.api+json` on every POST/PATCH/DELETE (415 otherwise),
//! JSON:API bodies, `expired-at` RFC 3339 UTC, the value only in the create response, 401 = bad credential,
//! 404 = missing or not allowed, 429 with `X-RateLimit-Reset` (seconds) and no `Retry-After`.

mod types;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::api::{ApiBase, Call, Dialect, Effect, IssuerDeps, Reply};
use super::{IssuedToken, Issuer, IssuerError, IssuerErrorKind, LifetimeCap, MintedToken};
use crate::policy::{IssuerConfig, TokenPolicy};
use crate::secret::SecretString;
pub use types::{TfeSpec, TfeType};

const JSON_API: &str = "application/vnd.api+json";

/// How the HCP Terraform API spells things (see the module documentation).
static DIALECT: Dialect = Dialect {
    product: "the HCP Terraform / TFE API",
    auth_scheme: "Bearer",
    accept: JSON_API,
    content_type: JSON_API,
    // TFC answers 415 to a mutating request without it, even a body-less DELETE (go-tfe content_type.go).
    content_type_on: |m| *m != Method::GET,
    error_text: |bytes| {
        serde_json::from_slice::<Value>(bytes)
            .map(|v| api_errors(&v))
            .unwrap_or_default()
    },
    // `X-RateLimit-Reset`: seconds (a float) until the window resets; TFC sends no `Retry-After`.
    rate_limit_wait: |headers: &HeaderMap, _now| {
        headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)))
    },
};

impl super::IssuerKind for TfeSpec {
    fn build(
        &self,
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: IssuerDeps,
    ) -> Result<Arc<dyn Issuer>, IssuerError> {
        Ok(Arc::new(TfeIssuer::new(cfg, credential, deps)?))
    }
}

/// `Debug` shows the issuer's name and address; the credential is never printed.
#[derive(Debug)]
pub struct TfeIssuer {
    api: ApiBase,
    /// Each team's name and organization as last read (`team_of`): a team token's list needs them, and reading
    /// them before every list cost one rate-limited request per rotation. A renamed team is read again when its
    /// list comes back empty.
    teams: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

impl TfeIssuer {
    pub fn new(
        cfg: &IssuerConfig,
        credential: SecretString,
        deps: IssuerDeps,
    ) -> Result<Self, IssuerError> {
        Ok(TfeIssuer {
            api: ApiBase::new(cfg, credential, deps, &DIALECT)?,
            teams: Default::default(),
        })
    }

    /// The TFC type of a policy token (a token of another kind here is a bug of the caller, refused).
    fn type_of<'a>(&self, token: &'a TokenPolicy) -> Result<&'a TfeType, IssuerError> {
        token.kind.downcast::<TfeType>().ok_or_else(|| {
            self.api.error(
                IssuerErrorKind::Config,
                None,
                format!("token type {} is not a TFC type", token.kind.type_name()),
            )
        })
    }

    /// `{address}/api/v2/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        self.api.url(&["api", "v2"], segments)
    }

    /// A call made with the issuer's credential, with what to check added to its failures.
    async fn call(
        &self,
        effect: Effect,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, IssuerError> {
        self.api
            .call_as_issuer(effect, url, body, what)
            .await
            .map_err(|e| self.explain(e))
    }

    /// Adds what to check to a failure of a call made with the issuer's credential.
    fn explain(&self, mut e: IssuerError) -> IssuerError {
        let hint = match e.kind {
            IssuerErrorKind::Unauthorized => format!(
                " (the credential was rejected: check `token` of [issuers.{}]; it may be wrong, expired or revoked)",
                self.api.name
            ),
            IssuerErrorKind::Forbidden => " (the credential is valid but lacks the permission)".into(),
            IssuerErrorKind::NotFound => " (TFC answers 404 both for a missing resource and for a credential without permission or entitlement)".into(),
            _ => String::new(),
        };
        e.message.push_str(&hint);
        e
    }

    /// The token a create answered with. Once the value is in hand nothing here may throw it away (SPEC §5.1): a
    /// timestamp that does not parse falls back to what we know (now, the expiry we asked for) with a warning. An
    /// answer without a value or an id is a token we can never hand out: the create happened but its result is
    /// lost, exactly as if the answer had been cut off.
    fn parse_token(
        &self,
        reply: &Reply,
        what: &str,
        requested_expiry: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError> {
        let lost = |m: &str| {
            let mut e = self.api.error(
                IssuerErrorKind::Unavailable,
                Some(reply.status),
                format!(
                    "{what}: the {} answer {m}; the token it created is unusable",
                    reply.status
                ),
            );
            e.outcome_unknown = true;
            e
        };
        let data = reply
            .body
            .get("data")
            .ok_or_else(|| lost("has no `data`"))?;
        let token_id = match data.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(lost("has no token id")),
        };
        let attrs = data.get("attributes");
        let value = attrs
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| lost("carries no token value"))?;
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, ()> {
            match attrs.and_then(|a| a.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|_| ()),
                Some(_) => Err(()),
            }
        };
        let created_at = time("created-at").unwrap_or_else(|()| {
            tracing::warn!(issuer = %self.api.name, token_id = %token_id, "the create answer has an invalid `created-at`; recording the time it arrived");
            None
        });
        let expires_at = time("expired-at").unwrap_or_else(|()| {
            tracing::warn!(issuer = %self.api.name, token_id = %token_id, "the create answer has an invalid `expired-at`; recording the requested expiry");
            requested_expiry
        });
        Ok(MintedToken {
            value: SecretString::from(value.to_string()),
            token_id,
            created_at: created_at.unwrap_or_else(crate::clock::now),
            expires_at,
        })
    }
}

/// `errors[].title/detail` of a JSON:API error body (or the plain `{"errors":["…"]}` form).
fn api_errors(body: &Value) -> String {
    let Some(errors) = body.get("errors").and_then(Value::as_array) else {
        return String::new();
    };
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            Value::Object(o) => {
                let get = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                match (get("title"), get("detail")) {
                    (t, d) if d.is_empty() => t,
                    (t, d) if t.is_empty() => d,
                    (t, d) => format!("{t}: {d}"),
                }
            }
            _ => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    // Shortened and redacted by the transport.
    parts.join("; ")
}

/// TFC descriptions: `<description> <YYYYMMDDThhmmssZ>`.
const LABEL_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Pages read from a list endpoint at most (100 items each): a bound, not an expected size.
const MAX_PAGES: u32 = 1000;

impl TfeIssuer {
    /// `POST` a create request and read the token from its answer (201 documented; any 2xx carries the token).
    async fn create(
        &self,
        url: Url,
        attributes: serde_json::Map<String, Value>,
        what: &str,
        requested_expiry: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError> {
        let body = json!({"data": {"type": "authentication-tokens", "attributes": attributes}});
        let reply = self.call(Effect::Create, url, Some(&body), what).await?;
        self.parse_token(&reply, what, requested_expiry)
    }

    /// Reads every page of a JSON:API list (`page[number]`, `page[size]=100`).
    async fn list_pages(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<Value>, IssuerError> {
        let mut items = Vec::new();
        let mut page = 1u32;
        loop {
            let mut url = self.url(segments);
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in query {
                    q.append_pair(k, v);
                }
                q.append_pair("page[number]", &page.to_string());
                q.append_pair("page[size]", "100");
            }
            let reply = self.call(Effect::Read, url, None, what).await?;
            if let Some(data) = reply.body.get("data").and_then(Value::as_array) {
                items.extend(data.iter().cloned());
            }
            let next = reply
                .body
                .pointer("/meta/pagination/next-page")
                .and_then(Value::as_u64);
            match next {
                Some(n) if n as u32 > page && page < MAX_PAGES => page = n as u32,
                _ => return Ok(items),
            }
        }
    }

    fn issued(&self, item: &Value) -> Option<IssuedToken> {
        let id = item.get("id")?.as_str()?.to_string();
        let attrs = item.get("attributes")?;
        let time = |k: &str| {
            attrs
                .get(k)
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(IssuedToken {
            token_id: id,
            label: attrs
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            created_at: time("created-at"),
            expires_at: time("expired-at"),
            last_used_at: time("last-used-at"),
        })
    }
}

#[async_trait]
impl Issuer for TfeIssuer {
    fn name(&self) -> &str {
        &self.api.name
    }

    fn label(&self, token: &TokenPolicy, at: DateTime<Utc>) -> String {
        super::label::make(&token.label, ' ', LABEL_FORMAT, at)
    }

    fn is_own_label(&self, token: &TokenPolicy, label: &str) -> bool {
        super::label::is_own(&token.label, ' ', LABEL_FORMAT, label)
    }

    async fn mint(
        &self,
        token: &TokenPolicy,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<MintedToken, IssuerError> {
        let mut attributes = serde_json::Map::new();
        if let Some(at) = expires_at {
            attributes.insert(
                "expired-at".into(),
                Value::String(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
        }
        // Singletons are replaced in place and carry no description; coexisting tokens need a unique one.
        let described = |mut a: serde_json::Map<String, Value>| {
            a.insert("description".into(), Value::String(label.to_string()));
            a
        };
        let result = match self.type_of(token)? {
            TfeType::Organization { organization } => {
                let url = self.url(&["organizations", organization, "authentication-token"]);
                self.create(
                    url,
                    attributes,
                    &format!("creating the organization token of \"{organization}\""),
                    expires_at,
                )
                .await
            }
            TfeType::AuditTrails { organization } => {
                let mut url = self.url(&["organizations", organization, "authentication-token"]);
                url.query_pairs_mut().append_pair("token", "audit-trails");
                self.create(
                    url,
                    attributes,
                    &format!("creating the audit-trails token of \"{organization}\""),
                    expires_at,
                )
                .await
            }
            TfeType::TeamLegacy { team_id } => {
                let url = self.url(&["teams", team_id, "authentication-token"]);
                self.create(
                    url,
                    attributes,
                    &format!("creating the legacy team token of {team_id}"),
                    expires_at,
                )
                .await
            }
            TfeType::Team { team_id } => {
                let url = self.url(&["teams", team_id, "authentication-tokens"]);
                self.create(url, described(attributes), &format!("creating a team token of {team_id}"), expires_at)
                    .await
                    .map_err(|mut e| {
                        if e.kind == IssuerErrorKind::NotFound {
                            e.message.push_str(
                                "; for team tokens this also means a Terraform Enterprise version without multiple team tokens (use `type = \"team-legacy\"` there)",
                            );
                        }
                        e
                    })
            }
            TfeType::Agent { agent_pool_id, .. } => {
                // Agent tokens have no expiry attribute (token-apis.md A.5).
                let url = self.url(&["agent-pools", agent_pool_id, "authentication-tokens"]);
                self.create(
                    url,
                    described(serde_json::Map::new()),
                    &format!("creating an agent token of pool {agent_pool_id}"),
                    None,
                )
                .await
            }
        };
        result.map_err(|mut e| {
            // Duplicate team-token description: 422 "Validation failed: Description has already been taken".
            if e.status == Some(422) && e.message.contains("already been taken") {
                e.kind = IssuerErrorKind::Conflict;
            }
            e
        })
    }

    async fn verify(&self, _token: &TokenPolicy, value: &SecretString) -> Result<(), IssuerError> {
        self.api
            .prove(
                self.url(&["account", "details"]),
                value,
                "proving the token (GET account/details)",
            )
            .await
    }

    async fn revoke(&self, token: &TokenPolicy, token_id: &str) -> Result<(), IssuerError> {
        self.type_of(token)?;
        if token.kind.is_singleton() {
            return Err(self.api.error(
                IssuerErrorKind::Config,
                None,
                "singleton tokens are replaced at create time and never revoked separately",
            ));
        }
        let url = self.url(&["authentication-tokens", token_id]);
        match self
            .call(
                Effect::Delete,
                url,
                None,
                &format!("revoking token {token_id}"),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Already gone counts as revoked (vault#29392 shows what happens otherwise).
            Err(e) if e.kind == IssuerErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_own(&self, token: &TokenPolicy) -> Result<Vec<IssuedToken>, IssuerError> {
        Ok(self
            .list_all(token)
            .await?
            .into_iter()
            .filter(|t| self.is_own_label(token, &t.label))
            .collect())
    }

    async fn still_listed(
        &self,
        token: &TokenPolicy,
        token_id: &str,
    ) -> Result<Option<bool>, IssuerError> {
        if !matches!(self.type_of(token)?, TfeType::Agent { .. }) {
            return Ok(None);
        }
        // An empty list is an answer too: a pool whose only token was revoked lists nothing.
        let listed = self.list_all(token).await?;
        Ok(Some(listed.iter().any(|t| t.token_id == token_id)))
    }

    fn credential_is(&self, value: &SecretString) -> bool {
        self.api.credential_is(value)
    }

    fn set_credential(&self, value: SecretString) {
        self.api.set_credential(value)
    }

    fn live_credential(&self) -> Option<crate::secret::LiveSecret> {
        Some(self.api.live_credential())
    }

    /// `GET /organizations/:org/token-ttl-policies` (go-tfe `organization_token_ttl_policy.go`; token-apis.md
    /// "Organization maximum-TTL policy"): `max-ttl-ms` per `token-type`. Tokens above it stop working with 401,
    /// and creating one is refused. A team token's organization is read from the team.
    async fn lifetime_cap(&self, token: &TokenPolicy) -> Result<Option<LifetimeCap>, IssuerError> {
        let (org, policy_type, label) = match self.type_of(token)? {
            TfeType::Organization { organization } => {
                (organization.clone(), "organization", "organization")
            }
            TfeType::AuditTrails { organization } => {
                (organization.clone(), "audit_trails", "audit-trails")
            }
            TfeType::Team { team_id } | TfeType::TeamLegacy { team_id } => {
                let (_, org) = self.team_of(team_id).await?;
                (org, "team", "team")
            }
            TfeType::Agent { .. } => return Ok(None),
        };
        let what = format!("reading the token TTL policies of \"{org}\"");
        let reply = self
            .call(
                Effect::Read,
                self.url(&["organizations", &org, "token-ttl-policies"]),
                None,
                &what,
            )
            .await?;
        let max_ms = reply
            .body
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("attributes"))
            .find(|a| a.get("token-type").and_then(Value::as_str) == Some(policy_type))
            .and_then(|a| a.get("max-ttl-ms"))
            .and_then(Value::as_u64);
        Ok(max_ms.map(|ms| LifetimeCap {
            max: Duration::from_millis(ms),
            what: format!("the maximum TTL of {label} tokens in organization \"{org}\""),
        }))
    }

    async fn probe(&self) -> Result<(), IssuerError> {
        let credential = self.api.credential();
        self.api
            .call_once(Call {
                effect: Effect::Read,
                url: self.url(&["account", "details"]),
                bearer: &credential,
                body: None,
                what: "proving the issuer credential (GET account/details)",
            })
            .await
            .map(|_| ())
            .map_err(|e| self.explain(e))
    }
}

impl TfeIssuer {
    /// A team's name and organization, as last read (`cached`) or read now.
    async fn team_of(&self, team_id: &str) -> Result<(String, String), IssuerError> {
        Ok(self.team_cached(team_id).await?.0)
    }

    /// A team's name and organization and whether they come from the cache.
    async fn team_cached(&self, team_id: &str) -> Result<((String, String), bool), IssuerError> {
        let known = self
            .teams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(team_id)
            .cloned();
        match known {
            Some(t) => Ok((t, true)),
            None => Ok((self.read_team(team_id).await?, false)),
        }
    }

    /// A team's name and organization (`GET /teams/:id`), remembered.
    async fn read_team(&self, team_id: &str) -> Result<(String, String), IssuerError> {
        let what = format!("reading team {team_id}");
        let reply = self
            .call(Effect::Read, self.url(&["teams", team_id]), None, &what)
            .await?;
        let field = |p: &str| {
            reply
                .body
                .pointer(p)
                .and_then(Value::as_str)
                .map(String::from)
        };
        match (
            field("/data/attributes/name"),
            field("/data/relationships/organization/data/id"),
        ) {
            (Some(name), Some(org)) => {
                self.teams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(team_id.to_string(), (name.clone(), org.clone()));
                Ok((name, org))
            }
            _ => Err(self.api.error(
                IssuerErrorKind::Protocol,
                Some(reply.status),
                format!("{what}: no name or organization"),
            )),
        }
    }

    /// The team tokens of `team_id` in the organization-wide list, searched by the team's name.
    async fn list_team(
        &self,
        team_id: &str,
        name: &str,
        org: &str,
    ) -> Result<Vec<Value>, IssuerError> {
        Ok(self
            .list_pages(
                &["organizations", org, "team-tokens"],
                &[("q", name)],
                &format!("listing the team tokens of {team_id}"),
            )
            .await?
            .into_iter()
            .filter(|i| {
                i.pointer("/relationships/team/data/id")
                    .and_then(Value::as_str)
                    == Some(team_id)
            })
            .collect())
    }

    /// Every token the issuer lists for `token`'s team or agent pool, whoever labelled it (empty for singletons).
    async fn list_all(&self, token: &TokenPolicy) -> Result<Vec<IssuedToken>, IssuerError> {
        let items = match self.type_of(token)? {
            TfeType::Team { team_id } => {
                // There is no per-team list: filter the org-wide list, searched by the team's name.
                let ((name, org), cached) = self.team_cached(team_id).await?;
                let listed = self.list_team(team_id, &name, &org).await;
                // A remembered team that lists nothing, or whose organization is not found, may have been renamed
                // (or its organization): read it again.
                let stale = cached
                    && match &listed {
                        Ok(items) => items.is_empty(),
                        Err(e) => e.kind == IssuerErrorKind::NotFound,
                    };
                let fresh = if stale {
                    Some(self.read_team(team_id).await?)
                } else {
                    None
                };
                match fresh {
                    Some(fresh) if fresh != (name, org) => {
                        self.list_team(team_id, &fresh.0, &fresh.1).await?
                    }
                    _ => listed?,
                }
            }
            TfeType::Agent { agent_pool_id, .. } => {
                self.list_pages(
                    &["agent-pools", agent_pool_id, "authentication-tokens"],
                    &[],
                    &format!("listing the tokens of agent pool {agent_pool_id}"),
                )
                .await?
            }
            _ => Vec::new(),
        };
        Ok(items.iter().filter_map(|i| self.issued(i)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_reads_both_shapes() {
        let v = json!({"errors":[{"status":"422","title":"invalid attributes","detail":"Validation failed: Description has already been taken"}]});
        assert_eq!(
            api_errors(&v),
            "invalid attributes: Validation failed: Description has already been taken"
        );
        assert_eq!(api_errors(&json!({"errors":["plain"]})), "plain");
        assert_eq!(api_errors(&json!({})), "");
    }
}
