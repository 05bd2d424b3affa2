//! An instance: one thread, one backend (an ONNX Runtime session), taking batches from the
//! queue, running them and answering each caller with exactly its rows.
//!
//! Everything an instance does with a batch (stacking, padding, running, splitting, trimming)
//! runs under one panic boundary, so a request that trips a bug fails with an error and the
//! instance goes back to idle. Should the thread end any other way, the version breaks
//! ([`Shared::break_down`]): admission stops, the queue is answered `Unavailable` and the
//! model goes `Failed`; no request is left waiting on an instance that is gone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::metrics::Outcome;
use super::queue::{Pending, Take};
use super::shared::{lock, nanos, Shared};
use super::stack::{self, Scratch};
use super::wait::spin_until;
use crate::error::{Error, Result};
use crate::model::NamedTensors;

/// Batch sizes (in rows) counted one by one in the stats; larger ones are not kept.
const MAX_TRACKED_SIZE: usize = 4096;

/// Breaks the version if the instance thread ends while the version is still serving.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if !lock(&self.0.state).stop {
            let how = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped"
            };
            self.0
                .break_down(format!("an instance thread {how} outside a batch"));
        }
    }
}

/// Takes, runs and answers batches until the version stops.
pub(crate) fn instance(shared: &Shared, backend: &mut dyn Backend) {
    let _guard = ExitGuard(shared);
    let mut scratch = Scratch::default();
    while let Some(batch) = next_batch(shared) {
        execute(shared, backend, batch, &mut scratch);
    }
}

/// Waits for the next batch (`None`: stop). Expired and cancelled requests the queue hands
/// over are answered on the way.
fn next_batch(shared: &Shared) -> Option<Vec<Pending>> {
    let mut st = lock(&shared.state);
    loop {
        if st.stop || st.broken.is_some() {
            return None;
        }
        let mut dropped = Vec::new();
        let idle = st.idle;
        let taken = st
            .queue
            .take(Instant::now(), &shared.settings.policy, idle, &mut dropped);
        match taken {
            Take::Batch(b) => {
                st.idle -= 1;
                shared.mirror_depth(&st);
                if !st.queue.is_empty() {
                    // Another idle instance can start on what is left.
                    shared.work.notify_one();
                }
                drop(st);
                shared.finish_dropped(dropped);
                return Some(b);
            }
            _ if !dropped.is_empty() => {
                // Expired or cancelled requests the queue handed over are answered before
                // this instance waits: nothing else holds them now.
                shared.mirror_depth(&st);
                drop(st);
                shared.finish_dropped(dropped);
                st = lock(&shared.state);
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
                shared.mirror_depth(&st);
                // Spin briefly before sleeping: a wake-up through the kernel costs tens of µs
                // on a VM, more than a small model's whole run.
                drop(st);
                let arrived =
                    spin_until(shared.settings.spin.min(Duration::from_micros(50)), || {
                        shared.depth.requests.load(Ordering::Relaxed) > 0
                    });
                st = lock(&shared.state);
                if !arrived && st.queue.is_empty() && !st.stop && st.broken.is_none() {
                    st.sleeping += 1;
                    st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.sleeping -= 1;
                }
            }
        }
    }
}

/// A batch's requests, counted and timed (nanoseconds summed) before the lock is taken.
#[derive(Default)]
struct Timed {
    ok: u64,
    ok_rows: u64,
    success_ns: u64,
    queue_ns: u64,
    fail_ns: u64,
}

