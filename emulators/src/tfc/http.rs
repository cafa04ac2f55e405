//! The HTTP side: one handler that runs every request through the same pipeline, then the route handlers.
//!
//! Pipeline, in order (each step answers and stops on failure):
//! 1. injected faults (`throttle_for` → 429, `fail_next` → the chosen status);
//! 2. rate limit, per user (the caller's user or service user), else per client IP (token-apis.md A.0 Rate limits);
//! 3. `Content-Type: application/vnd.api+json` on POST/PATCH/DELETE, else 415, even on a body-less DELETE
//!    (go-tfe `v2/middleware/content_type.go`). Checked before authentication: a missing header is a client bug
//!    whatever the credential, and the real API's media-type check sits in front of its controllers;
//! 4. routing: an unknown path or method is 404 whatever the credential;
//! 5. authentication: missing, unknown, revoked, replaced or expired token, an agent token ("not valid for
//!    direct usage in the HCP Terraform API", A.5), or a token whose lifetime exceeds its organization's maximum
//!    TTL while `max-ttl-enabled` is on ("Existing tokens that exceed newly configured limits will stop working and
//!    return an unauthorized error", tfe provider `website/docs/r/org_max_token_ttl_policy.html.markdown`) → 401;
//!    `GET /ping` needs none;
//! 6. `last-used-at` of the caller's token is set, then the route runs. Forbidden answers 404 like "not found"
//!    ("forbidden requests with a valid token result in a 404", A.0).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::IncomingStream;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::jsonapi::{self, Page};
use super::model::{
    self, OwnerKind, RequestRecord, State, Token, TokenKind, TokenState, TtlTokenType, Variable,
    DEFAULT_TTL_MS,
};
use super::tls::TlsListener;

const JSONAPI: &str = "application/vnd.api+json";
const MAX_BODY: usize = 1 << 20;

pub(crate) struct Shared {
    state: Mutex<State>,
    /// `None` disables rate limiting.
    pub rate_limit: Option<u32>,
    pub log_requests: AtomicBool,
    /// Error answers quote the request's `Authorization` header ([`crate::tfc::TfcHandle::set_echo_credentials`]).
    pub echo_credentials: AtomicBool,
    /// `http://127.0.0.1:PORT` or `https://…`, for absolute pagination links.
    pub base_url: String,
}

impl Shared {
    pub fn new(state: State, rate_limit: Option<u32>, base_url: String) -> Self {
        Shared {
            state: Mutex::new(state),
            rate_limit: rate_limit.filter(|l| *l > 0),
            log_requests: AtomicBool::new(false),
            echo_credentials: AtomicBool::new(false),
            base_url,
        }
    }

    /// A panicking test thread must not wedge the emulator for every other test: ignore poisoning.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The client's address, from the listener (plain TCP or TLS).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

struct Reply {
    status: StatusCode,
    body: Option<Value>,
    /// For 429: `X-RateLimit-Reset`.
    reset: Option<Duration>,
    ping: bool,
    /// A token was minted: apply the configured create delay before answering.
    minted: bool,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            reset: None,
            ping: false,
            minted: false,
        }
    }

    fn ok(body: Value) -> Reply {
        Reply::json(StatusCode::OK, body)
    }

    fn created(body: Value) -> Reply {
        Reply {
            minted: true,
            ..Reply::json(StatusCode::CREATED, body)
        }
    }

    fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            reset: None,
            ping: false,
            minted: false,
        }
    }

    fn error(status: StatusCode, title: &str, detail: Option<&str>) -> Reply {
        Reply::json(status, jsonapi::error(status.as_u16(), title, detail))
    }

    fn unauthorized() -> Reply {
        Reply::error(StatusCode::UNAUTHORIZED, "unauthorized", None)
    }

    fn not_found() -> Reply {
        Reply::error(StatusCode::NOT_FOUND, "not found", None)
    }

    fn bad_request(detail: &str) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, "bad request", Some(detail))
    }

    fn unprocessable(detail: &str) -> Reply {
        Reply::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid attribute",
            Some(detail),
        )
    }

    /// 422 naming the offending member of the request document, as the API's model validations do (go-tfe
    /// prints them as "invalid attribute\n\n<detail>", e.g. terraform-provider-tfe issues #170, #317).
    fn invalid_attribute(pointer: &str, detail: &str) -> Reply {
        Reply::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            jsonapi::error_at(422, "invalid attribute", detail, pointer),
        )
    }

    fn rate_limited(reset: Duration) -> Reply {
        Reply {
            reset: Some(reset),
            ..Reply::json(StatusCode::TOO_MANY_REQUESTS, jsonapi::rate_limited())
        }
    }

    fn into_response(self, rate_limit: Option<u32>) -> Response {
        let mut response = Response::new(match &self.body {
            Some(body) => Body::from(serde_json::to_vec(body).expect("a JSON value serializes")),
            None => Body::empty(),
        });
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if self.body.is_some() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSONAPI));
        }
        // 429 carries X-RateLimit-Limit and X-RateLimit-Reset (seconds, a float) and never Retry-After (A.0).
        if let Some(reset) = self.reset {
            headers.insert(
                "x-ratelimit-limit",
                HeaderValue::from(rate_limit.unwrap_or(30)),
            );
            let reset = format!("{:.3}", reset.as_secs_f64());
            headers.insert(
                "x-ratelimit-reset",
                HeaderValue::from_str(&reset).expect("digits are a valid header"),
            );
        } else if let Some(limit) = rate_limit {
            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        }
        if self.ping {
            // Headers go-tfe reads from the ping (go-tfe v1 `tfe.go` `getRawAPIMetadata`).
            headers.insert("tfp-api-version", HeaderValue::from_static("2.6"));
            headers.insert("tfp-appname", HeaderValue::from_static("HCP Terraform"));
        }
        response
    }
}

