//! Label files (`labels/<output>.txt` beside the model): loaded with the model on real ONNX
//! Runtime only when pinned like every other file of the version (manifest, option or
//! signature), and refused — not ignored — when unpinned, changed, not UTF-8, too large, or
//! named after no output; other files in `labels/`, or a file named `labels`, are left alone.

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

/// Output `output`'s labels, `""` for a class without one.
fn labels_of(model: &Model, output: &str) -> Vec<String> {
    let l = &model.metadata().labels[output];
    (0..l.len())
        .map(|i| l.get(i).unwrap_or_default().to_owned())
        .collect()
}

fn labels(model: &Model) -> Vec<String> {
    labels_of(model, "y")
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
    // A stray text file (a README, a typo) is no output's.
    let e = refused(&[("labels/README.txt", b"a\n")]);
    assert!(
        e.contains("labels/README.txt") && e.contains("names no output"),
        "{e}"
    );
    // Not text.
    let e = refused(&[(LABELS, b"cat\n\xff\xfe\n")]);
    assert!(e.contains("UTF-8"), "{e}");
    // Over the size limit: refused before it is read.
    let big = vec![b'a'; (kiln::labels::MAX_LABEL_FILE_BYTES + 1) as usize];
    let e = refused(&[(LABELS, &big)]);
    assert!(
        e.contains("label file") && e.contains("over the limit"),
        "{e}"
    );
    // A label longer than a label may be.
    let long = format!("ok\n{}\n", "x".repeat(kiln::labels::MAX_LABEL_BYTES + 1));
    let e = refused(&[(LABELS, long.as_bytes())]);
    assert!(e.contains("label 1 is"), "{e}");
}

#[test]
fn other_files_in_labels_and_a_file_named_labels_are_left_alone() {
    let skip = ModelOptions::new().with_checksum(Checksum::Skip);
    for files in [
        &[
            ("labels/y.csv", &b"a,b\n"[..]),
            ("labels/._y.txt", b"\x00\x05\x16\x07"),
            ("labels/sub/y.txt", b"x\n"),
        ][..],
        &[("labels", b"not a directory\n")],
    ] {
        let (_dir, path) = dir_with(files);
        let model = Model::load(&runtime(), &path, &skip).expect("loads");
        assert!(model.metadata().labels.is_empty(), "{files:?}");
    }
    // Beside a label file, the others are still left alone.
    let (dir, path) = dir_with(&[(LABELS, b"a\n"), ("labels/notes.md", b"# notes\n")]);
    manifest(dir.path(), &[LABELS, "labels/notes.md"]);
    let model = Model::load(&runtime(), &path, &ModelOptions::new()).expect("loads");
    assert_eq!(labels(&model), ["a"]);
}

#[test]
fn every_instance_shares_the_labels_and_any_output_name_has_a_file() {
    let (dir, path) = dir_with(&[(LABELS, b"a\nb\n")]);
    manifest(dir.path(), &[LABELS]);
    let models = Model::load_many(&runtime(), &path, &ModelOptions::new(), 3).expect("loads");
    for m in &models {
        assert_eq!(labels(m), ["a", "b"]);
    }
    // The real PP-OCR direction classifier: its output's name has a `/`.
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model.onnx");
    std::fs::copy(
        common::repo_root().join("testdata/corpus/models/ppocr-cls.onnx"),
        &model,
    )
    .expect("run `make testdata`");
    let output = "save_infer_model/scale_0.tmp_1";
    let file = kiln::labels::label_file(output);
    assert_eq!(file, "labels/save_infer_model%2Fscale_0.tmp_1.txt");
    std::fs::create_dir(dir.path().join("labels")).expect("mkdir");
    std::fs::write(dir.path().join(&file), "0\n180\n").expect("labels");
    manifest(dir.path(), &[&file]);
    let m = Model::load(&runtime(), &model, &ModelOptions::new()).expect("loads");
    assert_eq!(labels_of(&m, output), ["0", "180"]);
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
    assert_eq!(kiln::labels::MAX_LABELS, 1_048_576);
    assert!(text.contains("more than 1,048,576 labels"), "{text}");
    assert_eq!(kiln::labels::MAX_LABEL_BYTES, 1024);
    assert!(text.contains("one over 1 KiB"), "{text}");
}
