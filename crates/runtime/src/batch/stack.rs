//! Stacking requests into one batch along dim 0, and splitting the outputs back so each
//! caller gets exactly its rows, in order. Pure: no locks, no threads, no clocks.
//!
//! [`join`] stacks a batch (padding the variable-length dim first when lengths differ) and
//! returns a [`SplitPlan`]; [`SplitPlan::split`] cuts the outputs by each request's rows and
//! trims padded outputs back. Every shape is checked: a bad output is an error, never a panic.

use super::pad::{pad, trim};
use super::settings::Padding;
use crate::error::{Error, Result};
use crate::model::NamedTensors;
use crate::tensor::{with_element_type, Item, Tensor, TensorData};

/// Each request's own length of the padded dim, and the `(output, dim)`s trimmed back to it.
type Trim = (Vec<usize>, Vec<(usize, usize)>);

/// How a batch's outputs go back to its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitPlan {
    /// Rows of each request, in batch order.
    rows: Vec<usize>,
    /// With padding: each request's own length, and the outputs to trim to it.
    trim: Option<Trim>,
    /// With padding: `(real, total)` elements of the padded input.
    pub(crate) padded: Option<(usize, usize)>,
}

/// Stacks `requests` (of `rows` rows each, in the model's input order, same element types,
/// and the same non-batch dims except the padded one: the queue's shape bucket guarantees it)
/// into one batch, padding `padding`'s dim to the longest request when lengths differ.
///
/// # Errors
/// A tensor that does not fit the others (a bug upstream, reported rather than panicking).
pub(crate) fn join(
    requests: &[&NamedTensors],
    rows: Vec<usize>,
    padding: Option<&Padding>,
    scratch: &mut Scratch,
) -> Result<(NamedTensors, SplitPlan)> {
    let lengths = padding.and_then(|p| {
        let lens: Option<Vec<usize>> = requests
            .iter()
            .map(|r| {
                r.get(p.input)
                    .and_then(|(_, t)| t.shape().get(p.dim).copied())
            })
            .collect();
        let lens = lens?;
        lens.iter().any(|&l| l != lens[0]).then_some((p, lens))
    });
    let Some((pad_cfg, lens)) = lengths else {
        let inputs = concat(requests, None, scratch)?;
        let plan = SplitPlan {
            rows,
            trim: None,
            padded: None,
        };
        return Ok((inputs, plan));
    };
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut padded = Vec::with_capacity(requests.len());
    let (mut real, mut total) = (0usize, 0usize);
    for r in requests {
        let t = &r[pad_cfg.input].1;
        real += t.len();
        let p = pad(t, pad_cfg.dim, longest, pad_cfg.value)?;
        total += p.len();
        padded.push(p);
    }
    let inputs = concat(requests, Some((pad_cfg.input, &padded)), scratch)?;
    let plan = SplitPlan {
        rows,
        trim: Some((lens, pad_cfg.trims.clone())),
        padded: Some((real, total)),
    };
    Ok((inputs, plan))
}

impl SplitPlan {
    /// Splits the batch's outputs into one set per request (trimming padded outputs back to
    /// each request's length).
    ///
    /// # Errors
    /// [`Error::BatchSplit`] for an output without the batch's rows along dim 0;
    /// [`Error::TrimMismatch`] for an output that cannot be trimmed.
    pub(crate) fn split(&self, model: &str, outputs: NamedTensors) -> Result<Vec<NamedTensors>> {
        let mut per_request = split(model, outputs, &self.rows)?;
        if let Some((lens, trims)) = &self.trim {
            for (outputs, &len) in per_request.iter_mut().zip(lens) {
                for &(o, dim) in trims {
                    if let Some((name, t)) = outputs.get_mut(o) {
                        *t = trim(model, name, t, dim, len)?;
                    }
                }
            }
        }
        Ok(per_request)
    }
}

