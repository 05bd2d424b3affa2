//! OCI registries as a model source, against a real registry on 127.0.0.1 (Debian's
//! `docker-registry`, the CNCF distribution server, `make tools`): ORAS-style artifacts pushed
//! through the distribution API, a modelcar image copied in by the real `skopeo` from an OCI
//! image layout, a tag moved to a new manifest, hostile archives and a blob corrupted on the
//! registry's disk (nothing published, the serving version kept), basic auth from a docker
//! config file (anonymous refused), and the registry killed mid-pull and started again (the
//! download resumes from its journal; what is published is intact).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{leftovers, listening, rt, sha};
use kiln::{Digest, Manifest};
use kiln_agent::{AgentError, Phase};

const PASSWORD: &str = "OCITESTPASSWORD77";

use common::signing::{fixture, repo_root, sign};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `docker-registry` process on a fixed loopback port over a storage directory that
/// outlives restarts.
struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Registry {
    fn start(basic_auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let auth = match basic_auth {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .expect("config");
        let mut r = Self {
            child: None,
            port,
            dir,
            config,
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let bin = "docker-registry";
        let child = Command::new(bin)
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}; run `make tools` (Debian's docker-registry)"));
        self.child = Some(child);
        assert!(
            listening(self.port, Duration::from_secs(20)),
            "docker-registry did not listen on {}",
            self.port
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file the registry keeps a blob's bytes in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of our own for pushing (the distribution API's monolithic upload).
struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
}

impl Pusher {
    fn new(registry: &Registry) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: registry.base(),
            auth: None,
        }
    }

    fn req(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", Digest::of(bytes));
        let started = self
            .req(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(started.status().as_u16(), 202, "start upload");
        let location = started.headers()["location"]
            .to_str()
            .expect("loc")
            .to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let done = self
            .req(self.http.put(format!("{url}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("upload");
        assert_eq!(done.status().as_u16(), 201, "upload {digest}");
        digest
    }

    async fn manifest(&self, repo: &str, tag: &str, manifest: &serde_json::Value) -> String {
        let body = serde_json::to_vec(manifest).expect("json");
        let r = self
            .req(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{tag}", self.base)),
            )
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.clone())
            .send()
            .await
            .expect("put manifest");
        let status = r.status().as_u16();
        assert_eq!(
            status,
            201,
            "put manifest: {}",
            r.text().await.unwrap_or_default()
        );
        format!("sha256:{}", Digest::of(&body))
    }

    /// An ORAS-style artifact: one layer per file, named by its title annotation.
    async fn artifact(&self, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> String {
        let config = self.blob(repo, b"{}").await;
        let mut layers = Vec::new();
        for (name, bytes) in files {
            let digest = self.blob(repo, bytes).await;
            layers.push(serde_json::json!({
                "mediaType": "application/octet-stream",
                "digest": digest,
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.title": name},
            }));
        }
        self.image(repo, tag, &config, 2, layers).await
    }

    async fn image(
        &self,
        repo: &str,
        tag: &str,
        config: &str,
        config_size: usize,
        layers: Vec<serde_json::Value>,
    ) -> String {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": layers,
        });
        self.manifest(repo, tag, &m).await
    }

    /// An image of tar layers (gzip when `gzip`), as a modelcar is.
    async fn tar_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>], gzip: bool) -> String {
        let config = self.blob(repo, b"{}").await;
        let mut descriptors = Vec::new();
        for tar in layers {
            let bytes = if gzip { gz(tar) } else { tar.clone() };
            let digest = self.blob(repo, &bytes).await;
            descriptors.push(serde_json::json!({
                "mediaType": if gzip { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": digest,
                "size": bytes.len(),
            }));
        }
        self.image(repo, tag, &config, 2, descriptors).await
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// One tar entry, written raw (so hostile names and kinds can be made).
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, d, ""),
            Entry::Dir(n) => (n, tar::EntryType::Directory, b"", ""),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", t),
            Entry::HardLink(n, t) => (n, tar::EntryType::Link, b"", t),
            Entry::CharDevice(n) => (n, tar::EntryType::Char, b"", ""),
        };
        {
            let u = h.as_ustar_mut().expect("ustar");
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn config(root: &Path, source: &str, extra: &str) -> String {
    format!(
        "root: {}\ninterval_s: 0\nretry:\n  max_attempts: 2\n  initial_backoff_ms: 10\n  max_backoff_ms: 50\nmodels:\n  - name: m\n    source: {source}\n    store:\n      allow_http: \"true\"\n{extra}",
        root.display()
    )
}

fn current(root: &Path) -> PathBuf {
    root.join("m").join(kiln::layout::CURRENT_LINK)
}

fn current_version(root: &Path) -> String {
    std::fs::read_link(current(root))
        .expect("current")
        .to_string_lossy()
        .into_owned()
}

/// The published files of the current version (manifest left out), with their digests.
fn published(root: &Path) -> Vec<(String, String)> {
    let dir = current(root);
    let (_, manifest) = Manifest::read_in(&dir).expect("manifest").expect("present");
    let mut out = Vec::new();
    for f in &manifest.files {
        assert_eq!(sha(&dir.join(&f.path)), f.sha256.to_string(), "{}", f.path);
        out.push((f.path.clone(), f.sha256.to_string()));
    }
    let mut on_disk = Vec::new();
    let mut dirs = vec![dir.canonicalize().expect("dir")];
    let base = dirs[0].clone();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read").flatten() {
            let t = e.file_type().expect("type");
            assert!(!t.is_symlink(), "{:?} is a link", e.path());
            if t.is_dir() {
                dirs.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(&base)
                    .expect("rel")
                    .display()
                    .to_string();
                if rel != kiln::layout::MANIFEST_FILE {
                    on_disk.push(rel);
                }
            }
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = out.iter().map(|(p, _)| p.clone()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "files on disk are the manifest's");
    out
}

#[test]
fn an_oras_artifact_is_published_and_a_moved_tag_is_a_new_version() {
    let rt = rt();
    let registry = Registry::start(None);
    let push = Pusher::new(&registry);
    let model = std::fs::read(repo_root().join("testdata/mlp.onnx")).expect("mlp");
    let first = rt.block_on(push.artifact(
        "models/mlp",
        "prod",
        &[("model.onnx", &model), ("labels/classes.txt", b"a\nb\n")],
    ));
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/models/mlp:prod", registry.port);
    let agent = common::agent(&config(root.path(), &source, ""));
    let results = rt.block_on(agent.sync_once());
    let v1 = results[0].1.as_ref().expect("published").clone();
    assert_eq!(v1, format!("sha256-{}", &first["sha256:".len()..][..16]));
    let files = published(root.path());
    assert_eq!(
        files,
        vec![
            (
                "labels/classes.txt".to_owned(),
                Digest::of(b"a\nb\n").to_string()
            ),
            ("model.onnx".to_owned(), Digest::of(&model).to_string()),
        ]
    );
    let (_, manifest) = Manifest::read_in(&current(root.path()))
        .expect("m")
        .expect("m");
    assert_eq!(manifest.etag.as_deref(), Some(first.as_str()));
    assert!(agent.ready());

    // Nothing changed: the same version, nothing downloaded again.
    let again = rt.block_on(agent.sync_once());
    assert_eq!(again[0].1.as_ref().expect("same"), &v1);
    assert!(!agent.status().lock().expect("status")["m"].downloaded);

    // The tag moves to a new manifest: a new version, the old one kept beside it.
    let mut model2 = model.clone();
    model2.extend_from_slice(b"\0");
    let second = rt.block_on(push.artifact("models/mlp", "prod", &[("model.onnx", &model2)]));
    assert_ne!(first, second);
    let results = rt.block_on(agent.sync_once());
    let v2 = results[0].1.as_ref().expect("published").clone();
    assert_ne!(v1, v2);
    assert_eq!(current_version(root.path()), v2);
    assert_eq!(
        published(root.path()),
        vec![("model.onnx".to_owned(), Digest::of(&model2).to_string())]
    );
    assert!(root.path().join("m").join(&v1).join("model.onnx").is_file());

    // Pinned by digest: the first manifest again, from the version already on disk.
    let pinned = format!("oci://127.0.0.1:{}/models/mlp@{first}", registry.port);
    let agent = common::agent(&config(root.path(), &pinned, ""));
    let results = rt.block_on(agent.sync_once());
    assert_eq!(results[0].1.as_ref().expect("pinned"), &v1);
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

/// The OCI image layout skopeo copies from: an image whose layers are `layers` (gzip tars).
fn image_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = Digest::of(bytes).to_string();
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", Digest::of(tar)));
        let (digest, size) = put(&gz(tar));
        descriptors.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    });
    let (m_digest, m_size) = put(&serde_json::to_vec(&manifest).expect("json"));
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
}

#[test]
fn a_modelcar_image_copied_by_skopeo_publishes_its_models_tree_only() {
    let rt = rt();
    let registry = Registry::start(None);
    let magika = std::fs::read(repo_root().join("testdata/real/magika.onnx")).expect("magika");
    // A base layer like busybox's (links and a device outside /models: skipped, never
    // written), then the model, then a layer that whites out a file the model layer wrote.
    let base = tar(&[
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", b"\x7fELF"),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::HardLink("bin/ls", "bin/busybox"),
        Entry::CharDevice("dev/null"),
        Entry::Symlink("etc/passwd", "/etc/shadow"),
    ]);
    let model = tar(&[
        Entry::Dir("models/"),
        Entry::File("models/model.onnx", &magika),
        Entry::File("./models/config/labels.json", b"{\"labels\": []}"),
        Entry::File("models/stale.txt", b"old"),
    ]);
    let cleanup = tar(&[Entry::File("models/.wh.stale.txt", b"")]);
    let layout = tempfile::tempdir().expect("layout");
    image_layout(layout.path(), "v1", &[base, model, cleanup]);
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!(
            "docker://127.0.0.1:{}/models/magika:v1",
            registry.port
        ))
        .output()
        .expect("skopeo: run `make tools` (Debian's skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/models/magika:v1", registry.port);
    let agent = common::agent(&config(root.path(), &source, ""));
    let results = rt.block_on(agent.sync_once());
    results[0].1.as_ref().expect("published");
    assert_eq!(
        published(root.path()),
        vec![
            (
                "config/labels.json".to_owned(),
                Digest::of(b"{\"labels\": []}").to_string()
            ),
            ("model.onnx".to_owned(), Digest::of(&magika).to_string()),
        ]
    );
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn hostile_layers_publish_nothing_and_the_serving_version_stays() {
    let rt = rt();
    let registry = Registry::start(None);
    let push = Pusher::new(&registry);
    let good = tar(&[Entry::File("models/model.onnx", b"good bytes")]);
    rt.block_on(push.tar_image("models/x", "prod", &[good], true));
    let outside = tempfile::tempdir().expect("outside");
    let root_dir = outside.path().join("root");
    let source = format!("oci://127.0.0.1:{}/models/x:prod", registry.port);
    let agent = common::agent(&config(&root_dir, &source, ""));
    let v1 = rt.block_on(agent.sync_once())[0]
        .1
        .as_ref()
        .expect("good")
        .clone();

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "traversal",
            tar(&[Entry::File("models/../../escaped.txt", b"x")]),
        ),
        (
            "deep traversal",
            tar(&[Entry::File("models/a/../../../escaped.txt", b"x")]),
        ),
        (
            "symlink out",
            tar(&[Entry::Symlink("models/weights.bin", "/etc/passwd")]),
        ),
        (
            "hard link",
            tar(&[Entry::HardLink("models/weights.bin", "etc/passwd")]),
        ),
        ("device", tar(&[Entry::CharDevice("models/null")])),
        (
            "manifest",
            tar(&[Entry::File("models/kiln-manifest.json", b"{}")]),
        ),
        ("not a tar", b"this is not a tar archive at all".repeat(40)),
        (
            "manifest's temporary file",
            tar(&[Entry::File("models/.kiln-manifest.json.tmp", b"{}")]),
        ),
        (
            "a directory under the manifest's name",
            tar(&[Entry::File("models/kiln-manifest.json/x", b"{}")]),
        ),
        (
            "a whiteout of nothing",
            tar(&[
                Entry::File("models/sub/a", b"a"),
                Entry::File("models/sub/.wh.", b""),
            ]),
        ),
    ];
    assert_eq!(
        hostile[5].0, "manifest",
        "the manifest case names kiln's manifest file"
    );
    assert_eq!(kiln::layout::MANIFEST_FILE, "kiln-manifest.json");
    for (what, layer) in hostile {
        rt.block_on(push.tar_image("models/x", "prod", &[layer], true));
        let results = rt.block_on(agent.sync_once());
        let err = results[0].1.as_ref().expect_err(what);
        println!("{what}: {err}");
        assert!(matches!(err, AgentError::Archive { .. }), "{what}: {err}");
        let status = agent.status().lock().expect("status")["m"].clone();
        assert_eq!(status.phase, Phase::Published, "{what}");
        assert_eq!(status.version.as_deref(), Some(v1.as_str()), "{what}");
        assert!(agent.ready(), "{what}");
        assert_eq!(current_version(&root_dir), v1, "{what}");
        assert!(!outside.path().join("escaped.txt").exists(), "{what}");
        assert!(!root_dir.join("escaped.txt").exists(), "{what}");
        let versions: Vec<_> = std::fs::read_dir(root_dir.join("m"))
            .expect("m")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != kiln::layout::CURRENT_LINK)
            .collect();
        assert_eq!(versions, vec![v1.clone()], "{what}");
        assert!(
            leftovers(&root_dir).is_empty(),
            "{what}: {:?}",
            leftovers(&root_dir)
        );
    }

    // An ORAS title that climbs out of the version is refused from the manifest, unread.
    let config_digest = rt.block_on(push.blob("models/x", b"{}"));
    let layer = rt.block_on(push.blob("models/x", b"evil"));
    rt.block_on(push.image(
        "models/x",
        "prod",
        &config_digest,
        2,
        vec![
            serde_json::json!({"mediaType": "application/octet-stream", "digest": layer, "size": 4,
            "annotations": {"org.opencontainers.image.title": "../escaped.txt"}}),
        ],
    ));
    let err = rt.block_on(agent.sync_once())[0]
        .1
        .as_ref()
        .expect_err("title")
        .to_string();
    assert!(err.contains("relative path inside the version"), "{err}");
    assert_eq!(current_version(&root_dir), v1);

    // A blob whose bytes changed on the registry's disk: refused by its digest.
    let bytes = b"weights that will be corrupted".to_vec();
    let digest = rt.block_on(push.blob("models/x", &bytes));
    rt.block_on(push.image(
        "models/x",
        "prod",
        &config_digest,
        2,
        vec![serde_json::json!({"mediaType": "application/octet-stream", "digest": digest, "size": bytes.len(),
            "annotations": {"org.opencontainers.image.title": "weights.bin"}})],
    ));
    let file = registry.blob_file(&digest);
    let mut corrupt = std::fs::read(&file).expect("blob on disk");
    corrupt[3] ^= 0x20;
    std::fs::write(&file, corrupt).expect("corrupt");
    let err = rt.block_on(agent.sync_once());
    let err = err[0].1.as_ref().expect_err("corrupt");
    assert!(matches!(err, AgentError::DigestMismatch { .. }), "{err}");
    assert_eq!(current_version(&root_dir), v1);
    assert!(
        leftovers(&root_dir).is_empty(),
        "{:?}",
        leftovers(&root_dir)
    );
}

