//! `ModelInfer`'s request kept as the bytes that arrived, and decoded where and when kiln
//! chooses, after a walk that bounds what decoding it allocates.
//!
//! tonic decodes a call's message with prost on the tokio worker that read it, before the
//! service sees it. For `ModelInfer` that is every tensor's typed contents, and prost
//! allocates whatever the message holds before anything compares it with a shape. A 29 MiB
//! message of `int64_contents` zeros (one byte each on the wire, eight in the vector) for an
//! input of shape `[1]` held 229 MiB, four such calls raised the server's peak by 511 MiB,
//! and liveness probes waited up to 542 ms while the workers decoded them (release build).
//! Protobuf's empty entries are two bytes on the wire and a hundred or so in memory too: a
//! message of nothing but empty `inputs` would be some fifty times its size.
//!
//! So the generated service takes `ModelInfer`'s request as a [`ModelInferMessage`], whose
//! `prost::Message` decoding keeps the received bytes (a slice of tonic's buffer, no copy).
//! [`ModelInferMessage::decode`], on a decode thread for a big message, first walks the
//! message's structure without decoding a value (`check`): it refuses an input whose typed
//! contents, all their fields together (prost allocates every one, kiln reads the
//! datatype's), hold more values than its shape's element count, strings (`bytes_contents`)
//! in an input that is not `BYTES`, a shape over the request's [`Limits`] (of elements, and
//! of strings for the request's `BYTES` inputs together), a shape of more than [`MAX_DIMS`]
//! dims, and more than [`MAX_TENSORS`] inputs, requested outputs or raw contents, or
//! [`MAX_PARAMETERS`] parameters in all. Then prost decodes it, into at most the shapes'
//! values: 8 bytes each at most, 24 and the string's own for `bytes_contents`.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, decode_key, decode_varint, encode_key, encode_varint};
use prost::encoding::{check_wire_type, skip_field, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::http::grpc::pb;
use crate::http::json_fields::MAX_DIMS;
use crate::http::protocol::{InputError, Limits, BYTES};

/// The most inputs, requested outputs, or raw contents entries a request may name.
pub(crate) const MAX_TENSORS: usize = 4096;

/// The most parameters a request may carry, its own, its inputs' and its outputs' together.
pub(crate) const MAX_PARAMETERS: usize = 4096;

/// The deepest a message may nest groups (as prost's own limit).
const MAX_DEPTH: u32 = 100;

/// A `ModelInferRequest` as received: its bytes, decoded by [`Self::decode`].
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ModelInferMessage {
    /// The message's bytes in the order they came: one slice of tonic's buffer for a call's
    /// message; a field each when merged field by field.
    parts: Vec<Bytes>,
}

/// Who a request was for, as far as the walk read it before refusing it (for the log line).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) id: String,
    pub(crate) error: InputError,
}

impl ModelInferMessage {
    /// The message's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// The request, once the walk found nothing that decoding would blow up; raw contents
    /// stay slices of the received bytes.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for a malformed message, more typed values than an input's
    /// shape holds, too many dims, tensors or parameters; [`InputError::TooLarge`] for a
    /// shape over `limits`; with the model, version and id the walk read.
    pub(crate) fn decode(self, limits: Limits) -> Result<pb::ModelInferRequest, Refused> {
        let bytes = match <[Bytes; 1]>::try_from(self.parts) {
            Ok([one]) => one,
            Err(parts) => parts.concat().into(),
        };
        let mut header = Header::default();
        let checked = check(&bytes, limits, &mut header);
        let refused = |error| Refused {
            model: String::from_utf8_lossy(header.model).into_owned(),
            version: String::from_utf8_lossy(header.version).into_owned(),
            id: String::from_utf8_lossy(header.id).into_owned(),
            error,
        };
        checked.map_err(refused)?;
        pb::ModelInferRequest::decode(bytes.clone()).map_err(|e| refused(malformed(&e.to_string())))
    }
}

impl fmt::Debug for ModelInferMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelInferMessage({} bytes)", self.len())
    }
}

