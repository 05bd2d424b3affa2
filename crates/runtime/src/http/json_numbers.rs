//! The fast path of [`json_data::read`](super::json_data::read): arrays of JSON numbers
//! scanned byte by byte, without serde.
//!
//! Why: an image of 3×64×64 floats is 12,288 numbers, about 240 KB of JSON as Python's
//! `json.dumps` writes FP32 values (`0.12345678918063641`). Read through serde's visitor
//! (one `next_element_seed`, one `deserialize_any` and one `visit_*` call per value, then a
//! correctly rounded `f64` narrowed) it cost about 50 ns a value, more CPU than the model;
//! this scanner takes about 28 ns (release build, this project's 2-core VM): eight digits at
//! a time (SWAR), and for FP32 a shortcut to the same `f32` (see [`Decimal::to_f32`]). It
//! accepts only what it is sure of — nested arrays of numbers in JSON's grammar, each becoming
//! a `T` exactly as serde's reading gives it, and, into floats only, `NaN`, `Infinity` and
//! `-Infinity` as Triton reads them (serde refuses those) — and answers `None` for anything else (a
//! string, `null`, an object, malformed text, a value that is not a `T`, too many values,
//! deep nesting, a number out of range), so the caller reads the text again through serde,
//! which gives the same values and the same refusals as it always did. Only refused or
//! unusual bodies pay for two reads.

use std::ops::Range;

use super::json_data::Leaf;

/// How deep the scanner nests before leaving the text to serde (whose limit is 128).
const MAX_DEPTH: usize = 100;

/// A JSON number as serde_json hands it to a visitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number<'a> {
    /// An integer from zero (`visit_u64`).
    U64(u64),
    /// An integer below zero (`visit_i64`).
    I64(i64),
    /// Anything else serde_json reads as `f64` (a fraction, an exponent, `-0`, an integer
    /// of 20 digits or more or below `i64::MIN`).
    Decimal(Decimal<'a>),
}

/// The leaves of `raw` as `T`s, row-major, if they are all numbers that are `T`s, at most
/// `limit` of them; `None` when serde must decide.
#[cfg(test)]
pub(crate) fn read<T: Leaf>(raw: &str, limit: usize) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(limit.min(raw.len().div_ceil(2)));
    read_into(raw, limit, &mut out).map(|()| out)
}

/// [`read`], appending to `out` (at most `limit` values); `None`, and `out` as it was, when
/// serde must decide.
pub(crate) fn read_into<T: Leaf>(raw: &str, limit: usize, out: &mut Vec<T>) -> Option<()> {
    let start = out.len();
    let read = scan(raw, start + limit, out);
    if read.is_none() {
        out.truncate(start);
    }
    read
}

