//! `kiln`: verified ONNX model loading and inference on ONNX Runtime.
//!
//! A model loads only after the SHA-256 of the exact bytes handed to ONNX Runtime matches the
//! digest the caller gives, or the one in the `kiln-manifest.json` beside it; verification is
//! on unless the caller waives it. ONNX Runtime itself is a shared library found at run time,
//! so nothing downloads at build time.
//!
//! ```no_run
//! use kiln::{Checksum, Model, ModelOptions, Runtime, RuntimeConfig, Tensor};
//!
//! # fn main() -> Result<(), kiln::Error> {
//! let runtime = Runtime::new(&RuntimeConfig::default())?;
//! let digest = "4f0d...".parse()?;
//! let mut model = Model::load(&runtime, "model.onnx", &ModelOptions::new().with_checksum(Checksum::Sha256(digest)))?;
//! let x = Tensor::new([1, 16], vec![0.5f32; 16])?;
//! let outputs = model.run(&[("x".to_owned(), x)])?;
//! println!("{:?}", outputs[0].1.shape());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`runtime`]: finds and loads the ONNX Runtime library once per process ([`Runtime`]).
//! - [`checksum`]: SHA-256 digests and the read-once, hash-while-reading loader.
//! - [`manifest`]: the `kiln-manifest.json` format the agent writes.
//! - [`memory`]: glibc malloc tuning that keeps resident memory flat across hot swaps.
//! - [`layout`]: the model repository's directory layout, shared with the agent.
//! - [`config`]: load options and ONNX Runtime session settings, validated.
//! - [`device`]: execution providers, fallback policy, and where the graph really runs.
//! - [`tensor`]: owned typed tensors.
//! - [`metadata`]: a model's signature and request validation.
//! - [`model`]: a loaded model and single-request inference.
//! - [`repository`]: serves every model published under a root, hot-swapping versions,
//!   retrying failed ones with backoff; admin load and unload.
//! - [`signing`]: OpenSSF model-signing bundles verified against a key or CA certificates.
//! - [`batch`]: dynamic batching, admission, deadlines, lifecycle and hot swap, metrics.
//! - [`error`]: the crate's error type.
//! - `prometheus` (feature `prometheus`): the Prometheus text exporter for these metrics.
//! - `http` (feature `http`): the Open Inference Protocol v2 (REST and gRPC) as axum routers
//!   a service mounts, and the accept loop `kiln-server` serves them with.

pub mod batch;
mod borrowed;
pub mod checksum;
pub mod config;
pub mod device;
pub mod error;
mod external;
#[cfg(feature = "http")]
pub mod http;
pub mod labels;
pub mod layout;
pub mod manifest;
pub mod memory;
pub mod metadata;
pub mod model;
mod ort_strings;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod repository;
pub mod runtime;
pub mod signing;
pub mod tensor;
mod wire;
mod zipmap;

// The crates whose types appear in kiln's public signatures, so callers name the same
// versions without adding them: `kiln::ndarray::ArrayD`, `kiln::half::f16`,
// `kiln::otel::metrics::Meter`, `kiln::tokio::sync::oneshot::Receiver` (what
// `ModelHandle::submit` returns) and `kiln::tokio::net::TcpListener` (what `kiln::http::serve`
// takes).
pub use half;
pub use ndarray;
pub use opentelemetry as otel;
pub use tokio;

pub use batch::{
    Answered, BatchConfig, InferRequest, ModelHandle, ModelState, ModelStatus, RequestOf,
    ViewRequest,
};
pub use borrowed::TensorView;

/// README's Rust examples compile (`cargo test --workspace --doc`, where `kiln-server` turns
/// feature `http` on for the `kiln::http` example): docs match the API.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
pub use checksum::{Checksum, Digest, SignatureCheck};
pub use config::{ModelOptions, OptimizationLevel, SessionConfig};
pub use device::{Device, Fallback, Provider, ProviderReport, ReportSource};
pub use error::{Error, ErrorKind, LibraryAttempt, Result};
pub use manifest::{Manifest, ManifestFile};
pub use metadata::{ModelMetadata, TensorInfo};
pub use model::{ByName, Model, NamedTensors};
pub use repository::{LoadOutcome, Readiness, Repository, RepositoryConfig, ScanReport};
pub use runtime::{LibraryInfo, Runtime, RuntimeConfig, ThreadPoolConfig};
pub use tensor::{Element, ElementType, Item, Tensor, TensorData, TensorSlice};
