//! The v2 endpoints. Health and metadata never go through an inference queue; inference runs
//! on the runtime's batcher threads, awaited here, so request handling never blocks a tokio
//! worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln::{ModelHandle, Repository};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use serde_json::json;

use crate::error::ApiError;
use crate::protocol::{self, InferRequest, InferResponse, InputError, TensorMetadata};

/// Request header with the request's deadline in milliseconds (queue wait and run).
pub const TIMEOUT_HEADER: &str = "kiln-timeout-ms";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Whether `POST /v2/repository/models/{m}/load|unload` are served (else 403).
    pub admin: bool,
    /// Largest request body, bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Largest element count of one input tensor (larger → 413).
    pub max_input_elements: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            admin: false,
            max_body_bytes: 32 << 20,
            max_input_elements: 16 << 20,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The served models.
    pub repo: Arc<Repository>,
    /// Set on SIGTERM: readiness fails first, then new inference is refused with 503.
    pub draining: AtomicBool,
    /// Settings.
    pub config: ServerConfig,
    /// Prometheus text for `/metrics`, if exported.
    pub telemetry: Option<Arc<kiln_agent::metrics::PrometheusTelemetry>>,
    http: HttpMetrics,
}

impl AppState {
    /// State for `repo`, recording HTTP metrics on `meter`.
    pub fn new(
        repo: Arc<Repository>,
        config: ServerConfig,
        telemetry: Option<Arc<kiln_agent::metrics::PrometheusTelemetry>>,
        meter: &Meter,
    ) -> Self {
        Self {
            repo,
            draining: AtomicBool::new(false),
            config,
            telemetry,
            http: HttpMetrics::new(meter),
        }
    }
}

struct HttpMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

impl HttpMetrics {
    fn new(meter: &Meter) -> Self {
        Self {
            requests: meter
                .u64_counter("kiln_http_requests")
                .with_description("HTTP requests by route and status code")
                .build(),
            duration: meter
                .f64_histogram("kiln_http_request_duration")
                .with_unit("s")
                .with_description("HTTP request latency by route")
                .build(),
        }
    }
}

/// The router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            record,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts every request by route and status code, and times it.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = KeyValue::new("route", route);
    state.http.requests.add(
        1,
        &[
            route.clone(),
            KeyValue::new("code", i64::from(response.status().as_u16())),
        ],
    );
    state
        .http
        .duration
        .record(started.elapsed().as_secs_f64(), &[route]);
    response
}

/// 200 when not draining and every model found is loaded and warmed.
async fn ready(State(s): State<Arc<AppState>>) -> StatusCode {
    if !s.draining.load(Ordering::Relaxed) && s.repo.all_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository"],
    }))
}

/// The model, and the version if one is named (it must be the one serving).
fn find(s: &AppState, model: &str, version: Option<&str>) -> Result<ModelHandle, ApiError> {
    let handle = s.repo.get(model).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown model `{model}`; served: {:?}",
            s.repo.names()
        ))
    })?;
    if let Some(v) = version {
        let serving = handle.current_version();
        if serving.as_deref() != Some(v) {
            return Err(ApiError::not_found(format!(
                "model `{model}` has no version `{v}` serving (serving: {})",
                serving.as_deref().unwrap_or("none")
            )));
        }
    }
    Ok(handle)
}

fn metadata(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let handle = find(s, model, version)?;
    let meta = handle.metadata().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model `{model}` is not serving"),
        )
    })?;
    let describe = |infos: &[kiln::TensorInfo]| -> Vec<TensorMetadata> {
        infos
            .iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: protocol::datatype(t.element_type),
                shape: t.dims.iter().map(|d| d.unwrap_or(-1)).collect(),
            })
            .collect()
    };
    Ok(Json(json!({
        "name": model,
        "versions": handle.current_version().into_iter().collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": describe(&meta.inputs),
        "outputs": describe(&meta.outputs),
    })))
}

async fn model_metadata(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    metadata(&s, &model, None)
}

