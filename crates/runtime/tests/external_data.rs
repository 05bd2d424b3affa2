//! A model with external data (the corpus's `nudenet-320n-external`: the real YOLOv8n detector
//! as `onnx.save(..., save_as_external_data=True)` writes it, weights in a second file). Before
//! kiln verified and supplied external data itself, ONNX Runtime, handed the model from memory,
//! looked for the weights in the process's working directory: the load failed, and a file of
//! that name in the working directory would have been loaded unverified. Now: the weights are
//! pinned like the model (by option or manifest), a changed byte or a missing pin refuses the
//! load, and a location that leaves the model's directory is refused before anything is read.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, repo_root, runtime, sha256_of};
use kiln::{Checksum, Error, Manifest, ManifestFile, Model, ModelOptions};

const MODEL: &str = "nudenet-320n-external.onnx";
const DATA: &str = "nudenet-320n-external.onnx.data";

fn corpus(file: &str) -> PathBuf {
    repo_root().join("testdata/corpus/models").join(file)
}

/// A private copy of the model and its weights (so a test may change them).
fn copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    for f in [MODEL, DATA] {
        std::fs::copy(corpus(f), dir.path().join(f)).expect("run `make testdata`");
    }
    let model = dir.path().join(MODEL);
    (dir, model)
}

fn pinned(model: &Path) -> ModelOptions {
    ModelOptions::new()
        .with_checksum(Checksum::Sha256(sha256_of(model)))
        .with_external_data_checksum(DATA, sha256_of(&model.with_file_name(DATA)))
}

#[test]
fn pinned_external_data_loads_and_answers_as_the_single_file_model() {
    let (_dir, path) = copy();
    let mut model = Model::load(&runtime(), &path, &pinned(&path)).expect("loads");
    let g = common::golden_at(&repo_root().join("testdata/corpus/golden/nudenet-320n.json"));
    let out = model.run(&g.inputs).expect("runs");
    assert_close(&out, &g.outputs, 1e-3, 1e-3);
}

#[test]
fn a_manifest_that_lists_the_weights_pins_them() {
    let (dir, path) = copy();
    let files = [MODEL, DATA]
        .iter()
        .map(|f| {
            let p = dir.path().join(f);
            ManifestFile {
                path: (*f).into(),
                sha256: sha256_of(&p),
                size: std::fs::metadata(&p).expect("size").len(),
            }
        })
        .collect::<Vec<_>>();
    let mut manifest = Manifest {
        schema: kiln::manifest::SCHEMA,
        model: "det".into(),
        version: "1".into(),
        source: None,
        etag: None,
        version_id: None,
        signer: None,
        created: "2026-12-02T00:00:00Z".into(),
        files,
    };
    let write = |m: &Manifest| {
        std::fs::write(dir.path().join(kiln::layout::MANIFEST_FILE), m.to_json()).expect("write")
    };
    write(&manifest);
    Model::load(&runtime(), &path, &ModelOptions::new()).expect("manifest pins both");

    manifest.files.pop();
    write(&manifest);
    let err = Model::load(&runtime(), &path, &ModelOptions::new()).expect_err("weights unlisted");
    assert!(
        matches!(&err, Error::ChecksumRequired { path, reason } if path.ends_with(DATA) && reason.contains("manifest")),
        "{err}"
    );
}

#[test]
fn changed_weights_or_a_missing_pin_refuse_the_load() {
    let (_dir, path) = copy();
    let options = pinned(&path);
    let data = path.with_file_name(DATA);
    let mut bytes = std::fs::read(&data).expect("read");
    bytes[4096] ^= 1;
    std::fs::write(&data, &bytes).expect("write");
    let err = Model::load(&runtime(), &path, &options).expect_err("tampered weights");
    assert!(
        matches!(&err, Error::ChecksumMismatch { path, .. } if path.ends_with(DATA)),
        "{err}"
    );

    let only_model = ModelOptions::new().with_checksum(Checksum::Sha256(sha256_of(&path)));
    let err = Model::load(&runtime(), &path, &only_model).expect_err("no pin");
    assert!(
        matches!(&err, Error::ChecksumRequired { reason, .. } if reason.contains(DATA)),
        "{err}"
    );

    std::fs::remove_file(&data).expect("rm");
    let err = Model::load(&runtime(), &path, &options).expect_err("missing weights");
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with(DATA)),
        "{err}"
    );
}

#[test]
fn a_location_outside_the_model_directory_is_refused_unread() {
    let bytes = std::fs::read(corpus(MODEL)).expect("run `make testdata`");
    // Same length as the real location, so the protobuf stays well formed.
    for evil in [
        "../nudenet-320n-external.onnx.d",
        "/tmp/nudenet-320n-external.onnx",
    ] {
        assert_eq!(evil.len(), DATA.len());
        let changed = replace_all(&bytes, DATA.as_bytes(), evil.as_bytes());
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(MODEL);
        std::fs::write(&path, &changed).expect("write");
        let options = ModelOptions::new()
            .with_checksum(Checksum::Skip)
            .with_external_data_checksum(evil, sha256_of(&corpus(DATA)));
        let err = Model::load(&runtime(), &path, &options).expect_err("escaping location");
        assert!(
            matches!(&err, Error::ExternalData { location, .. } if location == evil),
            "{evil}: {err}"
        );
    }
}

#[test]
fn weights_behind_a_symlink_out_of_the_model_directory_are_refused_unread() {
    // The weights file is a symbolic link to a file elsewhere (here the real weights, so even
    // their digest matches): the location names a file inside the directory, but what would be
    // read is not. Refused, with verification on and with it waived (`Checksum::Skip`, where
    // nothing else would stop ONNX Runtime from being fed an arbitrary file).
    let (dir, model) = copy();
    let outside = tempfile::tempdir().expect("tmp");
    let target = outside.path().join(DATA);
    std::fs::rename(dir.path().join(DATA), &target).expect("move the weights out");
    std::os::unix::fs::symlink(&target, dir.path().join(DATA)).expect("symlink");
    let waived = ModelOptions::new()
        .with_checksum(Checksum::Skip)
        .with_external_data_checksum(DATA, sha256_of(&target));
    let verified = ModelOptions::new()
        .with_checksum(Checksum::Sha256(sha256_of(&model)))
        .with_external_data_checksum(DATA, sha256_of(&target));
    for options in [waived, verified] {
        let err =
            Model::load(&runtime(), &model, &options).expect_err("a link out of the directory");
        assert!(
            matches!(&err, Error::ExternalData { location, .. } if location == DATA),
            "{err}"
        );
    }
    // A link that stays inside the model's (real) directory is only another name: accepted
    // (a staged `--model-dir`, or KServe's /mnt/models, link every file to where it lives).
    let staged = tempfile::tempdir().expect("tmp");
    for f in [MODEL, DATA] {
        std::os::unix::fs::symlink(dir.path().join(f), staged.path().join(f)).expect("link");
    }
    std::fs::remove_file(dir.path().join(DATA)).expect("rm link");
    std::fs::copy(&target, dir.path().join(DATA)).expect("weights back");
    let model = staged.path().join(MODEL);
    Model::load(&runtime(), &model, &pinned(&model)).expect("links to the real directory load");
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}
