//! A real Prometheus (Debian's `prometheus`, installed by `make test`) scraping the real
//! `kiln-server` and `kiln-agent` binaries every second through a short load with a hot swap,
//! then asked through its HTTP API what a dashboard and an autoscaler would ask: every metric
//! README documents has data under its documented name, `histogram_quantile` over the request
//! histogram and `rate` over the request counter give sane values, the autoscaler's queue-depth
//! query returns one series per server, and the version info gauge shows exactly the version
//! swapped in. `promtool check metrics` on both expositions reports nothing.

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, http, repo_root, start_ready};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `kiln-agent` binary beside this test's binaries (`cargo test --workspace` builds it).
fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("kiln-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p kiln-agent` (make test does)",
        bin.display()
    );
    bin
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is required (Debian package `prometheus`; `make test` installs it)"
    );
    name.to_owned()
}

/// One instant query; the result vector.
fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let mut encoded = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let (code, body) =
        http(port, "GET", &format!("/api/v1/query?query={encoded}"), "").expect("prometheus");
    assert_eq!(code, 200, "{promql}: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The version `kiln-server` serves `mlp` from.
fn serving_version(port: u16) -> Option<String> {
    let (_, body) = http(port, "GET", "/v2/models/mlp", "")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["versions"][0].as_str().map(str::to_owned)
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn promtool_is_clean(promtool: &str, exposition: &str, what: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics on {what}:\n{text}"
    );
}

#[test]
fn prometheus_scrapes_server_and_agent_and_answers_dashboard_and_autoscaler_queries() {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    // The object store: a directory the agent reads through file://.
    let store = tempfile::tempdir().expect("store");
    let model_dir = store.path().join("mlp");
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    let v1 = std::fs::read(repo_root().join("testdata/mlp.onnx")).expect("run `make testdata`");
    std::fs::write(model_dir.join("model.onnx"), &v1).expect("v1");

    let shared = tempfile::tempdir().expect("emptyDir");
    let agent_port = free_port();
    let config = shared.path().join("agent.yaml");
    let root = shared.path().join("models");
    std::fs::write(
        &config,
        format!(
            "root: {}\nlisten: 127.0.0.1:{agent_port}\ninterval_s: 1\nreserve_bytes: 0\nmodels:\n  - name: mlp\n    source: file://{}/\n    verify: false\n",
            root.display(),
            model_dir.display()
        ),
    )
    .expect("agent config");
    let _agent = Killed(
        Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kiln-agent"),
    );
    wait_until("the agent to publish", Duration::from_secs(60), || {
        http(agent_port, "GET", "/readyz", "").is_some_and(|(c, _)| c == 200)
    });
    let port = free_port();
    let _server = Killed(start_ready(&root, port, &["--drain-delay-s", "0"]));

    // Prometheus, scraping both every second.
    let data = tempfile::tempdir().expect("tsdb");
    let prom_port = free_port();
    let prom_config = data.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: kiln-server\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n  - job_name: kiln-agent\n    static_configs: [{{targets: ['127.0.0.1:{agent_port}']}}]\n"
        ),
    )
    .expect("prometheus config");
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    wait_until("prometheus", Duration::from_secs(60), || {
        http(prom_port, "GET", "/-/ready", "").is_some_and(|(c, _)| c == 200)
    });

    // Load for the rest of the test; version 2 is published half-way.
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.25; 16]}]}).to_string();
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (running, ok, failed, body) = (
                Arc::clone(&running),
                Arc::clone(&ok),
                Arc::clone(&failed),
                body.clone(),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    match http(port, "POST", "/v2/models/mlp/infer", &body) {
                        Some((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let first = serving_version(port).expect("a version serves");
    std::thread::sleep(Duration::from_secs(4));
    // Other bytes, the same graph (an unknown protobuf field ONNX Runtime ignores).
    let v2 = [v1.as_slice(), &[0xA0, 0x06, 0x01]].concat();
    std::fs::write(model_dir.join("model.onnx"), &v2).expect("v2");
    wait_until("the swap to version 2", Duration::from_secs(60), || {
        serving_version(port).is_some_and(|v| v != first)
    });
    std::thread::sleep(Duration::from_secs(6));
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    assert!(ok.load(Ordering::Relaxed) > 50, "too little load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    // Two more scrapes after the load.
    std::thread::sleep(Duration::from_secs(3));

    // Both targets up.
    let up = query(prom_port, "up");
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.iter().all(|s| value(s) == 1.0), "{up:?}");

    // Every documented name has data, as documented (histograms through their series).
    let mut names = common::documented_metrics("- **Metrics** (OpenTelemetry API only");
    names.extend(
        common::documented_metrics("- Metrics (`/metrics`, Prometheus text")
            .into_iter()
            // Counters of events this run does not cause (no retry, no verification
            // failure, no 304 from a file source, no cache hit) have no series yet, nor the
            // transfer measurement (no object reaches `parallel_threshold_mib`).
            .filter(|n| {
                ![
                    "kiln_agent_retries_total",
                    "kiln_agent_verification_failures_total",
                    "kiln_agent_unchanged_polls_total",
                    "kiln_agent_cache_hits_total",
                    "kiln_agent_transfer_throughput_bytes_per_second",
                ]
                .contains(&n.as_str())
            }),
    );
    // Failures this run does not cause, and padding (recorded only for batches padded along
    // a dynamic non-batch dim; the MLP has none).
    let quiet_server = [
        "kiln_checksum_failures_total",
        "kiln_model_load_failures_total",
        "kiln_batch_padding_ratio",
    ];
    let mut missing = Vec::new();
    for name in names.iter().filter(|n| !quiet_server.contains(&n.as_str())) {
        let found = query(
            prom_port,
            &format!("count({{__name__=~\"{name}|{name}_bucket\"}})"),
        );
        if found.is_empty() {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "documented but absent in Prometheus: {missing:?}"
    );

    // A dashboard's latency and throughput panels.
    let p99 = query(
        prom_port,
        "histogram_quantile(0.99, sum by (le) (rate(kiln_request_duration_seconds_bucket[10s])))",
    );
    let p99 = p99.first().map(value).unwrap_or(f64::NAN);
    assert!(p99.is_finite() && p99 > 0.0 && p99 < 5.0, "p99 {p99}");
    let rate = query(prom_port, "sum(rate(kiln_requests_total[10s]))");
    let rate = rate.first().map(value).unwrap_or(f64::NAN);
    assert!(rate.is_finite() && rate > 1.0, "rate {rate}");
    // The autoscaler's signal: one series per server.
    let depth = query(prom_port, "sum by (instance) (kiln_queue_depth_requests)");
    assert_eq!(depth.len(), 1, "{depth:?}");
    // Exactly one version serves, and it is not the first.
    let serving = query(prom_port, "kiln_model_version_info == 1");
    assert_eq!(serving.len(), 1, "{serving:?}");
    // The provider gauge follows the serving version only: the retired one has no series.
    let providers = query(prom_port, "kiln_model_provider_info");
    assert_eq!(providers.len(), 1, "{providers:?}");
    assert_eq!(
        providers[0]["metric"]["version"], serving[0]["metric"]["version"],
        "{providers:?}"
    );

    // Every panel of the shipped Grafana dashboard returns data ($model: all models).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("k8s/monitoring/dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard json");
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "10s")
                .replace("$model", ".*");
            let result = query(prom_port, &expr);
            assert!(
                !result.is_empty(),
                "dashboard panel {:?} has no data: {expr}",
                panel["title"]
            );
            panels += 1;
        }
    }
    assert!(panels >= 15, "{panels} panel queries");
    let models = query(prom_port, "kiln_queue_depth_requests");
    assert!(
        models.iter().all(|s| s["metric"]["model"] == "mlp"),
        "{models:?}"
    );

    // The expositions themselves pass Prometheus' own linter.
    let (_, server_text) = http(port, "GET", "/metrics", "").expect("server metrics");
    promtool_is_clean(&promtool, &server_text, "kiln-server");
    let (_, agent_text) = http(agent_port, "GET", "/metrics", "").expect("agent metrics");
    promtool_is_clean(&promtool, &agent_text, "kiln-agent");
    eprintln!(
        "prometheus: {} requests, p99 {p99:.4} s, {rate:.0} req/s, {} documented names with data",
        ok.load(Ordering::Relaxed),
        names.len()
    );
}
