//! The sidecar's life as one library function, [`run`], with its stop signal passed in (as
//! mini-redis's `server::run`): serve `/livez`, `/readyz`, `/startupz`, `/status` and
//! `/metrics`, publish every model, look again every `interval_s`, and return once `shutdown`
//! resolves. The binary passes SIGTERM/SIGINT; tests pass a channel and drive a whole agent in
//! process.

use std::future::Future;
use std::sync::Arc;

use crate::agent::Agent;
use crate::config::Checked;
use crate::error::{AgentError, Result};
use crate::gpu::GpuMetrics;
use crate::metrics::PrometheusTelemetry;
use crate::server::{router_with, ServerState};

/// Runs the sidecar until `shutdown` resolves; a sync in progress then is abandoned (what it
/// leaves is staging and journaled parts, removed or resumed at the next start).
///
/// # Errors
/// [`AgentError::Listen`] if the endpoints cannot listen, [`AgentError::Telemetry`] if the
/// metrics exporter cannot be set up. Model failures are not errors here: they are in
/// `/status`, `/readyz` and the metrics, and retried at the next poll.
pub async fn run(config: Checked, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (listen, interval) = (config.listen, config.interval);
    let main_ready = config.main_ready_url.clone();
    let telemetry = Arc::new(
        PrometheusTelemetry::new().map_err(|e| AgentError::Telemetry {
            detail: e.to_string(),
        })?,
    );
    let agent = Agent::with_meter(config, &telemetry.meter());
    let _gpu = GpuMetrics::register(&telemetry.meter());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: listen,
            source,
        })?;
    let state = ServerState {
        status: agent.status(),
        main_ready,
    };
    let app = router_with(state, Some(telemetry));
    // Endpoints run on their own task: they never wait for a download.
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = agent.sync_once() => {}
            () = &mut shutdown => break,
        }
        let Some(wait) = interval else {
            // Publish once, then only serve health until told to stop.
            (&mut shutdown).await;
            break;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => break,
        }
    }
    tracing::info!("stopping");
    server.abort();
    // Wait for the abort, so the listener is closed when `run` returns.
    let _ = server.await;
    Ok(())
}
