//! The `inputs[i].data` arrays of a JSON request, found before serde parses it, so serde never
//! scans them.
//!
//! Why: serde_json keeps each `data` as a `RawValue`, and to find where one ends it reads every
//! number in it (about 21 ns a value: a quarter of the server's CPU on a 250 KB image body),
//! before `json_numbers` reads them all again. Here a short walk over the request's structure
//! (a few hundred bytes: keys, names, shapes, parameters) finds each input's `data` array and
//! a SIMD search for brackets (`memchr`) finds its end; serde then parses a copy of the request
//! with each such array replaced by `[]`, and each input's values are read from the original
//! text once serde has given its shape and datatype.
//!
//! Sure or nothing: an input's `data` array holding a `"` (strings, objects) or bytes that
//! are not ASCII, or nesting past [`MAX_DEPTH`], is left in place for serde (the other inputs'
//! arrays are still cut); a key with an escape, or anything else that is not the structure
//! this walk expects, gives `None`, and serde parses the body as it always did. The copy differs
//! from the body only inside arrays found bracket-balanced and free of strings, and each of
//! those is read (and so checked) before a request is accepted; a request refused this way is
//! decoded again without the cut (`protocol::decode`), so refusals read exactly as before.

use std::ops::Range;

/// Deepest nesting walked (serde_json's own limit is 128).
const MAX_DEPTH: usize = 100;

/// A request's JSON with its inputs' `data` arrays left out.
#[derive(Debug)]
pub(crate) struct Cut {
    /// The JSON with each cut array replaced by `[]`.
    pub(crate) json: Vec<u8>,
    /// Each cut array: the input's index in `inputs`, and where its text is in the original.
    pub(crate) data: Vec<(usize, Range<usize>)>,
}

/// `json` with its inputs' `data` arrays cut out, or `None` when there is none to cut or this
/// walk is not sure of the text (serde then reads it all).
pub(crate) fn cut(json: &[u8]) -> Option<Cut> {
    let mut w = Walk { b: json, i: 0 };
    let mut data = Vec::new();
    w.ws();
    w.object(0, |w, key| {
        if key == b"inputs" && w.peek()? == b'[' {
            w.inputs(&mut data)
        } else {
            w.value(1)
        }
    })?;
    w.ws();
    if w.i != json.len() || data.is_empty() {
        return None;
    }
    let cut_bytes: usize = data.iter().map(|(_, r)| r.len()).sum();
    let mut out = Vec::with_capacity(json.len() - cut_bytes + 2 * data.len());
    let mut from = 0;
    for (_, span) in &data {
        out.extend_from_slice(&json[from..span.start]);
        out.extend_from_slice(b"[]");
        from = span.end;
    }
    out.extend_from_slice(&json[from..]);
    Some(Cut { json: out, data })
}

/// A cursor over the text.
struct Walk<'b> {
    b: &'b [u8],
    i: usize,
}

