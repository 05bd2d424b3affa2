//! Batching, admission and lifecycle settings of one served model, validated once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a served model batches, admits and schedules requests. Every field has a default;
/// `serde` reads it with `deny_unknown_fields` (durations in microseconds or milliseconds, as
/// the field names say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Instances (worker threads, each with its own ONNX Runtime session). Default 1. More
    /// instances overlap runs; on a CPU, instances × intra-op threads should not exceed cores.
    pub instances: usize,
    /// Most rows (dim 0, summed over requests) in one batch. Default 64. A request with more
    /// rows is refused with `BatchTooLarge`. Ignored for models without a batch dimension.
    pub max_batch_size: usize,
    /// Batch sizes to cut at when more is queued than fits (largest that fits wins), and to
    /// close a waiting batch early. Default empty.
    pub preferred_batch_sizes: Vec<usize>,
    /// How long a batch may wait for more requests after its oldest arrived, in µs. Default 0:
    /// greedy, an idle instance takes whatever is queued at once, so nothing waits at low load.
    pub max_queue_delay_us: u64,
    /// Most requests waiting. Default 1024. Beyond it, requests fail at once with `Overloaded`.
    pub max_queue_requests: usize,
    /// Most input bytes waiting, as they are held in memory ([`crate::Tensor::memory_len`]: a
    /// string counts its `String` and heap block, not its text alone). Default 256 MiB.
    /// Beyond it, `Overloaded`; a request over it alone, `RequestTooLarge`.
    pub max_queue_bytes: usize,
    /// Default request timeout (queue + run), in ms; 0 means none. Default 0. A request may
    /// shorten it, never extend it.
    pub default_timeout_ms: u64,
    /// Priority levels (0 is the highest). Default 2.
    pub priority_levels: usize,
    /// Share of batches guaranteed to lower priority levels while higher ones have work, so
    /// they are not starved (0 < share ≤ 0.5). Default 0.1: at least every 10th batch, to the
    /// lower level whose oldest request has waited longest — once it has waited at least as
    /// long as the highest level's oldest, so a lower level is never served sooner than first
    /// come, first served would.
    pub low_priority_share: f64,
    /// Run warm-up batches on every instance before reporting Ready, so out-of-memory and
    /// slow first runs happen before traffic. Default true. Without `warmup_samples`, kiln
    /// invents them (zeros at each preferred size and at `max_batch_size`, other dynamic dims
    /// 1); a model may refuse invented inputs (a detector on a 1×1 image), so an invented
    /// warm-up that fails is logged and skipped, never a load failure.
    pub warmup: bool,
    /// Warm-up requests to run instead of invented ones, like Triton's `model_warmup`: each
    /// sample's shapes are known to be valid, so one that fails is a load failure naming the
    /// sample, input and shape. Default empty.
    pub warmup_samples: Vec<WarmupSample>,
    /// How long a graceful drain may take before queued requests are failed, in ms.
    /// Default 30000.
    pub drain_timeout_ms: u64,
    /// Most time a caller awaiting its answer polls before sleeping in the kernel, in µs
    /// (idle instances poll up to 50 µs of it). Default 500. A kernel wake-up costs tens of µs
    /// on a VM, as much as a small model's whole run: a caller polls for about 1.5 × the
    /// recent run time when that fits in this budget (only one caller per model at a time; at
    /// high concurrency the others sleep), else 50 µs. 0 turns polling off (lowest CPU use).
    pub spin_us: u64,
    /// Opt-in padding of one variable-length dim (sequence models), so requests of different
    /// lengths share a batch. Default none: different lengths never batch together.
    pub padding: Option<PaddingConfig>,
}

/// Padding of one variable-length input dim, and which output dims to trim back.
///
/// Only correct for models whose outputs at real positions do not depend on the pad values
/// (per-position outputs, or models that take a mask); kiln trims shapes, it cannot undo a
/// pooled output's use of padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaddingConfig {
    /// The input whose dim varies.
    pub input: String,
    /// That dim (1 or more; dim 0 is the batch).
    pub dim: usize,
    /// The value padded positions get. Default 0.
    #[serde(default)]
    pub value: f64,
    /// Outputs whose `dim` follows the input's length, trimmed back per request.
    #[serde(default)]
    pub trim_outputs: Vec<OutputTrim>,
}

