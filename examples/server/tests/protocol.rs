//! The v2 protocol (and KServe's v1 beside it) end to end, in process: a repository with the real test models published
//! as the agent publishes them, the router driven request by request. Every endpoint and every
//! error mapping the server documents.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{corrupt, publish, publish_files, repo_root, runtime, swap, swap_files};
use kiln::http::{standalone_router, AppState, ServerConfig, TIMEOUT_HEADER};
use kiln::{Repository, RepositoryConfig};
use serde_json::{json, Value};
use tower::ServiceExt as _;

struct Server {
    root: tempfile::TempDir,
    state: Arc<AppState>,
    app: axum::Router,
}

/// A repository over `root` metered by the server's exporter, scanned once.
fn scanned(
    root: &std::path::Path,
) -> (
    Arc<Repository>,
    kiln::ScanReport,
    Arc<kiln::prometheus::PrometheusTelemetry>,
) {
    let telemetry = Arc::new(kiln::prometheus::PrometheusTelemetry::new().expect("exporter"));
    let repo = Arc::new(Repository::new(
        runtime(),
        RepositoryConfig::new(root),
        telemetry.meter(),
    ));
    let report = repo.scan().expect("scan");
    (repo, report, telemetry)
}

fn server(config: ServerConfig) -> Server {
    server_of(
        &[("mlp", "3", "mlp.onnx"), ("int64", "1", "int64.onnx")],
        config,
    )
}

/// A server of `models` (name, version, testdata file).
fn server_of(models: &[(&str, &str, &str)], config: ServerConfig) -> Server {
    let root = tempfile::tempdir().expect("root");
    for (name, version, file) in models {
        publish(root.path(), name, version, file);
    }
    server_at(root, config)
}

/// A server of what is published under `root`, scanned once.
fn server_at(root: tempfile::TempDir, config: ServerConfig) -> Server {
    let (repo, report, telemetry) = scanned(root.path());
    assert!(report.failed.is_empty(), "{report:?}");
    let meter = telemetry.meter();
    let state = Arc::new(AppState::new(repo, config, Some(telemetry), &meter));
    Server {
        root,
        app: standalone_router(Arc::clone(&state)),
        state,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// Sends one request; returns status, headers and the body (JSON when it parses).
fn call(
    s: &Server,
    method: Method,
    uri: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    call_from(s, method, uri, body, headers, [127, 0, 0, 1])
}

/// As [`call`], from a client at `peer` (what the server's accept loop records).
fn call_from(
    s: &Server,
    method: Method,
    uri: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
    peer: [u8; 4],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            peer, 40000,
        ))));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    rt().block_on(async {
        let response = s.app.clone().oneshot(req).await.expect("response");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (parts.status, parts.headers, value)
    })
}

fn infer_body(data: Value, shape: Value) -> String {
    json!({"id": "req-7", "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})
        .to_string()
}

#[test]
fn health_metadata_and_readiness() {
    let s = server(ServerConfig::default());
    // The bodies KServe's clients read (Triton's read only the status).
    let (status, _, live) = call(&s, Method::GET, "/v2/health/live", None, &[]);
    assert_eq!((status, live), (StatusCode::OK, json!({"live": true})));
    let (status, _, ready) = call(&s, Method::GET, "/v2/health/ready", None, &[]);
    assert_eq!((status, ready), (StatusCode::OK, json!({"ready": true})));
    let (status, _, meta) = call(&s, Method::GET, "/v2", None, &[]);
    assert_eq!(
        (status, meta["name"].as_str()),
        (StatusCode::OK, Some("kiln"))
    );

    let (status, _, meta) = call(&s, Method::GET, "/v2/models/mlp", None, &[]);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["versions"], json!(["3"]));
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [-1, 16]})
    );
    assert_eq!(meta["outputs"][0]["name"], "y");
    assert_eq!(
        call(&s, Method::GET, "/v2/models/mlp/versions/3", None, &[]).0,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, Method::GET, "/v2/models/mlp/versions/9", None, &[]).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&s, Method::GET, "/v2/models/mlp/ready", None, &[]).0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &s,
            Method::GET,
            "/v2/models/mlp/versions/3/ready",
            None,
            &[]
        )
        .0,
        StatusCode::OK
    );
    let (status, _, err) = call(&s, Method::GET, "/v2/models/nope", None, &[]);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        err["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown model `nope`"),
        "{err}"
    );

    // Shutting down: readiness goes false first; inference routed here is still served (only
    // the listener closing ends it), liveness stays.
    s.state.draining.store(true, Ordering::Relaxed);
    let (status, _, ready) = call(&s, Method::GET, "/v2/health/ready", None, &[]);
    assert_eq!(
        (status, ready),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
    let (status, _, live) = call(&s, Method::GET, "/v2/health/live", None, &[]);
    assert_eq!((status, live), (StatusCode::OK, json!({"live": true})));
    let body = infer_body(json!(vec![0.5; 16]), json!([1, 16]));
    assert_eq!(
        call(&s, Method::POST, "/v2/models/mlp/infer", Some(body), &[]).0,
        StatusCode::OK
    );
}

