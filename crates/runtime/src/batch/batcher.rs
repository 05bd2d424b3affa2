//! One served model version: the bounded queue, N instance threads that form and run
//! batches, and a deadline timer thread.
//!
//! Callers enqueue under a `std::sync::Mutex` (short sections, nothing awaits while it is
//! held) and wait on a `oneshot`; inference runs only on the instance threads, never on an
//! async runtime's workers. Dropping the caller's future closes its `oneshot`, and the request
//! is pruned wherever the queue meets it next. The timer thread fails requests whose deadline
//! passes even while every instance is busy, so they never reach the model.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::metrics::Meter;
use tokio::sync::oneshot;

use super::backend::Backend;
use super::config::BatchConfig;
use super::metrics::{Depth, Metrics, Outcome};
use super::queue::{Dropped, Pending, Policy, Queue, Take};
use super::request::InferRequest;
use super::stack;
use crate::error::{Error, Result};
use crate::metadata::ModelMetadata;
use crate::model::NamedTensors;
use crate::tensor::{with_element_type, Tensor};

/// Counters of what a batcher has done, for tests, benchmarks and status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Requests answered with outputs.
    pub succeeded: u64,
    /// Requests answered with an error after reaching the model.
    pub failed: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Requests failed by their deadline before running.
    pub expired: u64,
    /// Requests whose caller went away before they ran.
    pub cancelled: u64,
    /// Batches run.
    pub batches: u64,
    /// Rows run, summed over batches.
    pub rows: u64,
    /// How many batches had each size in rows (index = rows; sizes above the vector's length
    /// are not kept).
    pub batch_sizes: Vec<u64>,
    /// Requests waiting now.
    pub queued: usize,
    /// Elements of padding added to padded inputs (padding efficiency = real / (real + padded)).
    pub padded_elements: u64,
    /// Real elements of padded inputs.
    pub real_elements: u64,
}

struct State {
    queue: Queue,
    accepting: bool,
    stop: bool,
    /// When the timer thread will next wake, if it is sleeping on a deadline.
    timer_at: Option<Instant>,
    /// Recent requests drained per second (EWMA), for the retry-after hint.
    drain_rate: f64,
    /// Instances not running a batch (looking for work, spinning or asleep).
    idle: usize,
    /// Instances blocked on the `work` condvar (spinning ones are not counted: they see new
    /// work through the depth mirror without a wake-up).
    sleeping: usize,
    stats: BatcherStats,
}

/// Padding resolved against the signature: input index, dim, value, output trims by index.
#[derive(Debug, Clone)]
struct Padding {
    input: usize,
    dim: usize,
    value: f64,
    trims: Vec<(usize, usize)>,
}

struct Shared {
    model: String,
    padding: Option<Padding>,
    metadata: ModelMetadata,
    max_input_elements: usize,
    config: BatchConfig,
    policy: Policy,
    state: Mutex<State>,
    /// Instances wait here for work.
    work: Condvar,
    /// The deadline timer waits here.
    timer: Condvar,
    /// A draining caller waits here for the queue to empty.
    idle: Condvar,
    depth: Arc<Depth>,
    metrics: Metrics,
    /// Whether a caller holds the spin slot.
    spinning: AtomicBool,
    /// Recent batch run time (EWMA, ns), for the callers' spin budget.
    compute_ewma_ns: AtomicU64,
}

