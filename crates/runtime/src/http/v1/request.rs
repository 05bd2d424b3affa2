//! KServe's v1 protocol requests (TensorFlow Serving's row format) as kiln tensors:
//! `{"instances": [...]}` in.
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
//! - Values are read by the same readers as v2 `data` (`json_data`, so the same refusals and
//!   the same numbers).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::shape::shape_of;
use crate::http::json_fields::MAX_DIMS;
use crate::http::protocol::{self, InputError};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::v1::testing::{info, meta};
    use crate::tensor::TensorSlice;
    use crate::ElementType;

    fn refusal(r: Result<(NamedTensors, usize), InputError>) -> String {
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
