//! Gives `libkiln.so` the soname `libkiln.so.<ABI major>`, so programs linked against one ABI
//! major version never load an incompatible library.

include!("src/version.rs");

fn main() {
    println!("cargo:rerun-if-changed=src/version.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkiln.so.{KILN_ABI_MAJOR}");
    }
    println!("cargo:rustc-env=KILN_ABI={KILN_ABI_MAJOR}.{KILN_ABI_MINOR}");
}
