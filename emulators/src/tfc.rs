//! HCP Terraform / Terraform Enterprise token API emulator.
//!
//! A strict, in-process stand-in for the parts of `/api/v2` that token-rotator uses (SPEC §3 "Token types",
//! token-apis.md Part A): organization and audit-trails tokens (singletons, replaced on create), legacy and
//! described team tokens, agent tokens, `GET/DELETE /authentication-tokens/:id`, the org-wide team-token list,
//! `GET /teams/:id`, `GET /account/details`, `GET /ping`, and the organization maximum-TTL policies
//! (`GET|PATCH /organizations/:org/token-ttl-policies`, enforced while the organization's `max-ttl-enabled` is on:
//! see [`TfcHandle::set_max_ttl`] and [`TokenState::OverMaxTtl`]), and the variables a rotated token is delivered
//! through (TFC docs `workspace-variables.mdx`, `variable-sets.mdx`):
//! - `GET|POST /workspaces/:workspace_id/vars`, `GET|PATCH|DELETE /workspaces/:workspace_id/vars/:variable_id`;
//! - `GET /varsets/:varset_id`, `GET|POST /varsets/:varset_id/relationships/vars`,
//!   `GET|PATCH|DELETE /varsets/:varset_id/relationships/vars/:variable_id`.
//!
//! Workspaces and variable sets are made with [`TfcHandle::add_workspace`] and [`TfcHandle::add_varset`]. A
//! sensitive variable's value is `null` in every response; [`TfcHandle::variable`] shows what a Terraform run would
//! get. It listens on loopback only, over plain HTTP or HTTPS with a throw-away CA.
//!
//! Strictness, as the real service: bearer auth everywhere (401 for a missing, unknown, revoked, replaced or
//! expired token, and for agent tokens); `Content-Type: application/vnd.api+json` on POST/PATCH/DELETE (415);
//! 404 for anything the caller may not see; token values only in create responses, sensitive variable values never; 30 requests per second per
//! user with the documented 429 body, `X-RateLimit-Limit` and `X-RateLimit-Reset` and no `Retry-After`.
//!
//! The rate limit is a *sliding* one-second window: at most `rate_limit_per_second` accepted requests in any
//! 1 s interval per principal (the owners user, an org's service user shared by its org and audit-trails tokens,
//! or a team's service user shared by all its tokens; unauthenticated requests per client IP). Refused requests
//! do not count. A client-side token bucket that allows a full burst on top of its steady rate can trip it.
//!
//! Test knobs on [`TfcHandle`]: injected failures, throttling, a delay on token creation, out-of-band revocation
//! and expiry, the maximum-TTL policy, out-of-band variable edits, and a request log. The request pipeline is described in `tfc/http.rs`.

mod http;
mod jsonapi;
mod model;
mod tls;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use model::{RequestRecord, TokenInfo, TokenKind, TokenState, VariableInfo};

use http::{Peer, Shared};
use model::{ResourceRef, State};

/// Emulator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requests per second per user; `None` (or `Some(0)`) disables the limit. Default `Some(30)` (TFC docs
    /// `api-docs/index.mdx`: "up to 30 requests per second").
    pub rate_limit_per_second: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rate_limit_per_second: Some(30),
        }
    }
}

/// Starts emulator servers.
pub struct TfcEmulator;

