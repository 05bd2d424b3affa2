//! Connections with nothing in flight, against the real `kiln-server` binary. An HTTP/2
//! (gRPC) client may keep a connection open with no call at all, answering the server's
//! PINGs: before, such a connection held its `--max-connections` slot for as long as the
//! client liked, so clients that opened connections and left them idle (gRPC channels between
//! bursts, or a client opening them to hold the slots) kept every further client in the
//! kernel's backlog for good.
//!
//! - When every slot is taken and a client waits for one, connections with nothing in flight
//!   for a second are closed gracefully (a GOAWAY), and the waiting client is served; so are
//!   connections whose streams (`ModelStreamInfer`, health `Watch`) wait only on their
//!   clients: the streams end UNAVAILABLE and their clients open new ones (`tritonclient`'s
//!   stream too). A connection with a call in flight (a stream reading a message) keeps its
//!   slot.
//! - A connection with nothing in flight for `--idle-timeout-s` is closed gracefully, one with
//!   an open stream is not.
//! - An HTTP/1.1 keep-alive connection waits at most `--header-timeout-s` for its next request.
//! - `tritonclient.grpc` (grpcio) carries on across the idle close: its next call opens a new
//!   connection.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{framed, free_ports, publish, start_ready, venv_python, Frames, Server};
use http_body_util::{BodyExt as _, Full};
use kiln::http::grpc::pb;
use prost::Message as _;

/// `kiln-server` serving mlp, gRPC on its own port, with `args`: the server (killed when
/// dropped), and its gRPC port. The root goes with the server's lifetime.
fn serve(args: &[&str]) -> (tempfile::TempDir, Server, u16) {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let mut all = vec!["--drain-delay-s", "0", "--grpc-listen", &grpc_listen];
    all.extend_from_slice(args);
    let child = start_ready(root.path(), port, &all);
    (root, Server { child, port }, grpc)
}

/// A client's HTTP/2 connection: its sender, and its task, which ends when the server closes
/// the connection.
type Connection<B = Frames> = (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
);

/// An HTTP/2 connection to `port` as a gRPC client opens it (hyper answers the server's
/// PINGs), its requests' bodies `B`.
async fn connect<B>(port: u16) -> Connection<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// A `ServerLive` call on `sender`'s connection; whether it was answered live.
async fn live(sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>) -> bool {
    let request =
        hyper::Request::post("http://127.0.0.1/inference.GRPCInferenceService/ServerLive")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(framed(&[])))
            .expect("request");
    let Ok(answer) = sender.send_request(request).await else {
        return false;
    };
    let Ok(body) = answer.into_body().collect().await else {
        return false;
    };
    let body = body.to_bytes();
    body.len() >= 5 && pb::ServerLiveResponse::decode(&body[5..]).is_ok_and(|r| r.live)
}

/// A `ModelStreamInfer` stream opened on a connection of its own to `port`: where to send
/// framed messages, the answer's body, and the connection (its sender, kept so that hyper
/// keeps the connection open, and its task).
async fn open_stream(
    port: u16,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::body::Incoming,
    Connection,
) {
    let (mut sender, conn) = connect::<Frames>(port).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let request =
        hyper::Request::post("http://127.0.0.1/inference.GRPCInferenceService/ModelStreamInfer")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Frames(rx))
            .expect("request");
    let answer = sender.send_request(request).await.expect("stream opened");
    (tx, answer.into_body(), (sender, conn))
}

/// mlp's one-row `ModelInfer` request (`x`: [1, 16] FP32) with `id`, framed.
fn mlp_request(id: &str) -> Bytes {
    let request = pb::ModelInferRequest {
        model_name: "mlp".into(),
        id: id.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(vec![0u8; 16 * 4])],
        ..Default::default()
    };
    framed(&request.encode_to_vec())
}