/// The catch-all handler: every request goes through [`Shared::process`].
pub(crate) async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let body = to_bytes(body, MAX_BODY).await.ok();
    let incoming = Incoming {
        method: &parts.method,
        path: &path,
        query: query.as_deref(),
        headers: &parts.headers,
        peer,
        arrived,
    };
    let (mut reply, principal, token_id) = shared.process(&incoming, body.as_deref());
    if shared.echo_credentials.load(Ordering::Relaxed) && reply.status.as_u16() >= 400 {
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_string();
        if let Some(errors) = reply
            .body
            .as_mut()
            .and_then(|b| b.get_mut("errors"))
            .and_then(Value::as_array_mut)
        {
            errors.push(json!({
                "status": reply.status.as_u16().to_string(),
                "title": "request echo",
                "detail": format!("the request carried Authorization: {auth}"),
            }));
        }
    }
    let (status, reset, minted) = (reply.status.as_u16(), reply.reset, reply.minted);
    let delay = {
        let mut state = shared.lock();
        state.log.push(RequestRecord {
            method: parts.method.to_string(),
            path: path.clone(),
            query,
            status,
            at: arrived,
            principal,
            token_id,
            rate_limit_reset: reset,
        });
        if minted {
            state.create_delay
        } else {
            Duration::ZERO
        }
    };
    if shared.log_requests.load(Ordering::Relaxed) {
        // Method, path and status only: paths never carry token values, and the query is left out.
        eprintln!("tfc-emulator: {} {} {}", parts.method, path, status);
    }
    if !delay.is_zero() {
        // The token already exists (and a singleton's predecessor is already dead) while the answer is delayed,
        // like a real server whose response is still in flight.
        tokio::time::sleep(delay).await;
    }
    reply.into_response(shared.rate_limit)
}

struct Incoming<'a> {
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    peer: Peer,
    arrived: Instant,
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        Query(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The non-pagination parameters, to carry into pagination links.
    fn extra(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, _)| !k.starts_with("page["))
            .cloned()
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Create,
    /// PATCH: `…/token-ttl-policies` and variables.
    Update,
    Delete,
}

enum Route {
    Ping,
    AccountDetails,
    AuditTrail,
    OrgToken {
        org: String,
        op: Op,
        kind: TokenKind,
    },
    TeamTokenList {
        org: String,
    },
    TeamTokenBulkDelete {
        org: String,
    },
    Team {
        team_id: String,
    },
    LegacyTeamToken {
        team_id: String,
        op: Op,
    },
    CreateTeamToken {
        team_id: String,
    },
    AgentTokens {
        pool_id: String,
        op: Op,
    },
    TokenById {
        id: String,
        op: Op,
    },
    TtlPolicies {
        org: String,
        op: Op,
    },
    Varset {
        varset_id: String,
    },
    /// `GET|POST /workspaces/:id/vars`, `GET|POST /varsets/:id/relationships/vars`.
    Vars {
        owner: Configurable,
        op: Op,
    },
    /// `GET|PATCH|DELETE /workspaces/:id/vars/:var_id`, `…/varsets/:id/relationships/vars/:var_id`.
    Var {
        owner: Configurable,
        var_id: String,
        op: Op,
    },
}

/// The workspace or variable set a variables path names.
struct Configurable {
    kind: OwnerKind,
    id: String,
}

impl Configurable {
    fn new(kind: OwnerKind, id: &str) -> Configurable {
        Configurable {
            kind,
            id: id.to_owned(),
        }
    }
}

