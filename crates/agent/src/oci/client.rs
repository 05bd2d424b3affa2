//! The registry client: one repository's manifests and blobs over the OCI distribution API
//! (`/v2/<repository>/manifests/<reference>`, `/v2/<repository>/blobs/<digest>`), with the
//! auth of [`super::auth`]. The `Authorization` that worked is kept for the next request; a
//! `401` (an expired token) gets one new challenge round. Manifests are read whole (at most
//! 4 MiB) and checked against a digest reference; blobs are returned as responses to stream.

use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::auth::{parse_challenge, Challenge, Credentials, TokenAnswer};
use super::Reference;

/// The manifest media types asked for, most specific first.
pub(crate) const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The longest a manifest or token request may take, start to end.
const SMALL_REQUEST: Duration = Duration::from_secs(60);
/// The longest a blob request may take (a multi-GiB stream); a minute without a byte ends it
/// sooner (the client's read timeout).
const BLOB_REQUEST: Duration = Duration::from_secs(24 * 3600);

/// The most bytes a manifest may have (the distribution spec's registries accept 4 MiB).
const MANIFEST_LIMIT: usize = 4 << 20;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The registry (or the network) failed in a way another try may not.
    #[error("{0}")]
    Transient(String),
    /// The manifest or blob does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Authentication was needed and failed, or access is denied.
    #[error("{0}")]
    Denied(String),
    /// The registry answered something this client cannot use.
    #[error("{0}")]
    Protocol(String),
}

/// A client for one repository of one registry.
pub(crate) struct Registry {
    http: reqwest::Client,
    /// `scheme://host[:port]`.
    base: String,
    reference: Reference,
    /// The docker config file credentials are read from (at the first request).
    docker_config: Option<std::path::PathBuf>,
    credentials: std::sync::OnceLock<Option<Credentials>>,
    /// The `Authorization` value the last challenge earned (sent with every later request).
    auth: tokio::sync::Mutex<Option<HeaderValue>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("reference", &self.reference)
            .field("credentials", &self.credentials())
            .finish_non_exhaustive()
    }
}

fn transport(what: &str, e: &reqwest::Error) -> RegistryError {
    // reqwest's message names the URL; ours have no secret in them (no query strings).
    RegistryError::Transient(format!("{what}: {}", crate::redact::text(&e.to_string())))
}

