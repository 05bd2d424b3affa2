//! Triton's classification extension: an output asked for with the parameter
//! `classification: k` (what `tritonclient`'s `InferRequestedOutput(name, class_count=k)`
//! sends, over REST and gRPC) is answered as its top `k` classes instead of its values.
//!
//! As Triton answers it: a `BYTES` tensor of strings `"<value>:<index>"`, highest value first,
//! compared in the output's own type; `[rows, k]` for a model that batches (each row of dim 0
//! classified over its remaining elements, flattened), `[k]` for the whole output of one that
//! does not; `k` cut to the classes there are. The value is written as Triton writes it (C++'s
//! `std::to_string`: six decimals for floats, plain integers). Where Triton leaves it open,
//! kiln decides: equal values rank by index (Triton's sort is unstable), NaN ranks last, and
//! FP16 and BF16 outputs are classified too (Triton refuses them). `BOOL` and `BYTES` outputs
//! have no order and are refused. With the version's labels for the output
//! ([`crate::labels`]: `labels/<output>.txt`), each class is `"<value>:<index>:<label>"`, as
//! Triton answers with a `label_filename`; a class without a label (an empty line, or past the
//! file's end) keeps the two-part form, as in Triton. A classifier's ZipMap output without a
//! label file is labelled by its own classes the same way.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::labels::ClassLabels;
use crate::tensor::TensorSlice;
use crate::{Tensor, TensorData};

/// The most class strings one output is answered with: each costs some 60 bytes held (against
/// 4 for an FP32 value), so `classification` on a big output must not multiply its memory.
pub(crate) const MAX_CLASSES: usize = 1 << 20;

/// The most bytes of labels one output is answered with (a label is repeated in every class
/// that names it).
pub(crate) const MAX_ANSWER_LABEL_BYTES: usize = 64 << 20;

