//! Google's magika content-type model: its configuration (`config.min.json`), the input it
//! takes (pre-processing a file's bytes into byte tokens) and the answer read from its scores.
//! The command line (`kiln-classify`) and the HTTP service (`kiln-classify-service`) share it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::features;

/// The model's input name.
pub const INPUT: &str = "bytes";

/// The fields of magika's `config.min.json` this example uses.
#[derive(Debug, serde::Deserialize)]
pub struct Magika {
    beg_size: usize,
    end_size: usize,
    block_size: usize,
    padding_token: i32,
    medium_confidence_threshold: f32,
    target_labels_space: Vec<String>,
    #[serde(default)]
    thresholds: HashMap<String, f32>,
}

/// The content type of one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The best-scoring label (`empty` for no bytes, which the model is not asked about).
    pub label: String,
    /// Its score.
    pub score: f32,
    /// Whether the score reaches the label's confidence threshold.
    pub confident: bool,
}

impl Magika {
    /// Reads the configuration file.
    ///
    /// # Errors
    /// The file is unreadable, is not magika's configuration, or has no labels.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let magika: Self = serde_json::from_str(&text)
            .with_context(|| format!("parsing the magika config {}", path.display()))?;
        if magika.target_labels_space.is_empty() || magika.beg_size + magika.end_size == 0 {
            bail!("{} has no labels or no input width", path.display());
        }
        Ok(magika)
    }

    /// Tokens per file: the model's input is `[files, width]` int32.
    pub fn width(&self) -> usize {
        self.beg_size + self.end_size
    }

    /// The pre-processing: `width()` tokens for one file's bytes.
    pub fn features(&self, bytes: &[u8]) -> Vec<i32> {
        features::extract(
            bytes,
            self.beg_size,
            self.end_size,
            self.block_size,
            self.padding_token,
        )
    }

    /// The answer for one file's row of scores (one per label).
    ///
    /// # Errors
    /// The row's length is not the number of labels (another model than the configuration's).
    pub fn verdict(&self, scores: &[f32]) -> Result<Verdict> {
        if scores.len() != self.target_labels_space.len() {
            bail!(
                "{} scores for {} labels: the model does not match its configuration",
                scores.len(),
                self.target_labels_space.len()
            );
        }
        let (best, score) =
            scores
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |acc, (i, s)| if s > acc.1 { (i, s) } else { acc },
                );
        let label = self.target_labels_space[best].clone();
        let threshold = self
            .thresholds
            .get(&label)
            .copied()
            .unwrap_or(self.medium_confidence_threshold);
        Ok(Verdict {
            confident: score >= threshold,
            label,
            score,
        })
    }

    /// The answer for a file with no bytes, as magika gives it (without running the model).
    pub fn empty() -> Verdict {
        Verdict {
            label: "empty".to_owned(),
            score: 1.0,
            confident: true,
        }
    }

    /// The rows of scores of a `[files, labels]` output.
    pub fn rows<'a>(&self, scores: &'a [f32]) -> impl Iterator<Item = &'a [f32]> {
        scores.chunks(self.target_labels_space.len())
    }
}
