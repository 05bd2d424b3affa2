//! The repository's version lifecycle on the real ONNX Runtime with real models: failed
//! versions retried with backoff and forgotten when `current` moves, sticky admin unloads,
//! admin loads that report their error, same-name republishes, a `current` link that is
//! missing for a moment, and scans and loads that never double-load.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{publish, runtime, set_current};
use kiln::{
    Error, ErrorKind, InferRequest, LoadOutcome, ModelState, Repository, RepositoryConfig, Tensor,
};

fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("kiln-tests")
}

fn repo(root: &std::path::Path) -> Repository {
    Repository::new(runtime(), RepositoryConfig::new(root), meter())
}

/// A repository whose failed versions are retried after `retry_min` (doubling).
fn quick_retry(root: &std::path::Path, retry_min: Duration) -> Repository {
    let mut config = RepositoryConfig::new(root);
    config.retry_min = retry_min;
    Repository::new(runtime(), config, meter())
}

fn pair(model: &str, version: &str) -> (String, String) {
    (model.to_owned(), version.to_owned())
}

/// One mlp request through the repository's handle; whether it was answered.
fn mlp_answers(repo: &Repository) -> bool {
    let x = Tensor::new([1, 16], vec![0.5f32; 16]).expect("x");
    repo.get("mlp").is_some_and(|h| {
        h.infer_blocking(InferRequest::new(vec![("x".into(), x)]))
            .is_ok()
    })
}

/// A failed version is forgotten when `current` moves: after another version served, the
/// same name fixed and published again loads.
#[test]
fn a_failed_version_loads_once_current_has_moved_away_and_back() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "1")]);
    publish(root.path(), "mlp", "2", "mlp.onnx", true);
    assert_eq!(repo.scan().expect("scan").failed.len(), 1);
    publish(root.path(), "mlp", "3", "mlp.onnx", false);
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "3")]);
    // The publisher fixes version 2 and points `current` back at it.
    publish(root.path(), "mlp", "2", "mlp.onnx", false);
    let r = repo.scan().expect("scan");
    assert_eq!(r.loaded, vec![pair("mlp", "2")], "{r:?}");
    let handle = repo.get("mlp").expect("served");
    assert_eq!(handle.current_version().as_deref(), Some("2"));
    assert_eq!(handle.status().last_error, None);
}

/// A version re-published under the same name with new bytes (a new manifest) is reloaded.
#[test]
fn a_same_name_republish_with_new_bytes_reloads() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "m", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("m", "1")]);
    assert!(repo.scan().expect("scan").loaded.is_empty(), "unchanged");
    publish(root.path(), "m", "1", "multi_io.onnx", false);
    let r = repo.scan().expect("scan");
    assert_eq!(r.loaded, vec![pair("m", "1")], "{r:?}");
    let meta = repo.get("m").and_then(|h| h.metadata()).expect("serving");
    let inputs: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(inputs, ["a", "b"], "the new bytes serve");
    assert!(repo.scan().expect("scan").loaded.is_empty(), "loaded once");
}

/// A `current` link that is missing or dangling for a scan (a publisher mid-update) does not
/// unload the model; nothing reloads when it comes back.
#[test]
fn a_missing_or_dangling_current_for_one_scan_does_not_unload() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    repo.scan().expect("scan");
    set_current(root.path(), "mlp", "9");
    let r = repo.scan().expect("scan");
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(mlp_answers(&repo) && repo.all_ready());
    std::fs::remove_file(root.path().join("mlp/current")).expect("rm current");
    let r = repo.scan().expect("scan");
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(mlp_answers(&repo) && repo.all_ready());
    set_current(root.path(), "mlp", "1");
    let r = repo.scan().expect("scan");
    assert_eq!(r, kiln::ScanReport::default(), "nothing to do");
    assert!(mlp_answers(&repo));
}

/// Scans and admin loads from many threads at once on a fresh repository load each version
/// exactly once, into one handle per model.
#[test]
fn concurrent_scans_and_loads_load_each_version_once() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    publish(root.path(), "multi", "1", "multi_io.onnx", false);
    let repo = Arc::new(repo(root.path()));
    let barrier = Arc::new(Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (repo, barrier) = (Arc::clone(&repo), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    repo.scan().expect("scan").loaded
                } else {
                    match repo.load("mlp").expect("load") {
                        LoadOutcome::Loaded(v) => vec![pair("mlp", &v)],
                        LoadOutcome::AlreadyServing(_) => vec![],
                    }
                }
            })
        })
        .collect();
    let mut loads = BTreeMap::<(String, String), usize>::new();
    for t in threads {
        for key in t.join().expect("thread") {
            *loads.entry(key).or_default() += 1;
        }
    }
    assert_eq!(
        loads,
        BTreeMap::from([(pair("mlp", "1"), 1), (pair("multi", "1"), 1)])
    );
    assert_eq!(repo.names(), ["mlp", "multi"]);
    assert!(repo.all_ready());
}

