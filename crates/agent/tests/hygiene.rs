//! What the agent leaves behind and what it never touches: partial downloads no plan owns are
//! removed (at start and after each sync), a published version directory is never rewritten
//! (new bytes under a used name get a new directory, `current` moves once), and re-verifying
//! published bytes runs off the async path (a current-thread runtime keeps ticking).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent, blob, rt, sha};

fn yaml(root: &Path, file: &Path, version: &str) -> String {
    format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    version: \"{version}\"\n    source: file://{}\n    sha256: {}\n",
        root.display(),
        file.display(),
        sha(file)
    )
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, b"half a download").expect("partial");
}

#[test]
fn partials_no_plan_owns_are_removed_at_start_and_after_a_sync() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 300_000, 1);
    let parts = root.path().join(".kiln/parts");
    // A model no longer configured, an older agent's flat name, and another version of the
    // configured model (its object changed: that download is never resumed).
    let unconfigured = parts.join("gone/7/model.onnx.partial");
    let flat = parts.join("m--old--model.onnx.partial");
    let other_version = parts.join("m/old/model.onnx.partial");
    let other_journal = parts.join("m/old/model.onnx.partial.journal");
    for p in [&unconfigured, &flat, &other_version, &other_journal] {
        touch(p);
    }
    let a = agent(&yaml(root.path(), &file, "1"));
    assert!(
        !unconfigured.exists() && !flat.exists(),
        "removed at start: {:?}",
        common::leftovers(root.path())
    );
    let r = rt().block_on(a.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert!(!other_version.exists() && !other_journal.exists());
    assert!(
        common::leftovers(root.path()).is_empty(),
        "{:?}",
        common::leftovers(root.path())
    );
}

#[test]
fn new_bytes_under_a_published_version_name_get_a_new_directory() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 200_000, 1);
    let first = std::fs::read(&file).expect("v1 bytes");
    let r = rt().block_on(agent(&yaml(root.path(), &file, "1")).sync_once());
    assert_eq!(r[0].1.as_deref().ok(), Some("1"));
    let v1 = root.path().join("m/1");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&v1).expect("v1"));

    // Other bytes, the same configured version label.
    blob(src.path(), "model.onnx", 200_000, 2);
    let config = yaml(root.path(), &file, "1");
    let a = agent(&config);
    let r = rt().block_on(a.sync_once());
    let name = r[0].1.as_ref().expect("published").clone();
    assert!(name.starts_with("1-") && name.len() == 14, "{name}");
    assert_eq!(
        std::fs::read(v1.join("model.onnx")).expect("v1 kept"),
        first,
        "the published directory was not rewritten"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&v1).expect("v1")),
        inode
    );
    assert_eq!(
        std::fs::read_link(root.path().join("m/current")).expect("current"),
        Path::new(&name)
    );
    assert_eq!(
        std::fs::read(root.path().join("m").join(&name).join("model.onnx")).expect("new"),
        std::fs::read(&file).expect("v2 bytes")
    );
    let manifest = kiln::Manifest::read_in(&root.path().join("m").join(&name))
        .expect("read")
        .expect("manifest");
    assert_eq!(manifest.1.version, name, "the manifest names its directory");

    // The same agent finds them again without a download; a restarted one re-verifies the
    // new directory and publishes nothing more.
    let again = rt().block_on(a.sync_once());
    assert_eq!(again[0].1.as_deref().ok(), Some(name.as_str()));
    assert!(!a.status().lock().expect("status")["m"].downloaded);
    let restarted = rt().block_on(agent(&config).sync_once());
    assert_eq!(restarted[0].1.as_deref().ok(), Some(name.as_str()));
    let dirs = std::fs::read_dir(root.path().join("m"))
        .expect("ls")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().is_dir() && !e.path().is_symlink())
        })
        .count();
    assert_eq!(dirs, 2, "no third directory");
    assert!(common::leftovers(root.path()).is_empty());
}

