//! gRPC messages within the same memory budget as REST bodies, and within the same time to
//! arrive.
//!
//! tonic reads a unary call's whole message into memory before the service sees it, on a
//! tokio worker, and nothing bounds how many such messages are held at once: 64 clients each
//! sending a 32 MiB `ModelInfer` would hold 2 GiB. So before tonic reads a call, [`reserve`]
//! peeks at its gRPC frame header (compressed flag and 4-byte big-endian length) and, for a
//! message of [`crate::http::decode::INLINE_MAX_BYTES`] or more, takes that many bytes' share of the
//! REST decoder's budget, waiting in arrival order. The share is held until the call is
//! answered, and by the message's decode until it is done even if the call is cancelled
//! (`Share`): the message, then the tensors made from it, are in memory all that time. Small
//! messages take no share (as small REST bodies).
//!
//! The message must also arrive within `--body-timeout-s` of the call's headers, as a REST
//! body must: a client trickling its message cannot hold a share (or a stream) forever.
//! A compressed message is inflated here first (`compressed`), under the same rules.
//! `ModelStreamInfer`'s body is metered instead (`metered`): its messages arrive for as long
//! as the stream lasts, each taking its share (and, compressed, being inflated) as it
//! arrives.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::http::routes::AppState;

/// The streaming call, whose body `reserve` meters (`metered`) instead of reserving for one
/// message.
const STREAM_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// Bytes of a gRPC frame header: a compressed flag and a big-endian `u32` length.
pub(super) const FRAME_HEADER: usize = 5;

/// Holds a big message's share of the decode budget from its arrival until its answer.
pub(super) async fn reserve(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == STREAM_PATH {
        // A stream's messages come and go for as long as the client keeps it open: each is
        // budgeted, timed and inflated as it arrives (`metered`).
        let (mut parts, body) = request.into_parts();
        let shares = super::metered::Shares::default();
        parts.extensions.insert(shares.clone());
        let coding = super::compressed::coding(&parts.headers);
        if coding.is_some() {
            parts.headers.remove(super::compressed::ENCODING);
        }
        let connection = crate::http::idle::Activity::of(&parts.extensions);
        let body = Body::new(super::metered::Metered::new(
            body,
            Arc::clone(&state),
            shares,
            coding,
            connection,
        ));
        return accepting(next.run(Request::from_parts(parts, body)).await);
    }
    let timeout = state.config.body_read_timeout;
    let (mut parts, body) = request.into_parts();
    let mut body = Timed::new(body, timeout);
    let head = match peek(&mut body).await {
        Ok(head) => head,
        Err(e) => return refused(tonic::Status::deadline_exceeded(e.to_string())),
    };
    // A compressed message is inflated here, within the budget, not by tonic on a worker.
    let coding = super::compressed::coding(&parts.headers);
    if coding.is_some() && head.first() != Some(&1) {
        // A message the client left uncompressed (gRPC's implementations do when compressing
        // would not shrink it) under a call's coding: tonic, not told of the coding, would
        // refuse the call for the header alone.
        parts.headers.remove(super::compressed::ENCODING);
    }
    let (body, share) = match (head.first(), coding) {
        (Some(1), Some(coding)) => {
            match super::compressed::inflate(&state, &mut parts, body, &head, coding).await {
                Ok(inflated) => inflated,
                Err(status) => return refused(status),
            }
        }
        _ => {
            let len = message_len(&head);
            let limit = state.config.max_body_bytes;
            if len > limit {
                // Refused for its header alone: waiting first for a share (the whole budget,
                // clamped) would hold every big call behind it for a message never read.
                return refused(tonic::Status::resource_exhausted(format!(
                    "message of {len} bytes is over the {limit}-byte limit"
                )));
            }
            let share = if len >= crate::http::decode::INLINE_MAX_BYTES {
                match Share::take(&state, len).await {
                    Ok(share) => {
                        // The time to arrive counts from the share, not from the wait for
                        // it (a REST body's, a stream message's too).
                        body.restart();
                        Some(share)
                    }
                    Err(status) => return refused(status),
                }
            } else {
                None
            };
            body.head = (!head.is_empty()).then(|| head.into());
            (Body::new(body), share)
        }
    };
    if let Some(share) = &share {
        parts.extensions.insert(share.clone());
    }
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(share);
    accepting(response)
}

/// The call refused with `status`, before tonic saw it.
fn refused(status: tonic::Status) -> Response {
    accepting(status.into_http::<Body>().into_response())
}

/// `response` telling the client the message codings kiln inflates (`grpc-accept-encoding`).
fn accepting(mut response: Response) -> Response {
    response.headers_mut().insert(
        "grpc-accept-encoding",
        axum::http::HeaderValue::from_static(crate::http::compression::ACCEPTED),
    );
    response
}

