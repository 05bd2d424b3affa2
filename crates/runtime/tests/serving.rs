//! The batcher, hot swap and repository watcher on the real ONNX Runtime with real models:
//! batched results equal one-at-a-time results, overload and deadlines, padding, hot swap
//! under load with zero failures, and the metrics a host's exporter sees.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_close, load, publish, runtime, sha256_of, testdata};
use kiln::batch::config::{OutputTrim, PaddingConfig};
use kiln::{
    BatchConfig, Checksum, Error, InferRequest, ModelHandle, ModelOptions, NamedTensors,
    Repository, RepositoryConfig, Tensor,
};

fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("kiln-tests")
}

fn verified(file: &str) -> ModelOptions {
    ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&testdata(file))))
}

fn serve(file: &str, config: BatchConfig) -> ModelHandle {
    let handle = ModelHandle::new(file.trim_end_matches(".onnx").replace('/', "_"), meter());
    handle
        .load_model(&runtime(), testdata(file), "1", &verified(file), &config)
        .expect("serves");
    handle
}

/// Deterministic pseudo-random f32s.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn mlp_request(seed: u64, rows: usize) -> NamedTensors {
    vec![(
        "x".into(),
        Tensor::new([rows, 16], values(seed, rows * 16)).expect("x"),
    )]
}

#[test]
fn concurrent_batched_results_equal_one_at_a_time_results() {
    let cfg = BatchConfig {
        max_queue_delay_us: 5_000,
        max_batch_size: 64,
        ..BatchConfig::default()
    };
    let handle = serve("mlp.onnx", cfg);
    let mut reference = load("mlp.onnx", ModelOptions::new());
    let requests: Vec<(NamedTensors, NamedTensors)> = (0..64u64)
        .map(|i| {
            let req = mlp_request(i, 1 + (i as usize % 3));
            let expected = reference.run(&req).expect("reference");
            (req, expected)
        })
        .collect();
    let receivers: Vec<_> = requests
        .iter()
        .map(|(req, _)| {
            handle
                .submit(InferRequest::new(req.clone()))
                .expect("admitted")
        })
        .collect();
    for ((_, expected), rx) in requests.iter().zip(receivers) {
        let got = rx.blocking_recv().expect("reply").expect("inference");
        assert_close(&got, expected, 1e-5, 1e-5);
    }
    let stats = handle.stats().expect("serving");
    assert!(stats.batches < 64, "requests were batched: {stats:?}");
    assert_eq!(stats.succeeded, 64);
}

