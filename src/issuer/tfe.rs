//! HCP Terraform / Terraform Enterprise issuer (`kind = "tfe"`).
//!
//! Wire facts (shared/reference/token-apis.md A.0–A.1; developer.hashicorp.com/terraform/cloud-docs/api-docs):
//! `Authorization: Bearer`, `Content-Type: application/vnd.api+json` on every POST/PATCH/DELETE (415 otherwise),
//! JSON:API bodies, `expired-at` RFC 3339 UTC, the value only in the create response, 401 = bad credential,
//! 404 = missing or not allowed, 429 with `X-RateLimit-Reset` (seconds) and no `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::api::ApiBase;
use super::{IssuedToken, Issuer, IssuerError, IssuerErrorKind, MintedToken};
use crate::metrics::Metrics;
use crate::policy::{IssuerConfig, TokenKind, TokenPolicy};
use crate::retry;
use crate::secret::{ExposeSecret, SecretString};

const JSON_API: &str = "application/vnd.api+json";

/// `Debug` shows the issuer's name and address; the credential is never printed.
#[derive(Debug)]
pub struct TfeIssuer {
    api: ApiBase,
}

/// What one HTTP exchange produced.
struct Reply {
    status: u16,
    body: Value,
}

impl TfeIssuer {
    pub fn new(
        cfg: &IssuerConfig,
        credential: SecretString,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IssuerError> {
        Ok(TfeIssuer {
            api: ApiBase::new(cfg, credential, metrics)?,
        })
    }

    /// `{address}/api/v2/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        self.api.url(&["api", "v2"], segments)
    }

