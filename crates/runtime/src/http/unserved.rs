//! What a client asking for something kiln does not serve is told, in either protocol.
//!
//! Triton's clients call extensions kiln does not implement (shared memory, logging, trace:
//! `GET /v2` does not list them) and any HTTP client can get a path or method wrong. axum
//! answered those with an empty 404 or 405, which `tritonclient.http` reports as "client
//! received an empty response from the server"; tonic answered Triton's extra gRPC methods
//! UNIMPLEMENTED with no message. Each now gets the v2 error body (REST) or a `grpc-message`
//! (gRPC) saying what is not served and what to do instead, written once here for both.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// A Triton extension kiln does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extension {
    SystemSharedMemory,
    CudaSharedMemory,
    Logging,
    Trace,
}

impl Extension {
    /// The extension a REST path belongs to.
    fn of_path(path: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v2/systemsharedmemory") {
            Some(Self::SystemSharedMemory)
        } else if under("/v2/cudasharedmemory") {
            Some(Self::CudaSharedMemory)
        } else if path == "/v2/logging" {
            Some(Self::Logging)
        } else if path == "/v2/trace/setting"
            || (path.starts_with("/v2/models/") && path.ends_with("/trace/setting"))
        {
            Some(Self::Trace)
        } else {
            None
        }
    }

    /// The extension a gRPC method of `inference.GRPCInferenceService` belongs to.
    fn of_method(method: &str) -> Option<Self> {
        match method {
            "SystemSharedMemoryStatus"
            | "SystemSharedMemoryRegister"
            | "SystemSharedMemoryUnregister" => Some(Self::SystemSharedMemory),
            "CudaSharedMemoryStatus"
            | "CudaSharedMemoryRegister"
            | "CudaSharedMemoryUnregister" => Some(Self::CudaSharedMemory),
            "LogSettings" => Some(Self::Logging),
            "TraceSetting" => Some(Self::Trace),
            _ => None,
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Self::SystemSharedMemory => {
                "kiln does not implement Triton's system shared memory extension (`GET /v2` \
                 lists the extensions served): send the tensors in the request, as raw \
                 contents (gRPC) or binary tensor data (REST)"
            }
            Self::CudaSharedMemory => {
                "kiln does not implement Triton's CUDA shared memory extension (`GET /v2` \
                 lists the extensions served): send the tensors in the request, as raw \
                 contents (gRPC) or binary tensor data (REST)"
            }
            Self::Logging => {
                "kiln does not implement Triton's logging extension: the log level is \
                 RUST_LOG's and the format --log-format's, both set at start-up"
            }
            Self::Trace => {
                "kiln does not implement Triton's trace extension: request counts and latency \
                 histograms are served at /metrics"
            }
        }
    }
}

/// The REST answer to a path no route serves: 501 for a Triton extension kiln does not
/// implement, else 404 naming the method and path.
pub(crate) async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    match Extension::of_path(uri.path()) {
        Some(e) => ApiError::new(StatusCode::NOT_IMPLEMENTED, e.explain()).into_response(),
        None => ApiError::not_found(format!(
            "no route for {method} {}: the v2 protocol is served under /v2 (`GET /v2` lists \
             its extensions), KServe's v1 under /v1, metrics at /metrics",
            shortened(uri.path())
        ))
        .into_response(),
    }
}

/// REST middleware: axum's own 405 (a route asked with a method it does not take) has no
/// body; it gets the v2 error body naming the method and path (and keeps any `Allow`). Any
/// other 4xx not in JSON (axum's own rejections, in plain text: a path that is not UTF-8,
/// `GET /v2/models/%FF/ready`) gets the v2 error body with its text: `tritonclient.http`
/// parses every error body as JSON, and raised `JSONDecodeError` instead of its own
/// exception.
pub(crate) async fn explain_refusals(request: Request, next: Next) -> Response {
    // Both are cheap to keep (the path is shared bytes); the text is made for a 405 only.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let response = next.run(request).await;
    let content_type = response.headers().get(axum::http::header::CONTENT_TYPE);
    let json = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status().is_client_error()
        && response.status() != StatusCode::METHOD_NOT_ALLOWED
        && !json
    {
        let status = response.status();
        let text = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("refused").to_owned()
        } else {
            text.trim().to_owned()
        };
        return ApiError::new(status, message).into_response();
    }
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || content_type.is_some() {
        return response;
    }
    let allow = response
        .headers()
        .get(axum::http::header::ALLOW)
        .filter(|v| !v.is_empty())
        .cloned();
    let mut answer = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", shortened(uri.path())),
    )
    .into_response();
    if let Some(allow) = allow {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    answer
}

/// At most 200 bytes of a client's path, for a message (whole, it could make an answer's
/// headers too long for the client).
fn shortened(path: &str) -> &str {
    let mut end = path.len().min(200);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// gRPC middleware: an UNIMPLEMENTED answer without a message (a method no service has)
/// gets one, naming the method and, for Triton's extensions, what to do instead.
pub(crate) async fn explain_unimplemented(request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let unimplemented = headers.get("grpc-status").is_some_and(|v| v == "12");
    let silent = headers.get("grpc-message").is_none_or(|v| v.is_empty());
    if unimplemented && silent {
        let method = uri.path().rsplit('/').next().unwrap_or_default();
        let message = match Extension::of_method(method) {
            Some(e) => e.explain().to_owned(),
            None => format!(
                "{} is not served: kiln serves inference.GRPCInferenceService (KServe v2) \
                 and grpc.health.v1.Health",
                shortened(uri.path())
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
    }
    response
}

/// `grpc-message`'s percent-encoding (the gRPC HTTP/2 spec): printable ASCII but `%` as is,
/// every other byte `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_extension_by_path_and_by_method() {
        for (path, e) in [
            (
                "/v2/systemsharedmemory/region/r/register",
                Extension::SystemSharedMemory,
            ),
            (
                "/v2/systemsharedmemory/status",
                Extension::SystemSharedMemory,
            ),
            ("/v2/cudasharedmemory/status/", Extension::CudaSharedMemory),
            ("/v2/logging", Extension::Logging),
            ("/v2/trace/setting", Extension::Trace),
            ("/v2/models/m/trace/setting", Extension::Trace),
        ] {
            assert_eq!(Extension::of_path(path), Some(e), "{path}");
        }
        assert_eq!(Extension::of_path("/v2/models/m/infer"), None);
        assert_eq!(Extension::of_path("/v2/systemsharedmemoryx"), None);
        assert_eq!(shortened(&"é".repeat(150)).len(), 200);
        assert_eq!(
            Extension::of_method("CudaSharedMemoryRegister"),
            Some(Extension::CudaSharedMemory)
        );
        assert_eq!(Extension::of_method("ModelInfer"), None);
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a%b é"), "a%25b %C3%A9");
    }
}
