//! The peer benchmark's external load generators, beside the built-in one ([`crate::load`]),
//! at a fixed concurrency of [`CONCURRENCY`]:
//!
//! - `hey` (Go, HTTP/1.1, one keep-alive connection per client) for the REST bodies: v2 JSON
//!   and the v2 binary-data extension;
//! - `h2load` (nghttp2, HTTP/2) for gRPC unary `ModelInfer` calls: a POST of one
//!   length-prefixed protobuf message (built here with prost from the server's own types,
//!   [`kiln::http::grpc::pb`]) with `content-type: application/grpc` and `te: trailers`.
//!
//! h2load sees only the HTTP status, and a gRPC error is a 200 with `grpc-status` ≠ 0 in the
//! trailers. So the message is first sent once by a real gRPC client ([`grpc_call`]: grpcio,
//! what `tritonclient.grpc` runs on, sending the very bytes h2load sends) and its answer
//! decoded ([`outputs`]) and checked, and the server's own success and failure counts are
//! checked around every run ([`run`]). h2load's summary prints no percentiles: p50 and p99 come
//! from its per-request log (`--log-file`).
//!
//! [`run`] makes one checked run ([`Job`]: the server's REST target or gRPC port, the
//! inputs); [`hey`] and [`h2load`] run the tools and read their output back ([`parse_hey`],
//! [`parse_h2load`]); [`section`] renders the table with the exact commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln::http::grpc::pb;
use kiln::NamedTensors;
use pb::model_infer_request::InferInputTensor;
use prost::Message;

use crate::load::Target;

/// Clients of every external run: concurrent requests in flight.
pub const CONCURRENCY: usize = 64;
/// h2load's connections; each carries [`H2LOAD_STREAMS`] concurrent streams, so
/// [`CONCURRENCY`] calls are in flight. A gRPC client multiplexes its calls on a channel's
/// connection, so one stream per connection would be HTTP/1.1 again; one connection for all
/// 64 would put every call through one connection task of the server (one core's worth on a
/// machine with more). 8 × 8 sits between: several connections the servers spread over their
/// threads, several calls on each.
pub const H2LOAD_CONNECTIONS: usize = 8;
/// Concurrent streams per h2load connection.
pub const H2LOAD_STREAMS: usize = CONCURRENCY / H2LOAD_CONNECTIONS;
/// The gRPC method's path.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// How a request travels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Wire {
    /// REST, the v2 JSON body (driven by hey).
    RestJson,
    /// REST, the v2 binary-data extension: a JSON header then the raw tensor bytes (hey).
    RestBinary,
    /// gRPC, the tensor in `raw_input_contents`, as `tritonclient.grpc` sends it (h2load).
    GrpcRaw,
    /// gRPC, the tensor in typed `contents` (`fp32_contents`), as KServe's clients send it
    /// (h2load).
    GrpcTyped,
}

impl Wire {
    /// Its name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Wire::RestJson => "REST, JSON",
            Wire::RestBinary => "REST, binary extension",
            Wire::GrpcRaw => "gRPC, raw_input_contents",
            Wire::GrpcTyped => "gRPC, typed contents",
        }
    }

    /// The load generator that drives it.
    pub fn generator(self) -> &'static str {
        match self {
            Wire::RestJson | Wire::RestBinary => "hey",
            Wire::GrpcRaw | Wire::GrpcTyped => "h2load",
        }
    }

    /// Whether it is a gRPC call.
    pub fn is_grpc(self) -> bool {
        matches!(self, Wire::GrpcRaw | Wire::GrpcTyped)
    }
}

/// What one external run measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// How the requests travelled.
    pub wire: Wire,
    /// Answered requests per second (the tool's own figure).
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Answers with HTTP status 200 (2xx for h2load).
    pub ok: u64,
    /// Other answers and errors (refused, reset, timed out).
    pub bad: u64,
    /// Requests in flight when the duration ended, abandoned by the tool: h2load's `started`
    /// − `done`; for hey, which does not say, at most one per client ([`CONCURRENCY`]). A
    /// server may count these as failures (Triton counts some cancelled gRPC calls so).
    pub abandoned: u64,
}