/// Describes the model version a [`Batcher`] serves.
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
pub struct Batcher {
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

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic never happens while the lock is held (backends run outside it), but if one did,
    // the queue's data is still consistent: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    /// Starts one instance thread per backend (and the deadline timer), runs warm-up on every
    /// instance if configured, and returns once all are ready.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config or a backend count that differs from
    /// `instances`; the first warm-up failure (everything started is stopped again).
    pub fn start(
        spec: BatcherSpec,
        backends: Vec<Box<dyn Backend>>,
        meter: &Meter,
    ) -> Result<Self> {
        spec.config.validate()?;
        spec.config.validate_for(&spec.metadata)?;
        let padding = spec.config.padding.as_ref().and_then(|p| {
            let input = spec
                .metadata
                .inputs
                .iter()
                .position(|i| i.name == p.input)?;
            let trims = p
                .trim_outputs
                .iter()
                .filter_map(|t| {
                    spec.metadata
                        .outputs
                        .iter()
                        .position(|o| o.name == t.output)
                        .map(|o| (o, t.dim))
                })
                .collect();
            Some(Padding {
                input,
                dim: p.dim,
                value: p.value,
                trims,
            })
        });
        if backends.len() != spec.config.instances {
            return Err(Error::InvalidConfig {
                field: "instances",
                reason: format!(
                    "{} backends given for {} instances",
                    backends.len(),
                    spec.config.instances
                ),
            });
        }
        let policy = Policy {
            batchable: spec.metadata.batch_dim,
            max_rows: if spec.metadata.batch_dim {
                spec.config.max_batch_size
            } else {
                1
            },
            preferred: spec.config.preferred_sorted(),
            delay: spec.config.max_queue_delay(),
            low_period: spec.config.low_priority_period(),
        };
        let depth = super::metrics::depth();
        let metrics = Metrics::new(meter, &spec.model, &spec.version, Arc::downgrade(&depth));
        let shared = Arc::new(Shared {
            model: spec.model,
            padding,
            max_input_elements: spec.max_input_elements,
            state: Mutex::new(State {
                queue: Queue::new(spec.config.priority_levels),
                accepting: false,
                stop: false,
                timer_at: None,
                drain_rate: 0.0,
                idle: spec.config.instances,
                sleeping: 0,
                stats: BatcherStats::default(),
            }),
            metadata: spec.metadata,
            config: spec.config,
            policy,
            work: Condvar::new(),
            timer: Condvar::new(),
            idle: Condvar::new(),
            depth,
            metrics,
            spinning: AtomicBool::new(false),
            compute_ewma_ns: AtomicU64::new(0),
        });

        let warmup_sizes = warmup_sizes(&shared);
        let warm_started = Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let mut threads = Vec::with_capacity(backends.len() + 1);
        for (i, backend) in backends.into_iter().enumerate() {
            let worker = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let sizes = warmup_sizes.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-{}-{i}", shared.model))
                .spawn(move || {
                    let mut backend = backend;
                    let warm = warmup(&worker, backend.as_mut(), &sizes);
                    let ok = warm.is_ok();
                    let _ = ready.send(warm);
                    if ok {
                        instance_loop(&worker, backend.as_mut());
                    }
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::WorkerLost {
                        model: shared.model.clone(),
                        reason: format!("cannot spawn thread: {e}"),
                    }));
                }
            }
        }
        let timer_shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("kiln-{}-timer", shared.model))
            .spawn(move || timer_loop(&timer_shared))
        {
            Ok(h) => threads.push(h),
            Err(e) => {
                let _ = ready_tx.send(Err(Error::WorkerLost {
                    model: shared.model.clone(),
                    reason: format!("cannot spawn thread: {e}"),
                }));
            }
        }
        drop(ready_tx);
        let batcher = Self {
            shared,
            threads: Mutex::new(threads),
        };
        let mut first_error = None;
        for result in ready_rx.iter().take(batcher.shared.config.instances) {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            batcher.stop_now();
            return Err(e);
        }
        batcher.shared.metrics.warmed(warm_started.elapsed());
        lock(&batcher.shared.state).accepting = true;
        Ok(batcher)
    }

    /// The model's signature.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.shared.metadata
    }

    /// The batching settings in force.
    pub fn config(&self) -> &BatchConfig {
        &self.shared.config
    }

    /// Runs a request through the queue; resolves when its batch has run.
    ///
    /// Dropping the future cancels the request: if it has not started, it never runs.
    ///
    /// # Errors
    /// Validation errors, [`Error::BatchTooLarge`], [`Error::Overloaded`],
    /// [`Error::DeadlineExceeded`], [`Error::Unavailable`], or the model's own failure.
    pub async fn infer(&self, request: InferRequest) -> Result<NamedTensors> {
        let rx = self.submit(request)?;
        wait_async(rx, self.answer_spin(), self.spin_slot())
            .await
            .unwrap_or_else(|| Err(self.lost()))
    }

    /// [`Batcher::infer`] for threads that are not async tasks (the C ABI). Must not be called
    /// from inside an async runtime (it blocks the thread).
    ///
    /// # Errors
    /// As [`Batcher::infer`].
    pub fn infer_blocking(&self, request: InferRequest) -> Result<NamedTensors> {
        let rx = self.submit(request)?;
        wait_blocking(rx, self.answer_spin(), self.spin_slot()).unwrap_or_else(|| Err(self.lost()))
    }

    fn lost(&self) -> Error {
        Error::WorkerLost {
            model: self.shared.model.clone(),
            reason: "reply channel closed".into(),
        }
    }

    /// How long a caller polls for its answer before sleeping: long enough to cover a recent
    /// batch's run (1.5 × its EWMA plus 20 µs) when that fits in `spin_us`, so a small model's
    /// answer never waits for a kernel wake-up; only the base 50 µs when runs are longer (the
    /// wake-up is then a small share of the wait, and polling would burn the CPU for nothing).
    pub(crate) fn answer_spin(&self) -> Duration {
        const BASE: Duration = Duration::from_micros(50);
        let max = self.shared.config.spin();
        let expected =
            Duration::from_nanos(self.shared.compute_ewma_ns.load(Ordering::Relaxed) * 3 / 2)
                + Duration::from_micros(20);
        if expected <= max {
            expected.max(BASE.min(max))
        } else {
            BASE.min(max)
        }
    }

    /// The caller-side spin slot of this version (see [`SpinSlot`]).
    pub(crate) fn spin_slot(&self) -> SpinSlot<'_> {
        SpinSlot::try_take(&self.shared.spinning)
    }

    /// Validates and enqueues a request; the receiver gets the answer.
    ///
    /// # Errors
    /// Everything [`Batcher::infer`] can refuse at admission.
    pub fn submit(&self, request: InferRequest) -> Result<oneshot::Receiver<Result<NamedTensors>>> {
        let shared = &*self.shared;
        let refuse = |e: Error| {
            shared.metrics.outcome(Outcome::of(&e), None);
            Err(e)
        };
        let now = Instant::now();
        let levels = shared.config.priority_levels;
        if request.priority >= levels {
            return refuse(Error::InvalidPriority {
                model: shared.model.clone(),
                priority: request.priority,
                levels,
            });
        }
        let rows = match shared
            .metadata
            .validate(&request.inputs, shared.max_input_elements)
        {
            Ok(r) => r,
            Err(e) => return refuse(e),
        };
        if shared.policy.batchable && rows > shared.policy.max_rows {
            return refuse(Error::BatchTooLarge {
                model: shared.model.clone(),
                rows,
                max: shared.policy.max_rows,
            });
        }
        let mut by_name = request.inputs;
        let mut inputs = Vec::with_capacity(by_name.len());
        for info in &shared.metadata.inputs {
            if let Some(pos) = by_name.iter().position(|(n, _)| n == &info.name) {
                inputs.push(by_name.swap_remove(pos));
            }
        }
        let bytes: usize = inputs.iter().map(|(_, t)| t.byte_len()).sum();
        if bytes > shared.config.max_queue_bytes {
            return refuse(Error::RequestTooLarge {
                model: shared.model.clone(),
                bytes,
                limit: shared.config.max_queue_bytes,
            });
        }
        // The shape bucket: every non-batch dim, except the padded one (any length batches).
        let padded = shared.padding.as_ref().map(|p| (p.input, p.dim));
        let key = inputs
            .iter()
            .enumerate()
            .flat_map(|(i, (_, t))| {
                t.shape()
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(move |(d, &v)| if padded == Some((i, d)) { 0 } else { v })
                    .chain([usize::MAX])
            })
            .collect();
        let default_deadline = shared.config.default_timeout().map(|t| now + t);
        let deadline = match (request.deadline, default_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            bytes,
            key,
            enqueued: now,
            deadline,
            priority: request.priority,
            reply: tx,
        };

        let mut dropped = Vec::new();
        let admitted = {
            let mut st = lock(&shared.state);
            if !st.accepting {
                Err(Error::Unavailable {
                    model: shared.model.clone(),
                    state: "not accepting (draining or stopped)".into(),
                })
            } else {
                let full = |st: &State| {
                    st.queue.len() >= shared.config.max_queue_requests
                        || st.queue.bytes() + bytes > shared.config.max_queue_bytes
                };
                if full(&st) {
                    st.queue.expire(now, &mut dropped);
                }
                if full(&st) {
                    st.stats.overloaded += 1;
                    let queued = st.queue.len();
                    let rate = st.drain_rate;
                    let retry_after = if rate > 0.0 {
                        Duration::from_secs_f64((queued as f64 / rate).clamp(0.001, 60.0))
                    } else {
                        Duration::from_secs(1)
                    };
                    Err(Error::Overloaded {
                        model: shared.model.clone(),
                        queued_requests: queued,
                        queued_bytes: st.queue.bytes(),
                        retry_after,
                    })
                } else {
                    let wake_timer = deadline.is_some_and(|d| st.timer_at.is_none_or(|t| d < t));
                    st.queue.push(pending);
                    mirror_depth(shared, &st);
                    if wake_timer {
                        shared.timer.notify_one();
                    }
                    Ok(st.sleeping > 0)
                }
            }
        };
        finish_dropped(shared, dropped);
        match admitted {
            Ok(wake) => {
                if wake {
                    shared.work.notify_one();
                }
                Ok(rx)
            }
            Err(e) => refuse(e),
        }
    }

    /// What the batcher has done so far.
    pub fn stats(&self) -> BatcherStats {
        let st = lock(&self.shared.state);
        let mut s = st.stats.clone();
        s.queued = st.queue.len();
        s
    }

    /// Stops admitting, lets the instances finish what is queued (failing whatever is still
    /// queued after `timeout` with [`Error::Unavailable`]), then stops the threads.
    pub fn drain(&self, timeout: Duration) {
        let shared = &*self.shared;
        let deadline = Instant::now() + timeout;
        {
            let mut st = lock(&shared.state);
            st.accepting = false;
            // Woken as batches finish (and every 10 ms) until empty or out of time.
            while !st.queue.is_empty() && Instant::now() < deadline {
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
            mirror_depth(shared, &st);
            left
        };
        for p in leftover {
            shared
                .metrics
                .outcome(Outcome::Unavailable, Some(p.enqueued.elapsed()));
            let _ = p.reply.send(Err(Error::Unavailable {
                model: shared.model.clone(),
                state: "stopped before the request ran".into(),
            }));
        }
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

/// Polls `ready` for up to `budget` (yielding the CPU between polls); true if it became true.
fn spin_until(budget: Duration, ready: impl Fn() -> bool) -> bool {
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    while start.elapsed() < budget {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
        std::thread::yield_now();
    }
    ready()
}

/// Admits one spinning waiter at a time: one spinner keeps its thread (or executor) from
/// sleeping at low load, where that saves a kernel wake-up per request; at high concurrency
/// the others wait normally instead of burning the CPU the model needs.
pub(crate) struct SpinSlot<'a>(Option<&'a AtomicBool>);

impl<'a> SpinSlot<'a> {
    pub(crate) fn try_take(flag: &'a AtomicBool) -> Self {
        let won = flag
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        Self(won.then_some(flag))
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for SpinSlot<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

/// One look at the answer without waiting: `Ready(Some)` answered, `Ready(None)` the sender
/// is gone, `Pending` not yet.
fn peek<T>(rx: &mut oneshot::Receiver<T>) -> Poll<Option<T>> {
    match rx.try_recv() {
        Ok(v) => Poll::Ready(Some(v)),
        Err(oneshot::error::TryRecvError::Closed) => Poll::Ready(None),
        Err(oneshot::error::TryRecvError::Empty) => Poll::Pending,
    }
}

/// Waits for an answer on this thread: if it gets the spin slot, polls for up to `spin` (a
/// small model answers sooner than a kernel wake-up takes), then blocks. `None` if the sender
/// is gone.
pub(crate) fn wait_blocking<T>(
    mut rx: oneshot::Receiver<T>,
    spin: Duration,
    slot: SpinSlot<'_>,
) -> Option<T> {
    let start = Instant::now();
    while slot.held() && start.elapsed() < spin {
        if let Poll::Ready(answer) = peek(&mut rx) {
            return answer;
        }
        std::thread::yield_now();
    }
    drop(slot);
    rx.blocking_recv().ok()
}

/// Waits for an answer in a task: for up to `spin`, yields to the executor and polls again
/// (cheap when the executor has other tasks, a short spin when it has none), then awaits.
pub(crate) async fn wait_async<T>(
    mut rx: oneshot::Receiver<T>,
    spin: Duration,
    slot: SpinSlot<'_>,
) -> Option<T> {
    let start = Instant::now();
    while slot.held() && start.elapsed() < spin {
        if let Poll::Ready(answer) = peek(&mut rx) {
            return answer;
        }
        // tokio's yield defers the wake-up until the executor has looked at its other tasks,
        // so a spinning waiter never starves them.
        tokio::task::yield_now().await;
    }
    drop(slot);
    rx.await.ok()
}

fn mirror_depth(shared: &Shared, st: &State) {
    shared
        .depth
        .requests
        .store(st.queue.len(), Ordering::Relaxed);
    shared
        .depth
        .bytes
        .store(st.queue.bytes(), Ordering::Relaxed);
}

/// Answers requests the queue dropped (outside the lock). The counters are updated first, so
/// a caller who has its answer sees it counted.
fn finish_dropped(shared: &Shared, dropped: Vec<Dropped>) {
    if dropped.is_empty() {
        return;
    }
    let expired = dropped
        .iter()
        .filter(|d| matches!(d, Dropped::Expired(_)))
        .count() as u64;
    {
        let mut st = lock(&shared.state);
        st.stats.expired += expired;
        st.stats.cancelled += dropped.len() as u64 - expired;
        mirror_depth(shared, &st);
    }
    for d in dropped {
        match d {
            Dropped::Expired(p) => {
                let waited = p.enqueued.elapsed();
                shared.metrics.outcome(Outcome::Deadline, Some(waited));
                let _ = p.reply.send(Err(Error::DeadlineExceeded {
                    model: shared.model.clone(),
                    waited,
                }));
            }
            Dropped::Cancelled(p) => {
                shared
                    .metrics
                    .outcome(Outcome::Cancelled, Some(p.enqueued.elapsed()));
            }
        }
    }
}

/// Finest granularity of the deadline timer.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// The deadline timer: sleeps until the earliest deadline, fails what expired.
fn timer_loop(shared: &Shared) {
    let mut st = lock(&shared.state);
    loop {
        if st.stop {
            return;
        }
        let mut dropped = Vec::new();
        let next = st.queue.expire(Instant::now(), &mut dropped);
        st.timer_at = next;
        if !dropped.is_empty() {
            drop(st);
            finish_dropped(shared, dropped);
            st = lock(&shared.state);
            continue;
        }
        st = match next {
            Some(at) => {
                // Deadlines are kept to the millisecond: coalescing wake-ups keeps the timer's
                // queue scans rare under load.
                let wait = at
                    .saturating_duration_since(Instant::now())
                    .max(TIMER_RESOLUTION);
                shared
                    .timer
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => shared.timer.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// An instance: take a batch, run it, answer, repeat until stopped.
fn instance_loop(shared: &Shared, backend: &mut dyn Backend) {
    let mut scratch = stack::Scratch::default();
    loop {
        let mut dropped = Vec::new();
        let batch = {
            let mut st = lock(&shared.state);
            loop {
                if st.stop {
                    return;
                }
                // Several idle instances split what is queued, so they run in parallel
                // instead of one taking everything while the others wait.
                let cap = st.queue.rows().div_ceil(st.idle.max(1)).max(1);
                let taken = st
                    .queue
                    .take(Instant::now(), &shared.policy, cap, &mut dropped);
                if !matches!(taken, Take::Batch(_)) && !dropped.is_empty() {
                    // Expired or cancelled requests the queue handed over are answered before
                    // this instance waits: nothing else holds them now, and an idle instance
                    // may wait a long time.
                    mirror_depth(shared, &st);
                    drop(st);
                    finish_dropped(shared, std::mem::take(&mut dropped));
                    st = lock(&shared.state);
                    continue;
                }
                match taken {
                    Take::Batch(b) => {
                        st.idle -= 1;
                        mirror_depth(shared, &st);
                        if !st.queue.is_empty() {
                            // Another idle instance can start on what is left.
                            shared.work.notify_one();
                        }
                        break b;
                    }
                    Take::WaitUntil(at) => {
                        let wait = at.saturating_duration_since(Instant::now());
                        st.sleeping += 1;
                        st = shared
                            .work
                            .wait_timeout(st, wait)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                        st.sleeping -= 1;
                    }
                    Take::Empty => {
                        mirror_depth(shared, &st);
                        // Spin briefly before sleeping: a wake-up through the kernel costs
                        // tens of µs on a VM, more than a small model's whole run.
                        drop(st);
                        let arrived =
                            spin_until(shared.config.spin().min(Duration::from_micros(50)), || {
                                shared.depth.requests.load(Ordering::Relaxed) > 0
                            });
                        st = lock(&shared.state);
                        if !arrived && st.queue.is_empty() && !st.stop {
                            st.sleeping += 1;
                            st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
                            st.sleeping -= 1;
                        }
                    }
                }
            }
        };
        finish_dropped(shared, dropped);
        execute(shared, backend, batch, &mut scratch);
    }
}

/// Runs a batch with panics contained; a failed multi-request batch is retried request by
/// request so one bad request does not fail its neighbours.
fn execute(
    shared: &Shared,
    backend: &mut dyn Backend,
    batch: Vec<Pending>,
    scratch: &mut stack::Scratch,
) {
    let started = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total_rows: usize = rows.iter().sum();
    let results: Vec<Result<NamedTensors>> = if batch.len() == 1 {
        vec![run_guarded(shared, backend, &batch[0].inputs)]
    } else {
        let joined = run_stacked(shared, backend, &batch, &rows, scratch);
        match joined {
            Ok(per_request) => per_request.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(model = %shared.model, requests = batch.len(), error = %e, "batch failed; retrying its requests one by one");
                batch
                    .iter()
                    .map(|p| run_guarded(shared, backend, &p.inputs))
                    .collect()
            }
        }
    };
    let compute = started.elapsed();
    let ns = u64::try_from(compute.as_nanos()).unwrap_or(u64::MAX);
    let old = shared.compute_ewma_ns.load(Ordering::Relaxed);
    let ewma = if old == 0 { ns } else { old - old / 8 + ns / 8 };
    shared.compute_ewma_ns.store(ewma, Ordering::Relaxed);

    // Count first, answer second: a caller that sees its answer also sees it counted.
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut replies = Vec::with_capacity(batch.len());
    let mut timings = Vec::with_capacity(batch.len());
    for (p, result) in batch.into_iter().zip(results) {
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::of(e),
        };
        if result.is_ok() {
            ok += 1;
        } else {
            failed += 1;
        }
        timings.push((p.enqueued, outcome));
        replies.push((p.reply, result));
    }
    {
        let mut st = lock(&shared.state);
        st.idle += 1;
        st.stats.succeeded += ok;
        st.stats.failed += failed;
        st.stats.batches += 1;
        st.stats.rows += total_rows as u64;
        if st.stats.batch_sizes.len() <= total_rows {
            st.stats.batch_sizes.resize(total_rows + 1, 0);
        }
        st.stats.batch_sizes[total_rows] += 1;
        let secs = compute.as_secs_f64().max(1e-9);
        let rate = (ok + failed) as f64 / secs * shared.config.instances as f64;
        st.drain_rate = if st.drain_rate == 0.0 {
            rate
        } else {
            0.9 * st.drain_rate + 0.1 * rate
        };
        if !st.accepting {
            shared.idle.notify_all();
        }
    }
    let answered = Instant::now();
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
    // Metrics after the answers: off the callers' latency path; successes counted once.
    shared.metrics.batch(total_rows, compute);
    shared.metrics.count(Outcome::Success, ok);
    for (enqueued, outcome) in timings {
        shared
            .metrics
            .queued(started.saturating_duration_since(enqueued));
        if outcome == Outcome::Success {
            shared
                .metrics
                .duration(outcome, answered.saturating_duration_since(enqueued));
        } else {
            shared
                .metrics
                .outcome(outcome, Some(answered.saturating_duration_since(enqueued)));
        }
    }
}

/// Stacks a batch (padding the variable-length dim if configured and lengths differ), runs
/// it, and splits (and trims) the outputs back per request.
fn run_stacked(
    shared: &Shared,
    backend: &mut dyn Backend,
    batch: &[Pending],
    rows: &[usize],
    scratch: &mut stack::Scratch,
) -> Result<Vec<NamedTensors>> {
    let lengths: Option<(&Padding, Vec<usize>)> = shared.padding.as_ref().and_then(|p| {
        let lens: Vec<usize> = batch
            .iter()
            .map(|r| r.inputs[p.input].1.shape()[p.dim])
            .collect();
        let differ = lens.iter().any(|&l| l != lens[0]);
        differ.then_some((p, lens))
    });
    let Some((pad, lens)) = lengths else {
        let inputs = stack::concat(
            &batch.iter().map(|p| &p.inputs).collect::<Vec<_>>(),
            scratch,
        )?;
        let outputs = run_guarded(shared, backend, &inputs);
        scratch.recycle(inputs);
        return stack::split(&shared.model, outputs?, rows);
    };
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut padded_requests = Vec::with_capacity(batch.len());
    let (mut real, mut total) = (0usize, 0usize);
    for (p, &len) in batch.iter().zip(&lens) {
        let mut inputs = p.inputs.clone();
        let t = &inputs[pad.input].1;
        real += t.len();
        let padded = stack::pad(t, pad.dim, longest, pad.value)?;
        total += padded.len();
        inputs[pad.input].1 = padded;
        padded_requests.push((inputs, len));
    }
    let ratio = 1.0 - real as f64 / total.max(1) as f64;
    shared.metrics.padding(ratio);
    {
        let mut st = lock(&shared.state);
        st.stats.padded_elements += (total - real) as u64;
        st.stats.real_elements += real as u64;
    }
    let inputs = stack::concat(
        &padded_requests.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        scratch,
    )?;
    let outputs = run_guarded(shared, backend, &inputs);
    scratch.recycle(inputs);
    let mut per_request = stack::split(&shared.model, outputs?, rows)?;
    for (outputs, &len) in per_request.iter_mut().zip(&lens) {
        for &(o, dim) in &pad.trims {
            if let Some((_, t)) = outputs.get_mut(o) {
                *t = stack::trim(t, dim, len)?;
            }
        }
    }
    Ok(per_request)
}

fn run_guarded(
    shared: &Shared,
    backend: &mut dyn Backend,
    inputs: &NamedTensors,
) -> Result<NamedTensors> {
    match catch_unwind(AssertUnwindSafe(|| backend.run(inputs))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(model = %shared.model, panic = %msg, "backend panicked; the instance keeps serving");
            Err(Error::WorkerLost {
                model: shared.model.clone(),
                reason: format!("backend panicked: {msg}"),
            })
        }
    }
}

/// Batch sizes to warm up at: each preferred size and `max_batch_size` (1 without a batch dim).
fn warmup_sizes(shared: &Shared) -> Vec<usize> {
    if !shared.config.warmup {
        return Vec::new();
    }
    let mut sizes = shared.policy.preferred.clone();
    sizes.push(shared.policy.max_rows);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Runs zero-filled batches of each size (dynamic non-batch dims set to 1).
fn warmup(shared: &Shared, backend: &mut dyn Backend, sizes: &[usize]) -> Result<()> {
    for &rows in sizes {
        let inputs = shared
            .metadata
            .inputs
            .iter()
            .map(|info| {
                let shape: Vec<usize> = info
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(v) => usize::try_from(*v).unwrap_or(1),
                        None if i == 0 => rows,
                        None => 1,
                    })
                    .collect();
                let n: usize = shape.iter().product();
                let tensor = with_element_type!(info.element_type, T => Tensor::new(shape, vec![T::default(); n])?);
                Ok((info.name.clone(), tensor))
            })
            .collect::<Result<NamedTensors>>()?;
        run_guarded(shared, backend, &inputs)?;
    }
    Ok(())
}
