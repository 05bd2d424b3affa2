//! KServe's v1 protocol bodies (TensorFlow Serving's row format) as kiln tensors and back:
//! `{"instances": [...]}` in, `{"predictions": [...]}` out.
//!
//! Why: the v1 protocol is what a KServe transformer calls its predictor with unless told
//! otherwise (`--predictor_protocol` defaults to `v1`), and what KServe's own predictors and
//! TensorFlow Serving answer. The v1 request names no shapes or datatypes: each instance is one
//! row, the rows are stacked into one tensor per input (`[instances] + the instance's shape`,
//! the element type the model declares), and the answer has one prediction per instance.
//!
//! - A model with one input takes each instance as that input's value (a nested array, or a
//!   scalar); a model with several takes objects naming every input (`{"x": …, "mask": …}`).
//! - An instance must be rectangular, and every instance of an input the same shape: a
//!   ragged one is refused with its shape, not padded.
//! - Prediction `i` is row `i` of each output — of an output that is one row per instance:
//!   every output of a model whose dim 0 is its batch (kiln batches those), or one whose
//!   declared dim 0 is the number of instances. Other outputs (a detector's boxes, say) are
//!   answered whole, to a request of one instance; more instances are refused, since their
//!   rows cannot be told apart. With one output a prediction is its value; with several, an
//!   object by output name, as TensorFlow Serving writes them.
//! - Values are read by the same readers as v2 `data` (`json_data`, so the same refusals and
//!   the same numbers) and written as v2 writes them (FP32 widened to `f64`; NaN as `null`).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::http::json_fields::MAX_DIMS;
use crate::http::protocol::{self, InputError};
use crate::tensor::{with_slice, TensorSlice};
use crate::{ModelMetadata, NamedTensors, Tensor, TensorInfo};

/// A v1 predict request: the rows, as one text. Other fields (`signature_name`, `parameters`)
/// are not read.
#[derive(Deserialize)]
struct Predict<'a> {
    #[serde(borrow, default)]
    instances: Option<&'a RawValue>,
    /// TensorFlow Serving's columnar form, refused by name.
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
}

