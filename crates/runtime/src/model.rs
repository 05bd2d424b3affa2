//! A verified, loaded model and the single-request inference call.
//!
//! Loading reads the file once, hashes exactly the bytes it hands to ONNX Runtime
//! (`commit_from_memory`), and refuses on a mismatch (external data files the same way, see
//! `external.rs`); then it registers the requested
//! execution provider under the fallback policy, reads the signature, and reports where the
//! graph really runs. [`Model::run`] takes `&mut self` because an `ort` session does: a model
//! belongs to one worker thread (the batcher runs one per instance).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use crate::checksum::{read_and_hash, Checksum, Digest};
use crate::config::{ModelOptions, OptimizationLevel, SessionConfig};
use crate::device::{self, Device, Fallback, Provider, ProviderReport, ReportSource};
use crate::error::{Error, Result};
use crate::external::{self, ExternalFile};
use crate::manifest::Manifest;
use crate::metadata::ModelMetadata;
use crate::runtime::Runtime;
use crate::tensor::{with_element_type, with_slice, Tensor};

/// A request's or response's named tensors.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Finding a tensor by name in [`NamedTensors`] (`outputs.by_name("scores")`).
pub trait ByName {
    /// The tensor named `name`, if any.
    fn by_name(&self, name: &str) -> Option<&Tensor>;

    /// Takes the tensor named `name` out, if any (no copy; the others keep their order).
    fn take_by_name(&mut self, name: &str) -> Option<Tensor>;
}

impl ByName for NamedTensors {
    fn by_name(&self, name: &str) -> Option<&Tensor> {
        self.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    fn take_by_name(&mut self, name: &str) -> Option<Tensor> {
        let i = self.iter().position(|(n, _)| n == name)?;
        Some(self.remove(i).1)
    }
}

/// A loaded model with one ONNX Runtime session.
pub struct Model {
    session: Session,
    /// The verified external data ONNX Runtime was given from memory; declared after the
    /// session so it outlives it.
    _external: Vec<Arc<[u8]>>,
    metadata: ModelMetadata,
    provider: ProviderReport,
    path: PathBuf,
    digest: Digest,
    verified: bool,
    max_input_elements: usize,
    /// Per output (in `metadata.outputs`' order), the sequence of maps it is, served as a
    /// tensor (`zipmap`), or `None` for a tensor.
    map_outputs: Vec<Option<crate::zipmap::MapSequence>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.metadata.name)
            .field("path", &self.path)
            .field("digest", &self.digest)
            .field("provider", &self.provider.provider)
            .finish()
    }
}

impl Model {
    /// Loads and verifies the model at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for bad options; [`Error::ChecksumRequired`],
    /// [`Error::InvalidManifest`], [`Error::SizeMismatch`] or [`Error::ChecksumMismatch`] when
    /// verification fails; [`Error::Io`] if the file cannot be read; [`Error::InvalidModel`]
    /// when ONNX Runtime rejects the bytes; [`Error::ProviderUnavailable`] when CUDA cannot be
    /// used and the policy forbids the CPU; [`Error::UnsupportedModel`] for inputs or outputs
    /// kiln cannot serve.
    pub fn load(runtime: &Runtime, path: impl AsRef<Path>, options: &ModelOptions) -> Result<Self> {
        let mut models = Self::load_many(runtime, path, options, 1)?;
        models.pop().ok_or_else(|| Error::InvalidConfig {
            field: "instances",
            reason: "no session opened".into(),
        })
    }

