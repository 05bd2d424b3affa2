//! `kiln-server --model-dir`: a plain model directory as KServe's storage initializer leaves
//! it (`/mnt/models`, no kiln manifest). Served only when told how to check it: the right
//! `--verify sha256:` serves, a wrong one never does, neither flag refuses to start, and
//! `--no-verify` serves unchecked (with a warning). External data beside the model is served
//! under `--no-verify` and refused, naming the unpinned file, under `--verify`; a directory
//! signed with the real `model_signing` serves with its external data under `--signature`,
//! and a flipped graph or weight byte or an unsigned extra file never does. And the
//! shipped KServe runtime (`k8s/kserve/`), its args and the example InferenceService's as KServe
//! merges them, starts the real server on a plain directory and passes its own probes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_classes_named, free_port, free_ports, http, ort_env, repo_root};

struct Server(std::process::Child, tempfile::NamedTempFile);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(self.1.path()).unwrap_or_default()
    }

    /// Whether the log says `text` within `limit`. A refused load is waited for in the log, not
    /// as "not ready within a few seconds": a debug server on a busy machine may not have
    /// tried the load by then, and "not ready" would pass without it.
    fn logged_within(&self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

/// Starts `kiln-server` with `args` (and `TMPDIR` when given), its log (stdout) kept.
fn spawn(args: &[String], tmpdir: Option<&std::path::Path>) -> Server {
    spawn_via(
        Command::new(env!("CARGO_BIN_EXE_kiln-server")),
        args,
        tmpdir,
    )
}

/// As `spawn`, through `cmd` (the server itself, or a shell that execs it).
fn spawn_via(mut cmd: Command, args: &[String], tmpdir: Option<&std::path::Path>) -> Server {
    let log = tempfile::NamedTempFile::new().expect("log");
    cmd.args(args)
        .envs(ort_env())
        .env("RUST_LOG", "info")
        .stdout(log.reopen().expect("log"))
        .stderr(Stdio::null());
    if let Some(tmp) = tmpdir {
        cmd.env("TMPDIR", tmp);
    }
    Server(cmd.spawn().expect("start kiln-server"), log)
}

fn start(dir: &std::path::Path, name: &str, verify: &[&str], port: u16) -> Server {
    spawn(&server_args(dir, name, verify, port), None)
}

/// `--model-dir dir --model-name name`, `verify`, the REST port, and no gRPC.
fn server_args(dir: &std::path::Path, name: &str, verify: &[&str], port: u16) -> Vec<String> {
    let mut args = vec![
        "--model-dir".to_owned(),
        dir.display().to_string(),
        "--model-name".to_owned(),
        name.to_owned(),
    ];
    args.extend(verify.iter().map(|v| (*v).to_owned()));
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
    args.extend(["--grpc-listen".to_owned(), "off".to_owned()]);
    args
}

fn ready_within(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http(port, "GET", "/v2/health/ready", "").is_some_and(|(c, _)| c == 200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn plain(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for f in files {
        let src = repo_root().join("testdata").join(f);
        let name = src.file_name().expect("name").to_owned();
        std::fs::copy(&src, dir.path().join(name)).expect("run `make testdata`");
    }
    dir
}

fn sha256(path: &std::path::Path) -> String {
    kiln::Digest::of(&std::fs::read(path).expect("read")).to_string()
}

#[test]
fn the_right_digest_serves_a_wrong_one_never_does() {
    let dir = plain(&["mlp.onnx"]);
    let digest = sha256(&dir.path().join("mlp.onnx"));
    let port = free_port();
    let server = start(
        dir.path(),
        "mlp",
        &["--verify", &format!("sha256:{digest}")],
        port,
    );
    assert!(
        ready_within(port, Duration::from_secs(60)),
        "{}",
        server.log()
    );
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}).to_string();
    let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
    assert_eq!(code, 200, "{out}");
    drop(server);

    let port = free_port();
    let wrong = "0".repeat(64);
    let server = start(
        dir.path(),
        "mlp",
        &["--verify", &format!("sha256:{wrong}")],
        port,
    );
    assert!(
        server.logged_within("checksum mismatch", Duration::from_secs(60)),
        "{}",
        server.log()
    );
    assert!(
        !ready_within(port, Duration::from_secs(1)),
        "a wrong digest served"
    );
    assert_eq!(
        http(port, "GET", "/v2/models/mlp/ready", "").map(|r| r.0),
        Some(503)
    );
}

/// A server killed outright (SIGKILL, the OOM killer) leaves its staged repository behind. A
/// later server must not serve from it, even with the same process id: every container of a
/// pod runs as pid 1, and KServe's runtime keeps `/tmp` in an emptyDir that outlives a
/// container restart. (A scratch directory named by the pid did: the leftover's model, its
/// files gone, never loaded, so the new server never became ready.)
#[test]
fn a_killed_servers_leftover_scratch_directory_is_never_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let gone = plain(&["mlp.onnx"]);
    let port = free_port();
    let killed = spawn(
        &server_args(gone.path(), "gone", &["--no-verify"], port),
        Some(tmp.path()),
    );
    assert!(
        ready_within(port, Duration::from_secs(60)),
        "{}",
        killed.log()
    );
    drop(killed); // SIGKILL: nothing cleaned up
    drop(gone); // the leftover's links now lead nowhere
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kiln-server-")) // (ONNX Runtime writes a `.ses` there)
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // The next server, with the process id the leftover was staged under: a shell moves the
    // leftover to its own id's name, then becomes the server.
    let dir = plain(&["mlp.onnx"]);
    let port = free_port();
    let mut via = Command::new("sh");
    via.args([
        "-c",
        r#"mv "$TMPDIR"/kiln-server-* "$TMPDIR/kiln-server-$$" && exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_kiln-server"),
    ]);
    let server = spawn_via(
        via,
        &server_args(dir.path(), "mlp", &["--no-verify"], port),
        Some(tmp.path()),
    );
    assert!(
        ready_within(port, Duration::from_secs(60)),
        "not ready beside a leftover: {}",
        server.log()
    );
    let (code, out) = http(port, "POST", "/v2/repository/index", "{}").expect("index");
    assert_eq!(code, 200, "{out}");
    assert!(
        !out.contains("gone"),
        "the leftover's model is listed: {out}"
    );
}

