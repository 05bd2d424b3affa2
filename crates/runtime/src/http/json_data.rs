//! A tensor's JSON `data`, read straight into a typed vector and written straight from one.
//!
//! Why not `serde_json::Value`: a `Value` is 32 bytes per element (its tree around 16 times
//! the text of `0,0,0,…`), so one 32 MiB body took some 850 MB to decode, and a big output as
//! many again to encode. Here [`read`] parses the raw text of `data` once its shape and
//! datatype are known, flattening nested arrays row-major as it goes into a `Vec` sized for the
//! declared element count (never more than the text itself could hold), and stops at the first
//! value past that count or the first value of the wrong kind; serde_json's recursion limit
//! (128) still bounds nesting. Arrays of numbers take the fast path first (`json_numbers`, a
//! scanner of our own, about twice as fast); serde's visitor reads whatever it leaves, so the
//! values and the refusals are serde's either way. [`Values`] writes a tensor's data as one
//! flat array with no copy. One reading is the fast path's own: a float's `NaN`, `Infinity`
//! and `-Infinity` (not JSON, but what Triton reads and Python's `json` sends for them), which
//! serde refuses; they are written as `null` (strict JSON, see [`Values`]).

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use crate::http::json_numbers::{self, Decimal, Number};
use crate::TensorData;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Binary values' base64: the standard alphabet, padded or not (TensorFlow Serving's clients
/// pad; others may not).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why [`read`] refused the data.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// More values than the limit.
    TooMany,
    /// A value that is not a `T` (the value as JSON, abridged, and what was wanted).
    NotA(String, &'static str),
    /// Nesting over serde_json's limit, a number out of range, or text that is not JSON.
    Malformed(serde_json::Error),
    /// A binary value that does not hold what its element takes (the whole message).
    Binary(String),
}

/// One element type's reading of JSON leaves, as `serde_json::Value::as_i64` /
/// `as_f64` / `as_bool` read them.
pub(crate) trait Leaf: Sized {
    /// What a wrong value is "not a" in messages (`300 is not a int8`).
    const WANTED: &'static str;
    /// From an integer (JSON integers below zero).
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    /// From an integer (JSON integers from zero).
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    /// From a JSON number with a fraction or an exponent.
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    /// From `true` / `false`.
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    /// From a JSON string.
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    /// Whether [`json_numbers::read_into`] may read arrays of this type (numbers only).
    const NUMERIC: bool = true;
    /// From a number [`json_numbers::read_into`] scanned, as the `visit_*` serde_json would call
    /// reads it (`None`: not a `T`, and serde gives the reason).
    #[inline]
    fn from_number(n: Number<'_>) -> Option<Self> {
        match n {
            Number::U64(v) => Self::from_u64(v),
            Number::I64(v) => Self::from_i64(v),
            Number::Decimal(text) => Self::from_decimal(text),
        }
    }
    /// From a number serde_json reads as `f64` (only floats take one).
    fn from_decimal(_: Decimal<'_>) -> Option<Self> {
        None
    }
    /// Whether a binary value, TensorFlow Serving's `{"b64": "..."}`, is read (as
    /// [`Leaf::from_binary`] of its bytes).
    const BINARY: bool = false;
    /// From a binary value's bytes.
    fn from_binary(_: Vec<u8>) -> Option<Self> {
        None
    }
}

