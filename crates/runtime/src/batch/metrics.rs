//! The served model's OpenTelemetry instruments. kiln uses the OpenTelemetry API only; the
//! host application installs a meter provider and picks the exporter (Prometheus, OTLP, ...).
//!
//! Names carry the `kiln_` prefix and their unit. Durations are histograms with buckets from
//! 5 µs to 10 s; nothing is a summary. Instruments and attribute sets are built once per model
//! (label `model`; no `version` label, so hot swaps never add series), so a request costs a
//! handful of instrument calls and no allocation. The serving version is the info gauge
//! `kiln_model_version_info{model,version}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use opentelemetry::KeyValue;

/// How a request ended; the `outcome` attribute of `kiln_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with outputs.
    Success,
    /// Refused: queue full.
    Overloaded,
    /// Deadline passed before it ran.
    Deadline,
    /// The caller went away.
    Cancelled,
    /// Refused by validation.
    Invalid,
    /// ONNX Runtime (or the worker) failed.
    Failed,
    /// The model was not accepting requests (draining, unloaded).
    Unavailable,
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Success,
    Outcome::Overloaded,
    Outcome::Deadline,
    Outcome::Cancelled,
    Outcome::Invalid,
    Outcome::Failed,
    Outcome::Unavailable,
];

impl Outcome {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Overloaded => "overloaded",
            Self::Deadline => "deadline",
            Self::Cancelled => "cancelled",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
        }
    }

    /// The outcome an error stands for.
    pub fn of(err: &crate::Error) -> Self {
        use crate::ErrorKind as K;
        match err.kind() {
            K::Overloaded => Self::Overloaded,
            K::DeadlineExceeded => Self::Deadline,
            K::Unavailable => Self::Unavailable,
            K::InvalidRequest | K::TooLarge => Self::Invalid,
            _ => Self::Failed,
        }
    }
}

/// Bucket boundaries for durations in seconds: 5 µs .. 10 s.
const SECONDS: [f64; 20] = [
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket boundaries for batch sizes in rows.
const ROWS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Queue depth of one version, mirrored outside the queue's lock for the observable gauges.
#[derive(Debug, Default)]
pub(crate) struct Depth {
    pub(crate) requests: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
}

/// What the model-level gauges read at collection time: the queue depth of every version
/// still alive (a draining version's queue counts too) and the version serving.
#[derive(Debug, Default)]
struct Live {
    depths: Mutex<Vec<Weak<Depth>>>,
    /// `(version, provider)` of the version serving, if any.
    serving: Mutex<Option<(String, String)>>,
}

impl Live {
    /// Sums a field over the live versions, forgetting the ones that are gone.
    fn depth(&self, read: fn(&Depth) -> usize) -> u64 {
        let mut depths = self.depths.lock().unwrap_or_else(|p| p.into_inner());
        depths.retain(|d| d.strong_count() > 0);
        depths
            .iter()
            .filter_map(Weak::upgrade)
            .map(|d| read(&d) as u64)
            .sum()
    }
}

/// The instruments of one served model, created once when the model is first seen and
/// shared by every version it serves, so hot swaps add no instrument, no callback and no
/// attribute set: the exported series stay constant however many versions come and go.
/// Which version serves is the `kiln_model_version_info` gauge.
pub(crate) struct Metrics {
    attrs: Vec<KeyValue>,
    outcome_attrs: Vec<Vec<KeyValue>>,
    live: Arc<Live>,
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    queue_duration: Histogram<f64>,
    compute_duration: Histogram<f64>,
    batch_rows: Histogram<u64>,
    padding_ratio: Histogram<f64>,
    busy: Counter<f64>,
    warmup_duration: Histogram<f64>,
    load_duration: Histogram<f64>,
    checksum_failures: Counter<u64>,
    load_failures: Counter<u64>,
    _gauges: [ObservableGauge<u64>; 4],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("attrs", &self.attrs)
            .finish()
    }
}