/// A kiln version copied as a plain directory (as KServe's storage initializer would copy a
/// published one) holds a `kiln-manifest.json`: served, and the directory left as it was (the
/// staged manifest was written through a link to it, over the model directory's file).
#[test]
fn a_manifest_in_the_model_directory_is_left_untouched() {
    let dir = plain(&["mlp.onnx"]);
    let theirs = dir.path().join(kiln::layout::MANIFEST_FILE);
    std::fs::write(&theirs, "{\"kept\": true}").expect("manifest");
    let port = free_port();
    let server = start(dir.path(), "mlp", &["--no-verify"], port);
    assert!(
        ready_within(port, Duration::from_secs(60)),
        "{}",
        server.log()
    );
    drop(server);
    assert_eq!(
        std::fs::read_to_string(&theirs).expect("read"),
        "{\"kept\": true}"
    );
}

#[test]
fn without_a_verification_choice_the_server_does_not_start() {
    let dir = plain(&["mlp.onnx"]);
    let text = refused_to_start(dir.path(), &[]);
    assert!(
        text.contains("--no-verify") && text.contains("--verify"),
        "{text}"
    );
}

/// Runs `kiln-server --model-dir dir` with `args`, which must refuse to start; returns what
/// it said on stderr.
fn refused_to_start(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-server"))
        .arg("--model-dir")
        .arg(dir)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .envs(ort_env())
        .output()
        .expect("run");
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_verify_serves_unchecked_and_external_data_needs_it() {
    let dir = plain(&[
        "corpus/models/nudenet-320n-external.onnx",
        "corpus/models/nudenet-320n-external.onnx.data",
    ]);
    let port = free_port();
    let server = start(dir.path(), "detector", &["--no-verify"], port);
    assert!(
        ready_within(port, Duration::from_secs(120)),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("--no-verify"),
        "the warning is logged"
    );
    drop(server);

    // Only the model is pinned by --verify: the weights are not, and the load says so.
    never_ready_under_verify(
        dir.path(),
        "detector",
        "nudenet-320n-external.onnx",
        "nudenet-320n-external.onnx.data",
    );
}

/// Serves `dir` as `name` under `--verify` of its `model` file's digest: the server must
/// never be ready, and its log must name `unpinned`.
fn never_ready_under_verify(dir: &std::path::Path, name: &str, model: &str, unpinned: &str) {
    let digest = sha256(&dir.join(model));
    let port = free_port();
    let server = start(dir, name, &["--verify", &format!("sha256:{digest}")], port);
    assert!(
        server.logged_within(unpinned, Duration::from_secs(60)),
        "{}",
        server.log()
    );
    assert!(!ready_within(port, Duration::from_secs(1)));
}

#[test]
fn the_shipped_kserve_runtime_and_inference_service_start_the_server() {
    let read = |f: &str| -> serde_yaml::Value {
        serde_yaml::from_str(
            &std::fs::read_to_string(repo_root().join("k8s/kserve").join(f)).expect("yaml"),
        )
        .expect("parse")
    };
    let runtime = read("clusterservingruntime.yaml");
    let isvc = read("inferenceservice.yaml");
    let container = &runtime["spec"]["containers"][0];
    let model = &isvc["spec"]["predictor"]["model"];
    assert_eq!(model["runtime"], runtime["metadata"]["name"]);
    assert_eq!(
        model["modelFormat"]["name"],
        runtime["spec"]["supportedModelFormats"][0]["name"]
    );
    let name = isvc["metadata"]["name"].as_str().expect("name");
    // /mnt/models as the storage initializer leaves it for this InferenceService.
    let mnt = plain(&["real/magika.onnx"]);
    let tmp = tempfile::tempdir().expect("TMPDIR");
    let [port, grpc] = free_ports();
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("runtime args")
        .iter()
        .chain(model["args"].as_sequence().expect("isvc args"))
        .map(|a| {
            a.as_str()
                .expect("arg")
                .replace("{{.Name}}", name)
                .replace("/mnt/models", &mnt.path().display().to_string())
                .replace(":8080", &format!(":{port}"))
                .replace(":8081", &format!(":{grpc}"))
                .replace("0.0.0.0", "127.0.0.1")
        })
        .collect();
    let server = spawn(&args, Some(tmp.path()));
    let probe = |p: &str| -> String {
        let get = &container[p]["httpGet"];
        assert_eq!(get["port"].as_u64(), Some(8080), "{p} on the REST port");
        get["path"].as_str().expect("path").to_owned()
    };
    let ready = probe("readinessProbe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", &ready, "").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "never ready: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        http(port, "GET", &probe("livenessProbe"), "").map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http(port, "GET", &format!("/v2/models/{name}/ready"), "").map(|r| r.0),
        Some(200),
        "the model is served under the InferenceService's name"
    );
    // Every REST protocol the runtime declares answers for the model (KServe picks a runtime
    // by them: an InferenceService naming none is v1).
    let protocols: Vec<&str> = runtime["spec"]["protocolVersions"]
        .as_sequence()
        .expect("protocolVersions")
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .collect();
    assert!(
        protocols.contains(&"v1") && protocols.contains(&"v2"),
        "{protocols:?}"
    );
    for (protocol, path) in [
        ("v1", format!("/v1/models/{name}")),
        ("v2", format!("/v2/models/{name}/ready")),
    ] {
        assert_eq!(
            http(port, "GET", &path, "").map(|r| r.0),
            Some(200),
            "{protocol}: {path}"
        );
    }
    let scrape = runtime["spec"]["annotations"]["prometheus.kserve.io/path"]
        .as_str()
        .expect("scrape path");
    assert_eq!(http(port, "GET", scrape, "").map(|r| r.0), Some(200));
    // A pod's stop: SIGTERM, then the server cleans up and exits 0 within its budget.
    let mut server = server;
    common::sigterm(&server.0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", server.log());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // (ONNX Runtime itself leaves a `.ses` session file in TMPDIR.)
        .filter(|n| n.starts_with("kiln-server"))
        .collect();
    assert!(
        left.is_empty(),
        "the staged repository is removed at exit: {left:?}"
    );
}

/// Signs `dir` with a fresh key using the real `model_signing` (`make signing-tools`); the
/// bundle is written to `dir/model.sig`. Returns the public key's path (in `keys`).
fn sign_dir(dir: &std::path::Path, keys: &std::path::Path) -> std::path::PathBuf {
    let venv = repo_root().join(".cache/venv-signing/bin");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new(venv.join("python"))
        .arg(repo_root().join("scripts/signing-fixture.py"))
        .arg("key")
        .arg(keys));
    let bundle = keys.join("model.sig");
    run(Command::new(venv.join("model_signing"))
        .args(["sign", "key", "--private_key"])
        .arg(keys.join("key.pem"))
        .arg("--signature")
        .arg(&bundle)
        .arg(dir));
    std::fs::copy(&bundle, dir.join("model.sig")).expect("bundle into the directory");
    keys.join("key.pub")
}

