//! A plain model directory served as one model: KServe's layout, where the storage
//! initializer copies the model into `/mnt/models` and writes no kiln manifest.
//!
//! kiln serves nothing unverified without being told to: `--model-dir` needs either
//! `--verify sha256:<digest>` (the `.onnx` file must match, or it is never served) or an
//! explicit `--no-verify` (logged as a warning). The directory is staged as a one-version
//! repository in a scratch directory — links to the files, and a manifest holding the given
//! digest (or, with `--no-verify`, the digests of the files as they are) — so the model goes
//! through the same verified load, readiness and metrics as a published one. Label files
//! (`labels/<output>.txt`, `kiln::labels`) are staged with it. With `--verify` only the model
//! file is pinned: a model with external data or label files needs a signature or
//! `--no-verify`, and says so, naming the file, when it fails to load. With `--signature` (an
//! OpenSSF model-signing bundle and `--trust-public-key` or `--trust-ca-certificates`) the bundle is
//! verified, the directory must hold exactly the signed files, and every file is pinned to its
//! signed digest (checked again as the model loads).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln::{Digest, Manifest, ManifestFile};

/// How the plain model is checked.
#[derive(Debug, Clone)]
pub enum Verify {
    /// The `.onnx` file's expected sha256.
    Sha256(Digest),
    /// An OpenSSF model-signing bundle over the directory, and what must have signed it.
    Signature {
        /// The bundle (relative paths are relative to the model directory).
        bundle: PathBuf,
        /// The trust root.
        trust: kiln::signing::Trust,
    },
    /// Not checked (the operator said so).
    Off,
}

impl std::str::FromStr for Verify {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let hex = raw
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{raw:?} is not sha256:<64 hex digits>"))?;
        hex.parse()
            .map(Verify::Sha256)
            .map_err(|e: kiln::Error| e.to_string())
    }
}

/// Version name of the staged model.
const VERSION: &str = "1";

/// The files (and links to files) directly in `dir`, hidden ones left out.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("read --model-dir {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect())
}

/// A staged repository: a directory of its own, made fresh under `$TMPDIR` and removed when
/// dropped (the model directory itself is untouched).
///
/// Its name is random, never the process id: a server killed outright leaves its directory
/// behind, and a later one with the same id (pid 1 in every container, beside a `/tmp` in an
/// emptyDir that outlives a container restart) would serve from the leftover.
#[derive(Debug)]
pub struct Staged(tempfile::TempDir);

impl Staged {
    /// The repository root to serve.
    pub fn root(&self) -> &Path {
        self.0.path()
    }
}

/// Stages `dir` (exactly one `.onnx` file directly inside, plus any other regular files: its
/// external data) as model `name` in a fresh scratch repository.
///
/// # Errors
/// `dir` unreadable, holding no or several `.onnx` files, a bad model name, or `$TMPDIR` not
/// writable.
pub fn stage(dir: &Path, name: &str, verify: &Verify) -> Result<Staged> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-server-")
        .tempdir()
        .with_context(|| {
            format!(
                "create the scratch repository in {} ($TMPDIR)",
                std::env::temp_dir().display()
            )
        })?;
    stage_in(dir, name, verify, scratch.path())?;
    Ok(Staged(scratch))
}

