//! The gRPC door on the wire, against the real `kiln-server` binary, with an HTTP/2 client
//! that sets `grpc-timeout` itself and never gives up on its own: so what is seen is what the
//! server answered, not the client's timer.
//!
//! - A deadline that passes while the request waits in the queue is answered
//!   `DEADLINE_EXCEEDED` by the server, on time.
//! - Every call is counted in `kiln_grpc_requests_total{service,method,code}` and timed in
//!   `kiln_grpc_request_duration_seconds`; a method kiln does not serve adds no series.
//! - Many maximal messages at once stay within the decode budget: the server's peak memory
//!   grows by about the budget, not by the messages sent.
//! - Maximal messages of typed contents (as `tritonclient` sends them by default) are
//!   decoded off the tokio workers, liveness probes answering meanwhile, and never into more
//!   values than their shapes hold.
//! - Compressed messages (gzip, deflate) are inflated within the message limit: a bomb is
//!   `RESOURCE_EXHAUSTED` without the memory it claims, a corrupt one `INVALID_ARGUMENT`.
//!   So are a compressed stream's, each as it arrives, whatever chunks its frames come in.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{
    framed, framed_as, free_ports, http, proc_status_mib, publish, sigterm, start_ready, Frames,
    Liveness, Server, PROBE_LIMIT,
};
use http_body_util::{BodyExt as _, Full};
use kiln::http::grpc::pb;
use prost::Message as _;

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// What a call was answered.
struct Answer {
    grpc_status: Option<String>,
    grpc_message: String,
    message: Bytes,
}

/// A unary gRPC call of `path` with `message`, with `grpc-timeout` if given, waited for
/// without a client deadline (120 s cap).
async fn call(port: u16, path: &str, message: &[u8], timeout: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = timeout.map(|t| ("grpc-timeout", t)).into_iter().collect();
    call_framed(port, path, message, false, &headers).await
}

/// A unary gRPC call of `path` with `message` (its frame's compressed flag `compressed`) and
/// the extra `headers`, waited for without a client deadline (120 s cap).
async fn call_framed(
    port: u16,
    path: &str,
    message: &[u8],
    compressed: bool,
    headers: &[(&str, &str)],
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let framed = framed_as(message, compressed);
    let mut request = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(framed)).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(120), async {
        let response = sender.send_request(request).await.expect("response");
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        (headers, trailers, collected.to_bytes())
    })
    .await
    .expect("the server answers within 120 s");
    let (headers, trailers, body) = response;
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Answer {
        grpc_status: field("grpc-status"),
        grpc_message: field("grpc-message").unwrap_or_default(),
        message: if body.len() >= 5 {
            body.slice(5..)
        } else {
            Bytes::new()
        },
    }
}