    /// One request, paced, counted in metrics; non-2xx becomes an error that says what to check.
    async fn send(
        &self,
        method: Method,
        url: Url,
        bearer: &SecretString,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, IssuerError> {
        self.api.pace(bearer).await;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", bearer.expose_secret()))
            .map_err(|_| {
                self.api.error(
                    IssuerErrorKind::Config,
                    None,
                    "credential is not a valid HTTP header value",
                )
            })?;
        auth.set_sensitive(true);
        let mut req = self
            .api
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, JSON_API);
        if method != Method::GET {
            // TFC answers 415 to a mutating request without it, even a body-less DELETE (go-tfe content_type.go).
            req = req.header(CONTENT_TYPE, JSON_API);
        }
        if let Some(body) = body {
            req = req.body(serde_json::to_vec(body).expect("JSON values serialise"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.api.count("error");
                return Err(self.api.error(
                    IssuerErrorKind::Unavailable,
                    None,
                    format!("{what}: {}", crate::http::reason(&e)),
                ));
            }
        };
        let status = resp.status().as_u16();
        self.api.count(&status.to_string());
        let reset = resp
            .headers()
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
        let bytes = crate::http::read_capped(resp).await.map_err(|e| {
            self.api.error(
                IssuerErrorKind::Unavailable,
                Some(status),
                format!("{what}: reading the response: {}", crate::http::reason(&e)),
            )
        })?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) if (200..300).contains(&status) => {
                    return Err(self.api.error(
                        IssuerErrorKind::Unavailable,
                        Some(status),
                        format!(
                        "{what}: the {status} response is not JSON (truncated or not the TFC API?)"
                    ),
                    ))
                }
                Err(_) => Value::Null,
            }
        };
        if (200..300).contains(&status) {
            return Ok(Reply { status, body });
        }
        let detail = api_errors(&body);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let (kind, hint) = match status {
            401 => (
                IssuerErrorKind::Unauthorized,
                format!(" (the credential was rejected: check `token` of [issuers.{}]; it may be wrong, expired or revoked)", self.api.name),
            ),
            403 => (
                IssuerErrorKind::Forbidden,
                " (the credential is valid but lacks the permission)".to_string(),
            ),
            404 => (
                IssuerErrorKind::NotFound,
                " (TFC answers 404 both for a missing resource and for a credential without permission or entitlement)".to_string(),
            ),
            415 => (
                IssuerErrorKind::Rejected,
                " (the server refused the JSON:API content type; is this a supported TFE version?)".to_string(),
            ),
            429 => {
                // After a 429 nothing goes to this issuer before X-RateLimit-Reset has passed (SPEC §5.4).
                let wait = reset.unwrap_or(Duration::from_secs(1)) + super::api::jitter(Duration::from_millis(250));
                self.api.rate_limited(bearer, wait).await;
                let mut e = self.api.error(
                    IssuerErrorKind::RateLimited,
                    Some(status),
                    format!("{what}: 429 rate limited{detail}; waiting {:.1}s", wait.as_secs_f64()),
                );
                e.retry_after = Some(wait);
                return Err(e);
            }
            s if s >= 500 => (IssuerErrorKind::Unavailable, String::new()),
            _ => (IssuerErrorKind::Rejected, String::new()),
        };
        Err(self.api.error(
            kind,
            Some(status),
            format!("{what}: {status}{detail}{hint}"),
        ))
    }

    /// `send` with the transient-failure retry policy.
    async fn send_retrying(
        &self,
        method: Method,
        url: Url,
        bearer: &SecretString,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, IssuerError> {
        (|| self.send(method.clone(), url.clone(), bearer, body, what))
            .retry(retry::transient())
            .when(IssuerError::retryable)
            .notify(|e, wait| {
                tracing::warn!(issuer = %self.api.name, error = %e, retry_in_ms = wait.as_millis() as u64, "issuer request failed; retrying");
            })
            .await
    }

    fn parse_token(&self, reply: &Reply, what: &str) -> Result<MintedToken, IssuerError> {
        let protocol = |m: &str| {
            self.api.error(
                IssuerErrorKind::Protocol,
                Some(reply.status),
                format!("{what}: {} response {m}", reply.status),
            )
        };
        let data = reply
            .body
            .get("data")
            .ok_or_else(|| protocol("has no `data`"))?;
        let token_id = match data.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(protocol("has no token id")),
        };
        let attrs = data
            .get("attributes")
            .ok_or_else(|| protocol("has no `attributes`"))?;
        let value = attrs
            .get("token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| protocol("carries no token value"))?;
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, IssuerError> {
            match attrs.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|_| protocol(&format!("has an invalid `{key}`"))),
                Some(_) => Err(protocol(&format!("has an invalid `{key}`"))),
            }
        };
        Ok(MintedToken {
            value: SecretString::from(value.to_string()),
            token_id,
            created_at: time("created-at")?.unwrap_or_else(crate::clock::now),
            expires_at: time("expired-at")?,
        })
    }
}

/// `errors[].title/detail` of a JSON:API error body (or the plain `{"errors":["…"]}` form), shortened.
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
    let mut text = parts.join("; ");
    if text.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// TFC descriptions: `<description> <YYYYMMDDThhmmssZ>`.
const LABEL_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Pages read from a list endpoint at most (100 items each): a bound, not an expected size.
const MAX_PAGES: u32 = 1000;

