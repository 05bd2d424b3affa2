//! The `kiln-server` binary as a pod runs it: not ready until the published model is loaded
//! and warmed, serves inference, and on SIGTERM turns readiness false first while inference
//! goes on being served through the drain delay (endpoints still route to the pod then), then
//! closes the listener, and exits 0 within its shutdown budget.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, http, publish, sigterm, start_ready};

#[test]
fn ready_after_warm_up_serves_and_drains_on_sigterm() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let port = free_port();
    let mut child = start_ready(
        root.path(),
        port,
        &["--drain-delay-s", "2", "--poll-ms", "100"],
    );
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": vec![0.5; 32]}]}).to_string();
    let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"shape\":[2,4]"), "{out}");

    sigterm(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http(port, "GET", "/v2/health/ready", "").map(|(c, _)| c),
        Some(503),
        "readiness turns false first"
    );
    assert_eq!(
        http(port, "GET", "/v2/health/live", "").map(|(c, _)| c),
        Some(200)
    );
    // Requests the endpoints still route here during the delay are answered, not refused.
    for _ in 0..5 {
        let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
        assert_eq!(code, 200, "inference during the drain delay: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().expect("exit");
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(
        http(port, "GET", "/v2/health/live", "").is_none(),
        "the listener is closed after the delay"
    );
}

fn start_server(root: &std::path::Path, port: u16) -> std::process::Child {
    start_ready(root, port, &["--drain-delay-s", "0", "--poll-ms", "50"])
}

/// SIGKILLs the server and starts it again on the same root and port, ready.
fn kill_and_restart(
    mut child: std::process::Child,
    root: &std::path::Path,
    port: u16,
) -> std::process::Child {
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    start_server(root, port)
}

fn serving_version(port: u16) -> String {
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}).to_string();
    let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
    assert_eq!(code, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["model_version"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn killed_during_a_hot_swap_it_restarts_on_the_last_good_version() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let port = free_port();
    let child = start_server(root.path(), port);
    assert_eq!(serving_version(port), "1");
    // A new version lands and the server is SIGKILLed while it may be loading it.
    common::swap(root.path(), "mlp", "2", "mlp.onnx");
    std::thread::sleep(Duration::from_millis(60));
    let child = kill_and_restart(child, root.path(), port);
    assert_eq!(
        serving_version(port),
        "2",
        "restarts on the published version"
    );

    // Then `current` is moved to a version whose file does not match its manifest (a bad
    // hand edit; the agent never publishes one), and the server dies again.
    common::swap(root.path(), "mlp", "3", "mlp.onnx");
    std::fs::write(root.path().join("mlp/3/model.onnx"), b"not the model").expect("corrupt");
    let mut child = kill_and_restart(child, root.path(), port);
    assert_eq!(
        serving_version(port),
        "2",
        "the bad `current` is refused and the last good version served"
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

/// The whole shutdown fits one budget: a client holding a request open (its body trickling,
/// well inside `--body-timeout-s`) does not keep the server past `--shutdown-timeout-s`.
#[test]
fn shutdown_is_bounded_by_its_budget_even_with_a_request_held_open() {
    use std::io::Write as _;
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let port = free_port();
    let log_path = root.path().join("server.log");
    let mut child = common::start_logging(
        root.path(),
        port,
        &["--drain-delay-s", "1", "--shutdown-timeout-s", "3"],
        "info",
        std::fs::File::create(&log_path).expect("log file"),
    );
    let mut held = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        held,
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{{\"inputs\": ["
    )
    .expect("send the start of a request");
    std::thread::sleep(Duration::from_millis(200));
    let sent = std::time::Instant::now();
    sigterm(&child);
    let status = child.wait().expect("exit");
    let took = sent.elapsed();
    assert!(status.success(), "exit: {status:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(4500),
        "shutdown took {took:?} with a budget of 3 s"
    );
    // The connection took the budget, but the idle model stopped cleanly after it.
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(!log.contains("ran out"), "{log}");
    drop(held);
}

/// The budget also bounds a batch still running when it runs out: the server exits 0 on time,
/// cleanly, with a model thread still inside ONNX Runtime. (The repository watcher's stop
/// waited for every model to drain, unbounded, before the budget's own wait began: the
/// process outlived its budget by the rest of the batch, into the kubelet's SIGKILL.)
#[test]
fn shutdown_is_bounded_by_its_budget_even_with_a_batch_running() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "slow", "1", "slow.onnx");
    std::fs::write(
        root.path().join("settings.yaml"),
        "models:\n  slow: {max_batch_size: 2048}\n",
    )
    .expect("settings");
    let settings = root.path().join("settings.yaml");
    let log_path = root.path().join("server.log");
    let port = free_port();
    let mut child = common::start_logging(
        root.path(),
        port,
        &[
            "--config",
            &settings.to_string_lossy(),
            "--drain-delay-s",
            "0",
            "--shutdown-timeout-s",
            "0.5",
        ],
        "info",
        std::fs::File::create(&log_path).expect("log file"),
    );
    let request = |rows: usize| {
        serde_json::json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32", "data": vec![0.25; rows * 512]}]}).to_string()
    };
    // How long a row takes here, then a batch of about 6 s (the signal comes at an eighth
    // of it, the budget ends 0.5 s later: a row costing up to 3.5 times what it was timed at
    // still leaves the batch running then).
    let sample = request(256);
    http(port, "POST", "/v2/models/slow/infer", &sample).expect("warm");
    let started = std::time::Instant::now();
    let (code, _) = http(port, "POST", "/v2/models/slow/infer", &sample).expect("timed");
    assert_eq!(code, 200);
    let per_row = started.elapsed() / 256;
    let rows = (Duration::from_secs(6).as_nanos() / per_row.as_nanos().max(1)).clamp(256, 2048);
    let rows = usize::try_from(rows).expect("rows");
    let runs_for = per_row * u32::try_from(rows).expect("rows");
    let big = request(rows);
    let client = std::thread::spawn(move || http(port, "POST", "/v2/models/slow/infer", &big));
    // Well inside the batch when the signal comes.
    std::thread::sleep(runs_for / 8 + Duration::from_millis(300));
    let sent = std::time::Instant::now();
    sigterm(&child);
    let status = child.wait().expect("exit");
    let took = sent.elapsed();
    let _ = client.join();
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "exit: {status:?}\n{log}");
    // Well short of the batch's end (it has 7/8 of its run left when the signal comes), with
    // room for a busy machine: a debug server beside other tests' ONNX Runtime threads.
    let bound = Duration::from_millis(1500).max(runs_for / 2);
    assert!(
        took < bound,
        "shutdown took {took:?} with a budget of 0.5 s (the batch of {rows} rows runs for about {runs_for:?})\n{log}"
    );
    assert!(log.contains("shutdown budget ran out"), "{log}");
    assert!(!log.contains("Fatal"), "{log}");
}

/// `--log-format json`: every line is a JSON object, and a failed inference request leaves
/// one line naming its model, version, request id and status (a 4xx at debug, never at warn).
#[test]
fn json_logs_carry_one_line_per_failed_request() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let log_path = root.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let mut child = common::start_logging(
        root.path(),
        port,
        &["--drain-delay-s", "0", "--log-format", "json"],
        "info,kiln::http=debug",
        log,
    );
    let bad = serde_json::json!({"id": "req-42", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).to_string();
    let (code, _) = http(port, "POST", "/v2/models/mlp/infer", &bad).expect("infer");
    assert_eq!(code, 400);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["id"] == "req-42")
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    let f = &failed[0];
    assert_eq!(f["level"], "DEBUG", "{f}");
    assert_eq!(
        (
            &f["fields"]["model"],
            &f["fields"]["code"],
            &f["fields"]["protocol"]
        ),
        (
            &serde_json::json!("mlp"),
            &serde_json::json!(400),
            &serde_json::json!("http")
        ),
        "{f}"
    );
    assert!(
        f["fields"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("x"),
        "{f}"
    );
}

/// A port already taken fails the start cleanly: exit status 1 with the reason, before any
/// model is loaded. It used to bind after the watcher had started loading the repository, so
/// `main` returned while a model thread was inside ONNX Runtime: the process aborted (status
/// 134, "Fatal error in cpuinfo") with a spurious load failure in the log.
#[test]
fn a_port_in_use_fails_the_start_with_status_1_before_loading_anything() {
    let root = tempfile::tempdir().expect("root");
    for (i, model) in ["magika", "a", "b", "c"].iter().enumerate() {
        let file = if i == 0 {
            "real/magika.onnx"
        } else {
            "mlp.onnx"
        };
        publish(root.path(), model, "1", file);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    for args in [
        vec!["--listen".to_owned(), format!("127.0.0.1:{port}")],
        vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--grpc-listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln-server"))
            .arg("--root")
            .arg(root.path())
            .args(&args)
            .envs(common::ort_env())
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run kiln-server");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {log}");
        assert!(log.contains(&format!("bind 127.0.0.1:{port}")), "{log}");
        assert!(log.contains("Address already in use"), "{log}");
        assert!(
            !log.contains("ONNX Runtime") && !log.contains("Fatal"),
            "nothing is loaded first: {log}"
        );
    }
}