async fn model_metadata_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    metadata(&s, &model, Some(&version))
}

fn readiness(s: &AppState, model: &str, version: Option<&str>) -> Response {
    match find(s, model, version) {
        Ok(h) if h.is_ready() && !s.draining.load(Ordering::Relaxed) => {
            Json(json!({"name": model, "ready": true})).into_response()
        }
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": model, "ready": false})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    readiness(&s, &model, None)
}

async fn model_ready_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&s, &model, Some(&version))
}

async fn infer(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(&s, &model, None, &headers, &body).await
}

async fn infer_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(&s, &model, Some(&version), &headers, &body).await
}

/// Header of the binary-data extension: the JSON part's length; binary data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

async fn run(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    let handle = find(s, model, version)?;
    let (json, mut binary) = match headers.get(HEADER_LENGTH) {
        Some(raw) => {
            let n = raw
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n <= body.len())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{HEADER_LENGTH} must be a byte count within the body ({} bytes)",
                        body.len()
                    ))
                })?;
            body.split_at(n)
        }
        None => (body, &[][..]),
    };
    let request: InferRequest = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let bytes = match input.binary_size() {
            Some(n) if n <= binary.len() => {
                let (now, rest) = binary.split_at(n);
                binary = rest;
                Some(now)
            }
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "input `{}`: binary_data_size {n} is more than the {} bytes left in the body",
                    input.name,
                    binary.len()
                )))
            }
            None => None,
        };
        let tensor = protocol::to_tensor(input, bytes, s.config.max_input_elements).map_err(
            |e| match e {
                InputError::Invalid(m) => ApiError::bad_request(m),
                InputError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            },
        )?;
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data belong to no input (binary_data_size)",
            binary.len()
        )));
    }
    let mut call = kiln::InferRequest::new(inputs);
    if let Some(raw) = headers.get(TIMEOUT_HEADER) {
        let ms: u64 = raw
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{TIMEOUT_HEADER} must be a whole number of milliseconds"
                ))
            })?;
        call = call.with_timeout(Duration::from_millis(ms));
    }
    let model_version = handle.current_version();
    let outputs = handle.infer(call).await?;
    let wanted: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !outputs.iter().any(|(n, _)| n == *w))
    {
        return Err(ApiError::bad_request(format!(
            "unknown output `{unknown}`; the outputs are {:?}",
            outputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
        )));
    }
    let mut tail = Vec::new();
    let outputs = outputs
        .into_iter()
        .filter(|(n, _)| wanted.is_empty() || wanted.contains(&n.as_str()))
        .map(|(n, t)| {
            let binary = request.binary_output(&n);
            let (out, bytes) = protocol::output(n, &t, binary);
            tail.extend(bytes.unwrap_or_default());
            out
        })
        .collect();
    let response = InferResponse {
        model_name: model.to_owned(),
        model_version,
        id: request.id,
        outputs,
    };
    if tail.is_empty() {
        return Ok(Json(response).into_response());
    }
    let mut body = serde_json::to_vec(&response)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let json_len = body.len();
    body.extend(tail);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static(HEADER_LENGTH),
                json_len.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

fn admin(s: &AppState) -> Result<(), ApiError> {
    if s.config.admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "repository endpoints are disabled; start the server with --admin (and keep it on localhost)",
        ))
    }
}

/// Re-scans the repository (the agent calls this after publishing); 200 once the model serves.
async fn load(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&s)?;
    let repo = Arc::clone(&s.repo);
    let report = tokio::task::spawn_blocking(move || repo.scan())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)?;
    if let Some((_, v, e)) = report.failed.iter().find(|(m, _, _)| *m == model) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model `{model}` version `{v}` failed to load: {e}"),
        ));
    }
    find(&s, &model, None).map(|_| StatusCode::OK)
}

/// Drains and unloads a model (until its `current` link moves again).
async fn unload(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&s)?;
    let handle = find(&s, &model, None)?;
    tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(StatusCode::OK)
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    match &s.telemetry {
        Some(t) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            t.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