/// `n` `ModelInfer` calls of `message` at once, each on its own connection; their answers.
async fn infer_at_once(port: u16, message: &Bytes, n: usize) -> Vec<Answer> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let message = message.clone();
            tokio::spawn(async move { call(port, INFER, &message, None).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for c in calls {
        answers.push(c.await.expect("call"));
    }
    answers
}

/// `n` `ModelInfer` calls of the gzip message `packed` at once, each on its own connection;
/// their answers.
async fn gzip_at_once(port: u16, packed: &Bytes, n: usize) -> Vec<Answer> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let packed = packed.clone();
            tokio::spawn(async move {
                call_framed(port, INFER, &packed, true, &[("grpc-encoding", "gzip")]).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for c in calls {
        answers.push(c.await.expect("call"));
    }
    answers
}

/// mlp's statistics (`/v2/models/mlp/stats`, Triton's schema).
fn mlp_stats(port: u16) -> serde_json::Value {
    let (_, stats) = http(port, "GET", "/v2/models/mlp/stats", "").expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
    stats["model_stats"][0].clone()
}

/// A `ModelInfer` of mlp (`x`: [rows, 16] FP32) with raw contents.
fn mlp_request(rows: usize) -> Vec<u8> {
    let raw: Vec<u8> = (0..rows * 16)
        .flat_map(|i| ((i % 7) as f32 * 0.25).to_le_bytes())
        .collect();
    raw_request(
        "mlp",
        "x",
        "FP32",
        vec![i64::try_from(rows).expect("rows"), 16],
        raw,
    )
    .encode_to_vec()
}

/// A `ModelInfer` of `model` with its one input `input` (`datatype`, `shape`) in raw contents.
fn raw_request(
    model: &str,
    input: &str,
    datatype: &str,
    shape: Vec<i64>,
    raw: Vec<u8>,
) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: input.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// The value of the first `/metrics` sample whose line starts with `name` and holds every
/// one of `labels`.
fn sample(port: u16, name: &str, labels: &[&str]) -> Option<f64> {
    let (_, text) = http(port, "GET", "/metrics", "")?;
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `kiln-server` serving mlp with the model settings `settings` (YAML), gRPC on its own
/// port: the server (killed when dropped), its REST port and its gRPC port. The root goes
/// with the server's lifetime.
fn serve_mlp(settings: &str) -> (tempfile::TempDir, Server, u16) {
    serve_mlp_with(settings, &[])
}

/// [`serve_mlp`] with the extra flags `args`.
fn serve_mlp_with(settings: &str, args: &[&str]) -> (tempfile::TempDir, Server, u16) {
    serve_models(&[("mlp", "mlp.onnx")], settings, args)
}

/// [`serve_mlp_with`] serving `models` (name, test data file) instead of mlp alone.
fn serve_models(
    models: &[(&str, &str)],
    settings: &str,
    args: &[&str],
) -> (tempfile::TempDir, Server, u16) {
    let root = tempfile::tempdir().expect("root");
    for (name, file) in models {
        publish(root.path(), name, "1", file);
    }
    let path = root.path().join("settings.yaml");
    std::fs::write(&path, settings).expect("settings");
    let path = path.to_string_lossy().into_owned();
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let mut all = vec!["--grpc-listen", &grpc_listen, "--config", &path];
    all.extend_from_slice(args);
    let child = start_ready(root.path(), port, &all);
    (root, Server { child, port }, grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_deadline_is_answered_by_the_server_and_every_call_is_counted() {
    // A lone request waits the whole queue delay for company: 3 s.
    let (_root, server, grpc) =
        serve_mlp("models:\n  mlp: {max_batch_size: 8, max_queue_delay_us: 3000000}\n");
    let port = server.port;

    // The client allows 300 ms and waits for the server to say so.
    let started = Instant::now();
    let answer = call(grpc, INFER, &mlp_request(1), Some("300m")).await;
    let took = started.elapsed();
    assert_eq!(
        answer.grpc_status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED, not {:?}: {}",
        answer.grpc_status,
        answer.grpc_message
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(2500),
        "answered at the deadline, not after the queue delay: {took:?}"
    );

    // Without a deadline the same request is served (after the delay), and answered.
    let answer = call(grpc, INFER, &mlp_request(1), None).await;
    assert_eq!(
        answer.grpc_status.as_deref(),
        Some("0"),
        "{}",
        answer.grpc_message
    );
    let response = pb::ModelInferResponse::decode(answer.message).expect("response message");
    assert_eq!(response.raw_output_contents.len(), response.outputs.len());

    // A method nobody serves, twice, under two names.
    for m in ["/inference.GRPCInferenceService/Nope", "/x.Y/Z"] {
        let answer = call(grpc, m, &[], None).await;
        assert_eq!(answer.grpc_status.as_deref(), Some("12"), "UNIMPLEMENTED");
    }
    // A malformed timeout: refused before the model is asked.
    let answer = call(grpc, INFER, &mlp_request(1), Some("soon")).await;
    assert_eq!(answer.grpc_status.as_deref(), Some("3"), "INVALID_ARGUMENT");
    // A call the client cancels while it waits in the queue: counted, `Cancelled` (a unary
    // call dropped before its answer was not counted at all).
    let waiting = tokio::spawn(async move { call(grpc, INFER, &mlp_request(1), None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    waiting.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An invented path refused before any service sees it (an empty message flagged gzip,
    // not gzip): one `unknown` series, not one labelled with the path.
    let answer = call_framed(
        grpc,
        "/evil.Path/Invented",
        &[],
        true,
        &[("grpc-encoding", "gzip")],
    )
    .await;
    assert_eq!(
        answer.grpc_status.as_deref(),
        Some("3"),
        "{}",
        answer.grpc_message
    );

    let infer = [
        "service=\"inference.GRPCInferenceService\"",
        "method=\"ModelInfer\"",
    ];
    let count = |code: &str| {
        let code = format!("code=\"{code}\"");
        let labels = [infer[0], infer[1], code.as_str()];
        sample(port, "kiln_grpc_requests_total", &labels)
    };
    assert_eq!(count("DeadlineExceeded"), Some(1.0));
    assert_eq!(count("OK"), Some(1.0));
    assert_eq!(count("InvalidArgument"), Some(1.0));
    assert_eq!(count("Cancelled"), Some(1.0), "the cancelled call");
    assert_eq!(
        sample(
            port,
            "kiln_grpc_requests_total",
            &["method=\"unknown\"", "code=\"Unimplemented\""]
        ),
        Some(2.0),
        "one series for every unknown method"
    );
    let (_, text) = http(port, "GET", "/metrics", "").expect("metrics");
    assert!(
        !text.contains("Nope") && !text.contains("x.Y") && !text.contains("evil"),
        "no series per invented method"
    );
    assert_eq!(
        sample(port, "kiln_grpc_request_duration_seconds_count", &infer),
        Some(4.0)
    );
    // Every request metric README names for the server is exported under that name.
    let (_, text) = http(port, "GET", "/metrics", "").expect("metrics");
    let names = common::documented_metrics("`/metrics`: runtime");
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        assert!(
            text.lines().any(|l| l.starts_with(&name)),
            "README names {name}, /metrics has none"
        );
    }
}

/// The server's default `--max-body-mib`, in bytes: its gRPC message limit too.
const MAX_MESSAGE: usize = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_maximal_messages_at_once_stay_within_the_decode_budget() {
    // Just under the limit: rows of 16 FP32 values, 64 bytes each.
    let rows = (MAX_MESSAGE - 4096) / 64;
    // Each message is one request of half a million rows, run whole and alone: a batch
    // never holds two. Two stacked hold their stacked copy and the model's working memory
    // for twice the rows as well, until both are answered (two calls alone: +275 MiB
    // stacked, +132 MiB one by one): memory the model's `max_batch_size` sets, not the
    // decode budget this test is about. CI's machine once stacked them in pairs.
    let (_root, server, grpc) = serve_mlp(&format!(
        "models:\n  mlp: {{max_batch_size: {rows}, instances: 1}}\n"
    ));
    let pid = server.child.id();
    let message = Bytes::from(mlp_request(rows));
    assert!(message.len() < MAX_MESSAGE);
    let before = proc_status_mib(pid, "VmRSS:");
    const CONCURRENT: usize = 16;
    for answer in infer_at_once(grpc, &message, CONCURRENT).await {
        assert_eq!(
            answer.grpc_status.as_deref(),
            Some("0"),
            "{}",
            answer.grpc_message
        );
    }
    let peak = proc_status_mib(pid, "VmHWM:");
    let grown = peak - before;
    // The budget is two maximal messages (64 MiB); a message held is its bytes, its tensor
    // and the batch stacked from it (three times the budget), with the allocator's slack and
    // a flow-control window per waiting call: four times the budget. Without the budget the
    // sixteen grow it by some 600 MiB.
    let budget_mib = 2.0 * MAX_MESSAGE as f64 / f64::from(1 << 20);
    let limit = 4.0 * budget_mib;
    let sent = CONCURRENT as f64 * message.len() as f64 / f64::from(1 << 20);
    eprintln!("grpc memory: {CONCURRENT} calls of {sent:.0} MiB in all: RSS {before:.0} MiB, peak {peak:.0} MiB (+{grown:.0}, limit +{limit:.0})");
    assert!(grown < limit, "peak grew {grown:.0} MiB (limit {limit:.0})");
}

/// Big messages multiplexed on one connection, as one gRPC channel sends them, are all
/// answered. Each waits for its decode-budget share before it is read, and the bytes of the
/// ones waiting sat in the connection's flow-control window (1 MiB, hyper's default, as large
/// as one stream's): a client that shares the connection's window among its streams (nghttp2
/// here) filled it with the waiting calls' bytes, the calls holding the shares could not receive the rest of their messages, and
/// nothing on the connection moved again: 32 calls of 8 MiB, 16 at a time on one connection
/// (`h2load`, Debian's nghttp2-client), none answered in a minute.
#[test]
fn big_messages_multiplexed_on_one_connection_are_all_answered() {
    let rows = 131_072; // 8 MiB of input a call: 16 at once are twice the decode budget
    let (root, server, grpc) = serve_mlp(&format!(
        "models:\n  mlp: {{max_batch_size: {rows}, instances: 1}}\n"
    ));
    let message = root.path().join("message.bin");
    std::fs::write(&message, framed(&mlp_request(rows))).expect("message");
    let started = Instant::now();
    let out = std::process::Command::new("timeout")
        .args(["60", "h2load", "-n", "32", "-c", "1", "-m", "16", "-t", "1"])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
        ])
        .arg(&message)
        .arg(format!("http://127.0.0.1:{grpc}{INFER}"))
        .output()
        .expect("h2load (nghttp2-client; `make tools` installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "32 calls of 8 MiB, 16 at a time on one connection: {:.1} s\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        text.contains("status codes: 32 2xx"),
        "not every call answered (exit {:?}):\n{text}",
        out.status.code()
    );
    assert!(text.contains("32 succeeded"), "{text}");
    // HTTP 200 is not gRPC's OK: every call was inferred.
    let stats = mlp_stats(server.port);
    assert_eq!(stats["inference_stats"]["success"]["count"], 32, "{stats}");
}

/// A `ModelInfer` of mlp's input `x` with typed `contents`.
fn typed_request(datatype: &str, shape: Vec<i64>, contents: pb::InferTensorContents) -> Bytes {
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            contents: Some(contents),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maximal_typed_contents_decode_off_the_workers_and_within_their_shapes() {
    let (_root, server, grpc) = serve_mlp("models:\n  mlp: {max_batch_size: 64}\n");
    let pid = server.child.id();
    let before = proc_status_mib(pid, "VmHWM:");
    // More values than the shape holds: INT64 zeros, a byte each on the wire and eight in
    // a vector (decoded by prost on a tokio worker, they held 8x the message each).
    let zeros = MAX_MESSAGE - 4096;
    let overfull = typed_request(
        "INT64",
        vec![1, 16],
        pb::InferTensorContents {
            int64_contents: vec![0; zeros],
            ..Default::default()
        },
    );
    // Just the shape's values: decoded whole, then refused by the batcher (max_batch_size).
    let rows = (MAX_MESSAGE - 4096) / 64;
    let matching = typed_request(
        "FP32",
        vec![i64::try_from(rows).expect("rows"), 16],
        pb::InferTensorContents {
            fp32_contents: vec![0.5; rows * 16],
            ..Default::default()
        },
    );
    // Millions of empty strings, two bytes each on the wire and a `Vec` each from prost:
    // over the request's limit on strings (default 1 Mi), refused before prost sees them.
    let n = (MAX_MESSAGE - 4096) / 2;
    let strings = typed_request(
        "BYTES",
        vec![i64::try_from(n).expect("n")],
        pb::InferTensorContents {
            bytes_contents: vec![Vec::new(); n],
            ..Default::default()
        },
    );
    const CONCURRENT: usize = 4;
    let mut sent = 0.0f64;
    for (message, status, expect) in [
        (
            overfull,
            "3", // INVALID_ARGUMENT
            format!("has {zeros} values but shape [1, 16] needs 16"),
        ),
        (
            matching,
            "3",
            format!("request has {rows} rows, over max_batch_size 64"),
        ),
        (
            strings,
            "8", // RESOURCE_EXHAUSTED
            "(max_string_elements): 1048576 left".to_owned(),
        ),
    ] {
        assert!(message.len() < MAX_MESSAGE);
        sent = sent.max(CONCURRENT as f64 * message.len() as f64 / f64::from(1 << 20));
        let liveness = Liveness::watch(server.port);
        for answer in infer_at_once(grpc, &message, CONCURRENT).await {
            let said = answer.grpc_message.replace("%20", " ");
            assert_eq!(answer.grpc_status.as_deref(), Some(status), "{said}");
            assert!(said.contains(&expect), "{said}");
        }
        let (probes, stall) = liveness.stop();
        let worst = probes.last().copied().unwrap_or_default();
        eprintln!(
            "grpc typed: {CONCURRENT} calls of {:.0} MiB: {} liveness probes, max {:.1} ms (this machine's own worst stall meanwhile {:.1} ms)",
            message.len() as f64 / f64::from(1 << 20),
            probes.len(),
            worst.as_secs_f64() * 1e3,
            stall.as_secs_f64() * 1e3
        );
        assert!(
            worst <= PROBE_LIMIT + stall,
            "a liveness probe took {worst:?} while the messages were decoded"
        );
    }
    // Held at most as a JSON body is: three times what was sent at once.
    let grown = proc_status_mib(pid, "VmHWM:") - before;
    eprintln!(
        "grpc typed: peak grew {grown:.0} MiB (limit {:.0})",
        3.0 * sent
    );
    assert!(grown < 3.0 * sent, "peak grew {grown:.0} MiB");
}

/// `data` in `coding` ("gzip" or "deflate", the zlib format), as gRPC compresses a message.
fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let level = flate2::Compression::default();
    if coding == "gzip" {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), level);
        w.write_all(data).expect("gzip");
        w.finish().expect("gzip")
    } else {
        let mut w = flate2::write::ZlibEncoder::new(Vec::new(), level);
        w.write_all(data).expect("zlib");
        w.finish().expect("zlib")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_messages_are_inflated_within_the_message_limit() {
    let (_root, server, grpc) = serve_mlp("models:\n  mlp: {max_batch_size: 65536}\n");
    let pid = server.child.id();
    let ok = |a: &Answer| {
        assert_eq!(a.grpc_status.as_deref(), Some("0"), "{}", a.grpc_message);
    };
    // Small, inflating past the inline size (off the workers), and big compressed (within
    // the budget): each answered as the same message sent plain.
    for rows in [2, 4_000, 60_000] {
        let mut plain = mlp_request(rows);
        if rows > 10_000 {
            // Noise in the low bits, so that it stays over 64 KiB compressed.
            plain = noisy_mlp_request(rows);
            assert!(compress("gzip", &plain).len() > 64 << 10);
        }
        let want = call(grpc, INFER, &plain, None).await;
        ok(&want);
        for coding in ["gzip", "deflate"] {
            let packed = compress(coding, &plain);
            let got = call_framed(grpc, INFER, &packed, true, &[("grpc-encoding", coding)]).await;
            ok(&got);
            assert_eq!(got.message, want.message, "{rows} rows in {coding}");
        }
    }
    let before = proc_status_mib(pid, "VmRSS:");
    // A bomb: 256 MiB of zeros in about 256 KiB of gzip, eight at once.
    let bomb = Bytes::from(compress("gzip", &vec![0u8; 256 << 20]));
    for a in gzip_at_once(grpc, &bomb, 8).await {
        assert_eq!(a.grpc_status.as_deref(), Some("8"), "{}", a.grpc_message);
        assert!(a.grpc_message.contains("inflates"), "{}", a.grpc_message);
    }
    let grown = proc_status_mib(pid, "VmHWM:") - before;
    // Each inflates to the 32 MiB limit and stops; the budget lets two at a time.
    assert!(grown < 256.0, "eight bombs grew the peak by {grown:.0} MiB");
    eprintln!("grpc bombs: eight 256 MiB gzip messages, peak +{grown:.0} MiB");
    // Left uncompressed under the call's coding, as gRPC's implementations send a message
    // compressing would not shrink.
    let a = call_framed(
        grpc,
        INFER,
        &mlp_request(1),
        false,
        &[("grpc-encoding", "gzip")],
    )
    .await;
    ok(&a);
    // Not what its coding says.
    let a = call_framed(
        grpc,
        INFER,
        b"not gzip at all",
        true,
        &[("grpc-encoding", "gzip")],
    )
    .await;
    assert_eq!(a.grpc_status.as_deref(), Some("3"), "{}", a.grpc_message);
    // A coding kiln does not inflate: tonic's UNIMPLEMENTED.
    let a = call_framed(grpc, INFER, b"x", true, &[("grpc-encoding", "snappy")]).await;
    assert_eq!(a.grpc_status.as_deref(), Some("12"), "{}", a.grpc_message);
    // Served on.
    ok(&call(grpc, INFER, &mlp_request(1), None).await);
}

/// A compressed message holds, until its call is answered, the share of the decode budget
/// its inflated size takes, as the same message sent plain does: not the whole message
/// limit's it takes while inflating (its inflated size is unknown until then), which let only
/// two compressed calls be in the server at a time, so they could never batch with more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_calls_batch_together_as_plain_ones_do() {
    // Every call waits up to 1 s for company: calls in the server together share a batch.
    let (_root, server, grpc) =
        serve_mlp("models:\n  mlp: {max_batch_size: 65536, max_queue_delay_us: 1000000}\n");
    // 4,000 rows: 256 KB inflated (over the inline size), a few KB of gzip.
    let packed = Bytes::from(compress("gzip", &mlp_request(4_000)));
    assert!(packed.len() < 64 << 10);
    for a in gzip_at_once(grpc, &packed, 8).await {
        assert_eq!(a.grpc_status.as_deref(), Some("0"), "{}", a.grpc_message);
    }
    let m = &mlp_stats(server.port);
    assert_eq!(m["inference_count"], 32_000, "{m}");
    let executions = m["execution_count"].as_u64().expect("execution_count");
    assert!(
        executions <= 2,
        "eight compressed calls sent at once ran in {executions} batches: they were not in \
         the server together"
    );
}

/// A `ModelStreamInfer` call opened on its own connection: where to send framed messages, and
/// the response (its headers arrived).
async fn open_stream(
    port: u16,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::Response<hyper::body::Incoming>,
) {
    open_stream_with(port, &[]).await
}

/// [`open_stream`] with the extra request `headers`.
async fn open_stream_with(
    port: u16,
    headers: &[(&str, &str)],
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::Response<hyper::body::Incoming>,
) {
    open_stream_windowed(port, headers, None).await
}

/// [`open_stream_with`], the client's receive window for the stream's answers `window`
/// bytes if given (opened again only as the answers are read), hyper's default if not.
async fn open_stream_windowed(
    port: u16,
    headers: &[(&str, &str)],
    window: Option<u32>,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::Response<hyper::body::Incoming>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let path = "/inference.GRPCInferenceService/ModelStreamInfer";
    (tx, open_call(port, path, headers, window, rx).await)
}

/// A call of `path` (`/service/method`) opened on its own connection, its request the
/// framed messages `rx` yields until it closes; the answer (its headers arrived).
async fn open_call(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    window: Option<u32>,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> hyper::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Some(window) = window {
        builder.initial_stream_window_size(window);
    }
    let (mut sender, conn) = builder
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut request = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Frames(rx)).expect("request");
    sender.send_request(request).await.expect("response")
}

/// mlp's one-row request with `id`.
fn mlp_with_id(id: &str) -> Vec<u8> {
    with_id(&mlp_request(1), id)
}

/// The `ModelInfer` request `message` with `id`.
fn with_id(message: &[u8], id: &str) -> Vec<u8> {
    let mut request = pb::ModelInferRequest::decode(message).expect("request");
    request.id = id.into();
    request.encode_to_vec()
}

/// mlp's request of `rows` rows of noise (low bits too), so that it stays big compressed.
fn noisy_mlp_request(rows: usize) -> Vec<u8> {
    let mut request = pb::ModelInferRequest::decode(&mlp_request(rows)[..]).expect("request");
    let mut state = 0x2545_f491_u32;
    let raw: Vec<u8> = (0..rows * 16)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (f32::from(state as u16) / 65536.0).to_le_bytes()
        })
        .collect();
    request.raw_input_contents = vec![raw.into()];
    request.encode_to_vec()
}

/// Every answer of a stream until it ends, and its final `grpc-status`.
async fn read_stream(
    response: hyper::Response<hyper::body::Incoming>,
) -> (Vec<pb::ModelStreamInferResponse>, Option<String>) {
    let mut reader = StreamReader::new(response);
    let mut answers = Vec::new();
    loop {
        match reader.message().await {
            Ok(message) => answers
                .push(pb::ModelStreamInferResponse::decode(&message[..]).expect("stream answer")),
            Err(status) => return (answers, status),
        }
    }
}

/// The request ids a stream's answers carry, in order.
fn answered_ids(answers: &[pb::ModelStreamInferResponse]) -> Vec<&str> {
    answers
        .iter()
        .map(|a| a.infer_response.as_ref().map_or("", |r| r.id.as_str()))
        .collect()
}

/// mlp's successful inferences so far (`/v2/models/mlp/stats`).
fn successes(port: u16) -> u64 {
    mlp_stats(port)["inference_stats"]["success"]["count"]
        .as_u64()
        .expect("success count")
}

/// A stream's requests are answered in the order they came, each marked final; a message the
/// stream cannot read ends it with its status only after the requests before it are
/// answered; and a client that goes away takes its requests with it, as a dropped unary call
/// does, instead of leaving them to run (and fill the model's queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_in_order_ends_after_its_answers_and_goes_with_its_client() {
    // Every request waits up to 1.5 s for company: requests sent together are in flight
    // together.
    let (_root, server, grpc) =
        serve_mlp("models:\n  mlp: {max_batch_size: 64, max_queue_delay_us: 1500000}\n");
    let (tx, response) = open_stream(grpc).await;
    for k in 0..3 {
        tx.send(framed(&mlp_with_id(&k.to_string())))
            .await
            .expect("send");
    }
    // A frame declaring more than the message limit.
    tx.send(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]))
        .await
        .expect("send");
    let (answers, status) = tokio::time::timeout(Duration::from_secs(60), read_stream(response))
        .await
        .expect("the stream ends");
    let ids = answered_ids(&answers);
    assert_eq!(ids, ["0", "1", "2"], "{answers:?}");
    for a in &answers {
        assert!(a.error_message.is_empty(), "{}", a.error_message);
        let final_flag =
            &a.infer_response.as_ref().expect("response").parameters["triton_final_response"];
        assert_eq!(
            final_flag.parameter_choice,
            Some(pb::infer_parameter::ParameterChoice::BoolParam(true))
        );
    }
    assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    drop(tx);

    // Eight requests, then the client goes away while they wait for company.
    let before = successes(server.port);
    let (tx, response) = open_stream(grpc).await;
    for k in 0..8 {
        tx.send(framed(&mlp_with_id(&format!("gone-{k}"))))
            .await
            .expect("send");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((tx, response));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        successes(server.port),
        before,
        "the requests of a stream whose client went away ran"
    );

    // The server drains (SIGTERM): the request in flight is answered, then the stream ends
    // UNAVAILABLE, so the client opens a new one elsewhere instead of holding the pod.
    let (tx, response) = open_stream(grpc).await;
    tx.send(framed(&mlp_with_id("last"))).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&server.child);
    let (answers, status) = tokio::time::timeout(Duration::from_secs(20), read_stream(response))
        .await
        .expect("the stream ends while the server drains");
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        answers[0].infer_response.as_ref().map(|r| r.id.as_str()),
        Some("last")
    );
    assert_eq!(status.as_deref(), Some("14"), "UNAVAILABLE");
    drop(tx);
}

