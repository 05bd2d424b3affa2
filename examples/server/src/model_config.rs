//! `GET /v2/models/{m}[/versions/{v}]/config`: the model's configuration in Triton's JSON
//! schema (`model_config.proto` as JSON), which Triton's tools and the clients'
//! `get_model_config` read. Built from what kiln really serves: the signature ONNX Runtime
//! reports and the batching settings in force; nothing is stored beside the model.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln::TensorInfo;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::protocol;
use crate::routes::{find, AppState};

fn config(s: &AppState, model: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let handle = find(s, model, version)?;
    let (Some(meta), Some(batch)) = (handle.metadata(), handle.config()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model `{model}` is not serving ({})", handle.status().state),
        ));
    };
    // With a batch dim, Triton's dims leave it out and max_batch_size says how many rows.
    let skip = usize::from(meta.batch_dim);
    let describe = |infos: &[TensorInfo]| -> Vec<Value> {
        infos
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "data_type": format!("TYPE_{}", protocol::datatype(t.element_type)),
                    "dims": t.dims.iter().skip(skip).map(|d| d.unwrap_or(-1)).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    let provider = handle.status().provider.unwrap_or_default();
    let kind = if provider.to_ascii_lowercase().contains("cuda") {
        "KIND_GPU"
    } else {
        "KIND_CPU"
    };
    let mut doc = json!({
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": if meta.batch_dim { batch.max_batch_size } else { 0 },
        "input": describe(&meta.inputs),
        "output": describe(&meta.outputs),
        "instance_group": [{"count": batch.instances, "kind": kind}],
    });
    if meta.batch_dim {
        doc["dynamic_batching"] = json!({
            "preferred_batch_size": batch.preferred_batch_sizes,
            "max_queue_delay_microseconds": batch.max_queue_delay_us,
            "priority_levels": batch.priority_levels,
            "default_queue_policy": {
                "default_timeout_microseconds": batch.default_timeout_ms * 1000,
                "max_queue_size": batch.max_queue_requests,
            },
        });
    }
    Ok(Json(doc))
}

/// `GET /v2/models/{m}/config`.
pub(crate) async fn model_config(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    config(&s, &model, None)
}

/// `GET /v2/models/{m}/versions/{v}/config`.
pub(crate) async fn model_config_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    config(&s, &model, Some(&version))
}
