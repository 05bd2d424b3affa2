//! The v2 endpoints. Health and metadata never go through an inference queue; inference runs
//! on the runtime's batcher threads, awaited here, so request handling never blocks a tokio
//! worker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
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
use crate::infer;
use crate::protocol::{self, InferResponse, TensorMetadata, HEADER_LENGTH};

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
    /// With `admin`: the bearer token the repository endpoints require. Without one they
    /// answer loopback peers only (the agent in the same pod), 403 to anyone else.
    pub admin_token: Option<String>,
    /// Longest an inference request's body may take to arrive once its headers have
    /// (larger → 408), so a client trickling its body cannot hold a request forever.
    pub body_read_timeout: Duration,
    /// When `/v2/health/ready` answers 200 (and `--ready-when`): every model (default), any
    /// model, or the listed ones. Per-model readiness is always exact.
    pub ready_when: kiln::Readiness,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            admin: false,
            max_body_bytes: 32 << 20,
            max_input_elements: 16 << 20,
            admin_token: None,
            body_read_timeout: Duration::from_secs(30),
            ready_when: kiln::Readiness::All,
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
    pub telemetry: Option<Arc<kiln::prometheus::PrometheusTelemetry>>,
    http: HttpMetrics,
    /// Request bodies decoded off the workers, two maximal bodies' worth at a time.
    pub(crate) decoder: crate::decode::Decoder,
}

