//! Open Inference Protocol v2 JSON: request and response bodies, and the conversion between
//! their tensors and kiln's.
//!
//! A request tensor's declared shape is checked (non-negative dims, element count under the
//! limit) before its data is read, so a huge declared shape with a tiny body costs nothing.
//! `data` may be flat or nested row-major, as the protocol allows; it is kept as raw JSON text
//! while the request is parsed, then read straight into typed values once its shape and
//! datatype are known, whatever the order of the fields (`json_data`), and `parameters` keep
//! only what kiln reads (`json_fields`): a body costs its tensors and little more, never a
//! `serde_json::Value` per element.
//!
//! The binary-data extension is supported both ways: an input with
//! `parameters.binary_data_size` takes its bytes (raw, little-endian, row-major) from the body
//! after the JSON header, and an output asked for with `parameters.binary_data: true` (or
//! every output, with the request parameter `binary_data_output: true`) is returned the same
//! way.

use crate::{ElementType, NamedTensors, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::http::json_cut;
pub use crate::http::json_data::Values;
use crate::http::json_data::{self, Leaf, Refusal};
use crate::http::json_fields;
pub use crate::http::json_fields::{Classes, Parameters, MAX_DIMS};
use crate::http::json_numbers::{self, Walked};

/// `POST /v2/models/{m}/infer` body; its inputs' `data` borrowed from the body as sent.
#[derive(Debug, Deserialize)]
pub struct InferRequest<'a> {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (`binary_data_output`, `timeout` and `priority` read, others
    /// skipped).
    #[serde(default)]
    pub parameters: Parameters,
    /// Input tensors.
    #[serde(borrow)]
    pub inputs: Vec<InputTensor<'a>>,
    /// Outputs to return; all when empty.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
pub struct InputTensor<'a> {
    /// Input name.
    pub name: String,
    /// Dims, at most [`MAX_DIMS`].
    #[serde(deserialize_with = "json_fields::dims")]
    pub shape: Vec<i64>,
    /// `FP32`, `FP64`, `INT64`, `INT32`, `INT8`, `UINT8` or `BOOL`.
    pub datatype: String,
    /// Tensor parameters (`binary_data_size` read, others skipped).
    #[serde(default)]
    pub parameters: Parameters,
    /// The values as sent: JSON, flat or nested, row-major (absent with binary data).
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl InputTensor<'_> {
    /// The size of this input's binary data, if it is sent in binary.
    pub fn binary_size(&self) -> Option<usize> {
        self.parameters
            .binary_data_size
            .and_then(|n| usize::try_from(n).ok())
    }
}

impl InferRequest<'_> {
    /// This request without its inputs' `data` (read into tensors by then), so that it no
    /// longer borrows the body.
    pub fn without_data(self) -> InferRequest<'static> {
        InferRequest {
            id: self.id,
            parameters: self.parameters,
            inputs: self
                .inputs
                .into_iter()
                .map(|i| InputTensor {
                    name: i.name,
                    shape: i.shape,
                    datatype: i.datatype,
                    parameters: i.parameters,
                    data: None,
                })
                .collect(),
            outputs: self.outputs,
        }
    }

    /// Whether output `name` is wanted in binary.
    pub fn binary_output(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.binary_data)
            .or(self.parameters.binary_data_output)
            .unwrap_or(false)
    }
}

/// An output the caller wants.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Output parameters (`binary_data` read, others skipped).
    #[serde(default)]
    pub parameters: Parameters,
}

/// The response body.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// The version that answered.
    pub model_version: Option<String>,
    /// The request's `id`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Output tensors.
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor.
#[derive(Debug, Serialize)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Protocol datatype.
    pub datatype: &'static str,
    /// Dims.
    pub shape: Vec<usize>,
    /// Flat row-major values (absent when sent in binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Values>,
    /// `binary_data_size` when the data follows the JSON in binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// A tensor's description in model metadata.
#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// Protocol datatype.
    pub datatype: &'static str,
    /// Dims, -1 for dynamic.
    pub shape: Vec<i64>,
}

/// The protocol's name for an element type.
pub fn datatype(ty: ElementType) -> &'static str {
    DATATYPES
        .iter()
        .find(|(_, t)| *t == ty)
        .map_or("UNKNOWN", |(name, _)| name)
}

/// The element type of a protocol datatype, if kiln serves it (BYTES is ONNX's string).
pub fn element_type(datatype: &str) -> Option<ElementType> {
    DATATYPES
        .iter()
        .find(|(name, _)| *name == datatype)
        .map(|(_, t)| *t)
}

/// The datatypes kiln serves, for error messages.
pub fn served_datatypes() -> String {
    DATATYPES.map(|(name, _)| name).join(", ")
}