/// A unary message whose header alone declares more than the limit is refused at once,
/// RESOURCE_EXHAUSTED: it used to wait first for a decode-budget share (the whole budget,
/// clamped), behind every share held, here a 20 MiB message arriving slowly, and to hold
/// every big call after it meanwhile, for a message never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_declared_over_the_limit_is_refused_at_once() {
    let (_root, _server, grpc) = serve_mlp("models:\n  mlp: {max_batch_size: 8}\n");
    // A 20 MiB message, its first megabyte sent: it holds its share until its body times out.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut head = vec![0u8];
    head.extend_from_slice(&(20u32 << 20).to_be_bytes());
    head.extend(std::iter::repeat_n(0u8, 1 << 20));
    tx.send(Bytes::from(head)).await.expect("queue");
    let slow = tokio::spawn(async move { open_call(grpc, INFER, &[], None, rx).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    // Only the header, declaring 4 GiB, then the request's end.
    let (over_tx, over_rx) = tokio::sync::mpsc::channel(1);
    over_tx
        .send(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]))
        .await
        .expect("queue");
    drop(over_tx);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = open_call(grpc, INFER, &[], None, over_rx).await;
        StreamReader::new(response).next_id().await.err().flatten()
    })
    .await
    .expect("answered within 10 s, not after the slow message's body timeout");
    assert_eq!(answer.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    slow.abort();
    drop(tx);
}

