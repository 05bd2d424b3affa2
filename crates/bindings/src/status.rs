//! Status codes, the thread-local last error, and the panic boundary every exported function
//! runs in.
//!
//! A C caller gets a `KilnStatus` from every call and, on failure, a message naming what was
//! wrong (the runtime's own error text: model, input, expected vs actual). The message lives
//! in a thread-local, like `errno`; `kiln_last_error_copy` copies it into the caller's buffer.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a kiln function did. Values are part of the ABI: they never change, new ones are only
/// appended.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilnStatus {
    /// Success.
    Ok = 0,
    /// An argument has a bad value: an unknown option key or an unparsable value, an unknown
    /// dtype code, data whose size does not match its shape, text that is not UTF-8.
    InvalidArgument = 1,
    /// A required pointer argument is NULL.
    NullPointer = 2,
    /// The ONNX Runtime shared library could not be found, loaded or started.
    LibraryNotFound = 3,
    /// The model file could not be read (missing, unreadable).
    Io = 4,
    /// Verification failed: wrong sha256 or size, or no digest given and no manifest to read.
    ChecksumMismatch = 5,
    /// ONNX Runtime rejected the model file, or it uses types kiln does not serve.
    InvalidModel = 6,
    /// The requested device (CUDA) is not usable and fallback is off.
    ProviderUnavailable = 7,
    /// A request names an input the model does not have, misses one, or repeats one.
    UnknownInput = 8,
    /// An input has the wrong element type.
    DtypeMismatch = 9,
    /// An input has the wrong shape, or inputs disagree on the batch size.
    ShapeMismatch = 10,
    /// A request is over a configured limit (elements, rows, bytes).
    TooLarge = 11,
    /// The model's queue is full; retry later.
    Overloaded = 12,
    /// The request's deadline passed before it ran.
    DeadlineExceeded = 13,
    /// The model is not serving (unloaded, draining, or failed to load).
    Unavailable = 14,
    /// ONNX Runtime failed while running the model.
    InferenceFailed = 15,
    /// An index or name does not exist (input/output index, result output name, counter).
    OutOfRange = 16,
    /// A caller buffer is too small; the size needed was written back.
    BufferTooSmall = 17,
    /// A bug inside kiln panicked; the call had no effect on the caller's memory.
    Panic = 18,
    /// Any other error.
    Internal = 19,
}

/// A failed call: its status and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: KilnStatus,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: KilnStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(KilnStatus::InvalidArgument, message)
    }
}

impl From<runtime::Error> for Failure {
    fn from(e: runtime::Error) -> Self {
        use runtime::Error as E;
        use KilnStatus as S;
        let status = match &e {
            E::LibraryNotFound { .. } | E::LibraryAlreadyLoaded { .. } | E::Environment { .. } => {
                S::LibraryNotFound
            }
            E::InvalidConfig { .. }
            | E::InvalidDigest { .. }
            | E::InvalidPriority { .. }
            | E::TensorShape { .. }
            | E::TensorBytes { .. }
            | E::TensorString { .. } => S::InvalidArgument,
            E::Io { .. } => S::Io,
            E::ChecksumMismatch { .. }
            | E::SizeMismatch { .. }
            | E::ChecksumRequired { .. }
            | E::Signature { .. }
            | E::InvalidManifest { .. } => S::ChecksumMismatch,
            E::InvalidModel { .. } | E::UnsupportedModel { .. } | E::InvalidLabels { .. } => {
                S::InvalidModel
            }
            E::ProviderUnavailable { .. } => S::ProviderUnavailable,
            E::UnknownInput { .. } | E::MissingInput { .. } | E::DuplicateInput { .. } => {
                S::UnknownInput
            }
            E::DtypeMismatch { .. } | E::TensorType { .. } => S::DtypeMismatch,
            E::ShapeMismatch { .. } | E::BatchMismatch { .. } => S::ShapeMismatch,
            E::InputTooLarge { .. } | E::BatchTooLarge { .. } | E::RequestTooLarge { .. } => {
                S::TooLarge
            }
            E::Overloaded { .. } => S::Overloaded,
            E::DeadlineExceeded { .. } => S::DeadlineExceeded,
            E::Unavailable { .. } => S::Unavailable,
            E::Inference { .. }
            | E::BatchSplit { .. }
            | E::TrimMismatch { .. }
            | E::WorkerLost { .. } => S::InferenceFailed,
            _ => S::Internal,
        };
        Self::new(status, e.to_string())
    }
}

