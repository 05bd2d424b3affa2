//! Signed models through the agent, against a real S3 server (`moto_server` on 127.0.0.1):
//! bundles made by the real `model_signing` command line (pinned, `make signing-tools`) with
//! keys and certificates generated here (scripts/signing-fixture.py). A valid signature
//! publishes exactly the signed files and records the signer; a flipped byte, a file added or
//! removed, another key, another model's bundle, a cut or missing bundle each publish nothing,
//! keep the version already serving (and readiness with it), and are counted by reason.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::signing::{fixture, repo_root, sign};
use common::{agent_with_metrics, rt, Moto};
use kiln_agent::{AgentConfig, AgentError, Phase};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const SECRET: &str = "SIGNINGTESTSECRET42";

/// A model directory: the MLP and a labels file.
fn model_dir(at: &Path, name: &str, model: &str) -> PathBuf {
    let dir = at.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(
        repo_root().join("testdata").join(model),
        dir.join("model.onnx"),
    )
    .expect("copy");
    std::fs::write(dir.join("labels.txt"), format!("labels of {name}\n")).expect("labels");
    dir
}

struct Bucket {
    _moto: Moto,
    store: Arc<dyn ObjectStore>,
    endpoint: String,
}

impl Bucket {
    fn start() -> Self {
        let moto = Moto::start().expect("moto_server is required for this test");
        moto.create_bucket("models");
        let endpoint = format!("http://127.0.0.1:{}", moto.port);
        let store: Arc<dyn ObjectStore> = Arc::new(moto.store("models", SECRET));
        Self {
            _moto: moto,
            store,
            endpoint,
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        rt().block_on(self.store.put(&key.into(), PutPayload::from(bytes)))
            .expect("put");
    }

    fn delete(&self, key: &str) {
        rt().block_on(self.store.delete(&key.into()))
            .expect("delete");
    }

    /// Every file of `dir` under `prefix/`, and `bundle` as `prefix/model.sig`.
    fn upload(&self, prefix: &str, dir: &Path, bundle: &Path) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            self.put(
                &format!("{prefix}/{name}"),
                std::fs::read(&path).expect("read"),
            );
        }
        self.put(
            &format!("{prefix}/model.sig"),
            std::fs::read(bundle).expect("bundle"),
        );
    }

    fn yaml(&self, root: &Path, name: &str, prefix: &str, trust: &str) -> String {
        format!(
            "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: {name}\n    source: s3://models/{prefix}/\n    signature: {{{trust}}}\n    store: {{aws_endpoint: \"{}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: {SECRET}}}\n",
            root.display(),
            self.endpoint
        )
    }
}

/// Syncs once with `yaml`: the result, the rendered metrics, and the model's status.
fn sync(yaml: &str, name: &str) -> (Result<String, AgentError>, String, kiln_agent::ModelStatus) {
    let (agent, telemetry) = agent_with_metrics(yaml);
    let mut results = rt().block_on(agent.sync_once());
    let status = agent.status().lock().expect("status")[name].clone();
    (results.remove(0).1, telemetry.render(), status)
}

