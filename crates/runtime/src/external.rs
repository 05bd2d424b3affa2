//! External data: models whose weights live in files beside the `.onnx` (what
//! `onnx.save(..., save_as_external_data=True)` writes, and every model past protobuf's 2 GiB).
//!
//! kiln hands ONNX Runtime the model's bytes from memory, so ONNX Runtime has no directory to
//! find such files in; and reading them itself would load bytes nobody verified. So the
//! loader finds every file the graph names ([`locations`]: a scan of the protobuf wire format
//! for `TensorProto.external_data` entries keyed `location`, through subgraphs, sparse
//! tensors, functions and training graphs), refuses a location that is absolute or climbs out
//! of the model's directory, reads each file once, checks its sha256 against a pinned digest
//! (from [`crate::ModelOptions::with_external_data_checksum`] or the version's manifest), and
//! gives ONNX Runtime exactly those bytes (`AddExternalInitializersFromMemory`). The buffers
//! stay alive as long as the sessions made from them.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::Arc;

use crate::checksum::{Checksum, Digest};
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// One verified weights file, as ONNX Runtime will see it.
#[derive(Clone)]
pub(crate) struct ExternalFile {
    /// The location exactly as the model names it.
    pub location: String,
    /// The file's verified bytes.
    pub bytes: Arc<[u8]>,
}

use crate::wire::{Wire, MAX_DEPTH};

/// What [`load`] found.
pub(crate) struct Scanned {
    /// Every verified external data file.
    pub files: Vec<ExternalFile>,
    /// Set when the model's bytes could not be scanned: the load must fail with it unless
    /// ONNX Runtime refuses the bytes first.
    pub unreadable: Option<Error>,
}

