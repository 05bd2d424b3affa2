//! Publishing into the shared directory so that readers only ever see complete, verified
//! versions: files are staged under `<root>/.kiln/`, the manifest written last, the version
//! directory renamed into place (atomic on one filesystem), then `current` replaced by renaming
//! a new symlink over it. A version already published with the right digests is kept as is;
//! a version directory is never rewritten (new bytes under a used name get a new name).
//! Everything here blocks on the filesystem: the agent calls it on blocking threads.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln::layout::{self, CURRENT_LINK, MANIFEST_FILE, STAGING_DIR};
use kiln::{Digest, Manifest};

use crate::config::Model;
use crate::error::{AgentError, Result};

/// `<root>/.kiln`, created if missing.
pub(crate) fn staging_root(root: &Path) -> Result<PathBuf> {
    let dir = root.join(STAGING_DIR);
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    Ok(dir)
}

/// Where a file's download lives until it is verified: a path fixed by model, version and
/// file (`.kiln/parts/<model>/<version>/<file>.partial`), so a restarted agent finds its
/// partial download and journal again, and [`sweep_partials`] can tell whose it is.
pub(crate) fn partial_path(root: &Path, model: &str, version: &str, file: &str) -> Result<PathBuf> {
    let dir = parts_root(root)?.join(model).join(version);
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    let flat: String = file
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    Ok(dir.join(format!("{flat}.partial")))
}

fn parts_root(root: &Path) -> Result<PathBuf> {
    Ok(staging_root(root)?.join("parts"))
}

/// Removes partial downloads (and their journals) no plan owns: with `model`, every version
/// of that model's but `keep` (a download to resume); without, every model's not in
/// `models` (a model taken out of the configuration), and anything else under `parts/` (the
/// flat names of older agents). Partials would otherwise stay until the `emptyDir`'s
/// `sizeLimit` evicts the pod. Returns what was removed.
pub(crate) fn sweep_partials(root: &Path, scope: Sweep<'_>) -> Vec<PathBuf> {
    let Ok(parts) = parts_root(root) else {
        return Vec::new();
    };
    let dir = match scope {
        Sweep::Model { model, .. } => parts.join(model),
        Sweep::Unconfigured(_) => parts,
    };
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.to_str().is_some_and(|n| scope.keeps(n)) && e.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let path = e.path();
        let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    // A kept version with nothing left to resume, then a model with nothing: no directory.
    if let Sweep::Model { keep: Some(v), .. } = scope {
        let _ = std::fs::remove_dir(dir.join(v));
    }
    if matches!(scope, Sweep::Model { .. }) {
        let _ = std::fs::remove_dir(&dir);
    }
    removed
}

/// Whose partial downloads [`sweep_partials`] looks at.
#[derive(Clone, Copy)]
pub(crate) enum Sweep<'a> {
    /// One model's: every version but `keep`.
    Model {
        /// The model.
        model: &'a str,
        /// The version whose partials stay, if any.
        keep: Option<&'a str>,
    },
    /// Every model's not named here.
    Unconfigured(&'a [&'a str]),
}

impl Sweep<'_> {
    /// Whether the directory `name` (a version, or a model) stays.
    fn keeps(&self, name: &str) -> bool {
        match self {
            Self::Model { keep, .. } => *keep == Some(name),
            Self::Unconfigured(models) => models.contains(&name),
        }
    }
}

/// A fresh staging directory for one version.
pub(crate) fn new_stage(root: &Path, model: &str, version: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = staging_root(root)?.join(format!(
        "stage-{model}-{version}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(AgentError::io(&dir))?;
    Ok(dir)
}

/// SHA-256 of a file, streamed (bounded memory whatever its size).
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest::from_bytes(h.finalize().into()), total))
}