/// The input tensors of a v1 predict `body` for the model `meta` describes, each at most
/// `max_elements` elements, and the number of instances.
///
/// Memory: a model with one input takes the whole `instances` array as its tensor's nested
/// values, read once as v2 reads `data`. Objects are walked once to check their names and
/// shapes, then once per input to read its values straight into its tensor, sized from the
/// first walk: nothing per instance is kept between instances.
///
/// # Errors
/// [`InputError::Invalid`] (400) for a body that is not `{"instances": [...]}` with at least one
/// instance, an instance that does not name the inputs, a ragged instance or instances of
/// different shapes, values that are not the input's type; [`InputError::TooLarge`] (413) for an
/// input over `max_elements`.
pub(crate) fn decode(
    body: &[u8],
    meta: &ModelMetadata,
    max_elements: usize,
) -> Result<(NamedTensors, usize), InputError> {
    let bad = |m: String| InputError::Invalid(m);
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad("malformed request body: not a JSON object".into()));
    }
    let request: Predict =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed request body: {e}")))?;
    let instances = match (request.instances, request.inputs) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "the body has both `instances` and `inputs`: send the rows as `instances`".into(),
            ))
        }
        (Some(i), None) => i.get(),
        (None, Some(_)) => {
            return Err(bad(
                "the v1 protocol here takes rows (`instances`); for whole tensors use the v2 \
                 protocol (POST /v2/models/{model}/infer)"
                    .into(),
            ))
        }
        (None, None) => return Err(bad("the body must be {\"instances\": [...]}".into())),
    };
    let Some(inner) = instances.strip_prefix('[') else {
        return Err(bad(
            "`instances` must be an array, one instance per row".into()
        ));
    };
    let first = inner.trim_start();
    if first.starts_with(']') {
        return Err(bad("`instances` is empty: send one instance per row".into()));
    }
    if let [only] = &meta.inputs[..] {
        if !first.starts_with('{') {
            // The rows stacked are the array itself.
            let shape = shape_of(instances, MAX_DIMS).map_err(|m| {
                // Refused: the first instance at fault, named (a second walk, on this path
                // only).
                let named = same_shapes(instances, &only.name).err();
                named.unwrap_or_else(|| bad(format!("input `{}`: `instances` {m}", only.name)))
            })?;
            let rows = shape[0];
            let tensor = stacked(only, shape, max_elements, &mut |each| each(instances))?;
            return Ok((vec![(only.name.clone(), tensor)], rows));
        }
    }
    let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
    // Walk 1: every instance an object naming exactly the inputs, each input one shape.
    let mut rows_shapes: Vec<Option<Vec<usize>>> = vec![None; names.len()];
    let rows = each_instance(instances, |i, text| {
        let values = named(text, &names).map_err(|m| bad(format!("instance {i}: {m}")))?;
        for (j, value) in values.iter().enumerate() {
            let name = names[j];
            let value =
                value.ok_or_else(|| bad(format!("instance {i}: input `{name}` is missing")))?;
            same_shape(&mut rows_shapes[j], name, i, value.get())?;
        }
        Ok(())
    })?;
    // Walk j + 2: input j's values, read into its tensor.
    let tensors = meta
        .inputs
        .iter()
        .zip(rows_shapes)
        .enumerate()
        .map(|(j, (info, row))| {
            let shape: Vec<usize> = std::iter::once(rows)
                .chain(row.unwrap_or_default())
                .collect();
            let mut texts = |each: &mut dyn FnMut(&str) -> Result<(), String>| {
                each_instance(instances, |_, text| {
                    let values = named(text, &names).map_err(bad)?;
                    match values[j] {
                        Some(value) => each(value.get()).map_err(bad),
                        None => Ok(()),
                    }
                })
                .map(drop)
                .map_err(|e| match e {
                    InputError::Invalid(m) | InputError::TooLarge(m) => m,
                })
            };
            let tensor = stacked(info, shape, max_elements, &mut texts)?;
            Ok((info.name.clone(), tensor))
        })
        .collect::<Result<_, InputError>>()?;
    Ok((tensors, rows))
}

/// An instance object's values, by the index of their input in `names`: each key looked up
/// as it is read (never kept), an unknown or repeated one refused at once.
///
/// # Errors
/// What is wrong with the instance, as a message.
fn named<'a>(text: &'a str, names: &[&str]) -> Result<Vec<Option<&'a RawValue>>, String> {
    struct Named<'n> {
        names: &'n [&'n str],
        refusal: Option<String>,
    }
    /// A key's input index; the key itself (shortened) when it names none.
    struct Key<'n>(&'n [&'n str]);
    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = Result<usize, String>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Key<'_> {
        type Value = Result<usize, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an input's name")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(self
                .0
                .iter()
                .position(|n| *n == v)
                .ok_or_else(|| v.chars().take(64).collect()))
        }
    }
    impl<'de> Visitor<'de> for &mut Named<'_> {
        type Value = Vec<Option<&'de RawValue>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object naming the inputs")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut values = vec![None; self.names.len()];
            while let Some(key) = map.next_key_seed(Key(self.names))? {
                let refusal = match key {
                    Ok(j) if values[j].is_none() => {
                        values[j] = Some(map.next_value::<&'de RawValue>()?);
                        continue;
                    }
                    Ok(j) => format!("input `{}` is named twice", self.names[j]),
                    Err(key) if key == "b64" => "binary values (`{\"b64\": …}`) are not served: \
                                                 kiln's BYTES are UTF-8 strings, sent as JSON \
                                                 strings"
                        .to_owned(),
                    Err(key) => {
                        format!("unknown input `{key}`; the inputs are {:?}", self.names)
                    }
                };
                self.refusal = Some(refusal);
                return Err(de::Error::custom(""));
            }
            Ok(values)
        }
    }
    let mut visitor = Named {
        names,
        refusal: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, &mut visitor).map_err(|_| {
        visitor
            .refusal
            .take()
            .unwrap_or_else(|| format!("not an object naming the model's inputs {names:?}"))
    })
}

