//! The v2 REST endpoints. Health and metadata never go through an inference queue; inference
//! runs on the runtime's batcher threads, awaited here, so request handling never blocks a
//! tokio worker. What they answer comes from `models`, `stats`, `model_config` and `admin`,
//! shared with gRPC.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Repository;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use serde_json::json;

use crate::http::compression;
use crate::http::error::ApiError;
use crate::http::infer;
use crate::http::models::{
    describe, find, model_is_ready, server_is_ready, Description, EXTENSIONS,
};
use crate::http::protocol::{self, InferResponse, HEADER_LENGTH};

/// Request header with the request's deadline in milliseconds (queue wait and run).
pub const TIMEOUT_HEADER: &str = "kiln-timeout-ms";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Whether `POST /v2/repository/models/{m}/load|unload` are served (else 403).
    pub admin: bool,
    /// Largest request body, bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Largest element count of one input tensor, strings too (larger → 413).
    pub max_input_elements: usize,
    /// Most strings (`BYTES` elements) in one request, its inputs together (more → 413): a
    /// string costs kiln and ONNX Runtime 56 bytes or more however short, 19 times an empty
    /// one's 3 bytes of JSON, so a body of short strings is bounded by their count, not its
    /// size.
    pub max_string_elements: usize,
    /// With `admin`: the bearer token the repository endpoints require. Without one they
    /// answer loopback peers only (the agent in the same pod), 403 to anyone else.
    pub admin_token: Option<String>,
    /// Longest an inference request's body may take to arrive once its headers have
    /// (larger → 408), so a client trickling its body cannot hold a request forever.
    pub body_read_timeout: Duration,
    /// When `/v2/health/ready` answers 200 (and `--ready-when`): every model (default), any
    /// model, or the listed ones. Per-model readiness is always exact.
    pub ready_when: crate::Readiness,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            admin: false,
            max_body_bytes: 32 << 20,
            max_input_elements: 16 << 20,
            max_string_elements: 1 << 20,
            admin_token: None,
            body_read_timeout: Duration::from_secs(30),
            ready_when: crate::Readiness::All,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The served models.
    pub repo: Arc<Repository>,
    /// Set on SIGTERM: readiness (REST and `grpc.health.v1`) turns false; inference goes on
    /// being served.
    pub draining: AtomicBool,
    /// Set when the listeners close, after the drain delay: open `ModelStreamInfer` streams
    /// answer what they have read and end `UNAVAILABLE`, so their clients reconnect
    /// elsewhere. [`Shutdown`](crate::http::shutdown::Shutdown) sets both.
    pub closing: AtomicBool,
    /// Settings.
    pub config: ServerConfig,
    /// Prometheus text for `/metrics`, if exported.
    pub telemetry: Option<Arc<crate::prometheus::PrometheusTelemetry>>,
    http: HttpMetrics,
    pub(crate) grpc: crate::http::grpc::metrics::GrpcMetrics,
    /// Request bodies decoded off the workers, two maximal bodies' worth at a time.
    pub(crate) decoder: crate::http::decode::Decoder,
}

