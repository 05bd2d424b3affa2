//! Request and response bodies compressed as Triton's clients send and ask for them.
//!
//! `tritonclient.http` compresses a request with `request_compression_algorithm="gzip"` or
//! `"deflate"` (`Content-Encoding`; deflate is the zlib format, as HTTP means it) and asks for
//! a compressed answer with `response_compression_algorithm` (`Accept-Encoding`);
//! `tritonclient.grpc`'s `compression_algorithm` compresses the gRPC message (`grpc-encoding`
//! with the frame's compressed flag). Triton accepts all of them; without this, kiln answered
//! 400 (REST) and `UNIMPLEMENTED` (gRPC).
//!
//! A compressed body says nothing reliable about its inflated size (a 32 KiB gzip member can
//! inflate to 32 MiB), so inflating stops at the body limit (413 / `RESOURCE_EXHAUSTED`
//! past it), and a body that inflates past the inline size is inflated and decoded on the
//! decode threads holding a share of the budget: a REST body of [`INLINE_MAX_BYTES`] or more
//! compressed the one it was read under (its own size and a whole body limit more,
//! `Decoder::receive`); a smaller one the size its gzip trailer names (inflating stops there;
//! a trailer that understated it costs a second inflate under a whole share), any other a
//! whole body limit's share (`decode.rs`). A gRPC message takes its whole share before it is
//! read, while its size is unknown (`grpc/compressed.rs`).

use std::io::Read as _;

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::http::decode::INLINE_MAX_BYTES;
use crate::http::error::ApiError;

/// A content coding kiln reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    /// gzip (RFC 1952).
    Gzip,
    /// HTTP's and gRPC's "deflate": the zlib format (RFC 1950). A raw deflate stream, which
    /// some clients send under the same name, is read too.
    Deflate,
}

/// The codings kiln reads, as `Accept-Encoding` / `grpc-accept-encoding` lists them.
pub(crate) const ACCEPTED: &str = "gzip, deflate";

