//! Stacking requests into one batch along dim 0, and splitting the outputs back by row
//! offsets so each caller gets exactly its rows, in order.

use crate::error::{Error, Result};
use crate::model::NamedTensors;
use crate::tensor::{with_element_type, Element, Tensor, TensorData};

/// Concatenates the inputs of several requests (all in the model's input order, same element
/// types and non-batch dims: the queue's shape bucket guarantees it).
pub(crate) fn concat(requests: &[&NamedTensors], scratch: &mut Scratch) -> Result<NamedTensors> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (name, head))| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r[i].1).collect();
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

fn concat_typed<T: Element>(parts: &[&Tensor], spare: Option<TensorData>) -> Result<Tensor> {
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
    shape[0] = parts.iter().map(|t| t.shape()[0]).sum();
    Tensor::new(shape, data)
}

/// Splits batch outputs into one set per request, by each request's rows.
pub(crate) fn split(
    model: &str,
    outputs: NamedTensors,
    rows: &[usize],
) -> Result<Vec<NamedTensors>> {
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

fn split_typed<T: Element>(tensor: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>> {
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
        let batch = concat(&[&r1, &r2, &r3], &mut Scratch::default()).expect("concat");
        assert_eq!(batch[0].1.shape(), &[6, 2]);
        assert_eq!(batch[1].1.shape(), &[6]);
        let back = split("m", batch, &[1, 3, 2]).expect("split");
        assert_eq!(back, vec![r1, r2, r3]);
    }

    #[test]
    fn the_next_batch_is_stacked_into_the_last_ones_buffers() {
        let mut scratch = Scratch::default();
        let (r1, r2, r3) = (req(3, 0), req(2, 100), req(1, 200));
        let first = concat(&[&r1, &r2], &mut scratch).expect("concat");
        let ptr = first[0].1.as_slice::<i64>().expect("i64").as_ptr();
        scratch.recycle(first);
        // Fewer rows, same buffer, only the new rows in it.
        let second = concat(&[&r3, &r2], &mut scratch).expect("concat");
        assert_eq!(second[0].1.as_slice::<i64>().expect("i64").as_ptr(), ptr);
        assert_eq!(
            second,
            concat(&[&r3, &r2], &mut Scratch::default()).expect("fresh")
        );
        assert_eq!(second[0].1.shape(), &[3, 2]);
    }

    #[test]
    fn an_output_without_the_batch_rows_cannot_be_split() {
        let out = vec![("y".to_owned(), Tensor::new([4], vec![0f32; 4]).expect("y"))];
        let err = split("m", out, &[2, 3]).expect_err("4 != 5");
        assert!(matches!(err, Error::BatchSplit { rows: 5, .. }), "{err}");
    }
}

/// Pads `tensor` along `dim` to `len` with `value`.
pub(crate) fn pad(tensor: &Tensor, dim: usize, len: usize, value: f64) -> Result<Tensor> {
    with_element_type!(tensor.element_type(), T => pad_typed::<T>(tensor, dim, len, T::from_f64(value)))
}

fn pad_typed<T: Element>(tensor: &Tensor, dim: usize, len: usize, value: T) -> Result<Tensor> {
    let shape = tensor.shape();
    let own = shape[dim];
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let data = tensor.as_slice::<T>()?;
    let mut out = Vec::with_capacity(outer * len * inner);
    for block in data.chunks(own * inner).take(outer) {
        out.extend_from_slice(block);
        out.resize(out.len() + (len - own) * inner, value);
    }
    if own == 0 {
        out.resize(outer * len * inner, value);
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = len;
    Tensor::new(new_shape, out)
}

/// Cuts `tensor` along `dim` back to its first `len` positions.
pub(crate) fn trim(tensor: &Tensor, dim: usize, len: usize) -> Result<Tensor> {
    with_element_type!(tensor.element_type(), T => trim_typed::<T>(tensor, dim, len))
}

fn trim_typed<T: Element>(tensor: &Tensor, dim: usize, len: usize) -> Result<Tensor> {
    let shape = tensor.shape();
    let full = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let data = tensor.as_slice::<T>()?;
    let mut out = Vec::with_capacity(data.len() / full.max(1) * len);
    if full > 0 {
        for block in data.chunks(full * inner) {
            out.extend_from_slice(&block[..len * inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = len;
    Tensor::new(new_shape, out)
}

#[cfg(test)]
mod pad_tests {
    use super::*;

    #[test]
    fn pad_then_trim_is_identity_and_pads_in_the_right_places() {
        // [1, 2, 2]: one row, length 2, width 2.
        let t = Tensor::new([1, 2, 2], vec![1i64, 2, 3, 4]).expect("t");
        let p = pad(&t, 1, 4, -1.0).expect("pad");
        assert_eq!(p.shape(), &[1, 4, 2]);
        assert_eq!(
            p.as_slice::<i64>().expect("i64"),
            &[1, 2, 3, 4, -1, -1, -1, -1]
        );
        assert_eq!(trim(&p, 1, 2).expect("trim"), t);
        let two_rows = Tensor::new([2, 1], vec![5f32, 6.0]).expect("t");
        let p = pad(&two_rows, 1, 3, 0.5).expect("pad");
        assert_eq!(
            p.as_slice::<f32>().expect("f32"),
            &[5.0, 0.5, 0.5, 6.0, 0.5, 0.5]
        );
    }
}