/// KServe's v1 protocol beside v2: liveness at `/`, the model list and readiness, rows in as
/// `instances` and out as `predictions` equal to v2's answer for the same tensor (gzip bodies
/// too), TensorFlow Serving's columns (`inputs` in, `outputs` out), the deadline header, and
/// each refusal with its status.
#[test]
fn kserve_v1_predicts_rows_and_maps_its_errors() {
    let s = server(ServerConfig::default());
    let get = |uri: &str| {
        let (status, _, v) = call(&s, Method::GET, uri, None, &[]);
        (status, v)
    };
    assert_eq!(get("/"), (StatusCode::OK, json!({"status": "alive"})));
    assert_eq!(
        get("/v1/models"),
        (StatusCode::OK, json!({"models": ["int64", "mlp"]}))
    );
    assert_eq!(
        get("/v1/models/mlp"),
        (StatusCode::OK, json!({"name": "mlp", "ready": true}))
    );
    assert_eq!(get("/v1/models/nope").0, StatusCode::NOT_FOUND);

    let rows: Vec<Vec<f32>> = (0..3)
        .map(|r| (0..16).map(|i| (r * 16 + i) as f32 / 64.0).collect())
        .collect();
    let v2 = infer_body(json!(rows.concat()), json!([3, 16]));
    let (status, _, want) = call(&s, Method::POST, "/v2/models/mlp/infer", Some(v2), &[]);
    assert_eq!(status, StatusCode::OK, "{want}");
    let y = &want["outputs"][0];
    let width = y["shape"][1].as_u64().expect("width") as usize;
    let want_rows: Vec<Value> = y["data"]
        .as_array()
        .expect("data")
        .chunks(width)
        .map(|c| Value::Array(c.to_vec()))
        .collect();
    let body = json!({"instances": rows}).to_string();
    let predict = "/v1/models/mlp:predict";
    let (status, headers, got) = call(&s, Method::POST, predict, Some(body.clone()), &[]);
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(got, json!({ "predictions": want_rows }));
    // TensorFlow Serving's columns: the whole tensor in, the whole output back.
    let columns = json!({"inputs": rows}).to_string();
    let (status, _, whole) = call(&s, Method::POST, predict, Some(columns), &[]);
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole, json!({ "outputs": want_rows }));
    // Compressed, as any body.
    let gz = {
        use std::io::Write as _;
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        w.write_all(body.as_bytes()).expect("gzip");
        w.finish().expect("gzip")
    };
    let req = Request::post(predict)
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gz))
        .expect("request");
    let (status, bytes) = rt().block_on(async {
        let r = s.app.clone().oneshot(req).await.expect("response");
        let status = r.status();
        (
            status,
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body"),
        )
    });
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&bytes).expect("json"), got);

    let refused = |uri: &str, body: &str, headers: &[(&str, &str)]| {
        let (status, _, v) = call(&s, Method::POST, uri, Some(body.to_owned()), headers);
        (status, v["error"].as_str().unwrap_or_default().to_owned())
    };
    let one = json!({"instances": [rows[0]]}).to_string();
    for (uri, body, headers, status, says) in [
        (
            predict,
            "{\"instances\": [[1, 2], [3]]}",
            &[][..],
            400,
            "instance 1 has shape [1]",
        ),
        (
            predict,
            "{\"instances\": [[1, 2]]}",
            &[],
            400,
            "must have shape",
        ),
        (predict, "{\"instances\": []}", &[], 400, "empty"),
        (predict, "{\"inputs\": [[1]]}", &[], 400, "must have shape"),
        (
            predict,
            "{\"inputs\": {\"z\": [[1]]}}",
            &[],
            400,
            "unknown input `z`",
        ),
        (
            predict,
            "{\"instances\": [{\"z\": [1]}]}",
            &[],
            400,
            "unknown input `z`",
        ),
        (
            predict,
            &one,
            &[(TIMEOUT_HEADER, "soon")][..],
            400,
            "milliseconds",
        ),
        ("/v1/models/nope:predict", &one, &[], 404, "unknown model"),
        ("/v1/models/mlp:explain", &one, &[], 501, "explainer"),
        ("/v1/models/nope:explain", &one, &[], 404, "unknown model"),
        ("/v1/models/mlp", &one, &[], 404, ":predict"),
        ("/v1/models/mlp:classify", &one, &[], 404, ":predict"),
    ] {
        let (got, message) = refused(uri, body, headers);
        assert_eq!(got.as_u16(), status, "{uri} {body}: {message}");
        assert!(message.contains(says), "{uri} {body}: {message}");
    }

    // Predictions are counted apart from the readiness polls sharing their path.
    let (_, _, metrics) = call(&s, Method::GET, "/metrics", None, &[]);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for (route, code) in [
        ("/v1/models/{model}:predict", "200"),
        ("/v1/models/{model}:predict", "400"),
        ("/v1/models/{model}", "200"),
        ("/v1/models/{model}:explain", "501"),
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("kiln_http_requests_total")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("code=\"{code}\""))),
            "no {route} {code} in:\n{metrics}"
        );
    }

    // Draining: the model reads not ready (503, as KServe's own server answers), predictions
    // routed here are still served.
    s.state.draining.store(true, Ordering::Relaxed);
    assert_eq!(
        get("/v1/models/mlp"),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"name": "mlp", "ready": false})
        )
    );
    assert_eq!(
        call(&s, Method::POST, predict, Some(one), &[]).0,
        StatusCode::OK
    );
}

