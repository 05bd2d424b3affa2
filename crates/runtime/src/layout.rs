//! The on-disk layout of a model repository, shared by the agent (which writes it) and the
//! runtime (which reads it), so the two can never disagree:
//!
//! ```text
//! <root>/<model>/<version>/...files...          immutable once published
//! <root>/<model>/<version>/kiln-manifest.json   files with sha256 and size, source, time
//! <root>/<model>/current -> <version>           symlink, replaced atomically
//! <root>/.kiln/                                 staging, partial downloads, journals
//! ```

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the manifest inside a version directory.
pub const MANIFEST_FILE: &str = "kiln-manifest.json";
/// Name of the symlink that points at a model's published version.
pub const CURRENT_LINK: &str = "current";
/// Name of the staging directory at the repository root.
pub const STAGING_DIR: &str = ".kiln";

/// Checks that `name` can be a model or version directory name: one non-empty path
/// component, not `.`/`..`, not hidden (a leading `.` is reserved for staging), and not
/// the `current` link name.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `field`.
pub fn check_name(field: &'static str, name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidConfig {
            field,
            reason: format!("{name:?} {reason}"),
        })
    };
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes long");
    }
    if name.starts_with('.') {
        return bad("must not start with '.' (reserved for staging)");
    }
    if name == CURRENT_LINK {
        return bad("is reserved for the current-version link");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control())
    {
        return bad("must not contain '/', '\\', NUL or control characters");
    }
    Ok(())
}

/// `<root>/<model>/<version>`, after checking both names with [`check_name`].
///
/// # Errors
/// [`Error::InvalidConfig`] if either name is unsafe as a directory name.
pub fn version_dir(root: &Path, model: &str, version: &str) -> Result<PathBuf> {
    check_name("model", model)?;
    check_name("version", version)?;
    Ok(root.join(model).join(version))
}

/// The directory the model file at `path` is in (`.` for a bare file name): where its
/// manifest, external data, label files and signed files are found.
pub fn model_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Checks that `path` is a relative path that stays inside its base directory (only normal
/// components: no root, no `..`, no `.`), as every path in a manifest must be.
pub fn is_contained_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_collide_are_rejected() {
        for bad in ["", ".", "..", ".kiln", "a/b", "current", "x\0y", "a\\b"] {
            assert!(check_name("model", bad).is_err(), "{bad:?}");
        }
        for good in ["magika", "v3", "2024-01-01", "model_1.onnx"] {
            assert!(check_name("model", good).is_ok(), "{good:?}");
        }
        let dir = version_dir(Path::new("/models"), "m", "7").expect("valid");
        assert_eq!(dir, Path::new("/models/m/7"));
    }

    #[test]
    fn manifest_paths_must_stay_inside() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a\\..\\b"] {
            assert!(!is_contained_relative(bad), "{bad:?}");
        }
        for good in ["model.onnx", "sub/dir/weights.bin"] {
            assert!(is_contained_relative(good), "{good:?}");
        }
    }
}
