//! The `kiln-agent` binary's command line as an operator meets it: `--help` and `--version`
//! answer (they were "usage: ..." errors before the flags moved to clap), a missing mode is
//! a usage error, and `--config` and `--log-format` also come from their environment
//! variables (what the shipped manifests set), publishing a real model from a `file://`
//! source with JSON log lines.

use std::process::{Command, Output};

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(args)
        .env_remove("KILN_AGENT_CONFIG")
        .env_remove("KILN_AGENT_LOG_FORMAT")
        .envs(env.iter().copied())
        .output()
        .expect("run kiln-agent")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_and_version_answer_and_a_missing_mode_is_a_usage_error() {
    let help = agent(&["--help"], &[]);
    assert!(help.status.success(), "{}", text(&help));
    for word in ["fetch", "run", "Init-container", "sidecar"] {
        assert!(text(&help).contains(word), "{word}: {}", text(&help));
    }
    let fetch = agent(&["fetch", "--help"], &[]);
    assert!(fetch.status.success(), "{}", text(&fetch));
    for word in [
        "--config",
        "KILN_AGENT_CONFIG",
        "--log-format",
        "KILN_AGENT_LOG_FORMAT",
    ] {
        assert!(text(&fetch).contains(word), "{word}: {}", text(&fetch));
    }
    let version = agent(&["--version"], &[]);
    assert!(version.status.success());
    assert!(text(&version).starts_with(&format!("kiln-agent {}", env!("CARGO_PKG_VERSION"))));
    let none = agent(&[], &[]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
    assert!(text(&none).contains("Usage: kiln-agent"), "{}", text(&none));
    let no_config = agent(&["fetch"], &[]);
    assert_eq!(no_config.status.code(), Some(2), "{}", text(&no_config));
    assert!(
        text(&no_config).contains("--config"),
        "{}",
        text(&no_config)
    );
}

#[test]
fn config_and_log_format_come_from_the_environment_too() {
    let work = tempfile::tempdir().expect("work");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/mlp.onnx");
    let bytes = std::fs::read(&model).expect("testdata/mlp.onnx (make testdata)");
    let sha = kiln::Digest::of(&bytes);
    let root = work.path().join("models");
    std::fs::create_dir_all(&root).expect("root");
    let config = work.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "root: {}\nreserve_bytes: 0\nmodels:\n  - name: mlp\n    source: file://{}\n    sha256: {sha}\n",
            root.display(),
            model.canonicalize().expect("path").display()
        ),
    )
    .expect("config");
    let out = agent(
        &["fetch"],
        &[
            ("KILN_AGENT_CONFIG", config.to_str().expect("UTF-8")),
            ("KILN_AGENT_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(root.join("mlp/current").exists(), "published");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "log lines: {}", text(&out));
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    // A file that is not there: exit 1 naming it, as before.
    let missing = agent(
        &["fetch", "--config", "/nonexistent/agent.yaml"],
        &[("RUST_LOG", "error")],
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        text(&missing).contains("/nonexistent/agent.yaml"),
        "{}",
        text(&missing)
    );
}
