//! Bringing every configured model to "published": HEAD each file, decide the version, skip
//! what is already published with the right digests, otherwise check free space, download to
//! staging (hashing while downloading), verify, and publish atomically. Status per model feeds
//! the readiness endpoints.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln::signing::SignatureError;
use kiln::{Manifest, ManifestFile};
use serde::Serialize;

use crate::config::{Checked, File, Model};
use crate::disk::{self, blocking};
use crate::error::{AgentError, Result};
use crate::fetch::{self, ObjectFetch};
use crate::metrics::AgentMetrics;
use crate::parts;
use crate::publish;
use crate::redact;
use crate::retry::with_retries;
use crate::store::Source;
use crate::transfer::{self, TransferChoice};

/// Where a model is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not looked at yet.
    Pending,
    /// Downloading or verifying.
    Fetching,
    /// `current` points at a complete, verified version.
    Published,
    /// The last attempt failed (an older published version, if any, stays current).
    Failed,
}

/// A model's status, as the status endpoint shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// Phase.
    pub phase: Phase,
    /// The version `current` points at, if any.
    pub version: Option<String>,
    /// The last error (redacted), if the last attempt failed.
    pub error: Option<String>,
    /// Whether the last sync downloaded (false: it was already published).
    pub downloaded: bool,
    /// How the model's large objects travel (one stream or ranged parts) and why; absent
    /// until one at least `parallel_threshold_mib` large was downloaded.
    pub transfer: Option<TransferChoice>,
}

/// A file's store path and metadata.
type Located = (object_store::path::Path, object_store::ObjectMeta);

/// The shared status of every model.
pub type StatusMap = Arc<Mutex<BTreeMap<String, ModelStatus>>>;

/// The agent: configuration plus status.
pub struct Agent {
    config: Checked,
    status: StatusMap,
    metrics: AgentMetrics,
    /// `(model, version)` this process published or re-hashed already: later syncs (every
    /// `interval_s`) trust them instead of reading every published byte again.
    verified: Mutex<std::collections::HashSet<(String, String)>>,
    /// `(model, file)` → the metadata the store gave last time, so later polls ask
    /// conditionally (`If-None-Match` on its ETag).
    seen: Mutex<std::collections::HashMap<(String, String), object_store::ObjectMeta>>,
    /// `(model, label)` → the directory new bytes under that label were published as (a
    /// version directory is never rewritten), so later syncs find them.
    renamed: Mutex<std::collections::HashMap<(String, String), String>>,
}

impl Agent {
    /// An agent for a validated configuration; every model starts `Pending`. Staging left by a
    /// killed agent (never published, so never read) is removed.
    pub fn new(config: Checked) -> Self {
        Self::with_meter(config, &opentelemetry::global::meter("kiln-agent"))
    }

