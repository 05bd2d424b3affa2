//! Keeps resident memory flat across hot swaps (glibc's malloc tuning).
//!
//! glibc's `malloc` serves blocks of 128 KiB and more with their own `mmap`, returned to the
//! system on `free`; but each time such a block is freed it raises that threshold to the
//! block's size (up to 32 MiB). Loading a model version makes ONNX Runtime allocate and free
//! many large blocks (the parsed protobuf, initializers, arena chunks), so after the first
//! version is retired those blocks come from the heap instead. A new version's threads start
//! while the old version's still run, so they get a fresh per-thread arena (up to 8 per core),
//! and each arena keeps the ~14 MiB a version left in it. Measured on the real magika model
//! under load: +47% resident memory over 12 swaps (85 → 125 MiB); pinned, +0.7%
//! (`tests/swap_memory.rs`).
//!
//! [`crate::Runtime::new`] therefore pins, once per process:
//! - the **mmap threshold** at glibc's own default, 128 KiB, so large blocks always go back to
//!   the system when freed;
//! - the **trim threshold** at 32 MiB (glibc's own dynamic value would reach 64 MiB), so a
//!   heap's free top is not handed back and faulted in again on every batch: pinning only the
//!   first cost MobileNet ~6% of its batched throughput, pinning both nothing measurable.
//!
//! The batcher reuses its stacking buffers too (`batch::stack::Scratch`), so a large batch
//! does not fault fresh pages in every time. Nothing is changed when the process was started
//! with a `MALLOC_*` variable or a `glibc.malloc` tunable (the operator's choice wins), when
//! [`crate::RuntimeConfig::malloc_tuning`] is off, or off glibc. Other libraries of the
//! process (and Rust code, unless it installs its own global allocator) share the setting.

/// The mmap threshold pinned: glibc's own starting value.
pub const MMAP_THRESHOLD: usize = 128 * 1024;
/// The trim threshold pinned.
pub const TRIM_THRESHOLD: usize = 32 * 1024 * 1024;

/// The environment variables through which glibc takes malloc settings at start-up.
const ENV: [&str; 4] = [
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
];

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds are pinned.
    Applied,
    /// The environment set malloc's parameters: left as the operator chose.
    FromEnvironment,
    /// Not glibc, or glibc refused a value: the allocator is as it was.
    Unsupported,
}

/// Pins glibc's mmap and trim thresholds (see the module docs), unless the environment set
/// malloc's parameters.
pub fn tune() -> Tuning {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if ENV.iter().any(|v| std::env::var_os(v).is_some()) || tunables.contains("glibc.malloc.") {
        return Tuning::FromEnvironment;
    }
    if set(MMAP_THRESHOLD, TRIM_THRESHOLD) {
        Tuning::Applied
    } else {
        Tuning::Unsupported
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap: usize, trim: usize) -> bool {
    let (Ok(mmap), Ok(trim)) = (libc::c_int::try_from(mmap), libc::c_int::try_from(trim)) else {
        return false;
    };
    // SAFETY: mallopt only changes allocator parameters, under glibc's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_mmap: usize, _trim: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_thresholds() {
        let environment = ENV.iter().any(|v| std::env::var_os(v).is_some())
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        let expected = match (environment, glibc) {
            (true, _) => Tuning::FromEnvironment,
            (false, true) => Tuning::Applied,
            (false, false) => Tuning::Unsupported,
        };
        assert_eq!(tune(), expected);
        // Past a C int: refused before glibc sees it.
        assert!(!set(usize::MAX, TRIM_THRESHOLD));
        if glibc {
            assert!(set(MMAP_THRESHOLD, TRIM_THRESHOLD));
        }
    }
}