fn route(method: &Method, path: &str, query: &Query) -> Option<Route> {
    let rest = path.strip_prefix("/api/v2/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<String> = rest.split('/').map(|s| percent_decode(s, false)).collect();
    if segments.iter().any(String::is_empty) {
        return None;
    }
    let op = match *method {
        Method::GET => Op::Read,
        Method::POST => Op::Create,
        Method::DELETE => Op::Delete,
        Method::PATCH => Op::Update,
        _ => return None,
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match (op, segs.as_slice()) {
        (Op::Read, ["ping"]) => Route::Ping,
        (Op::Read, ["account", "details"]) => Route::AccountDetails,
        (Op::Read, ["organization", "audit-trail"]) => Route::AuditTrail,
        (
            op @ (Op::Read | Op::Create | Op::Delete),
            ["organizations", org, "authentication-token"],
        ) => {
            // `?token=audit-trails` selects the audit-trails token; the spec's enum has no other value (A.2).
            let kind = match query.get("token") {
                None => TokenKind::Organization,
                Some("audit-trails") => TokenKind::AuditTrails,
                Some(_) => return None,
            };
            Route::OrgToken {
                org: (*org).to_owned(),
                op,
                kind,
            }
        }
        (Op::Read, ["organizations", org, "team-tokens"]) => Route::TeamTokenList {
            org: (*org).to_owned(),
        },
        (Op::Delete, ["organizations", org, "team-tokens"]) => Route::TeamTokenBulkDelete {
            org: (*org).to_owned(),
        },
        (Op::Read, ["teams", team_id]) => Route::Team {
            team_id: (*team_id).to_owned(),
        },
        (op @ (Op::Read | Op::Create | Op::Delete), ["teams", team_id, "authentication-token"]) => {
            Route::LegacyTeamToken {
                team_id: (*team_id).to_owned(),
                op,
            }
        }
        // There is no per-team list (`GET /teams/:id/authentication-tokens`, A.3), so only POST routes here.
        (Op::Create, ["teams", team_id, "authentication-tokens"]) => Route::CreateTeamToken {
            team_id: (*team_id).to_owned(),
        },
        (Op::Read | Op::Create, ["agent-pools", pool_id, "authentication-tokens"]) => {
            Route::AgentTokens {
                pool_id: (*pool_id).to_owned(),
                op,
            }
        }
        (Op::Read | Op::Delete, ["authentication-tokens", id]) => Route::TokenById {
            id: (*id).to_owned(),
            op,
        },
        // "List Token TTL Policies" / "Create or Update Token TTL Policies" (go-tfe HEAD `v2/openapi/spec.json`
        // `listTokenTtlPolicies`, `upsertTokenTtlPolicies`). go-tfe v1 once sent the update as PUT with a plain
        // `{"token_ttl_policies":[…]}` body (commit aa703cc9); the spec and the current go-tfe send PATCH, so PUT
        // is 404 here like every other unknown method.
        (Op::Read | Op::Update, ["organizations", org, "token-ttl-policies"]) => {
            Route::TtlPolicies {
                org: (*org).to_owned(),
                op,
            }
        }
        // Workspace variables (TFC docs `workspace-variables.mdx`). There is no documented "show variable"; the
        // GET of one variable is go-tfe's `Variables.Read` (`variable.go`).
        (Op::Read | Op::Create, ["workspaces", ws, "vars"]) => Route::Vars {
            owner: Configurable::new(OwnerKind::Workspace, ws),
            op,
        },
        (Op::Read | Op::Update | Op::Delete, ["workspaces", ws, "vars", var_id]) => Route::Var {
            owner: Configurable::new(OwnerKind::Workspace, ws),
            var_id: (*var_id).to_owned(),
            op,
        },
        // Variable sets (TFC docs `variable-sets.mdx`): only "Show Variable Set" and the variable relationship.
        (Op::Read, ["varsets", varset_id]) => Route::Varset {
            varset_id: (*varset_id).to_owned(),
        },
        (Op::Read | Op::Create, ["varsets", varset_id, "relationships", "vars"]) => Route::Vars {
            owner: Configurable::new(OwnerKind::Varset, varset_id),
            op,
        },
        (
            op @ (Op::Read | Op::Update | Op::Delete),
            ["varsets", varset_id, "relationships", "vars", var_id],
        ) => Route::Var {
            owner: Configurable::new(OwnerKind::Varset, varset_id),
            var_id: (*var_id).to_owned(),
            op,
        },
        _ => return None,
    };
    Some(route)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The exact media type; parameters such as `charset` are tolerated.
fn is_jsonapi(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(JSONAPI))
}

impl Shared {
    /// Runs the pipeline under the state lock. Returns the reply, the rate-limit principal and the caller's
    /// token id.
    fn process(&self, req: &Incoming<'_>, body: Option<&[u8]>) -> (Reply, String, Option<String>) {
        let now = model::now();
        let mut st = self.lock();
        let caller = bearer(req.headers)
            .and_then(|value| st.lookup_value(value))
            .filter(|&i| st.usable(i, now) && st.tokens[i].kind != TokenKind::Agent);
        // "Requests are per user, not per token … Unauthenticated requests are associated with the requesting
        // IP address." (A.0 Rate limits). Org and team tokens count against their synthetic service user.
        let principal = caller
            .and_then(|i| st.tokens[i].user_id.clone())
            .unwrap_or_else(|| format!("ip:{}", req.peer.0.ip()));
        let token_id = caller.map(|i| st.tokens[i].id.clone());

        if let Some(until) = st.throttle_until {
            if req.arrived < until {
                return (
                    Reply::rate_limited(until - req.arrived),
                    principal,
                    token_id,
                );
            }
            st.throttle_until = None;
        }
        if st.fail_remaining > 0 {
            st.fail_remaining -= 1;
            let status =
                StatusCode::from_u16(st.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reply = if status == StatusCode::TOO_MANY_REQUESTS {
                Reply::rate_limited(Duration::from_secs(1))
            } else {
                let title = status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase();
                Reply::error(status, &title, None)
            };
            return (reply, principal, token_id);
        }
        if let Some(limit) = self.rate_limit {
            if let Err(reset) = st.rate_check(&principal, limit, req.arrived) {
                return (Reply::rate_limited(reset), principal, token_id);
            }
        }
        if matches!(*req.method, Method::POST | Method::PATCH | Method::DELETE)
            && !is_jsonapi(req.headers)
        {
            let detail = "Content-Type must be application/vnd.api+json";
            return (
                Reply::error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported media type",
                    Some(detail),
                ),
                principal,
                token_id,
            );
        }
        let query = Query::parse(req.query);
        let Some(route) = route(req.method, req.path, &query) else {
            return (Reply::not_found(), principal, token_id);
        };
        if let Route::Ping = route {
            // Not a token check: go-tfe ignores its status and reads only headers (A.0), so it needs no token.
            return (
                Reply {
                    ping: true,
                    ..Reply::no_content()
                },
                principal,
                token_id,
            );
        }
        let Some(caller) = caller else {
            return (Reply::unauthorized(), principal, token_id);
        };
        st.tokens[caller].last_used_at = Some(now);
        let mut ctx = Ctx {
            st: &mut st,
            caller,
            now,
            query: &query,
            base_url: &self.base_url,
        };
        let reply = ctx.dispatch(route, body.unwrap_or_default());
        (reply, principal, token_id)
    }
}

struct Ctx<'a> {
    st: &'a mut State,
    caller: usize,
    now: DateTime<Utc>,
    query: &'a Query,
    base_url: &'a str,
}

/// Attributes of a create body. `description`: `None` missing, `Some(None)` null.
struct CreateAttrs {
    description: Option<Option<String>>,
    expired_at: Option<DateTime<Utc>>,
}

/// Parses `{"data":{"type":"authentication-tokens","attributes":{…}}}`; create bodies are required (A.0:
/// `requestBody.required: true`). `data.type` may be `authentication-tokens` (spec) or `authentication-token`
/// (docs for org, legacy team and audit-trail bodies); anything else is refused as a malformed body (422).
fn parse_create(
    body: &[u8],
    types: &[&str],
    with_expiry: bool,
    now: DateTime<Utc>,
) -> Result<CreateAttrs, Reply> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| Reply::unprocessable("request body must be a JSON:API document"))?;
    let data = doc
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Reply::unprocessable("data is required"))?;
    match data.get("type").and_then(Value::as_str) {
        Some(t) if types.contains(&t) => {}
        _ => {
            return Err(Reply::unprocessable(&format!(
                "data.type must be {:?}",
                types[0]
            )))
        }
    }
    let empty = serde_json::Map::new();
    let attributes = match data.get("attributes") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => return Err(Reply::unprocessable("data.attributes must be an object")),
    };
    let description = match attributes.get("description") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => return Err(Reply::unprocessable("Description must be a string")),
    };
    let expired_at = match attributes.get("expired-at") {
        _ if !with_expiry => None,
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            // RFC 3339, as the tfe provider parses it (A.0 Expiry).
            let at = DateTime::parse_from_rfc3339(s)
                .map_err(|_| Reply::unprocessable("Expired at is not a valid ISO 8601 date-time"))?
                .with_timezone(&Utc);
            if at <= now {
                return Err(Reply::unprocessable("Expired at must be in the future"));
            }
            Some(at)
        }
        Some(_) => return Err(Reply::unprocessable("Expired at must be a string")),
    };
    Ok(CreateAttrs {
        description,
        expired_at,
    })
}

/// A limit for messages: whole days as `N days`, else whole hours, else milliseconds.
fn describe_ttl(ms: i64) -> String {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if ms % DAY == 0 {
        plural(ms / DAY, "day")
    } else if ms % HOUR == 0 {
        plural(ms / HOUR, "hour")
    } else {
        plural(ms, "millisecond")
    }
}

