//! Talking to the store about one model's objects: HEAD (conditional on the last ETag), listing
//! a prefix (every key checked before it becomes a path), and downloading one object as one
//! stream, pinned to the version seen by HEAD (`if_match` on its ETag) and hashed while it is
//! written (no second pass). [`ObjectFetch`] is the one value that names an object to fetch;
//! ranged downloads (`parts`) take the same value. Retrying is `retry`'s.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kiln::Digest;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::disk::write_error;
use crate::error::{AgentError, Result};
use crate::metrics::AgentMetrics;
use crate::redact;
use crate::retry::classify;
use crate::writer::DiskWriter;

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

/// One object to fetch: where it is, which version of it (the metadata HEAD saw), and whose
/// it is (the model and URL that errors, logs and metrics name; the URL is redacted wherever
/// it is shown).
#[derive(Clone, Copy)]
pub(crate) struct ObjectFetch<'a> {
    /// The store.
    pub(crate) store: &'a dyn ObjectStore,
    /// The object's path in the store.
    pub(crate) location: &'a StorePath,
    /// Its metadata: size, ETag and version id every GET is pinned to.
    pub(crate) meta: &'a ObjectMeta,
    /// The model it belongs to.
    pub(crate) model: &'a str,
    /// Its URL (for errors and logs; redacted there).
    pub(crate) url: &'a str,
    /// Where bytes and progress are counted.
    pub(crate) metrics: &'a AgentMetrics,
}

impl ObjectFetch<'_> {
    /// The object's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.meta.size
    }

    /// What a failed store call means for this object.
    pub(crate) fn fail(&self, e: object_store::Error) -> AgentError {
        classify(e, self.model, self.url)
    }

    /// A transient store error about this object (the server broke the protocol mid-way).
    pub(crate) fn broken(&self, detail: String) -> AgentError {
        AgentError::Store {
            model: self.model.to_owned(),
            url: redact::url(self.url),
            detail,
            transient: true,
        }
    }

    /// A GET of `range` (the whole object with `None`), pinned to the version `meta` describes
    /// (its ETag and version id), so every byte of a download, or of all its parts, comes
    /// from one version of the object.
    pub(crate) async fn get(&self, range: Option<std::ops::Range<u64>>) -> Result<GetResult> {
        let options = GetOptions {
            if_match: self.meta.e_tag.clone(),
            version: self.meta.version.clone(),
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        self.store
            .get_opts(self.location, options)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Streams the object into `dest`, hashing as it goes. Returns the digest and byte count.
    /// On failure the partial file is removed.
    pub(crate) async fn download(&self, dest: &Path) -> Result<(Digest, u64)> {
        let result = self.stream_to(dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn stream_to(&self, dest: &Path) -> Result<(Digest, u64)> {
        let (model, url, total) = (self.model, self.url, self.meta.size);
        let mut stream = self.get(None).await?.into_stream();
        let mut writer = DiskWriter::create(dest).map_err(|e| write_error(e, dest, model))?;
        let mut bytes = 0u64;
        let started = std::time::Instant::now();
        let (mut logged_at, mut logged_tenth) = (started, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.fail(e))?;
            let len = chunk.len() as u64;
            if bytes + len > total {
                // More than the object's size: not written (a store cannot fill the volume
                // past what was checked against the free space).
                let _ = writer.finish().await;
                return Err(self.broken(format!(
                    "the store sent more than the {total} bytes announced"
                )));
            }
            if writer.write(chunk).await.is_err() {
                // The writer stopped on an error: `finish` below reports it.
                break;
            }
            bytes += len;
            self.metrics.downloaded(model, len, bytes, total);
            // Progress lines every 10% or 5 s: readable in non-TTY container logs.
            let tenth = (bytes * 10).checked_div(total).unwrap_or(10);
            if tenth > logged_tenth || logged_at.elapsed() >= Duration::from_secs(5) {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(model, url = %redact::url(url), bytes, total, mib_per_s = format!("{:.1}", bytes as f64 / secs / 1048576.0), "download progress");
                (logged_at, logged_tenth) = (std::time::Instant::now(), tenth);
            }
        }
        writer
            .finish()
            .await
            .map_err(|e| write_error(e, dest, model))
    }
}