/// An element type classes can be ranked by.
trait Ranked: Copy {
    /// `a` before `b` when it is the higher class (NaN last).
    fn rank(a: Self, b: Self) -> Ordering;
    /// The value as Triton writes it.
    fn text(self) -> String;
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Ranked for $t {
            fn rank(a: Self, b: Self) -> Ordering {
                b.cmp(&a)
            }
            fn text(self) -> String {
                self.to_string()
            }
        }
    )*};
}
integers!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! floats {
    ($($t:ty),*) => {$(
        impl Ranked for $t {
            fn rank(a: Self, b: Self) -> Ordering {
                let (a, b) = (f64::from(a), f64::from(b));
                match (a.is_nan(), b.is_nan()) {
                    (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
                    (a_nan, b_nan) => a_nan.cmp(&b_nan),
                }
            }
            fn text(self) -> String {
                let v = f64::from(self);
                if v.is_nan() {
                    // As glibc's `%f` writes it.
                    if v.is_sign_negative() { "-nan" } else { "nan" }.to_owned()
                } else {
                    // C's `%f`, which `std::to_string` uses: "inf" and "-inf" as they are.
                    format!("{v:.6}")
                }
            }
        }
    )*};
}
floats!(f32, f64, half::f16, half::bf16);

/// The top `k` classes of `tensor` (see the module doc): per row of dim 0 if `batched`.
///
/// # Errors
/// A message for an output whose type has no order (`BOOL`, `BYTES`), or an answer of more
/// than [`MAX_CLASSES`] strings or [`MAX_ANSWER_LABEL_BYTES`] of labels. (A `k` of 0 is no
/// classification: the caller's to skip.)
pub(crate) fn top_k(
    tensor: &Tensor,
    k: u64,
    batched: bool,
    labels: Option<&ClassLabels>,
) -> Result<Tensor, String> {
    let shape = tensor.shape();
    // Triton's rule: a batch of 0 rows is classified as the whole (empty) output.
    let batched = batched && shape.first().is_some_and(|&rows| rows > 0);
    let (rows, per) = match shape.split_first() {
        Some((&rows, rest)) if batched => (rows, rest.iter().product::<usize>()),
        _ => (1, tensor.len()),
    };
    let k = usize::try_from(k).unwrap_or(usize::MAX).min(per);
    if rows.saturating_mul(k) > MAX_CLASSES {
        return Err(format!(
            "`classification` asks for {k} classes of each of {rows} rows; at most \
             {MAX_CLASSES} are answered"
        ));
    }
    let longest = labels.map_or(0, ClassLabels::longest);
    if rows.saturating_mul(k).saturating_mul(longest) > MAX_ANSWER_LABEL_BYTES {
        return Err(format!(
            "`classification` asks for {k} classes of each of {rows} rows, whose labels (up to \
             {longest} bytes each) could hold more than the {MAX_ANSWER_LABEL_BYTES} bytes answered"
        ));
    }
    let classes = match tensor.data() {
        TensorSlice::F32(v) => ranked(v, per, k, labels),
        TensorSlice::F64(v) => ranked(v, per, k, labels),
        TensorSlice::F16(v) => ranked(v, per, k, labels),
        TensorSlice::Bf16(v) => ranked(v, per, k, labels),
        TensorSlice::I64(v) => ranked(v, per, k, labels),
        TensorSlice::I32(v) => ranked(v, per, k, labels),
        TensorSlice::I16(v) => ranked(v, per, k, labels),
        TensorSlice::I8(v) => ranked(v, per, k, labels),
        TensorSlice::U64(v) => ranked(v, per, k, labels),
        TensorSlice::U32(v) => ranked(v, per, k, labels),
        TensorSlice::U16(v) => ranked(v, per, k, labels),
        TensorSlice::U8(v) => ranked(v, per, k, labels),
        TensorSlice::Bool(_) | TensorSlice::String(_) => {
            return Err(format!(
                "no classes can be ranked in an output of type {}",
                crate::http::protocol::datatype(tensor.element_type())
            ))
        }
    };
    let shape = if batched { vec![rows, k] } else { vec![k] };
    Tensor::from_data(shape, TensorData::String(classes)).map_err(|e| e.to_string())
}

/// The top `k` classes of each `per` values of `values`, as Triton's strings, row after row.
/// Each row is read once into a heap of its best `k` so far: memory is the answer's, not the
/// row's.
fn ranked<T: Ranked>(
    values: &[T],
    per: usize,
    k: usize,
    labels: Option<&ClassLabels>,
) -> Vec<String> {
    let mut out = Vec::new();
    if values.is_empty() || per == 0 || k == 0 {
        return out;
    }
    let mut best: BinaryHeap<Class<T>> = BinaryHeap::with_capacity(k + 1);
    for row in values.chunks(per) {
        for (index, &value) in row.iter().enumerate() {
            let class = Class { value, index };
            if best.len() < k {
                best.push(class);
            } else if best.peek().is_some_and(|worst| class < *worst) {
                best.pop();
                best.push(class);
            }
        }
        out.extend(
            std::mem::take(&mut best)
                .into_sorted_vec()
                .into_iter()
                .map(|c| {
                    match labels
                        .and_then(|l| l.get(c.index))
                        .filter(|l| !l.is_empty())
                    {
                        Some(label) => format!("{}:{}:{label}", c.value.text(), c.index),
                        None => format!("{}:{}", c.value.text(), c.index),
                    }
                }),
        );
    }
    out
}

/// One class of a row, ordered by rank: the higher class is the lesser (so a max-heap's top is
/// the worst kept), equal values by index.
struct Class<T> {
    value: T,
    index: usize,
}

impl<T: Ranked> Ord for Class<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        T::rank(self.value, other.value).then(self.index.cmp(&other.index))
    }
}

