//! Requests (inputs copied from caller buffers, or borrowed for the length of each call),
//! blocking inference, and results.
//!
//! Inference is blocking and thread-safe: callers on many threads submit to the same model
//! and the scheduler batches them together; each caller gets back its own rows. Inputs reach
//! the batcher as views (`kiln::TensorView`): a request's own copies are not copied again, and
//! borrowed buffers are read in place — copied once, into the batch buffer (twice when a
//! variable-length dimension is padded), or not at all when the request runs alone.

use std::ffi::{c_char, c_void, CString};
use std::time::Duration;

use runtime::{ElementType, Tensor, TensorSlice, TensorView, ViewRequest};

use crate::model::{model_arg, KilnDtype, KilnModel};
use crate::status::{
    borrow, borrow_mut, free_handle, give, guard, out_ptr, text, write, write_dims, Failure,
    FfiResult, KilnStatus,
};

/// A request being built: named inputs and a priority.
#[derive(Default)]
pub struct KilnRequest {
    inputs: Vec<(String, Input)>,
    priority: usize,
}

/// One input of a request.
enum Input {
    /// The request's own copy.
    Owned(Tensor),
    /// The caller's buffer, read in place by each `kiln_model_infer` (checked when added:
    /// `byte_len` is the shape's elements of `ty`, never a string).
    Borrowed {
        ty: ElementType,
        shape: Vec<usize>,
        data: *const c_void,
        byte_len: usize,
    },
}

impl Input {
    /// The input as a view for one call.
    ///
    /// # Safety
    /// A borrowed buffer is valid and unchanged for `'a` (the caller's contract on
    /// `kiln_request_add_input_borrowed`).
    unsafe fn view(&self) -> FfiResult<TensorView<'_>> {
        match self {
            Self::Owned(t) => Ok(TensorView::of(t)),
            Self::Borrowed {
                ty,
                shape,
                data,
                byte_len,
            } => {
                // SAFETY: forwarded contract.
                let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), *byte_len) };
                // Read in place when the buffer is aligned for its type (and not bool); else
                // through one copy.
                // SAFETY: forwarded contract; `bytes` is the shape's elements of `ty`.
                match unsafe { typed(*ty, bytes) } {
                    Some(slice) => Ok(TensorView::from_slice(shape.clone(), slice)?),
                    None => Ok(TensorView::from(tensor_from_bytes(
                        *ty,
                        shape.clone(),
                        bytes,
                    )?)),
                }
            }
        }
    }
}

/// `bytes` as a slice of `ty`'s elements, if aligned and not bool.
///
/// # Safety
/// `bytes.len()` is a multiple of `ty`'s size; `ty` is not a string.
unsafe fn typed(ty: ElementType, bytes: &[u8]) -> Option<TensorSlice<'_>> {
    macro_rules! cast {
        ($t:ty, $variant:ident) => {{
            let ptr = bytes.as_ptr();
            if ptr.align_offset(std::mem::align_of::<$t>()) != 0 {
                return None;
            }
            let len = bytes.len() / std::mem::size_of::<$t>();
            // SAFETY: aligned, `len` whole elements of a plain numeric type (every bit
            // pattern valid), borrowed for `bytes`' lifetime.
            TensorSlice::$variant(unsafe { std::slice::from_raw_parts(ptr.cast::<$t>(), len) })
        }};
    }
    Some(match ty {
        ElementType::F32 => cast!(f32, F32),
        ElementType::F64 => cast!(f64, F64),
        ElementType::I64 => cast!(i64, I64),
        ElementType::I32 => cast!(i32, I32),
        ElementType::I8 => cast!(i8, I8),
        ElementType::U8 => cast!(u8, U8),
        ElementType::I16 => cast!(i16, I16),
        ElementType::U16 => cast!(u16, U16),
        ElementType::U32 => cast!(u32, U32),
        ElementType::U64 => cast!(u64, U64),
        ElementType::F16 => cast!(runtime::half::f16, F16),
        ElementType::Bf16 => cast!(runtime::half::bf16, Bf16),
        // Bools are always copied: a Rust bool must be 0 or 1, and a byte the caller changed
        // after a check could be neither.
        _ => return None,
    })
}

