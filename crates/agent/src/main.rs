//! `kiln-agent fetch|run --config agent.yaml`
//!
//! - `fetch`: init-container mode. Publish every model, exit 0; on failure exit 1 and write
//!   the reason (redacted) to the termination log, where `kubectl describe pod` shows it.
//! - `run`: sidecar mode (Kubernetes native sidecar). Publish, serve `/livez`, `/readyz`,
//!   `/startupz`, `/status`, and look for new versions every `interval_s`; SIGTERM or SIGINT
//!   stops it cleanly (exit 0).

use anyhow::{Context, Result};
use kiln_agent::{Agent, AgentConfig};

fn main() {
    // Human-readable logs by default; `KILN_AGENT_LOG_FORMAT=json` for log pipelines.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("KILN_AGENT_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Err(e) = real_main() {
        eprintln!(
            "kiln-agent: {}",
            kiln_agent::redact::text(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: kiln-agent fetch|run --config FILE";
    let mode = args.first().map(String::as_str).context(usage)?;
    if matches!(mode, "--version" | "-V") {
        println!("kiln-agent {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let path = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--config"), Some(p)) => p.clone(),
        _ => anyhow::bail!("{usage}"),
    };
    let config = AgentConfig::from_file(path.as_ref())?
        .with_env(|k| std::env::var(k).ok())?
        .check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = match mode {
        "fetch" => rt.block_on(fetch(config)),
        "run" => rt.block_on(run(config)),
        other => anyhow::bail!("unknown mode {other:?}; {usage}"),
    };
    // A hash or write still running on the blocking pool is not waited for: what it leaves
    // is staging, removed or resumed at the next start.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn fetch(config: kiln_agent::Checked) -> Result<()> {
    let log = config.termination_log.clone();
    let agent = Agent::new(config);
    let failures: Vec<String> = agent
        .sync_once()
        .await
        .into_iter()
        .filter_map(|(m, r)| {
            r.err()
                .map(|e| format!("{m}: {}", kiln_agent::redact::text(&e.to_string())))
        })
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    let reason = failures.join("\n");
    if let Err(e) = std::fs::write(&log, &reason) {
        tracing::warn!(path = %log.display(), error = %e, "cannot write the termination log");
    }
    anyhow::bail!("{reason}")
}

/// SIGTERM (the kubelet) or SIGINT.
async fn run(config: kiln_agent::Checked) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    Ok(kiln_agent::run(config, stop).await?)
}
