//! Warm-up: synthetic batches run on every instance before a version reports Ready, so slow
//! first runs (and out-of-memory at the largest batch) happen before traffic does.
//!
//! The inputs are invented: zeros, dim 0 at each warm-up batch size, every other dynamic
//! dim 1. A model may legitimately refuse such inputs (a detector's Concat fails on a 1×1 image),
//! so a warm-up kiln invented that fails is logged and skipped — never a load failure. A
//! model that cannot run real requests still fails them, with their own error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::backend::Backend;
use super::settings::Settings;
use super::shared::Shared;
use super::worker::run_guarded;
use crate::error::{Error, Result};
use crate::model::NamedTensors;
use crate::tensor::{with_element_type, Tensor};

/// Batch sizes to warm up at: each preferred size and `max_batch_size` (1 without a batch dim).
pub(crate) fn sizes(settings: &Settings) -> Vec<usize> {
    if !settings.config.warmup {
        return Vec::new();
    }
    let mut sizes = settings.policy.preferred.clone();
    sizes.push(settings.policy.max_rows);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Runs the warm-up batches on one instance. A failure (or a panic, or inputs too large to
/// invent) is logged and ends the warm-up early.
pub(crate) fn run(shared: &Shared, backend: &mut dyn Backend, sizes: &[usize]) {
    for &rows in sizes {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let inputs = invented(shared, rows)?;
            run_guarded(shared, backend, &inputs).map(drop)
        }))
        .unwrap_or_else(|_| {
            Err(Error::WorkerLost {
                model: shared.model.clone(),
                reason: "warm-up panicked".into(),
            })
        });
        if let Err(e) = outcome {
            tracing::warn!(model = %shared.model, rows, error = %e, "warm-up with invented inputs failed; skipped (not a load failure)");
            return;
        }
    }
}

/// Zero-filled inputs of `rows` rows (dynamic non-batch dims set to 1).
fn invented(shared: &Shared, rows: usize) -> Result<NamedTensors> {
    shared
        .metadata
        .inputs
        .iter()
        .map(|info| {
            let shape: Vec<usize> = info
                .dims
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Some(v) => usize::try_from(*v).unwrap_or(1).max(1),
                    None if i == 0 => rows,
                    None => 1,
                })
                .collect();
            let n = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= shared.max_input_elements.saturating_mul(rows.max(1)))
                .ok_or_else(|| Error::InputTooLarge {
                    model: shared.model.clone(),
                    name: info.name.clone(),
                    elements: usize::MAX,
                    limit: shared.max_input_elements,
                })?;
            let tensor = with_element_type!(info.element_type, T => Tensor::new(shape, vec![T::default(); n])?);
            Ok((info.name.clone(), tensor))
        })
        .collect()
}
