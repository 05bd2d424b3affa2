//! kiln's own cost per request, with a backend that does no work (returns its input): what
//! the queue, the hand-off to the instance thread and the answer back cost, for the blocking
//! and the async API, at concurrency 1. Run: `cargo bench -p kiln-benches --bench overhead`.

use std::time::{Duration, Instant};

use anyhow::Result;
use kiln::batch::{Backend, BatchConfig, Batcher, BatcherSpec};
use kiln::{ElementType, InferRequest, ModelMetadata, NamedTensors, Tensor, TensorInfo};
use kiln_benches::quantile;

struct Echo;

impl Backend for Echo {
    fn run(&mut self, inputs: &NamedTensors) -> kiln::Result<NamedTensors> {
        Ok(vec![("y".into(), inputs[0].1.clone())])
    }
}

fn batcher() -> Result<Batcher> {
    let info = |n: &str| TensorInfo {
        name: n.into(),
        element_type: ElementType::F32,
        dims: vec![None, Some(32)],
    };
    let spec = BatcherSpec {
        model: "echo".into(),
        version: "1".into(),
        metadata: ModelMetadata {
            name: "echo".into(),
            inputs: vec![info("x")],
            outputs: vec![info("y")],
            batch_dim: true,
        },
        max_input_elements: 1 << 20,
        config: BatchConfig {
            warmup: false,
            ..BatchConfig::default()
        },
    };
    Ok(Batcher::start(
        spec,
        vec![Box::new(Echo)],
        &opentelemetry::global::meter("bench"),
    )?)
}

fn report(label: &str, mut lat: Vec<Duration>) {
    lat.sort_unstable();
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    println!(
        "{label}: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs ({} requests)",
        mean.as_secs_f64() * 1e6,
        quantile(&lat, 0.5).as_secs_f64() * 1e6,
        quantile(&lat, 0.99).as_secs_f64() * 1e6,
        lat.len()
    );
}

fn main() -> Result<()> {
    let b = batcher()?;
    let req = vec![("x".to_owned(), Tensor::new([1, 32], vec![0.5f32; 32])?)];
    let run = Duration::from_secs(2);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        let t = Instant::now();
        b.infer_blocking(InferRequest::new(req.clone()))?;
        lat.push(t.elapsed());
    }
    report("blocking API, concurrency 1", lat);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let lat = rt.block_on(async {
        let mut lat = Vec::new();
        let start = Instant::now();
        while start.elapsed() < run {
            let t = Instant::now();
            b.infer(InferRequest::new(req.clone()))
                .await
                .expect("infer");
            lat.push(t.elapsed());
        }
        lat
    });
    report("async API (block_on), concurrency 1", lat);
    let lat = rt.block_on(async {
        let b = std::sync::Arc::new(b);
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let start = Instant::now();
            while start.elapsed() < run {
                let t = Instant::now();
                b.infer(InferRequest::new(req.clone()))
                    .await
                    .expect("infer");
                lat.push(t.elapsed());
            }
            lat
        })
        .await
        .expect("task")
    });
    report("async API (spawned task), concurrency 1", lat);
    Ok(())
}
