//! `kiln-ffi`: the C ABI of the kiln runtime — `libkiln.so`, `libkiln.a` and
//! `include/kiln.h` (generated from this crate by `cbindgen`, committed, and checked by a test).
//!
//! The shape follows ONNX Runtime's C API and Triton's in-process API:
//! - Opaque handles (`KilnRuntime`, `KilnModelOptions`, `KilnModel`, `KilnRequest`,
//!   `KilnResult`, `KilnTensor`) with create/free pairs; freeing NULL does nothing. Every
//!   buffer the library hands out is owned by a handle and freed with it, never by `free()`.
//! - Every function returns a `KilnStatus` (values only ever appended); the message of the
//!   last failure on the calling thread is `kiln_last_error()`, or copied into a caller buffer
//!   by `kiln_last_error_copy()`.
//! - Every exported body runs inside one panic boundary ([`status::guard`]): a panic becomes
//!   `KILN_STATUS_PANIC`, never an abort or unwinding into C.
//! - Options are set one at a time (typed setters or key/value), never through `repr(C)`
//!   structs, so they can grow without breaking the ABI.
//!
//! # Layout
//! - [`status`]: status codes, error mapping, the thread-local last error, the panic boundary
//!   and the pointer checks every function uses.
//! - [`runtime`]: ABI version and the runtime handle.
//! - [`options`]: model options (verification, device, batching), typed and key/value.
//! - [`model`]: load, metadata, state, counters, unload.
//! - [`infer`]: requests (inputs copied from caller buffers), blocking inference, results and
//!   their tensors.

// Tensors cross the C ABI in native byte order, which kiln reads and writes as little-endian.
#[cfg(not(target_endian = "little"))]
compile_error!("the C ABI passes tensors in native byte order and kiln assumes little-endian");

pub mod infer;
pub mod model;
pub mod options;
pub mod runtime;
pub mod status;

mod version;
pub use version::{KILN_ABI_MAJOR, KILN_ABI_MINOR};
