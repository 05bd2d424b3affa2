//! KServe's v1 protocol requests (TensorFlow Serving's) as kiln tensors: rows,
//! `{"instances": [...]}`, or columns, `{"inputs": ...}`.
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
//! - TensorFlow Serving's columnar form sends each input's whole tensor instead
//!   (`{"inputs": {"x": …, "state": …}}`, or `{"inputs": …}` for one input), so inputs that are
//!   not rows (a recurrent model's state, a scalar) can be sent too; it is answered in kind
//!   (`answer`).
//! - Values are read by the same readers as v2 `data` (`json_data`, so the same refusals and
//!   the same numbers), floats' `NaN`, `Infinity` and `-Infinity` too, as TensorFlow Serving
//!   reads them: serde, which refuses those words, walks the structure of a copy with each
//!   masked by a number of its length, and the values are read from the body itself. A
//!   `BYTES` value may also be a binary value, `{"b64": "..."}` (TensorFlow Serving's), whose
//!   bytes must be UTF-8 text, as kiln's strings are.
//!
//! `inputs` as a list is the columnar form of a one-input model, whose tensor is the list,
//! so it is the same tensor KServe's own predictors (which read a list `inputs` as
//! `instances`) make of it; only the answer's key differs (`outputs`, as TensorFlow Serving
//! answers columns).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::shape::{is_binary, shape_of};
use crate::http::json_data::Binary;
use crate::http::json_fields::MAX_DIMS;
use crate::http::json_numbers::{self, Walked};
use crate::http::protocol::{self, InputError, Limits};
use crate::{ElementType, ModelMetadata, NamedTensors, Tensor, TensorData, TensorInfo};

/// A v1 predict request: the rows, or the whole tensors, as one text. Other fields
/// (`signature_name`, `parameters`) are not read.
#[derive(Deserialize)]
struct Predict<'a> {
    #[serde(borrow, default)]
    instances: Option<&'a RawValue>,
    /// TensorFlow Serving's columnar form.
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
}

/// What a v1 predict request sent, which says how it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{"instances": [...]}`, this many: answered `{"predictions": [...]}`, one per instance.
    Rows(usize),
    /// `{"inputs": ...}`, TensorFlow Serving's columnar form: each input's whole tensor,
    /// answered `{"outputs": ...}` with each output's whole tensor.
    Columns,
}

/// The input tensors of a v1 predict `body` for the model `meta` describes, each at most
/// within `limits`, and the form they came in.
///
/// - `{"instances": [...]}`: rows, stacked into one tensor per input (see the module doc).
/// - `{"inputs": {"x": …, "mask": …}}`: TensorFlow Serving's columnar form, each input's whole
///   tensor by name (its dim 0 is the batch, if it has one: inputs of other shapes, such as a
///   recurrent model's state, can be sent only this way); `{"inputs": …}`, not an object, for a
///   model with one input.
///
/// Memory: a model with one input takes the whole `instances` array as its tensor's nested
/// values, read once as v2 reads `data`; so are columns. Objects are walked once to check
/// their names and shapes, keeping where each value starts (4 bytes a value, four fifths of
/// the body at most, reserved once), then each input's values are read from there straight into its tensor,
/// sized from the first walk.
///
/// # Errors
/// [`InputError::Invalid`] (400) for a body that is neither form (or both), no instances, an
/// instance or a column object that does not name the inputs, a ragged instance or instances
/// of different shapes, values that are not the input's type; [`InputError::TooLarge`] (413)
/// for an input over `limits`.
pub(crate) fn decode(
    body: &[u8],
    meta: &ModelMetadata,
    limits: Limits,
) -> Result<(NamedTensors, Form), InputError> {
    let bad = |m: String| InputError::Invalid(m);
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad("malformed request body: not a JSON object".into()));
    }
    // Serde walks the structure; a body holding `NaN` or an infinity, which serde refuses,
    // is walked masked and its values read from the body itself.
    let malformed = |e: String| bad(format!("malformed request body: {e}"));
    let mut masked = None;
    let (request, values): (Predict, Walked) =
        json_numbers::parse(body, &mut masked).map_err(malformed)?;
    let read = [request.instances, request.inputs];
    if let Some(stray) = values.stray(read.into_iter().flatten().map(RawValue::get)) {
        return Err(malformed(stray));
    }
    match (request.instances, request.inputs) {
        (Some(_), Some(_)) => Err(bad(
            "the body has both `instances` (rows) and `inputs` (columns): send one".into(),
        )),
        (Some(instances), None) => {
            rows(instances.get(), meta, limits, values).map(|(t, n)| (t, Form::Rows(n)))
        }
        (None, Some(inputs)) => {
            columns(inputs.get(), meta, limits, values).map(|t| (t, Form::Columns))
        }
        (None, None) => Err(bad(
            "the body must be {\"instances\": [...]} (rows) or {\"inputs\": ...} (columns)".into(),
        )),
    }
}