/// Reads, verifies and returns every external data file `model` (the bytes of `path`) names.
/// `pins` maps locations to digests; with [`Checksum::Manifest`], `manifest` supplies them.
pub(crate) fn load(
    path: &Path,
    model: &[u8],
    checksum: &Checksum,
    pins: &BTreeMap<String, Digest>,
    manifest: Option<&Manifest>,
) -> Result<Scanned> {
    let bad = |location: &str, reason: String| Error::ExternalData {
        path: path.to_owned(),
        location: location.to_owned(),
        reason,
    };
    // Bytes the scan cannot read are left for ONNX Runtime to reject (its parse error is the
    // one to report); the caller refuses them with this reason if ONNX Runtime accepts them.
    let names = match locations(model) {
        Ok(names) => names,
        Err(reason) => {
            return Ok(Scanned {
                files: Vec::new(),
                unreadable: Some(bad("", reason)),
            })
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    // The directory the model file really is in (through any link to it): every external
    // file must resolve inside it.
    let real_dir = real_parent(path)?;
    let mut files = Vec::with_capacity(names.len());
    for location in names {
        check_location(&location).map_err(|reason| bad(&location, reason))?;
        let file = dir.join(&location);
        let expected = pinned_digest(
            &file,
            &location,
            "external data file",
            checksum,
            pins,
            manifest,
        )?;
        let real = resolve_inside(&file, &real_dir).map_err(|reason| bad(&location, reason))?;
        let bytes = read_verified(&file, &real, expected, u64::MAX)?;
        files.push(ExternalFile { location, bytes });
    }
    Ok(Scanned {
        files,
        unreadable: None,
    })
}

/// The digest the file `location` beside the model (at `file`) must have: the caller's pin,
/// else its entry in the manifest or signature; `None` only under [`Checksum::Skip`]. `what`
/// names the kind of file in the error.
///
/// # Errors
/// [`Error::ChecksumRequired`] when nothing pins it.
pub(crate) fn pinned_digest(
    file: &Path,
    location: &str,
    what: &str,
    checksum: &Checksum,
    pins: &BTreeMap<String, Digest>,
    manifest: Option<&Manifest>,
) -> Result<Option<Digest>> {
    match (checksum, pins.get(location)) {
        (_, Some(d)) => Ok(Some(*d)),
        (Checksum::Skip, None) => Ok(None),
        (Checksum::Manifest | Checksum::Signature(_), None) => manifest
            .and_then(|m| m.file(location))
            .map(|entry| Some(entry.sha256))
            .ok_or_else(|| Error::ChecksumRequired {
                path: file.to_owned(),
                reason: format!(
                    "the model's {what} {location:?} is not in the manifest or signature"
                ),
            }),
        (Checksum::Sha256(_), None) => Err(Error::ChecksumRequired {
            path: file.to_owned(),
            reason: format!(
                "the model's {what} {location:?} is not pinned: pin its sha256 with \
                 ModelOptions::with_external_data_checksum, or load through a manifest that \
                 lists it"
            ),
        }),
    }
}

/// The bytes of `file` (read at `real`, its links resolved), once, checked against
/// `expected` (a warning when there is none: [`Checksum::Skip`]); a file over `max_len`
/// bytes is refused before it is read.
///
/// # Errors
/// [`Error::Io`] for a file that cannot be read or is too large, [`Error::ChecksumMismatch`].
pub(crate) fn read_verified(
    file: &Path,
    real: &Path,
    expected: Option<Digest>,
    max_len: u64,
) -> Result<Arc<[u8]>> {
    let (bytes, digest) = read_shared(real, max_len)?;
    match expected {
        Some(want) if want != digest => Err(Error::ChecksumMismatch {
            path: file.to_owned(),
            expected: want,
            actual: digest,
        }),
        Some(_) => Ok(bytes),
        None => {
            tracing::warn!(path = %file.display(), sha256 = %digest, "checksum skipped (Checksum::Skip)");
            Ok(bytes)
        }
    }
}

/// A location must stay inside the model's directory: relative, without `..` (links are
/// checked where the file is resolved, `resolve_inside`).
fn check_location(location: &str) -> std::result::Result<(), String> {
    if location.is_empty() || location.contains('\0') {
        return Err("empty or NUL location".into());
    }
    let p = Path::new(location);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("the location must be a relative path inside the model's directory".into());
    }
    Ok(())
}

/// The real directory of the model file at `path`, links resolved.
pub(crate) fn real_parent(path: &Path) -> Result<std::path::PathBuf> {
    let real = std::fs::canonicalize(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(real.parent().unwrap_or(Path::new("/")).to_owned())
}

/// `file` with its links resolved, if that stays inside `real_dir`: a symbolic link out of
/// the model's directory (the ONNX external-data symlink CVEs) is refused before it is read;
/// a link to another name inside it (a staged `--model-dir`, KServe's `/mnt/models`) is not.
/// A missing file is left to the read, which names it.
pub(crate) fn resolve_inside(
    file: &Path,
    real_dir: &Path,
) -> std::result::Result<std::path::PathBuf, String> {
    match std::fs::canonicalize(file) {
        Ok(real) if real.starts_with(real_dir) => Ok(real),
        Ok(real) => Err(format!(
            "resolves through a symbolic link to {}, outside the model's directory {}",
            real.display(),
            real_dir.display()
        )),
        Err(_) => Ok(file.to_owned()),
    }
}

/// Reads a whole file of at most `max_len` bytes into one shared buffer and hashes it.
fn read_shared(path: &Path, max_len: u64) -> Result<(Arc<[u8]>, Digest)> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max_len {
        return Err(io(std::io::Error::other(format!(
            "{size} bytes, over the limit of {max_len}"
        ))));
    }
    let len = usize::try_from(size).map_err(|_| {
        io(std::io::Error::other(
            "file too large for this address space",
        ))
    })?;
    // Allocated once, at its final place (an Arc of a Vec would copy: twice the weights'
    // size at the peak, for the models that are largest).
    let mut buf = Arc::<[u8]>::new_uninit_slice(len);
    let slot = Arc::get_mut(&mut buf).expect("a fresh Arc is unique");
    slot.fill(std::mem::MaybeUninit::new(0));
    // SAFETY: every element was just initialised (to 0).
    let mut buf = unsafe { buf.assume_init() };
    let slot = Arc::get_mut(&mut buf).expect("still unique");
    let digest = crate::checksum::fill_and_hash(path, &mut file, slot)?;
    Ok((buf, digest))
}

/// Every distinct external data location the model names, in first-seen order.
///
/// # Errors
/// The bytes are not a well-formed protobuf, or nest deeper than [`MAX_DEPTH`].
pub(crate) fn locations(model: &[u8]) -> std::result::Result<Vec<String>, String> {
    let mut found = Vec::new();
    walk(model, Message::Model, 0, &mut found)?;
    let mut seen = std::collections::BTreeSet::new();
    found.retain(|l| seen.insert(l.clone()));
    Ok(found)
}

/// The ONNX messages on the way to a `TensorProto` (field numbers from onnx.proto3).
#[derive(Clone, Copy)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    Function,
    TrainingInfo,
    StringEntry,
}