/// [`read_into`]'s scan, `out` holding at most `limit` values in all.
#[inline]
fn scan<T: Leaf>(raw: &str, limit: usize, out: &mut Vec<T>) -> Option<()> {
    let b = raw.as_bytes();
    let mut depth = 0usize;
    let mut i = skip_ws(b, 0);
    'value: loop {
        // A value is expected here (or, right after `[`, the `]` of an empty array).
        match *b.get(i)? {
            b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                i = skip_ws(b, i + 1);
                if b.get(i) != Some(&b']') {
                    continue 'value;
                }
                i += 1;
                depth -= 1;
            }
            c => {
                let (value, end) =
                    if c == b'N' || c == b'I' || (c == b'-' && b.get(i + 1) == Some(&b'I')) {
                        let (v, end) = non_finite(b, i)?;
                        (T::from_f64(v), end)
                    } else if c == b'-' || c.is_ascii_digit() {
                        let (n, end) = number(raw, i)?;
                        (T::from_number(n), end)
                    } else {
                        return None;
                    };
                if out.len() == limit {
                    return None;
                }
                out.push(value?);
                i = end;
            }
        }
        // After a value: `,` and the next one, or `]` closing an array, or the end.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                return (i == b.len()).then_some(());
            }
            match *b.get(i)? {
                b',' => {
                    i = skip_ws(b, i + 1);
                    continue 'value;
                }
                b']' => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// The non-finite value spelled at `b[i]` as Triton (rapidjson's `kParseNanAndInfFlag`) and
/// Python's `json.dumps` spell it — `NaN`, `Infinity`, `-Infinity` — and the index after it.
/// Not JSON, but what a Python client sends for a missing value or an overflow, and what
/// Triton reads; only floating-point elements take it (`Leaf::from_f64`).
#[inline]
fn non_finite(b: &[u8], i: usize) -> Option<(f64, usize)> {
    [
        (&b"NaN"[..], f64::NAN),
        (b"Infinity", f64::INFINITY),
        (b"-Infinity", f64::NEG_INFINITY),
    ]
    .into_iter()
    .find(|(word, _)| b[i..].starts_with(word))
    .map(|(word, v)| (v, i + word.len()))
}

/// `json` with each non-finite word that stands outside a string ([`non_finite`]'s `NaN` and
/// `Infinity`, and so the `Infinity` of `-Infinity`) replaced by a JSON number of its length
/// (`0e0`, `0.000000`), so that serde can walk the structure of a body holding them; `None`
/// when there is none, the body being JSON as it is. The copy differs from `json` in those
/// bytes only: a value found in it is at the same place in `json`, and is read from there
/// ([`Walked`]; by [`read_into`], which takes the words into floats only).
pub(crate) fn masked_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut masked: Option<Vec<u8>> = None;
    for (at, end) in non_finite_words(json) {
        let number: &[u8] = if end - at == 3 { b"0e0" } else { b"0.000000" };
        masked.get_or_insert_with(|| json.to_vec())[at..end].copy_from_slice(number);
    }
    masked
}

/// `json` parsed by serde as a `T`, and how it was walked: as it is or, when serde refuses it
/// at a non-finite word, as its masked copy, kept in `slot`. A body serde reads as it is pays
/// nothing more; one refused elsewhere, nothing but finding the error's place.
///
/// # Errors
/// Serde's refusal (its message): of the masked copy, unless that is at a masked word; of
/// `json` as sent, which is at a word, otherwise.
pub(crate) fn parse<'j, T: serde::Deserialize<'j>>(
    json: &'j [u8],
    slot: &'j mut Option<Vec<u8>>,
) -> Result<(T, Walked<'j>), String> {
    let refused = match serde_json::from_slice(json) {
        Ok(t) => return Ok((t, Walked::Body)),
        Err(e) => e,
    };
    if word_at(json, &refused).is_none() {
        return Err(refused.to_string());
    }
    let Some(masked) = masked_non_finite(json) else {
        return Err(refused.to_string());
    };
    let masked: &'j [u8] = slot.insert(masked);
    match serde_json::from_slice(masked) {
        Ok(t) => Ok((
            t,
            Walked::Copy {
                start: masked.as_ptr() as usize,
                body: json,
            },
        )),
        // Where the copy is refused at a mask, the mask's number (`0.0`) is no word sent.
        Err(e) if word_at(json, &e).is_some() => Err(refused.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The non-finite word (with its sign) outside a string in `json` at the place serde's error
/// `e` names, if there is one.
pub(crate) fn word_at(json: &[u8], e: &serde_json::Error) -> Option<Range<usize>> {
    // serde_json counts lines from 1 and columns in bytes from 1 (0 at a line's start).
    let line_start = match e.line() {
        0 | 1 => 0,
        line => memchr::memchr_iter(b'\n', json).nth(line - 2)? + 1,
    };
    let at = line_start + e.column().saturating_sub(1);
    // Only as far as serde read (and a word past it: 9 bytes at most).
    let read = json.get(..at.saturating_add(10)).unwrap_or(json);
    non_finite_words(read)
        .take_while(|&(start, _)| start <= at + 1)
        .map(|(start, end)| signed(json, start..end))
        .find(|word| word.start <= at && at <= word.end)
}

/// The non-finite word at `word` in `json` with its sign, if it has one.
fn signed(json: &[u8], word: Range<usize>) -> Range<usize> {
    match word.start.checked_sub(1) {
        Some(sign) if json[sign] == b'-' => sign..word.end,
        _ => word,
    }
}

/// Where each `NaN` and `Infinity` outside a string in `json` is (the `Infinity` of
/// `-Infinity` without its sign), in order: the scan stops at an unterminated string.
fn non_finite_words(json: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(found) = json
            .get(i..)
            .and_then(|rest| memchr::memchr3(b'"', b'N', b'I', rest))
        {
            let at = i + found;
            if json[at] == b'"' {
                // Past the string: its closing quote, skipping escapes.
                i = at + 1;
                loop {
                    let next = json
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest));
                    let Some(next) = next else {
                        i = json.len() + 1;
                        return None;
                    };
                    i += next + 1;
                    if json[i - 1] == b'"' {
                        break;
                    }
                    i += 1;
                }
            } else if let Some((_, end)) = non_finite(json, at) {
                i = end;
                return Some((at, end));
            } else {
                i = at + 1;
            }
        }
        None
    })
}

