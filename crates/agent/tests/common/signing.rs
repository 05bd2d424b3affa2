//! The real `model_signing` command line (pinned, `make signing-tools`) and the key and
//! certificate fixtures (scripts/signing-fixture.py), for the tests that sign models.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn venv() -> PathBuf {
    let v = repo_root().join(".cache/venv-signing/bin");
    assert!(
        v.join("model_signing").exists(),
        "{} is missing: run `make signing-tools`",
        v.display()
    );
    v
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn fixture(out: &Path, args: &[&str]) {
    run(Command::new(venv().join("python"))
        .arg(repo_root().join("scripts/signing-fixture.py"))
        .args(&args[..1])
        .arg(out)
        .args(&args[1..]));
}

pub(crate) fn sign(dir: &Path, bundle: &Path, method: &[&str]) {
    run(Command::new(venv().join("model_signing"))
        .arg("sign")
        .args(method)
        .arg("--signature")
        .arg(bundle)
        .arg(dir));
}
