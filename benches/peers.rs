//! kiln against the servers its users would run instead, on the same machine, in one run:
//!
//! 1. **kiln** — `kiln-server` (the example server, dynamic batching) on a repository that
//!    `kiln-agent fetch` published (sha256 pinned);
//! 2. **FastAPI** — the common Python setup (`benches/peers/fastapi_server.py`): FastAPI +
//!    uvicorn + onnxruntime, one request per `run`;
//! 3. **BentoML** — a Python server with adaptive batching (`benches/peers/bentoml_service.py`);
//! 4. **Triton** — the real Triton Inference Server (`tritonserver` from the nvidia-pytriton
//!    wheel) serving the ONNX file as a Triton user does without Triton's onnxruntime backend:
//!    a model repository written at bench time (`config.pbtxt` with the python backend,
//!    dynamic batching, 2 `KIND_CPU` instances; `benches/peers/triton_model.py` as `model.py`,
//!    one single-threaded onnxruntime session per instance);
//! 5. **in-process ceilings** — raw `session.run` at the best batch size, and the kiln library
//!    called in-process at concurrency 64 (what the HTTP layer costs).
//!
//! Same model file, same thread budget (two single-threaded ONNX Runtime sessions: kiln's 2
//! instances, uvicorn's and BentoML's 2 worker processes, Triton's 2 instances, the raw pool's
//! 2 sessions), same request (one row, the v2 JSON kiln, FastAPI and Triton speak; BentoML's
//! own JSON with the same numbers), same load generator (`kiln_benches::load`, closed loop at
//! 1–128 and open loop at 50% and 90% of kiln's peak). kiln's, FastAPI's and Triton's
//! answers are checked against the in-process session's before they are timed. Python access
//! logs are off, as kiln writes none. Last, external load generators at concurrency 64 on
//! the tabular MLP and the MobileNet-style CNN (`kiln_benches::external`): `hey` for REST
//! (kiln JSON and binary, FastAPI, Triton) and `h2load` for gRPC `ModelInfer` (kiln with raw
//! and with typed contents, Triton with raw), each gRPC message checked first with a gRPC
//! client.
//! Needs `make bench-peers` (release binaries, the Python venvs from
//! `benches/peers/requirements.txt` and `benches/peers/triton-requirements.txt`, the project
//! venv's grpcio, the models, `hey`, `h2load`). `KILN_BENCH_SECS` sets seconds per point
//! (default 4), `KILN_HEY_SECS` seconds per external run (default 10), `KILN_BENCH_ONLY` a
//! model label substring, `KILN_PEERS_ONLY` a contender (`kiln`, `fastapi`, `bentoml`,
//! `triton`). Results: `benches/RESULTS.md` (section `peers`) and `benches/plots/peers-*.svg`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::{BatchConfig, ElementType, Model, ModelHandle, Runtime, RuntimeConfig, SessionConfig};
use kiln_benches::external::{self, Answer, Run, Wire};
use kiln_benches::inproc::{self, Bench, Point};
use kiln_benches::load::{self, Mode, Report, Target};
use kiln_benches::svg::{render_scaled, Series};
use kiln_benches::{machine, write_section};

const CONCURRENCY: [usize; 5] = [1, 8, 32, 64, 128];
const BATCHES: [usize; 6] = [1, 4, 16, 32, 64, 128];
/// Sessions (kiln instances, Python workers): one single-threaded session per core.
const SESSIONS: usize = 2;
/// Open-loop rates, as fractions of kiln's closed-loop peak.
const OPEN: [f64; 2] = [0.5, 0.9];
/// Clients in the open-loop pool (most requests outstanding).
const OPEN_CLIENTS: usize = 256;
/// A request not answered (or, in open loop, not sent) this long after it was due fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Triton's dynamic batcher: how long a request may wait for others to join its batch. 0
/// (Triton's default) is kiln's greedy policy: a free instance takes whatever is queued. On
/// the tabular MLP 100 µs cost Triton 40% at concurrency 1 and gained nothing at 64.
const TRITON_QUEUE_DELAY_US: u64 = 0;
/// The models the external load generators run on.
const EXTERNAL_MODELS: [&str; 2] = ["tabular MLP", "MobileNet-style"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Kiln,
    /// kiln-server with the v2 binary-data extension: the same request, raw tensor bytes
    /// instead of JSON numbers (what the HTTP layer costs without JSON decoding).
    KilnBinary,
    FastApi,
    BentoMl,
    Triton,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Kiln => "kiln",
            Kind::KilnBinary => "kiln (binary)",
            Kind::FastApi => "FastAPI",
            Kind::BentoMl => "BentoML",
            Kind::Triton => "Triton",
        }
    }

    /// The external load generators' runs on this server: REST with its own body (hey), and
    /// gRPC (h2load) on kiln's and Triton's gRPC ports. BentoML speaks neither protocol.
    fn external(self) -> &'static [Wire] {
        match self {
            Kind::Kiln => &[Wire::RestJson, Wire::GrpcRaw, Wire::GrpcTyped],
            Kind::KilnBinary => &[Wire::RestBinary],
            Kind::FastApi => &[Wire::RestJson],
            Kind::BentoMl => &[],
            Kind::Triton => &[Wire::RestJson, Wire::GrpcRaw],
        }
    }

    /// Its name in the external table: the server, whatever the wire.
    fn server(self) -> &'static str {
        match self {
            Kind::KilnBinary => Kind::Kiln.label(),
            k => k.label(),
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Kiln => "#1f77b4",
            Kind::KilnBinary => "#9467bd",
            Kind::FastApi => "#d62728",
            Kind::BentoMl => "#2ca02c",
            Kind::Triton => "#ff7f0e",
        }
    }
}

