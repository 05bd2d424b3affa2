//! `kiln-load`: the HTTP load generator of the demo and the benchmarks
//! ([`kiln_benches::load`]) on the command line.
//!
//! ```text
//! kiln-load --url http://127.0.0.1:8000/v2/models/magika/infer --body-file req.json \
//!           [--concurrency 16 | --rate 500 [--clients 256]] [--seconds 5] [--timeout-s 30]
//! ```
//! Closed loop with `--concurrency` clients (default 16), or open loop at `--rate` requests
//! per second. Prints requests, throughput, p50/p90/p99 latency, failures (any non-200) and
//! how many answers each model version gave; exits 1 if any request failed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_benches::load::{run, Mode, Target};

fn main() -> Result<()> {
    let (mut url, mut body_file) = (None, None);
    let (mut concurrency, mut rate, mut clients, mut seconds, mut timeout) =
        (16, None, 256, 5.0, 30.0);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--body-file" => body_file = Some(value()?),
            "--concurrency" => concurrency = value()?.parse().context("--concurrency")?,
            "--rate" => rate = Some(value()?.parse::<f64>().context("--rate")?),
            "--clients" => clients = value()?.parse().context("--clients")?,
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            "--timeout-s" => timeout = value()?.parse().context("--timeout-s")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let body_file = body_file.context("--body-file is required")?;
    let body = std::fs::read(&body_file).with_context(|| format!("read {body_file}"))?;
    let target =
        Target::json(&url.context("--url is required")?, body).map_err(anyhow::Error::msg)?;
    let mode = match rate {
        Some(rate) if rate > 0.0 => Mode::Open { rate, clients },
        Some(rate) => bail!("--rate must be positive, not {rate}"),
        None => Mode::Closed { concurrency },
    };
    let report = run(
        &target,
        mode,
        Duration::from_secs_f64(seconds),
        Duration::from_secs_f64(timeout),
    );
    let how = match mode {
        Mode::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        Mode::Open { rate, clients } => format!("open loop, {rate} req/s, {clients} clients"),
    };
    println!("{} ({how})", report.summary());
    for (v, n) in &report.versions {
        println!("  answered by version {v}: {n}");
    }
    for f in &report.failures {
        println!("  failure: {f}");
    }
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
