//! The accept loop, for REST and gRPC alike. `axum::serve` sets no header-read timeout and no
//! connection cap, so a client that trickles its request headers (slowloris) holds a
//! connection and its task forever, and enough of them exhaust the process. Here every
//! connection goes through hyper's builder (HTTP/1.1, or HTTP/2 with prior knowledge, which
//! is what gRPC clients speak) with a timer and a header-read timeout, at most
//! `max_connections` are served at once (one more client accepted waits for a slot, the rest
//! in the kernel's backlog), the peer address is handed to the handlers (admin endpoints
//! check it), and shutdown drains open connections gracefully (HTTP/2 ones with a GOAWAY).
//! A connection whose client stops taking its answers is closed after `send_timeout`
//! (`send_timeout`'s module doc); one with nothing in flight after `idle_timeout`, or sooner
//! when a client waits for its slot (`idle`'s module doc).
//!
//! HTTP/2 flow control is sized so that no call can starve another on its connection. A big
//! gRPC message waits for its decode-budget share before it is read (`grpc::budget`), and
//! the bytes a waiting call has received count against the connection's window until they are
//! read. With hyper's defaults (a 1 MiB window per stream and 1 MiB per connection) the
//! calls waiting filled the connection's window, the calls holding the shares could not
//! receive the rest of their messages, and the connection stalled for good, with a client
//! that shares the connection's window among its streams (nghttp2's `h2load`: 16 calls of
//! 8 MiB at a time on one connection, none answered in a minute; `tritonclient.grpc` did
//! not stall with 48 calls of 2.4 MiB on one channel). So each stream
//! gets [`STREAM_WINDOW_BYTES`] and the connection one more stream's worth than all its
//! streams together: whatever the waiting calls hold, a call being read always has a
//! stream's window of connection window left (h2 grants it back in steps of half a window).
//! The cost is what a connection's unread calls may buffer, outside the decode budget: at
//! most 16.5 MiB a connection with the default 32 streams (1 MiB before), so up to
//! 16.5 MiB × `max_connections` in all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use super::idle::{Activity, Connections, Idle, CLOSE_BOUND, GIVE_WAY_WAIT, PRESSED_IDLE};
use super::send_timeout::{Answer, Watch, Watched};

/// Each HTTP/2 stream's flow-control window, the most a request's bytes may run ahead of
/// what the server has read of them. Half of hyper's default: with HTTP/2's own 64 KiB a
/// 32 MiB message took a window update per 32 KiB, and under load sixteen of them at once
/// did not arrive within `--body-timeout-s`.
pub const STREAM_WINDOW_BYTES: u32 = 512 * 1024;

/// The connection's window for `streams` concurrent streams: one stream's more than all of
/// them together (see the module doc), within HTTP/2's largest window.
fn connection_window(streams: u32) -> u32 {
    let max = (1u32 << 31) - 1;
    streams
        .saturating_add(1)
        .saturating_mul(STREAM_WINDOW_BYTES)
        .min(max)
}

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest a client may take to send a request's headers (the first request's, and each
    /// next one's on a keep-alive connection) before the connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most connections served at once. Default 4096.
    pub max_connections: usize,
    /// How long shutdown waits for open connections to finish. Default 30 s.
    pub shutdown_grace: Duration,
    /// Longest a connection's client may take nothing of what waits for it (an answer's
    /// bytes, or the socket's) before the connection is closed: the time between two
    /// successive takes, not a whole answer's (`send_timeout`'s module doc); zero for no
    /// limit. Default 60 s.
    pub send_timeout: Duration,
    /// How long a connection may have nothing in flight before it is closed gracefully
    /// (HTTP/2: a GOAWAY; the client opens a new connection for its next call); zero for no
    /// limit. An HTTP/1.1 connection waits at most `header_read_timeout` for its next request
    /// anyway. An open gRPC stream is in flight for as long as it is open. Whatever this
    /// says, while every slot is taken and a client waits for one, connections with nothing
    /// in flight but streams waiting on their clients, for a second, give theirs way
    /// (`idle`'s module doc). Default 300 s.
    pub idle_timeout: Duration,
    /// Most requests in flight at once on one HTTP/2 (gRPC) connection. Default 32 (a
    /// client with more calls in flight queues them, or opens more connections). The
    /// connection's flow-control window follows it (module doc): each stream more is 512 KiB
    /// more a connection's waiting calls may buffer.
    pub max_streams_per_connection: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 32,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits up to
