//! `kiln-agent fetch|run --config agent.yaml` (`--help` for every flag and its environment
//! variable).
//!
//! - `fetch`: init-container mode. Publish every model, exit 0; on failure exit 1 and write
//!   the reason (redacted) to the termination log, where `kubectl describe pod` shows it.
//! - `run`: sidecar mode (Kubernetes native sidecar). Publish, serve `/livez`, `/readyz`,
//!   `/startupz`, `/status`, and look for new versions every `interval_s`; SIGTERM or SIGINT
//!   stops it cleanly (exit 0).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_agent::{Agent, AgentConfig};

/// Fetches model artifacts from object storage into the shared repository, verifies every
/// file's sha256, publishes each version atomically and gates the pod's readiness.
#[derive(Debug, Parser)]
#[command(name = "kiln-agent", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Init-container mode: publish every model once, then exit 0; on a failure exit 1 with
    /// the reason (redacted) in the termination log.
    Fetch(Options),
    /// Native-sidecar mode: publish, serve /livez, /readyz, /startupz, /status and /metrics,
    /// and look for new versions every `interval_s` until SIGTERM or SIGINT.
    Run(Options),
}

#[derive(Debug, clap::Args)]
struct Options {
    /// The agent's configuration (YAML; README, "The agent")
    #[arg(long, env = "KILN_AGENT_CONFIG")]
    config: PathBuf,
    /// Log lines as text or as JSON objects (one per line)
    #[arg(long, env = "KILN_AGENT_LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() {
    let cli = Cli::parse();
    let (Mode::Fetch(options) | Mode::Run(options)) = &cli.mode;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match options.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Err(e) = real_main(&cli.mode) {
        eprintln!(
            "kiln-agent: {}",
            kiln_agent::redact::text(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

fn real_main(mode: &Mode) -> Result<()> {
    let (Mode::Fetch(options) | Mode::Run(options)) = mode;
    let config = AgentConfig::from_file(&options.config)?
        .with_env(|k| std::env::var(k).ok())?
        .check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = match mode {
        Mode::Fetch(_) => rt.block_on(fetch(config)),
        Mode::Run(_) => rt.block_on(run(config)),
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
