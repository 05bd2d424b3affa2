//! A model directory checked against its signature bundle ([`Checksum::Signature`]): the
//! bundle verified, the directory's files required to be exactly the signed ones, and the
//! signed digests handed to the loader as a manifest, so the model file and its external data
//! are checked as they are read, by the one path that checks every other manifest; then
//! [`check_unread`] hashes the signed files the loader did not read. Each file is read once.
//!
//! [`Checksum::Signature`]: crate::Checksum::Signature

use std::path::{Path, PathBuf};

use super::{verify_file, SignatureError};
use crate::checksum::{read_and_hash, Digest, SignatureCheck};
use crate::error::{Error, Result};
use crate::layout::MANIFEST_FILE;
use crate::manifest::{Manifest, ManifestFile, SCHEMA};

/// Deepest directory nesting listed.
const MAX_DEPTH: usize = 16;

/// The manifest `model_path`'s directory is signed for, after checking the bundle and the
/// directory's file set.
///
/// # Errors
/// [`Error::Signature`] for a refused bundle or a file set that is not the signed one;
/// [`Error::Io`] for a directory that cannot be listed.
pub(crate) fn signed_manifest(model_path: &Path, check: &SignatureCheck) -> Result<Manifest> {
    let dir = crate::layout::model_dir(model_path);
    let refused = |source: SignatureError| Error::Signature {
        path: model_path.to_owned(),
        source,
    };
    let bundle = if check.bundle.is_absolute() {
        check.bundle.clone()
    } else {
        dir.join(&check.bundle)
    };
    let signed = verify_file(&bundle, &check.trust).map_err(refused)?;
    let mut present = Vec::new();
    let mut seen = std::collections::HashSet::new();
    list(
        dir,
        dir,
        0,
        &|rel: &str| signed.is_ignored(rel),
        &mut seen,
        &mut present,
    )?;
    // The bundle (when it lies in the directory) and a manifest the agent wrote are not
    // part of what was signed.
    let bundle_rel = bundle
        .strip_prefix(dir)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    present.retain(|(p, _)| Some(p) != bundle_rel.as_ref() && p != MANIFEST_FILE);
    signed
        .check_file_set(present.iter().map(|(p, _)| p.as_str()))
        .map_err(refused)?;
    tracing::info!(model = %model_path.display(), signer = %signed.signer, files = signed.files.len(), "signature verified");
    let files = present
        .into_iter()
        .filter_map(|(path, size)| {
            let sha256 = *signed.files.get(&path)?;
            Some(ManifestFile { path, sha256, size })
        })
        .collect();
    Ok(Manifest {
        schema: SCHEMA,
        model: signed.model,
        version: String::new(),
        source: None,
        etag: None,
        version_id: None,
        signer: None,
        created: String::new(),
        files,
    })
}

/// Every file under `dir` (links followed), relative to `base` and `/`-separated, with its
/// size; paths `ignored` (the signer left them out) are skipped, directories included, and a
/// directory reached twice (a link cycle) is listed once.
fn list(
    base: &Path,
    dir: &Path,
    depth: usize,
    ignored: &dyn Fn(&str) -> bool,
    seen: &mut std::collections::HashSet<PathBuf>,
    out: &mut Vec<(String, u64)>,
) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    if depth > MAX_DEPTH {
        return Err(Error::Signature {
            path: dir.to_owned(),
            source: SignatureError::FileSet(format!("directories nested deeper than {MAX_DEPTH}")),
        });
    }
    if !seen.insert(std::fs::canonicalize(dir).map_err(io(dir.to_owned()))?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir.to_owned()))? {
        let entry = entry.map_err(io(dir.to_owned()))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(base)
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        if ignored(&rel) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io(path.clone()))?;
        if meta.is_dir() {
            list(base, &path, depth + 1, ignored, seen, out)?;
        } else if meta.is_file() {
            out.push((rel, meta.len()));
        }
    }
    Ok(())
}

/// Checks every file of `manifest` (a signed directory's) that the loader did not read — not
/// the model file, not the external data in `read` — against its signed digest.
///
/// # Errors
/// [`Error::Signature`] ([`SignatureError::Digest`]) for a file that is not what was signed;
/// [`Error::Io`] for one that cannot be read.
pub(crate) fn check_unread<'a>(
    model_path: &Path,
    manifest: &Manifest,
    read: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let dir = crate::layout::model_dir(model_path);
    let model = model_path.file_name().map(|f| f.to_string_lossy());
    let read: std::collections::HashSet<&str> = read.collect();
    for file in &manifest.files {
        if Some(file.path.as_str()) == model.as_deref() || read.contains(file.path.as_str()) {
            continue;
        }
        let (_, actual): (_, Digest) = read_and_hash(&dir.join(&file.path))?;
        if actual != file.sha256 {
            return Err(Error::Signature {
                path: model_path.to_owned(),
                source: SignatureError::Digest {
                    path: file.path.clone(),
                    actual,
                    signed: file.sha256,
                },
            });
        }
    }
    Ok(())
}
