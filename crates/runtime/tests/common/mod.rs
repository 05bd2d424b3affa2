//! Helpers shared by the integration tests: where the test data and ONNX Runtime are,
//! golden-file loading and comparison, and publishing a test model as the agent does.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod fake;

use std::path::{Path, PathBuf};

use kiln::{
    Checksum, Digest, Model, ModelOptions, NamedTensors, Runtime, RuntimeConfig, Tensor,
    TensorData, TensorSlice,
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// `testdata/<name>`.
pub fn testdata(name: &str) -> PathBuf {
    repo_root().join("testdata").join(name)
}

/// The process's ONNX Runtime: from ORT_DYLIB_PATH / KILN_ORT_DIR when set (as `make test`
/// and GPU runs do), else the CPU library `make ort` provisions in `.cache/ort/cpu`.
pub fn runtime() -> Runtime {
    let configured = ["ORT_DYLIB_PATH", "KILN_ORT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let config = if configured {
        RuntimeConfig::default()
    } else {
        RuntimeConfig {
            library_path: Some(repo_root().join(".cache/ort/cpu/libonnxruntime.so")),
            ..RuntimeConfig::default()
        }
    };
    Runtime::new(&config)
        .unwrap_or_else(|e| panic!("ONNX Runtime is required for this test (run `make ort`): {e}"))
}

/// The sha256 of a file, computed independently of kiln's loader.
pub fn sha256_of(path: &std::path::Path) -> Digest {
    Digest::of(&std::fs::read(path).expect("read test file"))
}

/// Loads `testdata/<file>` with its real digest and the given options.
pub fn load(file: &str, options: ModelOptions) -> Model {
    let path = testdata(file);
    let digest = sha256_of(&path);
    Model::load(
        &runtime(),
        &path,
        &options.with_checksum(Checksum::Sha256(digest)),
    )
    .expect("model loads")
}

/// A golden file: the inputs fed to Python onnxruntime and the outputs it returned.
pub struct Golden {
    pub inputs: NamedTensors,
    pub outputs: NamedTensors,
}

fn tensor_from_json(v: &serde_json::Value) -> Tensor {
    let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).expect("shape");
    let data = &v["data"];
    let td = match v["dtype"].as_str().expect("dtype") {
        "float32" => TensorData::F32(serde_json::from_value(data.clone()).expect("f32 data")),
        "int64" => TensorData::I64(serde_json::from_value(data.clone()).expect("i64 data")),
        "int32" => TensorData::I32(serde_json::from_value(data.clone()).expect("i32 data")),
        "string" => TensorData::String(serde_json::from_value(data.clone()).expect("strings")),
        "float16" => {
            let values: Vec<f32> = serde_json::from_value(data.clone()).expect("f16 data");
            TensorData::F16(values.into_iter().map(half::f16::from_f32).collect())
        }
        other => panic!("golden dtype {other} not handled"),
    };
    Tensor::from_data(shape, td).expect("golden tensor")
}

fn named(v: &serde_json::Value) -> NamedTensors {
    v.as_object()
        .expect("object")
        .iter()
        .map(|(k, t)| (k.clone(), tensor_from_json(t)))
        .collect()
}

/// Row `i` of every tensor (dim 0).
pub fn row(tensors: &NamedTensors, i: usize) -> NamedTensors {
    tensors
        .iter()
        .map(|(n, t)| {
            let rows = t.shape()[0];
            let inner = t.len() / rows;
            let mut shape = t.shape().to_vec();
            shape[0] = 1;
            let data = match t.data() {
                TensorSlice::F32(v) => TensorData::F32(v[i * inner..(i + 1) * inner].to_vec()),
                TensorSlice::I64(v) => TensorData::I64(v[i * inner..(i + 1) * inner].to_vec()),
                TensorSlice::I32(v) => TensorData::I32(v[i * inner..(i + 1) * inner].to_vec()),
                TensorSlice::F16(v) => TensorData::F16(v[i * inner..(i + 1) * inner].to_vec()),
                TensorSlice::String(v) => {
                    TensorData::String(v[i * inner..(i + 1) * inner].to_vec())
                }
                other => panic!("row of {other:?} not handled"),
            };
            (n.clone(), Tensor::from_data(shape, data).expect("row"))
        })
        .collect()
}

/// Reads `testdata/golden/<stem>.json`.
pub fn golden(stem: &str) -> Golden {
    golden_at(&testdata(&format!("golden/{stem}.json")))
}

/// Reads a golden file.
pub fn golden_at(path: &std::path::Path) -> Golden {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("golden file {} (run `make testdata`): {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("golden json");
    Golden {
        inputs: named(&doc["inputs"]),
        outputs: named(&doc["outputs"]),
    }
}

/// Asserts `actual` matches `expected`: same names, shapes and types; integers exactly,
/// floats within `abs_tol + rel_tol * |expected|`.
pub fn assert_close(actual: &NamedTensors, expected: &NamedTensors, abs_tol: f64, rel_tol: f64) {
    assert_eq!(actual.len(), expected.len(), "output count");
    for (name, want) in expected {
        let (_, got) = actual
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("output {name} missing"));
        assert_eq!(got.shape(), want.shape(), "shape of {name}");
        match (got.data(), want.data()) {
            (TensorSlice::F32(g), TensorSlice::F32(w)) => {
                close_floats(name, g.iter().copied(), w.iter().copied(), abs_tol, rel_tol);
            }
            (TensorSlice::F16(g), TensorSlice::F16(w)) => close_floats(
                name,
                g.iter().map(|v| v.to_f32()),
                w.iter().map(|v| v.to_f32()),
                abs_tol,
                rel_tol,
            ),
            (g, w) => assert_eq!(g, w, "{name}"),
        }
    }
}

fn close_floats(
    name: &str,
    got: impl Iterator<Item = f32>,
    want: impl Iterator<Item = f32>,
    abs_tol: f64,
    rel_tol: f64,
) {
    for (i, (a, b)) in got.zip(want).enumerate() {
        let tol = abs_tol + rel_tol * f64::from(b.abs());
        assert!(
            f64::from((a - b).abs()) <= tol,
            "{name}[{i}]: got {a}, want {b} (tolerance {tol})"
        );
    }
}

/// Publishes `testdata/<file>` as `<root>/<model>/<version>` with a manifest; `corrupt` flips
/// a byte after the manifest was written. Then points `current` at it atomically.
pub fn publish(root: &Path, model: &str, version: &str, file: &str, corrupt: bool) {
    let dir = root.join(model).join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let src = testdata(file);
    let mut bytes = std::fs::read(&src).expect("read");
    let manifest = kiln::Manifest {
        schema: kiln::manifest::SCHEMA,
        model: model.into(),
        version: version.into(),
        source: Some(format!("file://{}", src.display())),
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-11-22T00:00:00Z".into(),
        files: vec![kiln::ManifestFile {
            path: "model.onnx".into(),
            sha256: kiln::Digest::of(&bytes),
            size: bytes.len() as u64,
        }],
    };
    if corrupt {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
    }
    std::fs::write(dir.join("model.onnx"), &bytes).expect("write");
    std::fs::write(dir.join(kiln::layout::MANIFEST_FILE), manifest.to_json()).expect("manifest");
    let tmp = root.join(model).join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join(model).join("current")).expect("atomic swap");
}

/// Points `<root>/<model>/current` at `target` atomically, whether or not it exists (a
/// dangling link is what a publisher caught mid-update can leave).
pub fn set_current(root: &Path, model: &str, target: &str) {
    let tmp = root.join(model).join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join(model).join("current")).expect("atomic swap");
}