/// SIGTERM with a drain delay: a stream open then goes on being served through the delay, as
/// unary calls are (the pod is still in its endpoints, and a gRPC client's connection stays
/// on it: a stream ended at the signal is reopened on the same connection, to the same pod,
/// and failed again), and so is a stream opened during the delay; when the listeners close,
/// each ends UNAVAILABLE. (Streams were ended at the signal.) A health `Watch` sees
/// NOT_SERVING at the signal and ends UNAVAILABLE with them (it went on for as long as the
/// connection's grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_served_through_the_drain_delay_then_end_unavailable() {
    let (_root, server, grpc) = serve_mlp_with(
        "models:\n  mlp: {max_batch_size: 8}\n",
        &["--drain-delay-s", "4"],
    );
    let (tx, response) = open_stream(grpc).await;
    let mut old = StreamReader::new(response);
    tx.send(framed(&mlp_with_id("before"))).await.expect("send");
    assert_eq!(old.next_id().await, Ok("before".to_owned()));
    // A health Watch of the server (grpc-go's client-side health checking): SERVING.
    let (watch_tx, rx) = tokio::sync::mpsc::channel(1);
    watch_tx.send(framed(&[])).await.expect("queue");
    drop(watch_tx);
    let response = open_call(grpc, "/grpc.health.v1.Health/Watch", &[], None, rx).await;
    let mut watch = StreamReader::new(response);
    // HealthCheckResponse { status: SERVING (1) }, then NOT_SERVING (2).
    assert_eq!(watch.next_message().await, Ok(Bytes::from_static(&[8, 1])));
    sigterm(&server.child);
    let signalled = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 0..3 {
        let id = format!("during-{k}");
        tx.send(framed(&mlp_with_id(&id)))
            .await
            .expect("a stream open at SIGTERM takes requests during the delay");
        assert_eq!(
            old.next_id().await,
            Ok(id),
            "a stream open at SIGTERM, during the delay"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (tx2, response) = open_stream(grpc).await;
    let mut new = StreamReader::new(response);
    tx2.send(framed(&mlp_with_id("new"))).await.expect("send");
    assert_eq!(
        watch.next_message().await,
        Ok(Bytes::from_static(&[8, 2])),
        "the Watch sees NOT_SERVING during the delay"
    );
    assert_eq!(
        new.next_id().await,
        Ok("new".to_owned()),
        "a stream opened during the delay"
    );
    // The listeners close at the delay's end: the streams and the Watch end, UNAVAILABLE.
    for reader in [&mut old, &mut new, &mut watch] {
        assert_eq!(
            reader.next_id().await,
            Err(Some("14".to_owned())),
            "UNAVAILABLE"
        );
    }
    assert!(
        signalled.elapsed() > Duration::from_millis(3800),
        "the streams ended {:?} after SIGTERM, inside the drain delay of 4 s",
        signalled.elapsed()
    );
    drop((tx, tx2));
}

/// A stream's answers read one at a time.
struct StreamReader {
    body: hyper::body::Incoming,
    buf: BytesMut,
    /// The answer headers' `grpc-status`: a trailers-only answer's.
    status: Option<String>,
}

impl StreamReader {
    fn new(response: hyper::Response<hyper::body::Incoming>) -> Self {
        let status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            body: response.into_body(),
            buf: BytesMut::new(),
            status,
        }
    }

    /// The next answer's request id (its error message if it is an error), or the stream's
    /// `grpc-status` once it ended; within 10 s.
    async fn next_id(&mut self) -> Result<String, Option<String>> {
        self.next_message().await.map(|message| {
            let answer = pb::ModelStreamInferResponse::decode(&message[..]).expect("stream answer");
            match answer.infer_response {
                Some(r) => r.id,
                None => answer.error_message,
            }
        })
    }

    /// The next message (unframed), or the stream's `grpc-status` once it ended; within 10 s.
    async fn next_message(&mut self) -> Result<Bytes, Option<String>> {
        tokio::time::timeout(Duration::from_secs(10), self.message())
            .await
            .expect("a message or the stream's end within 10 s")
    }

    /// [`StreamReader::next_message`], however long it takes.
    async fn message(&mut self) -> Result<Bytes, Option<String>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let mut message = self.buf.split_to(5 + len);
                    return Ok(message.split_off(5).freeze());
                }
            }
            let Some(frame) = self.body.frame().await else {
                return Err(self.status.clone());
            };
            let frame = frame.expect("frame");
            if let Some(trailers) = frame.trailers_ref() {
                return Err(trailers
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned));
            }
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// Maximal messages sent on many streams at once stay within the decode budget too: a stream's
/// message takes its share before any of it is read, as a unary call's does (it was read whole
/// first, each open stream holding one beyond the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_messages_on_many_streams_stay_within_the_decode_budget() {
    let rows = (MAX_MESSAGE - 4096) / 64;
    let (_root, server, grpc) = serve_mlp(&format!(
        "models:\n  mlp: {{max_batch_size: {rows}, instances: 1}}\n"
    ));
    let pid = server.child.id();
    let message = framed(&mlp_request(rows));
    let before = proc_status_mib(pid, "VmRSS:");
    const STREAMS: usize = 16;
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| {
            let message = message.clone();
            tokio::spawn(async move {
                let (tx, response) = open_stream(grpc).await;
                // The message, then the end of the stream's requests.
                let send = tokio::spawn(async move {
                    for chunk in message.chunks(1 << 20) {
                        if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                            break;
                        }
                    }
                });
                let read = read_stream(response).await;
                send.await.expect("sender");
                read
            })
        })
        .collect();
    for s in streams {
        let (answers, status) = tokio::time::timeout(Duration::from_secs(240), s)
            .await
            .expect("each stream ends")
            .expect("stream task");
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(answers.len(), 1);
        assert!(
            answers[0].error_message.is_empty(),
            "{}",
            answers[0].error_message
        );
    }
    let peak = proc_status_mib(pid, "VmHWM:");
    let grown = peak - before;
    // As for unary calls: four times the budget of two maximal messages.
    let limit = 4.0 * 2.0 * MAX_MESSAGE as f64 / f64::from(1 << 20);
    eprintln!("grpc streams memory: {STREAMS} streams of one maximal message: RSS {before:.0} MiB, peak {peak:.0} MiB (+{grown:.0}, limit +{limit:.0})");
    assert!(grown < limit, "peak grew {grown:.0} MiB (limit {limit:.0})");
}

