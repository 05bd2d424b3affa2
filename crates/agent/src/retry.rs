//! What a failed store call means and when to try it again: the retry settings, the
//! classification of `object_store` errors into fail-fast and transient ones, and the retry
//! loop with exponential backoff and full jitter. One place, so every download path (one
//! stream, ranged parts, listing, HEAD) retries alike.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{AgentError, Result};
use crate::metrics::AgentMetrics;
use crate::redact;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts per file before giving up (≥ 1). Default 5.
    pub max_attempts: u32,
    /// First backoff, ms. Default 200.
    pub initial_backoff_ms: u64,
    /// Largest backoff, ms. Default 10000.
    pub max_backoff_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

/// Maps an object-store failure to what it means for the agent.
pub(crate) fn classify(e: object_store::Error, model: &str, url: &str) -> AgentError {
    use object_store::Error as E;
    let (model, url) = (model.to_owned(), redact::url(url));
    match e {
        E::NotFound { .. } => AgentError::NotFound { model, url },
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            AgentError::Denied {
                model,
                url,
                detail: redact::text(&source.to_string()),
            }
        }
        E::Precondition { .. } | E::NotModified { .. } => AgentError::Changed { model, url },
        E::Generic { source, .. } => AgentError::Store {
            model,
            url,
            detail: redact::text(&source.to_string()),
            transient: true,
        },
        other => AgentError::Store {
            model,
            url,
            detail: redact::text(&other.to_string()),
            transient: false,
        },
    }
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or attempts run out;
/// sleeps an exponential backoff with full jitter in between.
pub(crate) async fn with_retries<T, F, Fut>(
    settings: &RetrySettings,
    model: &str,
    metrics: &AgentMetrics,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && n < settings.max_attempts => {
                metrics.retry(model, &e);
                let delay = backoff(settings, n);
                tracing::warn!(model, attempt = n, error = %e, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Full-jitter backoff for attempt `n` (1-based): uniform in `[0, min(max, initial·2^(n-1))]`.
pub(crate) fn backoff(settings: &RetrySettings, n: u32) -> Duration {
    let cap = settings
        .initial_backoff_ms
        .saturating_mul(1u64 << n.saturating_sub(1).min(20))
        .min(settings.max_backoff_ms);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(n) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(if cap == 0 { 0 } else { x % (cap + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        let s = RetrySettings {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        for n in 1..=10 {
            let cap = (100u64 << (n - 1)).min(1000);
            for _ in 0..50 {
                assert!(backoff(&s, n) <= Duration::from_millis(cap), "attempt {n}");
            }
        }
    }

    #[test]
    fn store_errors_map_to_fail_fast_or_retry() {
        let nf = classify(
            object_store::Error::NotFound {
                path: "p".into(),
                source: "x".into(),
            },
            "m",
            "s3://b/p?sig=1",
        );
        assert!(matches!(&nf, AgentError::NotFound { url, .. } if !url.contains("sig=1")));
        assert!(!nf.is_transient());
        let denied = classify(
            object_store::Error::PermissionDenied {
                path: "p".into(),
                source: "403".into(),
            },
            "m",
            "s3://b/p",
        );
        assert!(!denied.is_transient());
        let generic = classify(
            object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
            "m",
            "s3://b/p",
        );
        assert!(generic.is_transient());
    }
}
