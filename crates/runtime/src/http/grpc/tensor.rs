//! gRPC tensors to and from kiln's: an input's data comes either typed
//! (`InferTensorContents`, the field matching its datatype) or raw (`raw_input_contents`, one
//! little-endian buffer per input, the same decoding as REST's binary extension); outputs are
//! always returned raw, as Triton does, which every client reads. Shapes are checked against
//! the element limit before any data is converted.

use crate::{NamedTensors, Tensor, TensorData};
use bytes::Bytes;

use crate::http::grpc::pb::model_infer_request::InferInputTensor;
use crate::http::grpc::pb::model_infer_response::InferOutputTensor;
use crate::http::grpc::pb::InferTensorContents;
use crate::http::protocol::{self, InputError, Limits, BYTES};

/// The request's inputs as kiln tensors. With `raw` (the request's `raw_input_contents`),
/// there is one buffer per input, in order, and no input carries typed contents.
///
/// # Errors
/// [`InputError::Invalid`] for a bad shape, datatype, count or value, or a raw/typed mix;
/// [`InputError::TooLarge`] over `limits`.
pub(super) fn inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Bytes>,
    mut limits: Limits,
) -> Result<NamedTensors, InputError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(InputError::Invalid(format!(
            "raw_input_contents has {} entries for {} inputs (one per input, in order)",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let bytes = raw.next();
            to_tensor(input, bytes.as_deref(), &mut limits)
        })
        .collect()
}

/// One input, taken by value so typed contents become the tensor's data without a copy.
fn to_tensor(
    input: InferInputTensor,
    raw: Option<&[u8]>,
    limits: &mut Limits,
) -> Result<(String, Tensor), InputError> {
    let InferInputTensor {
        name,
        datatype,
        shape: dims,
        contents,
        ..
    } = input;
    let bad = |m: String| InputError::Invalid(format!("input `{name}`: {m}"));
    let (shape, elements) = limits.checked_shape(&name, &dims, &datatype)?;
    if let Some(bytes) = raw {
        if contents.as_ref().is_some_and(has_values) {
            return Err(bad(
                "has both typed contents and raw_input_contents; send one".into(),
            ));
        }
        let tensor = protocol::from_le_bytes(&datatype, shape, bytes).map_err(bad)?;
        return Ok((name, tensor));
    }
    let contents = contents.unwrap_or_default();
    let count = |n: usize| {
        if n == elements {
            Ok(())
        } else {
            Err(bad(format!(
                "has {n} values but shape {shape:?} needs {elements}"
            )))
        }
    };
    let data = match datatype.as_str() {
        "FP32" => {
            count(contents.fp32_contents.len())?;
            TensorData::F32(contents.fp32_contents)
        }
        "FP64" => {
            count(contents.fp64_contents.len())?;
            TensorData::F64(contents.fp64_contents)
        }
        "INT64" => {
            count(contents.int64_contents.len())?;
            TensorData::I64(contents.int64_contents)
        }
        "INT32" => {
            count(contents.int_contents.len())?;
            TensorData::I32(contents.int_contents)
        }
        "INT8" => {
            count(contents.int_contents.len())?;
            TensorData::I8(narrow(&contents.int_contents, "int8").map_err(bad)?)
        }
        "UINT8" => {
            count(contents.uint_contents.len())?;
            TensorData::U8(narrow(&contents.uint_contents, "uint8").map_err(bad)?)
        }
        "BOOL" => {
            count(contents.bool_contents.len())?;
            TensorData::Bool(contents.bool_contents)
        }
        "INT16" => {
            count(contents.int_contents.len())?;
            TensorData::I16(narrow(&contents.int_contents, "int16").map_err(bad)?)
        }
        "UINT16" => {
            count(contents.uint_contents.len())?;
            TensorData::U16(narrow(&contents.uint_contents, "uint16").map_err(bad)?)
        }
        "UINT32" => {
            count(contents.uint_contents.len())?;
            TensorData::U32(contents.uint_contents)
        }
        "UINT64" => {
            count(contents.uint64_contents.len())?;
            TensorData::U64(contents.uint64_contents)
        }
        BYTES => {
            count(contents.bytes_contents.len())?;
            let strings = contents
                .bytes_contents
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b).map_err(|e| {
                        format!("bytes_contents[{i}] is not UTF-8: {}", e.utf8_error())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            TensorData::String(strings)
        }
        "FP16" | "BF16" => {
            return Err(bad(format!(
            "{datatype} has no typed contents field in the protocol; send it in raw_input_contents"
        )))
        }
        other => {
            return Err(bad(format!(
                "datatype {other:?} is not served; use one of {}",
                protocol::served_datatypes()
            )))
        }
    };
    let tensor = Tensor::from_data(shape, data).map_err(|e| bad(e.to_string()))?;
    Ok((name, tensor))
}

/// The protocol's 32-bit contents narrowed to the tensor's type, refusing the first value that
/// does not fit (`300 is not a int8`).
fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
    values: &[S],
    what: &str,
) -> Result<Vec<T>, String> {
    values
        .iter()
        .map(|&x| T::try_from(x).map_err(|_| format!("{x} is not a {what}")))
        .collect()
}

