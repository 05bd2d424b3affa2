//! KServe's v1 answers (TensorFlow Serving's) from kiln tensors: `{"predictions": [...]}`,
//! one per instance, to rows; `{"outputs": ...}`, each output whole, to columns.
//!
//! - Prediction `i` is row `i` of each output — of an output that is one row per instance:
//!   every output of a model whose dim 0 is its batch (kiln batches those), or one whose
//!   declared dim 0 is the number of instances. Other outputs (a detector's boxes, say) are
//!   answered whole, to a request of one instance; more instances are refused, since their
//!   rows cannot be told apart. With one output a prediction is its value; with several, an
//!   object by output name, as TensorFlow Serving writes them.
//! - Columns are answered as TensorFlow Serving answers them: `{"outputs": …}` with the one
//!   output's whole tensor, or an object of every output's by name.
//! - Values are written as v2 writes them (FP32 widened to `f64`; NaN as `null`), straight from
//!   the tensors, nested as their shapes say. A `BYTES` output whose name ends in `_bytes` is
//!   written as binary values, `{"b64": "..."}`, as TensorFlow Serving writes them.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::tensor::{with_slice, TensorSlice};
use crate::{ModelMetadata, NamedTensors, Tensor};

/// How each output is split between `rows` instances: `true` for one row per instance.
///
/// # Errors
/// A message naming the output: one that is not one row per instance, for more than one
/// instance (400); one that should be and came back with another dim 0 (the model broke its
/// own signature: 500, `Err(true)`).
pub(crate) fn per_row(
    meta: &ModelMetadata,
    outputs: &NamedTensors,
    rows: usize,
) -> Result<Vec<bool>, (bool, String)> {
    outputs
        .iter()
        .map(|(name, t)| {
            let declared = meta.outputs.iter().find(|o| &o.name == name);
            let split = meta.batch_dim
                || declared.is_some_and(|o| o.dims.first() == Some(&i64::try_from(rows).ok()));
            if split && t.shape().first() != Some(&rows) {
                return Err((
                    true,
                    format!(
                        "output `{name}` came back with shape {:?}, not one row for each of \
                         the {rows} instances",
                        t.shape()
                    ),
                ));
            }
            if !split && rows != 1 {
                return Err((
                    false,
                    format!(
                        "output `{name}` (shape {:?}) is not one row per instance, so {rows} \
                         instances cannot be answered apart: send one instance per request, or \
                         use the v2 protocol",
                        t.shape()
                    ),
                ));
            }
            Ok(split)
        })
        .collect()
}

/// The v1 answer: `{"predictions": [...]}`, one per instance, or `{"outputs": ...}` (see the
/// module doc).
pub(crate) struct Predictions {
    /// Whether the answer is to columns: `{"outputs": ...}`.
    columns: bool,
    /// The outputs, in the model's order.
    outputs: NamedTensors,
    /// [`per_row`] of each.
    per_row: Vec<bool>,
    /// The number of instances.
    rows: usize,
    /// The JSON arrays writing them takes.
    arrays: usize,
}

/// Nested arrays past an answer's values and rows that it may take to write: a tensor with a
/// zero dim holds no values, yet `[1, 1000000000, 0]` nests a billion empty arrays.
const SPARE_ARRAYS: usize = 1 << 20;

impl Predictions {
    /// The answer of `outputs` to `rows` instances, split as `per_row` says.
    ///
    /// # Errors
    /// An output whose nested arrays would far outnumber its values (the message).
    pub(crate) fn new(
        outputs: NamedTensors,
        per_row: Vec<bool>,
        rows: usize,
    ) -> Result<Self, String> {
        let mut arrays = rows;
        let mut values = 0usize;
        for ((name, t), &split) in outputs.iter().zip(&per_row) {
            let shape = t.shape();
            let nested = if split {
                rows.saturating_mul(nested_arrays(&shape[1.min(shape.len())..]))
            } else {
                nested_arrays(shape)
            };
            arrays = arrays.saturating_add(nested);
            values = values.saturating_add(t.len());
            if arrays > values.saturating_add(rows).saturating_add(SPARE_ARRAYS) {
                return Err(format!(
                    "output `{name}` of shape {shape:?} would be written as {nested} nested \
                     JSON arrays holding {} values",
                    t.len()
                ));
            }
        }
        Ok(Self {
            columns: false,
            outputs,
            per_row,
            rows,
            arrays,
        })
    }