impl Walk<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte, consumed.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// The object at the cursor, calling `member` with the cursor on each member's value
    /// (after its key, its `:` and whitespace); `member` must consume the value.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH || self.next()? != b'{' {
            return None;
        }
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let (b, start) = (self.b, self.i + 1);
            self.string()?;
            let key = &b[start..self.i - 1];
            // A key with an escape could spell `data` another way: not sure, so not ours.
            if key.contains(&b'\\') {
                return None;
            }
            self.ws();
            if self.next()? != b':' {
                return None;
            }
            self.ws();
            member(self, key)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The array at the cursor, calling `element` with the cursor on each element and its
    /// index; `element` must consume it.
    fn array(
        &mut self,
        depth: usize,
        mut element: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH || self.next()? != b'[' {
            return None;
        }
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        let mut index = 0;
        loop {
            element(self, index)?;
            index += 1;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// `inputs`: each object's `data` array is cut.
    fn inputs(&mut self, data: &mut Vec<(usize, Range<usize>)>) -> Option<()> {
        self.array(1, |w, index| {
            if w.peek()? != b'{' {
                return w.value(2);
            }
            w.object(2, |w, key| {
                if key == b"data" && w.peek()? == b'[' {
                    let start = w.i;
                    let Some(end) = array_end(w.b, start) else {
                        // Strings (a `BYTES` input), or text not sure to be numbers: left in
                        // place for serde, walked over; the other inputs' arrays are still cut.
                        return w.value(3);
                    };
                    w.i = end;
                    data.push((index, start..end));
                    Some(())
                } else {
                    w.value(3)
                }
            })
        })
    }

    /// Any value, skipped: its text is left for serde to check.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth, |w, _| w.value(depth + 1)),
            b'[' => self.array(depth, |w, _| w.value(depth + 1)),
            _ => {
                // A number, `true`, `false` or `null`: up to the next delimiter.
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    if matches!(c, b'"' | b'{' | b'[' | b':') {
                        return None;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// The string at the cursor (escapes skipped over, not read).
    fn string(&mut self) -> Option<()> {
        if self.next()? != b'"' {
            return None;
        }
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(());
            }
            self.i = at + 2;
        }
    }
}

/// The index after the array starting at `b[start]`, if it holds no string and only ASCII,
/// its brackets balanced within [`MAX_DEPTH`].
fn array_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = start;
    loop {
        let found = at + memchr::memchr3(b'[', b']', b'"', b.get(at..)?)?;
        match b[found] {
            b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
            }
            b']' => {
                depth -= 1;
                if depth == 0 {
                    let end = found + 1;
                    return b[start..end].is_ascii().then_some(end);
                }
            }
            _ => return None,
        }
        at = found + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_str(json: &str) -> Option<(String, Vec<(usize, String)>)> {
        cut(json.as_bytes()).map(|c| {
            (
                String::from_utf8(c.json).expect("utf-8"),
                c.data
                    .into_iter()
                    .map(|(i, r)| (i, json[r].to_owned()))
                    .collect(),
            )
        })
    }

    #[test]
    fn each_inputs_data_array_is_cut_and_nothing_else() {
        let json = r#" {"id": "a]\"[", "parameters": {"inputs": [{"data": [1]}]},
            "inputs": [{"name": "x", "data" : [[1, 2], [3e4, -5]], "shape": [2, 2]},
                       {"data": 7, "name": "y"}, 3, {"name": "z", "data": []}],
            "outputs": [{"name": "data", "data": [9]}]} "#;
        let (json_cut, data) = cut_str(json).expect("cut");
        assert_eq!(
            data,
            [(0, "[[1, 2], [3e4, -5]]".to_owned()), (3, "[]".to_owned())]
        );
        assert!(json_cut.contains(r#""data" : [], "shape""#), "{json_cut}");
        assert!(
            json_cut.contains(r#"{"inputs": [{"data": [1]}]}"#),
            "{json_cut}"
        );
        assert!(json_cut.contains(r#""data": 7"#), "{json_cut}");
        assert!(json_cut.contains(r#""data": [9]"#), "{json_cut}");
        let v: serde_json::Value = serde_json::from_str(&json_cut).expect("still JSON");
        assert_eq!(v["inputs"][0]["data"], serde_json::json!([]));
    }

    #[test]
    fn an_array_of_strings_is_left_to_serde_and_the_others_still_cut() {
        let json = r#"{"inputs": [{"name": "t", "data": ["a", "]b\"["]},
            {"name": "x", "data": [1, NaN]}, {"name": "u", "data": [1, "é"]}]}"#;
        let (json_cut, data) = cut_str(json).expect("cut");
        assert_eq!(data, [(1, "[1, NaN]".to_owned())]);
        let v: serde_json::Value = serde_json::from_str(&json_cut).expect("still JSON");
        assert_eq!(v["inputs"][0]["data"], serde_json::json!(["a", "]b\"["]));
        assert_eq!(v["inputs"][1]["data"], serde_json::json!([]));
        assert_eq!(v["inputs"][2]["data"], serde_json::json!([1, "é"]));
    }

    #[test]
    fn what_the_walk_is_not_sure_of_is_left_whole() {
        for json in [
            r#"{"inputs": [{"d\u0061ta": [1]}]}"#,
            r#"{"inputs": [{"data": ["a"]}]}"#,
            r#"{"inputs": [{"data": [{"a": 1}]}]}"#,
            r#"{"inputs": [{"data": [1, é]}]}"#,
            r#"{"inputs": [{"data": [1]}]} x"#,
            r#"{"inputs": [{"data": [1]}]"#,
            r#"{"inputs": [{"data": [1}]}"#,
            r#"{"inputs": [{"data" [1]}]}"#,
            r#"{"inputs": [{"name": "x"}]}"#,
            r#"{"inputs": [{"data": [1]} {"data": [2]}]}"#,
            r#"[{"inputs": [{"data": [1]}]}]"#,
            r#"{"inputs": [{"data": [1]}], "x": tru"e}"#,
            "",
        ] {
            assert!(cut(json.as_bytes()).is_none(), "{json}");
        }
        let deep = format!(
            r#"{{"inputs": [{{"data": {}1{}}}]}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(cut(deep.as_bytes()).is_none());
    }
}
