//! `kiln-server`: serves every model published under `--root` over the Open Inference
//! Protocol v2, REST on `--listen` and gRPC on `--grpc-listen` (`kiln-server --help` lists
//! every flag with its environment variable and default).
//!
//! ONNX Runtime is found as the runtime documents (`KILN_ORT_DIR`, `ORT_DYLIB_PATH`, ...).
//! Shutdown (SIGTERM or SIGINT) has one budget, `--shutdown-timeout-s`, that the pod's
//! `terminationGracePeriodSeconds` must exceed: readiness turns false at once and inference
//! goes on being served for `--drain-delay-s` (the endpoints controller is still routing
//! here), then both listeners close and open connections finish their requests, then every
//! model drains, each step within what is left of the budget (the last two at least a
//! quarter second each, for idle models to stop cleanly). Work still running when the budget
//! is spent (a batch inside ONNX Runtime, an admin load) does not hold the process: it logs a
//! warning and exits 0 at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use kiln::http::shutdown::{Shutdown, Stopped};
use kiln::http::{serve, standalone_router, AppState, ServeOptions, ServerConfig};
use kiln::{Repository, RepositoryConfig, Runtime, RuntimeConfig};
use kiln_server::ModelSettings;

/// mimalloc, set as `kiln_server::allocator` says (why: its module docs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets mimalloc's defaults before its own constructor reads them (unnumbered with GCC, 101
/// with clang): the linker runs `.init_array.NNNNN` sections in ascending order, then the
/// unnumbered ones. Elsewhere `main` sets them first thing, late for `arena_eager_commit`.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static ALLOCATOR_DEFAULTS: extern "C" fn() = kiln_server::allocator::set_defaults;

