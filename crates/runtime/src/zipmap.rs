//! scikit-learn classifiers' probabilities, served as a tensor.
//!
//! Why: skl2onnx ends every classifier it converts with a `ZipMap` unless told
//! `zipmap=False`, so the probabilities output is a sequence of maps, one per row from class
//! to probability (`seq(map(int64, tensor(float)))`, or `string` keys for text classes). No v2
//! datatype carries that, Triton refuses to load such a model, and kiln refused it too: the
//! most common tabular model there is would not serve as exported. kiln serves that output as
//! `[rows, classes]` FP32 (declared `[-1, -1]`, or `[n, -1]` where every input is rows of
//! features with the same fixed dim 0 `n`), each row's probabilities in its classes' ascending order (integers
//! by value, strings by bytes). scikit-learn's `classes_` are sorted, so for its exports that
//! is the tensor `zipmap=False` gives. A row whose classes are not the first row's is an
//! inference error, never a column that means another class. The rows are read one at a time,
//! each map dropped once copied (ONNX Runtime hands out a copy of a row's map per read).
//!
//! The classes themselves are the ZipMap's attribute: [`classes`] reads them from the model's
//! bytes, so that Triton's classification extension answers each class with its name
//! (`"0.57:2:virginica"`) with no label file to write.

use std::collections::BTreeMap;

use ort::value::{DynMapValueType, DynValue, SequenceValueType, TensorElementType, ValueType};

use crate::wire::{Value, Wire};

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

/// The classes of each ZipMap in the model's main graph, by the output it writes, in the order
/// its columns are served (ascending; a class given twice once, as the map keeps it), as text.
/// A model whose bytes the scan cannot read, or a ZipMap whose classes are not UTF-8, given
/// twice, or more than [`crate::labels::MAX_LABELS`], give none.
pub(crate) fn classes(model: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    // A model the scan cannot read loads all the same (ONNX Runtime is the judge); it just
    // has no classes to name.
    if scan(model, &mut found).is_err() {
        found.clear();
    }
    found
}

/// `ModelProto.graph` (7) → `GraphProto.node` (1), each node read by [`zipmap_node`].
fn scan(model: &[u8], found: &mut BTreeMap<String, Vec<String>>) -> Result<(), String> {
    let mut m = Wire::new(model);
    while let Some((field, value)) = m.value()? {
        let (7, Value::Bytes(graph)) = (field, value) else {
            continue;
        };
        let mut g = Wire::new(graph);
        while let Some((field, value)) = g.value()? {
            if let (1, Value::Bytes(node)) = (field, value) {
                if let Some((output, classes)) = zipmap_node(node)? {
                    found.insert(output, classes);
                }
            }
        }
    }
    Ok(())
}

/// A `NodeProto` that is an `ai.onnx.ml` ZipMap: its first output (2) and its classes, from
/// its attribute (5) `classlabels_int64s` or `classlabels_strings`. Any other node is passed
/// over without reading its attributes (a tree ensemble's lists run to millions of values).
fn zipmap_node(node: &[u8]) -> Result<Option<(String, Vec<String>)>, String> {
    let (mut output, mut op, mut domain) = (None, None, &b""[..]);
    let mut r = Wire::new(node);
    while let Some((field, value)) = r.value()? {
        match (field, value) {
            (2, Value::Bytes(b)) if output.is_none() => output = Some(b),
            (4, Value::Bytes(b)) => op = Some(b),
            (7, Value::Bytes(b)) => domain = b,
            _ => {}
        }
    }
    if op != Some(b"ZipMap") || domain != b"ai.onnx.ml" {
        return Ok(None);
    }
    let Some(output) = output.and_then(|o| std::str::from_utf8(o).ok()) else {
        return Ok(None);
    };
    let mut given = None;
    let mut r = Wire::new(node);
    while let Some((field, value)) = r.value()? {
        let (5, Value::Bytes(attribute)) = (field, value) else {
            continue;
        };
        if let Some(classes) = class_attribute(attribute)? {
            // ONNX Runtime reads one attribute of a name: two leave the columns' classes
            // unsure.
            if given.replace(classes).is_some() {
                return Ok(None);
            }
        }
    }
    Ok(given.flatten().map(|classes| (output.to_owned(), classes)))
}