/// Checks that each instance of the one input `name` is a tensor of instance 0's shape.
///
/// # Errors
/// The first instance that is not, named.
fn same_shapes(instances: &str, name: &str) -> Result<(), InputError> {
    let mut row = None;
    each_instance(instances, |i, text| same_shape(&mut row, name, i, text)).map(drop)
}

/// Checks that `text`, instance `i`'s value of input `name`, is a tensor of the shape `row`
/// holds (instance 0's, kept there by its call), of at most [`MAX_DIMS`] dims once stacked.
///
/// # Errors
/// What is wrong, naming the input and the instance.
fn same_shape(
    row: &mut Option<Vec<usize>>,
    name: &str,
    i: usize,
    text: &str,
) -> Result<(), InputError> {
    let bad = |m: String| InputError::Invalid(format!("input `{name}`: instance {i} {m}"));
    let shape = shape_of(text, MAX_DIMS - 1).map_err(bad)?;
    match row {
        None => *row = Some(shape),
        Some(row) if *row != shape => {
            return Err(bad(format!(
                "has shape {shape:?} but instance 0 has {row:?}; the instances are stacked \
                 into one tensor"
            )))
        }
        Some(_) => {}
    }
    Ok(())
}

/// The tensor of `shape` (the instances stacked) whose values are `texts` in turn. The shape
/// was read from the texts themselves, so they hold exactly its values: their vector is
/// reserved whole, once.
fn stacked(
    info: &TensorInfo,
    shape: Vec<usize>,
    max_elements: usize,
    texts: &mut protocol::Texts<'_>,
) -> Result<Tensor, InputError> {
    let name = &info.name;
    let bad = |m: String| InputError::Invalid(format!("input `{name}`: {m}"));
    let dims: Vec<i64> = shape
        .iter()
        .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
        .collect();
    let (shape, elements) = protocol::checked_shape(name, &dims, max_elements)?;
    let data = protocol::typed_data(
        protocol::datatype(info.element_type),
        texts,
        &shape,
        elements,
        elements,
    )
    .map_err(bad)?;
    Tensor::from_data(shape, data).map_err(|e| bad(e.to_string()))
}

/// Calls `f` with each element of the JSON array `instances` (its index and text), in order,
/// holding none of them; returns how many there were.
///
/// # Errors
/// The first of `f`'s.
fn each_instance<'a>(
    instances: &'a str,
    f: impl FnMut(usize, &'a str) -> Result<(), InputError>,
) -> Result<usize, InputError> {
    struct Each<F> {
        f: F,
        failed: Option<InputError>,
    }
    impl<'de, F: FnMut(usize, &'de str) -> Result<(), InputError>> Visitor<'de> for &mut Each<F> {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of instances")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut i = 0;
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                if let Err(e) = (self.f)(i, raw.get()) {
                    self.failed = Some(e);
                    return Err(de::Error::custom(""));
                }
                i += 1;
            }
            Ok(i)
        }
    }
    let mut each = Each { f, failed: None };
    let mut de = serde_json::Deserializer::from_str(instances);
    match serde::Deserializer::deserialize_seq(&mut de, &mut each) {
        Ok(n) => Ok(n),
        Err(e) => Err(each
            .failed
            .take()
            .unwrap_or_else(|| InputError::Invalid(format!("malformed instances: {e}")))),
    }
}