    /// [`Agent::new`], recording metrics on `meter`.
    pub fn with_meter(config: Checked, meter: &opentelemetry::metrics::Meter) -> Self {
        let staging = config.root.join(kiln::layout::STAGING_DIR);
        for e in std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            if e.file_name().to_string_lossy().starts_with("stage-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
        let removed = publish::sweep_partials(&config.root, publish::Sweep::Unconfigured(&names));
        if !removed.is_empty() {
            tracing::info!(
                ?removed,
                "partial downloads no configured model owns removed"
            );
        }
        let status = config
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    ModelStatus {
                        phase: Phase::Pending,
                        version: None,
                        error: None,
                        downloaded: false,
                        transfer: None,
                    },
                )
            })
            .collect();
        let metrics = AgentMetrics::new(meter, config.root.clone());
        Self {
            config,
            status: Arc::new(Mutex::new(status)),
            metrics,
            verified: Mutex::default(),
            seen: Mutex::default(),
            renamed: Mutex::default(),
        }
    }

    /// The status map (for the HTTP endpoints).
    pub fn status(&self) -> StatusMap {
        Arc::clone(&self.status)
    }

    /// Whether every model is published.
    pub fn ready(&self) -> bool {
        ready(&self.status)
    }

    /// Syncs every model once; returns each model's result (errors are also in the status).
    pub async fn sync_once(&self) -> Vec<(String, Result<String>)> {
        // Models sync concurrently up to `max_concurrent_models`; with `parallelism` parts each,
        // that bounds the connections to the stores. (A semaphore rather than
        // `StreamExt::buffered` over a closure: that closure's borrowed argument keeps the
        // future from being `Send`, so `kiln_agent::run` could not be spawned.)
        let permits = tokio::sync::Semaphore::new(self.config.max_concurrent_models);
        let permits = &permits;
        let mut syncs = Vec::with_capacity(self.config.models.len());
        for (i, model) in self.config.models.iter().enumerate() {
            syncs.push(async move {
                // Never closed, so a permit always comes.
                let _permit = permits.acquire().await;
                (model.name.clone(), self.sync_and_record(i, model).await)
            });
        }
        futures::future::join_all(syncs).await
    }

    /// Syncs one model and records the outcome in its status and metrics.
    async fn sync_and_record(&self, i: usize, model: &Model) -> Result<String> {
        self.set(&model.name, |s| {
            s.phase = if s.phase == Phase::Published {
                Phase::Published
            } else {
                Phase::Fetching
            };
        });
        let mut result = self.sync_model(i, model).await;
        if matches!(result, Err(AgentError::Changed { .. })) {
            // The object changed between HEAD and GET: its new metadata (a new version), not
            // another try pinned to the old ETag. Once per sync: a store changing it faster
            // than it downloads is reported, and tried again at the next poll.
            tracing::info!(model = %model.name, "the object changed during the download; reading its metadata again");
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(m, _), _| *m != model.name);
            result = self.sync_model(i, model).await;
        }
        match &result {
            Ok((version, downloaded)) => {
                tracing::info!(model = %model.name, version, downloaded, "published");
                let digest = model
                    .files
                    .first()
                    .and_then(|f| f.sha256)
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                self.metrics.published(&model.name, version, &digest);
                if *downloaded {
                    if let Some(template) = &self.config.main_load_url {
                        crate::main_server::load(template, &model.name).await;
                    }
                }
                let (version, downloaded) = (version.clone(), *downloaded);
                self.set(&model.name, move |s| {
                    s.phase = Phase::Published;
                    s.version = Some(version);
                    s.error = None;
                    s.downloaded = downloaded;
                });
            }
            Err(e) => {
                let msg = redact::text(&e.to_string());
                tracing::error!(model = %model.name, error = %msg, "sync failed");
                let (root, name) = (self.config.root.clone(), model.name.clone());
                let still = blocking(move || current_version(&root, &name))
                    .await
                    .ok()
                    .flatten();
                self.set(&model.name, move |s| {
                    s.phase = if still.is_some() {
                        Phase::Published
                    } else {
                        Phase::Failed
                    };
                    s.version = still;
                    s.error = Some(msg);
                });
            }
        }
        result.map(|(v, _)| v)
    }

    fn set(&self, model: &str, f: impl FnOnce(&mut ModelStatus)) {
        if let Some(s) = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(model)
        {
            f(s);
        }
    }

    /// The directory `version` of `model` is already published in with the right digests, if
    /// any (then it is made current and counted as a cache hit): `version` itself, or the
    /// fresh name this process published new bytes of that label under. Files are re-hashed
    /// (on a blocking thread) the first time this process sees the version (after a restart,
    /// or with a node cache mounted at the root), not on every later sync.
    async fn reuse_published(
        &self,
        model: &Model,
        version: &str,
        signer: Option<&str>,
    ) -> Result<Option<String>> {
        let root = self.config.root.clone();
        let name = self
            .renamed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(model.name.clone(), version.to_owned()))
            .cloned()
            .unwrap_or_else(|| version.to_owned());
        let key = (model.name.clone(), name.clone());
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        let (m, n, who) = (model.clone(), name.clone(), signer.map(str::to_owned));
        let reuse = blocking(move || {
            let manifest_there = root
                .join(&m.name)
                .join(&n)
                .join(kiln::layout::MANIFEST_FILE)
                .is_file();
            let reuse = (known && manifest_there)
                || publish::already_published(&root, &m, &n, who.as_deref())?;
            if reuse {
                publish::point_current(&root.join(&m.name), &n)?;
            }
            Ok::<_, AgentError>(reuse)
        })
        .await??;
        if !reuse {
            return Ok(None);
        }
        self.metrics.cache_hit(&model.name);
        self.remember(model, &name);
        Ok(Some(name))
    }

    /// Shows a transfer choice in `/status` and the metrics.
    fn record_transfer(&self, model: &str, choice: TransferChoice) {
        let rates = [
            (transfer::Mode::Stream, choice.stream_bytes_per_second),
            (transfer::Mode::Ranged, choice.ranged_bytes_per_second),
        ];
        for (mode, rate) in rates {
            if let Some(rate) = rate {
                self.metrics.transfer_rate(model, mode.name(), rate);
            }
        }
        self.set(model, move |s| s.transfer = Some(choice));
    }

    /// Removes `model`'s partial downloads but `keep`'s.
    async fn sweep(&self, model: &Model, keep: Option<&str>) {
        let (root, name, keep) = (
            self.config.root.clone(),
            model.name.clone(),
            keep.map(str::to_owned),
        );
        let removed = blocking(move || {
            let scope = publish::Sweep::Model {
                model: &name,
                keep: keep.as_deref(),
            };
            publish::sweep_partials(&root, scope)
        })
        .await
        .unwrap_or_default();
        if !removed.is_empty() {
            tracing::info!(model = %model.name, ?removed, "stale partial downloads removed");
        }
    }

    fn remember(&self, model: &Model, version: &str) {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((model.name.clone(), version.to_owned()));
    }

    /// One model: returns its version and whether it was downloaded.
    async fn sync_model(&self, i: usize, model: &Model) -> Result<(String, bool)> {
        let root = &self.config.root;
        // A configured version already published with the right digests needs nothing from
        // the store (a restart, or a node cache at the root, even with the store down). Not a
        // signed one: its bundle is verified at every sync, before anything on disk is used.
        if let (Some(v), None) = (&model.version, &model.signature) {
            if let Some(name) = self.reuse_published(model, v, None).await? {
                return Ok((name, false));
            }
        }
        let source = Source::open(model, i, &self.config.retry)?;
        let (files, metas) = self.locate(model, &source).await?;
        // A listed prefix's version covers everything listed (a signed model's bundle too, so
        // another bundle is another version).
        let version = match (
            &model.version,
            source.oci.as_ref().and_then(|o| o.manifest_digest()),
        ) {
            (Some(v), _) => v.clone(),
            // An OCI artifact's version is its manifest's digest: a moved tag is a new version.
            (None, Some(manifest)) => format!("sha256-{}", &manifest.to_string()[..16]),
            (None, None) if model.is_listed() => listing_version(&files, &metas),
            (None, None) => derive_version(&metas[0].1, model),
        };
        let signed_model;
        let (model, files, metas, signer) = match &model.signature {
            Some(signature) => {
                let (files, metas, signer) = self
                    .check_signature(model, &source, signature, files, metas)
                    .await?;
                // From here the model is its signed files with their signed digests: a version
                // already published is reused only if its files are exactly those bytes.
                signed_model = Model {
                    files: files.clone(),
                    ..model.clone()
                };
                (&signed_model, files, metas, Some(signer))
            }
            None => (model, files, metas, None),
        };
        if let Some(name) = self
            .reuse_published(model, &version, signer.as_deref())
            .await?
        {
            return Ok((name, false));
        }

        // Partials of any other version (an object that changed since) are never resumed.
        self.sweep(model, Some(&version)).await;
        // Sizes are the store's (or a manifest's) word: summed without wrapping.
        let needed = metas
            .iter()
            .fold(0u64, |sum, (_, m)| sum.saturating_add(m.size));
        let r = root.clone();
        let free =
            blocking(move || publish::staging_root(&r).map(|s| disk::free_bytes(&s))).await??;
        if let Some(available) = free {
            if available < needed.saturating_add(self.config.reserve_bytes) {
                return Err(AgentError::DiskFull {
                    model: model.name.clone(),
                    dir: root.clone(),
                    needed,
                    available,
                });
            }
        }
        // What archive layers may unpack to: the free space beyond the downloads and reserve.
        let unpack_budget = free.map_or(u64::MAX, |available| {
            available.saturating_sub(needed.saturating_add(self.config.reserve_bytes))
        });
        let (r, name, v) = (root.clone(), model.name.clone(), version.clone());
        let stage = blocking(move || publish::new_stage(&r, &name, &v)).await??;
        let result = self
            .download_all(
                model,
                &source,
                (&files, &metas),
                &stage,
                &version,
                unpack_budget,
            )
            .await;
        match result {
            Ok(mut manifest) => {
                manifest.signer = signer;
                let (r, keep) = (root.clone(), self.config.keep_versions);
                let published = blocking(move || {
                    let name = publish::publish(&r, &stage, &mut manifest)?;
                    let removed = publish::collect_garbage(&r.join(&manifest.model), keep);
                    Ok::<_, AgentError>((name, removed))
                })
                .await?;
                self.sweep(model, None).await;
                let (name, removed) = published?;
                if name != version {
                    tracing::info!(model = %model.name, label = version, version = name, "new bytes under a published version's name: published under a new name");
                    self.renamed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((model.name.clone(), version.clone()), name.clone());
                }
                self.remember(model, &name);
                if !removed.is_empty() {
                    tracing::info!(model = %model.name, ?removed, "old versions removed");
                }
                Ok((name, true))
            }
            Err(e) => {
                let _ = blocking(move || std::fs::remove_dir_all(&stage)).await;
                // What can be resumed stays; what cannot (a discarded download) goes.
                self.sweep(model, Some(&version)).await;
                Err(e)
            }
        }
    }

    /// A signed model's listing narrowed to the signed files, each with its signed digest,
    /// and the signer: the bundle is taken out of the listing, fetched and verified first.
    async fn check_signature(
        &self,
        model: &Model,
        source: &Source,
        signature: &crate::signature::Signature,
        mut files: Vec<File>,
        mut metas: Vec<Located>,
    ) -> Result<(Vec<File>, Vec<Located>, String)> {
        let refused = |e: SignatureError| crate::signature::refused(&self.metrics, &model.name, e);
        let at = files
            .iter()
            .position(|f| f.path == signature.bundle)
            .ok_or_else(|| {
                refused(SignatureError::Malformed(format!(
                    "no `{}` under the source",
                    signature.bundle
                )))
            })?;
        files.remove(at);
        let (location, meta) = metas.remove(at);
        let url = format!("{}{}", model.base, signature.bundle);
        let object = ObjectFetch {
            store: source.store.as_ref(),
            location: &location,
            meta: &meta,
            model: &model.name,
            url: &url,
            metrics: &self.metrics,
        };
        let bundle = crate::signature::fetch_bundle(object, &self.config.retry).await?;
        let signed = crate::signature::verify(bundle, signature.trust.clone())
            .await?
            .map_err(refused)?;
        let (files, metas) = crate::signature::narrow(&signed, files, metas).map_err(refused)?;
        tracing::info!(model = %model.name, signer = %signed.signer, files = files.len(), "signature verified");
        Ok((files, metas, signed.signer))
    }

    /// The files to fetch and their metadata: the configured files (a HEAD each, sizes
    /// checked), or what the prefix lists (every key checked before it becomes a path).
    async fn locate(&self, model: &Model, source: &Source) -> Result<(Vec<File>, Vec<Located>)> {
        if let Some(oci) = &source.oci {
            let url = model.base.to_string();
            let (manifest, layers) =
                with_retries(&self.config.retry, &model.name, &self.metrics, |_| async {
                    oci.resolve()
                        .await
                        .map_err(|e| crate::retry::classify(e, &model.name, &url))
                })
                .await?;
            tracing::info!(model = %model.name, manifest = %manifest, layers = layers.len(), "OCI manifest read");
            let mut files = Vec::with_capacity(layers.len());
            let mut metas = Vec::with_capacity(layers.len());
            for layer in layers {
                let location = crate::oci::store::blob_path(&layer.digest);
                let meta = crate::oci::store::meta(&location, &layer.digest, layer.size);
                metas.push((location, meta));
                // Content-addressed: the layer's digest is what its bytes must hash to.
                files.push(File {
                    path: layer.path,
                    sha256: Some(layer.digest),
                    size: Some(layer.size),
                    unpack: layer.unpack,
                });
            }
            return Ok((files, metas));
        }
        if model.is_listed() {
            let url = model.base.to_string();
            let local = if model.base.scheme() == "file" {
                model.base.to_file_path().ok()
            } else {
                None
            };
            let listed = with_retries(&self.config.retry, &model.name, &self.metrics, |_| {
                fetch::list(
                    source.store.as_ref(),
                    &source.prefix,
                    &model.name,
                    &url,
                    local.as_deref(),
                )
            })
            .await?;
            tracing::info!(model = %model.name, files = listed.len(), "prefix listed");
            let files = listed
                .iter()
                .map(|(path, meta)| File {
                    path: path.clone(),
                    sha256: None,
                    size: Some(meta.size),
                    unpack: None,
                })
                .collect();
            let metas = listed
                .into_iter()
                .map(|(_, meta)| (meta.location.clone(), meta))
                .collect();
            return Ok((files, metas));
        }
        let mut metas = Vec::with_capacity(model.files.len());
        for f in &model.files {
            let loc = source.path_of(&f.path);
            let url = format!("{}{}", model.base, f.path);
            let key = (model.name.clone(), f.path.clone());
            let previous = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            let (meta, unchanged) =
                with_retries(&self.config.retry, &model.name, &self.metrics, |_| {
                    fetch::head_since(
                        source.store.as_ref(),
                        &loc,
                        previous.as_ref(),
                        &model.name,
                        &url,
                    )
                })
                .await?;
            if unchanged {
                self.metrics.unchanged_poll(&model.name);
            }
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, meta.clone());
            if let Some(want) = f.size {
                if want != meta.size {
                    return Err(AgentError::SizeMismatch {
                        model: model.name.clone(),
                        path: f.path.clone(),
                        expected: want,
                        actual: meta.size,
                    });
                }
            }
            metas.push((loc, meta));
        }
        Ok((model.files.clone(), metas))
    }

    /// Downloads every file (and unpacks every archive layer) into `stage`; `unpack_budget`
    /// bounds the bytes archives may unpack to.
    async fn download_all(
        &self,
        model: &Model,
        source: &Source,
        (wanted, metas): (&[File], &[Located]),
        stage: &Path,
        version: &str,
        unpack_budget: u64,
    ) -> Result<Manifest> {
        let mut budget = crate::oci::unpack::Budget {
            bytes: unpack_budget,
            entries: crate::oci::unpack::MAX_ENTRIES,
        };
        let mut files = std::collections::BTreeMap::new();
        for (f, (loc, meta)) in wanted.iter().zip(metas) {
            let dest = stage.join(&f.path);
            let (root, d, name, v, path) = (
                self.config.root.clone(),
                dest.clone(),
                model.name.clone(),
                version.to_owned(),
                f.path.clone(),
            );
            let unpacked = f.unpack.is_some();
            let partial = blocking(move || {
                if let Some(dir) = d.parent().filter(|_| !unpacked) {
                    std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
                }
                publish::partial_path(&root, &name, &v, &path)
            })
            .await??;
            let url = format!("{}{}", model.base, f.path);
            let object = ObjectFetch {
                store: source.store.as_ref(),
                location: loc,
                meta,
                model: &model.name,
                url: &url,
                metrics: &self.metrics,
            };
            let started = std::time::Instant::now();
            let ranged = meta.size >= self.config.parallel_threshold && meta.size > 0;
            let record = |choice: TransferChoice| self.record_transfer(&model.name, choice);
            let (digest, size) =
                with_retries(&self.config.retry, &model.name, &self.metrics, |_| async {
                    if ranged {
                        transfer::download(object, &partial, self.config.parts, &record).await
                    } else {
                        object.download(&partial).await
                    }
                })
                .await?;
            self.metrics.file_done(&model.name, size, started.elapsed());
            if size != meta.size {
                self.metrics.verification_failure(&model.name, "size");
                let p = partial.clone();
                let _ = blocking(move || parts::discard(&p)).await;
                return Err(AgentError::SizeMismatch {
                    model: model.name.clone(),
                    path: f.path.clone(),
                    expected: meta.size,
                    actual: size,
                });
            }
            if let Some(want) = f.sha256 {
                if want != digest {
                    self.metrics.verification_failure(&model.name, "digest");
                    let p = partial.clone();
                    let _ = blocking(move || parts::discard(&p)).await;
                    return Err(AgentError::DigestMismatch {
                        model: model.name.clone(),
                        path: f.path.clone(),
                        expected: want,
                        actual: digest,
                    });
                }
            }
            if let Some(spec) = f.unpack.clone() {
                let st = stage.to_owned();
                let mut unpacked = std::mem::take(&mut files);
                let mut left = budget;
                let (result, unpacked, left) = blocking(move || {
                    let r =
                        crate::oci::unpack::unpack(&partial, &st, &spec, &mut unpacked, &mut left);
                    // The archive itself is never published; a refused one is not resumed.
                    parts::discard(&partial);
                    (r, unpacked, left)
                })
                .await?;
                (files, budget) = (unpacked, left);
                if let Err(e) = result {
                    self.metrics.verification_failure(&model.name, "archive");
                    return Err(AgentError::Archive {
                        model: model.name.clone(),
                        layer: meta.e_tag.clone().unwrap_or_default(),
                        detail: e.to_string(),
                    });
                }
                continue;
            }
            let d = dest.clone();
            blocking(move || std::fs::rename(&partial, &d))
                .await?
                .map_err(AgentError::io(&dest))?;
            files.insert(
                f.path.clone(),
                ManifestFile {
                    path: f.path.clone(),
                    sha256: digest,
                    size,
                },
            );
        }
        if wanted.iter().any(|f| f.unpack.is_some()) {
            // What archives left on disk is exactly what the manifest will list.
            let st = stage.to_owned();
            let (checked, listed) = blocking(move || {
                let r = crate::oci::unpack::check_stage(&st, &files);
                (r, files)
            })
            .await?;
            files = listed;
            if let Err(e) = checked {
                self.metrics.verification_failure(&model.name, "archive");
                return Err(AgentError::Archive {
                    model: model.name.clone(),
                    layer: "(all layers)".into(),
                    detail: e.to_string(),
                });
            }
        }
        if files.is_empty() {
            return Err(AgentError::NotFound {
                model: model.name.clone(),
                url: redact::url(model.base.as_str()),
            });
        }
        let first = &metas[0].1;
        let oci = source.oci.as_ref().and_then(|o| o.manifest_digest());
        Ok(Manifest {
            schema: kiln::manifest::SCHEMA,
            model: model.name.clone(),
            version: version.to_owned(),
            source: Some(redact::url(model.base.as_str())),
            etag: oci
                .map(|d| format!("sha256:{d}"))
                .or_else(|| first.e_tag.clone()),
            version_id: first.version.clone(),
            signer: None,
            created: publish::rfc3339_now(),
            files: files.into_values().collect(),
        })
    }
}

