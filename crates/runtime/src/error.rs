//! The one error type of `kiln`.
//!
//! Every variant carries the context a caller needs to act (model, input name, expected and
//! actual values, path, digest) and its message says what to change. Load-time errors never
//! wrap an `ort::Error` created before ONNX Runtime is loaded: `ort` panics in that case, so
//! the library search reports through [`LibraryAttempt`]s of our own.

use std::path::PathBuf;

use crate::checksum::Digest;
use crate::tensor::ElementType;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One place the runtime looked for the ONNX Runtime shared library, and why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryAttempt {
    /// Where the candidate came from (`config`, `ORT_DYLIB_PATH`, `KILN_ORT_DIR`, ...).
    pub source: &'static str,
    /// The file (or bare library name, for the system loader) that was tried.
    pub path: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

impl std::fmt::Display for LibraryAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.path.display(),
            self.source,
            self.reason
        )
    }
}

fn list_attempts(attempts: &[LibraryAttempt]) -> String {
    attempts.iter().map(|a| format!("\n  - {a}")).collect()
}

/// Everything that can go wrong in `kiln`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No candidate location held a usable ONNX Runtime library.
    #[error(
        "ONNX Runtime shared library not found; tried:{}\nfix: run `make ort` (or scripts/fetch-ort.sh cpu) and set KILN_ORT_DIR=.cache/ort/cpu, \
         or point ORT_DYLIB_PATH at libonnxruntime.so (version 1.23 or newer)",
        list_attempts(.attempts)
    )]
    LibraryNotFound {
        /// Each location tried, in order, with the reason it failed.
        attempts: Vec<LibraryAttempt>,
    },

    /// ONNX Runtime is already loaded in this process from another file.
    #[error(
        "ONNX Runtime is already loaded from {loaded}; cannot load {requested} as well (one library per process)"
    )]
    LibraryAlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The library this call asked for.
        requested: PathBuf,
    },

    /// ONNX Runtime loaded but could not set up its environment.
    #[error("ONNX Runtime environment could not be created: {source}")]
    Environment {
        /// The ONNX Runtime error.
        #[source]
        source: ort::Error,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field, as spelled in the config.
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// The model's bytes do not hash to the expected digest; nothing was loaded.
    #[error(
        "checksum mismatch for {path}: expected sha256 {expected}, got {actual}; the file is corrupt, \
         truncated or a different version: fetch it again or fix the expected digest"
    )]
    ChecksumMismatch {
        /// The model file.
        path: PathBuf,
        /// The digest the caller or manifest expected.
        expected: Digest,
        /// The digest of the bytes read.
        actual: Digest,
    },

    /// The model's signature bundle was refused, or its directory is not what was signed;
    /// nothing was loaded.
    #[error("signature check failed for {path}: {source}")]
    Signature {
        /// The model file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: crate::signing::SignatureError,
    },

    /// The file's size differs from the size its manifest records; nothing was loaded.
    #[error("size mismatch for {path}: manifest says {expected} bytes, file has {actual}")]
    SizeMismatch {
        /// The model file.
        path: PathBuf,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },

    /// No expected digest was given and no manifest lists the file.
    #[error(
        "no expected checksum for {path}: {reason}; pass Checksum::Sha256(..), place a kiln-manifest.json \
         listing the file next to it, or waive verification explicitly with Checksum::Skip"
    )]
    ChecksumRequired {
        /// The model file.
        path: PathBuf,
        /// Why the manifest could not supply one.
        reason: String,
    },

    /// A model's external data reference cannot be served: a location outside the model's
    /// directory, or a model whose bytes cannot be scanned for references.
    #[error("model {path}: external data {location:?}: {reason}")]
    ExternalData {
        /// The model file.
        path: PathBuf,
        /// The location as the model names it (empty when the scan itself failed).
        location: String,
        /// What is wrong.
        reason: String,
    },

    /// A label file beside the model (`labels/<output>.txt`, [`crate::labels`]) cannot be
    /// served: it names no output, is not UTF-8, or is not a file.
    #[error("label file {path}: {reason}")]
    InvalidLabels {
        /// The label file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A manifest file exists but cannot be used.
    #[error("invalid manifest {path}: {reason}")]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A sha256 digest string is not 64 hex characters.
    #[error("invalid sha256 digest {input:?}: expected 64 hexadecimal characters")]
    InvalidDigest {
        /// The rejected text.
        input: String,
    },

    /// ONNX Runtime rejected the model bytes (malformed, truncated, unsupported operator).
    #[error("ONNX Runtime cannot load model {path}: {source}")]
    InvalidModel {
        /// The model file.
        path: PathBuf,
        /// The ONNX Runtime error.
        #[source]
        source: ort::Error,
    },

    /// The model uses an input or output kind kiln does not serve (maps, sequences other than
    /// a classifier's ZipMap output, unsupported element types).
    #[error("model {model}: {what} `{name}` has type {ty}, which kiln does not support")]
    UnsupportedModel {
        /// Model name.
        model: String,
        /// `input` or `output`.
        what: &'static str,
        /// Input or output name.
        name: String,
        /// The type ONNX Runtime reports.
        ty: String,
    },

    /// The requested execution provider could not be used and the fallback policy forbids CPU.
    #[error(
        "model {model}: execution provider {provider} unavailable: {reason}; install the GPU build \
         (`make ort-gpu`) and CUDA, or allow CPU fallback"
    )]
    ProviderUnavailable {
        /// Model name.
        model: String,
        /// The provider requested (e.g. `CUDA:0`).
        provider: String,
        /// What ONNX Runtime said.
        reason: String,
    },

    /// The request names an input the model does not have.
    #[error("model {model}: unknown input `{name}`; the model's inputs are {expected:?}")]
    UnknownInput {
        /// Model name.
        model: String,
        /// The unknown name.
        name: String,
        /// The model's input names.
        expected: Vec<String>,
    },

    /// The request lacks one of the model's inputs.
    #[error("model {model}: missing input `{name}`")]
    MissingInput {
        /// Model name.
        model: String,
        /// The missing input.
        name: String,
    },

    /// The request gives the same input twice.
    #[error("model {model}: input `{name}` given more than once")]
    DuplicateInput {
        /// Model name.
        model: String,
        /// The repeated input.
        name: String,
    },

    /// An input has the wrong element type.
    #[error("model {model}: input `{name}` must be {expected}, got {actual}")]
    DtypeMismatch {
        /// Model name.
        model: String,
        /// Input name.
        name: String,
        /// Element type the model declares.
        expected: ElementType,
        /// Element type of the request's tensor.
        actual: ElementType,
    },

    /// An input has the wrong number of dimensions, or a fixed dimension differs.
    #[error("model {model}: input `{name}` must have shape {}, got {actual:?}", show_dims(.expected))]
    ShapeMismatch {
        /// Model name.
        model: String,
        /// Input name.
        name: String,
        /// Declared dims; `None` is a dynamic dim.
        expected: Vec<Option<i64>>,
        /// The request's dims.
        actual: Vec<usize>,
    },

    /// Batched inputs disagree on their batch size (dim 0).
    #[error("model {model}: inputs disagree on batch size (dim 0): `{first}` has {first_rows}, `{name}` has {rows}")]
    BatchMismatch {
        /// Model name.
        model: String,
        /// The first input.
        first: String,
        /// Its rows.
        first_rows: usize,
        /// The input that disagrees.
        name: String,
        /// Its rows.
        rows: usize,
    },

    /// An input holds more elements than the configured cap (a zero dim counted as one: it
    /// leaves no elements, but the other dims still size what the model builds from them).
    #[error("model {model}: input `{name}` has {elements} elements, over the limit of {limit} (max_input_elements)")]
    InputTooLarge {
        /// Model name.
        model: String,
        /// Input name.
        name: String,
        /// Elements in the request's tensor, a zero dim counted as one.
        elements: usize,
        /// The configured cap.
        limit: usize,
    },

    /// A tensor's data length does not match its shape.
    #[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
    TensorShape {
        /// The shape given.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        len: usize,
    },

    /// Raw tensor bytes do not match the shape and element type.
    #[error("tensor data has {len} bytes but shape {shape:?} of {element_type} needs {}", expected.map_or_else(|| "more than fits in memory".to_owned(), |n| n.to_string()))]
    TensorBytes {
        /// The element type given.
        element_type: crate::tensor::ElementType,
        /// The shape given.
        shape: Vec<usize>,
        /// Bytes the shape needs (`None`: more than fits in memory).
        expected: Option<usize>,
        /// Bytes given.
        len: usize,
    },

    /// A string tensor's data is not what a string tensor can hold: byte form that does not
    /// parse (each element a 4-byte little-endian length, then that many bytes), text that
    /// is not UTF-8, or a NUL byte (ONNX Runtime's strings end at one).
    #[error("string tensor element {index}: {reason}")]
    TensorString {
        /// The element (row-major) at fault, or the count read when the data ran out.
        index: usize,
        /// What is wrong.
        reason: String,
    },

    /// A tensor was read as the wrong element type.
    #[error("tensor holds {actual}, not {expected}")]
    TensorType {
        /// The type asked for.
        expected: ElementType,
        /// The type held.
        actual: ElementType,
    },

    /// The model's queue is full: retry after `retry_after` (HTTP 429).
    #[error(
        "model {model}: overloaded ({queued_requests} requests, {queued_bytes} bytes queued); retry in {} ms",
        .retry_after.as_millis()
    )]
    Overloaded {
        /// Model name.
        model: String,
        /// Requests waiting when this one was refused.
        queued_requests: usize,
        /// Bytes of input waiting.
        queued_bytes: usize,
        /// When a retry is likely to be admitted, from the recent drain rate.
        retry_after: std::time::Duration,
    },

    /// The request's deadline passed before it could run; it never reached the model (HTTP 504).
    #[error("model {model}: deadline exceeded after {} ms in the queue", .waited.as_millis())]
    DeadlineExceeded {
        /// Model name.
        model: String,
        /// How long it waited.
        waited: std::time::Duration,
    },

    /// A request carries more rows than one batch may hold (HTTP 400).
    #[error("model {model}: request has {rows} rows, over max_batch_size {max}; split it into smaller requests")]
    BatchTooLarge {
        /// Model name.
        model: String,
        /// Rows in the request.
        rows: usize,
        /// The model's `max_batch_size`.
        max: usize,
    },

    /// A request's inputs are larger than the whole queue may hold (HTTP 413).
    #[error("model {model}: request holds {bytes} bytes of input in memory, over max_queue_bytes {limit}")]
    RequestTooLarge {
        /// Model name.
        model: String,
        /// Input bytes the request holds in memory (`Tensor::memory_len`).
        bytes: usize,
        /// The queue's byte capacity.
        limit: usize,
    },

    /// The model is not accepting requests (loading, draining, unloaded or failed; HTTP 503).
    #[error("model {model}: not accepting requests ({state})")]
    Unavailable {
        /// Model name.
        model: String,
        /// Its state.
        state: String,
    },

    /// The repository has no model by this name: no `<root>/<model>` directory whose
    /// `current` link points at a version directory (HTTP 404).
    #[error(
        "model `{model}` is not published under {}: {reason}; check the name, or publish it \
         (`<root>/<model>/<version>/` with its manifest, and the `current` link)",
        .root.display()
    )]
    ModelNotFound {
        /// The name asked for.
        model: String,
        /// The repository root.
        root: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A request asked for a version of a model other than the one serving
    /// ([`crate::ModelHandle::infer_at`]; HTTP 404).
    #[error("model `{model}` has no version `{version}` serving (serving: {})", .serving.as_deref().unwrap_or("none"))]
    VersionNotServing {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
        /// The version serving, if any.
        serving: Option<String>,
    },

    /// A request asked for a priority level the model does not have.
    #[error("model {model}: priority {priority} out of range (levels 0..{levels})")]
    InvalidPriority {
        /// Model name.
        model: String,
        /// The priority given.
        priority: usize,
        /// Levels configured.
        levels: usize,
    },

    /// The model's outputs cannot be split back per request (an output lacks the batch rows).
    #[error("model {model}: output `{output}` has shape {shape:?}, expected {rows} rows along dim 0 to split the batch")]
    BatchSplit {
        /// Model name.
        model: String,
        /// Output name.
        output: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Rows in the batch.
        rows: usize,
    },

    /// A configured warm-up sample (`warmup_samples`) failed: the version does not load.
    #[error(
        "model {model}: warm-up sample {sample:?} with input shapes {shapes:?} failed: {source}"
    )]
    WarmupFailed {
        /// Model name.
        model: String,
        /// The sample's name.
        sample: String,
        /// Each input's name and shape.
        shapes: Vec<(String, Vec<usize>)>,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// An output listed in `padding.trim_outputs` cannot be trimmed back to a request's
    /// length: it has no such dim, or fewer positions than the request's input had.
    #[error("model {model}: output `{output}` has shape {shape:?}, which cannot be cut to {len} along dim {dim}; list in padding.trim_outputs only outputs whose dim follows the padded input's length")]
    TrimMismatch {
        /// Model name.
        model: String,
        /// Output name.
        output: String,
        /// The dim to trim.
        dim: usize,
        /// The output's shape.
        shape: Vec<usize>,
        /// The request's length.
        len: usize,
    },

    /// The worker running the request stopped without answering (a bug; reported, not hidden).
    #[error("model {model}: the inference worker stopped without answering: {reason}")]
    WorkerLost {
        /// Model name.
        model: String,
        /// What is known.
        reason: String,
    },

    /// ONNX Runtime failed while running the model.
    #[error("model {model}: inference failed: {source}")]
    Inference {
        /// Model name.
        model: String,
        /// The ONNX Runtime error.
        #[source]
        source: ort::Error,
    },
}