/// A unary message is timed from its share of the decode budget, not from its headers: one
/// that waited three seconds behind four stalled maximal messages (two at a time in the
/// budget, each cut at the 2 s body timeout) still arrives and is answered (it was failed at
/// once). One that stops arriving is DEADLINE_EXCEEDED, as REST's is 408 (it was UNKNOWN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_messages_are_timed_from_their_share_and_a_late_one_is_deadline_exceeded() {
    let (_root, _server, grpc) = serve_mlp_with(
        "models:\n  mlp: {max_batch_size: 32768}\n",
        &["--body-timeout-s", "2"],
    );
    // Four maximal messages, each its header and 64 KiB, then nothing: they take the budget
    // two at a time, each until its body times out.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut head = vec![0u8];
        head.extend_from_slice(&u32::try_from(MAX_MESSAGE - 16).expect("len").to_be_bytes());
        head.extend(std::iter::repeat_n(0u8, 64 << 10));
        tx.send(Bytes::from(head)).await.expect("queue");
        let call = tokio::spawn(async move { open_call(grpc, INFER, &[], None, rx).await });
        stalled.push((tx, call));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A real 2 MiB request behind them: it waits about 4 s for its share, then arrives.
    let started = std::time::Instant::now();
    let answer = call(grpc, INFER, &mlp_request(32 << 10), None).await;
    let waited = started.elapsed();
    assert_eq!(
        answer.grpc_status.as_deref(),
        Some("0"),
        "{} after {waited:?}",
        answer.grpc_message
    );
    // (Timed from their headers, the two stalled messages queued behind the first two were
    // cut the moment they got their share, so this one ran after under 2 s.)
    assert!(
        waited > Duration::from_secs(3),
        "answered after {waited:?}: the stalled messages were not each given 2 s from their share"
    );
    // The stalled ones ended DEADLINE_EXCEEDED.
    for (tx, call) in stalled {
        let mut reader = StreamReader::new(call.await.expect("call"));
        assert_eq!(
            reader.next_id().await,
            Err(Some("4".to_owned())),
            "DEADLINE_EXCEEDED"
        );
        drop(tx);
    }
    // A small message that stops arriving: DEADLINE_EXCEEDED too.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(framed(&mlp_request(1)).slice(..20))
        .await
        .expect("queue");
    let mut reader = StreamReader::new(open_call(grpc, INFER, &[], None, rx).await);
    assert_eq!(
        reader.next_id().await,
        Err(Some("4".to_owned())),
        "DEADLINE_EXCEEDED"
    );
    drop(tx);
}

