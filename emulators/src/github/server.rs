//! The HTTP side: one handler runs every request through the same pipeline.
//!
//! Pipeline, in order (each step answers and stops on failure):
//! 1. `User-Agent` missing or empty → 403, GitHub's plain-text edge refusal (not counted against the rate limit);
//! 2. the secondary-limit knob ([`crate::github::GithubHandle::secondary_limit`]) → 403 with `retry-after`;
//! 3. the primary rate limit, per token (unknown or missing credentials share one anonymous bucket) → 403 with
//!    `x-ratelimit-remaining: 0`; otherwise the request is counted;
//! 4. `X-GitHub-Api-Version`, when sent, must be `2022-11-28` → 400;
//! 5. routing: an unknown path or method → 404 `Not Found` whatever the credential;
//! 6. authentication: no `Authorization` → 401 `Requires authentication`; a scheme other than `Bearer`/`token`
//!    or an unknown token → 401 `Bad credentials`;
//! 7. access: a repository, environment or organization that does not exist or that the token may not reach →
//!    404 `Not Found`;
//! 8. the secret name (422), then for `PUT` the body (400/422), the `key_id` (422) and the sealed box (422).
//!
//! Every response carries `x-ratelimit-*` (the caller's bucket), `x-github-request-id` and
//! `x-github-api-version-selected`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::store::{self, Scope, Secret, Store, MAX_SECRET_BYTES};
use super::{Config, RequestRecord};

const MAX_BODY: usize = 1 << 20;
const API_VERSION: &str = "2022-11-28";
const DOCS_ROOT: &str = "https://docs.github.com/rest";
const RATE_LIMIT_DOCS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const SECONDARY_DOCS: &str = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";
/// GitHub's default primary limits, reported when no limit is configured.
const DEFAULT_TOKEN_LIMIT: u32 = 5000;
const DEFAULT_ANONYMOUS_LIMIT: u32 = 60;
/// The edge's answer to a request without `User-Agent` (plain text, not JSON).
pub const NO_USER_AGENT: &str = "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n";
/// Observed (terraform-provider-github #2315, rollthecloudinc/hedge #256).
pub const IMPROPERLY_ENCRYPTED: &str =
    "Bad request - validation failed due to an improperly encrypted secret";
/// Inferred: GitHub documents no body for a `key_id` that is not the scope's current key.
pub const STALE_KEY_ID: &str =
    "Bad request - validation failed: key_id does not match the current public key";

/// Everything one emulator owns, behind one lock that is never held across an await.
pub struct Emu {
    pub store: Store,
    pub log: Vec<RequestRecord>,
    /// Remaining secondary-limit refusals and their `retry-after`.
    pub secondary: Option<(u32, u64)>,
    primary_limit: Option<u32>,
    primary_window: Duration,
    /// Per bucket ("user:<id>" or "anonymous"): window start and requests counted in it.
    windows: HashMap<String, (DateTime<Utc>, u32)>,
}

pub struct Shared {
    state: Mutex<Emu>,
    pub log_requests: AtomicBool,
    /// `http://127.0.0.1:PORT`, for `selected_repositories_url`.
    pub base_url: String,
}

impl Shared {
    pub fn new(cfg: &Config, base_url: String) -> Self {
        Shared {
            state: Mutex::new(Emu {
                store: Store::default(),
                log: Vec::new(),
                secondary: None,
                primary_limit: cfg.primary_limit,
                primary_window: if cfg.primary_window.is_zero() {
                    Duration::from_secs(3600)
                } else {
                    cfg.primary_window
                },
                windows: HashMap::new(),
            }),
            log_requests: AtomicBool::new(false),
            base_url,
        }
    }

    /// A panicking test thread must not wedge the emulator for every other test: ignore poisoning.
    pub fn lock(&self) -> MutexGuard<'_, Emu> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An error answer: `{"message", "documentation_url", "status"}` (GitHub's error shape, `status` as a string).
