//! `kiln-classify-service`, run as its users run it: the binary over a repository laid out as
//! kiln-agent publishes it, with the real magika model and ONNX Runtime, asked over HTTP. Its
//! own route (`/classify`, which pre-processes raw bytes) and the mounted `kiln::http` router
//! (`/v2`, `/metrics`) answer on one port under the service's own middleware, and the two
//! routes agree on the same file. Each file's expected content type is what magika says of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::{Digest, Manifest, ManifestFile};
use kiln_classify::magika::Magika;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `testdata/real/magika.onnx` published as `<root>/magika/1` with its manifest and `current`
/// link, as kiln-agent leaves it.
fn publish_magika(root: &Path) {
    publish(root, "magika", "real/magika.onnx");
}

/// `testdata/<file>` published as `<root>/<model>/1`, as kiln-agent leaves it.
fn publish(root: &Path, model: &str, file: &str) {
    let dir = root.join(model).join("1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bytes = std::fs::read(repo_root().join("testdata").join(file))
        .unwrap_or_else(|e| panic!("testdata/{file} (run `make testdata`): {e}"));
    std::fs::write(dir.join("model.onnx"), &bytes).expect("copy");
    let manifest = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: model.into(),
        version: "1".into(),
        source: None,
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-12-04T00:00:00Z".into(),
        files: vec![ManifestFile {
            path: "model.onnx".into(),
            sha256: Digest::of(&bytes),
            size: bytes.len() as u64,
        }],
    };
    std::fs::write(dir.join(kiln::layout::MANIFEST_FILE), manifest.to_json()).expect("manifest");
    std::os::unix::fs::symlink("1", root.join(model).join("current")).expect("current");
}

/// The service, killed when dropped.
struct Service {
    child: Child,
    addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path) -> Service {
    start_with(root, &[])
}

fn start_with(root: &Path, extra: &[&str]) -> Service {
    start_env(root, extra, &[])
}