/// A stream message that stops arriving partway is cut at `--body-timeout-s`, as a unary
/// call's: DEADLINE_EXCEEDED, after the answers already due. A stream idle between messages
/// is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_stops_arriving_is_cut_at_the_body_timeout() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let _server = Server {
        child: start_ready(
            root.path(),
            port,
            &["--grpc-listen", &grpc_listen, "--body-timeout-s", "1"],
        ),
        port,
    };
    let (tx, response) = open_stream(grpc).await;
    tx.send(framed(&mlp_with_id("first"))).await.expect("send");
    // Idle between messages for longer than the body timeout: nothing happens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(framed(&mlp_with_id("second"))).await.expect("send");
    // Then a big message's header and a little of it, and nothing more.
    let big = framed(&mlp_request(2_000));
    tx.send(big.slice(..4096)).await.expect("send");
    let started = std::time::Instant::now();
    let (answers, status) = tokio::time::timeout(Duration::from_secs(20), read_stream(response))
        .await
        .expect("the stream ends");
    let ids = answered_ids(&answers);
    assert_eq!(ids, ["first", "second"]);
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(tx);
}

/// A stream whose client stops reading its answers holds no share of the decode budget past
/// `--body-timeout-s`: the message it left half sent is cut at that timeout while its answers
/// wait, and other clients' big calls go on being served. (The stream stopped reading its
/// messages while an answer waited for the client, and the half-sent message's share was
/// held for as long as the client kept the connection: two such streams starved every big
/// call of the server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_holds_no_share_past_the_body_timeout() {
    // A 2 MiB decode budget (twice --max-body-mib); requests wait 300 ms for company, so that
    // each stream reads its big message's header (and takes its share) before its answers
    // are due.
    let (_root, server, grpc) = serve_mlp_with(
        "models:\n  mlp: {max_batch_size: 65536, max_queue_delay_us: 300000}\n",
        &["--max-body-mib", "1", "--body-timeout-s", "1"],
    );
    // Each: 30 small requests, then the first 4 KiB of a 940 KiB one, and nothing more.
    let hostile = starving_streams(grpc, |s| {
        (0..30)
            .flat_map(|k| framed(&mlp_with_id(&format!("{s}-{k}"))).to_vec())
            .collect()
    })
    .await;
    // Past the 300 ms wait: the answers are due and wait for the clients.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    a_big_call_is_answered(grpc).await;
    eprintln!("answered after {:?}", started.elapsed());
    assert!(
        successes(server.port) >= 61,
        "the streams' requests were served"
    );

    // A client that sends 200 requests and reads none of the answers has 64 of them served
    // (the stream's in-flight bound, answers waiting counted) beside those HTTP/2 took for its
    // window (a few; up to 18 seen on a loaded machine): the rest wait unread, not as answers
    // piling up in the server.
    let many: Vec<u8> = (0..200)
        .flat_map(|k| framed(&mlp_with_id(&format!("many-{k}"))).to_vec())
        .collect();
    let wait = Duration::from_millis(1500);
    let (served, unread) = served_unread(server.port, grpc, vec![many.into()], wait).await;
    eprintln!("{served} of 200 requests served");
    assert!(
        (64..=96).contains(&served),
        "{served} of 200 requests served for a client that reads no answer"
    );

    // Nor do its answers' bytes: at most --max-body-mib (1 MiB) of answers wait for a client
    // that reads none before the stream stops reading (beside those running then, the one
    // HTTP/2 is writing and the one handed over): 20 requests answered 234 KiB each would
    // hold 4.6 MiB. (Here 9 are served, the message being read when the bound is reached
    // read to its end; 18 were in the same 3 s without the bound.)
    let requests = vec![framed(&mlp_request(15_000)); 20];
    let wait = Duration::from_secs(3);
    let (served, unread2) = served_unread(server.port, grpc, requests, wait).await;
    eprintln!("{served} of 20 big-answer requests served");
    assert!(
        (3..=14).contains(&served),
        "{served} of 20 requests answered 234 KiB each served for a client that reads no answer"
    );
    drop((unread, unread2, hostile));
}

