//! The batcher's knobs do what they say and no request can wedge a model: the queue delay
//! (Triton's semantics), zero-size and trim-breaking shapes under padding, and bounded
//! metrics across hundreds of hot swaps. Fake backend, driven through `ModelHandle`.

mod common;

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::fake::{assert_own_rows, metadata, request, Fake, Gate, Seen};
use kiln::batch::config::{OutputTrim, PaddingConfig};
use kiln::batch::{Backend, BatchConfig, BatcherSpec, InferRequest, ModelHandle};
use kiln::{Error, ErrorKind, NamedTensors, Tensor};
use opentelemetry::metrics::Meter;
use proptest::prelude::*;

fn meter() -> Meter {
    opentelemetry::global::meter("kiln-tests")
}

/// Serves the fake model under `config` (warm-up off) on `backends` made by `make`.
fn serve_with(
    config: BatchConfig,
    meter: &Meter,
    make: impl Fn() -> Box<dyn Backend>,
) -> ModelHandle {
    let handle = ModelHandle::new("fake", meter.clone());
    let config = BatchConfig {
        warmup: false,
        ..config
    };
    let backends = (0..config.instances).map(|_| make()).collect();
    let spec = BatcherSpec {
        model: "fake".into(),
        version: "1".into(),
        metadata: metadata(true),
        max_input_elements: 1 << 20,
        config,
    };
    handle
        .load_with("1", move || Ok((spec, backends, "fake".into())))
        .expect("serves");
    handle
}

/// A loader for version `version` of the fake model: one instance, warm-up off.
fn fake_version(
    version: String,
    seen: &Seen,
) -> impl FnOnce() -> kiln::Result<kiln::batch::Loaded> {
    let seen = Arc::clone(seen);
    move || {
        let spec = BatcherSpec {
            model: "fake".into(),
            version,
            metadata: metadata(true),
            max_input_elements: 1 << 20,
            config: BatchConfig {
                warmup: false,
                ..BatchConfig::default()
            },
        };
        let backends = vec![Box::new(Fake::new(&seen)) as Box<dyn Backend>];
        Ok((spec, backends, "fake".into()))
    }
}

fn serve(config: BatchConfig, seen: &Seen, gate: Option<Arc<Gate>>) -> ModelHandle {
    serve_with(config, &meter(), || {
        Box::new(Fake {
            gate: gate.clone(),
            ..Fake::new(seen)
        })
    })
}

/// Runs a request on a thread of its own; the receiver gets its answer and latency.
fn timed(
    h: &ModelHandle,
    inputs: NamedTensors,
) -> mpsc::Receiver<(kiln::Result<NamedTensors>, Duration)> {
    let (tx, rx) = mpsc::channel();
    let h = h.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = h.infer_blocking(InferRequest::new(inputs));
        let _ = tx.send((r, started.elapsed()));
    });
    rx
}

fn answer(
    rx: &mpsc::Receiver<(kiln::Result<NamedTensors>, Duration)>,
    limit: Duration,
) -> (kiln::Result<NamedTensors>, Duration) {
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: the request hangs"))
}

fn delayed(delay: Duration, max_batch_size: usize) -> BatchConfig {
    BatchConfig {
        instances: 1,
        max_batch_size,
        max_queue_delay_us: delay.as_micros() as u64,
        ..BatchConfig::default()
    }
}

#[test]
fn a_lone_request_waits_the_queue_delay() {
    let seen: Seen = Arc::default();
    let delay = Duration::from_millis(300);
    let h = serve(delayed(delay, 64), &seen, None);
    let rx = timed(&h, request(1, 1, 2));
    let (r, took) = answer(&rx, Duration::from_secs(10));
    assert_own_rows(&r.expect("ok"), 1, 1, 2);
    assert!(
        took >= delay - Duration::from_millis(20),
        "answered after {took:?}, before the {delay:?} queue delay"
    );
    assert!(took < delay * 4, "answered after {took:?}");
}

#[test]
fn requests_arriving_within_the_delay_share_one_batch() {
    let seen: Seen = Arc::default();
    let h = serve(delayed(Duration::from_millis(500), 64), &seen, None);
    let a = timed(&h, request(1, 1, 2));
    std::thread::sleep(Duration::from_millis(100));
    let b = timed(&h, request(2, 1, 2));
    assert_own_rows(&answer(&a, Duration::from_secs(10)).0.expect("a"), 1, 1, 2);
    assert_own_rows(&answer(&b, Duration::from_secs(10)).0.expect("b"), 2, 1, 2);
    let batches = seen.lock().expect("seen").clone();
    assert_eq!(
        batches,
        vec![vec![1, 2]],
        "two requests 100 ms apart, one batch"
    );
}