/// Parses the `upsertTokenTtlPolicies` body (spec `token-ttl-policies-envelope`):
/// `{"data":{"type":"organization-token-ttl-policies","attributes":{"token-ttl-policies":[{"token-type","max-ttl-ms"}…]}}}`.
/// The spec documents 422 "Unable to create token TTL policy due to validation errors"; the emulator answers it for
/// a malformed document, a missing or empty list (go-tfe refuses an empty list client-side, `ErrRequiredPolicies`),
/// a `token-type` outside the enum, and a `max-ttl-ms` that is not a positive integer. All or nothing.
fn parse_ttl_policies(body: &[u8]) -> Result<Vec<(TtlTokenType, i64)>, Reply> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| Reply::unprocessable("request body must be a JSON:API document"))?;
    let data = doc
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Reply::unprocessable("data is required"))?;
    if data.get("type").and_then(Value::as_str) != Some("organization-token-ttl-policies") {
        return Err(Reply::unprocessable(
            "data.type must be \"organization-token-ttl-policies\"",
        ));
    }
    let items = data
        .get("attributes")
        .and_then(|a| a.get("token-ttl-policies"))
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty())
        .ok_or_else(|| Reply::unprocessable("token-ttl-policies must be a non-empty array"))?;
    items
        .iter()
        .map(|item| {
            let token_type = item
                .get("token-type")
                .and_then(Value::as_str)
                .and_then(TtlTokenType::parse)
                .ok_or_else(|| {
                    Reply::unprocessable(
                        "token-type must be one of organization, team, user, audit_trails, metrics",
                    )
                })?;
            // `as_i64` is None for floats (`1.5`, `1e3`) and strings: only a JSON integer is an int64.
            let ms = item
                .get("max-ttl-ms")
                .and_then(Value::as_i64)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| Reply::unprocessable("max-ttl-ms must be a positive integer"))?;
            Ok((token_type, ms))
        })
        .collect()
}

/// The attributes of a `vars` create or update document; `None` means absent.
#[derive(Default)]
struct VarAttrs {
    key: Option<String>,
    /// `null` reads as `""`, the documented default.
    value: Option<String>,
    /// `Some(None)`: explicitly null.
    description: Option<Option<String>>,
    category: Option<String>,
    hcl: Option<bool>,
    sensitive: Option<bool>,
}

const VAR_CATEGORIES: [&str; 2] = ["terraform", "env"];

/// Parses `{"data":{"type":"vars","id"?,"attributes":{key,value,description,category,hcl,sensitive}}}` (TFC docs
/// `workspace-variables.mdx` "Create a Variable", "Update Variables"; the same body for variable-set variables).
/// Returns `data.id` when given. Members of the wrong JSON type are refused with a pointer to them; other
/// attributes are ignored.
fn parse_var(body: &[u8]) -> Result<(Option<String>, VarAttrs), Reply> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| Reply::unprocessable("request body must be a JSON:API document"))?;
    let data = doc
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Reply::invalid_attribute("/data", "data is required"))?;
    if data.get("type").and_then(Value::as_str) != Some("vars") {
        return Err(Reply::invalid_attribute(
            "/data/type",
            "data.type must be \"vars\"",
        ));
    }
    let id = match data.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(Reply::invalid_attribute(
                "/data/id",
                "data.id must be a string",
            ))
        }
    };
    let empty = serde_json::Map::new();
    let attributes = match data.get("attributes") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => {
            return Err(Reply::invalid_attribute(
                "/data/attributes",
                "data.attributes must be an object",
            ))
        }
    };
    let string =
        |name: &str, label: &str, null_ok: bool| -> Result<Option<Option<String>>, Reply> {
            match attributes.get(name) {
                None => Ok(None),
                Some(Value::Null) if null_ok => Ok(Some(None)),
                Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
                Some(_) => Err(Reply::invalid_attribute(
                    &format!("/data/attributes/{name}"),
                    &format!("{label} must be a string"),
                )),
            }
        };
    let boolean = |name: &str, label: &str| -> Result<Option<bool>, Reply> {
        match attributes.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Reply::invalid_attribute(
                &format!("/data/attributes/{name}"),
                &format!("{label} must be true or false"),
            )),
        }
    };
    let attrs = VarAttrs {
        key: string("key", "Key", false)?.flatten(),
        value: string("value", "Value", true)?.map(Option::unwrap_or_default),
        description: string("description", "Description", true)?,
        category: string("category", "Category", false)?.flatten(),
        hcl: boolean("hcl", "HCL")?,
        sensitive: boolean("sensitive", "Sensitive")?,
    };
    Ok((id, attrs))
}

/// "Key can't be blank" unless the key has a non-blank character.
fn check_key(key: &str) -> Result<(), Reply> {
    if key.trim().is_empty() {
        return Err(Reply::invalid_attribute(
            "/data/attributes/key",
            "Key can't be blank",
        ));
    }
    Ok(())
}

/// "Valid values are `\"terraform\"` or `\"env\"`" (TFC docs `workspace-variables.mdx`).
fn check_category(category: &str) -> Result<(), Reply> {
    if !VAR_CATEGORIES.contains(&category) {
        return Err(Reply::invalid_attribute(
            "/data/attributes/category",
            "Category is not included in the list",
        ));
    }
    Ok(())
}

const TOKEN_TYPES: &[&str] = &["authentication-tokens", "authentication-token"];
/// go-tfe v1 sends `agent-tokens` as the agent-token create type (A.0).
const AGENT_TOKEN_TYPES: &[&str] = &[
    "authentication-tokens",
    "authentication-token",
    "agent-tokens",
];