impl Message {
    /// The message a length-delimited field of `self` holds, if it can lead to a tensor.
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        Some(match (self, field) {
            (Model, 7) => Graph,
            (Model, 20) => TrainingInfo,
            (Model, 25) => Function,
            (Graph, 1) | (Function, 7) => Node,
            (Graph, 5) => Tensor,
            (Graph, 15) => SparseTensor,
            (Node, 5) => Attribute,
            (Attribute, 5 | 10) | (SparseTensor, 1 | 2) => Tensor,
            (Attribute, 6 | 11) | (TrainingInfo, 1 | 2) => Graph,
            (Attribute, 22 | 23) => SparseTensor,
            (Tensor, 13) => StringEntry,
            _ => return None,
        })
    }
}

fn walk(
    buf: &[u8],
    message: Message,
    depth: usize,
    found: &mut Vec<String>,
) -> std::result::Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("the model nests deeper than {MAX_DEPTH} levels"));
    }
    let mut r = Wire::new(buf);
    let (mut key, mut value) = (None, None);
    while let Some((field, payload)) = r.field()? {
        let Some(bytes) = payload else { continue };
        match (message, field) {
            (Message::StringEntry, 1) => key = Some(bytes),
            (Message::StringEntry, 2) => value = Some(bytes),
            _ => {
                if let Some(child) = message.child(field) {
                    walk(bytes, child, depth + 1, found)?;
                }
            }
        }
    }
    if let (Some(b"location"), Some(v)) = (key, value) {
        let location = std::str::from_utf8(v).map_err(|_| "a location is not UTF-8")?;
        found.push(location.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode::len_field;

    fn tensor_at(location: &str) -> Vec<u8> {
        let entry = [len_field(1, b"location"), len_field(2, location.as_bytes())].concat();
        [len_field(8, b"w"), len_field(13, &entry), vec![14 << 3, 1]].concat()
    }

    #[test]
    fn finds_locations_in_initializers_and_subgraph_attributes() {
        let sub = len_field(5, &tensor_at("inner.bin"));
        let attr = len_field(6, &sub);
        let node = len_field(5, &attr);
        let graph = [
            len_field(5, &tensor_at("weights.bin")),
            len_field(5, &tensor_at("weights.bin")),
            len_field(1, &node),
        ]
        .concat();
        let model = [vec![8, 9], len_field(7, &graph)].concat();
        assert_eq!(
            locations(&model).expect("well formed"),
            vec!["weights.bin".to_owned(), "inner.bin".to_owned()]
        );
    }

    #[test]
    fn refuses_malformed_bytes_and_escaping_locations() {
        assert!(locations(&[0x3a, 0x05, 1]).is_err(), "length past the end");
        assert!(locations(&[0x0b]).is_err(), "a group without its end");
        assert_eq!(
            locations(&[0x0b, 0x08, 0x01, 0x0c]).expect("a skipped group"),
            Vec::<String>::new()
        );
        assert!(locations(&[0x0c]).is_err(), "an end tag alone");
        assert!(check_location("../x").is_err());
        assert!(check_location("/etc/passwd").is_err());
        assert!(check_location("a/../../x").is_err());
        assert!(check_location("").is_err());
        assert!(check_location("sub/w.bin").is_ok());
        // Deep nesting is refused, not a stack overflow.
        let mut g = len_field(5, &tensor_at("x"));
        for _ in 0..200 {
            g = len_field(1, &len_field(5, &len_field(11, &g)));
        }
        assert!(locations(&len_field(7, &g)).is_err());
    }
}
