//! Dynamic batching on the CPU, one model of each kind, all measured in one run:
//!
//! 1. **Ceiling**: raw `session.run` in tight loops at batch 1..128 (rows/s), the better of
//!    one session with ONNX Runtime's default threads and one single-threaded session per core;
//!    the best batch is the ceiling and best ÷ batch-1 is the model's headroom.
//! 2. **Unbatched**: closed-loop callers at each concurrency, one request (one row) per `run`,
//!    on a pool of one single-threaded session per core (caller i uses session i mod 2).
//! 3. **kiln**: the same number of callers as tokio tasks through `ModelHandle::infer().await`
//!    (as an axum service calls it; greedy dynamic batching, one single-threaded instance per
//!    core, `max_batch_size` = the ceiling's best batch), and at concurrency 64 also as OS
//!    threads through `infer_blocking` (as the C ABI and thread pools call it).
//!
//! Plus kiln's added latency at concurrency 1 (over a raw batch-1 `run`). The cost of metrics
//! is measured by the `overhead` bench, where kiln's own work is all there is.
//! Run: `make bench-batching`. `KILN_BENCH_SECS` sets seconds per point (default 1.5).
//! Results: `benches/RESULTS.md` (section `batching`) and `benches/plots/batching-*.svg`.

use anyhow::{Context, Result};
use kiln::{BatchConfig, Model, ModelHandle, Runtime, RuntimeConfig, SessionConfig};
use kiln_benches::inproc::{
    models, options, pooled, root, secs, session, slug, through_kiln, through_kiln_threads, us,
    Point,
};
use kiln_benches::svg::{render, Series};
use kiln_benches::{machine, write_section};

const BATCHES: [usize; 6] = [1, 4, 16, 32, 64, 128];
const CONCURRENCY: [usize; 5] = [1, 8, 32, 64, 128];
/// Sessions (kiln instances) for the per-core configurations: one per core of this machine.
const INSTANCES: usize = 2;

