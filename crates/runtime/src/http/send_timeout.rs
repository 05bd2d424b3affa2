//! Clients that stop taking their answers. A client that sends requests and reads nothing
//! back holds what the server made for it, and a connection slot: an HTTP/1.1 answer too big
//! for the socket's buffers waits in hyper's write buffer and, behind it, in its body; an
//! HTTP/2 (gRPC) answer waits for a flow-control window the client never opens, up to a
//! connection's 32 streams of them; answers the client does not read fill the socket.
//! Nothing timed that: the accept loop closed a connection only when its client did.
//!
//! So [`serve`](super::serve()) watches each connection ([`Watch`]) and closes it once it has
//! been stalled for [`ServeOptions::send_timeout`](super::ServeOptions): something waited for
//! the client and the client took nothing meanwhile, as nginx's `send_timeout` (the time
//! between two takes, not a whole answer's, so a slow client that keeps reading is not cut).
//! What waits:
//!
//! - the socket ([`Watched`]): a write the kernel would not take, until one it takes: a
//!   client that stopped reading its socket, whatever the protocol and however small its
//!   answers (h2 keeps up to 400 KiB a stream of answers it was handed);
//! - an answer ([`Answer`]): a body with bytes left, or with its last piece still inside
//!   hyper, until hyper pulls the next piece: also an HTTP/2 client that reads its socket
//!   but opens no window, so the socket never blocks. An answer goes to hyper in pieces of at
//!   most [`PIECE_BYTES`], so that what the client has not taken stays here, where it is
//!   seen (hyper 1.12 pulls one piece ahead of the window and holds it), and over HTTP/2
//!   ends in a piece of one byte that hyper holds until the window lets all before it out
//!   ([`TAIL_FROM_BYTES`]).
//!
//! What counts as the client taking: the client having taken [`PROGRESS_BYTES`] more off
//! the socket since the watch last looked, four times a timeout (what the
//! socket took, less what the kernel still holds unsent, on Linux: a client draining a full
//! socket slowly takes bytes long before the kernel lets the next write in, since it waits
//! for a third of a buffer of megabytes). A PING's answer (17 bytes) is not taking.
//!
//! Waiting on the server is not the client's stall: an answer whose body is pending (a
//! stream with no answer ready yet, a model still running) waits for nothing. The close is
//! the whole connection's (hyper cannot reset one stream while it waits for its window), but
//! only once the connection as a whole takes nothing: a client with one stalled stream and
//! others it reads is not cut.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most of an answer handed to hyper at once. hyper holds at most about a piece of each
/// answer ahead of what the client has room for (HTTP/2: its window; HTTP/1.1: hyper's 64 KiB
/// write buffer, drained into the socket); the rest waits here.
pub(crate) const PIECE_BYTES: usize = 64 << 10;

/// Over HTTP/2, a data frame longer than this goes to hyper with its last byte as a piece of
/// its own. hyper hands a piece to h2 as soon as the window has one byte free, and h2 keeps
/// what the window does not let out; hyper then pulls the next piece at once, and, were that
/// the answer's end, would drop the answer with up to a piece unsent and unwatched. The
/// last byte is pulled at once too, but hyper holds it until the window has room beyond all
/// that came before: the answer stays watched until the client has taken the rest.
/// Shorter answers (under a kilobyte each, 32 a connection) are not worth a frame more.
pub(crate) const TAIL_FROM_BYTES: usize = 1 << 10;

/// What the client must take for the connection to count as moving: more than its own
/// chatter (PING and SETTINGS acknowledgements, window updates).
pub(crate) const PROGRESS_BYTES: u64 = 4 << 10;

/// An answer waiting for the client since its creation or hyper's last pull of it.
#[derive(Debug, Clone, Copy)]
struct Wait {
    id: u64,
    since: Instant,
}