/// Sends `id`'s request on a stream and reads its answer: whether it came, with `id`.
async fn stream_answers(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    body: &mut hyper::body::Incoming,
    id: &str,
) -> bool {
    if tx.send(mlp_request(id)).await.is_err() {
        return false;
    }
    let mut got = bytes::BytesMut::new();
    let read = async {
        loop {
            if got.len() >= 5 {
                let len = u32::from_be_bytes(got[1..5].try_into().expect("4 bytes")) as usize;
                if got.len() >= 5 + len {
                    let answer = pb::ModelStreamInferResponse::decode(&got[5..5 + len]);
                    return answer.is_ok_and(|a| {
                        a.error_message.is_empty() && a.infer_response.is_some_and(|r| r.id == id)
                    });
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
                _ => return false,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
}

/// Sends `bytes` on a new connection to `port` and reads until the server closes it, `within`
/// at most: how the read ended, what was read, and how long it took.
fn until_closed(
    port: u16,
    bytes: &[u8],
    within: Duration,
) -> (std::io::Result<usize>, Vec<u8>, Duration) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(within)).expect("timeout");
    conn.write_all(bytes).expect("request");
    let began = Instant::now();
    let mut read = Vec::new();
    let ended = conn.read_to_end(&mut read);
    (ended, read, began.elapsed())
}

/// Runs the Python `script` (the test venv's, with `tritonclient`) with the gRPC address of
/// `grpc` as its argument: it must succeed and print `ok`.
fn runs_ok(script: &str, grpc: u16) {
    let out = std::process::Command::new(venv_python("venv", "testdata"))
        .args(["-c", script, &format!("127.0.0.1:{grpc}")])
        .output()
        .expect("python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the connection's task ended (the server closed it) within `within`, cleanly.
async fn closed_within(
    conn: &mut tokio::task::JoinHandle<Result<(), hyper::Error>>,
    within: Duration,
) -> bool {
    matches!(tokio::time::timeout(within, conn).await, Ok(Ok(Ok(()))))
}

/// A `grpc.health.v1` `Watch` of the server's readiness opened on a connection of its own to
/// `port`: the answer's body (its first status read), and the connection.
async fn open_watch(port: u16) -> (hyper::body::Incoming, Connection<Full<Bytes>>) {
    let (mut sender, conn) = connect::<Full<Bytes>>(port).await;
    let request = hyper::Request::post("http://127.0.0.1/grpc.health.v1.Health/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(framed(&[])))
        .expect("request");
    let answer = sender.send_request(request).await.expect("watch opened");
    let mut body = answer.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
    assert!(
        matches!(first, Ok(Some(Ok(ref f))) if f.is_data()),
        "no first status: {first:?}"
    );
    (body, (sender, conn))
}

/// Reads a call's answer on until its trailers, `within` at most: their `grpc-status`, or
/// `None` if the call did not end so.
async fn ended_with(body: &mut hyper::body::Incoming, within: Duration) -> Option<String> {
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(trailers) = frame.into_trailers() {
                return trailers
                    .get("grpc-status")
                    .and_then(|s| s.to_str().ok())
                    .map(str::to_owned);
            }
        }
        None
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A fifth client waits while four connections hold every slot of `--max-connections 4`:
/// whether it was served within 15 s, and how long it waited.
async fn fifth_client(grpc: u16) -> (bool, Duration) {
    let began = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(15), async {
        let (mut sender, _conn) = connect::<Full<Bytes>>(grpc).await;
        live(&mut sender).await
    })
    .await;
    (matches!(served, Ok(true)), began.elapsed())
}

/// Idle gRPC connections and a health `Watch` take every slot of `--max-connections 4`, with
/// a stream whose next message is half arrived (for longer than the others are idle); a
/// fifth client is served within a couple of seconds: the connection quiet the longest (the
/// watch's, which waits on nothing from its client) is closed with a GOAWAY, its watch ended
/// UNAVAILABLE, and the connection whose stream is reading a message keeps its slot and its
/// stream, and answers the message and the next. Before, the fifth client waited
/// in the backlog for as long as the idle connections stayed (until the idle gRPC connections
/// gave way, the watch held its slot for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_way_to_a_waiting_client_when_every_slot_is_taken() {
    let (_root, _server, grpc) = serve(&["--max-connections", "4"]);
    let (tx, mut stream, (_keep, mut busy)) = open_stream(grpc).await;
    assert!(stream_answers(&tx, &mut stream, "first").await);
    // The next message's frame header and part of it: the stream is reading a message, and
    // its connection, had it been quiet since its first answer, would be quiet the longest.
    let next = mlp_request("second");
    tx.send(next.slice(..20)).await.expect("half a message");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut watch, (_watching, mut watched)) = open_watch(grpc).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let (mut sender, conn) = connect::<Full<Bytes>>(grpc).await;
        assert!(live(&mut sender).await);
        idle.push((sender, conn));
    }
    let (served, waited) = fifth_client(grpc).await;
    assert!(
        served,
        "a fifth client was not served in 15 s (idle connections held every slot)"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        ended_with(&mut watch, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("14"),
        "the watch did not end UNAVAILABLE"
    );
    assert!(
        closed_within(&mut watched, Duration::from_secs(5)).await,
        "the watch's connection did not close"
    );
    // One gives way for the one client waiting (a second is told only if the first has not
    // closed within a second: a loaded machine).
    let mut closed = 0;
    for (_, conn) in &mut idle {
        closed += usize::from(closed_within(conn, Duration::from_millis(500)).await);
    }
    assert!(closed <= 1, "{closed} more idle connections closed");
    assert!(
        !busy.is_finished(),
        "the connection with a message arriving was closed"
    );
    tx.send(next.slice(20..)).await.expect("the rest");
    let answered = async {
        let mut got = bytes::BytesMut::new();
        while let Some(Ok(frame)) = stream.frame().await {
            got.extend_from_slice(&frame.into_data().unwrap_or_default());
            if got.len() >= 5 {
                let len = u32::from_be_bytes(got[1..5].try_into().expect("4 bytes")) as usize;
                if got.len() >= 5 + len {
                    return pb::ModelStreamInferResponse::decode(&got[5..5 + len])
                        .is_ok_and(|a| a.infer_response.is_some_and(|r| r.id == "second"));
                }
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .unwrap_or(false),
        "the message half arrived through the pressure was not answered"
    );
    assert!(
        stream_answers(&tx, &mut stream, "third").await,
        "the stream reading a message was ended"
    );
    drop(tx);
    drop(stream);
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut busy).await;
}

/// Four `ModelStreamInfer` streams, each idle after one answer, take every slot of
/// `--max-connections 4`: a fifth client is served within a couple of seconds, the stream
/// quiet the longest ends UNAVAILABLE (so its client opens a new one) and its connection
/// closes, and the others go on answering. Before, an open stream kept its slot however long
/// it waited for its client, so the fifth client was never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_give_way_to_a_waiting_client_when_every_slot_is_taken() {
    let (_root, _server, grpc) = serve(&["--max-connections", "4"]);
    let mut streams = Vec::new();
    for i in 0..4 {
        let (tx, mut body, conn) = open_stream(grpc).await;
        assert!(stream_answers(&tx, &mut body, &format!("{i}")).await);
        streams.push((tx, body, conn));
    }
    let (served, waited) = fifth_client(grpc).await;
    assert!(
        served,
        "a fifth client was not served in 15 s (idle streams held every slot)"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let (_, first, (_, conn)) = &mut streams[0];
    assert_eq!(
        ended_with(first, Duration::from_secs(5)).await.as_deref(),
        Some("14"),
        "the stream quiet the longest did not end UNAVAILABLE"
    );
    assert!(
        closed_within(conn, Duration::from_secs(5)).await,
        "its connection did not close"
    );
    // A loaded machine may have told a second; the rest go on.
    let mut answering = 0;
    for (i, (tx, body, _)) in streams.iter_mut().enumerate().skip(1) {
        answering += usize::from(stream_answers(tx, body, &format!("again {i}")).await);
    }
    assert!(answering >= 2, "only {answering} streams still answer");
}

/// `tritonclient.grpc` (grpcio) with `--max-connections 1`: a client's idle stream holds the
/// one slot; a second client's call is served all the same, the first client's stream
/// callback is told UNAVAILABLE, and a stream it starts again is served (the second client's
/// idle connection giving way in turn). Before, the second client's call timed out.
#[test]
fn tritonclient_grpc_streams_give_way_and_start_again() {
    let (_root, _server, grpc) = serve(&["--max-connections", "1"]);
    let script = r#"
import faulthandler, queue, sys, time
faulthandler.dump_traceback_later(60, exit=True)
import numpy as np
import tritonclient.grpc as grpcclient
url = sys.argv[1]
results = queue.Queue()
def callback(result, error):
    results.put((result, error))
def inputs():
    x = grpcclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    return [x]
# Each client a connection of its own (grpcio shares one between channels to one target).
own = [("grpc.use_local_subchannel_pool", 1)]
a = grpcclient.InferenceServerClient(url=url, channel_args=own)
a.start_stream(callback=callback)
a.async_stream_infer("mlp", inputs(), request_id="1")
result, error = results.get(timeout=10)
assert error is None, error
print("first answered", file=sys.stderr, flush=True)
time.sleep(1.5)
b = grpcclient.InferenceServerClient(url=url, channel_args=own)
began = time.time()
b.infer("mlp", inputs(), client_timeout=10)
waited = time.time() - began
print("b served", waited, file=sys.stderr, flush=True)
result, error = results.get(timeout=10)
assert result is None and "UNAVAILABLE" in str(error), (result, error)
print("stream told", error, file=sys.stderr, flush=True)
a.stop_stream()
print("stream stopped", file=sys.stderr, flush=True)
time.sleep(1.5)
a.start_stream(callback=callback)
a.async_stream_infer("mlp", inputs(), request_id="2")
result, error = results.get(timeout=10)
assert error is None, error
assert result.get_response().id == "2"
a.stop_stream()
print("ok", waited)
"#;
    runs_ok(script, grpc);
}

/// With `--idle-timeout-s 1`, a connection with nothing in flight is closed gracefully about a
/// second after its last call, and one whose stream stays open (idle between its messages)
/// is not. Before, nothing closed an idle HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_nothing_in_flight_is_closed_at_the_idle_timeout() {
    let (_root, _server, grpc) = serve(&["--idle-timeout-s", "1"]);
    let (tx, mut stream, (_keep, busy)) = open_stream(grpc).await;
    let (mut sender, mut conn) = connect::<Full<Bytes>>(grpc).await;
    assert!(live(&mut sender).await);
    let began = Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(10)).await,
        "the idle connection was not closed in 10 s"
    );
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if busy.is_finished() {
        panic!("the connection with a stream was closed: {:?}", busy.await);
    }
    assert!(stream_answers(&tx, &mut stream, "after").await);
}