/// A stream open while held: where its messages go, and its response.
type OpenStream = (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::Response<hyper::body::Incoming>,
);

/// Sends `messages` on a stream whose client reads nothing (a 256-byte window for the
/// answers, never read), then waits `wait`: how many requests mlp's statistics count served
/// meanwhile, and the stream.
async fn served_unread(
    port: u16,
    grpc: u16,
    messages: Vec<Bytes>,
    wait: Duration,
) -> (u64, OpenStream) {
    let before = successes(port);
    let (tx, response) = open_stream_windowed(grpc, &[], Some(256)).await;
    for m in messages {
        tx.send(m).await.expect("send");
    }
    tokio::time::sleep(wait).await;
    (successes(port) - before, (tx, response))
}

/// int64's request (`ids`: [rows, 6] INT64, raw contents, ids below 100) with `id`.
fn int64_request(rows: usize, id: &str) -> Vec<u8> {
    let raw: Vec<u8> = (0..rows * 6)
        .flat_map(|i| ((i % 100) as i64).to_le_bytes())
        .collect();
    let shape = vec![i64::try_from(rows).expect("rows"), 6];
    pb::ModelInferRequest {
        id: id.into(),
        ..raw_request("int64", "ids", "INT64", shape, raw)
    }
    .encode_to_vec()
}

