//! The agent's configuration: a YAML file (fit for a ConfigMap) plus environment overrides,
//! parsed strictly (unknown fields are errors) and validated once into a checked form whose
//! errors name the field. Store options that hold credentials are never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::layout;
use kiln::Digest;
use serde::Deserialize;

use crate::error::{AgentError, Result};
use crate::redact;
pub use crate::retry::RetrySettings;
pub use crate::signature::{Signature, SignatureSpec};

/// Schemes the agent fetches from.
pub const SCHEMES: [&str; 9] = [
    "s3", "s3a", "gs", "az", "abfs", "abfss", "https", "file", "oci",
];

/// The store options an `oci://` source takes: a docker config file with the registry's
/// credentials (absent: anonymous pulls), and `allow_http` for a registry without TLS.
pub const OCI_OPTIONS: [&str; 2] = ["docker_config", "allow_http"];

/// The configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The shared model directory (the pod's `emptyDir`). Env: `KILN_AGENT_ROOT`.
    pub root: PathBuf,
    /// Address of the health and status endpoints. Default `0.0.0.0:9090`. Env: `KILN_AGENT_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Seconds between checks for new versions after the first publish; 0 = publish once, then
    /// only serve health. Default 60. Env: `KILN_AGENT_INTERVAL_S`.
    #[serde(default = "default_interval")]
    pub interval_s: u64,
    /// Free bytes to keep on the model filesystem beyond what a download needs. Default 64 MiB.
    #[serde(default = "default_reserve")]
    pub reserve_bytes: u64,
    /// Retry policy for transient failures.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Objects at least this large (MiB) are fetched in parallel ranged parts, resumable after a
    /// restart. Default 64.
    #[serde(default = "default_parallel_threshold")]
    pub parallel_threshold_mib: u64,
    /// Part size for ranged downloads, KiB. Default 16384 (16 MiB): large enough to amortise a
    /// request, small enough that a restart loses little.
    #[serde(default = "default_part_kib")]
    pub part_size_kib: u64,
    /// Parts in flight per object. Default 4. Memory use is bounded by this, not object size.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// How objects of at least `parallel_threshold_mib` travel: `auto` (default) measures, on
    /// each such download, its first part as one stream and the next `parallelism` parts as
    /// ranged GETs (stopped once they can no longer win), and continues the way that moved
    /// bytes faster on this store (ranged parts must beat one stream by 20%); `ranged` always
    /// uses `parallelism` ranged parts; `stream` always uses one stream.
    /// Every mode writes in parts with the resume journal, so each resumes after a restart.
    /// Some stores serve ranged parts far slower than one stream (moto: 21 vs 316 MiB/s),
    /// others far faster (s3s-fs: 204 vs 130 MiB/s; `benches/RESULTS.md`). The choice and both rates are shown in
    /// `/status` and `kiln_agent_transfer_throughput_bytes_per_second{mode}`.
    #[serde(default)]
    pub transfer: Transfer,
    /// Models synced at the same time. Default 2. Connections to the stores are at most this
    /// times `parallelism` (plus one per model while `transfer: auto` measures).
    #[serde(default = "default_concurrent_models")]
    pub max_concurrent_models: usize,
    /// The main container, when the agent should consult or notify it.
    #[serde(default)]
    pub main: MainServer,
    /// Published versions kept per model (the current one included); older ones nobody points
    /// at are removed after each publish. Default 2 (the current and the previous).
    #[serde(default = "default_keep")]
    pub keep_versions: usize,
    /// Where `fetch` mode writes the failure reason for Kubernetes. Default `/dev/termination-log`.
    #[serde(default = "default_termination_log")]
    pub termination_log: PathBuf,
    /// The models to publish.
    pub models: Vec<ModelSpec>,
}