#[test]
fn inference_matches_the_golden_outputs_and_echoes_the_id() {
    let s = server(ServerConfig::default());
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("testdata/golden/mlp.json")).expect("golden"),
    )
    .expect("json");
    let x = &golden["inputs"]["x"];
    let body = infer_body(x["data"].clone(), x["shape"].clone());
    let (status, _, out) = call(
        &s,
        Method::POST,
        "/v2/models/mlp/versions/3/infer",
        Some(body),
        &[(TIMEOUT_HEADER, "5000")],
    );
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["id"], "req-7");
    assert_eq!(out["model_version"], "3");
    let y = &out["outputs"][0];
    assert_eq!(
        (y["name"].as_str(), y["datatype"].as_str()),
        (Some("y"), Some("FP32"))
    );
    assert_eq!(y["shape"], golden["outputs"]["y"]["shape"]);
    let got: Vec<f64> = serde_json::from_value(y["data"].clone()).expect("floats");
    let want: Vec<f64> =
        serde_json::from_value(golden["outputs"]["y"]["data"].clone()).expect("floats");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{g} vs {w}");
    }
    // The stats endpoint counts it: one request, one batch of its rows.
    let (status, _, st) = call(&s, Method::GET, "/v2/models/mlp/stats", None, &[]);
    assert_eq!(status, StatusCode::OK, "{st}");
    let rows = golden["outputs"]["y"]["shape"][0].as_u64().expect("rows");
    assert_eq!(
        (
            &st["version"],
            &st["succeeded"],
            &st["batches"],
            &st["rows"]
        ),
        (&json!("3"), &json!(1), &json!(1), &json!(rows))
    );
    assert_eq!(st["batch_sizes"], json!({rows.to_string(): 1}));
    assert_eq!(
        call(&s, Method::GET, "/v2/models/nope/stats", None, &[]).0,
        StatusCode::NOT_FOUND
    );
    // Integer tensors, nested data, output selection.
    let ids = json!({"inputs": [{"name": "ids", "shape": [1, 6], "datatype": "INT64", "data": [[1, 2, 3, 4, 5, 6]]}],
                     "outputs": [{"name": "doubled"}]});
    let (status, _, out) = call(
        &s,
        Method::POST,
        "/v2/models/int64/infer",
        Some(ids.to_string()),
        &[],
    );
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["outputs"].as_array().map(Vec::len), Some(1));
    assert_eq!(out["outputs"][0]["datatype"], "INT64");
    assert_eq!(out["outputs"][0]["data"], json!([2, 4, 6, 8, 10, 12]));
}

