//! The C ABI from C: the example (`examples/c/infer.c`) and the bad-input program
//! (`tests/c/abi_errors.c`) compile with the system C compiler against the committed header
//! and the freshly built `libkiln.so` (installed under its soname) or `libkiln.a`, run, and
//! run clean under valgrind (no error, no leak).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{install, ort_env, pkg_config, root, sha256_of, testdata};

/// The ABI major version, read from the header the way a C program sees it.
fn kiln_major() -> u32 {
    let header = std::fs::read_to_string(root().join("crates/bindings/include/kiln.h"))
        .expect("include/kiln.h");
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define KILN_ABI_MAJOR "))
        .and_then(|v| v.trim().parse().ok())
        .expect("KILN_ABI_MAJOR in the header")
}

/// Compiles `source` with warnings as errors against the header in `include` (the repository's
/// with `None`); `link` are the trailing linker arguments.
fn compile(source: &Path, out: &Path, include: Option<&[String]>, link: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let repo_include = vec![format!(
        "-I{}",
        root().join("crates/bindings/include").display()
    )];
    let output = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(include.unwrap_or(&repo_include))
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(link)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run(program: &Path, args: &[String], under: Option<&[String]>) -> Output {
    let mut cmd = match under {
        Some(wrapper) => {
            let mut c = Command::new(&wrapper[0]);
            c.args(&wrapper[1..]).arg(program);
            c
        }
        None => Command::new(program),
    };
    let output = cmd
        .args(args)
        .envs(ort_env())
        .output()
        .expect("run the C program");
    eprintln!(
        "--- {} {}\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn dynamic_link(lib: &Path) -> Vec<String> {
    vec![
        format!("-L{}", lib.display()),
        "-lkiln".to_owned(),
        "-lpthread".to_owned(),
        "-lm".to_owned(),
        format!("-Wl,-rpath,{}", lib.display()),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn example_args(requests: u32, timeout_ms: u32) -> Vec<String> {
    vec![
        testdata("real/magika.onnx"),
        sha256_of("real/magika.onnx"),
        requests.to_string(),
        timeout_ms.to_string(),
    ]
}

/// The valgrind command line, or `None` (with a note) where valgrind is not installed.
fn valgrind() -> Option<Vec<String>> {
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED the valgrind runs: valgrind is not installed (apt install valgrind)");
        return None;
    }
    let supp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valgrind.supp");
    Some(vec![
        "valgrind".to_owned(),
        "--leak-check=full".to_owned(),
        "--errors-for-leak-kinds=definite,indirect".to_owned(),
        "--error-exitcode=1".to_owned(),
        format!("--suppressions={}", supp.display()),
    ])
}

#[test]
fn example_runs_from_8_threads_batches_and_matches_single_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let soname = Command::new("readelf")
        .arg("-d")
        .arg(lib.join("libkiln.so"))
        .output();
    if let Ok(o) = soname {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(&format!("[libkiln.so.{}]", kiln_major())),
            "soname: {text}"
        );
    }
    // Built as a user would: `cc infer.c $(pkg-config --cflags --libs kiln)`, against the
    // installed header and library.
    let exe = dir.path().join("infer");
    let cflags = pkg_config(dir.path(), &["--cflags"]);
    assert_eq!(
        cflags,
        [format!("-I{}", dir.path().join("include").display())]
    );
    let mut link = pkg_config(dir.path(), &["--libs"]);
    link.extend(["-lpthread", "-lm"].map(str::to_owned));
    link.push(format!("-Wl,-rpath,{}", lib.display()));
    compile(
        &root().join("examples/c/infer.c"),
        &exe,
        Some(&cflags),
        &refs(&link),
    );
    let out = run(&exe, &example_args(32, 10_000), None);
    assert!(out.status.success(), "the example failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 wrong or failed"), "{stdout}");
    let sizes: Vec<usize> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch sizes seen:"))
        .expect("batch size line")
        .split_whitespace()
        .filter_map(|pair| pair.split(':').next()?.parse().ok())
        .collect();
    assert!(
        sizes.iter().any(|&s| s > 1),
        "8 concurrent threads were never batched together: {sizes:?}"
    );
}

