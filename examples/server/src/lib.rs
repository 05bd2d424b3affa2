//! `kiln-server`: an Open Inference Protocol v2 server (the REST and gRPC protocols of KServe
//! and Triton) on the `kiln` library, serving every model published under a repository root (the
//! directory `kiln-agent` fills), with dynamic batching and hot swaps from the runtime.
//!
//! The protocol itself — routers, decoding, errors, the accept loop — is [`kiln::http`]; this
//! crate adds only what a standalone server needs beside it.
//!
//! # Layout
//! - [`allocator`]: mimalloc, set to hand freed memory back within a second.
//! - [`config`]: the model settings file (session and per-model batching).
//! - [`plain`]: one plain model directory (KServe's `/mnt/models`) staged as a repository.
//! - `main.rs`: flags, signals and the shutdown budget.

pub mod allocator;
pub mod config;
pub mod plain;

pub use config::ModelSettings;
