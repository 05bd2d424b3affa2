//! `kiln-load`: a small closed-loop HTTP load generator for the v2 infer endpoint (the demo's
//! and the benchmarks' client): N threads, each sending one request after the other for a
//! duration, over keep-alive connections.
//!
//! ```text
//! kiln-load --url http://127.0.0.1:8000/v2/models/magika/infer --body-file req.json \
//!           [--concurrency 16] [--seconds 5]
//! ```
//! Prints requests, failures (any non-200), throughput, p50/p90/p99 latency and how many
//! answers each model version gave; exits 1 if any request failed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

struct Args {
    host: String,
    path: String,
    body: String,
    concurrency: usize,
    seconds: f64,
}

fn parse() -> Result<Args> {
    let (mut url, mut body_file, mut concurrency, mut seconds) = (None, None, 16, 5.0);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--body-file" => body_file = Some(value()?),
            "--concurrency" => concurrency = value()?.parse().context("--concurrency")?,
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let url = url.context("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .context("--url must be http://host:port/path")?;
    let (host, path) = rest.split_once('/').context("--url needs a path")?;
    let body = std::fs::read_to_string(body_file.context("--body-file is required")?)?;
    Ok(Args {
        host: host.to_owned(),
        path: format!("/{path}"),
        body,
        concurrency,
        seconds,
    })
}

/// One keep-alive request; the status code and body.
fn send(conn: &mut Option<BufReader<TcpStream>>, a: &Args) -> Result<(u16, String)> {
    if conn.is_none() {
        let s = TcpStream::connect(&a.host)?;
        s.set_nodelay(true)?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().context("connection")?;
    write!(
        r.get_mut(),
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        a.path,
        a.host,
        a.body.len(),
        a.body
    )?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn main() -> Result<()> {
    let args = parse()?;
    let stop_at = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut conn = None;
                    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
                    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
                    while Instant::now() < stop_at {
                        let t = Instant::now();
                        match send(&mut conn, &args) {
                            Ok((200, body)) => {
                                latencies.push(t.elapsed());
                                let v = serde_json::from_str::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v["model_version"].as_str().map(str::to_owned))
                                    .unwrap_or_default();
                                *versions.entry(v).or_default() += 1;
                            }
                            Ok((code, body)) => failures.push(format!("{code}: {body}")),
                            Err(e) => {
                                conn = None;
                                failures.push(e.to_string());
                            }
                        }
                    }
                    (latencies, failures, versions)
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().ok())
            .collect::<Vec<_>>()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for (v, n) in results.iter().flat_map(|r| &r.2) {
        *versions.entry(v.as_str()).or_default() += n;
    }
    latencies.sort();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{} requests in {elapsed:.1} s at concurrency {}: {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} failed",
        latencies.len() + failures.len(),
        args.concurrency,
        latencies.len() as f64 / elapsed,
        q(0.50),
        q(0.90),
        q(0.99),
        failures.len()
    );
    for (v, n) in &versions {
        println!("  answered by version {v}: {n}");
    }
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
