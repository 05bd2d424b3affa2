//! No credential, token or signed-URL query string in any log line or error, at any level,
//! on any path: the `kiln-agent` binary runs with `RUST_LOG=trace` (its own logs and those of
//! `object_store`, `reqwest`, `hyper` beneath it) through successes and failures — a missing
//! object, a digest mismatch, a dead endpoint, an Azure account key, and signed and user-info
//! URLs (refused at configuration: credentials belong in the environment) — and everything
//! it wrote (stdout, stderr, the termination log) is searched for the secrets it was given.

mod common;

use std::process::Command;

use common::Moto;
use object_store::{ObjectStoreExt, PutPayload};

const S3_SECRET: &str = "S3SECRETkey0123456789abcdef";
const SIGNATURE: &str = "SIGsecret0123456789abcdef";
const CREDENTIAL: &str = "CREDsecret0123456789";
const PASSWORD: &str = "PASSsecret0123456789";
const TOKEN: &str = "SESSIONtoken0123456789";
/// An Azure account key is base64; both forms must stay out of the logs.
const AZURE_KEY_RAW: &str = "AZUREsecretKEY0123456789";

fn azure_key() -> String {
    use std::fmt::Write as _;
    // Base64 of AZURE_KEY_RAW, by hand (no extra dependency for one constant).
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = AZURE_KEY_RAW.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs `kiln-agent fetch` on `models` (YAML list items) with every log level on; returns
/// everything it wrote.
fn run(root: &std::path::Path, models: &str) -> String {
    let config = root.join("agent.yaml");
    let log = root.join("termination-log");
    std::fs::write(
        &config,
        format!(
            "root: {}\nreserve_bytes: 0\ntermination_log: {}\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n{models}",
            root.join("models").display(),
            log.display()
        ),
    )
    .expect("config");
    std::fs::create_dir_all(root.join("models")).expect("models dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["fetch", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env("AWS_SESSION_TOKEN", TOKEN)
        .output()
        .expect("run kiln-agent");
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    )
}

#[test]
fn no_secret_reaches_any_log_line_at_any_level() {
    let moto = Moto::start()
        .expect("moto_server is required (on the machine image, or pip install 'moto[server]')");
    moto.create_bucket("models");
    let store = moto.store("models", S3_SECRET);
    let body = vec![7u8; 100_000];
    let digest = kiln::Digest::of(&body);
    common::rt()
        .block_on(store.put(&"m/model.onnx".into(), PutPayload::from(body)))
        .expect("upload");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let s3 = |key: &str, sha: &str| {
        format!(
            "  - name: m\n    source: s3://models/{key}\n    sha256: {sha}\n    store: {{aws_endpoint: \"http://127.0.0.1:{}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: {S3_SECRET}, aws_session_token: {TOKEN}}}\n",
            moto.port
        )
    };
    let wrong = "0".repeat(64);
    let cases = [
        ("success", s3("m/model.onnx", &digest.to_string())),
        ("missing object", s3("m/nope.onnx", &digest.to_string())),
        ("digest mismatch", s3("m/model.onnx", &wrong)),
        (
            "signed URL, dead endpoint",
            format!("  - name: m\n    source: \"http://127.0.0.1:{dead}/m.onnx?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}\"\n    sha256: {wrong}\n    store: {{allow_http: \"true\"}}\n"),
        ),
        (
            "signed URL, live endpoint",
            format!("  - name: m\n    source: \"http://127.0.0.1:{}/models/m/model.onnx?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}\"\n    sha256: {wrong}\n", moto.port),
        ),
        (
            "user info in the URL",
            format!("  - name: m\n    source: \"http://user:{PASSWORD}@127.0.0.1:{dead}/m.onnx\"\n    sha256: {wrong}\n    store: {{allow_http: \"true\"}}\n"),
        ),
        (
            "azure account key, dead endpoint",
            format!("  - name: m\n    source: az://c/m.onnx\n    sha256: {wrong}\n    store: {{azure_storage_account_name: devstoreaccount1, azure_storage_account_key: \"{}\", azure_storage_endpoint: \"http://127.0.0.1:{dead}/devstoreaccount1\", allow_http: \"true\"}}\n", azure_key()),
        ),
    ];
    let secrets = [
        S3_SECRET.to_owned(),
        SIGNATURE.to_owned(),
        CREDENTIAL.to_owned(),
        PASSWORD.to_owned(),
        TOKEN.to_owned(),
        AZURE_KEY_RAW.to_owned(),
        azure_key(),
    ];
    let mut lines = 0;
    for (name, models) in &cases {
        let root = tempfile::tempdir().expect("root");
        let out = run(root.path(), models);
        lines += out.lines().count();
        assert!(!out.trim().is_empty(), "{name}: no output to check");
        for s in &secrets {
            if let Some(line) = out.lines().find(|l| l.contains(s.as_str())) {
                panic!("{name}: a secret appears in the output:\n{line}");
            }
        }
    }
    println!(
        "secrets: {} failure and success paths at RUST_LOG=trace, {lines} lines of output, no secret in any",
        cases.len()
    );
}
