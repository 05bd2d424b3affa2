//! The server's one error type and its HTTP mapping: validation → 400, unknown model → 404,
//! oversized → 413, a body coding kiln does not read → 415 with `Accept-Encoding`,
//! overloaded → 429 with `Retry-After`, not serving or shutting down → 503, deadline → 504.
//! The body is `{"error": "..."}`, as the protocol specifies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An HTTP error with the message the client sees.
#[derive(Debug)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// What was wrong and what to change.
    pub message: String,
    /// Seconds for `Retry-After` (429 only).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        use crate::ErrorKind as K;
        let status = match e.kind() {
            K::InvalidRequest => StatusCode::BAD_REQUEST,
            K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            K::Overloaded => {
                let retry_after_s = match &e {
                    crate::Error::Overloaded { retry_after, .. } => {
                        retry_after.as_secs_f64().ceil().max(1.0) as u64
                    }
                    _ => 1,
                };
                return Self {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: e.to_string(),
                    retry_after_s: Some(retry_after_s),
                };
            }
            K::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            K::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            K::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::http::protocol::InputError> for ApiError {
    fn from(e: crate::http::protocol::InputError) -> Self {
        match e {
            crate::http::protocol::InputError::Invalid(m) => Self::bad_request(m),
            crate::http::protocol::InputError::TooLarge(m) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = s.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        // kiln's one 415 is a request body in a coding it does not read; RFC 7694 has the
        // answer name the codings it does.
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            response.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(crate::http::compression::ACCEPTED),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_map_to_their_status_codes() {
        let overloaded = ApiError::from(crate::Error::Overloaded {
            model: "m".into(),
            queued_requests: 9,
            queued_bytes: 99,
            retry_after: std::time::Duration::from_millis(1200),
        });
        assert_eq!(overloaded.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(overloaded.retry_after_s, Some(2));
        let response = overloaded.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let late = ApiError::from(crate::Error::DeadlineExceeded {
            model: "m".into(),
            waited: std::time::Duration::from_millis(5),
        });
        assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
        let gone = ApiError::from(crate::Error::Unavailable {
            model: "m".into(),
            state: "draining".into(),
        });
        assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
