//! Loading a model, reading its signature, state and counters, and unloading it.

use std::ffi::{c_char, CString};
use std::path::Path;

use runtime::{ElementType, ModelHandle, ModelState, TensorInfo};

use crate::options::KilnModelOptions;
use crate::runtime::KilnRuntime;
use crate::status::{
    borrow, free_handle, give, guard, out_ptr, text, write, write_dims, Failure, FfiResult,
    KilnStatus,
};

/// Element types, with ONNX's `TensorProto.DataType` numbers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilnDtype {
    /// 32-bit float.
    Float32 = 1,
    /// Unsigned 8-bit integer.
    Uint8 = 2,
    /// Signed 8-bit integer.
    Int8 = 3,
    /// Signed 32-bit integer.
    Int32 = 6,
    /// Signed 64-bit integer.
    Int64 = 7,
    /// Boolean, one byte per element (0 false, anything else true).
    Bool = 9,
    /// Unsigned 16-bit integer.
    Uint16 = 4,
    /// Signed 16-bit integer.
    Int16 = 5,
    /// IEEE 754 half-precision float (2 bytes).
    Float16 = 10,
    /// 64-bit float.
    Float64 = 11,
    /// Unsigned 32-bit integer.
    Uint32 = 12,
    /// Unsigned 64-bit integer.
    Uint64 = 13,
    /// bfloat16 (2 bytes: the upper half of a float32).
    Bfloat16 = 16,
    /// UTF-8 strings (ONNX `STRING`; the v2 protocol's `BYTES`). In a buffer each element is
    /// a 4-byte little-endian length and that many bytes, as Triton's C API lays out `BYTES`
    /// (no NUL terminator; a NUL byte inside is refused, ONNX Runtime would cut it short).
    String = 8,
}

impl KilnDtype {
    pub(crate) fn of(ty: ElementType) -> FfiResult<Self> {
        Ok(match ty {
            ElementType::F32 => Self::Float32,
            ElementType::U8 => Self::Uint8,
            ElementType::I8 => Self::Int8,
            ElementType::I32 => Self::Int32,
            ElementType::I64 => Self::Int64,
            ElementType::Bool => Self::Bool,
            ElementType::F64 => Self::Float64,
            ElementType::U16 => Self::Uint16,
            ElementType::I16 => Self::Int16,
            ElementType::F16 => Self::Float16,
            ElementType::U32 => Self::Uint32,
            ElementType::U64 => Self::Uint64,
            ElementType::Bf16 => Self::Bfloat16,
            ElementType::String => Self::String,
            // Element types added to the runtime later get a code when the ABI gains them.
            other => {
                return Err(Failure::new(
                    KilnStatus::Internal,
                    format!("element type {other} has no C dtype code"),
                ))
            }
        })
    }

    pub(crate) fn element_type(code: u32) -> FfiResult<ElementType> {
        Ok(match code {
            1 => ElementType::F32,
            2 => ElementType::U8,
            3 => ElementType::I8,
            6 => ElementType::I32,
            7 => ElementType::I64,
            9 => ElementType::Bool,
            11 => ElementType::F64,
            4 => ElementType::U16,
            5 => ElementType::I16,
            10 => ElementType::F16,
            12 => ElementType::U32,
            13 => ElementType::U64,
            16 => ElementType::Bf16,
            8 => ElementType::String,
            _ => {
                return Err(Failure::invalid(format!(
                    "unknown dtype code {code}; use a KILN_DTYPE_* value"
                )))
            }
        })
    }
}

/// Which side of a model's signature.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilnIo {
    /// The model's inputs.
    Input = 0,
    /// The model's outputs.
    Output = 1,
}

/// Where a model is in its life.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilnModelState {
    /// Reading, verifying and opening.
    Loading = 0,
    /// Running warm-up batches.
    Warming = 1,
    /// Serving.
    Ready = 2,
    /// Finishing admitted requests; admitting no more.
    Draining = 3,
    /// Stopped.
    Unloaded = 4,
    /// Failed to load.
    Failed = 5,
}

/// One input or output, kept in C form for the life of the model handle.
struct Io {
    name: CString,
    dtype: KilnDtype,
    dims: Vec<i64>,
}

impl Io {
    fn of(info: &TensorInfo) -> FfiResult<Self> {
        Ok(Self {
            name: CString::new(info.name.as_str())
                .map_err(|_| Failure::new(KilnStatus::InvalidModel, "a tensor name holds NUL"))?,
            dtype: KilnDtype::of(info.element_type)?,
            dims: info.dims.iter().map(|d| d.unwrap_or(-1)).collect(),
        })
    }
}

/// A loaded model with its batching scheduler.
pub struct KilnModel {
    pub(crate) handle: ModelHandle,
    inputs: Vec<Io>,
    outputs: Vec<Io>,
}