/// The classes `out`'s first output was answered with, split into (index, label).
fn classes_of(out: &Value) -> Vec<(usize, Option<String>)> {
    out["outputs"][0]["data"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| {
            let mut parts = c.as_str().expect("string").splitn(3, ':');
            let _value = parts.next();
            let index = parts.next().expect("index").parse().expect("index");
            (index, parts.next().map(str::to_owned))
        })
        .collect()
}

#[test]
fn classes_are_named_by_the_label_file_of_the_version_that_answered() {
    let labels = |text: &str| {
        let f = tempfile::NamedTempFile::new().expect("labels");
        std::fs::write(f.path(), text).expect("write");
        f
    };
    let (one, two) = (labels("low\nmid\nhigh\ntop\n"), labels("a\r\nb\r\n\r\n"));
    let root = tempfile::tempdir().expect("root");
    let path = |f: &tempfile::NamedTempFile| f.path().to_str().expect("path").to_owned();
    publish_files(
        root.path(),
        "mlp",
        "1",
        "mlp.onnx",
        &[("labels/y.txt", &path(&one))],
    );
    let s = server_at(root, ServerConfig::default());
    let repo = Arc::clone(&s.state.repo);
    let body = json!({"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": vec![0.5; 32]}],
                      "outputs": [{"name": "y", "parameters": {"classification": 4}}]})
    .to_string();
    let classify = || {
        let (status, _, out) = call(
            &s,
            Method::POST,
            "/v2/models/mlp/infer",
            Some(body.clone()),
            &[],
        );
        assert_eq!(status, StatusCode::OK, "{out}");
        (out["model_version"].clone(), classes_of(&out))
    };
    let named = ["low", "mid", "high", "top"];
    let (version, classes) = classify();
    assert_eq!(version, "1");
    assert_eq!(classes.len(), 8, "{classes:?}");
    for (index, label) in &classes {
        assert_eq!(label.as_deref(), Some(named[*index]), "{classes:?}");
    }
    let (_, _, config) = call(&s, Method::GET, "/v2/models/mlp/config", None, &[]);
    assert_eq!(
        config["output"][0]["label_filename"], "labels/y.txt",
        "{config}"
    );

    // A new version with other labels (a `\r\n` file, and a class with none): the answers
    // name the new version's.
    swap_files(
        s.root.path(),
        "mlp",
        "2",
        "mlp.onnx",
        &[("labels/y.txt", &path(&two))],
    );
    let report = repo.scan().expect("scan");
    assert!(report.failed.is_empty(), "{report:?}");
    let (version, classes) = classify();
    assert_eq!(version, "2");
    assert_eq!(classes.len(), 8, "{classes:?}");
    for (index, label) in &classes {
        let want = ["a", "b"].get(*index).map(|l| (*l).to_owned());
        assert_eq!(label, &want, "{classes:?}");
    }
    // A version whose label file changed after its manifest was written never serves: the
    // model stays on version 2 and its labels.
    swap_files(
        s.root.path(),
        "mlp",
        "3",
        "mlp.onnx",
        &[("labels/y.txt", &path(&one))],
    );
    std::fs::write(s.root.path().join("mlp/3/labels/y.txt"), "evil\n").expect("tamper");
    let report = repo.scan().expect("scan");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].2.contains("labels/y.txt"), "{report:?}");
    assert_eq!(classify().0, "2");
    // A model without labels has none, and its /config names no file.
    swap(s.root.path(), "mlp", "4", "mlp.onnx");
    assert!(repo.scan().expect("scan").failed.is_empty());
    let (version, classes) = classify();
    assert_eq!(version, "4");
    assert!(classes.iter().all(|(_, l)| l.is_none()), "{classes:?}");
    let (_, _, config) = call(&s, Method::GET, "/v2/models/mlp/config", None, &[]);
    assert_eq!(config["output"][0]["label_filename"], "", "{config}");
}