#[test]
fn re_verifying_published_bytes_does_not_stall_the_runtime() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 32 << 20, 3);
    let config = yaml(root.path(), &file, "1");
    let r = rt().block_on(agent(&config).sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);

    // A restarted agent re-hashes the published 32 MiB before trusting it; on a runtime with
    // one thread, a hash on the task would stop everything else for all that time.
    let a = agent(&config);
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let ticks = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let (during, took) = one.block_on(async {
        let (ticks2, running2) = (Arc::clone(&ticks), Arc::clone(&running));
        let ticker = tokio::spawn(async move {
            while running2.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks2.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The ticker is running before the sync starts.
        while ticks.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let before = ticks.load(Ordering::Relaxed);
        let r = a.sync_once().await;
        let during = ticks.load(Ordering::Relaxed) - before;
        let took = started.elapsed();
        assert!(r[0].1.is_ok(), "{:?}", r[0].1);
        running.store(false, Ordering::Relaxed);
        ticker.await.expect("ticker");
        (during, took)
    });
    eprintln!("re-verify: {took:?}, {during} ticks of 5 ms meanwhile");
    assert!(
        !a.status().lock().expect("status")["m"].downloaded,
        "reused, not downloaded"
    );
    // Every 5 ms if nothing stalls; a quarter of that on a loaded machine.
    let expected = took.as_millis() as u64 / 5 / 4;
    assert!(
        during >= expected.max(1),
        "the runtime stalled: {during} ticks in a {took:?} sync (at least {expected} expected)"
    );
}

#[test]
fn an_object_replaced_between_head_and_get_is_read_again_not_retried_stale() {
    use axum::http::{header, HeaderMap, Method, StatusCode};
    let root = tempfile::tempdir().expect("root");
    // Generation 1 until its first GET, which finds generation 2 in its place (412 to the
    // GET pinned to generation 1's ETag, as S3 answers).
    let generation = Arc::new(AtomicU64::new(1));
    let g = Arc::clone(&generation);
    let handler = move |method: Method, headers: HeaderMap| {
        let g = Arc::clone(&g);
        async move {
            let mut now = g.load(Ordering::SeqCst);
            if method == Method::GET && now == 1 {
                now = 2;
                g.store(2, Ordering::SeqCst);
            }
            let etag = format!("\"g{now}\"");
            let body = vec![now as u8; 1000 + now as usize];
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, etag.parse().expect("etag"));
            h.insert(
                header::LAST_MODIFIED,
                "Sun, 22 Nov 2026 12:00:00 GMT".parse().expect("date"),
            );
            h.insert(header::CONTENT_LENGTH, body.len().into());
            if headers.get(header::IF_MATCH).is_some_and(|v| *v != *etag) {
                h.insert(header::CONTENT_LENGTH, 0.into());
                return (StatusCode::PRECONDITION_FAILED, h, Vec::new());
            }
            let body = if method == Method::HEAD {
                Vec::new()
            } else {
                body
            };
            (StatusCode::OK, h, body)
        }
    };
    let server_rt = rt();
    let app = axum::Router::new().route(
        "/files/model.bin",
        axum::routing::get(handler.clone()).head(handler),
    );
    let addr = common::serve(&server_rt, app);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 3, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    source: http://{addr}/files/model.bin\n    verify: false\n    store: {{allow_http: \"true\"}}\n",
        root.path().display()
    );
    let r = rt().block_on(agent(&yaml).sync_once());
    let version = r[0].1.as_ref().expect("the new object is published");
    assert_eq!(version, "g2");
    assert_eq!(
        std::fs::read(root.path().join("m/g2/model.bin")).expect("published"),
        vec![2u8; 1002]
    );
    assert!(common::leftovers(root.path()).is_empty());
}

#[test]
fn sigterm_is_answered_within_a_second_mid_hash_and_mid_download() {
    use std::process::{Command, Stdio};
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    // Big enough that hashing it takes seconds in a debug build.
    let file = blob(src.path(), "model.onnx", 64 << 20, 4);
    // Served slowly (64 chunks of 1 MiB, 50 ms apart: about 3 s), so the download is still
    // under way when the signal comes whatever the build (from a file:// source a release
    // build had published it by then).
    let server_rt = rt();
    let bytes = bytes::Bytes::from(std::fs::read(&file).expect("blob"));
    let (addr, _) = slow_source(
        &server_rt,
        &["/model.onnx"],
        bytes,
        64,
        Duration::from_millis(50),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = root.path().join("agent.yaml");
    let text = format!(
        "root: {}\nreserve_bytes: 0\nlisten: 127.0.0.1:{port}\ninterval_s: 60\nmodels:\n  - name: m\n    version: \"1\"\n    source: http://{addr}/model.onnx\n    sha256: {}\n    store: {{allow_http: \"true\"}}\n",
        root.path().join("models").display(),
        sha(&file)
    );
    std::fs::write(&config, text).expect("config");
    let stop_after = |what: &str, wait: Duration| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln-agent");
        std::thread::sleep(wait);
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{what}: still working when signalled"
        );
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = sent + Duration::from_secs(10);
        let exited = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = sent.elapsed();
        eprintln!("{what}: exited {took:?} after SIGTERM ({exited})");
        assert!(
            took < Duration::from_secs(1),
            "{what}: {took:?} after SIGTERM"
        );
    };
    // Mid-download: nothing published yet, the 64 MiB are being fetched and hashed.
    stop_after("mid-download", Duration::from_millis(400));
    assert!(
        !root.path().join("models/m/current").exists(),
        "nothing published by a stopped download"
    );
    // Publish it, then stop a restarted agent while it re-hashes the published bytes (in a
    // debug build; a release build may have finished, and then is stopped idle).
    // (From the file itself: the slow source serves no ranges to resume the partial with.)
    let models = root.path().join("models");
    let r = rt().block_on(agent(&yaml(&models, &file, "1")).sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    stop_after("mid-hash", Duration::from_millis(400));
}