impl Message for ModelInferMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for part in &self.parts {
            buf.put_slice(part);
        }
    }

    /// One field, kept as its key and value (reached only when the message is merged as part
    /// of another; [`Self::merge`] takes a whole one at once). As prost's own decoding: an
    /// unknown field is dropped, a known one of the wrong wire type refused.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if !(1..=7).contains(&tag) {
            return skip_field(wire_type, tag, buf, ctx);
        }
        // Every field of the message is length-delimited.
        check_wire_type(WireType::LengthDelimited, wire_type)?;
        let mut value = Bytes::new();
        encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
        let mut field = BytesMut::new();
        encode_key(tag, wire_type, &mut field);
        encode_varint(value.len() as u64, &mut field);
        self.parts.push(field.freeze());
        self.parts.push(value);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.len()
    }

    fn clear(&mut self) {
        self.parts.clear();
    }

    /// The whole of `buf`, unread: its fields are walked and decoded later, by
    /// [`Self::decode`]. From a `Bytes` buffer (tonic's) this is a slice, not a copy; a
    /// message sent in parts merges as if it had come as one.
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        let more = buf.copy_to_bytes(buf.remaining());
        self.parts.push(more);
        Ok(())
    }
}

fn malformed(what: &str) -> InputError {
    InputError::Invalid(format!(
        "the ModelInferRequest message is malformed: {what}"
    ))
}

/// One field's value, unread.
enum Value<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
    /// A group, skipped.
    Group,
    /// A group's end.
    End,
}

