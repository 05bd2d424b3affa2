//! Triton's official client libraries (`tritonclient[http,grpc]`, pinned, in the project venv)
//! against the real `kiln-server` binary serving the real-model corpus, over REST and over
//! gRPC: every call a Triton user makes (health, metadata, model config, JSON, binary, raw and
//! typed inference against Python onnxruntime's outputs, output selection, statistics, the
//! repository index, parsed errors, grpc.health.v1) must work unchanged.

mod common;

use std::process::Command;

use common::{free_port, publish, publish_corpus, repo_root, start_ready};

#[test]
fn the_triton_http_and_grpc_clients_work_against_kiln_server() {
    let python = repo_root().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "the project venv is missing (run `make testdata`)"
    );
    let root = tempfile::tempdir().expect("root");
    let names = publish_corpus(root.path());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Beside the corpus, every further datatype (testdata/dtypes.onnx, strings.onnx).
    publish(root.path(), "dtypes", "1", "dtypes.onnx");
    publish(root.path(), "strings", "1", "strings.onnx");
    let (port, grpc) = (free_port(), free_port());
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let mut child = start_ready(
        root.path(),
        port,
        &["--drain-delay-s", "0", "--grpc-listen", &grpc_listen],
    );
    let suite = |script: &str, url: &str| {
        Command::new(&python)
            .arg(repo_root().join("examples/server/tests").join(script))
            .arg(url)
            .arg(repo_root().join("testdata/corpus"))
            .args(&names)
            .output()
            .expect("run the client suite")
    };
    let outs = [
        suite("triton_client.py", &format!("127.0.0.1:{port}")),
        suite("triton_grpc.py", &grpc_listen),
        Command::new(&python)
            .arg(repo_root().join("examples/server/tests/triton_dtypes.py"))
            .args([
                &format!("127.0.0.1:{port}"),
                &grpc_listen,
                "dtypes",
                "strings",
            ])
            .output()
            .expect("run the datatype suite"),
    ];
    let _ = child.kill();
    let _ = child.wait();
    for (out, suite) in outs.iter().zip(["HTTP", "gRPC", "datatypes"]) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(
            out.status.success(),
            "tritonclient {suite} suite failed:\n{text}"
        );
        assert!(text.contains("all checks passed"), "{suite}: {text}");
    }
}