/// The v2 protocol's datatypes kiln serves, with their element types.
const DATATYPES: [(&str, ElementType); 14] = [
    ("FP32", ElementType::F32),
    ("FP64", ElementType::F64),
    ("FP16", ElementType::F16),
    ("BF16", ElementType::Bf16),
    ("INT64", ElementType::I64),
    ("INT32", ElementType::I32),
    ("INT16", ElementType::I16),
    ("INT8", ElementType::I8),
    ("UINT64", ElementType::U64),
    ("UINT32", ElementType::U32),
    ("UINT16", ElementType::U16),
    ("UINT8", ElementType::U8),
    ("BOOL", ElementType::Bool),
    (BYTES, ElementType::String),
];

/// Decodes a whole inference request body: the JSON request and every input as a tensor.
/// `header_len` is the binary extension's `Inference-Header-Content-Length` header, if sent:
/// the JSON is that many leading bytes and each input with `binary_data_size` takes its bytes,
/// in order, from the rest, which must all be used. This is everything the server trusts
/// from a client's body, in one function (fuzzed in `tests/fuzz.rs`). The request comes back
/// [without its data](InferRequest::without_data), which is in the tensors.
///
/// CPU-bound for a big body (some 8 ms per MiB of dense JSON, release build): the server calls
/// it through `decode::Decoder`, off the tokio workers.
///
/// # Errors
/// [`InputError::Invalid`] (400) or [`InputError::TooLarge`] (413), with the message.
pub fn decode(
    body: &[u8],
    header_len: Option<&str>,
    limits: Limits,
) -> Result<(InferRequest<'static>, NamedTensors), InputError> {
    match decode_with(body, header_len, limits, true) {
        Ok(decoded) => Ok(decoded),
        // A refusal is decided by the plain parse, so it reads exactly as it always did: with
        // the data cut out, a check that comes first (a shape over the limit, binary data)
        // could answer for a body whose `data` text serde refuses. Refusals cost two parses.
        Err(_) => decode_with(body, header_len, limits, false),
    }
}

/// [`decode`], with or without `json_cut` (tests compare the two).
fn decode_with(
    body: &[u8],
    header_len: Option<&str>,
    mut limits: Limits,
    cut_data: bool,
) -> Result<(InferRequest<'static>, NamedTensors), InputError> {
    let (json, mut binary) = match header_len {
        Some(raw) => {
            let n = raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= body.len())
                .ok_or_else(|| {
                    InputError::Invalid(format!(
                        "{HEADER_LENGTH} must be a byte count within the body ({} bytes)",
                        body.len()
                    ))
                })?;
            body.split_at(n)
        }
        None => (body, &[][..]),
    };
    // The inputs' data arrays out of serde's way (`json_cut`), read from `json` below. Without
    // the cut, a body holding `NaN` or an infinity (which serde refuses) is walked as a masked
    // copy, and each `data` read from `json` itself (`json_numbers::parse`).
    let malformed = |e: String| InputError::Invalid(format!("malformed request body: {e}"));
    let cut = cut_data.then(|| json_cut::cut(json)).flatten();
    let mut masked = None;
    let (request, walked): (InferRequest, Walked) = match &cut {
        Some(cut) => (
            serde_json::from_slice(&cut.json).map_err(|e| malformed(e.to_string()))?,
            Walked::Body,
        ),
        None => json_numbers::parse(json, &mut masked).map_err(malformed)?,
    };
    // The data read: not that of an input sent as binary data, which goes unread.
    let read = request.inputs.iter().filter(|i| i.binary_size().is_none());
    if let Some(stray) = walked.stray(read.filter_map(|i| i.data.map(RawValue::get))) {
        return Err(malformed(stray));
    }
    // Every input's declared shape first, the request's strings together: an input over
    // what the ones before it left is refused before any input's data is read.
    let mut all = limits;
    for input in &request.inputs {
        all.checked_shape(&input.name, &input.shape, &input.datatype)?;
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    // The cut arrays, in input order: one pass over them alongside the inputs.
    let mut cut_arrays = cut.iter().flat_map(|c| &c.data).peekable();
    for (index, input) in request.inputs.iter().enumerate() {
        let mut cut_data = None;
        while let Some((_, span)) = cut_arrays.next_if(|(i, _)| *i <= index) {
            // ASCII, checked by the cut.
            cut_data = std::str::from_utf8(&json[span.clone()]).ok();
        }
        let bytes = match input.binary_size() {
            Some(n) if n <= binary.len() => {
                let (now, rest) = binary.split_at(n);
                binary = rest;
                Some(now)
            }
            Some(n) => {
                return Err(InputError::Invalid(format!(
                    "input `{}`: binary_data_size {n} is more than the {} bytes left in the body",
                    input.name,
                    binary.len()
                )))
            }
            None => None,
        };
        if cut_data.is_some() && bytes.is_some() {
            // Binary data and a `data` array: the array would go unread (and unchecked).
            return Err(InputError::Invalid("both data and binary data".into()));
        }
        let raw = match cut_data {
            Some(raw) => Some(raw),
            None => input
                .data
                .map(|data| walked.read(data.get()))
                .transpose()
                .map_err(malformed)?,
        };
        inputs.push((input.name.clone(), tensor(input, raw, bytes, &mut limits)?));
    }
    if cut_arrays.next().is_some() {
        // An array cut from an input serde did not see: not the structure the cut walked.
        return Err(InputError::Invalid("data of no input".into()));
    }
    if !binary.is_empty() {
        return Err(InputError::Invalid(format!(
            "{} bytes of binary data belong to no input (binary_data_size)",
            binary.len()
        )));
    }
    Ok((request.without_data(), inputs))
}

