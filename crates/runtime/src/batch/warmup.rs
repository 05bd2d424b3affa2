//! Warm-up: synthetic batches run on every instance before a version reports Ready, so slow
//! first runs (and out-of-memory at the largest batch) happen before traffic does.
//!
//! The inputs are invented: zeros, dim 0 at each warm-up batch size, the dynamic height and
//! width of an image input at the size the exporter recorded in the model's metadata
//! (Ultralytics' `imgsz`, [`crate::ModelMetadata::image_size`]), every other dynamic dim 1.
//! A model may legitimately refuse such inputs (a detector's Concat fails on a 1×1 image, a
//! DBNet text detector wants sides that are multiples of 32), so a warm-up kiln invented that
//! fails is logged and skipped — never a load failure. A model that cannot run real requests
//! still fails them, with their own error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::backend::Backend;
use super::config::{WarmupData, WarmupSample};
use super::settings::Settings;
use super::shared::Shared;
use super::worker::run_guarded;
use crate::error::{Error, Result};
use crate::model::NamedTensors;
use crate::tensor::{with_element_type, ElementType, Item, Tensor};

/// What an instance runs before it serves.
#[derive(Debug, Clone)]
pub(crate) enum Plan {
    /// Nothing (`warmup: false`).
    Off,
    /// Invented inputs at these batch sizes: each preferred size and `max_batch_size` (1
    /// without a batch dim).
    Invented(Vec<usize>),
    /// The configured samples.
    Configured(Vec<WarmupSample>),
}

/// The warm-up plan of a version.
pub(crate) fn plan(settings: &Settings) -> Plan {
    let config = &settings.config;
    if !config.warmup {
        return Plan::Off;
    }
    if !config.warmup_samples.is_empty() {
        return Plan::Configured(config.warmup_samples.clone());
    }
    let mut sizes = settings.policy.preferred.clone();
    sizes.push(settings.policy.max_rows);
    sizes.sort_unstable();
    sizes.dedup();
    Plan::Invented(sizes)
}

/// Runs the warm-up on one instance.
///
/// # Errors
/// [`Error::WarmupFailed`] when a configured sample fails (invented ones never fail a load).
pub(crate) fn run(shared: &Shared, backend: &mut dyn Backend, plan: &Plan) -> Result<()> {
    match plan {
        Plan::Off => Ok(()),
        Plan::Invented(sizes) => {
            run_invented(shared, backend, sizes);
            Ok(())
        }
        Plan::Configured(samples) => samples
            .iter()
            .try_for_each(|s| run_sample(shared, backend, s)),
    }
}

fn run_sample(shared: &Shared, backend: &mut dyn Backend, sample: &WarmupSample) -> Result<()> {
    let shapes = sample.check(&shared.metadata, shared.settings.config.max_batch_size)?;
    let failed = |source: Error| Error::WarmupFailed {
        model: shared.model.clone(),
        sample: sample.name.clone(),
        shapes: shared
            .metadata
            .inputs
            .iter()
            .zip(&shapes)
            .map(|(i, s)| (i.name.clone(), s.clone()))
            .collect(),
        source: Box::new(source),
    };
    let inputs = shared
        .metadata
        .inputs
        .iter()
        .zip(&shapes)
        .enumerate()
        .map(|(k, (info, shape))| {
            let data = sample
                .inputs
                .get(&info.name)
                .map_or(WarmupData::Zero, |i| i.data);
            let n: usize = shape.iter().product();
            let tensor = with_element_type!(info.element_type, T => Tensor::new(shape.clone(), values::<T>(data, n, k as u64))?);
            Ok((info.name.clone(), tensor))
        })
        .collect::<Result<NamedTensors>>()
        .map_err(failed)?;
    for _ in 0..sample.count {
        run_guarded(shared, backend, &inputs).map_err(failed)?;
    }
    Ok(())
}

/// `n` values of a configured warm-up input.
fn values<T: Item>(data: WarmupData, n: usize, seed: u64) -> Vec<T> {
    match data {
        WarmupData::Zero => vec![T::from_f64(0.0); n],
        WarmupData::Random => {
            let mut x = seed.wrapping_mul(6364136223846793005) | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    T::from_f64(if matches!(T::TYPE, ElementType::F32 | ElementType::F64) {
                        (x % 1000) as f64 / 1000.0
                    } else {
                        (x % 100) as f64
                    })
                })
                .collect()
        }
    }
}

/// Runs invented warm-up batches. A failure (or a panic, or inputs too large to invent) is
/// logged and ends the warm-up early.
fn run_invented(shared: &Shared, backend: &mut dyn Backend, sizes: &[usize]) {
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

/// The shape invented for an input of `dims`: fixed dims as declared, a dynamic dim 0 at
/// `rows`, the dynamic height and width of an image (rank 4, NCHW with 1, 3 or 4 channels, or
/// NHWC likewise) at `image`, every other dynamic dim 1.
fn invented_shape(dims: &[Option<i64>], rows: usize, image: Option<(usize, usize)>) -> Vec<usize> {
    let channels = |d: Option<i64>| matches!(d, Some(1 | 3 | 4));
    let hw = match (image, dims) {
        (Some(_), [_, c, None, None]) if channels(*c) => Some(2),
        (Some(_), [_, None, None, c]) if channels(*c) => Some(1),
        _ => None,
    };
    dims.iter()
        .enumerate()
        .map(|(i, d)| match (d, image, hw) {
            (Some(v), ..) => usize::try_from(*v).unwrap_or(1).max(1),
            (None, ..) if i == 0 => rows,
            (None, Some((h, _)), Some(at)) if i == at => h,
            (None, Some((_, w)), Some(at)) if i == at + 1 => w,
            (None, ..) => 1,
        })
        .collect()
}

/// Zero-filled inputs of `rows` rows (see [`invented_shape`]).
fn invented(shared: &Shared, rows: usize) -> Result<NamedTensors> {
    shared
        .metadata
        .inputs
        .iter()
        .map(|info| {
            let shape = invented_shape(&info.dims, rows, shared.metadata.image_size);
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

#[cfg(test)]
mod tests {
    use super::invented_shape;

    #[test]
    fn image_inputs_get_the_recorded_size_and_other_dynamic_dims_one() {
        let nchw = [None, Some(3), None, None];
        assert_eq!(invented_shape(&nchw, 4, Some((320, 256))), [4, 3, 320, 256]);
        assert_eq!(invented_shape(&nchw, 4, None), [4, 3, 1, 1]);
        let nhwc = [None, None, None, Some(3)];
        assert_eq!(invented_shape(&nhwc, 2, Some((64, 32))), [2, 64, 32, 3]);
        // Not an image: the recorded size is not applied.
        assert_eq!(
            invented_shape(&[None, Some(7), None, None], 1, Some((9, 9))),
            [1, 7, 1, 1]
        );
        assert_eq!(invented_shape(&[None, None], 8, Some((9, 9))), [8, 1]);
        assert_eq!(
            invented_shape(&[Some(2), None, Some(128)], 8, None),
            [2, 1, 128]
        );
    }
}