impl AppState {
    /// State for `repo`, recording HTTP metrics on `meter`.
    pub fn new(
        repo: Arc<Repository>,
        config: ServerConfig,
        telemetry: Option<Arc<crate::prometheus::PrometheusTelemetry>>,
        meter: &Meter,
    ) -> Self {
        Self {
            decoder: crate::http::decode::Decoder::new(
                2 * config.max_body_bytes,
                crate::http::protocol::Limits {
                    elements: config.max_input_elements,
                    strings: config.max_string_elements,
                },
            ),
            repo,
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            config,
            telemetry,
            http: HttpMetrics::new(meter),
            grpc: crate::http::grpc::metrics::GrpcMetrics::new(meter),
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

/// The router for `state`, to merge into a service's own app. It sets no fallback of its own
/// (axum cannot merge two), so an app's unknown paths get the app's answer, though they pass
/// through this router's layers (HTTP metrics, as route `unmatched`). [`standalone_router`] is
/// the one to serve alone.
pub fn router(state: Arc<AppState>) -> Router {
    build(state, false)
}

/// [`router`] with a fallback of its own, for a server that serves nothing else (as
/// `kiln-server` does): an unknown path answers 404, and Triton's shared memory, logging and
/// trace endpoints 501, each with the v2 error body (`{"error": ...}`) and counted in the
/// HTTP metrics under the route `unmatched`. (axum refuses to merge two routers that both
/// have a fallback, so [`router`] has none.)
pub fn standalone_router(state: Arc<AppState>) -> Router {
    build(state, true)
}

fn build(state: Arc<AppState>, fallback: bool) -> Router {
    let limit = state.config.max_body_bytes;
    let routes = Router::new()
        .route("/v2/health/live", get(live))
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
            get(crate::http::model_config::model_config),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(crate::http::model_config::model_config_v),
        )
        .route("/v2/models/stats", get(crate::http::stats::all_stats))
        .route(
            "/v2/models/{model}/stats",
            get(crate::http::stats::model_stats),
        )
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(crate::http::stats::model_stats_v),
        )
        .route(
            "/v2/repository/index",
            post(crate::http::stats::repository_index),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route(
            "/v2/repository/models/{model}/load",
            post(crate::http::admin::load),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            post(crate::http::admin::unload),
        )
        .route("/metrics", get(metrics))
        .merge(crate::http::v1::routes());
    let routes = if fallback {
        routes.fallback(crate::http::unserved::no_route)
    } else {
        routes
    };
    routes
        .layer(axum::middleware::from_fn(
            crate::http::unserved::explain_refusals,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            record,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The route a response is counted under when its matched path is not enough to tell it
/// apart (v1's `{m}:predict` shares `/v1/models/{model}` with the model's readiness).
#[derive(Clone, Copy)]
pub(crate) struct RouteLabel(pub(crate) &'static str);

/// Counts every request by route and status code, and times it.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = match response.extensions().get::<RouteLabel>() {
        Some(label) => label.0.to_owned(),
        None => route,
    };
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

/// 200 `{"live": true}` while the process serves. The protocol's answer is the status code
/// alone (Triton's clients read nothing else, and Triton sends no body); KServe's clients
/// read the body KServe's own server sends, and fail on an empty one, so kiln sends it.
async fn live() -> Json<serde_json::Value> {
    Json(json!({"live": true}))
}

/// 200 `{"ready": true}` when not draining and the models `ready_when` names are loaded and
/// warmed; else 503 `{"ready": false}`.
async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let ready = server_is_ready(&s);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

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

/// A model's readiness (v2's `/ready`, v1's `GET /v1/models/{m}`): 200 `{"name", "ready":
/// true}`, 503 with `false`, or the lookup's error.
pub(crate) fn readiness(s: &AppState, model: &str, version: Option<&str>) -> Response {
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
    run(&s, &model, None, &headers, body).await
}

async fn infer_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run(&s, &model, Some(&version), &headers, body).await
}

/// The whole body as an inference body is read ([`Decoder::receive`](crate::http::decode)):
/// at most `max_body_bytes` (413 beyond, without reading the rest), within
/// `body_read_timeout` (408), under its share of the decode budget if it is big (its own
/// size, and a whole limit more when `compressed`).
pub(crate) async fn read_body(
    s: &AppState,
    body: Body,
    compressed: bool,
) -> Result<crate::http::decode::Received, ApiError> {
    s.decoder
        .receive(
            body,
            s.config.max_body_bytes,
            s.config.body_read_timeout,
            compressed,
        )
        .await
}

async fn run(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // What can be refused before the body is read is: an unknown model or version, a model
    // with no version serving (503, as v1 does), a coding kiln does not read, a malformed
    // deadline.
    let handle = find(s, model, version)?;
    if handle.current_version().is_none() {
        return Err(crate::http::models::not_serving(model, &handle));
    }
    let coding = compression::request_coding(headers)?;
    let timeout = transport_timeout(headers)?;
    let header_len = headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("not text"));
    let received = read_body(s, body, coding.is_some()).await?;
    let (request, inputs) = s
        .decoder
        .decode_encoded(
            received.body,
            received.share,
            coding,
            header_len,
            s.config.max_body_bytes,
        )
        .await?;
    let call = infer::Call {
        model,
        version,
        inputs,
        outputs: request
            .outputs
            .iter()
            .map(|o| infer::Wanted {
                name: o.name.clone(),
                classes: o.parameters.classification,
            })
            .collect(),
        timeout: infer::deadline(timeout, request.parameters.timeout),
        priority: request.parameters.priority,
    };
    let answer = match infer::run(s, call).await {
        Ok(a) => a,
        Err(e) => {
            infer::log_failure("http", model, version, request.id.as_deref(), &e);
            return Err(e);
        }
    };
    let mut tail = Vec::new();
    let mut json_bytes = 0;
    let outputs = answer
        .outputs
        .into_iter()
        .map(|(n, t)| {
            let binary = request.binary_output(&n);
            if !binary {
                json_bytes += json_size(&t);
            }
            let (out, bytes) = protocol::output(n, t, binary);
            tail.extend(bytes.unwrap_or_default());
            out
        })
        .collect();
    let response = InferResponse {
        model_name: model.to_owned(),
        model_version: Some(answer.version),
        id: request.id,
        outputs,
    };
    let tail_len = tail.len();
    let written = write_answer(s, headers, json_bytes, tail_len, move || {
        let mut body = serde_json::to_vec(&response)?;
        let json_len = body.len();
        body.extend(tail);
        Ok((body, json_len))
    })
    .await?;
    let content_type = if tail_len == 0 {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let json_len = written.json_len;
    let mut response = written.response(content_type);
    if tail_len > 0 {
        response.headers_mut().insert(
            axum::http::HeaderName::from_static(HEADER_LENGTH),
            axum::http::HeaderValue::from(json_len),
        );
    }
    Ok(response)
}

/// The client's deadline from the `kiln-timeout-ms` header, if it sent one.
///
/// # Errors
/// 400 for a value that is not a whole number of milliseconds.
pub(crate) fn transport_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    headers
        .get(TIMEOUT_HEADER)
        .map(|raw| {
            raw.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{TIMEOUT_HEADER} must be a whole number of milliseconds"
                    ))
                })
        })
        .transpose()
}

