//! gRPC messages sent compressed (`grpc-encoding: gzip` or `deflate`, the frame's compressed
//! flag set), as `tritonclient.grpc` sends them with `compression_algorithm`, inflated before
//! tonic reads the call.
//!
//! tonic inflates what it is told to accept, but on the tokio worker that reads the call and
//! outside the decode budget: a 32 KiB gzip message can inflate to 32 MiB. So the message is
//! inflated here, by [`crate::http::compression`] with the REST bodies' rules — to at most
//! the message limit, inline when it stays under the inline size, else on a decode thread
//! holding a whole message limit's share of the budget while it inflates, then its inflated
//! size's until the call is answered (as the same message sent plain) — and
//! handed to tonic as the uncompressed message it would have made of it. Other codings are
//! left to tonic, which answers `UNIMPLEMENTED` naming the ones it accepts.
//!
//! A unary call's one message is inflated by [`inflate`]; each compressed message of a
//! stream, as it arrives, by [`stream_message`] (for `metered`, which frames it anew), under
//! the same rules and with the same [`inflate_message`].

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::budget::{message_len, Late, Share, Timed, FRAME_HEADER};
use crate::http::compression::{Coding, Inflate};
use crate::http::decode::INLINE_MAX_BYTES;
use crate::http::error::ApiError;
use crate::http::routes::AppState;

/// The header naming a gRPC message's coding.
pub(super) const ENCODING: &str = "grpc-encoding";

/// The coding of the call's messages, if kiln inflates it (gzip, deflate).
pub(super) fn coding(headers: &HeaderMap) -> Option<Coding> {
    let name = headers.get(ENCODING)?.to_str().ok()?;
    Coding::parse(name).ok().flatten()
}

/// The call's first message (`body`, its frame header already read into `head`), inflated
/// and framed as an uncompressed message, with `grpc-encoding` taken out of `parts`; and the
/// budget share it holds, if big (held by the inflate too until it is done, even if the call
/// is cancelled meanwhile).
///
/// # Errors
/// The status to answer: `INVALID_ARGUMENT` for a message that is not what its coding says
/// or a body that is not one whole message, `RESOURCE_EXHAUSTED` past the message limit,
/// `DEADLINE_EXCEEDED` if it did not arrive in time, `CANCELLED` if the body failed.
pub(super) async fn inflate(
    state: &AppState,
    parts: &mut Parts,
    mut body: Timed,
    head: &[u8],
    coding: Coding,
) -> Result<(Body, Option<Share>), tonic::Status> {
    use http_body_util::BodyExt as _;
    let Some(first) = head.get(FRAME_HEADER..) else {
        return Err(tonic::Status::invalid_argument(
            "the request ended inside its message's frame header",
        ));
    };
    let len = message_len(head);
    let too_long = || {
        tonic::Status::invalid_argument(format!(
            "the request holds more than the {len} bytes its message's frame header declares"
        ))
    };
    // It is read into one buffer of its declared size, in the whole time to arrive from
    // its share.
    let mut share = reserve(state, len).await?;
    if share.is_some() {
        body.restart();
    }
    if first.len() > len {
        return Err(too_long());
    }
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(first);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.into_inner().downcast::<tonic::Status>() {
            Ok(late) => *late,
            Err(e) => tonic::Status::cancelled(format!("reading the request: {e}")),
        })?;
        if let Ok(data) = frame.into_data() {
            if message.len() + data.len() > len {
                return Err(too_long());
            }
            message.extend_from_slice(&data);
        }
    }
    if message.len() != len {
        return Err(tonic::Status::invalid_argument(format!(
            "the request's message holds {} bytes, its frame header says {len}",
            message.len()
        )));
    }
    let plain = inflate_message(state, message, coding, &mut share).await?;
    parts.headers.remove(ENCODING);
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
        vec![Ok(plain_header(plain.len())), Ok(Bytes::from(plain))];
    Ok((Body::from_stream(futures::stream::iter(chunks)), share))
}

/// What a compressed message of `len` bytes holds before it is read: a whole message limit's
/// share of the budget if it is big (its inflated size is unknown until then: the most it may
/// be), none if it is small.
///
/// # Errors
/// `RESOURCE_EXHAUSTED` for a message over the limit, compressed; the budget's refusal.
async fn reserve(state: &AppState, len: usize) -> Result<Option<Share>, tonic::Status> {
    let limit = state.config.max_body_bytes;
    if len > limit {
        return Err(tonic::Status::resource_exhausted(format!(
            "compressed message of {len} bytes is over the {limit}-byte limit"
        )));
    }
    if len < INLINE_MAX_BYTES {
        return Ok(None);
    }
    Share::take(state, limit).await.map(Some)
}