fn default_listen() -> String {
    "0.0.0.0:9090".into()
}
fn default_interval() -> u64 {
    60
}
fn default_reserve() -> u64 {
    64 << 20
}
fn default_parallel_threshold() -> u64 {
    64
}
fn default_part_kib() -> u64 {
    16 << 10
}
fn default_parallelism() -> usize {
    4
}
fn default_concurrent_models() -> usize {
    2
}
fn default_keep() -> usize {
    2
}
fn default_termination_log() -> PathBuf {
    "/dev/termination-log".into()
}

/// The main container's endpoints (plain `http://` on the pod's loopback).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MainServer {
    /// If set, `/readyz` is 200 only when this URL also answers 2xx (e.g.
    /// `http://127.0.0.1:8000/v2/health/ready`), so one probe gates the pod.
    pub ready_url: Option<String>,
    /// If set, POSTed after a new version of a model is published; `{model}` is replaced by its
    /// name (e.g. `http://127.0.0.1:8000/v2/repository/models/{model}/load`).
    pub load_url: Option<String>,
}

/// How a large object is fetched (see [`AgentConfig::transfer`]).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Measure one stream against ranged parts on the first object, then use the faster.
    #[default]
    Auto,
    /// Always `parallelism` ranged GETs.
    Ranged,
    /// Always one GET streamed in order.
    Stream,
}

/// How big objects are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// Bytes per part (also the unit of the resume journal).
    pub part_size: u64,
    /// Ranged parts in flight.
    pub parallelism: usize,
    /// One stream, ranged parts, or measured.
    pub transfer: Transfer,
}

/// Whether `key` is a store option object_store accepts for `scheme` (`file` takes none).
pub(crate) fn known_option(scheme: &str, key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    match scheme {
        "s3" | "s3a" => k.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
        "gs" => k.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
        "az" | "abfs" | "abfss" => k.parse::<object_store::azure::AzureConfigKey>().is_ok(),
        "http" | "https" => k.parse::<object_store::ClientConfigKey>().is_ok(),
        "oci" => OCI_OPTIONS.contains(&k.as_str()),
        _ => false,
    }
}

/// One model to publish.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model name: the `<model>` directory.
    pub name: String,
    /// Where it comes from: one object (`s3://b/m/3/model.onnx`) or, with `files`, a prefix
    /// (`s3://b/m/3/`). A prefix without `files` (only with `verify: false`) is listed at each
    /// sync and everything under it is published; keys with `..`, absolute paths or symbolic
    /// links refuse the whole listing. Credentials never go here: use the environment or
    /// workload identity.
    pub source: String,
    /// Version label: the `<version>` directory. Default: the object's version id, else its
    /// ETag, else the first file's sha256 prefix.
    #[serde(default)]
    pub version: Option<String>,
    /// Expected sha256 of the single object (with a single-object `source`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Expected size of the single object, bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Files under the `source` prefix, each with its digest.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Set to `false` to publish without checking digests (logged as a warning). Default true.
    #[serde(default = "yes")]
    pub verify: bool,
    /// `object_store` options (endpoint, region, `allow_http`, `skip_signature`, ...). Values of
    /// keys that name a secret are redacted in every log line and error.
    #[serde(default)]
    pub store: BTreeMap<String, String>,
    /// An OpenSSF model-signing bundle under the `source` prefix and the trust root it must
    /// verify against: the bundle then lists the files and their digests (no `files`).
    #[serde(default)]
    pub signature: Option<SignatureSpec>,
}

fn yes() -> bool {
    true
}

/// Store options with secret values replaced, for `Debug`.
fn shown(store: &BTreeMap<String, String>) -> BTreeMap<&str, String> {
    store
        .iter()
        .map(|(k, v)| (k.as_str(), redact::option_value(k, v)))
        .collect()
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = shown(&self.store);
        f.debug_struct("ModelSpec")
            .field("name", &self.name)
            .field("source", &redact::url(&self.source))
            .field("version", &self.version)
            .field("files", &self.files)
            .field("verify", &self.verify)
            .field("store", &store)
            .field("signature", &self.signature)
            .finish()
    }
}

/// One file under a prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path relative to the prefix (and to the version directory).
    pub path: String,
    /// Expected sha256.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Expected size, bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

