//! The pod on one machine: a real S3 server (`moto_server`) holding the model, `kiln-agent`
//! publishing into a shared directory, the server watching that directory and answering HTTP
//! from client threads the whole time. Checks what a pod promises: not ready before the model
//! is published and warmed; ready after; a new version hot-swapped under load with no failed
//! request; a broken new version never served (the previous one keeps serving).

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_classes_named, free_port, http, repo_root, runtime};
use kiln::http::{router, AppState, ServerConfig};
use kiln::{Repository, RepositoryConfig};
use kiln_agent::{Agent, AgentConfig};
use object_store::{ObjectStoreExt, PutPayload};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A real S3 server (`moto_server`) on a free port with a bucket `models`: the server, its
/// endpoint, and a client of the bucket.
fn s3() -> (Moto, String, object_store::aws::AmazonS3) {
    let s3_port = free_port();
    let moto = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Moto)
        .expect("moto_server is required for this test (it ships with the machine image)");
    wait_until("moto_server", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", s3_port)).is_ok()
    });
    // Listening is not yet serving: the bucket is made once moto answers.
    wait_until("the bucket", Duration::from_secs(30), || {
        http(s3_port, "PUT", "/models", "").is_some_and(|(code, _)| code == 200)
    });
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name("models")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .expect("s3 client");
    (moto, endpoint, store)
}

#[test]
fn a_classifiers_labels_travel_from_the_object_store_to_the_answers_verified() {
    // A model and its label file in S3, both pinned in the agent's configuration.
    let (_moto, endpoint, store) = s3();
    let model = std::fs::read(repo_root().join("testdata/mlp.onnx")).expect("run `make testdata`");
    let labels = b"north\neast\nsouth\nwest\n";
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let put = |key: &str, bytes: &[u8]| {
        io.block_on(store.put(&key.into(), PutPayload::from(bytes.to_vec())))
            .expect("upload");
    };
    put("clf/1/model.onnx", &model);
    put("clf/1/labels/y.txt", labels);
    put("clf/2/model.onnx", &model);
    put("clf/2/labels/y.txt", b"north\neast\nsouth\nwesT\n");
    let shared = tempfile::tempdir().expect("emptyDir");
    let agent_for = |root: &std::path::Path, version: u32| {
        Agent::new(
            AgentConfig::from_yaml(&format!(
                "root: {}\nreserve_bytes: 0\nmodels:\n  - name: clf\n    source: s3://models/clf/{version}/\n    files:\n      - {{path: model.onnx, sha256: {m}}}\n      - {{path: labels/y.txt, sha256: {l}}}\n    store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}\n",
                root.display(),
                m = kiln::Digest::of(&model),
                l = kiln::Digest::of(labels),
            ))
            .expect("yaml")
            .check()
            .expect("agent config"),
        )
    };
    io.block_on(agent_for(shared.path(), 1).sync_once())[0]
        .1
        .as_ref()
        .expect("published with its labels");
    let repo = Arc::new(Repository::new(
        runtime(),
        RepositoryConfig::new(shared.path()),
        opentelemetry::global::meter("pod-test"),
    ));
    let report = repo.scan().expect("scan");
    assert!(report.failed.is_empty(), "{report:?}");
    let state = Arc::new(AppState::new(
        Arc::clone(&repo),
        ServerConfig::default(),
        None,
        &opentelemetry::global::meter("pod-test"),
    ));
    let port = free_port();
    let listener = io
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind");
    io.spawn(async move { axum::serve(listener, router(state)).await });
    assert_classes_named(port, "clf", &["north", "east", "south", "west"]);
    // A label file in the store that is not what was pinned is never published.
    let other = tempfile::tempdir().expect("another emptyDir");
    let refused = io.block_on(agent_for(other.path(), 2).sync_once());
    let e = refused[0]
        .1
        .as_ref()
        .expect_err("a changed label file")
        .to_string();
    assert!(e.contains("labels/y.txt"), "{e}");
    assert!(
        !other.path().join("clf/current").exists(),
        "nothing published"
    );
}

