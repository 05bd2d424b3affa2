//! `kiln-agent`: the sidecar that fetches model artifacts from object storage into the shared
//! model directory, verifies them, publishes them atomically and gates pod readiness.
//!
//! # Layout
//! - [`config`]: YAML configuration + environment overrides, validated once.
//! - [`redact`]: keeping credentials and signed URLs out of logs and errors.
//! - [`store`]: opening S3 / GCS / Azure / HTTP / local stores via `object_store`.
//! - `disk` (private): the one blocking boundary (hashing, writing, fsync on the blocking pool).
//! - [`fetch`](self): streamed, hashed, retried downloads (private).
//! - [`writer`](self): hashing and writing a stream on its own thread, flushing early (private).
//! - [`parts`]: parallel ranged downloads with a resume journal, for large objects.
//! - [`publish`](self): staging, manifest, atomic rename, `current` swap (private).
//! - [`agent`]: syncing every model; status.
//! - [`metrics`]: `kiln_agent_*` instruments and the Prometheus text export.
//! - [`gpu`]: NVML GPU metrics when a driver is present (silently off otherwise).
//! - [`server`]: `/livez`, `/readyz`, `/startupz`, `/status`, `/metrics`.
//! - [`main_server`]: the main container's readiness URL and load endpoint.
//! - [`error`]: the typed error.

pub mod agent;
pub mod config;
mod disk;
pub mod error;
mod fetch;
pub mod gpu;
pub mod main_server;
pub mod metrics;
pub mod parts;
mod publish;
pub mod redact;
pub mod server;
pub mod store;
mod writer;

pub use agent::{Agent, ModelStatus, Phase};
pub use config::{AgentConfig, Checked};
pub use error::{AgentError, Result};