    /// The answer of `outputs` to columns: each whole.
    ///
    /// # Errors
    /// As [`Predictions::new`]'s.
    pub(crate) fn columns(outputs: NamedTensors) -> Result<Self, String> {
        let whole = vec![false; outputs.len()];
        let mut answer = Self::new(outputs, whole, 1)?;
        answer.columns = true;
        Ok(answer)
    }

    /// The least bytes of JSON text the answer takes (`routes::json_size` of the values, and
    /// the brackets and commas of its arrays).
    pub(crate) fn json_size(&self) -> usize {
        self.outputs
            .iter()
            .map(|(_, t)| crate::http::routes::json_size(t))
            .sum::<usize>()
            .saturating_add(self.arrays.saturating_mul(3))
    }
}

/// The arrays writing a tensor of `shape` as nested arrays takes: one, then one per element of
/// each dim but the last, nested (`[[1,2],[3,4]]`: three).
fn nested_arrays(shape: &[usize]) -> usize {
    let mut arrays = 0usize;
    let mut outer = 1usize;
    for &d in shape {
        arrays = arrays.saturating_add(outer);
        outer = outer.saturating_mul(d);
    }
    arrays
}

impl Serialize for Predictions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        if self.columns {
            map.serialize_entry("outputs", &Prediction { p: self, row: 0 })?;
        } else {
            map.serialize_entry(
                "predictions",
                &Rows {
                    p: self,
                    rows: self.rows,
                },
            )?;
        }
        map.end()
    }
}

/// The predictions array.
struct Rows<'a> {
    p: &'a Predictions,
    rows: usize,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.rows).map(|row| Prediction { p: self.p, row }))
    }
}

/// Prediction `row`: the output's part, or an object of every output's.
struct Prediction<'a> {
    p: &'a Predictions,
    row: usize,
}

impl Serialize for Prediction<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let part = |j: usize| Part {
            tensor: &self.p.outputs[j].1,
            row: self.p.per_row[j].then_some(self.row),
            binary: self.p.outputs[j].0.ends_with("_bytes"),
        };
        if self.p.outputs.len() == 1 {
            return part(0).serialize(s);
        }
        s.collect_map(
            self.p
                .outputs
                .iter()
                .enumerate()
                .map(|(j, (name, _))| (name, part(j))),
        )
    }
}

/// Row `row` of a tensor (without its dim 0), or the whole tensor, as nested arrays; its
/// strings as binary values if `binary`.
struct Part<'a> {
    tensor: &'a Tensor,
    row: Option<usize>,
    binary: bool,
}

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shape = self.tensor.shape();
        let (shape, range) = match self.row {
            Some(r) => {
                let rest = &shape[1.min(shape.len())..];
                let step: usize = rest.iter().product();
                (rest, r * step..(r + 1) * step)
            }
            None => (shape, 0..self.tensor.len()),
        };
        let data: TensorSlice<'_> = self.tensor.data();
        let binary = self.binary;
        with_slice!(data, v => Nested { values: v.get(range).unwrap_or_default(), shape, binary }.serialize(s))
    }
}

/// Values laid out row-major as `shape`, written as nested arrays (strings as binary values
/// if `binary`).
struct Nested<'a, T> {
    values: &'a [T],
    shape: &'a [usize],
    binary: bool,
}

