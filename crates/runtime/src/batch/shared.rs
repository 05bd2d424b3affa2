//! What a model version's callers, instance threads and deadline timer share: the queue and
//! counters under one `std::sync::Mutex` (short sections, nothing awaits or runs a model
//! while it is held), the condvars they wait on, and the helpers that answer requests the
//! queue dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::metrics::{Depth, Metrics, Outcome};
use super::queue::{Dropped, Pending, Queue};
use super::settings::Settings;
use crate::error::Error;
use crate::metadata::ModelMetadata;

/// Counters of what a model version has done, for tests, benchmarks and status pages.
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
    /// Rows of the succeeded requests (Triton's `inference_count`).
    pub succeeded_rows: u64,
    /// How many batches had each size in rows (index = rows; sizes of 4096 rows and more are
    /// not kept).
    pub batch_sizes: Vec<u64>,
    /// Requests waiting now.
    pub queued: usize,
    /// Elements of padding added to padded inputs (padding efficiency = real / (real + padded)).
    pub padded_elements: u64,
    /// Real elements of padded inputs.
    pub real_elements: u64,
    /// Nanoseconds the succeeded requests took, each from entering the queue to its outputs
    /// being ready, summed (Triton's `success.ns`).
    pub success_ns: u64,
    /// Nanoseconds the succeeded requests waited in the queue before their batch started,
    /// summed (Triton's `queue.ns`).
    pub queue_ns: u64,
    /// Nanoseconds the requests answered with an error after reaching the model, or failed by
    /// their deadline, took from entering the queue, summed.
    pub fail_ns: u64,
    /// Nanoseconds the batch of each succeeded request ran (stacking, the model, splitting),
    /// summed over the succeeded requests: a batch of eight counts eight times, as Triton's
    /// per-request `compute_infer.ns`.
    pub compute_ns: u64,
    /// Nanoseconds the batches of each size ran, summed over batches (index = rows, as
    /// `batch_sizes`).
    pub batch_ns: Vec<u64>,
    /// When the last batch finished, in milliseconds since the Unix epoch (0 before the first).
    pub last_inference_ms: u64,
}

/// A duration in whole nanoseconds (`u64::MAX` past 584 years).
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Everything behind the lock.
pub(crate) struct State {
    pub(crate) queue: Queue,
    pub(crate) accepting: bool,
    pub(crate) stop: bool,
    /// Why the version can no longer serve (an instance thread died), if it cannot.
    pub(crate) broken: Option<String>,
    /// When the timer thread will next wake, if it is sleeping on a deadline.
    pub(crate) timer_at: Option<std::time::Instant>,
    /// Recent requests drained per second (EWMA), for the retry-after hint.
    pub(crate) drain_rate: f64,
    /// Instances not running a batch (looking for work, spinning or asleep).
    pub(crate) idle: usize,
    /// Instances blocked on the `work` condvar (spinning ones are not counted: they see new
    /// work through the depth mirror without a wake-up).
    pub(crate) sleeping: usize,
    pub(crate) stats: BatcherStats,
}

/// Called once, off the lock, when a version breaks (an instance cannot continue).
pub(crate) type OnBroken = Box<dyn Fn(&str) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) model: String,
    pub(crate) metadata: std::sync::Arc<ModelMetadata>,
    pub(crate) max_input_elements: usize,
    pub(crate) settings: Settings,
    pub(crate) state: Mutex<State>,
    /// Instances wait here for work.
    pub(crate) work: Condvar,
    /// The deadline timer waits here.
    pub(crate) timer: Condvar,
    /// A draining caller waits here for the queue to empty.
    pub(crate) idle: Condvar,
    pub(crate) depth: Arc<Depth>,
    pub(crate) metrics: Arc<Metrics>,
    /// Whether a caller holds the spin slot.
    pub(crate) spinning: AtomicBool,
    /// Recent batch run time (EWMA, ns), for the callers' spin budget.
    pub(crate) compute_ewma_ns: AtomicU64,
    pub(crate) on_broken: Option<OnBroken>,
}

/// Locks the state. A panic never happens while the lock is held (models run outside it),
/// but if one did, the queue's data is still consistent: keep serving.
pub(crate) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Mirrors the queue depth into the atomics the gauges and spinning instances read.
    pub(crate) fn mirror_depth(&self, st: &State) {
        self.depth.requests.store(st.queue.len(), Ordering::Relaxed);
        self.depth.bytes.store(st.queue.bytes(), Ordering::Relaxed);
    }

    /// Answers requests the queue dropped (call outside the lock). The counters are updated
    /// first, so a caller who has its answer sees it counted.
    pub(crate) fn finish_dropped(&self, dropped: Vec<Dropped>) {
        if dropped.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let (expired, waited) = dropped
            .iter()
            .filter_map(|d| match d {
                Dropped::Expired(p) => Some(nanos(now.saturating_duration_since(p.enqueued))),
                Dropped::Cancelled(_) => None,
            })
            .fold((0u64, 0u64), |(n, ns), w| (n + 1, ns.saturating_add(w)));
        {
            let mut st = lock(&self.state);
            st.stats.expired += expired;
            st.stats.fail_ns = st.stats.fail_ns.saturating_add(waited);
            st.stats.cancelled += dropped.len() as u64 - expired;
            self.mirror_depth(&st);
        }
        for d in dropped {
            match d {
                Dropped::Expired(p) => {
                    let waited = p.enqueued.elapsed();
                    self.metrics.outcome(Outcome::Deadline, Some(waited));
                    let _ = p.reply.send(Err(Error::DeadlineExceeded {
                        model: self.model.clone(),
                        waited,
                    }));
                }
                Dropped::Cancelled(p) => {
                    self.metrics
                        .outcome(Outcome::Cancelled, Some(p.enqueued.elapsed()));
                }
            }
        }
    }

    /// Answers requests that will never run with [`Error::Unavailable`].
    pub(crate) fn fail_unrun(&self, requests: Vec<Pending>, why: &str) {
        for p in requests {
            self.metrics
                .outcome(Outcome::Unavailable, Some(p.enqueued.elapsed()));
            let _ = p.reply.send(Err(Error::Unavailable {
                model: self.model.clone(),
                state: why.to_owned(),
            }));
        }
    }

    /// Marks the version broken: admission stops, every queued request is answered
    /// `Unavailable`, and the owner is told (the model goes `Failed`). Idempotent.
    pub(crate) fn break_down(&self, reason: String) {
        let left = {
            let mut st = lock(&self.state);
            if st.stop || st.broken.is_some() {
                return;
            }
            st.accepting = false;
            st.broken = Some(reason.clone());
            let left = st.queue.drain_all();
            self.mirror_depth(&st);
            left
        };
        tracing::error!(model = %self.model, reason = %reason, "model version cannot serve any more");
        self.fail_unrun(left, &format!("failed: {reason}"));
        self.work.notify_all();
        self.idle.notify_all();
        if let Some(hook) = &self.on_broken {
            hook(&reason);
        }
    }
}