/// One configured warm-up request (Triton's `model_warmup` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSample {
    /// A label for logs and errors.
    pub name: String,
    /// Rows (dim 0) for a model with a batch dim; must be 1 without one. Default 1.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Every model input by name: its dims after the batch dim (all its dims for a model
    /// without one), and its data.
    pub inputs: std::collections::BTreeMap<String, WarmupInput>,
    /// How many times the sample runs on each instance. Default 1.
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

/// One input of a warm-up sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupInput {
    /// Dims after the batch dim (all dims for a model without a batch dim).
    pub dims: Vec<usize>,
    /// What the tensor holds. Default zeros.
    #[serde(default)]
    pub data: WarmupData,
}

/// The contents of a warm-up input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmupData {
    /// Zeros (Triton's `zero_data`).
    #[default]
    Zero,
    /// Deterministic pseudo-random values in [0, 1) for floats, [0, 100) for integers
    /// (Triton's `random_data`).
    Random,
}

/// An output dim trimmed back to each request's own length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTrim {
    /// Output name.
    pub output: String,
    /// Its dim that has the padded length.
    pub dim: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            instances: 1,
            max_batch_size: 64,
            preferred_batch_sizes: Vec::new(),
            max_queue_delay_us: 0,
            max_queue_requests: 1024,
            max_queue_bytes: 256 << 20,
            default_timeout_ms: 0,
            priority_levels: 2,
            low_priority_share: 0.1,
            warmup: true,
            warmup_samples: Vec::new(),
            drain_timeout_ms: 30_000,
            spin_us: 500,
            padding: None,
        }
    }
}

impl WarmupSample {
    /// The full shape of each input (model input order), checked against the signature.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`warmup_samples`) naming the sample and what does not fit.
    pub(crate) fn check(
        &self,
        metadata: &crate::metadata::ModelMetadata,
        max_batch_size: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "warmup_samples",
            reason: format!("sample {:?}: {reason}", self.name),
        };
        if self.count == 0 || self.batch_size == 0 {
            return Err(bad("batch_size and count must be at least 1".into()));
        }
        if metadata.batch_dim && self.batch_size > max_batch_size {
            return Err(bad(format!(
                "batch_size {} is over max_batch_size {max_batch_size}",
                self.batch_size
            )));
        }
        if !metadata.batch_dim && self.batch_size != 1 {
            return Err(bad(
                "the model has no batch dim: batch_size must be 1".into()
            ));
        }
        if let Some(unknown) = self
            .inputs
            .keys()
            .find(|k| !metadata.inputs.iter().any(|i| &i.name == *k))
        {
            return Err(bad(format!("the model has no input {unknown:?}")));
        }
        metadata
            .inputs
            .iter()
            .map(|info| {
                let input = self
                    .inputs
                    .get(&info.name)
                    .ok_or_else(|| bad(format!("input {:?} is missing", info.name)))?;
                let shape: Vec<usize> = if metadata.batch_dim {
                    std::iter::once(self.batch_size)
                        .chain(input.dims.iter().copied())
                        .collect()
                } else {
                    input.dims.clone()
                };
                let fits = shape.len() == info.dims.len()
                    && shape
                        .iter()
                        .zip(&info.dims)
                        .all(|(&s, d)| s > 0 && d.is_none_or(|d| i64::try_from(s) == Ok(d)));
                if !fits {
                    return Err(bad(format!(
                        "input {:?} would have shape {shape:?}, the model declares {:?}",
                        info.name, info.dims
                    )));
                }
                Ok(shape)
            })
            .collect()
    }
}