impl Coding {
    /// The coding named `name` (a header's value); `None` for `identity`.
    ///
    /// # Errors
    /// The name, for a coding kiln does not read.
    pub(crate) fn parse(name: &str) -> Result<Option<Self>, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Self::Gzip)),
            "deflate" => Ok(Some(Self::Deflate)),
            _ => Err(name.to_owned()),
        }
    }

    /// Its name in `Content-Encoding` and `grpc-encoding`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }

    /// `data` compressed (at the fastest level: an answer is compressed per request, on the
    /// server's CPUs).
    pub(crate) fn compress(self, data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let level = flate2::Compression::fast();
        let out = Vec::with_capacity(data.len() / 4 + 64);
        // Writing into a Vec cannot fail.
        match self {
            Self::Gzip => {
                let mut w = flate2::write::GzEncoder::new(out, level);
                w.write_all(data).and_then(|()| w.finish())
            }
            Self::Deflate => {
                let mut w = flate2::write::ZlibEncoder::new(out, level);
                w.write_all(data).and_then(|()| w.finish())
            }
        }
        .unwrap_or_default()
    }

    /// `data` inflated inline when it is small and stays under the inline size
    /// ([`INLINE_MAX_BYTES`]); `Ok(None)` when it is or does not (then inflate it whole, at
    /// most `limit`, off the workers: a compressed size says nothing of the inflated one).
    ///
    /// # Errors
    /// As [`Coding::inflate`], for a small body.
    pub(crate) fn inflate_small(
        self,
        data: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Inflate> {
        if data.len() >= INLINE_MAX_BYTES {
            return Ok(None);
        }
        match self.inflate(data, (INLINE_MAX_BYTES - 1).min(limit)) {
            Ok(plain) => Ok(Some(plain)),
            Err(Inflate::TooLarge { .. }) if limit >= INLINE_MAX_BYTES => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The inflated size gzip's trailer names (`ISIZE`, mod 2^32, of the last member only):
    /// a hint, not a promise — a body of several members, or one that lies, inflates to more
    /// (or fails its check). None for deflate, which names no size.
    pub(crate) fn size_hint(self, data: &[u8]) -> Option<usize> {
        match self {
            Self::Gzip => {
                let t = data.get(data.len().checked_sub(4)?..)?;
                usize::try_from(u32::from_le_bytes([t[0], t[1], t[2], t[3]])).ok()
            }
            Self::Deflate => None,
        }
    }

    /// `data` inflated, at most `limit` bytes of it.
    ///
    /// # Errors
    /// [`Inflate::TooLarge`] past `limit`; [`Inflate::Corrupt`] for data that is not this
    /// coding (or ends early).
    pub(crate) fn inflate(self, data: &[u8], limit: usize) -> Result<Vec<u8>, Inflate> {
        let hint = self
            .size_hint(data)
            .unwrap_or_else(|| data.len().saturating_mul(4));
        let mut out = Vec::with_capacity(hint.min(limit));
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        let read = match self {
            Self::Gzip => flate2::read::MultiGzDecoder::new(data)
                .take(cap)
                .read_to_end(&mut out),
            Self::Deflate if zlib_header(data) => flate2::read::ZlibDecoder::new(data)
                .take(cap)
                .read_to_end(&mut out),
            Self::Deflate => flate2::read::DeflateDecoder::new(data)
                .take(cap)
                .read_to_end(&mut out),
        };
        match read {
            Err(e) => Err(Inflate::Corrupt(format!("not valid {}: {e}", self.name()))),
            Ok(_) if out.len() > limit => Err(Inflate::TooLarge { limit }),
            Ok(_) => Ok(out),
        }
    }
}

/// Answers smaller than this go uncompressed even to a client that accepts gzip (Go's HTTP
/// client asks for it on every request): a gzip header and trailer are 18 bytes, and a
/// compressor's set-up costs more than sending a small answer as it is.
pub(crate) const COMPRESS_MIN_BYTES: usize = 1024;

/// An answer's `body` in `coding` when the client asked for one and the answer is worth it,
/// and the coding it is in.
pub(crate) fn answer(coding: Option<Coding>, body: Vec<u8>) -> (Vec<u8>, Option<Coding>) {
    match coding {
        Some(c) if body.len() >= COMPRESS_MIN_BYTES => (c.compress(&body), Some(c)),
        _ => (body, None),
    }
}

/// Whether `data` starts with a zlib header (RFC 1950: deflate method, a window of at most
/// 32 KiB, and a check that makes the first two bytes a multiple of 31).
fn zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Why a body did not inflate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inflate {
    /// It inflates past the body limit.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not the coding it claims.
    Corrupt(String),
}

impl From<Inflate> for ApiError {
    fn from(e: Inflate) -> Self {
        match e {
            Inflate::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request inflates past the {limit}-byte limit"),
            ),
            Inflate::Corrupt(m) => ApiError::bad_request(format!("the request is {m}")),
        }
    }
}

/// The request's `Content-Encoding`.
///
/// # Errors
/// 415, naming the codings kiln reads, for any other (or more than one).
pub(crate) fn request_coding(headers: &HeaderMap) -> Result<Option<Coding>, ApiError> {
    let unsupported = |name: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {name:?} is not supported; send identity, {ACCEPTED}"),
        )
    };
    let mut values = headers.get_all(axum::http::header::CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| unsupported("not text"))?;
    if values.next().is_some() || text.contains(',') {
        return Err(unsupported(text));
    }
    Coding::parse(text).map_err(|name| unsupported(&name))
}

