//! HCP Terraform / TFE variables as a delivery target (`kind = "tfe-variable"`, SPEC §11): the bare token in a
//! sensitive workspace variable (`/api/v2/workspaces/:id/vars`) or variable-set variable
//! (`/api/v2/varsets/:id/relationships/vars`), created if missing and updated in place otherwise (never deleted
//! and re-created: consumers keep the variable id). A sensitive value is never returned by the API, so the
//! variable's description names what it holds: `managed by token-rotator: <token> <token_id>`.
//!
//! Wire facts (developer.hashicorp.com/terraform/cloud-docs/api-docs/workspace-variables and .../variable-sets):
//! JSON:API bodies with `Content-Type: application/vnd.api+json` on POST/PATCH (415 otherwise), `Authorization:
//! Bearer`, 404 for a workspace or set that does not exist or that the credential may not see, 422 for an invalid
//! variable (a key + category already taken), 429 with `X-RateLimit-Reset` in seconds.
//!
//! With `issuer = "NAME"` the sink calls with that issuer's address, CA, credential (the live one: a self-rotated
//! credential is followed) and pacers (the service counts both against the same user).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::rest::{self, Answer, Request};
use super::{
    Content, Holds, IssuerLink, Observed, Sink, SinkError, SinkErrorKind, Target, Version,
};
use crate::policy::diag::Diagnostics;
use crate::policy::fields::{check_address, non_empty, read_local_secret_ref, read_path};
use crate::policy::kinds::{SinkSettings, SinkSpec, TargetKey};
use crate::policy::reader::TableReader;
use crate::policy::SecretRef;
use crate::policy::{TfeVariable, VarCategory, VarOwner};
use crate::record::SinkRecord;
use crate::retry::IssuerPacers;
use crate::secret::{LiveSecret, SecretString};

const JSON_API: &str = "application/vnd.api+json";
/// What every variable this daemon writes says before the token's name and id.
pub const DESCRIPTION_PREFIX: &str = "managed by token-rotator: ";
/// HCP Terraform's documented rate (30 requests per second per user), for a sink with its own credential.
const DEFAULT_RATE: u32 = 25;

/// The `[sinks.NAME]` table of `kind = "tfe-variable"`.
#[derive(Clone, Debug)]
pub struct TfeVariableConfig {
    /// Borrow this issuer's address, CA, credential and pacing.
    pub issuer: Option<String>,
    pub address: Option<String>,
    pub token: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
}

impl SinkSettings for TfeVariableConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// How the sink reaches the API (once linked, for a borrowed issuer).
struct Conn {
    client: reqwest::Client,
    base: Url,
    credential: LiveSecret,
    pacers: Arc<IssuerPacers>,
}

pub struct TfeVariableSink {
    name: String,
    borrowed: Option<String>,
    conn: RwLock<Option<Arc<Conn>>>,
}

/// A variable as listed.
struct Found {
    id: String,
    description: String,
    sensitive: bool,
}

impl TfeVariableSink {
    fn error(&self, kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError::new(&self.name, kind, message)
    }

