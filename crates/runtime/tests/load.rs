//! Loading real test models on the CPU build of ONNX Runtime: golden outputs, checksum and
//! manifest verification, malformed models, metadata, request validation, and provider
//! fallback when CUDA is asked of a CPU-only library.

mod common;

use std::path::Path;

use common::{assert_close, golden, load, row, runtime, sha256_of, testdata};
use kiln::{
    Checksum, Device, ElementType, Error, Fallback, Manifest, ManifestFile, Model, ModelOptions,
    OptimizationLevel, Provider, ReportSource, SessionConfig, Tensor,
};

/// Copies `testdata/<file>` into `dir` as `model.onnx`, with a manifest listing `entry`.
fn publish(dir: &Path, file: &str, entry: Option<ManifestFile>) -> std::path::PathBuf {
    let model = dir.join("model.onnx");
    std::fs::copy(testdata(file), &model).expect("copy model");
    let manifest = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: "mlp".into(),
        version: "1".into(),
        source: Some("file:///testdata/mlp.onnx".into()),
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-11-22T00:00:00Z".into(),
        files: entry.into_iter().collect(),
    };
    std::fs::write(dir.join(kiln::layout::MANIFEST_FILE), manifest.to_json())
        .expect("write manifest");
    model
}

#[test]
fn every_test_model_matches_python_onnxruntime() {
    for stem in ["mlp", "fixed_batch", "multi_io", "sequence", "int64"] {
        let mut model = load(&format!("{stem}.onnx"), ModelOptions::new());
        let g = golden(stem);
        let out = model
            .run(&g.inputs)
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_close(&out, &g.outputs, 1e-5, 1e-5);
    }
}

/// A classifier as skl2onnx exports one, its probabilities a ZipMap (a sequence of maps): the
/// onnxruntime wheel's own scikit-learn LogisticRegression (iris, a fixed [3, 2] input, int64
/// classes) and a generated one with string classes given unsorted. Each serves its
/// probabilities as `[rows, classes]` FP32 in ascending class order, equal to Python
/// onnxruntime's maps read in that order; kiln refused both models before.
#[test]
fn classifiers_zipmap_probabilities_are_served_as_tensors_of_rows_and_classes() {
    // (A fixed-batch model's rows are its inputs' fixed dim 0: one map per input row.)
    // Each column's class, from the ZipMap's own attribute, is its label (what Triton's
    // classification extension names): ascending, as the columns are.
    for (file, stem, batch_dim, rows, classes) in [
        (
            "real/logreg_iris.onnx",
            "logreg_iris",
            false,
            Some(3),
            ["0", "1", "2"],
        ),
        ("zipmap.onnx", "zipmap", true, None, ["ant", "bee", "cat"]),
    ] {
        let mut model = load(file, ModelOptions::new());
        let meta = model.metadata();
        let probabilities = meta.outputs.last().expect("outputs");
        assert_eq!(probabilities.element_type, ElementType::F32, "{stem}");
        assert_eq!(probabilities.dims, vec![rows, None], "{stem}");
        let labels = meta
            .labels
            .get(&probabilities.name)
            .unwrap_or_else(|| panic!("{stem}: no labels for the ZipMap's classes"));
        let named: Vec<_> = (0..labels.len()).map(|i| labels.get(i)).collect();
        assert_eq!(named, classes.map(Some), "{stem}");
        assert!(!labels.from_file(), "{stem}");
        assert_eq!(meta.batch_dim, batch_dim, "{stem}");
        let g = golden(stem);
        let out = model
            .run(&g.inputs)
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_close(&out, &g.outputs, 1e-6, 1e-5);
    }
}