#[test]
fn the_real_model_batches_concurrent_async_callers_correctly() {
    let handle = serve(
        "real/magika.onnx",
        BatchConfig {
            max_batch_size: 32,
            ..BatchConfig::default()
        },
    );
    let mut reference = load("real/magika.onnx", ModelOptions::new());
    let req = |i: usize| {
        vec![(
            "bytes".to_owned(),
            Tensor::new(
                [1, 2048],
                (0..2048)
                    .map(|j| ((i * 31 + j * 7) % 257) as i32)
                    .collect::<Vec<_>>(),
            )
            .expect("t"),
        )]
    };
    let expected: Vec<NamedTensors> = (0..48)
        .map(|i| reference.run(&req(i)).expect("reference"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio");
    let got = rt.block_on(async {
        let tasks: Vec<_> = (0..48)
            .map(|i| {
                let h = handle.clone();
                let r = req(i);
                tokio::spawn(async move { h.infer(InferRequest::new(r)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task").expect("inference"));
        }
        out
    });
    for (g, e) in got.iter().zip(&expected) {
        assert_close(g, e, 1e-5, 1e-4);
    }
}

#[test]
fn overload_and_expired_deadlines_on_the_real_model() {
    let handle = serve(
        "real/magika.onnx",
        BatchConfig {
            max_queue_requests: 2,
            max_batch_size: 4,
            ..BatchConfig::default()
        },
    );
    let req = || {
        vec![(
            "bytes".to_owned(),
            Tensor::new([4, 2048], vec![7i32; 4 * 2048]).expect("t"),
        )]
    };
    let mut admitted = Vec::new();
    let mut overloaded = 0;
    for _ in 0..500 {
        match handle.submit(InferRequest::new(req())) {
            Ok(rx) => admitted.push(rx),
            Err(Error::Overloaded { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO);
                overloaded += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue of 2 must refuse some of 500 back-to-back requests"
    );
    for rx in admitted {
        rx.blocking_recv()
            .expect("reply")
            .expect("every admitted request succeeds");
    }
    let past = InferRequest::new(req()).with_deadline(Instant::now());
    assert!(matches!(
        handle.infer_blocking(past),
        Err(Error::DeadlineExceeded { .. })
    ));
}

#[test]
fn padding_batches_sequences_of_different_lengths_and_trims_outputs_back() {
    let padding = PaddingConfig {
        input: "tokens".into(),
        dim: 1,
        value: 0.0,
        trim_outputs: vec![OutputTrim {
            output: "proj".into(),
            dim: 1,
        }],
    };
    let cfg = BatchConfig {
        max_queue_delay_us: 20_000,
        padding: Some(padding),
        ..BatchConfig::default()
    };
    let handle = serve("sequence.onnx", cfg);
    let mut reference = load("sequence.onnx", ModelOptions::new());
    let lengths = [2usize, 5, 3, 5, 1];
    let requests: Vec<NamedTensors> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            vec![(
                "tokens".into(),
                Tensor::new([1, len, 8], values(i as u64, len * 8)).expect("t"),
            )]
        })
        .collect();
    let receivers: Vec<_> = requests
        .iter()
        .map(|r| {
            handle
                .submit(InferRequest::new(r.clone()))
                .expect("admitted")
        })
        .collect();
    for (req, rx) in requests.iter().zip(receivers) {
        let got = rx.blocking_recv().expect("reply").expect("inference");
        let want = reference.run(req).expect("reference");
        // `proj` is per position: padding-safe and trimmed back. (`pooled` averages over the
        // padded length, which is why padding is opt-in per model.)
        assert_close(&got[..1].to_vec(), &want[..1].to_vec(), 1e-5, 1e-5);
    }
    let stats = handle.stats().expect("serving");
    assert!(
        stats.padded_elements > 0 && stats.batches < lengths.len() as u64,
        "{stats:?}"
    );

    let bad = BatchConfig {
        padding: Some(PaddingConfig {
            input: "nope".into(),
            dim: 1,
            value: 0.0,
            trim_outputs: vec![],
        }),
        ..BatchConfig::default()
    };
    let h = ModelHandle::new("seq-bad", meter());
    let err = h
        .load_model(
            &runtime(),
            testdata("sequence.onnx"),
            "1",
            &verified("sequence.onnx"),
            &bad,
        )
        .expect_err("bad padding");
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "padding",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn repository_hot_swaps_under_load_with_zero_failed_requests() {
    let root = tempfile::tempdir().expect("tempdir");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    publish(root.path(), "multi", "1", "multi_io.onnx", false);
    let mut config = RepositoryConfig::new(root.path());
    config.batch = BatchConfig {
        max_batch_size: 16,
        ..BatchConfig::default()
    };
    let repo = Repository::new(runtime(), config, meter());
    let report = repo.scan().expect("scan");
    assert_eq!(report.loaded.len(), 2, "{report:?}");
    assert!(repo.all_ready());
    let handle = repo.get("mlp").expect("mlp served");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let (h, stop, failures) = (handle.clone(), Arc::clone(&stop), Arc::clone(&failures));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 20 {
                    if let Err(e) =
                        h.infer_blocking(InferRequest::new(mlp_request(t * 100_000 + n, 2)))
                    {
                        failures.lock().expect("f").push(e.to_string());
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for v in 2..=4 {
        publish(root.path(), "mlp", &v.to_string(), "mlp.onnx", false);
        let r = repo.scan().expect("scan");
        assert_eq!(r.loaded, vec![("mlp".to_owned(), v.to_string())]);
        assert_eq!(handle.current_version(), Some(v.to_string()));
    }
    publish(root.path(), "mlp", "5", "mlp.onnx", true);
    let r = repo.scan().expect("scan");
    assert!(
        r.failed
            .first()
            .is_some_and(|(_, v, e)| v == "5" && e.contains("checksum mismatch")),
        "{r:?}"
    );
    assert_eq!(
        handle.current_version().as_deref(),
        Some("4"),
        "the last good version serves on"
    );
    assert!(
        repo.scan().expect("scan").failed.is_empty(),
        "a failed version is not retried every poll"
    );
    stop.store(true, Ordering::Relaxed);
    let total: u64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    let failures = failures.lock().expect("f");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during swaps: {:?}",
        failures.len(),
        failures.first()
    );

    std::fs::remove_dir_all(root.path().join("multi")).expect("rm");
    assert_eq!(repo.scan().expect("scan").removed, vec!["multi".to_owned()]);
    assert!(repo.get("multi").is_none());
}

#[test]
fn metrics_reach_the_hosts_exporter() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let handle = ModelHandle::new("mlp", provider.meter("kiln"));
    handle
        .load_model(
            &runtime(),
            testdata("mlp.onnx"),
            "1",
            &verified("mlp.onnx"),
            &BatchConfig::default(),
        )
        .expect("serves");
    for i in 0..5 {
        handle
            .infer_blocking(InferRequest::new(mlp_request(i, 1)))
            .expect("ok");
    }
    let _ = handle.infer_blocking(InferRequest::new(vec![(
        "x".into(),
        Tensor::new([1, 3], vec![0f32; 3]).expect("t"),
    )]));
    let wrong = ModelHandle::new("mlp-bad", provider.meter("kiln"));
    let _ = wrong.load_model(
        &runtime(),
        testdata("mlp.onnx"),
        "1",
        &ModelOptions::new().with_checksum(Checksum::Sha256(kiln::Digest::of(b"x"))),
        &BatchConfig::default(),
    );
    provider.force_flush().expect("flush");
    let metrics = exporter.get_finished_metrics().expect("metrics");
    let names: std::collections::BTreeSet<String> = metrics
        .iter()
        .flat_map(|rm| {
            rm.scope_metrics()
                .flat_map(|sm| sm.metrics().map(|m| m.name().to_owned()))
        })
        .collect();
    for expected in [
        "kiln_requests_total",
        "kiln_request_duration_seconds",
        "kiln_queue_duration_seconds",
        "kiln_compute_duration_seconds",
        "kiln_batch_size_rows",
        "kiln_instance_busy_seconds_total",
        "kiln_queue_depth_requests",
        "kiln_queue_depth_bytes",
        "kiln_model_load_duration_seconds",
        "kiln_model_warmup_duration_seconds",
        "kiln_model_provider_info",
        "kiln_checksum_failures_total",
        "kiln_model_load_failures_total",
        "kiln_model_version_info",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    // README's metrics paragraph names exactly the instruments the runtime creates.
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).expect("README");
    let start = readme
        .find("- **Metrics** (OpenTelemetry API only")
        .expect("metrics paragraph");
    let paragraph = &readme[start..start + readme[start..].find("\n\n").expect("end")];
    let documented: std::collections::BTreeSet<String> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("kiln_"))
        .map(|w| w.split('{').next().unwrap_or(w).to_owned())
        .collect();
    // Padding ratios exist only once a padded batch ran (the padding test's model).
    let missing: Vec<_> = documented
        .difference(&names)
        .filter(|n| *n != "kiln_batch_padding_ratio")
        .collect();
    assert!(missing.is_empty(), "README names {missing:?}, not exported");
    let undocumented: Vec<_> = names.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in README: {undocumented:?}"
    );
}

#[test]
fn a_request_already_past_its_deadline_is_always_answered() {
    // Regression: an idle instance that found only expired requests used to keep them
    // unanswered until its next batch, so a lone late request could wait forever.
    let handle = serve("mlp.onnx", BatchConfig::default());
    for i in 0..300 {
        let h = handle.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let request =
                kiln::InferRequest::new(mlp_request(i, 1)).with_deadline(std::time::Instant::now());
            let _ = tx.send(h.infer_blocking(request));
        });
        let answer = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("request {i} past its deadline was never answered"));
        assert!(
            matches!(answer, Err(kiln::Error::DeadlineExceeded { .. })),
            "{answer:?}"
        );
    }
}
