//! Downloading one object: pinned to the version seen by HEAD (`if_match` on its ETag),
//! streamed to a `.partial` file while it is hashed (no second pass), retried with exponential
//! backoff and full jitter on transient failures, failing fast on what retrying cannot fix.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kiln::Digest;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::config::RetrySettings;
use crate::error::{AgentError, Result};
use crate::metrics::AgentMetrics;
use crate::redact;
use crate::writer::DiskWriter;

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

/// HEAD of one object.
pub(crate) async fn head(
    store: &dyn ObjectStore,
    location: &StorePath,
    model: &str,
    url: &str,
) -> Result<ObjectMeta> {
    store
        .head(location)
        .await
        .map_err(|e| classify(e, model, url))
}

/// A HEAD conditional on the ETag seen last time (`If-None-Match`), when there is one: returns
/// the current metadata and whether the store answered 304 Not Modified (then `previous` is
/// still current and nothing else was sent).
pub(crate) async fn head_since(
    store: &dyn ObjectStore,
    location: &StorePath,
    previous: Option<&ObjectMeta>,
    model: &str,
    url: &str,
) -> Result<(ObjectMeta, bool)> {
    let Some(prev) = previous.filter(|p| p.e_tag.is_some()) else {
        return head(store, location, model, url).await.map(|m| (m, false));
    };
    let options = GetOptions {
        if_none_match: prev.e_tag.clone(),
        head: true,
        ..GetOptions::default()
    };
    match store.get_opts(location, options).await {
        Ok(got) => Ok((got.meta, false)),
        Err(object_store::Error::NotModified { .. }) => Ok((prev.clone(), true)),
        Err(e) => Err(classify(e, model, url)),
    }
}

/// Lists the objects under `prefix` as `(path relative to the prefix, metadata)`, sorted by
/// path. Object keys are not trusted as paths: a key that is not a plain relative path inside
/// the version (`..`, absolute, empty segments), that would overwrite the manifest, or that is
/// a symbolic link (`local`: the prefix's directory for `file://` sources) refuses the whole
/// listing. Zero-byte "directory marker" keys ending in `/` are skipped.
pub(crate) async fn list(
    store: &dyn ObjectStore,
    prefix: &StorePath,
    model: &str,
    url: &str,
    local: Option<&Path>,
) -> Result<Vec<(String, ObjectMeta)>> {
    let mut metas = Vec::new();
    let mut stream = store.list(Some(prefix));
    while let Some(item) = stream.next().await {
        match item {
            Ok(meta) => metas.push(meta),
            // object_store refuses keys it cannot hold as a path (`..` segments and the like).
            Err(object_store::Error::InvalidPath { source }) => {
                return Err(AgentError::UnsafeKey {
                    model: model.to_owned(),
                    url: redact::url(url),
                    key: redact::text(&source.to_string()),
                    reason: "is not a valid object path",
                })
            }
            Err(e) => return Err(classify(e, model, url)),
        }
    }
    let base = prefix.as_ref();
    let mut out = Vec::with_capacity(metas.len());
    for meta in metas {
        let key = meta.location.as_ref();
        let rel = if base.is_empty() {
            key
        } else {
            key.strip_prefix(base)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(key)
        };
        let unsafe_key = |reason| AgentError::UnsafeKey {
            model: model.to_owned(),
            url: redact::url(url),
            key: rel.to_owned(),
            reason,
        };
        if rel.ends_with('/') && meta.size == 0 {
            continue;
        }
        if !kiln::layout::is_contained_relative(rel) {
            return Err(unsafe_key("is not a relative path inside the prefix"));
        }
        if rel == kiln::layout::MANIFEST_FILE {
            return Err(unsafe_key("would replace the manifest kiln writes"));
        }
        if let Some(dir) = local {
            let mut at = dir.to_owned();
            for part in rel.split('/') {
                at.push(part);
                if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(unsafe_key("is a symbolic link"));
                }
            }
        }
        out.push((rel.to_owned(), meta));
    }
    if out.is_empty() {
        return Err(AgentError::NotFound {
            model: model.to_owned(),
            url: redact::url(url),
        });
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Streams `location` (pinned to `meta`'s ETag and version) into `dest`, hashing as it goes.
/// Returns the digest and byte count. On failure the partial file is removed.
pub(crate) async fn download(
    store: &dyn ObjectStore,
    location: &StorePath,
    meta: &ObjectMeta,
    dest: &Path,
    model: &str,
    url: &str,
    metrics: &AgentMetrics,
) -> Result<(Digest, u64)> {
    let result = stream_to(store, location, meta, dest, model, url, metrics).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

/// GET options pinned to the object version `meta` describes (its ETag and version id), so
/// every byte of a download, or of all its parts, comes from one version of the object.
pub(crate) fn pinned(meta: &ObjectMeta, range: Option<GetRange>) -> GetOptions {
    GetOptions {
        if_match: meta.e_tag.clone(),
        version: meta.version.clone(),
        range,
        ..GetOptions::default()
    }
}

async fn stream_to(
    store: &dyn ObjectStore,
    location: &StorePath,
    meta: &ObjectMeta,
    dest: &Path,
    model: &str,
    url: &str,
    metrics: &AgentMetrics,
) -> Result<(Digest, u64)> {
    let got = store
        .get_opts(location, pinned(meta, None))
        .await
        .map_err(|e| classify(e, model, url))?;
    let mut stream = got.into_stream();
    let mut writer = DiskWriter::create(dest).map_err(|e| write_error(e, dest, model))?;
    let mut bytes = 0u64;
    let started = std::time::Instant::now();
    let (mut logged_at, mut logged_tenth) = (started, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify(e, model, url))?;
        let len = chunk.len() as u64;
        if writer.write(chunk).await.is_err() {
            // The writer stopped on an error: `finish` below reports it.
            break;
        }
        bytes += len;
        metrics.downloaded(model, len, bytes, meta.size);
        // Progress lines every 10% or 5 s: readable in non-TTY container logs.
        let tenth = (bytes * 10).checked_div(meta.size).unwrap_or(10);
        if tenth > logged_tenth || logged_at.elapsed() >= Duration::from_secs(5) {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(model, url = %redact::url(url), bytes, total = meta.size, mib_per_s = format!("{:.1}", bytes as f64 / secs / 1048576.0), "download progress");
            (logged_at, logged_tenth) = (std::time::Instant::now(), tenth);
        }
    }
    writer
        .finish()
        .await
        .map_err(|e| write_error(e, dest, model))
}

/// A full disk is its own error (not a retry), everything else is I/O.
fn write_error(e: std::io::Error, dest: &Path, model: &str) -> AgentError {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        let dir = dest.parent().unwrap_or(dest).to_owned();
        let available = free_bytes(&dir).unwrap_or(0);
        AgentError::DiskFull {
            model: model.to_owned(),
            dir,
            needed: 0,
            available,
        }
    } else {
        AgentError::Io {
            path: dest.to_owned(),
            source: e,
        }
    }
}

/// Free bytes on the filesystem holding `dir` (for unprivileged writers).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
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
        .saturating_mul(1u64 << (n - 1).min(20))
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