/// An `AttributeProto` (name 1): for `classlabels_int64s`, its `ints` (8, packed or not), for
/// `classlabels_strings` its `strings` (9), sorted, each once, as text: `Some(None)` where
/// they cannot be labels (not UTF-8, more than [`crate::labels::MAX_LABELS`]); `None` for
/// any other attribute, whose values are not read.
fn class_attribute(attribute: &[u8]) -> Result<Option<Option<Vec<String>>>, String> {
    let mut name = &b""[..];
    let mut r = Wire::new(attribute);
    while let Some((field, value)) = r.value()? {
        if let (1, Value::Bytes(b)) = (field, value) {
            name = b;
        }
    }
    let strings = match name {
        b"classlabels_strings" => true,
        b"classlabels_int64s" => false,
        _ => return Ok(None),
    };
    let too_many = |n: usize| n > crate::labels::MAX_LABELS;
    let (mut ints, mut texts) = (Vec::new(), Vec::new());
    let mut r = Wire::new(attribute);
    while let Some((field, value)) = r.value()? {
        match (field, value, strings) {
            // int64 values are varints of their two's complement.
            (8, Value::Varint(v), false) => ints.push(v as i64),
            (8, Value::Bytes(packed), false) => {
                let mut p = Wire::new(packed);
                while !p.at_end() && !too_many(ints.len()) {
                    ints.push(p.varint()? as i64);
                }
            }
            (9, Value::Bytes(b), true) => texts.push(b),
            _ => {}
        }
        if too_many(ints.len() + texts.len()) {
            return Ok(Some(None));
        }
    }
    if strings {
        texts.sort_unstable();
        texts.dedup();
        let text: Option<Vec<String>> = texts
            .iter()
            .map(|s| std::str::from_utf8(s).ok().map(str::to_owned))
            .collect();
        Ok(Some(text))
    } else {
        ints.sort_unstable();
        ints.dedup();
        Ok(Some(Some(ints.iter().map(i64::to_string).collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode::{len_field as bytes, varint};

    fn node(op: &str, domain: &str, output: &str, attributes: &[&[u8]]) -> Vec<u8> {
        let mut n = [
            bytes(1, b"in"),
            bytes(2, output.as_bytes()),
            bytes(4, op.as_bytes()),
        ]
        .concat();
        for a in attributes {
            n.extend(bytes(5, a));
        }
        // The domain after the attributes: it is read before them all the same.
        n.extend(bytes(7, domain.as_bytes()));
        n
    }

    fn model(nodes: &[Vec<u8>]) -> Vec<u8> {
        let graph: Vec<u8> = nodes.iter().flat_map(|n| bytes(1, n)).collect();
        bytes(7, &graph)
    }

    #[test]
    fn classes_come_sorted_from_packed_unpacked_and_string_attributes() {
        // Unpacked int64s, negative ones too (ten-byte varints), given unsorted and twice.
        let mut unpacked = bytes(1, b"classlabels_int64s");
        for v in [7i64, -3, 7, 0] {
            varint(8 << 3, &mut unpacked);
            varint(v as u64, &mut unpacked);
        }
        // Packed int64s.
        let mut packed_values = Vec::new();
        for v in [2u64, 1] {
            varint(v, &mut packed_values);
        }
        let packed = [bytes(1, b"classlabels_int64s"), bytes(8, &packed_values)].concat();
        let strings = [
            bytes(1, b"classlabels_strings"),
            bytes(9, b"cat"),
            bytes(9, b"ant"),
        ]
        .concat();
        let m = model(&[
            node("ZipMap", "ai.onnx.ml", "a", &[&unpacked]),
            node("ZipMap", "ai.onnx.ml", "b", &[&packed]),
            node("ZipMap", "ai.onnx.ml", "c", &[&strings]),
            // Not a ZipMap, or not ONNX-ML's: no classes.
            node("LabelEncoder", "ai.onnx.ml", "d", &[&strings]),
            node("ZipMap", "", "e", &[&strings]),
            // Classes given twice: which ONNX Runtime keeps is not for kiln to guess.
            node("ZipMap", "ai.onnx.ml", "f", &[&packed, &strings]),
        ]);
        let found = classes(&m);
        let want: BTreeMap<String, Vec<String>> = [
            ("a", vec!["-3", "0", "7"]),
            ("b", vec!["1", "2"]),
            ("c", vec!["ant", "cat"]),
        ]
        .into_iter()
        .map(|(o, c)| (o.to_owned(), c.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(found, want);
        // Bytes the scan cannot read (cut short) name no classes, and do not panic.
        assert!(classes(&m[..m.len() / 2]).is_empty());
        assert!(classes(b"\xff\xff\xff").is_empty());
    }
}
