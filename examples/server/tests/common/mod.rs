//! Helpers shared by the server's tests: the repository root, the ONNX Runtime, and
//! publishing a test model the way the agent does.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use kiln::{Manifest, ManifestFile, Runtime, RuntimeConfig};

pub(crate) fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn runtime() -> Runtime {
    let configured = ["ORT_DYLIB_PATH", "KILN_ORT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let config = if configured {
        RuntimeConfig::default()
    } else {
        RuntimeConfig {
            library_path: Some(repo_root().join(".cache/ort/cpu/libonnxruntime.so")),
            ..RuntimeConfig::default()
        }
    };
    Runtime::new(&config).expect("ONNX Runtime (run `make ort`)")
}

/// Every model of the real-model corpus (`testdata/corpus/corpus.json`), with the files
/// published beside it: its external data files, and its labels (`testdata/corpus/labels/`)
/// as the label file of the output they name.
pub(crate) fn corpus() -> Vec<(String, Vec<(String, String)>)> {
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("testdata/corpus/corpus.json")).expect("corpus"),
    )
    .expect("json");
    corpus["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("name").to_owned();
            let mut files: Vec<(String, String)> = m["external_data"]
                .as_object()
                .map(|d| {
                    d.keys()
                        .map(|f| (f.clone(), format!("corpus/models/{f}")))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(output) = m["labels"]["output"].as_str() {
                files.push((
                    kiln::labels::label_file(output),
                    format!("corpus/labels/{name}.txt"),
                ));
            }
            (name, files)
        })
        .collect()
}

/// Publishes every corpus model under `root` as version 1; returns their names.
pub(crate) fn publish_corpus(root: &Path) -> Vec<String> {
    let models = corpus();
    assert!(models.len() >= 16, "the corpus has every model");
    for (m, files) in &models {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(d, s)| (d.as_str(), s.as_str()))
            .collect();
        publish_files(root, m, "1", &format!("corpus/models/{m}.onnx"), &files);
    }
    models.into_iter().map(|(m, _)| m).collect()
}

/// kiln-server serving every corpus model beside `dtypes`, `strings`, `zipmap`, `logreg_iris`
/// and `sequence` (testdata), REST and gRPC on free ports, killed when dropped.
pub(crate) struct CorpusServer {
    child: std::process::Child,
    /// REST `127.0.0.1:PORT`.
    pub(crate) rest: String,
    /// gRPC `127.0.0.1:PORT`.
    pub(crate) grpc: String,
    /// The corpus models' names.
    pub(crate) names: Vec<String>,
    _root: tempfile::TempDir,
}

impl CorpusServer {
    pub(crate) fn start() -> Self {
        let root = tempfile::tempdir().expect("root");
        let names = publish_corpus(root.path());
        publish(root.path(), "dtypes", "1", "dtypes.onnx");
        publish(root.path(), "strings", "1", "strings.onnx");
        publish(root.path(), "zipmap", "1", "zipmap.onnx");
        publish(root.path(), "logreg_iris", "1", "real/logreg_iris.onnx");
        publish(root.path(), "sequence", "1", "sequence.onnx");
        let [port, grpc] = free_ports();
        let grpc = format!("127.0.0.1:{grpc}");
        let child = start_ready(
            root.path(),
            port,
            &["--drain-delay-s", "0", "--grpc-listen", &grpc],
        );
        Self {
            child,
            rest: format!("127.0.0.1:{port}"),
            grpc,
            names,
            _root: root,
        }
    }
}

impl Drop for CorpusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python of `venv` (under `.cache/`), asserted present (`make` target `target` makes it).
pub(crate) fn venv_python(venv: &str, target: &str) -> std::path::PathBuf {
    let python = repo_root().join(".cache").join(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing (run `make {target}`)",
        python.display()
    );
    python
}

/// Runs a check script of `examples/server/tests` with `python` and `args`: its output
/// (stdout, then stderr; also printed) and whether it passed (exit 0 and "all checks passed").
pub(crate) fn run_checks(
    python: &Path,
    script: &str,
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> (bool, String) {
    let out = std::process::Command::new(python)
        .arg(repo_root().join("examples/server/tests").join(script))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (
        out.status.success() && text.contains("all checks passed"),
        text,
    )
}

/// Publishes `testdata/<file>` as `<root>/<model>/<version>/model.onnx` with its manifest
/// and `current` link, as the agent does.
pub(crate) fn publish(root: &Path, model: &str, version: &str, file: &str) {
    publish_with_data(root, model, version, file, &[]);
}

/// As [`publish`], with external data: each `testdata/<data>` file is copied beside the
/// model under its own file name (the location the model names) and listed in the manifest.
pub(crate) fn publish_with_data(
    root: &Path,
    model: &str,
    version: &str,
    file: &str,
    data: &[&str],
) {
    let files: Vec<(&str, &str)> = data
        .iter()
        .map(|d| {
            let name = Path::new(d).file_name().expect("file name");
            (name.to_str().expect("UTF-8 name"), *d)
        })
        .collect();
    publish_files(root, model, version, file, &files);
}

/// As [`publish`], with more files: each `(path, src)` copies `testdata/<src>` (or `src`,
/// if absolute) to `path` in the version directory, listed in the manifest.
pub(crate) fn publish_files(
    root: &Path,
    model: &str,
    version: &str,
    file: &str,
    extra: &[(&str, &str)],
) {
    let dir = root.join(model).join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut files = Vec::new();
    for (name, src) in std::iter::once(("model.onnx", file)).chain(extra.iter().copied()) {
        let bytes =
            std::fs::read(repo_root().join("testdata").join(src)).expect("run `make testdata`");
        let dest = dir.join(name);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(dest, &bytes).expect("copy");
        files.push(ManifestFile {
            path: name.to_owned(),
            sha256: kiln::Digest::of(&bytes),
            size: bytes.len() as u64,
        });
    }
    let manifest = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: model.into(),
        version: version.into(),
        source: None,
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-11-22T00:00:00Z".into(),
        files,
    };
    std::fs::write(dir.join(kiln::layout::MANIFEST_FILE), manifest.to_json()).expect("manifest");
    std::os::unix::fs::symlink(version, root.join(model).join("current")).expect("current");
}