/// The fields of one message's bytes, in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, InputError> {
        match self.field(0)? {
            Some((_, Value::End)) => Err(malformed("a group ends that did not start")),
            field => Ok(field),
        }
    }

    /// The next field at group depth `depth` (a group's end is [`Value::End`]).
    fn field(&mut self, depth: u32) -> Result<Option<(u32, Value<'a>)>, InputError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tag, wire_type) = decode_key(&mut self.rest).map_err(|e| malformed(&e.to_string()))?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(varint(&mut self.rest)?),
            WireType::SixtyFourBit => {
                self.take(8)?;
                Value::Fixed
            }
            WireType::ThirtyTwoBit => {
                self.take(4)?;
                Value::Fixed
            }
            WireType::LengthDelimited => {
                let len = varint(&mut self.rest)?;
                Value::Bytes(self.take(usize::try_from(len).unwrap_or(usize::MAX))?)
            }
            WireType::StartGroup => {
                self.skip_group(tag, depth + 1)?;
                Value::Group
            }
            WireType::EndGroup => Value::End,
        };
        Ok(Some((tag, value)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], InputError> {
        if self.rest.len() < n {
            return Err(malformed("a field runs past the end of the message"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// Skips a group's fields up to its end (`tag`'s `EndGroup`).
    fn skip_group(&mut self, tag: u32, depth: u32) -> Result<(), InputError> {
        if depth > MAX_DEPTH {
            return Err(malformed("groups nested too deep"));
        }
        loop {
            match self.field(depth)? {
                None => return Err(malformed("a group does not end")),
                Some((end, Value::End)) if end == tag => return Ok(()),
                Some((_, Value::End)) => return Err(malformed("a group ends that did not start")),
                Some(_) => {}
            }
        }
    }
}

/// A varint from the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Result<u64, InputError> {
    decode_varint(bytes).map_err(|e| malformed(&e.to_string()))
}

/// What the walk counts across the whole request.
#[derive(Default)]
struct Counts {
    inputs: usize,
    outputs: usize,
    raw: usize,
    parameters: usize,
}

impl Counts {
    fn over(&self) -> Result<(), InputError> {
        let too_many = |n: usize, what: &str, max: usize| {
            (n > max).then(|| {
                InputError::Invalid(format!(
                    "a request has at most {max} {what}; this one has more"
                ))
            })
        };
        let first = too_many(self.inputs, "inputs", MAX_TENSORS)
            .or_else(|| too_many(self.outputs, "requested outputs", MAX_TENSORS))
            .or_else(|| too_many(self.raw, "raw_input_contents entries", MAX_TENSORS))
            .or_else(|| too_many(self.parameters, "parameters", MAX_PARAMETERS));
        first.map_or(Ok(()), Err)
    }
}

/// The request's own fields, as the walk last saw them.
#[derive(Default)]
struct Header<'a> {
    model: &'a [u8],
    version: &'a [u8],
    id: &'a [u8],
}

/// Walks a `ModelInferRequest`'s bytes: the checks in the module doc, on the counts that
/// decoding it would allocate, before anything is decoded.
fn check<'a>(
    message: &'a [u8],
    mut limits: Limits,
    header: &mut Header<'a>,
) -> Result<(), InputError> {
    let mut counts = Counts::default();
    let mut fields = Fields::new(message);
    while let Some((tag, value)) = fields.next()? {
        match (tag, value) {
            (1, Value::Bytes(b)) => header.model = b,
            (2, Value::Bytes(b)) => header.version = b,
            (3, Value::Bytes(b)) => header.id = b,
            (4, _) => counts.parameters += 1,
            (5, Value::Bytes(input)) => {
                counts.inputs += 1;
                counts.over()?;
                check_input(input, &mut limits, &mut counts)?;
            }
            (6, Value::Bytes(output)) => {
                counts.outputs += 1;
                let mut fields = Fields::new(output);
                while let Some((tag, _)) = fields.next()? {
                    if tag == 2 {
                        counts.parameters += 1;
                    }
                }
            }
            (7, _) => counts.raw += 1,
            _ => {}
        }
        counts.over()?;
    }
    Ok(())
}

/// One `InferInputTensor`: its shape, checked through the request's `limits` as the decoder
/// will check it, and its typed contents' values, in all its typed fields together, against
/// the shape's element count; strings only in a `BYTES` input.
fn check_input(input: &[u8], limits: &mut Limits, counts: &mut Counts) -> Result<(), InputError> {
    let mut name: &[u8] = &[];
    let mut datatype: &[u8] = &[];
    let mut dims: Vec<i64> = Vec::new();
    // Typed values, every `InferTensorContents` field and occurrence together: only the
    // datatype's field is read, but prost allocates them all.
    let mut values = 0usize;
    let mut strings = 0usize;
    let mut fields = Fields::new(input);
    while let Some((tag, value)) = fields.next()? {
        match (tag, value) {
            (1, Value::Bytes(n)) => name = n,
            (2, Value::Bytes(d)) => datatype = d,
            (3, Value::Varint(d)) => {
                dims.push(d as i64);
                over_dims(name, dims.len())?;
            }
            (3, Value::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    let d = varint(&mut packed)?;
                    dims.push(d as i64);
                    over_dims(name, dims.len())?;
                }
            }
            (4, _) => {
                counts.parameters += 1;
                counts.over()?;
            }
            (5, Value::Bytes(contents)) => {
                let (all, of_strings) = count_contents(contents)?;
                values += all;
                strings += of_strings;
            }
            _ => {}
        }
    }
    let name = String::from_utf8_lossy(name);
    let datatype = String::from_utf8_lossy(datatype);
    if strings > 0 && datatype != BYTES {
        // prost would make a `Vec` of each, for nothing: no other datatype reads them.
        return Err(InputError::Invalid(format!(
            "input `{name}`: bytes_contents is for BYTES inputs, not {:?}",
            datatype.chars().take(64).collect::<String>()
        )));
    }
    let (shape, elements) = limits.checked_shape(&name, &dims, &datatype)?;
    if values > elements {
        return Err(InputError::Invalid(format!(
            "input `{name}`: has {values} values but shape {shape:?} needs {elements}"
        )));
    }
    Ok(())
}

fn over_dims(name: &[u8], dims: usize) -> Result<(), InputError> {
    if dims > MAX_DIMS {
        let name = String::from_utf8_lossy(name);
        return Err(InputError::Invalid(format!(
            "input `{name}`: a shape has at most {MAX_DIMS} dims"
        )));
    }
    Ok(())
}