/// A message begun is read to its end, or cut at `--body-timeout-s`, whatever answers land
/// for a client that reads none meanwhile: the bound on answers waiting is looked at only
/// between messages. (It stopped the reading mid-message: the half-sent message's share was
/// held for as long as the client kept the connection, as before the stream read while
/// answers waited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_begun_is_read_to_its_end_whatever_answers_land_meanwhile() {
    let (_root, _server, grpc) = serve_models(
        &[("mlp", "mlp.onnx"), ("int64", "int64.onnx")],
        "models:\n  int64: {max_batch_size: 65536, max_queue_delay_us: 300000}\n  mlp: {max_batch_size: 65536}\n",
        &["--max-body-mib", "1", "--body-timeout-s", "1"],
    );
    // Each stream: ten int64 requests, answered 187 KB each once their 300 ms wait is over
    // (eight of them then wait for the client: 1.5 MB, past the 1 MiB bound), sent before the
    // first 4 KiB of a 940 KiB message (whose share is taken at once).
    let hostile = starving_streams(grpc, |s| {
        (0..10)
            .flat_map(|k| framed(&int64_request(1_300, &format!("{s}-{k}"))).to_vec())
            .collect()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    a_big_call_is_answered(grpc).await;
    drop(hostile);
}

/// Two streams whose clients read nothing (a 256-byte window for the answers, never read),
/// each sent `requests(s)` (s = 0, 1), then the first 4 KiB of a 940 KiB mlp request (its
/// share of the decode budget taken at once), and nothing more; kept open while held.
async fn starving_streams(grpc: u16, requests: impl Fn(usize) -> Vec<u8>) -> Vec<OpenStream> {
    let big = framed(&mlp_request(15_000));
    let mut streams = Vec::new();
    for s in 0..2 {
        let (tx, response) = open_stream_windowed(grpc, &[], Some(256)).await;
        tx.send(requests(s).into()).await.expect("send");
        tx.send(big.slice(..4096)).await.expect("send");
        streams.push((tx, response));
    }
    streams
}

/// A 320 KiB mlp call is answered within 15 s: with `--max-body-mib 1` it needs more than the
/// 2 MiB decode budget has left while [`starving_streams`]' two 940 KiB shares are held.
async fn a_big_call_is_answered(grpc: u16) {
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        call(grpc, INFER, &mlp_request(5_000), None),
    )
    .await
    .expect("a big call is answered while the streams' clients read nothing");
    assert_eq!(
        answer.grpc_status.as_deref(),
        Some("0"),
        "{}",
        answer.grpc_message
    );
}

/// A stream sent compressed (`grpc-encoding`, as `tritonclient.grpc`'s `start_stream` sends
/// with `compression_algorithm`) is served as the same stream sent plain: each message is
/// inflated within the budget and the message limit, whatever chunks its bytes come in; one
/// left uncompressed under the coding is read as it is; a bomb ends the stream
/// RESOURCE_EXHAUSTED after the answers due, without the memory it claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_streams_are_inflated_within_the_budget() {
    let (_root, server, grpc) = serve_mlp("models:\n  mlp: {max_batch_size: 65536}\n");
    let pid = server.child.id();
    // Small, inflating past the inline size (off the workers), big compressed (its share
    // taken before it is read), and plain under the coding; each also sent alone, unary and
    // plain, for the answer it must get.
    let plains = [
        with_id(&mlp_request(2), "small"),
        with_id(&mlp_request(4_000), "inflates"),
        with_id(&noisy_mlp_request(60_000), "big"),
        with_id(&mlp_request(3), "plain"),
    ];
    let mut wanted = Vec::new();
    for plain in &plains {
        let a = call(grpc, INFER, plain, None).await;
        assert_eq!(a.grpc_status.as_deref(), Some("0"), "{}", a.grpc_message);
        wanted.push(pb::ModelInferResponse::decode(a.message).expect("answer"));
    }
    for coding in ["gzip", "deflate"] {
        // Each frame whole, or its header cut after 3 bytes (the rest of it with its message).
        for split in [false, true] {
            let mut sent = Vec::new();
            for (k, plain) in plains.iter().enumerate() {
                let frame = if k == 3 {
                    framed(plain)
                } else {
                    framed_as(&compress(coding, plain), true)
                };
                if split {
                    sent.push(frame.slice(..3));
                    sent.push(frame.slice(3..));
                } else {
                    sent.push(frame);
                }
            }
            let (tx, response) = open_stream_with(grpc, &[("grpc-encoding", coding)]).await;
            let send = tokio::spawn(async move {
                // (A stream refused at once takes no more.)
                for chunk in sent {
                    if tx.send(chunk).await.is_err() {
                        return tx;
                    }
                }
                // Then one that is not what its coding says: the stream ends INVALID_ARGUMENT.
                let _ = tx.send(framed_as(b"not compressed at all", true)).await;
                tx
            });
            let (answers, status) =
                tokio::time::timeout(Duration::from_secs(120), read_stream(response))
                    .await
                    .expect("the stream ends");
            drop(send.await.expect("sender"));
            assert_eq!(status.as_deref(), Some("3"), "{coding}, split {split}");
            assert_eq!(
                answers.len(),
                plains.len(),
                "{coding}, split {split}: {answers:?}"
            );
            for (got, want) in answers.iter().zip(&wanted) {
                assert!(got.error_message.is_empty(), "{}", got.error_message);
                let got = got.infer_response.as_ref().expect("response");
                assert_eq!(got.id, want.id, "{coding}, split {split}");
                assert_eq!(
                    got.raw_output_contents, want.raw_output_contents,
                    "{coding}, split {split}: {}",
                    want.id
                );
            }
        }
    }
    // Cut inside a compressed message's frame header: INVALID_ARGUMENT after the answer due,
    // not a clean end (the header's first bytes are held, never passed to tonic).
    let (tx, response) = open_stream_with(grpc, &[("grpc-encoding", "gzip")]).await;
    tx.send(framed_as(&compress("gzip", &mlp_with_id("whole")), true))
        .await
        .expect("send");
    tx.send(Bytes::from_static(&[1, 0, 0])).await.expect("send");
    drop(tx);
    let (answers, status) = tokio::time::timeout(Duration::from_secs(60), read_stream(response))
        .await
        .expect("the stream ends");
    assert_eq!(answered_ids(&answers), ["whole"]);
    assert_eq!(status.as_deref(), Some("3"), "INVALID_ARGUMENT");
    // Bombs: 256 MiB of zeros in about 256 KiB of gzip, on eight streams at once, after a
    // request each.
    let before = proc_status_mib(pid, "VmRSS:");
    let bomb = framed_as(&compress("gzip", &vec![0u8; 256 << 20]), true);
    let first = framed_as(&compress("gzip", &mlp_with_id("before")), true);
    let streams: Vec<_> = (0..8)
        .map(|_| {
            let (bomb, first) = (bomb.clone(), first.clone());
            tokio::spawn(async move {
                let (tx, response) = open_stream_with(grpc, &[("grpc-encoding", "gzip")]).await;
                let _ = tx.send(first).await;
                let _ = tx.send(bomb).await;
                let ended = read_stream(response).await;
                drop(tx);
                ended
            })
        })
        .collect();
    for s in streams {
        let (answers, status) = tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("each stream ends")
            .expect("stream task");
        assert_eq!(answered_ids(&answers), ["before"]);
        assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    }
    let grown = proc_status_mib(pid, "VmHWM:") - before;
    eprintln!("grpc stream bombs: eight 256 MiB gzip messages, peak +{grown:.0} MiB");
    assert!(grown < 256.0, "eight bombs grew the peak by {grown:.0} MiB");
}