/// What an error means to whoever sent the request: one classification for every caller
/// (metrics outcomes, HTTP status codes), so it is written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed for this model (names, types, shapes, rows, priority).
    InvalidRequest,
    /// The request is over a size limit (`max_input_elements`, `max_queue_bytes`).
    TooLarge,
    /// The queue is full; retrying later may succeed.
    Overloaded,
    /// The request's deadline passed before it ran.
    DeadlineExceeded,
    /// The model is not accepting requests (loading, draining, unloaded).
    Unavailable,
    /// The model asked for does not exist.
    NotFound,
    /// Anything else: loading, verification, configuration, ONNX Runtime failures.
    Other,
}

impl Error {
    /// The error's [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownInput { .. }
            | Self::MissingInput { .. }
            | Self::DuplicateInput { .. }
            | Self::DtypeMismatch { .. }
            | Self::ShapeMismatch { .. }
            | Self::BatchMismatch { .. }
            | Self::BatchTooLarge { .. }
            | Self::TensorShape { .. }
            | Self::TensorBytes { .. }
            | Self::TensorString { .. }
            | Self::TensorType { .. }
            | Self::InvalidPriority { .. } => ErrorKind::InvalidRequest,
            Self::InputTooLarge { .. } | Self::RequestTooLarge { .. } => ErrorKind::TooLarge,
            Self::Overloaded { .. } => ErrorKind::Overloaded,
            Self::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::ModelNotFound { .. } | Self::VersionNotServing { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Other,
        }
    }
}

fn show_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_owned(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}
