//! kiln-server's memory allocator: mimalloc, set to hand freed memory back within a second.
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
//! JSON bodies the server stayed at 350 MiB resident, idle, for good (freed memory is purged
//! a second after it is freed, but only when the allocator next runs: an idle server never
//! does), where glibc's malloc (its mmap threshold pinned by `kiln::memory`) went back to its
//! idle 37 MiB. A sidecar that keeps its worst burst resident is what a pod's memory limit
//! cannot plan for. So:
//! - arenas are committed as they are used, not up front (`arena_eager_commit` 0: the server
//!   idled at 53 MiB with it, 38 without);
//! - freed memory is handed back after [`PURGE_DELAY_MS`] (`purge_delay`), and a thread of
//!   its own ([`spawn_purger`]) lets mimalloc do so every [`PURGE_PERIOD`] even when nothing
//!   else runs: resident memory goes back to idle within a second of a burst
//!   (`tests/json_memory.rs` checks it).
//!
//! - blocks over [`ARENA_MAX_OBJECT_KIB`] (4 MiB: a big request body, a big batch's tensors)
//!   come straight from the system and go back to it when freed (`arena_max_object_size`),
//!   as glibc's malloc serves blocks past its mmap threshold: kept for reuse instead, each
//!   raised the peak of a burst of maximal gRPC messages by their size (16 concurrent 32 MiB
//!   `ModelInfer` calls: +217 to +239 MiB over idle, against glibc's +173 to +202; with this
//!   setting +173 to +175, `tests/grpc_wire.rs`). Blocks that large are filled or read
//!   whole by the request that made them, so a fresh mapping costs little beside that.
//!
//! Why not hand it back at once (`purge_delay` 0): a request's buffers are freed and
//! allocated again many times a second, and each handed-back page faults in again, zeroed.
//! On the MobileNet-style model (48 KiB of input a call) that was 13 page faults a call and
//! fewer calls per second than glibc's malloc; at 100 ms, under one a call.
//!
//! **How.** mimalloc reads its options once, in a constructor of its own that runs before
//! `main` (unnumbered when built with GCC, priority 101 with clang): set from `main`,
//! `arena_eager_commit` comes too late (the first arena is already reserved). So `main.rs`
//! runs [`set_defaults`] as a constructor before it (`.init_array.00100`: the linker runs
//! numbered sections in ascending order, then unnumbered ones), and it sets the two options'
//! *defaults*: an operator's `MIMALLOC_PURGE_DELAY` or `MIMALLOC_ARENA_EAGER_COMMIT` still
//! wins, as any `MIMALLOC_*` variable does.
//!
//! Rust's allocations only: ONNX Runtime allocates with glibc's malloc, which `kiln::memory`
//! tunes.

use std::ffi::c_int;

/// mimalloc's option numbers (`mi_option_e` in mimalloc 3's `mimalloc.h`; `libmimalloc-sys`
/// names only some of them). Set only when the linked mimalloc is that major version.
const PURGE_DELAY: c_int = 15;
const ARENA_EAGER_COMMIT: c_int = 4;
const ARENA_MAX_OBJECT_SIZE: c_int = 45;

/// The largest block mimalloc keeps in its arenas, KiB; larger ones are the system's. Not
/// below 4 MiB: that is mimalloc 3's large-page size (`MI_LARGE_PAGE_SIZE`), and a smaller
/// value would send every large page (the pages that hold 64-512 KiB blocks) to the system
/// as well, mapping and unmapping them all the time.
pub const ARENA_MAX_OBJECT_KIB: std::ffi::c_long = 4 * 1024;