/// A tensor owned by the library (an output in a `KilnResult`).
pub struct KilnTensor {
    tensor: Tensor,
    dims: Vec<i64>,
    /// A string tensor's buffer form (length-prefixed elements), made once when the result
    /// is: `kiln_tensor_data` hands out a pointer into it. Empty for other types.
    strings: Vec<u8>,
}

impl KilnTensor {
    fn new(tensor: Tensor) -> Self {
        let dims = tensor.shape().iter().map(|&d| d as i64).collect();
        let strings = if tensor.element_type() == ElementType::String {
            tensor.to_le_bytes()
        } else {
            Vec::new()
        };
        Self {
            tensor,
            dims,
            strings,
        }
    }
}

/// The outputs of one inference, in the model's output order.
pub struct KilnResult {
    outputs: Vec<(CString, KilnTensor)>,
}

/// Copies `bytes` (native byte order, row-major) into a tensor of `ty` and `shape`.
fn tensor_from_bytes(ty: ElementType, shape: Vec<usize>, bytes: &[u8]) -> FfiResult<Tensor> {
    // Native byte order is little-endian on every target the C ABI builds for (see lib.rs).
    Ok(Tensor::from_le_bytes(ty, shape, bytes)?)
}

/// The tensor's data as raw bytes, without copying (a string tensor's is its buffer form,
/// made with the result).
///
/// # Errors
/// An element type added to the runtime after this ABI (none today).
fn tensor_bytes(t: &KilnTensor) -> FfiResult<(*const c_void, usize)> {
    let tensor = &t.tensor;
    let ptr = match tensor.data() {
        TensorSlice::F32(v) => v.as_ptr().cast(),
        TensorSlice::F64(v) => v.as_ptr().cast(),
        TensorSlice::I64(v) => v.as_ptr().cast(),
        TensorSlice::I32(v) => v.as_ptr().cast(),
        TensorSlice::I8(v) => v.as_ptr().cast(),
        TensorSlice::U8(v) => v.as_ptr().cast(),
        // Rust's bool is one byte, 0 or 1: the same as the C ABI's.
        TensorSlice::Bool(v) => v.as_ptr().cast(),
        TensorSlice::I16(v) => v.as_ptr().cast(),
        TensorSlice::U16(v) => v.as_ptr().cast(),
        TensorSlice::U32(v) => v.as_ptr().cast(),
        TensorSlice::U64(v) => v.as_ptr().cast(),
        // IEEE half and bfloat16 bit patterns, two bytes each.
        TensorSlice::F16(v) => v.as_ptr().cast(),
        TensorSlice::Bf16(v) => v.as_ptr().cast(),
        TensorSlice::String(_) => return Ok((t.strings.as_ptr().cast(), t.strings.len())),
        _ => {
            return Err(Failure::new(
                KilnStatus::Internal,
                format!("{} tensors have no C form", tensor.element_type()),
            ))
        }
    };
    Ok((ptr, tensor.byte_len()))
}

/// Creates an empty request and writes it to `out`.
///
/// Ownership: free with `kiln_request_free`. A request can be run any number of times (it
/// is not consumed). Thread-safety: a request must not be changed while another thread uses
/// it; running the same request from several threads at once is allowed.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_request_create(out: *mut *mut KilnRequest) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: checked writable.
        unsafe { give(out, KilnRequest::default()) };
        Ok(())
    })
}

/// Frees a request. NULL does nothing.
///
/// # Safety
/// `request` is NULL or a handle from `kiln_request_create` not freed before.
#[no_mangle]
pub unsafe extern "C" fn kiln_request_free(request: *mut KilnRequest) {
    // SAFETY: forwarded contract.
    unsafe { free_handle(request) }
}