/// What waits for one connection's client, and when the client last took something.
#[derive(Debug)]
pub(crate) struct Watch {
    start: Instant,
    /// When a socket write first found the kernel's buffer full: nanoseconds since `start`,
    /// plus one; 0 while writes go through.
    blocked: AtomicU64,
    /// The socket's descriptor, open for as long as [`Watch::stalled`] is polled, to ask the
    /// kernel what it still holds unsent: a client draining a full socket slowly is seen
    /// taking bytes before the kernel lets the next write in (it waits for a third of its
    /// buffer, megabytes on loopback). `None`: only writes the kernel takes are seen.
    fd: Option<i32>,
    /// Bytes the socket has taken, in all.
    written: AtomicU64,
    /// The answers waiting for the client (a few: at most one a stream).
    waiting: Mutex<Vec<Wait>>,
    next_id: AtomicU64,
    /// The send timeout; zero: nothing is watched.
    timeout: Duration,
}

impl Watch {
    /// A connection's watch, for a send timeout of `timeout` (zero: none, nothing watched),
    /// on the socket `fd` if known.
    pub(crate) fn new(timeout: Duration, fd: Option<i32>) -> Self {
        Self {
            start: Instant::now(),
            blocked: AtomicU64::new(0),
            fd,
            written: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            timeout,
        }
    }

    fn on(&self) -> bool {
        !self.timeout.is_zero()
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn instant(&self, stamp: u64) -> Option<Instant> {
        (stamp != 0).then(|| self.start + Duration::from_nanos(stamp - 1))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Wait>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bytes the client has taken: what the socket took, less what the kernel still
    /// holds unsent (where it says).
    fn taken(&self) -> u64 {
        let written = self.written.load(Ordering::Relaxed);
        self.fd
            .and_then(unsent)
            .map_or(written, |u| written.saturating_sub(u))
    }

    /// Since when the connection has been stalled, if it is: something waits for the client
    /// (the socket, or an answer), since then, and the client has taken nothing since its
    /// last `progress`.
    fn stalled_since(&self, progress: Option<Instant>) -> Option<Instant> {
        let blocked = self.instant(self.blocked.load(Ordering::Relaxed));
        let answer = self.waiting().iter().map(|w| w.since).min();
        let waits = blocked.into_iter().chain(answer).min()?;
        Some(progress.map_or(waits, |p| p.max(waits)))
    }

    /// Resolves once the connection has been stalled for the send timeout (how long it was),
    /// and never while the client keeps taking, nor if the timeout is zero (none) or too
    /// long to reach. It looks four times a timeout (what the client took shows only to a
    /// look, against the last one), so a stall is cut between one and one and a quarter
    /// timeouts after it began.
    pub(crate) async fn stalled(&self) -> Duration {
        let timeout = self.timeout;
        if !self.on() {
            return std::future::pending().await;
        }
        // When a look last saw the client take [`PROGRESS_BYTES`] more, and what it had.
        let mut progress = None;
        let mut taken = self.taken();
        loop {
            let now = Instant::now();
            let now_taken = self.taken();
            if now_taken.saturating_sub(taken) >= PROGRESS_BYTES {
                taken = now_taken;
                progress = Some(now);
            }
            let next = match self.stalled_since(progress) {
                Some(since) if now.saturating_duration_since(since) >= timeout => {
                    return now.saturating_duration_since(since)
                }
                Some(since) => since
                    .checked_add(timeout)
                    .zip(now.checked_add(timeout / 4))
                    .map(|(due, look)| due.min(look)),
                None => now.checked_add(timeout / 4),
            };
            match next {
                Some(next) => tokio::time::sleep_until(next.into()).await,
                None => return std::future::pending().await,
            }
        }
    }

    /// A socket write took `took` bytes, or none (`None`: the kernel's buffer was full).
    fn socket_wrote(&self, took: Option<usize>) {
        if !self.on() {
            return;
        }
        if let Some(took) = took {
            self.blocked.store(0, Ordering::Relaxed);
            self.written.fetch_add(took as u64, Ordering::Relaxed);
        } else if self.blocked.load(Ordering::Relaxed) == 0 {
            self.blocked
                .store(self.stamp(Instant::now()), Ordering::Relaxed);
        }
    }
}

/// The bytes the kernel still holds unsent on socket `fd` (Linux's `SIOCOUTQ`), if it says.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn unsent(fd: i32) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is the connection's open socket (`Watch::fd`); TIOCOUTQ writes one
    // int to the pointer given.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, std::ptr::addr_of_mut!(queued)) };
    (ok == 0).then(|| u64::try_from(queued).ok()).flatten()
}

/// Elsewhere the kernel is not asked: only a write it takes is progress.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn unsent(_fd: i32) -> Option<u64> {
    None
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

