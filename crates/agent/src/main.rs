//! `kiln-agent`: the Kubernetes sidecar that fetches, verifies and publishes model artifacts
//! into the shared model repository (layout: `kiln::layout`).
//!
//! Skeleton: the agent issue fills in fetching, verification, publishing, readiness and
//! metrics. Today it only reports its version and the layout contract it will write.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("-V") => {
            println!("kiln-agent {}", env!("CARGO_PKG_VERSION"));
            println!(
                "manifest file: {} (schema {})",
                kiln::layout::MANIFEST_FILE,
                kiln::manifest::SCHEMA
            );
            Ok(())
        }
        _ => bail!("kiln-agent is not implemented yet; only --version is available"),
    }
}
