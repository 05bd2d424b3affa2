//! Serving every model the agent publishes: a watcher over the repository root (layout in
//! [`crate::layout`]) that loads each model's `current` version, hot-swaps when `current`
//! moves or is re-published with new bytes, and unloads models that disappear.
//!
//! Polling, not inotify: `current` is replaced by an atomic rename, which a poll of
//! `read_link` sees reliably on every filesystem an `emptyDir` can be (including network
//! and overlay filesystems where inotify is unreliable). The poll reads one symlink and
//! hashes one small manifest per model.
//!
//! The lifecycle rules:
//! - A model is served at the `(version, manifest digest)` its `current` names; a change of
//!   either loads it (a same-name republish is a hot swap to the same label).
//! - A version that fails to load is retried with exponential backoff
//!   ([`RepositoryConfig::retry_min`] doubling to [`RepositoryConfig::retry_max`]), never on
//!   the next poll; its history is forgotten when `current` moves. The serving version, if
//!   any, serves on; with none, the newest older version that loads is served meanwhile.
//!   The error stays in [`ModelHandle::status`]'s `last_error`.
//! - An admin [`Repository::unload`] sticks: scans leave the model unloaded until an admin
//!   [`Repository::load`] or a new `current`. An unloaded model is still listed
//!   ([`Repository::names`], [`Repository::get`], state `Unloaded`, as Triton lists unloaded
//!   models as UNAVAILABLE) and does not count against [`Repository::all_ready`].
//! - A `current` that is missing or dangling keeps the model serving for
//!   [`RepositoryConfig::current_grace`] (a publisher mid-update); a model whose directory is
//!   gone is unloaded at once.
//! - [`Repository::scan`], [`Repository::load`] and [`Repository::unload`] run one at a time
//!   (one lock across each), so no two handles are created and no version loads twice.
//!
//! Files: `config` (settings and reports), `published` (what is on disk: `current` and its
//! manifest digest), `failures` (the retry backoff, pure), `admin` (load and unload),
//! `readiness` (when the whole repository is ready: [`Readiness`]), `unpublished` (why a
//! directory under the root is not served: [`Repository::unpublished`]); the index and the
//! scan are here.

mod admin;
mod config;
mod failures;
mod published;
mod readiness;
mod unpublished;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use opentelemetry::metrics::Meter;

pub use self::config::{LoadOutcome, RepositoryConfig, ScanReport};
use self::failures::{Backoff, Failures};
use self::published::Published;
pub use self::readiness::Readiness;
use crate::batch::ModelHandle;
use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::layout;
use crate::runtime::Runtime;

/// A model in the index.
struct Entry {
    handle: ModelHandle,
    /// Set by an admin unload: what `current` was then (a different one lifts it).
    unloaded: Option<Option<Published>>,
}

/// Something under the root that serves nothing, as the scans saw it.
#[derive(Debug, Clone)]
struct Unlisted {
    /// Why (see `unpublished::diagnose`).
    reason: String,
    /// When the scans first gave this reason.
    since: Instant,
    /// Whether a warning was logged for it.
    warned: bool,
}

/// The watcher's bookkeeping, only touched under the scan lock.
#[derive(Default)]
struct ScanState {
    /// What each model's handle serves, as loaded.
    serving: HashMap<String, Published>,
    /// `current` as last seen per model; failure records are dropped when it moves.
    seen: HashMap<String, Published>,
    failures: Failures,
    /// When each served model's `current` was first seen missing.
    missing_since: HashMap<String, Instant>,
}

impl ScanState {
    fn forget(&mut self, model: &str) {
        self.serving.remove(model);
        self.seen.remove(model);
        self.failures.clear(model);
        self.missing_since.remove(model);
    }

    /// Notes `current` of `model`; a move (new version or manifest) forgets its failures.
    fn observe(&mut self, model: &str, current: &Published) {
        if self.seen.get(model) != Some(current) {
            self.failures.clear(model);
            self.seen.insert(model.to_owned(), current.clone());
        }
    }
}

