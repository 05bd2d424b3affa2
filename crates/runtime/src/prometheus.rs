//! Prometheus text exposition of kiln's OpenTelemetry metrics (feature `prometheus`), the one
//! exporter `kiln-server` and `kiln-agent` serve on `/metrics`, and that a service embedding the
//! runtime can serve too. One naming rule: every instrument is named with its unit and
//! `_total` already, so the exporter appends nothing and the exported names are the ones
//! README documents (the same under OTLP).

use opentelemetry::metrics::{Meter, MeterProvider as _};

/// A meter provider whose metrics `/metrics` renders as Prometheus text.
pub struct PrometheusTelemetry {
    registry: prometheus::Registry,
    provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

impl PrometheusTelemetry {
    /// Sets up the registry, exporter and provider.
    ///
    /// # Errors
    /// If the exporter cannot be registered.
    pub fn new() -> Result<Self, opentelemetry_sdk::error::OTelSdkError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            // One naming rule for runtime, server and agent: every instrument is named with
            // its unit and `_total` already (the names README documents, the same under OTLP),
            // so the exporter must not append them again.
            .without_units()
            .without_counter_suffixes()
            .build()?;
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(exporter)
            .build();
        Ok(Self { registry, provider })
    }

    /// A meter for the process's instruments (the runtime's, the server's, the agent's).
    pub fn meter(&self) -> Meter {
        self.provider.meter("kiln")
    }

    /// The current metrics as Prometheus text.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