struct ApiError {
    status: u16,
    message: String,
    doc: &'static str,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>, doc: &'static str) -> Self {
        ApiError {
            status,
            message: message.into(),
            doc,
            retry_after: None,
        }
    }

    fn not_found(doc: &'static str) -> Self {
        ApiError::new(404, "Not Found", doc)
    }

    fn invalid(message: impl Into<String>, doc: &'static str) -> Self {
        ApiError::new(422, message, doc)
    }

    fn into_response(self) -> Response {
        let body = json!({
            "message": self.message,
            "documentation_url": self.doc,
            "status": self.status.to_string(),
        });
        let mut resp = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

/// Which operation a request names, for routing and for `documentation_url`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    PublicKey,
    Get,
    Put,
    Delete,
}

struct Route {
    scope: Scope,
    op: Op,
    /// The secret name as sent (for `Get`/`Put`/`Delete`).
    name: Option<String>,
}

impl Route {
    fn doc(&self) -> &'static str {
        match (&self.scope, self.op) {
            (Scope::Repo(_), Op::PublicKey) => "https://docs.github.com/rest/actions/secrets#get-a-repository-public-key",
            (Scope::Repo(_), Op::Get) => "https://docs.github.com/rest/actions/secrets#get-a-repository-secret",
            (Scope::Repo(_), Op::Put) => "https://docs.github.com/rest/actions/secrets#create-or-update-a-repository-secret",
            (Scope::Repo(_), Op::Delete) => "https://docs.github.com/rest/actions/secrets#delete-a-repository-secret",
            (Scope::Env(..), Op::PublicKey) => "https://docs.github.com/rest/actions/secrets#get-an-environment-public-key",
            (Scope::Env(..), Op::Get) => "https://docs.github.com/rest/actions/secrets#get-an-environment-secret",
            (Scope::Env(..), Op::Put) => "https://docs.github.com/rest/actions/secrets#create-or-update-an-environment-secret",
            (Scope::Env(..), Op::Delete) => "https://docs.github.com/rest/actions/secrets#delete-an-environment-secret",
            (Scope::Org(_), Op::PublicKey) => "https://docs.github.com/rest/actions/secrets#get-an-organization-public-key",
            (Scope::Org(_), Op::Get) => "https://docs.github.com/rest/actions/secrets#get-an-organization-secret",
            (Scope::Org(_), Op::Put) => "https://docs.github.com/rest/actions/secrets#create-or-update-an-organization-secret",
            (Scope::Org(_), Op::Delete) => "https://docs.github.com/rest/actions/secrets#delete-an-organization-secret",
        }
    }
}

/// `%XX` decoding of one path segment; `None` for bad escapes or non-UTF-8.
fn percent_decode(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = seg.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<String> = path
        .strip_prefix('/')?
        .split('/')
        .map(percent_decode)
        .collect::<Option<_>>()?;
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (scope, last) = match s.as_slice() {
        ["repos", owner, repo, "actions", "secrets", last] => (
            Scope::Repo(format!("{owner}/{repo}").to_ascii_lowercase()),
            *last,
        ),
        ["repos", owner, repo, "environments", env, "secrets", last] => (
            Scope::Env(
                format!("{owner}/{repo}").to_ascii_lowercase(),
                env.to_lowercase(),
            ),
            *last,
        ),
        ["orgs", org, "actions", "secrets", last] => (Scope::Org(org.to_ascii_lowercase()), *last),
        _ => return None,
    };
    if owner_or_repo_has_slash(&scope) {
        return None;
    }
    let (op, name) = if last == "public-key" {
        (*method == Method::GET).then_some((Op::PublicKey, None))?
    } else {
        let op = match *method {
            Method::GET => Op::Get,
            Method::PUT => Op::Put,
            Method::DELETE => Op::Delete,
            _ => return None,
        };
        (op, Some(last.to_string()))
    };
    Some(Route { scope, op, name })
}