    fn wrote(&self, poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &poll {
            Poll::Pending => self.watch.socket_wrote(None),
            Poll::Ready(Ok(took)) => self.watch.socket_wrote(Some(*took)),
            Poll::Ready(Err(_)) => {}
        }
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
    /// Whether data frames longer than [`TAIL_FROM_BYTES`] end in a piece of one byte
    /// (HTTP/2), and whether the one being handed over does.
    tail: bool,
    hold_last: bool,
    watch: Arc<Watch>,
    id: u64,
    /// The request, in flight on its connection until its answer is done with (`idle`).
    _busy: Option<super::idle::Busy>,
}

impl Answer {
    /// `body` as an answer waiting for its client from now on (hyper has pulled nothing),
    /// sent over HTTP/2 if `http2`.
    pub(crate) fn new(body: Body, watch: Arc<Watch>, http2: bool) -> Self {
        let id = watch.next_id.fetch_add(1, Ordering::Relaxed);
        let answer = Self {
            body,
            rest: Bytes::new(),
            tail: http2,
            hold_last: false,
            watch,
            id,
            _busy: None,
        };
        if !answer.body.is_end_stream() {
            answer.waits(true);
        }
        answer
    }

    /// The answer, its request counted in flight on its connection until it is dropped.
    pub(crate) fn holding(mut self, busy: super::idle::Busy) -> Self {
        self._busy = Some(busy);
        self
    }

    fn waits(&self, waits: bool) {
        if !self.watch.on() {
            return;
        }
        let mut waiting = self.watch.waiting();
        let at = waiting.iter().position(|w| w.id == self.id);
        // A pull is not the client's taking (hyper pulls ahead of the window): only the
        // bytes it takes off the socket are (`Watch::stalled`).
        match (waits, at) {
            (true, Some(at)) => waiting[at].since = Instant::now(),
            (true, None) => waiting.push(Wait {
                id: self.id,
                since: Instant::now(),
            }),
            (false, Some(at)) => {
                waiting.swap_remove(at);
            }
            (false, None) => {}
        }
    }

