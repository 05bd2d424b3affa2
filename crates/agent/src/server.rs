//! Health endpoints for the kubelet: `/livez` (alias `/healthz`: the process is alive), `/startupz` and
//! `/readyz` (every model is published: with the agent as a native sidecar whose startup probe
//! is `/startupz`, the main container starts only once its models are on disk), and `/status`
//! (JSON per model, errors redacted).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::agent::{self, StatusMap};

/// The router.
pub fn router(status: StatusMap) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .route("/startupz", get(readiness))
        .route("/status", get(status_json))
        .with_state(status)
}

async fn readiness(State(status): State<StatusMap>) -> (StatusCode, &'static str) {
    if agent::ready(&status) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "models not published yet (see /status)",
        )
    }
}

async fn status_json(
    State(status): State<StatusMap>,
) -> Json<std::collections::BTreeMap<String, agent::ModelStatus>> {
    Json(status.lock().unwrap_or_else(|p| p.into_inner()).clone())
}
