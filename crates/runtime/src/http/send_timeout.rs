//! Clients that stop taking their answers. A client that sends requests and reads nothing
//! back holds what the server made for it, and a connection slot: an HTTP/1.1 answer too big
//! for the socket's buffers waits in hyper's write buffer and, behind it, in its body; an
//! HTTP/2 (gRPC) answer waits for a flow-control window the client never opens, up to a
//! connection's 32 streams of them; small answers the client does not read fill the socket.
//! Nothing timed that: the accept loop closed a connection only when its client did.
//!
//! So [`serve`](super::serve()) watches each connection ([`Watch`]) and closes it once its
//! client has taken nothing for [`ServeOptions::send_timeout`](super::ServeOptions) while
//! something waited for it, as nginx's `send_timeout`: the time between two successive
//! takes, not the whole answer's, so a slow client that keeps reading is never cut. What can
//! wait for a client:
//!
//! - the socket ([`Watched`]): a write the kernel would not take, which is a client that
//!   stopped reading its socket, whatever the protocol and however small its answers;
//! - an answer ([`Answer`]): a body with bytes hyper has not pulled yet, which is also an
//!   HTTP/2 client that reads its socket but opens no window (the socket never blocks). An
//!   answer is handed to hyper in pieces of at most [`PIECE_BYTES`], so hyper pulls it as the
//!   client takes it and what waits is seen here, not inside hyper's or h2's buffers.
//!
//! Waiting on the server is not the client's stall: an answer whose body is pending (a
//! stream with no answer ready yet) stops its clock until it has bytes again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most of an answer handed to hyper at once. hyper pulls the next piece only once the
/// client has room for more (HTTP/2: a window; HTTP/1.1: its write buffer, 64 KiB, drained
/// into the socket), so at most about a piece of each answer waits inside hyper.
pub(crate) const PIECE_BYTES: usize = 64 << 10;

/// What waits for one connection's client, and since when.
#[derive(Debug)]
pub(crate) struct Watch {
    start: Instant,
    /// When a socket write first found the kernel's buffer full: nanoseconds since `start`,
    /// plus one; 0 while writes go through.
    blocked: AtomicU64,
    /// The answers with bytes waiting for hyper to pull them, each since when (a few: at
    /// most one a stream).
    waiting: Mutex<Vec<(u64, Instant)>>,
    next_id: AtomicU64,
}

impl Watch {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            blocked: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Since when something has waited for the client: the oldest wait now, if any.
    fn oldest(&self) -> Option<Instant> {
        let blocked = match self.blocked.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.start + Duration::from_nanos(n - 1)),
        };
        let answer = self.waiting().iter().map(|(_, since)| *since).min();
        blocked.into_iter().chain(answer).min()
    }

    /// Resolves once something has waited `timeout` for the client (how long it had), and
    /// never while nothing waits, nor if `timeout` is zero (no timeout) or too long to
    /// reach. Wakes at most once a `timeout` while the client keeps up.
    pub(crate) async fn stalled(&self, timeout: Duration) -> Duration {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let now = Instant::now();
            // A wait that begins after this look cannot end before `now + timeout`.
            let due = match self.oldest() {
                Some(since) if now.saturating_duration_since(since) >= timeout => {
                    return now.saturating_duration_since(since)
                }
                Some(since) => since.checked_add(timeout),
                None => now.checked_add(timeout),
            };
            match due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => return std::future::pending().await,
            }
        }
    }

    fn socket_wrote(&self, blocked: bool) {
        if !blocked {
            self.blocked.store(0, Ordering::Relaxed);
        } else if self.blocked.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.blocked.store(since + 1, Ordering::Relaxed);
        }
    }
}

/// A connection's socket, telling its [`Watch`] when the kernel would not take a write.
pub(crate) struct Watched<S> {
    io: S,
    watch: Arc<Watch>,
}

impl<S> Watched<S> {
    pub(crate) fn new(io: S, watch: Arc<Watch>) -> Self {
        Self { io, watch }
    }

    fn wrote<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.watch.socket_wrote(poll.is_pending());
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only a write the kernel took is progress: a socket's flush takes nothing.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An answer's body, telling its connection's [`Watch`] while it has bytes hyper has not
/// pulled, and handing them over [`PIECE_BYTES`] at a time.
pub(crate) struct Answer {
    body: Body,
    /// What is left of the data frame being handed over.
    rest: Bytes,
    watch: Arc<Watch>,
    id: u64,
}

impl Answer {
    /// `body` as an answer waiting for its client from now on (hyper has pulled nothing).
    pub(crate) fn new(body: Body, watch: Arc<Watch>) -> Self {
        let id = watch.next_id.fetch_add(1, Ordering::Relaxed);
        let answer = Self {
            body,
            rest: Bytes::new(),
            watch,
            id,
        };
        if !answer.body.is_end_stream() {
            answer.waits(true);
        }
        answer
    }