/// A `%2F` decoded into an owner or repository name would smuggle a second slash into `owner/name`.
fn owner_or_repo_has_slash(scope: &Scope) -> bool {
    match scope {
        Scope::Repo(r) | Scope::Env(r, _) => r.matches('/').count() != 1,
        Scope::Org(o) => o.contains('/'),
    }
}

/// The caller as the rate limiter sees it.
enum Caller {
    Missing,
    Bad,
    Token { value: String, user_id: u64 },
}

impl Caller {
    fn bucket(&self) -> String {
        match self {
            Caller::Token { user_id, .. } => format!("user:{user_id}"),
            _ => "anonymous".to_string(),
        }
    }
}

/// `Authorization: Bearer <t>` or `token <t>` (scheme case-insensitive).
fn identify(store: &Store, headers: &HeaderMap) -> Caller {
    let Some(raw) = headers.get(header::AUTHORIZATION) else {
        return Caller::Missing;
    };
    let Ok(raw) = raw.to_str() else {
        return Caller::Bad;
    };
    let mut parts = raw.trim().splitn(2, char::is_whitespace);
    let scheme = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default().trim();
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        || value.is_empty()
    {
        return Caller::Bad;
    }
    match store.token(value) {
        Some(t) => Caller::Token {
            value: value.to_string(),
            user_id: t.user_id,
        },
        None => Caller::Bad,
    }
}

/// The rate-limit headers of one bucket after this request.
struct RateState {
    limit: u32,
    used: u32,
    reset: i64,
}

impl Emu {
    /// Counts the request in its bucket; `Err` (with the state to report) when the bucket is exhausted.
    fn count(
        &mut self,
        bucket: &str,
        anonymous: bool,
        now: DateTime<Utc>,
        take: bool,
    ) -> Result<RateState, RateState> {
        let limit = self.primary_limit.unwrap_or(if anonymous {
            DEFAULT_ANONYMOUS_LIMIT
        } else {
            DEFAULT_TOKEN_LIMIT
        });
        let window = TimeDelta::from_std(self.primary_window).unwrap_or(TimeDelta::hours(1));
        let entry = self.windows.entry(bucket.to_string()).or_insert((now, 0));
        if now >= entry.0 + window {
            *entry = (now, 0);
        }
        let end = entry.0 + window;
        // Round up: the window is over once the reset second has begun.
        let reset = end.timestamp() + i64::from(end.timestamp_subsec_nanos() > 0);
        let enforced = self.primary_limit.is_some();
        if enforced && entry.1 >= limit {
            return Err(RateState {
                limit,
                used: entry.1,
                reset,
            });
        }
        if take {
            entry.1 = entry.1.saturating_add(1);
        }
        Ok(RateState {
            limit,
            used: entry.1,
            reset,
        })
    }
}

fn request_id() -> String {
    crate::clock::with_rng(|r| {
        format!(
            "{:04X}:{:04X}:{:06X}:{:06X}:{:08X}",
            r.next_u32() & 0xFFFF,
            r.next_u32() & 0xFFFF,
            r.next_u32() & 0xFF_FFFF,
            r.next_u32() & 0xFF_FFFF,
            r.next_u32()
        )
    })
}