impl<T: Ranked> PartialOrd for Class<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Ranked> PartialEq for Class<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T: Ranked> Eq for Class<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(t: &Tensor) -> (Vec<usize>, Vec<String>) {
        match t.data() {
            TensorSlice::String(v) => (t.shape().to_vec(), v.to_vec()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_highest_come_first_as_triton_writes_them() {
        // Triton's own example: [1.1, 3.3, 0.5, 2.4], top 2.
        let t =
            Tensor::from_data(vec![4], TensorData::F32(vec![1.1, 3.3, 0.5, 2.4])).expect("tensor");
        let (shape, v) = classes(&top_k(&t, 2, false, None).expect("top 2"));
        assert_eq!(shape, [2]);
        assert_eq!(v, ["3.300000:1", "2.400000:3"]);
        // Batched: per row, over the rest flattened; k cut to the classes there are.
        let t = Tensor::from_data(vec![2, 1, 3], TensorData::I64(vec![5, 9, 7, 0, -2, 4]))
            .expect("tensor");
        let (shape, v) = classes(&top_k(&t, 5, true, None).expect("rows"));
        assert_eq!(shape, [2, 3]);
        assert_eq!(v, ["9:1", "7:2", "5:0", "4:2", "0:0", "-2:1"]);
        // Not batched: the whole output is one row.
        let (shape, v) = classes(&top_k(&t, 1, false, None).expect("whole"));
        assert_eq!((shape, v), (vec![1], vec!["9:1".to_owned()]));
    }

    #[test]
    fn labels_name_the_classes_they_have() {
        let file = std::path::Path::new("labels/y.txt");
        let labels = crate::labels::parse(file, b"cat\n\ndog\n").expect("labels");
        // Per row, each class by its index in the row; an empty label or one past the file's
        // end leaves the class unnamed, as in Triton.
        let t = Tensor::from_data(
            vec![2, 4],
            TensorData::F32(vec![0.1, 0.7, 0.2, 0.9, 0.5, 0.1, 0.3, 0.0]),
        )
        .expect("tensor");
        let (shape, v) = classes(&top_k(&t, 3, true, Some(&labels)).expect("rows"));
        assert_eq!(shape, [2, 3]);
        assert_eq!(
            v,
            [
                "0.900000:3",
                "0.700000:1",
                "0.200000:2:dog",
                "0.500000:0:cat",
                "0.300000:2:dog",
                "0.100000:1"
            ]
        );
        // Labels repeat in every class they name: an answer is bounded by their bytes too.
        let long = format!("{}\n", "x".repeat(crate::labels::MAX_LABEL_BYTES));
        let long = crate::labels::parse(file, long.as_bytes()).expect("labels");
        let rows = MAX_ANSWER_LABEL_BYTES / crate::labels::MAX_LABEL_BYTES + 1;
        let t = Tensor::from_data(vec![rows, 1], TensorData::F32(vec![0.0; rows])).expect("tensor");
        let e = top_k(&t, 1, true, Some(&long)).expect_err("too many label bytes");
        assert!(e.contains("could hold more than"), "{e}");
        assert!(top_k(&t, 1, true, None).is_ok());
    }

    #[test]
    fn ties_rank_by_index_and_nan_last() {
        let t = Tensor::from_data(
            vec![6],
            TensorData::F64(vec![0.5, f64::NAN, 0.5, f64::INFINITY, -1.0, -f64::NAN]),
        )
        .expect("tensor");
        let (_, v) = classes(&top_k(&t, 6, false, None).expect("all"));
        assert_eq!(
            v,
            [
                "inf:3",
                "0.500000:0",
                "0.500000:2",
                "-1.000000:4",
                "nan:1",
                "-nan:5"
            ]
        );
        // The best k of many, as a full sort ranks them.
        let many: Vec<f32> = (0..1000u32)
            .map(|i| ((i * 7919) % 1000) as f32 / 10.0)
            .collect();
        let t = Tensor::from_data(vec![1000], TensorData::F32(many)).expect("many");
        let (_, v) = classes(&top_k(&t, 3, false, None).expect("top 3"));
        assert_eq!(v, ["99.900002:321", "99.800003:642", "99.699997:963"]);
        let t = Tensor::from_data(
            vec![3],
            TensorData::F16(vec![
                half::f16::from_f32(0.25),
                half::f16::from_f32(2.0),
                half::f16::from_f32(1.0),
            ]),
        )
        .expect("tensor");
        assert_eq!(
            classes(&top_k(&t, 2, false, None).expect("fp16")).1,
            ["2.000000:1", "1.000000:2"]
        );
    }

    #[test]
    fn what_cannot_be_ranked_or_would_be_too_many_is_refused() {
        let b = Tensor::from_data(vec![2], TensorData::Bool(vec![true, false])).expect("bool");
        assert!(top_k(&b, 1, false, None)
            .expect_err("bool")
            .contains("BOOL"));
        let f = Tensor::from_data(vec![2], TensorData::F32(vec![1.0, 2.0])).expect("f32");
        assert_eq!(classes(&top_k(&f, 0, false, None).expect("zero")).0, [0]);
        assert_eq!(
            classes(&top_k(&f, u64::MAX, false, None).expect("all")).0,
            [2]
        );
        let big = Tensor::from_data(
            vec![MAX_CLASSES + 1],
            TensorData::U8(vec![0; MAX_CLASSES + 1]),
        )
        .expect("big");
        assert!(top_k(&big, u64::MAX, false, None)
            .expect_err("too many")
            .contains("at most"));
        assert_eq!(
            classes(&top_k(&big, 3, false, None).expect("three")).1,
            ["0:0", "0:1", "0:2"]
        );
        assert_eq!(MAX_CLASSES, 1_048_576);
        crate::http::assert_readme_states("an answer of more than 1,048,576 classes");
        // Empty rows: no classes; no rows: the whole (empty) output, as Triton.
        let e = Tensor::from_data(vec![2, 0], TensorData::F32(vec![])).expect("empty");
        assert_eq!(classes(&top_k(&e, 3, true, None).expect("empty")).0, [2, 0]);
        let none = Tensor::from_data(vec![0, 5], TensorData::F32(vec![])).expect("no rows");
        assert_eq!(
            classes(&top_k(&none, 3, true, None).expect("no rows")).0,
            [0]
        );
    }
}
