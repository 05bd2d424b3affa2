//! The repository (admin) endpoints, `POST /v2/repository/models/{m}/load|unload`, and the
//! one admin rule both protocols apply: off unless `--admin`; then a bearer token when one is
//! configured, else loopback peers only (the agent in the same pod).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;

use crate::http::error::ApiError;
use crate::http::routes::AppState;

/// The repository endpoints' gate: off unless `--admin`; then a bearer token when one is
/// configured, else loopback peers only.
fn admin(s: &AppState, parts: &Parts) -> Result<(), ApiError> {
    admit_admin(
        s,
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    )
}

/// The admin rule for both protocols: `authorization` is the request's `Authorization` value
/// (HTTP header, gRPC metadata), `peer` the client's address.
pub(crate) fn admit_admin(
    s: &AppState,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let forbidden = |m: &str| Err(ApiError::new(StatusCode::FORBIDDEN, m.to_owned()));
    if !s.config.admin {
        return forbidden(
            "repository endpoints are disabled; start the server with --admin (and keep it on localhost)",
        );
    }
    match &s.config.admin_token {
        Some(token) => {
            let given = authorization
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "repository endpoints need `Authorization: Bearer <admin token>`",
                ))
            }
        }
        None => {
            let local = peer.is_some_and(|p| p.ip().is_loopback());
            if local {
                Ok(())
            } else {
                forbidden(
                    "repository endpoints answer loopback clients only (or set an admin token)",
                )
            }
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads `model` on a blocking thread (loading reads, hashes and compiles the model).
pub(crate) async fn load_model(s: &AppState, model: String) -> Result<(), ApiError> {
    on_repository(s, move |repo| repo.load(&model).map(drop)).await
}

/// Drains and unloads `model` on a blocking thread (draining waits for its queue).
pub(crate) async fn unload_model(s: &AppState, model: String) -> Result<(), ApiError> {
    on_repository(s, move |repo| repo.unload(&model)).await
}

/// Runs a repository change on a blocking thread, its error mapped as the runtime's errors are.
async fn on_repository(
    s: &AppState,
    change: impl FnOnce(&crate::Repository) -> crate::Result<()> + Send + 'static,
) -> Result<(), ApiError> {
    let repo = Arc::clone(&s.repo);
    tokio::task::spawn_blocking(move || change(&repo))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(())
}

/// Loads the version the model's `current` names now, lifting an admin unload (the agent
/// calls this after publishing): 200 once it serves, 404 for a model not published, the load
/// error's status (500 for a corrupt or unloadable version) when it did not load.
pub(crate) async fn load(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    parts: Parts,
) -> Result<StatusCode, ApiError> {
    admin(&s, &parts)?;
    load_model(&s, model).await?;
    Ok(StatusCode::OK)
}

/// Drains and unloads a model; it stays unloaded (listed, state `unloaded`, not counted
/// against readiness) until an admin load or a new `current`.
pub(crate) async fn unload(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    parts: Parts,
) -> Result<StatusCode, ApiError> {
    admin(&s, &parts)?;
    unload_model(&s, model).await?;
    Ok(StatusCode::OK)
}