/// Serves every model published under a repository root over the Open Inference Protocol v2
/// (KServe / Triton), REST and gRPC, with dynamic batching and hot swaps.
#[derive(Debug, Parser)]
#[command(name = "kiln-server", version)]
struct Args {
    /// The model repository: `<root>/<model>/current` -> a verified version directory (what
    /// kiln-agent publishes).
    #[arg(
        long,
        env = "KILN_SERVER_ROOT",
        required_unless_present = "model_dir",
        conflicts_with = "model_dir"
    )]
    root: Option<PathBuf>,
    /// Instead of a repository, one plain model directory (KServe's `/mnt/models`: one `.onnx`
    /// file and its external data, no manifest); needs `--verify` or `--no-verify`.
    #[arg(long, env = "KILN_SERVER_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// The name `--model-dir`'s model is served under.
    #[arg(long, env = "KILN_SERVER_MODEL_NAME", default_value = "model")]
    model_name: String,
    /// `--model-dir`'s expected digest: `sha256:<64 hex digits>` of the `.onnx` file.
    #[arg(
        long,
        env = "KILN_SERVER_VERIFY",
        requires = "model_dir",
        conflicts_with = "no_verify"
    )]
    verify: Option<kiln_server::plain::Verify>,
    /// Serve `--model-dir` without checking any digest (logged as a warning).
    #[arg(long, env = "KILN_SERVER_NO_VERIFY", requires = "model_dir")]
    no_verify: bool,
    /// `--model-dir`'s OpenSSF model-signing bundle (`model.sig`; relative to the directory),
    /// verified against `--trust-public-key` or `--trust-ca-certificates`: the directory must
    /// hold exactly the signed files, each with its signed digest.
    #[arg(
        long,
        env = "KILN_SERVER_SIGNATURE",
        requires = "model_dir",
        conflicts_with_all = ["verify", "no_verify"]
    )]
    signature: Option<PathBuf>,
    /// The public key (PEM, ECDSA P-256/P-384) `--signature` must be signed by.
    #[arg(
        long,
        env = "KILN_SERVER_TRUST_PUBLIC_KEY",
        requires = "signature",
        conflicts_with = "trust_ca_certificates"
    )]
    trust_public_key: Option<PathBuf>,
    /// CA certificates (PEM) `--signature`'s certificate chain must lead to.
    #[arg(
        long,
        env = "KILN_SERVER_TRUST_CA_CERTIFICATES",
        requires = "signature"
    )]
    trust_ca_certificates: Option<PathBuf>,
    /// REST (HTTP/1.1) address.
    #[arg(long, env = "KILN_SERVER_LISTEN", default_value = "0.0.0.0:8000")]
    listen: String,
    /// gRPC address (`GRPCInferenceService`, `grpc.health.v1`), or `off`.
    #[arg(long, env = "KILN_SERVER_GRPC_LISTEN", default_value = "0.0.0.0:8001")]
    grpc_listen: String,
    /// Serve the repository endpoints (load, unload): to loopback clients, or to holders of
    /// the `--admin-token-file` token.
    #[arg(long, env = "KILN_SERVER_ADMIN")]
    admin: bool,
    /// File holding the bearer token the repository endpoints require (16+ characters).
    #[arg(long, env = "KILN_SERVER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Largest request body (REST) or message (gRPC), MiB.
    #[arg(long, env = "KILN_SERVER_MAX_BODY_MIB", default_value_t = 32)]
    max_body_mib: usize,
    /// Most strings (`BYTES` elements) one request may hold, its inputs together (REST and
    /// gRPC): each costs kiln and ONNX Runtime 56 bytes or more however short.
    #[arg(
        long,
        env = "KILN_SERVER_MAX_STRING_ELEMENTS",
        default_value = "1048576"
    )]
    max_string_elements: std::num::NonZeroUsize,
    /// After SIGTERM, how long inference goes on being served with readiness false, seconds.
    #[arg(long, env = "KILN_SERVER_DRAIN_DELAY_S", default_value = "5", value_parser = seconds)]
    drain_delay_s: Duration,
    /// The whole shutdown's budget from SIGTERM to exit (drain delay, open connections, model
    /// drain), seconds. The pod's terminationGracePeriodSeconds must be larger.
    #[arg(long, env = "KILN_SERVER_SHUTDOWN_TIMEOUT_S", default_value = "30", value_parser = seconds)]
    shutdown_timeout_s: Duration,
    /// How often the repository is scanned for new versions, milliseconds.
    #[arg(long, env = "KILN_SERVER_POLL_MS", default_value_t = 2000)]
    poll_ms: u64,
    /// Where models run: cpu, auto, cuda or cuda:N.
    #[arg(long, env = "KILN_SERVER_DEVICE", default_value = "cpu")]
    device: kiln::Device,
    /// Session and per-model batching settings (YAML).
    #[arg(long, env = "KILN_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Longest a client may take to send a request's headers, seconds.
    #[arg(long, env = "KILN_SERVER_HEADER_TIMEOUT_S", default_value = "10", value_parser = seconds)]
    header_timeout_s: Duration,
    /// Longest an inference body may take to arrive once its headers have, seconds.
    #[arg(long, env = "KILN_SERVER_BODY_TIMEOUT_S", default_value = "30", value_parser = seconds)]
    body_timeout_s: Duration,
    /// Longest a client may take nothing of its answers (an answer's bytes, or the socket's)
    /// before its connection is closed, seconds: the time between two takes, not a whole
    /// answer's; 0 for no limit.
    #[arg(long, env = "KILN_SERVER_SEND_TIMEOUT_S", default_value = "60", value_parser = seconds)]
    send_timeout_s: Duration,
    /// How long a connection may have nothing in flight before it is closed gracefully (an
    /// HTTP/2 GOAWAY: gRPC clients reconnect for their next call), seconds; 0 for no limit.
    /// An open gRPC stream counts as in flight. While every slot is taken and a client waits
    /// for one, connections idle for a second, or with only streams waiting on their
    /// clients (which then end UNAVAILABLE), give it theirs whatever this says.
    #[arg(long, env = "KILN_SERVER_IDLE_TIMEOUT_S", default_value = "300", value_parser = seconds)]
    idle_timeout_s: Duration,
    /// Most connections served at once, per listener.
    #[arg(long, env = "KILN_SERVER_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// When the server is ready: `all` models found serve, `any` does, or `listed:NAME,...`.
    #[arg(long, env = "KILN_SERVER_READY_WHEN", default_value = "all")]
    ready_when: kiln::Readiness,
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, env = "KILN_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A timeout flag's seconds (`kiln::http::shutdown::parse_seconds`).
fn seconds(raw: &str) -> Result<Duration, String> {
    kiln::http::shutdown::parse_seconds(raw)
}

fn main() -> Result<()> {
    #[cfg(not(target_os = "linux"))]
    kiln_server::allocator::set_defaults();
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(false)
            .with_env_filter(filter)
            .init(),
    }
    if let Err(why) = kiln_server::allocator::applied() {
        tracing::warn!("{why}: freed memory may stay resident longer");
    }
    kiln_server::allocator::spawn_purger().context("start the allocator's purge thread")?;
    run(args)
}

