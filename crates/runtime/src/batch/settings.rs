//! [`BatchConfig`] checked once, against the model's signature, into the form the scheduler
//! runs on: the queue's policy, padding resolved to input and output positions, durations.
//! Nothing downstream re-validates or re-derives a setting; an invalid combination fails
//! here, naming the field.

use std::time::Duration;

use super::config::BatchConfig;
use super::queue::Policy;
use crate::error::Result;
use crate::metadata::ModelMetadata;

/// Padding resolved against the signature.
#[derive(Debug, Clone)]
pub(crate) struct Padding {
    /// Position of the padded input in the model's input order.
    pub(crate) input: usize,
    /// Its padded dim.
    pub(crate) dim: usize,
    /// The value padded positions get.
    pub(crate) value: f64,
    /// `(output position, dim)` trimmed back to each request's length.
    pub(crate) trims: Vec<(usize, usize)>,
}

/// A validated [`BatchConfig`] for one model signature.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The configuration as given (queue limits, instances, warm-up, spin).
    pub(crate) config: BatchConfig,
    /// Batch formation.
    pub(crate) policy: Policy,
    /// Padding of one variable-length dim, if configured.
    pub(crate) padding: Option<Padding>,
    /// Deadline given to requests without a shorter one of their own.
    pub(crate) default_timeout: Option<Duration>,
    /// The callers' polling budget.
    pub(crate) spin: Duration,
    /// How long a graceful drain may take.
    pub(crate) drain_timeout: Duration,
}

impl Settings {
    /// Checks `config` on its own and against `metadata`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidConfig`] naming the field.
    pub(crate) fn check(config: &BatchConfig, metadata: &ModelMetadata) -> Result<Self> {
        config.validate()?;
        config.validate_for(metadata)?;
        // `validate_for` checked every name, so each lookup below finds its position.
        let padding = config.padding.as_ref().and_then(|p| {
            let input = metadata.inputs.iter().position(|i| i.name == p.input)?;
            let trims = p
                .trim_outputs
                .iter()
                .filter_map(|t| {
                    let o = metadata.outputs.iter().position(|o| o.name == t.output)?;
                    Some((o, t.dim))
                })
                .collect();
            Some(Padding {
                input,
                dim: p.dim,
                value: p.value,
                trims,
            })
        });
        let policy = Policy {
            batchable: metadata.batch_dim,
            max_rows: if metadata.batch_dim {
                config.max_batch_size
            } else {
                1
            },
            preferred: config.preferred_sorted(),
            delay: config.max_queue_delay(),
            low_period: config.low_priority_period(),
        };
        Ok(Self {
            policy,
            padding,
            default_timeout: config.default_timeout(),
            spin: config.spin(),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            config: config.clone(),
        })
    }
}
