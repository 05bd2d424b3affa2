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

/// The router; `/metrics` is served when `telemetry` is given.
pub fn router(status: StatusMap, telemetry: Option<Arc<PrometheusTelemetry>>) -> Router {
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .route("/startupz", get(readiness))
        .route("/status", get(status_json))
        .with_state(status);
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