/// The tensors of TensorFlow Serving's columnar `inputs`: an object naming every input's
/// whole tensor, or (not an object, or a binary value) the one input's.
fn columns(
    inputs: &str,
    meta: &ModelMetadata,
    mut limits: Limits,
    values: Walked<'_>,
) -> Result<NamedTensors, InputError> {
    let shaped = |info: &TensorInfo, text: &str| {
        shape_of(text, MAX_DIMS)
            .map_err(|m| InputError::Invalid(format!("input `{}`: `inputs` {m}", info.name)))
    };
    let whole = |limits: &mut Limits, info: &TensorInfo, text: &str, shape: Vec<usize>| {
        let tensor = stacked(info, shape, limits, values, &mut |each| each(text))?;
        Ok((info.name.clone(), tensor))
    };
    if !inputs.starts_with('{') || is_binary(inputs) {
        return match &meta.inputs[..] {
            [only] => Ok(vec![whole(
                &mut limits,
                only,
                inputs,
                shaped(only, inputs)?,
            )?]),
            many => Err(InputError::Invalid(format!(
                "the model has {} inputs: name each in `inputs`, {{\"{}\": …}}",
                many.len(),
                many.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join("\": …, \"")
            ))),
        };
    }
    let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
    let values =
        named(inputs, &names).map_err(|m| InputError::Invalid(format!("`inputs`: {m}")))?;
    let columns = meta
        .inputs
        .iter()
        .zip(values)
        .map(|(info, value)| {
            let value = value.ok_or_else(|| {
                InputError::Invalid(format!("`inputs`: input `{}` is missing", info.name))
            })?;
            Ok((info, value.get(), shaped(info, value.get())?))
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    all_within(
        limits,
        columns.iter().map(|(info, _, shape)| (*info, &shape[..])),
    )?;
    columns
        .into_iter()
        .map(|(info, text, shape)| whole(&mut limits, info, text, shape))
        .collect()
}

/// Every input's shape within one copy of the request's `limits`, before any input's values
/// are read: an input over what the ones before it left is refused first.
fn all_within<'a>(
    limits: Limits,
    shapes: impl Iterator<Item = (&'a TensorInfo, &'a [usize])>,
) -> Result<(), InputError> {
    let mut all = limits;
    for (info, shape) in shapes {
        within(&mut all, info, shape)?;
    }
    Ok(())
}

/// The element count of the input `info`'s `shape`, checked through the request's `limits`
/// (taking its strings from them).
fn within(limits: &mut Limits, info: &TensorInfo, shape: &[usize]) -> Result<usize, InputError> {
    limits.take(&info.name, shape, protocol::datatype(info.element_type))
}

/// The tensors of `instances`, rows stacked (see the module doc), and how many rows.
fn rows(
    instances: &str,
    meta: &ModelMetadata,
    mut limits: Limits,
    values: Walked<'_>,
) -> Result<(NamedTensors, usize), InputError> {
    let bad = |m: String| InputError::Invalid(m);
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
        if !first.starts_with('{') || is_binary(first) {
            // The rows stacked are the array itself.
            let shape = shape_of(instances, MAX_DIMS).map_err(|m| {
                // Refused: the first instance at fault, named (a second walk, on this path
                // only).
                let named = same_shapes(instances, &only.name).err();
                named.unwrap_or_else(|| bad(format!("input `{}`: `instances` {m}", only.name)))
            })?;
            let rows = shape[0];
            let tensor = stacked(only, shape, &mut limits, values, &mut |each| {
                each(instances)
            })?;
            return Ok((vec![(only.name.clone(), tensor)], rows));
        }
    }
    let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
    // Walk 1: every instance an object naming exactly the inputs, each input one shape; and
    // where each value starts, instance by instance, so that each input's values are read
    // from there, never walking every instance once per input (a model with a hundred
    // inputs, one a column, took a hundred walks). 4 bytes a value, reserved once: a value
    // takes 5 bytes of the body at least (`"":0,`).
    let too_large = || {
        InputError::TooLarge(format!(
            "`instances` of {} bytes: at most 4 GiB",
            instances.len()
        ))
    };
    u32::try_from(instances.len()).map_err(|_| too_large())?;
    let mut starts: Vec<u32> = Vec::with_capacity(instances.len() / 5 + names.len());
    let mut rows_shapes: Vec<Option<Vec<usize>>> = vec![None; names.len()];
    let rows = each_instance(instances, |i, text| {
        let values = named(text, &names).map_err(|m| bad(format!("instance {i}: {m}")))?;
        for (j, value) in values.iter().enumerate() {
            let name = names[j];
            let value =
                value.ok_or_else(|| bad(format!("instance {i}: input `{name}` is missing")))?;
            same_shape(&mut rows_shapes[j], name, i, value.get())?;
            let at = value.get().as_ptr() as usize - instances.as_ptr() as usize;
            starts.push(u32::try_from(at).map_err(|_| too_large())?);
        }
        Ok(())
    })?;
    let shapes: Vec<Vec<usize>> = rows_shapes
        .into_iter()
        .map(|row| {
            std::iter::once(rows)
                .chain(row.unwrap_or_default())
                .collect()
        })
        .collect();
    all_within(
        limits,
        meta.inputs.iter().zip(shapes.iter().map(Vec::as_slice)),
    )?;
    // Then input j's values, read from where they start into its tensor.
    let tensors = meta
        .inputs
        .iter()
        .zip(shapes)
        .enumerate()
        .map(|(j, (info, shape))| {
            let mut texts = |each: &mut dyn FnMut(&str) -> Result<(), String>| {
                for at in starts.iter().skip(j).step_by(names.len()) {
                    each(value_at(instances, *at as usize)?)?;
                }
                Ok(())
            };
            let tensor = stacked(info, shape, &mut limits, values, &mut texts)?;
            Ok((info.name.clone(), tensor))
        })
        .collect::<Result<_, InputError>>()?;
    Ok((tensors, rows))
}