/// Rows of the ZipMap classifier sent as concurrent requests stack into one batch and split
/// back: each answer is its own row of Python onnxruntime's batched answer, labels and
/// probabilities alike.
#[test]
fn zipmap_rows_batch_and_split_back_to_their_requests() {
    let handle = kiln::ModelHandle::new("zipmap", kiln::otel::global::meter("kiln-zipmap"));
    handle
        .load_model(
            &runtime(),
            testdata("zipmap.onnx"),
            "1",
            &ModelOptions::new().with_checksum(Checksum::Skip),
            &kiln::BatchConfig {
                max_queue_delay_us: 200_000,
                ..kiln::BatchConfig::default()
            },
        )
        .expect("loads");
    let g = golden("zipmap");
    let rows = g.inputs[0].1.shape()[0];
    let answers: Vec<_> = (0..rows)
        .map(|i| {
            let (h, inputs) = (handle.clone(), row(&g.inputs, i));
            std::thread::spawn(move || h.infer_blocking(kiln::InferRequest::new(inputs)))
        })
        .collect();
    for (i, answer) in answers.into_iter().enumerate() {
        let got = answer.join().expect("caller").expect("row served");
        assert_close(&got, &row(&g.outputs, i), 1e-6, 1e-5);
    }
    let stats = handle.stats().expect("stats");
    assert!(stats.batches < rows as u64, "never stacked: {stats:?}");
    handle.shutdown();
}

#[test]
fn real_model_matches_python_onnxruntime() {
    let mut model = load("real/magika.onnx", ModelOptions::new());
    let meta = model.metadata();
    assert_eq!(meta.inputs[0].name, "bytes");
    assert_eq!(meta.inputs[0].element_type, ElementType::I32);
    assert_eq!(meta.inputs[0].dims, vec![None, Some(2048)]);
    assert_eq!(meta.outputs[0].dims, vec![None, Some(214)]);
    assert!(meta.batch_dim);
    let g = golden("magika");
    assert_close(&model.run(&g.inputs).expect("run"), &g.outputs, 1e-5, 1e-4);
}

#[test]
fn session_settings_do_not_change_results() {
    let session = SessionConfig {
        intra_op_threads: 1,
        inter_op_threads: 1,
        parallel_execution: true,
        optimization_level: OptimizationLevel::Disable,
        intra_op_spinning: Some(false),
        inter_op_spinning: Some(false),
        disable_cpu_fallback: false,
        cuda_tf32: Some(false),
    };
    let mut model = load("mlp.onnx", ModelOptions::new().with_session(session));
    let g = golden("mlp");
    assert_close(&model.run(&g.inputs).expect("run"), &g.outputs, 1e-5, 1e-5);
}

#[test]
fn wrong_checksum_refuses_to_load_and_names_both_digests() {
    let path = testdata("mlp.onnx");
    let wrong = kiln::Digest::of(b"not the model");
    let err = Model::load(
        &runtime(),
        &path,
        &ModelOptions::new().with_checksum(Checksum::Sha256(wrong)),
    )
    .expect_err("must refuse");
    match &err {
        Error::ChecksumMismatch {
            path: p,
            expected,
            actual,
        } => {
            assert_eq!(p, &path);
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha256_of(&path));
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong.to_string()) && msg.contains(&sha256_of(&path).to_string()),
        "{msg}"
    );
}

#[test]
fn manifest_supplies_the_digest_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let digest = sha256_of(&testdata("mlp.onnx"));
    let size = std::fs::metadata(testdata("mlp.onnx")).expect("stat").len();
    let model_path = publish(
        dir.path(),
        "mlp.onnx",
        Some(ManifestFile {
            path: "model.onnx".into(),
            sha256: digest,
            size,
        }),
    );
    let model =
        Model::load(&runtime(), &model_path, &ModelOptions::new()).expect("verified by manifest");
    assert!(model.verified());
    assert_eq!(model.digest(), &digest);
    assert_eq!(model.metadata().name, "model");

    // The same manifest, but the file on disk was corrupted after publishing (same size).
    let mut bytes = std::fs::read(&model_path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model_path, &bytes).expect("corrupt");
    let err = Model::load(&runtime(), &model_path, &ModelOptions::new()).expect_err("corrupt file");
    assert!(
        matches!(err, Error::ChecksumMismatch { expected, .. } if expected == digest),
        "{err}"
    );

    // A truncated file is caught by the manifest's size before hashing.
    std::fs::write(&model_path, &bytes[..10]).expect("truncate");
    let err = Model::load(&runtime(), &model_path, &ModelOptions::new()).expect_err("short file");
    assert!(
        matches!(err, Error::SizeMismatch { actual: 10, .. }),
        "{err}"
    );
}

