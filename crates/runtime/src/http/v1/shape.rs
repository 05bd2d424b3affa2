//! The shape of a JSON value read as a tensor — its arrays' lengths, outermost first — found
//! by one scan of its text, before any value is read: v1 bodies name no shapes, so the shape
//! is what the nesting says, and a ragged value is refused with where it is ragged rather than
//! padded or flattened. TensorFlow Serving's binary value, `{"b64": "..."}`, is one value.

/// The shape of one JSON value (valid JSON, as serde found it): its arrays' lengths, outermost
/// first; `[]` for a scalar.
///
/// # Errors
/// Why it is not a tensor, as a phrase after "instance N": ragged arrays, values at different
/// depths, an object (other than a binary value), nesting past `max_rank` arrays.
pub(super) fn shape_of(raw: &str, max_rank: usize) -> Result<Vec<usize>, String> {
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
            b'{' if binary_end(b, i).is_none() => {
                return Err(
                    "holds an object: tensor values are numbers, booleans, strings \
                            or binary values ({\"b64\": \"...\"})"
                        .to_owned(),
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

/// Whether `text` (valid JSON) starts with a binary value, `{"b64": "..."}`.
pub(super) fn is_binary(text: &str) -> bool {
    binary_end(text.as_bytes(), 0).is_some()
}

/// The index after the binary value `{"b64": "..."}` starting at `b[i]` (valid JSON), if that
/// is what starts there; `None` for any other value.
fn binary_end(b: &[u8], i: usize) -> Option<usize> {
    let blank = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let expect = |i: usize, what: &[u8]| b.get(i..i + what.len()).filter(|t| *t == what).map(drop);
    expect(i, b"{")?;
    let i = blank(i + 1);
    expect(i, b"\"")?;
    let key_end = leaf_end(b, i);
    let key = &b[i..key_end];
    // The key as serde reads it: escaped (`"\u0062\u0036\u0034"`) it is still `b64`.
    let b64 = key == b"\"b64\""
        || (key.contains(&b'\\')
            && serde_json::from_slice::<String>(key).is_ok_and(|k| k == "b64"));
    if !b64 {
        return None;
    }
    let i = blank(key_end);
    expect(i, b":")?;
    let i = blank(i + 1);
    expect(i, b"\"")?;
    let i = blank(leaf_end(b, i));
    expect(i, b"}")?;
    Some(i + 1)
}

/// The index after the value (a string, a literal or a binary value) starting at `b[i]`.
fn leaf_end(b: &[u8], mut i: usize) -> usize {
    if let Some(end) = binary_end(b, i) {
        return end;
    }
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

#[cfg(test)]
mod tests {
    use crate::http::json_fields::MAX_DIMS;

    fn shape_of(raw: &str) -> Result<Vec<usize>, String> {
        super::shape_of(raw, MAX_DIMS)
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
        // Binary values are values; other objects are not.
        assert_eq!(shape_of(r#"{"b64": "Y2F0"}"#), Ok(vec![]));
        assert_eq!(
            shape_of(r#"[[{ "b64" : "a}\"" }, "x"], [{"b64":""}, 1]]"#),
            Ok(vec![2, 2])
        );
        assert!(super::is_binary(r#"{"b64": "Y2F0"} ,"#));
        assert!(super::is_binary(r#"{"\u0062\u0036\u0034": "Y2F0"}"#));
        assert!(!super::is_binary(r#"{"b\u0036": "Y2F0"}"#));
        for object in [
            r#"[{"b64": "Y2F0", "x": 1}]"#,
            r#"[{"b64": 1}]"#,
            r#"[{"x": "Y2F0"}]"#,
            r#"[{}]"#,
        ] {
            assert!(
                shape_of(object).expect_err(object).contains("object"),
                "{object}"
            );
        }
        let deep = format!("{}1{}", "[".repeat(MAX_DIMS + 1), "]".repeat(MAX_DIMS + 1));
        assert!(shape_of(&deep).expect_err("deep").contains("deep"));
    }
}
