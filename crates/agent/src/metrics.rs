//! The agent's OpenTelemetry instruments (`kiln_agent_` prefix) and their Prometheus text
//! export for `/metrics` (an `opentelemetry-prometheus` reader on a private registry).
//! Instruments are named exactly as exported (unit and `_total` included; the exporter adds
//! nothing, for the runtime's and the server's instruments too): `kiln_agent_downloaded_bytes_total`,
//! `kiln_agent_download_duration_seconds`, `kiln_agent_retries_total{reason}`,
//! `kiln_agent_verification_failures_total{reason}`, `kiln_agent_cache_hits_total`,
//! `kiln_agent_unchanged_polls_total`, `kiln_agent_download_throughput_bytes_per_second`,
//! `kiln_agent_model_ready{version,digest}`, `kiln_agent_progress_ratio`,
//! `kiln_agent_transfer_throughput_bytes_per_second{mode}`,
//! `kiln_agent_last_success_timestamp_seconds` and `kiln_agent_disk_free_bytes`.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, ObservableGauge};
use opentelemetry::KeyValue;

use crate::error::AgentError;

/// Instruments.
pub struct AgentMetrics {
    bytes: Counter<u64>,
    duration: Histogram<f64>,
    retries: Counter<u64>,
    verification_failures: Counter<u64>,
    cache_hits: Counter<u64>,
    unchanged_polls: Counter<u64>,
    ready: Gauge<u64>,
    /// The version (and digest) each model's ready gauge reads 1 for.
    ready_versions: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
    progress: Gauge<f64>,
    throughput: Gauge<f64>,
    transfer: Gauge<f64>,
    last_success: Gauge<f64>,
    _disk_free: ObservableGauge<u64>,
}

impl AgentMetrics {
    /// Instruments on `meter`; `root` is the directory whose free space is reported.
    pub fn new(meter: &Meter, root: PathBuf) -> Self {
        Self {
            bytes: meter
                .u64_counter("kiln_agent_downloaded_bytes_total")
                .with_unit("By")
                .with_description("Bytes downloaded")
                .build(),
            duration: meter
                .f64_histogram("kiln_agent_download_duration_seconds")
                .with_unit("s")
                .with_description("Time to download and verify one file")
                .with_boundaries(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                ])
                .build(),
            retries: meter
                .u64_counter("kiln_agent_retries_total")
                .with_description("Retried transient failures, by reason")
                .build(),
            verification_failures: meter
                .u64_counter("kiln_agent_verification_failures_total")
                .with_description(
                    "Downloads refused because digest, size or signature did not match, by reason",
                )
                .build(),
            cache_hits: meter
                .u64_counter("kiln_agent_cache_hits_total")
                .with_description(
                    "Syncs that found the version already published with the right digests",
                )
                .build(),
            unchanged_polls: meter
                .u64_counter("kiln_agent_unchanged_polls_total")
                .with_description(
                    "Conditional HEADs (If-None-Match on the last ETag) the store answered 304 Not Modified",
                )
                .build(),
            ready_versions: std::sync::Mutex::default(),
            ready: meter
                .u64_gauge("kiln_agent_model_ready")
                .with_description("1 when the model's current version is published")
                .build(),
            throughput: meter
                .f64_gauge("kiln_agent_download_throughput_bytes_per_second")
                .with_unit("By/s")
                .with_description("Throughput of the model's last completed file download, verification included")
                .build(),
            transfer: meter
                .f64_gauge("kiln_agent_transfer_throughput_bytes_per_second")
                .with_unit("By/s")
                .with_description("What `transfer: auto` measured on the model's store: one stream (mode=stream) and parallel ranged parts (mode=ranged)")
                .build(),
            progress: meter
                .f64_gauge("kiln_agent_progress_ratio")
                .with_description("Share of the current download done")
                .build(),
            last_success: meter
                .f64_gauge("kiln_agent_last_success_timestamp_seconds")
                .with_unit("s")
                .with_description("Unix time of the model's last successful sync")
                .build(),
            _disk_free: meter
                .u64_observable_gauge("kiln_agent_disk_free_bytes")
                .with_unit("By")
                .with_description("Free bytes on the model directory's filesystem")
                .with_callback(move |obs| {
                    if let Some(free) = crate::disk::free_bytes(&root) {
                        obs.observe(free, &[]);
                    }
                })
                .build(),
        }
    }

    pub(crate) fn downloaded(&self, model: &str, bytes: u64, done: u64, total: u64) {
        let a = [KeyValue::new("model", model.to_owned())];
        self.bytes.add(bytes, &a);
        if total > 0 {
            self.progress.record(done as f64 / total as f64, &a);
        }
    }

    pub(crate) fn file_done(&self, model: &str, bytes: u64, took: Duration) {
        let attrs = [KeyValue::new("model", model.to_owned())];
        self.duration.record(took.as_secs_f64(), &attrs);
        self.throughput
            .record(bytes as f64 / took.as_secs_f64().max(1e-6), &attrs);
    }

    /// What `transfer: auto` measured for `mode` (`stream` or `ranged`), bytes per second.
    pub(crate) fn transfer_rate(&self, model: &str, mode: &'static str, rate: f64) {
        self.transfer.record(
            rate,
            &[
                KeyValue::new("model", model.to_owned()),
                KeyValue::new("mode", mode),
            ],
        );
    }

    pub(crate) fn retry(&self, model: &str, error: &AgentError) {
        let reason = match error {
            AgentError::Changed { .. } => "changed",
            AgentError::Store { .. } => "store",
            _ => "other",
        };
        self.retries.add(
            1,
            &[
                KeyValue::new("model", model.to_owned()),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// A download or signature refused: `reason` is `size`, `digest`, or a signature's
    /// [`kiln::signing::SignatureError::reason`].
    pub(crate) fn verification_failure(&self, model: &str, reason: &'static str) {
        self.verification_failures.add(
            1,
            &[
                KeyValue::new("model", model.to_owned()),
                KeyValue::new("reason", reason),
            ],
        );
    }

    pub(crate) fn unchanged_poll(&self, model: &str) {
        self.unchanged_polls
            .add(1, &[KeyValue::new("model", model.to_owned())]);
    }

    pub(crate) fn cache_hit(&self, model: &str) {
        self.cache_hits
            .add(1, &[KeyValue::new("model", model.to_owned())]);
    }

    pub(crate) fn published(&self, model: &str, version: &str, digest: &str) {
        let labels = |version: &str, digest: &str| {
            [
                KeyValue::new("model", model.to_owned()),
                KeyValue::new("version", version.to_owned()),
                KeyValue::new("digest", digest.to_owned()),
            ]
        };
        // Only the current version reads 1: the one it replaced drops to 0.
        let previous = self
            .ready_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), (version.to_owned(), digest.to_owned()));
        if let Some((v, d)) = previous.filter(|(v, _)| v != version) {
            self.ready.record(0, &labels(&v, &d));
        }
        self.ready.record(1, &labels(version, digest));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success
            .record(now, &[KeyValue::new("model", model.to_owned())]);
    }
}

/// The exporter the server shares (in the runtime, feature `prometheus`).
pub use kiln::prometheus::PrometheusTelemetry;
