//! A stream's messages within the decode budget, and within `--body-timeout-s`, as they
//! arrive.
//!
//! A unary call's one message takes its budget share before tonic reads it (`budget`). A
//! stream's messages come one after another for as long as the client keeps it open, and
//! tonic reads each whole before the service sees it; taking the share only then would let
//! every open stream hold a message (up to `--max-body-mib`) beyond the budget. So the
//! stream's request body is [`Metered`]: it reads the gRPC frame headers as the bytes pass,
//! and passes no byte of a message of [`INLINE_MAX_BYTES`] or more until that message's share
//! is taken (waiting in arrival order with every other big message; HTTP/2 flow control holds
//! the client meanwhile). The shares go, in message order, into [`Shares`], where `stream`
//! takes each with its message, to hold until it is decoded. Small messages take none, as
//! small unary messages. From its frame header (or, for a big one, from its share), a message
//! must arrive whole within `--body-timeout-s`; a stream waiting between messages waits as
//! long as the client likes, holding nothing.
//!
//! A stream sent compressed (`grpc-encoding` gzip or deflate) has each compressed message
//! taken out of the bytes here, inflated within the budget (`compressed::stream_message`,
//! the unary call's rules) and passed on framed as the uncompressed message it is; tonic,
//! not told of the coding, reads only plain messages. A message left uncompressed under the
//! coding (the frame's flag clear) passes as any other.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame};
use tokio::time::Sleep;

use super::budget::{Share, FRAME_HEADER};
use super::compressed::{self, Inflated};
use crate::http::compression::Coding;
use crate::http::decode::INLINE_MAX_BYTES;
use crate::http::idle::{Activity, Busy};
use crate::http::routes::AppState;

/// What a stream's body tells the stream: the shares its messages took as they arrived,
/// oldest first (`None` for a small message), and whether a message is being read.
#[derive(Clone, Default)]
pub(super) struct Shares(Arc<Taken>);

#[derive(Default)]
struct Taken {
    shares: Mutex<VecDeque<Option<Share>>>,
    reading: AtomicBool,
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Option<Share>>> {
        self.0
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, share: Option<Share>) {
        self.lock().push_back(share);
    }

    /// Drops every share not yet taken: the stream reads no more.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    /// The share of the oldest message not yet taken (`None` if it is small, or if none is
    /// left).
    pub(super) fn take(&self) -> Option<Share> {
        self.lock().pop_front().flatten()
    }

    /// Whether part of a message has arrived and the rest not yet (or a big message waits for
    /// its share): ending the stream now would lose it.
    pub(super) fn reading(&self) -> bool {
        self.0.reading.load(Ordering::Acquire)
    }
}

/// A share being waited for.
type Taking = Pin<Box<dyn Future<Output = Result<Share, tonic::Status>> + Send>>;

/// A compressed message being read and inflated (it holds the stream's body meanwhile).
type Inflating = Pin<Box<dyn Future<Output = Inflated> + Send>>;

/// The gRPC frame headers in a byte stream, read as the bytes pass.
#[derive(Default)]
struct Walker {
    /// Whether compressed messages are taken out (the stream has a coding kiln inflates).
    inflates: bool,
    /// The frame header being read, and how many of its bytes are in.
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Whether that header's compressed flag is set (and taken out): none of it passes.
    compressed: bool,
    /// Bytes of the current message still to pass.
    remaining: usize,
}

/// What a walk over some bytes found.
struct Step {
    /// What may pass now.
    pass: Bytes,
    /// The rest, held until the big message found is let through.
    rest: Option<Bytes>,
    /// Small messages whose headers passed, in order, before anything else found.
    small: usize,
    /// The length of a big message whose header ends `pass`.
    big: Option<usize>,
    /// The length of a compressed message whose header (not passed) ends the walk: its bytes
    /// begin `rest`, and are not walked.
    compressed: Option<usize>,
}