    fn waits(&self, waits: bool) {
        let mut waiting = self.watch.waiting();
        let at = waiting.iter().position(|(id, _)| *id == self.id);
        match (waits, at) {
            (true, Some(at)) => waiting[at].1 = Instant::now(),
            (true, None) => waiting.push((self.id, Instant::now())),
            (false, Some(at)) => {
                waiting.swap_remove(at);
            }
            (false, None) => {}
        }
    }

    /// The next piece of `rest`, keeping what is over [`PIECE_BYTES`] for the next pull.
    fn piece(&mut self) -> Bytes {
        let at = self.rest.len().min(PIECE_BYTES);
        self.rest.split_to(at)
    }
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.rest.is_empty() {
            let piece = self.piece();
            let more = !self.is_end_stream();
            self.waits(more);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            // Pending: the server's to make, not the client's to take.
            other => {
                self.waits(false);
                return other;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) if data.len() > PIECE_BYTES => {
                self.rest = data;
                Frame::data(self.piece())
            }
            Ok(data) => Frame::data(data),
            Err(frame) => frame,
        };
        let more = !self.is_end_stream();
        self.waits(more);
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.waits(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn waits(watch: &Watch) -> bool {
        watch.oldest().is_some()
    }

    #[tokio::test]
    async fn an_answer_waits_while_it_has_bytes_and_comes_in_pieces() {
        let watch = Arc::new(Watch::new());
        let data = Bytes::from(vec![7u8; PIECE_BYTES * 2 + 10]);
        let mut body = Answer::new(Body::from(data.clone()), Arc::clone(&watch));
        assert!(waits(&watch), "an answer not pulled yet waits");
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let piece = frame.expect("frame").into_data().expect("data");
            pieces.push(piece.len());
            if !body.is_end_stream() {
                assert!(waits(&watch), "bytes left wait");
            }
        }
        assert_eq!(pieces, [PIECE_BYTES, PIECE_BYTES, 10]);
        assert!(!waits(&watch), "a whole answer waits no more");
        let empty = Answer::new(Body::empty(), Arc::clone(&watch));
        assert!(!waits(&watch), "an empty answer never waits");
        drop(empty);
        let dropped = Answer::new(Body::from("x"), Arc::clone(&watch));
        assert!(waits(&watch));
        drop(dropped);
        assert!(!waits(&watch), "a dropped answer waits no more");
    }

    #[tokio::test]
    async fn an_answer_pending_on_the_server_does_not_wait_for_the_client() {
        use futures::StreamExt as _;
        let watch = Arc::new(Watch::new());
        let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
        let frames = rx.map(|b| Ok::<_, axum::Error>(Frame::data(b)));
        let mut body = Answer::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Arc::clone(&watch),
        );
        assert!(waits(&watch));
        assert!(futures::poll!(body.frame()).is_pending());
        assert!(!waits(&watch), "nothing to take");
        tx.try_send(Bytes::from_static(b"a")).expect("send");
        let frame = body.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "a");
        assert!(waits(&watch), "hyper has not asked for more yet");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(!waits(&watch));
    }

    #[tokio::test]
    async fn stalled_resolves_only_after_a_whole_timeout_of_waiting() {
        let watch = Arc::new(Watch::new());
        let timeout = Duration::from_millis(300);
        let stalled = tokio::spawn({
            let watch = Arc::clone(&watch);
            async move { watch.stalled(timeout).await }
        });
        tokio::time::sleep(timeout * 2).await;
        assert!(!stalled.is_finished(), "nothing waited");
        let began = Instant::now();
        watch.socket_wrote(true);
        tokio::time::sleep(timeout / 2).await;
        watch.socket_wrote(false);
        watch.socket_wrote(true);
        tokio::time::sleep(timeout * 3 / 4).await;
        assert!(!stalled.is_finished(), "a write went through in between");
        let waited = tokio::time::timeout(timeout * 2, stalled)
            .await
            .expect("stalled by then")
            .expect("task");
        assert!(waited >= timeout, "{waited:?}");
        assert!(began.elapsed() >= timeout * 3 / 2, "{:?}", began.elapsed());
    }
}