    /// Reads and verifies the model once and opens `count` independent sessions on its bytes
    /// (one per batcher instance).
    ///
    /// # Errors
    /// As [`Model::load`]; `count` of 0 is [`Error::InvalidConfig`].
    pub fn load_many(
        runtime: &Runtime,
        path: impl AsRef<Path>,
        options: &ModelOptions,
        count: usize,
    ) -> Result<Vec<Self>> {
        let path = path.as_ref();
        if count == 0 {
            return Err(Error::InvalidConfig {
                field: "instances",
                reason: "must be at least 1".into(),
            });
        }
        options.validate()?;
        let started = Instant::now();
        let name = match &options.name {
            Some(n) => n.clone(),
            None => path
                .file_stem()
                .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned()),
        };
        let (expected, manifest) = expected_digest(path, &options.checksum)?;
        if let Some((_, Some(size))) = expected {
            let actual = std::fs::metadata(path)
                .map_err(|source| Error::Io {
                    path: path.to_owned(),
                    source,
                })?
                .len();
            if actual != size {
                return Err(Error::SizeMismatch {
                    path: path.to_owned(),
                    expected: size,
                    actual,
                });
            }
        }
        let (bytes, digest) = read_and_hash(path)?;
        match expected {
            Some((want, _)) if want != digest => {
                return Err(Error::ChecksumMismatch {
                    path: path.to_owned(),
                    expected: want,
                    actual: digest,
                })
            }
            Some(_) => {}
            None => {
                tracing::warn!(model = %name, path = %path.display(), sha256 = %digest, "checksum verification skipped (Checksum::Skip)")
            }
        }

        let external::Scanned {
            files: external,
            mut unreadable,
        } = external::load(
            path,
            &bytes,
            &options.checksum,
            &options.external_data,
            manifest.as_ref(),
        )?;
        // Label files are read once the outputs they must name are known (the first session),
        // each checked against its pin there or the load fails.
        let label_files = crate::labels::find(path, &options.external_data, manifest.as_ref())?;
        // A signed directory: every signed file the loader does not read is checked too.
        if let (Checksum::Signature(_), Some(signed)) = (&options.checksum, &manifest) {
            crate::signing::dir::check_unread(
                path,
                signed,
                external
                    .iter()
                    .map(|f| f.location.as_str())
                    .chain(label_files.iter().map(String::as_str)),
            )?;
        }

        let mut models: Vec<Self> = Vec::with_capacity(count);
        for _ in 0..count {
            let (session, requested_cuda, fallback_reason) =
                open_session(runtime, &name, path, &bytes, &external, options)?;
            // ONNX Runtime took bytes kiln could not scan for external data references.
            if let Some(e) = unreadable.take() {
                return Err(e);
            }
            let mut metadata = ModelMetadata::from_session(&name, &session)?;
            let map_outputs: Vec<_> = metadata
                .outputs
                .iter()
                .map(|info| {
                    session
                        .outputs()
                        .iter()
                        .find(|o| o.name() == info.name)
                        .and_then(|o| crate::zipmap::MapSequence::of(o.dtype()))
                })
                .collect();
            metadata.labels = match models.first() {
                Some(first) => first.metadata.labels.clone(),
                None => {
                    let outputs: Vec<&str> =
                        metadata.outputs.iter().map(|o| o.name.as_str()).collect();
                    let mut labels = crate::labels::load(
                        path,
                        &label_files,
                        &outputs,
                        &options.checksum,
                        &options.external_data,
                        manifest.as_ref(),
                    )?;
                    // A classifier's ZipMap names its own classes; a label file still wins.
                    // Only a model with such an output has its bytes scanned for them.
                    let zipmapped = |output: &str| {
                        metadata
                            .outputs
                            .iter()
                            .zip(&map_outputs)
                            .any(|(o, m)| m.is_some() && o.name == output)
                    };
                    if map_outputs.iter().any(Option::is_some) {
                        for (output, classes) in crate::zipmap::classes(&bytes) {
                            if zipmapped(&output) && !labels.contains_key(&output) {
                                if let Some(l) = crate::labels::from_classes(&classes) {
                                    labels.insert(output, std::sync::Arc::new(l));
                                }
                            }
                        }
                    }
                    labels
                }
            };
            let provider = report(
                runtime,
                &session,
                options.device,
                requested_cuda,
                fallback_reason,
            );
            models.push(Self {
                map_outputs,
                session,
                _external: external.iter().map(|f| Arc::clone(&f.bytes)).collect(),
                metadata,
                provider,
                path: path.to_owned(),
                digest,
                verified: expected.is_some(),
                max_input_elements: options.max_input_elements,
            });
        }
        drop(bytes);
        tracing::info!(
            model = %name,
            path = %path.display(),
            sha256 = %digest,
            provider = %models[0].provider.provider,
            sessions = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(models)
    }