#[test]
fn two_slow_models_sync_in_about_the_time_of_one() {
    // Each GET's body takes about 1.2 s (12 chunks, 100 ms apart): two models synced one
    // after the other never have two bodies streaming at once. (Counted, not timed: a ratio
    // of wall-clock times flaked beside the other tests' hashing and fsyncs on two cores.)
    let server_rt = rt();
    let body = bytes::Bytes::from(vec![7u8; 12 * 1000]);
    let (addr, streams) = slow_source(
        &server_rt,
        &["/a/model.bin", "/b/model.bin"],
        body,
        12,
        Duration::from_millis(100),
    );
    let sync = |names: &[&str]| {
        let root = tempfile::tempdir().expect("root");
        let mut yaml = format!(
            "root: {}\nreserve_bytes: 0\nmax_concurrent_models: 2\nmodels:\n",
            root.path().display()
        );
        for n in names {
            yaml.push_str(&format!("  - name: {n}\n    source: http://{addr}/{n}/model.bin\n    verify: false\n    store: {{allow_http: \"true\"}}\n"));
        }
        let a = agent(&yaml);
        let t = Instant::now();
        let r = rt().block_on(a.sync_once());
        assert!(r.iter().all(|(_, r)| r.is_ok()), "{r:?}");
        t.elapsed()
    };
    let one = sync(&["a"]);
    assert_eq!(streams.most.swap(0, Ordering::SeqCst), 1);
    let two = sync(&["a", "b"]);
    eprintln!("one model {one:?}, two models {two:?}");
    assert_eq!(
        streams.most.load(Ordering::SeqCst),
        2,
        "two models took {two:?}, one {one:?}: they did not sync concurrently"
    );
}

#[test]
fn run_serves_the_endpoints_until_its_shutdown_future_resolves() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 4096, 9);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let text = format!(
        "{}listen: 127.0.0.1:{port}\ninterval_s: 60\n",
        yaml(root.path(), &file, "1")
    );
    let config = kiln_agent::AgentConfig::from_yaml(&text)
        .expect("yaml")
        .check()
        .expect("valid");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = rt();
    let running = runtime.spawn(kiln_agent::run(config, async move {
        let _ = stopped.await;
    }));
    let get = |path: &str| {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|s| common::http_request(s, "GET", path))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get("/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            get("/status")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = get("/status").expect("status");
    assert!(status.contains("\"phase\":\"published\""), "{status}");
    assert!(get("/metrics").is_some_and(|m| m.contains("kiln_agent_model_ready")));
    let sent = Instant::now();
    stop.send(()).expect("running");
    let result = runtime.block_on(running).expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "stopped {:?} after the shutdown future resolved",
        sent.elapsed()
    );
    assert!(get("/livez").is_none(), "the endpoints are gone");
}

/// How many bodies a [`slow_source`] is streaming now, and the most at once.
#[derive(Default)]
struct Streams {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

/// A slow HTTP source on `rt`: each of `paths` answers HEAD with `body`'s size and an ETag,
/// and GET with `body` in `chunks` pieces, `gap` apart.
fn slow_source(
    rt: &tokio::runtime::Runtime,
    paths: &[&str],
    body: bytes::Bytes,
    chunks: usize,
    gap: Duration,
) -> (std::net::SocketAddr, Arc<Streams>) {
    let streams = Arc::new(Streams::default());
    let handler = {
        let streams = Arc::clone(&streams);
        move |method: axum::http::Method| {
            let (body, streams) = (body.clone(), Arc::clone(&streams));
            async move {
                use axum::http::header;
                use futures::StreamExt;
                let headers = [
                    (header::ETAG, "\"e1\"".to_owned()),
                    (
                        header::LAST_MODIFIED,
                        "Sun, 22 Nov 2026 12:00:00 GMT".to_owned(),
                    ),
                    (header::CONTENT_LENGTH, body.len().to_string()),
                ];
                if method == axum::http::Method::HEAD {
                    return (headers, axum::body::Body::empty());
                }
                let now = streams.now.fetch_add(1, Ordering::SeqCst) + 1;
                streams.most.fetch_max(now, Ordering::SeqCst);
                let size = body.len().div_ceil(chunks);
                let pieces = futures::stream::iter(0..chunks).then(move |i| {
                    let piece =
                        body.slice((i * size).min(body.len())..((i + 1) * size).min(body.len()));
                    let streams = Arc::clone(&streams);
                    async move {
                        tokio::time::sleep(gap).await;
                        if i + 1 == chunks {
                            streams.now.fetch_sub(1, Ordering::SeqCst);
                        }
                        Ok::<_, std::io::Error>(piece)
                    }
                });
                (headers, axum::body::Body::from_stream(pieces))
            }
        }
    };
    let app = paths.iter().fold(axum::Router::new(), |app, path| {
        app.route(
            path,
            axum::routing::get(handler.clone()).head(handler.clone()),
        )
    });
    (common::serve(rt, app), streams)
}