/// The coding to answer in: of gzip and deflate, the one the client's `Accept-Encoding`
/// gives the higher `q` (named, or through `*` when not named; gzip on a tie); `None` when
/// both are at 0 or not accepted (`identity` only, or nothing asked).
pub(crate) fn response_coding(headers: &HeaderMap) -> Option<Coding> {
    let (mut gzip, mut deflate, mut any) = (None, None, None);
    let items = headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for item in items {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .filter(|q| q.is_finite())
            .unwrap_or(1.0);
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "deflate" => deflate = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    let deflate = deflate.or(any).unwrap_or(0.0);
    if gzip <= 0.0 && deflate <= 0.0 {
        None
    } else if deflate > gzip {
        Some(Coding::Deflate)
    } else {
        Some(Coding::Gzip)
    }
}

/// `Content-Encoding` for `coding`.
pub(crate) fn header(coding: Coding) -> HeaderValue {
    HeaderValue::from_static(coding.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn codings_round_trip_within_the_limit() {
        let data = b"{\"inputs\":[]}".repeat(1000);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let packed = coding.compress(&data);
            assert!(packed.len() < data.len() / 10, "{coding:?} compresses");
            assert_eq!(coding.inflate(&packed, data.len()).expect("inflates"), data);
            assert_eq!(
                coding.inflate(&packed, data.len() - 1),
                Err(Inflate::TooLarge {
                    limit: data.len() - 1
                })
            );
            assert!(matches!(
                coding.inflate(&packed[..packed.len() / 2], data.len()),
                Err(Inflate::Corrupt(_))
            ));
            assert!(matches!(
                coding.inflate(b"not compressed at all", data.len()),
                Err(Inflate::Corrupt(_))
            ));
        }
        // A raw deflate stream under "deflate", as some clients send it.
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut raw, &data).expect("write");
        let raw = raw.finish().expect("finish");
        assert_eq!(
            Coding::Deflate.inflate(&raw, data.len()).expect("raw"),
            data
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB; the limit is 1 MiB.
        let bomb = Coding::Gzip.compress(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 512 << 10);
        assert_eq!(
            Coding::Gzip.inflate(&bomb, 1 << 20),
            Err(Inflate::TooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn headers_name_the_codings() {
        assert_eq!(request_coding(&HeaderMap::new()).expect("none"), None);
        assert_eq!(
            request_coding(&headers("content-encoding", "GZIP")).expect("gzip"),
            Some(Coding::Gzip)
        );
        assert_eq!(
            request_coding(&headers("content-encoding", "identity")).expect("identity"),
            None
        );
        for bad in ["br", "gzip, deflate", "zstd"] {
            let e = request_coding(&headers("content-encoding", bad)).expect_err(bad);
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
        }
        let accept = |v: &str| response_coding(&headers("accept-encoding", v));
        assert_eq!(accept("gzip"), Some(Coding::Gzip));
        assert_eq!(accept("deflate"), Some(Coding::Deflate));
        assert_eq!(accept("br, deflate;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(accept("deflate, gzip;q=0.5"), Some(Coding::Deflate));
        assert_eq!(accept("gzip;q=0, deflate"), Some(Coding::Deflate));
        assert_eq!(accept("GZIP;Q=0, deflate"), Some(Coding::Deflate));
        assert_eq!(accept("gzip;q=0, *"), Some(Coding::Deflate));
        assert_eq!(accept("gzip;q=0, deflate;q=0"), None);
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("identity"), None);
        assert_eq!(accept("*"), Some(Coding::Gzip));
        assert_eq!(accept("br"), None);
        assert_eq!(response_coding(&HeaderMap::new()), None);
    }

    #[test]
    fn readme_states_the_codings_and_the_smallest_answer_compressed() {
        let min_kib = COMPRESS_MIN_BYTES >> 10;
        crate::http::assert_readme_states(&format!(
            "An inference answer of {min_kib} KiB or more is compressed (gzip or deflate, fastest level)"
        ));
        crate::http::assert_readme_states(
            "a REST body in `Content-Encoding: gzip` or `deflate` (`tritonclient.http`'s",
        );
        crate::http::assert_readme_states(
            "a gRPC message in `grpc-encoding: gzip` or `deflate` (`tritonclient.grpc`'s",
        );
        assert_eq!(ACCEPTED, "gzip, deflate");
    }
}