#[test]
fn basic_auth_comes_from_a_docker_config_and_anonymous_is_refused() {
    let rt = rt();
    let registry = Registry::start(Some(("kiln", PASSWORD)));
    let mut push = Pusher::new(&registry);
    push.auth = Some(("kiln".into(), PASSWORD.into()));
    rt.block_on(push.artifact("private/m", "v1", &[("model.onnx", b"private model")]));
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/private/m:v1", registry.port);

    let anonymous = common::agent(&config(root.path(), &source, ""));
    let results = rt.block_on(anonymous.sync_once());
    let err = results[0].1.as_ref().expect_err("anonymous");
    assert!(matches!(err, AgentError::Denied { .. }), "{err}");
    assert!(!err.to_string().contains(PASSWORD));

    let secret = root.path().join("dockerconfig.json");
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("kiln:{PASSWORD}"),
    );
    std::fs::write(
        &secret,
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{auth}"}}}}}}"#,
            registry.port
        ),
    )
    .expect("docker config");
    let with = format!("      docker_config: {}\n", secret.display());
    let yaml = config(root.path(), &source, "").replace(
        "      allow_http: \"true\"\n",
        &format!("      allow_http: \"true\"\n{with}"),
    );
    let agent = common::agent(&yaml);
    assert!(!format!("{:?}", agent.status()).contains(PASSWORD));
    let results = rt.block_on(agent.sync_once());
    results[0].1.as_ref().expect("published with credentials");
    assert_eq!(
        published(root.path()),
        vec![(
            "model.onnx".to_owned(),
            Digest::of(b"private model").to_string()
        )]
    );

    // The wrong password: refused, and never shown.
    let wrong = root.path().join("wrong.json");
    let bad = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "kiln:WRONGPASSWORD99",
    );
    std::fs::write(
        &wrong,
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{bad}"}}}}}}"#,
            registry.port
        ),
    )
    .expect("docker config");
    let root2 = tempfile::tempdir().expect("root");
    let yaml = config(root2.path(), &source, "").replace(
        "      allow_http: \"true\"\n",
        &format!(
            "      allow_http: \"true\"\n      docker_config: {}\n",
            wrong.display()
        ),
    );
    let agent = common::agent(&yaml);
    let err = rt.block_on(agent.sync_once());
    let err = err[0].1.as_ref().expect_err("wrong password");
    assert!(matches!(err, AgentError::Denied { .. }), "{err}");
    assert!(!err.to_string().contains("WRONGPASSWORD99"), "{err}");
}

