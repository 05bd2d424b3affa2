//! One error rule for both protocols: the server's [`ApiError`] (what REST answers) mapped to
//! the gRPC code a client expects, and the client's `grpc-timeout` read as the request's
//! deadline, so a gRPC deadline ends as kiln's `DEADLINE_EXCEEDED`, not a dropped call.

use std::time::Duration;

use axum::http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::http::error::ApiError;

/// The gRPC code for an HTTP status of the server's error rule.
pub fn code(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::FailedPrecondition,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        501 => Code::Unimplemented,
        _ => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = code(e.status);
        match e.retry_after_s {
            // Overload: RESOURCE_EXHAUSTED with google.rpc.RetryInfo, gRPC's Retry-After.
            Some(s) => Status::with_error_details(
                code,
                e.message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(s))),
            ),
            None => Status::new(code, e.message),
        }
    }
}

/// The deadline a gRPC client set (`grpc-timeout`: up to 8 digits and a unit, `H`, `M`, `S`,
/// `m`, `u` or `n`).
///
/// # Errors
/// A malformed value (INVALID_ARGUMENT): a client that meant a deadline must not get none.
pub fn timeout(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(raw) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad =
        || Status::invalid_argument("grpc-timeout must be 1-8 digits and a unit (H M S m u n)");
    let raw = raw.to_str().map_err(|_| bad())?;
    if raw.len() < 2 || raw.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
        .ok_or_else(bad)?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", value.parse().expect("ascii"));
        m
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_refuse_garbage() {
        assert_eq!(
            timeout(&with("250m")).ok(),
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(
            timeout(&with("2S")).ok(),
            Some(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            timeout(&with("1H")).ok(),
            Some(Some(Duration::from_secs(3600)))
        );
        assert_eq!(
            timeout(&with("99999999n")).ok(),
            Some(Some(Duration::from_nanos(99_999_999)))
        );
        assert_eq!(
            timeout(&tonic::metadata::MetadataMap::new()).ok(),
            Some(None)
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "+1S"] {
            assert!(timeout(&with(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_map_to_the_codes_clients_expect() {
        for (http, grpc) in [
            (400, Code::InvalidArgument),
            (404, Code::NotFound),
            (413, Code::ResourceExhausted),
            (429, Code::ResourceExhausted),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (500, Code::Internal),
        ] {
            assert_eq!(
                code(StatusCode::from_u16(http).expect("status")),
                grpc,
                "{http}"
            );
        }
        let overloaded = ApiError::from(crate::Error::Overloaded {
            model: "m".into(),
            queued_requests: 9,
            queued_bytes: 99,
            retry_after: Duration::from_millis(1200),
        });
        let status = Status::from(overloaded);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
    }
}