#[test]
fn a_signed_directory_serves_with_its_external_data_and_tampering_never_does() {
    let dir = plain(&[
        "corpus/models/nudenet-320n-external.onnx",
        "corpus/models/nudenet-320n-external.onnx.data",
    ]);
    let keys = tempfile::tempdir().expect("keys");
    let key = sign_dir(dir.path(), keys.path());
    let signed = |port| {
        start(
            dir.path(),
            "detector",
            &[
                "--signature",
                "model.sig",
                "--trust-public-key",
                &key.to_string_lossy(),
            ],
            port,
        )
    };
    let port = free_port();
    let server = signed(port);
    assert!(
        ready_within(port, Duration::from_secs(60)),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("signature verified"),
        "{}",
        server.log()
    );
    drop(server);

    // A flipped byte in the graph: refused as it loads, never served.
    let graph = dir.path().join("nudenet-320n-external.onnx");
    let original = std::fs::read(&graph).expect("graph");
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    std::fs::write(&graph, &flipped).expect("flip");
    let port = free_port();
    let server = signed(port);
    assert!(
        server.logged_within("checksum mismatch", Duration::from_secs(60)),
        "{}",
        server.log()
    );
    assert!(
        !ready_within(port, Duration::from_secs(1)),
        "a tampered graph served"
    );
    drop(server);
    std::fs::write(&graph, &original).expect("restore");

    // A flipped byte in the external weights, or a file the signer never saw: the server does
    // not start, naming the file.
    let key_arg = key.to_string_lossy();
    let refused = |needle: &str| {
        let args = ["--signature", "model.sig", "--trust-public-key", &key_arg];
        let text = refused_to_start(dir.path(), &args);
        assert!(text.contains(needle), "{needle}: {text}");
    };
    let data = dir.path().join("nudenet-320n-external.onnx.data");
    let original = std::fs::read(&data).expect("data");
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    std::fs::write(&data, &flipped).expect("flip");
    refused("is not what was signed");
    std::fs::write(&data, &original).expect("restore");

    std::fs::write(dir.path().join("extra.onnx.data"), b"x").expect("extra");
    refused("extra.onnx.data");
}