/// `hey`'s command line: `secs` of POSTs of the file `body` to `url` from [`CONCURRENCY`]
/// clients, with `content_type` and the `headers` (`Name: value`).
pub fn hey_args(
    secs: Duration,
    content_type: &str,
    headers: &[&str],
    body: &str,
    url: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-z",
        &format!("{}s", secs.as_secs()),
        "-c",
        &CONCURRENCY.to_string(),
        "-m",
        "POST",
        "-T",
        content_type,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for h in headers {
        args.extend(["-H".to_owned(), (*h).to_owned()]);
    }
    args.extend(["-D".to_owned(), body.to_owned(), url.to_owned()]);
    args
}

/// Runs `hey` against `target` (its body written to `body`, its content type and header
/// lines passed as flags) for `secs` and reads its summary.
///
/// # Errors
/// hey is missing or fails, or prints no `Requests/sec`.
pub fn hey(secs: Duration, target: &Target, body: &Path, wire: Wire) -> Result<Run> {
    std::fs::write(body, &target.body)?;
    let url = format!("http://{}{}", target.host, target.path);
    let headers: Vec<&str> = target
        .headers
        .split("\r\n")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let args = hey_args(
        secs,
        &target.content_type,
        &headers,
        &body.display().to_string(),
        &url,
    );
    println!("  $ hey {}", shell_words(&args));
    let out = Command::new("hey")
        .args(&args)
        .output()
        .context("run hey (`make bench-peers` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("hey failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    }
    parse_hey(wire, &text)
}

/// Reads `hey`'s summary: `Requests/sec:`, the latency distribution (`99% in 0.0123 secs`),
/// the status codes (`[200]\t1234 responses`) and the errors (`[12]\tPost ...: refused`).
///
/// # Errors
/// No `Requests/sec` line.
pub fn parse_hey(wire: Wire, text: &str) -> Result<Run> {
    let secs_ms = |v: &str| {
        v.trim()
            .trim_end_matches("secs")
            .trim()
            .parse::<f64>()
            .ok()
            .map(|s| s * 1e3)
    };
    let (mut rps, mut p50_ms, mut p99_ms, mut ok, mut bad) = (None, None, None, 0, 0);
    let mut in_errors = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50% in ") {
            p50_ms = secs_ms(v);
        } else if let Some(v) = line.strip_prefix("99% in ") {
            p99_ms = secs_ms(v);
        } else if line.starts_with("Error distribution:") {
            in_errors = true;
        } else if let Some((inside, tail)) = line.strip_prefix('[').and_then(|r| r.split_once(']'))
        {
            let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if in_errors {
                bad += count(inside);
            } else if inside == "200" {
                ok += count(tail.split_whitespace().next().unwrap_or(""));
            } else {
                bad += count(tail.split_whitespace().next().unwrap_or(""));
            }
        }
    }
    let Some(rps) = rps else {
        bail!("no Requests/sec in hey's output:\n{text}");
    };
    Ok(Run {
        wire,
        rps,
        p50_ms,
        p99_ms,
        ok,
        bad,
        abandoned: CONCURRENCY as u64,
    })
}

