//! Helpers shared by the tests that build programs against libkiln (C, Go): the freshly built
//! library, an installation of it made by `scripts/install-libkiln.sh`, `pkg-config` against
//! that installation, where ONNX Runtime is, and the test models.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>` holding a freshly built `libkiln.so` and `libkiln.a`.
///
/// `cargo test` builds no cdylib or staticlib for integration tests, so the first call runs
/// `cargo build -p kiln-ffi` for this test's profile (cargo holds no lock while tests run;
/// an up-to-date library makes it a no-op).
pub(crate) fn artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps")
            .to_owned();
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let out = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "kiln-ffi", "--profile", &profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build -p kiln-ffi");
        assert!(
            out.status.success(),
            "cargo build -p kiln-ffi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// Where the programs find ONNX Runtime: the caller's ORT_DYLIB_PATH / KILN_ORT_DIR when set
/// (as `make test` does), else the CPU library `make ort` provisions.
pub(crate) fn ort_env() -> Vec<(&'static str, PathBuf)> {
    let configured = ["ORT_DYLIB_PATH", "KILN_ORT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if configured {
        Vec::new()
    } else {
        vec![("KILN_ORT_DIR", root().join(".cache/ort/cpu"))]
    }
}

pub(crate) fn testdata(name: &str) -> String {
    let path = root().join("testdata").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make testdata`",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

pub(crate) fn sha256_of(name: &str) -> String {
    let bytes = std::fs::read(testdata(name)).expect("read test model");
    runtime::Digest::of(&bytes).to_string()
}

/// Installs the freshly built library under `prefix` with `scripts/install-libkiln.sh` (what
/// `make install` runs): `lib/libkiln.so.<major>` with the `libkiln.so` link a linker wants,
/// `lib/libkiln.a`, `include/kiln.h` and `lib/pkgconfig/kiln.pc`. Returns `prefix/lib`.
pub(crate) fn install(prefix: &Path) -> PathBuf {
    let out = Command::new(root().join("scripts/install-libkiln.sh"))
        .arg("--from")
        .arg(artifacts())
        .arg("--prefix")
        .arg(prefix)
        .output()
        .expect("run scripts/install-libkiln.sh");
    assert!(
        out.status.success(),
        "install-libkiln.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix.join("lib")
}

/// `pkg-config <args> kiln` against the installation under `prefix`, split into arguments.
pub(crate) fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("kiln")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .expect("pkg-config is required (make tools installs Debian's pkgconf)");
    assert!(
        out.status.success(),
        "pkg-config {args:?} kiln failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