#[test]
fn label_files_are_staged_and_checked_as_the_model_is() {
    let dir = plain(&["mlp.onnx"]);
    std::fs::create_dir(dir.path().join("labels")).expect("mkdir");
    let labels = dir.path().join("labels/y.txt");
    std::fs::write(&labels, "north\neast\nsouth\nwest\n").expect("labels");
    // Serves the directory with `args`; its classes must be named.
    let served_named = |args: &[&str]| {
        let port = free_port();
        let server = start(dir.path(), "mlp", args, port);
        assert!(
            ready_within(port, Duration::from_secs(60)),
            "{}",
            server.log()
        );
        assert_classes_named(port, "mlp", &["north", "east", "south", "west"]);
    };
    // Unchecked, as asked: served with the labels.
    served_named(&["--no-verify"]);

    // --verify pins the model only: the labels are not, and the load says so.
    never_ready_under_verify(dir.path(), "mlp", "mlp.onnx", "labels/y.txt");

    // Signed by the real `model_signing` with the model: served with them; a changed label
    // never is.
    let keys = tempfile::tempdir().expect("keys");
    let key = sign_dir(dir.path(), keys.path());
    let key_arg = key.to_string_lossy();
    let args = ["--signature", "model.sig", "--trust-public-key", &key_arg];
    served_named(&args);
    std::fs::write(&labels, "north\neast\nsouth\nwesT\n").expect("tamper");
    let text = refused_to_start(dir.path(), &args);
    assert!(
        text.contains("labels/y.txt") && text.contains("is not what was signed"),
        "{text}"
    );
}