fn published_files(root: &Path, model: &str) -> Vec<String> {
    let dir = root.join(model).join("current");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("current")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn current(root: &Path, model: &str) -> PathBuf {
    std::fs::read_link(root.join(model).join("current")).expect("current")
}

/// The MLP and a labels file, signed with a fresh key and uploaded (with `model.sig`) under
/// `prefix`.
struct Signed {
    tmp: tempfile::TempDir,
    keys: PathBuf,
    dir: PathBuf,
    bundle: PathBuf,
}

fn signed_with_key(bucket: &Bucket, prefix: &str) -> Signed {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys");
    fixture(&keys, &["key"]);
    let dir = model_dir(tmp.path(), "mlp", "mlp.onnx");
    let bundle = tmp.path().join("mlp.sig");
    let key = keys.join("key.pem").to_string_lossy().into_owned();
    sign(&dir, &bundle, &["key", "--private_key", &key]);
    bucket.upload(prefix, &dir, &bundle);
    Signed {
        tmp,
        keys,
        dir,
        bundle,
    }
}

#[test]
fn a_key_signed_model_is_published_as_signed_and_every_tampering_keeps_the_old_version() {
    let bucket = Bucket::start();
    let Signed {
        tmp,
        keys,
        dir,
        bundle,
    } = signed_with_key(&bucket, "mlp/1");
    let root = tempfile::tempdir().expect("root");
    let trust = format!("public_key: {}", keys.join("key.pub").display());
    let yaml = bucket.yaml(root.path(), "mlp", "mlp/1", &trust);

    let (result, metrics, _) = sync(&yaml, "mlp");
    let version = result.expect("a valid signature publishes");
    assert_eq!(
        published_files(root.path(), "mlp"),
        ["kiln-manifest.json", "labels.txt", "model.onnx"]
    );
    let (_, manifest) = kiln::Manifest::read_in(&root.path().join("mlp").join(&version))
        .expect("read")
        .expect("manifest");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).expect("bundle")).expect("json");
    let hint = json["verificationMaterial"]["publicKey"]["hint"]
        .as_str()
        .expect("hint");
    assert_eq!(manifest.signer, Some(format!("key sha256:{hint}")));
    assert!(
        !metrics.contains("kiln_agent_verification_failures_total{"),
        "{metrics}"
    );
    // The runtime loads what was published, verified through its manifest.
    let repo = kiln::Repository::new(
        kiln::Runtime::new(&kiln::RuntimeConfig {
            library_path: Some(repo_root().join(".cache/ort/cpu/libonnxruntime.so")),
            ..kiln::RuntimeConfig::default()
        })
        .expect("ONNX Runtime (make ort)"),
        kiln::RepositoryConfig::new(root.path()),
        kiln::otel::global::meter("test"),
    );
    let report = repo.scan().expect("scan");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(repo.get("mlp").is_some());

    let refused = |yaml: &str, reason: &str| {
        let (result, metrics, status) = sync(yaml, "mlp");
        let err = result.expect_err("refused");
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {err}\n{metrics}"
        );
        assert_eq!(
            current(root.path(), "mlp"),
            Path::new(&version),
            "{reason}: the signed version stays"
        );
        assert_eq!(
            status.phase,
            Phase::Published,
            "{reason}: still serving, so still ready"
        );
        let shown = format!("{err} {err:?} {status:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
        err
    };

    // One flipped byte in a signed file.
    let labels = std::fs::read(dir.join("labels.txt")).expect("labels");
    let mut flipped = labels.clone();
    flipped[0] ^= 1;
    bucket.put("mlp/1/labels.txt", flipped);
    let err = refused(&yaml, "digest");
    assert!(matches!(err, AgentError::DigestMismatch { .. }), "{err}");
    bucket.put("mlp/1/labels.txt", labels.clone());

    // A file added; a file removed.
    bucket.put("mlp/1/extra.bin", b"x".to_vec());
    let err = refused(&yaml, "file_set");
    assert!(err.to_string().contains("extra.bin"), "{err}");
    bucket.delete("mlp/1/extra.bin");
    bucket.delete("mlp/1/labels.txt");
    refused(&yaml, "file_set");
    bucket.put("mlp/1/labels.txt", labels);

    // Another key.
    let other = tmp.path().join("other");
    fixture(&other, &["key"]);
    let wrong = bucket.yaml(
        root.path(),
        "mlp",
        "mlp/1",
        &format!("public_key: {}", other.join("key.pub").display()),
    );
    refused(&wrong, "wrong_key");

    // A valid bundle, for another model.
    let elsewhere = model_dir(tmp.path(), "other-model", "int64.onnx");
    let other_bundle = tmp.path().join("other-model.sig");
    sign(
        &elsewhere,
        &other_bundle,
        &[
            "key",
            "--private_key",
            &keys.join("key.pem").to_string_lossy(),
        ],
    );
    bucket.put(
        "mlp/1/model.sig",
        std::fs::read(&other_bundle).expect("bundle"),
    );
    let err = refused(&yaml, "digest");
    assert!(matches!(err, AgentError::DigestMismatch { .. }), "{err}");

    // A bundle cut short; no bundle at all.
    let bytes = std::fs::read(&bundle).expect("bundle");
    bucket.put("mlp/1/model.sig", bytes[..bytes.len() / 3].to_vec());
    refused(&yaml, "malformed");
    bucket.delete("mlp/1/model.sig");
    let err = refused(&yaml, "malformed");
    assert!(err.to_string().contains("no `model.sig`"), "{err}");

    // Signed again, as it was: the same bytes are the same version.
    bucket.put("mlp/1/model.sig", bytes);
    let (result, _, _) = sync(&yaml, "mlp");
    assert_eq!(
        current(root.path(), "mlp"),
        Path::new(&result.expect("published again"))
    );
}

