//! Triton's statistics and repository-index extensions, for both protocols: what
//! `get_inference_statistics` and `get_model_repository_index` return, built from the runtime's
//! counters and model states. kiln counts requests, batches and rows per batch size exactly, and
//! times them as Triton does, with one difference: a batch's stacking, run and splitting are
//! timed as one, in `compute_infer` (`compute_input` and `compute_output` count, with `ns` 0).
//! Requests are timed from entering the batcher's queue to their outputs being ready (decoding
//! and encoding are in `/metrics`' `kiln_request_duration_seconds`).

use std::sync::Arc;

use crate::ModelState;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::grpc::pb;
use crate::http::models::{find, state_name};
use crate::http::routes::AppState;

/// Statistics of `model` (all models when `None`), of `version` if given (which must be the
/// serving one). A model with no version serving has no entry.
///
/// # Errors
/// An unknown model or version (404).
pub(crate) fn statistics(
    s: &AppState,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<pb::ModelStatistics>, ApiError> {
    let handles = match model {
        Some(m) => vec![find(s, m, version)?],
        None => s.repo.handles(),
    };
    Ok(handles
        .iter()
        .filter_map(|h| {
            let st = h.stats()?;
            let timed = |count: u64, ns: u64| Some(pb::StatisticDuration { count, ns });
            let count = |count: u64| timed(count, 0);
            Some(pb::ModelStatistics {
                name: h.name().to_owned(),
                version: h.current_version().unwrap_or_default(),
                last_inference: st.last_inference_ms,
                inference_count: st.succeeded_rows,
                execution_count: st.batches,
                // Per request, as Triton's: each succeeded request counts its batch's time.
                inference_stats: Some(pb::InferStatistics {
                    success: timed(st.succeeded, st.success_ns),
                    fail: timed(st.failed + st.expired + st.overloaded, st.fail_ns),
                    queue: timed(st.succeeded, st.queue_ns),
                    compute_input: count(st.succeeded),
                    compute_infer: timed(st.succeeded, st.compute_ns),
                    compute_output: count(st.succeeded),
                }),
                batch_stats: st
                    .batch_sizes
                    .iter()
                    .zip(&st.batch_ns)
                    .enumerate()
                    .filter(|&(_, (&n, _))| n > 0)
                    .map(|(rows, (&n, &ns))| pb::InferBatchStatistics {
                        batch_size: rows as u64,
                        compute_input: count(n),
                        compute_infer: timed(n, ns),
                        compute_output: count(n),
                    })
                    .collect(),
            })
        })
        .collect())
}

/// Triton's JSON form of statistics (`{"model_stats": [...]}`, 64-bit counts as numbers, as
/// Triton's REST answers).
pub(crate) fn statistics_json(stats: &[pb::ModelStatistics]) -> Value {
    let d = |d: &Option<pb::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let entries: Vec<Value> = stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": d(&i.success),
                    "fail": d(&i.fail),
                    "queue": d(&i.queue),
                    "compute_input": d(&i.compute_input),
                    "compute_infer": d(&i.compute_infer),
                    "compute_output": d(&i.compute_output),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": d(&b.compute_input),
                    "compute_infer": d(&b.compute_infer),
                    "compute_output": d(&b.compute_output),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": entries })
}

/// Triton's name for a lifecycle state, and the reason for one that does not serve.
fn triton_state(state: &ModelState, last_error: Option<String>) -> (&'static str, String) {
    match state {
        ModelState::Ready => ("READY", String::new()),
        ModelState::Loading | ModelState::Warming => ("LOADING", String::new()),
        ModelState::Draining => ("UNLOADING", String::new()),
        ModelState::Unloaded => ("UNAVAILABLE", "unloaded".into()),
        ModelState::Failed { .. } => ("UNAVAILABLE", last_error.unwrap_or_default()),
    }
}

/// Every model found in the repository with its serving version and state (only the ready
/// ones with `ready_only`); without `ready_only`, also every directory under the root that
/// serves nothing (state `UNAVAILABLE`, the reason why), as Triton lists a model it found
/// and could not load.
pub(crate) fn index(
    s: &AppState,
    ready_only: bool,
) -> Vec<pb::repository_index_response::ModelIndex> {
    let mut models: Vec<_> = s
        .repo
        .handles()
        .iter()
        .filter(|h| !ready_only || h.is_ready())
        .map(|h| {
            let status = h.status();
            let (state, reason) = triton_state(&status.state, status.last_error);
            pb::repository_index_response::ModelIndex {
                name: h.name().to_owned(),
                version: status.version.unwrap_or_default(),
                state: state.to_owned(),
                reason,
            }
        })
        .collect();
    if !ready_only {
        let served: std::collections::HashSet<String> =
            models.iter().map(|m| m.name.clone()).collect();
        let unpublished = s.repo.unpublished().into_iter();
        // A name being published now has a handle while the last scan's list still names it.
        let unpublished = unpublished.filter(|(name, _)| !served.contains(name));
        models.extend(unpublished.map(|(name, reason)| {
            pb::repository_index_response::ModelIndex {
                name,
                version: String::new(),
                state: "UNAVAILABLE".to_owned(),
                reason,
            }
        }));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
}

/// Triton's JSON form of the index: an array of `{name, version, state, reason}`.
pub(crate) fn index_json(models: &[pb::repository_index_response::ModelIndex]) -> Value {
    models
        .iter()
        .map(|m| {
            let mut e = json!({"name": m.name, "state": m.state});
            if !m.version.is_empty() {
                e["version"] = json!(m.version);
            }
            if !m.reason.is_empty() {
                e["reason"] = json!(m.reason);
            }
            e
        })
        .collect()
}

/// `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics (`model_stats`, what
/// `get_inference_statistics` reads; see [`crate::http::stats`]) and, beside them, kiln's own
/// counters for people and benchmarks that need exact batch sizes: the model's lifecycle
/// `state` and `last_error` (the last load failure, kept while an older version serves on),
/// and the serving version's requests by outcome, batches, rows and the batch-size histogram
/// (`{"rows": batches}`), since it was loaded. A model with no version serving answers its
/// state alone, `version` null and `model_stats` empty. Monitoring should use `/metrics`.
pub(crate) async fn model_stats(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    stats_of(&s, &model, None)
}

pub(crate) async fn model_stats_v(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    stats_of(&s, &model, Some(&version))
}

/// `GET /v2/models/stats`: every serving model's statistics, Triton's schema.
pub(crate) async fn all_stats(
    State(s): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = crate::http::stats::statistics(&s, None, None)?;
    Ok(Json(crate::http::stats::statistics_json(&stats)))
}

/// `POST /v2/repository/index`: every model found, its version and state (Triton's schema;
/// body `{"ready": true}` for the ready ones only). The body is read as inference bodies
/// are, within `--body-timeout-s` (408), but at most 64 KiB (413), errors in JSON.
pub(crate) async fn repository_index(
    State(s): State<Arc<AppState>>,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    // `{"ready": true}` at most: a small body, decoded inline, never a budget share.
    let limit = crate::http::decode::INLINE_MAX_BYTES - 1;
    let body = s
        .decoder
        .receive(body, limit, s.config.body_read_timeout, false)
        .await?
        .body;
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
    Ok(Json(crate::http::stats::index_json(
        &crate::http::stats::index(&s, query.ready),
    )))
}

fn stats_of(
    s: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = find(s, model, version)?;
    let status = h.status();
    let mut doc = crate::http::stats::statistics_json(&crate::http::stats::statistics(
        s,
        Some(model),
        version,
    )?);
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