/// The one-request `ModelInfer` message for `model` with `inputs`: raw little-endian bytes
/// in `raw_input_contents` (what `tritonclient.grpc` sends), or with `typed` the numbers in
/// each input's `contents` (`fp32_contents`, `int_contents`, ...: what KServe's clients send).
///
/// # Errors
/// An input type the bench does not send (only FP32, FP64, INT32, INT64).
pub fn infer_request(
    model: &str,
    inputs: &NamedTensors,
    typed: bool,
) -> Result<pb::ModelInferRequest> {
    let mut tensors = Vec::new();
    let mut raw = Vec::new();
    for (name, t) in inputs {
        let mut contents = pb::InferTensorContents::default();
        let (datatype, bytes): (&str, Vec<u8>) = match t.data() {
            kiln::TensorSlice::F32(v) => {
                contents.fp32_contents = v.to_vec();
                ("FP32", v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            kiln::TensorSlice::F64(v) => {
                contents.fp64_contents = v.to_vec();
                ("FP64", v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            kiln::TensorSlice::I32(v) => {
                contents.int_contents = v.to_vec();
                ("INT32", v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            kiln::TensorSlice::I64(v) => {
                contents.int64_contents = v.to_vec();
                ("INT64", v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            _ => bail!("input {name}: the bench sends FP32, FP64, INT32 or INT64"),
        };
        tensors.push(InferInputTensor {
            name: name.clone(),
            datatype: datatype.into(),
            shape: t.shape().iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: typed.then_some(contents),
        });
        raw.push(bytes::Bytes::from(bytes));
    }
    Ok(pb::ModelInferRequest {
        model_name: model.into(),
        inputs: tensors,
        raw_input_contents: if typed { Vec::new() } else { raw },
        ..Default::default()
    })
}

/// `msg` as one gRPC message on the wire: flag 0 (uncompressed), its length (4 bytes, big
/// endian), the protobuf bytes: the body of a unary call.
pub fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let len = u32::try_from(bytes.len()).expect("a gRPC message is under 4 GiB");
    let mut out = Vec::with_capacity(5 + bytes.len());
    out.push(0);
    out.extend(len.to_be_bytes());
    out.extend(bytes);
    out
}

/// The gRPC client of [`grpc_call`]: reads the framed body h2load sends, checks its frame,
/// calls `ModelInfer` with those protobuf bytes as they are (grpcio's identity serializers)
/// and writes the answer's bytes to stdout; a gRPC error is its status code and message on
/// stderr, exit 1.
const GRPC_CLIENT: &str = "\
import sys, grpc
host, path, method = sys.argv[1:4]
b = open(path, 'rb').read()
if b[:1] != b'\\0' or int.from_bytes(b[1:5], 'big') != len(b) - 5:
    sys.exit('not one uncompressed gRPC message')
call = grpc.insecure_channel(host).unary_unary(method)
try:
    sys.stdout.buffer.write(call(b[5:], timeout=30))
except grpc.RpcError as e:
    sys.exit(f'{e.code()}: {e.details()}')
";

/// Sends the message in `body` (framed as [`grpc_frame`] frames it, the file h2load
/// sends) once to `ModelInfer` on `host` with a real gRPC client, grpcio (what
/// `tritonclient.grpc` runs on) from the Python at `python`, and decodes the answer.
///
/// # Errors
/// The client cannot run, the call fails (its gRPC status), or the answer does not decode.
pub fn grpc_call(python: &Path, host: &str, body: &Path) -> Result<pb::ModelInferResponse> {
    let out = Command::new(python)
        .args(["-c", GRPC_CLIENT, host])
        .arg(body)
        .arg(MODEL_INFER)
        .output()
        .with_context(|| {
            format!(
                "run {} (grpcio, from scripts/requirements.txt)",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "gRPC ModelInfer on {host}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    pb::ModelInferResponse::decode(out.stdout.as_slice()).context("decode ModelInferResponse")
}

/// Each output's numbers, by name.
pub type Answer = Vec<(String, Vec<f64>)>;

/// Each output's numbers, by name: from `raw_output_contents` (what Triton and kiln answer)
/// or from the typed contents.
///
/// # Errors
/// A type other than FP32, FP64, INT32, INT64, or raw contents of the wrong length.
pub fn outputs(r: &pb::ModelInferResponse) -> Result<Answer> {
    r.outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let v: Vec<f64> = if let Some(raw) = r.raw_output_contents.get(i) {
                let (width, read): (usize, fn(&[u8]) -> f64) = match o.datatype.as_str() {
                    "FP32" => (4, |b| {
                        f32::from_le_bytes(b.try_into().unwrap_or_default()).into()
                    }),
                    "FP64" => (8, |b| f64::from_le_bytes(b.try_into().unwrap_or_default())),
                    "INT32" => (4, |b| {
                        i32::from_le_bytes(b.try_into().unwrap_or_default()).into()
                    }),
                    "INT64" => (8, |b| {
                        i64::from_le_bytes(b.try_into().unwrap_or_default()) as f64
                    }),
                    other => bail!("output {}: datatype {other}", o.name),
                };
                if raw.len() % width != 0 {
                    bail!("output {}: {} raw bytes", o.name, raw.len());
                }
                raw.chunks_exact(width).map(read).collect()
            } else {
                let c = o.contents.clone().unwrap_or_default();
                match o.datatype.as_str() {
                    "FP32" => c.fp32_contents.iter().map(|&x| x.into()).collect(),
                    "FP64" => c.fp64_contents,
                    "INT32" => c.int_contents.iter().map(|&x| x.into()).collect(),
                    "INT64" => c.int64_contents.iter().map(|&x| x as f64).collect(),
                    other => bail!("output {}: datatype {other}", o.name),
                }
            };
            Ok((o.name.clone(), v))
        })
        .collect()
}

/// `h2load`'s command line: `secs` of gRPC calls, the framed message in `body`, to `url`, on
/// [`H2LOAD_CONNECTIONS`] connections of [`H2LOAD_STREAMS`] streams from one thread,
/// each request's status and time written to `log`.
pub fn h2load_args(secs: Duration, body: &str, log: &str, url: &str) -> Vec<String> {
    [
        "-D",
        &secs.as_secs().to_string(),
        "-c",
        &H2LOAD_CONNECTIONS.to_string(),
        "-m",
        &H2LOAD_STREAMS.to_string(),
        "-t",
        "1",
        "-d",
        body,
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--log-file",
        log,
        url,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Runs `h2load` for `secs` of unary `ModelInfer` calls on `host` (HTTP/2 over cleartext,
/// prior knowledge) with the framed message in `body`, and reads its summary and `log`.
///
/// # Errors
/// h2load is missing or fails, or its output or log does not parse.
pub fn h2load(secs: Duration, host: &str, body: &Path, log: &Path, wire: Wire) -> Result<Run> {
    let url = format!("http://{host}{MODEL_INFER}");
    let args = h2load_args(
        secs,
        &body.display().to_string(),
        &log.display().to_string(),
        &url,
    );
    println!("  $ h2load {}", shell_words(&args));
    let out = Command::new("h2load")
        .args(&args)
        .output()
        .context("run h2load (package nghttp2-client; `make bench-peers` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(log).context("read h2load's log")?;
    parse_h2load(wire, &text, &log)
}

/// Reads `h2load`'s summary (`finished in 3.00s, 1234.56 req/s, ...`; `requests: N total, N
/// started, N done, N succeeded, N failed, N errored, N timeout`; `status codes: N 2xx, ...`)
/// and its per-request log (tab-separated: start µs since the epoch, HTTP status, µs to the
/// end of the response) for p50 and p99 of the 2xx answers.
///
/// # Errors
/// No `req/s` figure or no `status codes` line.
pub fn parse_h2load(wire: Wire, summary: &str, log: &str) -> Result<Run> {
    let mut rps = None;
    let mut ok = None;
    let mut bad = 0;
    let mut abandoned = 0;
    // "N word" pairs of a comma-separated line.
    let counts = |rest: &str| -> Vec<(u64, String)> {
        rest.split(',')
            .filter_map(|p| {
                let (n, what) = p.trim().split_once(' ')?;
                Some((n.parse().ok()?, what.trim().to_owned()))
            })
            .collect()
    };
    for line in summary.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            rps = rest
                .split(',')
                .find_map(|p| p.trim().strip_suffix(" req/s")?.parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            let c = counts(rest);
            let n = |what: &str| c.iter().find(|(_, w)| w == what).map_or(0, |(n, _)| *n);
            bad = n("failed") + n("timeout");
            // Started, not done: cancelled when the duration ended, neither answered nor
            // failed as h2load counts.
            abandoned = n("started").saturating_sub(n("done"));
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            ok = counts(rest)
                .iter()
                .find(|(_, w)| w == "2xx")
                .map(|(n, _)| *n);
        }
    }
    let (Some(rps), Some(ok)) = (rps, ok) else {
        bail!("no req/s or status codes in h2load's output:\n{summary}");
    };
    let mut times: Vec<Duration> = log
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, status, us) = (f.next()?, f.next()?, f.next()?);
            (status.trim().starts_with('2'))
                .then(|| us.trim().parse::<u64>().ok())
                .flatten()
                .map(Duration::from_micros)
        })
        .collect();
    times.sort();
    let q = |q: f64| (!times.is_empty()).then(|| crate::quantile(&times, q).as_secs_f64() * 1e3);
    Ok(Run {
        wire,
        rps,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        ok,
        bad,
        abandoned,
    })
}

/// One external run to make: what, where, with what.
pub struct Job<'a> {
    /// Its name in messages (server and wire).
    pub label: String,
    /// How the requests travel.
    pub wire: Wire,
    /// The server's REST request (URL, body, content type, headers), for hey.
    pub rest: &'a Target,
    /// The server's gRPC address, `host:port`, for h2load.
    pub grpc: Option<&'a str>,
    /// The model's name on the server.
    pub model: String,
    /// The request's inputs (the gRPC message is built from them).
    pub inputs: NamedTensors,
    /// Prefix of the files written (body, h2load's log).
    pub files: std::path::PathBuf,
    /// Seconds of load.
    pub secs: Duration,
    /// The Python with grpcio for [`grpc_call`].
    pub python: &'a Path,
}

/// The server's (successes, failures) so far from its statistics at `path` on `host`:
/// Triton's (`inference_stats.success.count`, `inference_stats.fail.count`) with `triton`,
/// else kiln's `/stats` (`succeeded`; `failed` + `overloaded` + `expired`).
///
/// # Errors
/// The statistics cannot be read or lack those counts.
pub fn counts(host: &str, path: &str, triton: bool) -> Result<(u64, u64)> {
    let (code, body) = crate::load::get(host, path, Duration::from_secs(5))?;
    if code != 200 {
        bail!("GET {path}: {code}");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let n = |v: &serde_json::Value| v.as_u64().with_context(|| format!("GET {path}: no {v}"));
    Ok(if triton {
        let i = &v["model_stats"][0]["inference_stats"];
        (n(&i["success"]["count"])?, n(&i["fail"]["count"])?)
    } else {
        (
            n(&v["succeeded"])?,
            n(&v["failed"])? + n(&v["overloaded"])? + n(&v["expired"])?,
        )
    })
}

/// Runs `job`: hey with the REST target, or h2load with the job's `ModelInfer` message (raw
/// or typed contents) after sending it once with [`grpc_call`] and passing the decoded answer
/// to `check` (which fails on a wrong one). Around the run, the server's `counts`
/// (successes, failures; `None` where it keeps none): fails when the successes grew less
/// than the tool's 200 answers (a gRPC error is a 200 to h2load) or the failures grew by
/// more than the requests the tool abandoned in flight at the end ([`Run::abandoned`]).
///
/// # Errors
/// A tool or the gRPC call fails, the answer is wrong, or the counts say requests failed.
pub fn run(
    job: &Job<'_>,
    counts: &dyn Fn() -> Result<Option<(u64, u64)>>,
    check: &dyn Fn(&Answer) -> Result<f64>,
) -> Result<Run> {
    let label = &job.label;
    let file = |ext: &str| {
        let mut name = job.files.file_name().unwrap_or_default().to_owned();
        name.push(format!("-{:?}.{ext}", job.wire).to_lowercase());
        job.files.with_file_name(name)
    };
    let (run, before) = if job.wire.is_grpc() {
        let grpc = job.grpc.context("no gRPC port")?;
        let msg = infer_request(&job.model, &job.inputs, job.wire == Wire::GrpcTyped)?;
        let body = file("grpc");
        std::fs::write(&body, grpc_frame(&msg))?;
        let d = check(&outputs(&grpc_call(job.python, grpc, &body)?)?)
            .with_context(|| format!("{label}: the gRPC answer"))?;
        println!("  {label}: same answer as the in-process session (largest difference {d:.1e})");
        let before = counts()?;
        (
            h2load(job.secs, grpc, &body, &file("tsv"), job.wire)?,
            before,
        )
    } else {
        let before = counts()?;
        (hey(job.secs, job.rest, &file("body"), job.wire)?, before)
    };
    if let (Some((ok0, failed0)), Some((ok1, failed1))) = (before, counts()?) {
        let failed = failed1.saturating_sub(failed0);
        if failed > run.abandoned {
            bail!(
                "{label}: the server counted {failed} failed requests during the run \
                 ({} abandoned in flight at its end)",
                run.abandoned
            );
        }
        if failed > 0 {
            println!(
                "  {label}: the server counted {failed} of the {} requests abandoned in flight at the end as failed",
                run.abandoned
            );
        }
        if ok1.saturating_sub(ok0) < run.ok {
            bail!(
                "{label}: {} answers 200 but the server counted {} successes",
                run.ok,
                ok1.saturating_sub(ok0)
            );
        }
    }
    let opt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
    println!(
        "  {label} ({} c={CONCURRENCY}): {:.0} req/s, p50 {} ms, p99 {} ms, {} ok, {} not",
        job.wire.generator(),
        run.rps,
        opt(run.p50_ms),
        opt(run.p99_ms),
        run.ok,
        run.bad
    );
    Ok(run)
}

/// One row of the table: a run on one contender and model.
#[derive(Debug, Clone)]
pub struct Row {
    /// The model's label.
    pub model: String,
    /// The server's name (kiln's rows are the ones others are compared with).
    pub contender: &'static str,
    /// What was measured.
    pub run: Run,
}

/// The table's section: what was run, how (every command, with placeholders), the rows (by
/// model, then wire, then contender as given), and each against kiln's figure for the same
/// model and wire.
pub fn section(secs: Duration, rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let opt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| (rows.iter().position(|f| f.model == r.model), r.run.wire));
    let mut table = String::new();
    for r in sorted {
        let kiln = rows
            .iter()
            .find(|k| k.contender == "kiln" && k.model == r.model && k.run.wire == r.run.wire)
            .map(|k| k.run.rps);
        let ratio = match kiln {
            Some(k) if r.contender != "kiln" => format!("{:.1}×", k / r.run.rps.max(1e-9)),
            _ => "–".into(),
        };
        table += &format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} / {} | {ratio} |\n",
            r.model,
            r.contender,
            r.run.wire.label(),
            r.run.wire.generator(),
            r.run.rps,
            opt(r.run.p50_ms),
            opt(r.run.p99_ms),
            r.run.ok,
            r.run.bad,
        );
    }
    let url = "http://127.0.0.1:$PORT/v2/models/$MODEL/infer";
    let json = hey_args(secs, "application/json", &[], "body.json", url);
    let binary = hey_args(
        secs,
        "application/octet-stream",
        &["Inference-Header-Content-Length: $HEADER_LEN"],
        "body.bin",
        url,
    );
    let grpc = h2load_args(
        secs,
        "body.grpc",
        "requests.tsv",
        &format!("http://127.0.0.1:$GRPC_PORT{MODEL_INFER}"),
    );
    format!(
        "### External load generators at concurrency {CONCURRENCY}: `hey` (REST) and `h2load` (gRPC)\n\n\
         The same servers and settings, the same one-row request (written to a file), driven by an external load generator \
         instead of the built-in one, {:.0} s per run, right after that contender's points above. \
         REST: `hey` (Debian's package; HTTP/1.1, {CONCURRENCY} keep-alive connections), the v2 JSON body and — kiln only — the binary-data extension \
         (a JSON header giving `binary_data_size`, then the raw little-endian bytes). \
         gRPC: `h2load` (nghttp2, Debian's `nghttp2-client`; HTTP/2 over cleartext) sending unary `GRPCInferenceService/ModelInfer` calls: \
         {H2LOAD_CONNECTIONS} connections × {H2LOAD_STREAMS} concurrent streams = {CONCURRENCY} calls in flight \
         (a gRPC client multiplexes calls on a channel's connection: one stream per connection would be HTTP/1.1 again, one connection for all would be one connection task on the server); \
         the body is one length-prefixed protobuf `ModelInferRequest` built with prost from kiln-server's own types, \
         with the tensor in `raw_input_contents` (what `tritonclient.grpc` sends) or in typed `contents` (`fp32_contents`, what KServe's clients send). \
         h2load sees HTTP statuses only (a gRPC error is a 200 with `grpc-status` ≠ 0 in the trailers), so before each run the same bytes are sent once by a gRPC client \
         (grpcio, what `tritonclient.grpc` runs on) and the answer checked against the in-process session's, \
         and after it the server's success count must have grown by at least h2load's 2xx answers, and its failure count \
         (kiln's `/stats` `failed` + `overloaded` + `expired`, Triton's `inference_stats.fail.count`) by no more than the calls h2load abandoned in flight when the duration ended \
         (its `started` − `done`, at most {CONCURRENCY}: Triton counts some of those cancelled calls as failures, kiln counts them as `cancelled`); \
         the same count check follows every `hey` run (at most one abandoned request per client). \
         h2load prints no percentiles: p50 and p99 are computed from its per-request log (`--log-file`). Commands:\n\n\
         - REST, JSON: `hey {}`\n\
         - REST, binary extension: `hey {}`\n\
         - gRPC: `h2load {}`\n\n\
         | model | contender | wire | generator | req/s | p50 ms | p99 ms | answers 200 / other or failed | kiln ÷ this (same wire) |\n|---|---|---|---|---|---|---|---|---|\n{table}\n",
        secs.as_secs_f64(),
        shell_words(&json),
        shell_words(&binary),
        shell_words(&grpc),
    )
}

/// `args` as one shell command line (an argument with a space in double quotes, so the
/// placeholders of the documented commands still expand).
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary_and_log() {
        let summary = "\
finished in 3.00s, 1234.50 req/s, 300.00KB/s
requests: 3704 total, 3768 started, 3704 done, 3703 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 3703 2xx, 0 3xx, 1 4xx, 0 5xx
time for request:      1.00ms     9.00ms     5.00ms      1.00ms    70.00%
";
        let log: String = (1..=100)
            .map(|i| format!("1700000000000000\t200\t{}\n", i * 1000))
            .chain(["1700000000000000\t404\t999000\n".into()])
            .collect();
        let r = parse_h2load(Wire::GrpcRaw, summary, &log).expect("parses");
        assert_eq!((r.rps, r.ok, r.bad, r.abandoned), (1234.5, 3703, 1, 64));
        let (p50, p99) = (r.p50_ms.expect("p50"), r.p99_ms.expect("p99"));
        assert!((50.0..=51.0).contains(&p50), "{p50}");
        assert!((99.0..=100.0).contains(&p99), "{p99}");
    }

    #[test]
    fn frame_and_request() {
        let t = kiln::Tensor::from_data(vec![1, 2], kiln::TensorData::F32(vec![0.5, 1.0]))
            .expect("tensor");
        let inputs = vec![("x".to_owned(), t)];
        let raw = infer_request("m", &inputs, false).expect("raw");
        assert_eq!(raw.raw_input_contents[0].len(), 8);
        assert!(raw.inputs[0].contents.is_none());
        let typed = infer_request("m", &inputs, true).expect("typed");
        assert!(typed.raw_input_contents.is_empty());
        assert_eq!(
            typed.inputs[0]
                .contents
                .as_ref()
                .map(|c| c.fp32_contents.clone()),
            Some(vec![0.5, 1.0])
        );
        let framed = grpc_frame(&raw);
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes(framed[1..5].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, framed.len() - 5);
        let back = pb::ModelInferRequest::decode(&framed[5..]).expect("decodes");
        assert_eq!(back, raw);
    }

    #[test]
    fn hey_binary_command() {
        let a = hey_args(
            Duration::from_secs(3),
            "application/octet-stream",
            &["Inference-Header-Content-Length: 12"],
            "b.bin",
            "http://h/p",
        );
        assert_eq!(
            shell_words(&a),
            "-z 3s -c 64 -m POST -T application/octet-stream -H \"Inference-Header-Content-Length: 12\" -D b.bin http://h/p"
        );
    }
}
