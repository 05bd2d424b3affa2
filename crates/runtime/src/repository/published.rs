//! What the publisher has put on disk for a model, as the watcher compares it: the version
//! `current` points at *and* the digest of that version's manifest.
//!
//! The version name alone is not enough: a publisher may re-publish a version under the same
//! name with new bytes, and the manifest (which lists every file's sha256) is what changes
//! then. Hashing the manifest — a few hundred bytes — on each poll is the cheap, exact way to
//! see it.

use std::path::{Path, PathBuf};

use crate::checksum::Digest;
use crate::error::{Error, Result};
use crate::layout::{self, CURRENT_LINK, MANIFEST_FILE};
use crate::manifest::Manifest;

/// One published version: its name and the sha256 of its `kiln-manifest.json` bytes
/// (`None` when it has no readable manifest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Published {
    /// The version directory's name.
    pub(crate) version: String,
    /// The digest of the manifest's bytes.
    pub(crate) manifest: Option<Digest>,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manifest {
            Some(d) => write!(f, "{} (manifest sha256 {d})", self.version),
            None => write!(f, "{} (no manifest)", self.version),
        }
    }
}

impl Published {
    /// `version` of the model in `model_dir`, with its manifest's digest as it is now.
    pub(crate) fn read(model_dir: &Path, version: &str) -> Self {
        let manifest = std::fs::read(model_dir.join(version).join(MANIFEST_FILE))
            .ok()
            .map(|bytes| Digest::of(&bytes));
        Self {
            version: version.to_owned(),
            manifest,
        }
    }
}

/// What `<model_dir>/current` points at, if it is a valid version name with a directory.
pub(crate) fn current(model_dir: &Path) -> Option<Published> {
    let target = std::fs::read_link(model_dir.join(CURRENT_LINK)).ok()?;
    let name = target.file_name()?.to_str()?;
    layout::check_name("version", name).ok()?;
    model_dir
        .join(name)
        .is_dir()
        .then(|| Published::read(model_dir, name))
}

/// A version's manifest, read once: the parsed manifest, its path, and the [`Published`]
/// key of exactly those bytes (so what is recorded as loaded is what was loaded).
pub(crate) fn manifest(dir: &Path, version: &str) -> Result<(PathBuf, Manifest, Published)> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ChecksumRequired {
                path: dir.to_owned(),
                reason: format!("no {MANIFEST_FILE} in the published version"),
            })
        }
        Err(source) => return Err(Error::Io { path, source }),
    };
    let text = String::from_utf8_lossy(&bytes);
    let manifest = Manifest::from_json(&path, &text)?;
    let key = Published {
        version: version.to_owned(),
        manifest: Some(Digest::of(&bytes)),
    };
    Ok((path, manifest, key))
}

/// The other complete versions of the model in `model_dir` (with a valid manifest), newest
/// first by their manifest's `created` time.
pub(crate) fn others_newest_first(model_dir: &Path, except: &str) -> Vec<Published> {
    let Ok(entries) = std::fs::read_dir(model_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Published)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| v != except && layout::check_name("version", v).is_ok())
        .filter_map(|v| {
            let (_, m, key) = manifest(&model_dir.join(&v), &v).ok()?;
            Some((m.created, key))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.version.cmp(&a.1.version)));
    found.into_iter().map(|(_, key)| key).collect()
}