impl Registry {
    /// A client for `reference`'s repository over `https` (or `http` when `plain_http`).
    pub(crate) fn new(
        reference: Reference,
        plain_http: bool,
        docker_config: Option<std::path::PathBuf>,
    ) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Protocol(format!("HTTP client: {e}")))?;
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Self {
            http,
            base: format!("{scheme}://{}", reference.registry),
            reference,
            docker_config,
            credentials: std::sync::OnceLock::new(),
            auth: tokio::sync::Mutex::new(None),
        })
    }

    /// Reads the docker config's credentials for this registry, once.
    pub(crate) async fn load_credentials(&self) -> Result<(), RegistryError> {
        if self.credentials.get().is_some() {
            return Ok(());
        }
        let found = match &self.docker_config {
            None => None,
            Some(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    RegistryError::Protocol(format!("docker config {}: {e}", path.display()))
                })?;
                super::auth::credentials_for(&bytes, &self.reference.registry).map_err(|m| {
                    RegistryError::Protocol(format!("docker config {}: {m}", path.display()))
                })?
            }
        };
        let _ = self.credentials.set(found);
        Ok(())
    }

    fn credentials(&self) -> Option<&Credentials> {
        self.credentials.get().and_then(Option::as_ref)
    }

    /// The reference this client reads.
    pub(crate) fn reference(&self) -> &Reference {
        &self.reference
    }

    fn url(&self, kind: &str, what: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{what}",
            self.base, self.reference.repository
        )
    }

    /// Sends a request, answering one authentication challenge if the registry asks.
    async fn send(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let known = self.auth.lock().await.clone();
        let mut first = request();
        if let Some(a) = &known {
            first = first.header(AUTHORIZATION, a.clone());
        }
        let response = first.send().await.map_err(|e| transport(what, &e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Only the registry's own challenge is answered: a 401 from where a redirect led (a
        // CDN, a storage host) gets no credentials.
        if !self.is_registry(response.url()) {
            return Err(RegistryError::Denied(format!(
                "{what}: a redirect target asked for credentials; none are sent there"
            )));
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let header = match challenge {
            Some(Challenge::Basic) => self.basic().ok_or_else(|| {
                RegistryError::Denied(format!(
                    "{what}: the registry asks for credentials and the docker config has none for {}",
                    self.reference.registry
                ))
            })?,
            // Pull access to this repository is asked for, whatever scope the challenge names.
            Some(Challenge::Bearer { realm, service, .. }) => {
                self.token(what, &realm, service).await?
            }
            None => {
                return Err(RegistryError::Denied(format!(
                    "{what}: 401 without a challenge this client understands"
                )))
            }
        };
        *self.auth.lock().await = Some(header.clone());
        let response = request()
            .header(AUTHORIZATION, header)
            .send()
            .await
            .map_err(|e| transport(what, &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            *self.auth.lock().await = None;
            return Err(RegistryError::Denied(format!(
                "{what}: the registry refused the credentials"
            )));
        }
        Ok(response)
    }

    /// Whether `url` is on the registry itself (scheme, host and port).
    fn is_registry(&self, url: &reqwest::Url) -> bool {
        let origin = url.origin().ascii_serialization();
        origin == self.base
            || url::Url::parse(&self.base).is_ok_and(|b| b.origin().ascii_serialization() == origin)
    }

    fn basic(&self) -> Option<HeaderValue> {
        let c = self.credentials()?;
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// A pull token from the registry's token service.
    async fn token(
        &self,
        what: &str,
        realm: &str,
        service: Option<String>,
    ) -> Result<HeaderValue, RegistryError> {
        let mut realm_url = url::Url::parse(realm).map_err(|_| {
            RegistryError::Protocol(format!("{what}: the token realm is not a URL"))
        })?;
        // Credentials travel to the token service in clear only if the registry itself is
        // plain http (a test or in-cluster registry); an https registry's realm must be https.
        let plain_ok = self.base.starts_with("http://");
        if !(realm_url.scheme() == "https" || (plain_ok && realm_url.scheme() == "http")) {
            return Err(RegistryError::Protocol(format!(
                "{what}: the token realm is not https"
            )));
        }
        let scope = format!("repository:{}:pull", self.reference.repository);
        {
            let mut query = realm_url.query_pairs_mut();
            query.append_pair("scope", &scope);
            if let Some(s) = &service {
                query.append_pair("service", s);
            }
        }
        let mut request = self.http.get(realm_url).timeout(SMALL_REQUEST);
        if let Some(c) = self.credentials() {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport("token service", &e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied(format!(
                "{what}: the token service refused ({status})"
            )));
        }
        if !status.is_success() {
            return Err(status_error("token service", status));
        }
        let body = read_limited(response, 1 << 20, "token service").await?;
        let token = serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::into_token)
            .ok_or_else(|| {
                RegistryError::Protocol(format!("{what}: the token service gave no token"))
            })?;
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            RegistryError::Protocol(format!("{what}: the token is not a header value"))
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// The manifest `reference` (a tag or digest) names: its bytes, its media type and its
    /// digest. A digest reference is checked against the bytes.
    pub(crate) async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, String, kiln::Digest), RegistryError> {
        let url = self.url("manifests", reference);
        let what = format!("manifest {}", self.reference.registry);
        let response = self
            .send(&what, || {
                self.http
                    .get(&url)
                    .timeout(SMALL_REQUEST)
                    .header(ACCEPT, HeaderValue::from_static(MANIFEST_TYPES))
            })
            .await?;
        let response = answered(response, &what, || {
            format!("no manifest {reference} in {}", self.reference.repository)
        })?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let body = read_limited(response, MANIFEST_LIMIT, &what).await?;
        let digest = kiln::Digest::of(&body);
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if digest.to_string() != hex {
                return Err(RegistryError::Protocol(format!(
                    "manifest {reference}: the registry's bytes have sha256 {digest}"
                )));
            }
        }
        Ok((body, media_type, digest))
    }

    /// A blob's response: `range` of it (`None`: all), or only its headers with `head`.
    pub(crate) async fn blob(
        &self,
        digest: &kiln::Digest,
        range: Option<Range<u64>>,
        head: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url("blobs", &format!("sha256:{digest}"));
        let what = format!("blob sha256:{}", &digest.to_string()[..12]);
        let method = if head { Method::HEAD } else { Method::GET };
        let response = self
            .send(&what, || {
                let mut r = self
                    .http
                    .request(method.clone(), &url)
                    .timeout(BLOB_REQUEST);
                if let Some(range) = &range {
                    r = r.header(
                        RANGE,
                        format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
                    );
                }
                r
            })
            .await?;
        answered(response, &what, || {
            format!("{what} is not in {}", self.reference.repository)
        })
    }
}

/// `response` if it succeeded; else [`RegistryError::NotFound`] (with `not_found`'s message)
/// for a 404, [`status_error`] for any other status.
fn answered(
    response: reqwest::Response,
    what: &str,
    not_found: impl FnOnce() -> String,
) -> Result<reqwest::Response, RegistryError> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        Err(RegistryError::NotFound(not_found()))
    } else if status.is_success() {
        Ok(response)
    } else {
        Err(status_error(what, status))
    }
}

/// The error for an unexpected status: 5xx, 408 and 429 are worth another try.
fn status_error(what: &str, status: StatusCode) -> RegistryError {
    let msg = format!("{what}: the registry answered {status}");
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        RegistryError::Transient(msg)
    } else if status == StatusCode::FORBIDDEN {
        RegistryError::Denied(msg)
    } else {
        RegistryError::Protocol(msg)
    }
}

/// A response body of at most `limit` bytes.
async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(RegistryError::Protocol(format!(
            "{what}: larger than {limit} bytes"
        )));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(what, &e))?;
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol(format!(
                "{what}: larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
