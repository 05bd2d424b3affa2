//! kiln-server's memory allocator: mimalloc, set to hand freed memory back at once.
//!
//! **Why not glibc's malloc.** Under gRPC load on the tabular MLP (one-row `ModelInfer`
//! calls, `benches/grpc-profile.sh`), a quarter of the tokio workers' CPU was in glibc's
//! `malloc` and `free`, a fifth of that waiting on arena locks: a request's buffers are
//! allocated on one thread and freed on another (a worker's input tensors on a model thread,
//! a model thread's outputs on a worker), and glibc takes the owning thread's arena lock for
//! each such free, both threads contending for it. mimalloc frees into the owning thread's
//! heap without a lock (`benches/RESULTS.md`, "kiln-server's allocator", for what it gained).
//!
//! **Why these settings.** mimalloc's defaults keep freed memory for reuse: after four 32 MiB
//! JSON bodies the server stayed at 350 MiB resident, idle, for good (freed pages are purged
//! only after a delay, and only when the allocator next runs on that heap), where glibc's
//! malloc (its mmap threshold pinned by `kiln::memory`) went back to its idle 37 MiB. A
//! sidecar that keeps its worst burst resident is what a pod's memory limit cannot plan for.
//! So freed memory is purged at once (`purge_delay` 0), and arenas are committed as they are
//! used, not up front (`arena_eager_commit` 0): resident memory then follows glibc's, idle and
//! after a burst (`tests/json_memory.rs` checks the return to idle).
//!
//! **How.** mimalloc reads its options once, in a constructor of its own that runs before
//! `main` (at priority 101): options set from `main` come too late for the second one (the
//! server then idled at 53 MiB instead of 38). So `main.rs` runs [`set_defaults`] as a
//! constructor just before it (`.init_array.00100`), and it sets the two options' *defaults*: an operator's `MIMALLOC_PURGE_DELAY` or
//! `MIMALLOC_ARENA_EAGER_COMMIT` still wins, as any `MIMALLOC_*` variable does.
//!
//! Rust's allocations only: ONNX Runtime allocates with glibc's malloc, which `kiln::memory`
//! tunes.

use std::ffi::c_int;

/// mimalloc's option numbers (`mi_option_e` in mimalloc 3's `mimalloc.h`; `libmimalloc-sys`
/// names only some of them). Set only when the linked mimalloc is that major version.
const PURGE_DELAY: c_int = 15;
const ARENA_EAGER_COMMIT: c_int = 4;

/// The mimalloc major version whose option numbers these are.
const MAJOR: c_int = 3;

/// The defaults this module sets, as `(option, value, the option's environment variable)`.
const DEFAULTS: [(c_int, std::ffi::c_long, &str); 2] = [
    (PURGE_DELAY, 0, "MIMALLOC_PURGE_DELAY"),
    (ARENA_EAGER_COMMIT, 0, "MIMALLOC_ARENA_EAGER_COMMIT"),
];

/// Sets the defaults of mimalloc's `purge_delay` and `arena_eager_commit` to 0, when the
/// linked mimalloc is version 3. Runs before `main` (and before mimalloc reads its options).
/// Allocates nothing: the global allocator is not set up yet.
pub extern "C" fn set_defaults() {
    // SAFETY: mi_version only returns a constant; mi_option_set_default stores a value in
    // mimalloc's option table, used unless the option's environment variable is set. Both
    // numbers are options of this major version (checked first), and 0 is valid for both.
    unsafe {
        if libmimalloc_sys::mi_version() / 10_000 != MAJOR {
            return;
        }
        for (option, value, _) in DEFAULTS {
            libmimalloc_sys::mi_option_set_default(option, value);
        }
    }
}

/// Whether mimalloc runs with this module's settings: false when the linked mimalloc is not
/// version 3 (its option numbers are unknown here, so its defaults were kept) or an operator's
/// `MIMALLOC_*` variable changed one of them. For `main` to log.
pub fn applied() -> Result<(), String> {
    // SAFETY: as in `set_defaults`; mi_option_get reads the option table.
    let version = unsafe { libmimalloc_sys::mi_version() };
    if version / 10_000 != MAJOR {
        return Err(format!(
            "mimalloc {version} is not version {MAJOR}: its own defaults are kept"
        ));
    }
    for (option, value, variable) in DEFAULTS {
        // SAFETY: as above.
        let now = unsafe { libmimalloc_sys::mi_option_get(option) };
        if now != value {
            return Err(format!(
                "mimalloc's {variable} is {now}, not {value} (set in the environment?)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ARENA_EAGER_COMMIT, PURGE_DELAY};

    #[test]
    fn the_option_numbers_name_the_options_meant() {
        // This test binary does not run `set_defaults`: the linked mimalloc's own defaults
        // (mimalloc 3's options.c) must be at the numbers this module sets. A renumbering
        // would put other values there.
        // SAFETY: mi_option_get reads mimalloc's option table.
        let (delay, eager) = unsafe {
            (
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
            )
        };
        assert_eq!(
            (delay, eager),
            (1000, 2),
            "purge_delay 1000 ms, arena_eager_commit 2"
        );
        assert!(super::applied().is_err(), "the defaults were not set here");
    }
}
