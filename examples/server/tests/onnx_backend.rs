//! The ONNX project's own backend-test models, from the pinned `onnx` wheel in the project
//! venv (`onnx/backend/test/data`: PyTorch-converted modules and operators, the simple models,
//! the light model-zoo classifiers), about 150 models nobody at kiln wrote or chose, published
//! into one repository and served by the real `kiln-server` binary (`--ready-when any`: some
//! are models onnxruntime itself no longer loads). `onnx_backend.py` drives it with
//! tritonclient's HTTP and gRPC clients: each model onnxruntime loads must be ready and answer
//! what onnxruntime answers on the test's own inputs; each it refuses must be listed not ready
//! with the reason. The first run found a model whose test input has a zero-size dim refused.

mod common;

use std::path::{Path, PathBuf};

use common::{free_ports, publish_files, run_checks, start_ready, venv_python};

/// `onnx/backend/test/data` of the venv's `onnx`.
fn backend_data(python: &Path) -> PathBuf {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data'))",
        ])
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("UTF-8 path").trim())
}

/// Every model of the backend data, `(name, path)`: `<suite>/<test>/model.onnx` as `<test>`,
/// `light/<name>.onnx` as `<name>`.
fn models(data: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for suite in ["pytorch-converted", "pytorch-operator", "simple"] {
        let dir = std::fs::read_dir(data.join(suite)).expect("backend test suite");
        for test in dir.map(|e| e.expect("entry").path()) {
            let model = test.join("model.onnx");
            if model.exists() {
                let name = test
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                found.push((name, model));
            }
        }
    }
    for entry in std::fs::read_dir(data.join("light")).expect("light models") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "onnx") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            found.push((name, path));
        }
    }
    found.sort();
    found
}

#[test]
fn the_onnx_backend_test_models_are_served_as_onnxruntime_runs_them() {
    let python = venv_python("venv", "testdata");
    let data = backend_data(&python);
    let models = models(&data);
    assert!(
        models.len() >= 140,
        "{} models under {}",
        models.len(),
        data.display()
    );
    let root = tempfile::tempdir().expect("root");
    for (name, path) in &models {
        publish_files(
            root.path(),
            name,
            "1",
            path.to_str().expect("UTF-8 path"),
            &[],
        );
    }
    let [port, grpc] = free_ports();
    let grpc = format!("127.0.0.1:{grpc}");
    let mut server = start_ready(
        root.path(),
        port,
        &[
            "--drain-delay-s",
            "0",
            "--grpc-listen",
            &grpc,
            "--ready-when",
            "any",
        ],
    );
    let rest = format!("127.0.0.1:{port}");
    let pairs: Vec<String> = models
        .iter()
        .map(|(n, p)| format!("{n}={}", p.display()))
        .collect();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&rest, &grpc];
    args.extend(pairs.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
    let (passed, text) = run_checks(&python, "onnx_backend.py", &args);
    let _ = server.kill();
    let _ = server.wait();
    assert!(passed, "the ONNX backend-test suite failed:\n{text}");
}
