//! `kiln-classify-service`: an HTTP service of its own built on the `kiln` library. It serves
//! the models kiln-agent publishes under `--root` through `kiln::http` (the Open Inference
//! Protocol's `/v2` endpoints and `/metrics`, mounted on the service's app) and adds its own
//! route, `POST /classify`, which turns a file's raw bytes into magika's input and answers
//! the file's content type:
//!
//! ```text
//! kiln-classify-service --root /models --labels magika-config.json --listen 127.0.0.1:8080
//! curl --data-binary @setup.py http://127.0.0.1:8080/classify
//! {"label":"python","score":0.99,"confident":true}
//! ```
//!
//! It prints `listening on http://ADDR` once bound (`--listen 127.0.0.1:0` picks a port).
//! SIGTERM or SIGINT stops it as a pod is stopped (`kiln::http::shutdown`), within
//! `--shutdown-timeout-s`: readiness turns false while every route goes on being served for
//! `--drain-delay-s`, then the listener closes, requests in flight finish and the models
//! drain in what is left; work still running when the budget is spent does not hold the
//! process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kiln::http::shutdown::{exit_now, Shutdown, Stopped};
use kiln::http::{AppState, ServeOptions, ServerConfig};
use kiln::{Repository, RepositoryConfig, Runtime, RuntimeConfig};
use kiln_classify::magika::Magika;
use kiln_classify::service::{app, Classify};

/// Content types over HTTP: `POST /classify` beside kiln's Open Inference Protocol endpoints.
#[derive(Debug, Parser)]
#[command(name = "kiln-classify-service", version)]
struct Args {
    /// The model repository kiln-agent publishes (`<root>/<model>/current`).
    #[arg(long, env = "KILN_CLASSIFY_ROOT")]
    root: PathBuf,
    /// magika's `config.min.json` (input sizes, labels, thresholds).
    #[arg(long, env = "KILN_CLASSIFY_LABELS")]
    labels: PathBuf,
    /// The magika model's name in the repository.
    #[arg(long, env = "KILN_CLASSIFY_MODEL", default_value = "magika")]
    model: String,
    /// Address to serve on.
    #[arg(long, env = "KILN_CLASSIFY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Largest request body, MiB (`/classify` and `/v2` alike).
    #[arg(long, env = "KILN_CLASSIFY_MAX_BODY_MIB", default_value_t = 32)]
    max_body_mib: usize,
    /// Deadline of one `/classify` request (queue wait and run), milliseconds.
    #[arg(long, env = "KILN_CLASSIFY_TIMEOUT_MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// After SIGTERM, how long requests go on being served with readiness false, seconds
    /// (the endpoints controller still routes to the pod for a while).
    #[arg(long, env = "KILN_CLASSIFY_DRAIN_DELAY_S", default_value = "5", value_parser = seconds)]
    drain_delay_s: Duration,
    /// The whole shutdown's budget from SIGTERM to exit (drain delay, open connections,
    /// models' drain), seconds. The pod's terminationGracePeriodSeconds must be larger.
    #[arg(long, env = "KILN_CLASSIFY_SHUTDOWN_TIMEOUT_S", default_value = "30", value_parser = seconds)]
    shutdown_timeout_s: Duration,
}

/// A timeout flag's seconds (`kiln::http::shutdown::parse_seconds`).
fn seconds(raw: &str) -> Result<Duration, String> {
    kiln::http::shutdown::parse_seconds(raw)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let magika = Magika::from_file(&args.labels)?;
    // The port first: a start that fails must fail before a model thread is inside ONNX
    // Runtime (returning from `main` then aborts the process).
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("bind {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let telemetry = Arc::new(kiln::prometheus::PrometheusTelemetry::new()?);
    let meter = telemetry.meter();
    let runtime = Runtime::new(&RuntimeConfig::default()).context("load ONNX Runtime")?;
    let repo = Arc::new(Repository::new(
        runtime,
        RepositoryConfig::new(&args.root),
        meter.clone(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = repo
        .watch(Arc::clone(&stop))
        .context("start the repository watcher")?;
    let state = Arc::new(AppState::new(
        Arc::clone(&repo),
        ServerConfig {
            max_body_bytes: args.max_body_mib << 20,
            ..ServerConfig::default()
        },
        Some(telemetry),
        &meter,
    ));
    let classify = Arc::new(Classify {
        state: Arc::clone(&state),
        magika,
        model: args.model,
        timeout: Duration::from_millis(args.timeout_ms),
    });
    let shutdown = Shutdown::new(args.drain_delay_s, args.shutdown_timeout_s);
    let options = ServeOptions {
        shutdown_grace: shutdown.connection_grace(),
        ..ServeOptions::default()
    };
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("listening on http://{}", listener.local_addr()?);
        // kiln's accept loop, not `axum::serve`: a header-read timeout and a connection
        // cap, so clients trickling their headers cannot hold connections forever.
        kiln::http::serve(listener, app(classify), options, shutdown.signalled(&state)).await;
        anyhow::Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = served {
        // Not yet serving: no model thread may be inside ONNX Runtime when `main` returns.
        let _ = watcher.join();
        return Err(e);
    }
    match shutdown.finish(rt, watcher, repo) {
        Stopped::Clean => Ok(()),
        Stopped::BudgetSpent => exit_now(0),
        Stopped::Failed => exit_now(1),
    }
}