/// Adds input `name`: a tensor of `dtype` (a `KILN_DTYPE_*` value) and `shape` (`rank`
/// dims; dim 0 is the rows this request contributes to a batch), copied from `data`
/// (`byte_len` bytes, row-major, native byte order; `bool` one byte per element;
/// `KILN_DTYPE_STRING` each element a 4-byte little-endian length and that many bytes of
/// UTF-8, as Triton's `BYTES`). The caller keeps ownership of every buffer; the request holds
/// its own copy.
///
/// Errors: `KILN_STATUS_INVALID_ARGUMENT` for an unknown dtype code, a negative dim, a
/// `byte_len` that does not match the shape, or strings that are not UTF-8, hold a NUL or
/// are not the shape's count; `KILN_STATUS_NULL_POINTER`. Names, dtypes and shapes are
/// checked against the model when the request runs.
///
/// # Safety
/// `request` is NULL or a live request not in use elsewhere; `name` is a NUL-terminated
/// string; `shape` points to `rank` values (may be NULL when `rank` is 0); `data` points to
/// `byte_len` readable bytes (may be NULL when `byte_len` is 0).
#[no_mangle]
pub unsafe extern "C" fn kiln_request_add_input(
    request: *mut KilnRequest,
    name: *const c_char,
    dtype: u32,
    shape: *const i64,
    rank: usize,
    data: *const c_void,
    byte_len: usize,
) -> KilnStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (request, name, ty, shape, bytes) =
            unsafe { input_args(request, name, dtype, shape, rank, data, byte_len) }?;
        let tensor = tensor_from_bytes(ty, shape, bytes)
            .map_err(|e| Failure::new(e.status, format!("input `{name}`: {}", e.message)))?;
        request.inputs.push((name, Input::Owned(tensor)));
        Ok(())
    })
}

/// Adds input `name` as `kiln_request_add_input` does, but borrows `data` instead of copying
/// it: every `kiln_model_infer` of this request reads the buffer in place (the batcher copies
/// it once, into its batch buffer, or not at all when the batch holds this request alone).
/// Not for strings (`KILN_DTYPE_STRING`: use `kiln_request_add_input`). A buffer not aligned
/// to its element size, and any `bool` buffer, is read through one copy (a padded
/// variable-length input is copied twice: padded, then stacked).
///
/// Ownership: the caller keeps the buffer and must keep it valid and unchanged until the last
/// `kiln_model_infer` with this request has returned (it returns only once the batcher no
/// longer reads the buffer). Errors: as `kiln_request_add_input`, and
/// `KILN_STATUS_INVALID_ARGUMENT` for a string input.
///
/// # Safety
/// As `kiln_request_add_input`, and `data` (`byte_len` bytes) stays valid and unchanged while
/// the request may run, as above.
#[no_mangle]
pub unsafe extern "C" fn kiln_request_add_input_borrowed(
    request: *mut KilnRequest,
    name: *const c_char,
    dtype: u32,
    shape: *const i64,
    rank: usize,
    data: *const c_void,
    byte_len: usize,
) -> KilnStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let (request, name, ty, shape, bytes) =
            unsafe { input_args(request, name, dtype, shape, rank, data, byte_len) }?;
        if ty == ElementType::String {
            return Err(Failure::invalid(format!(
                "input `{name}`: string inputs cannot be borrowed; use kiln_request_add_input"
            )));
        }
        // The sizes are checked now, so a bad one fails here, not at each inference.
        let expected = shape
            .iter()
            .try_fold(ty.size(), |acc, &d| acc.checked_mul(d));
        if expected != Some(bytes.len()) {
            return Err(Failure::invalid(format!(
                "input `{name}`: {} bytes for shape {shape:?} of {ty} ({} expected)",
                bytes.len(),
                expected.map_or_else(|| "more than fits in memory".to_owned(), |n| n.to_string())
            )));
        }
        request.inputs.push((
            name,
            Input::Borrowed {
                ty,
                shape,
                data: bytes.as_ptr().cast(),
                byte_len: bytes.len(),
            },
        ));
        Ok(())
    })
}

/// `kiln_request_add_input*`'s arguments, checked: the request, the input's name, element
/// type, shape and bytes.
type InputArgs<'a> = (
    &'a mut KilnRequest,
    String,
    ElementType,
    Vec<usize>,
    &'a [u8],
);