/// Concatenates input by input; the input at `replaced.0` comes from `replaced.1` (the padded
/// copies) instead of the requests.
fn concat(
    requests: &[&NamedTensors],
    replaced: Option<(usize, &[Tensor])>,
    scratch: &mut Scratch,
) -> Result<NamedTensors> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (name, head))| {
            let parts: Vec<&Tensor> = match replaced {
                Some((at, padded)) if at == i => padded.iter().collect(),
                _ => requests.iter().map(|r| &r[i].1).collect(),
            };
            let tensor = with_element_type!(head.element_type(), T => concat_typed::<T>(&parts, scratch.take(i))?);
            Ok((name.clone(), tensor))
        })
        .collect()
}

/// The stacked inputs of an instance's earlier batch, one buffer per input, written over by
/// the next batch. A fresh buffer for a large batch is memory the kernel must fault in page
/// by page on every batch (glibc serves blocks past its mmap threshold, 128 KiB once pinned
/// by [`crate::memory`], with their own `mmap`): with a fresh buffer per batch, MobileNet lost
/// a quarter of its batched throughput. Each instance keeps at most its largest batch's inputs.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    spare: Vec<Option<TensorData>>,
}

impl Scratch {
    /// The spare buffer of input `i`, if any.
    fn take(&mut self, i: usize) -> Option<TensorData> {
        self.spare.get_mut(i).and_then(Option::take)
    }

    /// Keeps a stacked batch's buffers for the next one.
    pub(crate) fn recycle(&mut self, inputs: NamedTensors) {
        self.spare.resize_with(inputs.len(), || None);
        for (slot, (_, tensor)) in self.spare.iter_mut().zip(inputs) {
            *slot = Some(tensor.into_data());
        }
    }
}

fn concat_typed<T: Item>(parts: &[&Tensor], spare: Option<TensorData>) -> Result<Tensor> {
    let total: usize = parts.iter().map(|t| t.len()).sum();
    let mut data = match spare.map(T::unwrap) {
        Some(Ok(mut v)) => {
            v.clear();
            v.reserve(total);
            v
        }
        _ => Vec::with_capacity(total),
    };
    for t in parts {
        data.extend_from_slice(t.as_slice::<T>()?);
    }
    let mut shape = parts[0].shape().to_vec();
    if let Some(d0) = shape.first_mut() {
        *d0 = parts
            .iter()
            .map(|t| t.shape().first().copied().unwrap_or(1))
            .sum();
    }
    // A part with other non-batch dims makes the total disagree with the shape: an error.
    Tensor::new(shape, data)
}

/// Splits batch outputs into one set per request, by each request's rows.
fn split(model: &str, outputs: NamedTensors, rows: &[usize]) -> Result<Vec<NamedTensors>> {
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<NamedTensors> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (name, tensor) in outputs {
        if tensor.shape().first() != Some(&total) {
            return Err(Error::BatchSplit {
                model: model.to_owned(),
                output: name,
                shape: tensor.shape().to_vec(),
                rows: total,
            });
        }
        let parts =
            with_element_type!(tensor.element_type(), T => split_typed::<T>(&tensor, rows)?);
        for (dst, part) in per_request.iter_mut().zip(parts) {
            dst.push((name.clone(), part));
        }
    }
    Ok(per_request)
}

