//! A model's configuration in Triton's schema (`ModelConfig`), which Triton's tools and the
//! clients' `get_model_config` read: over gRPC as the message, over REST
//! (`GET /v2/models/{m}[/versions/{v}]/config`) as its JSON form. Built once, as the message,
//! from what kiln really serves: the signature ONNX Runtime reports, the batching settings
//! in force and the version's label files; nothing is stored beside the model.

use std::sync::Arc;

use crate::{ElementType, TensorInfo};
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::grpc::pb::{self, model_instance_group::Kind, DataType};
use crate::http::models::{find, not_serving};
use crate::http::routes::AppState;

/// Triton's data type enum for an element type.
pub(crate) fn data_type(ty: ElementType) -> DataType {
    match ty {
        ElementType::F32 => DataType::TypeFp32,
        ElementType::F64 => DataType::TypeFp64,
        ElementType::I64 => DataType::TypeInt64,
        ElementType::I32 => DataType::TypeInt32,
        ElementType::I8 => DataType::TypeInt8,
        ElementType::U8 => DataType::TypeUint8,
        ElementType::Bool => DataType::TypeBool,
        ElementType::I16 => DataType::TypeInt16,
        ElementType::U16 => DataType::TypeUint16,
        ElementType::U32 => DataType::TypeUint32,
        ElementType::U64 => DataType::TypeUint64,
        ElementType::F16 => DataType::TypeFp16,
        ElementType::Bf16 => DataType::TypeBf16,
        ElementType::String => DataType::TypeString,
    }
}

/// The configuration of `model` (at `version`, which must be serving, if given).
pub(crate) fn config(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<pb::ModelConfig, ApiError> {
    let handle = find(s, model, version)?;
    let (Some(meta), Some(batch)) = (handle.metadata(), handle.config()) else {
        return Err(not_serving(model, &handle));
    };
    // With a batch dim, Triton's dims leave it out and max_batch_size says how many rows.
    let skip = usize::from(meta.batch_dim);
    let dims = |t: &TensorInfo| -> Vec<i64> {
        t.dims.iter().skip(skip).map(|d| d.unwrap_or(-1)).collect()
    };
    let provider = handle.status().provider.unwrap_or_default();
    let kind = if provider.to_ascii_lowercase().contains("cuda") {
        Kind::Gpu
    } else {
        Kind::Cpu
    };
    let clamp = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(pb::ModelConfig {
        name: model.to_owned(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: if meta.batch_dim {
            clamp(batch.max_batch_size)
        } else {
            0
        },
        input: meta
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.clone(),
                data_type: data_type(t.element_type).into(),
                dims: dims(t),
            })
            .collect(),
        output: meta
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.clone(),
                data_type: data_type(t.element_type).into(),
                dims: dims(t),
                // Where the serving version's labels for it came from, relative to the model.
                label_filename: if meta.labels.get(&t.name).is_some_and(|l| l.from_file()) {
                    crate::labels::label_file(&t.name)
                } else {
                    String::new()
                },
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: format!("{model}_0"),
            count: clamp(batch.instances),
            gpus: Vec::new(),
            kind: kind.into(),
        }],
        dynamic_batching: meta.batch_dim.then(|| pb::ModelDynamicBatching {
            preferred_batch_size: batch
                .preferred_batch_sizes
                .iter()
                .map(|&n| clamp(n))
                .collect(),
            max_queue_delay_microseconds: batch.max_queue_delay_us,
            priority_levels: batch.priority_levels as u64,
            // Triton numbers levels from 1; kiln's default level is its highest (0).
            default_priority_level: 1,
            default_queue_policy: Some(pb::ModelQueuePolicy {
                default_timeout_microseconds: batch.default_timeout_ms.saturating_mul(1000),
                max_queue_size: u32::try_from(batch.max_queue_requests).unwrap_or(u32::MAX),
            }),
        }),
    })
}

/// The protobuf JSON form of a configuration (field names as in the `.proto`, enums by name,
/// 64-bit integers as strings — what Triton's REST `/config` returns).
pub(crate) fn to_json(c: &pb::ModelConfig) -> Value {
    let tensor = |name: &str, ty: i32, dims: &[i64]| {
        json!({
            "name": name,
            "data_type": DataType::try_from(ty).unwrap_or(DataType::TypeInvalid).as_str_name(),
            "dims": dims.iter().map(i64::to_string).collect::<Vec<_>>(),
        })
    };
    let mut doc = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|t| tensor(&t.name, t.data_type, &t.dims)).collect::<Vec<_>>(),
        "output": c.output.iter().map(|t| {
            let mut out = tensor(&t.name, t.data_type, &t.dims);
            out["label_filename"] = json!(t.label_filename);
            out
        }).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "count": g.count,
            "kind": Kind::try_from(g.kind).unwrap_or(Kind::Auto).as_str_name(),
        })).collect::<Vec<_>>(),
    });
    if let Some(b) = &c.dynamic_batching {
        let policy = b.default_queue_policy.unwrap_or_default();
        doc["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds.to_string(),
            "priority_levels": b.priority_levels.to_string(),
            "default_priority_level": b.default_priority_level.to_string(),
            "default_queue_policy": {
                "default_timeout_microseconds": policy.default_timeout_microseconds.to_string(),
                "max_queue_size": policy.max_queue_size,
            },
        });
    }
    doc
}

/// `GET /v2/models/{m}/config`.
pub(crate) async fn model_config(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    config(&s, &model, None).map(|c| Json(to_json(&c)))
}

/// `GET /v2/models/{m}/versions/{v}/config`.
pub(crate) async fn model_config_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    config(&s, &model, Some(&version)).map(|c| Json(to_json(&c)))
}
