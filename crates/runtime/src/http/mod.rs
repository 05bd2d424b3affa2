//! `kiln::http` (feature `http`): the Open Inference Protocol v2 — the REST and gRPC protocols
//! of KServe and Triton — over a [`Repository`](crate::Repository), as axum `Router`s a
//! service mounts on its own app, beside its own routes and under its own middleware.
//! `kiln-server` (`examples/server`) is a thin binary over this module.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kiln::http::axum::{routing::get, Router};
//! use kiln::http::{AppState, ServeOptions, ServerConfig};
//! use kiln::{Repository, RepositoryConfig, Runtime, RuntimeConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(&RuntimeConfig::default())?;
//! let meter = kiln::otel::global::meter("my-service");
//! let repo = Arc::new(Repository::new(runtime, RepositoryConfig::new("/models"), meter.clone()));
//! repo.scan()?;
//! let state = Arc::new(AppState::new(repo, ServerConfig::default(), None, &meter));
//! let app = Router::new()
//!     .route("/hello", get(|| async { "mine" }))
//!     .merge(kiln::http::router(Arc::clone(&state)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! // Header-read timeout, connection cap; drains open connections on SIGTERM.
//! kiln::http::serve(listener, app, ServeOptions::default(), kiln::http::terminated()).await;
//! # Ok(()) }
//! ```
//!
//! [`router`] is REST (`/v2/...`, `/metrics`), to merge into an app of one's own;
//! [`standalone_router`] is the same with a fallback for unknown paths, to serve alone;
//! [`grpc::router`] is `GRPCInferenceService` and `grpc.health.v1` (HTTP/2; on its own
//! listener, as Triton's 8001). Both take the same
//! inference path, limits and error rule. [`serve()`] is the accept loop `kiln-server` uses
//! (header-read timeout, connection cap, graceful drain): prefer it to `axum::serve`, which
//! has neither, so clients trickling their headers can hold connections forever.
//! [`shutdown::Shutdown`] stops a service as a pod is stopped: readiness false
//! ([`AppState::draining`]) while inference goes on through a drain delay, then the
//! listeners close ([`AppState::closing`]), all within one budget.
//!
//! # Layout
//! - [`protocol`]: the v2 JSON request/response types and their conversion to kiln tensors.
//! - `json_data` (private): a tensor's JSON `data` read into a typed vector and written from
//!   one, with no `serde_json::Value` per element.
//! - `json_numbers` (private): its fast path, arrays of numbers scanned without serde.
//! - `json_cut` (private): the inputs' `data` arrays found and left out of serde's parse.
//! - `json_fields` (private): `parameters` and `shape` read without keeping what kiln does not
//!   use.
//! - `decode` (private): request bodies read into one buffer, then decoded off the tokio
//!   workers within a memory budget.
//! - `body_pool` (private): the buffers bodies are read into, kept for the next body.
//! - `compression` (private): gzip and deflate request and response bodies, as Triton's
//!   clients send and ask for them.
//! - [`error`]: one error type and its HTTP mapping (400, 404, 413, 429 + `Retry-After`, 503,
//!   504).
//! - [`mod@serve`]: the accept loop (header-read timeout, connection cap, graceful drain).
//! - `send_timeout` (private): connections whose client stops taking its answers, closed.
//! - [`shutdown`]: stopping as a pod is stopped (drain delay, then listeners, then models),
//!   within one budget.
//! - [`routes`]: the REST endpoints, HTTP metrics.
//! - `models` (private): what both protocols ask about models (lookup, metadata, readiness).
//! - `admin` (private): the repository endpoints and the one admin rule.
//! - [`grpc`]: the same protocol over gRPC, and `grpc.health.v1`.
//! - `infer` (private): the one inference path both protocols take.
//! - `model_config` (private): a model's configuration in Triton's schema.
//! - `stats` (private): Triton's statistics and repository index.
//! - `unserved` (private): what a client asking for something not served is told (Triton's
//!   shared-memory, logging and trace extensions; unknown paths and methods), both protocols.
//! - `v1` (private): KServe's v1 protocol (`/v1/models/{m}:predict`, `GET /`), what a KServe
//!   transformer calls its predictor with by default, its bodies as tensors and back.

mod admin;
mod body_pool;
mod classify;
mod compression;
mod decode;
pub mod error;
pub mod grpc;
mod idle;
mod infer;
mod json_cut;
mod json_data;
mod json_fields;
mod json_numbers;
mod model_config;
mod models;
pub mod protocol;
pub mod routes;
mod send_timeout;
pub mod serve;
pub mod shutdown;
mod stats;
mod unserved;
mod v1;

/// The axum these routers are built with: mount them on a `kiln::http::axum::Router` (or
/// the same axum version) without naming another.
pub use axum;
pub use error::ApiError;
/// The tonic and prost the gRPC service is built with: `grpc::status` takes and returns tonic
/// types and the `grpc::pb` messages are prost messages.
pub use prost;
pub use routes::{router, standalone_router, AppState, ServerConfig, TIMEOUT_HEADER};
pub use serve::{serve, terminated, ServeOptions};
pub use tonic;

/// Asserts that README says `stated` (runs of whitespace read as one space): a limit README
/// gives is the constant's value.
#[cfg(test)]
pub(crate) fn assert_readme_states(stated: &str) {
    let readme = include_str!("../../../../README.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(readme.contains(stated), "README should say: {stated}");
}