/// Whether `<root>/<model>/<version>` is published with every configured file at the
/// configured digest (re-hashed: a node cache mounted at the root may hold anything).
///
/// With `signer` (a signed model, `model.files` its signed set), the version must also hold
/// exactly those files and have been published as signed by the same signer.
pub(crate) fn already_published(
    root: &Path,
    model: &Model,
    version: &str,
    signer: Option<&str>,
) -> Result<bool> {
    let dir = layout::version_dir(root, &model.name, version).map_err(|e| AgentError::Config {
        field: "version".into(),
        reason: e.to_string(),
    })?;
    let Ok(Some((_, manifest))) = Manifest::read_in(&dir) else {
        return Ok(false);
    };
    // A listed prefix names no files of its own: every file its manifest lists is checked.
    let listed: Vec<_>;
    let wanted: Vec<(&str, Option<kiln::Digest>)> = if model.is_listed() {
        listed = manifest.files.iter().map(|f| f.path.clone()).collect();
        listed.iter().map(|p| (p.as_str(), None)).collect()
    } else {
        model
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.sha256))
            .collect()
    };
    if wanted.is_empty() {
        return Ok(false);
    }
    if signer.is_some()
        && (manifest.signer.as_deref() != signer || manifest.files.len() != wanted.len())
    {
        return Ok(false);
    }
    for (path, sha256) in wanted {
        let Some(entry) = manifest.file(path) else {
            return Ok(false);
        };
        if sha256.is_some_and(|want| want != entry.sha256) {
            return Ok(false);
        }
        match hash_file(&dir.join(path)) {
            Ok((digest, size)) if digest == entry.sha256 && size == entry.size => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Publishes the stage as a version of `manifest.model` and points `current` at it; returns
/// the version directory's name. A version directory is never rewritten: when
/// `<model>/<version>` exists already (other bytes under a reused label: a store that
/// reuses version ids, a node cache holding anything), the stage is published as
/// `<version>-<content digest prefix>` instead, or, if that directory already holds exactly
/// these files (re-hashed), `current` moves to it and the stage is dropped. `current` moves
/// once, from one complete directory to another; a reader never sees it dangle.
pub(crate) fn publish(root: &Path, stage: &Path, manifest: &mut Manifest) -> Result<String> {
    let model_dir = root.join(&manifest.model);
    std::fs::create_dir_all(&model_dir).map_err(AgentError::io(&model_dir))?;
    if model_dir.join(&manifest.version).exists() {
        let fresh = format!("{}-{}", manifest.version, &content_digest(manifest)[..12]);
        if holds_exactly(&model_dir.join(&fresh), manifest) {
            let _ = std::fs::remove_dir_all(stage);
            point_current(&model_dir, &fresh)?;
            return Ok(fresh);
        }
        manifest.version = if model_dir.join(&fresh).exists() {
            // The same digest prefix, other files: astronomically unlikely, still no rewrite.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{fresh}-{nanos}")
        } else {
            fresh
        };
    }
    let manifest_tmp = stage.join(format!(".{MANIFEST_FILE}.tmp"));
    std::fs::write(&manifest_tmp, manifest.to_json()).map_err(AgentError::io(&manifest_tmp))?;
    sync_file(&manifest_tmp)?;
    std::fs::rename(&manifest_tmp, stage.join(MANIFEST_FILE)).map_err(AgentError::io(stage))?;
    sync_dir(stage)?;
    let target = model_dir.join(&manifest.version);
    // Onto a name that does not exist: a directory is renamed into place whole, or not at all.
    std::fs::rename(stage, &target).map_err(AgentError::io(&target))?;
    point_current(&model_dir, &manifest.version)?;
    Ok(manifest.version.clone())
}

/// A digest of a manifest's files (paths, digests, sizes): what a version holds.
pub(crate) fn content_digest(manifest: &Manifest) -> String {
    let mut files: Vec<_> = manifest.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut identity = Vec::new();
    for f in files {
        identity.extend_from_slice(format!("{}\0{}\0{}\n", f.path, f.sha256, f.size).as_bytes());
    }
    kiln::Digest::of(&identity).to_string()
}

/// Whether `dir` is a published version holding exactly `manifest`'s files, re-hashed.
fn holds_exactly(dir: &Path, manifest: &Manifest) -> bool {
    let Ok(Some((_, there))) = Manifest::read_in(dir) else {
        return false;
    };
    content_digest(&there) == content_digest(manifest)
        && there.signer == manifest.signer
        && there
            .files
            .iter()
            .all(|f| hash_file(&dir.join(&f.path)).is_ok_and(|(d, n)| d == f.sha256 && n == f.size))
}

/// Atomically points `<model_dir>/current` at `version` (a new link renamed over the old).
pub(crate) fn point_current(model_dir: &Path, version: &str) -> Result<()> {
    let link = model_dir.join(CURRENT_LINK);
    if std::fs::read_link(&link).ok().as_deref() == Some(Path::new(version)) {
        return Ok(());
    }
    let tmp = model_dir.join(format!(".{CURRENT_LINK}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(AgentError::io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(AgentError::io(&link))?;
    sync_dir(model_dir)
}

/// Removes the oldest published versions of a model beyond `keep` (by modification time),
/// never the one `current` points at. Returns the removed version names.
pub(crate) fn collect_garbage(model_dir: &Path, keep: usize) -> Vec<String> {
    let current = std::fs::read_link(model_dir.join(CURRENT_LINK)).ok();
    let mut versions: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(model_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            layout::check_name("version", &name).ok()?;
            Some((e.metadata().and_then(|m| m.modified()).ok()?, name))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut removed = Vec::new();
    for (_, name) in versions.into_iter().skip(keep) {
        if current.as_deref() == Some(Path::new(&name)) {
            continue;
        }
        if std::fs::remove_dir_all(model_dir.join(&name)).is_ok() {
            removed.push(name);
        }
    }
    removed
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(AgentError::io(path))
}

fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(AgentError::io(path))
}

/// Now as RFC 3339 UTC (`2026-11-22T12:00:00Z`), without a date library.
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_the_right_shape() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(
            now.starts_with("20") && now.ends_with('Z') && now.as_bytes()[10] == b'T',
            "{now}"
        );
    }

    #[test]
    fn current_is_replaced_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("1")).expect("v1");
        std::fs::create_dir(dir.path().join("2")).expect("v2");
        point_current(dir.path(), "1").expect("first");
        point_current(dir.path(), "2").expect("swap");
        assert_eq!(
            std::fs::read_link(dir.path().join("current")).expect("link"),
            Path::new("2")
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            3,
            "no temporary link left behind"
        );
    }
}