impl Walker {
    fn new(inflates: bool) -> Self {
        Self {
            inflates,
            ..Self::default()
        }
    }

    /// Walks `data`: stops after the header of a message of [`INLINE_MAX_BYTES`] or more, or
    /// of a compressed message to take out.
    fn walk(&mut self, data: Bytes) -> Step {
        let (mut i, mut small) = (0, 0);
        // Where the header of a compressed message starts in `data` (0 if it began in an
        // earlier chunk): nothing from there passes. The flag is the header's first byte, so
        // no byte of a compressed message's header has passed before it is known.
        let mut held_from = self.compressed.then_some(0);
        while i < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - i);
                self.remaining -= n;
                i += n;
                continue;
            }
            if self.header_len == 0 {
                self.compressed = self.inflates && data[i] == 1;
                held_from = self.compressed.then_some(i);
            }
            let n = (FRAME_HEADER - self.header_len).min(data.len() - i);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[i..i + n]);
            self.header_len += n;
            i += n;
            if self.header_len < FRAME_HEADER {
                continue;
            }
            self.header_len = 0;
            let h = self.header;
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
            let rest = (i < data.len()).then(|| data.slice(i..));
            if self.compressed {
                self.compressed = false;
                return Step {
                    pass: data.slice(..held_from.unwrap_or(0)),
                    rest,
                    small,
                    big: None,
                    compressed: Some(len),
                };
            }
            self.remaining = len;
            if len >= INLINE_MAX_BYTES {
                return Step {
                    pass: data.slice(..i),
                    rest,
                    small,
                    big: Some(len),
                    compressed: None,
                };
            }
            small += 1;
        }
        Step {
            pass: data.slice(..held_from.unwrap_or(data.len())),
            rest: None,
            small,
            big: None,
            compressed: None,
        }
    }

    /// Whether a message (or its header) is partly through.
    fn mid_message(&self) -> bool {
        self.remaining > 0 || self.header_len > 0
    }
}

/// A stream's request body, metered (see the module doc).
pub(super) struct Metered {
    inner: Body,
    state: Arc<AppState>,
    shares: Shares,
    limit: Duration,
    walker: Walker,
    /// Bytes received and not yet passed on (held while a share is waited for).
    held: Option<Bytes>,
    taking: Option<Taking>,
    /// When the message being read must have arrived.
    arrival: Option<Pin<Box<Sleep>>>,
    /// The stream's coding, when its compressed messages are inflated here.
    coding: Option<Coding>,
    /// The compressed message being read and inflated, which holds `inner` meanwhile.
    inflating: Option<Inflating>,
    /// An inflated message, to pass after its frame header.
    inflated: Option<Bytes>,
    /// The connection, when served by `kiln::http::serve`: a message being read holds it
    /// busy (`idle`), though its stream is parked.
    connection: Option<Arc<Activity>>,
    busy: Option<Busy>,
}

impl Metered {
    /// `inner` metered; its compressed messages inflated if `coding` is given (the call's
    /// `grpc-encoding` then taken out, so that tonic reads plain messages only).
    pub(super) fn new(
        inner: Body,
        state: Arc<AppState>,
        shares: Shares,
        coding: Option<Coding>,
        connection: Option<Arc<Activity>>,
    ) -> Self {
        let limit = state.config.body_read_timeout;
        Self {
            inner,
            state,
            shares,
            limit,
            walker: Walker::new(coding.is_some()),
            held: None,
            taking: None,
            arrival: None,
            coding,
            inflating: None,
            inflated: None,
            connection,
            busy: None,
        }
    }

    /// Whether a message is being read: part of it (or of its header) arrived, or it waits
    /// for its share, or is being inflated, or is not yet all passed on.
    fn reading(&self) -> bool {
        self.walker.mid_message()
            || self.held.is_some()
            || self.taking.is_some()
            || self.inflating.is_some()
            || self.inflated.is_some()
    }

