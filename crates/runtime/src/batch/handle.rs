//! A served model across versions: lifecycle states, hot swap, graceful shutdown.
//!
//! States: `Loading → Warming → Ready → Draining → Unloaded`, or `Failed` with the reason.
//! A new version loads and warms beside the one serving; the switch is one pointer swap under
//! a write lock, and the old version then drains (finishes everything it admitted) on a thread
//! of its own, so no request in flight during a swap fails. If the new version fails, the old
//! one keeps serving and the failure is reported in the status.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use opentelemetry::metrics::Meter;
use tokio::sync::{oneshot, watch};

use super::backend::Backend;
use super::batcher::{Batcher, BatcherSpec};
use super::config::BatchConfig;
use super::metrics::Metrics;
use super::request::{InferRequest, ViewRequest};
use super::shared::BatcherStats;
use crate::config::ModelOptions;
use crate::error::{Error, Result};
use crate::metadata::ModelMetadata;
use crate::model::{Model, NamedTensors};
use crate::runtime::Runtime;

/// Where a model is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ModelState {
    /// Reading, verifying and opening its first version.
    Loading,
    /// Running warm-up batches on its first version.
    Warming,
    /// Serving.
    Ready,
    /// Finishing admitted requests; admitting no more.
    Draining,
    /// Stopped; nothing is held.
    Unloaded,
    /// Its first version could not be loaded, or the version serving broke (an instance
    /// thread ended); requests are answered `Unavailable` until a version loads.
    Failed {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Loading => f.write_str("loading"),
            Self::Warming => f.write_str("warming"),
            Self::Ready => f.write_str("ready"),
            Self::Draining => f.write_str("draining"),
            Self::Unloaded => f.write_str("unloaded"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// A snapshot of a served model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelStatus {
    /// Model name.
    pub model: String,
    /// Lifecycle state.
    pub state: ModelState,
    /// The version serving, if any.
    pub version: Option<String>,
    /// The version being loaded beside it, if any.
    pub loading: Option<String>,
    /// The execution provider of the serving version.
    pub provider: Option<String>,
    /// The last load or swap failure, kept while an older version serves on.
    pub last_error: Option<String>,
}

struct Serving {
    version: Arc<str>,
    batcher: Arc<Batcher>,
}

/// An answer and what ran it ([`ModelHandle::infer_at`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Answered {
    /// The outputs.
    pub outputs: NamedTensors,
    /// The version that ran the request, even when another was swapped in meanwhile.
    pub version: Arc<str>,
    /// That version's signature (and class labels).
    pub metadata: Arc<ModelMetadata>,
}

/// A request queued on a version ([`ModelHandle::submit_on`]).
struct Admitted {
    rx: oneshot::Receiver<Result<NamedTensors>>,
    batcher: Arc<Batcher>,
    version: Arc<str>,
}

struct Inner {
    name: String,
    /// Created once per model and shared by its versions (bounded series across swaps).
    metrics: Arc<Metrics>,
    current: RwLock<Option<Serving>>,
    status: watch::Sender<ModelStatus>,
    /// One load or swap at a time.
    swap: Mutex<()>,
}

impl Inner {
    /// `f` of the serving version, if one is loaded (under the read lock, briefly).
    fn serving<T>(&self, f: impl FnOnce(&Serving) -> T) -> Option<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}

/// A cloneable handle to a served model.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("status", &self.status())
            .finish()
    }
}

/// What a loader returns: the version's description, one backend per instance, and the
/// provider label to report.
pub type Loaded = (BatcherSpec, Vec<Box<dyn Backend>>, String);

impl ModelHandle {
    /// A handle with nothing loaded yet (state `Loading`). Metrics go to `meter`.
    pub fn new(name: impl Into<String>, meter: Meter) -> Self {
        let name = name.into();
        let (status, _) = watch::channel(ModelStatus {
            model: name.clone(),
            state: ModelState::Loading,
            version: None,
            loading: None,
            provider: None,
            last_error: None,
        });
        let metrics = Arc::new(Metrics::new(&meter, &name));
        Self {
            inner: Arc::new(Inner {
                name,
                metrics,
                current: RwLock::new(None),
                status,
                swap: Mutex::new(()),
            }),
        }
    }

