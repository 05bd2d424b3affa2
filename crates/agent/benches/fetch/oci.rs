//! The OCI table of the fetch bench: the same object as an ORAS-style artifact (one layer) in
//! a real registry on 127.0.0.1 (Debian's `docker-registry`, filesystem storage), pulled by
//! `curl` (the blob URL, to a file), by `skopeo copy` (to a `dir:`), and by the agent each
//! way (verified against the layer digest and published), best of 2, alternated.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{free_port, run_agent_ways, Server, AGENT_WAYS};

async fn push(base: &str, repo: &str, bytes: Vec<u8>) -> Result<String> {
    let http = reqwest::Client::new();
    let digest = format!("sha256:{}", kiln::Digest::of(&bytes));
    let started = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let location = started
        .headers()
        .get("location")
        .context("upload location")?
        .to_str()?
        .to_owned();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let done = http
        .put(format!("{url}{sep}digest={digest}"))
        .body(bytes)
        .send()
        .await?;
    if done.status().as_u16() != 201 {
        bail!("blob upload: {}", done.status());
    }
    Ok(digest)
}

/// The OCI section's body for a `mib` MiB layer.
pub(crate) fn run(mib: usize) -> Result<String> {
    let storage = tempfile::tempdir()?;
    let port = free_port()?;
    let config = storage.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.path().join("data").display()
        ),
    )?;
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    let _registry = Server::start(
        cmd,
        port,
        "docker-registry",
        "the CNCF distribution server, Go, filesystem storage",
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut bytes = vec![0u8; mib << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for c in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let size = bytes.len();
    let layer = rt.block_on(async {
        let layer = push(&base, "bench/big", bytes).await?;
        let config = push(&base, "bench/big", b"{}".to_vec()).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": size,
                        "annotations": {"org.opencontainers.image.title": "model.bin"}}],
        });
        let put = reqwest::Client::new()
            .put(format!("{base}/v2/bench/big/manifests/v1"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(&manifest)?)
            .send()
            .await?;
        if put.status().as_u16() != 201 {
            bail!("manifest: {}", put.status());
        }
        anyhow::Ok(layer)
    })?;
    let scratch = tempfile::tempdir()?;
    let timed = |cmd: &mut Command| -> Option<Duration> {
        let t = Instant::now();
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| t.elapsed())
    };
    /// One round: curl, skopeo, the agent each way.
    type Round = (Option<Duration>, Option<Duration>, Vec<Duration>);
    let mut runs: Vec<Round> = Vec::new();
    let mut peak_rss_kib = 0u64;
    let mut chosen = Vec::new();
    for round in 0..2 {
        let out = scratch.path().join("curl.bin");
        let curl = timed(
            Command::new("curl")
                .args(["-sf", "-o"])
                .arg(&out)
                .arg(format!("{base}/v2/bench/big/blobs/{layer}")),
        );
        std::fs::remove_file(&out).ok();
        let dir = scratch.path().join("skopeo");
        let skopeo = timed(
            Command::new("skopeo")
                .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
                .arg(format!("docker://127.0.0.1:{port}/bench/big:v1"))
                .arg(format!("dir:{}", dir.display())),
        );
        std::fs::remove_dir_all(&dir).ok();
        let model = format!(
            "    source: oci://127.0.0.1:{port}/bench/big:v1\n    store: {{allow_http: \"true\"}}\n"
        );
        let (agents, rss, choices) = run_agent_ways(scratch.path(), round, &model)?;
        peak_rss_kib = peak_rss_kib.max(rss);
        chosen.extend(choices);
        runs.push((curl, skopeo, agents));
    }
    let best = |f: &dyn Fn(&Round) -> Option<Duration>| runs.iter().filter_map(f).min();
    let curl = best(&|r| r.0);
    let skopeo = best(&|r| r.1);
    let client = [curl, skopeo].into_iter().flatten().min();
    let bytes = size as f64;
    let row = |label: &str, d: Option<Duration>| match d {
        Some(d) => format!(
            "| {label} | {:.2} s | {:.0} MiB/s | {} |\n",
            d.as_secs_f64(),
            bytes / d.as_secs_f64() / 1048576.0,
            client.map_or("n/a".into(), |c| format!(
                "{:.2}",
                c.as_secs_f64() / d.as_secs_f64()
            ))
        ),
        None => format!("| {label} | failed | n/a | n/a |\n"),
    };
    let mut body = format!(
        "### Registry: `docker-registry` on 127.0.0.1 (an ORAS-style artifact, one {mib} MiB layer)\n\n\
         | client | time | throughput | throughput ÷ best client's |\n|---|---|---|---|\n"
    );
    body.push_str(&row("`curl` of the blob URL (to a file)", curl));
    body.push_str(&row("`skopeo copy` to a `dir:`", skopeo));
    for (k, (label, _, _)) in AGENT_WAYS.iter().enumerate() {
        body.push_str(&row(
            &format!("`kiln-agent fetch` (`oci://`), {label}"),
            best(&|r| r.2.get(k).copied()),
        ));
    }
    body.push_str(&format!(
        "\n`transfer: auto` chose: {}.\n",
        if chosen.is_empty() {
            "nothing measured".to_owned()
        } else {
            chosen.join("; ")
        }
    ));
    body.push_str(&format!(
        "\nAgent peak RSS (`VmHWM`, polled every 20 ms): **{:.0} MiB**. The agent's times include \
         reading the manifest, verifying the layer against its digest while it streams, and the \
         atomic publish; curl \
         neither hashes nor `fsync`s, skopeo verifies the digest too.\n",
        peak_rss_kib as f64 / 1024.0
    ));
    Ok(body)
}