/// Header of the binary-data extension: the JSON part's length; binary data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Converts one request tensor, its shape checked through the request's `limits` (taking its
/// strings from them), refusing (with a message naming the input) a bad shape, a shape over
/// them, a datatype kiln does not serve, a value count that does not
/// match the shape, and values out of the datatype's range.
///
/// # Errors
/// [`InputError::Invalid`] (400) or [`InputError::TooLarge`] (413), with the message.
pub fn to_tensor(
    input: &InputTensor<'_>,
    binary: Option<&[u8]>,
    limits: &mut Limits,
) -> Result<Tensor, InputError> {
    tensor(input, input.data.map(RawValue::get), binary, limits)
}

/// [`to_tensor`] with the values' JSON text `raw` (its `data`, or what `json_cut` cut out),
/// its shape checked through the request's `limits`.
fn tensor(
    input: &InputTensor<'_>,
    raw: Option<&str>,
    binary: Option<&[u8]>,
    limits: &mut Limits,
) -> Result<Tensor, InputError> {
    let name = &input.name;
    let bad = |m: String| InputError::Invalid(format!("input `{name}`: {m}"));
    let (shape, elements) = limits.checked_shape(name, &input.shape, &input.datatype)?;
    if let Some(bytes) = binary {
        return from_le_bytes(&input.datatype, shape, bytes).map_err(bad);
    }
    let raw = raw.unwrap_or("[]");
    let reserve = json_data::capacity(raw, elements);
    let data = typed_data(
        &input.datatype,
        &mut |each| each(raw),
        &shape,
        elements,
        reserve,
    )
    .map_err(bad)?;
    Tensor::from_data(shape, data).map_err(|e| bad(e.to_string()))
}

/// The v2 datatype of string tensors.
pub(crate) const BYTES: &str = "BYTES";

/// How many elements a request's inputs may declare, checked from each input's shape before
/// any of its data is looked at (so a huge declared shape costs nothing); larger → 413.
///
/// A request's reader takes its own copy and checks every input's shape through it, in
/// turn: each string input's count is taken from what `strings` has left, so the limit on
/// strings holds for the request's inputs together, however many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest element count of one input.
    pub elements: usize,
    /// Most strings (`BYTES` elements) in a request, all its inputs together, each at most
    /// `elements` too. A string costs kiln a 24-byte `String` (and a heap block when not
    /// empty) and ONNX Runtime a 32-byte `std::string`, however short: in a JSON body an
    /// empty one is 3 bytes (`"",`).
    pub strings: usize,
}

impl Limits {
    /// A declared shape of an input of v2 `datatype`: no negative dim, and within the limits
    /// ([`Limits::take`]). Returns the dims and the element count.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for a negative dim, [`InputError::TooLarge`] over a limit.
    pub fn checked_shape(
        &mut self,
        name: &str,
        dims: &[i64],
        datatype: &str,
    ) -> Result<(Vec<usize>, usize), InputError> {
        let shape = dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    InputError::Invalid(format!("input `{name}`: dim {d} is negative"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let elements = self.take(name, &shape, datatype)?;
        Ok((shape, elements))
    }

    /// The element count of `shape` (an input of v2 `datatype`, dims already whole numbers)
    /// within the limits: at most `elements` and, for `BYTES`, at most the strings left,
    /// which it then takes.
    ///
    /// # Errors
    /// [`InputError::TooLarge`] over a limit.
    pub fn take(
        &mut self,
        name: &str,
        shape: &[usize],
        datatype: &str,
    ) -> Result<usize, InputError> {
        // A zero dim counted as one: an empty tensor's other dims are bounded too (they size
        // what the model builds from them).
        let bound = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)));
        let over = |what: String| {
            InputError::TooLarge(format!("input `{name}`: shape {shape:?} is over {what}"))
        };
        bound
            .filter(|&n| n <= self.elements)
            .ok_or_else(|| over(format!("the limit of {} elements", self.elements)))?;
        // At most `bound`, so no overflow.
        let elements: usize = shape.iter().product();
        if datatype == BYTES {
            self.strings = self.strings.checked_sub(elements).ok_or_else(|| {
                over(format!(
                    "the request's limit on strings (max_string_elements): {} left",
                    self.strings
                ))
            })?;
        }
        Ok(elements)
    }

    /// At most `n` elements an input, strings or not.
    #[cfg(test)]
    pub(crate) fn within(n: usize) -> Self {
        Self {
            elements: n,
            strings: n,
        }
    }
}