/// Whether typed contents carry any value (an empty `contents` beside raw bytes is fine).
fn has_values(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// An output's description and its raw bytes (for `raw_output_contents`).
pub(super) fn output(name: String, tensor: &Tensor) -> (InferOutputTensor, Bytes) {
    let out = InferOutputTensor {
        name,
        datatype: protocol::datatype(tensor.element_type()).to_owned(),
        shape: tensor.shape().iter().map(|&d| d as i64).collect(),
        parameters: Default::default(),
        contents: None::<InferTensorContents>,
    };
    (out, Bytes::from(tensor.to_le_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(shape: Vec<i64>, datatype: &str, contents: InferTensorContents) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: Some(contents),
        }
    }

    fn message(r: Result<NamedTensors, InputError>) -> String {
        match r {
            Err(InputError::Invalid(m)) | Err(InputError::TooLarge(m)) => m,
            Ok(t) => panic!("accepted {t:?}"),
        }
    }

    #[test]
    fn typed_and_raw_contents_give_the_same_tensor() {
        let typed = inputs(
            vec![input(
                vec![2],
                "FP32",
                InferTensorContents {
                    fp32_contents: vec![1.5, -2.0],
                    ..Default::default()
                },
            )],
            Vec::new(),
            Limits::within(9),
        )
        .expect("typed");
        let mut raw_input = input(vec![2], "FP32", InferTensorContents::default());
        raw_input.contents = None;
        let raw = inputs(
            vec![raw_input],
            vec![Bytes::from_static(&[0, 0, 192, 63, 0, 0, 0, 192])],
            Limits::within(9),
        )
        .expect("raw");
        assert_eq!(typed, raw);
        let (out, bytes) = output("y".into(), &raw[0].1);
        assert_eq!((out.datatype.as_str(), out.shape), ("FP32", vec![2]));
        assert_eq!(&bytes[..], &[0, 0, 192, 63, 0, 0, 0, 192]);
    }

    #[test]
    fn bytes_are_strings_typed_or_raw_and_come_back_length_prefixed() {
        let typed = inputs(
            vec![input(
                vec![2],
                "BYTES",
                InferTensorContents {
                    bytes_contents: vec![b"cat".to_vec(), Vec::new()],
                    ..Default::default()
                },
            )],
            Vec::new(),
            Limits::within(9),
        )
        .expect("typed");
        let wire: &[u8] = &[3, 0, 0, 0, b'c', b'a', b't', 0, 0, 0, 0];
        let mut raw_input = input(vec![2], "BYTES", InferTensorContents::default());
        raw_input.contents = None;
        let raw = inputs(
            vec![raw_input.clone()],
            vec![Bytes::copy_from_slice(wire)],
            Limits::within(9),
        )
        .expect("raw");
        assert_eq!(typed, raw);
        // Strings have their own limit, raw or typed.
        let one = Limits {
            elements: 9,
            strings: 1,
        };
        let e = inputs(
            vec![raw_input.clone()],
            vec![Bytes::copy_from_slice(wire)],
            one,
        );
        assert!(
            matches!(&e, Err(InputError::TooLarge(m)) if m.contains("limit on strings")),
            "{e:?}"
        );
        // The request's, all inputs together: two inputs of two strings under a limit of 3.
        let three = Limits {
            elements: 9,
            strings: 3,
        };
        let mut second = raw_input.clone();
        second.name = "y".into();
        let e = inputs(
            vec![raw_input, second],
            vec![Bytes::copy_from_slice(wire), Bytes::copy_from_slice(wire)],
            three,
        );
        assert!(
            matches!(&e, Err(InputError::TooLarge(m)) if m.starts_with("input `y`") && m.ends_with(": 1 left")),
            "{e:?}"
        );
        let (out, bytes) = output("y".into(), &raw[0].1);
        assert_eq!(out.datatype, "BYTES");
        assert_eq!(&bytes[..], wire);
    }

    #[test]
    fn bad_inputs_are_refused_with_the_reason() {
        let ints = |v: Vec<i32>| InferTensorContents {
            int_contents: v,
            ..Default::default()
        };
        assert!(message(inputs(
            vec![input(vec![3], "INT32", ints(vec![1]))],
            vec![],
            Limits::within(9)
        ))
        .contains("has 1 values but shape [3] needs 3"));
        assert!(message(inputs(
            vec![input(vec![1], "INT8", ints(vec![300]))],
            vec![],
            Limits::within(9)
        ))
        .contains("300 is not a int8"));
        assert!(message(inputs(
            vec![input(vec![-1], "INT32", ints(vec![]))],
            vec![],
            Limits::within(9)
        ))
        .contains("negative"));
        assert!(message(inputs(
            vec![input(vec![1], "STRING", ints(vec![]))],
            vec![],
            Limits::within(9)
        ))
        .contains("not served"));
        let bytes = |v: Vec<&[u8]>| InferTensorContents {
            bytes_contents: v.into_iter().map(<[u8]>::to_vec).collect(),
            ..Default::default()
        };
        assert!(message(inputs(
            vec![input(vec![2], "BYTES", bytes(vec![b"ok", b"\xff"]))],
            vec![],
            Limits::within(9)
        ))
        .contains("bytes_contents[1] is not UTF-8"));
        assert!(message(inputs(
            vec![input(vec![1], "BYTES", bytes(vec![b"a\0b"]))],
            vec![],
            Limits::within(9)
        ))
        .contains("NUL"));
        assert!(matches!(
            inputs(
                vec![input(vec![1 << 40, 1 << 40], "INT32", ints(vec![]))],
                vec![],
                Limits::within(9)
            ),
            Err(InputError::TooLarge(_))
        ));
        // Raw contents: one per input, never beside typed contents, sized to the shape.
        assert!(message(inputs(
            vec![input(vec![1], "INT32", ints(vec![1]))],
            vec![Bytes::from_static(&[0; 4])],
            Limits::within(9)
        ))
        .contains("both typed contents and raw"));
        assert!(message(inputs(
            vec![input(vec![1], "INT32", ints(vec![]))],
            vec![Bytes::new(), Bytes::new()],
            Limits::within(9)
        ))
        .contains("2 entries for 1 inputs"));
    }
}
