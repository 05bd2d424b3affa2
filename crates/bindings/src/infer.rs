//! Requests (inputs copied from caller buffers), blocking inference, and results.
//!
//! Inference is blocking and thread-safe: callers on many threads submit to the same model
//! and the scheduler batches them together; each caller gets back its own rows.

use std::ffi::{c_char, c_void, CString};
use std::time::Duration;

use runtime::{ElementType, InferRequest, Tensor, TensorData};

use crate::model::{model_arg, KilnDtype, KilnModel};
use crate::status::{
    borrow, borrow_mut, free_handle, give, guard, out_ptr, text, write, write_dims, Failure,
    FfiResult, KilnStatus,
};

/// A request being built: named input tensors and a priority.
#[derive(Default)]
pub struct KilnRequest {
    inputs: Vec<(String, Tensor)>,
    priority: usize,
}

/// A tensor owned by the library (an output in a `KilnResult`).
pub struct KilnTensor {
    tensor: Tensor,
    dims: Vec<i64>,
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

/// The tensor's data as raw bytes, without copying.
///
/// # Errors
/// A string tensor: it has no C form (a model with string inputs or outputs does not load
/// through the C ABI, so none reaches here).
fn tensor_bytes(tensor: &Tensor) -> FfiResult<(*const c_void, usize)> {
    let ptr = match tensor.data() {
        TensorData::F32(v) => v.as_ptr().cast(),
        TensorData::F64(v) => v.as_ptr().cast(),
        TensorData::I64(v) => v.as_ptr().cast(),
        TensorData::I32(v) => v.as_ptr().cast(),
        TensorData::I8(v) => v.as_ptr().cast(),
        TensorData::U8(v) => v.as_ptr().cast(),
        // Rust's bool is one byte, 0 or 1: the same as the C ABI's.
        TensorData::Bool(v) => v.as_ptr().cast(),
        TensorData::I16(v) => v.as_ptr().cast(),
        TensorData::U16(v) => v.as_ptr().cast(),
        TensorData::U32(v) => v.as_ptr().cast(),
        TensorData::U64(v) => v.as_ptr().cast(),
        // IEEE half and bfloat16 bit patterns, two bytes each.
        TensorData::F16(v) => v.as_ptr().cast(),
        TensorData::Bf16(v) => v.as_ptr().cast(),
        _ => {
            return Err(Failure::new(
                KilnStatus::InvalidArgument,
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
/// (`byte_len` bytes, row-major, native byte order; `bool` one byte per element). The caller
/// keeps ownership of every buffer; the request holds its own copy.
///
/// Errors: `KILN_STATUS_INVALID_ARGUMENT` for an unknown dtype code, a negative dim, or a
/// `byte_len` that does not match the shape; `KILN_STATUS_NULL_POINTER`. Names, dtypes and
/// shapes are checked against the model when the request runs.
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
        let tensor = tensor_from_bytes(ty, shape, bytes)
            .map_err(|e| Failure::new(e.status, format!("input `{name}`: {}", e.message)))?;
        request.inputs.push((name, tensor));
        Ok(())
    })
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
        let mut call = InferRequest::new(request.inputs.clone()).with_priority(request.priority);
        if timeout_ms > 0 {
            call = call.with_timeout(Duration::from_millis(timeout_ms));
        }
        let outputs = model.handle.infer_blocking(call)?;
        let outputs = outputs
            .into_iter()
            .map(|(name, tensor)| {
                let name = CString::new(name).map_err(|_| {
                    Failure::new(KilnStatus::InvalidModel, "an output name holds NUL")
                })?;
                let dims = tensor.shape().iter().map(|&d| d as i64).collect();
                Ok((name, KilnTensor { tensor, dims }))
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

/// Writes a pointer to a tensor's data (row-major, native byte order) and its size in
/// bytes. The data is owned by the tensor (and so by its result): read it, copy it, do not
/// free it or write to it.
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
        let (ptr, len) = tensor_bytes(&t.tensor)?;
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
        let (ptr, len) = tensor_bytes(&t).expect("f32 has a C form");
        assert_eq!(len, 8);
        assert!(!ptr.is_null());
        let b = tensor_from_bytes(ElementType::Bool, vec![3], &[0, 1, 7]).expect("bool");
        assert_eq!(b.as_slice::<bool>().expect("bool"), &[false, true, true]);
        let i = tensor_from_bytes(ElementType::I64, vec![1, 1], &7i64.to_ne_bytes()).expect("i64");
        assert_eq!(i.as_slice::<i64>().expect("i64"), &[7]);
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
