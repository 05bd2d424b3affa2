//! Property-based fuzzing of everything the server decodes from a client's body
//! ([`kiln::http::protocol::decode`]: v2 JSON tensors and the binary-data extension).
//! Arbitrary bytes, JSON-shaped garbage and mutated valid requests must give a tensor or an
//! `InputError`, never a panic, an allocation the shape merely claims, or a tensor whose
//! data disagrees with its shape. Valid requests decode to exactly what was encoded.
//!
//! `make test` runs proptest's default 256 cases per property; `make reliability` runs them
//! with `PROPTEST_CASES` raised (see RELIABILITY.md). A failure is saved by proptest under
//! `tests/fuzz.proptest-regressions` and replayed first on every later run.

use kiln::http::protocol::{decode, InputError, Limits};
use proptest::prelude::*;

const MAX_ELEMENTS: usize = 1 << 16;
/// Of a string input: fewer, so random shapes reach that limit too.
const MAX_STRINGS: usize = 1 << 10;
const LIMITS: Limits = Limits {
    elements: MAX_ELEMENTS,
    strings: MAX_STRINGS,
};

fn check(body: &[u8], header: Option<&str>) {
    match decode(body, header, LIMITS) {
        Ok((request, tensors)) => {
            assert_eq!(request.inputs.len(), tensors.len());
            let strings: usize = tensors
                .iter()
                .filter(|(_, t)| t.element_type() == kiln::ElementType::String)
                .map(|(_, t)| t.len())
                .sum();
            assert!(strings <= MAX_STRINGS, "{strings} strings in one request");
            for (_, t) in &tensors {
                assert_eq!(t.shape().iter().product::<usize>(), t.len());
                let limit = if t.element_type() == kiln::ElementType::String {
                    MAX_STRINGS
                } else {
                    MAX_ELEMENTS
                };
                assert!(t.len() <= limit);
            }
        }
        Err(InputError::Invalid(m) | InputError::TooLarge(m)) => assert!(!m.is_empty()),
    }
}

/// A JSON value from a small grammar that reaches the decoder's corners: numbers of every
/// kind, nested arrays, strings, the field names the protocol uses.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("FP32"),
            Just("INT64"),
            Just("INT32"),
            Just("UINT8"),
            Just("BOOL"),
            Just("FP64"),
            Just("INT8"),
            Just("BYTES"),
            Just("FP16")
        ]
        .prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("inputs".to_owned()),
                    Just("name".to_owned()),
                    Just("shape".to_owned()),
                    Just("datatype".to_owned()),
                    Just("data".to_owned()),
                    Just("parameters".to_owned()),
                    Just("binary_data_size".to_owned()),
                    Just("outputs".to_owned()),
                    Just("id".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A structurally valid request: one input, a shape, a datatype, values that may or may not
/// fit the shape, as JSON data or binary bytes.
fn request() -> impl Strategy<Value = (Vec<u8>, Option<String>, bool)> {
    (
        prop::collection::vec(0i64..6, 0..4),
        prop_oneof![
            Just("FP32"),
            Just("INT64"),
            Just("INT32"),
            Just("UINT8"),
            Just("BOOL")
        ],
        prop::collection::vec(-300i64..300, 0..40),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(shape, dtype, values, binary, fits)| {
            let n: i64 = shape.iter().product();
            let mut values = values;
            if fits {
                values.resize(usize::try_from(n).unwrap_or(0), 1);
            }
            let fits = i64::try_from(values.len()).ok() == Some(n);
            let as_json: Vec<serde_json::Value> = values
                .iter()
                .map(|&v| match dtype {
                    "FP32" => serde_json::Value::from(v as f64 / 7.0),
                    "BOOL" => serde_json::Value::from(v % 2 == 0),
                    _ => serde_json::Value::from(v),
                })
                .collect();
            if binary {
                let width = match dtype {
                    "FP32" | "INT32" => 4,
                    "INT64" => 8,
                    _ => 1,
                };
                let bytes: Vec<u8> = values
                    .iter()
                    .flat_map(|&v| v.to_le_bytes()[..width].to_vec())
                    .collect();
                let header = serde_json::json!({"inputs": [{"name": "x", "shape": shape,
                    "datatype": dtype, "parameters": {"binary_data_size": bytes.len()}}]})
                .to_string();
                let len = header.len().to_string();
                let mut body = header.into_bytes();
                body.extend(bytes);
                (body, Some(len), fits)
            } else {
                let body = serde_json::json!({"inputs": [{"name": "x", "shape": shape,
                    "datatype": dtype, "data": as_json}]})
                .to_string()
                .into_bytes();
                (body, None, fits)
            }
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512),
                                   header in prop::option::of("[0-9 ]{0,6}|[a-z]{0,3}")) {
        check(&body, header.as_deref());
    }

    #[test]
    fn json_shaped_garbage_never_panics(v in json_value()) {
        let body = serde_json::json!({"inputs": [v.clone()]}).to_string();
        check(body.as_bytes(), None);
        check(v.to_string().as_bytes(), None);
    }

    #[test]
    fn valid_requests_decode_exactly_and_mismatches_are_refused((body, header, fits) in request()) {
        match decode(&body, header.as_deref(), LIMITS) {
            Ok((_, tensors)) => {
                prop_assert!(fits, "a tensor whose data does not fit its shape was accepted");
                let t = &tensors[0].1;
                let n = t.len();
                prop_assert_eq!(t.shape().iter().product::<usize>(), n);
                if let kiln::TensorSlice::I64(v) = t.data() {
                    prop_assert_eq!(v.len(), n);
                }
            }
            Err(InputError::Invalid(m)) => {
                // Values out of a type's range (e.g. -5 as UINT8) are refused too.
                prop_assert!(!m.is_empty());
            }
            Err(InputError::TooLarge(m)) => prop_assert!(false, "too large: {m}"),
        }
    }

    #[test]
    fn mutated_valid_requests_never_panic((body, header, _) in request(),
                                          flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                          cut in any::<prop::sample::Index>()) {
        let mut body = body;
        for (at, byte) in flips {
            if !body.is_empty() {
                let i = at.index(body.len());
                body[i] = byte;
            }
        }
        check(&body, header.as_deref());
        let cut = cut.index(body.len() + 1);
        check(&body[..cut], header.as_deref());
    }
}

#[test]
fn claimed_shapes_are_not_allocated() {
    // A shape claiming 2^62 elements with two values: refused as too large before any
    // allocation the claim would need.
    let body = br#"{"inputs":[{"name":"x","shape":[4611686018427387904,1],"datatype":"FP32","data":[1,2]}]}"#;
    assert!(matches!(
        decode(body, None, LIMITS),
        Err(InputError::TooLarge(_))
    ));
    let body = br#"{"inputs":[{"name":"x","shape":[65536,65536],"datatype":"FP32","parameters":{"binary_data_size":4}}]}abcd"#;
    assert!(decode(body, Some("94"), LIMITS).is_err());
}
