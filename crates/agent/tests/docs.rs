//! README's agent configuration is a configuration the agent accepts: every field it shows
//! exists and its values validate (the elided digests are filled in).

#[test]
fn the_readme_agent_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README");
    let section = &readme[readme.find("## The agent").expect("agent section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").expect("block end")];
    let digest = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";
    let config = kiln_agent::AgentConfig::from_yaml(&yaml.replace('…', digest))
        .unwrap_or_else(|e| panic!("README's agent YAML does not parse: {e}\n{yaml}"));
    assert_eq!(config.transfer, kiln_agent::config::Transfer::Auto);
    let checked = config
        .check()
        .unwrap_or_else(|e| panic!("README's agent YAML is invalid: {e}"));
    assert_eq!(checked.models.len(), 3);
}