/// The arguments both `kiln_request_add_input*` take, checked.
///
/// # Safety
/// As `kiln_request_add_input`.
unsafe fn input_args<'a>(
    request: *mut KilnRequest,
    name: *const c_char,
    dtype: u32,
    shape: *const i64,
    rank: usize,
    data: *const c_void,
    byte_len: usize,
) -> FfiResult<InputArgs<'a>> {
    // SAFETY: NULL or live and unshared by contract.
    let request = unsafe { borrow_mut(request, "request") }?;
    // SAFETY: NUL-terminated by contract.
    let name = unsafe { text(name, "name") }?.to_owned();
    let ty = KilnDtype::element_type(dtype)?;
    let dims: &[i64] = if rank == 0 {
        &[]
    } else if shape.is_null() {
        return Err(Failure::new(KilnStatus::NullPointer, "`shape` is NULL"));
    } else {
        // SAFETY: `shape` has `rank` readable values by contract.
        unsafe { std::slice::from_raw_parts(shape, rank) }
    };
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Failure::invalid(format!("input `{name}`: dim {d} of {dims:?} is negative"))
            })
        })
        .collect::<FfiResult<Vec<_>>>()?;
    let bytes: &[u8] = if byte_len == 0 {
        &[]
    } else if data.is_null() {
        return Err(Failure::new(KilnStatus::NullPointer, "`data` is NULL"));
    } else {
        // SAFETY: `data` has `byte_len` readable bytes by contract.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), byte_len) }
    };
    Ok((request, name, ty, shape, bytes))
}

/// Sets the request's priority level (0, the default, is the highest; levels go up to the
/// model's `priority_levels` - 1, checked when it runs).
///
/// # Safety
/// `request` is NULL or a live request not in use elsewhere.
#[no_mangle]
pub unsafe extern "C" fn kiln_request_set_priority(
    request: *mut KilnRequest,
    priority: u32,
) -> KilnStatus {
    guard(|| {
        // SAFETY: NULL or live and unshared by contract.
        unsafe { borrow_mut(request, "request") }?.priority = priority as usize;
        Ok(())
    })
}

/// Runs `request` on `model` and blocks until its outputs are ready; writes the result to
/// `out`. `timeout_ms` > 0 sets a deadline (queue wait included) that can only shorten the
/// model's `default_timeout_ms`; 0 means the model's default.
///
/// Thread-safety: call it from as many threads as you like on the same model; concurrent
/// requests are batched together. Do not call it from inside an async runtime's worker.
///
/// Ownership: free the result with `kiln_result_free`. The request is not consumed.
///
/// Errors: `KILN_STATUS_UNKNOWN_INPUT`, `KILN_STATUS_DTYPE_MISMATCH`,
/// `KILN_STATUS_SHAPE_MISMATCH`, `KILN_STATUS_TOO_LARGE` (each naming the input, expected and
/// actual), `KILN_STATUS_OVERLOADED` (queue full; retry later),
/// `KILN_STATUS_DEADLINE_EXCEEDED`, `KILN_STATUS_UNAVAILABLE` (unloaded),
/// `KILN_STATUS_INFERENCE_FAILED`.
///
/// # Safety
/// `model` is NULL or a live model handle; `request` is NULL or a live request not being
/// changed; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_model_infer(
    model: *const KilnModel,
    request: *const KilnRequest,
    timeout_ms: u64,
    out: *mut *mut KilnResult,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let model = unsafe { model_arg(model) }?;
        // SAFETY: NULL or live by contract.
        let request = unsafe { borrow(request, "request") }?;
        let views = request
            .inputs
            .iter()
            // SAFETY: borrowed buffers are valid and unchanged during this call (the caller's
            // contract on `kiln_request_add_input_borrowed`).
            .map(|(name, input)| Ok((name.clone(), unsafe { input.view() }?)))
            .collect::<FfiResult<Vec<_>>>()?;
        let mut call = ViewRequest::new(views).with_priority(request.priority);
        if timeout_ms > 0 {
            call = call.with_timeout(Duration::from_millis(timeout_ms));
        }
        // Returns only once the batcher no longer reads the request's buffers.
        let outputs = model.handle.infer_view_blocking(call)?;
        let outputs = outputs
            .into_iter()
            .map(|(name, tensor)| {
                let name = CString::new(name).map_err(|_| {
                    Failure::new(KilnStatus::InvalidModel, "an output name holds NUL")
                })?;
                Ok((name, KilnTensor::new(tensor)))
            })
            .collect::<FfiResult<_>>()?;
        // SAFETY: checked writable.
        unsafe { give(out, KilnResult { outputs }) };
        Ok(())
    })
}

