//! The Python package as a user gets it: `scripts/build-wheel.py` bundles the freshly built
//! libkiln into a wheel, which is installed (with the pinned numpy, nothing else) into a fresh
//! venv; `python/tests/clients.py` then runs a 16-thread and an asyncio client against the real
//! model from outside the repository, and checks the typed exceptions.

mod common;

use std::process::Command;

use common::{artifacts, ort_env, root, sha256_of, testdata};

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_wheel_installs_into_a_fresh_venv_and_serves_threads_and_asyncio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wheel = run(
        Command::new("python3")
            .arg(root().join("scripts/build-wheel.py"))
            .arg("--lib")
            .arg(artifacts().join("libkiln.so"))
            .arg("--out")
            .arg(dir.path().join("wheels")),
        "building the wheel",
    );
    let wheel = wheel.trim();
    assert!(wheel.ends_with(".whl"), "{wheel}");
    let venv = dir.path().join("venv");
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    let python = venv.join("bin/python");
    // numpy at the version the project pins (scripts/requirements.txt), then the wheel alone.
    let numpy = std::fs::read_to_string(root().join("scripts/requirements.txt"))
        .expect("requirements")
        .lines()
        .find(|l| l.starts_with("numpy=="))
        .expect("numpy pinned")
        .to_owned();
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &numpy,
        ]),
        "installing numpy",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg(wheel),
        "installing the wheel",
    );
    let out = run(
        Command::new(&python)
            .arg(root().join("python/tests/clients.py"))
            .arg(testdata("real/magika.onnx"))
            .arg(sha256_of("real/magika.onnx"))
            .arg(testdata("strings.onnx"))
            .arg(sha256_of("strings.onnx"))
            .current_dir(dir.path())
            .env_remove("PYTHONPATH")
            .env_remove("KILN_LIBRARY")
            .envs(ort_env()),
        "python/tests/clients.py",
    );
    eprintln!("{out}");
    assert!(out.contains("python clients: ok"), "{out}");
}
