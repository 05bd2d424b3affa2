//! The agent fetching a large object from local S3 servers (`moto_server`, whose range GETs
//! are slow, and `s3s-fs`, whose parallel ranges are fast) on 127.0.0.1, against `curl` on a
//! presigned URL and `aws s3 cp` of the same object in the same run, each way the agent can
//! move it (one stream, parts streamed in order, ranged parts, and `transfer: auto`, which
//! measures and chooses): throughput (the agent's includes verification and the atomic
//! publish) and the agent's peak RSS. Run: `make bench-agent`. `KILN_BENCH_AGENT_MIB` sets
//! the size (default 1024).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_benches::{machine, write_section};
use object_store::signer::Signer;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

#[path = "fetch/oci.rs"]
mod oci;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `cmd` to completion, polling its peak RSS (`VmHWM`, KiB) from /proc every 20 ms.
fn run_measuring_rss(cmd: &mut Command) -> Result<(std::process::ExitStatus, u64)> {
    let mut child = cmd.spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local S3 server for one table of the bench.
struct Server {
    child: std::process::Child,
    port: u16,
    /// How the table names it.
    label: &'static str,
    /// What to know about it when reading the numbers.
    about: &'static str,
}

impl Server {
    /// Starts `cmd` (listening on `port`) and waits until it accepts connections.
    fn start(
        mut cmd: Command,
        port: u16,
        label: &'static str,
        about: &'static str,
    ) -> Result<Self> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {label}"))?;
        let server = Self {
            child,
            port,
            label,
            about,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("{label} did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3s-fs` (S3 over a local directory, from crates.io: `make s3s-fs`), if installed.
fn s3s_fs() -> Option<std::path::PathBuf> {
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/tools/bin/s3s-fs");
    if local.exists() {
        return Some(local);
    }
    Command::new("s3s-fs")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "s3s-fs".into())
}

fn main() -> Result<()> {
    let mib: usize = std::env::var("KILN_BENCH_AGENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    // `KILN_BENCH_AGENT_ONLY=oci` measures the registry table alone.
    if std::env::var("KILN_BENCH_AGENT_ONLY").is_ok_and(|v| v == "oci") {
        return oci_section(mib);
    }
    let mut body = format!(
        "## Agent: fetching a {mib} MiB object from local S3\n\n\
         Machine: {}. Best of 2 runs each, alternated. Command: `make bench-agent` \
         (`cargo bench -p kiln-agent --bench fetch`; `make s3s-fs` first for the second table).\n\n",
        machine()
    );
    let port = free_port()?;
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let moto = Server::start(
        cmd,
        port,
        "moto_server",
        "Python; it bounds every client alike, and its range GETs are slow",
    )?;
    // moto creates a bucket on a plain PUT.
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "PUT /bench HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let _ = s.read_to_string(&mut String::new());
    body.push_str(&run(mib, &moto)?);
    drop(moto);

    match s3s_fs() {
        Some(bin) => {
            let data = tempfile::tempdir()?;
            // A bucket is a directory.
            std::fs::create_dir_all(data.path().join("bench"))?;
            let port = free_port()?;
            let mut cmd = Command::new(bin);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", "test", "--secret-key", "test"])
                .arg(data.path());
            let s3s = Server::start(cmd, port, "s3s-fs", "Rust, serving files: range GETs cost what they read")?;
            body.push_str(&run(mib, &s3s)?);
        }
        None => body.push_str("s3s-fs is not installed (`make s3s-fs`): the table against a server with cheap range GETs was not measured.\n"),
    }
    body.push_str(
        "\nHow the one-stream agent keeps up with curl although it hashes and `fsync`s before publishing \
         (curl does neither): the network task only forwards chunks; a writer thread hashes and writes them \
         (bounded channel, so memory does not grow with the object), and a flusher thread `fdatasync`s every \
         64 MiB, so the final sync waits only for the tail. Before that change (tokio file writes, one sync at \
         the end) the same bench gave 0.61× curl on 1 GiB against moto.\n",
    );
    println!("{body}");
    write_section("agent-fetch", &body)?;
    oci_section(mib)
}

/// The registry table, in its own section of RESULTS.md.
fn oci_section(mib: usize) -> Result<()> {
    let body = format!(
        "## Agent: pulling a {mib} MiB model from a local OCI registry\n\n\
         Machine: {}. Best of 2 runs each, alternated. Command: `make bench-agent` \
         (`cargo bench -p kiln-agent --bench fetch`; `KILN_BENCH_AGENT_ONLY=oci` for this table alone).\n\n{}",
        machine(),
        oci::run(mib)?
    );
    println!("{body}");
    write_section("agent-fetch-oci", &body)?;
    Ok(())
}

/// The agent's ways of fetching the object: (table label, `parallel_threshold_mib`,
/// `transfer`). The sha256 is always computed while the bytes arrive, and the result is
/// verified and published atomically.
const AGENT_WAYS: [(&str, &str, &str); 4] = [
    (
        "one stream, below the part threshold (hashed while written; not resumable)",
        "100000",
        "auto",
    ),
    (
        "one stream in 16 MiB journaled parts (`transfer: stream`, resumable)",
        "1",
        "stream",
    ),
    (
        "4 parallel 16 MiB ranged parts (`transfer: ranged`, resumable)",
        "1",
        "ranged",
    ),
    (
        "`transfer: auto` (measures both on the first parts, continues the faster; resumable)",
        "1",
        "auto",
    ),
];

fn run(mib: usize, server: &Server) -> Result<String> {
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let store = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let path: object_store::path::Path = "big/model.bin".into();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    rt.block_on(async {
        let upload = store.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 64 << 20);
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..mib {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            sha2::Digest::update(&mut hasher, &block);
            w.write(&block);
        }
        w.finish().await?;
        let _ = store
            .put(&"warm".into(), PutPayload::from_static(b"x"))
            .await?;
        anyhow::Ok(())
    })?;
    let digest = kiln::Digest::from_bytes(sha2::Digest::finalize(hasher).into());
    let url = rt.block_on(store.signed_url(http::Method::GET, &path, Duration::from_secs(3600)))?;
    let bytes = (mib as f64) * 1048576.0;
    let scratch = tempfile::tempdir()?;

    let mut runs = Vec::new();
    let mut chosen = Vec::new();
    let mut peak_rss_kib = 0u64;
    for round in 0..2 {
        // curl on a presigned URL, to a file.
        let out = scratch.path().join("curl.bin");
        let t = Instant::now();
        let ok = Command::new("curl")
            .args(["-sS", "-f", "-o"])
            .arg(&out)
            .arg(url.as_str())
            .status()?
            .success();
        let curl = t.elapsed();
        std::fs::remove_file(&out).ok();
        if !ok {
            bail!("curl failed");
        }
        // aws s3 cp, if the CLI is there.
        let t = Instant::now();
        let aws = Command::new("aws")
            .args([
                "s3",
                "cp",
                "--quiet",
                "--endpoint-url",
                &endpoint,
                "s3://bench/big/model.bin",
            ])
            .arg(scratch.path().join("aws.bin"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| t.elapsed());
        std::fs::remove_file(scratch.path().join("aws.bin")).ok();
        // The agent, fetch mode, verified and published, each way a large object can travel.
        let model = format!("    version: \"1\"\n    source: s3://bench/big/model.bin\n    sha256: {digest}\n    store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}\n");
        let (agent_times, rss, choices) = run_agent_ways(scratch.path(), round, &model)?;
        peak_rss_kib = peak_rss_kib.max(rss);
        chosen.extend(choices);
        runs.push((curl, aws, agent_times));
    }
    let rss_mib = peak_rss_kib as f64 / 1024.0;
    type Run = (Duration, Option<Duration>, Vec<Duration>);
    let best = |f: &dyn Fn(&Run) -> Option<Duration>| runs.iter().filter_map(f).min();
    let curl = best(&|r| Some(r.0));
    let aws = best(&|r| r.1);
    let agents: Vec<Option<Duration>> = (0..AGENT_WAYS.len())
        .map(|k| best(&|r| r.2.get(k).copied()))
        .collect();
    let rate = |d: Option<Duration>| {
        d.map_or("n/a".to_owned(), |d| {
            format!("{:.0} MiB/s", bytes / d.as_secs_f64() / 1048576.0)
        })
    };
    let secs =
        |d: Option<Duration>| d.map_or("n/a".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    // Throughput ratios to the best client (curl or aws) in the same run.
    let client = [curl, aws].into_iter().flatten().min();
    let of_best = |d: Option<Duration>| match (d, client) {
        (Some(d), Some(c)) => format!("{:.2}", c.as_secs_f64() / d.as_secs_f64()),
        _ => "n/a".into(),
    };
    let mut body = format!(
        "### Server: `{}` on 127.0.0.1 ({})\n\n\
         | client | time | throughput | throughput ÷ best client's |\n|---|---|---|---|\n\
         | `curl` on a presigned URL (to a file) | {} | {} | {} |\n\
         | `aws s3 cp` | {} | {} | {} |\n",
        server.label,
        server.about,
        secs(curl),
        rate(curl),
        of_best(curl),
        secs(aws),
        rate(aws),
        of_best(aws),
    );
    for ((label, _, _), d) in AGENT_WAYS.iter().zip(&agents) {
        body.push_str(&format!(
            "| `kiln-agent fetch`, {label} | {} | {} | {} |\n",
            secs(*d),
            rate(*d),
            of_best(*d)
        ));
    }
    body.push_str(&format!(
        "\n`transfer: auto` chose: {}.\n\n\
         Agent peak RSS (`VmHWM`, polled every 20 ms): **{rss_mib:.0} MiB** (target ≤ 64 MiB). \
         Throughput target: agent (`auto`) ≥ 0.8× the best client.\n\n",
        if chosen.is_empty() {
            "nothing measured".to_owned()
        } else {
            chosen.join("; ")
        }
    ));
    Ok(body)
}

/// `kiln-agent fetch` once each way of [`AGENT_WAYS`] for the model `model` (its YAML lines
/// after `name: big`), in `scratch`: each way's time, the peak RSS, and what `auto` measured
/// and chose (from the agent's JSON log line), labelled with `round`.
fn run_agent_ways(
    scratch: &std::path::Path,
    round: usize,
    model: &str,
) -> Result<(Vec<Duration>, u64, Vec<String>)> {
    let mut times = Vec::new();
    let mut peak_rss_kib = 0u64;
    let mut chosen = Vec::new();
    for (k, (_, threshold, transfer)) in AGENT_WAYS.iter().enumerate() {
        let root = scratch.join(format!("root{round}-{k}"));
        std::fs::create_dir_all(&root)?;
        let cfg = scratch.join("agent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: {threshold}\ntransfer: {transfer}\ntermination_log: {}/termination-log\nmodels:\n  - name: big\n{model}",
                root.display(),
                scratch.display()
            ),
        )?;
        let log = scratch.join("agent.log");
        let t = Instant::now();
        let (status, rss) = run_measuring_rss(
            Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
                .args(["fetch", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "warn,kiln_agent::transfer=info")
                .env("KILN_AGENT_LOG_FORMAT", "json")
                // The agent logs to stdout; its error (if any) goes to stderr.
                .stdout(std::fs::File::create(&log)?)
                .stderr(Stdio::null()),
        )?;
        times.push(t.elapsed());
        peak_rss_kib = peak_rss_kib.max(rss);
        if !status.success() {
            bail!("agent failed: {}", std::fs::read_to_string(&log)?);
        }
        let measured = std::fs::read_to_string(&log)?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "transfer measured on this store");
        if let Some(v) = measured {
            let field = |name: &str| match &v["fields"][name] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            chosen.push(format!(
                "round {}: {} (one stream {} MiB/s, ranged {} MiB/s{})",
                round + 1,
                field("mode"),
                field("stream_mib_per_s"),
                field("ranged_mib_per_s"),
                if field("ranged_stopped_early") == "true" {
                    ", ranged GETs stopped early"
                } else {
                    ""
                }
            ));
        }
        std::fs::remove_dir_all(&root).ok();
    }
    Ok((times, peak_rss_kib, chosen))
}