/// Frees a result and every tensor and name it holds. NULL does nothing.
///
/// # Safety
/// `result` is NULL or a handle from `kiln_model_infer` not freed before.
#[no_mangle]
pub unsafe extern "C" fn kiln_result_free(result: *mut KilnResult) {
    // SAFETY: forwarded contract.
    unsafe { free_handle(result) }
}

/// Writes the number of outputs in `result`.
///
/// # Safety
/// `result` is NULL or a live result; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_result_count(
    result: *const KilnResult,
    out: *mut usize,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or live by contract.
        let n = unsafe { borrow(result, "result") }?.outputs.len();
        // SAFETY: checked writable.
        unsafe { write(out, n) };
        Ok(())
    })
}

fn output(result: &KilnResult, index: usize) -> FfiResult<&(CString, KilnTensor)> {
    result.outputs.get(index).ok_or_else(|| {
        Failure::new(
            KilnStatus::OutOfRange,
            format!(
                "output index {index} is out of range: the result has {}",
                result.outputs.len()
            ),
        )
    })
}

/// Writes output `index`'s name and tensor (either pointer may be NULL if not wanted). Both
/// belong to the result and live until `kiln_result_free`.
///
/// # Safety
/// `result` is NULL or a live result; `name` and `tensor` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_result_output(
    result: *const KilnResult,
    index: usize,
    name: *mut *const c_char,
    tensor: *mut *const KilnTensor,
) -> KilnStatus {
    guard(|| {
        // SAFETY: NULL or live by contract.
        let (n, t) = output(unsafe { borrow(result, "result") }?, index)?;
        if !name.is_null() {
            // SAFETY: non-NULL and writable by contract.
            unsafe { write(name, n.as_ptr()) };
        }
        if !tensor.is_null() {
            // SAFETY: as above.
            unsafe { write(tensor, t as *const KilnTensor) };
        }
        Ok(())
    })
}

/// Writes the output named `name`. The tensor belongs to the result and lives until
/// `kiln_result_free`. Errors: `KILN_STATUS_OUT_OF_RANGE` if there is no such output.
///
/// # Safety
/// `result` is NULL or a live result; `name` is a NUL-terminated string; `tensor` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_result_find(
    result: *const KilnResult,
    name: *const c_char,
    tensor: *mut *const KilnTensor,
) -> KilnStatus {
    guard(|| {
        let out = out_ptr(tensor, "tensor")?;
        // SAFETY: NULL or live by contract.
        let result = unsafe { borrow(result, "result") }?;
        // SAFETY: NUL-terminated by contract.
        let name = unsafe { text(name, "name") }?;
        let found = result
            .outputs
            .iter()
            .find(|(n, _)| n.to_bytes() == name.as_bytes())
            .ok_or_else(|| {
                let names: Vec<_> = result
                    .outputs
                    .iter()
                    .map(|(n, _)| n.to_string_lossy())
                    .collect();
                Failure::new(
                    KilnStatus::OutOfRange,
                    format!("no output `{name}`; the outputs are {names:?}"),
                )
            })?;
        // SAFETY: checked writable.
        unsafe { write(out, &found.1 as *const KilnTensor) };
        Ok(())
    })
}

/// Writes a tensor's element type (a `KILN_DTYPE_*` value).
///
/// # Safety
/// `tensor` is NULL or a live tensor; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_tensor_dtype(tensor: *const KilnTensor, out: *mut u32) -> KilnStatus {
    guard(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or live by contract.
        let t = unsafe { borrow(tensor, "tensor") }?;
        let dtype = KilnDtype::of(t.tensor.element_type())?;
        // SAFETY: checked writable.
        unsafe { write(out, dtype as u32) };
        Ok(())
    })
}

/// Writes a tensor's shape: `*dims` points to `*rank` values, owned by the tensor.
///
/// # Safety
/// `tensor` is NULL or a live tensor; `dims` and `rank` are writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_tensor_shape(
    tensor: *const KilnTensor,
    dims: *mut *const i64,
    rank: *mut usize,
) -> KilnStatus {
    guard(|| {
        let dims_out = out_ptr(dims, "dims")?;
        let rank_out = out_ptr(rank, "rank")?;
        // SAFETY: NULL or live by contract.
        let t = unsafe { borrow(tensor, "tensor") }?;
        // SAFETY: both checked writable.
        unsafe { write_dims(dims_out, rank_out, &t.dims) };
        Ok(())
    })
}

