//! Hashing speed of kiln's model loader against `openssl dgst -sha256` on the same 1 GiB
//! file (the foundation issue's target: within 10%).
//!
//! Three measurements, alternated run by run so machine noise hits all alike:
//! - `openssl dgst -sha256 FILE` (a process that streams the file through SHA-256);
//! - `kiln::checksum::read_and_hash` (reads the whole file into memory, hashing as it reads:
//!   what `Model::load` does);
//! - `sha2` over bytes already in memory (the hash alone, no I/O).
//!
//! The file stays in the page cache, so this compares CPU cost, not disk speed.
//! Run: `make bench-hash` (or `cargo bench -p kiln-benches --bench hash`).
//! `KILN_BENCH_HASH_MIB` changes the size (default 1024).

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kiln_benches::{machine, median, time_runs, write_section};

use sha2::Digest as _;

const RUNS: usize = 5;

fn main() -> Result<()> {
    let mib: usize = std::env::var("KILN_BENCH_HASH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile_dir()?;
    let path = dir.join("blob.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&block)?;
        }
    }
    let expected = kiln::checksum::read_and_hash(&path)?.1;
    let openssl_version =
        String::from_utf8_lossy(&Command::new("openssl").arg("version").output()?.stdout)
            .trim()
            .to_owned();

    let (mut openssl, mut kiln_t, mut mem, mut read) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let in_memory = std::fs::read(&path)?;
    for _ in 0..RUNS {
        openssl.extend(time_runs(1, || {
            let out = Command::new("openssl")
                .arg("dgst")
                .arg("-sha256")
                .arg("-r")
                .arg(&path)
                .output()
                .expect("openssl runs");
            let hex = String::from_utf8_lossy(&out.stdout);
            assert!(
                hex.starts_with(&expected.to_string()),
                "openssl digest differs: {hex}"
            );
        }));
        kiln_t.extend(time_runs(1, || {
            let (bytes, digest) = kiln::checksum::read_and_hash(&path).expect("read");
            assert_eq!(digest, expected);
            drop(bytes);
        }));
        read.extend(time_runs(1, || {
            let bytes = std::fs::read(&path).expect("read");
            assert_eq!(bytes.len(), mib << 20);
        }));
        mem.extend(time_runs(1, || {
            let d = sha2::Sha256::digest(&in_memory);
            assert_eq!(d.as_slice(), expected.as_bytes());
        }));
    }
    for v in [&mut openssl, &mut kiln_t, &mut mem, &mut read] {
        v.sort();
    }
    std::fs::remove_dir_all(&dir).ok();
    let rate = |d: Duration| mib as f64 / 1024.0 / d.as_secs_f64();
    let (o, k) = (median(&openssl), median(&kiln_t));
    let row = |what: &str, v: &[Duration]| {
        let (best, med) = (v[0], median(v));
        format!(
            "| {what} | {:.3} s | {:.3} s | {:.2} | {:.2} | {:.2} |\n",
            best.as_secs_f64(),
            med.as_secs_f64(),
            rate(med),
            best.as_secs_f64() / openssl[0].as_secs_f64(),
            med.as_secs_f64() / o.as_secs_f64()
        )
    };
    let ratio = k.as_secs_f64() / o.as_secs_f64();
    let body = format!(
        "## Model hashing: kiln vs `openssl dgst -sha256`\n\n\
         Machine: {machine}. {openssl_version}. File: {mib} MiB, in the page cache. {RUNS} runs of each, alternated.\n\
         Command: `make bench-hash` (`cargo bench -p kiln-benches --bench hash`).\n\n\
         | what | best | median | GiB/s (median) | best ÷ openssl best | median ÷ openssl median |\n|---|---|---|---|---|---|\n\
         {}{}{}{}\n\
         Target: kiln's load path within 10% of openssl (median ratio ≤ 1.10): **{}** (median ratio {ratio:.3}).\n\n\
         Runs (s): openssl {:?}; kiln {:?}; sha2 in memory {:?}; fs::read {:?}.\n",
        row("`openssl dgst -sha256` (process, streaming through a small buffer)", &openssl),
        row("kiln `read_and_hash` (whole file into memory + hash, as `Model::load`)", &kiln_t),
        row("`sha2` over bytes already in memory (hash only)", &mem),
        row("`std::fs::read` into fresh memory (no hash; the cost of holding the model in RAM)", &read),
        if ratio <= 1.10 { "met" } else { "missed" },
        secs(&openssl),
        secs(&kiln_t),
        secs(&mem),
        secs(&read),
        machine = machine(),
    );
    println!("{body}");
    write_section("hash", &body).context("writing benches/RESULTS.md")?;
    ensure!(kiln_t.len() == RUNS, "every run completed");
    Ok(())
}

fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter()
        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
        .collect()
}

/// A scratch directory under `target/` (same disk as the build, not tmpfs).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
