//! A registry repository seen as a read-only `ObjectStore` whose objects are blobs
//! (`blobs/<sha256 hex>`), so the agent's fetch, ranged-part, resume and retry code reads
//! them unchanged. [`OciStore::resolve`] reads the manifest once per sync and names the
//! layers; each blob's ETag is its digest (content-addressed: it cannot change under a
//! download). A registry that ignores `Range` is coped with (the wanted bytes are cut from
//! its full answer).

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::client::{Registry, RegistryError};
use super::manifest::{self, Layer, Parsed};

const STORE: &str = "OCI";

/// One repository of a registry, read as blobs.
#[derive(Debug)]
pub(crate) struct OciStore {
    registry: Arc<Registry>,
    /// The digest of the manifest `resolve` read last.
    resolved: std::sync::Mutex<Option<kiln::Digest>>,
    /// Whether the warning about a registry ignoring `Range` was logged.
    warned: std::sync::atomic::AtomicBool,
    /// Each layer's size as the manifest gives it (for a registry that sends no length).
    sizes: std::sync::Mutex<std::collections::HashMap<kiln::Digest, u64>>,
}

impl std::fmt::Display for OciStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OciStore({})", self.registry.reference())
    }
}

/// A registry error in `object_store`'s words (so `retry::classify` treats it like any
/// store's: transient ones are retried, a missing blob is `NotFound`, auth is `Denied`).
fn store_error(e: RegistryError, path: &str) -> object_store::Error {
    match e {
        RegistryError::Transient(_) => object_store::Error::Generic {
            store: STORE,
            source: Box::new(e),
        },
        RegistryError::NotFound(_) => object_store::Error::NotFound {
            path: path.to_owned(),
            source: Box::new(e),
        },
        RegistryError::Denied(_) => object_store::Error::Unauthenticated {
            path: path.to_owned(),
            source: Box::new(e),
        },
        RegistryError::Protocol(_) => object_store::Error::NotSupported {
            source: Box::new(e),
        },
    }
}

/// The store path of a blob.
pub(crate) fn blob_path(digest: &kiln::Digest) -> StorePath {
    StorePath::from(format!("blobs/{digest}"))
}

fn digest_of(location: &StorePath) -> object_store::Result<kiln::Digest> {
    location
        .as_ref()
        .strip_prefix("blobs/")
        .and_then(|hex| hex.parse().ok())
        .ok_or_else(|| object_store::Error::NotFound {
            path: location.to_string(),
            source: "not a blob of this repository".into(),
        })
}

pub(crate) fn meta(location: &StorePath, digest: &kiln::Digest, size: u64) -> ObjectMeta {
    ObjectMeta {
        location: location.clone(),
        last_modified: chrono::DateTime::UNIX_EPOCH,
        size,
        e_tag: Some(format!("sha256:{digest}")),
        version: None,
    }
}

