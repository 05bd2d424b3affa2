//! The one inference path of both protocols. REST (`routes`) and gRPC (`grpc`) differ only in
//! how a request's tensors arrive and how the answer is written; finding the model, checking
//! the version, the deadline, running, choosing the outputs asked for (and classifying them,
//! `classify`) and logging a failure are here, once, so the two cannot drift apart.

use std::sync::Arc;
use std::time::Duration;

use crate::labels::ClassLabels;
use crate::{NamedTensors, Tensor};

use crate::http::classify;
use crate::http::error::ApiError;
use crate::http::json_fields::Classes;
use crate::http::models::find;
use crate::http::routes::AppState;

/// One inference call, decoded from either protocol.
pub(crate) struct Call<'a> {
    /// The model's name.
    pub(crate) model: &'a str,
    /// The version asked for, if one was (it must be the one serving).
    pub(crate) version: Option<&'a str>,
    /// Input tensors.
    pub(crate) inputs: NamedTensors,
    /// Outputs asked for; every output when empty.
    pub(crate) outputs: Vec<Wanted>,
    /// The client's deadline ([`deadline`]), if it set one.
    pub(crate) timeout: Option<Duration>,
    /// The request's `priority` parameter, Triton's numbering ([`level`]).
    pub(crate) priority: Option<u64>,
}

/// An output a call asks for.
pub(crate) struct Wanted {
    /// Its name.
    pub(crate) name: String,
    /// Its `classification` parameter: its top classes instead of its values
    /// ([`classify::top_k`]).
    pub(crate) classes: Option<Classes>,
}

/// A request's deadline: the earlier of the transport's (`kiln-timeout-ms`, gRPC's
/// `grpc-timeout`) and the request's own `timeout` parameter, in microseconds, 0 for none
/// (Triton's schedule-policy parameter, which `tritonclient`'s `infer(timeout=…)` sends).
pub(crate) fn deadline(transport: Option<Duration>, timeout_us: Option<u64>) -> Option<Duration> {
    let parameter = timeout_us.filter(|&us| us > 0).map(Duration::from_micros);
    match (transport, parameter) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The queue level (0 the highest) of a request whose `priority` parameter is `priority`, for
/// a model with `levels` priority levels. Triton's rule: 1 is the highest level and
/// `levels` the lowest; 0, no parameter, or a number past the lowest level is the default
/// level, which in kiln is the highest (a client lowers its own requests, as batch jobs do).
pub(crate) fn level(priority: Option<u64>, levels: usize) -> usize {
    match priority.and_then(|p| usize::try_from(p).ok()) {
        Some(p) if (1..=levels).contains(&p) => p - 1,
        _ => 0,
    }
}

/// What answered a call.
pub(crate) struct Answer {
    /// The version that served the call (the one that ran it, even if another was swapped
    /// in meanwhile).
    pub(crate) version: String,
    /// The outputs asked for, in the model's order.
    pub(crate) outputs: NamedTensors,
    /// The signature of the version that served the call.
    pub(crate) metadata: Arc<crate::ModelMetadata>,
}

/// Runs `call` on its model. Inference is served while the server drains (readiness is false
/// then, so no new traffic is routed here, but requests already routed are answered): only
/// the listener closing ends it.
///
/// # Errors
/// Unknown model or version (404), a version not serving (503), the runtime's errors mapped
/// as [`ApiError::from`] does, an unknown output asked for (400).
pub(crate) async fn run(s: &AppState, call: Call<'_>) -> Result<Answer, ApiError> {
    // The version asked for is checked as the request is queued (`infer_at`), not here too.
    let handle = find(s, call.model, None)?;
    // What is asked of the outputs is checked before the model runs, against the serving
    // version (and again after, against the version that ran, in case of a swap).
    if !call.outputs.is_empty() {
        let unknown = handle.with_metadata(|m| {
            call.outputs
                .iter()
                .find(|w| !m.outputs.iter().any(|o| o.name == w.name))
                .map(|w| {
                    (
                        w.name.clone(),
                        m.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
                    )
                })
        });
        if let Some(Some((name, names))) = unknown {
            return Err(unknown_output(&name, &names));
        }
        if let Some(w) = call
            .outputs
            .iter()
            .find(|w| matches!(w.classes, Some(Classes::Invalid)))
        {
            return Err(invalid_classes(&w.name));
        }
    }
    let mut request = crate::InferRequest::new(call.inputs);
    if let Some(timeout) = call.timeout {
        request = request.with_timeout(timeout);
    }
    if call.priority.is_some_and(|p| p > 1) {
        let levels = handle.priority_levels().unwrap_or(1);
        request = request.with_priority(level(call.priority, levels));
    }
    // A version asked for that is not the one serving (a swap may come at any moment) is
    // answered 404, never by another version.
    let crate::Answered {
        outputs,
        version,
        metadata,
    } = handle.infer_at(request, call.version).await?;
    if let Some(unknown) = call
        .outputs
        .iter()
        .find(|w| !outputs.iter().any(|(n, _)| *n == w.name))
    {
        let names: Vec<String> = outputs.iter().map(|(n, _)| n.clone()).collect();
        return Err(unknown_output(&unknown.name, &names));
    }
    let mut answered = Vec::with_capacity(outputs.len());
    for (name, tensor) in outputs {
        let wanted = call.outputs.iter().find(|w| w.name == name);
        if !call.outputs.is_empty() && wanted.is_none() {
            continue;
        }
        let tensor = match wanted.and_then(|w| w.classes) {
            None | Some(Classes::Count(0)) => tensor,
            Some(Classes::Count(k)) => {
                let labels = metadata.labels.get(&name).cloned();
                classes(s, &name, tensor, k, metadata.batch_dim, labels).await?
            }
            Some(Classes::Invalid) => return Err(invalid_classes(&name)),
        };
        answered.push((name, tensor));
    }
    Ok(Answer {
        version: version.to_string(),
        outputs: answered,
        metadata,
    })
}

/// An output asked for that the model does not have (400).
fn unknown_output(name: &str, names: &[String]) -> ApiError {
    ApiError::bad_request(format!(
        "unknown output `{name}`; the outputs are {names:?}"
    ))
}

/// An output's `classification` that is not a whole number of classes (400).
fn invalid_classes(name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "output `{name}`: `classification` must be a whole number of classes"
    ))
}

