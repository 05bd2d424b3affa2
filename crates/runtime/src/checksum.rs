//! SHA-256 digests and the one-read, hash-while-reading file loader.
//!
//! A model is trusted only if the bytes handed to ONNX Runtime are the bytes that were hashed.
//! [`read_and_hash`] reads a file once into memory and hashes it as it arrives, so there is no
//! second read and no window between the check and the load. `sha2` picks the SHA-NI code
//! path at run time where the CPU has it.
//!
//! Large files are read into anonymous memory advised for transparent huge pages (on a VM a
//! 4 KiB page fault costs about as much as hashing the page) while a second thread hashes
//! each chunk right behind the reader, so reading and hashing overlap: loading costs about
//! what hashing alone costs (see `benches/RESULTS.md`).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc::sync_channel;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Bytes read (and handed to the hasher) per step.
const CHUNK: usize = 1 << 20;
/// Files at least this large are read with the pipelined reader.
const PIPELINE_MIN: u64 = 8 << 20;
/// Chunks in flight between reader and hasher (bounds how far the reader runs ahead).
const IN_FLIGHT: usize = 8;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// A digest from its raw 32 bytes (for callers that hash while streaming).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Parses 64 hex characters (either case); an optional `sha256:` prefix is accepted.
    fn from_str(s: &str) -> Result<Self> {
        let hex_part = s.trim().strip_prefix("sha256:").unwrap_or(s.trim());
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| Error::InvalidDigest {
            input: s.to_owned(),
        })?;
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the expected digest of a model comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checksum {
    /// The caller states the digest.
    Sha256(Digest),
    /// Read it from the `kiln-manifest.json` next to the model (the agent writes it). This is
    /// the default: a model with neither a caller digest nor a manifest entry does not load.
    #[default]
    Manifest,
    /// Do not verify. Logged as a warning at every load.
    Skip,
    /// An OpenSSF model-signing bundle that the trust root must have signed: the model's
    /// directory must hold exactly the signed files (the bundle itself, and the paths the
    /// bundle's signer ignored, left out), and the model and its external data must be the
    /// signed bytes.
    Signature(SignatureCheck),
}

/// A signature bundle and its trust root, for [`Checksum::Signature`].
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    /// The bundle (`model.sig`); a relative path is relative to the model's directory.
    pub bundle: std::path::PathBuf,
    /// What must have signed it.
    pub trust: std::sync::Arc<crate::signing::Trust>,
}

impl SignatureCheck {
    /// `bundle` signed by `trust`.
    pub fn new(bundle: impl Into<std::path::PathBuf>, trust: crate::signing::Trust) -> Self {
        Self {
            bundle: bundle.into(),
            trust: std::sync::Arc::new(trust),
        }
    }
}

impl PartialEq for SignatureCheck {
    /// The same bundle path and the same trust root value.
    fn eq(&self, other: &Self) -> bool {
        self.bundle == other.bundle && std::sync::Arc::ptr_eq(&self.trust, &other.trust)
    }
}

impl Eq for SignatureCheck {}

/// A model file's bytes, read once.
pub struct ModelBytes(Storage);

enum Storage {
    Heap(Vec<u8>),
    Anon(memmap2::MmapMut, usize),
}

impl Deref for ModelBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Storage::Heap(v) => v,
            Storage::Anon(map, len) => &map[..*len],
        }
    }
}

impl fmt::Debug for ModelBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelBytes({} bytes)", self.len())
    }
}

/// Reads `path` once and returns its bytes with their SHA-256 digest.
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read, or changes size while being read.
pub fn read_and_hash(path: &Path) -> Result<(ModelBytes, Digest)> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size < PIPELINE_MIN {
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let digest = Digest::of(&bytes);
        return Ok((ModelBytes(Storage::Heap(bytes)), digest));
    }
    let len = usize::try_from(size).map_err(|_| {
        io_err(std::io::Error::other(
            "file too large for this address space",
        ))
    })?;
    let mut map = memmap2::MmapMut::map_anon(len).map_err(io_err)?;
    // Advice only: without transparent huge pages the read is slower, not wrong.
    let _ = map.advise(memmap2::Advice::HugePage);
    let digest = fill_and_hash(path, &mut file, &mut map)?;
    Ok((ModelBytes(Storage::Anon(map, len)), digest))
}

/// Fills all of `buf` (sized to the file at open) from `file`, hashing while it reads.
///
/// # Errors
/// [`Error::Io`] if the read fails, or the file ends early or goes on past `buf`.
pub(crate) fn fill_and_hash(path: &Path, file: &mut File, buf: &mut [u8]) -> Result<Digest> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let size = buf.len();
    let (filled, digest) = pipelined(file, buf).map_err(io_err)?;
    let mut probe = [0u8; 1];
    if filled != size || read_some(file, &mut probe).map_err(io_err)? != 0 {
        return Err(io_err(std::io::Error::other(format!(
            "file changed size while being read ({size} bytes at open); is something still writing it?"
        ))));
    }
    Ok(digest)
}

/// Fills `buf` from `file` on this thread while a scoped thread hashes each filled chunk.
/// Returns the bytes read (less than `buf.len()` if the file ended early) and the digest.
fn pipelined(file: &mut File, buf: &mut [u8]) -> std::io::Result<(usize, Digest)> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<&[u8]>(IN_FLIGHT);
        let hasher = scope.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(chunk);
            }
            Digest(h.finalize().into())
        });
        let mut filled = 0;
        for chunk in buf.chunks_mut(CHUNK) {
            let n = read_some(file, chunk)?;
            filled += n;
            // The chunk is never written again: hand a shared borrow to the hasher.
            let done: &[u8] = chunk;
            if tx.send(&done[..n]).is_err() || n < done.len() {
                break;
            }
        }
        drop(tx);
        let digest = hasher
            .join()
            .map_err(|_| std::io::Error::other("hashing thread panicked"))?;
        Ok((filled, digest))
    })
}

/// Fills as much of `buf` as the file gives before EOF, retrying on `Interrupted`.
fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn digest_round_trips_and_matches_known_vector() {
        let d: Digest = ABC.parse().expect("valid digest");
        assert_eq!(d, Digest::of(b"abc"));
        assert_eq!(d.to_string(), ABC);
        let upper: Digest = format!("sha256:{}", ABC.to_uppercase())
            .parse()
            .expect("prefixed, upper case");
        assert_eq!(upper, d);
    }

    #[test]
    fn bad_digests_are_rejected() {
        for bad in [
            "",
            "abc",
            &ABC[1..],
            &format!("{ABC}00"),
            &ABC.replace('a', "g"),
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(Error::InvalidDigest { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn read_and_hash_covers_every_chunk_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = PIPELINE_MIN as usize;
        for len in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            big - 1,
            big,
            big + CHUNK,
            3 * big + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).expect("write");
            let (bytes, digest) = read_and_hash(&path).expect("read");
            assert_eq!(&*bytes, &data[..]);
            assert_eq!(digest, Digest::of(&data));
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let err = read_and_hash(Path::new("/nonexistent/kiln/model.onnx")).expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/kiln/model.onnx"),
            "{err}"
        );
    }
}
