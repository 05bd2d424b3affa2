//! One served model version: starts its instance threads and deadline timer, admits requests,
//! drains and stops. Crate-private: callers hold a [`super::ModelHandle`], which swaps
//! versions under them.
//!
//! The parts live beside it: [`super::shared`] (state and lock), [`super::admit`]
//! (admission), [`super::wait`] (the caller's wait), [`super::worker`] (the instance loop),
//! [`super::timer`] (deadlines), [`super::stack`] (joining and splitting batches).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::admit::Answer;
use super::backend::Backend;
use super::config::BatchConfig;
use super::metrics::Metrics;
use super::queue::Queue;
use super::request::InferRequest;
use super::settings::Settings;
use super::shared::{lock, BatcherStats, OnBroken, Shared, State};
use super::wait::{wait_async, wait_blocking};
use super::{timer, warmup, worker};
use crate::error::{Error, Result};
use crate::metadata::ModelMetadata;
use crate::model::NamedTensors;

/// Describes a model version to serve: what a loader hands [`super::ModelHandle::load_with`].
#[derive(Debug, Clone)]
pub struct BatcherSpec {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// The model's signature (validation, batch dim, warm-up inputs).
    pub metadata: ModelMetadata,
    /// Per-request element cap of each input.
    pub max_input_elements: usize,
    /// Batching settings.
    pub config: BatchConfig,
}

/// A running model version: queue, instance threads and deadline timer.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.shared.model)
            .field("stats", &self.stats())
            .finish()
    }
}

fn spawn_failed(model: &str, e: &std::io::Error) -> Error {
    Error::WorkerLost {
        model: model.to_owned(),
        reason: format!("cannot spawn thread: {e}"),
    }
}

