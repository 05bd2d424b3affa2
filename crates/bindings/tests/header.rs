//! The committed `include/kiln.h` is exactly what cbindgen generates from this crate, so the
//! header C callers compile against never drifts from the library. `KILN_BLESS=1` (or
//! `make header`) rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_the_generated_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses the crate")
        .write(&mut generated);
    let text = String::from_utf8(generated).expect("UTF-8 header");
    for must in [
        "kiln_model_infer",
        "KILN_ABI_MAJOR",
        "KILN_STATUS_OVERLOADED",
        "typedef struct KilnModel KilnModel",
    ] {
        assert!(
            text.contains(must),
            "generated header lacks {must}:\n{text}"
        );
    }
    let path = dir.join("include/kiln.h");
    if std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("write include/kiln.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "include/kiln.h differs from what cbindgen generates from crates/bindings: run `make header` and commit it"
    );
}