    /// The model's signature.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// Where the model runs.
    pub fn provider(&self) -> &ProviderReport {
        &self.provider
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the bytes loaded.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether the digest was checked against an expected one (false only with
    /// [`Checksum::Skip`]).
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// Validates a request without running it; returns its rows (see
    /// [`ModelMetadata::validate`]).
    ///
    /// # Errors
    /// As [`ModelMetadata::validate`].
    pub fn validate(&self, inputs: &[(String, Tensor)]) -> Result<usize> {
        self.metadata.validate(inputs, self.max_input_elements)
    }

    /// Validates and runs one request; returns every output, in graph order.
    ///
    /// # Errors
    /// A validation error (see [`ModelMetadata::validate`]) before anything runs, or
    /// [`Error::Inference`] if ONNX Runtime fails.
    pub fn run(&mut self, inputs: &[(String, Tensor)]) -> Result<NamedTensors> {
        self.validate(inputs)?;
        self.run_validated(inputs)
    }

    /// [`Model::run`] over inputs borrowed from the caller (`ndarray` views, slices): handed
    /// to ONNX Runtime where they lie, with no copy (a view not in standard layout is copied
    /// once, when it becomes a [`TensorView`](crate::TensorView); strings are copied by ONNX
    /// Runtime itself).
    ///
    /// # Errors
    /// As [`Model::run`]; [`Error::TensorString`] for a string with a NUL byte.
    pub fn run_views(
        &mut self,
        inputs: &[(String, crate::borrowed::TensorView<'_>)],
    ) -> Result<NamedTensors> {
        let scope = crate::borrowed::Scope::new();
        // SAFETY: `inputs` outlives `scope`; the lent tensors are dropped before it ends.
        let lent = unsafe { crate::borrowed::lend_all(&scope, inputs)? };
        self.run(&lent)
    }

    /// Runs inputs that were already validated (the batcher validates each request at
    /// admission; a stacked batch may legitimately exceed the per-request element cap).
    pub(crate) fn run_validated(&mut self, inputs: &[(String, Tensor)]) -> Result<NamedTensors> {
        let model = &self.metadata.name;
        let inference = |source| Error::Inference {
            model: model.clone(),
            source,
        };
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
            let value: SessionInputValue<'_> = with_slice!(
                tensor.data(),
                v => TensorRef::from_array_view((shape, v)).map_err(inference)?.into(),
                // ONNX Runtime copies strings into its own (there is no view of them).
                strings v => crate::ort_strings::to_ort(&shape, v).map_err(inference)?.into()
            );
            values.push((Cow::Borrowed(name.as_str()), value));
        }
        // Owned, each taken out and dropped once copied, so ONNX Runtime has each output's
        // memory back (for its arena, or freed) before the next is copied; a string tensor's
        // is 32 bytes an element. (`SessionOutputs::remove` hands out another reference and
        // keeps the value.)
        let mut outputs: Vec<(&str, Option<ort::value::DynValue>)> = self
            .session
            .run(values)
            .map_err(inference)?
            .into_iter()
            .map(|(name, value)| (name, Some(value)))
            .collect();
        let dims = |shape: &ort::value::Shape| -> Vec<usize> {
            shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect()
        };
        let mut out = Vec::with_capacity(self.metadata.outputs.len());
        for (info, map) in self.metadata.outputs.iter().zip(&self.map_outputs) {
            let value = outputs
                .iter_mut()
                .find(|(name, _)| *name == info.name)
                .and_then(|(_, value)| value.take())
                .ok_or_else(|| {
                    inference(ort::Error::new(format!(
                        "ONNX Runtime returned no output {:?}",
                        info.name
                    )))
                })?;
            if let Some(map) = map {
                let tensor = map
                    .to_tensor(value)
                    .map_err(|m| inference(ort::Error::new(m)))?;
                out.push((info.name.clone(), tensor));
                continue;
            }
            let tensor = with_element_type!(info.element_type, T => {
                let (shape, data) = value.try_extract_tensor::<T>().map_err(inference)?;
                Tensor::new(dims(shape), data.to_vec())?
            }, strings => {
                let (shape, data) = crate::ort_strings::from_ort(&value).map_err(inference)?;
                Tensor::new(dims(shape), data)?
            });
            out.push((info.name.clone(), tensor));
        }
        Ok(out)
    }
}

/// A pinned digest and, from a manifest, the size.
type Pinned = (Digest, Option<u64>);

/// The digest to check and, from a manifest, the size (`None` when waived); and the manifest
/// it came from, which also pins the model's external data.
fn expected_digest(path: &Path, checksum: &Checksum) -> Result<(Option<Pinned>, Option<Manifest>)> {
    match checksum {
        Checksum::Sha256(d) => Ok((Some((*d, None)), None)),
        Checksum::Skip => Ok((None, None)),
        Checksum::Manifest | Checksum::Signature(_) => {
            let required = |reason: String| Error::ChecksumRequired {
                path: path.to_owned(),
                reason,
            };
            let dir = crate::layout::model_dir(path);
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (manifest_path, manifest) = match checksum {
                Checksum::Signature(check) => (
                    check.bundle.clone(),
                    crate::signing::dir::signed_manifest(path, check)?,
                ),
                _ => Manifest::read_in(dir)?.ok_or_else(|| {
                    required(format!(
                        "no {} in {}",
                        crate::layout::MANIFEST_FILE,
                        dir.display()
                    ))
                })?,
            };
            let entry = manifest.file(&file).ok_or_else(|| {
                required(format!(
                    "{} does not list {file:?}",
                    manifest_path.display()
                ))
            })?;
            let pinned = (entry.sha256, Some(entry.size));
            Ok((Some(pinned), Some(manifest)))
        }
    }
}

/// Builds the session, registering CUDA when asked. Returns the session, the CUDA device that
/// registered (if any), and why CUDA is not in use when it was asked for.
fn open_session(
    runtime: &Runtime,
    name: &str,
    path: &Path,
    bytes: &[u8],
    external: &[ExternalFile],
    options: &ModelOptions,
) -> Result<(Session, Option<i32>, Option<String>)> {
    let cuda_id = match options.device {
        Device::Cpu => None,
        Device::Cuda { device_id } => Some(device_id),
        Device::Auto => Some(0),
    };
    let may_fall_back = matches!(options.device, Device::Auto) || options.fallback == Fallback::Cpu;
    let invalid = |source| Error::InvalidModel {
        path: path.to_owned(),
        source,
    };

    let mut fallback_reason = None;
    if let Some(device_id) = cuda_id {
        let builder = base_builder(runtime, &options.session).map_err(invalid)?;
        match register_cuda(builder, device_id, options.session.cuda_tf32) {
            Ok(builder) => {
                let session = commit(builder, bytes, external).map_err(invalid)?;
                return Ok((session, Some(device_id), None));
            }
            Err(reason) if may_fall_back => {
                tracing::warn!(model = name, device = %options.device, %reason, "CUDA unavailable; falling back to the CPU");
                fallback_reason = Some(reason);
            }
            Err(reason) => {
                return Err(Error::ProviderUnavailable {
                    model: name.to_owned(),
                    provider: format!("CUDA:{device_id}"),
                    reason,
                })
            }
        }
    }
    let builder = base_builder(runtime, &options.session).map_err(invalid)?;
    let session = commit(builder, bytes, external).map_err(invalid)?;
    Ok((session, None, fallback_reason))
}

/// Without the `cuda` feature the CUDA execution provider is not compiled in.
#[cfg(not(feature = "cuda"))]
fn register_cuda(
    _builder: ort::session::builder::SessionBuilder,
    _device_id: i32,
    _tf32: Option<bool>,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    Err("kiln was built without its `cuda` feature (enable it: it is on by default)".to_owned())
}

#[cfg(feature = "cuda")]
fn register_cuda(
    builder: ort::session::builder::SessionBuilder,
    device_id: i32,
    tf32: Option<bool>,
) -> std::result::Result<ort::session::builder::SessionBuilder, String> {
    use ort::ep::{self, ExecutionProvider as _};
    if !ep::CUDA::is_available().unwrap_or(false) {
        return Err("this ONNX Runtime build has no CUDA execution provider (use the onnxruntime-gpu library)".to_owned());
    }
    let mut cuda = ep::CUDA::default().with_device_id(device_id);
    if let Some(tf32) = tf32 {
        cuda = cuda.with_tf32(tf32);
    }
    builder
        .with_execution_providers([cuda.build().error_on_failure()])
        .map_err(|e| e.to_string())
}

fn commit(
    mut builder: ort::session::builder::SessionBuilder,
    bytes: &[u8],
    external: &[ExternalFile],
) -> ort::Result<Session> {
    for file in external {
        builder = builder
            .with_external_initializer_file_in_memory(&file.location, Arc::clone(&file.bytes))?;
    }
    builder.commit_from_memory(bytes)
}

fn base_builder(
    runtime: &Runtime,
    cfg: &SessionConfig,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    use ort::session::builder::GraphOptimizationLevel as L;
    let level = match cfg.optimization_level {
        OptimizationLevel::Disable => L::Disable,
        OptimizationLevel::Basic => L::Level1,
        OptimizationLevel::Extended => L::Level2,
        OptimizationLevel::All => L::All,
    };
    let mut b = Session::builder(runtime.environment())?.with_optimization_level(level)?;
    if cfg.intra_op_threads > 0 {
        b = b.with_intra_threads(cfg.intra_op_threads)?;
    }
    if cfg.inter_op_threads > 0 {
        b = b.with_inter_threads(cfg.inter_op_threads)?;
    }
    if cfg.parallel_execution {
        b = b.with_parallel_execution(true)?;
    }
    if let Some(spin) = cfg.intra_op_spinning {
        b = b.with_intra_op_spinning(spin)?;
    }
    if let Some(spin) = cfg.inter_op_spinning {
        b = b.with_inter_op_spinning(spin)?;
    }
    if cfg.disable_cpu_fallback {
        b = b.with_disable_cpu_fallback()?;
    }
    if runtime.library().minor >= device::ASSIGNMENT_MIN_MINOR {
        b = b.with_config_entry(device::RECORD_ASSIGNMENT_KEY, "1")?;
    }
    Ok(b)
}

fn report(
    runtime: &Runtime,
    session: &Session,
    requested: Device,
    cuda: Option<i32>,
    mut fallback_reason: Option<String>,
) -> ProviderReport {
    let registered = cuda.map_or(Provider::Cpu, |device_id| Provider::Cuda { device_id });
    let (provider, nodes, source) = match device::graph_assignment(runtime, session) {
        Some(nodes) => (
            device::dominant(&nodes, cuda.unwrap_or(0)),
            nodes,
            ReportSource::GraphAssignment,
        ),
        None => (registered.clone(), Vec::new(), ReportSource::Registration),
    };
    if registered != Provider::Cpu && provider == Provider::Cpu && fallback_reason.is_none() {
        fallback_reason =
            Some("CUDA registered, but ONNX Runtime assigned no node to it".to_owned());
    }
    ProviderReport {
        requested,
        provider,
        nodes,
        source,
        fallback_reason,
    }
}
