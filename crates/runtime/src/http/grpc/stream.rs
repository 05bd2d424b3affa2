//! `ModelStreamInfer`: inference over one bidirectional stream, as Triton serves it for models
//! that are not decoupled — what `tritonclient.grpc`'s `start_stream` and
//! `async_stream_infer` (and `perf_analyzer --streaming`) call.
//!
//! Each request read from the stream takes the unary call's path
//! ([`service::infer_message`]): the same decode, budget share, limits, deadline, priority and
//! errors. The requests in flight run together (and batch together); their answers go back in
//! the order the requests came, as Triton sends them, each with
//! `triton_final_response: true` (one answer per request). A request that fails is answered
//! with its `error_message` and its id, model and version, and the stream goes on.
//!
//! One task per stream owns everything the stream started:
//! - At most [`IN_FLIGHT`] of a stream's requests are in the server at once, running or
//!   answered and waiting for the client to take the answer; the next message is read only
//!   when there is room, and answers are handed over one at a time (a bounded channel): a
//!   client sending faster than it reads stalls its own stream; so does one whose answers
//!   waiting reach `--max-body-mib` in bytes (a model's answers may be far bigger than its
//!   requests), from the next message on: a message begun is read to its end. Waiting for the client to take an answer never stops the stream reading
//!   meanwhile, so the message it reads is still timed (below) and no share is held for a
//!   client that stopped reading.
//! - A client that goes away (or cancels) takes its requests with it: the ones still running
//!   are aborted, as a dropped unary call's are, so they do not fill the model's queue.
//! - A message the stream cannot read (over `--max-body-mib`, malformed) ends the stream with
//!   its status, after the answers of the requests already in flight.
//! - Through the drain delay after SIGTERM a stream is served as unary calls are (the pod is
//!   still in its endpoints, and the client's connection stays on it: a stream ended then is
//!   reopened on the same connection, to the same pod). Once the listeners close
//!   ([`AppState::closing`]), it reads no more requests (but for one the server had already
//!   received when the stream was quiet, below): it answers those in flight, then ends with
//!   UNAVAILABLE, so the client opens a new stream elsewhere instead of holding the pod to
//!   its shutdown budget.
//! - A stream waiting only on its client (nothing running or unanswered, no message half
//!   arrived) is parked (`idle`): when every connection slot is taken and a client waits, its
//!   connection may be closed to give way (or, at shutdown, closed). The stream then reads
//!   on only to finish a message begun, and ends with UNAVAILABLE at its first such moment,
//!   as at shutdown, so the client opens a new stream: a request the server received
//!   meanwhile is answered first (one still on its way meets the usual race of a stream
//!   ended, and the client sees the stream fail).
//! - The stream's `grpc-timeout`, if the client set one, is a deadline for every request on
//!   it (with each request's own `timeout` parameter, whichever is earlier).
//! - A message of 64 KiB or more takes its share of the decode budget before any of it is
//!   read (`metered`), and holds it until answered, as a unary call's; each message must
//!   arrive within `--body-timeout-s` once it has begun.
//! - A stream sent compressed (gzip, deflate) has each compressed message inflated as it
//!   arrives, within the budget and the message limit (`metered`, `compressed`), as a unary
//!   call's message; answers go back uncompressed, as unary answers do.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, Stream};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;

use super::message::ModelInferMessage;
use super::metered::Shares;
use super::pb;
use super::service::{self, Failure};
use crate::http::idle::{self, Activity};
use crate::http::routes::AppState;

/// The most requests of one stream in the server at once.
pub(super) const IN_FLIGHT: usize = 64;

/// How often a stream waiting for its next request looks whether the listeners closed.
const DRAIN_CHECK: Duration = Duration::from_millis(250);

/// The answers of a stream, in the order of its requests.
pub(super) type Responses =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

/// Serves the requests of `inbound` until the client closes it or goes away, or the
/// listeners close, or `connection` (when served by `kiln::http::serve`) closes to give way,
/// each within `deadline` if one is set; their answers.
pub(super) fn serve(
    state: Arc<AppState>,
    inbound: tonic::Streaming<ModelInferMessage>,
    shares: Shares,
    deadline: Option<Instant>,
    connection: Option<Arc<Activity>>,
) -> Responses {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(state, inbound, shares, deadline, connection, tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|answer| (answer, rx))
    }))
}

