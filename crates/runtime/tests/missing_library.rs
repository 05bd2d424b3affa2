//! The ONNX Runtime library cannot be found: a typed error listing every place tried, never a
//! panic. A test binary of its own, so this process never loads the real library while the
//! other test binaries do.

use std::path::PathBuf;

use kiln::{Error, Runtime, RuntimeConfig};

#[test]
fn missing_library_lists_every_attempt_and_the_fix() {
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let not_a_library = empty_dir.path().join("libonnxruntime.so.txt");
    std::fs::write(&not_a_library, "this is text").expect("write");

    // An explicit path is the only candidate.
    let explicit = RuntimeConfig {
        library_path: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..RuntimeConfig::default()
    };
    match Runtime::new(&explicit) {
        Err(Error::LibraryNotFound { attempts }) => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].source, "config library_path");
            assert_eq!(attempts[0].reason, "no such file");
        }
        other => panic!("expected LibraryNotFound, got {other:?}"),
    }

    // The search: env file (not a library), env dir (empty), exe lib/, system loader.
    std::env::set_var("ORT_DYLIB_PATH", &not_a_library);
    std::env::set_var("KILN_ORT_DIR", empty_dir.path());
    let err = match Runtime::new(&RuntimeConfig::default()) {
        Err(e) => e,
        Ok(rt) => {
            eprintln!(
                "skipped the search assertions: the system loader found {:?}",
                rt.library()
            );
            return;
        }
    };
    let Error::LibraryNotFound { attempts } = &err else {
        panic!("expected LibraryNotFound, got {err}")
    };
    let sources: Vec<&str> = attempts.iter().map(|a| a.source).collect();
    assert_eq!(
        sources,
        [
            "ORT_DYLIB_PATH",
            "KILN_ORT_DIR",
            "lib/ next to the executable",
            "system loader",
            "system loader"
        ]
    );
    assert!(
        attempts[0].reason.starts_with("cannot load"),
        "{}",
        attempts[0]
    );
    assert_eq!(attempts[1].path, empty_dir.path().join("libonnxruntime.so"));
    let msg = err.to_string();
    for needle in [
        "libonnxruntime.so.txt",
        "KILN_ORT_DIR",
        "make ort",
        "ORT_DYLIB_PATH",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}:\n{msg}");
    }
}
