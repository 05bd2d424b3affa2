//! The `kiln-server` binary as a pod runs it: not ready until the published model is loaded
//! and warmed, serves inference, and on SIGTERM turns readiness false first (while liveness
//! and in-flight work continue), then exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ort_env, publish};

/// One HTTP/1.1 request; returns the status code and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

#[test]
fn ready_after_warm_up_serves_and_drains_on_sigterm() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-server"))
        .arg("--root")
        .arg(root.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--drain-delay-s", "2", "--poll-ms", "100"])
        .envs(ort_env())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiln-server");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http(port, "GET", "/v2/health/ready", "").is_some_and(|(c, _)| c == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
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
