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
//! SIGTERM or SIGINT: readiness turns false, the listener closes, requests in flight finish,
//! the models drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
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
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("listening on http://{}", listener.local_addr()?);
        // kiln's accept loop, not `axum::serve`: a header-read timeout and a connection
        // cap, so clients trickling their headers cannot hold connections forever.
        kiln::http::serve(
            listener,
            app(classify),
            ServeOptions::default(),
            async move {
                kiln::http::terminated().await;
                state.draining.store(true, Ordering::Relaxed);
            },
        )
        .await;
        anyhow::Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    served?;
    for handle in repo.handles() {
        handle.shutdown();
    }
    Ok(())
}