/// A transient failure (here a corrupt file, then fixed under the same name and manifest) is
/// not retried on the next poll but is once its backoff is over; the error is visible
/// meanwhile.
#[test]
fn a_failed_version_is_retried_after_its_backoff() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = quick_retry(root.path(), Duration::from_millis(400));
    repo.scan().expect("scan");
    publish(root.path(), "mlp", "2", "mlp.onnx", true);
    assert_eq!(repo.scan().expect("scan").failed.len(), 1);
    let handle = repo.get("mlp").expect("served");
    assert_eq!(handle.current_version().as_deref(), Some("1"));
    assert!(handle
        .status()
        .last_error
        .is_some_and(|e| e.contains("checksum mismatch")));
    publish(root.path(), "mlp", "2", "mlp.onnx", false);
    assert_eq!(
        repo.scan().expect("scan"),
        kiln::ScanReport::default(),
        "not retried within the backoff"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "2")]);
    assert_eq!(handle.status().last_error, None);
    assert!(mlp_answers(&repo));
}

/// A fresh start on a broken `current` serves the last good version, keeps the failure
/// record (no retry on the next poll), and moves to `current` once it loads.
#[test]
fn the_last_good_version_serves_until_current_loads() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    publish(root.path(), "mlp", "2", "mlp.onnx", true);
    let repo = quick_retry(root.path(), Duration::from_millis(400));
    let r = repo.scan().expect("scan");
    assert_eq!(r.loaded, vec![pair("mlp", "1")], "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(repo.all_ready() && mlp_answers(&repo));
    assert_eq!(repo.scan().expect("scan"), kiln::ScanReport::default());
    publish(root.path(), "mlp", "2", "mlp.onnx", false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "2")]);
}

/// An admin unload holds across scans, keeps the model listed as unloaded and the repository
/// ready; a new `current` lifts it.
#[test]
fn an_unload_sticks_until_current_moves() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    publish(root.path(), "multi", "1", "multi_io.onnx", false);
    let repo = repo(root.path());
    repo.scan().expect("scan");
    repo.unload("mlp").expect("unload");
    for _ in 0..3 {
        assert_eq!(repo.scan().expect("scan"), kiln::ScanReport::default());
    }
    let handle = repo.get("mlp").expect("still listed");
    assert_eq!(handle.status().state, ModelState::Unloaded);
    assert!(repo.is_unloaded("mlp") && !mlp_answers(&repo));
    assert_eq!(repo.names(), ["mlp", "multi"]);
    assert!(repo.all_ready(), "an unloaded model does not count");
    publish(root.path(), "mlp", "2", "mlp.onnx", false);
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "2")]);
    assert!(!repo.is_unloaded("mlp") && mlp_answers(&repo));
    assert!(matches!(
        repo.unload("ghost"),
        Err(Error::ModelNotFound { .. })
    ));
}

/// An admin load after an unload serves the model again, and confirms without reloading
/// when it already serves.
#[test]
fn a_load_after_an_unload_serves_again() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    repo.scan().expect("scan");
    repo.unload("mlp").expect("unload");
    assert!(!mlp_answers(&repo));
    assert_eq!(
        repo.load("mlp").expect("load"),
        LoadOutcome::Loaded("1".into())
    );
    assert!(mlp_answers(&repo) && !repo.is_unloaded("mlp"));
    assert_eq!(
        repo.load("mlp").expect("load"),
        LoadOutcome::AlreadyServing("1".into())
    );
    assert_eq!(repo.scan().expect("scan"), kiln::ScanReport::default());
}

/// An admin load of a version that does not load returns its error every time (even right
/// after the watcher saw it fail); the old version serves on. An unknown model is not found.
#[test]
fn an_admin_load_of_a_broken_version_returns_the_error() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    repo.scan().expect("scan");
    publish(root.path(), "mlp", "2", "mlp.onnx", true);
    assert_eq!(repo.scan().expect("scan").failed.len(), 1);
    for _ in 0..2 {
        let err = repo.load("mlp").expect_err("broken");
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    }
    assert_eq!(
        repo.get("mlp").and_then(|h| h.current_version()).as_deref(),
        Some("1")
    );
    assert!(mlp_answers(&repo));
    assert_eq!(
        repo.scan().expect("scan"),
        kiln::ScanReport::default(),
        "the admin load's failure starts a backoff too"
    );
    for ghost in ["ghost", "..", "mlp/1"] {
        let err = repo.load(ghost).expect_err(ghost);
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }
}

