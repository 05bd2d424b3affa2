//! grpc-go against the real `kiln-server`: the gRPC client the kubelet's gRPC probe runs, and
//! Go services call kiln with. `tests/go_grpc/main.go` is built in GOPATH mode against Debian's
//! `golang-google-grpc-dev` (`make tools` installs it; no module proxy is needed) and run as:
//! - the kubelet's probe (`pkg/probe/grpc`: blocking dial, one `grpc.health.v1.Health/Check`,
//!   success only for SERVING) for the server, a model and an unknown name, before and after
//!   SIGTERM: the pod must leave its endpoints (NOT_SERVING) while inference goes on;
//! - `ModelInfer` with raw contents from 64 goroutines on one connection (every other call
//!   gzip-compressed by grpc-go), then 1 MiB requests
//!   (past grpc-go's 64 KiB initial window, so its flow control and BDP pings are exercised),
//!   every answer equal to the REST answer for the same input;
//! - calls kiln refuses, with the status codes grpc-go reports.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{free_ports, http, publish, repo_root, sigterm, start_ready};

/// Where Debian's golang-google-grpc-dev puts grpc-go's sources.
const GOPATH: &str = "/usr/share/gocode";

/// Builds `tests/go_grpc` into `target/go/go_grpc` (Go's cache there too, so a clean clone
/// builds offline and leaves `$HOME` alone).
fn build() -> PathBuf {
    let go = Command::new("go").arg("version").output();
    let Ok(version) = go else {
        panic!("the go toolchain is required (make tools installs Debian's golang-go)");
    };
    assert!(
        std::path::Path::new(GOPATH)
            .join("src/google.golang.org/grpc/health/grpc_health_v1")
            .is_dir(),
        "grpc-go is required (make tools installs Debian's golang-google-grpc-dev)"
    );
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let dir = repo_root().join("target/go");
    let bin = dir.join("go_grpc");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("./examples/server/tests/go_grpc")
        .current_dir(repo_root())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Runs the Go client with `args`; its exit status and stdout.
fn go_grpc(bin: &PathBuf, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run the Go client");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("go_grpc {}: {text}", args.join(" "));
    (out.status.success(), text)
}

/// The REST answer's first row for a request of `rows` rows of `value`.
fn rest_row(port: u16, value: f32, rows: usize) -> (String, Vec<f32>) {
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [rows, 16],
        "datatype": "FP32", "data": vec![value; rows * 16]}]})
    .to_string();
    let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
    assert_eq!(code, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let output = &v["outputs"][0];
    let width = output["shape"][1].as_u64().expect("width") as usize;
    let row = output["data"].as_array().expect("data")[..width]
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    (output["name"].as_str().expect("name").to_owned(), row)
}

#[test]
fn grpc_go_probes_and_infers_and_sees_the_drain() {
    let bin = build();
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    // Batches of up to 16,384 rows, so one request can carry 1 MiB.
    let settings = root.path().join("settings.yaml");
    std::fs::write(&settings, "models:\n  mlp: {max_batch_size: 16384}\n").expect("settings");
    let [port, grpc] = free_ports();
    let grpc = format!("127.0.0.1:{grpc}");
    let child = start_ready(
        root.path(),
        port,
        &[
            "--config",
            &settings.to_string_lossy(),
            "--drain-delay-s",
            "3",
            "--grpc-listen",
            &grpc,
        ],
    );
    let mut server = common::Server { child, port };

    // The kubelet's probe: the server and a model are SERVING, an unknown name is NOT_FOUND.
    let probe = |service: &str| go_grpc(&bin, &["probe", &grpc, service]);
    for service in ["", "mlp", "inference.GRPCInferenceService"] {
        let (ok, out) = probe(service);
        assert!(ok, "probe {service:?}: {out}");
        assert_eq!(out, "Success: service healthy");
    }
    let (ok, out) = probe("nope");
    assert!(!ok && out.contains("code NotFound"), "{out}");

    // 64 goroutines on one connection, 25 one-row calls each (every other one gzip), then
    // five 1 MiB calls.
    let (ok, out) = go_grpc(
        &bin,
        &["infer", &grpc, "mlp", "x", "16", "1", "64", "25", "16384"],
    );
    assert!(ok, "{out}");
    let answers: serde_json::Value = serde_json::from_str(&out).expect("the Go client's JSON");
    assert_eq!(answers["calls"], 64 * 25 + 5);
    for value in [0.0f32, 0.25, 0.5, 0.75, 1.0] {
        let got = &answers["answers"][value.to_string()];
        let (name, row) = rest_row(port, value, 1);
        assert_eq!(got["output"], name.as_str(), "{got}");
        assert_eq!(got["datatype"], "FP32");
        let got_row: Vec<f32> = got["row"]
            .as_array()
            .expect("row")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect();
        assert_eq!(got_row, row, "gRPC and REST answers for {value}");
    }

    // Refusals, with the codes grpc-go reports.
    for (model, input, shape, code) in [
        ("nope", "x", "1,16", "NotFound"),
        ("mlp", "x", "1,15", "InvalidArgument"),
        ("mlp", "y", "1,16", "InvalidArgument"),
    ] {
        let (ok, out) = go_grpc(&bin, &["fail", &grpc, model, input, shape]);
        assert!(ok, "{out}");
        assert!(
            out.starts_with(&format!("code={code} ")),
            "{model} {input} {shape}: {out}"
        );
    }

    // SIGTERM: the probe fails (NOT_SERVING) at once, so the pod leaves its endpoints, while
    // calls still routed here during the drain delay are answered.
    sigterm(&server.child);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = probe("");
    assert!(!ok, "{out}");
    assert!(
        out.contains("service unhealthy (responded with \"NOT_SERVING\")"),
        "{out}"
    );
    let (ok, out) = go_grpc(
        &bin,
        &["infer", &grpc, "mlp", "x", "16", "1", "8", "5", "0"],
    );
    assert!(ok, "inference during the drain delay: {out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful exit: {status:?}");
}