/// `shutdown_grace` for open connections (keep-alive ones are closed after their current
/// request).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection's task holds a receiver: they are all gone once every task has ended.
    let (stop, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let connections = Arc::new(Connections::default());
    let idle_timeout = (!options.idle_timeout.is_zero()).then_some(options.idle_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: an idle connection gives its
                    // descriptor way, and the loop backs off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    connections.give_way();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Every slot taken: this client waits (the next ones in the kernel's backlog), and
        // connections with nothing in flight give theirs way, one at a time (`idle`).
        let slot = loop {
            if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                break Some(slot);
            }
            let wait = if connections.give_way() {
                GIVE_WAY_WAIT
            } else {
                PRESSED_IDLE / 4
            };
            tokio::select! {
                s = Arc::clone(&slots).acquire_owned() => break s.ok(),
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(slot) = slot else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        #[cfg(unix)]
        let fd = Some(std::os::fd::AsRawFd::as_raw_fd(&stream));
        #[cfg(not(unix))]
        let fd = None;
        let watch = Arc::new(Watch::new(options.send_timeout, fd));
        let answers = Arc::clone(&watch);
        let (activity, registered) = connections.open();
        let requests = Arc::clone(&activity);
        // hyper calls this as a request arrives (on HTTP/2 before the stream's task runs):
        // the request is in flight from then on (`idle`).
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let busy = requests.enter();
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let http2 = req.version() == hyper::Version::HTTP_2;
                if http2 {
                    // For a gRPC stream to park while it waits on its client (`idle`).
                    req.extensions_mut().insert(Arc::clone(&requests));
                }
                let call = app.clone().oneshot(req.map(axum::body::Body::new));
                let watch = Arc::clone(&answers);
                async move {
                    call.await.map(|answer| {
                        answer.map(|body| Answer::new(body, watch, http2).holding(busy))
                    })
                }
            });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size(READ_BUFFER_MAX_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(options.max_streams_per_connection)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(connection_window(options.max_streams_per_connection))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let mut stopping = stopping.clone();
        let first_bytes = options.header_read_timeout;
        let close_bound = if options.send_timeout.is_zero() {
            CLOSE_BOUND
        } else {
            options.send_timeout
        };
        tokio::spawn(async move {
            // Off the list first, then the slot free.
            let _slot = (registered, slot);
            // The protocol detection below waits for the client's first bytes with no timer
            // of its own: a client that connects and sends nothing must not hold the slot,
            // nor keep it from a client waiting for one, nor shutdown.
            let known = tokio::select! {
                biased;
                known = protocol_known(&stream, first_bytes) => known,
                _ = activity.idle(idle_timeout) => false,
                _ = stopping.wait_for(|stop| *stop) => false,
            };
            if !known {
                tracing::debug!(%peer, "nothing to tell HTTP/1 from HTTP/2 in time; closed");
                return;
            }
            // The client just sent its first bytes: idle from now.
            activity.touch();
            let io = TokioIo::new(Watched::new(stream, Arc::clone(&watch)));
            let conn = builder.serve_connection(io, service).into_owned();
            tokio::pin!(conn);
            // One watch for the connection's life: it remembers when the client last took.
            let stalled = watch.stalled();
            tokio::pin!(stalled);
            // A connection closed gracefully ends once hyper is done with it: HTTP/1.1 at
            // once when idle, HTTP/2 once the client has answered the GOAWAY's PING and its
            // streams are sent. One whose client does neither is dropped `close_bound` after
            // the close began, once nothing is in flight (`idle`'s module doc).
            let mut closing = false;
            let mut close_due = None;
            loop {
                let unfinished = async {
                    match close_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    waited = &mut stalled => {
                        tracing::info!(
                            %peer,
                            waited_s = waited.as_secs_f64(),
                            "closed a connection whose client took nothing of its answers within the send timeout"
                        );
                        break;
                    }
                    idle = close(&mut stopping, &activity, idle_timeout), if !closing => {
                        if let Some(why) = idle {
                            tracing::debug!(%peer, ?why, "closing a connection with nothing in flight");
                        }
                        activity.closing();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        close_due = Some(tokio::time::Instant::now() + close_bound);
                    }
                    () = unfinished => {
                        if activity.idle_for().is_some_and(|idle| idle >= close_bound) {
                            tracing::info!(%peer, "dropped a connection whose client did not finish its graceful close");
                            break;
                        }
                        close_due = Some(tokio::time::Instant::now() + close_bound);
                    }
                }
            }
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace_s = options.shutdown_grace.as_secs(), "connections still open after the shutdown grace period");
        }
    }
}

/// Resolves once a connection is to close gracefully: at shutdown (`None`), or idle.
async fn close(
    stopping: &mut watch::Receiver<bool>,
    activity: &Activity,
    idle_timeout: Option<Duration>,
) -> Option<Idle> {
    tokio::select! {
        biased;
        _ = stopping.wait_for(|stop| *stop) => None,
        why = activity.idle(idle_timeout) => Some(why),
    }
}

/// The most an HTTP/1.1 connection reads from its socket at once (hyper's default is about
/// 400 KB). hyper hands each piece of a body on and reserves a fresh read buffer for the next;
/// one of 128 KiB or more is its own `mmap` (`memory::MMAP_THRESHOLD`), so every big body's
/// arrival faulted in zeroed pages and unmapped them again (under `hey` at concurrency 64
/// with 250 KB JSON bodies, about a tenth of the server's CPU). Under the threshold the
/// buffers come from malloc's heap, already resident; request heads up to this size are still
/// read (hyper's limit on headers, 100 of them, binds first).
const READ_BUFFER_MAX_BYTES: usize = 64 << 10;

/// Waits, at most `timeout`, until the client has sent enough to tell HTTP/1.1 from HTTP/2:
/// the 24-byte HTTP/2 preface, or a byte that departs from it. False if it did not, or closed.
async fn protocol_known(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let known = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
                // Part of the preface: `peek` answers at once until more arrives.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(timeout, known).await.unwrap_or(false)
}
/// Resolves on SIGTERM (what the kubelet sends) or SIGINT. A service stopping as a pod is
/// stopped passes [`Shutdown::signalled`](crate::http::shutdown::Shutdown::signalled) to
/// [`serve()`] instead, which awaits this, sets [`AppState::draining`](crate::http::AppState),
/// serves through the drain delay and sets `AppState::closing` (without it, open gRPC streams
/// with requests in flight read on until `shutdown_grace` runs out; quiet ones end when the
/// listeners close).
pub async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "no SIGTERM handler; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{connection_window, STREAM_WINDOW_BYTES};

    #[test]
    fn the_connection_window_holds_every_stream_and_one_more() {
        assert_eq!(connection_window(32), 33 * STREAM_WINDOW_BYTES);
        assert_eq!(connection_window(0), STREAM_WINDOW_BYTES);
        assert_eq!(connection_window(u32::MAX), (1 << 31) - 1);
    }
}
