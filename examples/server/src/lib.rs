//! `kiln-server`: an Open Inference Protocol v2 server (the REST and gRPC protocols of KServe
//! and Triton) on the `kiln` library, serving every model published under a repository root (the
//! directory `kiln-agent` fills), with dynamic batching and hot swaps from the runtime.
//!
//! # Layout
//! - [`config`]: the model settings file (session and per-model batching).
//! - [`protocol`]: the v2 JSON request/response types and their conversion to kiln tensors.
//! - `json_data` (private): a tensor's JSON `data` read into a typed vector and written from
//!   one, with no `serde_json::Value` per element.
//! - `json_fields` (private): `parameters` and `shape` read without keeping what kiln does not
//!   use.
//! - `decode` (private): request bodies read into one buffer, then decoded off the tokio
//!   workers within a memory budget.
//! - [`error`]: one error type and its HTTP mapping (400, 404, 413, 429 + `Retry-After`, 503,
//!   504).
//! - [`mod@serve`]: the accept loop (header-read timeout, connection cap, graceful drain).
//! - [`routes`]: the REST endpoints, HTTP metrics.
//! - `models` (private): what both protocols ask about models (lookup, metadata, readiness).
//! - `admin` (private): the repository endpoints and the one admin rule.
//! - [`grpc`]: the same protocol over gRPC, and `grpc.health.v1`.
//! - `infer` (private): the one inference path both protocols take.
//! - `model_config` (private): a model's configuration in Triton's schema.
//! - `stats` (private): Triton's statistics and repository index.

mod admin;
pub mod config;
mod decode;
pub mod error;
pub mod grpc;
mod infer;
mod json_data;
mod json_fields;
mod model_config;
mod models;
pub mod plain;
pub mod protocol;
pub mod routes;
pub mod serve;
mod stats;

pub use config::ModelSettings;
pub use error::ApiError;
pub use routes::{router, AppState, ServerConfig, TIMEOUT_HEADER};
pub use serve::{serve, ServeOptions};
