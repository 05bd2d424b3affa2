//! Property-based fuzzing of the agent's configuration parser and validation: whatever the
//! YAML, parsing and checking give a validated config or a typed error naming a field (never
//! a panic), an accepted config has only safe model names and contained file paths, and no
//! error message ever carries a secret from the `store` options.
//!
//! `make test` runs proptest's default cases; `make reliability` raises `PROPTEST_CASES`.

use kiln::layout::{check_name, is_contained_relative};
use kiln_agent::AgentConfig;
use proptest::prelude::*;

const SECRET: &str = "SECRETvalue0123456789";

fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just("../etc/passwd".to_owned()),
        Just("/abs".to_owned()),
        Just("a/../../b".to_owned()),
        Just("current".to_owned()),
        Just(".kiln".to_owned()),
        Just("kiln-manifest.json".to_owned()),
        Just("a\\b".to_owned()),
        Just("".to_owned()),
        Just("x\u{0}y".to_owned()),
        "[a-z0-9_./-]{1,16}",
    ]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("s3://bucket/models/m/".to_owned()),
        Just("s3://bucket/models/m/model.onnx".to_owned()),
        Just("gs://b/p/".to_owned()),
        Just("az://c/p/model.onnx".to_owned()),
        Just("http://127.0.0.1:9/m.onnx?X-Amz-Signature=SECRETvalue0123456789".to_owned()),
        Just("https://user:SECRETvalue0123456789@host/m.onnx".to_owned()),
        Just("file:///tmp/m.onnx".to_owned()),
        Just("ftp://x/y".to_owned()),
        Just("not a url".to_owned()),
        "[a-z]{1,5}://[a-z0-9./%-]{0,20}",
    ]
}

fn model_yaml() -> impl Strategy<Value = String> {
    (
        tricky(),
        url(),
        prop::collection::vec((tricky(), prop::option::of("[0-9a-f]{64}|[0-9a-z]{0,10}")), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, source, files, verify)| {
            let files: String = files
                .iter()
                .map(|(p, sha)| {
                    format!(
                        "\n      - path: {}{}",
                        serde_json::to_string(p).unwrap_or_default(),
                        sha.as_ref()
                            .map(|s| format!("\n        sha256: \"{s}\""))
                            .unwrap_or_default()
                    )
                })
                .collect();
            format!(
                "  - name: {}\n    source: {}\n    verify: {verify}\n    store: {{aws_secret_access_key: {SECRET}, azure_storage_account_key: {SECRET}}}\n    files:{}\n",
                serde_json::to_string(&name).unwrap_or_default(),
                serde_json::to_string(&source).unwrap_or_default(),
                if files.is_empty() { " []".to_owned() } else { files }
            )
        })
}

fn config_yaml() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("/models".to_owned()),
            Just("relative".to_owned()),
            tricky()
        ],
        prop_oneof![Just("127.0.0.1:9090".to_owned()), "[a-z0-9.:]{0,12}"],
        prop::collection::vec(model_yaml(), 0..3),
        0u64..5,
    )
        .prop_map(|(root, listen, models, keep)| {
            format!(
                "root: {}\nlisten: {}\nkeep_versions: {keep}\nmodels:\n{}",
                serde_json::to_string(&root).unwrap_or_default(),
                serde_json::to_string(&listen).unwrap_or_default(),
                if models.is_empty() {
                    "  []\n".to_owned()
                } else {
                    models.concat()
                }
            )
        })
}

fn check(text: &str) {
    let parsed = AgentConfig::from_yaml(text);
    let checked = parsed.and_then(|c| c.check());
    match checked {
        Ok(c) => {
            assert!(c.root.is_absolute());
            for m in &c.models {
                assert!(check_name("name", &m.name).is_ok(), "{:?}", m.name);
                for f in &m.files {
                    assert!(is_contained_relative(&f.path), "{:?}", f.path);
                    if m.verify {
                        assert!(f.sha256.is_some(), "verify without a digest: {:?}", f.path);
                    }
                }
                assert!(
                    !format!("{m:?}").contains(SECRET),
                    "a secret in Debug: {m:?}"
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(!msg.contains(SECRET), "a secret in an error: {msg}");
        }
    }
}

proptest! {
    #[test]
    fn generated_configs_are_validated_or_refused_safely(text in config_yaml()) {
        check(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text);
    }

    #[test]
    fn mutated_configs_never_panic(text in config_yaml(),
                                   flips in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..5)) {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, c) in flips {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        check(&chars.into_iter().collect::<String>());
    }
}
