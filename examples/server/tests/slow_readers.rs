//! Clients that stop taking their answers, against the real `kiln-server` binary: each loses
//! its connection once it has taken nothing for `--send-timeout-s`, and with it what the
//! server held for it (the answer, the connection's slot); before, the server waited for as
//! long as the client kept the connection open.
//!
//! Each test catches one way of not taking an answer, and each part of the watch alone:
//! - an HTTP/1.1 client that stops reading a 26 MB answer (the answer's bytes wait, and the
//!   socket is full);
//! - a gRPC client that stops reading its socket with 32 answers of 288 KB due: h2 takes
//!   each whole, so only the full socket shows;
//! - a gRPC client that reads its socket but opens no window for its answer: the socket
//!   never fills, so only the answer's bytes show.
//!
//! And what must not be cut: a client that reads a big answer slowly but steadily, an idle
//! keep-alive connection, an idle `ModelStreamInfer` stream.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{framed, free_ports, publish, start_ready, Frames, Server};
use http_body_util::{BodyExt as _, Full};
use kiln::http::grpc::pb;
use prost::Message as _;

/// `--send-timeout-s` in these tests.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `kiln-server` serving int64 (`ids` [rows, 6] INT64 in; `embedded` [rows, 6, 4] FP32 and
/// `doubled` [rows, 6] out: 20 times the request's bytes in JSON) with batches up to 200,000
/// rows, at most one connection at a time, with `args`; its gRPC port.
fn serve(args: &[&str]) -> (tempfile::TempDir, Server, u16) {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "int64", "1", "int64.onnx");
    let settings = root.path().join("settings.yaml");
    std::fs::write(&settings, "models:\n  int64: {max_batch_size: 200000}\n").expect("settings");
    let settings = settings.to_string_lossy().into_owned();
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let send_timeout = SEND_TIMEOUT.as_secs().to_string();
    let mut all = vec![
        "--drain-delay-s",
        "0",
        "--grpc-listen",
        &grpc_listen,
        "--config",
        &settings,
        "--send-timeout-s",
        &send_timeout,
    ];
    all.extend_from_slice(args);
    let child = start_ready(root.path(), port, &all);
    (root, Server { child, port }, grpc)
}

/// A v2 JSON inference request for int64 of `rows` rows, as raw HTTP/1.1.
fn int64_json(port: u16, rows: usize) -> Vec<u8> {
    let data = vec!["7"; rows * 6].join(",");
    let body = format!(
        r#"{{"inputs":[{{"name":"ids","shape":[{rows},6],"datatype":"INT64","data":[{data}]}}]}}"#
    );
    let mut request = format!(
        "POST /v2/models/int64/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// How long after it connected a second client's liveness probe was answered, with the
/// server taking one connection at a time and the first held by a client that reads nothing.
/// `None` if not within 15 s.
fn probe_answered_after(port: u16) -> Option<Duration> {
    let began = Instant::now();
    let mut probe = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    probe
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    probe
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("probe");
    let mut answer = Vec::new();
    let _ = probe.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .starts_with("HTTP/1.1 200")
        .then(|| began.elapsed())
}

/// A client that stops reading a big answer holds the connection's slot only until the send
/// timeout: before, with `--max-connections 1`, no other client was served again.
#[test]
fn a_client_that_stops_reading_a_big_answer_loses_its_connection_at_the_send_timeout() {
    let (_root, server, _) = serve(&["--max-connections", "1"]);
    let mut stalled = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    // About 1.2 MB of JSON, answered with about 26 MB: far more than the sockets hold.
    stalled
        .write_all(&int64_json(server.port, 100_000))
        .expect("request");
    std::thread::sleep(Duration::from_millis(300));
    let answered = probe_answered_after(server.port);
    let answered = answered.unwrap_or_else(|| {
        panic!("the probe was not answered in 15 s: the stalled client kept the only slot")
    });
    assert!(answered >= SEND_TIMEOUT / 2, "{answered:?}");
    drop(stalled);
}

/// A gRPC client that opens wide windows and then stops reading its socket, with 32 calls
/// answered 288 KB each: hyper and h2 take every answer whole (each fits h2's send buffer),
/// so no answer waits, only the socket, full once the kernel holds its 3 MB or so. Before,
/// the connection and the 9 MB of answers waited for as long as the client liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_stops_reading_its_socket_loses_its_connection_at_the_send_timeout() {
    let (_root, _server, grpc) = serve(&[]);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .expect("connect");
    let reading = Reading::default();
    let io = Pausable {
        io: tcp,
        reading: reading.clone(),
    };
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(64 << 20)
            .initial_connection_window_size(1 << 30)
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    // One call answered first: the server's settings and window are read before the client
    // stops reading.
    let live = grpc_request(grpc, "ServerLive", &[]);
    let live = sender.clone().send_request(live).await.expect("ServerLive");
    live.into_body()
        .collect()
        .await
        .expect("ServerLive's answer");
    reading.set(false);
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut sender = sender.clone();
            let request = infer_request(grpc, 2_000);
            tokio::spawn(async move {
                let answer = sender.send_request(request).await?;
                answer
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
            })
        })
        .collect();
    // Time for the calls to run (a debug build's too), fill the socket and wait it out.
    tokio::time::sleep(SEND_TIMEOUT * 6).await;
    reading.set(true);
    let mut whole = 0;
    for call in calls {
        let read = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("each call ends within 10 s of reading again")
            .expect("task");
        whole += usize::from(read.is_ok());
    }
    assert!(
        whole < 32,
        "all 32 answers were kept for the client until it read again"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the connection was not closed");
}

