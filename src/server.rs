//! The HTTP endpoints on `listen` (SPEC §6): `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

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
}

pub fn readiness(board: &StatusBoard) -> Readiness {
    let now = crate::clock::now();
    let mut unhealthy = Vec::new();
    board.for_each(|s| {
        if let Some(reason) = s.unready_reason(now) {
            unhealthy.push(Unhealthy {
                token: s.name.clone(),
                reason,
            });
        }
    });
    Readiness {
        ready: unhealthy.is_empty(),
        unhealthy,
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