/// A validated model: URLs parsed, digests parsed, paths checked.
#[derive(Clone)]
pub struct Model {
    /// Name.
    pub name: String,
    /// Configured version, if any.
    pub version: Option<String>,
    /// Prefix URL (ends with `/`) the file paths are relative to.
    pub base: url::Url,
    /// Files to fetch; empty for a listed prefix (see [`Model::is_listed`]).
    pub files: Vec<File>,
    /// Whether digests are checked.
    pub verify: bool,
    /// Store options (secrets included; never logged).
    pub store: BTreeMap<String, String>,
    /// The signature the files must carry, if any.
    pub signature: Option<Signature>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("base", &redact::url(self.base.as_str()))
            .field("files", &self.files)
            .field("verify", &self.verify)
            .field("store", &shown(&self.store))
            .field("signature", &self.signature)
            .finish()
    }
}

impl Model {
    /// Whether the files come from listing the prefix at each sync (a prefix source with no
    /// `files`: with a `signature`, or with `verify: false`).
    pub fn is_listed(&self) -> bool {
        self.files.is_empty()
    }
}

/// A validated file.
#[derive(Debug, Clone)]
pub struct File {
    /// Relative path.
    pub path: String,
    /// Expected digest (`None` only with `verify: false`).
    pub sha256: Option<Digest>,
    /// Expected size.
    pub size: Option<u64>,
    /// An archive layer of an OCI source, unpacked into the version instead of published as
    /// a file (`path` then only names its download).
    pub unpack: Option<crate::oci::Unpack>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The shared directory.
    pub root: PathBuf,
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Re-check interval (`None`: publish once).
    pub interval: Option<Duration>,
    /// Reserve on the filesystem.
    pub reserve_bytes: u64,
    /// Retries.
    pub retry: RetrySettings,
    /// Versions kept per model.
    pub keep_versions: usize,
    /// Models synced at once.
    pub max_concurrent_models: usize,
    /// Main container readiness URL.
    pub main_ready_url: Option<url::Url>,
    /// Main container load URL template.
    pub main_load_url: Option<String>,
    /// Objects this large or larger use ranged parts.
    pub parallel_threshold: u64,
    /// Ranged-part plan.
    pub parts: PartPlan,
    /// Termination log path (`fetch` mode).
    pub termination_log: PathBuf,
    /// Models.
    pub models: Vec<Model>,
}