/// What an exported body returns before the boundary turns it into a status.
pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL would be cut short in C; show it escaped instead.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// Runs an exported function's body: on success clears the thread's last error, on failure
/// records the message and returns its status, and turns a panic into [`KilnStatus::Panic`].
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> KilnStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            KilnStatus::Ok
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            set_last_error(&format!(
                "internal error in kiln (a bug, please report it): {what}"
            ));
            KilnStatus::Panic
        }
    }
}

/// Frees a handle made by [`give`]: NULL does nothing, and no panic gets out (the body of
/// every `*_free` function).
///
/// # Safety
/// `ptr` is NULL or came from [`give`] for a `T` and was not freed before.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if ptr.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: made by Box::into_raw in `give`, freed once (the caller's contract).
        drop(unsafe { Box::from_raw(ptr) });
    }));
}

/// Moves `value` to the heap and writes the new handle to `out` (checked by [`out_ptr`]).
///
/// # Safety
/// As [`write`].
pub(crate) unsafe fn give<T>(out: *mut *mut T, value: T) {
    // SAFETY: forwarded contract.
    unsafe { write(out, Box::into_raw(Box::new(value))) }
}

/// Writes a dims array and its length (both checked by [`out_ptr`]); the array stays owned
/// by whatever holds `dims`.
///
/// # Safety
/// As [`write`], for both pointers.
pub(crate) unsafe fn write_dims(dims_out: *mut *const i64, rank_out: *mut usize, dims: &[i64]) {
    // SAFETY: forwarded contract.
    unsafe {
        write(dims_out, dims.as_ptr());
        write(rank_out, dims.len());
    }
}

/// Borrows `*ptr`, or fails naming the NULL parameter.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn borrow<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller guarantees a non-NULL `ptr` points to a live `T`.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(what))
}

/// Mutably borrows `*ptr`, or fails naming the NULL parameter.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` for `'a` that nothing else uses meanwhile.
pub(crate) unsafe fn borrow_mut<'a, T>(ptr: *mut T, what: &str) -> FfiResult<&'a mut T> {
    // SAFETY: as above, plus exclusivity, which the caller guarantees.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(what))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string live for `'a`.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("`{what}` is not valid UTF-8")))
}

/// Checks that an out-parameter can be written, before any work is done (so a NULL one never
/// loses a created object).
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        Err(null(what))
    } else {
        Ok(ptr)
    }
}

/// Writes an out-parameter checked by [`out_ptr`].
///
/// # Safety
/// `ptr` came from [`out_ptr`] and points to writable memory for a `T`.
pub(crate) unsafe fn write<T>(ptr: *mut T, value: T) {
    // SAFETY: checked non-NULL; writable by the caller's contract; `write` does not read or
    // drop the (possibly uninitialised) old value.
    unsafe { ptr.write(value) }
}

fn null(what: &str) -> Failure {
    Failure::new(KilnStatus::NullPointer, format!("`{what}` is NULL"))
}