/// Whether a [`Pausable`] connection reads: paused, and the waker of the read it holds.
#[derive(Clone, Default)]
struct Reading(std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl Reading {
    fn set(&self, on: bool) {
        let mut state = self.0.lock().expect("lock");
        state.0 = !on;
        if let Some(waker) = state.1.take() {
            waker.wake();
        }
    }
}

/// A client's socket that stops reading while told to (writes go on).
struct Pausable {
    io: tokio::net::TcpStream,
    reading: Reading,
}

impl tokio::io::AsyncRead for Pausable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        {
            let mut state = self.reading.0.lock().expect("lock");
            if state.0 {
                state.1 = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Pausable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A unary `ModelInfer` of int64 with `rows` rows in raw contents (answered with 144 bytes a
/// row), for the gRPC port `grpc`.
fn infer_request(grpc: u16, rows: usize) -> hyper::Request<Full<Bytes>> {
    let raw: Vec<u8> = (0..rows * 6)
        .flat_map(|i| ((i % 100) as i64).to_le_bytes())
        .collect();
    let message = pb::ModelInferRequest {
        model_name: "int64".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "ids".into(),
            datatype: "INT64".into(),
            shape: vec![i64::try_from(rows).expect("rows"), 6],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
    .encode_to_vec();
    grpc_request(grpc, "ModelInfer", &message)
}

/// A unary call of `GRPCInferenceService/{method}` with `message`, for the gRPC port `grpc`.
fn grpc_request(grpc: u16, method: &str, message: &[u8]) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!(
        "http://127.0.0.1:{grpc}/inference.GRPCInferenceService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(framed(message)))
    .expect("request")
}

/// A gRPC client that reads its socket but opens its stream's window to 256 bytes only, and
/// then reads nothing of its answer, 43 KB (one piece) or 187 KB: its connection is closed
/// at the send timeout (the answer ends in an error). Before, the answer waited for as long
/// as the client liked. (The one-piece answer went unwatched in a version that let hyper
/// drop it once its one piece was handed to h2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_answer_whose_window_stays_shut_loses_its_connection_at_the_send_timeout() {
    let (_root, _server, grpc) = serve(&[]);
    for rows in [300, 1_300] {
        window_shut(grpc, rows).await;
    }
}

/// A call for `rows` rows on a connection whose stream window is 256 bytes, its answer not
/// read: the connection is closed and the answer ends in an error.
async fn window_shut(grpc: u16, rows: usize) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(256)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let request = infer_request(grpc, rows);
    let answer = sender
        .send_request(request)
        .await
        .expect("answer's headers");
    // The client reads its socket, so it sees the server close the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "{rows} rows: the connection was still open 10 s later, the answer waiting for the client"
    );
    let read = tokio::time::timeout(Duration::from_secs(5), answer.into_body().collect()).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "{rows} rows: the answer ends in an error once its connection is closed"
    );
}

/// A client that asked `port` for about 26 MB of JSON (1.2 MB of request), reads timed at 30 s.
fn asking_for_26_mb(port: u16) -> TcpStream {
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    client
        .write_all(&int64_json(port, 100_000))
        .expect("request");
    client
}

/// A client that reads its big answer slowly but steadily (16 KiB every 100 ms, far below
/// what the sockets hold, so the kernel lets no new write in for seconds) is not cut: it
/// gets the whole answer.
#[test]
fn a_client_that_keeps_reading_slowly_gets_its_whole_answer() {
    let (_root, server, _) = serve(&[]);
    let mut client = asking_for_26_mb(server.port);
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    // From the answer's first bytes: four timeouts of slow reading.
    let mut slow: Option<Instant> = None;
    while slow.is_none_or(|s| s.elapsed() < SEND_TIMEOUT * 4) {
        let n = client.read(&mut buf).expect("the answer goes on");
        slow.get_or_insert_with(Instant::now);
        assert!(n > 0, "the connection was closed while the client read");
        answer.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (head, body_start) = loop {
        let text = String::from_utf8_lossy(&answer);
        if let Some(at) = text.find("\r\n\r\n") {
            break (text[..at].to_owned(), at + 4);
        }
        let n = client.read(&mut buf).expect("head");
        assert!(n > 0, "closed before the head");
        answer.extend_from_slice(&buf[..n]);
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("content-length");
    while answer.len() < body_start + length {
        let n = client.read(&mut buf).expect("the rest");
        assert!(n > 0, "the connection was closed before the answer's end");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(length > 20 << 20, "{length}");
}

/// The same slow but steady reader goes on being served through shutdown: SIGTERM, the
/// listeners closing and the connection's graceful close change nothing about what it has
/// taken (a watch started afresh at the close saw the socket blocked for longer than the
/// timeout and cut the connection at once).
#[test]
fn a_client_reading_slowly_through_shutdown_is_not_cut() {
    let (_root, server, _) = serve(&[]);
    let mut client = asking_for_26_mb(server.port);
    let mut buf = vec![0u8; 16 << 10];
    let mut slow: Option<Instant> = None;
    let mut signalled = false;
    // Two timeouts of slow reading (the socket blocked for longer than a timeout), SIGTERM,
    // then four more.
    while slow.is_none_or(|s| s.elapsed() < SEND_TIMEOUT * 6) {
        let n = client.read(&mut buf).expect("the answer goes on");
        let since = *slow.get_or_insert_with(Instant::now);
        assert!(
            n > 0,
            "the connection was closed while the client read, {:?} after SIGTERM",
            since.elapsed().checked_sub(SEND_TIMEOUT * 2)
        );
        if !signalled && since.elapsed() >= SEND_TIMEOUT * 2 {
            common::sigterm(&server.child);
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An idle keep-alive connection and an idle `ModelStreamInfer` stream wait for nothing:
/// each is used again after three send timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_streams_are_not_cut() {
    let (_root, server, grpc) = serve(&[]);
    let port = server.port;
    let keep_alive = tokio::task::spawn_blocking(move || {
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut live = || {
            client
                .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("probe");
            let mut buf = [0u8; 4096];
            let n = client.read(&mut buf).expect("answer");
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
        };
        assert!(live());
        std::thread::sleep(SEND_TIMEOUT * 3);
        assert!(live(), "the idle keep-alive connection was cut");
    });
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let request = hyper::Request::post(format!(
        "http://127.0.0.1:{grpc}/inference.GRPCInferenceService/ModelStreamInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Frames(rx))
    .expect("request");
    let mut answers = sender
        .send_request(request)
        .await
        .expect("stream")
        .into_body();
    let message = infer_request(grpc, 10).into_body().collect().await;
    let message = message.expect("message").to_bytes();
    for round in 0..2 {
        tx.send(message.clone()).await.expect("send");
        let frame = tokio::time::timeout(Duration::from_secs(10), answers.frame())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no answer in 10 s"))
            .unwrap_or_else(|| panic!("round {round}: the stream ended"))
            .unwrap_or_else(|e| panic!("round {round}: the stream was cut: {e}"));
        assert!(frame.is_data(), "round {round}: {frame:?}");
        tokio::time::sleep(SEND_TIMEOUT * 3).await;
    }
    keep_alive.await.expect("keep-alive client");
}
