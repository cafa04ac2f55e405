//! The HTTP side: routes, the front door (injected faults, throttling, rate limit, `Accept`, request log) and the
//! error body `{"code": N, "message": "…"}` (reference B.0).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch};
use axum::{Json, Router};
use serde_json::json;

use super::store::{parse_create_body, Caller, Store};
use super::{Config, RequestRecord};

/// An API error, rendered as `{"code": status, "message": …}` with `application/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error whose message is the status's reason phrase, as for injected faults.
    fn canonical(status: u16) -> Self {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        ApiError::new(status, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            Json(json!({"code": self.status, "message": self.message})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Knobs tests turn; all apply before routing.
#[derive(Debug)]
pub struct Control {
    pub fail_next: Option<(usize, u16)>,
    pub throttle_until: Option<Instant>,
    pub throttle_retry_after: Option<u64>,
    pub create_delay: Duration,
    pub rate_limit: Option<u32>,
    window: Option<(Instant, u32)>,
    pub require_accept: bool,
    pub echo_requests: bool,
    /// Error answers quote the request's `Authorization` header.
    pub echo_credentials: bool,
}

impl Control {
    fn new(cfg: &Config) -> Self {
        Control {
            fail_next: None,
            throttle_until: None,
            throttle_retry_after: None,
            create_delay: Duration::ZERO,
            rate_limit: cfg.rate_limit_per_second,
            window: None,
            require_accept: true,
            echo_requests: false,
            echo_credentials: false,
        }
    }

    /// Answers for the API before routing when a fault, throttle, rate limit or a bad `Accept` says so.
    fn gate(&mut self, accept: Option<&str>) -> Option<ApiError> {
        let now = Instant::now();
        if let Some(until) = self.throttle_until {
            if now < until {
                let mut e = ApiError::canonical(429);
                e.retry_after = self.throttle_retry_after;
                return Some(e);
            }
            self.throttle_until = None;
        }
        if let Some((left, status)) = self.fail_next {
            self.fail_next = (left > 1).then_some((left - 1, status));
            return Some(ApiError::canonical(status));
        }
        if let Some(limit) = self.rate_limit {
            let (start, count) = match self.window {
                Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                    (start, count)
                }
                _ => (now, 0),
            };
            if count >= limit {
                // Pulumi documents no rate limit (reference B.0); a generic 429 with `Retry-After` is the inference.
                let mut e = ApiError::canonical(429);
                e.retry_after = Some(1);
                return Some(e);
            }
            self.window = Some((start, count + 1));
        }
        if self.require_accept && !accept_is_pulumi(accept) {
            // The docs call `Accept: application/vnd.pulumi+8` required (reference B.0); the provider sends +9.
            return Some(ApiError::new(
                406,
                "Not Acceptable: send Accept: application/vnd.pulumi+8 (or a later version)",
            ));
        }
        None
    }
}

/// True when `Accept` names `application/vnd.pulumi+N` with N ≥ 8.
pub fn accept_is_pulumi(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|range| {
            let media = range
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media
                .strip_prefix("application/vnd.pulumi+")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| v >= 8)
        })
    })
}

/// Everything one emulator owns, behind one lock that is never held across an await.
pub struct Emu {
    pub store: Store,
    pub control: Control,
    pub log: Vec<RequestRecord>,
}

pub struct Shared {
    state: Mutex<Emu>,
}

impl Shared {
    pub fn new(cfg: &Config) -> Self {
        Shared {
            state: Mutex::new(Emu {
                store: Store::default(),
                control: Control::new(cfg),
                log: Vec::new(),
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Emu> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Set on a response by handlers that authenticated the caller, for the request log.
#[derive(Debug, Clone)]
struct AuthenticatedAs(String);

type App = State<Arc<Shared>>;
type Pairs = Query<Vec<(String, String)>>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/user", get(get_user))
        .route("/api/user/tokens", get(list_personal).post(create_personal))
        .route("/api/user/tokens/{id}", delete(delete_personal))
        .route("/api/orgs/{org}", patch(update_org))
        .route("/api/orgs/{org}/metadata", get(org_metadata))
        .route("/api/orgs/{org}/tokens", get(list_org).post(create_org))
        .route("/api/orgs/{org}/tokens/{id}", delete(delete_org))
        .route(
            "/api/orgs/{org}/teams/{team}/tokens",
            get(list_team).post(create_team),
        )
        .route(
            "/api/orgs/{org}/teams/{team}/tokens/{id}",
            delete(delete_team),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), front_door))
        .with_state(shared)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn front_door(State(shared): App, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let accept = header_str(req.headers(), header::ACCEPT);
    let content_type = header_str(req.headers(), header::CONTENT_TYPE);
    // Only the scheme is kept: the log never holds a token value.
    let authorization = header_str(req.headers(), header::AUTHORIZATION);
    let auth_scheme = authorization
        .as_deref()
        .map(|v| v.split_whitespace().next().unwrap_or_default().to_string());

    let early = shared.lock().control.gate(accept.as_deref());
    let mut resp = match early {
        Some(err) => err.into_response(),
        None => next.run(req).await,
    };
    let echo = shared.lock().control.echo_credentials;
    if echo && resp.status().as_u16() >= 400 {
        resp = echo_credentials(resp, authorization.as_deref().unwrap_or("(none)")).await;
    }

    let status = resp.status().as_u16();
    let token_id = resp
        .extensions()
        .get::<AuthenticatedAs>()
        .map(|a| a.0.clone());
    let mut emu = shared.lock();
    if emu.control.echo_requests {
        eprintln!("pulumi-emulator: {method} {path} {status}");
    }
    let at = emu.store.now();
    emu.log.push(RequestRecord {
        method,
        path,
        query,
        status,
        accept,
        content_type,
        auth_scheme,
        token_id,
        at,
    });
    resp
}

/// The error answer with the request's `Authorization` header quoted in its message (or appended to a text body).
async fn echo_credentials(resp: Response, authorization: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let echo = format!(" (the request carried Authorization: {authorization})");
    let new_body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) => {
            let message = v["message"].as_str().unwrap_or_default().to_string() + &echo;
            v["message"] = serde_json::Value::String(message);
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Err(_) => [bytes.as_ref(), echo.as_bytes()].concat(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(new_body))
}

/// Unknown paths get Go's plain-text mux 404, as the real API's edge does (reference B.0, "Error body").
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// Authenticates, then runs `f` under the lock; tags the response with the caller's token id.
fn authed(
    shared: &Shared,
    headers: &HeaderMap,
    f: impl FnOnce(&mut Store, &Caller) -> Result<Response, ApiError>,
) -> Response {
    let mut emu = shared.lock();
    let authorization = header_str(headers, header::AUTHORIZATION);
    let caller = match emu.store.authenticate(authorization.as_deref()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut resp = f(&mut emu.store, &caller).unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut()
        .insert(AuthenticatedAs(caller.token_id));
    resp
}

/// [`authed`] for a route of organization `org`: the org's access token expiry policy is checked first, for every
/// caller ([`Store::check_expiry_policy`]).
fn authed_org(
    shared: &Shared,
    headers: &HeaderMap,
    org: &str,
    f: impl FnOnce(&mut Store, &Caller) -> Result<Response, ApiError>,
) -> Response {
    authed(shared, headers, |st, caller| {
        st.check_expiry_policy(caller, org)?;
        f(st, caller)
    })
}

/// POST bodies must be `application/json` (reference B.0, required headers).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = header_str(headers, header::CONTENT_TYPE).is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            "Unsupported Media Type: Content-Type must be application/json",
        ))
    }
}

