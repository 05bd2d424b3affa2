//! Talking to the main container (our server or an existing one such as Triton or a KServe
//! runtime): its readiness URL can gate `/readyz`, so one probe covers the pod, and after a new
//! version is published its load endpoint (`POST /v2/repository/models/{model}/load`, as Triton
//! and KServe servers accept) can be called. The main container is on the pod's loopback, so a
//! minimal HTTP/1.1 client over a TCP socket is enough (plain `http://` only).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one call to the main container may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `method url` with an empty body; returns the HTTP status, or `None` if the server did
/// not answer in time or not with HTTP.
pub async fn call(method: &str, url: &url::Url) -> Option<u16> {
    let host = url.host_str()?.to_owned();
    let port = url.port_or_known_default()?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let line = String::from_utf8_lossy(&head[..n]).into_owned();
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    };
    tokio::time::timeout(TIMEOUT, exchange).await.ok().flatten()
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