    /// Loads `path` as `version` on ONNX Runtime (verified as `options` says), with `config`'s
    /// batching, and makes it the serving version (hot swap if one serves already).
    ///
    /// # Errors
    /// Any load, verification or warm-up error. The previous version, if any, keeps serving.
    pub fn load_model(
        &self,
        runtime: &Runtime,
        path: impl AsRef<std::path::Path>,
        version: &str,
        options: &ModelOptions,
        config: &BatchConfig,
    ) -> Result<()> {
        let path = path.as_ref().to_owned();
        let options = options.clone().with_name(self.inner.name.clone());
        let config = config.clone();
        let model = self.inner.name.clone();
        let version_label = version.to_owned();
        self.load_with(version, move || {
            config.validate()?;
            let models = Model::load_many(runtime, &path, &options, config.instances)?;
            let provider = models[0].provider().provider.to_string();
            let spec = BatcherSpec {
                model,
                version: version_label,
                metadata: models[0].metadata().clone(),
                max_input_elements: options.max_input_elements,
                config,
            };
            let backends = models
                .into_iter()
                .map(|m| Box::new(m) as Box<dyn Backend>)
                .collect();
            Ok((spec, backends, provider))
        })
    }

    /// Loads a version through `loader` (which reads and opens it), warms it, and swaps it in.
    ///
    /// # Errors
    /// The loader's or warm-up's error; the previous version keeps serving.
    pub fn load_with(&self, version: &str, loader: impl FnOnce() -> Result<Loaded>) -> Result<()> {
        let inner = &*self.inner;
        let _one_at_a_time = inner.swap.lock().unwrap_or_else(|p| p.into_inner());
        let first = !self.is_serving();
        self.update(|s| {
            s.loading = Some(version.to_owned());
            if first {
                s.state = ModelState::Loading;
            }
        });
        let started = Instant::now();
        let result = loader().and_then(|(spec, backends, provider)| {
            inner.metrics.loaded(started.elapsed());
            if first {
                self.update(|s| s.state = ModelState::Warming);
            }
            let on_broken = Self::on_broken(Arc::downgrade(&self.inner));
            Batcher::start(spec, backends, Arc::clone(&inner.metrics), Some(on_broken))
                .map(|b| (b, provider))
        });
        match result {
            Ok((batcher, provider)) => {
                let old = {
                    let mut cur = inner.current.write().unwrap_or_else(|p| p.into_inner());
                    cur.replace(Serving {
                        version: version.into(),
                        batcher: Arc::new(batcher),
                    })
                };
                inner.metrics.serving(Some((version, &provider)));
                self.update(|s| {
                    s.state = ModelState::Ready;
                    s.version = Some(version.to_owned());
                    s.loading = None;
                    s.provider = Some(provider);
                    s.last_error = None;
                });
                tracing::info!(model = %inner.name, version, elapsed_ms = started.elapsed().as_millis() as u64, "version serving");
                // A version that broke between its start and the swap was not current when
                // its hook ran: report it now.
                let broke = inner.serving(|s| s.batcher.broken()).flatten();
                if let Some(reason) = broke {
                    Self::mark_broken(inner, &reason);
                }
                if let Some(old) = old {
                    let timeout = old.batcher.drain_timeout();
                    let name = inner.name.clone();
                    // The old version finishes what it admitted, off the caller's thread.
                    let spawned = std::thread::Builder::new().name(format!("kiln-{name}-drain")).spawn(move || {
                        old.batcher.drain(timeout);
                        tracing::info!(model = %name, version = %old.version, "old version drained");
                    });
                    if let Err(e) = spawned {
                        tracing::error!(model = %inner.name, error = %e, "cannot spawn the drain thread; the old version stops when dropped");
                    }
                }
                Ok(())
            }
            Err(e) => {
                inner.metrics.load_failed(matches!(
                    e,
                    Error::ChecksumMismatch { .. } | Error::SizeMismatch { .. }
                ));
                tracing::error!(model = %inner.name, version, error = %e, "version failed to load");
                let reason = e.to_string();
                self.update(|s| {
                    s.loading = None;
                    s.last_error = Some(format!("version {version}: {reason}"));
                    if first {
                        s.state = ModelState::Failed {
                            reason: reason.clone(),
                        };
                    }
                });
                Err(e)
            }
        }
    }