pub async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, MAX_BODY).await;
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let request_id = request_id();

    let mut emu = shared.lock();
    let now = emu.store.now();
    let caller = identify(&emu.store, &parts.headers);
    let bucket = caller.bucket();
    let anonymous = !matches!(caller, Caller::Token { .. });

    let user_agent_ok = parts
        .headers
        .get(header::USER_AGENT)
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));

    let (mut resp, rate) = if !user_agent_ok {
        let rate = emu
            .count(&bucket, anonymous, now, false)
            .unwrap_or_else(|r| r);
        let mut resp = Response::new(Body::from(NO_USER_AGENT));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        (resp, rate)
    } else if let Some((left, retry_after)) = emu.secondary {
        emu.secondary = (left > 1).then_some((left - 1, retry_after));
        let rate = emu
            .count(&bucket, anonymous, now, false)
            .unwrap_or_else(|r| r);
        let mut e = ApiError::new(
            403,
            format!("You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID {request_id}."),
            SECONDARY_DOCS,
        );
        e.retry_after = Some(retry_after);
        (e.into_response(), rate)
    } else {
        match emu.count(&bucket, anonymous, now, true) {
            Err(rate) => {
                let who = match &caller {
                    Caller::Token { user_id, .. } => format!("user ID {user_id}."),
                    _ => "127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)".to_string(),
                };
                let e = ApiError::new(
                    403,
                    format!("API rate limit exceeded for {who} If you reach out to GitHub Support for help, please include the request ID {request_id}."),
                    RATE_LIMIT_DOCS,
                );
                (e.into_response(), rate)
            }
            Ok(rate) => {
                let body = body.unwrap_or_default();
                let resp = serve(
                    &mut emu.store,
                    &shared.base_url,
                    &parts.method,
                    &path,
                    &parts.headers,
                    &caller,
                    &body,
                    now,
                )
                .unwrap_or_else(ApiError::into_response);
                (resp, rate)
            }
        }
    };

    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(rate.limit.saturating_sub(rate.used)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(rate.reset));
    h.insert("x-ratelimit-used", HeaderValue::from(rate.used));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    h.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static(API_VERSION),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-github-request-id", v);
    }

    let status = resp.status().as_u16();
    if shared.log_requests.load(Ordering::Relaxed) {
        eprintln!("github-emulator: {method} {path} {status}");
    }
    emu.log.push(RequestRecord {
        method: method.to_string(),
        path,
        status,
        at: now,
    });
    resp
}