fn main() -> Result<()> {
    let runtime =
        Runtime::new(&RuntimeConfig::default()).context("ONNX Runtime (run `make ort`)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let benches = models();
    let md = format!(
        "## Dynamic batching (CPU)\n\nMachine: {}. ONNX Runtime {} (CPU provider). {:.1} s per point; \
         closed-loop callers sending one row each. Command: `make bench-batching` (`cargo bench -p kiln-benches --bench batching`).\n\n\
         - **ceiling**: raw `session.run` in tight loops at the best batch size, the better of one session with ONNX Runtime's default threads (1×default) and one single-threaded session per core (2×1 thread); **headroom** = ceiling ÷ the batch-1 rate.\n\
         - **unbatched**: callers on a pool of one single-threaded session per core, one row per `run`.\n\
         - **kiln**: `ModelHandle::infer().await` from tokio tasks on one executor thread (async), and `infer_blocking` from 64 OS threads (threads), greedy batching (`max_queue_delay` 0), one single-threaded instance per core, `max_batch_size` = best batch.\n\n",
        machine(),
        runtime.library().version,
        secs().as_secs_f64()
    );
    std::fs::create_dir_all(root().join("benches/plots"))?;
    let mut summary = String::from(
        "### Summary at concurrency 64\n\n| model | kind | headroom | ceiling rows/s | kiln rows/s (async) | kiln ÷ ceiling (async) | kiln ÷ ceiling (threads) | kiln ÷ unbatched | kiln p99 (µs) | unbatched p99 (µs) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut details = String::new();
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    for b in benches
        .iter()
        .filter(|b| only.as_deref().is_none_or(|o| b.label.contains(o)))
    {
        let path = root().join(b.file);
        let opts = options(&path, b)?;
        // Two ways to spend the 2-core budget raw: one session with ONNX Runtime's default
        // threads, or one single-threaded session per core, each in its own loop. The ceiling
        // at each batch size is the better of the two.
        let single_opts = opts.clone().with_session(SessionConfig {
            intra_op_threads: b.intra,
            ..session(b)
        });
        let pool_opts = opts.clone().with_session(SessionConfig {
            intra_op_threads: 1,
            ..session(b)
        });
        let mut single = Model::load_many(&runtime, &path, &single_opts, 1)?;
        let mut pool = Model::load_many(&runtime, &path, &pool_opts, INSTANCES)?;
        let mut ceil = Vec::new();
        for &size in &BATCHES {
            let (back, one) = pooled(single, b, size, 1);
            single = back;
            let (back, per_core) = pooled(pool, b, size, INSTANCES);
            pool = back;
            let best = if one.rows_per_s >= per_core.rows_per_s {
                (one, "1×default")
            } else {
                (per_core, "2×1 thread")
            };
            ceil.push((size, best.0, best.1, per_core));
        }
        drop(single);
        let (best_batch, best, best_how) = ceil
            .iter()
            .max_by(|a, b| a.1.rows_per_s.total_cmp(&b.1.rows_per_s))
            .map(|(s, p, how, _)| (*s, *p, *how))
            .unwrap_or((1, Point::default(), ""));
        let batch1 = ceil[0].3;
        let headroom = best.rows_per_s / ceil[0].1.rows_per_s;

        let mut unb = Vec::new();
        for &c in &CONCURRENCY {
            let (back, p) = pooled(pool, b, 1, c);
            pool = back;
            unb.push(p);
        }
        drop(pool);

        let handle = ModelHandle::new(b.label, opentelemetry::global::meter("kiln-bench"));
        let mut cfg = BatchConfig {
            instances: INSTANCES,
            max_batch_size: best_batch,
            max_queue_requests: 4096,
            ..BatchConfig::default()
        };
        if let Some(spin) = std::env::var("KILN_BENCH_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.spin_us = spin;
        }
        handle.load_model(&runtime, &path, "1", &pool_opts, &cfg)?;
        let mut kil = Vec::new();
        let mut sizes_at_64 = Vec::new();
        let threaded = through_kiln_threads(&handle, b, 64);
        for &c in &CONCURRENCY {
            let before = handle.stats().unwrap_or_default();
            kil.push(through_kiln(&handle, b, c, &rt));
            if c == 64 {
                let after = handle.stats().unwrap_or_default();
                sizes_at_64 = after
                    .batch_sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (i, n - before.batch_sizes.get(i).copied().unwrap_or(0)))
                    .filter(|&(_, n)| n > 0)
                    .collect();
            }
        }
        handle.shutdown();

        let i64 = CONCURRENCY.iter().position(|&c| c == 64).unwrap_or(3);
        let (k, u) = (kil[i64], unb[i64]);
        summary += &format!(
            "| {} | {} | {:.1}× (batch {}) | {:.0} ({}) | {:.0} | **{:.0}%** | {:.0}% | **{:.1}×** | {} | {} |\n",
            b.label,
            b.kind,
            headroom,
            best_batch,
            best.rows_per_s,
            best_how,
            k.rows_per_s,
            100.0 * k.rows_per_s / best.rows_per_s,
            100.0 * threaded.rows_per_s / best.rows_per_s,
            k.rows_per_s / u.rows_per_s,
            us(k.p99),
            us(u.p99)
        );
        details += &format!(
            "### {} ({})\n\nRaw `run` by batch size (rows/s): ",
            b.label, b.kind
        );
        details += &ceil
            .iter()
            .map(|(s, p, how, _)| format!("{s}: {:.0} ({how})", p.rows_per_s))
            .collect::<Vec<_>>()
            .join(", ");
        details += &format!(
            ".\n\nkiln at concurrency 1 adds **{:.1} µs** per request over a raw batch-1 `run` (kiln mean {} µs, raw {} µs).\n\n\
             | concurrency | unbatched rows/s | p50 µs | p99 µs | kiln rows/s | p50 µs | p99 µs | kiln ÷ ceiling | kiln ÷ unbatched |\n|---|---|---|---|---|---|---|---|---|\n",
            (kil[0].mean.as_secs_f64() - batch1.mean.as_secs_f64()) * 1e6,
            us(kil[0].mean),
            us(batch1.mean)
        );
        for (j, &c) in CONCURRENCY.iter().enumerate() {
            details += &format!(
                "| {c} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0}% | {:.1}× |\n",
                unb[j].rows_per_s,
                us(unb[j].p50),
                us(unb[j].p99),
                kil[j].rows_per_s,
                us(kil[j].p50),
                us(kil[j].p99),
                100.0 * kil[j].rows_per_s / best.rows_per_s,
                kil[j].rows_per_s / unb[j].rows_per_s
            );
        }
        details += &format!(
            "\nBatch sizes kiln ran at concurrency 64 (rows: batches): {}.\n\n![{}](plots/{}.svg)\n\n",
            sizes_at_64.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", "),
            b.label,
            slug(b.label)
        );
        let xs = |v: &[Point], f: fn(&Point) -> f64| {
            CONCURRENCY
                .iter()
                .zip(v)
                .map(|(&c, p)| (c as f64, f(p)))
                .collect::<Vec<_>>()
        };
        let svg = render(&[
            (
                &format!("{}: throughput", b.label),
                "rows/s",
                vec![
                    Series {
                        label: format!("ceiling (raw run, batch {best_batch})"),
                        points: CONCURRENCY
                            .iter()
                            .map(|&c| (c as f64, best.rows_per_s))
                            .collect(),
                        colour: "#888",
                        dashed: true,
                    },
                    Series {
                        label: "unbatched".into(),
                        points: xs(&unb, |p| p.rows_per_s),
                        colour: "#d62728",
                        dashed: false,
                    },
                    Series {
                        label: "kiln".into(),
                        points: xs(&kil, |p| p.rows_per_s),
                        colour: "#1f77b4",
                        dashed: false,
                    },
                ],
            ),
            (
                &format!("{}: p99 latency", b.label),
                "p99 (ms)",
                vec![
                    Series {
                        label: "unbatched".into(),
                        points: xs(&unb, |p| p.p99.as_secs_f64() * 1e3),
                        colour: "#d62728",
                        dashed: false,
                    },
                    Series {
                        label: "kiln".into(),
                        points: xs(&kil, |p| p.p99.as_secs_f64() * 1e3),
                        colour: "#1f77b4",
                        dashed: false,
                    },
                ],
            ),
        ]);
        std::fs::write(
            root().join(format!("benches/plots/{}.svg", slug(b.label))),
            svg,
        )?;
        println!("{} done", b.label);
    }

    if only.is_some() {
        println!("{summary}\n{details}");
        return Ok(());
    }
    // Metrics cost: the real model at concurrency 64, no-op meter vs an SDK provider, alternated.
    let body = format!("{md}{summary}\nTargets at concurrency 64: kiln ≥ 90% of the ceiling and ≥ 3× unbatched; at concurrency 1, ≤ 20 µs added per request.\n\n{details}");
    println!("{body}");
    write_section("batching", &body)?;
    Ok(())
}