#[test]
fn a_pod_publishes_serves_and_hot_swaps_under_load_without_failing_a_request() {
    // The object store, with version 1 of the model.
    let (moto, endpoint, store) = s3();
    let v1 = std::fs::read(repo_root().join("testdata/mlp.onnx")).expect("run `make testdata`");
    // Version 2: the same graph plus an unknown protobuf field (#100 = 1), which ONNX Runtime
    // ignores: other bytes, another ETag, the same answers.
    let v2 = [v1.as_slice(), &[0xA0, 0x06, 0x01]].concat();
    let broken = std::fs::read(repo_root().join("testdata/garbage.onnx")).expect("garbage");
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let upload = |bytes: &[u8]| {
        io.block_on(store.put(&"mlp/model.onnx".into(), PutPayload::from(bytes.to_vec())))
            .expect("upload");
    };
    upload(&v1);

    // The shared emptyDir, the agent (digests are taken from what it downloads: verify off,
    // so that new uploads publish), and the server watching the directory.
    let shared = tempfile::tempdir().expect("emptyDir");
    let agent = Agent::new(
        AgentConfig::from_yaml(&format!(
            "root: {}\nreserve_bytes: 0\nmodels:\n  - name: mlp\n    source: s3://models/mlp/model.onnx\n    verify: false\n    store: {{aws_endpoint: \"{endpoint}\", aws_allow_http: \"true\", aws_region: us-east-1, aws_access_key_id: test, aws_secret_access_key: test}}\n",
            shared.path().display()
        ))
        .expect("yaml")
        .check()
        .expect("agent config"),
    );
    let mut config = RepositoryConfig::new(shared.path());
    config.poll_interval = Duration::from_millis(50);
    let meter = opentelemetry::global::meter("pod-test");
    let repo = Arc::new(Repository::new(runtime(), config, meter.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = repo.watch(Arc::clone(&stop)).expect("watcher");
    let state = Arc::new(AppState::new(
        Arc::clone(&repo),
        ServerConfig::default(),
        None,
        &meter,
    ));
    let port = free_port();
    let listener = io
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind");
    io.spawn(async move { axum::serve(listener, router(state)).await });

    // Nothing published yet: not ready.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        http(port, "GET", "/v2/health/ready", "").map(|r| r.0),
        Some(503)
    );
    assert_eq!(
        http(port, "GET", "/v2/health/live", "").map(|r| r.0),
        Some(200)
    );

    // The agent publishes version 1; the server loads and warms it, then turns ready.
    let first = io.block_on(agent.sync_once())[0]
        .1
        .as_ref()
        .expect("version 1 published")
        .clone();
    wait_until("readiness", Duration::from_secs(30), || {
        http(port, "GET", "/v2/health/ready", "").is_some_and(|r| r.0 == 200)
    });

    // Clients hammer the model for the rest of the test.
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.25; 16]}]}).to_string();
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let versions = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (running, ok, failed, versions, body) = (
                Arc::clone(&running),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&versions),
                body.clone(),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    match http(port, "POST", "/v2/models/mlp/infer", &body) {
                        Some((200, out)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let v: serde_json::Value =
                                serde_json::from_str(&out).unwrap_or_default();
                            if let Some(v) = v["model_version"].as_str() {
                                versions.lock().expect("versions").insert(v.to_owned());
                            }
                        }
                        other => failed.lock().expect("failed").push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    let served = |v: &str| versions.lock().expect("versions").contains(v);
    wait_until("traffic on version 1", Duration::from_secs(10), || {
        served(&first)
    });

    // Version 2 is uploaded, published, hot-swapped under load.
    upload(&v2);
    let second = io.block_on(agent.sync_once())[0]
        .1
        .as_ref()
        .expect("version 2 published")
        .clone();
    assert_ne!(second, first);
    wait_until("traffic on version 2", Duration::from_secs(30), || {
        served(&second)
    });

    // A broken upload: the agent publishes what it downloaded (verification off), the server
    // refuses to load it, and version 2 keeps serving.
    upload(&broken);
    let third = io.block_on(agent.sync_once())[0]
        .1
        .as_ref()
        .expect("broken bytes published by the agent")
        .clone();
    wait_until(
        "the broken version's load to fail",
        Duration::from_secs(30),
        || {
            repo.get("mlp")
                .is_some_and(|h| h.status().last_error.is_some())
        },
    );
    let before = ok.load(Ordering::Relaxed);
    wait_until("more traffic", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > before + 20
    });
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    assert_eq!(
        repo.get("mlp").and_then(|h| h.current_version()),
        Some(second),
        "the last good version is serving"
    );
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    drop(moto);

    let failed = failed.lock().expect("failed");
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(!served(&third), "the broken version was never served");
    eprintln!(
        "{} requests, 0 failed, versions served: {:?}",
        ok.load(Ordering::Relaxed),
        versions.lock().expect("versions")
    );
}
