//! Unpacking an archive layer into a version's staging directory, entry by entry, without
//! trusting the archive: only regular files and directories are written; an entry's path must
//! stay inside the version (no absolute paths, no `..`, not the manifest); symbolic and hard
//! links, devices and FIFOs in the kept tree are refused (kiln publishes regular files, and a
//! link could point out of the version); entries outside the kept subtree (a modelcar's base
//! image) are skipped unread. Whiteouts (`.wh.<name>`, `.wh..wh..opq`) remove what earlier
//! layers wrote. Every file is hashed as it is written, and the bytes written are bounded
//! (a compressed layer can expand without limit). Runs on a blocking thread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use kiln::layout;
use kiln::manifest::ManifestFile;
use sha2::Digest as _;

use super::Unpack;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    /// An entry the agent will not write.
    #[error("archive entry {path:?} {reason}")]
    Unsafe { path: String, reason: &'static str },
    /// The archive is not a readable tar (or gzip) stream.
    #[error("the layer is not a readable archive: {0}")]
    Corrupt(String),
    /// Its files would exceed the bytes allowed.
    #[error("the layer unpacks to more bytes than the free space above the reserve ({limit} bytes were left)")]
    TooLarge { limit: u64 },
    /// Writing the staging directory failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Keeps only the part of an entry's name inside the kept subtree: `None` to skip it.
fn kept<'a>(name: &'a str, subtree: &str) -> Option<&'a str> {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            break;
        }
    }
    let n = if subtree.is_empty() {
        n
    } else {
        n.strip_prefix(subtree)?
    };
    let n = n.trim_end_matches('/');
    (!n.is_empty()).then_some(n)
}

/// Unpacks `archive` into `stage`, recording files in `files` (by path: a later layer's file
/// replaces an earlier one's) and counting bytes against `budget`.
pub(crate) fn unpack(
    archive: &Path,
    stage: &Path,
    spec: &Unpack,
    files: &mut BTreeMap<String, ManifestFile>,
    budget: &mut u64,
) -> Result<(), UnpackError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| UnpackError::Io { path, source }
    };
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let reader: Box<dyn Read> = if spec.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let left_at_start = *budget;
    let mut tar = tar::Archive::new(reader);
    let corrupt = |e: std::io::Error| UnpackError::Corrupt(e.to_string());
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes();
        let name = std::str::from_utf8(&raw)
            .map_err(|_| UnpackError::Unsafe {
                path: String::from_utf8_lossy(&raw).into_owned(),
                reason: "is not UTF-8",
            })?
            .to_owned();
        let Some(rel) = kept(&name, &spec.subtree) else {
            continue;
        };
        let rel = rel.to_owned();
        let unsafe_entry = |reason| UnpackError::Unsafe {
            path: name.clone(),
            reason,
        };
        // Whiteouts: `.wh.<name>` deletes <name>; `.wh..wh..opq` empties its directory.
        let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        if let Some(target) = base.strip_prefix(".wh.") {
            let gone = if target == ".wh..opq" {
                dir.to_owned()
            } else {
                if dir.is_empty() {
                    target.to_owned()
                } else {
                    format!("{dir}/{target}")
                }
            };
            if !gone.is_empty() && !layout::is_contained_relative(&gone) {
                return Err(unsafe_entry("whites out a path outside the version"));
            }
            let prefix = if gone.is_empty() {
                String::new()
            } else {
                format!("{gone}/")
            };
            files.retain(|p, _| *p != gone && !p.starts_with(&prefix));
            let at = stage.join(&gone);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() && target == ".wh..opq" => {
                    for child in std::fs::read_dir(&at).map_err(io(&at))? {
                        let child = child.map_err(io(&at))?.path();
                        remove(&child).map_err(io(&child))?;
                    }
                }
                Ok(_) if !gone.is_empty() => remove(&at).map_err(io(&at))?,
                _ => {}
            }
            continue;
        }
        if !layout::is_contained_relative(&rel) {
            return Err(unsafe_entry("is not a relative path inside the version"));
        }
        if rel == layout::MANIFEST_FILE {
            return Err(unsafe_entry("would replace the manifest kiln writes"));
        }
        let dest = stage.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                match std::fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {
                        return Err(unsafe_entry(
                            "is a file where an earlier entry made a directory",
                        ))
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
                    if n as u64 > *budget {
                        return Err(UnpackError::TooLarge {
                            limit: left_at_start,
                        });
                    }
                    *budget -= n as u64;
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(io(&dest))?;
                    size += n as u64;
                }
                out.sync_all().map_err(io(&dest))?;
                let sha256 = kiln::Digest::from_bytes(hasher.finalize().into());
                files.insert(
                    rel.clone(),
                    ManifestFile {
                        path: rel,
                        sha256,
                        size,
                    },
                );
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
            // Metadata for the entries that follow (`tar` applies long names and PAX itself).
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
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

fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}
