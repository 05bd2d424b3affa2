//! The agent's error type. Every message is redacted (no credentials, no signed query strings)
//! and says what to fix; [`AgentError::is_transient`] decides what is retried.

use std::path::PathBuf;

use kiln::Digest;

/// Result alias.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Everything that can go wrong while fetching and publishing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid configuration `{field}`: {reason}")]
    Config {
        /// The field, e.g. `models[0].sha256`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The object does not exist (fail fast: fix the source URI).
    #[error("{model}: {url} not found; check the source URI and the version")]
    NotFound {
        /// Model name.
        model: String,
        /// Redacted URL.
        url: String,
    },
    /// The store refused our credentials (fail fast: fix credentials or permissions).
    #[error("{model}: access to {url} denied ({detail}); check the credentials in the environment, the workload identity and the bucket policy")]
    Denied {
        /// Model name.
        model: String,
        /// Redacted URL.
        url: String,
        /// Redacted store message.
        detail: String,
    },
    /// The object changed while it was being downloaded (its ETag no longer matches).
    #[error("{model}: {url} changed during the download; will start over on the new version")]
    Changed {
        /// Model name.
        model: String,
        /// Redacted URL.
        url: String,
    },
    /// A transient store or network failure, after retries.
    #[error("{model}: fetching {url} failed: {detail}")]
    Store {
        /// Model name.
        model: String,
        /// Redacted URL.
        url: String,
        /// Redacted store message.
        detail: String,
        /// Whether retrying may help.
        transient: bool,
    },
    /// The bytes do not hash to the configured digest (fail fast; nothing is published).
    #[error("{model}: {path} has sha256 {actual}, expected {expected}: the object in the store is not the configured version; fix `sha256` or the source")]
    DigestMismatch {
        /// Model name.
        model: String,
        /// File path within the version.
        path: String,
        /// Configured digest.
        expected: Digest,
        /// Digest of the downloaded bytes.
        actual: Digest,
    },
    /// The model's signature bundle was refused, or the files are not the signed ones
    /// (nothing is published; a version already serving stays).
    #[error("{model}: signature refused: {source}")]
    Signature {
        /// Model name.
        model: String,
        /// What failed.
        #[source]
        source: kiln::signing::SignatureError,
    },
    /// An OCI archive layer that cannot be unpacked safely (nothing of it is published).
    #[error("{model}: layer {layer} refused: {detail}")]
    Archive {
        /// Model name.
        model: String,
        /// The layer's digest.
        layer: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The size differs from the configured or advertised size.
    #[error("{model}: {path} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// Model name.
        model: String,
        /// File path.
        path: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// Not enough free space for the download (checked before starting, and on ENOSPC).
    #[error("{model}: not enough disk space in {dir}: {needed} bytes needed (plus reserve), {available} free; raise the emptyDir sizeLimit or free space")]
    DiskFull {
        /// Model name.
        model: String,
        /// The directory.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A listed object's key cannot be a file inside the version (`..`, an absolute or empty
    /// path, the manifest's name, a symbolic link): the whole listing is refused.
    #[error("{model}: refusing the listing of {url}: key {key:?} {reason}; remove it from the prefix or list the files explicitly")]
    UnsafeKey {
        /// Model name.
        model: String,
        /// Redacted prefix URL.
        url: String,
        /// The offending key, relative to the prefix.
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A local filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The health and status endpoints cannot listen (`listen`, `KILN_AGENT_LISTEN`).
    #[error("cannot listen on {addr}: {source}; choose a free `listen` address")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics exporter could not be set up.
    #[error("the metrics exporter could not be set up: {detail}")]
    Telemetry {
        /// What the exporter said.
        detail: String,
    },
}

impl AgentError {
    /// Whether retrying after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store { transient, .. } => *transient,
            // Retrying the same pinned request cannot succeed: the sync reads the object's
            // metadata again instead (`Agent::sync_and_record`).
            Self::Changed { .. } => false,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::Interrupted,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