/// An HTTP/1.1 keep-alive connection with no request after its first is closed once
/// `--header-timeout-s` has passed (hyper's header-read timer runs while it waits for the
/// next request's head), whatever `--idle-timeout-s` says.
#[test]
fn a_keep_alive_connection_waits_for_its_next_request_at_most_the_header_timeout() {
    let (_root, server, _) = serve(&["--header-timeout-s", "1", "--idle-timeout-s", "0"]);
    // Read the answer, then on until the server closes the connection.
    let (read, answer, waited) = until_closed(
        server.port,
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(read.is_ok(), "not closed in 10 s: {read:?}");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

/// `tritonclient.grpc` (grpcio): a call after its channel's connection was closed at the idle
/// timeout succeeds, on a new connection, with no error surfacing to the caller; the server's
/// log shows each close.
#[test]
fn tritonclient_grpc_carries_on_after_an_idle_close() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let log_path = root.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let server = Server {
        child: common::start_logging(
            root.path(),
            port,
            &[
                "--drain-delay-s",
                "0",
                "--grpc-listen",
                &grpc_listen,
                "--idle-timeout-s",
                "1",
            ],
            "kiln::http::serve=debug",
            log,
        ),
        port,
    };
    let script = r#"
import sys, time
import numpy as np
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(url=sys.argv[1])
def infer():
    x = grpcclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    result = client.infer("mlp", [x], client_timeout=10)
    return result.as_numpy(result.get_response().outputs[0].name)
first = infer()
for _ in range(3):
    time.sleep(2.5)
    again = infer()
    assert (again == first).all(), (first, again)
print("ok")
"#;
    runs_ok(script, grpc);
    drop(server);
    let log = std::fs::read_to_string(&log_path).expect("log");
    let closes = log
        .lines()
        .filter(|l| l.contains("closing a connection with nothing in flight"))
        .count();
    assert!(closes >= 3, "{closes} idle closes in the log:\n{log}");
}

/// A client that never completes a graceful close (it answers no PING, so h2 never sends its
/// last GOAWAY) loses the connection `--send-timeout-s` after the close began. Before, it
/// kept the connection, and its slot, until hyper's keep-alive timer ran out (50 s).
#[test]
fn a_client_that_never_finishes_a_graceful_close_loses_its_connection() {
    let (_root, _server, grpc) = serve(&["--idle-timeout-s", "1", "--send-timeout-s", "1"]);
    // The preface and empty SETTINGS, then nothing: no SETTINGS ack, no PING answered.
    let (read, _, waited) = until_closed(
        grpc,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        Duration::from_secs(20),
    );
    assert!(read.is_ok(), "not closed in 20 s: {read:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}