/// An `InferTensorContents`' values, every field's, packed or not, and how many of them are
/// strings (`bytes_contents`).
fn count_contents(contents: &[u8]) -> Result<(usize, usize), InputError> {
    let mut values = 0;
    let mut strings = 0;
    let mut fields = Fields::new(contents);
    while let Some((tag, value)) = fields.next()? {
        values += match (tag, value) {
            // bool, int, int64, uint, uint64: a packed run holds one value per byte that
            // ends a varint (its top bit clear).
            (1..=5, Value::Bytes(packed)) => packed.iter().filter(|&&b| b < 0x80).count(),
            (1..=5, Value::Varint(_)) | (6 | 7, Value::Fixed) => 1,
            (8, Value::Bytes(_)) => {
                strings += 1;
                1
            }
            (6, Value::Bytes(packed)) => packed.len() / 4,
            (7, Value::Bytes(packed)) => packed.len() / 8,
            _ => 0,
        };
    }
    Ok((values, strings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use pb::InferTensorContents;

    fn input(name: &str, shape: &[i64], contents: InferTensorContents) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: "INT64".into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents: Some(contents),
        }
    }

    fn message(inputs: Vec<InferInputTensor>) -> ModelInferMessage {
        let request = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs,
            ..Default::default()
        };
        ModelInferMessage::decode_from(&request.encode_to_vec())
    }

    impl ModelInferMessage {
        fn decode_from(bytes: &[u8]) -> Self {
            <Self as Message>::decode(Bytes::copy_from_slice(bytes)).expect("kept")
        }
    }

    fn refusal(r: Result<pb::ModelInferRequest, Refused>) -> String {
        match r.expect_err("refused").error {
            InputError::Invalid(m) | InputError::TooLarge(m) => m,
        }
    }

    #[test]
    fn a_valid_request_decodes_as_prost_decodes_it() {
        let request = pb::ModelInferRequest {
            model_name: "m".into(),
            model_version: "2".into(),
            id: "abc".into(),
            inputs: vec![input(
                "x",
                &[2, 3],
                InferTensorContents {
                    int64_contents: vec![0, -1, 300, i64::MAX, i64::MIN, 7],
                    ..Default::default()
                },
            )],
            outputs: vec![InferRequestedOutputTensor {
                name: "y".into(),
                parameters: Default::default(),
            }],
            raw_input_contents: vec![Bytes::from_static(b"\x01\x02")],
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let kept = ModelInferMessage::decode_from(&bytes);
        assert_eq!(kept.len(), bytes.len());
        assert_eq!(kept.encode_to_vec(), bytes, "kept as received");
        assert_eq!(
            kept.decode(Limits::within(1 << 20)).expect("decoded"),
            request
        );
    }

    #[test]
    fn more_values_than_the_shape_holds_are_refused_before_decoding() {
        // Packed (as every client sends) and one by one (as proto2 writers may).
        let packed = InferTensorContents {
            int64_contents: vec![0; 1000],
            ..Default::default()
        };
        let m = refusal(message(vec![input("x", &[1], packed)]).decode(Limits::within(1 << 20)));
        assert_eq!(m, "input `x`: has 1000 values but shape [1] needs 1");

        let mut one_by_one = input("x", &[2], InferTensorContents::default()).encode_to_vec();
        let mut contents = Vec::new();
        for _ in 0..3 {
            encode_key(3, WireType::Varint, &mut contents);
            encode_varint(5, &mut contents);
        }
        encode_key(5, WireType::LengthDelimited, &mut one_by_one);
        encode_varint(contents.len() as u64, &mut one_by_one);
        one_by_one.extend_from_slice(&contents);
        let mut request = Vec::new();
        encode_key(5, WireType::LengthDelimited, &mut request);
        encode_varint(one_by_one.len() as u64, &mut request);
        request.extend_from_slice(&one_by_one);
        let m = refusal(ModelInferMessage::decode_from(&request).decode(Limits::within(1 << 20)));
        assert_eq!(m, "input `x`: has 3 values but shape [2] needs 2");

        // Every typed field counts, the datatype's or not, all together; fixed-width ones by
        // their size.
        let two_fields = InferTensorContents {
            int64_contents: vec![1; 3],
            fp32_contents: vec![0.5; 3],
            ..Default::default()
        };
        let m =
            refusal(message(vec![input("x", &[4], two_fields)]).decode(Limits::within(1 << 20)));
        assert_eq!(m, "input `x`: has 6 values but shape [4] needs 4");
        for contents in [
            InferTensorContents {
                fp32_contents: vec![0.5; 5],
                ..Default::default()
            },
            InferTensorContents {
                fp64_contents: vec![0.5; 5],
                ..Default::default()
            },
            InferTensorContents {
                bool_contents: vec![true; 5],
                ..Default::default()
            },
            InferTensorContents {
                uint64_contents: vec![u64::MAX; 5],
                ..Default::default()
            },
            InferTensorContents {
                bytes_contents: vec![Vec::new(); 5],
                ..Default::default()
            },
        ] {
            let mut input = input("x", &[4], contents);
            if input
                .contents
                .as_ref()
                .is_some_and(|c| !c.bytes_contents.is_empty())
            {
                input.datatype = "BYTES".into();
            }
            let m = refusal(message(vec![input]).decode(Limits::within(1 << 20)));
            assert_eq!(m, "input `x`: has 5 values but shape [4] needs 4");
        }
    }

    #[test]
    fn a_refusal_says_which_request_it_was() {
        let mut request = pb::ModelInferRequest {
            model_name: "m".into(),
            model_version: "3".into(),
            id: "abc".into(),
            inputs: vec![input("x", &[-1], Default::default())],
            ..Default::default()
        }
        .encode_to_vec();
        let refused = ModelInferMessage::decode_from(&request)
            .decode(Limits::within(16))
            .expect_err("refused");
        assert_eq!(
            (
                refused.model.as_str(),
                refused.version.as_str(),
                refused.id.as_str()
            ),
            ("m", "3", "abc")
        );
        // Malformed after the header: prost's refusal, the header still read.
        request.push(0x2a);
        let refused = ModelInferMessage::decode_from(&request)
            .decode(Limits::within(16))
            .expect_err("refused");
        assert_eq!(refused.model, "m");
    }

    #[test]
    fn shapes_are_checked_as_the_decoder_checks_them() {
        let m = refusal(
            message(vec![input("x", &[1 << 20, 1 << 20], Default::default())])
                .decode(Limits::within(1 << 20)),
        );
        assert!(m.contains("over the limit of 1048576 elements"), "{m}");
        let m = refusal(
            message(vec![input("x", &[-1], Default::default())]).decode(Limits::within(16)),
        );
        assert!(m.contains("dim -1 is negative"), "{m}");
        let m = refusal(
            message(vec![input("x", &[1; MAX_DIMS + 1], Default::default())])
                .decode(Limits::within(16)),
        );
        assert_eq!(m, format!("input `x`: a shape has at most {MAX_DIMS} dims"));
        // At the limits: fine.
        let ok = message(vec![input(
            "x",
            &[1; MAX_DIMS],
            InferTensorContents {
                int64_contents: vec![3],
                ..Default::default()
            },
        )]);
        assert!(ok.decode(Limits::within(16)).is_ok());
        // A string input against its own limit, before prost makes a `Vec` per entry; a
        // number input of the same shape against the other.
        let limits = Limits {
            elements: 16,
            strings: 2,
        };
        let strings = |n: usize| InferTensorContents {
            bytes_contents: vec![Vec::new(); n],
            ..Default::default()
        };
        let mut three = input("x", &[3], strings(3));
        three.datatype = "BYTES".into();
        let m = refusal(message(vec![three.clone()]).decode(limits));
        assert_eq!(
            m,
            "input `x`: shape [3] is over the request's limit on strings (max_string_elements): 2 left"
        );
        let mut two = input("x", &[2], strings(2));
        two.datatype = "BYTES".into();
        assert!(message(vec![two.clone()]).decode(limits).is_ok());
        // The request's strings together: a second input of two is over what is left.
        let mut other = two.clone();
        other.name = "y".into();
        let m = refusal(message(vec![two.clone(), other]).decode(limits));
        assert!(m.starts_with("input `y`") && m.ends_with(": 0 left"), "{m}");
        // Strings in an input of another datatype, which prost would make and nothing read.
        let mut floats = input("x", &[2], strings(2));
        floats.datatype = "FP32".into();
        let m = refusal(message(vec![floats]).decode(limits));
        assert_eq!(
            m,
            "input `x`: bytes_contents is for BYTES inputs, not \"FP32\""
        );
        three.datatype = "INT8".into();
        three.contents = Some(InferTensorContents {
            int_contents: vec![1, 2, 3],
            ..Default::default()
        });
        assert!(message(vec![three]).decode(limits).is_ok());
    }

    #[test]
    fn empty_entries_are_counted_not_allocated() {
        // Two bytes each on the wire.
        let empty = |tag: u32, n: usize| {
            let mut bytes = Vec::new();
            for _ in 0..n {
                encode_key(tag, WireType::LengthDelimited, &mut bytes);
                encode_varint(0, &mut bytes);
            }
            bytes
        };
        for (tag, what) in [
            (5, "inputs"),
            (6, "requested outputs"),
            (7, "raw_input_contents entries"),
            (4, "parameters"),
        ] {
            let at_limit = empty(tag, MAX_TENSORS);
            let bytes = empty(tag, MAX_TENSORS + 1);
            let m = refusal(ModelInferMessage::decode_from(&bytes).decode(Limits::within(16)));
            assert!(m.contains(what) && m.contains("at most 4096"), "{m}");
            // At the limit the walk lets it through (prost or inference may still refuse it).
            let walked = check(&at_limit, Limits::within(16), &mut Header::default());
            assert!(walked.is_ok(), "{tag}");
        }
    }

    #[test]
    fn malformed_messages_are_refused_by_the_walk() {
        for (bytes, why) in [
            (&b"\x2a\x05ab"[..], "past the end"),
            (&b"\x2a"[..], "invalid varint"),
            (&b"\x0c"[..], "did not start"),
            (&b"\x0b\x08\x01"[..], "does not end"),
            (
                &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
                "varint",
            ),
        ] {
            let m = refusal(ModelInferMessage::decode_from(bytes).decode(Limits::within(16)));
            assert!(
                m.starts_with("the ModelInferRequest message is malformed"),
                "{m}"
            );
            assert!(m.to_lowercase().contains(why), "{why}: {m}");
        }
        // Groups of unknown fields are skipped, as prost skips them.
        let mut bytes = vec![0x7b, 0x08, 0x01, 0x7c];
        bytes.extend(message(vec![]).encode_to_vec());
        let r = ModelInferMessage::decode_from(&bytes)
            .decode(Limits::within(16))
            .expect("decoded");
        assert_eq!(r.model_name, "m");
    }

    #[test]
    fn parts_merge_as_one_message() {
        let a = pb::ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        };
        let b = pb::ModelInferRequest {
            id: "i".into(),
            ..Default::default()
        };
        let mut kept = ModelInferMessage::decode_from(&a.encode_to_vec());
        kept.merge(Bytes::from(b.encode_to_vec())).expect("merged");
        let r = kept.decode(Limits::within(16)).expect("decoded");
        assert_eq!((r.model_name.as_str(), r.id.as_str()), ("m", "i"));

        // As a field of another message: field by field.
        let mut outer = Vec::new();
        let inner = a.encode_to_vec();
        encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        let kept = ModelInferMessage::decode_length_delimited(&outer[..]).expect("decoded");
        assert_eq!(
            kept.decode(Limits::within(16)).expect("decoded").model_name,
            "m"
        );

        // Field by field, as prost would: an unknown group dropped, a known field as a group
        // refused.
        let with_group = |tag: u8| {
            let mut inner = vec![(tag << 3) | 3, 0x08, 0x01, (tag << 3) | 4];
            inner.extend(a.encode_to_vec());
            let mut outer = Vec::new();
            encode_varint(inner.len() as u64, &mut outer);
            outer.extend_from_slice(&inner);
            ModelInferMessage::decode_length_delimited(&outer[..])
        };
        let kept = with_group(15).expect("unknown group dropped");
        assert_eq!(kept.encode_to_vec(), a.encode_to_vec());
        let e = with_group(5).expect_err("inputs as a group");
        assert!(e.to_string().contains("invalid wire type"), "{e}");
    }

    #[test]
    fn readme_states_the_limits() {
        let stated = format!(
            "a shape of more than {MAX_DIMS} dims, more than {MAX_TENSORS} inputs, requested \
             outputs or raw contents entries, or {MAX_PARAMETERS} parameters in all are refused"
        );
        crate::http::assert_readme_states(&stated);
    }
}