impl<T: JsonValue> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shape.split_first() {
            None => match self.values.first() {
                Some(v) => v.write(s, self.binary),
                None => s.serialize_unit(),
            },
            Some((&n, rest)) => {
                let step: usize = rest.iter().product();
                s.collect_seq((0..n).map(|k| {
                    Nested {
                        values: self
                            .values
                            .get(k * step..(k + 1) * step)
                            .unwrap_or_default(),
                        shape: rest,
                        binary: self.binary,
                    }
                }))
            }
        }
    }
}

/// One element as JSON, as v2's `data` writes it ([`protocol::Values`]); a string as a binary
/// value (`{"b64": "..."}`) if `binary`.
///
/// [`protocol::Values`]: crate::http::protocol::Values
trait JsonValue {
    fn write<S: Serializer>(&self, s: S, binary: bool) -> Result<S::Ok, S::Error>;
}

macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write<S: Serializer>(&self, s: S, _: bool) -> Result<S::Ok, S::Error> {
                self.serialize(s)
            }
        }
    )*};
}
as_is!(f64, i64, i32, i8, u8, bool, i16, u16, u32, u64);

impl JsonValue for String {
    fn write<S: Serializer>(&self, s: S, binary: bool) -> Result<S::Ok, S::Error> {
        if !binary {
            return self.serialize(s);
        }
        use base64::Engine as _;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(
            "b64",
            &base64::engine::general_purpose::STANDARD.encode(self),
        )?;
        map.end()
    }
}