#[test]
fn a_registry_killed_mid_pull_is_resumed_and_nothing_is_corrupt() {
    let rt = rt();
    let mut registry = Registry::start(None);
    let push = Pusher::new(&registry);
    let size = 24usize << 20;
    let big: Vec<u8> = (0..size)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = rt.block_on(push.artifact("models/big", "v1", &[("weights.bin", &big)]));
    let proxy = rt.block_on(common::proxy::Proxy::start(registry.port));
    // Trickled through the proxy so the kill lands mid-pull.
    proxy.set(common::proxy::Fault::Slow);
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/models/big:v1", proxy.port);
    let yaml = format!(
        "root: {}\ninterval_s: 0\nparallel_threshold_mib: 1\npart_size_kib: 1024\nparallelism: 2\ntransfer: ranged\nretry:\n  max_attempts: 40\n  initial_backoff_ms: 50\n  max_backoff_ms: 300\nmodels:\n  - name: m\n    source: {source}\n    store:\n      allow_http: \"true\"\n",
        root.path().display()
    );
    let agent = std::sync::Arc::new(common::agent(&yaml));
    let a = agent.clone();
    let sync = rt.spawn(async move { a.sync_once().await });
    // Wait for a third of the bytes, then kill the registry for a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.served.load(std::sync::atomic::Ordering::Relaxed) < (size / 3) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never got going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    registry.kill();
    let at_kill = proxy.served.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    proxy.set(common::proxy::Fault::None);
    registry.run();
    let results = rt.block_on(sync).expect("sync task");
    let version = results[0].1.as_ref().expect("published after the restart");
    assert_eq!(
        version,
        &format!("sha256-{}", &digest["sha256:".len()..][..16])
    );
    assert_eq!(
        published(root.path()),
        vec![("weights.bin".to_owned(), Digest::of(&big).to_string())]
    );
    let total = proxy.served.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "resume: {size} B blob, registry killed at {at_kill} B served, {total} B served in all"
    );
    assert!(at_kill < size as u64, "the kill came after the whole blob");
    // Resumed: the parts finished before the kill were not fetched again.
    assert!(
        total < size as u64 + (size as u64) / 2,
        "{total} bytes served for a {size}-byte blob (killed at {at_kill})"
    );
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn a_signed_oras_artifact_is_verified_against_its_bundle_layer() {
    let rt = rt();
    let registry = Registry::start(None);
    let push = Pusher::new(&registry);
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys");
    fixture(&keys, &["key"]);
    let dir = tmp.path().join("mlp");
    std::fs::create_dir_all(&dir).expect("dir");
    let model = std::fs::read(repo_root().join("testdata/mlp.onnx")).expect("mlp");
    std::fs::write(dir.join("model.onnx"), &model).expect("model");
    std::fs::write(dir.join("labels.txt"), b"a\nb\n").expect("labels");
    let bundle = tmp.path().join("model.sig");
    let key = keys.join("key.pem").to_string_lossy().into_owned();
    sign(&dir, &bundle, &["key", "--private_key", &key]);
    let sig = std::fs::read(&bundle).expect("bundle");
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/models/signed:v1", registry.port);
    let extra = format!(
        "    signature:\n      bundle: model.sig\n      public_key: {}\n",
        keys.join("key.pub").display()
    );
    let agent = common::agent(&config(root.path(), &source, &extra));

    rt.block_on(push.artifact(
        "models/signed",
        "v1",
        &[
            ("model.onnx", &model),
            ("labels.txt", b"a\nb\n"),
            ("model.sig", &sig),
        ],
    ));
    let results = rt.block_on(agent.sync_once());
    let v1 = results[0]
        .1
        .as_ref()
        .expect("signed artifact published")
        .clone();
    assert_eq!(
        published(root.path()),
        vec![
            ("labels.txt".to_owned(), Digest::of(b"a\nb\n").to_string()),
            ("model.onnx".to_owned(), Digest::of(&model).to_string()),
        ]
    );
    let (_, manifest) = Manifest::read_in(&current(root.path()))
        .expect("m")
        .expect("m");
    assert!(
        manifest
            .signer
            .as_deref()
            .is_some_and(|s| s.starts_with("key ")),
        "{:?}",
        manifest.signer
    );

    // The tag moves to an artifact whose model is not the signed one: refused, v1 stays.
    let mut other = model.clone();
    other[100] ^= 1;
    rt.block_on(push.artifact(
        "models/signed",
        "v1",
        &[
            ("model.onnx", &other),
            ("labels.txt", b"a\nb\n"),
            ("model.sig", &sig),
        ],
    ));
    let results = rt.block_on(agent.sync_once());
    let err = results[0].1.as_ref().expect_err("tampered");
    assert!(matches!(err, AgentError::Signature { .. }), "{err}");
    assert_eq!(current_version(root.path()), v1);
}