#[test]
fn a_full_batch_never_waits_for_the_delay() {
    let seen: Seen = Arc::default();
    let h = serve(delayed(Duration::from_secs(30), 4), &seen, None);
    let rxs: Vec<_> = (0..4).map(|i| timed(&h, request(i, 1, 2))).collect();
    for (i, rx) in rxs.iter().enumerate() {
        let (r, took) = answer(rx, Duration::from_secs(10));
        assert_own_rows(&r.expect("ok"), i as i64, 1, 2);
        assert!(
            took < Duration::from_secs(5),
            "a full batch waited {took:?}"
        );
    }
    assert_eq!(h.stats().expect("stats").batch_sizes.get(4), Some(&1));
}

#[test]
fn a_preferred_size_closes_a_waiting_batch_early() {
    let seen: Seen = Arc::default();
    let cfg = BatchConfig {
        preferred_batch_sizes: vec![2],
        ..delayed(Duration::from_secs(30), 64)
    };
    let h = serve(cfg, &seen, None);
    let a = timed(&h, request(1, 1, 2));
    let b = timed(&h, request(2, 1, 2));
    for rx in [a, b] {
        let (r, took) = answer(&rx, Duration::from_secs(10));
        r.expect("ok");
        assert!(took < Duration::from_secs(5), "waited {took:?}");
    }
}

#[test]
fn deadlines_fire_while_a_request_waits_for_the_delay() {
    let seen: Seen = Arc::default();
    let h = serve(delayed(Duration::from_secs(30), 64), &seen, None);
    let (tx, rx) = mpsc::channel();
    let h2 = h.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = h2.infer_blocking(
            InferRequest::new(request(1, 1, 2)).with_timeout(Duration::from_millis(100)),
        );
        let _ = tx.send((r, started.elapsed()));
    });
    let (r, took) = answer(&rx, Duration::from_secs(10));
    assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(seen.lock().expect("seen").is_empty(), "it never ran");
}

fn padded(config: BatchConfig, trim: bool) -> BatchConfig {
    BatchConfig {
        padding: Some(PaddingConfig {
            input: "x".into(),
            dim: 1,
            value: 0.0,
            trim_outputs: if trim {
                vec![OutputTrim {
                    output: "y".into(),
                    dim: 1,
                }]
            } else {
                Vec::new()
            },
        }),
        ..config
    }
}

/// Zero-size dims are served, as ONNX Runtime and Triton serve them (a detector's zero boxes
/// sent on to a classifier, an empty sequence): each request gets its own empty rows, stacked
/// and padded beside requests that have rows, and the model keeps serving.
#[test]
fn zero_size_dims_are_served_their_own_empty_rows_beside_other_requests() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let h = serve(
        padded(BatchConfig::default(), true),
        &seen,
        Some(gate.clone()),
    );
    // Hold the instance so the next requests queue up and are padded into one batch.
    let blocker = timed(&h, request(100, 1, 2));
    gate.wait_inside(1);
    let zero = timed(&h, request(1, 1, 0));
    let no_rows = timed(&h, request(3, 0, 2));
    let good = timed(&h, request(2, 1, 3));
    std::thread::sleep(Duration::from_millis(50));
    gate.open();
    answer(&blocker, Duration::from_secs(10))
        .0
        .expect("blocker");
    for (rx, id, rows, width) in [(zero, 1, 1, 0), (no_rows, 3, 0, 2)] {
        let out = answer(&rx, Duration::from_secs(10)).0.expect("served");
        assert_own_rows(&out, id, rows, width);
    }
    // An empty tensor's other dims are still bounded: counted as one, a zero dim does not let
    // a dim of 2^40 through to be padded to.
    let huge = h
        .submit(InferRequest::new(request(5, 0, 1 << 40)))
        .expect_err("a dim of 2^40 beside a zero");
    assert_eq!(huge.kind(), ErrorKind::TooLarge, "{huge}");
    assert_own_rows(
        &answer(&good, Duration::from_secs(10)).0.expect("good"),
        2,
        1,
        3,
    );
    let next = timed(&h, request(4, 2, 2));
    assert_own_rows(
        &answer(&next, Duration::from_secs(10)).0.expect("next"),
        4,
        2,
        2,
    );
    assert!(h.is_ready());
}

/// A backend whose output is half as long as its input along dim 1 (a downsampling model),
/// so trimming the output back to an input's length asks for more than there is.
struct Halving;