    fn poll_message(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, <Self as HttpBody>::Error>>> {
        loop {
            if let Some(plain) = self.inflated.take() {
                return Poll::Ready(Some(Ok(Frame::data(plain))));
            }
            if let Some(inflating) = self.inflating.as_mut() {
                let (inner, past, inflated) = match inflating.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(done) => done,
                };
                self.inflating = None;
                self.inner = inner;
                self.held = past;
                return match inflated {
                    Ok((plain, share)) => {
                        self.shares.push(share);
                        let header = compressed::plain_header(plain.len());
                        self.inflated = Some(Bytes::from(plain));
                        Poll::Ready(Some(Ok(Frame::data(header))))
                    }
                    Err(status) => Poll::Ready(Some(Err(Box::new(status)))),
                };
            }
            if let Some(taking) = self.taking.as_mut() {
                let share = match taking.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(share) => share,
                };
                self.taking = None;
                match share {
                    // Its arrival is timed from now.
                    Ok(share) => self.shares.push(Some(share)),
                    Err(status) => return Poll::Ready(Some(Err(Box::new(status)))),
                }
            }
            if let Some(data) = self.held.take() {
                let step = self.walker.walk(data);
                for _ in 0..step.small {
                    self.shares.push(None);
                }
                self.held = step.rest;
                if let (Some(len), Some(coding)) = (step.compressed, self.coding) {
                    // Read and inflated by its own future, which holds the body meanwhile
                    // (and times the message's arrival itself).
                    let state = Arc::clone(&self.state);
                    let inner = std::mem::replace(&mut self.inner, Body::empty());
                    let rest = self.held.take();
                    self.inflating = Some(Box::pin(compressed::stream_message(
                        state, inner, rest, len, coding,
                    )));
                    self.arrival = None;
                } else if let Some(len) = step.big {
                    let state = Arc::clone(&self.state);
                    self.taking = Some(Box::pin(async move { Share::take(&state, len).await }));
                    self.arrival = None;
                } else if !self.walker.mid_message() {
                    self.arrival = None;
                }
                if !step.pass.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(step.pass))));
                }
                continue;
            }
            if self.walker.mid_message() && self.arrival.is_none() {
                let limit = self.limit;
                self.arrival = Some(Box::pin(tokio::time::sleep(limit)));
            }
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.held = Some(data);
                        continue;
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                // The start of a compressed message's header is held here, not passed: tonic
                // would see a clean end where the stream was cut inside a frame header.
                Poll::Ready(None) if self.walker.compressed => {
                    self.walker.compressed = false;
                    Poll::Ready(Some(Err(Box::new(tonic::Status::invalid_argument(
                        "the stream ended inside a message's frame header",
                    )))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match self.arrival.as_mut().map(|a| a.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => {
                        self.arrival = None;
                        Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                            format!(
                                "a stream message did not arrive within {} s",
                                self.limit.as_secs_f64()
                            ),
                        )))))
                    }
                    _ => Poll::Pending,
                },
            };
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.as_mut().poll_message(cx);
        if let (Some(connection), Poll::Ready(Some(Ok(frame)))) = (&self.connection, &polled) {
            if frame.is_data() {
                // The client sent: not quiet since a second (`idle`), though a whole message
                // arrived in one go (never half arrived).
                connection.touch();
            }
        }
        let reading = self.reading();
        self.shares.0.reading.store(reading, Ordering::Release);
        if reading != self.busy.is_some() {
            self.busy = match (&self.connection, reading) {
                (Some(connection), true) => Some(connection.enter()),
                _ => None,
            };
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `len` bytes (their content does not matter to the walk).
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&u32::try_from(len).expect("len").to_be_bytes());
        f.resize(FRAME_HEADER + len, 7);
        f
    }

    /// Walks `bytes` cut into `cut`-byte chunks, taking compressed messages out if `inflates`,
    /// letting each big message through at once: the bytes passed, and the messages seen in
    /// order (`Big(len)`, `Small`, `Compressed(len)`).
    fn walk(bytes: &[u8], cut: usize, inflates: bool) -> (Vec<u8>, Vec<Seen>) {
        let mut w = Walker::new(inflates);
        let (mut passed, mut seen) = (Vec::new(), Vec::new());
        // Bytes of a compressed message still to skip (as `stream_message` reads them).
        let mut skip = 0;
        for chunk in bytes.chunks(cut) {
            let mut data = Some(Bytes::copy_from_slice(chunk));
            while let Some(mut d) = data.take() {
                let n = skip.min(d.len());
                skip -= n;
                d = d.slice(n..);
                if d.is_empty() {
                    break;
                }
                let step = w.walk(d);
                passed.extend_from_slice(&step.pass);
                seen.extend(std::iter::repeat_n(Seen::Small, step.small));
                if let Some(len) = step.big {
                    seen.push(Seen::Big(len));
                }
                if let Some(len) = step.compressed {
                    seen.push(Seen::Compressed(len));
                    skip = len;
                }
                data = step.rest;
            }
        }
        assert!(!w.mid_message());
        assert_eq!(skip, 0);
        (passed, seen)
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Seen {
        Small,
        Big(usize),
        Compressed(usize),
    }

    /// A compressed frame of `len` bytes.
    fn packed(len: usize) -> Vec<u8> {
        let mut f = frame(len);
        f[0] = 1;
        f
    }

    #[test]
    fn headers_split_anywhere_are_found_and_only_big_messages_wait() {
        let big = INLINE_MAX_BYTES + 3;
        let stream: Vec<u8> = [frame(10), frame(big), frame(0), frame(big), frame(1)].concat();
        for cut in [1, 2, 4, 5, 7, 1000, 1 << 20] {
            for inflates in [false, true] {
                let (passed, seen) = walk(&stream, cut, inflates);
                assert_eq!(passed, stream, "cut {cut}");
                let want = [Seen::Small, Seen::Big(big), Seen::Small, Seen::Big(big)];
                assert_eq!(seen[..4], want, "cut {cut}");
                assert_eq!(seen[4..], [Seen::Small], "cut {cut}");
            }
        }
    }

    #[test]
    fn compressed_messages_are_taken_out_whole_headers_and_all() {
        let big = INLINE_MAX_BYTES + 3;
        let parts = [
            frame(10),
            packed(7),
            frame(big),
            packed(big),
            packed(0),
            frame(1),
        ];
        let stream = parts.concat();
        let plain: Vec<u8> = [&parts[0], &parts[2], &parts[5]]
            .map(|p| p.to_vec())
            .concat();
        for cut in [1, 2, 3, 5, 6, 11, 1000, 1 << 20] {
            let (passed, seen) = walk(&stream, cut, true);
            assert_eq!(passed, plain, "cut {cut}");
            let want = [
                Seen::Small,
                Seen::Compressed(7),
                Seen::Big(big),
                Seen::Compressed(big),
                Seen::Compressed(0),
                Seen::Small,
            ];
            assert_eq!(seen, want, "cut {cut}");
            // Without a coding, a compressed flag is tonic's to refuse: it passes.
            let (passed, _) = walk(&stream, cut, false);
            assert_eq!(passed, stream, "cut {cut}");
        }
    }

    #[test]
    fn a_big_header_stops_the_walk_before_its_message() {
        let big = INLINE_MAX_BYTES;
        let bytes = [frame(3), frame(big)].concat();
        let mut w = Walker::default();
        let step = w.walk(Bytes::from(bytes.clone()));
        assert_eq!(
            step.pass.len(),
            8 + FRAME_HEADER,
            "the small message and the big header"
        );
        assert_eq!(step.small, 1);
        assert_eq!(step.big, Some(big));
        assert_eq!(step.rest.map(|r| r.len()), Some(big));
        assert!(w.mid_message());
    }
}
