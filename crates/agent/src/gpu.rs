//! GPU metrics through NVML, when the node has an NVIDIA driver: utilisation and memory per
//! device (`kiln_agent_gpu_utilization_ratio`, `kiln_agent_gpu_memory_used_bytes`,
//! `kiln_agent_gpu_memory_total_bytes`, labelled `gpu`). Without NVML (no driver, CPU nodes)
//! nothing is registered and nothing is logged above debug: the metrics are simply absent.

use std::sync::Arc;

use opentelemetry::metrics::{Meter, ObservableGauge};
use opentelemetry::KeyValue;

/// The registered GPU gauges (kept alive for their callbacks), or none without NVML.
pub struct GpuMetrics {
    _gauges: Vec<ObservableGauge<f64>>,
    _memory: Vec<ObservableGauge<u64>>,
}

impl GpuMetrics {
    /// Registers the gauges if NVML initialises; `None` (silently) otherwise.
    pub fn register(meter: &Meter) -> Option<Self> {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::debug!(error = %e, "NVML unavailable; GPU metrics off");
                return None;
            }
        };
        let count = nvml.device_count().ok()?;
        tracing::info!(devices = count, "NVML available; exporting GPU metrics");
        let util_nvml = Arc::clone(&nvml);
        let utilization = meter
            .f64_observable_gauge("kiln_agent_gpu_utilization_ratio")
            .with_description("Share of the last sample period a kernel was running, per GPU")
            .with_callback(move |obs| {
                for i in 0..count {
                    if let Ok(u) = util_nvml
                        .device_by_index(i)
                        .and_then(|d| d.utilization_rates())
                    {
                        obs.observe(
                            f64::from(u.gpu) / 100.0,
                            &[KeyValue::new("gpu", i64::from(i))],
                        );
                    }
                }
            })
            .build();
        let memory =
            |name: &'static str,
             description: &'static str,
             pick: fn(&nvml_wrapper::struct_wrappers::device::MemoryInfo) -> u64| {
                let nvml = Arc::clone(&nvml);
                meter
                    .u64_observable_gauge(name)
                    .with_unit("By")
                    .with_description(description)
                    .with_callback(move |obs| {
                        for i in 0..count {
                            if let Ok(m) = nvml.device_by_index(i).and_then(|d| d.memory_info()) {
                                obs.observe(pick(&m), &[KeyValue::new("gpu", i64::from(i))]);
                            }
                        }
                    })
                    .build()
            };
        Some(Self {
            _gauges: vec![utilization],
            _memory: vec![
                memory("kiln_agent_gpu_memory_used", "GPU memory in use", |m| {
                    m.used
                }),
                memory("kiln_agent_gpu_memory_total", "GPU memory in all", |m| {
                    m.total
                }),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nvml_gpu_metrics_are_silently_off() {
        // CI machines have no NVIDIA driver: registration must quietly return None, not fail.
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        assert!(GpuMetrics::register(&opentelemetry::global::meter("test")).is_none());
    }
}
