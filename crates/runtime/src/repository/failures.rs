//! Which published versions failed to load, and when each may be tried again.
//!
//! A failure can be transient (a GPU out of memory, a file caught mid-copy), so a failed
//! version is not given up on, but neither is it retried on every poll: each failure of the
//! same [`Published`] (version name *and* manifest digest) doubles its wait, from
//! `retry_min` up to `retry_max`. Anything new about the version — a different manifest, or
//! `current` moving — is a new key with no history, tried at once.
//!
//! Pure bookkeeping: the caller passes the time in, so the rules are unit-tested without
//! sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::published::Published;

/// Exponential backoff between retries of one failing version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits from `min`, doubling per failure, never over `max` (raised to `min` if smaller).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
        }
    }

    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.min
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// One version's failure history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Failures in a row.
    pub(crate) failures: u32,
    /// Not tried again before this.
    pub(crate) retry_at: Instant,
    /// The last error.
    pub(crate) reason: String,
}

/// Failure records per model, per published version.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_model: HashMap<String, HashMap<Published, Record>>,
}

impl Failures {
    /// Whether `version` of `model` may be tried at `now` (it never failed, or its wait is
    /// over).
    pub(crate) fn due(&self, model: &str, version: &Published, now: Instant) -> bool {
        self.get(model, version).is_none_or(|r| now >= r.retry_at)
    }

    /// The record of `version` of `model`, if it failed.
    pub(crate) fn get(&self, model: &str, version: &Published) -> Option<&Record> {
        self.by_model.get(model)?.get(version)
    }

    /// Records that `version` of `model` failed at `now`; returns how long it now waits.
    pub(crate) fn failed(
        &mut self,
        model: &str,
        version: &Published,
        now: Instant,
        reason: String,
        backoff: &Backoff,
    ) -> Duration {
        let records = self.by_model.entry(model.to_owned()).or_default();
        let failures = records.get(version).map_or(0, |r| r.failures) + 1;
        let delay = backoff.delay(failures);
        records.insert(
            version.clone(),
            Record {
                failures,
                retry_at: now + delay,
                reason,
            },
        );
        delay
    }

    /// Forgets the history of `version` of `model` (it loaded).
    pub(crate) fn succeeded(&mut self, model: &str, version: &Published) {
        if let Some(records) = self.by_model.get_mut(model) {
            records.remove(version);
            if records.is_empty() {
                self.by_model.remove(model);
            }
        }
    }

    /// Forgets every record of `model` (`current` moved, an admin asked for a load, or the
    /// model is gone).
    pub(crate) fn clear(&mut self, model: &str) {
        self.by_model.remove(model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Digest;

    fn v(name: &str, manifest: &[u8]) -> Published {
        Published {
            version: name.to_owned(),
            manifest: Some(Digest::of(manifest)),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_delay_doubles_from_min_and_stops_at_max() {
        let b = Backoff::new(5 * S, 300 * S);
        let delays: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.delay(u32::MAX), 300 * S, "no overflow");
        assert_eq!(b.delay(0), 5 * S);
        // A max under min is raised to min; a zero min retries every poll.
        assert_eq!(Backoff::new(10 * S, S).delay(3), 10 * S);
        assert_eq!(Backoff::new(Duration::ZERO, S).delay(4), Duration::ZERO);
        for n in 0..200 {
            let d = Backoff::new(Duration::from_millis(3), 7 * S).delay(n);
            assert!(Duration::from_millis(3) <= d && d <= 7 * S, "{n}: {d:?}");
        }
    }

    #[test]
    fn a_failed_version_waits_out_its_backoff_then_is_due() {
        let b = Backoff::new(5 * S, 60 * S);
        let t0 = Instant::now();
        let mut f = Failures::default();
        let bad = v("2", b"manifest");
        assert!(f.due("m", &bad, t0), "never failed");
        assert_eq!(f.failed("m", &bad, t0, "oom".into(), &b), 5 * S);
        assert!(!f.due("m", &bad, t0), "not retried right away");
        assert!(!f.due("m", &bad, t0 + 4 * S));
        assert!(f.due("m", &bad, t0 + 5 * S));
        assert_eq!(f.get("m", &bad).map(|r| r.reason.as_str()), Some("oom"));
        // The second failure in a row waits twice as long.
        assert_eq!(f.failed("m", &bad, t0 + 5 * S, "oom".into(), &b), 10 * S);
        assert!(!f.due("m", &bad, t0 + 14 * S));
        assert!(f.due("m", &bad, t0 + 15 * S));
        f.succeeded("m", &bad);
        assert!(f.due("m", &bad, t0 + 5 * S), "history forgotten on success");
    }

    #[test]
    fn records_are_per_manifest_and_per_model_and_cleared_together() {
        let b = Backoff::new(5 * S, 60 * S);
        let t0 = Instant::now();
        let mut f = Failures::default();
        let bad = v("2", b"one");
        f.failed("m", &bad, t0, "bad".into(), &b);
        assert!(f.due("m", &v("2", b"two"), t0), "same name, new manifest");
        assert!(f.due("other", &bad, t0), "another model");
        let old = v("1", b"one");
        f.failed("m", &old, t0, "bad".into(), &b);
        f.clear("m");
        assert!(f.due("m", &bad, t0) && f.due("m", &old, t0));
    }
}
