//! The deadline timer: one thread per version that sleeps until the earliest deadline in the
//! queue and fails what expired, so a request's deadline fires even while every instance is
//! busy (or while its batch waits out the queue delay) and an expired request never reaches
//! the model.

use std::time::{Duration, Instant};

use super::shared::{lock, Shared};

/// Finest granularity of the deadline timer: coalescing wake-ups keeps its queue scans rare
/// under load.
const RESOLUTION: Duration = Duration::from_millis(1);

/// Runs until the version stops.
pub(crate) fn run(shared: &Shared) {
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
            shared.finish_dropped(dropped);
            st = lock(&shared.state);
            continue;
        }
        st = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now()).max(RESOLUTION);
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