impl TfcEmulator {
    /// Plain HTTP on `127.0.0.1` with an ephemeral port.
    pub async fn start(cfg: Config) -> io::Result<TfcHandle> {
        Self::bind(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// HTTPS on `127.0.0.1` with an ephemeral port. Returns the PEM of a freshly generated CA that signed the
    /// server certificate (valid for `127.0.0.1` and `localhost`).
    pub async fn start_tls(cfg: Config) -> io::Result<(TfcHandle, String)> {
        Self::bind_tls(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Plain HTTP on the given loopback address (refuses any other address).
    pub async fn bind(cfg: Config, addr: SocketAddr) -> io::Result<TfcHandle> {
        let tcp = bind_loopback(addr).await?;
        let local = tcp.local_addr()?;
        let (shared, app, stop, stop_rx) = prepare(&cfg, format!("http://{local}"));
        let served = app.clone();
        let task = tokio::spawn(async move {
            let make = served.into_make_service_with_connect_info::<Peer>();
            let _ = axum::serve(tcp, make)
                .with_graceful_shutdown(stopped(stop_rx))
                .await;
        });
        Ok(TfcHandle::new(shared, app, local, "http", task, stop))
    }

    /// HTTPS on the given loopback address; see [`TfcEmulator::start_tls`].
    pub async fn bind_tls(cfg: Config, addr: SocketAddr) -> io::Result<(TfcHandle, String)> {
        let (config, ca_pem) = tls::server_config()?;
        let tcp = bind_loopback(addr).await?;
        let local = tcp.local_addr()?;
        let listener = tls::TlsListener::new(tcp, config)?;
        let (shared, app, stop, stop_rx) = prepare(&cfg, format!("https://{local}"));
        let served = app.clone();
        let task = tokio::spawn(async move {
            let make = served.into_make_service_with_connect_info::<Peer>();
            let _ = axum::serve(listener, make)
                .with_graceful_shutdown(stopped(stop_rx))
                .await;
        });
        Ok((
            TfcHandle::new(shared, app, local, "https", task, stop),
            ca_pem,
        ))
    }
}

async fn bind_loopback(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the tfc emulator listens on loopback addresses only, not {addr}"),
        ));
    }
    TcpListener::bind(addr).await
}

type StopRx = watch::Receiver<bool>;

impl TfcEmulator {
    /// An emulator without a listener: requests go through [`TfcHandle::dispatch`], on the caller's task (the
    /// deterministic simulation drives it on a paused clock). `url()` names an address nothing listens on.
    pub fn in_memory(cfg: Config) -> TfcHandle {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let (shared, app, stop, _stop_rx) = prepare(&cfg, format!("http://{addr}"));
        TfcHandle {
            shared,
            app,
            server: Arc::new(ServerGuard {
                addr,
                scheme: "http",
                stop,
                task: Mutex::new(None),
            }),
        }
    }
}

fn prepare(cfg: &Config, base_url: String) -> (Arc<Shared>, Router, watch::Sender<bool>, StopRx) {
    let shared = Arc::new(Shared::new(
        State::new(),
        cfg.rate_limit_per_second,
        base_url,
    ));
    let app = Router::new()
        .fallback(http::handle)
        .with_state(Arc::clone(&shared));
    let (stop, stop_rx) = watch::channel(false);
    (shared, app, stop, stop_rx)
}

/// Resolves when a stop was requested or every handle is gone.
async fn stopped(mut rx: StopRx) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Stops the server when the last clone of its handle is dropped.
struct ServerGuard {
    addr: SocketAddr,
    scheme: &'static str,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A running emulator. Clones share the same server and state; the server stops when the last clone is dropped
/// or on [`TfcHandle::shutdown`].
#[derive(Clone)]
pub struct TfcHandle {
    shared: Arc<Shared>,
    app: Router,
    server: Arc<ServerGuard>,
}

impl TfcHandle {
    fn new(
        shared: Arc<Shared>,
        app: Router,
        addr: SocketAddr,
        scheme: &'static str,
        task: JoinHandle<()>,
        stop: watch::Sender<bool>,
    ) -> TfcHandle {
        TfcHandle {
            shared,
            app,
            server: Arc::new(ServerGuard {
                addr,
                scheme,
                stop,
                task: Mutex::new(Some(task)),
            }),
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash; the API is under `/api/v2`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.server.scheme, self.server.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Stops the server (for every clone of this handle). Returns at once; see [`TfcHandle::stop`] to wait.
    pub fn shutdown(self) {
        let _ = self.server.stop.send(true);
    }

    /// Stops the server and waits until the listener is closed and in-flight requests have been answered.
    pub async fn stop(self) {
        let _ = self.server.stop.send(true);
        let task = self
            .server
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// One request through the emulator's pipeline without a socket (as from 127.0.0.1).
    pub async fn dispatch(
        &self,
        mut request: axum::http::Request<axum::body::Body>,
    ) -> axum::http::Response<axum::body::Body> {
        use tower::ServiceExt;
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(Peer(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                0,
            )))));
        match self.app.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    // --- Fixtures ---

    /// Creates an organization with an owners team and an owner user, and returns the value of that user's token
    /// (never expires), which may manage the org, audit-trails, team and agent tokens of the organization.
    /// Panics if the organization exists already or the name is not `[A-Za-z0-9_-]+`.
    pub fn add_organization(&self, name: &str) -> String {
        self.shared.lock().add_organization(name, model::now())
    }

    /// Adds a team and returns its id (`team-` + 16 alphanumerics); an existing team of that name is returned as
    /// is. Panics on an unknown organization.
    pub fn add_team(&self, org: &str, team_name: &str) -> String {
        self.shared.lock().add_team(org, team_name)
    }

    /// The id of the organization's `owners` team, whose tokens have owner rights.
    pub fn owners_team_id(&self, org: &str) -> Option<String> {
        self.shared
            .lock()
            .orgs
            .get(org)
            .map(|o| o.owners_team_id.clone())
    }

    /// Adds an agent pool and returns its id (`apool-` + 16 alphanumerics). Panics on an unknown organization.
    pub fn add_agent_pool(&self, org: &str, name: &str) -> String {
        self.shared.lock().add_agent_pool(org, name)
    }

    /// Adds a workspace and returns its id (`ws-` + 16 alphanumerics); an existing workspace of that name is
    /// returned as is. Panics on an unknown organization.
    pub fn add_workspace(&self, org: &str, name: &str) -> String {
        self.shared.lock().add_workspace(org, name)
    }

    /// Adds a variable set owned by the organization (not global, no priority, applied to no workspace) and returns
    /// its id (`varset-` + 16 alphanumerics); an existing set of that name is returned as is. Panics on an unknown
    /// organization.
    pub fn add_varset(&self, org: &str, name: &str) -> String {
        self.shared.lock().add_varset(org, name, model::now())
    }

    /// Mints a token out of band, with the API's semantics (singletons replace their predecessor, described team
    /// tokens need a unique description), and returns `(id, value)`. `target` is the organization name for
    /// `Organization`, `AuditTrails` and `User`, the team id for `Team`/`TeamLegacy`, the pool id for `Agent`.
    /// `expired_at: None` means the API default (two years, or the organization's maximum TTL for the kind while
    /// its policy is on) for kinds that expire; an explicit expiry is not checked against the policy. Panics on a
    /// bad target or a duplicate description.
    pub fn mint(
        &self,
        kind: TokenKind,
        target: &str,
        description: Option<&str>,
        expired_at: Option<DateTime<Utc>>,
    ) -> (String, String) {
        let now = model::now();
        let mut st = self.shared.lock();
        let expired_at = match kind {
            TokenKind::Agent | TokenKind::User => expired_at,
            _ => {
                // The default is the organization's maximum TTL while its policy is on (as over the API).
                let org = match kind {
                    TokenKind::Team | TokenKind::TeamLegacy => {
                        st.teams.get(target).map(|t| t.org.clone())
                    }
                    _ => Some(target.to_owned()),
                };
                let ttl = org
                    .and_then(|org| st.max_ttl_ms(&org, kind))
                    .unwrap_or(model::DEFAULT_TTL_MS);
                Some(expired_at.unwrap_or(now + chrono::TimeDelta::milliseconds(ttl)))
            }
        };
        // Minted out of band: attributed to the organization's owner.
        let owner = st.owner_of(kind, target);
        let created_by = ResourceRef {
            id: owner.unwrap_or_default(),
            kind: "users",
        };
        let idx = st
            .mint(
                kind,
                target,
                description.map(str::to_owned),
                expired_at,
                created_by,
                now,
            )
            .unwrap_or_else(|e| panic!("tfc emulator mint {}: {e}", kind.as_str()));
        (st.tokens[idx].id.clone(), st.tokens[idx].value.clone())
    }

    // --- Inspection ---

    /// The token authenticates now: it exists, is neither revoked nor replaced, has not expired, and its lifetime
    /// is within its organization's maximum TTL (state [`TokenState::Active`]).
    pub fn is_valid(&self, token_value: &str) -> bool {
        let st = self.shared.lock();
        st.lookup_value(token_value)
            .is_some_and(|i| st.usable(i, model::now()))
    }

    /// The id of the token with this value, whatever its state.
    pub fn token_id_of(&self, token_value: &str) -> Option<String> {
        let st = self.shared.lock();
        st.lookup_value(token_value)
            .map(|i| st.tokens[i].id.clone())
    }

    /// Metadata of one token by id, whatever its state.
    pub fn token_info(&self, token_id: &str) -> Option<TokenInfo> {
        let st = self.shared.lock();
        st.any_by_id(token_id).map(|i| st.info(i, model::now()))
    }

    /// Every token valid now (state `Active`), in creation order.
    pub fn valid_tokens(&self) -> Vec<TokenInfo> {
        let now = model::now();
        let st = self.shared.lock();
        (0..st.tokens.len())
            .filter(|&i| st.usable(i, now))
            .map(|i| st.info(i, now))
            .collect()
    }

    /// Every token ever created, in creation order, with its [`TokenState`].
    pub fn all_tokens(&self) -> Vec<TokenInfo> {
        let now = model::now();
        let st = self.shared.lock();
        (0..st.tokens.len()).map(|i| st.info(i, now)).collect()
    }

    /// The variable with this key and category (`terraform` or `env`) on a workspace or variable set (by id), as a
    /// consumer such as a Terraform run sees it: with its real value, even when it is sensitive.
    pub fn variable(&self, owner_id: &str, key: &str, category: &str) -> Option<VariableInfo> {
        let st = self.shared.lock();
        st.find_variable(owner_id, key, category)
            .map(|i| st.variables[i].info())
    }

    /// Total requests received (every status, injected failures included).
    pub fn request_count(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// Requests with this method and exact path (no query), e.g. `("POST", "/api/v2/teams/team-…/authentication-tokens")`.
    pub fn request_count_for(&self, method: &str, path: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .count()
    }

    /// Every request so far, in the order they were answered.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// The largest number of requests (any status) that arrived within any interval of length `window`.
    pub fn max_requests_in_window(&self, window: Duration) -> usize {
        let mut arrivals: Vec<Instant> = self.shared.lock().log.iter().map(|r| r.at).collect();
        arrivals.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..arrivals.len() {
            while arrivals[end].duration_since(arrivals[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    /// Requests from the same principal that arrived after a 429 but before its `X-RateLimit-Reset` had passed
    /// (SPEC §5.4: "after a 429 no request goes to that issuer before `X-RateLimit-Reset` has passed").
    pub fn requests_before_rate_limit_reset(&self) -> usize {
        let log = self.request_log();
        log.iter()
            .filter(|r| {
                log.iter().any(|limited| {
                    limited.rate_limit_reset.is_some_and(|reset| {
                        limited.principal == r.principal
                            && r.at > limited.at
                            && r.at < limited.at + reset
                    })
                })
            })
            .count()
    }

    // --- Fault injection and test hooks ---

    /// Print one line per request to stderr: method, path (no query) and status, never a token value.
    pub fn set_request_logging(&self, on: bool) {
        self.shared.log_requests.store(on, Ordering::Relaxed);
    }

    /// Every successful token-create request waits this long before answering. The token exists (and a replaced
    /// singleton is dead) during the wait, as when a real response is in flight or the client dies before reading it.
    pub fn set_create_delay(&self, d: Duration) {
        self.shared.lock().create_delay = d;
    }

    /// The next `n` requests (any path, before authentication) answer `status` with a JSON:API error body. A 429
    /// gets the real rate-limit body and headers with a 1 s reset; prefer [`TfcHandle::throttle_for`].
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.fail_remaining = n;
        st.fail_status = status;
    }

    /// For `d` from now, every request answers 429 with the documented body, `X-RateLimit-Limit`, and an
    /// `X-RateLimit-Reset` counting down to the end of the throttle.
    pub fn throttle_for(&self, d: Duration) {
        self.shared.lock().throttle_until = Some(Instant::now() + d);
    }

    /// A server that echoes what it was sent: every error answer's JSON:API `errors` gains an entry whose `detail`
    /// quotes the request's `Authorization` header (bearer token included), as careless servers and proxies do.
    pub fn set_echo_credentials(&self, on: bool) {
        self.shared.echo_credentials.store(on, Ordering::Relaxed);
    }

    /// `false` makes `POST /teams/:id/authentication-tokens` answer 404, like a TFE release without described
    /// team tokens (token-apis.md A.3).
    pub fn set_multi_team_tokens_supported(&self, supported: bool) {
        self.shared.lock().multi_team_tokens = supported;
    }

    /// Sets `last-used-at` to now (agent tokens cannot call the API; tests stand in for the agent).
    pub fn mark_used(&self, token_id: &str) {
        self.mark_used_at(token_id, model::now());
    }

    /// Sets a token's `last-used-at` to `at` (a consumer's use as the service recorded it).
    pub fn mark_used_at(&self, token_id: &str, at: DateTime<Utc>) {
        let mut st = self.shared.lock();
        if let Some(i) = st.any_by_id(token_id) {
            st.tokens[i].last_used_at = Some(at);
        }
    }

    /// Overrides a token's expiry (a past time makes it invalid at once).
    pub fn set_expired_at(&self, token_id: &str, at: DateTime<Utc>) {
        let mut st = self.shared.lock();
        if let Some(i) = st.any_by_id(token_id) {
            st.tokens[i].expired_at = Some(at);
        }
    }

    /// Sets the organization's maximum TTL for one token type (`organization`, `team`, `user`, `audit_trails`,
    /// `metrics`; the `token-type` values of `…/token-ttl-policies`) and switches the organization's
    /// `max-ttl-enabled` on, as an owner would in the UI. `None` resets that type to the 2-year default
    /// (63113904000 ms). Limits are kept in whole milliseconds. The emulator caps organization, audit-trails and
    /// team tokens (see [`TokenState::OverMaxTtl`]); the `user` and `metrics` limits are reported only. Panics on
    /// an unknown organization or token type, or a zero limit.
    pub fn set_max_ttl(&self, org: &str, token_type: &str, max_ttl: Option<Duration>) {
        let token_type = model::TtlTokenType::parse(token_type).unwrap_or_else(|| {
            panic!("tfc emulator: unknown token-ttl-policies token type {token_type:?}")
        });
        let ms = max_ttl.map_or(model::DEFAULT_TTL_MS, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        });
        assert!(ms > 0, "tfc emulator: a maximum TTL must be positive");
        let now = model::now();
        let mut st = self.shared.lock();
        let o = st
            .orgs
            .get_mut(org)
            .unwrap_or_else(|| panic!("tfc emulator: unknown organization {org:?}"));
        o.max_ttl_enabled = true;
        let policy = o.ttl_policy_mut(token_type);
        policy.max_ttl_ms = ms;
        policy.updated_at = now;
    }

    /// The organization attribute `max-ttl-enabled`: whether the maximum-TTL policies are enforced (the limits
    /// are kept either way). Panics on an unknown organization.
    pub fn set_max_ttl_enabled(&self, org: &str, enabled: bool) {
        let mut st = self.shared.lock();
        st.orgs
            .get_mut(org)
            .unwrap_or_else(|| panic!("tfc emulator: unknown organization {org:?}"))
            .max_ttl_enabled = enabled;
    }

    /// The limit the organization enforces now for `kind`, if any (`max-ttl-enabled` on and a capped kind).
    pub fn max_ttl(&self, org: &str, kind: TokenKind) -> Option<Duration> {
        self.shared
            .lock()
            .max_ttl_ms(org, kind)
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    /// Sets a variable's value out of band, as someone editing it in the UI would; its `version-id` changes.
    /// Panics if the workspace or variable set (by id) has no variable with this key and category.
    pub fn set_variable_value(&self, owner_id: &str, key: &str, category: &str, value: &str) {
        let now = model::now();
        let mut st = self.shared.lock();
        let i = st
            .find_variable(owner_id, key, category)
            .unwrap_or_else(|| {
                panic!("tfc emulator: {owner_id} has no {category} variable {key:?}")
            });
        st.variables[i].value = value.to_owned();
        st.touch_variable(i, now);
    }

    /// Revokes a token out of band, as if someone deleted it in the UI.
    pub fn revoke(&self, token_id: &str) {
        let mut st = self.shared.lock();
        if let Some(i) = st.live_by_id(token_id) {
            st.tokens[i].ended = Some((TokenState::Revoked, model::now()));
        }
    }
}