/// JSON texts of values, handed in turn to the function it is given: one input's `data`, or
/// its value in each of KServe v1's instances, one per row. Passed this way, the texts of a
/// million rows are found as they are read, never held in a list.
pub(crate) type Texts<'t> =
    dyn FnMut(&mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> + 't;

/// The `elements` values of `shape`, of the v2 `datatype`, from `texts` in turn, into a vector
/// with room for `reserve` (the caller's bound: never more than the texts can hold); the
/// message says what is wrong.
pub(crate) fn typed_data(
    datatype: &str,
    texts: &mut Texts<'_>,
    shape: &[usize],
    elements: usize,
    reserve: usize,
) -> Result<TensorData, String> {
    let (t, s, n, r) = (texts, shape, elements, reserve);
    Ok(match datatype {
        "FP32" => TensorData::F32(values(t, s, n, r)?),
        "FP64" => TensorData::F64(values(t, s, n, r)?),
        "INT64" => TensorData::I64(values(t, s, n, r)?),
        "INT32" => TensorData::I32(values(t, s, n, r)?),
        "INT8" => TensorData::I8(values(t, s, n, r)?),
        "UINT8" => TensorData::U8(values(t, s, n, r)?),
        "BOOL" => TensorData::Bool(values(t, s, n, r)?),
        "INT16" => TensorData::I16(values(t, s, n, r)?),
        "UINT16" => TensorData::U16(values(t, s, n, r)?),
        "UINT32" => TensorData::U32(values(t, s, n, r)?),
        "UINT64" => TensorData::U64(values(t, s, n, r)?),
        "FP16" => TensorData::F16(values(t, s, n, r)?),
        "BF16" => TensorData::Bf16(values(t, s, n, r)?),
        BYTES => TensorData::String(values(t, s, n, r)?),
        other => {
            return Err(format!(
                "datatype {other:?} is not served; use one of {}",
                served_datatypes()
            ))
        }
    })
}

/// The `elements` values of `shape` from `texts`, read in turn into one vector.
pub(crate) fn values<T: Leaf>(
    texts: &mut Texts<'_>,
    shape: &[usize],
    elements: usize,
    reserve: usize,
) -> Result<Vec<T>, String> {
    let mut out: Vec<T> = Vec::with_capacity(reserve);
    texts(&mut |raw| {
        json_data::read_into(raw, elements - out.len(), &mut out).map_err(|refusal| match refusal {
            Refusal::TooMany => {
                format!("has more than {elements} values but shape {shape:?} needs {elements}")
            }
            Refusal::NotA(value, wanted) => format!("{value} is not a {wanted}"),
            Refusal::Malformed(e) => format!("malformed data: {e}"),
            Refusal::Binary(why) => why,
        })
    })?;
    if out.len() == elements {
        Ok(out)
    } else {
        Err(format!(
            "has {} values but shape {shape:?} needs {elements}",
            out.len()
        ))
    }
}

/// A tensor from raw little-endian bytes (the binary-data extension, gRPC's raw contents).
pub(crate) fn from_le_bytes(
    datatype: &str,
    shape: Vec<usize>,
    bytes: &[u8],
) -> Result<Tensor, String> {
    let ty = element_type(datatype).ok_or_else(|| {
        format!(
            "datatype {datatype:?} is not served; use one of {}",
            served_datatypes()
        )
    })?;
    Tensor::from_le_bytes(ty, shape, bytes).map_err(|e| match e {
        crate::Error::TensorBytes {
            expected,
            len,
            shape,
            ..
        } => format!(
            "has {len} bytes of binary data but shape {shape:?} of {datatype} needs {}",
            expected.map_or_else(|| "more than fits in memory".to_owned(), |n| n.to_string())
        ),
        other => other.to_string(),
    })
}

/// Why a request tensor was refused.
#[derive(Debug)]
pub enum InputError {
    /// Malformed (400).
    Invalid(String),
    /// Over the size limit (413).
    TooLarge(String),
}

/// A kiln output as a response tensor: flat JSON data, or (with `binary`) its size in
/// `parameters` and its bytes returned beside it.
pub fn output(name: String, tensor: Tensor, binary: bool) -> (OutputTensor, Option<Vec<u8>>) {
    let datatype = datatype(tensor.element_type());
    let shape = tensor.shape().to_vec();
    if binary {
        let bytes = tensor.to_le_bytes();
        let out = OutputTensor {
            name,
            datatype,
            shape,
            data: None,
            parameters: Some(serde_json::json!({ "binary_data_size": bytes.len() })),
        };
        return (out, Some(bytes));
    }
    let out = OutputTensor {
        name,
        datatype,
        shape,
        data: Some(Values(tensor.into_data())),
        parameters: None,
    };
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::to_tensor`] as the one input of a request under `limits`.
    fn to_tensor(
        input: &InputTensor<'_>,
        binary: Option<&[u8]>,
        mut limits: Limits,
    ) -> Result<Tensor, InputError> {
        super::to_tensor(input, binary, &mut limits)
    }

    /// An input with `data` as its JSON text (none for `null`); leaked, as a test may.
    fn input(shape: Vec<i64>, datatype: &str, data: Value) -> InputTensor<'static> {
        let raw = (!data.is_null())
            .then(|| &*Box::leak(serde_json::value::to_raw_value(&data).expect("raw")));
        InputTensor {
            name: "x".into(),
            shape,
            datatype: datatype.into(),
            parameters: Parameters::default(),
            data: raw,
        }
    }

    #[test]
    fn nested_and_flat_data_give_the_same_tensor() {
        let flat = to_tensor(
            &input(vec![2, 2], "FP32", serde_json::json!([1, 2, 3, 4])),
            None,
            Limits::within(100),
        )
        .expect("flat");
        let nested = to_tensor(
            &input(vec![2, 2], "FP32", serde_json::json!([[1, 2], [3, 4]])),
            None,
            Limits::within(100),
        )
        .expect("nested");
        assert_eq!(flat, nested);
        assert_eq!(flat.as_slice::<f32>().expect("f32"), &[1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn data_is_read_whatever_the_field_order_and_refused_past_the_shape() {
        let body = br#"{"inputs":[{"data":[[1,2],[3,4]],"parameters":{"pad":[0,0]},"datatype":"INT64","shape":[2,2],"name":"x"}]}"#;
        let (request, tensors) = decode(body, None, Limits::within(100)).expect("decoded");
        assert!(request.inputs[0].data.is_none());
        assert_eq!(tensors[0].1.as_slice::<i64>().expect("i64"), &[1, 2, 3, 4]);
        let body =
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2,3,"x"]}]}"#;
        assert!(matches!(
            decode(body, None, Limits::within(100)),
            Err(InputError::Invalid(m)) if m == "input `x`: has more than 2 values but shape [1, 2] needs 2"
        ));
        let body = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#;
        assert!(matches!(
            decode(body, None, Limits::within(100)),
            Err(InputError::Invalid(m)) if m.contains("has 0 values but shape [1] needs 1")
        ));
    }

    #[test]
    fn binary_data_round_trips() {
        let t = to_tensor(
            &input(vec![2], "FP32", Value::Null),
            Some(&[0, 0, 192, 63, 0, 0, 0, 192]),
            Limits::within(9),
        )
        .expect("binary");
        assert_eq!(t.as_slice::<f32>().expect("f32"), &[1.5, -2.0]);
        assert_eq!(t.to_le_bytes(), vec![0, 0, 192, 63, 0, 0, 0, 192]);
        assert!(matches!(
            to_tensor(&input(vec![3], "FP32", Value::Null), Some(&[0; 8]), Limits::within(9)),
            Err(InputError::Invalid(m)) if m.contains("8 bytes of binary data")
        ));
    }

    #[test]
    fn bad_tensors_are_refused_with_the_reason() {
        let msg = |r: Result<Tensor, InputError>| match r {
            Err(InputError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(to_tensor(
            &input(vec![3], "FP32", serde_json::json!([1, 2])),
            None,
            Limits::within(9)
        ))
        .contains("has 2 values but shape [3] needs 3"));
        assert!(msg(to_tensor(
            &input(vec![-1], "FP32", serde_json::json!([])),
            None,
            Limits::within(9)
        ))
        .contains("negative"));
        assert!(msg(to_tensor(
            &input(vec![1], "INT8", serde_json::json!([300])),
            None,
            Limits::within(9)
        ))
        .contains("300 is not a int8"));
        assert!(msg(to_tensor(
            &input(vec![1], "STRING", serde_json::json!(["a"])),
            None,
            Limits::within(9)
        ))
        .contains("not served"));
        // BYTES: JSON strings, never numbers, never a NUL; binary is length-prefixed.
        let t = to_tensor(
            &input(vec![2], "BYTES", serde_json::json!([["cat"], [""]])),
            None,
            Limits::within(9),
        )
        .expect("strings");
        assert_eq!(t.as_slice::<String>().expect("strings"), &["cat", ""]);
        assert!(msg(to_tensor(
            &input(vec![1], "BYTES", serde_json::json!([1])),
            None,
            Limits::within(9)
        ))
        .contains("1 is not a string"));
        assert!(msg(to_tensor(
            &input(vec![1], "BYTES", serde_json::json!(["a\u{0}b"])),
            None,
            Limits::within(9)
        ))
        .contains("is not a string without NUL"));
        let binary = to_tensor(
            &input(vec![2], "BYTES", Value::Null),
            Some(&[3, 0, 0, 0, b'c', b'a', b't', 0, 0, 0, 0]),
            Limits::within(9),
        )
        .expect("binary");
        assert_eq!(binary, t);
        for (bytes, says) in [
            (
                &[3, 0, 0, 0, b'c', b'a'][..],
                "its length says 3 bytes but 2 are left",
            ),
            (&[1, 0, 0, 0, 0xff, 0, 0, 0, 0][..], "not UTF-8"),
            (
                &[0, 0, 0, 0, 0, 0, 0, 0, 0][..],
                "1 bytes follow the shape's 2 strings",
            ),
            (&[0, 0, 0][..], "not a 4-byte length"),
        ] {
            let m = msg(to_tensor(
                &input(vec![2], "BYTES", Value::Null),
                Some(bytes),
                Limits::within(9),
            ));
            assert!(m.contains(says), "{m}");
        }
        // A string input has its own limit, checked from the shape as the other is.
        let strings = Limits {
            elements: 9,
            strings: 2,
        };
        let two = serde_json::json!(["a", "b"]);
        assert!(to_tensor(&input(vec![2], "BYTES", two), None, strings).is_ok());
        assert!(to_tensor(
            &input(vec![3], "INT8", serde_json::json!([1, 2, 3])),
            None,
            strings
        )
        .is_ok());
        for binary in [None, Some(&[0u8; 12][..])] {
            let three = serde_json::json!(["a", "b", "c"]);
            let data = if binary.is_some() { Value::Null } else { three };
            assert!(matches!(
                to_tensor(&input(vec![3, 1], "BYTES", data), binary, strings),
                Err(InputError::TooLarge(m)) if m == "input `x`: shape [3, 1] is over the request's limit on strings (max_string_elements): 2 left"
            ));
        }
        // A string input is held to the element limit too, where that is the lower.
        let few = Limits {
            elements: 2,
            strings: 9,
        };
        let three = serde_json::json!(["a", "b", "c"]);
        assert!(matches!(
            to_tensor(&input(vec![3], "BYTES", three), None, few),
            Err(InputError::TooLarge(m)) if m.ends_with("over the limit of 2 elements")
        ));
        // The strings are the request's, all inputs together: two inputs of two strings each
        // are refused under a limit of three, at the second, however many inputs there are.
        let two_inputs = |n: usize| {
            let data = vec![""; n];
            serde_json::json!({"inputs": [
                {"name": "a", "shape": [n], "datatype": "BYTES", "data": data},
                {"name": "n", "shape": [4], "datatype": "INT8", "data": [1, 2, 3, 4]},
                {"name": "b", "shape": [n], "datatype": "BYTES", "data": data},
            ]})
            .to_string()
        };
        let limits = Limits {
            elements: 4,
            strings: 3,
        };
        let body = two_inputs(2);
        assert!(matches!(
            decode(body.as_bytes(), None, limits),
            Err(InputError::TooLarge(m)) if m.starts_with("input `b`") && m.ends_with(": 1 left")
        ));
        assert!(decode(two_inputs(1).as_bytes(), None, limits).is_ok());
        // A huge declared shape is refused before the (tiny) data is looked at.
        assert!(matches!(
            to_tensor(
                &input(vec![1 << 40, 1 << 40], "FP32", serde_json::json!([1])),
                None,
                Limits::within(1000)
            ),
            Err(InputError::TooLarge(_))
        ));
    }

    /// What `decode` gives with `json_cut` and without it, as text (refusals by kind).
    fn both_ways(body: &str, header_len: Option<&str>) -> (String, String) {
        let show = |r: Result<(InferRequest<'static>, NamedTensors), InputError>| format!("{r:?}");
        (
            show(decode(body.as_bytes(), header_len, Limits::within(1 << 20))),
            show(decode_with(
                body.as_bytes(),
                header_len,
                Limits::within(1 << 20),
                false,
            )),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Requests of any field order, spacing, nesting and parameters decode the same with
        /// the data arrays cut out of serde's parse as without.
        #[test]
        fn requests_decode_the_same_with_the_data_cut_out(
            inputs in proptest::collection::vec((
                proptest::sample::select(vec!["FP32", "INT64", "UINT8", "BOOL", "BYTES", "FP16"]),
                proptest::collection::vec(-300i64..300, 0..12),
                0usize..4,
                proptest::bool::ANY,
                proptest::bool::ANY,
            ), 0..4),
            sp in proptest::sample::select(vec!["", " ", "\n  ", "\t"]),
            id in proptest::option::of("[a-z\\]\\[\"\\\\{}:,]{0,6}"),
            noise in proptest::bool::ANY,
        ) {
            let mut members = Vec::new();
            if let Some(id) = &id {
                members.push(format!("\"id\":{sp}{}", Value::from(id.as_str())));
            }
            if noise {
                members.push(format!(
                    "\"parameters\":{sp}{{\"inputs\":[{{\"data\":[1,2]}}],{sp}\"x\":[true,null,-1.5e3]}}"
                ));
            }
            let mut tensors = Vec::new();
            for (i, (datatype, values, rows, nested, data_first)) in inputs.iter().enumerate() {
                let n = values.len();
                let shape = if *rows > 0 && n % rows == 0 { vec![*rows, n / rows] } else { vec![n] };
                let data = if *nested && shape.len() == 2 {
                    Value::from(values.chunks(shape[1].max(1)).map(|c| Value::from(c.to_vec())).collect::<Vec<_>>())
                } else {
                    Value::from(values.clone())
                };
                let data = if *datatype == "BOOL" {
                    Value::from(values.iter().map(|v| v % 2 == 0).collect::<Vec<_>>())
                } else {
                    data
                };
                let fields = [
                    format!("\"name\":{sp}\"in{i}\""),
                    format!("\"shape\":{sp}{}", Value::from(shape.clone())),
                    format!("\"datatype\":{sp}\"{datatype}\""),
                ];
                let data = format!("\"data\":{sp}{}", data.to_string().replace(',', &format!(",{sp}")));
                let mut all: Vec<String> = fields.to_vec();
                if *data_first { all.insert(0, data); } else { all.push(data); }
                tensors.push(format!("{{{sp}{}{sp}}}", all.join(&format!(",{sp}"))));
            }
            members.push(format!("\"inputs\":{sp}[{}]", tensors.join(&format!(",{sp}"))));
            members.push(format!("\"outputs\":{sp}[{{\"name\":\"data\"}}]"));
            let body = format!("{sp}{{{sp}{}{sp}}}{sp}", members.join(&format!(",{sp}")));
            proptest::prop_assert_eq!(
                json_cut::cut(body.as_bytes()).is_some(),
                !inputs.is_empty(),
                "{}", body
            );
            let (with, without) = both_ways(&body, None);
            proptest::prop_assert_eq!(with, without, "{}", body);
        }
    }

    #[test]
    fn bodies_the_cut_would_change_decode_as_before() {
        for body in [
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}], "inputs": []}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1], "data": [2]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1,,2]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, true]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2]]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e999]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}], "x": }"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}, 5]}"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]"#,
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2], "parameters": {"binary_data_size": 8}}]}"#,
            // Strings beside numbers: the strings left to serde, the numbers cut.
            r#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a]"]}, {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}"#,
            r#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}, {"name": "x", "shape": [2], "datatype": "FP32", "data": [1,,2]}]}"#,
            r#"{"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}, {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}"#,
        ] {
            let (with, without) = both_ways(body, None);
            assert_eq!(with, without, "{body}");
        }
        // NaN beside strings: read (the fast path's reading), the strings as serde reads them.
        let body = br#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}, {"name": "x", "shape": [2], "datatype": "FP32", "data": [NaN, -Infinity]}]}"#;
        let (_, tensors) = decode(body, None, Limits::within(9)).expect("decoded");
        let x = tensors[1].1.as_slice::<f32>().expect("f32");
        assert!(x[0].is_nan() && x[1] == f32::NEG_INFINITY, "{x:?}");
        // A body the cut is not sure of (a key with an escape) takes the words too: serde walks
        // a masked copy, and the data is read from the body.
        let body = br#"{"inputs": [{"n\u0061me": "x", "shape": [3], "datatype": "FP64", "data": [Infinity, NaN, 1]}]}"#;
        assert!(json_cut::cut(body).is_none());
        let (_, tensors) = decode(body, None, Limits::within(9)).expect("decoded");
        let x = tensors[0].1.as_slice::<f64>().expect("f64");
        assert!(
            x[0] == f64::INFINITY && x[1].is_nan() && x[2] == 1.0,
            "{x:?}"
        );
        // Refused, a word reads as what it is where it does not belong (was "malformed request
        // body" from serde's parse of the whole body), the same both ways; and is never
        // taken as the number masking it outside `data`.
        for (body, refusal) in [
            (
                r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, NaN]}]}"#,
                "input `x`: NaN is not a int64",
            ),
            (
                r#"{"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", -Infinity]}]}"#,
                "input `t`: -Infinity is not a string",
            ),
            (
                r#"{"inputs": [{"name": "b", "shape": [1], "datatype": "BOOL", "data": [Infinity]}, {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}"#,
                "input `b`: Infinity is not a bool",
            ),
            (
                r#"{"inputs": [{"name": "x", "shape": [NaN], "datatype": "FP32", "data": []}]}"#,
                "malformed request body: expected value at line 1 column 37",
            ),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}], "parameters": {"priority": -Infinity}}"#,
                "malformed request body: `-Infinity` at byte 104, outside any input's values",
            ),
        ] {
            let (with, without) = both_ways(body, None);
            assert_eq!(with, without, "{body}");
            assert!(with.contains(refusal), "{body}: {with}");
        }
        // Refused elsewhere, a body holding a word reads as serde reads it masked (not "expected
        // value" at the word); data beside binary data holding one is refused, not left unread.
        let body = r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}], "outputs": [{"nam": "y"}]}"#;
        let (with, without) = both_ways(body, None);
        assert_eq!(with, without);
        assert!(with.contains("missing field `name`"), "{with}");
        let body =
            r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1 2, NaN]}]}"#;
        let (with, without) = both_ways(body, None);
        assert_eq!(with, without);
        assert!(
            with.contains("malformed") && !with.contains("NaN is not"),
            "{with}"
        );
        let mut body = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4},"data":[NaN]}]}"#.to_vec();
        let len = body.len().to_string();
        body.extend(1f32.to_le_bytes());
        let refused = format!("{:?}", decode(&body, Some(&len), Limits::within(9)));
        assert!(refused.contains("outside any input's values"), "{refused}");
        // Bytes that are not UTF-8 in a string serde only skips: the same both ways.
        let body = b"{\"x\": \"\xff\", \"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\": [NaN]}]}";
        assert_eq!(
            format!("{:?}", decode(body, None, Limits::within(9))),
            format!("{:?}", decode_with(body, None, Limits::within(9), false))
        );
        // Words against the inputs before them take one pass, not one per input: 100,000
        // inputs and a million words (a hundred billion steps when it was not: 52 s in a
        // release build) cost a small multiple of the same body with a number for each word
        // (two parses, a copy and a scan), in any build.
        let body = |value: &str| {
            let mut body = String::from(r#"{"inputs": ["#);
            for _ in 0..100_000 {
                body.push_str(r#"{"name": "", "shape": [], "datatype": "", "data": 0}, "#);
            }
            body.push_str(r#"{"name": "x", "shape": [1000000], "datatype": "FP32", "data": ["#);
            body.push_str(&vec![value; 1_000_000].join(","));
            body.push_str("]}]}");
            body
        };
        let time = |body: &str| {
            let since = std::time::Instant::now();
            let refused = format!(
                "{:?}",
                decode_with(body.as_bytes(), None, Limits::within(1 << 20), false)
            );
            assert!(refused.contains("datatype"), "{refused}");
            since.elapsed()
        };
        let (numbers, words) = (time(&body("0e0")), time(&body("NaN")));
        eprintln!("100,000 inputs and a million values: numbers {numbers:?}, words {words:?}");
        assert!(
            words < numbers * 20 + std::time::Duration::from_secs(2),
            "words {words:?}, numbers {numbers:?}"
        );
        // Checks that come before the data is read answer as they did when serde refused the
        // whole body first (413 was 400), and a data array beside binary data is still
        // checked (was accepted).
        for body in [
            r#"{"inputs": [{"name": "x", "shape": [99999999999], "datatype": "FP32", "data": [oops]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [99999999999], "datatype": "FP32", "data": [1]}, {"name": "y", "shape": [1], "datatype": "FP32", "data": [1,,]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [}{]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [oops]}]}"#,
        ] {
            let (with, without) = both_ways(body, None);
            assert_eq!(with, without, "{body}");
            assert!(with.contains("malformed request body"), "{with}");
        }
        for data in ["[oops]", "[1,,]", "[}{]", "[1]", "[NaN]", "[1NaN]"] {
            let mut body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","parameters":{{"binary_data_size":4}},"data":{data}}}]}}"#
            )
            .into_bytes();
            let len = body.len().to_string();
            body.extend(1f32.to_le_bytes());
            assert_eq!(
                format!("{:?}", decode(&body, Some(&len), Limits::within(9))),
                format!(
                    "{:?}",
                    decode_with(&body, Some(&len), Limits::within(9), false)
                ),
                "{data}"
            );
        }
        // The binary extension: the JSON part is cut, the binary part read as before.
        let mut body = br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.5]}, {"name": "b", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}"#.to_vec();
        let len = body.len().to_string();
        body.extend(2.5f32.to_le_bytes());
        let with = decode_with(&body, Some(&len), Limits::within(9), true).expect("decoded");
        let without = decode_with(&body, Some(&len), Limits::within(9), false).expect("decoded");
        assert_eq!(format!("{with:?}"), format!("{without:?}"));
    }
}
