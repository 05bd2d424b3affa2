//! The in-process measurements two benches share: the models, raw `session.run` loops (the
//! ceiling and the unbatched pool) and closed-loop callers through a kiln `ModelHandle`. The
//! `batching` bench compares them; the `peers` bench uses them as the ceilings the HTTP
//! servers are judged against.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln::{
    Checksum, Digest, InferRequest, Model, ModelHandle, ModelOptions, NamedTensors, SessionConfig,
    Tensor, TensorData,
};

use crate::quantile;

/// A model to benchmark.
pub struct Bench {
    /// Name in tables and plots.
    pub label: &'static str,
    /// What kind of model it is.
    pub kind: &'static str,
    /// Model file, relative to the repository root.
    pub file: &'static str,
    /// Its (only) input.
    pub input: &'static str,
    /// Shape of one row (the batch dim excluded).
    pub row_shape: Vec<usize>,
    /// int32 tokens (else float32).
    pub int_tokens: bool,
    /// Intra-op threads for every contender (0: ONNX Runtime's choice).
    pub intra: usize,
}

/// One closed-loop measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    /// Rows per second.
    pub rows_per_s: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Mean latency.
    pub mean: Duration,
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Seconds per measured point: `KILN_BENCH_SECS` (default 1.5).
pub fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("KILN_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.5),
    )
}

/// A `rows`-row request for `b`, its values varied by `seed`.
pub fn request(b: &Bench, rows: usize, seed: usize) -> NamedTensors {
    let per_row: usize = b.row_shape.iter().product();
    let mut shape = vec![rows];
    shape.extend(&b.row_shape);
    let n = rows * per_row;
    let data = if b.int_tokens {
        TensorData::I32((0..n).map(|i| ((i * 7 + seed * 13) % 257) as i32).collect())
    } else {
        TensorData::F32(
            (0..n)
                .map(|i| ((i * 7 + seed * 13) % 101) as f32 / 101.0)
                .collect(),
        )
    };
    vec![(
        b.input.to_owned(),
        Tensor::from_data(shape, data).expect("bench tensor"),
    )]
}

/// Session settings, identical for every contender: `KILN_BENCH_INTRA` intra-op threads
/// (default 0 = ONNX Runtime's choice), `KILN_BENCH_SPIN=0` turns intra-op spinning off.
pub fn session(b: &Bench) -> SessionConfig {
    let env = |k: &str| std::env::var(k).ok();
    SessionConfig {
        intra_op_threads: env("KILN_BENCH_INTRA")
            .and_then(|v| v.parse().ok())
            .unwrap_or(b.intra),
        intra_op_spinning: env("KILN_BENCH_SPIN").map(|v| v != "0"),
        ..SessionConfig::default()
    }
}

/// Load options for `b`: its sha256 pinned, [`session`] settings.
///
/// # Errors
/// The model file cannot be read.
pub fn options(path: &Path, b: &Bench) -> Result<ModelOptions> {
    let digest = Digest::of(
        &std::fs::read(path)
            .with_context(|| format!("{} (run `make bench-models`)", path.display()))?,
    );
    Ok(ModelOptions::new()
        .with_checksum(Checksum::Sha256(digest))
        .with_session(session(b)))
}

/// Sorts latencies into a [`Point`].
pub fn summarize(mut lat: Vec<Duration>, rows: usize, elapsed: Duration) -> Point {
    lat.sort_unstable();
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    Point {
        rows_per_s: rows as f64 / elapsed.as_secs_f64(),
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        mean,
    }
}

/// `callers` threads in a closed loop for `secs()`, caller `i` running `rows`-row requests on
/// session `i % sessions.len()` (each behind its own mutex).
pub fn pooled(sessions: Vec<Model>, b: &Bench, rows: usize, callers: usize) -> (Vec<Model>, Point) {
    let pool: Arc<Vec<Mutex<Model>>> = Arc::new(sessions.into_iter().map(Mutex::new).collect());
    for m in pool.iter() {
        for _ in 0..2 {
            m.lock()
                .expect("model")
                .run(&request(b, rows, 0))
                .expect("warm-up");
        }
    }
    let start = Instant::now();
    let lat = closed_loop(callers, |i| {
        let pool = Arc::clone(&pool);
        let req = request(b, rows, i);
        move || {
            pool[i % pool.len()]
                .lock()
                .expect("model")
                .run(&req)
                .expect("run");
        }
    });
    let n = lat.len();
    let point = summarize(lat, n * rows, start.elapsed());
    let pool = Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("callers joined"));
    (
        pool.into_iter()
            .map(|m| m.into_inner().expect("model"))
            .collect(),
        point,
    )
}

/// `c` async callers through kiln.
pub fn through_kiln(
    handle: &ModelHandle,
    b: &Bench,
    c: usize,
    rt: &tokio::runtime::Runtime,
) -> Point {
    let start = Instant::now();
    let lat = rt.block_on(async {
        let tasks: Vec<_> = (0..c)
            .map(|i| {
                let h = handle.clone();
                let req = request(b, 1, i);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while start.elapsed() < secs() {
                        let t = Instant::now();
                        h.infer(InferRequest::new(req.clone()))
                            .await
                            .expect("infer");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let rows = lat.len();
    summarize(lat, rows, start.elapsed())
}

/// `c` caller threads through kiln's blocking API (`infer_blocking`, as the C ABI and thread
/// pools call it), in a closed loop for `secs()`.
pub fn through_kiln_threads(handle: &ModelHandle, b: &Bench, c: usize) -> Point {
    let start = Instant::now();
    let lat = closed_loop(c, |i| {
        let h = handle.clone();
        let req = request(b, 1, i);
        move || {
            h.infer_blocking(InferRequest::new(req.clone()))
                .expect("infer");
        }
    });
    let rows = lat.len();
    summarize(lat, rows, start.elapsed())
}

/// `callers` OS threads, caller `i` running `make(i)` in a closed loop for `secs()`; every
/// call's latency.
fn closed_loop<F: FnMut() + Send + 'static>(
    callers: usize,
    make: impl Fn(usize) -> F,
) -> Vec<Duration> {
    let start = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|i| {
            let mut call = make(i);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while start.elapsed() < secs() {
                    let t = Instant::now();
                    call();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("caller"))
        .collect()
}

/// Microseconds, rounded.
pub fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// One model of each kind batching treats differently (`make bench-models` and the real model).
pub fn models() -> Vec<Bench> {
    vec![
        Bench {
            label: "magika (real model)",
            kind: "small CNN classifier, int32 tokens",
            file: "testdata/real/magika.onnx",
            input: "bytes",
            row_shape: vec![2048],
            int_tokens: true,
            intra: 0,
        },
        Bench {
            label: "tabular MLP",
            kind: "32-64-64-8 MLP",
            file: "testdata/bench/tabular_mlp.onnx",
            input: "x",
            row_shape: vec![32],
            int_tokens: false,
            intra: 1,
        },
        Bench {
            label: "MobileNet-style",
            kind: "depthwise-separable CNN, 3x64x64",
            file: "testdata/bench/mobilenet.onnx",
            input: "x",
            row_shape: vec![3, 64, 64],
            int_tokens: false,
            intra: 0,
        },
        Bench {
            label: "compute-bound convnet",
            kind: "3x3 convs, 64-256 ch, 3x64x64",
            file: "testdata/bench/convnet.onnx",
            input: "x",
            row_shape: vec![3, 64, 64],
            int_tokens: false,
            intra: 0,
        },
    ]
}

/// `batching-<label as a file name>`.
pub fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "batching-{}",
        s.split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    )
}
