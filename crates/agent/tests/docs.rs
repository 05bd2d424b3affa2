//! README's agent configuration is a configuration the agent accepts: every field it shows
//! exists and its values validate (the elided digests are filled in).

/// A P-256 public key (its private half is nowhere: it only has to parse).
const TEST_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWSv9WCNIAAXLvTyiwV5ZjkMJk3xk\nofD0h7P5Zz+wywI3nFQ/ig/ukza0xC8HQKDh0bbKTmAtiz4XOwaNi/S4+Q==\n-----END PUBLIC KEY-----\n";

#[test]
fn the_readme_agent_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README");
    let section = &readme[readme.find("## The agent").expect("agent section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").expect("block end")];
    let digest = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";
    // The signed model's trust root: a real public key where README shows its path.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("signing.pub");
    std::fs::write(&key, TEST_KEY).expect("key");
    let yaml = yaml.replace("/etc/kiln/trust/signing.pub", &key.to_string_lossy());
    let config = kiln_agent::AgentConfig::from_yaml(&yaml.replace('…', digest))
        .unwrap_or_else(|e| panic!("README's agent YAML does not parse: {e}\n{yaml}"));
    assert_eq!(config.transfer, kiln_agent::config::Transfer::Auto);
    let checked = config
        .check()
        .unwrap_or_else(|e| panic!("README's agent YAML is invalid: {e}"));
    assert_eq!(checked.models.len(), 5);
    assert!(checked.models[3].signature.is_some());
    assert_eq!(checked.models[4].base.scheme(), "oci");
}

/// Every agent configuration the manifests ship (`k8s/base`, each overlay's) is one the agent
/// accepts; the signed overlay's trust root (its `kiln-trust` ConfigMap) is a key it reads.
#[test]
fn the_shipped_manifests_agent_configs_are_valid() {
    let k8s = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../k8s"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    let mut configs = vec![k8s.join("base/agent-config.yaml")];
    for overlay in std::fs::read_dir(k8s.join("overlays")).expect("overlays") {
        let overlay = overlay.expect("entry").path();
        let config = overlay.join("agent-config.yaml");
        if config.exists() {
            configs.push(config);
        }
        let trust = overlay.join("trust.yaml");
        if trust.exists() {
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&trust).expect("trust"))
                    .expect("yaml");
            for (name, value) in doc["data"].as_mapping().expect("data") {
                let file = dir.path().join(name.as_str().expect("name"));
                // The shipped placeholder must fail closed; a real key stands in for the rest.
                std::fs::write(&file, value.as_str().expect("text")).expect("write");
                let refused =
                    kiln::signing::Trust::public_key_file(&file).expect_err("placeholder");
                assert_eq!(refused.reason(), "trust_root", "{refused}");
                std::fs::write(&file, TEST_KEY).expect("write");
            }
        }
    }
    for path in configs {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        let yaml = doc["data"]["agent.yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no agent.yaml", path.display()))
            .replace("/etc/kiln/trust", &dir.path().to_string_lossy());
        kiln_agent::AgentConfig::from_yaml(&yaml)
            .and_then(|c| c.check())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 3, "{checked} configurations");
}
