//! KServe's v1 REST protocol, beside v2: what a KServe transformer calls its predictor with
//! by default (`--predictor_protocol v1`), and what KServe's SDK client sends with
//! `RESTConfig(protocol="v1")`.
//!
//! - `GET /` answers `{"status": "alive"}`: v1 has no server readiness, so KServe's
//!   transformer health check reads this liveness instead.
//! - `GET /v1/models` lists the models: `{"models": [...]}`.
//! - `GET /v1/models/{m}` is the model's readiness: 200 `{"name", "ready": true}`, or 503
//!   `{"name", "ready": false}` (loading, failed, draining), 404 for an unknown model.
//! - `POST /v1/models/{m}:predict` takes `{"instances": [...]}` and answers
//!   `{"predictions": [...]}`, or TensorFlow Serving's columns, `{"inputs": ...}`, answered
//!   `{"outputs": ...}` (`request` says how rows and columns become tensors, `answer` how
//!   tensors become predictions), through the
//!   same inference path, limits, deadline header, compression and errors as v2
//!   (`{"error": "..."}`, which is also v1's). `:explain` answers 501 (404 for an unknown
//!   model): kiln has no explainer.
//!
//! A path parameter cannot end in a literal suffix in this router, so `{m}:predict` is the
//! model segment split at its last `:` (a model name holding a `:` still works).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::models::{find, not_serving};
use crate::http::routes::{
    read_body, readiness, transport_timeout, write_answer, AppState, RouteLabel,
};
use crate::http::{compression, infer};

mod answer;
mod request;
mod shape;

/// The v1 routes, for [`routes::router`] to merge.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(live))
        .route("/v1/models", get(list))
        .route("/v1/models/{model}", get(ready).post(verb))
}

/// KServe's liveness body.
async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

async fn list(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"models": s.repo.names()}))
}

async fn ready(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    readiness(&s, &model, None)
}

/// `POST /v1/models/{m}:predict` (or `:explain`, 501), counted in the HTTP metrics under a
/// route of its own (`/v1/models/{model}:predict`), apart from the readiness polls that share
/// its path.
async fn verb(
    State(s): State<Arc<AppState>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (route, answer) = match target.rsplit_once(':') {
        Some((model, "predict")) => (
            "/v1/models/{model}:predict",
            predict(&s, model, &headers, body).await,
        ),
        Some((model, "explain")) => (
            "/v1/models/{model}:explain",
            find(&s, model, None).and_then(|_| {
                Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "kiln serves no explainer: only :predict",
                ))
            }),
        ),
        _ => (
            "/v1/models/{model}",
            Err(ApiError::not_found(format!(
                "no such v1 endpoint: POST /v1/models/{target}; predictions are POST \
                 /v1/models/{{model}}:predict"
            ))),
        ),
    };
    let mut response = answer.into_response();
    response.extensions_mut().insert(RouteLabel(route));
    response
}

async fn predict(
    s: &AppState,
    model: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let handle = find(s, model, None)?;
    // Decoded by the serving version's signature; the version that runs it checks it again.
    let signature = Arc::new(
        handle
            .metadata()
            .ok_or_else(|| not_serving(model, &handle))?,
    );
    let coding = compression::request_coding(headers)?;
    let received = read_body(s, body, coding.is_some()).await?;
    let limits = s.decoder.limits();
    let (inputs, form) = s
        .decoder
        .parse_encoded(
            received.body,
            received.share,
            coding,
            s.config.max_body_bytes,
            move |b: &[u8]| request::decode(b, &signature, limits).map_err(ApiError::from),
        )
        .await?;
    let call = infer::Call {
        model,
        version: None,
        inputs,
        outputs: Vec::new(),
        timeout: transport_timeout(headers)?,
        priority: None,
    };
    let failed = |e: ApiError| {
        infer::log_failure("v1", model, None, None, &e);
        e
    };
    let answer = infer::run(s, call).await.map_err(failed)?;
    let too_big = |m| failed(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m));
    let predictions = match form {
        request::Form::Rows(rows) => {
            // Split by the signature of the version that ran it (a swap may have come since
            // the request was decoded).
            let per_row =
                answer::per_row(&answer.metadata, &answer.outputs, rows).map_err(|(ours, m)| {
                    failed(if ours {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)
                    } else {
                        ApiError::bad_request(m)
                    })
                })?;
            answer::Predictions::new(answer.outputs, per_row, rows).map_err(too_big)?
        }
        request::Form::Columns => answer::Predictions::columns(answer.outputs).map_err(too_big)?,
    };
    let json_bytes = predictions.json_size();
    let written = write_answer(s, headers, json_bytes, 0, move || {
        let body = serde_json::to_vec(&predictions)?;
        let len = body.len();
        Ok((body, len))
    })
    .await?;
    Ok(written.response("application/json"))
}

/// Model signatures for the tests of the v1 modules.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{ElementType, ModelMetadata, TensorInfo};

    pub(crate) fn info(name: &str, element_type: ElementType, dims: &[Option<i64>]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            element_type,
            dims: dims.to_vec(),
        }
    }

    pub(crate) fn meta(inputs: Vec<TensorInfo>, outputs: Vec<TensorInfo>) -> ModelMetadata {
        let batch_dim = inputs
            .iter()
            .chain(&outputs)
            .all(|t| t.dims.first().is_some_and(Option::is_none));
        ModelMetadata {
            name: "m".into(),
            inputs,
            outputs,
            batch_dim,
            image_size: None,
            labels: Default::default(),
        }
    }
}
