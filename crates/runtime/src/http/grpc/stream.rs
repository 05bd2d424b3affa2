//! `ModelStreamInfer`: inference over one bidirectional stream, as Triton serves it for models
//! that are not decoupled — what `tritonclient.grpc`'s `start_stream` and
//! `async_stream_infer` (and `perf_analyzer --streaming`) call.
//!
//! Each request read from the stream takes the unary call's path
//! ([`service::infer_message`]): the same decode, budget share, limits, deadline, priority and
//! errors. Its answer goes back on the stream as soon as it is ready, so the requests of one
//! stream run (and batch) together and the client matches answers by their `id`. A request
//! that fails is answered with its `error_message`, and the stream goes on, as Triton does.
//!
//! Bounds, so one stream cannot take the server:
//! - At most [`IN_FLIGHT`] of a stream's requests are in the server at once. The next message
//!   is read only when one of them has been answered and its answer handed to the stream (a
//!   bounded channel): a client sending faster than it reads stalls its own stream.
//! - A message of 64 KiB or more waits for its share of the decode budget before the next
//!   message is read, and holds it until it is answered, as a unary call's does.
//! - The stream's `grpc-timeout`, if the client set one, is a deadline for every request on
//!   it (with each request's own `timeout` parameter, whichever is earlier).
//! - Compressed streams are not served: tonic answers UNIMPLEMENTED, since kiln inflates
//!   messages itself, within the budget, only for unary calls (`compressed`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use super::budget::Share;
use super::message::ModelInferMessage;
use super::pb;
use super::service;
use crate::http::decode::INLINE_MAX_BYTES;
use crate::http::routes::AppState;

/// The most requests of one stream in the server at once.
pub(super) const IN_FLIGHT: usize = 64;

/// Answers handed over but not yet taken by the stream.
const ANSWERS_WAITING: usize = 4;

/// The answers of a stream, in the order they are ready.
pub(super) type Responses =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

/// Serves the requests of `inbound` until the client closes it (or goes away), each within
/// `deadline` if one is set; their answers.
pub(super) fn serve(
    state: Arc<AppState>,
    mut inbound: tonic::Streaming<ModelInferMessage>,
    deadline: Option<Instant>,
) -> Responses {
    // Answers wait here only briefly (tonic takes them as HTTP/2 lets it); one waiting to be
    // handed over keeps its request's slot, so a client that stops reading holds at most
    // `IN_FLIGHT` answers and this few more.
    let (tx, rx) = mpsc::channel(ANSWERS_WAITING);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let next = tokio::select! {
                next = inbound.message() => next,
                () = tx.closed() => break,
            };
            let message = match next {
                Ok(Some(message)) => message,
                // The client has sent all its requests: the answers still due go on.
                Ok(None) => break,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            };
            let share = if message.len() >= INLINE_MAX_BYTES {
                match Share::take(&state, message.len()).await {
                    Ok(share) => Some(share),
                    Err(status) => {
                        if tx.send(Ok(failed(&status))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let (state, tx) = (Arc::clone(&state), tx.clone());
            tokio::spawn(async move {
                // Run as a task of its own, so that even a request whose handling panicked
                // is answered: a client waits for every request it sent.
                let run = tokio::spawn(async move {
                    service::infer_message(&state, message, share, timeout).await
                });
                let answer = match run.await {
                    Ok(Ok(response)) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    Ok(Err(status)) => failed(&status),
                    Err(e) => failed(&Status::internal(format!("the request failed: {e}"))),
                };
                // A client gone away takes no answer.
                let _ = tx.send(Ok(answer)).await;
                drop(slot);
            });
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|answer| (answer, rx))
    }))
}

/// A request's failure as Triton reports it on a stream: its message, no response.
fn failed(status: &Status) -> pb::ModelStreamInferResponse {
    pb::ModelStreamInferResponse {
        error_message: status.message().to_owned(),
        infer_response: None,
    }
}