#[test]
fn every_error_maps_to_its_status_with_a_message() {
    let s = server(ServerConfig {
        max_body_bytes: 64 << 10,
        max_input_elements: 1 << 16,
        ..ServerConfig::default()
    });
    let post = |uri: &str, body: String, headers: &[(&str, &str)]| {
        call(&s, Method::POST, uri, Some(body), headers)
    };
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/v2/models/mlp/infer", "{\"inputs\": [".into(), StatusCode::BAD_REQUEST, "malformed request body"),
        ("/v2/models/mlp/infer", json!({"inputs": 3}).to_string(), StatusCode::BAD_REQUEST, "malformed request body"),
        ("/v2/models/mlp/infer", infer_body(json!([1, 2]), json!([1, 16])), StatusCode::BAD_REQUEST, "has 2 values but shape [1, 16] needs 16"),
        ("/v2/models/mlp/infer", infer_body(json!(vec![1; 15]), json!([1, 15])), StatusCode::BAD_REQUEST, "must have shape [?, 16]"),
        ("/v2/models/mlp/infer", json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]}).to_string(), StatusCode::BAD_REQUEST, "must be float32"),
        ("/v2/models/mlp/infer", json!({"inputs": [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": vec![1; 16]}]}).to_string(), StatusCode::BAD_REQUEST, "unknown input `z`"),
        ("/v2/models/mlp/infer", json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![1; 16]}], "outputs": [{"name": "q"}]}).to_string(), StatusCode::BAD_REQUEST, "unknown output `q`"),
        // A classification that is not a whole number is refused, not taken for absent: the
        // answer's type and shape hang on it.
        ("/v2/models/mlp/infer", json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![1; 16]}], "outputs": [{"name": "y", "parameters": {"classification": -1}}]}).to_string(), StatusCode::BAD_REQUEST, "output `y`: `classification` must be a whole number"),
        ("/v2/models/mlp/infer", json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![1; 16]}], "outputs": [{"name": "y", "parameters": {"classification": "2"}}]}).to_string(), StatusCode::BAD_REQUEST, "whole number"),
        ("/v2/models/mlp/infer", infer_body(json!([1]), json!([1000000, 1000000])), StatusCode::PAYLOAD_TOO_LARGE, "over the limit"),
        ("/v2/models/mlp/infer", infer_body(json!(vec![0.25; 40000]), json!([2500, 16])), StatusCode::PAYLOAD_TOO_LARGE, ""),
        ("/v2/models/ghost/infer", infer_body(json!(vec![1; 16]), json!([1, 16])), StatusCode::NOT_FOUND, "unknown model `ghost`"),
        ("/v2/models/mlp/versions/2/infer", infer_body(json!(vec![1; 16]), json!([1, 16])), StatusCode::NOT_FOUND, "no version `2`"),
        ("/v2/repository/models/mlp/load", String::new(), StatusCode::FORBIDDEN, "--admin"),
    ];
    for (uri, body, want, needle) in cases {
        let (status, _, out) = post(uri, body, &[]);
        assert_eq!(status, want, "{uri}: {out}");
        let message = out["error"]
            .as_str()
            .unwrap_or_else(|| out.as_str().unwrap_or_default());
        assert!(message.contains(needle), "{uri}: {message}");
    }
    // None of them ran the model: an unknown output or a bad classification is refused
    // before it runs, as Triton does (it used to run, counted a success, then refuse).
    let (_, _, stats) = call(&s, Method::GET, "/v2/models/mlp/stats", None, &[]);
    let stats = &stats["model_stats"][0];
    assert_eq!(stats["execution_count"], 0, "{stats}");
    assert_eq!(stats["inference_stats"]["success"]["count"], 0, "{stats}");
    let (status, _, out) = post(
        "/v2/models/mlp/infer",
        infer_body(json!(vec![1; 16]), json!([1, 16])),
        &[(TIMEOUT_HEADER, "soon")],
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    // A deadline that has passed before the request can run: 504.
    let (status, _, out) = post(
        "/v2/models/mlp/infer",
        infer_body(json!(vec![1; 16]), json!([1, 16])),
        &[(TIMEOUT_HEADER, "0")],
    );
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("deadline exceeded"),
        "{out}"
    );
    // What no route serves gets the v2 error body too (it was an empty 404 or 405, which
    // Triton's client reports as "an empty response"): an unknown path, a route asked with
    // the wrong method, and Triton's extensions kiln does not implement (501).
    let cases = [
        (
            Method::GET,
            "/v2/no/such/path",
            StatusCode::NOT_FOUND,
            "no route for GET /v2/no/such/path",
        ),
        (
            Method::GET,
            "/v2/models/mlp/infer",
            StatusCode::METHOD_NOT_ALLOWED,
            "/v2/models/mlp/infer does not take GET",
        ),
        (
            Method::DELETE,
            "/v2/models/mlp",
            StatusCode::METHOD_NOT_ALLOWED,
            "does not take DELETE",
        ),
        (
            Method::POST,
            "/v2/systemsharedmemory/region/r/register",
            StatusCode::NOT_IMPLEMENTED,
            "system shared memory",
        ),
        (
            Method::GET,
            "/v2/cudasharedmemory/status",
            StatusCode::NOT_IMPLEMENTED,
            "CUDA shared memory",
        ),
        (
            Method::POST,
            "/v2/logging",
            StatusCode::NOT_IMPLEMENTED,
            "logging extension",
        ),
        (
            Method::GET,
            "/v2/models/mlp/trace/setting",
            StatusCode::NOT_IMPLEMENTED,
            "trace extension",
        ),
        // A path axum refuses itself (not UTF-8 once decoded): its plain-text answer was
        // given as it was, which tritonclient.http cannot parse.
        (
            Method::GET,
            "/v2/models/%FF/ready",
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
    ];
    for (method, uri, want, needle) in cases {
        let (status, headers, out) = call(&s, method, uri, None, &[]);
        assert_eq!(status, want, "{uri}: {out}");
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..]),
            "{uri}"
        );
        let message = out["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{uri}: {out}");
    }
}

