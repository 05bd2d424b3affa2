//! Label files (`labels/<output>.txt` beside the model): loaded with the model on real ONNX
//! Runtime only when pinned like every other file of the version (manifest, option or
//! signature), and refused — not ignored — when unpinned, changed, not UTF-8, too large, or
//! named after no output.

mod common;

use std::path::{Path, PathBuf};

use common::{runtime, sha256_of, testdata};
use kiln::{Checksum, Error, Manifest, ManifestFile, Model, ModelOptions};

const LABELS: &str = "labels/y.txt";

/// A copy of `mlp.onnx` (output `y`, 4 classes) with `files` (path, bytes) beside it.
fn dir_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model.onnx");
    std::fs::copy(testdata("mlp.onnx"), &model).expect("copy");
    for (path, bytes) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
    (dir, model)
}

/// Writes a manifest listing the model and `listed` as they are on disk now.
fn manifest(dir: &Path, listed: &[&str]) {
    let files = std::iter::once("model.onnx")
        .chain(listed.iter().copied())
        .map(|f| {
            let p = dir.join(f);
            ManifestFile {
                path: f.into(),
                sha256: sha256_of(&p),
                size: std::fs::metadata(&p).expect("size").len(),
            }
        })
        .collect();
    let m = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: "mlp".into(),
        version: "1".into(),
        source: None,
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-12-06T00:00:00Z".into(),
        files,
    };
    std::fs::write(dir.join(kiln::layout::MANIFEST_FILE), m.to_json()).expect("manifest");
}

fn labels(model: &Model) -> Vec<String> {
    model.metadata().labels["y"].to_vec()
}

#[test]
fn a_label_file_in_the_manifest_is_loaded_with_the_model() {
    let (dir, path) = dir_with(&[(LABELS, b"cat\r\ndog\n\nfish\n")]);
    manifest(dir.path(), &[LABELS]);
    let model = Model::load(&runtime(), &path, &ModelOptions::new()).expect("loads");
    assert_eq!(labels(&model), ["cat", "dog", "", "fish"]);
    // Without a label file, there are none.
    let (dir, path) = dir_with(&[]);
    manifest(dir.path(), &[]);
    let model = Model::load(&runtime(), &path, &ModelOptions::new()).expect("loads");
    assert!(model.metadata().labels.is_empty());
}

#[test]
fn an_unpinned_or_changed_label_file_refuses_the_load() {
    // On disk but not in the manifest: never served unverified, never silently ignored.
    let (dir, path) = dir_with(&[(LABELS, b"cat\n")]);
    manifest(dir.path(), &[]);
    let e = Model::load(&runtime(), &path, &ModelOptions::new()).expect_err("unpinned");
    assert!(
        matches!(&e, Error::ChecksumRequired { reason, .. } if reason.contains("labels/y.txt")),
        "{e}"
    );
    // Changed after the manifest was written.
    let (dir, path) = dir_with(&[(LABELS, b"cat\n")]);
    manifest(dir.path(), &[LABELS]);
    std::fs::write(dir.path().join(LABELS), b"dog\n").expect("tamper");
    let e = Model::load(&runtime(), &path, &ModelOptions::new()).expect_err("changed");
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e}");
    // Listed in the manifest but gone.
    let (dir, path) = dir_with(&[(LABELS, b"cat\n")]);
    manifest(dir.path(), &[LABELS]);
    std::fs::remove_file(dir.path().join(LABELS)).expect("rm");
    let e = Model::load(&runtime(), &path, &ModelOptions::new()).expect_err("missing");
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn a_caller_pins_label_files_as_it_pins_external_data() {
    let (dir, path) = dir_with(&[(LABELS, b"a\nb\n")]);
    let digest = sha256_of(&path);
    let e = Model::load(
        &runtime(),
        &path,
        &ModelOptions::new().with_checksum(Checksum::Sha256(digest)),
    )
    .expect_err("the model is pinned, its labels are not");
    assert!(
        matches!(&e, Error::ChecksumRequired { reason, .. } if reason.contains("with_external_data_checksum")),
        "{e}"
    );
    let pinned = ModelOptions::new()
        .with_checksum(Checksum::Sha256(digest))
        .with_external_data_checksum(LABELS, sha256_of(&dir.path().join(LABELS)));
    let model = Model::load(&runtime(), &path, &pinned).expect("pinned");
    assert_eq!(labels(&model), ["a", "b"]);
    // Checksum::Skip reads them unverified, as it does the model.
    let skip = ModelOptions::new().with_checksum(Checksum::Skip);
    assert_eq!(
        labels(&Model::load(&runtime(), &path, &skip).expect("skip")),
        ["a", "b"]
    );
}

#[test]
fn label_files_that_cannot_be_served_are_refused_by_name() {
    let skip = ModelOptions::new().with_checksum(Checksum::Skip);
    let refused = |files: &[(&str, &[u8])]| {
        let (_dir, path) = dir_with(files);
        Model::load(&runtime(), &path, &skip)
            .expect_err("refused")
            .to_string()
    };
    // A typo in the output's name: the outputs are listed.
    let e = refused(&[("labels/Y.txt", b"a\n")]);
    assert!(e.contains("labels/Y.txt") && e.contains("[\"y\"]"), "{e}");
    // Not a label file.
    let e = refused(&[("labels/y.csv", b"a\n")]);
    assert!(e.contains("<output>.txt"), "{e}");
    let e = refused(&[("labels/sub/y.txt", b"a\n")]);
    assert!(e.contains("<output>.txt"), "{e}");
    // Not text.
    let e = refused(&[(LABELS, b"cat\n\xff\xfe\n")]);
    assert!(e.contains("UTF-8"), "{e}");
    // Over the size limit: refused before it is read.
    let big = vec![b'a'; (kiln::labels::MAX_LABEL_FILE_BYTES + 1) as usize];
    let e = refused(&[(LABELS, &big)]);
    assert!(e.contains("over the limit"), "{e}");
}

#[test]
fn a_label_file_linked_out_of_the_model_directory_is_refused() {
    let outside = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(outside.path(), b"secret\n").expect("write");
    let (dir, path) = dir_with(&[]);
    std::fs::create_dir_all(dir.path().join("labels")).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join(LABELS)).expect("link");
    let skip = ModelOptions::new().with_checksum(Checksum::Skip);
    let e = Model::load(&runtime(), &path, &skip).expect_err("outside");
    assert!(
        matches!(&e, Error::InvalidLabels { reason, .. } if reason.contains("outside")),
        "{e}"
    );
}

#[test]
fn the_readme_names_the_file_and_limit_kiln_uses() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).expect("README");
    let from = readme
        .find("Class labels, Triton's")
        .expect("the labels paragraph");
    let text = &readme[from..from + readme[from..].find("\n\n").expect("paragraph end")];
    let file = kiln::labels::label_file("save_infer_model/scale_0.tmp_1");
    assert!(text.contains(&format!("reads `{file}`")), "{text}");
    let mib = kiln::labels::MAX_LABEL_FILE_BYTES >> 20;
    assert!(text.contains(&format!("over {mib} MiB")), "{text}");
}