    /// The next piece of `rest`, keeping what is over [`PIECE_BYTES`] for the next pull, and
    /// the last byte for a piece of its own if the frame holds it back.
    fn piece(&mut self) -> Bytes {
        let keep = usize::from(self.hold_last);
        let at = self
            .rest
            .len()
            .saturating_sub(keep)
            .clamp(1, PIECE_BYTES)
            .min(self.rest.len());
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
        // Every frame handed over waits until the next pull: the last too, which hyper may
        // hold until the client opens a window. hyper drops the body once it has sent it.
        if !self.rest.is_empty() {
            let piece = self.piece();
            self.waits(true);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            // Pending: the server's to make, not the client's to take; or the end.
            other => {
                self.waits(false);
                return other;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) if data.len() > PIECE_BYTES || (self.tail && data.len() > TAIL_FROM_BYTES) => {
                self.hold_last = self.tail && data.len() > TAIL_FROM_BYTES;
                self.rest = data;
                Frame::data(self.piece())
            }
            Ok(data) => Frame::data(data),
            Err(frame) => frame,
        };
        self.waits(true);
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
        watch.stalled_since(None).is_some()
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn an_answer_waits_while_it_has_bytes_and_comes_in_pieces() {
        let watch = Arc::new(Watch::new(TIMEOUT, None));
        let data = Bytes::from(vec![7u8; PIECE_BYTES * 2 + 10]);
        let mut body = Answer::new(Body::from(data.clone()), Arc::clone(&watch), false);
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
        let empty = Answer::new(Body::empty(), Arc::clone(&watch), false);
        assert!(!waits(&watch), "an empty answer never waits");
        drop(empty);
        let dropped = Answer::new(Body::from("x"), Arc::clone(&watch), false);
        assert!(waits(&watch));
        drop(dropped);
        assert!(!waits(&watch), "a dropped answer waits no more");
    }

    #[tokio::test]
    async fn an_answer_pending_on_the_server_does_not_wait_for_the_client() {
        use futures::StreamExt as _;
        let watch = Arc::new(Watch::new(TIMEOUT, None));
        let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
        let frames = rx.map(|b| Ok::<_, axum::Error>(Frame::data(b)));
        let mut body = Answer::new(
            Body::new(http_body_util::StreamBody::new(frames)),
            Arc::clone(&watch),
            true,
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
        let timeout = Duration::from_millis(300);
        let watch = Arc::new(Watch::new(timeout, None));
        let stalled = tokio::spawn({
            let watch = Arc::clone(&watch);
            async move { watch.stalled().await }
        });
        tokio::time::sleep(timeout * 2).await;
        assert!(!stalled.is_finished(), "nothing waited");
        let began = Instant::now();
        watch.socket_wrote(None);
        tokio::time::sleep(timeout / 2).await;
        watch.socket_wrote(Some(1));
        watch.socket_wrote(None);
        tokio::time::sleep(timeout * 3 / 4).await;
        assert!(!stalled.is_finished(), "a write went through in between");
        let waited = tokio::time::timeout(timeout * 2, stalled)
            .await
            .expect("stalled by then")
            .expect("task");
        assert!(waited >= timeout, "{waited:?}");
        assert!(began.elapsed() >= timeout * 3 / 2, "{:?}", began.elapsed());
    }

    #[tokio::test]
    async fn a_client_that_keeps_taking_is_not_stalled_and_chatter_is_not_taking() {
        let timeout = Duration::from_millis(300);
        let watch = Arc::new(Watch::new(timeout, None));
        let answer = Answer::new(Body::from("x"), Arc::clone(&watch), false);
        let stalled = tokio::spawn({
            let watch = Arc::clone(&watch);
            async move { watch.stalled().await }
        });
        // Another stream's bytes, 2 KiB every 50 ms: the connection moves.
        for _ in 0..20 {
            watch.socket_wrote(Some(2048));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!stalled.is_finished(), "the client kept taking");
        // A PING's answer every 50 ms is not taking.
        let quiet = Instant::now();
        while !stalled.is_finished() && quiet.elapsed() < timeout * 3 {
            watch.socket_wrote(Some(17));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = tokio::time::timeout(timeout * 3, stalled)
            .await
            .expect("chatter alone is stalled")
            .expect("task");
        assert!(waited >= timeout, "{waited:?}");
        assert!(quiet.elapsed() >= timeout, "{:?}", quiet.elapsed());
        drop(answer);
        assert!(!waits(&watch));
    }

    #[test]
    fn with_no_timeout_nothing_is_watched() {
        let watch = Arc::new(Watch::new(Duration::ZERO, None));
        let answer = Answer::new(Body::from("x"), Arc::clone(&watch), false);
        watch.socket_wrote(None);
        assert!(!waits(&watch));
        drop(answer);
    }

    #[tokio::test]
    async fn over_http2_a_frame_ends_in_a_piece_of_one_byte() {
        let watch = Arc::new(Watch::new(TIMEOUT, None));
        for (len, expected) in [
            (3000, vec![2999, 1]),
            (PIECE_BYTES * 2 + 10, vec![PIECE_BYTES, PIECE_BYTES, 9, 1]),
            (TAIL_FROM_BYTES, vec![TAIL_FROM_BYTES]),
        ] {
            let data = Bytes::from(vec![1u8; len]);
            let mut body = Answer::new(Body::from(data), Arc::clone(&watch), true);
            let mut pieces = Vec::new();
            while let Some(frame) = body.frame().await {
                pieces.push(frame.expect("frame").into_data().expect("data").len());
                if !pieces.is_empty() && pieces.iter().sum::<usize>() < len {
                    assert!(waits(&watch), "{len}: bytes left wait");
                }
            }
            assert_eq!(pieces, expected, "{len}");
        }
    }
}