/// A Triton model repository given as `--root` (`<model>/1/model.onnx` and a `config.pbtxt`,
/// no `current`, no manifest) is explained, not skipped in silence: before, the server logged
/// nothing, `/v2/models/<model>` said "unknown model" and the index did not list it. Now one
/// warning names the directory and what to do, the index lists it `UNAVAILABLE` with that
/// reason (Triton's own schema), and the 404 says why. The published model beside it serves.
#[test]
fn a_triton_layout_under_the_root_is_explained_not_ignored() {
    let root = tempfile::tempdir().expect("root");
    common::publish(root.path(), "mlp", "1", "mlp.onnx");
    let triton = root.path().join("densenet/1");
    std::fs::create_dir_all(&triton).expect("mkdir");
    std::fs::copy(
        repo_root().join("testdata/mlp.onnx"),
        triton.join("model.onnx"),
    )
    .expect("copy");
    std::fs::write(
        root.path().join("densenet/config.pbtxt"),
        "platform: \"onnxruntime_onnx\"\n",
    )
    .expect("config");
    let log_path = root.path().join(".server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let mut child = common::start_logging(
        root.path(),
        port,
        &["--drain-delay-s", "0", "--poll-ms", "50"],
        "warn",
        log,
    );
    std::thread::sleep(Duration::from_millis(400));
    let (code, body) = http(port, "GET", "/v2/models/densenet", "").expect("metadata");
    let (index_code, index) = http(port, "POST", "/v2/repository/index", "").expect("index");
    let (mlp, _) = http(port, "GET", "/v2/models/mlp/ready", "").expect("ready");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mlp, 200);
    assert_eq!(code, 404, "{body}");
    for part in [
        "densenet/1/model.onnx",
        "Triton model repository",
        "--model-dir",
    ] {
        assert!(body.contains(part), "{part}: {body}");
    }
    assert_eq!(index_code, 200);
    let index: serde_json::Value = serde_json::from_str(&index).expect("index JSON");
    let entry = index
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["name"] == "densenet")
        .unwrap_or_else(|| panic!("densenet not in the index: {index}"));
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("config.pbtxt is not read")),
        "{entry}"
    );
    let text = std::fs::read_to_string(&log_path).expect("log");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("densenet"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning over several scans:\n{text}");
}