/// `message` (a whole compressed message, read) inflated to at most the message limit:
/// inline when it stays under the inline size, else on a decode thread holding a whole
/// message limit's share of the budget (`share`, taken here if the caller took none) while it
/// inflates; then `share` is shrunk to the inflated message's size, to be held until its call
/// is answered, as the same message sent plain holds.
///
/// # Errors
/// `INVALID_ARGUMENT` for a message that is not what its coding says, `RESOURCE_EXHAUSTED`
/// past the message limit (REST's 400 and 413), or the budget's refusal.
pub(super) async fn inflate_message(
    state: &AppState,
    message: Vec<u8>,
    coding: Coding,
    share: &mut Option<Share>,
) -> Result<Vec<u8>, tonic::Status> {
    let limit = state.config.max_body_bytes;
    let status = |e: Inflate| tonic::Status::from(ApiError::from(e));
    let plain = match coding.inflate_small(&message, limit).map_err(status)? {
        Some(plain) => plain,
        None => {
            let held = match share {
                Some(held) => held.clone(),
                None => share.insert(Share::take(state, limit).await?).clone(),
            };
            state
                .decoder
                .off_workers(move || {
                    let plain = coding.inflate(&message, limit);
                    drop((message, held));
                    plain
                })
                .await
                .map_err(tonic::Status::from)?
                .map_err(status)?
        }
    };
    // A frame's length is 32 bits, whatever the limit.
    if u32::try_from(plain.len()).is_err() {
        return Err(status(Inflate::TooLarge { limit }));
    }
    if let Some(share) = share.as_mut() {
        share.shrink(plain.len());
    }
    Ok(plain)
}

/// The frame header of an uncompressed message of `len` bytes (under 4 GiB, as
/// [`inflate_message`] answers).
pub(super) fn plain_header(len: usize) -> Bytes {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    Bytes::copy_from_slice(&[0, len[0], len[1], len[2], len[3]])
}

/// What [`stream_message`] gives back: the stream's body, the bytes it read past the message,
/// and the message inflated with the budget share it holds, if any.
pub(super) type Inflated = (
    Body,
    Option<Bytes>,
    Result<(Vec<u8>, Option<Share>), tonic::Status>,
);

/// A stream's compressed message of `len` bytes (its frame header read), whose first bytes are
/// `rest` and the others still in `body`: read within `--body-timeout-s` of its budget share
/// (a whole message limit's, taken before it is read if it is big, as [`inflate`] takes it),
/// and inflated by [`inflate_message`].
pub(super) async fn stream_message(
    state: std::sync::Arc<AppState>,
    mut body: Body,
    rest: Option<Bytes>,
    len: usize,
    coding: Coding,
) -> Inflated {
    let mut share = match reserve(&state, len).await {
        Ok(share) => share,
        Err(status) => return (body, None, Err(status)),
    };
    let timeout = state.config.body_read_timeout;
    let read = tokio::time::timeout(timeout, read_exact(&mut body, rest, len)).await;
    let (message, past) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(status)) => return (body, None, Err(status)),
        Err(_) => {
            return (body, None, Err(Late(timeout.as_secs_f64()).status()));
        }
    };
    let plain = inflate_message(&state, message, coding, &mut share).await;
    (body, past, plain.map(|plain| (plain, share)))
}

/// The `len` bytes that start with `rest` and go on in `body`, and what was read past them.
///
/// # Errors
/// `INVALID_ARGUMENT` if the body ends first, `UNAVAILABLE` if it fails (not `CANCELLED`,
/// which tonic takes for the stream's clean end: the message would be lost unsaid).
async fn read_exact(
    body: &mut Body,
    mut rest: Option<Bytes>,
    len: usize,
) -> Result<(Vec<u8>, Option<Bytes>), tonic::Status> {
    use http_body_util::BodyExt as _;
    let mut message = Vec::with_capacity(len);
    while message.len() < len {
        let data = match rest.take() {
            Some(data) => data,
            None => match body.frame().await {
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                Some(Err(e)) => {
                    return Err(tonic::Status::unavailable(format!(
                        "reading the stream: {e}"
                    )))
                }
                None => {
                    return Err(tonic::Status::invalid_argument(format!(
                        "the stream ended inside a message of {len} bytes"
                    )))
                }
            },
        };
        let need = len - message.len();
        if data.len() > need {
            message.extend_from_slice(&data[..need]);
            return Ok((message, Some(data.slice(need..))));
        }
        message.extend_from_slice(&data);
    }
    // An empty message reads nothing: what was given is all past it.
    Ok((message, rest))
}