/// Steps 4–8 of the pipeline.
#[allow(clippy::too_many_arguments)]
fn serve(
    store: &mut Store,
    base_url: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    caller: &Caller,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Response, ApiError> {
    if let Some(v) = headers.get("x-github-api-version") {
        let v = String::from_utf8_lossy(v.as_bytes());
        if v != API_VERSION {
            return Err(ApiError::new(
                400,
                format!("Unsupported 'X-GitHub-Api-Version' header: \"{v}\". The supported versions are: {API_VERSION}."),
                "https://docs.github.com/rest/overview/api-versions",
            ));
        }
    }
    let Some(route) = route(method, path) else {
        return Err(ApiError::not_found(DOCS_ROOT));
    };
    let doc = route.doc();
    let token = match caller {
        Caller::Missing => return Err(ApiError::new(401, "Requires authentication", DOCS_ROOT)),
        Caller::Bad => return Err(ApiError::new(401, "Bad credentials", DOCS_ROOT)),
        Caller::Token { value, .. } => store
            .token(value)
            .ok_or_else(|| ApiError::new(401, "Bad credentials", DOCS_ROOT))?,
    };
    if !store.may_access(token, &route.scope) || store.vault(&route.scope).is_none() {
        return Err(ApiError::not_found(doc));
    }

    if route.op == Op::PublicKey {
        let vault = store
            .vault(&route.scope)
            .ok_or_else(|| ApiError::not_found(doc))?;
        return Ok(json_response(
            200,
            &json!({"key_id": vault.key.id, "key": vault.key.public_b64}),
        ));
    }

    let raw_name = route.name.as_deref().unwrap_or_default();
    if route.op != Op::Put {
        // A name that breaks the rules can never have been stored.
        let Ok(name) = store::check_secret_name(raw_name) else {
            return Err(ApiError::not_found(doc));
        };
        if route.op == Op::Delete {
            let vault = store
                .vault_mut(&route.scope)
                .ok_or_else(|| ApiError::not_found(doc))?;
            return match vault.secrets.remove(&name) {
                Some(_) => Ok(empty(StatusCode::NO_CONTENT)),
                None => Err(ApiError::not_found(doc)),
            };
        }
        let vault = store
            .vault(&route.scope)
            .ok_or_else(|| ApiError::not_found(doc))?;
        let secret = vault
            .secrets
            .get(&name)
            .ok_or_else(|| ApiError::not_found(doc))?;
        return Ok(json_response(
            200,
            &secret_json(secret, &route.scope, store, base_url),
        ));
    }

    let name = store::check_secret_name(raw_name).map_err(|m| ApiError::invalid(m, doc))?;
    let put = parse_put(body, matches!(route.scope, Scope::Org(_)), doc)?;
    let org_repo_ids = match &route.scope {
        Scope::Org(o) => store.org_repo_ids(o),
        _ => Vec::new(),
    };
    let vault = store
        .vault_mut(&route.scope)
        .ok_or_else(|| ApiError::not_found(doc))?;
    if put.key_id != vault.key.id {
        return Err(ApiError::invalid(STALE_KEY_ID, doc));
    }
    let plaintext = base64::engine::general_purpose::STANDARD
        .decode(&put.encrypted_value)
        .ok()
        .and_then(|ct| vault.key.unseal(&ct))
        .ok_or_else(|| ApiError::invalid(IMPROPERLY_ENCRYPTED, doc))?;
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(ApiError::invalid(
            "Invalid request.\n\nSecrets are limited to 48 KB in size.",
            doc,
        ));
    }
    let existing = vault.secrets.get(&name);
    let selected = match (&put.visibility, put.selected_repository_ids) {
        (Some(v), Some(ids)) if v == "selected" => {
            if let Some(bad) = ids.iter().find(|id| !org_repo_ids.contains(id)) {
                return Err(ApiError::invalid(
                    format!("Invalid request.\n\nRepository {bad} is not a repository of this organization."),
                    doc,
                ));
            }
            ids
        }
        // `selected` without ids keeps the list an earlier `selected` set.
        (Some(v), None) if v == "selected" => existing
            .filter(|s| s.visibility.as_deref() == Some("selected"))
            .map(|s| s.selected_repository_ids.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let created_at = existing.map_or(now, |s| s.created_at);
    let created = existing.is_none();
    vault.secrets.insert(
        name.clone(),
        Secret {
            name,
            value: String::from_utf8_lossy(&plaintext).into_owned(),
            created_at,
            updated_at: now,
            key_id: put.key_id,
            visibility: put.visibility,
            selected_repository_ids: selected,
        },
    );
    Ok(if created {
        // The OpenAPI description's 201 content is `empty-object`.
        json_response(201, &json!({}))
    } else {
        empty(StatusCode::NO_CONTENT)
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn secret_json(secret: &Secret, scope: &Scope, store: &Store, base_url: &str) -> Value {
    let mut v = json!({
        "name": secret.name,
        "created_at": rfc3339(secret.created_at),
        "updated_at": rfc3339(secret.updated_at),
    });
    if let (Scope::Org(org), Some(vis)) = (scope, &secret.visibility) {
        v["visibility"] = json!(vis);
        if vis == "selected" {
            let org = store.org_name(org).unwrap_or(org);
            v["selected_repositories_url"] = json!(format!(
                "{base_url}/orgs/{org}/actions/secrets/{}/repositories",
                secret.name
            ));
        }
    }
    v
}

struct PutBody {
    encrypted_value: String,
    key_id: String,
    visibility: Option<String>,
    selected_repository_ids: Option<Vec<u64>>,
}

/// The request body's schema (GitHub's JSON-schema style messages; see the module doc for which are observed).
fn parse_put(body: &[u8], org: bool, doc: &'static str) -> Result<PutBody, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::new(400, "Problems parsing JSON", doc))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(
            format!("Invalid request.\n\nFor 'links/0/schema', {value} is not an object."),
            doc,
        ));
    };
    let mut required = vec!["encrypted_value", "key_id"];
    if org {
        required.push("visibility");
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|k| obj.get(**k).is_none_or(Value::is_null))
        .map(|k| format!("\"{k}\""))
        .collect();
    match missing.len() {
        0 => {}
        1 => {
            return Err(ApiError::invalid(
                format!("Invalid request.\n\n{} wasn't supplied.", missing[0]),
                doc,
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid request.\n\n{} weren't supplied.",
                    missing.join(", ")
                ),
                doc,
            ))
        }
    }
    let encrypted_value = string_prop(&obj, "encrypted_value", doc)?;
    if !store::matches_base64_pattern(&encrypted_value) {
        return Err(ApiError::invalid(
            format!(
                "Invalid request.\n\n{encrypted_value} does not match /^(?:[A-Za-z0-9+\\/]{{4}})*(?:[A-Za-z0-9+\\/]{{2}}==|[A-Za-z0-9+\\/]{{3}}=|[A-Za-z0-9+\\/]{{4}})$/."
            ),
            doc,
        ));
    }
    let key_id = string_prop(&obj, "key_id", doc)?;
    if !org {
        return Ok(PutBody {
            encrypted_value,
            key_id,
            visibility: None,
            selected_repository_ids: None,
        });
    }
    let visibility = string_prop(&obj, "visibility", doc)?;
    if !matches!(visibility.as_str(), "all" | "private" | "selected") {
        return Err(ApiError::invalid(
            format!("Invalid request.\n\nFor 'properties/visibility', \"{visibility}\" is not a member of [\"all\", \"private\", \"selected\"]."),
            doc,
        ));
    }
    let selected_repository_ids = match obj.get("selected_repository_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Invalid request.\n\nFor 'items', {item} is not an integer."),
                        doc,
                    )
                }))
                .collect::<Result<Vec<u64>, _>>()?,
        ),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("Invalid request.\n\nFor 'properties/selected_repository_ids', {other} is not an array."),
                doc,
            ))
        }
    };
    if visibility != "selected"
        && selected_repository_ids
            .as_ref()
            .is_some_and(|ids| !ids.is_empty())
    {
        return Err(ApiError::invalid(
            "Invalid request.\n\nselected_repository_ids can only be provided when visibility is set to selected.",
            doc,
        ));
    }
    Ok(PutBody {
        encrypted_value,
        key_id,
        visibility: Some(visibility),
        selected_repository_ids,
    })
}