#[test]
fn no_digest_and_no_manifest_entry_fails_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = publish(dir.path(), "mlp.onnx", None);
    let err =
        Model::load(&runtime(), &model_path, &ModelOptions::new()).expect_err("unlisted file");
    assert!(
        matches!(&err, Error::ChecksumRequired { reason, .. } if reason.contains("does not list")),
        "{err}"
    );

    std::fs::remove_file(dir.path().join(kiln::layout::MANIFEST_FILE)).expect("rm manifest");
    let err = Model::load(&runtime(), &model_path, &ModelOptions::new()).expect_err("no manifest");
    assert!(
        matches!(&err, Error::ChecksumRequired { reason, .. } if reason.contains("no kiln-manifest.json")),
        "{err}"
    );
    assert!(
        err.to_string().contains("Checksum::Skip"),
        "the message says how to proceed: {err}"
    );

    std::fs::write(dir.path().join(kiln::layout::MANIFEST_FILE), "{ not json").expect("write");
    let err = Model::load(&runtime(), &model_path, &ModelOptions::new()).expect_err("bad manifest");
    assert!(matches!(err, Error::InvalidManifest { .. }), "{err}");

    let model = Model::load(
        &runtime(),
        &model_path,
        &ModelOptions::new().with_checksum(Checksum::Skip),
    )
    .expect("explicitly waived");
    assert!(!model.verified());
}

#[test]
fn malformed_models_are_typed_errors() {
    for file in ["truncated.onnx", "garbage.onnx"] {
        let path = testdata(file);
        let options = ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&path)));
        let err = Model::load(&runtime(), &path, &options).expect_err(file);
        assert!(
            matches!(&err, Error::InvalidModel { path: p, .. } if p == &path),
            "{file}: {err}"
        );
    }
    let err = Model::load(
        &runtime(),
        testdata("absent.onnx"),
        &ModelOptions::new().with_checksum(Checksum::Skip),
    )
    .expect_err("absent");
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// A sparse tensor input (ONNX Runtime runs such a model with a sparse value bound to it): no
/// v2 datatype carries one, and a dense tensor fed to it fails at every run. kiln loaded it,
/// reported it Ready and failed each request ("expected to be of type: 4 but received a
/// tensor"); it must be refused at load, naming the input.
#[test]
fn a_sparse_tensor_input_is_refused_at_load_by_name() {
    let path = testdata("sparse.onnx");
    let err = Model::load(
        &runtime(),
        &path,
        &ModelOptions::new().with_checksum(Checksum::Skip),
    )
    .expect_err("a sparse input cannot be fed");
    assert!(
        matches!(&err, Error::UnsupportedModel { what: "input", name, ty, .. }
            if name == "a" && ty.contains("sparse")),
        "{err}"
    );
}

#[test]
fn metadata_reports_names_types_dynamic_dims_and_batch_dim() {
    let m = load("sequence.onnx", ModelOptions::new());
    let meta = m.metadata();
    assert_eq!(meta.inputs.len(), 1);
    assert_eq!(meta.inputs[0].name, "tokens");
    assert_eq!(meta.inputs[0].dims, vec![None, None, Some(8)]);
    let outs: Vec<_> = meta
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.dims.clone()))
        .collect();
    assert_eq!(
        outs,
        vec![
            ("proj", vec![None, None, Some(4)]),
            ("pooled", vec![None, Some(8)])
        ]
    );
    assert!(meta.batch_dim);

    let fixed = load("fixed_batch.onnx", ModelOptions::new());
    assert_eq!(fixed.metadata().inputs[0].dims, vec![Some(1), Some(8)]);
    assert!(
        !fixed.metadata().batch_dim,
        "dim 0 fixed at 1: no batch dimension"
    );

    let ints = load("int64.onnx", ModelOptions::new());
    assert_eq!(ints.metadata().inputs[0].element_type, ElementType::I64);
    assert_eq!(ints.metadata().outputs[1].element_type, ElementType::I64);
}

