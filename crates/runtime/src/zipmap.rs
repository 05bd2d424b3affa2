//! scikit-learn classifiers' probabilities, served as a tensor.
//!
//! Why: skl2onnx ends every classifier it converts with a `ZipMap` unless told
//! `zipmap=False`, so the probabilities output is a sequence of maps, one per row from class
//! to probability (`seq(map(int64, tensor(float)))`, or `string` keys for text classes). No v2
//! datatype carries that, Triton refuses to load such a model, and kiln refused it too: the
//! most common tabular model there is would not serve as exported. kiln serves that output as
//! the tensor `zipmap=False` gives: `[rows, classes]`, FP32 (FP64 for maps of doubles), each
//! row's probabilities in its classes' ascending order (integers by value, strings by bytes:
//! scikit-learn's `classes_` order, which ZipMap's keys follow). A row whose classes are not
//! the first row's is an inference error, never a column that means another class.

use ort::value::{DynMapValueType, DynSequenceValueType, DynValue, TensorElementType, ValueType};

use crate::tensor::{ElementType, Tensor, TensorData};

/// An output that is a sequence of maps from class to probability, served as a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapSequence {
    text_classes: bool,
    value: ElementType,
}

impl MapSequence {
    /// The map sequence `ty` describes, if kiln serves it: keys `int64` or `string`, values
    /// `float` or `double`.
    pub(crate) fn of(ty: &ValueType) -> Option<Self> {
        let ValueType::Sequence(inner) = ty else {
            return None;
        };
        let ValueType::Map { key, value } = inner.as_ref() else {
            return None;
        };
        let text_classes = match key {
            TensorElementType::Int64 => false,
            TensorElementType::String => true,
            _ => return None,
        };
        let value = match value {
            TensorElementType::Float32 => ElementType::F32,
            TensorElementType::Float64 => ElementType::F64,
            _ => return None,
        };
        Some(Self {
            text_classes,
            value,
        })
    }

    /// The element type of the tensor served.
    pub(crate) fn element_type(self) -> ElementType {
        self.value
    }

    /// `value`, a sequence of maps as [`of`](Self::of) found, as a `[rows, classes]` tensor.
    ///
    /// # Errors
    /// ONNX Runtime's, or rows whose classes differ (the message).
    pub(crate) fn to_tensor(self, value: DynValue) -> Result<Tensor, String> {
        let ort = |e: ort::Error| e.to_string();
        let rows = value
            .downcast::<DynSequenceValueType>()
            .map_err(ort)?
            .try_extract_sequence::<DynMapValueType>()
            .map_err(ort)?;
        match (self.text_classes, self.value) {
            (false, ElementType::F32) => table(
                &rows,
                |m| m.try_extract_key_values::<i64, f32>(),
                TensorData::F32,
            ),
            (false, _) => table(
                &rows,
                |m| m.try_extract_key_values::<i64, f64>(),
                TensorData::F64,
            ),
            (true, ElementType::F32) => table(
                &rows,
                |m| m.try_extract_key_values::<String, f32>(),
                TensorData::F32,
            ),
            (true, _) => table(
                &rows,
                |m| m.try_extract_key_values::<String, f64>(),
                TensorData::F64,
            ),
        }
    }
}

/// The `[rows, classes]` tensor of the maps `rows`, each read by `pairs`, its values ordered
/// by class; every row must have the first row's classes.
fn table<K: Ord + PartialEq, V>(
    rows: &[ort::value::DynMap],
    pairs: impl Fn(&ort::value::DynMap) -> ort::Result<Vec<(K, V)>>,
    data: impl FnOnce(Vec<V>) -> TensorData,
) -> Result<Tensor, String> {
    let mut classes: Option<Vec<K>> = None;
    let mut values = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let mut row = pairs(row).map_err(|e| e.to_string())?;
        row.sort_by(|a, b| a.0.cmp(&b.0));
        let (keys, probabilities): (Vec<K>, Vec<V>) = row.into_iter().unzip();
        match &classes {
            None => classes = Some(keys),
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
    Tensor::from_data(vec![rows.len(), width], data(values)).map_err(|e| e.to_string())
}
