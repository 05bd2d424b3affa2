//! Unpacking an archive layer into a version's staging directory, entry by entry, without
//! trusting the archive: only regular files and directories are written; an entry's path is
//! normalised (`./`, leading `/`, empty and `.` segments dropped) and must then stay inside
//! the version without `..` and not collide with the manifest ([`super::check_path`]), so one
//! file has one name and the list of files is what is on disk; symbolic and hard links,
//! devices, FIFOs and sparse files in the kept tree are refused (kiln publishes regular files,
//! and a link could point out of the version); entries outside the kept subtree (a modelcar's
//! base image) are skipped unwritten. Whiteouts (`.wh.<name>`, `.wh..wh..opq`, and a
//! whiteout of the subtree itself) remove what lower layers wrote, as the OCI layer spec says
//! (never what the same layer wrote); a file may replace a lower layer's directory and the
//! other way round. Every file is hashed as it is written; the bytes written and the number of
//! entries are bounded ([`Budget`]: a compressed layer can expand without limit). Runs on a
//! blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use kiln::manifest::ManifestFile;
use sha2::Digest as _;

use super::Unpack;

/// The most entries (files, directories, whiteouts) a model's layers may hold together.
pub(crate) const MAX_ENTRIES: u64 = 100_000;

/// What a model's archive layers may still write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Bytes of files (the free space above the reserve).
    pub(crate) bytes: u64,
    /// Entries of the kept trees.
    pub(crate) entries: u64,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    /// An entry the agent will not write.
    #[error("archive entry {path:?} {reason}")]
    Unsafe { path: String, reason: &'static str },
    /// The archive is not a readable tar (or gzip) stream.
    #[error("the layer is not a readable archive: {0}")]
    Corrupt(String),
    /// Its files would exceed the bytes or entries allowed.
    #[error("the layers unpack to more than {0}")]
    TooLarge(String),
    /// Writing the staging directory failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What an entry's name means once normalised.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// Outside the kept subtree, or the subtree's own directory: not written.
    Skip,
    /// A path inside the version.
    Path(String),
    /// A whiteout of a path (`""`: everything lower layers wrote).
    Whiteout(String),
    /// An opaque whiteout of a directory (`""`: the whole kept tree).
    Opaque(String),
}

/// Normalises an entry's name and places it in the kept subtree.
fn name(raw: &str, subtree: &str) -> Result<Name, &'static str> {
    let mut segments: Vec<&str> = raw
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let sub = subtree.trim_end_matches('/');
    if !sub.is_empty() {
        // A whiteout of the subtree itself, or an opaque root, hides every lower `models/`.
        if segments.len() == 1
            && (segments[0] == ".wh..wh..opq" || segments[0] == format!(".wh.{sub}"))
        {
            return Ok(Name::Opaque(String::new()));
        }
        if segments.first() != Some(&sub) {
            return Ok(Name::Skip);
        }
        segments.remove(0);
    }
    let Some(last) = segments.pop() else {
        return Ok(Name::Skip);
    };
    let dir = segments.join("/");
    let join = |leaf: &str| {
        if dir.is_empty() {
            leaf.to_owned()
        } else {
            format!("{dir}/{leaf}")
        }
    };
    if last == ".wh..wh..opq" {
        if !dir.is_empty() {
            super::check_path(&dir)?;
        }
        return Ok(Name::Opaque(dir));
    }
    if let Some(target) = last.strip_prefix(".wh.") {
        if target.is_empty() {
            return Err("is a whiteout of nothing");
        }
        let gone = join(target);
        super::check_path(&gone)?;
        return Ok(Name::Whiteout(gone));
    }
    let path = join(last);
    super::check_path(&path)?;
    Ok(Name::Path(path))
}

