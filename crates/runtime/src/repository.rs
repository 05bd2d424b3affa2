//! Serving every model the agent publishes: a watcher over the repository root (layout in
//! [`crate::layout`]) that loads each model's `current` version, hot-swaps when `current`
//! moves, and unloads models that disappear.
//!
//! Polling, not inotify: `current` is replaced by an atomic rename, which a poll of
//! `read_link` sees reliably on every filesystem an `emptyDir` can be (including network
//! and overlay filesystems where inotify is unreliable). The poll reads one symlink per model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::metrics::Meter;

use crate::batch::{BatchConfig, ModelHandle};
use crate::checksum::Checksum;
use crate::config::ModelOptions;
use crate::error::{Error, Result};
use crate::layout::{self, CURRENT_LINK};
use crate::manifest::Manifest;
use crate::runtime::Runtime;

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
        }
    }
}

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// `(model, version)` newly serving (first load or swap).
    pub loaded: Vec<(String, String)>,
    /// `(model, version, error)` that failed to load.
    pub failed: Vec<(String, String, String)>,
    /// Models unloaded because their directory or `current` link is gone.
    pub removed: Vec<String>,
}

/// The served models of one repository root.
pub struct Repository {
    runtime: Runtime,
    config: RepositoryConfig,
    meter: Meter,
    models: RwLock<BTreeMap<String, ModelHandle>>,
    /// Versions that failed, not retried until `current` points elsewhere.
    failed: RwLock<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.config.root)
            .field("models", &self.names())
            .finish()
    }
}

impl Repository {
    /// A repository with nothing loaded yet; call [`Repository::scan`] or
    /// [`Repository::watch`].
    pub fn new(runtime: Runtime, config: RepositoryConfig, meter: Meter) -> Self {
        Self {
            runtime,
            config,
            meter,
            models: RwLock::default(),
            failed: RwLock::default(),
        }
    }

    /// The model called `name`, if served.
    pub fn get(&self, name: &str) -> Option<ModelHandle> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the served models.
    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every served model.
    pub fn handles(&self) -> Vec<ModelHandle> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether every model found is serving (the readiness of a server that must serve all).
    pub fn all_ready(&self) -> bool {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        !models.is_empty() && models.values().all(ModelHandle::is_ready)
    }

    /// Looks at the root once: loads new models, swaps moved `current` links, unloads models
    /// that are gone.
    ///
    /// # Errors
    /// [`Error::Io`] if the root cannot be listed (per-model failures are in the report).
    pub fn scan(&self) -> Result<ScanReport> {
        let root = &self.config.root;
        let mut report = ScanReport::default();
        let mut found = HashSet::new();
        let entries = std::fs::read_dir(root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| layout::check_name("model", n).is_ok())
            .collect();
        names.sort();
        for name in names {
            let Some(version) = current_version(&root.join(&name)) else {
                continue;
            };
            found.insert(name.clone());
            let handle = self.get(&name);
            if handle
                .as_ref()
                .and_then(ModelHandle::current_version)
                .as_deref()
                == Some(version.as_str())
            {
                continue;
            }
            let key = (name.clone(), version.clone());
            if self.failed_before(&key) {
                continue;
            }
            let handle = handle.unwrap_or_else(|| {
                let h = ModelHandle::new(name.clone(), self.meter.clone());
                self.models
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), h.clone());
                h
            });
            match self.load_version(&handle, &name, &version) {
                Ok(()) => report.loaded.push(key),
                Err(e) => {
                    report
                        .failed
                        .push((name.clone(), version.clone(), e.to_string()));
                    self.mark_failed(key);
                    // Nothing serving (a fresh start on a bad `current`): fall back to the
                    // newest older version that loads, so the model is served while the
                    // publisher fixes `current`. A serving model keeps its version instead.
                    if handle.current_version().is_none() {
                        if let Some(v) = self.load_last_good(&handle, &name, &version) {
                            report.loaded.push((name.clone(), v));
                        }
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !found.contains(n))
            .collect();
        for name in gone {
            if let Some(h) = self
                .models
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name)
            {
                h.shutdown();
                report.removed.push(name);
            }
        }
        Ok(report)
    }

    /// Whether `(model, version)` failed to load before (it is not retried until it changes).
    fn failed_before(&self, key: &(String, String)) -> bool {
        self.failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn mark_failed(&self, key: (String, String)) {
        self.failed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
    }

    /// The other published versions of `name` (complete: with a manifest), newest first by
    /// their manifest's `created` time; loads the first that loads and returns it.
    fn load_last_good(&self, handle: &ModelHandle, name: &str, bad: &str) -> Option<String> {
        let model_dir = self.config.root.join(name);
        let mut candidates: Vec<(String, String)> = std::fs::read_dir(&model_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|v| v != bad && layout::check_name("version", v).is_ok())
            .filter_map(|v| {
                let (_, m) = Manifest::read_in(&model_dir.join(&v)).ok()??;
                Some((m.created, v))
            })
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        for (_, v) in candidates {
            let key = (name.to_owned(), v.clone());
            if self.failed_before(&key) {
                continue;
            }
            match self.load_version(handle, name, &v) {
                Ok(()) => {
                    tracing::warn!(model = name, current = bad, serving = %v, "`current` does not load; serving the last good version");
                    return Some(v);
                }
                Err(_) => self.mark_failed(key),
            }
        }
        None
    }

    fn load_version(&self, handle: &ModelHandle, name: &str, version: &str) -> Result<()> {
        let dir = layout::version_dir(&self.config.root, name, version)?;
        let (manifest_path, manifest) =
            Manifest::read_in(&dir)?.ok_or_else(|| Error::ChecksumRequired {
                path: dir.clone(),
                reason: format!("no {} in the published version", layout::MANIFEST_FILE),
            })?;
        let models: Vec<_> = manifest
            .files
            .iter()
            .filter(|f| f.path.ends_with(".onnx"))
            .collect();
        let [file] = models.as_slice() else {
            return Err(Error::InvalidManifest {
                path: manifest_path,
                reason: format!("expected exactly one .onnx file, found {}", models.len()),
            });
        };
        let options = self
            .config
            .options
            .clone()
            .with_checksum(Checksum::Sha256(file.sha256));
        let batch = self
            .config
            .per_model
            .get(name)
            .unwrap_or(&self.config.batch);
        handle.load_model(
            &self.runtime,
            dir.join(&file.path),
            version,
            &options,
            batch,
        )
    }

    /// Scans every `poll_interval` on a thread of its own until `stop` is set; then shuts every
    /// model down gracefully.
    pub fn watch(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let repo = Arc::clone(self);
        std::thread::Builder::new().name("kiln-repository".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match repo.scan() {
                    Ok(r) => {
                        for (m, v, e) in &r.failed {
                            tracing::error!(model = %m, version = %v, error = %e, "published version failed to load");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot scan the model repository"),
                }
                let mut slept = Duration::ZERO;
                while slept < repo.config.poll_interval && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    slept += Duration::from_millis(50);
                }
            }
            for h in repo.handles() {
                h.shutdown();
            }
        })
    }
}

/// The version `<model_dir>/current` points at, if it is a valid version name.
fn current_version(model_dir: &Path) -> Option<String> {
    let target = std::fs::read_link(model_dir.join(CURRENT_LINK)).ok()?;
    let name = target.file_name()?.to_str()?.to_owned();
    layout::check_name("version", &name).ok()?;
    model_dir.join(&name).is_dir().then_some(name)
}
