//! Every session sharing one process-wide ONNX Runtime thread pool: a test binary of its own,
//! because the environment (and so the pool) is created once per process.

mod common;

use common::{assert_close, golden, repo_root, sha256_of, testdata};
use kiln::{
    BatchConfig, Checksum, InferRequest, ModelHandle, ModelOptions, Runtime, RuntimeConfig,
    ThreadPoolConfig,
};

#[test]
fn instances_share_one_thread_pool_and_still_answer_correctly() {
    let library = std::env::var_os("KILN_ORT_DIR")
        .map(|d| std::path::PathBuf::from(d).join("libonnxruntime.so"))
        .unwrap_or_else(|| repo_root().join(".cache/ort/cpu/libonnxruntime.so"));
    let config = RuntimeConfig {
        library_path: Some(library),
        global_thread_pool: Some(ThreadPoolConfig {
            intra_op_threads: 2,
            inter_op_threads: 1,
            spinning: Some(false),
        }),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(&config).expect("runtime with a global pool");
    let handle = ModelHandle::new("mlp", opentelemetry::global::meter("test"));
    let options =
        ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&testdata("mlp.onnx"))));
    handle
        .load_model(
            &runtime,
            testdata("mlp.onnx"),
            "1",
            &options,
            &BatchConfig {
                instances: 3,
                ..BatchConfig::default()
            },
        )
        .expect("three instances on the shared pool");
    let g = golden("mlp");
    let out = handle
        .infer_blocking(InferRequest::new(g.inputs.clone()))
        .expect("inference");
    assert_close(&out, &g.outputs, 1e-5, 1e-5);
}
