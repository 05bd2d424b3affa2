//! Opening the object store behind a model's source URI, with credentials from the
//! environment or workload identity (`from_env` builders) and options from the config. Unknown
//! option keys are errors, not silently ignored.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::ObjectStore;

use crate::config::Model;
use crate::error::{AgentError, Result};
use crate::redact;
use crate::retry::RetrySettings;

/// An opened store and the path of the model's prefix inside it.
pub struct Source {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside the store (may be empty).
    pub prefix: StorePath,
    /// The same store as an OCI repository (an `oci://` source): its manifest names the files.
    pub(crate) oci: Option<Arc<crate::oci::store::OciStore>>,
}

impl Source {
    /// Opens the store for `model` (index `i` in the config, for error messages).
    ///
    /// # Errors
    /// [`AgentError::Config`] for an unknown option key or a store that cannot be built.
    pub fn open(model: &Model, i: usize, retry: &RetrySettings) -> Result<Self> {
        let url = &model.base;
        // The client's own per-request retries follow the agent's backoff, briefly: the
        // agent's retry loop above it decides when to give up (and resumes ranged parts).
        let client_retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(retry.initial_backoff_ms),
                max_backoff: Duration::from_millis(retry.max_backoff_ms),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(30),
        };
        // Practically no limit on a whole request (object_store's default is 30 s, from
        // connecting to the body's end: one stream of a multi-GiB object would never finish),
        // but one on silence: a connection that delivers nothing for a minute is dead. Set
        // as options (each builder keeps its own other defaults); a model's `timeout` and
        // `read_timeout` store options still override them.
        const CLIENT: [(&str, &str); 2] = [("timeout", "24h"), ("read_timeout", "60s")];
        let bad = |reason: String| AgentError::Config {
            field: format!("models[{i}].store"),
            reason: redact::text(&reason),
        };
        macro_rules! build {
            ($builder:expr, $key:ty) => {{
                let mut b = $builder
                    .with_url(url.as_str())
                    .with_retry(client_retry.clone());
                for (k, v) in CLIENT {
                    let key: $key = k.parse().map_err(|_| bad(format!("client option {k}")))?;
                    b = b.with_config(key, v);
                }
                for (k, v) in &model.store {
                    let key: $key = k
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| bad(format!("an option unknown to {}://", url.scheme())))?;
                    b = b.with_config(key, v.clone());
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?) as Arc<dyn ObjectStore>
            }};
        }
        let (store, prefix) = match url.scheme() {
            "s3" | "s3a" => (
                build!(
                    object_store::aws::AmazonS3Builder::from_env(),
                    object_store::aws::AmazonS3ConfigKey
                ),
                url.path(),
            ),
            "gs" => (
                build!(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                    object_store::gcp::GoogleConfigKey
                ),
                url.path(),
            ),
            "az" | "abfs" | "abfss" => (
                build!(
                    object_store::azure::MicrosoftAzureBuilder::from_env(),
                    object_store::azure::AzureConfigKey
                ),
                url.path(),
            ),
            "https" | "http" => {
                let root = &url[..url::Position::BeforePath];
                let mut b = object_store::http::HttpBuilder::new()
                    .with_url(root)
                    .with_retry(client_retry.clone());
                for (k, v) in CLIENT {
                    let key: object_store::ClientConfigKey =
                        k.parse().map_err(|_| bad(format!("client option {k}")))?;
                    b = b.with_config(key, v);
                }
                for (k, v) in &model.store {
                    let key: object_store::ClientConfigKey = k
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| bad("an option unknown to http://".to_owned()))?;
                    b = b.with_config(key, v.clone());
                }
                (
                    Arc::new(b.build().map_err(|e| bad(e.to_string()))?) as Arc<dyn ObjectStore>,
                    url.path(),
                )
            }
            "oci" => {
                let reference = crate::oci::Reference::parse(url.as_str()).map_err(bad)?;
                let plain_http = model.store.get("allow_http").is_some_and(|v| v == "true");
                let docker_config = model
                    .store
                    .get("docker_config")
                    .map(std::path::PathBuf::from);
                let registry =
                    crate::oci::client::Registry::new(reference, plain_http, docker_config)
                        .map_err(|e| bad(e.to_string()))?;
                let oci = Arc::new(crate::oci::store::OciStore::new(registry));
                return Ok(Self {
                    store: oci.clone(),
                    prefix: StorePath::default(),
                    oci: Some(oci),
                });
            }
            "file" => {
                if !model.store.is_empty() {
                    return Err(bad("file:// sources take no store options".into()));
                }
                (
                    Arc::new(object_store::local::LocalFileSystem::new()) as Arc<dyn ObjectStore>,
                    url.path(),
                )
            }
            other => return Err(bad(format!("unsupported scheme {other:?}"))),
        };
        let prefix = StorePath::from_url_path(prefix).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store,
            prefix,
            oci: None,
        })
    }

    /// The store path of a file relative to the prefix.
    pub fn path_of(&self, relative: &str) -> StorePath {
        relative
            .split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }
}