/// Publishes `testdata/<file>` as a new `version` of `model` and moves `current` to it
/// atomically (a symlink renamed over the old one), as the agent does on an update.
pub(crate) fn swap(root: &Path, model: &str, version: &str, file: &str) {
    swap_files(root, model, version, file, &[]);
}

/// [`swap`] with more files, as [`publish_files`] publishes them.
pub(crate) fn swap_files(
    root: &Path,
    model: &str,
    version: &str,
    file: &str,
    extra: &[(&str, &str)],
) {
    let scratch = tempfile::tempdir_in(root).expect("scratch");
    publish_files(scratch.path(), model, version, file, extra);
    std::fs::rename(
        scratch.path().join(model).join(version),
        root.join(model).join(version),
    )
    .expect("publish the version");
    let tmp = root.join(model).join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("link");
    std::fs::rename(&tmp, root.join(model).join("current")).expect("swap current");
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` free loopback ports, all different: each is held until all are chosen (two ports
/// picked one after the other, each freed at once, can be the same one).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"));
    held.map(|l| l.local_addr().expect("port").port())
}

/// A started `kiln-server` process, killed when dropped (a failed assertion leaves none
/// behind).
pub(crate) struct Server {
    pub(crate) child: std::process::Child,
    pub(crate) port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `kiln-server` binary on `root` at 127.0.0.1:`port` with `args` (after `--root`
/// and `--listen`; gRPC on a port of the kernel's choice unless `args` name
/// `--grpc-listen`, so tests in parallel never collide on 8001; `RUST_LOG=error` unless set)
/// and waits until `/v2/health/ready` answers 200.
pub(crate) fn start_ready(root: &Path, port: u16, args: &[&str]) -> std::process::Child {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    start_logging(root, port, args, &level, std::process::Stdio::null())
}

/// [`start_ready`] with the log level `rust_log` and the server's log (its stdout) to `log`.
pub(crate) fn start_logging(
    root: &Path,
    port: u16,
    args: &[&str],
    rust_log: &str,
    log: impl Into<std::process::Stdio>,
) -> std::process::Child {
    let grpc: &[&str] = if args.contains(&"--grpc-listen") {
        &[]
    } else {
        &["--grpc-listen", "127.0.0.1:0"]
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-server"))
        .arg("--root")
        .arg(root)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(grpc)
        .args(args)
        .envs(ort_env())
        .env("RUST_LOG", rust_log)
        .stdout(log)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start kiln-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while http(port, "GET", "/v2/health/ready", "").is_none_or(|(c, _)| c != 200) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kiln-server exited before it was ready: {status}");
        }
        if std::time::Instant::now() > deadline {
            // Not left running: it would hold its ports for the rest of the binary.
            let _ = child.kill();
            let _ = child.wait();
            panic!("never ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The environment a child process needs to find ONNX Runtime: the caller's when set (as
/// `make test` does), else the library `make ort` provisions.
pub(crate) fn ort_env() -> Vec<(&'static str, std::path::PathBuf)> {
    let configured = ["ORT_DYLIB_PATH", "KILN_ORT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if configured {
        Vec::new()
    } else {
        vec![("KILN_ORT_DIR", repo_root().join(".cache/ort/cpu"))]
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status code and body.
pub(crate) fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_owned()))
}

/// A memory figure of process `pid` in MiB: `field` is a line of `/proc/<pid>/status`, such
/// as `"VmRSS:"` (resident now) or `"VmHWM:"` (peak resident); 0 if it cannot be read.
pub(crate) fn proc_status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The most a liveness probe may take while the server decodes big requests (beyond the
/// machine's own stalls, [`Liveness`]).
pub(crate) const PROBE_LIMIT: Duration = Duration::from_millis(100);

/// `GET /v2/health/live` over and over on a keep-alive connection of its own (so that a
/// probe times the server, not the machine's TCP handshakes), and a thread that only sleeps
/// 1 ms at a time (what it oversleeps is the machine's own stall), until [`Liveness::stop`].
pub(crate) struct Liveness {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    prober: std::thread::JoinHandle<Vec<Duration>>,
    sleeper: std::thread::JoinHandle<Vec<Duration>>,
}

impl Liveness {
    /// Starts probing the server on `port`.
    pub(crate) fn watch(port: u16) -> Self {
        use std::time::Instant;
        let done = std::sync::Arc::default();
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("probe connection");
        let prober = repeat(&done, move || {
            let started = Instant::now();
            assert_eq!(probe_live(&mut conn), 200, "liveness probe");
            let took = started.elapsed();
            std::thread::sleep(Duration::from_millis(10));
            took
        });
        let sleeper = repeat(&done, || {
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(1));
            started.elapsed().saturating_sub(Duration::from_millis(1))
        });
        Self {
            done,
            prober,
            sleeper,
        }
    }

    /// The probes' times, sorted, and the machine's own worst stall meanwhile.
    pub(crate) fn stop(self) -> (Vec<Duration>, Duration) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut probes = self.prober.join().expect("prober");
        probes.sort();
        let stall = self.sleeper.join().expect("sleeper");
        (probes, stall.into_iter().max().unwrap_or_default())
    }
}

/// Runs `f` in a thread, over and over, until `done`; what each run returned.
fn repeat<T: Send + 'static>(
    done: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut f: impl FnMut() -> T + Send + 'static,
) -> std::thread::JoinHandle<Vec<T>> {
    let done = std::sync::Arc::clone(done);
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            out.push(f());
        }
        out
    })
}

/// `GET /v2/health/live` on the keep-alive connection `conn`; the status code. The answer is
/// read whole (its head, then `content-length` bytes of body), so the next probe on the
/// connection starts at its own answer.
fn probe_live(conn: &mut TcpStream) -> u16 {
    conn.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("probe");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut read = |got: &mut Vec<u8>| {
        let n = conn.read(&mut buf).expect("probe answer");
        assert!(n > 0, "the probe connection was closed");
        got.extend_from_slice(&buf[..n]);
    };
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read(&mut got);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while got.len() < end + length {
        read(&mut got);
    }
    assert_eq!(
        got.len(),
        end + length,
        "more than one answer arrived: {head}"
    );
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Flips one byte of `<root>/<model>/<version>/model.onnx`, so it no longer matches its
/// manifest (a torn or bad download).
pub(crate) fn corrupt(root: &Path, model: &str, version: &str) {
    let path = root.join(model).join(version).join("model.onnx");
    let mut bytes = std::fs::read(&path).expect("model");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, bytes).expect("corrupt");
}

/// The metric names (`kiln_...`, labels dropped) README's paragraph starting with `marker`
/// lists, in order.
pub(crate) fn documented_metrics(marker: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let start = readme.find(marker).expect("metrics paragraph");
    let paragraph = &readme[start..start + readme[start..].find("\n\n").expect("end")];
    let mut names: Vec<String> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("kiln_"))
        .map(|w| w.split('{').next().unwrap_or(w).to_owned())
        .collect();
    names.dedup();
    names
}

/// Asks `model` (served over REST on `port`, the MLP's signature: `x` [1, 16] in, `y` out)
/// for all 4 classes of `y`, and checks that each class is named by `labels` (Triton's
/// `"<value>:<index>:<label>"`).
pub(crate) fn assert_classes_named(port: u16, model: &str, labels: &[&str; 4]) {
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}],
                                  "outputs": [{"name": "y", "parameters": {"classification": 4}}]})
    .to_string();
    let (code, out) =
        http(port, "POST", &format!("/v2/models/{model}/infer"), &body).expect("infer");
    assert_eq!(code, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).expect("json");
    let classes = out["outputs"][0]["data"].as_array().expect("classes");
    assert_eq!(classes.len(), 4, "{out}");
    for c in classes {
        let parts: Vec<&str> = c.as_str().expect("class").split(':').collect();
        let index: usize = parts[1].parse().expect("index");
        assert_eq!(parts.get(2), labels.get(index), "{c}");
    }
}

/// The request body of a gRPC stream (`ModelStreamInfer`): each message sent on the channel
/// goes out as a data frame; dropping the sender half-closes the stream.
pub(crate) struct Frames(pub(crate) tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A gRPC frame of `message`.
pub(crate) fn framed(message: &[u8]) -> bytes::Bytes {
    framed_as(message, false)
}

/// A gRPC frame of `message`, its compressed flag `compressed`.
pub(crate) fn framed_as(message: &[u8], compressed: bool) -> bytes::Bytes {
    use bytes::BufMut as _;
    let mut b = bytes::BytesMut::with_capacity(message.len() + 5);
    b.put_u8(u8::from(compressed));
    b.put_u32(u32::try_from(message.len()).expect("size"));
    b.extend_from_slice(message);
    b.freeze()
}

/// Sends SIGTERM to `child`, as the kubelet does.
pub(crate) fn sigterm(child: &std::process::Child) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -TERM {}", child.id());
}