/// The served models of one repository root.
pub struct Repository {
    runtime: Runtime,
    config: RepositoryConfig,
    backoff: Backoff,
    meter: Meter,
    /// The index readers use (requests, readiness); written only under `scan`.
    models: RwLock<BTreeMap<String, Entry>>,
    /// Directories under the root (and model files in it) that serve nothing, and why;
    /// written only under the scan lock.
    unpublished: RwLock<BTreeMap<String, Unlisted>>,
    /// The scan lock: a std Mutex, not a tokio one, because nothing awaits while it is held.
    /// It is held across loads (seconds), so async callers use `spawn_blocking`.
    scan: Mutex<ScanState>,
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
            backoff: Backoff::new(config.retry_min, config.retry_max),
            config,
            meter,
            models: RwLock::default(),
            unpublished: RwLock::default(),
            scan: Mutex::default(),
        }
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, ScanState> {
        self.scan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model called `name`, if found (an unloaded model too: its state says so).
    pub fn get(&self, name: &str) -> Option<ModelHandle> {
        self.index().get(name).map(|e| e.handle.clone())
    }

    /// Names of the models found, unloaded ones included.
    pub fn names(&self) -> Vec<String> {
        self.index().keys().cloned().collect()
    }

    /// Every model found, unloaded ones included.
    pub fn handles(&self) -> Vec<ModelHandle> {
        self.index().values().map(|e| e.handle.clone()).collect()
    }

    /// What under the root serves nothing, each with why: a directory with no `current` link
    /// (a Triton or KServe layout, a publish that stopped half-way) or one that names no
    /// version directory, and an `.onnx` file in the root itself (listed by its stem). A model
    /// that was served and lost its `current` is not listed while it serves on for
    /// [`RepositoryConfig::current_grace`]; `lost+found` is never listed. As of the last scan
    /// (or admin load), by name.
    pub fn unpublished(&self) -> Vec<(String, String)> {
        self.unlisted()
            .iter()
            .map(|(n, u)| (n.clone(), u.reason.clone()))
            .collect()
    }

    /// Why `name` under the root (a directory, or a model file's stem) serves nothing, if it
    /// is one of [`Repository::unpublished`].
    pub fn unpublished_reason(&self, name: &str) -> Option<String> {
        self.unlisted().get(name).map(|u| u.reason.clone())
    }

    fn unlisted(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Unlisted>> {
        self.unpublished.read().unwrap_or_else(|p| p.into_inner())
    }

    fn unlisted_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Unlisted>> {
        self.unpublished.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` was unloaded by [`Repository::unload`] and not loaded since.
    pub fn is_unloaded(&self, name: &str) -> bool {
        self.index().get(name).is_some_and(|e| e.unloaded.is_some())
    }

    /// Whether every model found is serving, not counting models unloaded on purpose with
    /// [`Repository::unload`] ([`Readiness::All`]). False while nothing serves.
    pub fn all_ready(&self) -> bool {
        self.ready(&Readiness::All)
    }

    /// The handle of `name`, created (state `Loading`) if there is none.
    fn handle_or_new(&self, name: &str) -> ModelHandle {
        self.index_mut()
            .entry(name.to_owned())
            .or_insert_with(|| Entry {
                handle: ModelHandle::new(name.to_owned(), self.meter.clone()),
                unloaded: None,
            })
            .handle
            .clone()
    }

    fn not_found(&self, name: &str, reason: impl Into<String>) -> Error {
        Error::ModelNotFound {
            model: name.to_owned(),
            root: self.config.root.clone(),
            reason: reason.into(),
        }
    }

    /// Looks at the root once: loads new models, swaps moved or re-published `current`
    /// links, retries failed versions whose backoff is over, unloads models that are gone.
    /// Skips models unloaded with [`Repository::unload`] until their `current` moves.
    ///
    /// # Errors
    /// [`Error::Io`] if the root cannot be listed (per-model failures are in the report).
    pub fn scan(&self) -> Result<ScanReport> {
        let mut st = self.lock();
        let now = Instant::now();
        let root = &self.config.root;
        let mut report = ScanReport::default();
        let mut found = HashSet::new();
        let entries = std::fs::read_dir(root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        let mut names = Vec::new();
        let mut model_files = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if layout::check_name("model", &name).is_err() {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                names.push(name);
            } else if unpublished::is_onnx(&name) {
                model_files.push(name);
            }
        }
        names.sort();
        model_files.sort();
        // Models load one by one below: every model found is registered first (its handle
        // `Loading`), so readiness under `all` counts the ones not reached yet.
        let published: Vec<(String, Option<Published>)> = names
            .into_iter()
            .map(|name| {
                let current = published::current(&root.join(&name));
                if current.is_some() {
                    self.handle_or_new(&name);
                }
                (name, current)
            })
            .collect();
        let mut unpublished = BTreeMap::new();
        for (name, current) in published {
            let Some(current) = current else {
                if self.keep_without_current(&mut st, &name, now) {
                    found.insert(name);
                } else if name != "lost+found" && published::current(&root.join(&name)).is_none() {
                    // (Looked at again: a publisher may have linked it while earlier models
                    // loaded; the next scan serves it then.)
                    let why = unpublished::diagnose(&root.join(&name), &name);
                    let seen = self.note_unpublished(&name, &why, now);
                    unpublished.insert(name, seen);
                }
                continue;
            };
            found.insert(name.clone());
            if st.missing_since.remove(&name).is_some() {
                tracing::info!(model = %name, current = %current, "`current` is back");
            }
            st.observe(&name, &current);
            if !self.lift_unload_if_moved(&name, &current) {
                continue;
            }
            if self.is_serving(&st, &name, &current) || !st.failures.due(&name, &current, now) {
                continue;
            }
            // The error is in the report and the handle's status.
            let _ = self.bring_up(&mut st, &name, &current, now, &mut report);
        }
        let gone: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !found.contains(n))
            .collect();
        for name in gone {
            st.forget(&name);
            let removed = self.index_mut().remove(&name);
            if let Some(e) = removed {
                e.handle.shutdown();
                report.removed.push(name);
            }
        }
        for file in model_files {
            let stem = file
                .rsplit_once('.')
                .map_or(file.as_str(), |(stem, _)| stem);
            if stem.is_empty() || unpublished.contains_key(stem) || self.get(stem).is_some() {
                continue;
            }
            let stem = stem.to_owned();
            let why = unpublished::diagnose_root_file(&file);
            let seen = self.note_unpublished(&stem, &why, now);
            unpublished.insert(stem, seen);
        }
        *self.unlisted_mut() = unpublished;
        Ok(report)
    }

    /// Logs why `name` serves nothing: a warning the first time a reason is seen, or, for a
    /// publish between its two steps (which the next scan normally finds finished), a debug
    /// line then and a warning once it has stayed so for [`RepositoryConfig::current_grace`]
    /// (a publisher that stopped before linking). Returns the record to keep.
    fn note_unpublished(
        &self,
        name: &str,
        why: &unpublished::Unpublished,
        now: Instant,
    ) -> Unlisted {
        let before = self.unlisted().get(name).cloned();
        let (since, mut warned) = match before {
            Some(u) if u.reason == why.reason => (u.since, u.warned),
            _ => {
                if why.publishing {
                    tracing::debug!(model = name, reason = %why.reason, "model directory not served yet");
                }
                (now, false)
            }
        };
        let due = !why.publishing || now.duration_since(since) >= self.config.current_grace;
        if !warned && due {
            tracing::warn!(model = name, reason = %why.reason, "model directory not served");
            warned = true;
        }
        Unlisted {
            reason: why.reason.clone(),
            since,
            warned,
        }
    }

    /// A served model whose `current` is missing or dangling: whether it stays (within the
    /// grace period). A model never served is simply not found.
    fn keep_without_current(&self, st: &mut ScanState, name: &str, now: Instant) -> bool {
        if self.get(name).is_none() {
            return false;
        }
        let since = *st.missing_since.entry(name.to_owned()).or_insert_with(|| {
            tracing::warn!(
                model = name,
                grace_s = self.config.current_grace.as_secs_f64(),
                "`current` is missing or dangling; serving on for the grace period"
            );
            now
        });
        let keep = now.duration_since(since) < self.config.current_grace;
        if !keep {
            tracing::warn!(
                model = name,
                "`current` missing for longer than the grace period; unloading"
            );
        }
        keep
    }

    /// Lifts an admin unload of `name` if `current` moved since; whether the model may load.
    fn lift_unload_if_moved(&self, name: &str, current: &Published) -> bool {
        let mut index = self.index_mut();
        let Some(entry) = index.get_mut(name) else {
            return true;
        };
        match &entry.unloaded {
            None => true,
            Some(at) if at.as_ref() == Some(current) => false,
            Some(_) => {
                tracing::info!(model = name, current = %current, "`current` moved since the admin unload; loading it");
                entry.unloaded = None;
                true
            }
        }
    }

    /// Whether `name`'s handle serves exactly `current`.
    fn is_serving(&self, st: &ScanState, name: &str, current: &Published) -> bool {
        st.serving.get(name) == Some(current)
            && self.get(name).and_then(|h| h.current_version()).as_deref()
                == Some(current.version.as_str())
    }

    /// Loads `current` into `name`'s handle now, recording the outcome; with nothing serving
    /// after a failure, falls back to the last good version.
    fn bring_up(
        &self,
        st: &mut ScanState,
        name: &str,
        current: &Published,
        now: Instant,
        report: &mut ScanReport,
    ) -> Result<()> {
        let handle = self.handle_or_new(name);
        match self.load_version(&handle, name, &current.version) {
            Ok(loaded) => {
                st.failures.succeeded(name, current);
                st.serving.insert(name.to_owned(), loaded);
                report
                    .loaded
                    .push((name.to_owned(), current.version.clone()));
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                report
                    .failed
                    .push((name.to_owned(), current.version.clone(), reason.clone()));
                let wait = st
                    .failures
                    .failed(name, current, now, reason, &self.backoff);
                tracing::warn!(model = name, version = %current, retry_in_s = wait.as_secs_f64(), "version failed to load; retrying after the backoff");
                // Nothing serving (a fresh start on a bad `current`): fall back to the
                // newest older version that loads, so the model is served while the
                // publisher fixes `current`. A serving model keeps its version instead.
                if handle.current_version().is_none() {
                    st.serving.remove(name);
                    if let Some(p) = self.load_last_good(st, &handle, name, &current.version, now) {
                        report.loaded.push((name.to_owned(), p.version.clone()));
                        st.serving.insert(name.to_owned(), p);
                    }
                }
                Err(e)
            }
        }
    }

    /// Loads the newest other published version of `name` that loads (skipping those still
    /// in their backoff) and returns it.
    fn load_last_good(
        &self,
        st: &mut ScanState,
        handle: &ModelHandle,
        name: &str,
        bad: &str,
        now: Instant,
    ) -> Option<Published> {
        let model_dir = self.config.root.join(name);
        for candidate in published::others_newest_first(&model_dir, bad) {
            if !st.failures.due(name, &candidate, now) {
                continue;
            }
            match self.load_version(handle, name, &candidate.version) {
                Ok(loaded) => {
                    tracing::warn!(model = name, current = bad, serving = %candidate.version, "`current` does not load; serving the last good version");
                    return Some(loaded);
                }
                Err(e) => {
                    st.failures
                        .failed(name, &candidate, now, e.to_string(), &self.backoff);
                }
            }
        }
        None
    }

    /// Loads `version` of `name` into `handle`; returns what exactly was loaded.
    fn load_version(&self, handle: &ModelHandle, name: &str, version: &str) -> Result<Published> {
        let dir = layout::version_dir(&self.config.root, name, version)?;
        let (manifest_path, manifest, key) = published::manifest(&dir, version)?;
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
        // The manifest pins every file of the version: the model, and any external data
        // it names (locations are relative to the model's own directory).
        let base = Path::new(&file.path).parent().unwrap_or(Path::new(""));
        let options = manifest
            .files
            .iter()
            .filter(|f| f.path != file.path)
            .filter_map(|f| {
                let location = Path::new(&f.path).strip_prefix(base).ok()?;
                Some((location.to_string_lossy().into_owned(), f.sha256))
            })
            .fold(
                self.config
                    .options
                    .clone()
                    .with_checksum(Checksum::Sha256(file.sha256)),
                |o, (location, digest)| o.with_external_data_checksum(location, digest),
            );
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
        )?;
        Ok(key)
    }

    /// Scans every `poll_interval` on a thread of its own until `stop` is set; then shuts every
    /// model down gracefully.
    ///
    /// # Errors
    /// The thread could not be spawned.
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
