//! A reader of the protobuf wire format, just enough for what kiln reads from an ONNX model's
//! bytes itself (the external data files it names, a classifier's ZipMap classes) without a
//! protobuf library or a copy of the model: fields are stepped over, and only the ones asked
//! for are looked at.

/// Nesting past which a model is refused rather than scanned (subgraphs in subgraphs).
pub(crate) const MAX_DEPTH: usize = 64;

/// A field number and, for a length-delimited field, its bytes.
pub(crate) type Field<'a> = (u64, Option<&'a [u8]>);

/// A field's payload as [`Wire::value`] reads it.
pub(crate) enum Value<'a> {
    /// A varint (wire type 0): an integer field's value.
    Varint(u64),
    /// A length-delimited field (wire type 2): a string, bytes, a message or a packed list.
    Bytes(&'a [u8]),
    /// Anything else (fixed 32 or 64 bits, a group), stepped over.
    Other,
}

/// A reader of the protobuf wire format: just enough to step over fields.
pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    /// A reader at the start of `buf`, one message's bytes.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Whether every byte has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The varint at the reader (a packed list's next value).
    pub(crate) fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn skip(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("a field runs past the end of its message")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// Skips the fields of a group up to the end tag of `field`.
    fn skip_group(&mut self, field: u64, depth: usize) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("groups nest too deep".into());
        }
        loop {
            if self.pos >= self.buf.len() {
                return Err("a group has no end".into());
            }
            let tag = self.varint()?;
            match tag & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.skip(8)?;
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                    self.skip(n)?;
                }
                3 => self.skip_group(tag >> 3, depth + 1)?,
                4 if tag >> 3 == field => return Ok(()),
                5 => {
                    self.skip(4)?;
                }
                w => return Err(format!("unexpected protobuf wire type {w}")),
            }
        }
    }

    /// The next field: its number and, for a length-delimited one, its bytes.
    pub(crate) fn field(&mut self) -> std::result::Result<Option<Field<'a>>, String> {
        Ok(self.value()?.map(|(field, value)| match value {
            Value::Bytes(bytes) => (field, Some(bytes)),
            Value::Varint(_) | Value::Other => (field, None),
        }))
    }

    /// The next field: its number and its payload.
    pub(crate) fn value(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let payload = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Value::Bytes(self.skip(n)?)
            }
            5 => {
                self.skip(4)?;
                Value::Other
            }
            // A group (deprecated, but protobuf parsers accept one in an unknown field):
            // skipped to its end tag.
            3 => {
                self.skip_group(tag >> 3, 0)?;
                Value::Other
            }
            w => return Err(format!("unexpected protobuf wire type {w}")),
        };
        Ok(Some((tag >> 3, payload)))
    }
}

/// Writing the wire format, for tests that build models' bytes by hand.
#[cfg(test)]
pub(crate) mod encode {
    /// `v` as a varint, appended to `out`.
    pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A length-delimited field `field` holding `bytes`.
    pub(crate) fn len_field(field: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((field << 3) | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }
}
