//! The other parts of a request a client can make big, read without building what kiln does
//! not use: `parameters` (as a `serde_json::Value`, a 32 MiB array hidden in one cost as much
//! as the same array in `data` did) and `shape` (8 bytes a dim, twice over).
//!
//! [`Parameters`] keeps the parameters kiln reads (`binary_data_size`, `binary_data`,
//! `binary_data_output`, `timeout`, `priority`, `classification`) and skips every other one
//! unread;
//! [`dims`] stops a shape at [`MAX_DIMS`].

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The most dims a request tensor's shape may have; a longer shape is refused as it is read
/// (stored, each dim would cost 4 times its text).
pub const MAX_DIMS: usize = 64;

/// A shape: a JSON array of at most [`MAX_DIMS`] integers (for `deserialize_with`).
///
/// # Errors
/// Not an array of `i64`s, or more than [`MAX_DIMS`] of them.
pub(crate) fn dims<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    struct Dims;
    impl<'de> Visitor<'de> for Dims {
        type Value = Vec<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of at most {MAX_DIMS} integers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i64>, A::Error> {
            let mut dims = Vec::new();
            while let Some(d) = seq.next_element()? {
                if dims.len() == MAX_DIMS {
                    return Err(de::Error::custom(format!(
                        "a shape has at most {MAX_DIMS} dims"
                    )));
                }
                dims.push(d);
            }
            Ok(dims)
        }
    }
    d.deserialize_seq(Dims)
}

/// The `parameters` of a request, an input or an output, as far as kiln reads them. Every
/// other parameter is skipped unread, and one of these of another JSON type counts as absent
/// (as `Value::as_u64` / `as_bool` read it); `parameters` that are not an object have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parameters {
    /// An input's `binary_data_size`: its bytes follow the JSON (binary-data extension).
    pub binary_data_size: Option<u64>,
    /// An output's `binary_data`: return it in binary.
    pub binary_data: Option<bool>,
    /// The request's `binary_data_output`: return every output in binary.
    pub binary_data_output: Option<bool>,
    /// The request's `timeout`, in microseconds (Triton's schedule-policy parameter, what
    /// `tritonclient`'s `infer(timeout=…)` sends): its deadline; 0 is none.
    pub timeout: Option<u64>,
    /// The request's `priority` (Triton's schedule-policy parameter, what `tritonclient`'s
    /// `infer(priority=…)` sends): 1 is the highest level, 0 the default.
    pub priority: Option<u64>,
    /// An output's `classification`: answer its top classes instead of its values (Triton's
    /// classification extension, what `tritonclient`'s `class_count` sends).
    pub classification: Option<Classes>,
}

/// An output's `classification` parameter, as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classes {
    /// A whole number of classes (0: none asked for, the output's values).
    Count(u64),
    /// Anything else (a negative or fractional number, a string, …): refused, not taken for
    /// absent, since the answer's type and shape hang on it.
    Invalid,
}

impl Classes {
    /// The parameter given, as a whole number if it is one (`None`: it is something else).
    pub(crate) fn of(count: Option<u64>) -> Self {
        count.map_or(Self::Invalid, Self::Count)
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParametersVisitor)
    }
}

struct ParametersVisitor;

impl<'de> Visitor<'de> for ParametersVisitor {
    type Value = Parameters;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
        let mut p = Parameters::default();
        while let Some(key) = map.next_key::<Key>()? {
            // As in a JSON object read whole, the last of a repeated key wins.
            match key {
                Key::BinaryDataSize => p.binary_data_size = map.next_value::<Scalar>()?.u64(),
                Key::BinaryData => p.binary_data = map.next_value::<Scalar>()?.bool(),
                Key::BinaryDataOutput => {
                    p.binary_data_output = map.next_value::<Scalar>()?.bool();
                }
                Key::Timeout => p.timeout = map.next_value::<Scalar>()?.u64(),
                Key::Priority => p.priority = map.next_value::<Scalar>()?.u64(),
                Key::Classification => {
                    p.classification = Some(Classes::of(map.next_value::<Scalar>()?.u64()));
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parameters, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Parameters::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }
}

/// A parameter's name: one kiln reads, or another.
enum Key {
    BinaryDataSize,
    BinaryData,
    BinaryDataOutput,
    Timeout,
    Priority,
    Classification,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "binary_data_size" => Key::BinaryDataSize,
                    "binary_data" => Key::BinaryData,
                    "binary_data_output" => Key::BinaryDataOutput,
                    "timeout" => Key::Timeout,
                    "priority" => Key::Priority,
                    "classification" => Key::Classification,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// A parameter's value, if it is one of the kinds kiln reads; anything else skipped unread.
enum Scalar {
    U64(u64),
    Bool(bool),
    Other,
}

impl Scalar {
    fn u64(self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(v),
            _ => None,
        }
    }

    fn bool(self) -> Option<bool> {
        match self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Scalar::Other)
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_as_value_read_them_and_the_rest_skipped() {
        let p = |json: &str| serde_json::from_str::<Parameters>(json).expect(json);
        assert_eq!(
            p(
                r#"{"binary_data_size": 8, "pad": [[1, 2], {"a": "b"}], "binary_data": true, "binary_data_output": false, "timeout": 1500, "priority": 2, "classification": 3}"#
            ),
            Parameters {
                binary_data_size: Some(8),
                binary_data: Some(true),
                binary_data_output: Some(false),
                timeout: Some(1500),
                priority: Some(2),
                classification: Some(Classes::Count(3)),
            }
        );
        // Of another type: absent, as `as_u64` / `as_bool` saw it; the last repeat wins.
        for json in [
            r#"{"binary_data_size": -1, "binary_data": 1}"#,
            r#"{"binary_data_size": 8.0, "binary_data": "true"}"#,
            r#"{"binary_data_size": "8", "binary_data": null}"#,
            r#"{"binary_data_size": [8], "binary_data": {"x": true}}"#,
            r#"{"binary_data_size": 8, "binary_data_size": null}"#,
            "[1, 2]",
            "null",
            "7",
        ] {
            assert_eq!(p(json), Parameters::default(), "{json}");
        }
        assert!(serde_json::from_str::<Parameters>(r#"{"binary_data_size": }"#).is_err());
        // But a classification of another type is there, and refused later.
        for json in ["-1", "3.0", "\"3\"", "true", "null"] {
            let given = format!(r#"{{"classification": {json}}}"#);
            assert_eq!(p(&given).classification, Some(Classes::Invalid), "{json}");
        }
    }

    #[test]
    fn a_shape_stops_at_max_dims() {
        #[derive(Deserialize)]
        struct S {
            #[serde(deserialize_with = "dims")]
            shape: Vec<i64>,
        }
        let shape = |n: usize| format!(r#"{{"shape": [{}]}}"#, vec!["1"; n].join(","));
        let ok = serde_json::from_str::<S>(&shape(MAX_DIMS)).expect("at the limit");
        assert_eq!(ok.shape.len(), MAX_DIMS);
        let e = serde_json::from_str::<S>(&shape(MAX_DIMS + 1))
            .err()
            .expect("over the limit");
        assert!(e.to_string().contains("at most 64 dims"), "{e}");
    }
}
