//! The repository's settings and the reports of what its scans and admin loads did.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::batch::BatchConfig;
use crate::config::ModelOptions;

/// How the repository serves what it finds.
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    /// The repository root (the shared directory the agent publishes into).
    pub root: PathBuf,
    /// How often the watcher looks for changes. Default 2 s.
    pub poll_interval: Duration,
    /// Load options for every model (the checksum always comes from each version's manifest).
    pub options: ModelOptions,
    /// Batching for models without an entry in `per_model`.
    pub batch: BatchConfig,
    /// Batching per model name.
    pub per_model: HashMap<String, BatchConfig>,
    /// The wait before a failed version is tried again; it doubles with each failure in a
    /// row, up to `retry_max`. Default 5 s. Shorter recovers sooner from a transient failure
    /// (GPU out of memory) but spends more load attempts on a version that is simply broken;
    /// zero retries on every poll.
    pub retry_min: Duration,
    /// The longest wait between retries of a failed version (raised to `retry_min` if
    /// smaller). Default 5 min. An admin load or a new `current` retries at once regardless.
    pub retry_max: Duration,
    /// How long a model keeps serving while its `current` link is missing or dangling (its
    /// directory still there) before it is unloaded. Default 30 s: long enough for a
    /// publisher caught mid-update, short enough that a deliberate removal takes effect.
    pub current_grace: Duration,
}

impl RepositoryConfig {
    /// Defaults for everything but the root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            poll_interval: Duration::from_secs(2),
            options: ModelOptions::default(),
            batch: BatchConfig::default(),
            per_model: HashMap::new(),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            current_grace: Duration::from_secs(30),
        }
    }
}

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// `(model, version)` newly serving (first load, swap, or same-name republish).
    pub loaded: Vec<(String, String)>,
    /// `(model, version, error)` that failed to load.
    pub failed: Vec<(String, String, String)>,
    /// Models unloaded because their directory is gone, or their `current` link has been
    /// missing for longer than [`RepositoryConfig::current_grace`].
    pub removed: Vec<String>,
}

/// What [`Repository::load`](super::Repository::load) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The version `current` names was loaded now.
    Loaded(String),
    /// The version `current` names was already serving; nothing was loaded.
    AlreadyServing(String),
}