fn read_token(path: &std::path::Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("read the admin token file {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        bail!(
            "the admin token in {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(token)
}

fn run(args: Args) -> Result<()> {
    let settings = args
        .config
        .as_deref()
        .map(ModelSettings::from_file)
        .transpose()?;
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let grpc_listen = match args.grpc_listen.as_str() {
        "off" | "" => None,
        addr => Some(addr.to_owned()),
    };
    // Both ports first: a port in use must fail the start before anything loads (returning
    // from `main` while a model thread is inside ONNX Runtime aborts the process).
    let bind = |addr: &str, flag: &str| -> Result<std::net::TcpListener> {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}{flag}"))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    let rest = bind(&args.listen, "")?;
    let grpc = grpc_listen
        .as_deref()
        .map(|addr| bind(addr, " (--grpc-listen)"))
        .transpose()?;
    let shutdown = Shutdown::new(args.drain_delay_s, args.shutdown_timeout_s);
    let telemetry = Arc::new(kiln::prometheus::PrometheusTelemetry::new()?);
    let meter = telemetry.meter();
    // With `--model-dir`: the staged repository, removed on every return from here (the model
    // directory itself is untouched).
    let mut staged = None;
    let root = match (&args.root, &args.model_dir) {
        (Some(root), _) => root.clone(),
        (None, Some(dir)) => {
            let verify = match (&args.verify, args.no_verify, &args.signature) {
                (Some(v), false, None) => v.clone(),
                (None, true, None) => kiln_server::plain::Verify::Off,
                (None, false, Some(bundle)) => {
                    let trust = match (&args.trust_public_key, &args.trust_ca_certificates) {
                        (Some(k), None) => kiln::signing::Trust::public_key_file(k)?,
                        (None, Some(c)) => kiln::signing::Trust::ca_certificates_file(c)?,
                        _ => bail!("--signature needs --trust-public-key or --trust-ca-certificates"),
                    };
                    kiln_server::plain::Verify::Signature {
                        bundle: bundle.clone(),
                        trust,
                    }
                }
                _ => bail!(
                    "--model-dir needs --verify sha256:<digest> of its .onnx file, --signature with a trust root, or --no-verify to serve it unchecked"
                ),
            };
            staged
                .insert(kiln_server::plain::stage(dir, &args.model_name, &verify)?)
                .root()
                .to_owned()
        }
        (None, None) => bail!("--root or --model-dir is required"),
    };
    let runtime = Runtime::new(&RuntimeConfig::default())?;
    let mut config = RepositoryConfig::new(&root);
    config.poll_interval = Duration::from_millis(args.poll_ms);
    if let Some(settings) = settings {
        settings.apply(&mut config);
    }
    config.options = config.options.clone().with_device(args.device);
    let repo = Arc::new(Repository::new(runtime, config, meter.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // From here on every return goes past `watcher.join()` below.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = repo
        .watch(Arc::clone(&stop))
        .context("start the repository watcher")?;
    let state = Arc::new(AppState::new(
        Arc::clone(&repo),
        ServerConfig {
            admin: args.admin,
            max_body_bytes: args.max_body_mib << 20,
            max_string_elements: args.max_string_elements.get(),
            admin_token,
            body_read_timeout: args.body_timeout_s,
            ready_when: args.ready_when,
            ..ServerConfig::default()
        },
        Some(telemetry),
        &meter,
    ));
    let options = ServeOptions {
        header_read_timeout: args.header_timeout_s,
        max_connections: args.max_connections,
        send_timeout: args.send_timeout_s,
        idle_timeout: args.idle_timeout_s,
        // Open connections get what the drain delay leaves of the budget.
        shutdown_grace: shutdown.connection_grace(),
        ..ServeOptions::default()
    };
    let served = rt.block_on(async {
        let rest = tokio::net::TcpListener::from_std(rest)?;
        let grpc = grpc.map(tokio::net::TcpListener::from_std).transpose()?;
        tracing::info!(
            rest = %rest.local_addr()?,
            grpc = %grpc.as_ref().and_then(|l| l.local_addr().ok()).map_or("off".into(), |a| a.to_string()),
            root = %root.display(),
            "serving"
        );
        let (closing, _) = tokio::sync::watch::channel(false);
        let closed = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|c| *c).await;
        };
        let rest = serve(
            rest,
            standalone_router(Arc::clone(&state)),
            options.clone(),
            closed(closing.subscribe()),
        );
        let grpc = {
            let (state, options, done) = (Arc::clone(&state), options.clone(), closed(closing.subscribe()));
            async move {
                if let Some(listener) = grpc {
                    serve(listener, kiln::http::grpc::router(state), options, done).await;
                }
            }
        };
        let signal = async {
            shutdown.signalled(&state).await;
            let _ = closing.send(true);
        };
        let ((), (), ()) = tokio::join!(signal, rest, grpc);
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
        Stopped::BudgetSpent => exit_now(staged, 0),
        Stopped::Failed => exit_now(staged, 1),
    }
}

/// Ends the process now (`kiln::http::shutdown::exit_now`: work may still be running inside
/// ONNX Runtime), `staged` removed first.
fn exit_now(staged: Option<kiln_server::plain::Staged>, code: i32) -> ! {
    drop(staged);
    kiln::http::shutdown::exit_now(code)
}
