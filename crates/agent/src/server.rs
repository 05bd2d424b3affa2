//! Health endpoints for the kubelet: `/livez` (alias `/healthz`: the process is alive), `/startupz` and
//! `/readyz` (every model is published: with the agent as a native sidecar whose startup probe
//! is `/startupz`, the main container starts only once its models are on disk), and `/status`
//! (JSON per model, errors redacted), `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use std::sync::Arc;

use crate::agent::{self, StatusMap};
use crate::metrics::PrometheusTelemetry;

/// What the endpoints read.
#[derive(Clone)]
pub struct ServerState {
    /// Per-model status.
    pub status: StatusMap,
    /// The main container's readiness URL, if `/readyz` must also wait for it.
    pub main_ready: Option<url::Url>,
}

/// The router; `/metrics` is served when `telemetry` is given. `/startupz` looks at the
/// models only (the main container starts after it); `/readyz` also at `main_ready`, if set.
pub fn router(status: StatusMap, telemetry: Option<Arc<PrometheusTelemetry>>) -> Router {
    router_with(
        ServerState {
            status,
            main_ready: None,
        },
        telemetry,
    )
}

/// [`router`] with the full state.
pub fn router_with(state: ServerState, telemetry: Option<Arc<PrometheusTelemetry>>) -> Router {
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .route("/startupz", get(startup))
        .route("/status", get(status_json))
        .with_state(state);
    match telemetry {
        Some(t) => {
            router.route(
                "/metrics",
                get(move || async move {
                    ([("content-type", "text/plain; version=0.0.4")], t.render())
                }),
            )
        }
        None => router,
    }
}

async fn startup(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if agent::ready(&state.status) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "models not published yet (see /status)",
        )
    }
}

async fn readiness(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if !agent::ready(&state.status) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "models not published yet (see /status)",
        );
    }
    match &state.main_ready {
        Some(url) if !crate::main_server::ready(url).await => (
            StatusCode::SERVICE_UNAVAILABLE,
            "models published; the main container is not ready",
        ),
        _ => (StatusCode::OK, "ready"),
    }
}

async fn status_json(
    State(state): State<ServerState>,
) -> Json<std::collections::BTreeMap<String, agent::ModelStatus>> {
    Json(
        state
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    )
}