#[test]
fn string_inputs_have_their_own_element_limit_in_both_protocols() {
    // strings.onnx: `text` [batch, 3] BYTES and `n` [batch, 1] INT64. At most 3 strings a
    // request here: one row is served, two rows are 413 from the declared shape, in v2 and
    // in KServe v1. Numbers are not held to it: int64.onnx takes 6 of them.
    let config = ServerConfig {
        max_input_elements: 8,
        max_string_elements: 3,
        ..ServerConfig::default()
    };
    let s = server_of(
        &[
            ("strings", "1", "strings.onnx"),
            ("int64", "1", "int64.onnx"),
        ],
        config,
    );
    let v2 = |rows: usize| {
        json!({"inputs": [
            {"name": "text", "shape": [rows, 3], "datatype": "BYTES", "data": vec!["cat"; rows * 3]},
            {"name": "n", "shape": [rows, 1], "datatype": "INT64", "data": vec![1; rows]},
        ]})
        .to_string()
    };
    let v1 = |rows: usize| {
        json!({"instances": vec![json!({"text": ["cat", "dog", "x"], "n": [2]}); rows]}).to_string()
    };
    let post = |uri: &str, body: String| call(&s, Method::POST, uri, Some(body), &[]);
    let (status, _, out) = post("/v2/models/strings/infer", v2(1));
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["outputs"][1]["data"], json!([1, 1, 1]), "{out}");
    let (status, _, out) = post("/v1/models/strings:predict", v1(1));
    assert_eq!(status, StatusCode::OK, "{out}");
    for (uri, body) in [
        ("/v2/models/strings/infer", v2(2)),
        ("/v1/models/strings:predict", v1(2)),
    ] {
        let (status, _, out) = post(uri, body);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}: {out}");
        assert_eq!(
            out["error"],
            "input `text`: shape [2, 3] is over the request's limit on strings (max_string_elements): 3 left",
            "{uri}"
        );
    }
    let ids = json!({"inputs": [{"name": "ids", "shape": [1, 6], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]});
    let (status, _, out) = post("/v2/models/int64/infer", ids.to_string());
    assert_eq!(status, StatusCode::OK, "{out}");
}