impl Metrics {
    pub(crate) fn new(meter: &Meter, model: &str) -> Self {
        let attrs = vec![KeyValue::new("model", model.to_owned())];
        let outcome_attrs = OUTCOMES
            .iter()
            .map(|o| {
                let mut a = attrs.clone();
                a.push(KeyValue::new("outcome", o.as_str()));
                a
            })
            .collect();
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        let live = Arc::new(Live::default());
        let depth_gauge = |name: &'static str,
                           description: &'static str,
                           unit: &'static str,
                           read: fn(&Depth) -> usize| {
            let live = Arc::downgrade(&live);
            let attrs = attrs.clone();
            meter
                .u64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |obs| {
                    if let Some(live) = live.upgrade() {
                        obs.observe(live.depth(read), &attrs);
                    }
                })
                .build()
        };
        // Observable gauges report only what their callback observes at each collection, so
        // a retired version's series disappears instead of staying at 1.
        let serving_gauge = |name: &'static str, description: &'static str, with_provider: bool| {
            let live = Arc::downgrade(&live);
            let attrs = attrs.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |obs| {
                    let Some(live) = live.upgrade() else { return };
                    let serving = live.serving.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((version, provider)) = serving.as_ref() {
                        let mut a = attrs.clone();
                        a.push(KeyValue::new("version", version.clone()));
                        if with_provider {
                            a.push(KeyValue::new("provider", provider.clone()));
                        }
                        obs.observe(1, &a);
                    }
                })
                .build()
        };
        Self {
            requests: meter
                .u64_counter("kiln_requests_total")
                .with_description("Requests by outcome")
                .build(),
            request_duration: seconds(
                "kiln_request_duration_seconds",
                "Time from admission to answer",
            ),
            queue_duration: seconds(
                "kiln_queue_duration_seconds",
                "Time a request waited before its batch ran",
            ),
            compute_duration: seconds(
                "kiln_compute_duration_seconds",
                "Time one batch spent in ONNX Runtime",
            ),
            batch_rows: meter
                .u64_histogram("kiln_batch_size_rows")
                .with_unit("{row}")
                .with_description("Rows per executed batch")
                .with_boundaries(ROWS.to_vec())
                .build(),
            padding_ratio: meter
                .f64_histogram("kiln_batch_padding_ratio")
                .with_description("Share of a padded batch's elements that are padding")
                .with_boundaries(vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
                .build(),
            busy: meter
                .f64_counter("kiln_instance_busy_seconds_total")
                .with_unit("s")
                .with_description("Time instances spent running batches")
                .build(),
            warmup_duration: seconds(
                "kiln_model_warmup_duration_seconds",
                "Time warm-up batches took",
            ),
            load_duration: seconds(
                "kiln_model_load_duration_seconds",
                "Time to read, verify and open a model version",
            ),
            checksum_failures: meter
                .u64_counter("kiln_checksum_failures_total")
                .with_description(
                    "Model loads refused because the bytes did not match the expected digest",
                )
                .build(),
            load_failures: meter
                .u64_counter("kiln_model_load_failures_total")
                .with_description("Model version loads that failed, for any reason")
                .build(),
            _gauges: [
                depth_gauge(
                    "kiln_queue_depth_requests",
                    "Requests waiting",
                    "{request}",
                    |d| d.requests.load(Ordering::Relaxed),
                ),
                depth_gauge(
                    "kiln_queue_depth_bytes",
                    "Input bytes waiting, as held in memory",
                    "By",
                    |d| d.bytes.load(Ordering::Relaxed),
                ),
                serving_gauge(
                    "kiln_model_version_info",
                    "1 for the version serving (no series when none serves)",
                    false,
                ),
                serving_gauge(
                    "kiln_model_provider_info",
                    "1 for the execution provider that holds the serving version's graph",
                    true,
                ),
            ],
            live,
            attrs,
            outcome_attrs,
        }
    }

    /// A new version's queue-depth mirror, counted by the depth gauges while it lives.
    pub(crate) fn depth(&self) -> Arc<Depth> {
        let depth = Arc::new(Depth::default());
        self.live
            .depths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&depth));
        depth
    }

    /// Which version serves now (`None`: none), and on which provider.
    pub(crate) fn serving(&self, serving: Option<(&str, &str)>) {
        *self.live.serving.lock().unwrap_or_else(|p| p.into_inner()) =
            serving.map(|(v, p)| (v.to_owned(), p.to_owned()));
    }

    fn attrs_of(&self, outcome: Outcome) -> &[KeyValue] {
        let idx = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        &self.outcome_attrs[idx]
    }

    /// Counts one request and records its duration, if it had one.
    pub(crate) fn outcome(&self, outcome: Outcome, since_admission: Option<Duration>) {
        self.count(outcome, 1);
        if let Some(d) = since_admission {
            self.duration(outcome, d);
        }
    }

    /// Counts `n` requests with the same outcome in one call.
    pub(crate) fn count(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.requests.add(n, self.attrs_of(outcome));
        }
    }

    /// Records one request's time from admission to answer.
    pub(crate) fn duration(&self, outcome: Outcome, d: Duration) {
        self.request_duration
            .record(d.as_secs_f64(), self.attrs_of(outcome));
    }

    pub(crate) fn queued(&self, waited: Duration) {
        self.queue_duration
            .record(waited.as_secs_f64(), &self.attrs);
    }

    pub(crate) fn batch(&self, rows: usize, compute: Duration) {
        self.batch_rows.record(rows as u64, &self.attrs);
        self.compute_duration
            .record(compute.as_secs_f64(), &self.attrs);
        self.busy.add(compute.as_secs_f64(), &self.attrs);
    }

    pub(crate) fn padding(&self, ratio: f64) {
        self.padding_ratio.record(ratio, &self.attrs);
    }

    pub(crate) fn warmed(&self, warmup: Duration) {
        self.warmup_duration
            .record(warmup.as_secs_f64(), &self.attrs);
    }

    pub(crate) fn loaded(&self, load: Duration) {
        self.load_duration.record(load.as_secs_f64(), &self.attrs);
    }

    /// Counts a failed load; `checksum` when the bytes did not match their digest.
    pub(crate) fn load_failed(&self, checksum: bool) {
        self.load_failures.add(1, &self.attrs);
        if checksum {
            self.checksum_failures.add(1, &self.attrs);
        }
    }
}

/// Times what recording costs per request: `requests` requests in batches of `batch_rows`,
/// recorded exactly as the batcher records them, on the calling thread. For the overhead
/// benchmark (single-threaded and CPU-bound, so far less noisy than a throughput comparison).
#[doc(hidden)]
pub fn time_recording(meter: &Meter, requests: usize, batch_rows: usize) -> Duration {
    let m = Metrics::new(meter, "bench");
    let waited = Duration::from_micros(7);
    let start = std::time::Instant::now();
    for i in 0..requests {
        m.queued(waited);
        m.duration(Outcome::Success, waited * 2);
        if (i + 1) % batch_rows.max(1) == 0 {
            m.batch(batch_rows, waited);
            m.count(Outcome::Success, batch_rows as u64);
        }
    }
    start.elapsed()
}
