//! The caller's wait for its answer, on a thread (`infer_blocking`, the C ABI) or in an async
//! task (`infer().await`). A kernel wake-up costs tens of µs on a VM, as much as a small
//! model's whole run, so one caller per model at a time may poll briefly before sleeping;
//! everyone else sleeps at once, so polling never takes the CPU the model needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::shared::Shared;

impl Shared {
    /// How long a caller polls for its answer before sleeping: long enough to cover a recent
    /// batch's run (1.5 × its EWMA plus 20 µs) when that fits in `spin_us`, so a small model's
    /// answer never waits for a kernel wake-up; only the base 50 µs when runs are longer (the
    /// wake-up is then a small share of the wait, and polling would burn the CPU for nothing).
    pub(crate) fn answer_spin(&self) -> Duration {
        const BASE: Duration = Duration::from_micros(50);
        let max = self.settings.spin;
        let expected = Duration::from_nanos(self.compute_ewma_ns.load(Ordering::Relaxed) * 3 / 2)
            + Duration::from_micros(20);
        if expected <= max {
            expected.max(BASE.min(max))
        } else {
            BASE.min(max)
        }
    }

    /// The caller-side spin slot of this version (see [`SpinSlot`]).
    pub(crate) fn spin_slot(&self) -> SpinSlot<'_> {
        SpinSlot::try_take(&self.spinning)
    }
}

/// Admits one spinning waiter at a time: one spinner keeps its thread (or executor) from
/// sleeping at low load, where that saves a kernel wake-up per request; at high concurrency
/// the others wait normally instead of burning the CPU the model needs.
pub(crate) struct SpinSlot<'a>(Option<&'a AtomicBool>);

impl<'a> SpinSlot<'a> {
    fn try_take(flag: &'a AtomicBool) -> Self {
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

/// Waits for an answer on this thread: if it holds the spin slot, polls for up to `spin`,
/// then blocks. `None` if the sender is gone.
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

/// Polls `ready` for up to `budget` (yielding the CPU between polls); true if it became true.
pub(crate) fn spin_until(budget: Duration, ready: impl Fn() -> bool) -> bool {
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
