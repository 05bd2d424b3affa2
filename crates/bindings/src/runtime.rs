//! The ABI version and the runtime handle (the loaded ONNX Runtime library).

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use crate::status::{borrow, free_handle, give, guard, out_ptr, text, write, KilnStatus};

/// The loaded ONNX Runtime. One library per process: a second runtime shares the first one's
/// library (or fails if asked for a different file).
pub struct KilnRuntime {
    pub(crate) runtime: runtime::Runtime,
    ort_version: CString,
}

/// Writes the ABI version of the loaded library; compare `major` with `KILN_ABI_MAJOR` from
/// the header you compiled against (a different major is incompatible; a higher minor only
/// adds functions). Either pointer may be NULL.
///
/// # Safety
/// `major` and `minor` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_abi_version(major: *mut u32, minor: *mut u32) -> KilnStatus {
    guard(|| {
        if !major.is_null() {
            // SAFETY: non-NULL and writable by contract.
            unsafe { write(major, crate::KILN_ABI_MAJOR) };
        }
        if !minor.is_null() {
            // SAFETY: as above.
            unsafe { write(minor, crate::KILN_ABI_MINOR) };
        }
        Ok(())
    })
}

/// The kiln release as a static string ("0.1.0"). Never NULL; never free it.
#[no_mangle]
pub extern "C" fn kiln_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Loads ONNX Runtime and writes a runtime handle to `out`.
///
/// `ort_library_path` may be NULL: the library is then searched for in `ORT_DYLIB_PATH`,
/// `KILN_ORT_DIR`, `lib/` beside the executable, then the system loader's path.
///
/// Ownership: free the handle with `kiln_runtime_free`. Models loaded through it do not need
/// it afterwards. Thread-safety: a runtime may be used from any thread.
///
/// Errors: `KILN_STATUS_LIBRARY_NOT_FOUND` (the message lists every location tried and why
/// each was rejected), `KILN_STATUS_NULL_POINTER` when `out` is NULL.
///
/// # Safety
/// `ort_library_path` is NULL or a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_runtime_create(
    ort_library_path: *const c_char,
    out: *mut *mut KilnRuntime,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        let library_path = if ort_library_path.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated by contract.
            Some(PathBuf::from(unsafe {
                text(ort_library_path, "ort_library_path")
            }?))
        };
        let runtime = runtime::Runtime::new(&runtime::RuntimeConfig {
            library_path,
            ..runtime::RuntimeConfig::default()
        })?;
        let ort_version = CString::new(runtime.library().version.clone()).unwrap_or_default();
        // SAFETY: `out` was checked writable.
        unsafe {
            give(
                out,
                KilnRuntime {
                    runtime,
                    ort_version,
                },
            )
        };
        Ok(())
    })
}

/// Writes the loaded ONNX Runtime's version ("1.31.1") to `out`. The string belongs to the
/// runtime handle and lives as long as it.
///
/// # Safety
/// `runtime` is NULL or a live runtime handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_runtime_ort_version(
    runtime: *const KilnRuntime,
    out: *mut *const c_char,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or live by contract.
        let runtime = unsafe { borrow(runtime, "runtime") }?;
        // SAFETY: checked writable.
        unsafe { write(out, runtime.ort_version.as_ptr()) };
        Ok(())
    })
}

/// Frees a runtime handle. NULL does nothing. Models loaded through it keep working.
///
/// # Safety
/// `runtime` is NULL or a handle from `kiln_runtime_create` not freed before.
#[no_mangle]
pub unsafe extern "C" fn kiln_runtime_free(runtime: *mut KilnRuntime) {
    // SAFETY: forwarded contract.
    unsafe { free_handle(runtime) }
}