impl Backend for Halving {
    fn run(&mut self, inputs: &NamedTensors) -> kiln::Result<NamedTensors> {
        let x = &inputs[0].1;
        let (rows, width) = (x.shape()[0], x.shape()[1]);
        let half = width / 2;
        let data = x.as_slice::<i64>()?;
        let y: Vec<i64> = data
            .chunks(width)
            .flat_map(|r| r[..half].to_vec())
            .collect();
        Ok(vec![("y".into(), Tensor::new([rows, half], y)?)])
    }
}

#[test]
fn a_trim_that_does_not_fit_fails_its_batch_not_the_instance() {
    let h = serve_with(padded(BatchConfig::default(), true), &meter(), || {
        Box::new(Halving)
    });
    // Submitted together so they are padded into one batch; trimming `y` to each request's
    // own length (4, 6) asks for more than the halved output has.
    let rxs: Vec<_> = [(1, 4), (2, 6), (3, 4), (4, 6)]
        .iter()
        .map(|&(id, w)| {
            h.submit(InferRequest::new(request(id, 1, w)))
                .expect("admitted")
        })
        .collect();
    for rx in rxs {
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(rx.blocking_recv());
        });
        let r = done
            .recv_timeout(Duration::from_secs(10))
            .expect("answered, not hung");
        assert!(
            r.is_ok(),
            "the reply channel was dropped: the instance died"
        );
    }
    // The instance is alive: a lone request (no padding, no trim problem) is served.
    let lone = timed(&h, request(9, 1, 4));
    let (r, _) = answer(&lone, Duration::from_secs(10));
    let out = r.expect("a lone request is served");
    assert_eq!(out[0].1.shape(), &[1, 2]);
    assert!(h.is_ready());
}

/// A request of no rows runs in a batch of requests of none, as it would alone: stacked beside
/// rows it got an empty slice of their answer, where a model that cannot run no rows (or one
/// whose output shape depends on them, a ZipMap's classes) answers it otherwise alone. Queued
/// in order while the instance is held: rows, no rows, rows.
#[test]
fn a_request_of_no_rows_runs_in_a_batch_of_its_own() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let h = serve(BatchConfig::default(), &seen, Some(gate.clone()));
    let blocker = timed(&h, request(100, 1, 2));
    gate.wait_inside(1);
    let queued: Vec<_> = [request(2, 1, 2), request(3, 0, 2), request(4, 1, 2)]
        .into_iter()
        .map(|r| h.submit(InferRequest::new(r)).expect("admitted"))
        .collect();
    gate.open();
    answer(&blocker, Duration::from_secs(10))
        .0
        .expect("blocker");
    for (rx, (id, rows)) in queued.into_iter().zip([(2, 1), (3, 0), (4, 1)]) {
        let out = rx.blocking_recv().expect("replied").expect("served");
        assert_own_rows(&out, id, rows, 2);
    }
    let batches = seen.lock().expect("seen").clone();
    assert_eq!(batches, vec![vec![100], vec![2, 4], vec![]], "batches run");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Random shapes, zeros included, with padding on: every request is answered its own rows
    /// (empty ones for a zero-size dim), none is lost or hangs.
    #[test]
    fn random_shapes_including_zeros_never_lose_or_hang_a_request(
        reqs in proptest::collection::vec((0usize..=3, 0usize..=4), 1..40),
        instances in 1usize..=2,
        delay_us in prop_oneof![Just(0u64), Just(2_000u64)],
    ) {
        let seen: Seen = Arc::default();
        let cfg = padded(BatchConfig { instances, max_batch_size: 8, max_queue_delay_us: delay_us, ..BatchConfig::default() }, true);
        let h = serve(cfg, &seen, None);
        let rxs: Vec<_> = reqs
            .iter()
            .enumerate()
            .map(|(i, &(rows, width))| (i, rows, width, h.submit(InferRequest::new(request(i as i64, rows, width)))))
            .collect();
        for (i, rows, width, submitted) in rxs {
            let rx = submitted.map_err(|e| TestCaseError::fail(format!("request {i} refused: {e}")))?;
            let (tx, done) = mpsc::channel();
            std::thread::spawn(move || { let _ = tx.send(rx.blocking_recv()); });
            let r = done.recv_timeout(Duration::from_secs(10)).expect("answered within 10 s");
            let out = r.expect("reply sent").expect("served");
            assert_own_rows(&out, i as i64, rows, width);
        }
        prop_assert!(h.is_ready());
        prop_assert_eq!(h.stats().expect("stats").queued, 0);
    }
}