/// How long freed memory stays committed for reuse before it is handed back.
pub const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// How often [`spawn_purger`]'s thread lets mimalloc hand back what has been free for
/// [`PURGE_DELAY_MS`].
pub const PURGE_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts a thread that, every [`PURGE_PERIOD`], hands back to the system what has been free
/// longer than the purge delay. mimalloc purges only when the allocator runs (a page of some
/// thread's heap is freed): after a burst, an idle server would keep it all.
///
/// # Errors
/// The thread could not be started.
pub fn spawn_purger() -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kiln-allocator".into())
        .spawn(|| {
            // mi_collect does nothing on a thread whose heap mimalloc never set up (it does so
            // on a thread's first allocation, and this thread need not make one).
            // SAFETY: mi_thread_init sets up this thread's heap; safe on any thread, any time.
            unsafe { libmimalloc_sys::mi_thread_init() };
            loop {
                std::thread::sleep(PURGE_PERIOD);
                // SAFETY: mi_collect collects this thread's own heap, then purges the
                // process-wide arenas of what has been free longer than the purge delay;
                // safe from any thread.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
        })
}

/// The mimalloc major version whose option numbers these are.
const MAJOR: c_int = 3;

/// The linked mimalloc's version, if it is [`MAJOR`]'s (its option numbers are known here).
fn known_version() -> Result<c_int, c_int> {
    // SAFETY: mi_version only returns a constant.
    let version = unsafe { libmimalloc_sys::mi_version() };
    if version / 10_000 == MAJOR {
        Ok(version)
    } else {
        Err(version)
    }
}

/// The defaults this module sets, as `(option, value, the option's environment variable)`.
const DEFAULTS: [(c_int, std::ffi::c_long, &str); 3] = [
    (PURGE_DELAY, PURGE_DELAY_MS, "MIMALLOC_PURGE_DELAY"),
    (ARENA_EAGER_COMMIT, 0, "MIMALLOC_ARENA_EAGER_COMMIT"),
    (
        ARENA_MAX_OBJECT_SIZE,
        ARENA_MAX_OBJECT_KIB,
        "MIMALLOC_ARENA_MAX_OBJECT_SIZE",
    ),
];

/// Sets the defaults of mimalloc's `purge_delay` (to [`PURGE_DELAY_MS`]),
/// `arena_eager_commit` (to 0) and `arena_max_object_size` (to [`ARENA_MAX_OBJECT_KIB`]),
/// when the linked mimalloc is version 3. On Linux, `main.rs`
/// runs it as a constructor, before mimalloc reads its options; it allocates nothing.
pub extern "C" fn set_defaults() {
    if known_version().is_err() {
        return;
    }
    for (option, value, _) in DEFAULTS {
        // SAFETY: mi_option_set_default stores a value in mimalloc's option table, used
        // unless the option's environment variable is set. Both numbers are options of this
        // major version (checked first), and the values are valid.
        unsafe { libmimalloc_sys::mi_option_set_default(option, value) };
    }
}

/// Whether mimalloc runs with this module's settings: false when the linked mimalloc is not
/// version 3 (its option numbers are unknown here, so its defaults were kept) or an operator's
/// `MIMALLOC_*` variable changed one of them. For `main` to log.
pub fn applied() -> Result<(), String> {
    if let Err(version) = known_version() {
        return Err(format!(
            "mimalloc {version} is not version {MAJOR}: its own defaults are kept"
        ));
    }
    for (option, value, variable) in DEFAULTS {
        // SAFETY: mi_option_get reads mimalloc's option table.
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
    use super::{ARENA_EAGER_COMMIT, ARENA_MAX_OBJECT_SIZE, PURGE_DELAY};

    #[test]
    fn the_option_numbers_name_the_options_meant() {
        // This test binary does not run `set_defaults`: the linked mimalloc's own defaults
        // (mimalloc 3's options.c) must be at the numbers this module sets. A renumbering
        // would put other values there.
        // SAFETY: mi_option_get reads mimalloc's option table.
        let (delay, eager, max_object) = unsafe {
            (
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(ARENA_MAX_OBJECT_SIZE),
            )
        };
        assert_eq!(
            (delay, eager, max_object),
            (1000, 2, 2 * 1024 * 1024),
            "purge_delay 1000 ms, arena_eager_commit 2, arena_max_object_size 2 GiB in KiB"
        );
        assert!(super::applied().is_err(), "the defaults were not set here");
    }
}
