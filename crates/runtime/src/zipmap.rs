//! scikit-learn classifiers' probabilities, served as a tensor.
//!
//! Why: skl2onnx ends every classifier it converts with a `ZipMap` unless told
//! `zipmap=False`, so the probabilities output is a sequence of maps, one per row from class
//! to probability (`seq(map(int64, tensor(float)))`, or `string` keys for text classes). No v2
//! datatype carries that, Triton refuses to load such a model, and kiln refused it too: the
//! most common tabular model there is would not serve as exported. kiln serves that output as
//! `[rows, classes]` FP32 (declared `[-1, -1]`, or `[n, -1]` where every input declares the
//! same fixed dim 0 `n`), each row's probabilities in its classes' ascending order (integers
//! by value, strings by bytes). scikit-learn's `classes_` are sorted, so for its exports that
//! is the tensor `zipmap=False` gives. A row whose classes are not the first row's is an
//! inference error, never a column that means another class. The rows are read one at a time,
//! each map dropped once copied (ONNX Runtime hands out a copy of a row's map per read).

use ort::value::{DynMapValueType, DynValue, SequenceValueType, TensorElementType, ValueType};

use crate::tensor::{ElementType, Tensor, TensorData};

/// An output that is a sequence of maps from class to probability, served as a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapSequence {
    text_classes: bool,
}

impl MapSequence {
    /// The map sequence `ty` describes, if kiln serves it: keys `int64` or `string`, values
    /// `float` (what ZipMap makes, and the only maps ONNX Runtime hands out of a sequence).
    pub(crate) fn of(ty: &ValueType) -> Option<Self> {
        let ValueType::Sequence(inner) = ty else {
            return None;
        };
        let ValueType::Map {
            key,
            value: TensorElementType::Float32,
        } = inner.as_ref()
        else {
            return None;
        };
        let text_classes = match key {
            TensorElementType::Int64 => false,
            TensorElementType::String => true,
            _ => return None,
        };
        Some(Self { text_classes })
    }

    /// The element type of the tensor served.
    pub(crate) fn element_type(self) -> ElementType {
        ElementType::F32
    }

    /// `value`, a sequence of maps as [`of`](Self::of) found, as a `[rows, classes]` tensor.
    ///
    /// # Errors
    /// ONNX Runtime's, or rows whose classes differ (the message).
    pub(crate) fn to_tensor(self, value: DynValue) -> Result<Tensor, String> {
        if self.text_classes {
            table::<String>(value)
        } else {
            table::<i64>(value)
        }
    }
}

/// The `[rows, classes]` tensor of the sequence of maps `value` with keys `K`, its values
/// ordered by class; every row must have the first row's classes.
fn table<K>(value: DynValue) -> Result<Tensor, String>
where
    K: ort::value::IntoTensorElementType + Clone + std::hash::Hash + Eq + Ord + std::fmt::Debug,
{
    let sequence = value
        .downcast::<SequenceValueType<DynMapValueType>>()
        .map_err(|e| e.to_string())?;
    let rows = sequence.len();
    let mut classes: Option<Vec<K>> = None;
    let mut values: Vec<f32> = Vec::new();
    for i in 0..rows {
        let map = sequence
            .get(i)
            .ok_or_else(|| format!("row {i} of a sequence of maps could not be read"))?;
        let mut row = map
            .try_extract_key_values::<K, f32>()
            .map_err(|e| e.to_string())?;
        drop(map);
        row.sort_by(|a, b| a.0.cmp(&b.0));
        let (keys, probabilities): (Vec<K>, Vec<f32>) = row.into_iter().unzip();
        match &classes {
            None => {
                values.reserve_exact(rows.saturating_mul(keys.len()));
                classes = Some(keys);
            }
            Some(first) if *first != keys => {
                return Err(format!(
                    "row {i} of a sequence of maps has other classes than row 0: not a table"
                ))
            }
            Some(_) => {}
        }
        values.extend(probabilities);
    }
    let width = classes.map_or(0, |c| c.len());
    Tensor::from_data(vec![rows, width], TensorData::F32(values)).map_err(|e| e.to_string())
}
