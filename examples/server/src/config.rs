//! The server's model settings file (`kiln-server --config FILE`): ONNX Runtime session
//! settings for every model and batching per model, so one pod can tune each model the way
//! Triton's per-model `config.pbtxt` does, without code.
//!
//! ```yaml
//! session:            # kiln::SessionConfig, for every model
//!   intra_op_threads: 1
//! batch:              # kiln::BatchConfig for models not named below
//!   instances: 2
//!   max_batch_size: 64
//! models:             # per model name: a whole BatchConfig (unset fields take defaults)
//!   magika: {instances: 2, max_batch_size: 16, max_queue_delay_us: 500}
//!   detector:         # warm up on shapes known to be valid (Triton's model_warmup)
//!     warmup_samples:
//!       - {name: hd, batch_size: 1, inputs: {images: {dims: [3, 640, 640], data: random}}}
//! ```
//! Unknown fields are errors (a typo must not silently fall back to a default), and every
//! batching entry is validated before the server starts.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use kiln::{BatchConfig, RepositoryConfig, SessionConfig};
use serde::Deserialize;

/// The contents of the settings file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// ONNX Runtime session settings for every model.
    pub session: SessionConfig,
    /// Batching for models without an entry in `models`.
    pub batch: BatchConfig,
    /// Batching per model name.
    pub models: HashMap<String, BatchConfig>,
}

impl ModelSettings {
    /// Reads and validates `path` (YAML; JSON is YAML too).
    ///
    /// # Errors
    /// The file cannot be read, does not parse (unknown fields included), or a batching entry
    /// is invalid; the message names the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the settings file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("settings file {}", path.display()))
    }

    /// Parses and validates settings text.
    ///
    /// # Errors
    /// As [`ModelSettings::from_file`].
    pub fn parse(text: &str) -> Result<Self> {
        let s: Self = serde_yaml::from_str(text)?;
        s.batch.validate().context("batch")?;
        for (name, b) in &s.models {
            kiln::layout::check_name("models", name)?;
            b.validate().with_context(|| format!("models.{name}"))?;
        }
        Ok(s)
    }

    /// Applies the settings to a repository's configuration.
    pub fn apply(self, config: &mut RepositoryConfig) {
        config.options = config.options.clone().with_session(self.session);
        config.batch = self.batch;
        config.per_model = self.models;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_applies() {
        let s = ModelSettings::parse(
            "session: {intra_op_threads: 1}\nbatch: {instances: 2}\nmodels:\n  m: {max_batch_size: 16, max_queue_delay_us: 500}\n",
        )
        .expect("valid");
        assert_eq!(s.session.intra_op_threads, 1);
        assert_eq!(s.batch.instances, 2);
        assert_eq!(s.models["m"].max_batch_size, 16);
        let mut config = RepositoryConfig::new("/models");
        s.apply(&mut config);
        assert_eq!(config.per_model["m"].max_queue_delay_us, 500);
        assert_eq!(config.batch.instances, 2);
        assert_eq!(config.options.session.intra_op_threads, 1);
        assert_eq!(
            ModelSettings::parse("").expect("empty"),
            ModelSettings::default()
        );
    }

    #[test]
    fn warmup_samples_come_from_the_settings_file() {
        let s = ModelSettings::parse(
            "models:\n  detector:\n    warmup_samples:\n      - name: hd\n        batch_size: 1\n        count: 3\n        inputs:\n          images: {dims: [3, 640, 640], data: random}\n",
        )
        .expect("valid");
        let w = &s.models["detector"].warmup_samples[0];
        assert_eq!((w.name.as_str(), w.count), ("hd", 3));
        assert_eq!(w.inputs["images"].dims, vec![3, 640, 640]);
        assert_eq!(
            w.inputs["images"].data,
            kiln::batch::config::WarmupData::Random
        );
        let e = format!(
            "{:#}",
            ModelSettings::parse(
                "models: {m: {warmup_samples: [{name: a, inputs: {x: {dim: [1]}}}]}}"
            )
            .expect_err("typo")
        );
        assert!(e.contains("dim"), "{e}");
    }

    #[test]
    fn the_readme_example_parses() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .expect("README");
        let from = readme
            .find("Per-model settings (`--config")
            .expect("section");
        let block = &readme[from..];
        let start = block.find("```yaml\n").expect("yaml block") + 8;
        let end = start + block[start..].find("```").expect("end of block");
        let s = ModelSettings::parse(&block[start..end]).expect("README's settings parse");
        assert_eq!(s.models["detector"].warmup_samples[0].name, "hd");
    }

    #[test]
    fn refuses_typos_invalid_values_and_bad_names() {
        for (text, needle) in [
            ("batch: {instance: 2}", "instance"),
            ("sesion: {}", "sesion"),
            ("batch: {instances: 0}", "instances"),
            ("models: {m: {max_batch_size: 0}}", "max_batch_size"),
            ("models: {'..': {}}", ".."),
        ] {
            let e = format!("{:#}", ModelSettings::parse(text).expect_err(text));
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
