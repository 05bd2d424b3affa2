//! The CUDA path on a real GPU. Enabled by `KILN_TEST_CUDA=1` with the GPU build of ONNX
//! Runtime (`make ort-gpu`, then `KILN_ORT_DIR=.cache/ort/gpu`). The tests are `#[ignore]`d so
//! a plain `cargo test` lists them as skipped with the reason; `make test-cuda` runs them with
//! `--include-ignored`, and without `KILN_TEST_CUDA=1` they still print why they skip.
//!
//! Each model loads on `Device::Cuda { device_id: 0 }` with `Fallback::Fail` and TF32 off, must
//! report the CUDA provider from the graph assignment, and must reproduce the CPU golden
//! outputs within 1e-4 absolute plus 1e-3 relative. The small test graphs also load with ONNX
//! Runtime's `disable_cpu_fallback` (every node on the GPU); the real model cannot, because
//! ONNX Runtime itself places its shape arithmetic on the CPU, so for it the test requires
//! most nodes on CUDA and prints the split. The speed test uses the default (TF32 on).

mod common;

use std::time::Instant;

use common::{assert_close, golden, load};
use kiln::{Device, Fallback, ModelOptions, Provider, ReportSource, SessionConfig, Tensor};

fn enabled(test: &str) -> bool {
    let on = std::env::var("KILN_TEST_CUDA").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED {test}: set KILN_TEST_CUDA=1 on a machine with an NVIDIA GPU and KILN_ORT_DIR=.cache/ort/gpu (make test-cuda)");
    }
    on
}

fn cuda(session: SessionConfig) -> ModelOptions {
    ModelOptions::new()
        .with_device(Device::Cuda { device_id: 0 })
        .with_fallback(Fallback::Fail)
        .with_session(session)
}

/// Every node on the GPU, full float32 precision.
fn strict_cuda(every_node: bool) -> ModelOptions {
    cuda(SessionConfig {
        disable_cpu_fallback: every_node,
        cuda_tf32: Some(false),
        ..SessionConfig::default()
    })
}

#[test]
#[ignore = "GPU test set: run `make test-cuda` on a machine with an NVIDIA GPU"]
fn cuda_holds_the_graph_and_matches_cpu_golden_outputs() {
    if !enabled("cuda_holds_the_graph_and_matches_cpu_golden_outputs") {
        return;
    }
    for (file, stem, every_node) in [
        ("mlp.onnx", "mlp", true),
        ("fixed_batch.onnx", "fixed_batch", true),
        ("multi_io.onnx", "multi_io", true),
        ("sequence.onnx", "sequence", true),
        ("int64.onnx", "int64", true),
        ("real/magika.onnx", "magika", false),
    ] {
        let mut model = load(file, strict_cuda(every_node));
        let report = model.provider().clone();
        eprintln!("{file}: {:?} nodes {:?}", report.provider, report.nodes);
        assert_eq!(
            report.provider,
            Provider::Cuda { device_id: 0 },
            "{file}: {report:?}"
        );
        assert_eq!(report.source, ReportSource::GraphAssignment, "{file}");
        let on = |ep: &str| {
            report
                .nodes
                .iter()
                .filter(|(p, _)| p == ep)
                .map(|(_, n)| *n)
                .sum::<usize>()
        };
        assert!(
            on("CUDAExecutionProvider") > on("CPUExecutionProvider"),
            "{file}: most nodes must run on CUDA: {:?}",
            report.nodes
        );
        let g = golden(stem);
        assert_close(
            &model
                .run(&g.inputs)
                .unwrap_or_else(|e| panic!("{file}: {e}")),
            &g.outputs,
            1e-4,
            1e-3,
        );
    }
}

#[test]
#[ignore = "GPU test set: run `make test-cuda` on a machine with an NVIDIA GPU"]
fn cuda_speed_up_over_cpu_on_the_real_model() {
    if !enabled("cuda_speed_up_over_cpu_on_the_real_model") {
        return;
    }
    const ROWS: usize = 256;
    const RUNS: usize = 50;
    let input = Tensor::new(
        [ROWS, 2048],
        (0..ROWS * 2048)
            .map(|i| (i % 257) as i32)
            .collect::<Vec<_>>(),
    )
    .expect("input");
    let request = vec![("bytes".to_owned(), input)];
    let mut rates = Vec::new();
    for (label, options) in [
        ("CPU", ModelOptions::new()),
        ("CUDA", cuda(SessionConfig::default())),
    ] {
        let mut model = load("real/magika.onnx", options);
        for _ in 0..5 {
            model.run(&request).expect("warm-up");
        }
        let t = Instant::now();
        for _ in 0..RUNS {
            model.run(&request).expect("run");
        }
        let rows_per_s = (ROWS * RUNS) as f64 / t.elapsed().as_secs_f64();
        eprintln!("magika batch {ROWS} on {label}: {rows_per_s:.0} rows/s");
        rates.push(rows_per_s);
    }
    eprintln!("CUDA speed-up over CPU: {:.1}x", rates[1] / rates[0]);
}
