//! Why a directory under the root is not served: the answer a user needs when a model they
//! copied in never becomes ready.
//!
//! The watcher serves `<model>/current -> <version>` with a `kiln-manifest.json` and nothing
//! else. A directory without a usable `current` used to be skipped in silence, so a Triton
//! model repository (`<model>/1/model.onnx`) or a KServe model directory pointed at with
//! `--root` gave a server that never became ready and said nothing. Each such directory (and
//! each `.onnx` file in the root itself) now gets a diagnosis: a warning in the log (for a
//! publish between its two steps, only once it has stayed so for the grace period), an entry
//! in the repository index (state `UNAVAILABLE`, as Triton lists a model it could not load)
//! and the reason in the 404 for the model.

use std::path::Path;

use crate::layout::{self, CURRENT_LINK, MANIFEST_FILE};

/// Why a model directory is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unpublished {
    /// A sentence for people: what was found and what kiln needs instead.
    pub(crate) reason: String,
    /// Whether a version with a manifest is there, `current` not yet: what a publisher
    /// looks like between its two steps, worth a warning only if it stays so.
    pub(crate) publishing: bool,
}

/// The diagnosis of `model_dir` (called `name` under the root), whose `current` is missing
/// or does not name a version directory.
pub(crate) fn diagnose(model_dir: &Path, name: &str) -> Unpublished {
    let link = model_dir.join(CURRENT_LINK);
    let not_publishing = |reason: String| Unpublished {
        reason,
        publishing: false,
    };
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(&link)
                .map(|t| printable(&t.display().to_string()))
                .unwrap_or_default();
            return not_publishing(format!(
                "`{name}/{CURRENT_LINK}` points at `{target}`, which is not a version \
                 directory of `{name}`"
            ));
        }
        Ok(_) => {
            return not_publishing(format!(
                "`{name}/{CURRENT_LINK}` is not a symlink: kiln serves the version directory \
                 `{CURRENT_LINK}` links to (kiln-agent replaces the link atomically)"
            ))
        }
        Err(_) => {}
    }
    let mut with_manifest = Vec::new();
    let mut onnx_in_version = None;
    let mut onnx_here = None;
    let mut triton_config = false;
    // By name: the same directory gets the same diagnosis on every replica and every scan.
    let mut entries: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(model_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    entries.sort();
    for (raw, path) in entries {
        // Checked as it is, written with control characters escaped.
        let file_name = printable(&raw);
        if path.is_dir() {
            if layout::check_name("version", &raw).is_err() {
                continue;
            }
            if path.join(MANIFEST_FILE).is_file() {
                with_manifest.push(file_name);
            } else if onnx_in_version.is_none() {
                onnx_in_version = first_onnx(&path).map(|f| format!("{file_name}/{f}"));
            }
        } else if raw == "config.pbtxt" {
            triton_config = true;
        } else if onnx_here.is_none() && is_onnx(&raw) {
            onnx_here = Some(file_name);
        }
    }
    with_manifest.sort();
    let needs = format!(
        "kiln serves a verified version: `{name}/{CURRENT_LINK}` -> `<version>`, whose \
         {MANIFEST_FILE} lists every file's sha256 (what kiln-agent publishes)"
    );
    if !with_manifest.is_empty() {
        return Unpublished {
            reason: format!(
                "no `{name}/{CURRENT_LINK}` link yet; version(s) {} have a {MANIFEST_FILE} \
                 (a publish in progress, or one that stopped before linking)",
                with_manifest.join(", ")
            ),
            publishing: true,
        };
    }
    let serve_plain = |dir: &str| {
        format!(
            "to serve one plain model directory, run `kiln-server --model-dir {dir} --verify \
             sha256:<digest of the .onnx file>` (or `--no-verify`)"
        )
    };
    if let Some(file) = onnx_in_version {
        let version = file.split('/').next().unwrap_or_default().to_owned();
        let config = if triton_config {
            " (Triton's config.pbtxt is not read: batching settings go in `--config`)"
        } else {
            ""
        };
        return not_publishing(format!(
            "`{name}/{file}` without `{name}/{CURRENT_LINK}` or a {MANIFEST_FILE} looks like \
             a Triton model repository{config}; {needs}; {}",
            serve_plain(&format!("<root>/{name}/{version}"))
        ));
    }
    if let Some(file) = onnx_here.as_ref().filter(|_| is_version_number(name)) {
        return not_publishing(format!(
            "`{name}/{file}`: the root looks like one Triton model directory \
             (`<model>/<version>/model.onnx`), not a repository of them; {needs}; {}",
            serve_plain(&format!("<root>/{name}"))
        ));
    }
    if let Some(file) = onnx_here {
        return not_publishing(format!(
            "`{name}/{file}` sits in the model directory itself (KServe's layout); {needs}; {}",
            serve_plain(&format!("<root>/{name}"))
        ));
    }
    not_publishing(format!(
        "no `{name}/{CURRENT_LINK}` and no model file found; {needs}"
    ))
}