macro_rules! floats {
    ($($t:ty => $to:ident),*) => {$(
        impl Leaf for $t {
            const WANTED: &'static str = "number";
            // As `Value::as_f64`, then narrowed: the nearest value, as before.
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            fn from_i64(v: i64) -> Option<Self> { Some(v as f64 as $t) }
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            fn from_u64(v: u64) -> Option<Self> { Some(v as f64 as $t) }
            #[allow(clippy::cast_possible_truncation)]
            fn from_f64(v: f64) -> Option<Self> { Some(v as $t) }
            #[inline]
            fn from_decimal(d: Decimal<'_>) -> Option<Self> { d.$to() }
        }
    )*};
}
floats!(f32 => to_f32, f64 => to_f64);

macro_rules! halves {
    ($($t:ty),*) => {$(
        impl Leaf for $t {
            const WANTED: &'static str = "number";
            // The nearest half-precision value, as for FP32.
            #[allow(clippy::cast_precision_loss)]
            fn from_i64(v: i64) -> Option<Self> { Some(<$t>::from_f64(v as f64)) }
            #[allow(clippy::cast_precision_loss)]
            fn from_u64(v: u64) -> Option<Self> { Some(<$t>::from_f64(v as f64)) }
            fn from_f64(v: f64) -> Option<Self> { Some(<$t>::from_f64(v)) }
            fn from_decimal(d: Decimal<'_>) -> Option<Self> { d.to_f64().map(<$t>::from_f64) }
        }
    )*};
}
halves!(half::f16, half::bf16);

macro_rules! ints {
    ($($t:ty => $wanted:literal),*) => {$(
        impl Leaf for $t {
            const WANTED: &'static str = $wanted;
            fn from_i64(v: i64) -> Option<Self> { <$t>::try_from(v).ok() }
            // As `Value::as_i64`: an integer over `i64::MAX` is refused for every type.
            fn from_u64(v: u64) -> Option<Self> {
                i64::try_from(v).ok().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
ints!(i64 => "int64", i32 => "int32", i16 => "int16", i8 => "int8", u32 => "uint32", u16 => "uint16", u8 => "uint8");

/// UINT64 takes the whole unsigned range (past `i64::MAX` too).
impl Leaf for u64 {
    const WANTED: &'static str = "uint64";
    fn from_i64(v: i64) -> Option<Self> {
        u64::try_from(v).ok()
    }
    fn from_u64(v: u64) -> Option<Self> {
        Some(v)
    }
}

impl Leaf for bool {
    const WANTED: &'static str = "bool";
    const NUMERIC: bool = false;
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

/// BYTES: JSON strings, as Triton's clients send them (ONNX Runtime's strings end at a NUL,
/// so one holding a NUL is refused).
impl Leaf for String {
    const WANTED: &'static str = "string without NUL";
    const NUMERIC: bool = false;
    fn from_str(v: &str) -> Option<Self> {
        (!v.contains('\0')).then(|| v.to_owned())
    }
}

/// BYTES in KServe's v1 protocol (TensorFlow Serving's): JSON strings, or binary values
/// `{"b64": "..."}` (standard base64, padded or not) whose bytes are UTF-8 text, as kiln's
/// strings are; neither with a NUL.
pub(crate) struct Binary(pub(crate) String);

impl Leaf for Binary {
    const WANTED: &'static str = "string without NUL (or {\"b64\": ...} of one)";
    const NUMERIC: bool = false;
    const BINARY: bool = true;
    fn from_str(v: &str) -> Option<Self> {
        <String as Leaf>::from_str(v).map(Self)
    }
    fn from_binary(v: Vec<u8>) -> Option<Self> {
        String::from_utf8(v)
            .ok()
            .filter(|v| !v.contains('\0'))
            .map(Self)
    }
}

/// The text of a binary value's `b64` member: `Some` if `map` is exactly `{"b64": "<text>"}`
/// (its key read, escaped or not), `None` for any other object. The text is borrowed from the
/// body unless it holds escapes: a 32 MiB value is not copied whole before it is decoded.
fn binary_text<'de, A: de::MapAccess<'de>>(map: &mut A) -> Result<Option<Text<'de>>, A::Error> {
    match map.next_key::<Text<'de>>()? {
        Some(key) if key.0 == "b64" => {}
        _ => return Ok(None),
    }
    let Ok(text) = map.next_value::<Text<'de>>() else {
        return Ok(None);
    };
    Ok(map.next_key::<de::IgnoredAny>()?.is_none().then_some(text))
}

/// A JSON string, borrowed from the text it was read from when it has no escapes.
struct Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(v.to_owned().into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// The leaves of `raw` (one JSON value: an array nested any way, or a single leaf), row-major,
/// as `T`s; at most `limit` of them.
///
/// Numeric types try [`json_numbers::read_into`] first; serde decides the rest.
///
/// # Errors
/// [`Refusal::TooMany`] at the first value past `limit`, [`Refusal::NotA`] at the first value
/// that is not a `T`, [`Refusal::Malformed`] for nesting deeper than 128 or a number out of
/// range.
#[cfg(test)]
pub(crate) fn read<T: Leaf>(raw: &str, limit: usize) -> Result<Vec<T>, Refusal> {
    let mut out = Vec::with_capacity(capacity(raw, limit));
    read_into(raw, limit, &mut out).map(|()| out)
}

/// The room to reserve for at most `limit` values of the text `raw`: each value takes at
/// least one byte and a comma, so the text bounds the count too, and a shape that overstates
/// its data reserves no more than the data could fill.
pub(crate) fn capacity(raw: &str, limit: usize) -> usize {
    limit.min(raw.len().div_ceil(2))
}

/// [`read`], appending to `out` (at most `limit` values).
///
/// # Errors
/// As [`read`]'s; `out` then holds some of the values.
pub(crate) fn read_into<T: Leaf>(raw: &str, limit: usize, out: &mut Vec<T>) -> Result<(), Refusal> {
    if T::NUMERIC && json_numbers::read_into(raw, limit, out).is_some() {
        return Ok(());
    }
    read_with_serde(raw, limit, out)
}

/// [`read_into`] through serde's visitor: every refusal, and whatever the fast path left.
fn read_with_serde<T: Leaf>(raw: &str, limit: usize, out: &mut Vec<T>) -> Result<(), Refusal> {
    let mut refusal = None;
    let mut de = serde_json::Deserializer::from_str(raw);
    let flatten = Flatten {
        limit: out.len() + limit,
        out,
        refusal: &mut refusal,
    };
    match flatten.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        // Refused at a non-finite word (which serde cannot read) where a float does not
        // belong: named.
        Err(e) => Err(refusal.unwrap_or_else(|| {
            let word = json_numbers::word_at(raw.as_bytes(), &e).and_then(|w| raw.get(w));
            match word {
                Some(word) if T::from_f64(f64::NAN).is_none() => {
                    Refusal::NotA(word.to_owned(), T::WANTED)
                }
                _ => Refusal::Malformed(e),
            }
        })),
    }
}

/// The seed (and visitor) that appends one JSON value's leaves to `out`. A refusal is kept in
/// `refusal` and the parse stopped with a blank serde error, so the caller can tell our reason
/// from serde_json's.
struct Flatten<'v, T> {
    out: &'v mut Vec<T>,
    limit: usize,
    refusal: &'v mut Option<Refusal>,
}

impl<T: Leaf> Flatten<'_, T> {
    fn leaf<E: de::Error>(self, value: Option<T>, shown: impl FnOnce() -> String) -> Result<(), E> {
        if self.out.len() == self.limit {
            *self.refusal = Some(Refusal::TooMany);
            return Err(E::custom("refused"));
        }
        match value {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => {
                *self.refusal = Some(Refusal::NotA(shown(), T::WANTED));
                Err(E::custom("refused"))
            }
        }
    }
}

impl<'de, T: Leaf> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Leaf> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}s", T::WANTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten {
            out,
            limit,
            refusal,
        } = self;
        while let Some(()) = seq.next_element_seed(Flatten {
            out: &mut *out,
            limit,
            refusal: &mut *refusal,
        })? {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(T::from_i64(v), || v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(T::from_u64(v), || v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(T::from_f64(v), || serde_json::Value::from(v).to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(T::from_bool(v), || v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(T::from_str(v), || {
            let mut shown: String = v.chars().take(32).collect();
            if shown.len() < v.len() {
                shown.push('…');
            }
            serde_json::Value::from(shown).to_string()
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(None, || "null".to_owned())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if T::BINARY {
            if let Some(Text(text)) = binary_text(&mut map)? {
                let shown = || {
                    let mut shown: String = text.chars().take(32).collect();
                    if shown.len() < text.len() {
                        shown.push('…');
                    }
                    format!("{{\"b64\": {}}}", serde_json::Value::from(shown))
                };
                let why = match BASE64.decode(text.as_bytes()) {
                    Err(e) => format!("{} is not base64: {e}", shown()),
                    Ok(bytes) => match T::from_binary(bytes) {
                        Some(v) => return self.leaf(Some(v), String::new),
                        None => format!(
                            "{} does not hold UTF-8 text without NUL: kiln's BYTES tensors hold \
                             text, so binary data (an image's bytes, say) is sent as a UINT8 \
                             tensor",
                            shown()
                        ),
                    },
                };
                *self.refusal = Some(Refusal::Binary(why));
                return Err(de::Error::custom("refused"));
            }
        }
        self.leaf(None, || "an object".to_owned())
    }
}

/// A tensor's data as one flat JSON array, written from the typed values (FP32 widened to
/// f64, as `serde_json::Value` writes it; NaN and infinities as `null`: Triton writes `NaN`,
/// `Infinity` and `-Infinity`, which are not JSON, and KServe's client (`orjson`) and every
/// strict parser refuse the whole answer for them. The binary data extension and gRPC carry
/// them exactly).
#[derive(Debug)]
pub struct Values(pub TensorData);

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            TensorData::F32(v) => s.collect_seq(v.iter().map(|&x| f64::from(x))),
            TensorData::F64(v) => s.collect_seq(v),
            TensorData::I64(v) => s.collect_seq(v),
            TensorData::I32(v) => s.collect_seq(v),
            TensorData::I8(v) => s.collect_seq(v),
            TensorData::U8(v) => s.collect_seq(v),
            TensorData::Bool(v) => s.collect_seq(v),
            TensorData::I16(v) => s.collect_seq(v),
            TensorData::U16(v) => s.collect_seq(v),
            TensorData::U32(v) => s.collect_seq(v),
            TensorData::U64(v) => s.collect_seq(v),
            TensorData::F16(v) => s.collect_seq(v.iter().map(|&x| x.to_f64())),
            TensorData::Bf16(v) => s.collect_seq(v.iter().map(|&x| x.to_f64())),
            TensorData::String(v) => s.collect_seq(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_flat_and_irregular_arrays_read_row_major() {
        let read = |raw: &str| read::<i64>(raw, 9).expect(raw);
        assert_eq!(read("[1,2,3,4]"), [1, 2, 3, 4]);
        assert_eq!(read("[[1,2],[3,4]]"), [1, 2, 3, 4]);
        assert_eq!(read("[[1],2,[[3]],[],4]"), [1, 2, 3, 4]);
        assert_eq!(read("7"), [7]);
        assert!(read("[]").is_empty());
    }

    #[test]
    fn values_are_read_as_value_read_them() {
        assert_eq!(
            read::<f32>("[1, -2, 1.5, 1e3]", 9).expect("f32"),
            [1.0, -2.0, 1.5, 1e3]
        );
        assert_eq!(read::<u8>("[0, 255]", 9).expect("u8"), [0, 255]);
        assert_eq!(
            read::<bool>("[true, false]", 9).expect("bool"),
            [true, false]
        );
        fn not_a<T: fmt::Debug>(r: Result<Vec<T>, Refusal>) -> String {
            match r {
                Err(Refusal::NotA(v, w)) => format!("{v} is not a {w}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(not_a(read::<i8>("[1, 300]", 9)), "300 is not a int8");
        assert_eq!(not_a(read::<i64>("[1.0]", 9)), "1.0 is not a int64");
        assert_eq!(
            not_a(read::<i64>("[18446744073709551615]", 9)),
            "18446744073709551615 is not a int64"
        );
        assert_eq!(not_a(read::<f32>("[null]", 9)), "null is not a number");
        assert_eq!(not_a(read::<f32>("[\"1\"]", 9)), "\"1\" is not a number");
        assert_eq!(not_a(read::<bool>("[1]", 9)), "1 is not a bool");
        assert_eq!(
            not_a(read::<f64>("[{\"a\": 1}]", 9)),
            "an object is not a number"
        );
    }

    #[test]
    fn reading_stops_at_the_limit_and_at_bad_json() {
        assert!(matches!(read::<f32>("[1,2,3]", 2), Err(Refusal::TooMany)));
        assert!(matches!(
            read::<f32>("[[1,2],[3]]", 2),
            Err(Refusal::TooMany)
        ));
        assert_eq!(read::<f32>("[1,2]", 2).expect("at the limit").capacity(), 2);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(read::<f32>(&deep, 9), Err(Refusal::Malformed(_))));
        assert!(matches!(
            read::<f64>("[1e999]", 9),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn a_shape_that_overstates_its_data_reserves_only_what_the_text_holds() {
        assert!(read::<f64>("[1,2]", 1 << 24).expect("two").capacity() <= 3);
    }

    #[test]
    fn values_write_as_value_wrote_them() {
        let json = |d| serde_json::to_string(&Values(d)).expect("json");
        let old = |v: serde_json::Value| v.to_string();
        let f = vec![0.1f32, -2.5, 1e-7];
        assert_eq!(json(TensorData::F32(f.clone())), old(serde_json::json!(f)));
        // Not finite: `null`, strict JSON (though read as `NaN`, `Infinity`, `-Infinity`).
        let odd = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        assert_eq!(
            json(TensorData::F64([&[0.1][..], &odd].concat())),
            "[0.1,null,null,null]"
        );
        let odd32 = odd.map(|x| x as f32).to_vec();
        assert_eq!(json(TensorData::F32(odd32)), "[null,null,null]");
        let half = odd.map(half::f16::from_f64).to_vec();
        assert_eq!(json(TensorData::F16(half)), "[null,null,null]");
        assert_eq!(json(TensorData::I64(vec![-1, 2])), "[-1,2]");
        assert_eq!(json(TensorData::U8(vec![0, 255])), "[0,255]");
        assert_eq!(json(TensorData::Bool(vec![true, false])), "[true,false]");
    }

    /// [`read_with_serde`] into a new vector.
    fn serde_read<T: Leaf>(raw: &str, limit: usize) -> Result<Vec<T>, Refusal> {
        let mut out = Vec::new();
        read_with_serde(raw, limit, &mut out).map(|()| out)
    }

    /// What the fast path gives, if anything, must be what serde gives, bit for bit.
    fn agree<T: Leaf + fmt::Debug>(raw: &str, bits: impl Fn(&T) -> u64) {
        if let Some(fast) = json_numbers::read::<T>(raw, 1 << 20) {
            let slow = serde_read::<T>(raw, 1 << 20)
                .unwrap_or_else(|e| panic!("{raw}: fast {fast:?}, serde {e:?}"));
            let (fast, slow): (Vec<u64>, Vec<u64>) = (
                fast.iter().map(&bits).collect(),
                slow.iter().map(&bits).collect(),
            );
            assert_eq!(fast, slow, "{raw}");
        }
    }

    /// `agree` for every numeric type.
    fn agree_all(raw: &str) {
        agree::<f32>(raw, |v| u64::from(v.to_bits()));
        agree::<f64>(raw, |v| v.to_bits());
        agree::<half::f16>(raw, |v| u64::from(v.to_bits()));
        agree::<half::bf16>(raw, |v| u64::from(v.to_bits()));
        agree::<i64>(raw, |&v| v as u64);
        agree::<u64>(raw, |&v| v);
        agree::<i32>(raw, |&v| v as u64);
        agree::<u32>(raw, |&v| u64::from(v));
        agree::<i16>(raw, |&v| v as u64);
        agree::<u16>(raw, |&v| u64::from(v));
        agree::<i8>(raw, |&v| v as u64);
        agree::<u8>(raw, |&v| u64::from(v));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// FP32 values as clients write them (widened to f64, shortest form): the fast
        /// path takes every one and reads it as serde does.
        #[test]
        fn fp32_as_clients_write_them_is_read_fast_and_as_serde_reads_it(
            v in proptest::collection::vec(
                proptest::num::f32::NORMAL
                    | proptest::num::f32::SUBNORMAL
                    | proptest::num::f32::ZERO,
                0..64,
            ),
            spaced in proptest::bool::ANY,
        ) {
            let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let raw = serde_json::to_string(&wide).expect("json");
            let raw = if spaced { raw.replace(',', ", ") } else { raw };
            let fast = json_numbers::read::<f32>(&raw, v.len()).expect("the fast path takes it");
            proptest::prop_assert_eq!(
                fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            agree_all(&raw);
        }

        /// Any number JSON allows, of any length and exponent.
        #[test]
        fn any_json_number_is_read_as_serde_reads_it(
            negative in proptest::bool::ANY,
            int in "(0|[1-9][0-9]{0,24})",
            frac in proptest::option::of("[0-9]{1,24}"),
            exp in proptest::option::of((
                proptest::sample::select(vec!["e", "E"]),
                proptest::sample::select(vec!["", "+", "-"]),
                0u32..400,
            )),
        ) {
            let mut raw = String::new();
            if negative { raw.push('-'); }
            raw.push_str(&int);
            if let Some(f) = frac { raw.push('.'); raw.push_str(&f); }
            if let Some((e, sign, n)) = exp { raw.push_str(&format!("{e}{sign}{n}")); }
            agree_all(&raw);
            agree_all(&format!("[{raw}, [{raw}], -1, 0]"));
        }

        /// Integers at and past every type's edges.
        #[test]
        fn integers_are_read_as_serde_reads_them(
            v in proptest::num::i64::ANY,
            u in proptest::num::u64::ANY,
            small in -70_000i64..70_000,
        ) {
            agree_all(&format!("[{v},{u},{small}]"));
        }

        /// Nesting and whitespace anywhere JSON allows it.
        #[test]
        fn nesting_and_whitespace_are_read_as_serde_reads_them(
            tokens in proptest::collection::vec(0u8..6, 0..40),
            ws in proptest::collection::vec(
                proptest::sample::select(vec!["", " ", "\n", "\t", "\r", "  "]),
                40,
            ),
        ) {
            // A random walk over arrays: open, close, number; commas where they belong.
            let mut raw = String::from("[");
            let (mut depth, mut first) = (1, true);
            for (i, t) in tokens.iter().enumerate() {
                raw.push_str(ws[i]);
                match t {
                    0 if depth < 8 => {
                        if !first {
                            raw.push(',');
                        }
                        raw.push('[');
                        depth += 1;
                        first = true;
                    }
                    1 if depth > 1 => { raw.push(']'); depth -= 1; first = false; }
                    _ => {
                        if !first {
                            raw.push(',');
                        }
                        raw.push_str(&format!("{}", i as f64 * 0.25 - 3.0));
                        first = false;
                    }
                }
            }
            raw.push_str(&"]".repeat(depth));
            agree_all(&raw);
            proptest::prop_assert!(json_numbers::read::<f32>(&raw, 1 << 20).is_some(), "{}", raw);
        }
    }

    #[test]
    fn what_the_fast_path_leaves_to_serde_is_refused_or_read_as_before() {
        for raw in [
            "",
            " ",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[[1]",
            "[1]]",
            "1 1",
            "[01]",
            "[1.]",
            "[-]",
            "[+1]",
            "[.5]",
            "[1e]",
            // (`NaN`, `Infinity` and `-Infinity` are read only by the fast path: below.)
            "[nan]",
            "[Inf]",
            "[true]",
            "[\"1\"]",
            "[null]",
            "[1,2",
            "[1]x",
            "[1e999]",
            "[-1e999]",
            "[{}]",
            "[1,-0]",
            "[1e-400]",
            "[123456789012345678901234567890]",
            "[0.1234567890123456789012345]",
            // Around the halfway point between the f32s 1 and 1 + 2^-23 (1 + 2^-24, an f64).
            "[1.0000000596046447]",
            "[1.0000000596046448]",
            "[1.00000005960464478]",
            "[1.0000000596046446]",
            "[-1.0000000596046448]",
            "[3.4028235677973366e38]",
        ] {
            agree_all(raw);
            // The same refusals, and the same readings, as ever.
            let fast_or_serde = format!("{:?}", read::<f32>(raw, 9));
            let serde = format!("{:?}", serde_read::<f32>(raw, 9));
            assert_eq!(fast_or_serde, serde, "{raw}");
        }
        let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        assert_eq!(
            format!("{:?}", read::<f32>(&deep, 9)),
            format!("{:?}", serde_read::<f32>(&deep, 9))
        );
        assert!(matches!(read::<f32>("[1,2,3]", 2), Err(Refusal::TooMany)));
        // The one reading serde does not share: non-finite values into floats, as Triton
        // reads them; into anything else, serde's refusal as before.
        let odd = read::<f32>("[NaN, Infinity, -Infinity]", 9).expect("read");
        assert!(odd[0].is_nan() && odd[1..] == [f32::INFINITY, f32::NEG_INFINITY]);
        assert!(serde_read::<f32>("[NaN]", 9).is_err());
        assert_eq!(
            format!("{:?}", read::<i32>("[NaN]", 9)),
            format!("{:?}", serde_read::<i32>("[NaN]", 9))
        );
    }
}
