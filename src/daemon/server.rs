//! The HTTP endpoints on `listen` (SPEC §6): `/metrics`, `/healthz`, `/readyz`, and the listener that serves them
//! within bounds (connections, time) so that no client can exhaust the daemon's descriptors (SPEC §5.12).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::status::StatusBoard;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub board: StatusBoard,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&s.board),
    )
}

/// The listener is bound and the policy loaded, or this handler would not run.
async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

#[derive(Serialize)]
pub struct Unhealthy {
    pub token: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub unhealthy: Vec<Unhealthy>,
    /// `"leader"` or `"standby"` with `[cluster]` (SPEC §8.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

pub fn readiness(board: &StatusBoard) -> Readiness {
    let now = crate::clock::now();
    let mut unhealthy = Vec::new();
    board.for_each(|s| {
        if let Some(reason) = s.unready_reason(now) {
            unhealthy.push(Unhealthy {
                token: s.name.to_string(),
                reason,
            });
        }
    });
    Readiness {
        ready: unhealthy.is_empty(),
        unhealthy,
        role: board.role(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let r = readiness(&s.board);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

/// Connections served at once. At the cap the oldest connection is closed to make room: with keep-alive off a
/// well-behaved client holds one for milliseconds, so the oldest is a client that sends nothing (SPEC §5.12).
pub const MAX_CONNECTIONS: usize = 128;
/// A request's head must arrive within this, or the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this (a client that reads its answer slowly holds no descriptor for long).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// The open connections, oldest first, each with the token that closes it.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, CancellationToken>,
}

/// Serves `app` on `listener` until `cancel`: HTTP/1.1 without keep-alive, at most [`MAX_CONNECTIONS`] at once,
/// [`HEADER_TIMEOUT`] for a request to arrive and [`CONNECTION_DEADLINE`] for the whole exchange. A failing
/// `accept` backs off instead of spinning; when it fails for want of descriptors the oldest connection is closed.
pub async fn serve(listener: TcpListener, app: Router, cancel: CancellationToken) {
    let connections = Arc::new(Mutex::new(Connections::default()));
    // A place per connection, given back only after its socket is closed: descriptors stay within the cap + 1.
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let evict_oldest = |connections: &Mutex<Connections>| {
        let mut c = connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, oldest)) = c.open.pop_first() {
            oldest.cancel();
        }
    };
    let mut accept_failures: u32 = 0;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_failures = 0;
                stream
            }
            Err(e) => {
                accept_failures = accept_failures.saturating_add(1);
                if accept_failures == 1 || accept_failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = accept_failures, "accepting a connection on the HTTP listener failed; backing off");
                }
                // Out of descriptors: the oldest connection gives its one back, so that a probe still gets in.
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    evict_oldest(&connections);
                }
                let wait = accept_backoff(accept_failures);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let place = match places.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the cap: the oldest connection goes, and this one waits until its socket is closed.
                evict_oldest(&connections);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = places.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let (id, closed) = {
            let mut c = connections.lock().unwrap_or_else(|p| p.into_inner());
            c.next_id += 1;
            let id = c.next_id;
            let closed = cancel.child_token();
            c.open.insert(id, closed.clone());
            (id, closed)
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connections = connections.clone();
        tokio::spawn(async move {
            let _place = place;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_DEADLINE, conn) => {}
            }
            connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
        });
    }
}

/// 10 ms doubling to 1 s: a listener that cannot accept (EMFILE) waits for descriptors to free up.
pub fn accept_backoff(failures: u32) -> Duration {
    (Duration::from_millis(10) * 2u32.saturating_pow(failures.saturating_sub(1).min(7)))
        .min(Duration::from_secs(1))
}