fn split_typed<T: Item>(tensor: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>> {
    let data = tensor.as_slice::<T>()?;
    let inner: usize = tensor.shape()[1..].iter().product();
    let mut offset = 0;
    rows.iter()
        .map(|&r| {
            let mut shape = tensor.shape().to_vec();
            shape[0] = r;
            let part = data[offset * inner..(offset + r) * inner].to_vec();
            offset += r;
            Tensor::new(shape, part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rows: usize, start: i64) -> NamedTensors {
        let a = Tensor::new(
            [rows, 2],
            (0..rows as i64 * 2).map(|v| v + start).collect::<Vec<_>>(),
        )
        .expect("a");
        let b = Tensor::new([rows], vec![start as f32; rows]).expect("b");
        vec![("a".into(), a), ("b".into(), b)]
    }

    #[test]
    fn concat_then_split_returns_each_request_its_rows() {
        let (r1, r2, r3) = (req(1, 0), req(3, 100), req(2, 200));
        let batch = concat(&[&r1, &r2, &r3], None, &mut Scratch::default()).expect("concat");
        assert_eq!(batch[0].1.shape(), &[6, 2]);
        assert_eq!(batch[1].1.shape(), &[6]);
        let back = split("m", batch, &[1, 3, 2]).expect("split");
        assert_eq!(back, vec![r1, r2, r3]);
    }

    #[test]
    fn the_next_batch_is_stacked_into_the_last_ones_buffers() {
        let mut scratch = Scratch::default();
        let (r1, r2, r3) = (req(3, 0), req(2, 100), req(1, 200));
        let first = concat(&[&r1, &r2], None, &mut scratch).expect("concat");
        let ptr = first[0].1.as_slice::<i64>().expect("i64").as_ptr();
        scratch.recycle(first);
        // Fewer rows, same buffer, only the new rows in it.
        let second = concat(&[&r3, &r2], None, &mut scratch).expect("concat");
        assert_eq!(second[0].1.as_slice::<i64>().expect("i64").as_ptr(), ptr);
        assert_eq!(
            second,
            concat(&[&r3, &r2], None, &mut Scratch::default()).expect("fresh")
        );
        assert_eq!(second[0].1.shape(), &[3, 2]);
    }

    #[test]
    fn an_output_without_the_batch_rows_cannot_be_split() {
        let out = vec![("y".to_owned(), Tensor::new([4], vec![0f32; 4]).expect("y"))];
        let err = split("m", out, &[2, 3]).expect_err("4 != 5");
        assert!(matches!(err, Error::BatchSplit { rows: 5, .. }), "{err}");
    }

    #[test]
    fn join_pads_different_lengths_and_the_plan_trims_them_back() {
        let seq = |len: usize, v: i64| {
            vec![(
                "x".to_owned(),
                Tensor::new([1, len], vec![v; len]).expect("x"),
            )]
        };
        let (a, b) = (seq(2, 1), seq(3, 2));
        let padding = Padding {
            input: 0,
            dim: 1,
            value: 0.0,
            trims: vec![(0, 1)],
        };
        let (inputs, plan) = join(
            &[&a, &b],
            vec![1, 1],
            Some(&padding),
            &mut Scratch::default(),
        )
        .expect("join");
        assert_eq!(inputs[0].1.shape(), &[2, 3]);
        assert_eq!(
            inputs[0].1.as_slice::<i64>().expect("i64"),
            &[1, 1, 0, 2, 2, 2]
        );
        assert_eq!(plan.padded, Some((5, 6)));
        let back = plan.split("m", inputs).expect("split");
        assert_eq!(back, vec![a, b]);
    }

    #[test]
    fn a_plan_refuses_outputs_that_do_not_fit_instead_of_panicking() {
        let seq = |len: usize| {
            vec![(
                "x".to_owned(),
                Tensor::new([1, len], vec![1i64; len]).expect("x"),
            )]
        };
        let (a, b) = (seq(2), seq(4));
        let padding = Padding {
            input: 0,
            dim: 1,
            value: 0.0,
            trims: vec![(0, 1)],
        };
        let (_, plan) = join(
            &[&a, &b],
            vec![1, 1],
            Some(&padding),
            &mut Scratch::default(),
        )
        .expect("join");
        let short = vec![(
            "y".to_owned(),
            Tensor::new([2, 3], vec![0i64; 6]).expect("y"),
        )];
        assert!(matches!(
            plan.split("m", short),
            Err(Error::TrimMismatch { len: 4, .. })
        ));
        let scalar = vec![(
            "y".to_owned(),
            Tensor::new(Vec::<usize>::new(), vec![0i64]).expect("y"),
        )];
        assert!(matches!(
            plan.split("m", scalar),
            Err(Error::BatchSplit { .. })
        ));
    }
}