/// Where serde walked a body: the body itself, or a masked copy of it ([`parse`]), whose
/// values are read from the same place in the body (the words serde could not walk are there).
#[derive(Clone, Copy)]
pub(crate) enum Walked<'b> {
    /// The body walked is the body.
    Body,
    /// The body walked, starting at the address `start`, is a masked copy of `body`.
    Copy { start: usize, body: &'b [u8] },
}

impl Walked<'_> {
    /// Where `walked`, a text of the body walked from `start`, is in it.
    fn span(start: usize, walked: &str) -> Range<usize> {
        let at = (walked.as_ptr() as usize).wrapping_sub(start);
        at..at.wrapping_add(walked.len())
    }

    /// The text to read for `walked`, a value's text in the body serde walked.
    ///
    /// # Errors
    /// `walked` is not a slice of the copy walked (a bug; never a panic), or its place in the
    /// body is not UTF-8 (it is in the copy, which differs only in ASCII: never).
    pub(crate) fn read<'t>(self, walked: &'t str) -> Result<&'t str, String>
    where
        Self: 't,
    {
        match self {
            Walked::Body => Ok(walked),
            Walked::Copy { start, body } => body
                .get(Self::span(start, walked))
                .and_then(|text| std::str::from_utf8(text).ok())
                .ok_or_else(|| "a value out of the body".to_owned()),
        }
    }

    /// The first masked word that is in none of `read` (the texts of the body walked whose
    /// values are [`read`](Self::read) from the body, each apart), as a refusal: anywhere else
    /// (a shape, a parameter, data beside binary data) a word would be taken as the number
    /// masking it, or go unchecked. One pass over the words and the sorted texts.
    pub(crate) fn stray<'t>(self, read: impl IntoIterator<Item = &'t str>) -> Option<String> {
        let Walked::Copy { start, body } = self else {
            return None;
        };
        let mut spans: Vec<Range<usize>> = read
            .into_iter()
            .map(|text| Self::span(start, text))
            .collect();
        spans.sort_unstable_by_key(|span| span.start);
        let mut spans = spans.into_iter().peekable();
        let (at, end) = non_finite_words(body).find(|&(at, end)| {
            // The texts are apart and the words in order: a text that ends before this word
            // holds no later one either.
            while spans.next_if(|span| span.end < end).is_some() {}
            spans.peek().is_none_or(|span| span.start > at)
        })?;
        let word = signed(body, at..end);
        Some(format!(
            "`{}` at byte {}, outside any input's values: only a floating-point value may be \
             `NaN`, `Infinity` or `-Infinity`",
            String::from_utf8_lossy(&body[word.clone()]),
            word.start
        ))
    }
}