/// The message of the last failed kiln call on this thread ("" after a successful one).
///
/// Ownership: the string belongs to the library and stays valid until the next kiln call on
/// the same thread; copy it to keep it. Never NULL.
///
/// Thread-safety: each thread has its own. Callers whose code can move between threads
/// between two calls (Go goroutines) should read the message in the same C call that failed,
/// for example through a small C helper that calls the function and then
/// `kiln_last_error_copy`.
#[no_mangle]
pub extern "C" fn kiln_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Copies the last error message of this thread, NUL-terminated, into `buffer` of
/// `capacity` bytes, and writes the bytes needed (including the NUL) to `needed` if it is not
/// NULL. Does not change the last error.
///
/// Returns `KILN_STATUS_BUFFER_TOO_SMALL` when the message does not fit: then `buffer` holds
/// as much as fits (still NUL-terminated if `capacity` > 0). `buffer` may be NULL only when
/// `capacity` is 0 (to ask for the size).
///
/// # Safety
/// `buffer` points to `capacity` writable bytes (or is NULL with `capacity` 0); `needed` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_last_error_copy(
    buffer: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> KilnStatus {
    // Not through `guard`: reading the last error must not reset it.
    let result = catch_unwind(AssertUnwindSafe(|| {
        LAST_ERROR.with(|last| {
            let last = last.borrow();
            let bytes = last.as_bytes_with_nul();
            if !needed.is_null() {
                // SAFETY: non-NULL and writable by contract.
                unsafe { needed.write(bytes.len()) };
            }
            if capacity == 0 {
                return KilnStatus::BufferTooSmall;
            }
            if buffer.is_null() {
                return KilnStatus::NullPointer;
            }
            let n = bytes.len().min(capacity);
            // SAFETY: `buffer` has `capacity` ≥ n writable bytes, and cannot overlap the
            // library's own string.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buffer, n);
                if n < bytes.len() {
                    buffer.add(n - 1).write(0);
                }
            }
            if n < bytes.len() {
                KilnStatus::BufferTooSmall
            } else {
                KilnStatus::Ok
            }
        })
    }));
    result.unwrap_or(KilnStatus::Panic)
}

/// A short constant description of a status code (not the detailed message of a call).
/// Never NULL; unknown codes give "unknown status". The string is static.
#[no_mangle]
pub extern "C" fn kiln_status_name(status: u32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"ok",
        1 => c"invalid argument",
        2 => c"null pointer",
        3 => c"ONNX Runtime library not found",
        4 => c"I/O error",
        5 => c"checksum mismatch",
        6 => c"invalid model",
        7 => c"provider unavailable",
        8 => c"unknown input",
        9 => c"dtype mismatch",
        10 => c"shape mismatch",
        11 => c"too large",
        12 => c"overloaded",
        13 => c"deadline exceeded",
        14 => c"unavailable",
        15 => c"inference failed",
        16 => c"out of range",
        17 => c"buffer too small",
        18 => c"panic",
        19 => c"internal error",
        _ => c"unknown status",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: kiln_last_error never returns NULL and the string is NUL-terminated.
        unsafe { CStr::from_ptr(kiln_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_with_its_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, KilnStatus::Panic);
        assert!(last().contains("boom"), "{}", last());
        assert_eq!(guard(|| Ok(())), KilnStatus::Ok);
        assert_eq!(last(), "");
    }

    #[test]
    fn copy_reports_the_size_and_truncates_safely() {
        guard(|| Err(Failure::invalid("abcdef")));
        let mut needed = 0;
        // SAFETY: asking for the size only.
        let s = unsafe { kiln_last_error_copy(std::ptr::null_mut(), 0, &mut needed) };
        assert_eq!((s, needed), (KilnStatus::BufferTooSmall, 7));
        let mut small = [1 as c_char; 4];
        // SAFETY: the buffer has 4 bytes.
        let s = unsafe { kiln_last_error_copy(small.as_mut_ptr(), 4, &mut needed) };
        assert_eq!(s, KilnStatus::BufferTooSmall);
        // SAFETY: NUL-terminated by the function.
        assert_eq!(unsafe { CStr::from_ptr(small.as_ptr()) }.to_bytes(), b"abc");
        let mut big = [1 as c_char; 16];
        // SAFETY: the buffer has 16 bytes.
        let s = unsafe { kiln_last_error_copy(big.as_mut_ptr(), 16, std::ptr::null_mut()) };
        assert_eq!(s, KilnStatus::Ok);
        // SAFETY: NUL-terminated by the function.
        assert_eq!(
            unsafe { CStr::from_ptr(big.as_ptr()) }.to_bytes(),
            b"abcdef"
        );
        assert_eq!(last(), "abcdef", "copying does not reset it");
    }

    #[test]
    fn every_status_has_a_name() {
        for code in 0..=KilnStatus::Internal as u32 {
            // SAFETY: static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(kiln_status_name(code)) };
            assert_ne!(name.to_bytes(), b"unknown status", "code {code}");
        }
    }
}