impl Batcher {
    /// Checks the settings, starts one instance thread per backend (and the deadline timer),
    /// warms every instance up, and returns once all are ready to serve.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config or a backend count that differs from
    /// `instances`; [`Error::WarmupFailed`] for a configured warm-up sample that fails;
    /// [`Error::WorkerLost`] if a thread cannot be spawned (everything started is stopped
    /// again).
    pub(crate) fn start(
        spec: BatcherSpec,
        backends: Vec<Box<dyn Backend>>,
        metrics: Arc<Metrics>,
        on_broken: Option<OnBroken>,
    ) -> Result<Self> {
        let settings = Settings::check(&spec.config, &spec.metadata)?;
        let instances = settings.config.instances;
        if backends.len() != instances {
            return Err(Error::InvalidConfig {
                field: "instances",
                reason: format!(
                    "{} backends given for {instances} instances",
                    backends.len()
                ),
            });
        }
        let shared = Arc::new(Shared {
            model: spec.model,
            max_input_elements: spec.max_input_elements,
            state: Mutex::new(State {
                queue: Queue::new(settings.config.priority_levels),
                accepting: false,
                stop: false,
                broken: None,
                timer_at: None,
                drain_rate: 0.0,
                idle: instances,
                sleeping: 0,
                stats: BatcherStats::default(),
            }),
            metadata: Arc::new(spec.metadata),
            settings,
            work: Condvar::new(),
            timer: Condvar::new(),
            idle: Condvar::new(),
            depth: metrics.depth(),
            metrics,
            spinning: AtomicBool::new(false),
            compute_ewma_ns: AtomicU64::new(0),
            on_broken,
        });

        let plan = warmup::plan(&shared.settings);
        let warm_started = Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let mut threads = Vec::with_capacity(backends.len() + 1);
        for (i, backend) in backends.into_iter().enumerate() {
            let worker = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let plan = plan.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-{}-{i}", shared.model))
                .spawn(move || {
                    let mut backend = backend;
                    let warm = warmup::run(&worker, backend.as_mut(), &plan);
                    let ok = warm.is_ok();
                    let _ = ready.send(warm);
                    // Dropped before serving: `start` counts senders gone, so a thread that
                    // dies in warm-up (or later) never keeps it waiting.
                    drop(ready);
                    if ok {
                        worker::instance(&worker, backend.as_mut());
                    }
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    let _ = ready_tx.send(Err(spawn_failed(&shared.model, &e)));
                }
            }
        }
        let timer_shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("kiln-{}-timer", shared.model))
            .spawn(move || timer::run(&timer_shared))
        {
            Ok(h) => threads.push(h),
            Err(e) => {
                let _ = ready_tx.send(Err(spawn_failed(&shared.model, &e)));
            }
        }
        drop(ready_tx);
        let batcher = Self {
            shared,
            threads: Mutex::new(threads),
        };
        let mut first_error = None;
        let mut warmed = 0;
        for result in ready_rx.iter().take(instances) {
            match result {
                Ok(()) => warmed += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let broken = batcher.broken();
        if first_error.is_none() && (warmed < instances || broken.is_some()) {
            first_error = Some(Error::WorkerLost {
                model: batcher.shared.model.clone(),
                reason: broken.unwrap_or_else(|| "an instance thread ended during warm-up".into()),
            });
        }
        if let Some(e) = first_error {
            batcher.stop_now();
            return Err(e);
        }
        batcher.shared.metrics.warmed(warm_started.elapsed());
        let broke = {
            let mut st = lock(&batcher.shared.state);
            // Under the lock, so an instance that breaks now cannot be reopened to traffic.
            st.accepting = st.broken.is_none();
            st.broken.clone()
        };
        if let Some(reason) = broke {
            batcher.stop_now();
            return Err(Error::WorkerLost {
                model: batcher.shared.model.clone(),
                reason,
            });
        }
        Ok(batcher)
    }

    /// The model's signature.
    pub(crate) fn metadata(&self) -> &Arc<ModelMetadata> {
        &self.shared.metadata
    }

    /// The batching settings in force.
    pub(crate) fn config(&self) -> &BatchConfig {
        &self.shared.settings.config
    }

    /// The drain timeout in force.
    pub(crate) fn drain_timeout(&self) -> Duration {
        self.shared.settings.drain_timeout
    }

    /// Why the version cannot serve any more, if it cannot.
    pub(crate) fn broken(&self) -> Option<String> {
        lock(&self.shared.state).broken.clone()
    }

    /// Validates and enqueues a request; the receiver gets the answer.
    ///
    /// # Errors
    /// Everything admission refuses (see [`super::admit`]).
    pub(crate) fn submit(&self, request: InferRequest) -> Result<Answer> {
        self.shared.submit(request)
    }

    /// Waits for an answer without blocking the executor (see [`super::wait`]). The future
    /// holds what waiting needs, not the version: dropping the version's last reference (which
    /// joins its threads) never falls to the task awaiting it.
    pub(crate) fn answer(
        &self,
        rx: Answer,
    ) -> impl std::future::Future<Output = Result<NamedTensors>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let spin = shared.answer_spin();
            wait_async(rx, spin, shared.spin_slot())
                .await
                .unwrap_or_else(|| Err(lost(&shared)))
        }
    }

    /// Waits for an answer on this thread (see [`super::wait`]).
    pub(crate) fn answer_blocking(&self, rx: Answer) -> Result<NamedTensors> {
        let spin = self.shared.answer_spin();
        wait_blocking(rx, spin, self.shared.spin_slot()).unwrap_or_else(|| Err(lost(&self.shared)))
    }

    /// What the version has done so far.
    pub(crate) fn stats(&self) -> BatcherStats {
        let st = lock(&self.shared.state);
        let mut s = st.stats.clone();
        s.queued = st.queue.len();
        s
    }

    /// Stops admitting, lets the instances finish what is queued (failing whatever is still
    /// queued after `timeout` with [`Error::Unavailable`]), then stops the threads.
    pub(crate) fn drain(&self, timeout: Duration) {
        let shared = &*self.shared;
        let deadline = Instant::now() + timeout;
        {
            let mut st = lock(&shared.state);
            st.accepting = false;
            // Woken as batches finish (and every 10 ms) until empty or out of time.
            while !st.queue.is_empty() && st.broken.is_none() && Instant::now() < deadline {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10));
                st = shared
                    .idle
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        self.stop_now();
    }

    /// Fails everything queued, stops and joins every thread.
    fn stop_now(&self) {
        let shared = &*self.shared;
        let leftover = {
            let mut st = lock(&shared.state);
            st.accepting = false;
            st.stop = true;
            let left = st.queue.drain_all();
            shared.mirror_depth(&st);
            left
        };
        shared.fail_unrun(leftover, "stopped before the request ran");
        shared.work.notify_all();
        shared.timer.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The error of a request whose reply channel closed unanswered.
fn lost(shared: &Shared) -> Error {
    Error::WorkerLost {
        model: shared.model.clone(),
        reason: "reply channel closed".into(),
    }
}