impl OciStore {
    pub(crate) fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
            resolved: std::sync::Mutex::new(None),
            sizes: Default::default(),
            warned: Default::default(),
        }
    }

    fn size_of(&self, digest: &kiln::Digest) -> Option<u64> {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .copied()
    }

    /// The digest of the manifest [`OciStore::resolve`] read last.
    pub(crate) fn manifest_digest(&self) -> Option<kiln::Digest> {
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the manifest the reference names (following an index to this platform's) and
    /// returns its digest and layers.
    pub(crate) async fn resolve(&self) -> object_store::Result<(kiln::Digest, Vec<Layer>)> {
        self.registry
            .load_credentials()
            .await
            .map_err(|e| store_error(e, "docker config"))?;
        let mut reference = self.registry.reference().reference.clone();
        // An index points at a manifest; one hop (an index of indexes is refused).
        for _ in 0..2 {
            let (body, content_type, digest) = self
                .registry
                .manifest(&reference)
                .await
                .map_err(|e| store_error(e, "manifest"))?;
            match manifest::parse(&body, &content_type).map_err(|m| {
                store_error(
                    RegistryError::Protocol(format!("manifest {reference}: {m}")),
                    "manifest",
                )
            })? {
                Parsed::Layers(layers) => {
                    *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
                    self.sizes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(layers.iter().map(|l| (l.digest, l.size)));
                    return Ok((digest, layers));
                }
                Parsed::Follow(next) => reference = next,
            }
        }
        Err(store_error(
            RegistryError::Protocol("an index points at another index".into()),
            "manifest",
        ))
    }
}

#[async_trait]
impl ObjectStore for OciStore {
    async fn put_opts(
        &self,
        _: &StorePath,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only("put"))
    }

    async fn put_multipart_opts(
        &self,
        _: &StorePath,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only("put_multipart"))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let digest = digest_of(location)?;
        let want = format!("sha256:{digest}");
        if options.if_match.as_ref().is_some_and(|m| *m != want) {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: "a blob's ETag is its digest".into(),
            });
        }
        let range = match options.range {
            None => None,
            Some(GetRange::Bounded(r)) => Some(r),
            Some(_) => {
                return Err(object_store::Error::NotSupported {
                    source: "only bounded ranges of a blob are read".into(),
                })
            }
        };
        let path = location.to_string();
        let response = self
            .registry
            .blob(&digest, range.clone(), options.head)
            .await
            .map_err(|e| store_error(e, &path))?;
        let partial = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        // The object's size: Content-Range's total for a 206, else the body's length.
        let total = if partial {
            response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.parse::<u64>().ok())
        } else {
            // The header, not the body's size hint (a HEAD's body is empty).
            response
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        }
        .or_else(|| self.size_of(&digest));
        let Some(total) = total else {
            return Err(store_error(
                RegistryError::Protocol("the registry gave no blob size".into()),
                &path,
            ));
        };
        let served = match (&range, partial) {
            (Some(r), true) => {
                // The 206 must be the range asked for, to the byte.
                let given = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
                if given != Some((r.start, r.end.saturating_sub(1))) {
                    return Err(store_error(
                        RegistryError::Transient(format!(
                            "asked for bytes {}-{}, the registry answered another range",
                            r.start,
                            r.end.saturating_sub(1)
                        )),
                        &path,
                    ));
                }
                r.clone()
            }
            (Some(r), false) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(registry = %self.registry.reference().registry, "the registry ignores Range requests: each ranged part reads the blob from its start; set `transfer: stream` for its models");
                }
                r.start.min(total)..r.end.min(total)
            }
            (None, _) => 0..total,
        };
        let body: BoxStream<'static, object_store::Result<Bytes>> = if options.head {
            futures::stream::empty().boxed()
        } else {
            let stream = response.bytes_stream().map(move |chunk| {
                chunk.map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                })
            });
            if range.is_some() && !partial {
                // The registry sent the whole blob: keep only the asked range.
                cut(stream.boxed(), served.clone())
            } else {
                stream.boxed()
            }
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            meta: meta(location, &digest, total),
            range: served,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        locations.map(|_| Err(read_only("delete"))).boxed()
    }

    fn list(&self, _: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // Layers are named by the manifest (`resolve`), not listed.
        futures::stream::once(async { Err(read_only("list")) }).boxed()
    }

    async fn list_with_delimiter(&self, _: Option<&StorePath>) -> object_store::Result<ListResult> {
        Err(read_only("list_with_delimiter"))
    }

    async fn copy_opts(
        &self,
        _: &StorePath,
        _: &StorePath,
        _: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only("copy"))
    }
}

fn read_only(operation: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("an OCI source is read-only ({operation})").into(),
    }
}

/// The bytes `range` of a stream that starts at offset 0; it ends (dropping the response)
/// once the range is through.
fn cut(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    futures::stream::unfold((stream, 0u64), move |(mut inner, mut at)| {
        let range = range.clone();
        async move {
            while at < range.end {
                match inner.next().await? {
                    Err(e) => return Some((Err(e), (inner, range.end))),
                    Ok(bytes) => {
                        let (start, end) = (at, at + bytes.len() as u64);
                        at = end;
                        let (s, e) = (start.max(range.start), end.min(range.end));
                        if s < e {
                            let part = bytes.slice((s - start) as usize..(e - start) as usize);
                            return Some((Ok(part), (inner, at)));
                        }
                    }
                }
            }
            None
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_answer_is_cut_to_the_asked_range() {
        let chunks: Vec<object_store::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"0123")),
            Ok(Bytes::from_static(b"4567")),
            Ok(Bytes::from_static(b"89")),
        ];
        let got: Vec<u8> = cut(futures::stream::iter(chunks).boxed(), 3..9)
            .map(|c| c.expect("test value").to_vec())
            .concat()
            .await;
        assert_eq!(got, b"345678");
    }
}