/// The index of the first byte from `i` that is not JSON whitespace.
#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// The number starting at `b[start]` (a `-` or a digit) in JSON's grammar
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), and the index after it.
#[inline]
fn number(raw: &str, start: usize) -> Option<(Number<'_>, usize)> {
    let b = raw.as_bytes();
    let negative = b[start] == b'-';
    let mut i = start + usize::from(negative);
    // Every digit, integer part and fraction, accumulated while there are at most 19 of
    // them after the leading zeros (19 digits always fit a u64).
    let mut digits = Digits::default();
    let int_start = i;
    i = digits.take(b, i);
    let int_digits = i - int_start;
    if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
        return None;
    }
    let mut integer = true;
    let mut exp10: i64 = 0;
    if b.get(i) == Some(&b'.') {
        integer = false;
        let from = i + 1;
        i = digits.take(b, from);
        if i == from {
            return None;
        }
        exp10 -= i64::try_from(i - from).ok()?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        integer = false;
        i += 1;
        let sign = match b.get(i) {
            Some(b'-') => -1,
            Some(b'+') => 1,
            _ => 0,
        };
        i += usize::from(sign != 0);
        let from = i;
        let mut e: i64 = 0;
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            e = (e * 10 + i64::from(d - b'0')).min(1 << 40);
            i += 1;
        }
        if i == from {
            return None;
        }
        exp10 += if sign < 0 { -e } else { e };
    }
    // ASCII digits, signs, `.` and `e`: char boundaries both ends.
    let text = raw.get(start..i)?;
    let n = match (integer && int_digits <= 19, negative) {
        (true, false) => Number::U64(digits.value),
        // `-0` is `-0.0` to serde_json; below `i64::MIN` it is a float too.
        (true, true) if digits.value != 0 && digits.value <= i64::MIN.unsigned_abs() => {
            Number::I64(0i64.wrapping_sub_unsigned(digits.value))
        }
        _ => Number::Decimal(Decimal {
            text,
            negative,
            mantissa: digits.value,
            exp10: i32::try_from(exp10).ok().filter(|_| !digits.lost),
        }),
    };
    Some((n, i))
}

/// The significant digits of a number, as one integer.
#[derive(Debug, Default)]
struct Digits {
    /// The digits read so far, at most 19 of them (leading zeros add nothing).
    value: u64,
    /// Whether a digit did not fit.
    lost: bool,
}

impl Digits {
    /// Reads the run of digits at `b[i..]`; returns the index after it.
    #[inline]
    fn take(&mut self, b: &[u8], mut i: usize) -> usize {
        // Eight at a time while eight more fit in 19 digits.
        while self.value < 100_000_000_000 {
            match b.get(i..i + 8).and_then(eight_digits) {
                Some(v) => {
                    self.value = self.value * 100_000_000 + v;
                    i += 8;
                }
                None => break,
            }
        }
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            if self.value < 1_000_000_000_000_000_000 {
                self.value = self.value * 10 + u64::from(d - b'0');
            } else {
                self.lost = true;
            }
            i += 1;
        }
        i
    }
}

