//! OpenSSF model-signing bundles made by the real `model_signing` command line (pinned in
//! scripts/signing-requirements.txt, installed by `make signing-tools` into
//! .cache/venv-signing), with keys and certificates generated fresh here
//! (scripts/signing-fixture.py), verified by `kiln::signing` and by `Model::load` with
//! `Checksum::Signature` — and every kind of tampering refused with its own reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use kiln::signing::{self, SignatureError, Trust};
use kiln::{Checksum, Error, Model, ModelOptions, SignatureCheck};

fn venv() -> PathBuf {
    let v = common::repo_root().join(".cache/venv-signing/bin");
    assert!(
        v.join("model_signing").exists(),
        "{} is missing: run `make signing-tools`",
        v.display()
    );
    v
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keys (`key`, with a curve) or a CA, an intermediate and a signer (`ca`) in `out`.
fn fixture(out: &Path, args: &[&str]) {
    run(Command::new(venv().join("python"))
        .arg(common::repo_root().join("scripts/signing-fixture.py"))
        .args(&args[..1])
        .arg(out)
        .args(&args[1..]));
}

fn sign_with_key(dir: &Path, key: &Path, bundle: &Path) {
    run(Command::new(venv().join("model_signing"))
        .args(["sign", "key", "--private_key"])
        .arg(key)
        .arg("--signature")
        .arg(bundle)
        .arg(dir));
}

fn sign_with_certificate(dir: &Path, keys: &Path, bundle: &Path) {
    run(Command::new(venv().join("model_signing"))
        .args(["sign", "certificate", "--private_key"])
        .arg(keys.join("leaf.key"))
        .arg("--signing_certificate")
        .arg(keys.join("leaf.pem"))
        .arg("--certificate_chain")
        .arg(keys.join("int.pem"))
        .arg("--signature")
        .arg(bundle)
        .arg(dir));
}

/// A model directory: the MLP as `model.onnx` and a file beside it.
fn model_dir(at: &Path) -> PathBuf {
    let dir = at.join("mlp");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(common::testdata("mlp.onnx"), dir.join("model.onnx")).expect("copy");
    std::fs::write(dir.join("labels.txt"), "a\nb\nc\nd\n").expect("labels");
    dir
}

fn load(dir: &Path, bundle: &Path, trust: Trust) -> Result<Model, Error> {
    Model::load(
        &common::runtime(),
        dir.join("model.onnx"),
        &ModelOptions::new().with_checksum(Checksum::Signature(SignatureCheck::new(bundle, trust))),
    )
}

fn refusal(result: Result<Model, Error>) -> SignatureError {
    match result {
        Err(Error::Signature { source, .. }) => source,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn key_signed_models_load_and_every_tampering_is_refused() {
    for curve in ["p256", "p384"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let keys = tmp.path().join("keys");
        fixture(&keys, &["key", curve]);
        let dir = model_dir(tmp.path());
        let bundle = tmp.path().join("model.sig");
        sign_with_key(&dir, &keys.join("key.pem"), &bundle);
        let trust = || Trust::public_key_file(&keys.join("key.pub")).expect("trust");

        let signed = signing::verify_file(&bundle, &trust()).expect("verifies");
        assert_eq!(signed.model, "mlp");
        assert_eq!(
            signed.files.keys().collect::<Vec<_>>(),
            ["labels.txt", "model.onnx"]
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&bundle).expect("bundle")).expect("json");
        let hint = json["verificationMaterial"]["publicKey"]["hint"]
            .as_str()
            .expect("hint");
        assert_eq!(signed.signer, format!("key sha256:{hint}"), "{curve}");
        load(&dir, &bundle, trust()).unwrap_or_else(|e| panic!("{curve}: {e}"));

        // The bundle inside the directory it signs is left out of the file set.
        std::fs::copy(&bundle, dir.join("model.sig")).expect("copy");
        load(&dir, Path::new("model.sig"), trust()).expect("bundle beside the model");
        std::fs::remove_file(dir.join("model.sig")).expect("rm");

        // Paths the signer ignores by default (.git, .gitattributes: a Hugging Face checkout)
        // are neither signed nor extra, whether there when signing or added after.
        std::fs::create_dir_all(dir.join(".git")).expect("git");
        std::fs::write(dir.join(".git/config"), "[core]\n").expect("git config");
        std::fs::write(dir.join(".gitattributes"), "*.onnx filter=lfs\n").expect("attributes");
        load(&dir, &bundle, trust()).expect("ignored paths beside the signed files");
        std::fs::remove_dir_all(dir.join(".git")).expect("rm");
        std::fs::remove_file(dir.join(".gitattributes")).expect("rm");

        // Another key, with and without the bundle's key hint.
        let other = tmp.path().join("other");
        fixture(&other, &["key", curve]);
        let wrong = || Trust::public_key_file(&other.join("key.pub")).expect("trust");
        assert_eq!(refusal(load(&dir, &bundle, wrong())).reason(), "wrong_key");
        let mut no_hint = json.clone();
        no_hint["verificationMaterial"]["publicKey"] = serde_json::json!({});
        let unhinted = tmp.path().join("unhinted.sig");
        std::fs::write(&unhinted, no_hint.to_string()).expect("write");
        assert_eq!(
            refusal(load(&dir, &unhinted, wrong())).reason(),
            "bad_signature"
        );
        load(&dir, &unhinted, trust()).expect("no hint, right key");

        // A statement changed after signing.
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut forged = json.clone();
        let payload = b64
            .decode(json["dsseEnvelope"]["payload"].as_str().expect("payload"))
            .expect("b64");
        let text = String::from_utf8(payload)
            .expect("utf8")
            .replace("labels.txt", "labels.txx");
        forged["dsseEnvelope"]["payload"] = b64.encode(text).into();
        let forged_path = tmp.path().join("forged.sig");
        std::fs::write(&forged_path, forged.to_string()).expect("write");
        assert_eq!(
            refusal(load(&dir, &forged_path, trust())).reason(),
            "bad_signature"
        );

        // Cut short, not JSON, not a bundle.
        let bytes = std::fs::read(&bundle).expect("bundle");
        for (name, bad) in [
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("garbage", b"\x00\x01not json".to_vec()),
            ("empty object", b"{}".to_vec()),
        ] {
            let p = tmp.path().join(format!("{name}.sig"));
            std::fs::write(&p, bad).expect("write");
            assert_eq!(
                refusal(load(&dir, &p, trust())).reason(),
                "malformed",
                "{name}"
            );
        }
        let missing = refusal(load(&dir, &tmp.path().join("nope.sig"), trust()));
        assert_eq!(missing.reason(), "malformed", "{missing}");

        // A file added, a file removed, a byte flipped in a file the loader does not read.
        std::fs::write(dir.join("extra.bin"), "x").expect("extra");
        let e = refusal(load(&dir, &bundle, trust()));
        assert!(e.to_string().contains("extra.bin"), "{e}");
        assert_eq!(e.reason(), "file_set");
        std::fs::remove_file(dir.join("extra.bin")).expect("rm");
        let labels = std::fs::read(dir.join("labels.txt")).expect("labels");
        std::fs::remove_file(dir.join("labels.txt")).expect("rm");
        assert_eq!(refusal(load(&dir, &bundle, trust())).reason(), "file_set");
        std::fs::write(dir.join("labels.txt"), &labels).expect("restore");
        flip_byte(&dir.join("labels.txt"), 0);
        assert_eq!(refusal(load(&dir, &bundle, trust())).reason(), "digest");
        std::fs::write(dir.join("labels.txt"), &labels).expect("restore");
        // A byte of the model itself: the loader's own check, before ONNX Runtime sees it.
        flip_byte(&dir.join("model.onnx"), 100);
        match load(&dir, &bundle, trust()) {
            Err(Error::ChecksumMismatch { .. }) => {}
            other => panic!("a flipped model byte: {:?}", other.err()),
        }
        flip_byte(&dir.join("model.onnx"), 100);

        // A valid bundle for another model.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        std::fs::copy(common::testdata("int64.onnx"), elsewhere.join("model.onnx")).expect("copy");
        let other_bundle = tmp.path().join("other-model.sig");
        sign_with_key(&elsewhere, &keys.join("key.pem"), &other_bundle);
        let e = refusal(load(&dir, &other_bundle, trust()));
        assert!(matches!(e.reason(), "file_set" | "digest"), "{e}");
        load(&dir, &bundle, trust()).expect("untouched again");
    }
}

#[test]
fn certificate_chains_must_lead_to_the_trusted_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("pki");
    fixture(&keys, &["ca"]);
    let dir = model_dir(tmp.path());
    let bundle = tmp.path().join("model.sig");
    sign_with_certificate(&dir, &keys, &bundle);
    let ca = || Trust::ca_certificates_file(&keys.join("ca.pem")).expect("trust");

    let signed = signing::verify_file(&bundle, &ca()).expect("verifies");
    assert!(
        signed.signer.contains("CN=ml-platform signer")
            && signed.signer.contains("CN=kiln test intermediate"),
        "{}",
        signed.signer
    );
    load(&dir, &bundle, ca()).expect("loads");
    // Trusting the intermediate itself is enough too.
    load(
        &dir,
        &bundle,
        Trust::ca_certificates_file(&keys.join("int.pem")).expect("trust"),
    )
    .expect("intermediate as the trust root");

    // Another CA; a key where certificates are expected; a signer that may not sign.
    let other = tmp.path().join("other-pki");
    fixture(&other, &["ca"]);
    let e = refusal(load(
        &dir,
        &bundle,
        Trust::ca_certificates_file(&other.join("ca.pem")).expect("trust"),
    ));
    assert_eq!(e.reason(), "untrusted", "{e}");
    let key = tmp.path().join("key");
    fixture(&key, &["key"]);
    let e = refusal(load(
        &dir,
        &bundle,
        Trust::public_key_file(&key.join("key.pub")).expect("trust"),
    ));
    assert_eq!(e.reason(), "untrusted", "{e}");
    let weak = tmp.path().join("weak-pki");
    fixture(&weak, &["ca", "--leaf-cannot-sign"]);
    let weak_bundle = tmp.path().join("weak.sig");
    sign_with_certificate(&dir, &weak, &weak_bundle);
    let e = refusal(load(
        &dir,
        &weak_bundle,
        Trust::ca_certificates_file(&weak.join("ca.pem")).expect("trust"),
    ));
    assert!(e.to_string().contains("may not sign"), "{e}");

    // Broken chains to the right root: an intermediate that is not a CA, one expired before
    // the signer's certificate began, one with the issuer's name but not its key.
    for flag in [
        "--intermediate-not-ca",
        "--expired-intermediate",
        "--forged-intermediate",
    ] {
        let pki = tmp.path().join(flag.trim_start_matches('-'));
        fixture(&pki, &["ca", flag]);
        let sig = tmp.path().join(format!("{flag}.sig"));
        sign_with_certificate(&dir, &pki, &sig);
        let e = refusal(load(
            &dir,
            &sig,
            Trust::ca_certificates_file(&pki.join("ca.pem")).expect("trust"),
        ));
        assert_eq!(e.reason(), "untrusted", "{flag}: {e}");
    }

    // Trust roots that are not one.
    for (name, text) in [
        ("empty", ""),
        (
            "a private key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        ("cut", "-----BEGIN CERTIFICATE-----\nMIIB"),
    ] {
        let e = Trust::ca_certificates_pem(text.as_bytes()).expect_err(name);
        assert_eq!(e.reason(), "trust_root", "{name}: {e}");
        assert!(!e.to_string().contains("AAAA"), "{e}");
    }
}

#[test]
fn a_signed_model_with_external_weights_loads_them_only_as_signed() {
    // The real NudeNet detector with its weights in a file of their own (the corpus).
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    fixture(&keys, &["key"]);
    let dir = tmp.path().join("detector");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "nudenet-320n-external.onnx",
        "nudenet-320n-external.onnx.data",
    ] {
        std::fs::copy(common::testdata(&format!("corpus/models/{f}")), dir.join(f)).expect("copy");
    }
    let bundle = tmp.path().join("model.sig");
    sign_with_key(&dir, &keys.join("key.pem"), &bundle);
    let trust = || Trust::public_key_file(&keys.join("key.pub")).expect("trust");
    let load = |trust| {
        Model::load(
            &common::runtime(),
            dir.join("nudenet-320n-external.onnx"),
            &ModelOptions::new()
                .with_checksum(Checksum::Signature(SignatureCheck::new(&bundle, trust))),
        )
    };
    load(trust()).expect("signed weights load");
    let data = dir.join("nudenet-320n-external.onnx.data");
    flip_byte(&data, 1000);
    match load(trust()) {
        Err(Error::ChecksumMismatch { path, .. }) => {
            assert!(path.ends_with("nudenet-320n-external.onnx.data"))
        }
        other => panic!("flipped weights: {:?}", other.err()),
    }
}

#[test]
fn a_signed_label_file_is_served_as_signed_and_only_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    fixture(&keys, &["key"]);
    let dir = model_dir(tmp.path());
    std::fs::create_dir(dir.join("labels")).expect("mkdir");
    std::fs::write(dir.join("labels/y.txt"), "north\neast\nsouth\nwest\n").expect("labels");
    let bundle = tmp.path().join("model.sig");
    sign_with_key(&dir, &keys.join("key.pem"), &bundle);
    let trust = || Trust::public_key_file(&keys.join("key.pub")).expect("trust");
    let model = load(&dir, &bundle, trust()).expect("signed labels load");
    assert_eq!(model.metadata().labels["y"].get(3), Some("west"));
    // Read once, by the label loader, and checked against the signed digest there.
    flip_byte(&dir.join("labels/y.txt"), 0);
    match load(&dir, &bundle, trust()) {
        Err(Error::ChecksumMismatch { path, .. }) => assert!(path.ends_with("labels/y.txt")),
        other => panic!("a changed label file: {:?}", other.err()),
    }
}