impl AppState {
    /// State for `repo`, recording HTTP metrics on `meter`.
    pub fn new(
        repo: Arc<Repository>,
        config: ServerConfig,
        telemetry: Option<Arc<kiln::prometheus::PrometheusTelemetry>>,
        meter: &Meter,
    ) -> Self {
        Self {
            decoder: crate::decode::Decoder::new(
                2 * config.max_body_bytes,
                config.max_input_elements,
            ),
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
                .u64_counter("kiln_http_requests_total")
                .with_description("HTTP requests by route and status code")
                .build(),
            duration: meter
                .f64_histogram("kiln_http_request_duration_seconds")
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
            "/v2/models/{model}/config",
            get(crate::model_config::model_config),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(crate::model_config::model_config_v),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_v),
        )
        .route("/v2/repository/index", post(repository_index))
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

/// 200 when not draining and the models `ready_when` names are loaded and warmed.
async fn ready(State(s): State<Arc<AppState>>) -> StatusCode {
    if server_is_ready(&s) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

/// The model, and the version if one is named (it must be the one serving).
pub(crate) fn find(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<ModelHandle, ApiError> {
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

/// A model's v2 metadata, for either protocol.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Description {
    pub(crate) name: String,
    pub(crate) versions: Vec<String>,
    pub(crate) platform: &'static str,
    pub(crate) inputs: Vec<TensorMetadata>,
    pub(crate) outputs: Vec<TensorMetadata>,
}

/// The metadata of `model` (its serving version's signature).
pub(crate) fn describe(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Description, ApiError> {
    let handle = find(s, model, version)?;
    let meta = handle
        .metadata()
        .ok_or_else(|| not_serving(model, &handle))?;
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
    Ok(Description {
        name: model.to_owned(),
        versions: handle.current_version().into_iter().collect(),
        platform: "onnxruntime_onnx",
        inputs: describe(&meta.inputs),
        outputs: describe(&meta.outputs),
    })
}

/// 503 for a model with no version serving, with its state and last error.
pub(crate) fn not_serving(model: &str, handle: &ModelHandle) -> ApiError {
    let status = handle.status();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "model `{model}` is not serving (state {}{})",
            state_name(&status.state),
            status
                .last_error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
    )
}

/// Whether `model` (at `version`, if given) is ready for inference: loaded, warmed, serving
/// that version, and the server not draining.
pub(crate) fn model_is_ready(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<bool, ApiError> {
    let h = find(s, model, version)?;
    Ok(h.is_ready() && !s.draining.load(Ordering::Relaxed))
}

/// Whether the server is ready: not draining, and the models `ready_when` names serve.
pub(crate) fn server_is_ready(s: &AppState) -> bool {
    !s.draining.load(Ordering::Relaxed) && s.repo.ready(&s.config.ready_when)
}

/// The extensions of the v2 protocol this server implements (`GET /v2`, gRPC
/// `ServerMetadata`).
pub(crate) const EXTENSIONS: [&str; 4] = [
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
];

async fn model_metadata(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Description>, ApiError> {
    describe(&s, &model, None).map(Json)
}

async fn model_metadata_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Description>, ApiError> {
    describe(&s, &model, Some(&version)).map(Json)
}

fn readiness(s: &AppState, model: &str, version: Option<&str>) -> Response {
    match model_is_ready(s, model, version) {
        Ok(true) => Json(json!({"name": model, "ready": true})).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": model, "ready": false})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The lifecycle state's name (`loading`, `warming`, `ready`, `draining`, `unloaded`,
/// `failed`); the reason of a failure is in `last_error`.
pub(crate) fn state_name(state: &kiln::ModelState) -> &'static str {
    use kiln::ModelState as S;
    match state {
        S::Loading => "loading",
        S::Warming => "warming",
        S::Ready => "ready",
        S::Draining => "draining",
        S::Unloaded => "unloaded",
        S::Failed { .. } => "failed",
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics (`model_stats`, what
/// `get_inference_statistics` reads; see [`crate::stats`]) and, beside them, kiln's own
/// counters for people and benchmarks that need exact batch sizes: the model's lifecycle
/// `state` and `last_error` (the last load failure, kept while an older version serves on),
/// and the serving version's requests by outcome, batches, rows and the batch-size histogram
/// (`{"rows": batches}`), since it was loaded. A model with no version serving answers its
/// state alone, `version` null and `model_stats` empty. Monitoring should use `/metrics`.
async fn model_stats(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    stats_of(&s, &model, None)
}

async fn model_stats_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    stats_of(&s, &model, Some(&version))
}

/// `GET /v2/models/stats`: every serving model's statistics, Triton's schema.
async fn all_stats(State(s): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = crate::stats::statistics(&s, None, None)?;
    Ok(Json(crate::stats::statistics_json(&stats)))
}

/// `POST /v2/repository/index`: every model found, its version and state (Triton's schema;
/// body `{"ready": true}` for the ready ones only).
async fn repository_index(
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    #[derive(serde::Deserialize, Default)]
    struct Query {
        #[serde(default)]
        ready: bool,
    }
    let query: Query = if body.iter().all(u8::is_ascii_whitespace) {
        Query::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed index request: {e}")))?
    };
    Ok(Json(crate::stats::index_json(&crate::stats::index(
        &s,
        query.ready,
    ))))
}

fn stats_of(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = find(s, model, version)?;
    let status = h.status();
    let mut doc =
        crate::stats::statistics_json(&crate::stats::statistics(s, Some(model), version)?);
    doc["name"] = json!(model);
    doc["state"] = json!(state_name(&status.state));
    doc["last_error"] = json!(status.last_error);
    let Some(st) = h.stats() else {
        doc["version"] = serde_json::Value::Null;
        return Ok(Json(doc));
    };
    let sizes: serde_json::Map<String, serde_json::Value> = st
        .batch_sizes
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(rows, &n)| (rows.to_string(), n.into()))
        .collect();
    for (key, value) in [
        ("version", json!(h.current_version())),
        ("succeeded", json!(st.succeeded)),
        ("failed", json!(st.failed)),
        ("overloaded", json!(st.overloaded)),
        ("expired", json!(st.expired)),
        ("cancelled", json!(st.cancelled)),
        ("queued", json!(st.queued)),
        ("batches", json!(st.batches)),
        ("rows", json!(st.rows)),
        ("batch_sizes", serde_json::Value::Object(sizes)),
    ] {
        doc[key] = value;
    }
    Ok(Json(doc))
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
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&s, body).await?;
    run(&s, &model, None, &headers, body).await
}

async fn infer_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&s, body).await?;
    run(&s, &model, Some(&version), &headers, body).await
}

/// The whole body, at most `max_body_bytes` (413 beyond, without reading the rest), within
/// `body_read_timeout` (408).
async fn read_body(s: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = s.config.max_body_bytes;
    match tokio::time::timeout(
        s.config.body_read_timeout,
        crate::decode::collect(body, limit),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over the {limit}-byte limit"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            })
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                s.config.body_read_timeout.as_secs_f64()
            ),
        )),
    }
}

async fn run(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header_len = headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("not text"));
    let (request, inputs) = s.decoder.decode(body, header_len).await?;
    let timeout = match headers.get(TIMEOUT_HEADER) {
        Some(raw) => Some(Duration::from_millis(
            raw.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{TIMEOUT_HEADER} must be a whole number of milliseconds"
                    ))
                })?,
        )),
        None => None,
    };
    let call = infer::Call {
        model,
        version,
        inputs,
        outputs: request.outputs.iter().map(|o| o.name.clone()).collect(),
        timeout,
    };
    let answer = match infer::run(s, call).await {
        Ok(a) => a,
        Err(e) => {
            infer::log_failure("http", model, version, request.id.as_deref(), &e);
            return Err(e);
        }
    };
    let mut tail = Vec::new();
    let outputs = answer
        .outputs
        .into_iter()
        .map(|(n, t)| {
            let binary = request.binary_output(&n);
            let (out, bytes) = protocol::output(n, t, binary);
            tail.extend(bytes.unwrap_or_default());
            out
        })
        .collect();
    let response = InferResponse {
        model_name: model.to_owned(),
        model_version: answer.version,
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

/// The repository endpoints' gate: off unless `--admin`; then a bearer token when one is
/// configured, else loopback peers only.
fn admin(s: &AppState, parts: &Parts) -> Result<(), ApiError> {
    admit_admin(
        s,
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    )
}

/// The admin rule for both protocols: `authorization` is the request's `Authorization` value
/// (HTTP header, gRPC metadata), `peer` the client's address.
pub(crate) fn admit_admin(
    s: &AppState,
    authorization: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let forbidden = |m: &str| Err(ApiError::new(StatusCode::FORBIDDEN, m.to_owned()));
    if !s.config.admin {
        return forbidden(
            "repository endpoints are disabled; start the server with --admin (and keep it on localhost)",
        );
    }
    match &s.config.admin_token {
        Some(token) => {
            let given = authorization
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "repository endpoints need `Authorization: Bearer <admin token>`",
                ))
            }
        }
        None => {
            let local = peer.is_some_and(|p| p.ip().is_loopback());
            if local {
                Ok(())
            } else {
                forbidden(
                    "repository endpoints answer loopback clients only (or set an admin token)",
                )
            }
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads `model` on a blocking thread (loading reads, hashes and compiles the model).
pub(crate) async fn load_model(s: &AppState, model: String) -> Result<(), ApiError> {
    let repo = Arc::clone(&s.repo);
    tokio::task::spawn_blocking(move || repo.load(&model))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(())
}

/// Drains and unloads `model` on a blocking thread (draining waits for its queue).
pub(crate) async fn unload_model(s: &AppState, model: String) -> Result<(), ApiError> {
    let repo = Arc::clone(&s.repo);
    tokio::task::spawn_blocking(move || repo.unload(&model))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(())
}

/// Loads the version the model's `current` names now, lifting an admin unload (the agent
/// calls this after publishing): 200 once it serves, 404 for a model not published, the load
/// error's status (500 for a corrupt or unloadable version) when it did not load.
async fn load(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    parts: Parts,
) -> Result<StatusCode, ApiError> {
    admin(&s, &parts)?;
    load_model(&s, model).await?;
    Ok(StatusCode::OK)
}

/// Drains and unloads a model; it stays unloaded (listed, state `unloaded`, not counted
/// against readiness) until an admin load or a new `current`.
async fn unload(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    parts: Parts,
) -> Result<StatusCode, ApiError> {
    admin(&s, &parts)?;
    unload_model(&s, model).await?;
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
