//! `kiln-classify`: tells the content type of files with Google's magika model, loaded by
//! kiln only after its sha256 is verified.
//!
//! ```text
//! kiln-classify --model testdata/real/magika.onnx --config testdata/real/magika-config.json \
//!     --sha256 <hex> FILE...
//! ```
//!
//! Without `--sha256` the digest comes from a `kiln-manifest.json` beside the model, as the
//! agent publishes it. All files are classified in one batch.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::{Checksum, Model, ModelOptions, Runtime, RuntimeConfig, Tensor};

mod features;

/// The fields of magika's `config.min.json` this example uses.
#[derive(serde::Deserialize)]
struct MagikaConfig {
    beg_size: usize,
    end_size: usize,
    block_size: usize,
    padding_token: i32,
    medium_confidence_threshold: f32,
    target_labels_space: Vec<String>,
    #[serde(default)]
    thresholds: std::collections::HashMap<String, f32>,
}

struct Args {
    model: PathBuf,
    config: PathBuf,
    sha256: Option<String>,
    files: Vec<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut config = None;
    let mut sha256 = None;
    let mut files = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--model") => model = it.next().map(PathBuf::from),
            Some("--config") => config = it.next().map(PathBuf::from),
            Some("--sha256") => sha256 = it.next().and_then(|s| s.into_string().ok()),
            Some("-h" | "--help") => {
                println!("usage: kiln-classify --model MODEL.onnx --config CONFIG.json [--sha256 HEX] FILE...");
                std::process::exit(0);
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    let (Some(model), Some(config)) = (model, config) else {
        bail!("--model and --config are required (see --help)")
    };
    if files.is_empty() {
        bail!("no files to classify");
    }
    Ok(Args {
        model,
        config,
        sha256,
        files,
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let cfg: MagikaConfig = serde_json::from_str(
        &std::fs::read_to_string(&args.config)
            .with_context(|| format!("reading {}", args.config.display()))?,
    )
    .context("parsing the magika config")?;

    let runtime = Runtime::new(&RuntimeConfig::default()).context("loading ONNX Runtime")?;
    let lib = runtime.library();
    println!(
        "ONNX Runtime {} from {} ({})",
        lib.version,
        lib.path.display(),
        lib.source
    );

    let checksum = match &args.sha256 {
        Some(hex) => Checksum::Sha256(hex.parse()?),
        None => Checksum::Manifest,
    };
    let mut model = Model::load(
        &runtime,
        &args.model,
        &ModelOptions::new()
            .with_name("magika")
            .with_checksum(checksum),
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    println!(
        "model {} verified (sha256 {}), running on {} ({:?}: {:?})",
        model.metadata().name,
        model.digest(),
        model.provider().provider,
        model.provider().source,
        model.provider().nodes
    );

    let width = cfg.beg_size + cfg.end_size;
    let mut rows = Vec::with_capacity(args.files.len() * width);
    for f in &args.files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        rows.extend(features::extract(
            &bytes,
            cfg.beg_size,
            cfg.end_size,
            cfg.block_size,
            cfg.padding_token,
        ));
    }
    let input = Tensor::new([args.files.len(), width], rows)?;
    let outputs = model.run(&[("bytes".to_owned(), input)])?;
    let scores = outputs[0].1.as_slice::<f32>()?;
    let classes = cfg.target_labels_space.len();
    for (file, row) in args.files.iter().zip(scores.chunks(classes)) {
        let (best, score) = row
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |acc, (i, s)| if s > acc.1 { (i, s) } else { acc },
            );
        let label = &cfg.target_labels_space[best];
        let threshold = cfg
            .thresholds
            .get(label)
            .copied()
            .unwrap_or(cfg.medium_confidence_threshold);
        let verdict = if score >= threshold {
            label.as_str()
        } else {
            "unknown (low confidence)"
        };
        println!(
            "{:<48} {:<12} score {:.3}  -> {}",
            file.display(),
            label,
            score,
            verdict
        );
    }
    Ok(())
}