/// Removes from `files` and from disk what lower layers wrote at `gone` or under it (`""`:
/// everything), sparing what `this_layer` wrote.
fn white_out(
    stage: &Path,
    files: &mut BTreeMap<String, ManifestFile>,
    this_layer: &HashSet<String>,
    gone: &str,
) -> Result<(), UnpackError> {
    let prefix = format!("{gone}/");
    let doomed: Vec<String> = files
        .keys()
        .filter(|p| gone.is_empty() || *p == gone || p.starts_with(&prefix))
        .filter(|p| !this_layer.contains(*p))
        .cloned()
        .collect();
    for p in doomed {
        files.remove(&p);
        let at = stage.join(&p);
        std::fs::remove_file(&at).map_err(io(&at))?;
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError {
    let path = path.display().to_string();
    move |source| UnpackError::Io { path, source }
}

/// Unpacks `archive` into `stage`, recording files in `files` (by path: a later layer's file
/// replaces an earlier one's), spending `budget`.
pub(crate) fn unpack(
    archive: &Path,
    stage: &Path,
    spec: &Unpack,
    files: &mut BTreeMap<String, ManifestFile>,
    budget: &mut Budget,
) -> Result<(), UnpackError> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let reader: Box<dyn Read> = if spec.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut tar = tar::Archive::new(reader);
    let corrupt = |e: std::io::Error| {
        let mut m = e.to_string();
        m.truncate(m.floor_char_boundary(200));
        UnpackError::Corrupt(m)
    };
    // Paths this layer wrote: its own whiteouts never remove them.
    let mut this_layer = HashSet::new();
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes();
        let shown = String::from_utf8_lossy(&raw)
            .chars()
            .take(200)
            .collect::<String>();
        let unsafe_entry = |reason| UnpackError::Unsafe {
            path: shown.clone(),
            reason,
        };
        let raw = std::str::from_utf8(&raw)
            .map_err(|_| unsafe_entry("is not UTF-8"))?
            .to_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            // Metadata for the entries that follow (`tar` applies long names and PAX itself).
            continue;
        }
        let name = name(&raw, &spec.subtree).map_err(unsafe_entry)?;
        if name != Name::Skip {
            budget.entries = budget
                .entries
                .checked_sub(1)
                .ok_or_else(|| UnpackError::TooLarge(format!("{MAX_ENTRIES} entries")))?;
        }
        let path = match name {
            Name::Skip => continue,
            Name::Whiteout(gone) | Name::Opaque(gone) => {
                white_out(stage, files, &this_layer, &gone)?;
                continue;
            }
            Name::Path(path) => path,
        };
        let dest = stage.join(&path);
        match kind {
            tar::EntryType::Directory => {
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    // A directory where a lower layer had a file.
                    white_out(stage, files, &this_layer, &path)?;
                }
                std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                this_layer.insert(path);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                match std::fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {
                        // A file where a lower layer (or this one) had a directory.
                        files.retain(|p, _| !p.starts_with(&format!("{path}/")));
                        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
                    }
                    Ok(_) => std::fs::remove_file(&dest).map_err(io(&dest))?,
                    Err(_) => {}
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(io(&dest))?;
                let mut hasher = sha2::Sha256::new();
                let mut size = 0u64;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(corrupt)?;
                    if n == 0 {
                        break;
                    }
                    if n as u64 > budget.bytes {
                        return Err(UnpackError::TooLarge(
                            "the free space above the reserve".into(),
                        ));
                    }
                    budget.bytes -= n as u64;
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(io(&dest))?;
                    size += n as u64;
                }
                out.sync_all().map_err(io(&dest))?;
                let sha256 = kiln::Digest::from_bytes(hasher.finalize().into());
                files.insert(
                    path.clone(),
                    ManifestFile {
                        path: path.clone(),
                        sha256,
                        size,
                    },
                );
                this_layer.insert(path);
            }
            tar::EntryType::Symlink => {
                return Err(unsafe_entry(
                    "is a symbolic link (kiln publishes regular files only)",
                ))
            }
            tar::EntryType::Link => {
                return Err(unsafe_entry(
                    "is a hard link (kiln publishes regular files only)",
                ))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry("is a device file"))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry("is a FIFO")),
            // Sparse files and the rest: not silently dropped from a model.
            _ => {
                return Err(unsafe_entry(
                    "is a kind of entry kiln does not unpack (sparse or unknown)",
                ))
            }
        }
    }
    Ok(())
}

/// Checks that the regular files under `stage` are exactly `files` (nothing else but
/// directories), each of its recorded size: what is published is what the manifest lists.
pub(crate) fn check_stage(
    stage: &Path,
    files: &BTreeMap<String, ManifestFile>,
) -> Result<(), UnpackError> {
    let mut seen = 0usize;
    let mut dirs = vec![stage.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let t = e.file_type().map_err(io(&e.path()))?;
            let rel = e
                .path()
                .strip_prefix(stage)
                .ok()
                .and_then(|r| r.to_str())
                .unwrap_or_default()
                .to_owned();
            if t.is_dir() {
                dirs.push(e.path());
            } else if !t.is_file()
                || files.get(&rel).map(|f| f.size)
                    != Some(e.metadata().map_err(io(&e.path()))?.len())
            {
                return Err(UnpackError::Unsafe {
                    path: rel,
                    reason: "is on disk but not as the unpacked list says",
                });
            } else {
                seen += 1;
            }
        }
    }
    if seen != files.len() {
        return Err(UnpackError::Unsafe {
            path: String::new(),
            reason: "listed files are missing from the version",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_placed_in_the_subtree() {
        let n = |raw: &str| name(raw, "models/");
        assert_eq!(
            n("./models/a//b/./c.onnx"),
            Ok(Name::Path("a/b/c.onnx".into()))
        );
        assert_eq!(n("/models/x"), Ok(Name::Path("x".into())));
        assert_eq!(n("bin/sh"), Ok(Name::Skip));
        assert_eq!(n("models/"), Ok(Name::Skip));
        assert_eq!(n("modelsx/y"), Ok(Name::Skip));
        assert_eq!(n(".wh.models"), Ok(Name::Opaque(String::new())));
        assert_eq!(n(".wh..wh..opq"), Ok(Name::Opaque(String::new())));
        assert_eq!(n("models/.wh..wh..opq"), Ok(Name::Opaque(String::new())));
        assert_eq!(n("models/d/.wh..wh..opq"), Ok(Name::Opaque("d".into())));
        assert_eq!(n("models/d/.wh.w"), Ok(Name::Whiteout("d/w".into())));
        for bad in [
            "models/.wh.",
            "models/d/.wh.",
            "models/../x",
            "models/a/../../x",
            "models/kiln-manifest.json",
            "models/.kiln-manifest.json.tmp",
            "models/kiln-manifest.json/x",
            "models/.wh.kiln-manifest.json",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
        assert_eq!(name("a/b", ""), Ok(Name::Path("a/b".into())));
    }
}
