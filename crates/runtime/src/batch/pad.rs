//! Padding one variable-length dim up to a batch's longest request, and trimming outputs back
//! to each request's own length. Every shape is checked, never assumed: a zero-length dim is
//! padded and trimmed like any other; an output shorter than the request, or of another rank
//! than declared (real models declare output shapes that lie), is an error, never a panic on
//! an instance thread.

use crate::error::{Error, Result};
use crate::tensor::{with_element_type, Item, Tensor};

/// Pads `tensor` along `dim` to `len` with `value` (`len` at least the tensor's own length).
pub(crate) fn pad(tensor: &Tensor, dim: usize, len: usize, value: f64) -> Result<Tensor> {
    with_element_type!(tensor.element_type(), T => pad_typed::<T>(tensor, dim, len, T::from_f64(value)))
}

/// `(outer, own, inner)`: the element counts before, along, and after `dim`.
fn around(shape: &[usize], dim: usize) -> Option<(usize, usize, usize)> {
    let own = *shape.get(dim)?;
    Some((
        shape[..dim].iter().product(),
        own,
        shape[dim + 1..].iter().product(),
    ))
}

fn pad_typed<T: Item>(tensor: &Tensor, dim: usize, len: usize, value: T) -> Result<Tensor> {
    let shape = tensor.shape();
    let bad = || Error::TensorShape {
        shape: shape.to_vec(),
        len: tensor.len(),
        expected: len,
    };
    let (outer, own, inner) = around(shape, dim).ok_or_else(bad)?;
    if own > len {
        return Err(bad());
    }
    let data = tensor.as_slice::<T>()?;
    let block = own * inner;
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&data[o * block..(o + 1) * block]);
        out.resize(out.len() + (len - own) * inner, value.clone());
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = len;
    Tensor::new(new_shape, out)
}

/// Cuts output `name` of `model` along `dim` back to its first `len` positions.
///
/// # Errors
/// [`Error::TrimMismatch`] when the output has no such dim or fewer than `len` positions.
pub(crate) fn trim(
    model: &str,
    name: &str,
    tensor: &Tensor,
    dim: usize,
    len: usize,
) -> Result<Tensor> {
    let shape = tensor.shape();
    match around(shape, dim) {
        Some((outer, full, inner)) if full >= len => {
            with_element_type!(tensor.element_type(), T => trim_typed::<T>(tensor, dim, (outer, full, inner), len))
        }
        _ => Err(Error::TrimMismatch {
            model: model.to_owned(),
            output: name.to_owned(),
            dim,
            shape: shape.to_vec(),
            len,
        }),
    }
}

fn trim_typed<T: Item>(
    tensor: &Tensor,
    dim: usize,
    (outer, full, inner): (usize, usize, usize),
    len: usize,
) -> Result<Tensor> {
    let data = tensor.as_slice::<T>()?;
    let block = full * inner;
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&data[o * block..o * block + len * inner]);
    }
    let mut new_shape = tensor.shape().to_vec();
    new_shape[dim] = len;
    Tensor::new(new_shape, out)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(trim("m", "y", &p, 1, 2).expect("trim"), t);
        let two_rows = Tensor::new([2, 1], vec![5f32, 6.0]).expect("t");
        let p = pad(&two_rows, 1, 3, 0.5).expect("pad");
        assert_eq!(
            p.as_slice::<f32>().expect("f32"),
            &[5.0, 0.5, 0.5, 6.0, 0.5, 0.5]
        );
    }

    #[test]
    fn zero_lengths_pad_and_trim_without_panicking() {
        let empty = Tensor::new([2, 0], Vec::<f32>::new()).expect("t");
        let p = pad(&empty, 1, 3, 7.0).expect("pad");
        assert_eq!(p.as_slice::<f32>().expect("f32"), &[7.0; 6]);
        assert_eq!(trim("m", "y", &p, 1, 0).expect("trim"), empty);
        let no_rows = Tensor::new([0, 2], Vec::<f32>::new()).expect("t");
        assert_eq!(pad(&no_rows, 1, 5, 0.0).expect("pad").shape(), &[0, 5]);
        let zero_inner = Tensor::new([1, 2, 0], Vec::<i64>::new()).expect("t");
        assert_eq!(
            pad(&zero_inner, 1, 4, 0.0).expect("pad").shape(),
            &[1, 4, 0]
        );
    }

    #[test]
    fn a_trim_past_the_output_or_its_rank_is_an_error() {
        let y = Tensor::new([1, 3], vec![1f32, 2.0, 3.0]).expect("y");
        assert!(matches!(
            trim("m", "y", &y, 1, 4),
            Err(Error::TrimMismatch { len: 4, dim: 1, .. })
        ));
        assert!(matches!(
            trim("m", "y", &y, 2, 1),
            Err(Error::TrimMismatch { .. })
        ));
        assert!(pad(&y, 1, 2, 0.0).is_err(), "pad shorter than the tensor");
        assert!(pad(&y, 5, 2, 0.0).is_err(), "pad past the rank");
    }
}