/// The shape of one JSON value (valid JSON, as serde found it): its arrays' lengths, outermost
/// first; `[]` for a scalar.
///
/// # Errors
/// Why it is not a tensor, as a phrase after "instance N": ragged arrays, values at different
/// depths, an object, nesting past `max_rank` arrays.
fn shape_of(raw: &str, max_rank: usize) -> Result<Vec<usize>, String> {
    let b = raw.as_bytes();
    // The length of the arrays at each depth, once one has closed there.
    let mut dims: Vec<Option<usize>> = Vec::new();
    // The values counted so far in each array open now, outermost first.
    let mut open: Vec<usize> = Vec::new();
    // The depth of the values (numbers, strings, literals), once one is seen.
    let mut leaf_depth = None;
    let ragged = || {
        "is not a tensor: its arrays at one depth differ in length, or its values are at \
         different depths"
            .to_owned()
    };
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b' ' | b'\n' | b'\r' | b'\t' | b',' => i += 1,
            b'[' => {
                if leaf_depth.is_some_and(|d| open.len() >= d) {
                    return Err(ragged());
                }
                if open.len() == max_rank {
                    return Err(format!("nests more than {max_rank} arrays deep"));
                }
                if let Some(n) = open.last_mut() {
                    *n += 1;
                }
                open.push(0);
                i += 1;
            }
            b']' => {
                let n = open.pop().ok_or_else(ragged)?;
                let depth = open.len();
                if dims.len() <= depth {
                    dims.resize(depth + 1, None);
                }
                match dims[depth] {
                    Some(d) if d != n => return Err(ragged()),
                    Some(_) => {}
                    None => dims[depth] = Some(n),
                }
                i += 1;
            }
            b'{' => {
                return Err(
                    "holds an object: tensor values are numbers, booleans or strings".to_owned(),
                )
            }
            _ => {
                let depth = open.len();
                if dims.len() > depth || leaf_depth.is_some_and(|d| d != depth) {
                    return Err(ragged());
                }
                leaf_depth = Some(depth);
                if let Some(n) = open.last_mut() {
                    *n += 1;
                }
                i = leaf_end(b, i);
            }
        }
    }
    // Values sit below the innermost arrays, if any were seen.
    if leaf_depth.is_some_and(|d| d != dims.len()) {
        return Err(ragged());
    }
    Ok(dims.into_iter().map(Option::unwrap_or_default).collect())
}

/// The index after the value (a string or a literal) starting at `b[i]`.
fn leaf_end(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'"' {
        i += 1;
        while let Some(&c) = b.get(i) {
            match c {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        return i;
    }
    while let Some(&c) = b.get(i) {
        if matches!(c, b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
            break;
        }
        i += 1;
    }
    i
}

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

/// The v1 answer: `{"predictions": [...]}`, one per instance (see the module doc).
pub(crate) struct Predictions {
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
            outputs,
            per_row,
            rows,
            arrays,
        })
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
        map.serialize_entry(
            "predictions",
            &Rows {
                p: self,
                rows: self.rows,
            },
        )?;
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

/// Row `row` of a tensor (without its dim 0), or the whole tensor, as nested arrays.
struct Part<'a> {
    tensor: &'a Tensor,
    row: Option<usize>,
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
        with_slice!(data, v => Nested { values: v.get(range).unwrap_or_default(), shape }.serialize(s))
    }
}

/// Values laid out row-major as `shape`, written as nested arrays.
struct Nested<'a, T> {
    values: &'a [T],
    shape: &'a [usize],
}

impl<T: JsonValue> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shape.split_first() {
            None => match self.values.first() {
                Some(v) => v.write(s),
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
                    }
                }))
            }
        }
    }
}

/// One element as JSON, as v2's `data` writes it ([`protocol::Values`]).
trait JsonValue {
    fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
}

macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.serialize(s)
            }
        }
    )*};
}
as_is!(f64, i64, i32, i8, u8, bool, i16, u16, u32, u64, String);