/// A `current` missing for longer than the grace period unloads the model.
#[test]
fn a_current_missing_past_the_grace_period_unloads() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let mut config = RepositoryConfig::new(root.path());
    config.current_grace = Duration::from_millis(300);
    let repo = Repository::new(runtime(), config, meter());
    repo.scan().expect("scan");
    std::fs::remove_file(root.path().join("mlp/current")).expect("rm current");
    assert!(repo.scan().expect("scan").removed.is_empty());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(repo.scan().expect("scan").removed, ["mlp"]);
    assert!(repo.get("mlp").is_none());
    set_current(root.path(), "mlp", "1");
    assert_eq!(repo.scan().expect("scan").loaded, vec![pair("mlp", "1")]);
}

/// Readiness under `all` is never true while a model the first scan found has not loaded yet:
/// models load one by one, and a model not reached yet must already count (it used to be
/// absent until its turn, so `ready` flapped true after the first model and false again).
#[test]
fn readiness_counts_every_model_found_before_any_has_loaded() {
    let root = tempfile::tempdir().expect("root");
    for m in ["a", "b", "c", "d"] {
        publish(
            root.path(),
            m,
            "1",
            "corpus/models/ppocr-v4-det.onnx",
            false,
        );
    }
    let repo = Arc::new(repo(root.path()));
    let scanning = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (repo, scanning) = (Arc::clone(&repo), Arc::clone(&scanning));
        std::thread::spawn(move || {
            let mut early = Vec::new();
            while scanning.load(std::sync::atomic::Ordering::Relaxed) {
                if repo.ready(&kiln::Readiness::All) {
                    early.push(repo.names().len());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            early
        })
    };
    repo.scan().expect("scan");
    scanning.store(false, std::sync::atomic::Ordering::Relaxed);
    let early = watcher.join().expect("watcher");
    assert!(
        early.iter().all(|&n| n == 4),
        "ready while only some of 4 models were known: {early:?}"
    );
    assert!(repo.ready(&kiln::Readiness::All));
}

/// A directory the watcher cannot serve is listed with why, not skipped in silence: a Triton
/// model repository (`<model>/1/model.onnx`, no `current`, no manifest) pointed at as the
/// root used to give a server that never became ready and said nothing. Once the same model
/// is published the kiln way it serves and leaves the list; a directory removed leaves it.
#[test]
fn a_directory_without_current_is_listed_with_why_until_published() {
    let root = tempfile::tempdir().expect("root");
    let triton = root.path().join("triton/1");
    std::fs::create_dir_all(&triton).expect("mkdir");
    std::fs::copy(common::testdata("mlp.onnx"), triton.join("model.onnx")).expect("copy");
    std::fs::create_dir_all(root.path().join("stray")).expect("mkdir");
    std::fs::create_dir_all(root.path().join("lost+found")).expect("mkdir");
    // KServe's `/mnt/models` given as the root: a model file in the root itself.
    std::fs::copy(
        common::testdata("mlp.onnx"),
        root.path().join("kserve.onnx"),
    )
    .expect("copy");
    publish(root.path(), "mlp", "1", "mlp.onnx", false);
    let repo = repo(root.path());
    let r = repo.scan().expect("scan");
    assert_eq!(r.loaded, vec![pair("mlp", "1")], "{r:?}");
    let listed = repo.unpublished();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kserve", "stray", "triton"], "not lost+found");
    let why = repo.unpublished_reason("kserve").expect("listed");
    assert!(
        why.contains("`kserve.onnx` sits in the repository root"),
        "{why}"
    );
    let err = repo
        .load("kserve")
        .expect_err("a file is not a model directory");
    assert!(
        err.to_string().contains("sits in the repository root"),
        "{err}"
    );
    let why = repo.unpublished_reason("triton").expect("listed");
    for part in [
        "triton/1/model.onnx",
        "Triton model repository",
        "--model-dir",
    ] {
        assert!(why.contains(part), "{part}: {why}");
    }
    assert!(
        repo.get("triton").is_none() && repo.all_ready(),
        "not a model to readiness"
    );
    let err = repo.load("triton").expect_err("nothing to load");
    assert!(err.to_string().contains("Triton model repository"), "{err}");

    // Published now and loaded by an admin before any scan: listed once, as served.
    publish(root.path(), "triton", "2", "mlp.onnx", false);
    assert_eq!(
        repo.load("triton").expect("load"),
        LoadOutcome::Loaded("2".into())
    );
    assert_eq!(repo.unpublished_reason("triton"), None);
    std::fs::remove_dir(root.path().join("stray")).expect("rm");
    std::fs::remove_file(root.path().join("kserve.onnx")).expect("rm");
    let r = repo.scan().expect("scan");
    assert!(r.loaded.is_empty(), "{r:?}");
    assert!(repo.unpublished().is_empty(), "{:?}", repo.unpublished());
}