impl AgentConfig {
    /// Reads YAML from `path`.
    ///
    /// # Errors
    /// [`AgentError::Config`] naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            field: "config file".into(),
            reason: format!("{}: {e}", path.display()),
        })?;
        Self::from_yaml(&text)
    }

    /// Parses YAML text.
    ///
    /// # Errors
    /// [`AgentError::Config`] with serde's message (it names the field and line).
    pub fn from_yaml(text: &str) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|e| AgentError::Config {
            field: "config".into(),
            reason: redact::parser_error(&e.to_string()),
        })
    }

    /// Applies `KILN_AGENT_ROOT`, `KILN_AGENT_LISTEN` and `KILN_AGENT_INTERVAL_S` from `env`.
    ///
    /// # Errors
    /// [`AgentError::Config`] if `KILN_AGENT_INTERVAL_S` is not a number.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if let Some(v) = env("KILN_AGENT_ROOT") {
            self.root = v.into();
        }
        if let Some(v) = env("KILN_AGENT_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env("KILN_AGENT_INTERVAL_S") {
            self.interval_s = v.parse().map_err(|_| AgentError::Config {
                field: "KILN_AGENT_INTERVAL_S".into(),
                reason: format!("{v:?} is not a number of seconds"),
            })?;
        }
        Ok(self)
    }

    /// Validates everything once.
    ///
    /// # Errors
    /// [`AgentError::Config`] naming the field (e.g. `models[1].files[0].sha256`).
    pub fn check(&self) -> Result<Checked> {
        let bad = |field: String, reason: String| AgentError::Config { field, reason };
        if !self.root.is_absolute() {
            return Err(bad(
                "root".into(),
                format!("{} must be an absolute path", self.root.display()),
            ));
        }
        let listen = self.listen.parse().map_err(|_| {
            bad(
                "listen".into(),
                format!("{:?} is not host:port", self.listen),
            )
        })?;
        if self.retry.max_attempts == 0 {
            return Err(bad(
                "retry.max_attempts".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retry.initial_backoff_ms > self.retry.max_backoff_ms {
            return Err(bad(
                "retry.initial_backoff_ms".into(),
                "must not exceed retry.max_backoff_ms".into(),
            ));
        }
        let http_url = |field: &str, v: &str| -> Result<url::Url> {
            let u = url::Url::parse(&v.replace("{model}", "m"))
                .map_err(|e| bad(field.into(), format!("{v:?}: {e}")))?;
            if u.scheme() != "http" {
                return Err(bad(
                    field.into(),
                    "must be a plain http:// URL (the main container on the pod's loopback)".into(),
                ));
            }
            Ok(u)
        };
        let main_ready_url = self
            .main
            .ready_url
            .as_deref()
            .map(|v| http_url("main.ready_url", v))
            .transpose()?;
        if let Some(v) = &self.main.load_url {
            http_url("main.load_url", v)?;
        }
        if self.part_size_kib == 0 {
            return Err(bad("part_size_kib".into(), "must be at least 1".into()));
        }
        if self.parallelism == 0 || self.parallelism > 64 {
            return Err(bad(
                "parallelism".into(),
                format!("{} is not in 1..=64", self.parallelism),
            ));
        }
        if self.max_concurrent_models == 0 || self.max_concurrent_models > 64 {
            return Err(bad(
                "max_concurrent_models".into(),
                format!("{} is not in 1..=64", self.max_concurrent_models),
            ));
        }
        if self.keep_versions == 0 {
            return Err(bad(
                "keep_versions".into(),
                "must be at least 1 (the current version)".into(),
            ));
        }
        if self.models.is_empty() {
            return Err(bad(
                "models".into(),
                "at least one model is required".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut models = Vec::with_capacity(self.models.len());
        for (i, m) in self.models.iter().enumerate() {
            let field = |f: &str| format!("models[{i}].{f}");
            layout::check_name("name", &m.name).map_err(|e| bad(field("name"), e.to_string()))?;
            if !names.insert(m.name.as_str()) {
                return Err(bad(field("name"), format!("{:?} is listed twice", m.name)));
            }
            if let Some(v) = &m.version {
                layout::check_name("version", v)
                    .map_err(|e| bad(field("version"), e.to_string()))?;
            }
            let url = url::Url::parse(&m.source)
                .map_err(|e| bad(field("source"), format!("{}: {e}", redact::url(&m.source))))?;
            let plain_http_allowed =
                url.scheme() == "http" && m.store.get("allow_http").is_some_and(|v| v == "true");
            if !SCHEMES.contains(&url.scheme()) && !plain_http_allowed {
                return Err(bad(field("source"), format!("scheme {:?} is not one of {SCHEMES:?} (plain http needs `store: {{allow_http: \"true\"}}` and an https-less endpoint)", url.scheme())));
            }
            if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
                return Err(bad(field("source"), "must not carry credentials or a query string; use the environment or workload identity".into()));
            }
            // Every store option must be one object_store knows for the scheme; the name is
            // not echoed (a pasted secret can end up in a mangled key).
            if let Some(n) = m.store.keys().position(|k| !known_option(url.scheme(), k)) {
                return Err(bad(
                    field("store"),
                    format!(
                        "option #{} is not one object_store knows for {}:// (its name is not shown: a mangled line can hold a secret)",
                        n + 1,
                        url.scheme()
                    ),
                ));
            }
            let digest = |s: &Option<String>, f: String| -> Result<Option<Digest>> {
                match s {
                    Some(hex) => hex
                        .parse()
                        .map(Some)
                        .map_err(|e: kiln::Error| bad(f, e.to_string())),
                    None if m.verify => Err(bad(f, "required (or set verify: false)".into())),
                    None => Ok(None),
                }
            };
            let oci = url.scheme() == "oci";
            if oci {
                crate::oci::Reference::parse(&m.source).map_err(|e| bad(field("source"), e))?;
                if !m.files.is_empty() || m.sha256.is_some() || m.size.is_some() || !m.verify {
                    return Err(bad(field("source"), "an oci:// source takes no `files`, `sha256`, `size` or `verify: false`: the manifest names the layers and every layer is checked against its digest (pin the manifest with @sha256:…)".into()));
                }
            }
            let signature = match &m.signature {
                Some(spec) => {
                    if !m.verify {
                        return Err(bad(
                            field("verify"),
                            "a signed model is always verified; remove `verify: false`".into(),
                        ));
                    }
                    if !(m.source.ends_with('/') || oci)
                        || !m.files.is_empty()
                        || m.sha256.is_some()
                        || m.size.is_some()
                    {
                        return Err(bad(field("signature"), "a signed model's source is the prefix holding its files and the bundle (ending in `/`), with no `files`, `sha256` or `size`: the bundle lists them".into()));
                    }
                    Some(spec.check(&field("signature"))?)
                }
                None => None,
            };
            let (base, files) = if oci {
                // The layers are named by the manifest at each sync.
                let base = if m.source.ends_with('/') {
                    url.clone()
                } else {
                    url::Url::parse(&format!("{}/", m.source))
                        .map_err(|e| bad(field("source"), e.to_string()))?
                };
                (base, Vec::new())
            } else if m.files.is_empty() {
                if m.source.ends_with('/') {
                    if m.verify && signature.is_none() {
                        return Err(bad(
                            field("files"),
                            "a prefix source needs `files`, each with its sha256, or a `signature` (or `verify: false` to publish whatever the prefix lists)".into(),
                        ));
                    }
                    // Listed at each sync; every key is checked before it becomes a path.
                    (url.clone(), Vec::new())
                } else {
                    let file = url
                        .path_segments()
                        .and_then(|mut s| s.next_back())
                        .unwrap_or_default()
                        .to_owned();
                    let base = url
                        .join("./")
                        .map_err(|e| bad(field("source"), e.to_string()))?;
                    (
                        base,
                        vec![File {
                            path: file,
                            sha256: digest(&m.sha256, field("sha256"))?,
                            size: m.size,
                            unpack: None,
                        }],
                    )
                }
            } else {
                if m.sha256.is_some() || m.size.is_some() {
                    return Err(bad(
                        field("sha256"),
                        "with `files`, give each file its own sha256 and size".into(),
                    ));
                }
                let base = if m.source.ends_with('/') {
                    url.clone()
                } else {
                    url::Url::parse(&format!("{}/", m.source))
                        .map_err(|e| bad(field("source"), e.to_string()))?
                };
                let mut files = Vec::new();
                for (j, f) in m.files.iter().enumerate() {
                    if !layout::is_contained_relative(&f.path) || f.path == layout::MANIFEST_FILE {
                        return Err(bad(format!("models[{i}].files[{j}].path"), format!("{:?} must be a relative path inside the version (and not the manifest)", f.path)));
                    }
                    files.push(File {
                        path: f.path.clone(),
                        sha256: digest(&f.sha256, format!("models[{i}].files[{j}].sha256"))?,
                        size: f.size,
                        unpack: None,
                    });
                }
                (base, files)
            };
            if !m.verify {
                tracing::warn!(model = %m.name, "verify: false — files will be published without checking their digests");
            }
            models.push(Model {
                name: m.name.clone(),
                version: m.version.clone(),
                base,
                files,
                verify: m.verify,
                store: m.store.clone(),
                signature,
            });
        }
        Ok(Checked {
            root: self.root.clone(),
            listen,
            interval: (self.interval_s > 0).then(|| Duration::from_secs(self.interval_s)),
            reserve_bytes: self.reserve_bytes,
            retry: self.retry,
            keep_versions: self.keep_versions,
            max_concurrent_models: self.max_concurrent_models,
            main_ready_url,
            main_load_url: self.main.load_url.clone(),
            parallel_threshold: self.parallel_threshold_mib.saturating_mul(1 << 20),
            parts: PartPlan {
                part_size: self.part_size_kib.saturating_mul(1024),
                parallelism: self.parallelism,
                transfer: self.transfer,
            },
            termination_log: self.termination_log.clone(),
            models,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";

    fn parse(yaml: &str) -> Result<Checked> {
        AgentConfig::from_yaml(yaml)?.check()
    }

    #[test]
    fn a_single_object_and_a_prefix_with_files() {
        let c = parse(&format!(
            "root: /models\nmodels:\n  - name: magika\n    source: s3://b/magika/3/model.onnx\n    sha256: {SHA}\n  - name: bert\n    source: gs://b/bert/7\n    files:\n      - {{path: model.onnx, sha256: {SHA}}}\n      - {{path: sub/vocab.txt, sha256: {SHA}}}\n"
        ))
        .expect("valid");
        assert_eq!(c.models[0].base.as_str(), "s3://b/magika/3/");
        assert_eq!(c.models[0].files[0].path, "model.onnx");
        assert_eq!(c.models[1].base.as_str(), "gs://b/bert/7/");
        assert_eq!(c.models[1].files.len(), 2);
        assert_eq!(c.interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |yaml: String| match parse(&yaml) {
            Err(AgentError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let m = |extra: &str| {
            format!("root: /models\nmodels:\n  - name: m\n    source: s3://b/m/model.onnx\n{extra}")
        };
        assert_eq!(
            field(m("")),
            "models[0].sha256",
            "verification is on by default"
        );
        assert_eq!(field(m("    sha256: nothex\n")), "models[0].sha256");
        assert_eq!(
            field(format!(
                "root: /models\nmodels:\n  - name: ../x\n    source: s3://b/m\n    sha256: {SHA}\n"
            )),
            "models[0].name"
        );
        assert_eq!(
            field(format!(
                "root: /models\nmodels:\n  - name: m\n    source: ftp://h/m\n    sha256: {SHA}\n"
            )),
            "models[0].source"
        );
        assert_eq!(field(format!("root: /models\nmodels:\n  - name: m\n    source: https://h/m?sig=x\n    sha256: {SHA}\n")), "models[0].source");
        assert_eq!(
            field(format!(
                "root: relative\nmodels:\n  - name: m\n    source: s3://b/m\n    sha256: {SHA}\n"
            )),
            "root"
        );
        assert_eq!(field(format!("root: /m\nmodels:\n  - name: m\n    source: s3://b/p/\n    files:\n      - {{path: ../../etc/passwd, sha256: {SHA}}}\n")), "models[0].files[0].path");
        assert_eq!(field("root: /m\nmodels: []\n".into()), "models");
        assert_eq!(field(format!("root: /m\nunknown: 1\nmodels:\n  - name: m\n    source: s3://b/m\n    sha256: {SHA}\n")), "config");
    }

    #[test]
    fn environment_overrides_and_secrets_stay_out_of_debug() {
        let cfg = AgentConfig::from_yaml(&format!(
            "root: /models\nmodels:\n  - name: m\n    source: s3://b/m/model.onnx\n    sha256: {SHA}\n    store: {{aws_secret_access_key: TOPSECRET, aws_region: eu-west-1}}\n"
        ))
        .expect("parse")
        .with_env(|k| (k == "KILN_AGENT_ROOT").then(|| "/other".to_owned()))
        .expect("env");
        assert_eq!(cfg.root, PathBuf::from("/other"));
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("TOPSECRET") && dbg.contains("eu-west-1"),
            "{dbg}"
        );
        let checked = cfg.check().expect("valid");
        assert!(!format!("{checked:?}").contains("TOPSECRET"));
    }
}