/// The top `k` classes of output `name`'s `tensor` ([`classify::top_k`]), named by `labels`
/// where the version has them, ranked on a decode thread when the output is big: ranking
/// reads every element.
///
/// # Errors
/// 400 with what cannot be classified.
async fn classes(
    s: &AppState,
    name: &str,
    tensor: Tensor,
    k: u64,
    batched: bool,
    labels: Option<Arc<ClassLabels>>,
) -> Result<Tensor, ApiError> {
    let refused = {
        let name = name.to_owned();
        move |m: String| ApiError::bad_request(format!("output `{name}`: {m}"))
    };
    // The decoder's rule for bodies: under the inline size here, bigger on a decode thread.
    if tensor.byte_len() < crate::http::decode::INLINE_MAX_BYTES {
        return classify::top_k(&tensor, k, batched, labels.as_deref()).map_err(refused);
    }
    s.decoder
        .off_workers(move || {
            classify::top_k(&tensor, k, batched, labels.as_deref()).map_err(refused)
        })
        .await?
}

/// One log line for a failed inference request: client errors (4xx) at debug, server-side
/// ones (5xx: not serving, deadline, a model that failed) at warn (an overload's 429s are
/// counted in the metrics, not logged above debug: a flood must not flood the log too), with the model, version and
/// request id, so a failure can be found without turning every request's logging on.
pub(crate) fn log_failure(
    protocol: &'static str,
    model: &str,
    version: Option<&str>,
    id: Option<&str>,
    error: &ApiError,
) {
    let code = error.status.as_u16();
    let version = version.unwrap_or("");
    let id = id.unwrap_or("");
    if error.status.is_server_error() {
        tracing::warn!(protocol, model, version, id, code, error = %error.message, "inference request failed");
    } else {
        tracing::debug!(protocol, model, version, id, code, error = %error.message, "inference request refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_priorities_map_to_queue_levels() {
        assert_eq!(level(None, 2), 0);
        assert_eq!(level(Some(0), 2), 0, "0 is the default level");
        assert_eq!(level(Some(1), 2), 0, "1 is the highest");
        assert_eq!(level(Some(2), 2), 1);
        assert_eq!(level(Some(3), 2), 0, "past the lowest: the default level");
        assert_eq!(level(Some(u64::MAX), 16), 0);
        assert_eq!(level(Some(16), 16), 15);
        assert_eq!(level(Some(2), 1), 0);
    }

    #[test]
    fn the_deadline_is_the_earlier_of_the_transport_and_the_timeout_parameter() {
        let ms = Duration::from_millis;
        assert_eq!(deadline(None, None), None);
        assert_eq!(deadline(None, Some(0)), None, "0 is no timeout");
        assert_eq!(
            deadline(None, Some(1500)),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(deadline(Some(ms(5)), None), Some(ms(5)));
        assert_eq!(deadline(Some(ms(5)), Some(2000)), Some(ms(2)));
        assert_eq!(deadline(Some(ms(1)), Some(2000)), Some(ms(1)));
        assert_eq!(deadline(Some(ms(1)), Some(0)), Some(ms(1)));
    }
}
