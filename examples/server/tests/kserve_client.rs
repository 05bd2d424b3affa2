//! KServe's own Python SDK clients (`kserve` 0.21: `InferenceRESTClient` with the v2 and the
//! v1 protocol, and `InferenceGRPCClient`, pinned in `scripts/kserve-requirements.txt`, in
//! their own venv) against the real `kiln-server` binary serving the real-model corpus and
//! BYTES tensors: what a KServe transformer, an InferenceGraph step or a user's script calls
//! a predictor with. The health calls read KServe's JSON bodies (`{"live": true}`,
//! `{"ready": true}`, v1's `{"status": "alive"}`), inference is compared with Python
//! onnxruntime's outputs (v1: the golden rows as `instances`, row by row), errors must be the
//! codes the clients raise. Then a real KServe transformer (`kserve.ModelServer`, a
//! pass-through `kserve.Model`, `--enable_predictor_health_check`) with kiln as its
//! predictor, over v1 REST (its default), v2 REST and grpc-v2 (`kserve_transformer.py`): its
//! readiness follows kiln's, its inferences reach kiln through KServe's own predictor call.

mod common;

use common::{repo_root, run_checks, venv_python, CorpusServer};

#[test]
fn the_kserve_rest_and_grpc_clients_work_against_kiln_server() {
    let python = venv_python("kserve-venv", "kserve-client");
    let server = CorpusServer::start();
    let corpus = repo_root().join("testdata/corpus");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&server.rest, &server.grpc, &corpus, &"strings"];
    args.extend(
        server
            .names
            .iter()
            .map(|n| n as &dyn AsRef<std::ffi::OsStr>),
    );
    let results = [
        ("client", run_checks(&python, "kserve_client.py", &args)),
        (
            "transformer",
            run_checks(
                &python,
                "kserve_transformer.py",
                &[&server.rest, &server.grpc, &corpus, &"magika"],
            ),
        ),
    ];
    drop(server);
    for (suite, (passed, text)) in results {
        assert!(passed, "KServe {suite} suite failed:\n{text}");
    }
}