impl Ctx<'_> {
    fn caller(&self) -> &Token {
        &self.st.tokens[self.caller]
    }

    fn dispatch(&mut self, route: Route, body: &[u8]) -> Reply {
        match route {
            Route::Ping => Reply {
                ping: true,
                ..Reply::no_content()
            },
            Route::AccountDetails => self.account_details(),
            Route::AuditTrail => self.audit_trail(),
            Route::OrgToken { org, op, kind } => self.org_token(&org, op, kind, body),
            Route::TeamTokenList { org } => self.team_token_list(&org),
            Route::TeamTokenBulkDelete { org } => self.team_token_bulk_delete(&org, body),
            Route::Team { team_id } => self.team(&team_id),
            Route::LegacyTeamToken { team_id, op } => self.legacy_team_token(&team_id, op, body),
            Route::CreateTeamToken { team_id } => self.create_team_token(&team_id, body),
            Route::AgentTokens { pool_id, op } => self.agent_tokens(&pool_id, op, body),
            Route::TokenById { id, op } => self.token_by_id(&id, op),
            Route::TtlPolicies { org, op } => self.ttl_policies(&org, op, body),
            Route::Varset { varset_id } => self.varset(&varset_id),
            Route::Vars { owner, op } => self.vars(&owner, op, body),
            Route::Var { owner, var_id, op } => self.var(&owner, &var_id, op, body),
        }
    }

    fn account_details(&self) -> Reply {
        let caller = self.caller();
        match caller
            .user_id
            .as_deref()
            .and_then(|id| self.st.users.get(id))
        {
            Some(user) => Reply::ok(jsonapi::account_details(user, &caller.id)),
            None => Reply::unauthorized(),
        }
    }

    /// "This endpoint requires an organization token or an audit trail token; user tokens and team tokens are
    /// not accepted" (A.2). An empty trail in HCP Terraform's (non-JSON:API) shape.
    fn audit_trail(&self) -> Reply {
        if !matches!(
            self.caller().kind,
            TokenKind::Organization | TokenKind::AuditTrails
        ) {
            return Reply::not_found();
        }
        Reply::ok(json!({
            "data": [],
            "pagination": {"current_page": 1, "prev_page": null, "next_page": null, "total_pages": 1, "total_count": 0}
        }))
    }

    /// The `expired-at` a new token of `kind` in `org` gets, or the refusal.
    ///
    /// Omitted or null `expired-at` means two years (730.5 days), not "never" (A.0 Expiry) — while the
    /// organization's maximum-TTL policy is off: "If disabled, the TTL defaults to 2 years"
    /// (https://github.com/hashicorp/terraform-provider-tfe/pull/1996). While it is on, the default is the limit
    /// for the kind ([inference] from that sentence; no source states the enabled default).
    ///
    /// An explicit `expired-at` beyond now + the limit: "Maximum TTL policies are enforced immediately upon
    /// creation or update" (tfe provider `org_max_token_ttl_policy.html.markdown`) says no more. [inference] The
    /// API refuses such a create with 422 and a JSON:API validation error naming the limit, in the shape of its
    /// other create validations ("invalid attributes", "Validation failed: …", A.0 Errors), rather than minting a
    /// token that could never authenticate.
    fn expiry_within_policy(
        &self,
        org: &str,
        kind: TokenKind,
        requested: Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, Reply> {
        let Some(limit) = self.st.max_ttl_ms(org, kind) else {
            return Ok(requested.unwrap_or(self.now + TimeDelta::milliseconds(DEFAULT_TTL_MS)));
        };
        match requested {
            None => Ok(self.now + TimeDelta::milliseconds(limit)),
            Some(at) if (at - self.now).num_milliseconds() <= limit => Ok(at),
            Some(_) => Err(Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid attributes",
                Some(&format!(
                    "Validation failed: Expired at exceeds the organization's maximum token TTL of {}",
                    describe_ttl(limit)
                )),
            )),
        }
    }

    /// `GET|PATCH /organizations/:organization_name/token-ttl-policies` (go-tfe HEAD `v2/openapi/spec.json`).
    ///
    /// Who: the spec documents 403 "User is not part of the owners team of the organization" and 404
    /// "Organization does not exist or user does not belong to the organization" for both methods. So owners (the
    /// owners-team user token, owners-team tokens) may read and update; a token of another organization gets 404.
    /// [inference] The organization token may read — org tokens "allow access to the organization-level settings
    /// and resources" (TFC docs `api-tokens.mdx`) — but not update: the same page's access table leaves "Modify
    /// organizations" blank for organization tokens. Other tokens of the organization (non-owner teams, the
    /// audit-trails token) get the documented 403.
    fn ttl_policies(&mut self, org: &str, op: Op, body: &[u8]) -> Reply {
        let caller = self.caller();
        if !self.st.orgs.contains_key(org) || caller.org != org {
            return Reply::not_found();
        }
        let owner = self.st.is_owner(caller, org);
        let allowed = match op {
            Op::Read => owner || caller.kind == TokenKind::Organization,
            _ => owner,
        };
        if !allowed {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                Some("User is not part of the owners team of the organization"),
            );
        }
        if op == Op::Update {
            let updates = match parse_ttl_policies(body) {
                Ok(updates) => updates,
                Err(reply) => return reply,
            };
            let now = self.now;
            let o = self.st.orgs.get_mut(org).expect("checked above");
            for (token_type, ms) in updates {
                let policy = o.ttl_policy_mut(token_type);
                policy.max_ttl_ms = ms;
                policy.updated_at = now;
            }
        }
        // Every policy, updated or not: "API returns all 4 token type policies" after a partial update (go-tfe v1
        // `organization_token_ttl_policy_integration_test.go`; five here, with `metrics`).
        let data: Vec<Value> = self.st.orgs[org]
            .ttl_policies
            .iter()
            .map(jsonapi::ttl_policy)
            .collect();
        Reply::ok(json!({ "data": data }))
    }

    /// Mints a singleton or described token and answers 201 with the value, the only time it is shown.
    fn mint(
        &mut self,
        kind: TokenKind,
        target: &str,
        description: Option<String>,
        expired_at: Option<DateTime<Utc>>,
    ) -> Reply {
        let created_by = self.caller().acting_as();
        match self
            .st
            .mint(kind, target, description, expired_at, created_by, self.now)
        {
            Ok(idx) => Reply::created(
                json!({ "data": jsonapi::token_resource(&self.st.tokens[idx], true) }),
            ),
            // Duplicate description: go-tfe expects "invalid attributes\n\nValidation failed: Description has
            // already been taken" (A.0 Errors); status 422 is the reference's inference.
            Err(detail) => Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid attributes",
                Some(detail),
            ),
        }
    }

    fn show(&self, idx: Option<usize>) -> Reply {
        match idx {
            Some(i) => {
                Reply::ok(json!({ "data": jsonapi::token_resource(&self.st.tokens[i], false) }))
            }
            None => Reply::not_found(),
        }
    }

    fn revoke(&mut self, idx: Option<usize>) -> Reply {
        match idx {
            Some(i) => {
                self.st.tokens[i].ended = Some((TokenState::Revoked, self.now));
                Reply::no_content()
            }
            None => Reply::not_found(),
        }
    }

    /// A.1 / A.2: `…/organizations/:org/authentication-token[?token=audit-trails]`.
    fn org_token(&mut self, org: &str, op: Op, kind: TokenKind, body: &[u8]) -> Reply {
        if !self.st.orgs.contains_key(org) || !self.st.can_administer(self.caller(), org) {
            return Reply::not_found();
        }
        let existing = self.st.live_singleton(kind, org, None);
        match op {
            Op::Read => self.show(existing),
            Op::Delete => self.revoke(existing),
            Op::Update => Reply::not_found(),
            Op::Create => {
                let attrs = match parse_create(body, TOKEN_TYPES, true, self.now) {
                    Ok(attrs) => attrs,
                    Err(reply) => return reply,
                };
                let expired_at = match self.expiry_within_policy(org, kind, attrs.expired_at) {
                    Ok(at) => at,
                    Err(reply) => return reply,
                };
                // Replaces the previous token of this kind at once, even when that is the caller (A.1).
                self.mint(kind, org, None, Some(expired_at))
            }
        }
    }

    fn visible_team(&self, team_id: &str) -> bool {
        self.st
            .teams
            .get(team_id)
            .is_some_and(|team| self.st.can_manage_team(self.caller(), team))
    }

    fn team(&self, team_id: &str) -> Reply {
        if !self.visible_team(team_id) {
            return Reply::not_found();
        }
        let team = &self.st.teams[team_id];
        let is_owners = self
            .st
            .orgs
            .get(&team.org)
            .is_some_and(|o| o.owners_team_id == team.id);
        Reply::ok(jsonapi::team(team, is_owners))
    }

    /// A.4: the legacy, description-less team token.
    fn legacy_team_token(&mut self, team_id: &str, op: Op, body: &[u8]) -> Reply {
        if !self.visible_team(team_id) {
            return Reply::not_found();
        }
        let org = self.st.teams[team_id].org.clone();
        let existing = self
            .st
            .live_singleton(TokenKind::TeamLegacy, &org, Some(team_id));
        match op {
            Op::Read => self.show(existing),
            Op::Delete => self.revoke(existing),
            Op::Update => Reply::not_found(),
            Op::Create => {
                let attrs = match parse_create(body, TOKEN_TYPES, true, self.now) {
                    Ok(attrs) => attrs,
                    Err(reply) => return reply,
                };
                let expired_at = match self.expiry_within_policy(
                    &org,
                    TokenKind::TeamLegacy,
                    attrs.expired_at,
                ) {
                    Ok(at) => at,
                    Err(reply) => return reply,
                };
                self.mint(TokenKind::TeamLegacy, team_id, None, Some(expired_at))
            }
        }
    }

    /// A.3: described team tokens; several coexist, descriptions unique per team.
    fn create_team_token(&mut self, team_id: &str, body: &[u8]) -> Reply {
        // An old TFE without the multi-token API answers 404 here (A.3, web-unified-docs PR #1094).
        if !self.st.multi_team_tokens || !self.visible_team(team_id) {
            return Reply::not_found();
        }
        let attrs = match parse_create(body, TOKEN_TYPES, true, self.now) {
            Ok(attrs) => attrs,
            Err(reply) => return reply,
        };
        // `""` is a valid description, distinct from null, which would mean a legacy token (A.3).
        let Some(Some(description)) = attrs.description else {
            return Reply::unprocessable("Validation failed: Description can't be blank");
        };
        let org = self.st.teams[team_id].org.clone();
        let expired_at = match self.expiry_within_policy(&org, TokenKind::Team, attrs.expired_at) {
            Ok(at) => at,
            Err(reply) => return reply,
        };
        self.mint(
            TokenKind::Team,
            team_id,
            Some(description),
            Some(expired_at),
        )
    }

    /// A.5: agent tokens. `expired-at` is not an agent-token attribute and is ignored.
    fn agent_tokens(&mut self, pool_id: &str, op: Op, body: &[u8]) -> Reply {
        let allowed = self
            .st
            .pools
            .get(pool_id)
            .is_some_and(|pool| self.st.can_administer(self.caller(), &pool.org));
        if !allowed {
            return Reply::not_found();
        }
        if op == Op::Create {
            let attrs = match parse_create(body, AGENT_TOKEN_TYPES, false, self.now) {
                Ok(attrs) => attrs,
                Err(reply) => return reply,
            };
            let description = match attrs.description {
                Some(Some(d)) if !d.trim().is_empty() => d,
                _ => return Reply::unprocessable("Validation failed: Description can't be blank"),
            };
            return self.mint(TokenKind::Agent, pool_id, Some(description), None);
        }
        // `sort=created-at|-created-at`; "400 invalid sort" (TFC docs `agent-tokens.mdx`).
        let descending = match self.query.get("sort") {
            None | Some("created-at") => false,
            Some("-created-at") => true,
            Some(_) => return Reply::bad_request("invalid sort parameter"),
        };
        let mut tokens: Vec<&Token> = self
            .st
            .tokens
            .iter()
            .filter(|t| {
                t.is_live() && t.kind == TokenKind::Agent && t.pool_id.as_deref() == Some(pool_id)
            })
            .collect();
        if descending {
            tokens.reverse();
        }
        let items = tokens
            .into_iter()
            .map(|t| jsonapi::token_resource(t, false))
            .collect();
        let url = format!(
            "{}/api/v2/agent-pools/{pool_id}/authentication-tokens",
            self.base_url
        );
        Reply::ok(jsonapi::paginated(
            items,
            self.page(),
            &url,
            &self.query.extra(),
        ))
    }

    fn page(&self) -> Page {
        Page::from_query(self.query.get("page[number]"), self.query.get("page[size]"))
    }

    /// A.3 list: `GET /organizations/:org/team-tokens` with `q` (team name), `filter[status]` (also accepted as
    /// `filter[expiry_status]`), `sort`, and pagination. Legacy and described tokens alike, values never shown.
    fn team_token_list(&self, org: &str) -> Reply {
        if !self.st.orgs.contains_key(org) {
            return Reply::not_found();
        }
        let caller = self.caller();
        // Administrators see every team; a team token sees only its own team's tokens.
        let only_team = if self.st.can_administer(caller, org) {
            None
        } else if caller.kind.is_team() && caller.org == org {
            caller.team_id.clone()
        } else {
            return Reply::not_found();
        };
        let needle = self.query.get("q").map(str::to_lowercase);
        let statuses = match self
            .query
            .get("filter[status]")
            .or_else(|| self.query.get("filter[expiry_status]"))
        {
            None => None,
            Some(list) => {
                let statuses: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                const KNOWN: [&str; 5] = [
                    "active",
                    "expiring_in_7_days",
                    "expiring_in_30_days",
                    "expired",
                    "no_expiration",
                ];
                if let Some(bad) = statuses.iter().find(|s| !KNOWN.contains(s)) {
                    return Reply::bad_request(&format!("invalid status filter {bad:?}"));
                }
                Some(statuses)
            }
        };
        let now = self.now;
        let matches_status = |t: &Token| {
            statuses.as_ref().is_none_or(|statuses| {
                statuses.iter().any(|s| match *s {
                    "active" => t.expired_at.is_none_or(|at| at > now),
                    "expiring_in_7_days" => t
                        .expired_at
                        .is_some_and(|at| at > now && at <= now + TimeDelta::days(7)),
                    "expiring_in_30_days" => t
                        .expired_at
                        .is_some_and(|at| at > now && at <= now + TimeDelta::days(30)),
                    "expired" => t.expired_at.is_some_and(|at| at <= now),
                    _ => t.expired_at.is_none(),
                })
            })
        };
        let team_name = |t: &Token| {
            t.team_id
                .as_deref()
                .and_then(|id| self.st.teams.get(id))
                .map(|team| team.name.clone())
        };
        let mut tokens: Vec<&Token> = self
            .st
            .tokens
            .iter()
            .filter(|t| t.is_live() && t.kind.is_team() && t.org == org)
            .filter(|t| only_team.is_none() || t.team_id == only_team)
            .filter(|t| {
                needle.as_deref().is_none_or(|n| {
                    team_name(t).is_some_and(|name| name.to_lowercase().contains(n))
                })
            })
            .filter(|t| matches_status(t))
            .collect();
        if let Some(sort) = self.query.get("sort") {
            let (descending, key) = match sort.strip_prefix('-') {
                Some(key) => (true, key),
                None => (false, sort),
            };
            match key {
                "team-name" => tokens.sort_by_key(|t| team_name(t)),
                "created-by" => tokens.sort_by(|a, b| a.created_by.id.cmp(&b.created_by.id)),
                "created-at" => tokens.sort_by_key(|t| t.created_at),
                "expired-at" => tokens.sort_by_key(|t| t.expired_at),
                "last-used-at" => tokens.sort_by_key(|t| t.last_used_at),
                _ => return Reply::bad_request("invalid sort parameter"),
            }
            if descending {
                tokens.reverse();
            }
        }
        let items = tokens
            .into_iter()
            .map(|t| jsonapi::token_resource(t, false))
            .collect();
        let url = format!("{}/api/v2/organizations/{org}/team-tokens", self.base_url);
        Reply::ok(jsonapi::paginated(
            items,
            self.page(),
            &url,
            &self.query.extra(),
        ))
    }

    /// `DELETE /organizations/:org/team-tokens` with `{"data":[{"type":"authentication-tokens","id":…}]}` →
    /// 204; 403 when not authorized, 404 for an unknown organization (TFC docs `team-tokens.mdx`). All or nothing.
    fn team_token_bulk_delete(&mut self, org: &str, body: &[u8]) -> Reply {
        if !self.st.orgs.contains_key(org) {
            return Reply::not_found();
        }
        if !self.st.can_administer(self.caller(), org) {
            return Reply::error(StatusCode::FORBIDDEN, "forbidden", None);
        }
        let doc: Option<Value> = serde_json::from_slice(body).ok();
        let Some(items) = doc
            .as_ref()
            .and_then(|d| d.get("data"))
            .and_then(Value::as_array)
        else {
            return Reply::unprocessable("data must be an array of authentication-tokens");
        };
        let mut targets = Vec::with_capacity(items.len());
        for item in items {
            let id = item.get("id").and_then(Value::as_str);
            let type_ok = item.get("type").and_then(Value::as_str) == Some("authentication-tokens");
            let (Some(id), true) = (id, type_ok) else {
                return Reply::unprocessable(
                    "each item needs type \"authentication-tokens\" and an id",
                );
            };
            match self.st.live_by_id(id) {
                Some(i) if self.st.tokens[i].kind.is_team() && self.st.tokens[i].org == org => {
                    targets.push(i)
                }
                _ => return Reply::not_found(),
            }
        }
        for i in targets {
            self.st.tokens[i].ended = Some((TokenState::Revoked, self.now));
        }
        Reply::no_content()
    }

    /// `GET|DELETE /authentication-tokens/:id`: any kind; "ID - Can be a token ID or a team ID, depending on the
    /// token type" (spec `getAuthenticationToken`, A.1), a team ID meaning that team's legacy token.
    fn token_by_id(&mut self, id: &str, op: Op) -> Reply {
        let idx = if id.starts_with("team-") {
            self.st.teams.get(id).and_then(|team| {
                self.st
                    .live_singleton(TokenKind::TeamLegacy, &team.org, Some(id))
            })
        } else {
            self.st.live_by_id(id)
        };
        let idx = idx.filter(|&i| self.st.can_manage_token(self.caller(), &self.st.tokens[i]));
        match op {
            Op::Delete => self.revoke(idx),
            _ => self.show(idx),
        }
    }

    // --- Workspace and variable-set variables (TFC docs `workspace-variables.mdx`, `variable-sets.mdx`). ---

    /// "Viewing variables requires permission to read variables for their workspace. Creating, updating, and
    /// deleting variables requires permission to read and write variables for their workspace." [inference] The
    /// emulator models no workspace or variable-set permissions: the organization token, every team token of the
    /// organization and the owner's user token may read and write; audit-trails tokens may not ("can only access
    /// audit trail"), nor any token of another organization. Everything refused, like everything unknown, is 404
    /// ("Variable set not found, or user unauthorized to perform action", `variable-sets.mdx`).
    fn may_configure(&self, owner: &Configurable) -> bool {
        let caller = self.caller();
        let kind_ok = matches!(
            caller.kind,
            TokenKind::Organization | TokenKind::Team | TokenKind::TeamLegacy | TokenKind::User
        );
        kind_ok
            && self
                .st
                .owner_org(owner.kind, &owner.id)
                .is_some_and(|org| org == caller.org)
    }

    /// The `configurable` relationship's `related` link.
    fn owner_link(&self, var: &Variable) -> String {
        match var.owner_kind {
            OwnerKind::Workspace => self.st.workspaces.get(&var.owner_id).map_or_else(
                || format!("/api/v2/workspaces/{}", var.owner_id),
                |ws| format!("/api/v2/organizations/{}/workspaces/{}", ws.org, ws.name),
            ),
            OwnerKind::Varset => format!("/api/v2/varsets/{}", var.owner_id),
        }
    }

    fn variable_doc(&self, idx: usize) -> Value {
        let var = &self.st.variables[idx];
        json!({ "data": jsonapi::variable(var, &self.owner_link(var)) })
    }

    /// "Variable Sets" / "Show Variable Set": `GET /varsets/:varset_id`.
    fn varset(&self, varset_id: &str) -> Reply {
        let owner = Configurable::new(OwnerKind::Varset, varset_id);
        if !self.may_configure(&owner) {
            return Reply::not_found();
        }
        let var_ids: Vec<&str> = self
            .st
            .variables
            .iter()
            .filter(|v| v.owner_id == varset_id)
            .map(|v| v.id.as_str())
            .collect();
        Reply::ok(jsonapi::varset(&self.st.varsets[varset_id], &var_ids))
    }

    /// Another variable of the same owner with this key and category: "Key has already been taken".
    fn key_taken(&self, owner_id: &str, key: &str, category: &str, except: Option<&str>) -> bool {
        self.st.variables.iter().any(|v| {
            v.owner_id == owner_id
                && v.key == key
                && v.category == category
                && Some(v.id.as_str()) != except
        })
    }

    /// List (`{"data":[…]}`, in creation order, unpaginated like the docs samples: go-tfe's own tests say "paging
    /// not supported yet in API") or create (201).
    fn vars(&mut self, owner: &Configurable, op: Op, body: &[u8]) -> Reply {
        if !self.may_configure(owner) {
            return Reply::not_found();
        }
        if op != Op::Create {
            let data: Vec<Value> = self
                .st
                .variables
                .iter()
                .filter(|v| v.owner_id == owner.id)
                .map(|v| jsonapi::variable(v, &self.owner_link(v)))
                .collect();
            return Reply::ok(json!({ "data": data }));
        }
        let attrs = match parse_var(body) {
            Ok((_, attrs)) => attrs,
            Err(reply) => return reply,
        };
        let Some(key) = attrs.key else {
            return Reply::invalid_attribute("/data/attributes/key", "Key can't be blank");
        };
        // Category has no default in the docs' table, so it is required (go-tfe `ErrRequiredCategory`).
        let Some(category) = attrs.category else {
            return Reply::invalid_attribute(
                "/data/attributes/category",
                "Category is not included in the list",
            );
        };
        if let Err(reply) = check_key(&key).and_then(|()| check_category(&category)) {
            return reply;
        }
        if self.key_taken(&owner.id, &key, &category, None) {
            return Reply::invalid_attribute("/data/attributes/key", "Key has already been taken");
        }
        self.st.variables.push(Variable {
            id: model::new_id("var"),
            owner_kind: owner.kind,
            owner_id: owner.id.clone(),
            key,
            value: attrs.value.unwrap_or_default(),
            description: attrs.description.flatten(),
            category,
            hcl: attrs.hcl.unwrap_or(false),
            sensitive: attrs.sensitive.unwrap_or(false),
            created_at: self.now,
            version_id: String::new(),
        });
        let idx = self.st.variables.len() - 1;
        self.st.touch_variable(idx, self.now);
        // Not `Reply::created`: the create delay is for tokens.
        Reply::json(StatusCode::CREATED, self.variable_doc(idx))
    }

    /// Show (go-tfe `Variables.Read`), update (only the attributes present; a new `version-id` every time, even
    /// for an empty update: go-tfe `TestVariablesUpdate` "without any changes") or delete (204).
    fn var(&mut self, owner: &Configurable, var_id: &str, op: Op, body: &[u8]) -> Reply {
        if !self.may_configure(owner) {
            return Reply::not_found();
        }
        let Some(idx) = self
            .st
            .variables
            .iter()
            .position(|v| v.id == var_id && v.owner_id == owner.id)
        else {
            return Reply::not_found();
        };
        match op {
            Op::Read => Reply::ok(self.variable_doc(idx)),
            Op::Delete => {
                let now = self.now;
                if let Some(vs) = self.st.varsets.get_mut(&owner.id) {
                    vs.updated_at = now;
                }
                self.st.variables.remove(idx);
                Reply::no_content()
            }
            Op::Create => Reply::not_found(),
            Op::Update => {
                let (id, attrs) = match parse_var(body) {
                    Ok(parsed) => parsed,
                    Err(reply) => return reply,
                };
                // [inference] `data.id` is optional (go-tfe's update options carry none); a different id is a
                // client bug.
                if id.is_some_and(|id| id != var_id) {
                    return Reply::invalid_attribute(
                        "/data/id",
                        "data.id does not match the variable in the URL",
                    );
                }
                let var = &self.st.variables[idx];
                // The API's own words (terraform-provider-tfe issue #317).
                if var.sensitive && attrs.sensitive == Some(false) {
                    return Reply::invalid_attribute(
                        "/data/attributes/sensitive",
                        "Sensitive cannot be changed from true to false on saved records. To make this variable \
                         readable, destroy this record and create a new one with the same key value.",
                    );
                }
                // terraform-provider-tfe issue #170; the provider replaces a sensitive variable whose key changes.
                if var.sensitive && attrs.key.as_ref().is_some_and(|key| *key != var.key) {
                    return Reply::invalid_attribute(
                        "/data/attributes/key",
                        "Key cannot be updated for a sensitive variable",
                    );
                }
                let key = attrs.key.unwrap_or_else(|| var.key.clone());
                let category = attrs.category.unwrap_or_else(|| var.category.clone());
                if let Err(reply) = check_key(&key).and_then(|()| check_category(&category)) {
                    return reply;
                }
                if self.key_taken(&owner.id, &key, &category, Some(var_id)) {
                    return Reply::invalid_attribute(
                        "/data/attributes/key",
                        "Key has already been taken",
                    );
                }
                let var = &mut self.st.variables[idx];
                var.key = key;
                var.category = category;
                if let Some(value) = attrs.value {
                    var.value = value;
                }
                if let Some(description) = attrs.description {
                    var.description = description;
                }
                if let Some(hcl) = attrs.hcl {
                    var.hcl = hcl;
                }
                if let Some(sensitive) = attrs.sensitive {
                    var.sensitive = sensitive;
                }
                self.st.touch_variable(idx, self.now);
                Reply::ok(self.variable_doc(idx))
            }
        }
    }
}