/// The least bytes of JSON text `t` takes to write: some 4 a value, a string's own besides.
pub(crate) fn json_size(t: &crate::Tensor) -> usize {
    let strings = match t.data() {
        crate::TensorSlice::String(v) => v.iter().map(String::len).sum::<usize>(),
        _ => 0,
    };
    t.len() * 4 + strings
}

/// An answer's body, written and maybe compressed.
pub(crate) struct Written {
    body: Vec<u8>,
    coded: Option<compression::Coding>,
    /// Bytes of JSON at its start (the rest is binary data).
    json_len: usize,
}

impl Written {
    /// The response: `content_type`, `Vary: accept-encoding`, and `Content-Encoding` when
    /// compressed.
    pub(crate) fn response(self, content_type: &'static str) -> Response {
        let mut response = (
            [(axum::http::header::CONTENT_TYPE, content_type)],
            self.body,
        )
            .into_response();
        let h = response.headers_mut();
        h.insert(
            axum::http::header::VARY,
            axum::http::HeaderValue::from_static("accept-encoding"),
        );
        if let Some(c) = self.coded {
            h.insert(axum::http::header::CONTENT_ENCODING, compression::header(c));
        }
        response
    }
}

/// An answer's body from `write` (its JSON, then `tail_len` bytes of binary data; it returns
/// the body and the JSON's length), compressed when the client asks (`Accept-Encoding`) and
/// the answer is worth it. Written on a decode thread when the work is big: `json_bytes` of
/// JSON text to write (a big output as JSON holds a CPU for milliseconds), plus the tail when
/// compressing (compressing costs about what writing does).
///
/// # Errors
/// 500 if writing failed or panicked.
pub(crate) async fn write_answer(
    s: &AppState,
    headers: &HeaderMap,
    json_bytes: usize,
    tail_len: usize,
    write: impl FnOnce() -> serde_json::Result<(Vec<u8>, usize)> + Send + 'static,
) -> Result<Written, ApiError> {
    let coding = compression::response_coding(headers);
    let encode = move || {
        let (body, json_len) = write()?;
        let (body, coded) = compression::answer(coding, body);
        Ok::<_, serde_json::Error>(Written {
            body,
            coded,
            json_len,
        })
    };
    let work = json_bytes + if coding.is_some() { tail_len } else { 0 };
    if work >= crate::http::decode::INLINE_MAX_BYTES {
        s.decoder.off_workers(encode).await?
    } else {
        encode()
    }
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
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