/// What ends a stream's reading.
enum End {
    /// The client has sent all its requests.
    Closed,
    /// The stream ends with this status once the requests in flight are answered.
    Status(Status),
}

/// The stream's task: reads requests while there is room, runs each as a task of the stream's
/// own set, and hands their answers over in request order.
///
/// No wait stops another: an answer waiting for the client to take it (HTTP/2 flow control
/// holds the stream's writes while the client reads nothing) does not stop the reading, so a
/// message half sent is still cut at `--body-timeout-s` and its share goes; the answers
/// waiting count against [`IN_FLIGHT`], so a client that reads nothing stops its stream's
/// reading before the next message's share is taken. (Handing an answer over was awaited
/// alone: a client that stopped reading held the share of the message it had half sent for
/// as long as it kept the connection.)
async fn run(
    state: Arc<AppState>,
    inbound: tonic::Streaming<ModelInferMessage>,
    shares: Shares,
    deadline: Option<Instant>,
    connection: Option<Arc<Activity>>,
    tx: mpsc::Sender<Result<pb::ModelStreamInferResponse, Status>>,
) {
    // Dropped once the stream reads no more: with it the message being read, its share and
    // those of the messages read but not yet taken (`shares`).
    let mut inbound = Some(inbound);
    // Dropped (the client gone, or the task ending), the set aborts what is still running.
    let mut running = JoinSet::new();
    // Which request each task answers, by its sequence number.
    let mut seq_of = HashMap::new();
    // Answers not yet handed over, by sequence number, and their encoded bytes in all.
    let mut done: BTreeMap<u64, pb::ModelStreamInferResponse> = BTreeMap::new();
    let mut waiting = 0usize;
    let answer_limit = state.config.max_body_bytes;
    // Whether the next message is being waited for (from the last turn).
    let mut reading = false;
    let (mut read, mut sent) = (0u64, 0u64);
    let mut end = None;
    let mut drain_check = tokio::time::interval(DRAIN_CHECK);
    // Held while the stream waits only on its client; and once the connection closes to give
    // way, the stream ends at its first such moment.
    let mut parked = None;
    let mut leaving = false;
    let streams_ended = idle::streams_ended(connection.as_deref());
    tokio::pin!(streams_ended);
    loop {
        let quiet = end.is_none() && running.is_empty() && done.is_empty();
        if leaving && quiet && !shares.reading() {
            // A message already here is read and answered first, one begun waited for.
            match next_message(&mut inbound).now_or_never() {
                Some(Ok(Some(message))) => {
                    reading = false;
                    start(
                        &state,
                        &mut running,
                        &mut seq_of,
                        &shares,
                        deadline,
                        read,
                        message,
                    );
                    read += 1;
                    continue;
                }
                Some(Ok(None)) => end = Some(End::Closed),
                Some(Err(status)) => end = Some(End::Status(oversized(status))),
                None if shares.reading() => {}
                None => {
                    end = Some(End::Status(Status::unavailable(
                        if state.closing.load(Ordering::Relaxed) {
                            "the server is shutting down: open a new stream"
                        } else {
                            "the server is closing this connection: open a new stream"
                        },
                    )));
                }
            }
        }
        let quiet = quiet && end.is_none();
        if quiet != parked.is_some() {
            parked = connection.as_ref().filter(|_| quiet).map(Activity::park);
        }
        if end.is_some() {
            if inbound.take().is_some() {
                shares.clear();
            }
            if running.is_empty() && done.is_empty() {
                break;
            }
        }
        // The byte bound is looked at only between messages: a message begun is read to its
        // end (its arrival timed, its share held only that long), whatever answers land
        // meanwhile. (The count cannot grow while a message is being read.)
        // Leaving, the stream reads on only to finish a message begun (what else arrives is
        // picked up at its next quiet moment, above).
        let room = end.is_none()
            && (!leaving || shares.reading())
            && running.len() + done.len() < IN_FLIGHT
            && (reading || waiting < answer_limit);
        reading = room;
        let next_done = done.contains_key(&sent);
        // In this order when several are ready: answers first (the client waits on them),
        // then the drain, then tasks finished (their answers next), then reading.
        tokio::select! {
            biased;
            permit = tx.reserve(), if next_done => match permit {
                Ok(permit) => {
                    if let Some(answer) = done.remove(&sent) {
                        waiting -= answer.encoded_len();
                        permit.send(Ok(answer));
                    }
                    sent += 1;
                }
                // The client went away: nothing more is answered.
                Err(_) => return,
            },
            () = tx.closed() => return,
            () = &mut streams_ended, if !leaving && end.is_none() => leaving = true,
            _ = drain_check.tick(), if end.is_none() => {
                if state.closing.load(Ordering::Relaxed) {
                    end = Some(End::Status(Status::unavailable(
                        "the server is shutting down: open a new stream",
                    )));
                }
            }
            Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, answer) = match finished {
                    Ok((id, answer)) => (id, answer),
                    // A request whose handling panicked is still answered: its client waits
                    // for it.
                    Err(e) => (
                        e.id(),
                        Err(Failure::unnamed(Status::internal(format!(
                            "the request failed: {e}"
                        )))),
                    ),
                };
                if let Some(seq) = seq_of.remove(&id) {
                    let answer = answer_of(answer);
                    waiting += answer.encoded_len();
                    done.insert(seq, answer);
                }
            },
            next = next_message(&mut inbound), if room => match next {
                Ok(Some(message)) => {
                    reading = false;
                    start(&state, &mut running, &mut seq_of, &shares, deadline, read, message);
                    read += 1;
                }
                Ok(None) => end = Some(End::Closed),
                Err(status) => end = Some(End::Status(oversized(status))),
            },
        }
    }
    if let Some(End::Status(status)) = end {
        let _ = tx.send(Err(status)).await;
    }
}

