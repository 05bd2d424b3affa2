//! Talking to the main container (our server or an existing one such as Triton or a KServe
//! runtime): its readiness URL can gate `/readyz`, so one probe covers the pod, and after a new
//! version is published its load endpoint (`POST /v2/repository/models/{model}/load`, as Triton
//! and KServe servers accept) can be called. The main container is on the pod's loopback
//! (plain `http://`); the client is `reqwest` (already in the tree through `object_store`),
//! with no proxy (a pod's `HTTP_PROXY` must not route loopback calls), no redirects (a 3xx is
//! not ready) and one timeout per call.

use std::sync::OnceLock;
use std::time::Duration;

/// How long one call to the main container may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One client for every call (its connection pool is reused across probes).
fn client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(TIMEOUT)
                .no_proxy()
                // A redirect is an answer, not a place to go (off the loopback, or a POST
                // turned into a GET).
                .redirect(reqwest::redirect::Policy::none())
                // No idle connection kept: one would belong to the runtime that opened it,
                // and `run` may be called in more than one.
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| tracing::error!(error = %e, "cannot build the main-container client"))
                .ok()
        })
        .as_ref()
}

/// Sends `method url` with an empty body; returns the HTTP status, or `None` if the server did
/// not answer in time or not with HTTP.
pub async fn call(method: &str, url: &url::Url) -> Option<u16> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let response = client()?
        .request(method, url.as_str())
        .header(reqwest::header::CONTENT_LENGTH, "0")
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Whether the main container's readiness URL answers 2xx.
pub async fn ready(url: &url::Url) -> bool {
    call("GET", url)
        .await
        .is_some_and(|s| (200..300).contains(&s))
}

/// Asks the main container to load `model` (the `{model}` placeholder in `template`). Logs the
/// outcome; a failure does not undo the publish (the files are valid; the server can still
/// pick them up by itself).
pub async fn load(template: &str, model: &str) {
    let Ok(url) = url::Url::parse(&template.replace("{model}", model)) else {
        tracing::error!(model, "load URL template does not form a URL");
        return;
    };
    match call("POST", &url).await {
        Some(s) if (200..300).contains(&s) => {
            tracing::info!(model, status = s, "main server loaded the new version")
        }
        Some(s) => tracing::warn!(
            model,
            status = s,
            "main server refused to load the new version"
        ),
        None => tracing::warn!(model, "main server did not answer the load call"),
    }
}