impl TfeIssuer {
    /// `POST` a create request and parse the 201.
    async fn create(
        &self,
        url: Url,
        attributes: serde_json::Map<String, Value>,
        what: &str,
    ) -> Result<MintedToken, IssuerError> {
        let body = json!({"data": {"type": "authentication-tokens", "attributes": attributes}});
        let reply = self
            .send_retrying(Method::POST, url, &self.api.credential(), Some(&body), what)
            .await?;
        if reply.status != 201 {
            return Err(self.api.error(
                IssuerErrorKind::Protocol,
                Some(reply.status),
                format!("{what}: expected 201 Created, got {}", reply.status),
            ));
        }
        self.parse_token(&reply, what)
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
            let reply = self
                .send_retrying(Method::GET, url, &self.api.credential(), None, what)
                .await?;
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
        let result = match &token.kind {
            TokenKind::TfeOrganization { organization } => {
                let url = self.url(&["organizations", organization, "authentication-token"]);
                self.create(
                    url,
                    attributes,
                    &format!("creating the organization token of \"{organization}\""),
                )
                .await
            }
            TokenKind::TfeAuditTrails { organization } => {
                let mut url = self.url(&["organizations", organization, "authentication-token"]);
                url.query_pairs_mut().append_pair("token", "audit-trails");
                self.create(
                    url,
                    attributes,
                    &format!("creating the audit-trails token of \"{organization}\""),
                )
                .await
            }
            TokenKind::TfeTeamLegacy { team_id } => {
                let url = self.url(&["teams", team_id, "authentication-token"]);
                self.create(
                    url,
                    attributes,
                    &format!("creating the legacy team token of {team_id}"),
                )
                .await
            }
            TokenKind::TfeTeam { team_id } => {
                let url = self.url(&["teams", team_id, "authentication-tokens"]);
                self.create(url, described(attributes), &format!("creating a team token of {team_id}"))
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
            TokenKind::TfeAgent { agent_pool_id, .. } => {
                // Agent tokens have no expiry attribute (token-apis.md A.5).
                let url = self.url(&["agent-pools", agent_pool_id, "authentication-tokens"]);
                self.create(
                    url,
                    described(serde_json::Map::new()),
                    &format!("creating an agent token of pool {agent_pool_id}"),
                )
                .await
            }
            other => Err(self.api.error(
                IssuerErrorKind::Config,
                None,
                format!("token type {} is not a TFC type", other.type_name()),
            )),
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
        let url = self.url(&["account", "details"]);
        self.send_retrying(
            Method::GET,
            url,
            value,
            None,
            "proving the new token (GET account/details)",
        )
        .await
        .map(|_| ())
    }

    async fn revoke(&self, token: &TokenPolicy, token_id: &str) -> Result<(), IssuerError> {
        if token.kind.is_singleton() {
            return Err(self.api.error(
                IssuerErrorKind::Config,
                None,
                "singleton tokens are replaced at create time and never revoked separately",
            ));
        }
        let url = self.url(&["authentication-tokens", token_id]);
        match self
            .send_retrying(
                Method::DELETE,
                url,
                &self.api.credential(),
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
        let items = match &token.kind {
            TokenKind::TfeTeam { team_id } => {
                // There is no per-team list: read the team's name and organization, then filter the org-wide list.
                let what = format!("reading team {team_id}");
                let reply = self
                    .send_retrying(
                        Method::GET,
                        self.url(&["teams", team_id]),
                        &self.api.credential(),
                        None,
                        &what,
                    )
                    .await?;
                let name = reply
                    .body
                    .pointer("/data/attributes/name")
                    .and_then(Value::as_str);
                let org = reply
                    .body
                    .pointer("/data/relationships/organization/data/id")
                    .and_then(Value::as_str);
                let (Some(name), Some(org)) = (name, org) else {
                    return Err(self.api.error(
                        IssuerErrorKind::Protocol,
                        Some(reply.status),
                        format!("{what}: no name or organization"),
                    ));
                };
                self.list_pages(
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
                .collect()
            }
            TokenKind::TfeAgent { agent_pool_id, .. } => {
                self.list_pages(
                    &["agent-pools", agent_pool_id, "authentication-tokens"],
                    &[],
                    &format!("listing the tokens of agent pool {agent_pool_id}"),
                )
                .await?
            }
            _ => Vec::new(),
        };
        Ok(items
            .iter()
            .filter_map(|i| self.issued(i))
            .filter(|t| self.is_own_label(token, &t.label))
            .collect())
    }

    fn credential_is(&self, value: &SecretString) -> bool {
        self.api.credential_is(value)
    }

    fn set_credential(&self, value: SecretString) {
        self.api.set_credential(value)
    }

    async fn probe(&self) -> Result<(), IssuerError> {
        let url = self.url(&["account", "details"]);
        self.send(
            Method::GET,
            url,
            &self.api.credential(),
            None,
            "proving the issuer credential (GET account/details)",
        )
        .await
        .map(|_| ())
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