    fn conn(&self) -> Result<Arc<Conn>, SinkError> {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                self.error(
                    SinkErrorKind::Unavailable,
                    format!(
                        "issuer \"{}\" whose connection this sink borrows is not usable",
                        self.borrowed.as_deref().unwrap_or("?")
                    ),
                )
            })
    }

    fn variable<'t>(&self, target: &'t Target) -> Result<&'t TfeVariable, SinkError> {
        match target {
            Target::TfeVariable(v) => Ok(v),
            other => Err(self.error(
                SinkErrorKind::Permanent,
                format!("a tfe-variable sink takes `workspace_id` or `varset_id` and `key`, not {other}"),
            )),
        }
    }

    /// `/api/v2/workspaces/:id/vars` or `/api/v2/varsets/:id/relationships/vars`, plus `more` segments.
    fn vars_url(conn: &Conn, owner: &VarOwner, more: &[&str]) -> Url {
        let mut segments: Vec<&str> = match owner {
            VarOwner::Workspace(id) => vec!["api", "v2", "workspaces", id, "vars"],
            VarOwner::Varset(id) => vec!["api", "v2", "varsets", id, "relationships", "vars"],
        };
        segments.extend_from_slice(more);
        rest::url(&conn.base, &segments)
    }

    async fn call(
        &self,
        conn: &Conn,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, SinkError> {
        let credential = conn.credential.get();
        let mutation = method != Method::GET;
        let body = body.map(|b| b.to_string().into_bytes());
        // A 429 blocks every request with this credential (the issuer's too, when borrowed) until the reset.
        rest::send_waiting(
            &self.name,
            &conn.client,
            &conn.pacers.credential,
            &[&conn.pacers.credential, &conn.pacers.probe],
            || Request {
                method: method.clone(),
                url: url.clone(),
                scheme: "Bearer",
                credential: &credential,
                content_type: mutation.then_some(JSON_API),
                accept: JSON_API,
                extra: &[],
                body: body.clone(),
            },
            |answer| {
                (answer.status == 429).then(|| {
                    answer
                        .header("x-ratelimit-reset")
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
                        .unwrap_or(Duration::from_secs(1))
                })
            },
        )
        .await
    }

    /// A failed answer as an error: what the server said, redacted.
    fn refused(
        &self,
        conn: &Conn,
        what: &str,
        answer: &Answer,
        value: Option<&SecretString>,
    ) -> SinkError {
        let credential = conn.credential.get();
        let mut known = vec![&credential];
        known.extend(value);
        let detail = answer
            .json()
            .and_then(|v| {
                let errors = v.get("errors")?.as_array()?.clone();
                Some(
                    errors
                        .iter()
                        .map(|e| {
                            let title = e.get("title").and_then(Value::as_str).unwrap_or("");
                            let detail = e.get("detail").and_then(Value::as_str).unwrap_or("");
                            format!("{title} {detail}").trim().to_string()
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
            .unwrap_or_default();
        let hint = match answer.status {
            401 => " (the credential was refused)",
            404 => " (it does not exist, or this credential may not see it)",
            _ => "",
        };
        self.error(
            rest::kind_of(answer.status),
            format!(
                "{what}: HTTP {}{hint}: {}",
                answer.status,
                rest::said(&detail, &known)
            ),
        )
    }

    /// The variable with the target's key and category, if any.
    async fn find(&self, conn: &Conn, v: &TfeVariable) -> Result<Option<Found>, SinkError> {
        let mut page = 1u64;
        loop {
            let mut url = Self::vars_url(conn, &v.owner, &[]);
            url.query_pairs_mut()
                .append_pair("page[number]", &page.to_string())
                .append_pair("page[size]", "100");
            let answer = self.call(conn, Method::GET, url, None).await?;
            if answer.status != 200 {
                return Err(self.refused(
                    conn,
                    &format!("listing the variables of {v}"),
                    &answer,
                    None,
                ));
            }
            let body = answer.json().ok_or_else(|| {
                self.error(
                    SinkErrorKind::Unavailable,
                    format!("listing the variables of {v}: the answer is not JSON"),
                )
            })?;
            if let Some(found) = find_in(&body, v) {
                return Ok(Some(found));
            }
            // Lists may be paginated (go-tfe's variable list options take `page[number]` / `page[size]`, the
            // answer's `meta.pagination.next-page`); bounded at 100 pages of 100.
            match body
                .pointer("/meta/pagination/next-page")
                .and_then(Value::as_u64)
            {
                Some(next) if next > page && next <= 100 => page = next,
                _ => return Ok(None),
            }
        }
    }
}

/// The variable with `v`'s key and category in one page of a list.
fn find_in(body: &Value, v: &TfeVariable) -> Option<Found> {
    body.get("data")?.as_array()?.iter().find_map(|item| {
        let a = item.get("attributes")?;
        (a.get("key")?.as_str()? == v.key && a.get("category")?.as_str()? == v.category.as_str())
            .then(|| Found {
                id: item
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                description: a
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                sensitive: a.get("sensitive").and_then(Value::as_bool).unwrap_or(false),
            })
    })
}

/// The description of a variable holding `token_id` of policy token `token`.
pub fn description(token: &str, token_id: &str) -> String {
    format!("{DESCRIPTION_PREFIX}{token} {token_id}")
}

/// What a description says the variable holds, when this daemon wrote it for `token`.
fn held(description: &str, token: &str) -> Option<String> {
    let (name, id) = description
        .strip_prefix(DESCRIPTION_PREFIX)?
        .rsplit_once(' ')?;
    (name == token && !id.is_empty()).then(|| id.to_string())
}

#[async_trait]
impl Sink for TfeVariableSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let v = self.variable(target)?;
        let conn = self.conn()?;
        let Some(found) = self.find(&conn, v).await? else {
            return Ok(Observed {
                version: Version::Absent,
                content: Content::Absent,
            });
        };
        let content = match held(&found.description, &v.token) {
            // A variable someone made non-sensitive no longer keeps the token out of sight: written again.
            Some(id) if found.sensitive => Content::Delivered(Holds::TokenId(id)),
            Some(_) => Content::Garbage("the variable is no longer sensitive".into()),
            None => Content::Garbage(
                "the variable's description does not say token-rotator wrote it for this token"
                    .into(),
            ),
        };
        Ok(Observed {
            version: Version::Unversioned,
            content,
        })
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        _expected: Version,
    ) -> Result<(), SinkError> {
        use crate::secret::ExposeSecret;
        let v = self.variable(target)?;
        let conn = self.conn()?;
        let mut attributes = json!({
            "value": record.token.expose_secret(),
            "description": description(&v.token, &record.token_id),
            "sensitive": true,
            "hcl": false,
        });
        // The API offers no check-and-set on variables: the variable is looked up again right before the write
        // and updated in place (its id is what consumers and the API keep).
        let (method, url, body) = match self.find(&conn, v).await? {
            Some(found) if found.id.is_empty() => {
                return Err(self.error(
                    SinkErrorKind::Unavailable,
                    format!("listing the variables of {v}: the variable has no id"),
                ))
            }
            Some(found) => {
                let url = Self::vars_url(&conn, &v.owner, &[&found.id]);
                let body =
                    json!({"data": {"id": found.id, "type": "vars", "attributes": attributes}});
                (Method::PATCH, url, body)
            }
            None => {
                attributes["key"] = json!(v.key);
                attributes["category"] = json!(v.category.as_str());
                let url = Self::vars_url(&conn, &v.owner, &[]);
                (
                    Method::POST,
                    url,
                    json!({"data": {"type": "vars", "attributes": attributes}}),
                )
            }
        };
        let answer = self.call(&conn, method.clone(), url, Some(&body)).await?;
        match answer.status {
            200 | 201 => Ok(()),
            // Created by someone else between the list and the create ("has already been taken"): the next
            // attempt finds and updates it. Any other 422 is the variable itself being refused.
            422 if method == Method::POST => {
                let e = self.refused(
                    &conn,
                    &format!("creating {v}"),
                    &answer,
                    Some(&record.token),
                );
                Err(SinkError {
                    kind: if e.message.contains("taken") {
                        SinkErrorKind::Conflict
                    } else {
                        SinkErrorKind::Permanent
                    },
                    ..e
                })
            }
            _ => Err(self.refused(&conn, &format!("writing {v}"), &answer, Some(&record.token))),
        }
    }

    fn link(&self, link: IssuerLink) {
        match connect(
            &self.name,
            &link.address,
            link.ca_file.as_deref(),
            link.credential,
            link.pacers,
        ) {
            Ok(conn) => {
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(conn))
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "the sink cannot use its issuer's connection")
            }
        }
    }
}

fn connect(
    sink: &str,
    address: &str,
    ca_file: Option<&std::path::Path>,
    credential: LiveSecret,
    pacers: Arc<IssuerPacers>,
) -> Result<Conn, SinkError> {
    let client = crate::http::client(ca_file)
        .map_err(|e| SinkError::new(sink, SinkErrorKind::Permanent, e.to_string()))?;
    Ok(Conn {
        client,
        base: rest::base_url(sink, address)?,
        credential,
        pacers,
    })
}

/// The policy side of `kind = "tfe-variable"`.
pub struct TfeVariableSpec;

#[async_trait]
impl super::SinkKind for TfeVariableSpec {
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<Arc<dyn Sink>, SinkError> {
        let cfg = super::settings_of::<TfeVariableConfig>(name, settings)?;
        let conn = match (&cfg.address, &cfg.token) {
            (Some(address), Some(token)) => {
                let credential = token.resolve_local().map_err(|e| {
                    SinkError::new(
                        name,
                        SinkErrorKind::Permanent,
                        format!("token {token}: {e}"),
                    )
                })?;
                Some(Arc::new(connect(
                    name,
                    address,
                    cfg.ca_file.as_deref(),
                    LiveSecret::new(credential),
                    Arc::new(IssuerPacers::new(DEFAULT_RATE)),
                )?))
            }
            _ => None,
        };
        Ok(Arc::new(TfeVariableSink {
            name: name.to_string(),
            borrowed: cfg.issuer.clone(),
            conn: RwLock::new(conn),
        }))
    }
}

impl SinkSpec for TfeVariableSpec {
    fn name(&self) -> &'static str {
        "tfe-variable"
    }

    fn target_key(&self) -> TargetKey {
        TargetKey::Own
    }

    fn keys(&self) -> &'static [&'static str] {
        &["issuer", "address", "token", "ca_file"]
    }

    fn delivers(&self) -> bool {
        true
    }

    /// Workspace and variable-set ids are unique in a TFC organization (random): one variable, whichever
    /// `tfe-variable` table names it.
    fn place(&self, _settings: &dyn SinkSettings) -> Option<String> {
        Some("tfe-variable".into())
    }

    fn borrowed_issuer(&self, settings: &dyn SinkSettings) -> Option<(String, &'static str)> {
        settings
            .as_any()
            .downcast_ref::<TfeVariableConfig>()
            .and_then(|c| c.issuer.clone())
            .map(|i| (i, "tfe"))
    }

    fn read(&self, t: &mut TableReader, d: &mut Diagnostics) -> Option<Arc<dyn SinkSettings>> {
        let issuer = t
            .opt_str(d, "issuer")
            .and_then(|v| non_empty(d, v, "issuer"));
        let mut ok = true;
        let address = t.opt_str(d, "address").and_then(|a| {
            if check_address(d, "address", &t.name, &a) {
                Some(a.into_inner())
            } else {
                ok = false;
                None
            }
        });
        let token = if t.has("token") {
            let r = read_local_secret_ref(t, d, "token");
            ok &= r.is_some();
            r
        } else {
            None
        };
        let ca_file = read_path(t, d, "ca_file");
        match (&issuer, &address, &token) {
            (Some(_), None, None) if ca_file.is_none() => {}
            (Some(_), _, _) => {
                d.push(
                    t.span.clone(),
                    format!("{} takes `issuer` (whose address, credential and CA it uses) or `address` + `token` (+ `ca_file`), not both", t.name),
                );
                ok = false;
            }
            (None, Some(_), Some(_)) => {}
            (None, _, _) if ok => {
                t.missing(d, "issuer", " (or `address` + `token`)");
                ok = false;
            }
            _ => ok = false,
        }
        ok.then(|| {
            Arc::new(TfeVariableConfig {
                issuer,
                address,
                token,
                ca_file,
            }) as Arc<dyn SinkSettings>
        })
    }

    fn read_target(
        &self,
        _sink: &str,
        token: &str,
        r: &mut TableReader,
        d: &mut Diagnostics,
    ) -> Option<Target> {
        let ws = r.opt_str(d, "workspace_id");
        let set = r.opt_str(d, "varset_id");
        let owner = match (ws, set) {
            (Some(ws), None) => non_empty(d, ws, "workspace_id").map(VarOwner::Workspace),
            (None, Some(set)) => non_empty(d, set, "varset_id").map(VarOwner::Varset),
            (Some(_), Some(_)) => {
                d.push(
                    r.span.clone(),
                    format!("{} takes `workspace_id` or `varset_id`, not both", r.name),
                );
                None
            }
            (None, None) => {
                r.missing(d, "workspace_id", " (or `varset_id`)");
                None
            }
        };
        let key = r.req_str(d, "key").and_then(|k| {
            if k.get_ref()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                d.push(
                    k.span(),
                    format!(
                        "`key` in {} must not contain spaces or control characters",
                        r.name
                    ),
                );
                return None;
            }
            non_empty(d, k, "key")
        });
        let category = r
            .req_str(d, "category")
            .and_then(|c| match c.get_ref().as_str() {
                "env" => Some(VarCategory::Env),
                "terraform" => Some(VarCategory::Terraform),
                other => {
                    d.push(
                        c.span(),
                        format!(
                            "`category` in {} must be \"env\" or \"terraform\", found \"{other}\"",
                            r.name
                        ),
                    );
                    None
                }
            });
        Some(Target::TfeVariable(Box::new(TfeVariable {
            owner: owner?,
            key: key?,
            category: category?,
            token: token.to_string(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_names_the_token_and_its_id() {
        let d = description("ci-team", "at-123");
        assert_eq!(d, "managed by token-rotator: ci-team at-123");
        assert_eq!(held(&d, "ci-team").as_deref(), Some("at-123"));
        assert_eq!(held(&d, "other"), None);
        assert_eq!(held("set by hand", "ci-team"), None);
        // A token name with spaces cannot occur (names are checked), but the id is the last word anyway.
        assert_eq!(
            held(&description("a b", "at-1"), "a b").as_deref(),
            Some("at-1")
        );
    }
}
