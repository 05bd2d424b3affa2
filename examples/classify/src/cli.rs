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
use kiln_classify::magika::{Magika, INPUT};

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
    let magika = Magika::from_file(&args.config)?;

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

    let mut rows = Vec::with_capacity(args.files.len() * magika.width());
    for f in &args.files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        rows.extend(magika.features(&bytes));
    }
    let input = Tensor::new([args.files.len(), magika.width()], rows)?;
    let outputs = model.run(&[(INPUT.to_owned(), input)])?;
    let scores = outputs[0].1.as_slice::<f32>()?;
    for (file, row) in args.files.iter().zip(magika.rows(scores)) {
        let v = magika.verdict(row)?;
        let verdict = if v.confident {
            v.label.as_str()
        } else {
            "unknown (low confidence)"
        };
        println!(
            "{:<48} {:<12} score {:.3}  -> {}",
            file.display(),
            v.label,
            v.score,
            verdict
        );
    }
    Ok(())
}
