//! What both protocols ask about models, answered once: finding a model (and checking the
//! version asked for), its metadata, its readiness and the server's, the lifecycle state
//! names, and the protocol extensions served. REST (`routes`) and gRPC (`grpc`) only encode
//! the answers.

use std::sync::atomic::Ordering;

use crate::ModelHandle;
use axum::http::StatusCode;

use crate::http::error::ApiError;
use crate::http::protocol::{self, TensorMetadata};
use crate::http::routes::AppState;

/// The model, and the version if one is named (it must be the one serving).
pub(crate) fn find(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<ModelHandle, ApiError> {
    let handle = s
        .repo
        .get(model)
        .ok_or_else(|| match s.repo.unpublished_reason(model) {
            Some(reason) => ApiError::not_found(format!("model `{model}` is not served: {reason}")),
            None => ApiError::not_found(format!(
                "unknown model `{model}`; served: {:?}",
                s.repo.names()
            )),
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
    let describe = |infos: &[crate::TensorInfo]| -> Vec<TensorMetadata> {
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
/// `ServerMetadata`); `schedule_policy` is the request's `priority` and `timeout` parameters,
/// `classification` an output's (`classify`).
pub(crate) const EXTENSIONS: [&str; 6] = [
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "schedule_policy",
    "classification",
];

/// The lifecycle state's name (`loading`, `warming`, `ready`, `draining`, `unloaded`,
/// `failed`); the reason of a failure is in `last_error`.
pub(crate) fn state_name(state: &crate::ModelState) -> &'static str {
    use crate::ModelState as S;
    match state {
        S::Loading => "loading",
        S::Warming => "warming",
        S::Ready => "ready",
        S::Draining => "draining",
        S::Unloaded => "unloaded",
        S::Failed { .. } => "failed",
    }
}