impl BatchConfig {
    /// Checks every field and their combinations.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.instances == 0 || self.instances > 256 {
            return bad("instances", format!("{} is not in 1..=256", self.instances));
        }
        if self.max_batch_size == 0 {
            return bad("max_batch_size", "must be at least 1".into());
        }
        if let Some(&p) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > self.max_batch_size)
        {
            return bad(
                "preferred_batch_sizes",
                format!("{p} is not in 1..={} (max_batch_size)", self.max_batch_size),
            );
        }
        if self.max_queue_requests == 0 {
            return bad("max_queue_requests", "must be at least 1".into());
        }
        if self.max_queue_bytes == 0 {
            return bad("max_queue_bytes", "must be at least 1".into());
        }
        if self.priority_levels == 0 || self.priority_levels > 16 {
            return bad(
                "priority_levels",
                format!("{} is not in 1..=16", self.priority_levels),
            );
        }
        if !(self.low_priority_share > 0.0 && self.low_priority_share <= 0.5) {
            return bad(
                "low_priority_share",
                format!("{} is not in (0, 0.5]", self.low_priority_share),
            );
        }
        Ok(())
    }

    /// Checks the padding settings against the model's signature.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `padding` and what does not match.
    pub fn validate_for(&self, metadata: &crate::metadata::ModelMetadata) -> Result<()> {
        for s in &self.warmup_samples {
            s.check(metadata, self.max_batch_size)?;
        }
        let Some(p) = &self.padding else {
            return Ok(());
        };
        let bad = |reason: String| {
            Err(Error::InvalidConfig {
                field: "padding",
                reason,
            })
        };
        if !metadata.batch_dim {
            return bad("the model has no batch dimension".into());
        }
        let Some(input) = metadata.inputs.iter().find(|i| i.name == p.input) else {
            return bad(format!("no input named {:?}", p.input));
        };
        if p.dim == 0 || input.dims.get(p.dim) != Some(&None) {
            return bad(format!(
                "dim {} of input {:?} is not a dynamic non-batch dim (dims {:?})",
                p.dim, p.input, input.dims
            ));
        }
        for t in &p.trim_outputs {
            let Some(out) = metadata.outputs.iter().find(|o| o.name == t.output) else {
                return bad(format!("no output named {:?}", t.output));
            };
            if t.dim == 0 || out.dims.get(t.dim) != Some(&None) {
                return bad(format!(
                    "dim {} of output {:?} is not a dynamic non-batch dim (dims {:?})",
                    t.dim, t.output, out.dims
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn spin(&self) -> Duration {
        Duration::from_micros(self.spin_us)
    }

    pub(crate) fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        (self.default_timeout_ms > 0).then(|| Duration::from_millis(self.default_timeout_ms))
    }

    /// Every how many batches a lower level gets its turn.
    pub(crate) fn low_priority_period(&self) -> usize {
        (1.0 / self.low_priority_share).round().max(2.0) as usize
    }

    /// Preferred sizes, sorted, deduplicated.
    pub(crate) fn preferred_sorted(&self) -> Vec<usize> {
        let mut p = self.preferred_batch_sizes.clone();
        p.sort_unstable();
        p.dedup();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_field_is_named() {
        let field = |c: BatchConfig| match c.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let d = BatchConfig::default;
        assert_eq!(
            field(BatchConfig {
                instances: 0,
                ..d()
            }),
            "instances"
        );
        assert_eq!(
            field(BatchConfig {
                max_batch_size: 0,
                ..d()
            }),
            "max_batch_size"
        );
        assert_eq!(
            field(BatchConfig {
                preferred_batch_sizes: vec![128],
                ..d()
            }),
            "preferred_batch_sizes"
        );
        assert_eq!(
            field(BatchConfig {
                max_queue_requests: 0,
                ..d()
            }),
            "max_queue_requests"
        );
        assert_eq!(
            field(BatchConfig {
                priority_levels: 0,
                ..d()
            }),
            "priority_levels"
        );
        assert_eq!(
            field(BatchConfig {
                low_priority_share: 0.0,
                ..d()
            }),
            "low_priority_share"
        );
        assert!(d().validate().is_ok());
        assert_eq!(d().low_priority_period(), 10);
    }

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let c: BatchConfig =
            serde_json::from_str(r#"{"max_batch_size": 32, "preferred_batch_sizes": [16, 8]}"#)
                .expect("parse");
        assert_eq!((c.max_batch_size, c.preferred_sorted()), (32, vec![8, 16]));
        assert!(serde_json::from_str::<BatchConfig>(r#"{"max_batch": 32}"#).is_err());
    }
}
