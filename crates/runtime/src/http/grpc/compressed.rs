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
    let limit = state.config.max_body_bytes;
    let Some(first) = head.get(FRAME_HEADER..) else {
        return Err(tonic::Status::invalid_argument(
            "the request ended inside its message's frame header",
        ));
    };
    let len = message_len(head);
    if len > limit {
        return Err(tonic::Status::resource_exhausted(format!(
            "compressed message of {len} bytes is over the {limit}-byte limit"
        )));
    }
    let too_long = || {
        tonic::Status::invalid_argument(format!(
            "the request holds more than the {len} bytes its message's frame header declares"
        ))
    };
    // A big message's share is taken before it is read (its inflated size is unknown: the
    // most it may be); it is read into one buffer of its declared size.
    let mut share = None;
    if len >= INLINE_MAX_BYTES {
        share = Some(Share::take(state, limit).await?);
    }
    if first.len() > len {
        return Err(too_long());
    }
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(first);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.into_inner().downcast::<Late>() {
            Ok(late) => tonic::Status::deadline_exceeded(late.to_string()),
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
    // REST's mapping: 413 is RESOURCE_EXHAUSTED, 400 INVALID_ARGUMENT.
    let status = |e: Inflate| tonic::Status::from(ApiError::from(e));
    let plain = match coding.inflate_small(&message, limit).map_err(status)? {
        Some(plain) => plain,
        None => {
            let held = match &share {
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
    // Held from here until the call is answered: the inflated message's share, as the same
    // message sent plain holds, not the most it might have inflated to.
    if let Some(share) = share.as_mut() {
        share.shrink(plain.len());
    }
    parts.headers.remove(ENCODING);
    let plain_len = u32::try_from(plain.len())
        .map_err(|_| status(Inflate::TooLarge { limit }))?
        .to_be_bytes();
    let header =
        Bytes::copy_from_slice(&[0, plain_len[0], plain_len[1], plain_len[2], plain_len[3]]);
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
        vec![Ok(header), Ok(Bytes::from(plain))];
    Ok((Body::from_stream(futures::stream::iter(chunks)), share))
}