/// A token-auth front for the real registry, as Docker Hub, GHCR and most cloud registries
/// work: `/v2/…` without the bearer token answers 401 with a `Bearer` challenge naming
/// `/token`; `/token` hands out the token only for the right basic credentials; requests with
/// the token are forwarded to the registry (its status, body and headers returned).
fn token_gate(
    rt: &tokio::runtime::Runtime,
    upstream: u16,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    const TOKEN: &str = "BEARERTOKEN5150";
    let addr = std::sync::Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
    let realm = addr.clone();
    let token = move |headers: HeaderMap, uri: Uri| {
        let issued = issued.clone();
        async move {
            let want = format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("kiln:{PASSWORD}")
                )
            );
            let query = uri.query().unwrap_or_default().to_owned();
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str())
                || !query.contains("scope=repository%3Aprivate%2Fm%3Apull")
            {
                return (StatusCode::UNAUTHORIZED, "no").into_response();
            }
            issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            axum::Json(serde_json::json!({"token": TOKEN})).into_response()
        }
    };
    let forward = move |headers: HeaderMap, uri: Uri, method: axum::http::Method| {
        let realm = realm.clone();
        async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                != Some(&format!("Bearer {TOKEN}"))
            {
                let at = realm.get().expect("addr");
                let challenge = format!(
                    "Bearer realm=\"http://{at}/token\",service=\"kiln-test\",scope=\"repository:private/m:pull\""
                );
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", challenge)
                    .body(axum::body::Body::empty())
                    .expect("401");
            }
            let mut r = reqwest::Client::new().request(
                reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method"),
                format!("http://127.0.0.1:{upstream}{uri}"),
            );
            for h in ["accept", "range"] {
                if let Some(v) = headers.get(h) {
                    r = r.header(h, v.as_bytes());
                }
            }
            let got = r.send().await.expect("upstream");
            let mut out = Response::builder().status(got.status().as_u16());
            for h in [
                "content-type",
                "content-length",
                "content-range",
                "docker-content-digest",
            ] {
                if let Some(v) = got.headers().get(h) {
                    out = out.header(h, v.as_bytes());
                }
            }
            let body = got.bytes().await.expect("body");
            out.body(axum::body::Body::from(body)).expect("response")
        }
    };
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .fallback(forward);
    let at = common::serve(rt, app);
    addr.set(at).expect("once");
    at
}