/// Data points of one metric.
fn points<T>(d: &opentelemetry_sdk::metrics::data::MetricData<T>) -> usize {
    use opentelemetry_sdk::metrics::data::MetricData;
    match d {
        MetricData::Gauge(g) => g.data_points().count(),
        MetricData::Sum(s) => s.data_points().count(),
        MetricData::Histogram(h) => h.data_points().count(),
        MetricData::ExponentialHistogram(h) => h.data_points().count(),
    }
}

/// Every exported series (data point) of the last collection.
fn series(exporter: &opentelemetry_sdk::metrics::InMemoryMetricExporter) -> usize {
    use opentelemetry_sdk::metrics::data::AggregatedMetrics;
    let metrics = exporter.get_finished_metrics().expect("metrics");
    let Some(last) = metrics.last() else {
        return 0;
    };
    last.scope_metrics()
        .flat_map(|sm| sm.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        })
        .sum()
}

#[test]
fn three_hundred_hot_swaps_under_load_keep_the_exported_series_constant() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("kiln");
    let seen: Seen = Arc::default();
    let h = serve_with(BatchConfig::default(), &meter, || {
        Box::new(Fake::new(&seen))
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (h, stop) = (h.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = h
                    .infer_blocking(InferRequest::new(request(n, 1, 2)))
                    .expect("served");
                assert_own_rows(&out, n, 1, 2);
                n += 1;
            }
            n
        })
    };
    let swap = |v: usize| {
        h.load_with(&v.to_string(), fake_version(v.to_string(), &seen))
            .expect("swap");
    };
    for v in 2..=10 {
        swap(v);
    }
    provider.force_flush().expect("flush");
    let early = series(&exporter);
    for v in 11..=300 {
        swap(v);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = load.join().expect("load");
    // One more request on the last version, so every request series has a point.
    h.infer_blocking(InferRequest::new(request(1, 1, 2)))
        .expect("served");
    provider.force_flush().expect("flush");
    let late = series(&exporter);
    assert!(served > 0);
    assert!(
        late <= early + 2,
        "exported series grew from {early} after 10 versions to {late} after 300"
    );
}

/// A panic payload whose drop panics again, `.0` times: the only way a fake backend can make
/// a panic escape both of kiln's boundaries (the backend's and the batch's) and end an
/// instance thread. `Bomb(2)`: the backend boundary drops it and panics with `Bomb(1)`, the
/// batch boundary drops that and panics with `Bomb(0)`, which ends the thread.
struct Bomb(u32);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 > 0 {
            std::panic::panic_any(Bomb(self.0 - 1));
        }
    }
}

/// Serves normally until it sees id 666, then panics with a [`Bomb`].
struct Detonating(Fake);

impl Backend for Detonating {
    fn run(&mut self, inputs: &NamedTensors) -> kiln::Result<NamedTensors> {
        if inputs[0].1.as_slice::<i64>()?.contains(&666) {
            std::panic::panic_any(Bomb(2));
        }
        self.0.run(inputs)
    }
}

#[test]
fn an_instance_that_cannot_continue_fails_the_model_instead_of_hanging_it() {
    let seen: Seen = Arc::default();
    let h = serve_with(BatchConfig::default(), &meter(), || {
        Box::new(Detonating(Fake::new(&seen)))
    });
    let fine = timed(&h, request(1, 1, 2));
    assert_own_rows(
        &answer(&fine, Duration::from_secs(10)).0.expect("ok"),
        1,
        1,
        2,
    );
    let states = h.watch();
    let boom = timed(&h, request(666, 1, 2));
    // Its caller is answered (an error), not left waiting on a thread that is gone.
    assert!(answer(&boom, Duration::from_secs(10)).0.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.is_ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!h.is_ready(), "readiness must go false: {:?}", h.status());
    assert!(
        matches!(h.status().state, kiln::ModelState::Failed { .. }),
        "{:?}",
        h.status()
    );
    assert!(states.has_changed().expect("watch"));
    // Later requests get a prompt Unavailable, never a hang.
    let after = timed(&h, request(2, 1, 2));
    match answer(&after, Duration::from_secs(10)).0 {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        Ok(_) => panic!("a broken version must not serve"),
    }
    // A new version loads over it and serves.
    h.load_with("2", fake_version("2".into(), &seen))
        .expect("v2 loads over the broken version");
    assert!(h.is_ready());
    let again = timed(&h, request(3, 1, 2));
    assert_own_rows(
        &answer(&again, Duration::from_secs(10))
            .0
            .expect("v2 serves"),
        3,
        1,
        2,
    );
}
