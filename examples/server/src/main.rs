//! `kiln-server`: serves every model published under `--root` over the Open Inference
//! Protocol v2 (REST).
//!
//! ```text
//! kiln-server --root /models [--listen 0.0.0.0:8000] [--admin] [--max-body-mib 32]
//!             [--drain-delay-s 5] [--poll-ms 2000] [--device cpu|auto|cuda|cuda:N]
//!             [--config settings.yaml] [--admin-token-file FILE] [--header-timeout-s 10]
//!             [--body-timeout-s 30] [--max-connections 4096]
//!             [--ready-when all|any|listed:NAME,...]
//! ```
//! Environment overrides: `KILN_SERVER_ROOT`, `KILN_SERVER_LISTEN`. ONNX Runtime is found as
//! the runtime documents (`KILN_ORT_DIR`, `ORT_DYLIB_PATH`, ...). SIGTERM or SIGINT: readiness
//! turns false, after `--drain-delay-s` the listener stops and in-flight requests finish,
//! then every model drains. `--config`: session and per-model batching settings
//! ([`kiln_server::config`]). `--admin` turns the repository endpoints on: for loopback
//! clients only, or for holders of the bearer token in `--admin-token-file`. Slow clients: the
//! headers must arrive within `--header-timeout-s`, an inference body within `--body-timeout-s`.
//! `--ready-when` ([`kiln::Readiness`]): `/v2/health/ready` is 200 when every model found
//! serves (`all`, the default), when any does (`any`), or when the listed ones do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln::{Repository, RepositoryConfig, Runtime, RuntimeConfig};
use kiln_server::{router, serve, AppState, ModelSettings, ServeOptions, ServerConfig};

struct Args {
    root: String,
    listen: String,
    admin: bool,
    max_body_mib: usize,
    drain_delay: Duration,
    poll: Duration,
    device: kiln::Device,
    settings: Option<String>,
    admin_token_file: Option<String>,
    serve: ServeOptions,
    body_timeout: Duration,
    ready_when: kiln::Readiness,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        root: std::env::var("KILN_SERVER_ROOT").unwrap_or_default(),
        listen: std::env::var("KILN_SERVER_LISTEN").unwrap_or_else(|_| "0.0.0.0:8000".into()),
        admin: false,
        max_body_mib: 32,
        drain_delay: Duration::from_secs(5),
        poll: Duration::from_millis(2000),
        device: kiln::Device::Cpu,
        settings: None,
        admin_token_file: None,
        serve: ServeOptions::default(),
        body_timeout: Duration::from_secs(30),
        ready_when: kiln::Readiness::All,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--root" => a.root = value()?,
            "--config" => a.settings = Some(value()?),
            "--admin-token-file" => a.admin_token_file = Some(value()?),
            "--header-timeout-s" => {
                a.serve.header_read_timeout =
                    Duration::from_secs_f64(value()?.parse().context("--header-timeout-s")?)
            }
            "--body-timeout-s" => {
                a.body_timeout =
                    Duration::from_secs_f64(value()?.parse().context("--body-timeout-s")?)
            }
            "--max-connections" => {
                a.serve.max_connections = value()?.parse().context("--max-connections")?
            }
            "--listen" => a.listen = value()?,
            "--ready-when" => a.ready_when = value()?.parse().map_err(anyhow::Error::msg)?,
            "--admin" => a.admin = true,
            "--max-body-mib" => a.max_body_mib = value()?.parse().context("--max-body-mib")?,
            "--drain-delay-s" => {
                a.drain_delay = Duration::from_secs(value()?.parse().context("--drain-delay-s")?)
            }
            "--device" => a.device = value()?.parse().map_err(anyhow::Error::msg)?,
            "--poll-ms" => a.poll = Duration::from_millis(value()?.parse().context("--poll-ms")?),
            other => bail!("unknown argument {other:?} (see the crate docs for the flags)"),
        }
    }
    if a.root.is_empty() {
        bail!("--root (or KILN_SERVER_ROOT) is required: the model repository directory");
    }
    Ok(a)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = parse()?;
    let settings = match &args.settings {
        Some(path) => Some(ModelSettings::from_file(path.as_ref())?),
        None => None,
    };
    let admin_token = match &args.admin_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("read the admin token file {path}"))?
                .trim()
                .to_owned();
            if token.len() < 16 {
                bail!("the admin token in {path} is shorter than 16 characters");
            }
            Some(token)
        }
        None => None,
    };
    let telemetry = Arc::new(kiln_agent::metrics::PrometheusTelemetry::new()?);
    let meter = telemetry.meter();
    let runtime = Runtime::new(&RuntimeConfig::default())?;
    let mut config = RepositoryConfig::new(&args.root);
    config.poll_interval = args.poll;
    if let Some(settings) = settings {
        settings.apply(&mut config);
    }
    config.options = config.options.clone().with_device(args.device);
    let repo = Arc::new(Repository::new(runtime, config, meter.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = repo
        .watch(Arc::clone(&stop))
        .context("start the repository watcher")?;
    let state = Arc::new(AppState::new(
        repo,
        ServerConfig {
            admin: args.admin,
            max_body_bytes: args.max_body_mib << 20,
            admin_token,
            body_read_timeout: args.body_timeout,
            ready_when: args.ready_when,
            ..ServerConfig::default()
        },
        Some(telemetry),
        &meter,
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("bind {}", args.listen))?;
        tracing::info!(listen = %args.listen, root = %args.root, "serving");
        let shutdown_state = Arc::clone(&state);
        let shutdown = async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "no SIGTERM handler; Ctrl-C only");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            // Readiness first, so the endpoints controller stops sending; then drain.
            shutdown_state.draining.store(true, Ordering::Relaxed);
            tracing::info!(
                delay_s = args.drain_delay.as_secs(),
                "shutting down: not ready"
            );
            tokio::time::sleep(args.drain_delay).await;
        };
        serve(listener, router(state), args.serve, shutdown).await;
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    tracing::info!("stopped");
    Ok(())
}