/// The value of eight ASCII digits, if `b` is eight ASCII digits (SWAR, as in Lemire's
/// fast_float: no branch per digit).
#[inline]
fn eight_digits(b: &[u8]) -> Option<u64> {
    let v = u64::from_le_bytes(b.try_into().ok()?);
    // Every byte in b'0'..=b'9': adding 0x46 leaves the top bit clear, subtracting 0x30 too.
    let all_digits = (v.wrapping_add(0x4646_4646_4646_4646)
        | v.wrapping_sub(0x3030_3030_3030_3030))
        & 0x8080_8080_8080_8080
        == 0;
    if !all_digits {
        return None;
    }
    let v = v - 0x3030_3030_3030_3030;
    let v = v * 10 + (v >> 8);
    let v1 = (v & 0x0000_00FF_0000_00FF).wrapping_mul(0x000F_4240_0000_0064);
    let v2 = ((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(0x0000_2710_0000_0001);
    Some(u64::from((v1.wrapping_add(v2) >> 32) as u32))
}

/// A number serde_json reads as `f64`: its text, and its value as `mantissa × 10^exp10`
/// when every digit was kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decimal<'a> {
    /// The number as sent.
    pub(crate) text: &'a str,
    /// A leading `-`.
    negative: bool,
    /// Its significant digits.
    mantissa: u64,
    /// The power of ten they are scaled by; `None` if a digit was lost or it is out of range.
    exp10: Option<i32>,
}

/// Powers of ten an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Decimal<'_> {
    /// The nearest `f64`, as `str::parse` (and serde_json with `float_roundtrip`) gives it;
    /// `None` when out of range.
    #[inline]
    pub(crate) fn to_f64(self) -> Option<f64> {
        match self.exact_f64() {
            Some(v) => Some(v),
            None => self.text.parse::<f64>().ok().filter(|v| v.is_finite()),
        }
    }

    /// The `f32` nearest the `f64` nearest this number (the `f64` narrowed, as serde's
    /// reading does); `None` when out of range.
    #[inline]
    pub(crate) fn to_f32(self) -> Option<f32> {
        #[allow(clippy::cast_possible_truncation)]
        match self.narrowed_f32() {
            Some(v) => Some(v),
            None => self.to_f64().map(|v| v as f32),
        }
    }

    /// Clinger's fast path: a mantissa an `f64` holds exactly, scaled by a power of ten it
    /// holds exactly, is one correctly rounded multiplication or division.
    fn exact_f64(self) -> Option<f64> {
        match self.scaled()? {
            (v, true) => Some(v),
            (_, false) => None,
        }
    }

    /// The mantissa (rounded to an `f64`) scaled by an exact power of ten, and whether that
    /// is exact (Clinger: the mantissa fits 53 bits); `None` if digits were lost or the
    /// power is past 10^22. With sign.
    #[allow(clippy::cast_precision_loss)]
    #[inline]
    fn scaled(self) -> Option<(f64, bool)> {
        let e = self.exp10?;
        let pow = *POW10.get(e.unsigned_abs() as usize)?;
        let m = self.mantissa as f64;
        let v = if e < 0 { m / pow } else { m * pow };
        Some((if self.negative { -v } else { v }, self.mantissa < 1 << 53))
    }

    /// A mantissa of up to 19 digits (rounded to an `f64`) scaled by an exact power of ten is
    /// within two units in the last place of the nearest `f64`. Narrowed to an `f32`, that
    /// is the same `f32` as the nearest `f64` narrowed, unless the bits the narrowing drops lie
    /// within a few units of the halfway point between two `f32`s (then `None`: the slow path
    /// decides), or the value is outside the `f32`s' normal range.
    #[allow(clippy::cast_possible_truncation)]
    #[inline]
    fn narrowed_f32(self) -> Option<f32> {
        let (v, exact) = self.scaled()?;
        if exact {
            return Some(v as f32);
        }
        // f32's normal range (2^-126 up to 2^128), with a margin for the error.
        if !(1.2e-38..=3.4e38).contains(&v.abs()) {
            return None;
        }
        // The 29 bits of the f64 significand below an f32's 24; halfway is 1 << 28.
        let dropped = v.to_bits() & ((1 << 29) - 1);
        if dropped.abs_diff(1 << 28) <= 8 {
            return None;
        }
        Some(v as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Decimal` of `text` (compared by its text).
    fn dec(text: &str) -> Number<'_> {
        match number(text, 0) {
            Some((Number::Decimal(d), _)) => Number::Decimal(d),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn numbers_are_told_apart_as_serde_json_tells_them() {
        fn n(s: &str) -> Option<(Number<'_>, usize)> {
            number(s, 0)
        }
        assert_eq!(n("0"), Some((Number::U64(0), 1)));
        assert_eq!(n("12,"), Some((Number::U64(12), 2)));
        assert_eq!(n("-7]"), Some((Number::I64(-7), 2)));
        assert_eq!(n("-0"), Some((dec("-0"), 2)));
        assert_eq!(n("-9223372036854775808"), Some((Number::I64(i64::MIN), 20)));
        assert_eq!(
            n("-9223372036854775809"),
            Some((dec("-9223372036854775809"), 20))
        );
        assert_eq!(
            n("18446744073709551615"),
            Some((dec("18446744073709551615"), 20))
        );
        assert_eq!(
            n("9999999999999999999"),
            Some((Number::U64(9_999_999_999_999_999_999), 19))
        );
        assert_eq!(n("1.5e-3 "), Some((dec("1.5e-3"), 6)));
        assert_eq!(n("2E+10"), Some((dec("2E+10"), 5)));
        for bad in ["-", "01", "-01", "1.", ".5", "1e", "1e+", "-a", "1.e5"] {
            assert_eq!(n(bad).filter(|&(_, end)| end == bad.len()), None, "{bad}");
        }
    }

    #[test]
    fn non_finite_values_are_read_as_triton_and_python_write_them_into_floats_only() {
        let got = read::<f32>("[NaN, Infinity,[-Infinity, 1.5]]", 9).expect("floats");
        assert!(got[0].is_nan());
        assert_eq!(got[1..], [f32::INFINITY, f32::NEG_INFINITY, 1.5]);
        let half = read::<half::f16>("[-Infinity]", 9).expect("half");
        assert_eq!(half, [half::f16::NEG_INFINITY]);
        assert!(read::<f64>("[NaN]", 9).expect("f64")[0].is_nan());
        // Not a float: serde decides (and refuses).
        assert_eq!(read::<i64>("[NaN]", 9), None);
        assert_eq!(read::<bool>("[Infinity]", 9), None);
        // Only those three words, whole.
        for bad in [
            "[nan]",
            "[Inf]",
            "[NaNa]",
            "[-NaN]",
            "[Infinityy]",
            "[+Infinity]",
            "[-I]",
        ] {
            assert_eq!(read::<f32>(bad, 9), None, "{bad}");
        }
        // Counted against the limit as any value.
        assert_eq!(read::<f32>("[NaN, NaN]", 1), None);
    }

    #[test]
    fn non_finite_words_outside_strings_are_masked_with_numbers_of_their_length() {
        let mask =
            |s: &str| masked_non_finite(s.as_bytes()).map(|m| String::from_utf8(m).expect("UTF-8"));
        assert_eq!(
            mask(r#"{"instances": [[NaN, -Infinity], [Infinity, 1]]}"#).as_deref(),
            Some(r#"{"instances": [[0e0, -0.000000], [0.000000, 1]]}"#)
        );
        // In strings (escaped quotes too), words stay: nothing to mask.
        assert_eq!(mask(r#"{"NaN": "a \" Infinity \\", "INPUT": [1]}"#), None);
        assert_eq!(
            mask(r#"{"x\"": "\\", "y": NaN}"#).as_deref(),
            Some(r#"{"x\"": "\\", "y": 0e0}"#)
        );
        // Not the words: left for serde to refuse.
        assert_eq!(mask("[nan, Inf, NULL, N]"), None);
        // An unterminated string ends the scan, an escape at the very end too.
        assert_eq!(mask(r#"[NaN, "NaN"#).as_deref(), Some(r#"[0e0, "NaN"#));
        assert_eq!(mask(r#"[NaN, "\"#).as_deref(), Some(r#"[0e0, "\"#));
        // Every mask is JSON serde reads.
        for body in ["[NaN]", "[-Infinity, Infinity]", "{\"a\":NaN}"] {
            let masked = mask(body).expect("masked");
            assert_eq!(masked.len(), body.len());
            serde_json::from_str::<serde_json::Value>(&masked).expect(&masked);
        }
    }
}
