//! magika's v3 input features: the first and last `beg_size`/`end_size` bytes of a file,
//! after stripping ASCII whitespace from the start and end of the first and last
//! `block_size` bytes, padded with `padding_token`.

/// ASCII whitespace as Python's `bytes.strip()` sees it.
fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Features for one file: `beg_size + end_size` byte tokens.
pub(crate) fn extract(
    bytes: &[u8],
    beg_size: usize,
    end_size: usize,
    block_size: usize,
    pad: i32,
) -> Vec<i32> {
    let head = &bytes[..bytes.len().min(block_size)];
    let tail = &bytes[bytes.len().saturating_sub(block_size)..];
    let head_start = head.iter().position(|b| !is_space(b)).unwrap_or(head.len());
    let head = &head[head_start..];
    let tail_end = tail.iter().rposition(|b| !is_space(b)).map_or(0, |i| i + 1);
    let tail = &tail[..tail_end];

    let mut out = Vec::with_capacity(beg_size + end_size);
    let beg = &head[..head.len().min(beg_size)];
    out.extend(beg.iter().map(|&b| i32::from(b)));
    out.resize(beg_size, pad);
    let end = &tail[tail.len().saturating_sub(end_size)..];
    out.resize(beg_size + end_size - end.len(), pad);
    out.extend(end.iter().map(|&b| i32::from(b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_short_content_and_strips_whitespace() {
        // Leading whitespace is stripped from the head, trailing from the tail.
        let f = extract(b" ab ", 4, 4, 16, 256);
        assert_eq!(f, vec![97, 98, 32, 256, 256, 32, 97, 98]);
        let long: Vec<u8> = (0..20).collect();
        let f = extract(&long, 3, 3, 8, 256);
        assert_eq!(f, vec![0, 1, 2, 17, 18, 19]);
    }
}