/// The configured create delay is served after the token exists, so a client that times out leaves it behind,
/// as a slow real server would.
async fn after_create(shared: &Shared, resp: Response) -> Response {
    if resp.status() == StatusCode::OK {
        let delay = shared.lock().control.create_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    resp
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn get_user(State(s): App, headers: HeaderMap) -> Response {
    authed(&s, &headers, |st, caller| {
        Ok(Json(st.current_user(caller)).into_response())
    })
}

async fn list_personal(State(s): App, Query(q): Pairs, headers: HeaderMap) -> Response {
    authed(&s, &headers, |st, caller| {
        let login = Store::check_personal(caller)?;
        let q = st.parse_list_query(&q)?;
        Ok(Json(st.list_personal(login, &q)).into_response())
    })
}

async fn create_personal(State(s): App, headers: HeaderMap, body: Bytes) -> Response {
    let resp = authed(&s, &headers, |st, caller| {
        let login = Store::check_personal(caller)?.to_string();
        require_json(&headers)?;
        let body = parse_create_body(&body)?;
        Ok(Json(st.create_personal_token(&login, body)?).into_response())
    });
    after_create(&s, resp).await
}

async fn delete_personal(State(s): App, Path(id): Path<String>, headers: HeaderMap) -> Response {
    authed(&s, &headers, |st, caller| {
        let login = Store::check_personal(caller)?.to_string();
        st.delete_personal_token(&login, &id)?;
        Ok(no_content())
    })
}

async fn org_metadata(State(s): App, Path(org): Path<String>, headers: HeaderMap) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        Ok(Json(st.org_metadata(caller, &org)?).into_response())
    })
}

async fn update_org(
    State(s): App,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        require_json(&headers)?;
        Ok(Json(st.update_org_settings(caller, &org, &body)?).into_response())
    })
}

async fn list_org(
    State(s): App,
    Path(org): Path<String>,
    Query(q): Pairs,
    headers: HeaderMap,
) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        st.check_list_org_tokens(caller, &org)?;
        let q = st.parse_list_query(&q)?;
        Ok(Json(st.list_org(&org, &q)).into_response())
    })
}

async fn create_org(
    State(s): App,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = authed_org(&s, &headers, &org, |st, caller| {
        st.check_manage_org_tokens(caller, &org)?;
        require_json(&headers)?;
        let body = parse_create_body(&body)?;
        Ok(Json(st.create_machine_token(caller, &org, None, body)?).into_response())
    });
    after_create(&s, resp).await
}

async fn delete_org(
    State(s): App,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        st.check_manage_org_tokens(caller, &org)?;
        st.delete_org_token(&org, &id)?;
        Ok(no_content())
    })
}

async fn list_team(
    State(s): App,
    Path((org, team)): Path<(String, String)>,
    Query(q): Pairs,
    headers: HeaderMap,
) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        st.check_manage_team_tokens(caller, &org, &team)?;
        let q = st.parse_list_query(&q)?;
        Ok(Json(st.list_team(&org, &team, &q)).into_response())
    })
}

async fn create_team(
    State(s): App,
    Path((org, team)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = authed_org(&s, &headers, &org, |st, caller| {
        st.check_manage_team_tokens(caller, &org, &team)?;
        require_json(&headers)?;
        let body = parse_create_body(&body)?;
        Ok(Json(st.create_machine_token(caller, &org, Some(&team), body)?).into_response())
    });
    after_create(&s, resp).await
}

async fn delete_team(
    State(s): App,
    Path((org, team, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    authed_org(&s, &headers, &org, |st, caller| {
        st.check_manage_team_tokens(caller, &org, &team)?;
        st.delete_team_token(&org, &team, &id)?;
        Ok(no_content())
    })
}