/// Whether every model in `status` is published.
pub fn ready(status: &StatusMap) -> bool {
    status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .all(|s| s.phase == Phase::Published)
}

/// A version label for a listed prefix: a digest of every listed path with its ETag (or size
/// and modification time), so any change under the prefix is a new version.
fn listing_version(files: &[File], metas: &[Located]) -> String {
    let mut identity = Vec::new();
    for (f, (_, meta)) in files.iter().zip(metas) {
        let tag = meta
            .e_tag
            .clone()
            .unwrap_or_else(|| format!("{}@{}", meta.size, meta.last_modified.timestamp_micros()));
        identity.extend_from_slice(format!("{}\0{tag}\n", f.path).as_bytes());
    }
    format!("l{}", &kiln::Digest::of(&identity).to_string()[..16])
}

/// The version `<root>/<model>/current` points at.
fn current_version(root: &Path, model: &str) -> Option<String> {
    let target = std::fs::read_link(root.join(model).join(kiln::layout::CURRENT_LINK)).ok()?;
    target.to_str().map(str::to_owned)
}

/// A version label from the object's version id, else its ETag, else a digest prefix; cut to
/// characters that are safe as a directory name.
fn derive_version(meta: &object_store::ObjectMeta, model: &Model) -> String {
    let raw = meta
        .version
        .clone()
        .or_else(|| meta.e_tag.clone())
        .or_else(|| {
            model
                .files
                .first()
                .and_then(|f| f.sha256)
                .map(|d| d.to_string()[..16].to_owned())
        })
        .unwrap_or_else(|| format!("{}", meta.last_modified.timestamp()));
    let clean: String = raw
        .chars()
        .filter_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                Some(c)
            } else if c == '"' {
                None
            } else {
                Some('-')
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        format!("v{clean}")
    } else {
        clean
    }
}
