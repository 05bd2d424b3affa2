//! Triton's official client libraries (`tritonclient[http,grpc]`, pinned, in the project venv)
//! against the real `kiln-server` binary serving the real-model corpus, over REST and over
//! gRPC: every call a Triton user makes (health, metadata, model config, JSON, binary, raw and
//! typed inference against Python onnxruntime's outputs, output selection, statistics, the
//! repository index, parsed errors, grpc.health.v1) must work unchanged, through the asyncio
//! clients (`tritonclient.http.aio`, `tritonclient.grpc.aio`) too; beside the corpus, every
//! further datatype (testdata/dtypes.onnx, strings.onnx).

mod common;

use common::{repo_root, run_checks, venv_python, CorpusServer};

#[test]
fn the_triton_http_and_grpc_clients_work_against_kiln_server() {
    let python = venv_python("venv", "testdata");
    let server = CorpusServer::start();
    let corpus = repo_root().join("testdata/corpus");
    // A corpus suite's arguments: its URLs, the corpus, every corpus model's name.
    let corpus_suite = |script: &str, urls: &[&String]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
        args.extend(urls.iter().map(|u| u as &dyn AsRef<std::ffi::OsStr>));
        args.push(&corpus);
        args.extend(
            server
                .names
                .iter()
                .map(|n| n as &dyn AsRef<std::ffi::OsStr>),
        );
        run_checks(&python, script, &args)
    };
    let results = [
        ("HTTP", corpus_suite("triton_client.py", &[&server.rest])),
        ("gRPC", corpus_suite("triton_grpc.py", &[&server.grpc])),
        (
            "asyncio (http.aio, grpc.aio)",
            corpus_suite("triton_aio.py", &[&server.rest, &server.grpc]),
        ),
        (
            "datatypes",
            run_checks(
                &python,
                "triton_dtypes.py",
                &[
                    &server.rest,
                    &server.grpc,
                    &"dtypes",
                    &"strings",
                    &repo_root().join("testdata"),
                ],
            ),
        ),
    ];
    drop(server);
    for (suite, (passed, text)) in results {
        assert!(passed, "tritonclient {suite} suite failed:\n{text}");
    }
}