#[test]
fn admin_endpoints_unload_and_reload_and_metrics_count_requests() {
    let s = server(ServerConfig {
        admin: true,
        ..ServerConfig::default()
    });
    // Without a token, only loopback clients may use them.
    let (status, _, out) = call_from(
        &s,
        Method::POST,
        "/v2/repository/models/mlp/unload",
        None,
        &[],
        [10, 0, 0, 7],
    );
    assert_eq!(status, StatusCode::FORBIDDEN, "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("loopback"),
        "{out}"
    );
    assert_eq!(
        call(
            &s,
            Method::POST,
            "/v2/repository/models/mlp/unload",
            None,
            &[]
        )
        .0,
        StatusCode::OK
    );
    let (status, _, out) = call(
        &s,
        Method::POST,
        "/v2/models/mlp/infer",
        Some(infer_body(json!(vec![1; 16]), json!([1, 16]))),
        &[],
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{out}");
    // An explicitly unloaded model does not count against readiness: the pod serves on.
    assert_eq!(
        call(&s, Method::GET, "/v2/health/ready", None, &[]).0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &s,
            Method::POST,
            "/v2/repository/models/ghost/load",
            None,
            &[]
        )
        .0,
        StatusCode::NOT_FOUND
    );

    let (status, _, text) = call(&s, Method::GET, "/metrics", None, &[]);
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(
            "kiln_http_requests_total{code=\"503\",route=\"/v2/models/{model}/infer\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("kiln_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn binary_data_extension_in_and_out_matches_json() {
    let s = server(ServerConfig::default());
    let values: Vec<f32> = (0..16).map(|i| i as f32 / 10.0).collect();
    // The JSON answer, for comparison.
    let (_, _, json_out) = call(
        &s,
        Method::POST,
        "/v2/models/mlp/infer",
        Some(infer_body(json!(values), json!([1, 16]))),
        &[],
    );
    let want: Vec<f32> = serde_json::from_value(json_out["outputs"][0]["data"].clone()).expect("y");
    // The same input in binary, the output asked for in binary.
    let header = json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 64}}],
                        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v2/models/mlp/infer")
        .header("inference-header-content-length", header.len().to_string())
        .body(Body::from(body))
        .expect("request");
    let (status, headers, bytes) = rt().block_on(async {
        let r = s.app.clone().oneshot(req).await.expect("response");
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, bytes)
    });
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .expect("header")
        .parse()
        .expect("length");
    let meta: Value = serde_json::from_slice(&bytes[..json_len]).expect("json part");
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert!(meta["outputs"][0].get("data").is_none(), "{meta}");
    let got: Vec<f32> = bytes[json_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got, want, "binary and JSON give the same answer");

    // A binary size larger than what was sent: 400 naming the input.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v2/models/mlp/infer")
        .header("inference-header-content-length", header.len().to_string())
        .body(Body::from(header.clone()))
        .expect("request");
    let status =
        rt().block_on(async { s.app.clone().oneshot(req).await.expect("response").status() });
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn admin_server() -> Server {
    server(ServerConfig {
        admin: true,
        ..ServerConfig::default()
    })
}

fn post(s: &Server, uri: &str) -> (StatusCode, Value) {
    let (status, _, out) = call(s, Method::POST, uri, None, &[]);
    (status, out)
}

fn mlp_infer(s: &Server) -> StatusCode {
    let body = infer_body(json!(vec![1; 16]), json!([1, 16]));
    call(s, Method::POST, "/v2/models/mlp/infer", Some(body), &[]).0
}

/// An admin load of a version that does not load answers an error every time, even after the
/// watcher's poll has already seen it fail; the old version serves on and the stats say why.
#[test]
fn admin_load_of_a_broken_version_answers_an_error() {
    let s = admin_server();
    swap(s.root.path(), "mlp", "4", "mlp.onnx");
    corrupt(s.root.path(), "mlp", "4");
    let report = s.state.repo.scan().expect("the watcher's poll");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    for _ in 0..2 {
        let (status, out) = post(&s, "/v2/repository/models/mlp/load");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
        let message = out["error"].as_str().unwrap_or_default();
        assert!(message.contains("checksum mismatch"), "{out}");
    }
    assert_eq!(mlp_infer(&s), StatusCode::OK, "version 3 serves on");
    let (status, _, st) = call(&s, Method::GET, "/v2/models/mlp/stats", None, &[]);
    assert_eq!(status, StatusCode::OK, "{st}");
    assert_eq!(
        (&st["version"], &st["state"]),
        (&json!("3"), &json!("ready"))
    );
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("checksum mismatch"),
        "{st}"
    );
}

/// An admin unload holds across the watcher's polls, keeps the pod ready, and is reported in
/// the stats; an admin load serves the model again.
#[test]
fn admin_unload_sticks_across_a_poll_until_loaded_again() {
    let s = admin_server();
    let (status, out) = post(&s, "/v2/repository/models/mlp/unload");
    assert_eq!(status, StatusCode::OK, "{out}");
    s.state.repo.scan().expect("the watcher's poll");
    assert_eq!(mlp_infer(&s), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        call(&s, Method::GET, "/v2/health/ready", None, &[]).0,
        StatusCode::OK
    );
    let (status, _, st) = call(&s, Method::GET, "/v2/models/mlp/stats", None, &[]);
    assert_eq!(status, StatusCode::OK, "{st}");
    assert_eq!(st["state"], "unloaded", "{st}");
    let (status, out) = post(&s, "/v2/repository/models/mlp/load");
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(mlp_infer(&s), StatusCode::OK);
    s.state.repo.scan().expect("the watcher's poll");
    assert_eq!(mlp_infer(&s), StatusCode::OK);
}