#[test]
fn example_links_statically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let exe = dir.path().join("infer-static");
    // The archive itself, then what `pkg-config --static` says it needs from the system.
    let mut link = vec![lib.join("libkiln.a").display().to_string()];
    link.extend(
        pkg_config(dir.path(), &["--static", "--libs-only-l"])
            .into_iter()
            .filter(|l| l != "-lkiln"),
    );
    compile(
        &root().join("examples/c/infer.c"),
        &exe,
        Some(&pkg_config(dir.path(), &["--cflags"])),
        &refs(&link),
    );
    let out = run(&exe, &example_args(2, 10_000), None);
    assert!(out.status.success(), "the statically linked example failed");
}

#[test]
fn bad_input_gets_status_codes_and_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let exe = dir.path().join("abi_errors");
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/abi_errors.c"),
        &exe,
        None,
        &refs(&dynamic_link(&lib)),
    );
    let args = vec![
        testdata(""),
        sha256_of("mlp.onnx"),
        sha256_of("corpus/models/nudenet-320n-external.onnx"),
    ];
    let out = run(&exe, &args, None);
    assert!(out.status.success(), "bad-input checks failed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASSED: 0 failure(s)"));

    let Some(valgrind) = valgrind() else { return };
    let out = run(&exe, &args, Some(&valgrind));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind found errors or leaks");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
}

#[test]
fn string_tensors_cross_the_abi_batched_from_8_threads_and_bad_buffers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let exe = dir.path().join("strings");
    let mut link = dynamic_link(&lib);
    link.push("-lpthread".into());
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/strings.c"),
        &exe,
        None,
        &refs(&link),
    );
    let args = vec![testdata(""), sha256_of("strings.onnx")];
    let out = run(&exe, &args, None);
    assert!(
        out.status.success(),
        "string tensors through the C ABI failed"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASSED: 0 failure(s)"), "{stdout}");
    // Every request answered, and concurrent ones shared batches.
    let batches: u64 = stdout
        .split("160 requests in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `160 requests in N batches` line: {stdout}"));
    assert!(
        batches < 160,
        "{batches} batches for 160 requests: nothing was batched"
    );
}

#[test]
fn borrowed_inputs_are_read_in_place_batched_from_8_threads_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let exe = dir.path().join("borrowed");
    let mut link = dynamic_link(&lib);
    link.push("-lpthread".into());
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/borrowed.c"),
        &exe,
        None,
        &refs(&link),
    );
    let args = vec![testdata(""), sha256_of("mlp.onnx")];
    let out = run(&exe, &args, None);
    assert!(
        out.status.success(),
        "borrowed inputs through the C ABI failed"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASSED: 0 failure(s)"), "{stdout}");

    let Some(valgrind) = valgrind() else { return };
    let out = run(&exe, &args, Some(&valgrind));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind found errors or leaks");
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
}

#[test]
fn example_is_clean_under_address_sanitizer() {
    // The 8-thread example under AddressSanitizer and LeakSanitizer (fast enough for every
    // CI run; valgrind, 20-50x slower on a real model, covers the bad-input program above,
    // which calls every function of the ABI on a small model).
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let exe = dir.path().join("infer-asan");
    let mut link = vec![
        "-fsanitize=address".to_owned(),
        "-fno-omit-frame-pointer".to_owned(),
    ];
    link.extend(dynamic_link(&lib));
    compile(&root().join("examples/c/infer.c"), &exe, None, &refs(&link));
    let out = Command::new(&exe)
        .args(example_args(8, 30_000))
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .envs(ort_env())
        .output()
        .expect("run the sanitized example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "AddressSanitizer/LeakSanitizer reported a problem (exit {:?})",
        out.status.code()
    );
    assert!(!stderr.contains("ERROR: "), "{stderr}");
}

#[test]
fn python_thread_pool_is_batched_through_ctypes() {
    let python = root().join(".cache/venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing in CI: `make test` creates it",
            python.display()
        );
        eprintln!("SKIPPED the Python example: run `make testdata` to create .cache/venv");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = install(dir.path());
    let out = Command::new(&python)
        .arg(root().join("examples/python/threads.py"))
        .arg(lib.join(format!("libkiln.so.{}", kiln_major())))
        .arg(testdata("real/magika.onnx"))
        .arg(sha256_of("real/magika.onnx"))
        .env("PYTHONPATH", root().join("python"))
        .envs(ort_env())
        .output()
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Python example failed");
    assert!(stdout.contains(": 0 mismatched"), "{stdout}");
    assert!(
        stdout.contains("bad request refused: dtype mismatch"),
        "{stdout}"
    );
}