/// [`start_with`], with `env` set for the service.
fn start_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-classify-service"));
    command
        .arg("--root")
        .arg(root)
        .arg("--labels")
        .arg(repo_root().join("testdata/real/magika-config.json"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let configured = ["ORT_DYLIB_PATH", "KILN_ORT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !configured {
        command.env("KILN_ORT_DIR", repo_root().join(".cache/ort/cpu"));
    }
    let mut child = command.spawn().expect("start kiln-classify-service");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let service = Service { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(&service.addr, "GET", "/v2/health/ready", b"").0 != 200 {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    service
}

/// An answer: status, headers (lower-case names), body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request: status, headers (lower-case names), body.
fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Answer {
    try_request(addr, method, path, body).expect("request")
}

/// [`request`], or why it got no answer (refused, reset, or none within 30 s).
fn try_request(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Files of this repository with the content type magika gives them.
fn files() -> Vec<(PathBuf, &'static str)> {
    let r = repo_root();
    vec![
        (r.join("python/tests/clients.py"), "python"),
        (r.join("examples/classify/src/magika.rs"), "rust"),
        (r.join("Makefile"), "makefile"),
        (r.join("crates/runtime/proto/inference.proto"), "proto"),
    ]
}

#[test]
fn own_route_and_the_mounted_protocol_answer_on_one_port_under_the_services_middleware() {
    let dir = tempfile::tempdir().expect("tempdir");
    publish_magika(dir.path());
    let service = start(dir.path());

    // Its own route: raw bytes in, pre-processed here, the content type out.
    for (file, label) in files() {
        let bytes = std::fs::read(&file).expect("read");
        let (status, headers, body) = request(&service.addr, "POST", "/classify", &bytes);
        assert_eq!(
            status,
            200,
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&body)
        );
        let verdict = json_of(&body);
        assert_eq!(verdict["label"], label, "{}: {verdict}", file.display());
        assert_eq!(verdict["confident"], true, "{verdict}");
        assert!(
            header(&headers, "x-served-by")
                .is_some_and(|v| v.starts_with("kiln-classify-service/")),
            "{headers:?}"
        );
    }
    let (status, _, body) = request(&service.addr, "POST", "/classify", b"");
    assert_eq!(
        (status, json_of(&body)["label"].clone()),
        (200, json!("empty"))
    );

    // The mounted router on the same port, under the same middleware: metadata, and the same
    // file through the protocol gives the same best score as /classify.
    let (status, headers, body) = request(&service.addr, "GET", "/v2/models/magika", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(header(&headers, "x-served-by").is_some(), "{headers:?}");
    let metadata = json_of(&body);
    assert_eq!(metadata["inputs"][0]["name"], "bytes", "{metadata}");
    let output = metadata["outputs"][0]["name"]
        .as_str()
        .expect("output name")
        .to_owned();

    let (file, _) = &files()[0];
    let bytes = std::fs::read(file).expect("read");
    let tokens = features_of(&bytes);
    let infer = json!({
        "inputs": [{"name": "bytes", "shape": [1, tokens.len()], "datatype": "INT32", "data": tokens}],
    });
    let (status, _, body) = request(
        &service.addr,
        "POST",
        "/v2/models/magika/infer",
        infer.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = json_of(&body);
    assert_eq!(answer["outputs"][0]["name"], output.as_str());
    let best = answer["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(Value::as_f64)
        .fold(f64::MIN, f64::max);
    let (_, _, body) = request(&service.addr, "POST", "/classify", &bytes);
    let score = json_of(&body)["score"].as_f64().expect("score");
    assert!(
        (best - score).abs() < 1e-6,
        "/v2 best {best} vs /classify {score}"
    );

    // The protocol's metrics, and its errors, through the service.
    let (status, _, body) = request(&service.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("kiln_http_requests_total") && text.contains("/v2/models/{model}/infer"),
        "{text}"
    );
    let (status, headers, _) = request(&service.addr, "GET", "/nowhere", b"");
    assert_eq!(status, 404);
    assert!(header(&headers, "x-served-by").is_some(), "{headers:?}");
}

#[test]
fn sixteen_concurrent_clients_get_the_one_at_a_time_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    publish_magika(dir.path());
    let service = start(dir.path());
    let alone: Vec<Value> = files()
        .iter()
        .map(|(f, _)| {
            let (_, _, body) = request(
                &service.addr,
                "POST",
                "/classify",
                &std::fs::read(f).expect("read"),
            );
            json_of(&body)
        })
        .collect();
    let together: Vec<Vec<Value>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let addr = service.addr.clone();
                s.spawn(move || {
                    files()
                        .iter()
                        .cycle()
                        .skip(t % 4)
                        .take(4)
                        .map(|(f, _)| {
                            let (status, _, body) = request(
                                &addr,
                                "POST",
                                "/classify",
                                &std::fs::read(f).expect("read"),
                            );
                            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                            json_of(&body)
                        })
                        .collect()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    for (t, answers) in together.iter().enumerate() {
        for (i, answer) in answers.iter().enumerate() {
            let expected = &alone[(t % 4 + i) % 4];
            assert_eq!(answer["label"], expected["label"]);
            let (a, b) = (answer["score"].as_f64(), expected["score"].as_f64());
            assert!(
                matches!((a, b), (Some(a), Some(b)) if (a - b).abs() < 1e-5),
                "{answer} vs {expected}"
            );
        }
    }
}

#[test]
fn a_model_not_in_the_repository_is_a_typed_404_and_sigterm_stops_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    publish_magika(dir.path());
    let service = start_with(dir.path(), &["--model", "nosuch"]);
    let (status, headers, body) = request(&service.addr, "POST", "/classify", b"print(1)\n");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(
        json_of(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("nosuch")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(header(&headers, "x-served-by").is_some(), "{headers:?}");
    assert_eq!(request(&service.addr, "GET", "/v2/health/live", b"").0, 200);

    // SIGTERM, as the kubelet sends it: the service stops on its own, with status 0.
    let mut service = service;
    let killed = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// magika's tokens for `bytes`, from its configuration file.
fn features_of(bytes: &[u8]) -> Vec<i32> {
    Magika::from_file(&repo_root().join("testdata/real/magika-config.json"))
        .expect("config")
        .features(bytes)
}

/// SIGTERM as a pod is stopped: readiness turns false at once while `/classify` and `/v2`
/// are still served through the drain delay (the endpoints controller still routes here),
/// and the whole shutdown ends within its budget with status 0 even with ten times that
/// of queued work. (The service closed its listener at the signal, refusing what was still routed to
/// it, then waited for every queued batch: 30 s for its connections, then the models'
/// drain, unbounded.)
#[test]
fn sigterm_serves_through_the_drain_delay_and_stops_within_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    publish_magika(dir.path());
    publish(dir.path(), "slow", "slow.onnx");
    let mut service = start_env(
        dir.path(),
        &[],
        &[
            ("KILN_CLASSIFY_DRAIN_DELAY_S", "1.5"),
            ("KILN_CLASSIFY_SHUTDOWN_TIMEOUT_S", "3"),
        ],
    );
    let addr = service.addr.clone();
    let slow = |rows: usize| {
        json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32",
            "data": vec![0.25; rows * 512]}]})
        .to_string()
    };
    // A full batch (64 rows, the default max_batch_size) timed, then enough of them queued
    // for about 30 s of work, ten times the budget.
    let batch = slow(64);
    let started = Instant::now();
    let (status, _, body) = request(&addr, "POST", "/v2/models/slow/infer", batch.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let per_batch = started.elapsed();
    let queued = (Duration::from_secs(30).as_millis() / per_batch.as_millis().max(1)).clamp(4, 256);
    let work = per_batch * u32::try_from(queued).expect("queued");
    assert!(
        work > Duration::from_secs(9),
        "{queued} batches of {per_batch:?} are not well over the budget of 3 s"
    );
    let clients: Vec<_> = (0..queued)
        .map(|_| {
            let (addr, batch) = (addr.clone(), batch.clone());
            std::thread::spawn(move || {
                let _ = try_request(&addr, "POST", "/v2/models/slow/infer", batch.as_bytes());
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let killed = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let sent = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let mut problems = Vec::new();
    match try_request(&addr, "GET", "/v2/health/ready", b"") {
        Ok((503, _, _)) => {}
        other => problems.push(format!("readiness after SIGTERM: {other:?}, not 503")),
    }
    match try_request(&addr, "POST", "/classify", b"print('still served')\n") {
        Ok((200, _, _)) => {}
        other => problems.push(format!(
            "/classify during the drain delay: {other:?}, not 200"
        )),
    }
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("wait") {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(30) {
            problems.push(format!(
                "still running 30 s after SIGTERM with a budget of 3 s ({work:?} of batches queued)"
            ));
            break service
                .child
                .kill()
                .and_then(|()| service.child.wait())
                .expect("kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    drop(clients);
    // 1.5 s of delay, 1.5 s for the connections, a quarter second each for the runtime and
    // the models, and room for a loaded machine.
    if took > Duration::from_secs(6) && took < Duration::from_secs(30) {
        problems.push(format!(
            "stopped {took:?} after SIGTERM with a budget of 3 s"
        ));
    }
    if !status.success() && took < Duration::from_secs(30) {
        problems.push(format!("exit status {status}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