/// One server under test, in its own process group.
struct Server {
    kind: Kind,
    child: Child,
    host: String,
    target: Target,
    /// kiln and Triton: the gRPC address, `host:port`.
    grpc: Option<String>,
    stats_path: Option<String>,
    /// Triton only: the python backend's shared-memory regions, `/dev/shm/<prefix>*`.
    shm_prefix: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM to the whole group (uvicorn and BentoML fork workers, Triton's backend
        // stubs), then SIGKILL.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // Triton removes its regions on a clean exit; a killed one leaves them.
        if let Some(prefix) = &self.shm_prefix {
            for e in std::fs::read_dir("/dev/shm")
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// What one load point measured on one server.
struct Measured {
    report: Report,
    /// CPU seconds the server's processes used during the point.
    cpu_s: f64,
    /// Resident memory of the server's processes after the point, MiB.
    rss_mib: f64,
    /// kiln only: batches run during the point, by size in rows.
    batches: BTreeMap<usize, u64>,
}

struct Ctx {
    root: PathBuf,
    work: tempfile::TempDir,
    venv: PathBuf,
    /// Triton's venv: the nvidia-pytriton wheel (server, python backend, stubs), onnxruntime.
    triton_venv: PathBuf,
    /// The running Triton's version (`GET /v2`), once one has started.
    triton_version: OnceLock<String>,
    secs: Duration,
    /// Seconds per external run (`KILN_HEY_SECS`).
    hey_secs: Duration,
    /// The project venv's Python (grpcio, from scripts/requirements.txt): the gRPC client
    /// that checks each message before h2load sends it.
    client_python: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The model's name in URLs: its file stem.
fn model_name(b: &Bench) -> String {
    Path::new(b.file)
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
}

/// v2 JSON, BentoML JSON, (binary header length, binary body).
type Bodies = (Vec<u8>, Vec<u8>, (usize, Vec<u8>));

/// The one-row request as v2 JSON (kiln and FastAPI), as BentoML's `{"x": nested}`, and in
/// the v2 binary-data extension (JSON header length, body).
fn bodies(b: &Bench) -> Result<Bodies> {
    let req = inproc::request(b, 1, 0);
    let t = &req[0].1;
    let (datatype, flat, raw): (&str, Vec<serde_json::Value>, Vec<u8>) = match t.data() {
        kiln::TensorSlice::F32(v) => (
            "FP32",
            v.iter().map(|&x| x.into()).collect(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        kiln::TensorSlice::I32(v) => (
            "INT32",
            v.iter().map(|&x| x.into()).collect(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        _ => bail!("bench inputs are FP32 or INT32"),
    };
    let mut binary = serde_json::to_vec(&serde_json::json!({"inputs": [{
        "name": b.input, "shape": t.shape(), "datatype": datatype,
        "parameters": {"binary_data_size": raw.len()}}]}))?;
    let header_len = binary.len();
    binary.extend(raw);
    let v2 = serde_json::json!({"inputs": [{
        "name": b.input, "shape": t.shape(), "datatype": datatype, "data": flat}]});
    fn nest(shape: &[usize], flat: &[serde_json::Value]) -> serde_json::Value {
        match shape {
            [] | [_] => flat.to_vec().into(),
            [n, rest @ ..] => {
                let step = flat.len() / n.max(&1);
                flat.chunks(step.max(1)).map(|c| nest(rest, c)).collect()
            }
        }
    }
    let bento = serde_json::json!({ "x": nest(t.shape(), &flat) });
    Ok((
        serde_json::to_vec(&v2)?,
        serde_json::to_vec(&bento)?,
        (header_len, binary),
    ))
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // Fields after the `(comm)`, which may contain spaces: state ppid ...
        if let Some(pp) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
        {
            parent.insert(p, pp);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let me = out[i];
        out.extend(parent.iter().filter(|&(_, &pp)| pp == me).map(|(&c, _)| c));
        i += 1;
    }
    out
}

/// CPU seconds (user + system) and resident MiB of a process tree.
fn usage(pid: u32) -> (f64, f64) {
    let (mut ticks, mut rss_kib) = (0u64, 0u64);
    for p in tree(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
        // After `)`: state(0) ppid(1) ... utime(11) stime(12).
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        rss_kib += std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    // USER_HZ is 100 on Linux x86_64.
    (ticks as f64 / 100.0, rss_kib as f64 / 1024.0)
}

/// Publishes `b`'s model for kiln-server with `kiln-agent fetch` (file source, sha256 pinned):
/// the production path, manifest and `current` link included.
fn publish(ctx: &Ctx, b: &Bench) -> Result<PathBuf> {
    // A repository of its own per model: kiln-server serves every model under its root.
    let models = ctx.work.path().join(format!("models-{}", model_name(b)));
    std::fs::create_dir_all(&models)?;
    let file = ctx.root.join(b.file);
    let sha = kiln::Digest::of(&std::fs::read(&file)?);
    let config = ctx
        .work
        .path()
        .join(format!("agent-{}.yaml", model_name(b)));
    std::fs::write(
        &config,
        format!(
            "root: {}\nreserve_bytes: 0\nmodels:\n  - name: {}\n    source: file://{}\n    sha256: {sha}\n",
            models.display(),
            model_name(b),
            file.display()
        ),
    )?;
    let out = Command::new(ctx.root.join("target/release/kiln-agent"))
        .args(["fetch", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .context("run target/release/kiln-agent (make bench-peers builds it)")?;
    if !out.status.success() {
        bail!("kiln-agent fetch: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(models)
}

/// Where the nvidia-pytriton wheel put Triton in a venv, and which Python its stub embeds.
struct TritonDist {
    /// `pytriton/tritonserver`: `bin/tritonserver`, `backends/python`,
    /// `python_backend_stubs/X.Y/triton_python_backend_stub`.
    dir: PathBuf,
    /// `nvidia_pytriton.libs`: the libraries bundled with the server.
    libs: PathBuf,
    /// The venv's Python, `X.Y`: the stub built for it.
    python: String,
    /// Where that Python's `libpython` is, which the stub links.
    libpython: String,
}

fn triton_dist(venv: &Path) -> Result<TritonDist> {
    // `find_spec` locates the package without importing it (pytriton's Python API and its
    // requirements are not installed, only the server it ships).
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.util as u, sys, sysconfig; \
             print(u.find_spec('pytriton').submodule_search_locations[0]); \
             print(f'{sys.version_info[0]}.{sys.version_info[1]}'); \
             print(sysconfig.get_config_var('LIBDIR') or '')",
        ])
        .output()
        .with_context(|| format!("run {}/bin/python", venv.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(pkg), Some(python), Some(libpython)) = (lines.next(), lines.next(), lines.next())
    else {
        bail!(
            "no nvidia-pytriton in {}: run `make bench-peers` ({})",
            venv.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    let pkg = PathBuf::from(pkg);
    let dist = TritonDist {
        dir: pkg.join("tritonserver"),
        libs: pkg.with_file_name("nvidia_pytriton.libs"),
        python: python.into(),
        libpython: libpython.into(),
    };
    if !dist.dir.join("bin/tritonserver").exists() {
        bail!("{} has no bin/tritonserver", dist.dir.display());
    }
    Ok(dist)
}

/// Triton's name for an element type.
fn triton_type(t: ElementType) -> Result<&'static str> {
    Ok(match t {
        ElementType::F32 => "TYPE_FP32",
        ElementType::F64 => "TYPE_FP64",
        ElementType::I64 => "TYPE_INT64",
        ElementType::I32 => "TYPE_INT32",
        ElementType::I8 => "TYPE_INT8",
        ElementType::U8 => "TYPE_UINT8",
        ElementType::Bool => "TYPE_BOOL",
        other => bail!("no Triton type for {other:?}"),
    })
}

/// `config.pbtxt` for `b`, as a Triton user writes it for an ONNX model served by the python
/// backend: the model's inputs and outputs (batch dimension left to `max_batch_size`),
/// dynamic batching, one `KIND_CPU` instance per session, each session single-threaded.
fn triton_config(name: &str, meta: &kiln::ModelMetadata, max_batch: usize) -> Result<String> {
    let batch = if meta.batch_dim { max_batch } else { 0 };
    let skip = usize::from(meta.batch_dim);
    let tensors = |ts: &[kiln::TensorInfo]| -> Result<String> {
        let lines = ts
            .iter()
            .map(|t| {
                let dims: Vec<String> = t
                    .dims
                    .iter()
                    .skip(skip)
                    .map(|d| d.unwrap_or(-1).to_string())
                    .collect();
                Ok(format!(
                    "  {{ name: \"{}\", data_type: {}, dims: [ {} ] }}",
                    t.name,
                    triton_type(t.element_type)?,
                    dims.join(", ")
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lines.join(",\n"))
    };
    let batching = if batch > 0 {
        format!("dynamic_batching {{ max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US} }}\n")
    } else {
        String::new()
    };
    Ok(format!(
        "name: \"{name}\"\nbackend: \"python\"\nmax_batch_size: {batch}\n\
         input [\n{}\n]\noutput [\n{}\n]\n\
         instance_group [ {{ count: {SESSIONS}, kind: KIND_CPU }} ]\n{batching}\
         parameters: {{ key: \"intra_op_threads\", value: {{ string_value: \"1\" }} }}\n",
        tensors(&meta.inputs)?,
        tensors(&meta.outputs)?
    ))
}

/// Writes Triton's model repository for `b` (`<model>/config.pbtxt`, `<model>/1/model.py`,
/// `<model>/1/model.onnx`) and a backend directory laid out as pytriton lays it (the python
/// backend with the stub for the venv's Python). Returns (repository, backend directory).
fn triton_repository(
    ctx: &Ctx,
    runtime: &Runtime,
    dist: &TritonDist,
    b: &Bench,
    max_batch: usize,
) -> Result<(PathBuf, PathBuf)> {
    let name = model_name(b);
    let base = ctx.work.path().join(format!("triton-{name}"));
    let repo = base.join("models");
    let version = repo.join(&name).join("1");
    std::fs::create_dir_all(&version)?;
    let file = ctx.root.join(b.file);
    std::fs::copy(&file, version.join("model.onnx"))?;
    std::fs::copy(
        ctx.root.join("benches/peers/triton_model.py"),
        version.join("model.py"),
    )?;
    let model = Model::load(runtime, &file, &inproc::options(&file, b)?)?;
    std::fs::write(
        repo.join(&name).join("config.pbtxt"),
        triton_config(&name, model.metadata(), max_batch)?,
    )?;
    let backends = base.join("backends");
    let python = backends.join("python");
    std::fs::create_dir_all(&python)?;
    let stub = format!(
        "python_backend_stubs/{}/triton_python_backend_stub",
        dist.python
    );
    for (from, to) in [
        ("backends/python/libtriton_python.so", "libtriton_python.so"),
        (
            "backends/python/triton_python_backend_utils.py",
            "triton_python_backend_utils.py",
        ),
        (stub.as_str(), "triton_python_backend_stub"),
    ] {
        let from = dist.dir.join(from);
        if !from.exists() {
            bail!("{} is missing", from.display());
        }
        std::os::unix::fs::symlink(&from, python.join(to))?;
    }
    Ok((repo, backends))
}

fn start(ctx: &Ctx, runtime: &Runtime, kind: Kind, b: &Bench, best_batch: usize) -> Result<Server> {
    let port = free_port()?;
    let host = format!("127.0.0.1:{port}");
    let name = model_name(b);
    let (v2, bento, (header_len, binary)) = bodies(b)?;
    let peers = ctx.root.join("benches/peers");
    let log = File::create(ctx.work.path().join(format!("{}-{name}.log", kind.label())))?;
    let model = ctx.root.join(b.file);
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let mut cmd;
    let mut shm_prefix = None;
    let (ready, target, stats_path) = match kind {
        Kind::Kiln | Kind::KilnBinary => {
            let models = publish(ctx, b)?;
            let settings = ctx.work.path().join(format!("settings-{name}.yaml"));
            std::fs::write(
                &settings,
                format!(
                    "session: {{intra_op_threads: 1}}\nbatch: {{instances: {SESSIONS}, max_batch_size: {best_batch}, max_queue_requests: 4096}}\n"
                ),
            )?;
            cmd = Command::new(ctx.root.join("target/release/kiln-server"));
            cmd.arg("--root")
                .arg(&models)
                // An explicit free gRPC port: the default 8001 may be taken.
                .args(["--listen", &host, "--grpc-listen", &grpc])
                .args(["--poll-ms", "60000", "--config"])
                .arg(&settings)
                .env("RUST_LOG", "warn");
            if std::env::var_os("KILN_ORT_DIR").is_none() {
                cmd.env("KILN_ORT_DIR", ctx.root.join(".cache/ort/cpu"));
            }
            let url = format!("http://{host}/v2/models/{name}/infer");
            let target = if kind == Kind::KilnBinary {
                Target::json(&url, binary).map(|t| Target {
                    content_type: "application/octet-stream".into(),
                    headers: format!("Inference-Header-Content-Length: {header_len}\r\n"),
                    ..t
                })
            } else {
                Target::json(&url, v2)
            };
            (
                format!("/v2/models/{name}/ready"),
                target,
                Some(format!("/v2/models/{name}/stats")),
            )
        }
        Kind::FastApi => {
            cmd = Command::new(ctx.venv.join("bin/uvicorn"));
            cmd.args(["fastapi_server:app", "--app-dir"])
                .arg(&peers)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--workers", &SESSIONS.to_string()])
                .args(["--no-access-log", "--log-level", "warning"])
                .env("KILN_PEER_MODEL", &model)
                .env("KILN_PEER_NAME", &name)
                .env("KILN_PEER_THREADS", "1");
            (
                "/v2/health/ready".into(),
                Target::json(&format!("http://{host}/v2/models/{name}/infer"), v2),
                None,
            )
        }
        Kind::BentoMl => {
            cmd = Command::new(ctx.venv.join("bin/bentoml"));
            cmd.args(["serve", "bentoml_service:Model", "--working-dir"])
                .arg(&peers)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("KILN_PEER_MODEL", &model)
                .env("KILN_PEER_THREADS", "1")
                .env("KILN_PEER_WORKERS", SESSIONS.to_string())
                // BentoML refuses a max_batch_size of 1 (a compute-bound model's best batch).
                .env("KILN_PEER_MAX_BATCH", best_batch.max(2).to_string())
                .env(
                    "KILN_PEER_DTYPE",
                    if b.int_tokens { "INT32" } else { "FP32" },
                )
                .env("BENTOML_HOME", ctx.work.path().join("bentoml"))
                .env("BENTOML_DO_NOT_TRACK", "True");
            (
                "/readyz".into(),
                Target::json(&format!("http://{host}/infer"), bento),
                None,
            )
        }
        Kind::Triton => {
            let dist = triton_dist(&ctx.triton_venv)?;
            let (repo, backends) = triton_repository(ctx, runtime, &dist, b, best_batch)?;
            let prefix = format!("kiln-peers-{}-{port}-", std::process::id());
            cmd = Command::new(dist.dir.join("bin/tritonserver"));
            cmd.arg("--model-repository")
                .arg(&repo)
                .arg("--backend-directory")
                .arg(&backends)
                .arg("--backend-config")
                .arg(format!("python,shm-region-prefix-name={prefix}"))
                .args([
                    "--http-address",
                    "127.0.0.1",
                    "--http-port",
                    &port.to_string(),
                ])
                .args(["--allow-grpc", "true", "--grpc-address", "127.0.0.1"])
                .args(["--grpc-port", grpc.rsplit(':').next().unwrap_or_default()])
                .args(["--allow-metrics", "false"])
                .args(["--log-info", "false", "--exit-timeout-secs", "5"]);
            // As pytriton runs it: the bundled libraries on the library path, the venv's
            // `bin` first on PATH (the stub's embedded Python finds the venv, so numpy and
            // onnxruntime, through the `python3` there), plus that Python's libpython.
            let mut libs = vec![dist.libpython.clone(), dist.libs.display().to_string()];
            libs.extend(std::env::var("LD_LIBRARY_PATH").ok());
            libs.retain(|p| !p.is_empty());
            let mut path = vec![ctx.triton_venv.join("bin").display().to_string()];
            path.extend(std::env::var("PATH").ok());
            cmd.env("LD_LIBRARY_PATH", libs.join(":"))
                .env("PATH", path.join(":"));
            shm_prefix = Some(prefix);
            (
                "/v2/health/ready".into(),
                Target::json(&format!("http://{host}/v2/models/{name}/infer"), v2),
                Some(format!("/v2/models/{name}/stats")),
            )
        }
    };
    let child = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {} ({cmd:?})", kind.label()))?;
    let mut server = Server {
        kind,
        child,
        host: host.clone(),
        target: target.map_err(anyhow::Error::msg)?,
        grpc: matches!(kind, Kind::Kiln | Kind::KilnBinary | Kind::Triton).then_some(grpc),
        stats_path,
        shm_prefix,
    };
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok((200, _)) = load::get(&host, &ready, Duration::from_secs(5)) {
            break;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "{} exited ({status}) before it was ready; log in {}",
                kind.label(),
                ctx.work.path().display()
            );
        }
        if Instant::now() > until {
            bail!("{} not ready after 180 s", kind.label());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // One correct answer before any timing, and a short warm-up.
    let r = load::run(
        &server.target,
        Mode::Closed { concurrency: 4 },
        Duration::from_secs(1),
        TIMEOUT,
    );
    if r.ok == 0 || r.failed > 0 {
        bail!("{} warm-up failed: {:?}", kind.label(), r.failures);
    }
    if kind == Kind::Triton {
        let version = load::get(&host, "/v2", Duration::from_secs(5))
            .ok()
            .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned));
        if let Some(v) = version {
            let _ = ctx.triton_version.set(v);
        }
    }
    Ok(server)
}

/// The in-process session's answer to the benchmark's one-row request.
fn reference(runtime: &Runtime, b: &Bench) -> Result<Answer> {
    let path = inproc::root().join(b.file);
    let mut model = Model::load(runtime, &path, &inproc::options(&path, b)?)?;
    model
        .run(&inproc::request(b, 1, 0))?
        .into_iter()
        .map(|(name, t)| {
            let v: Vec<f64> = match t.data() {
                kiln::TensorSlice::F32(v) => v.iter().map(|&x| x.into()).collect(),
                kiln::TensorSlice::F64(v) => v.to_vec(),
                kiln::TensorSlice::I32(v) => v.iter().map(|&x| x.into()).collect(),
                kiln::TensorSlice::I64(v) => v.iter().map(|&x| x as f64).collect(),
                _ => bail!("output {name}: not a number type"),
            };
            Ok((name, v))
        })
        .collect()
}

/// Sends the timed request once to a v2 JSON contender and checks its answer against the
/// in-process one (same outputs, every number within 1e-4 relative): a contender that
/// answers wrongly is not timed. Returns the largest difference.
fn check_answer(server: &Server, want: &Answer) -> Result<f64> {
    let t = &server.target;
    let (code, body) = load::post_json(&server.host, &t.path, &t.body, TIMEOUT)?;
    let label = server.kind.label();
    if code != 200 {
        bail!(
            "{label} answered {code}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("{label}'s answer is not JSON"))?;
    let got = v["outputs"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|o| {
                    let data = o["data"].as_array()?;
                    Some((
                        o["name"].as_str()?.to_owned(),
                        data.iter().filter_map(serde_json::Value::as_f64).collect(),
                    ))
                })
                .collect::<Answer>()
        })
        .unwrap_or_default();
    compare(label, &got, want)
}

/// `got` against the in-process answer: the same outputs, every number within 1e-4
/// relative. Returns the largest difference.
fn compare(label: &str, got: &Answer, want: &Answer) -> Result<f64> {
    let mut worst = 0.0f64;
    for (name, want) in want {
        let got = got
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .with_context(|| format!("{label}'s answer has no output {name}"))?;
        if got.len() != want.len() {
            bail!(
                "{label}: output {name} has {} numbers, expected {}",
                got.len(),
                want.len()
            );
        }
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            if d > 1e-4 * w.abs().max(1.0) {
                bail!("{label}: output {name} is {g}, expected {w} (in-process)");
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

fn batch_sizes(server: &Server) -> BTreeMap<usize, u64> {
    let Some(path) = &server.stats_path else {
        return BTreeMap::new();
    };
    load::get(&server.host, path, Duration::from_secs(5))
        .ok()
        .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .and_then(|v| match server.kind {
            // Triton's statistics: executions by batch size.
            Kind::Triton => v["model_stats"][0]["batch_stats"].as_array().map(|a| {
                a.iter()
                    .filter_map(|s| {
                        let size = usize::try_from(s["batch_size"].as_u64()?).ok()?;
                        Some((size, s["compute_infer"]["count"].as_u64()?))
                    })
                    .collect()
            }),
            _ => v["batch_sizes"].as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_u64()?)))
                    .collect()
            }),
        })
        .unwrap_or_default()
}

fn measure(server: &Server, mode: Mode, secs: Duration) -> Measured {
    let before = batch_sizes(server);
    let (cpu0, _) = usage(server.child.id());
    let report = load::run(&server.target, mode, secs, TIMEOUT);
    let (cpu1, rss_mib) = usage(server.child.id());
    let mut batches = batch_sizes(server);
    for (size, n) in &before {
        if let Some(m) = batches.get_mut(size) {
            *m = m.saturating_sub(*n);
        }
    }
    batches.retain(|_, n| *n > 0);
    println!("  {} {mode:?}: {}", server.kind.label(), report.summary());
    Measured {
        report,
        cpu_s: cpu1 - cpu0,
        rss_mib,
        batches,
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn cpu_us(m: &Measured) -> String {
    if m.report.ok == 0 {
        return "–".into();
    }
    format!("{:.0}", m.cpu_s * 1e6 / m.report.ok as f64)
}

fn sizes(b: &BTreeMap<usize, u64>) -> String {
    let total: u64 = b.values().sum();
    let rows: u64 = b.iter().map(|(s, n)| *s as u64 * n).sum();
    let mut top: Vec<(&usize, &u64)> = b.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    format!(
        "{total} batches, mean {:.1} rows; most frequent (rows: batches): {}",
        rows as f64 / total.max(1) as f64,
        top.iter()
            .take(6)
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The in-process ceilings: raw `run` at each batch size on 2 single-threaded sessions (the
/// best is the ceiling), then the kiln library at concurrency 64 with the server's settings.
fn in_process(runtime: &Runtime, b: &Bench) -> Result<(usize, Point, Point, f64)> {
    let path = inproc::root().join(b.file);
    let opts = inproc::options(&path, b)?.with_session(SessionConfig {
        intra_op_threads: 1,
        ..inproc::session(b)
    });
    let mut pool = Model::load_many(runtime, &path, &opts, SESSIONS)?;
    let mut best = (1, Point::default());
    let mut batch1 = 0.0;
    for &size in &BATCHES {
        let (back, p) = inproc::pooled(pool, b, size, SESSIONS);
        pool = back;
        if size == 1 {
            batch1 = p.rows_per_s;
        }
        if p.rows_per_s > best.1.rows_per_s {
            best = (size, p);
        }
    }
    drop(pool);
    let handle = ModelHandle::new(b.label, opentelemetry::global::meter("kiln-bench"));
    let cfg = BatchConfig {
        instances: SESSIONS,
        max_batch_size: best.0,
        max_queue_requests: 4096,
        ..BatchConfig::default()
    };
    handle.load_model(runtime, &path, "1", &opts, &cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let lib = inproc::through_kiln(&handle, b, 64, &rt);
    handle.shutdown();
    Ok((best.0, best.1, lib, best.1.rows_per_s / batch1.max(1e-9)))
}

/// An open-loop point: the fraction of kiln's peak, the rate offered, what it measured.
type OpenPoint = (f64, f64, Measured);

/// Everything measured for one model.
struct ModelResult {
    label: String,
    kind: String,
    headroom: f64,
    best_batch: usize,
    ceiling: Point,
    library: Point,
    closed: Vec<(Kind, Vec<Measured>)>,
    open: Vec<(Kind, Vec<OpenPoint>)>,
    /// Largest difference of each v2 contender's answer from the in-process session's.
    checked: Vec<(Kind, f64)>,
    /// The external load generators' runs, by server.
    external: Vec<(Kind, Run)>,
}

fn bench_model(ctx: &Ctx, runtime: &Runtime, b: &Bench, kinds: &[Kind]) -> Result<ModelResult> {
    println!("== {}", b.label);
    // The raw ceiling's seconds per point follow KILN_BENCH_SECS too (the lib's default 1.5 s).
    let (best_batch, ceiling, library, headroom) = in_process(runtime, b)?;
    println!(
        "  ceiling {:.0} rows/s (batch {best_batch}), kiln library at 64: {:.0} rows/s",
        ceiling.rows_per_s, library.rows_per_s
    );
    let want = reference(runtime, b)?;
    let mut closed = Vec::new();
    let mut open = Vec::new();
    let mut checked = Vec::new();
    let mut external_runs = Vec::new();
    let mut peak = 0.0f64;
    for &kind in kinds {
        let server = start(ctx, runtime, kind, b, best_batch)?;
        if matches!(kind, Kind::Kiln | Kind::FastApi | Kind::Triton) {
            let d = check_answer(&server, &want)?;
            println!(
                "  {}: same answer as the in-process session (largest difference {d:.1e})",
                kind.label()
            );
            checked.push((kind, d));
        }
        let points: Vec<Measured> = CONCURRENCY
            .iter()
            .map(|&c| measure(&server, Mode::Closed { concurrency: c }, ctx.secs))
            .collect();
        if kind == Kind::Kiln || peak == 0.0 {
            peak = points
                .iter()
                .map(|m| m.report.throughput())
                .fold(0.0, f64::max);
        }
        let rates: Vec<OpenPoint> = OPEN
            .iter()
            .map(|&f| {
                let rate = (peak * f).max(1.0);
                let mode = Mode::Open {
                    rate,
                    clients: OPEN_CLIENTS,
                };
                (f, rate, measure(&server, mode, ctx.secs))
            })
            .collect();
        closed.push((kind, points));
        open.push((kind, rates));
        if EXTERNAL_MODELS.contains(&b.label) {
            for &wire in kind.external() {
                let run = external_run(ctx, &server, b, wire, &want)
                    .with_context(|| format!("{} {}", kind.label(), wire.label()))?;
                external_runs.push((kind, run));
            }
        }
        drop(server);
    }
    Ok(ModelResult {
        label: b.label.into(),
        kind: b.kind.into(),
        headroom,
        best_batch,
        ceiling,
        library,
        closed,
        open,
        checked,
        external: external_runs,
    })
}

/// One external run on `server` (see [`external::run`]): its REST target, or the one-row
/// `ModelInfer` message on its gRPC port; its counts from its statistics (kiln's own fields,
/// Triton's `inference_stats`); the answer checked against the in-process one.
fn external_run(ctx: &Ctx, server: &Server, b: &Bench, wire: Wire, want: &Answer) -> Result<Run> {
    let job = external::Job {
        label: format!("{} {}", server.kind.server(), wire.label()),
        wire,
        rest: &server.target,
        grpc: server.grpc.as_deref(),
        model: model_name(b),
        inputs: inproc::request(b, 1, 0),
        files: ctx
            .work
            .path()
            .join(format!("{}-{}", server.kind.server(), model_name(b))),
        secs: ctx.hey_secs,
        python: &ctx.client_python,
    };
    let counts = || match &server.stats_path {
        Some(path) => external::counts(&server.host, path, server.kind == Kind::Triton).map(Some),
        None => Ok(None),
    };
    external::run(&job, &counts, &|got| compare(&job.label, got, want))
}

fn at64(r: &ModelResult, kind: Kind) -> Option<&Measured> {
    let i = CONCURRENCY.iter().position(|&c| c == 64)?;
    r.closed
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| &p[i])
}

fn report_model(r: &ModelResult) -> String {
    let mut md = format!(
        "### {} ({})\n\nHeadroom {:.1}× (best batch {}); ceiling (raw `run`, 2 sessions, batch {}) **{:.0} rows/s**; \
         kiln library in-process at concurrency 64: **{:.0} rows/s** (p99 {} ms).\n\n\
         Closed loop (one row per request):\n\n\
         | contender | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | CPU µs / inference | RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n",
        r.label,
        r.kind,
        r.headroom,
        r.best_batch,
        r.best_batch,
        r.ceiling.rows_per_s,
        r.library.rows_per_s,
        ms(r.library.p99)
    );
    for (kind, points) in &r.closed {
        for (c, m) in CONCURRENCY.iter().zip(points) {
            let rep = &m.report;
            md += &format!(
                "| {} | {c} | {:.0} | {} | {} | {} | {:.1}% | {} | {:.0} |\n",
                kind.label(),
                rep.throughput(),
                ms(rep.quantile(0.5)),
                ms(rep.quantile(0.9)),
                ms(rep.quantile(0.99)),
                100.0 * rep.error_rate(),
                cpu_us(m),
                m.rss_mib
            );
        }
    }
    md += "\nOpen loop (fixed arrival rate; latency from the scheduled send time; a request not answered within 10 s of it is an error):\n\n\
           | contender | offered req/s | answered req/s | p50 ms | p90 ms | p99 ms | errors | CPU µs / inference |\n|---|---|---|---|---|---|---|---|\n";
    for (kind, rates) in &r.open {
        for (f, offered, m) in rates {
            let rep = &m.report;
            md += &format!(
                "| {} | {:.0} ({:.0}% of kiln's peak) | {:.0} | {} | {} | {} | {:.1}% | {} |\n",
                kind.label(),
                offered,
                f * 100.0,
                rep.throughput(),
                ms(rep.quantile(0.5)),
                ms(rep.quantile(0.9)),
                ms(rep.quantile(0.99)),
                100.0 * rep.error_rate(),
                cpu_us(m)
            );
        }
    }
    for (kind, source) in [
        (Kind::Kiln, "its `/stats`"),
        (
            Kind::Triton,
            "Triton's statistics, executions by batch size",
        ),
    ] {
        if let Some((_, points)) = r.closed.iter().find(|(k, _)| *k == kind) {
            md += &format!(
                "\n{}'s batch sizes (closed loop, {source}):\n\n",
                kind.label()
            );
            for (c, m) in CONCURRENCY.iter().zip(points) {
                md += &format!("- concurrency {c}: {}\n", sizes(&m.batches));
            }
        }
    }
    if !r.checked.is_empty() {
        md += &format!(
            "\nAnswers checked against the in-process session before timing (largest difference): {}.\n",
            r.checked
                .iter()
                .map(|(k, d)| format!("{} {d:.1e}", k.label()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md += &format!("\n![{}](plots/{}.svg)\n\n", r.label, slug(&r.label));
    md
}

fn slug(label: &str) -> String {
    inproc::slug(label).replacen("batching-", "peers-", 1)
}

fn plot(r: &ModelResult) -> String {
    let line = |kind: Kind, f: &dyn Fn(&Measured) -> f64| {
        r.closed.iter().find(|(k, _)| *k == kind).map(|(_, p)| {
            CONCURRENCY
                .iter()
                .zip(p)
                .map(|(&c, m)| (c as f64, f(m)))
                .collect::<Vec<_>>()
        })
    };
    let flat = |v: f64| CONCURRENCY.iter().map(|&c| (c as f64, v)).collect();
    let mut thr = vec![
        Series {
            label: format!("ceiling: raw run, batch {}", r.best_batch),
            points: flat(r.ceiling.rows_per_s),
            colour: "#888",
            dashed: true,
        },
        Series {
            label: "kiln library in-process (c=64)".into(),
            points: flat(r.library.rows_per_s),
            colour: "#9ecae1",
            dashed: true,
        },
    ];
    let mut p99 = Vec::new();
    for (kind, _) in &r.closed {
        if let Some(points) = line(*kind, &|m| m.report.throughput()) {
            thr.push(Series {
                label: kind.label().into(),
                points,
                colour: kind.colour(),
                dashed: false,
            });
        }
        if let Some(points) = line(*kind, &|m| m.report.quantile(0.99).as_secs_f64() * 1e3) {
            p99.push(Series {
                label: kind.label().into(),
                points,
                colour: kind.colour(),
                dashed: false,
            });
        }
    }
    render_scaled(
        &[
            (&format!("{}: throughput", r.label), "req/s (log)", thr),
            (&format!("{}: p99 latency", r.label), "p99 ms (log)", p99),
        ],
        &[true, true],
    )
}

fn python_versions(venv: &Path, packages: &str) -> String {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            &format!("import importlib.metadata as m, sys; print(f'Python {{sys.version.split()[0]}}, ' + ', '.join(f'{{p}} {{m.version(p)}}' for p in [{packages}]))"),
        ])
        .output();
    out.ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> Result<()> {
    let root = inproc::root();
    let venv = std::env::var_os("KILN_PEERS_VENV")
        .map_or_else(|| root.join(".cache/peers-venv"), PathBuf::from);
    if !venv.join("bin/uvicorn").exists() {
        bail!("{} has no uvicorn: run `make bench-peers`", venv.display());
    }
    let triton_venv = std::env::var_os("KILN_TRITON_VENV")
        .map_or_else(|| root.join(".cache/triton-venv"), PathBuf::from);
    if std::env::var_os("KILN_BENCH_SECS").is_none() {
        std::env::set_var("KILN_BENCH_SECS", "4");
    }
    let hey_secs = std::env::var("KILN_HEY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ctx = Ctx {
        root: root.clone(),
        work: tempfile::Builder::new().prefix("kiln-peers").tempdir()?,
        venv,
        triton_venv,
        triton_version: OnceLock::new(),
        secs: inproc::secs(),
        hey_secs: Duration::from_secs(hey_secs),
        client_python: std::env::var_os("KILN_CLIENT_VENV")
            .map_or_else(|| root.join(".cache/venv"), PathBuf::from)
            .join("bin/python"),
    };
    let runtime =
        Runtime::new(&RuntimeConfig::default()).context("ONNX Runtime (run `make ort`)")?;
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    let only_peer = std::env::var("KILN_PEERS_ONLY").ok();
    let kinds: Vec<Kind> = [
        Kind::Kiln,
        Kind::KilnBinary,
        Kind::FastApi,
        Kind::BentoMl,
        Kind::Triton,
    ]
    .into_iter()
    .filter(|k| {
        only_peer
            .as_deref()
            .is_none_or(|o| k.label().eq_ignore_ascii_case(o))
    })
    .collect();
    if kinds.contains(&Kind::Triton) {
        triton_dist(&ctx.triton_venv)?;
    }
    // The real model, the tabular MLP (most headroom) and the MobileNet-style CNN.
    let models: Vec<Bench> = inproc::models()
        .into_iter()
        .filter(|b| !b.label.contains("compute-bound"))
        .filter(|b| only.as_deref().is_none_or(|o| b.label.contains(o)))
        .collect();
    std::fs::create_dir_all(root.join("benches/plots"))?;
    let mut results = Vec::new();
    for b in &models {
        let r = bench_model(&ctx, &runtime, b, &kinds)?;
        std::fs::write(
            root.join(format!("benches/plots/{}.svg", slug(&r.label))),
            plot(&r),
        )?;
        results.push(r);
    }

    let mut summary = String::from(
        "| model | headroom | kiln req/s | FastAPI req/s | kiln ÷ FastAPI | BentoML req/s | kiln ÷ BentoML | Triton req/s | kiln ÷ Triton | p99 ms kiln / FastAPI / BentoML / Triton | kiln library rows/s | HTTP ÷ in-process: JSON / binary |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        let thr = |k| at64(r, k).map_or(0.0, |m| m.report.throughput());
        let p99 = |k| at64(r, k).map_or("–".into(), |m| ms(m.report.quantile(0.99)));
        let (k, f, bm, tr) = (
            thr(Kind::Kiln),
            thr(Kind::FastApi),
            thr(Kind::BentoMl),
            thr(Kind::Triton),
        );
        let lib = r.library.rows_per_s.max(1e-9);
        summary += &format!(
            "| {} | {:.1}× | {k:.0} | {f:.0} | **{:.1}×** | {bm:.0} | **{:.1}×** | {tr:.0} | **{:.1}×** | {} / {} / {} / {} | {:.0} | **{:.0}%** / **{:.0}%** |\n",
            r.label,
            r.headroom,
            k / f.max(1e-9),
            k / bm.max(1e-9),
            k / tr.max(1e-9),
            p99(Kind::Kiln),
            p99(Kind::FastApi),
            p99(Kind::BentoMl),
            p99(Kind::Triton),
            r.library.rows_per_s,
            100.0 * k / lib,
            100.0 * thr(Kind::KilnBinary) / lib
        );
    }
    let rows: Vec<external::Row> = results
        .iter()
        .flat_map(|r| {
            r.external.iter().map(|(kind, run)| external::Row {
                model: r.label.clone(),
                contender: kind.server(),
                run: run.clone(),
            })
        })
        .collect();
    let hey_section = external::section(ctx.hey_secs, &rows);
    let triton = if kinds.contains(&Kind::Triton) {
        format!(
            "; Triton {} (`tritonserver` from the nvidia-pytriton 0.7.0 wheel; its python backend: {})",
            ctx.triton_version.get().map_or("unknown", String::as_str),
            python_versions(&ctx.triton_venv, "'onnxruntime','numpy'")
        )
    } else {
        String::new()
    };
    let body = format!(
        "## kiln against its peers (HTTP, CPU)\n\n\
         Machine: {}. ONNX Runtime {} (kiln) / {}{triton}. {:.0} s per point. \
         Command: `make bench-peers` (`cargo bench -p kiln-benches --bench peers`).\n\n\
         Every contender serves the same model file with the same thread budget: two single-threaded ONNX Runtime sessions \
         (kiln: 2 instances, greedy dynamic batching, `max_batch_size` = the best batch, requests in JSON and — \"kiln (binary)\" — in the v2 binary-data extension; FastAPI: uvicorn `--workers 2`, one request per `run`; \
         BentoML: 2 workers, adaptive batching with the same `max_batch_size`, `max_latency_ms` 10000, `traffic.concurrency` = batch × workers; \
         Triton: the real Triton Inference Server serving the ONNX file through its python backend, as one does without Triton's onnxruntime backend — \
         a model repository with `config.pbtxt` (`backend: \"python\"`, the same `max_batch_size`, `dynamic_batching {{ max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US} }}`, \
         `instance_group [{{ count: 2, kind: KIND_CPU }}]`) and `benches/peers/triton_model.py` as `model.py` (one single-threaded onnxruntime session per instance; each batch stacked, run once, split), \
         HTTP and gRPC on (gRPC used only by the last table), Triton's default thread counts; kiln-server likewise serves gRPC on a port of its own). \
         One row per request, JSON (the v2 protocol for kiln, FastAPI and Triton; BentoML's own JSON with the same numbers). \
         The load generator (`benches/src/load.rs`, also `kiln-load`) is the same for all and shares the 2 cores with the server under test. \
         CPU µs / inference = the server processes' user + system CPU time ÷ answered requests.\n\n\
         ### Summary at concurrency 64\n\n{summary}\n\
         Targets at concurrency 64: kiln ≥ 5× FastAPI with lower p99, ≥ 2× the best adaptive-batching Python server with lower p99, HTTP ≥ 80% of the in-process kiln library.\n\n{}{hey_section}",
        machine(),
        runtime.library().version,
        python_versions(&ctx.venv, "'fastapi','uvicorn','bentoml','onnxruntime','numpy'"),
        ctx.secs.as_secs_f64(),
        results.iter().map(report_model).collect::<String>()
    );
    println!("{body}");
    if only.is_none() && only_peer.is_none() {
        write_section("peers", &body)?;
    }
    Ok(())
}