#[test]
fn bad_requests_fail_before_running_with_named_errors() {
    let mut m = load(
        "multi_io.onnx",
        ModelOptions::new().with_max_input_elements(400),
    );
    let f = |rows: usize, cols: usize| {
        Tensor::new([rows, cols], vec![1f32; rows * cols]).expect("tensor")
    };
    let good = vec![("a".to_owned(), f(2, 4)), ("b".to_owned(), f(2, 4))];
    assert_eq!(m.run(&good).expect("good request").len(), 3);

    let cases: Vec<(Vec<(String, Tensor)>, &str)> = vec![
        (
            vec![
                ("a".into(), f(2, 4)),
                ("b".into(), f(2, 4)),
                ("c".into(), f(2, 4)),
            ],
            "unknown input `c`",
        ),
        (vec![("a".into(), f(2, 4))], "missing input `b`"),
        (
            vec![
                ("a".into(), f(2, 4)),
                ("b".into(), Tensor::new([2, 4], vec![1i64; 8]).expect("i64")),
            ],
            "must be float32, got int64",
        ),
        (
            vec![
                ("a".into(), Tensor::new([8], vec![1f32; 8]).expect("rank 1")),
                ("b".into(), f(2, 4)),
            ],
            "must have shape [?, 4], got [8]",
        ),
        (
            vec![("a".into(), f(2, 5)), ("b".into(), f(2, 4))],
            "must have shape [?, 4], got [2, 5]",
        ),
        (
            vec![("a".into(), f(2, 4)), ("b".into(), f(3, 4))],
            "disagree on batch size",
        ),
        (
            vec![("a".into(), f(101, 4)), ("b".into(), f(101, 4))],
            "404 elements, over the limit of 400",
        ),
    ];
    for (req, expected) in cases {
        let err = m.run(&req).expect_err(expected);
        assert!(
            err.to_string().contains(expected),
            "wanted {expected:?} in: {err}"
        );
    }
}

#[test]
fn cpu_placement_is_read_from_the_graph_assignment() {
    let m = load("mlp.onnx", ModelOptions::new());
    let report = m.provider();
    assert_eq!(report.provider, Provider::Cpu);
    assert_eq!(
        report.source,
        ReportSource::GraphAssignment,
        "ONNX Runtime 1.31 records the assignment"
    );
    let cpu_nodes = report
        .nodes
        .iter()
        .find(|(ep, _)| ep == "CPUExecutionProvider")
        .map(|(_, n)| *n);
    assert!(cpu_nodes.is_some_and(|n| n > 0), "{:?}", report.nodes);
    assert!(report.fallback_reason.is_none());
}

#[test]
fn cuda_on_the_cpu_library_falls_back_or_fails_by_policy() {
    let cuda = Device::Cuda { device_id: 0 };
    let m = load(
        "mlp.onnx",
        ModelOptions::new()
            .with_device(cuda)
            .with_fallback(Fallback::Cpu),
    );
    assert_eq!(m.provider().requested, cuda);
    assert_eq!(
        m.provider().provider,
        Provider::Cpu,
        "reports where it really runs"
    );
    assert!(
        m.provider()
            .fallback_reason
            .as_deref()
            .is_some_and(|r| r.contains("CUDA")),
        "{:?}",
        m.provider()
    );

    let auto = load("mlp.onnx", ModelOptions::new().with_device(Device::Auto));
    assert_eq!(auto.provider().provider, Provider::Cpu);
    assert!(auto.provider().fallback_reason.is_some());

    let path = testdata("mlp.onnx");
    let strict = ModelOptions::new()
        .with_device(cuda)
        .with_checksum(Checksum::Sha256(sha256_of(&path)));
    assert_eq!(
        strict.fallback,
        Fallback::Fail,
        "strict is the default for an explicit GPU"
    );
    let err = Model::load(&runtime(), &path, &strict).expect_err("no CUDA in this build");
    assert!(
        matches!(&err, Error::ProviderUnavailable { provider, .. } if provider == "CUDA:0"),
        "{err}"
    );
}
