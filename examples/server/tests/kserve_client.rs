//! KServe's own Python SDK clients (`kserve` 0.21: `InferenceRESTClient` with the v2 protocol
//! and `InferenceGRPCClient`, pinned in `scripts/kserve-requirements.txt`, in their own venv)
//! against the real `kiln-server` binary serving the real-model corpus and BYTES tensors:
//! what a KServe transformer, an InferenceGraph step or a user's script calls a v2 predictor
//! with. The health calls read KServe's JSON bodies (`{"live": true}`, `{"ready": true}`),
//! inference is compared with Python onnxruntime's outputs, errors must be the codes the
//! clients raise. Then a real KServe transformer (`kserve.ModelServer`, a pass-through
//! `kserve.Model`, `--enable_predictor_health_check`) with kiln as its predictor, over v2 REST
//! and grpc-v2 (`kserve_transformer.py`): its readiness follows kiln's, its inferences reach
//! kiln through KServe's own predictor call.

mod common;

use std::process::Command;

use common::{free_port, publish, publish_corpus, repo_root, start_ready};

#[test]
fn the_kserve_rest_and_grpc_clients_work_against_kiln_server() {
    let python = repo_root().join(".cache/kserve-venv/bin/python");
    assert!(
        python.exists(),
        "the KServe client venv is missing (run `make kserve-client`)"
    );
    let root = tempfile::tempdir().expect("root");
    let names = publish_corpus(root.path());
    publish(root.path(), "strings", "1", "strings.onnx");
    let (port, grpc) = (free_port(), free_port());
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let mut child = start_ready(
        root.path(),
        port,
        &["--drain-delay-s", "0", "--grpc-listen", &grpc_listen],
    );
    let corpus = repo_root().join("testdata/corpus");
    let clients = Command::new(&python)
        .arg(repo_root().join("examples/server/tests/kserve_client.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&grpc_listen)
        .arg(&corpus)
        .arg("strings")
        .args(&names)
        .output()
        .expect("run the KServe client suite");
    let transformer = Command::new(&python)
        .arg(repo_root().join("examples/server/tests/kserve_transformer.py"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&grpc_listen)
        .arg(&corpus)
        .arg("magika")
        .output()
        .expect("run the KServe transformer checks");
    let _ = child.kill();
    let _ = child.wait();
    let results: Vec<_> = [(clients, "client"), (transformer, "transformer")]
        .into_iter()
        .map(|(out, suite)| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{text}");
            (
                out.status.success() && text.contains("all checks passed"),
                suite,
                text,
            )
        })
        .collect();
    for (passed, suite, text) in results {
        assert!(passed, "KServe {suite} suite failed:\n{text}");
    }
}