impl Drop for KilnModel {
    /// Freeing a model unloads it first (drains what it admitted).
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl KilnModel {
    fn side(&self, io: u32) -> FfiResult<&[Io]> {
        match io {
            0 => Ok(&self.inputs),
            1 => Ok(&self.outputs),
            _ => Err(Failure::invalid(format!(
                "unknown io kind {io}; use KILN_IO_INPUT or KILN_IO_OUTPUT"
            ))),
        }
    }

    fn io(&self, io: u32, index: usize) -> FfiResult<&Io> {
        let side = self.side(io)?;
        side.get(index).ok_or_else(|| {
            Failure::new(
                KilnStatus::OutOfRange,
                format!(
                    "index {index} is out of range: the model has {}",
                    side.len()
                ),
            )
        })
    }
}

/// Borrows a model handle argument.
///
/// # Safety
/// `model` is NULL or a live model handle.
pub(crate) unsafe fn model_arg<'a>(model: *const KilnModel) -> FfiResult<&'a KilnModel> {
    // SAFETY: forwarded contract.
    unsafe { borrow(model, "model") }
}

/// Loads, verifies, opens and warms a model, and starts its scheduler; writes the handle to
/// `out`. Blocks until the model is ready or has failed.
///
/// `name` (may be NULL: the file stem) is used in errors and logs; `options` may be NULL for
/// the defaults (which verify against a `kiln-manifest.json` beside the model, so without one
/// set `sha256` or `verify`).
///
/// Ownership: free the handle with `kiln_model_free`; the options are not kept.
/// Thread-safety: a model handle may be used from any number of threads at once (that is how
/// requests get batched together), except `kiln_model_free`, which must come after every
/// other call on it has returned.
///
/// Errors: `KILN_STATUS_IO` (missing file), `KILN_STATUS_CHECKSUM_MISMATCH` (wrong digest,
/// nothing to verify against), `KILN_STATUS_INVALID_MODEL`, `KILN_STATUS_INVALID_ARGUMENT`
/// (invalid option combination, named), `KILN_STATUS_PROVIDER_UNAVAILABLE`.
///
/// # Safety
/// `runtime` is NULL or a live runtime handle; `name` is NULL or a NUL-terminated string;
/// `path` is a NUL-terminated string; `options` is NULL or a live options handle; `out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_load(
    runtime: *const KilnRuntime,
    name: *const c_char,
    path: *const c_char,
    options: *const KilnModelOptions,
    out: *mut *mut KilnModel,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or live by contract.
        let runtime = unsafe { borrow(runtime, "runtime") }?;
        // SAFETY: NUL-terminated by contract.
        let path = Path::new(unsafe { text(path, "path") }?);
        let name = if name.is_null() {
            path.file_stem()
                .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
        } else {
            // SAFETY: NUL-terminated by contract.
            unsafe { text(name, "name") }?.to_owned()
        };
        let defaults = KilnModelOptions::default();
        let options = if options.is_null() {
            &defaults
        } else {
            // SAFETY: live by contract.
            unsafe { borrow(options, "options") }?
        };
        let handle = ModelHandle::new(name, opentelemetry::global::meter("kiln"));
        handle.load_model(
            &runtime.runtime,
            path,
            &options.version,
            &options.model,
            &options.batch,
        )?;
        let meta = handle.metadata().ok_or_else(|| {
            Failure::new(KilnStatus::Unavailable, "model stopped right after loading")
        })?;
        let model = KilnModel {
            inputs: meta.inputs.iter().map(Io::of).collect::<FfiResult<_>>()?,
            outputs: meta.outputs.iter().map(Io::of).collect::<FfiResult<_>>()?,
            handle,
        };
        // SAFETY: checked writable.
        unsafe { give(out, model) };
        Ok(())
    })
}

/// Writes the number of inputs (`io` = `KILN_IO_INPUT`) or outputs (`KILN_IO_OUTPUT`).
///
/// # Safety
/// `model` is NULL or a live model handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_io_count(
    model: *const KilnModel,
    io: u32,
    out: *mut usize,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let n = unsafe { model_arg(model) }?.side(io)?.len();
        // SAFETY: checked writable.
        unsafe { write(out, n) };
        Ok(())
    })
}

/// Writes the name of input or output `index`. The string belongs to the model handle and
/// lives as long as it.
///
/// # Safety
/// `model` is NULL or a live model handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_io_name(
    model: *const KilnModel,
    io: u32,
    index: usize,
    out: *mut *const c_char,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let ptr = unsafe { model_arg(model) }?.io(io, index)?.name.as_ptr();
        // SAFETY: checked writable.
        unsafe { write(out, ptr) };
        Ok(())
    })
}

/// Writes the element type (a `KILN_DTYPE_*` value) of input or output `index`.
///
/// # Safety
/// `model` is NULL or a live model handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_io_dtype(
    model: *const KilnModel,
    io: u32,
    index: usize,
    out: *mut u32,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let dtype = unsafe { model_arg(model) }?.io(io, index)?.dtype;
        // SAFETY: checked writable.
        unsafe { write(out, dtype as u32) };
        Ok(())
    })
}

