//! gRPC request metrics: `kiln_grpc_requests_total{service,method,code}` and
//! `kiln_grpc_request_duration_seconds{service,method}`, the gRPC door's counterpart of
//! `kiln_http_requests_total`.
//!
//! A gRPC call's outcome is not its HTTP status (always 200) but its `grpc-status`, which a
//! unary answer carries in its trailers, after the body; so the answer's body is watched to
//! its end ([`Watched`]) and the call is counted when that body is dropped: with the trailers'
//! code, the headers' (a trailers-only answer, such as a refusal before the handler), or
//! `Cancelled` if the client went away first (a unary call cancelled before its answer
//! too). Codes are named as gRPC's own libraries name them (`OK`, `InvalidArgument`,
//! `DeadlineExceeded`, ...). A method kiln does not serve is counted as `unknown`, whatever
//! its answer, so a client inventing paths cannot add series (labels come from
//! [`SERVED`], never from the request).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use tonic::Code;

use crate::http::routes::AppState;

/// The gRPC request instruments.
pub(crate) struct GrpcMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

impl GrpcMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            requests: meter
                .u64_counter("kiln_grpc_requests_total")
                .with_description("gRPC calls by service, method and gRPC status code")
                .build(),
            duration: meter
                .f64_histogram("kiln_grpc_request_duration_seconds")
                .with_unit("s")
                .with_description("gRPC call latency by service and method, to the answer's end")
                .build(),
        }
    }
}

/// Counts and times every call, once its answer has been sent (or abandoned).
pub(super) async fn record(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let (service, method) = served(request.uri().path());
    // Counted when dropped: here, as `Cancelled`, if the client goes away (hyper drops this
    // future) before the answer's headers.
    let mut call = Call {
        state,
        service,
        method,
        started: Instant::now(),
        code: None,
        ended: false,
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    call.code = grpc_code(&parts.headers);
    let watched = Watched {
        inner: body,
        call: Some(call),
    };
    Response::from_parts(parts, Body::new(watched))
}

/// The methods kiln serves, by service: every call's labels come from here.
const SERVED: &[(&str, &[&str])] = &[
    (
        "inference.GRPCInferenceService",
        &[
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStreamInfer",
            "ModelConfig",
            "ModelStatistics",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        ],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// The labels of a call of `path`: its service and method if kiln serves them, else
/// `("unknown", "unknown")`.
fn served(path: &str) -> (&'static str, &'static str) {
    let (service, method) = split_path(path);
    SERVED
        .iter()
        .find(|(s, _)| *s == service)
        .and_then(|(s, methods)| methods.iter().find(|m| **m == method).map(|m| (*s, *m)))
        .unwrap_or(("unknown", "unknown"))
}

/// `(service, method)` of a gRPC path `/package.Service/Method`.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"))
}

/// The `grpc-status` in `headers`, if any.
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// gRPC's own name for `code` (as grpc-go's and grpc-java's metrics label it).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// One call being answered.
struct Call {
    state: Arc<AppState>,
    service: &'static str,
    method: &'static str,
    started: Instant,
    code: Option<Code>,
    ended: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = match self.code {
            Some(code) => code,
            // The body ended without a status: not a gRPC answer kiln wrote.
            None if self.ended => Code::Unknown,
            None => Code::Cancelled,
        };
        let labels = [
            KeyValue::new("service", self.service),
            KeyValue::new("method", self.method),
        ];
        let metrics = &self.state.grpc;
        metrics
            .duration
            .record(self.started.elapsed().as_secs_f64(), &labels);
        let [service, method] = labels;
        metrics.requests.add(
            1,
            &[service, method, KeyValue::new("code", code_name(code))],
        );
    }
}

/// An answer's body, read through to find its trailers' `grpc-status`.
struct Watched {
    inner: Body,
    call: Option<Call>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            if let Some(call) = self.call.as_mut() {
                match frame {
                    Some(Ok(f)) => {
                        if let Some(code) = f.trailers_ref().and_then(grpc_code) {
                            call.code = Some(code);
                        }
                    }
                    Some(Err(_)) | None => call.ended = true,
                }
                if frame.is_none() {
                    // Counted at the end, not when hyper gets round to dropping the body.
                    self.call = None;
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/inference.GRPCInferenceService/ModelInfer"),
            ("inference.GRPCInferenceService", "ModelInfer")
        );
        assert_eq!(split_path("/nonsense"), ("unknown", "unknown"));
        assert_eq!(
            served("/inference.GRPCInferenceService/ModelInfer"),
            ("inference.GRPCInferenceService", "ModelInfer")
        );
        for invented in [
            "/inference.GRPCInferenceService/Nope",
            "/evil/x",
            "/grpc.health.v1.Health/ModelInfer",
            "/nonsense",
        ] {
            assert_eq!(served(invented), ("unknown", "unknown"), "{invented}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(grpc_code(&h), None);
        h.insert("grpc-status", "4".parse().expect("value"));
        assert_eq!(grpc_code(&h), Some(Code::DeadlineExceeded));
        assert_eq!(code_name(Code::DeadlineExceeded), "DeadlineExceeded");
    }

    /// Every method of the vendored proto is served, and labelled.
    #[test]
    fn every_method_of_the_proto_is_labelled() {
        let proto = include_str!("../../../proto/inference.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert_eq!(rpcs.len(), 12, "{rpcs:?}");
        for rpc in rpcs {
            let path = format!("/inference.GRPCInferenceService/{rpc}");
            assert_eq!(served(&path).1, rpc);
        }
    }
}