/// Runs a batch under the panic boundary, then counts and answers it; the instance is idle
/// again whatever happened.
fn execute(shared: &Shared, backend: &mut dyn Backend, batch: Vec<Pending>, scratch: &mut Scratch) {
    let started = Instant::now();
    let total_rows: usize = batch.iter().map(|p| p.rows).sum();
    let results = match catch_unwind(AssertUnwindSafe(|| run(shared, backend, &batch, scratch))) {
        Ok(results) => results,
        Err(panic) => {
            // The buffers may be half written: start the next batch from fresh ones.
            *scratch = Scratch::default();
            let msg = panic_message(panic.as_ref());
            tracing::error!(model = %shared.model, panic = %msg, requests = batch.len(), "batch panicked; its requests fail, the instance keeps serving");
            batch
                .iter()
                .map(|_| Err(lost(shared, format!("batch panicked: {msg}"))))
                .collect()
        }
    };
    let done = Instant::now();
    let compute = done.saturating_duration_since(started);
    let ns = nanos(compute);
    let old = shared.compute_ewma_ns.load(Ordering::Relaxed);
    let ewma = if old == 0 { ns } else { old - old / 8 + ns / 8 };
    shared.compute_ewma_ns.store(ewma, Ordering::Relaxed);

    // Count first, answer second: a caller that sees its answer also sees it counted (and
    // timed, to its outputs being ready).
    let mut timed = Timed::default();
    for (p, result) in batch.iter().zip(&results) {
        let took = nanos(done.saturating_duration_since(p.enqueued));
        if result.is_ok() {
            timed.ok += 1;
            timed.ok_rows += p.rows as u64;
            timed.success_ns = timed.success_ns.saturating_add(took);
            let waited = nanos(started.saturating_duration_since(p.enqueued));
            timed.queue_ns = timed.queue_ns.saturating_add(waited);
        } else {
            timed.fail_ns = timed.fail_ns.saturating_add(took);
        }
    }
    let ok = timed.ok;
    let failed = results.len() as u64 - ok;
    let finished_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    {
        let mut st = lock(&shared.state);
        st.idle += 1;
        let stats = &mut st.stats;
        stats.succeeded += ok;
        stats.failed += failed;
        stats.batches += 1;
        stats.rows += total_rows as u64;
        stats.succeeded_rows += timed.ok_rows;
        stats.success_ns = stats.success_ns.saturating_add(timed.success_ns);
        stats.queue_ns = stats.queue_ns.saturating_add(timed.queue_ns);
        stats.fail_ns = stats.fail_ns.saturating_add(timed.fail_ns);
        stats.compute_ns = stats.compute_ns.saturating_add(ns.saturating_mul(ok));
        stats.last_inference_ms = stats.last_inference_ms.max(finished_ms);
        if total_rows < MAX_TRACKED_SIZE {
            if stats.batch_sizes.len() <= total_rows {
                stats.batch_sizes.resize(total_rows + 1, 0);
                stats.batch_ns.resize(total_rows + 1, 0);
            }
            stats.batch_sizes[total_rows] += 1;
            stats.batch_ns[total_rows] = stats.batch_ns[total_rows].saturating_add(ns);
        }
        let secs = compute.as_secs_f64().max(1e-9);
        let rate = (ok + failed) as f64 / secs * shared.settings.config.instances as f64;
        st.drain_rate = if st.drain_rate == 0.0 {
            rate
        } else {
            0.9 * st.drain_rate + 0.1 * rate
        };
        if !st.accepting {
            shared.idle.notify_all();
        }
    }
    let mut timings = Vec::with_capacity(batch.len());
    for (p, result) in batch.into_iter().zip(results) {
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::of(e),
        };
        timings.push((p.enqueued, outcome));
        // The inputs go before the answer: a caller that holds memory budget for its
        // request (the server's decode budget) hands it on only once they are freed.
        let Pending { inputs, reply, .. } = p;
        drop(inputs);
        let _ = reply.send(result);
    }
    let answered = Instant::now();
    // Metrics after the answers: off the callers' latency path; successes counted once.
    let m = &shared.metrics;
    m.batch(total_rows, compute);
    m.count(Outcome::Success, ok);
    for (enqueued, outcome) in timings {
        m.queued(started.saturating_duration_since(enqueued));
        let took = answered.saturating_duration_since(enqueued);
        if outcome == Outcome::Success {
            m.duration(outcome, took);
        } else {
            m.outcome(outcome, Some(took));
        }
    }
}

/// One result per request: a lone request runs as it is; a batch is stacked, run and split,
/// and if that fails, its requests are retried one by one so one bad request does not fail
/// its neighbours.
fn run(
    shared: &Shared,
    backend: &mut dyn Backend,
    batch: &[Pending],
    scratch: &mut Scratch,
) -> Vec<Result<NamedTensors>> {
    if let [one] = batch {
        return vec![run_guarded(shared, backend, &one.inputs)];
    }
    let stacked = catch_unwind(AssertUnwindSafe(|| {
        run_stacked(shared, backend, batch, scratch)
    }))
    .unwrap_or_else(|panic| {
        *scratch = Scratch::default();
        Err(lost(
            shared,
            format!("stacked batch panicked: {}", panic_message(panic.as_ref())),
        ))
    });
    match stacked {
        Ok(per_request) => per_request.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::warn!(model = %shared.model, requests = batch.len(), error = %e, "batch failed; retrying its requests one by one");
            batch
                .iter()
                .map(|p| run_guarded(shared, backend, &p.inputs))
                .collect()
        }
    }
}

fn run_stacked(
    shared: &Shared,
    backend: &mut dyn Backend,
    batch: &[Pending],
    scratch: &mut Scratch,
) -> Result<Vec<NamedTensors>> {
    let requests: Vec<&NamedTensors> = batch.iter().map(|p| &p.inputs).collect();
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let (inputs, plan) = stack::join(&requests, rows, shared.settings.padding.as_ref(), scratch)?;
    if let Some((real, total)) = plan.padded.filter(|&(_, total)| total > 0) {
        shared.metrics.padding(1.0 - real as f64 / total as f64);
        let mut st = lock(&shared.state);
        st.stats.padded_elements += (total - real) as u64;
        st.stats.real_elements += real as u64;
    }
    let outputs = run_guarded(shared, backend, &inputs);
    scratch.recycle(inputs);
    plan.split(&shared.model, outputs?)
}

/// Runs the backend with its panics contained.
pub(crate) fn run_guarded(
    shared: &Shared,
    backend: &mut dyn Backend,
    inputs: &NamedTensors,
) -> Result<NamedTensors> {
    match catch_unwind(AssertUnwindSafe(|| backend.run(inputs))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic_message(panic.as_ref());
            tracing::error!(model = %shared.model, panic = %msg, "backend panicked; the instance keeps serving");
            Err(lost(shared, format!("backend panicked: {msg}")))
        }
    }
}

fn lost(shared: &Shared, reason: String) -> Error {
    Error::WorkerLost {
        model: shared.model.clone(),
        reason,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