/// Writes the dims of input or output `index`: `*dims` points to `*rank` values, -1 for a
/// dynamic dim (dim 0 is the batch dim of batchable models). The array belongs to the model
/// handle and lives as long as it.
///
/// # Safety
/// `model` is NULL or a live model handle; `dims` and `rank` are writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_io_shape(
    model: *const KilnModel,
    io: u32,
    index: usize,
    dims: *mut *const i64,
    rank: *mut usize,
) -> KilnStatus {
    guard(|| {
        let dims_out = out_ptr(dims, "dims")?;
        let rank_out = out_ptr(rank, "rank")?;
        // SAFETY: forwarded contract.
        let io = unsafe { model_arg(model) }?.io(io, index)?;
        // SAFETY: both checked writable.
        unsafe { write_dims(dims_out, rank_out, &io.dims) };
        Ok(())
    })
}

/// Writes the model's state (a `KILN_MODEL_STATE_*` value).
///
/// # Safety
/// `model` is NULL or a live model handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_state(model: *const KilnModel, out: *mut u32) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let state = match unsafe { model_arg(model) }?.handle.status().state {
            ModelState::Loading => KilnModelState::Loading,
            ModelState::Warming => KilnModelState::Warming,
            ModelState::Ready => KilnModelState::Ready,
            ModelState::Draining => KilnModelState::Draining,
            ModelState::Unloaded => KilnModelState::Unloaded,
            ModelState::Failed { .. } => KilnModelState::Failed,
        };
        // SAFETY: checked writable.
        unsafe { write(out, state as u32) };
        Ok(())
    })
}

/// Writes one of the scheduler's counters: `succeeded`, `failed`, `overloaded`, `expired`,
/// `cancelled`, `batches`, `rows`, `queued`. After an unload all read 0.
///
/// # Safety
/// `model` is NULL or a live model handle; `name` is a NUL-terminated string; `out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_counter(
    model: *const KilnModel,
    name: *const c_char,
    out: *mut u64,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let model = unsafe { model_arg(model) }?;
        // SAFETY: NUL-terminated by contract.
        let name = unsafe { text(name, "name") }?;
        let s = model.handle.stats().unwrap_or_default();
        let value = match name {
            "succeeded" => s.succeeded,
            "failed" => s.failed,
            "overloaded" => s.overloaded,
            "expired" => s.expired,
            "cancelled" => s.cancelled,
            "batches" => s.batches,
            "rows" => s.rows,
            "queued" => s.queued as u64,
            _ => {
                return Err(Failure::new(
                    KilnStatus::OutOfRange,
                    format!("unknown counter `{name}`; the counters are succeeded, failed, overloaded, expired, cancelled, batches, rows, queued"),
                ))
            }
        };
        // SAFETY: checked writable.
        unsafe { write(out, value) };
        Ok(())
    })
}

/// Copies how many batches ran with each size: `counts[n]` is the number of batches of `n`
/// rows, for `n` < `capacity`. Writes the histogram's full length to `len` (sizes up to
/// `len - 1` occurred); pass a larger buffer if it exceeds `capacity` (the status is still OK).
///
/// # Safety
/// `model` is NULL or a live model handle; `counts` points to `capacity` writable values (or
/// is NULL with `capacity` 0); `len` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_batch_sizes(
    model: *const KilnModel,
    counts: *mut u64,
    capacity: usize,
    len: *mut usize,
) -> KilnStatus {
    guard(|| {
        let len_out = out_ptr(len, "len")?;
        if capacity > 0 && counts.is_null() {
            return Err(Failure::new(KilnStatus::NullPointer, "`counts` is NULL"));
        }
        // SAFETY: forwarded contract.
        let sizes = unsafe { model_arg(model) }?
            .handle
            .stats()
            .unwrap_or_default()
            .batch_sizes;
        let used = sizes.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        for i in 0..capacity {
            // SAFETY: `counts` has `capacity` writable slots.
            unsafe { counts.add(i).write(sizes.get(i).copied().unwrap_or(0)) };
        }
        // SAFETY: checked writable.
        unsafe { write(len_out, used) };
        Ok(())
    })
}

/// Stops the model: admits no new request (they fail with `KILN_STATUS_UNAVAILABLE`),
/// finishes the admitted ones (up to `drain_timeout_ms`), then releases the session. The
/// handle stays valid for state, metadata and counters until freed. Safe to call twice and
/// concurrently with inference.
///
/// # Safety
/// `model` is NULL or a live model handle.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_unload(model: *const KilnModel) -> KilnStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        unsafe { model_arg(model) }?.handle.shutdown();
        Ok(())
    })
}

/// Unloads (as `kiln_model_unload`) and frees a model handle. NULL does nothing. Call it
/// only after every other call on this handle has returned.
///
/// # Safety
/// `model` is NULL or a handle from `kiln_model_load` not freed before.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_free(model: *mut KilnModel) {
    // SAFETY: forwarded contract; dropping the model unloads it (`Drop`).
    unsafe { free_handle(model) }
}