macro_rules! widened {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write<S: Serializer>(&self, s: S, _: bool) -> Result<S::Ok, S::Error> {
                s.serialize_f64(f64::from(*self))
            }
        }
    )*};
}
widened!(f32, half::f16, half::bf16);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::v1::testing::{info, meta};
    use crate::{ElementType, TensorData};

    #[test]
    fn predictions_are_rows_or_whole_outputs() {
        let f = |shape: Vec<usize>, v: Vec<f32>| {
            Tensor::from_data(shape, TensorData::F32(v)).expect("tensor")
        };
        let batched = meta(
            vec![info("x", ElementType::F32, &[None, Some(2)])],
            vec![
                info("p", ElementType::F32, &[None, Some(2)]),
                info("c", ElementType::I64, &[None]),
            ],
        );
        let outputs = vec![
            ("p".to_owned(), f(vec![2, 2], vec![0.5, 0.25, 1.0, 0.0])),
            (
                "c".to_owned(),
                Tensor::from_data(vec![2], TensorData::I64(vec![7, 9])).expect("c"),
            ),
        ];
        let split = per_row(&batched, &outputs, 2).expect("per row");
        assert_eq!(split, [true, true]);
        let text = |outputs: NamedTensors, per_row: Vec<bool>, rows: usize| {
            serde_json::to_string(&Predictions::new(outputs, per_row, rows).expect("size"))
                .expect("json")
        };
        assert_eq!(
            text(outputs.clone(), split.clone(), 2),
            r#"{"predictions":[{"p":[0.5,0.25],"c":7},{"p":[1.0,0.0],"c":9}]}"#
        );
        assert_eq!(
            text(outputs[..1].to_vec(), vec![true], 2),
            r#"{"predictions":[[0.5,0.25],[1.0,0.0]]}"#
        );
        // A model that broke its own batch dim: the server's fault.
        assert!(per_row(&batched, &outputs, 3).expect_err("rows").0);
        // No batch dim: a detector's boxes, whole, to one instance; refused to two.
        let fixed = meta(
            vec![info("img", ElementType::F32, &[Some(1), Some(3)])],
            vec![info("boxes", ElementType::F32, &[None, Some(2)])],
        );
        let boxes = vec![(
            "boxes".to_owned(),
            f(vec![3, 2], vec![1., 2., 3., 4., 5., f32::NAN]),
        )];
        assert_eq!(per_row(&fixed, &boxes, 1), Ok(vec![false]));
        assert_eq!(
            text(boxes.clone(), vec![false], 1),
            r#"{"predictions":[[[1.0,2.0],[3.0,4.0],[5.0,null]]]}"#
        );
        let (server_side, m) = per_row(&fixed, &boxes, 2).expect_err("two");
        assert!(
            !server_side && m.contains("one instance per request"),
            "{m}"
        );
        // A fixed dim 0 equal to the instances is a row each; a scalar output is whole.
        let one_row = meta(
            vec![info("img", ElementType::F32, &[Some(1), Some(3)])],
            vec![info("s", ElementType::F32, &[Some(1), Some(2)])],
        );
        let s = vec![("s".to_owned(), f(vec![1, 2], vec![3.0, 4.0]))];
        assert_eq!(per_row(&one_row, &s, 1), Ok(vec![true]));
        assert_eq!(text(s, vec![true], 1), r#"{"predictions":[[3.0,4.0]]}"#);
        let scalar = vec![("s".to_owned(), f(vec![], vec![0.5]))];
        assert_eq!(text(scalar, vec![false], 1), r#"{"predictions":[0.5]}"#);
        // Zero dims: empty arrays, as many as the dims before them make, within reason.
        let empty = |shape: Vec<usize>| vec![("e".to_owned(), f(shape, vec![]))];
        assert_eq!(
            text(empty(vec![2, 3, 0]), vec![true], 2),
            r#"{"predictions":[[[],[],[]],[[],[],[]]]}"#
        );
        let p = Predictions::new(empty(vec![2, 3, 0]), vec![true], 2).expect("small");
        assert_eq!(p.arrays, 2 + 2 * 4);
        let m = Predictions::new(empty(vec![1, 1 << 30, 0]), vec![true], 1)
            .err()
            .expect("a billion empty arrays");
        assert!(m.contains("nested JSON arrays"), "{m}");
        assert_eq!(nested_arrays(&[2, 2]), 3);
        assert_eq!(nested_arrays(&[]), 0);
        assert_eq!(nested_arrays(&[usize::MAX, usize::MAX, 2]), usize::MAX);
    }

    #[test]
    fn columns_are_answered_whole_and_bytes_outputs_as_binary_values() {
        let f = |shape: Vec<usize>, v: Vec<f32>| {
            Tensor::from_data(shape, TensorData::F32(v)).expect("tensor")
        };
        let text = |p: Predictions| serde_json::to_string(&p).expect("json");
        let p = vec![("p".to_owned(), f(vec![2, 2], vec![0.5, 0.25, 1.0, 0.0]))];
        assert_eq!(
            text(Predictions::columns(p.clone()).expect("one")),
            r#"{"outputs":[[0.5,0.25],[1.0,0.0]]}"#
        );
        let two = vec![p[0].clone(), ("s".to_owned(), f(vec![], vec![2.0]))];
        assert_eq!(
            text(Predictions::columns(two).expect("two")),
            r#"{"outputs":{"p":[[0.5,0.25],[1.0,0.0]],"s":2.0}}"#
        );
        let strings = |name: &str| {
            let v = vec!["cat".to_owned(), "é".to_owned()];
            vec![(
                name.to_owned(),
                Tensor::from_data(vec![2], TensorData::String(v)).expect("s"),
            )]
        };
        assert_eq!(
            text(Predictions::new(strings("label_bytes"), vec![true], 2).expect("rows")),
            r#"{"predictions":[{"b64":"Y2F0"},{"b64":"w6k="}]}"#
        );
        assert_eq!(
            text(Predictions::columns(strings("label_bytes")).expect("columns")),
            r#"{"outputs":[{"b64":"Y2F0"},{"b64":"w6k="}]}"#
        );
        assert_eq!(
            text(Predictions::columns(strings("label")).expect("plain")),
            r#"{"outputs":["cat","é"]}"#
        );
    }
}