/// `stage`'s work, in `scratch` (new and empty).
fn stage_in(dir: &Path, name: &str, verify: &Verify, scratch: &Path) -> Result<()> {
    kiln::layout::check_name("model", name).context("--model-name")?;
    // Absolute, so the staged links resolve from the scratch directory.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("--model-dir {}", dir.display()))?;
    // The directory's files, and its label files (`labels/<output>.txt`, kiln::labels).
    let mut files = files_in(dir)?;
    let labels = dir.join(kiln::labels::LABELS_DIR);
    if labels.is_dir() {
        files.extend(files_in(&labels)?);
    }
    files.sort();
    // Each file's path in the version, as the manifest and the signature name it.
    let relative = |file: &Path| -> Result<String> {
        file.strip_prefix(dir)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_owned)
            .with_context(|| format!("a file name that is not UTF-8: {}", file.display()))
    };
    let signed = match verify {
        Verify::Signature { bundle, trust } => {
            let bundle = dir.join(bundle);
            let signed = kiln::signing::verify_file(&bundle, trust)
                .with_context(|| format!("--signature {}", bundle.display()))?;
            files.retain(|f| *f != bundle);
            let names: Vec<String> = files.iter().filter_map(|f| relative(f).ok()).collect();
            signed
                .check_file_set(names.iter().map(String::as_str))
                .with_context(|| format!("--model-dir {}", dir.display()))?;
            tracing::info!(model = name, signer = %signed.signer, "signature verified");
            Some(signed)
        }
        _ => None,
    };
    let models: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.parent() == Some(dir.as_path()) && p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    let [model] = models.as_slice() else {
        bail!(
            "--model-dir {} must hold exactly one .onnx file, found {}",
            dir.display(),
            models.len()
        );
    };
    let version = scratch.join(name).join(VERSION);
    std::fs::create_dir_all(&version)
        .with_context(|| format!("create the scratch repository {}", version.display()))?;
    let mut entries = Vec::new();
    for file in &files {
        let file_name = relative(file)?;
        if file_name == kiln::layout::MANIFEST_FILE {
            // A kiln manifest beside the model (a published version copied as a plain
            // directory): the staged manifest takes its place. Linked, the staged one would be
            // written through the link, over the model directory's file.
            continue;
        }
        let size = std::fs::metadata(file)
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        let sha256 = match (verify, file == *model) {
            (Verify::Sha256(d), true) => Some(*d),
            // Only the model is pinned: other files stay out of the manifest, so a model
            // that needs them, or has label files, fails its load naming the unpinned file.
            (Verify::Sha256(_), false) => None,
            (Verify::Signature { .. }, is_model) => {
                let Some(signed) = signed.as_ref().and_then(|s| s.files.get(&file_name)) else {
                    // A path the signer ignored (`.git`, ...): not served.
                    continue;
                };
                // The model is checked as it loads; every other file (external data, and
                // files only the caller reads) is checked here.
                if !is_model {
                    let (_, digest) = kiln::checksum::read_and_hash(file)?;
                    if digest != *signed {
                        bail!(
                            "{} is not what was signed: sha256 {digest}, signed {signed}",
                            file.display()
                        );
                    }
                }
                Some(*signed)
            }
            (Verify::Off, _) => Some(kiln::checksum::read_and_hash(file)?.1),
        };
        // The model is staged as model.onnx (the only .onnx there); its external data keep
        // their names, the locations the model names them by.
        let path = if file == *model {
            "model.onnx".to_owned()
        } else {
            file_name
        };
        let link = version.join(&path);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(file, &link)
            .with_context(|| format!("link {}", link.display()))?;
        if let Some(sha256) = sha256 {
            entries.push(ManifestFile { path, sha256, size });
        }
    }
    if matches!(verify, Verify::Off) {
        tracing::warn!(model = name, dir = %dir.display(), "--no-verify: serving the model directory without checking any digest");
    }
    let manifest = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: name.to_owned(),
        version: VERSION.to_owned(),
        source: Some(dir.display().to_string()),
        etag: None,
        version_id: None,
        signer: signed.map(|s| s.signer),
        created: "1970-01-01T00:00:00Z".to_owned(),
        files: entries,
    };
    std::fs::write(
        version.join(kiln::layout::MANIFEST_FILE),
        manifest.to_json(),
    )
    .context("write the staged manifest")?;
    let current = scratch.join(name).join(kiln::layout::CURRENT_LINK);
    std::os::unix::fs::symlink(VERSION, &current).context("link current")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_takes_a_prefixed_digest_only() {
        let hex = "ab".repeat(32);
        assert!(matches!(
            format!("sha256:{hex}").parse::<Verify>(),
            Ok(Verify::Sha256(_))
        ));
        for bad in [hex.as_str(), "sha256:abc", "md5:00", ""] {
            assert!(bad.parse::<Verify>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_needs_exactly_one_model() {
        let dir = tempfile::tempdir().expect("dir");
        let err = stage(dir.path(), "m", &Verify::Off).expect_err("empty");
        assert!(err.to_string().contains("exactly one .onnx"), "{err}");
        std::fs::write(dir.path().join("a.onnx"), b"x").expect("a");
        std::fs::write(dir.path().join("b.onnx"), b"y").expect("b");
        let err = stage(dir.path(), "m", &Verify::Off).expect_err("two");
        assert!(err.to_string().contains("found 2"), "{err}");
    }
}