/// Why an `.onnx` file directly in the root (`file_name`) is not served: the root holds model
/// directories; this is KServe's `/mnt/models` given as `--root`.
pub(crate) fn diagnose_root_file(file_name: &str) -> Unpublished {
    Unpublished {
        reason: format!(
            "`{}` sits in the repository root itself; the root holds one directory per model, \
             each with `current` -> `<version>` and a {MANIFEST_FILE} (what kiln-agent \
             publishes); to serve this one plain model directory, run `kiln-server \
             --model-dir <root> --verify sha256:<digest of the .onnx file>` (or `--no-verify`)",
            printable(file_name)
        ),
        publishing: false,
    }
}

/// Whether a directory name is a Triton version number (digits only).
fn is_version_number(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

/// `name` with control characters escaped: it goes into log lines and HTTP answers.
fn printable(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `file_name` names an ONNX model file.
pub(crate) fn is_onnx(file_name: &str) -> bool {
    Path::new(file_name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The name of an `.onnx` file directly in `dir`, if any (`model.onnx` first).
fn first_onnx(dir: &Path) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| is_onnx(f))
        .map(|f| printable(&f))
        .collect();
    found.sort_by_key(|f| (f != "model.onnx", f.clone()));
    found.into_iter().next()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn names_each_layout_it_finds() {
        let root = tempfile::tempdir().expect("root");
        let r = root.path();
        touch(&r.join("triton/1/model.onnx"));
        touch(&r.join("triton/config.pbtxt"));
        touch(&r.join("kserve/classifier.onnx"));
        touch(&r.join("midway/7").join(MANIFEST_FILE));
        touch(&r.join("empty/notes.txt"));
        std::fs::create_dir_all(r.join("dangling")).expect("mkdir");
        std::os::unix::fs::symlink("9", r.join("dangling").join(CURRENT_LINK)).expect("link");
        touch(&r.join("plainlink").join(CURRENT_LINK));
        touch(&r.join("odd/1/a\nWARN forged.onnx"));
        touch(&r.join("1/model.onnx"));

        let triton = diagnose(&r.join("triton"), "triton");
        assert!(!triton.publishing);
        for part in [
            "`triton/1/model.onnx`",
            "Triton model repository",
            "config.pbtxt",
            "--model-dir <root>/triton/1",
        ] {
            assert!(triton.reason.contains(part), "{part}: {}", triton.reason);
        }
        let kserve = diagnose(&r.join("kserve"), "kserve");
        assert!(kserve.reason.contains("`kserve/classifier.onnx`"));
        assert!(kserve.reason.contains("--model-dir <root>/kserve "));
        let midway = diagnose(&r.join("midway"), "midway");
        assert!(midway.publishing, "{}", midway.reason);
        assert!(midway.reason.contains("version(s) 7"));
        let empty = diagnose(&r.join("empty"), "empty");
        assert!(empty.reason.contains("no model file found"));
        let dangling = diagnose(&r.join("dangling"), "dangling");
        assert!(
            dangling.reason.contains("points at `9`"),
            "{}",
            dangling.reason
        );
        let plain = diagnose(&r.join("plainlink"), "plainlink");
        assert!(plain.reason.contains("is not a symlink"));
        let odd = diagnose(&r.join("odd"), "odd");
        assert!(
            odd.reason.contains("a\\nWARN forged.onnx"),
            "{}",
            odd.reason
        );
        assert!(!odd.reason.contains('\n'));
        let version = diagnose(&r.join("1"), "1");
        assert!(
            version.reason.contains("one Triton model directory"),
            "{}",
            version.reason
        );
        let file = diagnose_root_file("model.onnx");
        assert!(
            file.reason.contains("--model-dir <root> "),
            "{}",
            file.reason
        );
    }
}