fn string_prop(obj: &Map<String, Value>, key: &str, doc: &'static str) -> Result<String, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::invalid(
            format!("Invalid request.\n\nFor 'properties/{key}', {other} is not a string."),
            doc,
        )),
        None => Err(ApiError::invalid(
            format!("Invalid request.\n\n\"{key}\" wasn't supplied."),
            doc,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route(&Method::GET, "/repos/Acme/App/actions/secrets/public-key").unwrap();
        assert!(r.op == Op::PublicKey && r.scope == Scope::Repo("acme/app".into()));
        let r = route(
            &Method::PUT,
            "/repos/acme/app/environments/my%20env/secrets/X",
        )
        .unwrap();
        assert!(r.op == Op::Put && r.scope == Scope::Env("acme/app".into(), "my env".into()));
        assert_eq!(r.name.as_deref(), Some("X"));
        let r = route(&Method::GET, "/orgs/acme/actions/secrets/X").unwrap();
        assert!(r.op == Op::Get && r.scope == Scope::Org("acme".into()));
        assert!(route(&Method::PUT, "/orgs/acme/actions/secrets/public-key").is_none());
        assert!(route(&Method::POST, "/orgs/acme/actions/secrets/X").is_none());
        assert!(route(&Method::GET, "/repos/acme/app/actions/secrets/").is_none());
        assert!(route(&Method::GET, "/repos/a%2Fb/app/actions/secrets/X").is_none());
        assert!(route(&Method::GET, "/repos/acme/app/actions/secrets/X/extra").is_none());
    }
}