/// A big message's share of the decode budget (in the call's extensions): held here until
/// the call is answered, and by whatever decodes the message until that is done, so a call
/// cancelled mid-decode does not free the share of memory its decode goes on filling.
#[derive(Clone)]
pub(super) struct Share(Arc<tokio::sync::OwnedSemaphorePermit>);

impl Share {
    /// `len` bytes' share of the decode budget, waited for in arrival order.
    ///
    /// # Errors
    /// As [`crate::http::decode::Decoder::reserve`], as a status.
    pub(super) async fn take(state: &AppState, len: usize) -> Result<Self, tonic::Status> {
        let permit = state.decoder.reserve(len).await?;
        Ok(Self(Arc::new(permit)))
    }

    /// Gives back what the share holds beyond `len` bytes' (`decode::shrink`), when nothing
    /// else holds it now.
    pub(super) fn shrink(&mut self, len: usize) {
        if let Some(permit) = Arc::get_mut(&mut self.0) {
            crate::http::decode::shrink(permit, len);
        }
    }
}

/// The request's message did not arrive within `--body-timeout-s`: [`Timed`] fails with it
/// as a `DEADLINE_EXCEEDED` status, which tonic answers as it is (any other error of a body is
/// `UNKNOWN` to it).
#[derive(Debug, thiserror::Error)]
#[error("the request message did not arrive within {0} s")]
pub(super) struct Late(pub(super) f64);

impl Late {
    /// The status the call is answered with.
    pub(super) fn status(&self) -> tonic::Status {
        tonic::Status::deadline_exceeded(self.to_string())
    }
}

/// The declared length of the first message, from the start of the body (0 if the body
/// ended before its frame header: tonic then answers the malformed call itself).
pub(super) fn message_len(head: &[u8]) -> usize {
    match head.get(1..FRAME_HEADER) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
        None => 0,
    }
}

/// Reads until `body` has given at least a frame header's bytes (or ended), keeping them.
async fn peek(body: &mut Timed) -> Result<Vec<u8>, axum::Error> {
    use http_body_util::BodyExt as _;
    let mut head = Vec::new();
    while head.len() < FRAME_HEADER {
        match body.frame().await {
            None => break,
            Some(frame) => match frame?.into_data() {
                Ok(data) => head.extend_from_slice(&data),
                // Request trailers before any message: keep nothing, tonic sees none.
                Err(_) => break,
            },
        }
    }
    Ok(head)
}

/// A request body that fails once `deadline` passes before it has ended, with the bytes
/// [`peek`] took given back first.
pub(super) struct Timed {
    head: Option<Bytes>,
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    ended: bool,
}

impl Timed {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            head: None,
            inner,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + limit)),
            limit,
            ended: false,
        }
    }

    /// Gives the body its whole time again from now: once it holds its share of the budget.
    pub(super) fn restart(&mut self) {
        let limit = self.limit;
        self.deadline.as_mut().reset(Instant::now() + limit);
    }
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.ended = true;
                    let late = Late(self.limit.as_secs_f64());
                    Poll::Ready(Some(Err(axum::Error::new(late.status()))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(head) = &self.head {
            let extra = head.len() as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_is_read_from_the_frame_header() {
        assert_eq!(message_len(&[0, 0, 0, 1, 0, 9, 9]), 256);
        assert_eq!(message_len(&[0, 0x02, 0, 0, 0]), 32 << 20);
        assert_eq!(message_len(&[0, 0, 0]), 0, "short: tonic refuses it");
    }

    #[tokio::test]
    async fn peeked_bytes_come_back_first_and_a_silent_body_times_out() {
        use http_body_util::BodyExt as _;
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(&[0, 0])),
            Ok(Bytes::from_static(&[0, 0, 3, 7, 8])),
            Ok(Bytes::from_static(&[9])),
        ];
        let mut body = Timed::new(
            Body::from_stream(futures::stream::iter(chunks)),
            Duration::from_secs(5),
        );
        let head = peek(&mut body).await.expect("head");
        assert_eq!(message_len(&head), 3);
        body.head = Some(head.into());
        let all = body.collect().await.expect("whole").to_bytes();
        assert_eq!(&all[..], &[0, 0, 0, 0, 3, 7, 8, 9]);

        let (_tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let mut silent = Timed::new(Body::from_stream(rx), Duration::from_millis(50));
        let e = peek(&mut silent).await.expect_err("timed out");
        assert!(e.to_string().contains("did not arrive"), "{e}");
    }
}