/// The JSON value starting at byte `at` of `text` (walked before: it is one).
fn value_at(text: &str, at: usize) -> Result<&str, String> {
    let rest = text.get(at..).ok_or("a value out of the instances")?;
    let mut de = serde_json::Deserializer::from_str(rest);
    <&RawValue as serde::Deserialize>::deserialize(&mut de)
        .map(RawValue::get)
        .map_err(|e| format!("malformed instances: {e}"))
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
                    Err(key) if key == "b64" => format!(
                        "a binary value ({{\"b64\": …}}) where an object naming the inputs \
                         {:?} belongs",
                        self.names
                    ),
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

/// The tensor of `shape` (the instances stacked) whose values are `walked` in turn, read
/// where `values` says, its shape checked through the request's `limits`. The shape was read
/// from the texts themselves, so they hold exactly its values: their vector is reserved whole,
/// once.
fn stacked(
    info: &TensorInfo,
    shape: Vec<usize>,
    limits: &mut Limits,
    values: Walked<'_>,
    walked: &mut protocol::Texts<'_>,
) -> Result<Tensor, InputError> {
    let name = &info.name;
    let bad = |m: String| InputError::Invalid(format!("input `{name}`: {m}"));
    let elements = within(limits, info, &shape)?;
    let texts = &mut |each: &mut dyn FnMut(&str) -> Result<(), String>| {
        walked(&mut |text| each(values.read(text)?))
    };
    let data = if info.element_type == ElementType::String {
        // Strings may come as binary values too (TensorFlow Serving's `{"b64": …}`).
        let binary = protocol::values::<Binary>(texts, &shape, elements, elements).map_err(bad)?;
        TensorData::String(binary.into_iter().map(|b| b.0).collect())
    } else {
        let datatype = protocol::datatype(info.element_type);
        protocol::typed_data(datatype, texts, &shape, elements, elements).map_err(bad)?
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::v1::testing::{info, meta};
    use crate::tensor::TensorSlice;
    use crate::ElementType;

    fn refusal(r: Result<(NamedTensors, Form), InputError>) -> String {
        match r {
            Err(InputError::Invalid(m) | InputError::TooLarge(m)) => m,
            Ok(t) => panic!("accepted: {t:?}"),
        }
    }

    #[test]
    fn instances_stack_into_one_tensor_per_input() {
        let one = meta(
            vec![info("x", ElementType::F32, &[None, Some(2)])],
            vec![info("y", ElementType::F32, &[None])],
        );
        let (t, form) = decode(
            br#"{"instances": [[1, 2.5], [3, 4]]}"#,
            &one,
            Limits::within(100),
        )
        .expect("decoded");
        assert_eq!(form, Form::Rows(2));
        assert_eq!(t[0].0, "x");
        assert_eq!(t[0].1.shape(), [2, 2]);
        assert_eq!(t[0].1.data(), TensorSlice::F32(&[1.0, 2.5, 3.0, 4.0][..]));
        // Named, as with several inputs; scalars stack into a vector.
        let (t, _) = decode(
            br#"{"instances": [{"x": [0, 1]}], "signature_name": "s"}"#,
            &one,
            Limits::within(100),
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
            Limits::within(100),
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

    /// Python's `json` writes a missing value or an overflow as `NaN` or an infinity, and
    /// TensorFlow Serving, whose protocol v1 is, reads them: so does kiln, into floats, in
    /// every form (serde walks a masked copy; the values are read from the body).
    #[test]
    fn non_finite_values_are_read_into_floats_in_every_form() {
        let one = meta(vec![info("x", ElementType::F32, &[None, Some(2)])], vec![]);
        let floats = |t: &NamedTensors, i: usize| match t[i].1.data() {
            TensorSlice::F32(v) => v.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            other => panic!("not floats: {other:?}"),
        };
        for body in [
            r#"{"instances": [[NaN, 1], [Infinity, -Infinity]]}"#,
            r#"{"instances": [{"x": [NaN, 1]}, {"x": [Infinity, -Infinity]}]}"#,
            r#"{"inputs": [[NaN, 1], [Infinity, -Infinity]], "signature_name": "NaN"}"#,
            r#"{"inputs": {"x": [[NaN, 1], [Infinity, -Infinity]]}}"#,
        ] {
            let (t, _) = decode(body.as_bytes(), &one, Limits::within(100)).expect(body);
            assert_eq!(t[0].1.shape(), [2, 2], "{body}");
            assert_eq!(floats(&t, 0), ["NaN", "1", "inf", "-inf"], "{body}");
        }
        // Beside strings and other inputs, each read from its own place in the body.
        let mixed = meta(
            vec![
                info("text", ElementType::String, &[None]),
                info("ids", ElementType::I64, &[None]),
                info("x", ElementType::F64, &[None, None]),
            ],
            vec![],
        );
        let (t, _) = decode(
            br#"{"instances": [{"text": "NaN \" Infinity", "ids": 7, "x": [-Infinity, 2e0]},
                {"x": [0.5, NaN], "ids": -1, "text": "b"}]}"#,
            &mixed,
            Limits::within(100),
        )
        .expect("mixed");
        assert_eq!(
            t[0].1.data(),
            TensorSlice::String(&["NaN \" Infinity".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(t[1].1.data(), TensorSlice::I64(&[7, -1][..]));
        match t[2].1.data() {
            TensorSlice::F64(v) => {
                assert_eq!(v[..3], [f64::NEG_INFINITY, 2.0, 0.5]);
                assert!(v[3].is_nan());
            }
            other => panic!("not f64: {other:?}"),
        }
        // Not into integers, and not a word it is not.
        let ints = meta(vec![info("ids", ElementType::I64, &[None])], vec![]);
        let m = |body: &str, meta: &ModelMetadata| {
            refusal(decode(body.as_bytes(), meta, Limits::within(8)))
        };
        assert!(m(r#"{"instances": [1, NaN]}"#, &ints).contains("`ids`"));
        assert!(m(r#"{"instances": [[nan, 1]]}"#, &one).contains("malformed"));
        assert!(m(r#"{"instances": [[NaN1, 1]]}"#, &one).contains("`x`"));
        // Outside the values, a word is refused as serde refuses it (never read as its mask).
        let s = m(r#"{"instances": [[NaN, 1]], "signature_name": NaN}"#, &one);
        assert!(
            s.contains("malformed request body: `NaN` at byte 44, outside any input's values"),
            "{s}"
        );
    }

    /// The time `decode` takes on `instances` objects with `inputs` scalar FP32 inputs and
    /// `values` values in all (the best of three).
    fn decode_time(inputs: usize, values: usize) -> std::time::Duration {
        let names: Vec<String> = (0..inputs).map(|j| format!("f{j}")).collect();
        let model = meta(
            names
                .iter()
                .map(|n| info(n, ElementType::F32, &[None]))
                .collect(),
            vec![],
        );
        let instance = format!(
            "{{{}}}",
            names
                .iter()
                .map(|n| format!("\"{n}\": 0.5"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let body = format!(
            r#"{{"instances": [{}]}}"#,
            vec![instance; values / inputs].join(", ")
        );
        (0..3)
            .map(|_| {
                let began = std::time::Instant::now();
                let (t, form) =
                    decode(body.as_bytes(), &model, Limits::within(values)).expect("decoded");
                assert_eq!((t.len(), form), (inputs, Form::Rows(values / inputs)));
                began.elapsed()
            })
            .min()
            .expect("three runs")
    }

    /// Instances of a model with many inputs (a scikit-learn pipeline with one input per
    /// column) take about as long to decode as the same values for one input: before, the
    /// instances were walked once per input, 129 times for 128 inputs.
    #[test]
    fn instances_of_many_inputs_are_walked_once() {
        let values = 128 * 512;
        let one = decode_time(1, values);
        let many = decode_time(128, values);
        assert!(
            many < one * 8,
            "128 inputs took {many:?}, one input {one:?} for as many values"
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
        let m = |body: &str, meta: &ModelMetadata| {
            refusal(decode(body.as_bytes(), meta, Limits::within(8)))
        };
        assert!(m("[1]", &one).contains("malformed"));
        assert!(m(r#"{"instances": []}"#, &one).contains("empty"));
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
        assert!(m(r#"{"instances": [{"b64": "AAAA"}]}"#, &one).contains("is not a int32"));
        assert!(m(r#"{"instances": [{"b64": "AAAA"}]}"#, &two).contains("binary value"));
        assert!(m(r#"{"instances": [[1]], "inputs": [[1]]}"#, &one).contains("both"));
        // Escaped names are names.
        assert!(decode(
            br#"{"instances": [{"\u0061": 1, "b": 2}]}"#,
            &two,
            Limits::within(8)
        )
        .is_ok());
        // Stacked, an instance gains a dim: one of MAX_DIMS dims is one too many.
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let named = |n: usize| format!(r#"{{"instances": [{{"x": {}}}]}}"#, deep(n));
        assert!(m(&named(MAX_DIMS), &one).contains("deep"));
        assert!(decode(named(MAX_DIMS - 1).as_bytes(), &one, Limits::within(8)).is_ok());
        let bare = |n: usize| format!(r#"{{"instances": {}}}"#, deep(n));
        assert!(m(&bare(MAX_DIMS + 1), &one).contains("deep"));
        assert!(m(r#"{"instances": [{"a": 1}]}"#, &two).contains("`b` is missing"));
        assert!(
            m(r#"{"instances": [{"a": 1, "b": 2, "c": 3}]}"#, &two).contains("unknown input `c`")
        );
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
            "[A-Za-z0-9+/=!]{0,8}".prop_map(|t| serde_json::json!({ "b64": t })),
        ];
        leaf.prop_recursive(4, 48, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[xyz]", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The `instances` of a body made by the proptest.
    fn body_value(body: &str) -> serde_json::Value {
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        body["instances"].clone()
    }

    #[test]
    fn columns_are_whole_tensors_by_name() {
        let two = meta(
            vec![
                info("x", ElementType::F32, &[Some(1), Some(2)]),
                info("state", ElementType::F32, &[Some(2)]),
            ],
            vec![],
        );
        let (t, form) = decode(
            br#"{"inputs": {"state": [0.5, 1], "x": [[1, 2]]}}"#,
            &two,
            Limits::within(100),
        )
        .expect("two");
        assert_eq!(form, Form::Columns);
        assert_eq!((t[0].0.as_str(), t[0].1.shape()), ("x", &[1, 2][..]));
        assert_eq!((t[1].0.as_str(), t[1].1.shape()), ("state", &[2][..]));
        assert_eq!(t[1].1.data(), TensorSlice::F32(&[0.5, 1.0][..]));
        // One input: its value, bare; a list is its whole tensor, a scalar a scalar.
        let one = meta(vec![info("x", ElementType::F32, &[None, Some(2)])], vec![]);
        let (t, _) = decode(
            br#"{"inputs": [[1, 2.5], [3, 4]]}"#,
            &one,
            Limits::within(100),
        )
        .expect("list");
        assert_eq!(t[0].1.shape(), [2, 2]);
        let scalar = meta(vec![info("s", ElementType::I64, &[])], vec![]);
        let (t, _) = decode(br#"{"inputs": 7}"#, &scalar, Limits::within(100)).expect("scalar");
        assert_eq!(t[0].1.shape(), [0usize; 0]);
        assert_eq!(t[0].1.data(), TensorSlice::I64(&[7][..]));
        let m = |body: &str, meta: &ModelMetadata| {
            refusal(decode(body.as_bytes(), meta, Limits::within(8)))
        };
        let s = m(r#"{"inputs": [[1, 2]]}"#, &two);
        assert!(
            s.contains(r#"2 inputs: name each in `inputs`, {"x": …, "state": …}"#),
            "{s}"
        );
        assert!(m(r#"{"inputs": {"x": [[1, 2]]}}"#, &two).contains("`state` is missing"));
        let s = m(
            r#"{"inputs": {"x": [[1, 2]], "state": [1, 2], "z": 1}}"#,
            &two,
        );
        assert!(s.contains("unknown input `z`"), "{s}");
        let s = m(r#"{"inputs": {"x": [[1], [2, 3]], "state": [1, 2]}}"#, &two);
        assert!(s.contains("input `x`: `inputs` is not a tensor"), "{s}");
        assert!(m(r#"{"inputs": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}"#, &one).contains("limit"));
        assert!(m(r#"{"inputs": {"x": [[1, "a"]], "state": [1, 2]}}"#, &two).contains("\"a\""));
    }

    #[test]
    fn binary_values_are_strings_of_their_bytes() {
        let text = meta(vec![info("t", ElementType::String, &[None])], vec![]);
        let strings = |body: &str, meta: &ModelMetadata| {
            let (t, _) = decode(body.as_bytes(), meta, Limits::within(100)).expect("decoded");
            match t[t.len() - 1].1.data() {
                TensorSlice::String(v) => v.to_vec(),
                other => panic!("{other:?}"),
            }
        };
        // Padded or not, spaced or not, beside plain strings.
        let body = r#"{"instances": [{"b64": "Y2F0"}, "dog", { "b64" : "w7w" }, {"b64": "w7w="}]}"#;
        assert_eq!(strings(body, &text), ["cat", "dog", "ü", "ü"]);
        assert_eq!(strings(r#"{"inputs": [{"b64": "Y2F0"}]}"#, &text), ["cat"]);
        assert_eq!(
            strings(
                r#"{"inputs": {"b64": "Y2F0"}}"#,
                &meta(vec![info("t", ElementType::String, &[])], vec![])
            ),
            ["cat"]
        );
        let named = meta(
            vec![
                info("ids", ElementType::I64, &[None]),
                info("t", ElementType::String, &[None, None]),
            ],
            vec![],
        );
        let body = r#"{"instances": [{"ids": 1, "t": [{"b64": "Y2F0"}, "x"]}]}"#;
        assert_eq!(strings(body, &named), ["cat", "x"]);
        let m = |body: &str| refusal(decode(body.as_bytes(), &text, Limits::within(8)));
        // Not UTF-8, a NUL, not base64: refused, saying what a binary value must hold.
        for (b64, says) in [
            ("/w==", "does not hold UTF-8 text"),
            ("AA==", "without NUL"),
            ("!!", "is not base64"),
        ] {
            let s = m(&format!(r#"{{"instances": [{{"b64": "{b64}"}}]}}"#));
            assert!(s.contains(says), "{s}");
        }
        // An escaped key is the same key, first or not, whatever the input is called.
        let body = r#"{"instances": ["a", {"\u0062\u0036\u0034": "Y2F0"}]}"#;
        assert_eq!(strings(body, &text), ["a", "cat"]);
        let body = r#"{"instances": [{"\u0062\u0036\u0034": "Y2F0"}]}"#;
        assert_eq!(strings(body, &text), ["cat"]);
        let named_b64 = meta(vec![info("b64", ElementType::String, &[])], vec![]);
        for body in [
            r#"{"inputs": {"b64": "Y2F0"}}"#,
            r#"{"inputs": {"\u0062\u0036\u0034": "Y2F0"}}"#,
        ] {
            assert_eq!(strings(body, &named_b64), ["cat"], "{body}");
        }
        // An object with more than `b64` is no binary value.
        assert!(m(r#"{"instances": [{"b64": "Y2F0", "x": 1}]}"#).contains("naming the inputs"));
        assert!(m(r#"{"instances": ["a", {"b64": "Y2F0", "x": 1}]}"#).contains("object"));
        // A string input has its own limit, in rows and in columns; numbers keep theirs.
        let limits = Limits {
            elements: 8,
            strings: 2,
        };
        for body in [
            r#"{"instances": [{"ids": 1, "t": ["a", "b", "c"]}]}"#,
            r#"{"inputs": {"ids": [1], "t": [["a", "b", "c"]]}}"#,
        ] {
            assert!(
                matches!(
                    decode(body.as_bytes(), &named, limits),
                    Err(InputError::TooLarge(m)) if m.contains("limit on strings (max_string_elements)")
                ),
                "{body}"
            );
        }
        let body = r#"{"instances": [{"ids": 1, "t": ["a", "b"]}]}"#;
        assert!(decode(body.as_bytes(), &named, limits).is_ok());
        // The request's strings together: the second input is over what the first left,
        // refused before either input's values are read (`all_within`).
        let two = meta(
            vec![
                info("a", ElementType::String, &[None, None]),
                info("b", ElementType::String, &[None, None]),
            ],
            vec![],
        );
        let limits = Limits {
            elements: 8,
            strings: 3,
        };
        for body in [
            r#"{"instances": [{"a": ["x", "y"], "b": ["z", "w"]}]}"#,
            r#"{"inputs": {"a": [["x", "y"]], "b": [["z", "w"]]}}"#,
        ] {
            assert!(
                matches!(
                    decode(body.as_bytes(), &two, limits),
                    Err(InputError::TooLarge(m)) if m.starts_with("input `b`") && m.ends_with(": 1 left")
                ),
                "{body}"
            );
        }
        let body = r#"{"inputs": {"a": [["x", "y"]], "b": [["z"]]}}"#;
        assert!(decode(body.as_bytes(), &two, limits).is_ok());
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
                if let Ok((tensors, form)) = decode(body.as_bytes(), m, Limits::within(1 << 12)) {
                    proptest::prop_assert_eq!(tensors.len(), m.inputs.len());
                    for (_, t) in &tensors {
                        proptest::prop_assert_eq!(Form::Rows(t.shape()[0]), form);
                        proptest::prop_assert_eq!(t.len(), t.shape().iter().product::<usize>());
                    }
                }
                // The same value as columns: whole tensors, or refused.
                let body = serde_json::json!({ "inputs": body_value(&body) }).to_string();
                if let Ok((tensors, form)) = decode(body.as_bytes(), m, Limits::within(1 << 12)) {
                    proptest::prop_assert_eq!(form, Form::Columns);
                    proptest::prop_assert_eq!(tensors.len(), m.inputs.len());
                    for (_, t) in &tensors {
                        proptest::prop_assert_eq!(t.len(), t.shape().iter().product::<usize>());
                    }
                }
            }
        }
    }
}