macro_rules! widened {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(f64::from(*self))
            }
        }
    )*};
}
widened!(f32, half::f16, half::bf16);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ElementType, TensorData};

    fn info(name: &str, element_type: ElementType, dims: &[Option<i64>]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            element_type,
            dims: dims.to_vec(),
        }
    }

    fn meta(inputs: Vec<TensorInfo>, outputs: Vec<TensorInfo>) -> ModelMetadata {
        let batch_dim = inputs
            .iter()
            .chain(&outputs)
            .all(|t| t.dims.first().is_some_and(Option::is_none));
        ModelMetadata {
            name: "m".into(),
            inputs,
            outputs,
            batch_dim,
            image_size: None,
        }
    }

    fn shape_of(raw: &str) -> Result<Vec<usize>, String> {
        super::shape_of(raw, MAX_DIMS)
    }

    fn refusal(r: Result<(NamedTensors, usize), InputError>) -> String {
        match r {
            Err(InputError::Invalid(m) | InputError::TooLarge(m)) => m,
            Ok(t) => panic!("accepted: {t:?}"),
        }
    }

    #[test]
    fn shapes_are_read_from_the_nesting_and_ragged_values_are_refused() {
        assert_eq!(shape_of("3"), Ok(vec![]));
        assert_eq!(shape_of("\"a,]b\\\"[\""), Ok(vec![]));
        assert_eq!(shape_of("[1, 2, 3]"), Ok(vec![3]));
        assert_eq!(shape_of("[[1,2],[3,4],[5,6]]"), Ok(vec![3, 2]));
        assert_eq!(shape_of("[[\"[\", \"]\"]]"), Ok(vec![1, 2]));
        assert_eq!(shape_of("[]"), Ok(vec![0]));
        assert_eq!(shape_of("[[],[]]"), Ok(vec![2, 0]));
        assert_eq!(shape_of("[[[1e-3]],[[true]]]"), Ok(vec![2, 1, 1]));
        for ragged in [
            "[[1,2],[3]]",
            "[[1],2]",
            "[1,[2]]",
            "[[],1]",
            "[[],[[]]]",
            "[[[]],[]]",
            "[[1,2],[3,4,5,6]]",
            "[[1,2],[3],[4,5,6]]",
        ] {
            assert!(shape_of(ragged).is_err(), "{ragged}");
        }
        assert!(shape_of("[{\"a\":1}]")
            .expect_err("object")
            .contains("object"));
        let deep = format!("{}1{}", "[".repeat(MAX_DIMS + 1), "]".repeat(MAX_DIMS + 1));
        assert!(shape_of(&deep).expect_err("deep").contains("deep"));
    }

    #[test]
    fn instances_stack_into_one_tensor_per_input() {
        let one = meta(
            vec![info("x", ElementType::F32, &[None, Some(2)])],
            vec![info("y", ElementType::F32, &[None])],
        );
        let (t, rows) =
            decode(br#"{"instances": [[1, 2.5], [3, 4]]}"#, &one, 100).expect("decoded");
        assert_eq!(rows, 2);
        assert_eq!(t[0].0, "x");
        assert_eq!(t[0].1.shape(), [2, 2]);
        assert_eq!(t[0].1.data(), TensorSlice::F32(&[1.0, 2.5, 3.0, 4.0][..]));
        // Named, as with several inputs; scalars stack into a vector.
        let (t, _) = decode(
            br#"{"instances": [{"x": [0, 1]}], "signature_name": "s"}"#,
            &one,
            100,
        )
        .expect("named");
        assert_eq!(t[0].1.shape(), [1, 2]);
        let two = meta(
            vec![
                info("ids", ElementType::I64, &[None, None]),
                info("text", ElementType::String, &[None]),
            ],
            vec![],
        );
        let (t, _) = decode(
            br#"{"instances": [{"text": "a", "ids": [1, 2, 3]}, {"ids": [4, 5, 6], "text": "b"}]}"#,
            &two,
            100,
        )
        .expect("two inputs");
        assert_eq!(t[0].1.shape(), [2, 3]);
        assert_eq!(t[0].1.data(), TensorSlice::I64(&[1, 2, 3, 4, 5, 6][..]));
        assert_eq!(t[1].1.shape(), [2]);
        assert_eq!(
            t[1].1.data(),
            TensorSlice::String(&["a".to_owned(), "b".to_owned()][..])
        );
    }

    #[test]
    fn bad_instances_are_refused_with_what_is_wrong() {
        let one = meta(vec![info("x", ElementType::I32, &[None, None])], vec![]);
        let two = meta(
            vec![
                info("a", ElementType::F32, &[None]),
                info("b", ElementType::F32, &[None]),
            ],
            vec![],
        );
        let m = |body: &str, meta: &ModelMetadata| refusal(decode(body.as_bytes(), meta, 8));
        assert!(m("[1]", &one).contains("malformed"));
        assert!(m(r#"{"instances": []}"#, &one).contains("empty"));
        assert!(m(r#"{"inputs": [[1]]}"#, &one).contains("v2"));
        assert!(m(r#"{"instances": 3}"#, &one).contains("must be an array"));
        assert!(m("{}", &one).contains("instances"));
        let s = m(r#"{"instances": [[1, 2], [3]]}"#, &one);
        assert!(
            s.contains("instance 1 has shape [1] but instance 0 has [2]"),
            "{s}"
        );
        assert!(m(r#"{"instances": [[[1], 2]]}"#, &one).contains("not a tensor"));
        assert!(m(r#"{"instances": [[1.5]]}"#, &one).contains("1.5 is not a int32"));
        assert!(m(r#"{"instances": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}"#, &one).contains("limit"));
        assert!(m(r#"{"instances": [1]}"#, &two).contains("instance 0: not an object naming"));
        assert!(m(r#"{"instances": [{"a": 1, "b": 2}, 3]}"#, &two).contains("instance 1: not"));
        assert!(m(r#"{"instances": [{"a": 1, "a": 2, "b": 3}]}"#, &two).contains("named twice"));
        assert!(m(r#"{"instances": [{"b64": "AAAA"}]}"#, &one).contains("UTF-8 strings"));
        assert!(m(r#"{"instances": [[1]], "inputs": [[1]]}"#, &one).contains("both"));
        // Escaped names are names.
        assert!(decode(br#"{"instances": [{"\u0061": 1, "b": 2}]}"#, &two, 8).is_ok());
        // Stacked, an instance gains a dim: one of MAX_DIMS dims is one too many.
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let named = |n: usize| format!(r#"{{"instances": [{{"x": {}}}]}}"#, deep(n));
        assert!(m(&named(MAX_DIMS), &one).contains("deep"));
        assert!(decode(named(MAX_DIMS - 1).as_bytes(), &one, 8).is_ok());
        let bare = |n: usize| format!(r#"{{"instances": {}}}"#, deep(n));
        assert!(m(&bare(MAX_DIMS + 1), &one).contains("deep"));
        assert!(m(r#"{"instances": [{"a": 1}]}"#, &two).contains("`b` is missing"));
        assert!(
            m(r#"{"instances": [{"a": 1, "b": 2, "c": 3}]}"#, &two).contains("unknown input `c`")
        );
    }

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

    /// Any JSON value as `instances` (strings with brackets, quotes and escapes, objects,
    /// ragged arrays): decoding never panics, and what it accepts is a tensor per input whose
    /// element count is its shape's, `rows` deep, as the row-major flattening of the value.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-3i64..3).prop_map(serde_json::Value::from),
            (-2.0f64..2.0).prop_map(serde_json::Value::from),
            "[\\[\\]{}\",\\\\a x]{0,4}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[xyz]", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_instances_decode_or_are_refused_without_panicking(
            instances in any_json(),
            wrap in proptest::bool::ANY,
        ) {
            let one = meta(vec![info("x", ElementType::F32, &[None, None])], vec![]);
            let two = meta(
                vec![
                    info("x", ElementType::I64, &[None]),
                    info("y", ElementType::String, &[None, None]),
                ],
                vec![],
            );
            let instances = if wrap { serde_json::Value::from(vec![instances]) } else { instances };
            let body = serde_json::json!({ "instances": instances }).to_string();
            for m in [&one, &two] {
                if let Ok((tensors, rows)) = decode(body.as_bytes(), m, 1 << 12) {
                    proptest::prop_assert_eq!(tensors.len(), m.inputs.len());
                    for (_, t) in &tensors {
                        proptest::prop_assert_eq!(t.shape()[0], rows);
                        proptest::prop_assert_eq!(t.len(), t.shape().iter().product::<usize>());
                    }
                }
            }
        }
    }
}
