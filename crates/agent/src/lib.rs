//! `kiln-agent`: the sidecar that fetches model artifacts from object storage into the shared
//! model directory, verifies them, publishes them atomically and gates pod readiness.
//!
//! # Layout
//! - [`config`]: YAML configuration + environment overrides, validated once.
//! - [`redact`]: keeping credentials and signed URLs out of logs and errors.
//! - [`store`]: opening S3 / GCS / Azure / HTTP / local stores via `object_store`.
//! - `disk` (private): the one blocking boundary (hashing, writing, fsync on the blocking pool),
//!   free space and what a full disk looks like.
//! - `retry` (private): retry settings, classification of store errors, backoff with jitter.
//! - `fetch` (private): HEAD, listing, and [`ObjectFetch`](self): one object, one hashed stream.
//! - `writer` (private): hashing and writing a stream on its own thread, flushing early.
//! - [`parts`]: a large object's partial file, resume journal and in-order digest.
//! - [`transfer`]: how a large object travels (ranged parts or one stream, measured).
//! - [`signature`]: signed models (OpenSSF model-signing bundles) narrowed to the signed set.
//! - [`publish`](self): staging, manifest, atomic rename, `current` swap (private).
//! - [`agent`]: syncing every model; status.
//! - [`run()`]: the sidecar's life (endpoints, syncs, polling) until a shutdown future resolves.
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
pub mod oci;
pub mod parts;
mod publish;
pub mod redact;
mod retry;
mod run;
pub mod server;
pub mod signature;
pub mod store;
pub mod transfer;
mod writer;

pub use agent::{Agent, ModelStatus, Phase};
pub use config::{AgentConfig, Checked};
pub use error::{AgentError, Result};
pub use run::run;