/// Runs `message`, the stream's request number `seq`, as a task of `running`, with its share
/// of the decode budget, within `deadline`.
fn start(
    state: &Arc<AppState>,
    running: &mut JoinSet<Result<pb::ModelInferResponse, Failure>>,
    seq_of: &mut HashMap<tokio::task::Id, u64>,
    shares: &Shares,
    deadline: Option<Instant>,
    seq: u64,
    message: ModelInferMessage,
) {
    // Taken as the message arrived (`metered`), in message order.
    let share = shares.take();
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let state = Arc::clone(state);
    let task = running.spawn(async move {
        // Held until answered, as a unary call's: the message, then its tensors and the batch
        // stacked from them, are in memory all that time.
        let held = share.clone();
        let answer = service::infer_message(&state, message, share, timeout).await;
        drop(held);
        answer
    });
    seq_of.insert(task.id(), seq);
}

/// The stream's next request, or none once it reads no more (`inbound` dropped).
async fn next_message(
    inbound: &mut Option<tonic::Streaming<ModelInferMessage>>,
) -> Result<Option<ModelInferMessage>, Status> {
    match inbound {
        Some(inbound) => inbound.message().await,
        None => Ok(None),
    }
}

/// A request's answer on the stream: its response or its failure, marked final.
fn answer_of(answer: Result<pb::ModelInferResponse, Failure>) -> pb::ModelStreamInferResponse {
    let (error_message, mut response) = match answer {
        Ok(response) => (String::new(), response),
        // As Triton does, the failed request's id, model and version, so that the client
        // knows which request failed.
        Err(f) => (
            f.status.message().to_owned(),
            pb::ModelInferResponse {
                model_name: f.model,
                model_version: f.version,
                id: f.id,
                ..Default::default()
            },
        ),
    };
    response.parameters.insert(
        "triton_final_response".to_owned(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    pb::ModelStreamInferResponse {
        error_message,
        infer_response: Some(response),
    }
}

/// tonic's refusal of a message over the size limit (OUT_OF_RANGE) as the unary call's:
/// RESOURCE_EXHAUSTED.
fn oversized(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}
