//! The `kiln-server` binary as a pod runs it: not ready until the published model is loaded
//! and warmed, serves inference, and on SIGTERM turns readiness false first (while liveness
//! and in-flight work continue), then exits 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, http, publish, start_ready};

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

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
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
    let status = child.wait().expect("exit");
    assert!(status.success(), "graceful exit: {status:?}");
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