/// One broken model among good ones: per-model readiness is exact, and the server's follows
/// `--ready-when` (all: not ready; any: ready; listed: ready exactly when the listed serve).
#[test]
fn server_readiness_follows_the_policy_with_one_broken_model() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    publish(root.path(), "int64", "1", "int64.onnx");
    publish(root.path(), "broken", "1", "mlp.onnx");
    corrupt(root.path(), "broken", "1");
    let (repo, report, telemetry) = scanned(root.path());
    let meter = telemetry.meter();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    for (policy, want) in [
        ("all", StatusCode::SERVICE_UNAVAILABLE),
        ("any", StatusCode::OK),
        ("listed:mlp,int64", StatusCode::OK),
        ("listed:mlp,broken", StatusCode::SERVICE_UNAVAILABLE),
        ("listed:absent", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let config = ServerConfig {
            ready_when: policy.parse().expect("policy"),
            max_body_bytes: 1 << 10,
            ..ServerConfig::default()
        };
        let state = Arc::new(AppState::new(Arc::clone(&repo), config, None, &meter));
        let s = Server {
            root: tempfile::tempdir().expect("unused"),
            app: standalone_router(Arc::clone(&state)),
            state,
        };
        let (status, _, _) = call(&s, Method::GET, "/v2/health/ready", None, &[]);
        assert_eq!(status, want, "--ready-when {policy}");
        for (model, exact) in [
            ("mlp", StatusCode::OK),
            ("int64", StatusCode::OK),
            ("broken", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let (status, _, _) = call(
                &s,
                Method::GET,
                &format!("/v2/models/{model}/ready"),
                None,
                &[],
            );
            assert_eq!(status, exact, "{model} under {policy}");
        }
        // Inference on the broken model is refused before its body is read: 503, whatever the
        // body (this one is over the limit; it was read first, and refused 413).
        let (status, _, out) = call(
            &s,
            Method::POST,
            "/v2/models/broken/infer",
            Some(" ".repeat(2 << 10)),
            &[],
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{out}");
        assert!(
            out["error"]
                .as_str()
                .is_some_and(|e| e.contains("is not serving")),
            "{out}"
        );
    }
}

/// The Prometheus exposition uses exactly the names README documents: every runtime metric
/// in README's metrics paragraph appears under its own name (histograms with `_bucket`,
/// `_sum`, `_count`), and no name carries its unit or `_total` twice.
#[test]
fn exported_metric_names_are_the_documented_ones() {
    let s = server(ServerConfig::default());
    let body = infer_body(json!(vec![1; 16]), json!([1, 16]));
    let (status, _, _) = call(&s, Method::POST, "/v2/models/mlp/infer", Some(body), &[]);
    assert_eq!(status, StatusCode::OK);
    // The batcher records a request's metrics just after answering it: scrape until they
    // are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (_, _, text) = call(&s, Method::GET, "/metrics", None, &[]);
        let text = text.as_str().unwrap_or_default().to_owned();
        if text.contains("kiln_request_duration_seconds_bucket")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for doubled in [
        "_seconds_seconds",
        "_bytes_bytes",
        "_total_total",
        "_rows_rows",
    ] {
        assert!(
            !exported.iter().any(|n| n.contains(doubled)),
            "a name carries its suffix twice ({doubled}): {exported:?}"
        );
    }
    for name in common::documented_metrics("- **Metrics** (OpenTelemetry API only") {
        let name = name.as_str();
        // Recorded only by padded batches, a checksum failure or a failed load.
        if matches!(
            name,
            "kiln_batch_padding_ratio"
                | "kiln_checksum_failures_total"
                | "kiln_model_load_failures_total"
        ) {
            continue;
        }
        let bucket = format!("{name}_bucket");
        assert!(
            exported.contains(name) || exported.contains(bucket.as_str()),
            "README documents {name}, the exposition has {exported:?}"
        );
    }
}