/// Writes a pointer to a tensor's data (row-major, native byte order; a string tensor's
/// elements each a 4-byte little-endian length and that many bytes of UTF-8, no NUL
/// terminator) and its size in bytes. The data is owned by the tensor (and so by its
/// result): read it, copy it, do not free it or write to it.
///
/// # Safety
/// `tensor` is NULL or a live tensor; `data` and `byte_len` are writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_tensor_data(
    tensor: *const KilnTensor,
    data: *mut *const c_void,
    byte_len: *mut usize,
) -> KilnStatus {
    guard(|| {
        let data_out = out_ptr(data, "data")?;
        let len_out = out_ptr(byte_len, "byte_len")?;
        // SAFETY: NULL or live by contract.
        let t = unsafe { borrow(tensor, "tensor") }?;
        let (ptr, len) = tensor_bytes(t)?;
        // SAFETY: both checked writable.
        unsafe {
            write(data_out, ptr);
            write(len_out, len);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_for_every_type() {
        let t = tensor_from_bytes(
            ElementType::F32,
            vec![2],
            &[1.5f32.to_ne_bytes(), (-2.0f32).to_ne_bytes()].concat(),
        )
        .expect("f32");
        assert_eq!(t.as_slice::<f32>().expect("f32"), &[1.5, -2.0]);
        let (ptr, len) = tensor_bytes(&KilnTensor::new(t.clone())).expect("f32 has a C form");
        assert_eq!(len, 8);
        assert!(!ptr.is_null());
        let b = tensor_from_bytes(ElementType::Bool, vec![3], &[0, 1, 7]).expect("bool");
        assert_eq!(b.as_slice::<bool>().expect("bool"), &[false, true, true]);
        let i = tensor_from_bytes(ElementType::I64, vec![1, 1], &7i64.to_ne_bytes()).expect("i64");
        assert_eq!(i.as_slice::<i64>().expect("i64"), &[7]);
    }

    #[test]
    fn strings_are_length_prefixed_both_ways_and_bad_ones_are_refused() {
        let bytes = [&3u32.to_le_bytes()[..], b"cat", &0u32.to_le_bytes()].concat();
        let t = tensor_from_bytes(ElementType::String, vec![2], &bytes).expect("strings");
        assert_eq!(t.as_slice::<String>().expect("strings"), &["cat", ""]);
        let out = KilnTensor::new(t);
        let (ptr, len) = tensor_bytes(&out).expect("strings have a C form");
        // SAFETY: `ptr` points to `len` bytes owned by `out`, alive here.
        assert_eq!(
            unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) },
            &bytes[..]
        );
        let nul = [&2u32.to_le_bytes()[..], b"a\0"].concat();
        let e = tensor_from_bytes(ElementType::String, vec![1], &nul).expect_err("NUL");
        assert!(e.message.contains("NUL"), "{}", e.message);
        let bad = [&2u32.to_le_bytes()[..], &[0xff, 0xfe]].concat();
        let e = tensor_from_bytes(ElementType::String, vec![1], &bad).expect_err("not UTF-8");
        assert_eq!(e.status, KilnStatus::InvalidArgument, "{}", e.message);
        let e = tensor_from_bytes(ElementType::String, vec![3], &bytes).expect_err("count");
        assert_eq!(e.status, KilnStatus::InvalidArgument, "{}", e.message);
    }

    #[test]
    fn size_mismatch_and_overflow_are_refused() {
        let e = tensor_from_bytes(ElementType::F32, vec![2, 2], &[0; 12]).expect_err("short");
        assert!(e.message.contains("12 bytes"), "{}", e.message);
        let e = tensor_from_bytes(ElementType::F64, vec![usize::MAX, 2], &[]).expect_err("huge");
        assert!(
            e.message.contains("more than fits in memory"),
            "{}",
            e.message
        );
    }
}