#[test]
fn a_certificate_signed_model_needs_a_chain_to_the_trusted_ca() {
    let bucket = Bucket::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = tmp.path().join("pki");
    fixture(&pki, &["ca"]);
    let dir = model_dir(tmp.path(), "mlp", "mlp.onnx");
    let bundle = tmp.path().join("mlp.sig");
    let arg = |f: &str| pki.join(f).to_string_lossy().into_owned();
    sign(
        &dir,
        &bundle,
        &[
            "certificate",
            "--private_key",
            &arg("leaf.key"),
            "--signing_certificate",
            &arg("leaf.pem"),
            "--certificate_chain",
            &arg("int.pem"),
        ],
    );
    bucket.upload("signed/3", &dir, &bundle);
    let root = tempfile::tempdir().expect("root");

    let other = tmp.path().join("other-pki");
    fixture(&other, &["ca"]);
    let untrusted = bucket.yaml(
        root.path(),
        "m",
        "signed/3",
        &format!("ca_certificates: {}", other.join("ca.pem").display()),
    );
    let (result, metrics, status) = sync(&untrusted, "m");
    let err = result.expect_err("another CA");
    assert!(matches!(&err, AgentError::Signature { .. }), "{err}");
    assert!(metrics.contains("reason=\"untrusted\""), "{metrics}");
    assert_ne!(status.phase, Phase::Published);
    assert!(
        !root.path().join("m").join("current").exists(),
        "nothing published"
    );

    let yaml = bucket.yaml(
        root.path(),
        "m",
        "signed/3",
        &format!("ca_certificates: {}", pki.join("ca.pem").display()),
    );
    let (result, _, _) = sync(&yaml, "m");
    let version = result.expect("published");
    let (_, manifest) = kiln::Manifest::read_in(&root.path().join("m").join(&version))
        .expect("read")
        .expect("manifest");
    let signer = manifest.signer.expect("signer recorded");
    assert!(signer.contains("CN=ml-platform signer"), "{signer}");
}

#[test]
fn signature_configuration_mistakes_are_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys");
    fixture(&keys, &["key"]);
    let key = keys.join("key.pub");
    let check = |model: &str| {
        let yaml = format!(
            "root: {}\nmodels:\n  - name: m\n{model}",
            tmp.path().display()
        );
        AgentConfig::from_yaml(&yaml)
            .expect("yaml")
            .check()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    check(&format!(
        "    source: s3://b/m/1/\n    signature: {{public_key: {}}}\n",
        key.display()
    ))
    .expect("valid");
    for (model, needle) in [
        (format!("    source: s3://b/m/1/\n    verify: false\n    signature: {{public_key: {}}}\n", key.display()), "verify"),
        (format!("    source: s3://b/m/1/model.onnx\n    signature: {{public_key: {}}}\n", key.display()), "prefix"),
        (format!("    source: s3://b/m/1/\n    files: [{{path: a, sha256: {}}}]\n    signature: {{public_key: {}}}\n", "0".repeat(64), key.display()), "no `files`"),
        (format!("    source: s3://b/m/1/\n    signature: {{public_key: {k}, ca_certificates: {k}}}\n", k = key.display()), "exactly one"),
        ("    source: s3://b/m/1/\n    signature: {}\n".to_owned(), "exactly one"),
        ("    source: s3://b/m/1/\n    signature: {public_key: /nonexistent/key.pub}\n".to_owned(), "cannot read"),
        (format!("    source: s3://b/m/1/\n    signature: {{public_key: {}}}\n", keys.join("key.pem").display()), "PUBLIC KEY"),
        (format!("    source: s3://b/m/1/\n    signature: {{bundle: ../x.sig, public_key: {}}}\n", key.display()), "bundle"),
    ] {
        let err = check(&model).expect_err(needle);
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("PRIVATE"), "key material in {err}");
    }
}

#[test]
fn a_configured_version_already_on_disk_is_not_served_without_its_signature() {
    // A version directory with the label the signed config names, published earlier without
    // a signature (a node cache, a former `verify: false` config): the signature is still
    // checked, and a bundle that does not verify publishes nothing.
    let bucket = Bucket::start();
    let Signed { tmp, keys, .. } = signed_with_key(&bucket, "mlp/5");
    let root = tempfile::tempdir().expect("root");
    let unsigned = format!(
        "root: {}\nreserve_bytes: 0\nmodels:\n  - name: mlp\n    version: \"5\"\n    source: s3://models/mlp/5/\n    verify: false\n    store: {{aws_endpoint: \"{}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: {SECRET}}}\n",
        root.path().display(),
        bucket.endpoint
    );
    let (result, _, _) = sync(&unsigned, "mlp");
    assert_eq!(result.expect("published unverified"), "5");

    let other = tmp.path().join("other");
    fixture(&other, &["key"]);
    let signed = bucket
        .yaml(
            root.path(),
            "mlp",
            "mlp/5",
            &format!("public_key: {}", other.join("key.pub").display()),
        )
        .replace("  - name: mlp\n", "  - name: mlp\n    version: \"5\"\n");
    let (result, metrics, _) = sync(&signed, "mlp");
    let err = result.expect_err("the wrong key must refuse, whatever is on disk");
    assert!(metrics.contains("reason=\"wrong_key\""), "{err}\n{metrics}");

    // With the right key the version on disk (same bytes) is taken, now with its signer.
    let right = signed.replace(
        &other.join("key.pub").display().to_string(),
        &keys.join("key.pub").display().to_string(),
    );
    let (result, _, _) = sync(&right, "mlp");
    let version = result.expect("verified");
    let (_, manifest) = kiln::Manifest::read_in(&root.path().join("mlp").join(&version))
        .expect("read")
        .expect("manifest");
    assert!(manifest.signer.is_some(), "{version}: {manifest:?}");
}