    /// What a version calls when it breaks: if it is the one serving, the model goes
    /// `Failed` (readiness false) and its requests are answered `Unavailable` until another
    /// version loads. Runs on the dying instance thread, so it only updates the status (the
    /// broken version is stopped and joined by the next swap or the shutdown).
    fn on_broken(inner: Weak<Inner>) -> super::shared::OnBroken {
        Box::new(move |reason: &str| {
            let Some(inner) = inner.upgrade() else { return };
            let serving_broke = inner
                .serving(|s| s.batcher.broken().is_some())
                .unwrap_or(false);
            if serving_broke {
                Self::mark_broken(&inner, reason);
            }
            if Arc::strong_count(&inner) == 1 {
                // Every handle is gone: dropping the last reference here would stop and join
                // this very thread. Another thread does it.
                let _ = std::thread::Builder::new()
                    .name("kiln-release".into())
                    .spawn(move || drop(inner));
            }
        })
    }

    fn mark_broken(inner: &Inner, reason: &str) {
        inner.metrics.serving(None);
        inner.status.send_modify(|s| {
            s.state = ModelState::Failed {
                reason: reason.to_owned(),
            };
            s.last_error = Some(reason.to_owned());
        });
    }

    fn update(&self, f: impl FnOnce(&mut ModelStatus)) {
        self.inner.status.send_modify(f);
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The serving version's label.
    pub fn current_version(&self) -> Option<String> {
        self.inner.serving(|s| s.version.to_string())
    }

    /// The serving version's signature.
    pub fn metadata(&self) -> Option<ModelMetadata> {
        self.inner.serving(|s| (**s.batcher.metadata()).clone())
    }

    /// `f` of the serving version's signature, without copying it.
    #[cfg(feature = "http")]
    pub(crate) fn with_metadata<R>(&self, f: impl FnOnce(&ModelMetadata) -> R) -> Option<R> {
        self.inner.serving(|s| f(s.batcher.metadata()))
    }

    /// The serving version's counters.
    pub fn stats(&self) -> Option<BatcherStats> {
        self.inner.serving(|s| s.batcher.stats())
    }

    /// A snapshot of the status.
    pub fn status(&self) -> ModelStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<ModelStatus> {
        self.inner.status.subscribe()
    }

    /// Whether the model is serving.
    pub fn is_ready(&self) -> bool {
        self.inner.status.borrow().state == ModelState::Ready
    }

    /// Validates and enqueues a request on the serving version without waiting; the receiver
    /// gets the answer (dropping it cancels the request).
    ///
    /// # Errors
    /// Everything [`ModelHandle::infer`] can refuse at admission.
    pub fn submit(&self, request: InferRequest) -> Result<oneshot::Receiver<Result<NamedTensors>>> {
        self.submit_on(request, None).map(|a| a.rx)
    }

    /// [`ModelHandle::submit`], also returning the version that admitted the request (which
    /// must be `version`, if given).
    fn submit_on(&self, request: InferRequest, version: Option<&str>) -> Result<Admitted> {
        // The read lock is held across admission, so a swap cannot slip between choosing the
        // version and queueing on it: whatever the old version admitted, it drains.
        let cur = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        let serving = cur.as_ref();
        if let Some(v) = version.filter(|&v| serving.map(|s| &*s.version) != Some(v)) {
            return Err(Error::VersionNotServing {
                model: self.inner.name.clone(),
                version: v.to_owned(),
                serving: serving.map(|s| s.version.to_string()),
            });
        }
        match serving {
            Some(s) => Ok(Admitted {
                rx: s.batcher.submit(request)?,
                batcher: Arc::clone(&s.batcher),
                version: Arc::clone(&s.version),
            }),
            None => Err(Error::Unavailable {
                model: self.inner.name.clone(),
                state: self.status().state.to_string(),
            }),
        }
    }

    /// Runs a request on the serving version — or only on `version`, if given, checked as the
    /// request is queued — and returns the answer with the version that ran it and its
    /// signature. Dropping the future cancels it.
    ///
    /// # Errors
    /// As [`ModelHandle::infer`]; [`Error::VersionNotServing`] when `version` is not the one
    /// serving.
    pub async fn infer_at(&self, request: InferRequest, version: Option<&str>) -> Result<Answered> {
        let Admitted {
            rx,
            batcher,
            version,
        } = self.submit_on(request, version)?;
        let metadata = Arc::clone(batcher.metadata());
        // Only the receiver is awaited: the version itself is not held past admission, so
        // its last reference (and the join of its threads) never falls to an async task.
        let answer = batcher.answer(rx);
        drop(batcher);
        Ok(Answered {
            outputs: answer.await?,
            version,
            metadata,
        })
    }

    /// Runs a request on the serving version. Dropping the future cancels it.
    ///
    /// # Errors
    /// Validation errors, [`Error::BatchTooLarge`], [`Error::RequestTooLarge`],
    /// [`Error::Overloaded`], [`Error::DeadlineExceeded`], the model's own failure, or
    /// [`Error::Unavailable`] when no version serves.
    pub async fn infer(&self, request: InferRequest) -> Result<NamedTensors> {
        self.infer_at(request, None).await.map(|a| a.outputs)
    }

    /// Blocking [`ModelHandle::infer`] for non-async threads (not inside an async runtime).
    ///
    /// # Errors
    /// As [`ModelHandle::infer`].
    pub fn infer_blocking(&self, request: InferRequest) -> Result<NamedTensors> {
        let admitted = self.submit_on(request, None)?;
        admitted.batcher.answer_blocking(admitted.rx)
    }

    /// [`ModelHandle::infer_blocking`] over inputs borrowed from the caller (`ndarray` views,
    /// slices): the batcher reads them where they lie, so each is copied once, into the batch
    /// buffer (twice when the model pads a variable-length dimension and lengths differ:
    /// padded, then stacked) — or not at all when the request runs alone. Not from inside an
    /// async runtime's worker (as `infer_blocking`).
    ///
    /// Returns only once the batcher no longer holds the inputs: it drops a request's inputs
    /// when it has run, failed or dropped it (a deadline's end or a shutdown included), even
    /// if this thread unwinds. A custom [`Backend`] that keeps a clone of an
    /// input past its `run` holds the caller here until it drops it; an output that is an
    /// input itself (an echo) is copied before it is returned.
    ///
    /// # Errors
    /// As [`ModelHandle::infer`]; [`Error::TensorString`] for a string with a NUL byte.
    pub fn infer_view_blocking(&self, request: ViewRequest<'_>) -> Result<NamedTensors> {
        // Declared before the lent tensors: dropped after them, it waits for every one the
        // batcher still holds.
        let scope = crate::borrowed::Scope::new();
        // SAFETY: `request` (and the memory its views borrow) outlives `scope`, which does not
        // end before every lent tensor is dropped.
        let inputs = unsafe { crate::borrowed::lend_all(&scope, &request.inputs)? };
        let mut lent = InferRequest::new(inputs).with_priority(request.priority);
        lent.deadline = request.deadline;
        let outputs = self.infer_blocking(lent)?;
        // An answer must not hold the caller's memory past this call (nor `scope` wait on it).
        Ok(outputs
            .into_iter()
            .map(|(name, tensor)| (name, tensor.into_owned()))
            .collect())
    }

    /// The batching settings of the serving version.
    pub fn config(&self) -> Option<BatchConfig> {
        self.inner.serving(|s| s.batcher.config().clone())
    }

    /// The serving version's priority levels, without copying its settings (warm-up samples
    /// included) as [`ModelHandle::config`] does: read per request that names a priority.
    #[cfg(feature = "http")]
    pub(crate) fn priority_levels(&self) -> Option<usize> {
        self.inner.serving(|s| s.batcher.config().priority_levels)
    }

    /// Whether a version serves that has not broken.
    fn is_serving(&self) -> bool {
        self.inner
            .serving(|s| s.batcher.broken().is_none())
            .unwrap_or(false)
    }

    /// Graceful shutdown: readiness goes false (`Draining`) first, then the serving version
    /// finishes its queue (bounded by its `drain_timeout_ms`), then `Unloaded`.
    pub fn shutdown(&self) {
        let _one_at_a_time = self.inner.swap.lock().unwrap_or_else(|p| p.into_inner());
        self.update(|s| s.state = ModelState::Draining);
        let serving = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner.metrics.serving(None);
        if let Some(s) = serving {
            s.batcher.drain(s.batcher.drain_timeout());
        }
        self.update(|s| {
            s.state = ModelState::Unloaded;
            s.version = None;
        });
    }
}
