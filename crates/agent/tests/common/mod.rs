//! Helpers shared by the agent's integration tests: a tokio runtime, agents from YAML, test
//! blobs, what is left in staging, and a real S3 server (`moto_server`).

#![allow(dead_code, unreachable_pub)]

pub(crate) mod proxy;
pub(crate) mod signing;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::{Digest, Manifest};
use kiln_agent::{Agent, AgentConfig};

pub(crate) fn sha(path: &Path) -> String {
    Digest::of(&std::fs::read(path).expect("read")).to_string()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// An agent whose metrics can be rendered as Prometheus text.
pub(crate) fn agent_with_metrics(
    yaml: &str,
) -> (Agent, Arc<kiln_agent::metrics::PrometheusTelemetry>) {
    let telemetry = Arc::new(kiln_agent::metrics::PrometheusTelemetry::new().expect("exporter"));
    let config = AgentConfig::from_yaml(yaml)
        .expect("yaml")
        .check()
        .expect("valid config");
    (Agent::with_meter(config, &telemetry.meter()), telemetry)
}

pub(crate) fn agent(yaml: &str) -> Agent {
    Agent::new(
        AgentConfig::from_yaml(yaml)
            .expect("yaml")
            .check()
            .expect("valid config"),
    )
}

pub(crate) fn blob(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
    .expect("write");
    p
}

pub(crate) fn leftovers(root: &Path) -> Vec<String> {
    let list = |d: PathBuf| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out: Vec<String> = list(root.join(".kiln"))
        .into_iter()
        .filter(|n| n != "parts")
        .collect();
    // Partials live in `parts/<model>/<version>/`: every file there, by its path.
    let mut dirs = vec![root.join(".kiln/parts")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else if let Ok(rel) = e.path().strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    out
}

/// Waits until a server accepts connections on `port` (at most `limit`).
pub(crate) fn listening(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A `moto_server` (S3) on a free loopback port, killed on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
}

impl Moto {
    /// An S3 client for `bucket` on this server, signing with `secret`.
    pub(crate) fn store(&self, bucket: &str, secret: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key(secret)
            .build()
            .expect("s3 client")
    }

    /// Creates `bucket` (moto creates buckets on a plain PUT; [`Moto::start`] waited until it
    /// answers).
    pub(crate) fn create_bucket(&self, bucket: &str) {
        let client = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        let answer = http_request(client, "PUT", &format!("/{bucket}"));
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "bucket {bucket}: {answer}"
        );
    }

    pub(crate) fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let bin = ["moto_server", "../../.cache/venv/bin/moto_server"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--help")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })?;
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let moto = Self { child, port };
        if !listening(port, Duration::from_secs(30)) {
            return None;
        }
        // Listening is not yet serving: moto's first answer can take seconds (two starting at
        // once on two cores). Any HTTP answer says it serves.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = TcpStream::connect(("127.0.0.1", port))
                .map(|client| http_request(client, "GET", "/"))
                .unwrap_or_default();
            if answer.starts_with("HTTP/1.1 ") {
                return Some(moto);
            }
            assert!(Instant::now() < deadline, "moto listens but never answers");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn http_request(mut stream: TcpStream, method: &str, path: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// The shared directory's invariant for model `m`: `current` absent, or pointing at a version whose every file matches its
/// manifest and is one of the uploaded contents. Returns the published digest, if any.
pub(crate) fn consistent(root: &Path, uploaded: &[Digest]) -> Option<Digest> {
    let model = root.join("m");
    let current = model.join("current");
    let Ok(target) = std::fs::read_link(&current) else {
        return None;
    };
    let dir = model.join(&target);
    let (_, manifest) = Manifest::read_in(&dir)
        .expect("a published version's manifest reads")
        .expect("a published version has a manifest");
    assert_eq!(manifest.files.len(), 1, "{manifest:?}");
    let f = &manifest.files[0];
    let bytes = std::fs::read(dir.join(&f.path)).expect("published file");
    let digest = Digest::of(&bytes);
    assert_eq!(digest, f.sha256, "published file differs from its manifest");
    assert_eq!(bytes.len() as u64, f.size);
    assert!(
        uploaded.contains(&digest),
        "published content was never uploaded: corrupt"
    );
    Some(digest)
}

pub(crate) fn content(version: u8) -> Vec<u8> {
    // 3 MiB: large enough for ranged parts (parallel_threshold_mib 1, parts of 512 KiB).
    (0..3usize << 20)
        .map(|i| {
            (i as u8)
                .wrapping_mul(29)
                .wrapping_add(version.wrapping_mul(71))
                ^ (i >> 13) as u8
        })
        .collect()
}

/// Serves `app` on a loopback port on `rt`.
pub(crate) fn serve(rt: &tokio::runtime::Runtime, app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(l, app).await.expect("serve");
    });
    addr
}
