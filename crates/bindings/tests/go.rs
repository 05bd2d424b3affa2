//! The Go package (`examples/go/kiln`, cgo) against an installation of the freshly built
//! libkiln made by `scripts/install-libkiln.sh`, found through `pkg-config` as a Go user's
//! build finds it: `go test` runs 32 goroutines against the real model (every answer equal
//! to the same input run alone, batches formed) and typed errors from many goroutines at
//! once, under Go's race detector. Needs the `go` toolchain (`make tools` installs Debian's
//! golang-go).

mod common;

use std::process::Command;

use common::{install, ort_env, root, sha256_of, testdata};

#[test]
fn go_package_batches_32_goroutines_and_types_its_errors() {
    let go = Command::new("go").arg("version").output();
    let Ok(version) = go else {
        panic!("the go toolchain is required (make tools installs Debian's golang-go)");
    };
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let prefix = tempfile::tempdir().expect("prefix");
    let lib = install(prefix.path());
    // Go's caches inside target/, so a clean clone builds offline and leaves $HOME alone.
    let cache = root().join("target/go");
    let out = Command::new("go")
        .args(["test", "-race", "-count=1", "-v", "./kiln/"])
        .current_dir(root().join("examples/go"))
        .env("PKG_CONFIG_PATH", prefix.path().join("lib/pkgconfig"))
        .env("CGO_ENABLED", "1")
        .env("CGO_LDFLAGS", format!("-Wl,-rpath,{}", lib.display()))
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("KILN_GO_MODEL", testdata("real/magika.onnx"))
        .env("KILN_GO_SHA256", sha256_of("real/magika.onnx"))
        .env("KILN_GO_STRINGS", testdata("strings.onnx"))
        .env("KILN_GO_STRINGS_SHA256", sha256_of("strings.onnx"))
        .envs(ort_env())
        .output()
        .expect("run go test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "go test failed");
    for test in [
        "TestGoroutinesAreBatchedAndMatchSingleRuns",
        "TestErrorsAreTypedAndEachGoroutineGetsItsOwn",
    ] {
        assert!(
            text.contains(&format!("--- PASS: {test}")),
            "{test} did not pass"
        );
    }
}