#[test]
fn bearer_tokens_come_from_the_registry_token_service() {
    let rt = rt();
    let registry = Registry::start(None);
    let push = Pusher::new(&registry);
    rt.block_on(push.artifact("private/m", "v1", &[("model.onnx", b"token model")]));
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = token_gate(&rt, registry.port, issued.clone());
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://{gate}/private/m:v1");

    // Anonymous: the token service refuses, a typed Denied.
    let anonymous = common::agent(&config(root.path(), &source, ""));
    let err = rt.block_on(anonymous.sync_once());
    let err = err[0].1.as_ref().expect_err("anonymous");
    assert!(matches!(err, AgentError::Denied { .. }), "{err}");

    let secret = root.path().join("dockerconfig.json");
    std::fs::write(
        &secret,
        format!(
            r#"{{"auths": {{"https://{gate}": {{"username": "kiln", "password": "{PASSWORD}"}}}}}}"#
        ),
    )
    .expect("docker config");
    let yaml = config(root.path(), &source, "").replace(
        "      allow_http: \"true\"\n",
        &format!(
            "      allow_http: \"true\"\n      docker_config: {}\n",
            secret.display()
        ),
    );
    let agent = common::agent(&yaml);
    let results = rt.block_on(agent.sync_once());
    let err = results[0]
        .1
        .as_ref()
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(
        !err.contains("BEARERTOKEN5150") && !err.contains(PASSWORD),
        "{err}"
    );
    results[0].1.as_ref().expect("published with a token");
    assert_eq!(
        published(root.path()),
        vec![(
            "model.onnx".to_owned(),
            Digest::of(b"token model").to_string()
        )]
    );
    // One token for the manifest and every blob request.
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn image_layers_apply_as_the_oci_layer_spec_says() {
    let rt = rt();
    let registry = Registry::start(None);
    let push = Pusher::new(&registry);
    let lower = tar(&[
        Entry::File("models/keep.txt", b"keep"),
        Entry::File("models/d/old.txt", b"old"),
        Entry::File("models/f", b"a file, then a directory"),
        Entry::File("models/x/y.txt", b"a directory, then a file"),
        Entry::File("models/dup.txt", b"first"),
    ]);
    let upper = tar(&[
        // Written before the opaque whiteout in the same layer: kept (whiteouts hide only
        // lower layers).
        Entry::File("models/d/new.txt", b"new"),
        Entry::File("models/d/.wh..wh..opq", b""),
        Entry::Dir("models/f/"),
        Entry::File("models/f/inner.txt", b"inner"),
        Entry::File("models/x", b"x is a file now"),
        // The same file under a second spelling is the same file.
        Entry::File("models//./dup.txt", b"second"),
    ]);
    rt.block_on(push.tar_image("models/layers", "v1", &[lower, upper], false));
    let root = tempfile::tempdir().expect("root");
    let source = format!("oci://127.0.0.1:{}/models/layers:v1", registry.port);
    let agent = common::agent(&config(root.path(), &source, ""));
    let results = rt.block_on(agent.sync_once());
    results[0].1.as_ref().expect("published");
    let d = |b: &[u8]| Digest::of(b).to_string();
    assert_eq!(
        published(root.path()),
        vec![
            ("d/new.txt".to_owned(), d(b"new")),
            ("dup.txt".to_owned(), d(b"second")),
            ("f/inner.txt".to_owned(), d(b"inner")),
            ("keep.txt".to_owned(), d(b"keep")),
            ("x".to_owned(), d(b"x is a file now")),
        ]
    );
}

/// Runs the `kiln-agent fetch` binary on `yaml` with every log level on; returns everything it
/// wrote (stdout, stderr, the termination log) and whether it succeeded.
fn fetch_at_trace(root: &Path, yaml: &str) -> (bool, String) {
    let config = root.join("agent.yaml");
    let log = root.join("termination-log");
    std::fs::write(
        &config,
        format!("termination_log: {}\n{yaml}", log.display()),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["fetch", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .output()
        .expect("run kiln-agent");
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
    (out.status.success(), all)
}

#[test]
fn registry_credentials_and_tokens_never_reach_a_log_line_at_trace_level() {
    let rt = rt();
    let registry = Registry::start(Some(("kiln", PASSWORD)));
    let mut push = Pusher::new(&registry);
    push.auth = Some(("kiln".into(), PASSWORD.into()));
    rt.block_on(push.artifact("private/m", "v1", &[("model.onnx", b"private model")]));
    let open = Registry::start(None);
    rt.block_on(Pusher::new(&open).artifact("private/m", "v1", &[("model.onnx", b"token model")]));
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = token_gate(&rt, open.port, issued);
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let secrets = [
        PASSWORD.to_owned(),
        b64(&format!("kiln:{PASSWORD}")),
        "BEARERTOKEN5150".to_owned(),
        "WRONGPASSWORD99".to_owned(),
        b64("kiln:WRONGPASSWORD99"),
    ];
    let cases = [
        (format!("127.0.0.1:{}", registry.port), PASSWORD, true),
        (
            format!("127.0.0.1:{}", registry.port),
            "WRONGPASSWORD99",
            false,
        ),
        (gate.to_string(), PASSWORD, true),
    ];
    for (host, password, succeeds) in cases {
        let root = tempfile::tempdir().expect("root");
        let docker = root.path().join("config.json");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
                b64(&format!("kiln:{password}"))
            ),
        )
        .expect("docker config");
        let yaml = format!(
            "root: {}\nreserve_bytes: 0\nretry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    source: oci://{host}/private/m:v1\n    store: {{allow_http: \"true\", docker_config: {}}}\n",
            root.path().join("models").display(),
            docker.display()
        );
        std::fs::create_dir_all(root.path().join("models")).expect("models");
        let (ok, logs) = fetch_at_trace(root.path(), &yaml);
        assert_eq!(
            ok,
            succeeds,
            "{host} with {password}:\n{}",
            &logs[logs.len().saturating_sub(3000)..]
        );
        assert!(logs.lines().count() > 20, "trace logging was on");
        for s in &secrets {
            assert!(
                !logs.contains(s.as_str()),
                "a secret reached the logs ({host})"
            );
        }
    }
}
