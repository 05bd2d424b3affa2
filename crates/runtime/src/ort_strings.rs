//! String tensors into and out of ONNX Runtime, written and read element by element.
//!
//! ONNX Runtime keeps a string tensor as one C++ `std::string` per element (32 bytes each,
//! plus the text when it is longer than 15 bytes); there is no view of caller memory as there
//! is for numbers. `ort`'s own constructor reaches that through a NUL-terminated `CString`
//! per element and an array of pointers to them: about 56 bytes of transient memory per
//! element on top of what ONNX Runtime keeps, one allocation each. A request of eight million
//! short strings (a 32 MiB JSON body) held a gigabyte while it was converted. Here each
//! element's text is copied straight into the buffer ONNX Runtime sizes for it
//! (`GetResizedStringTensorElementBuffer`), and read back the same way
//! (`GetStringTensorElement`), so nothing but the tensors themselves is ever allocated.
//!
//! The strings given are already checked (UTF-8 by type, no NUL byte: [`crate::Tensor`]
//! refuses one, as ONNX Runtime's C strings would end there).

use std::ptr::{self, NonNull};

use ort::memory::Allocator;
use ort::sys::{ONNXTensorElementDataType, OrtStatusPtr, OrtValue};
use ort::value::{DynValue, Shape, TensorElementType, ValueType};
use ort::AsPointer;

/// Turns an ONNX Runtime status into a result (and frees the status).
fn check(status: OrtStatusPtr) -> Result<(), ort::Error> {
    let Some(status) = NonNull::new(status.0) else {
        return Ok(());
    };
    let api = ort::api();
    // SAFETY: a non-null status from an API call owns its message until released.
    let message = unsafe {
        let text = (api.GetErrorMessage)(status.as_ptr());
        let message = if text.is_null() {
            String::from("ONNX Runtime failed without a message")
        } else {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        };
        (api.ReleaseStatus)(status.as_ptr());
        message
    };
    Err(ort::Error::new(message))
}

/// A string tensor of `shape` holding `strings` (row-major; as many as the shape's count).
pub(crate) fn to_ort(shape: &[i64], strings: &[String]) -> Result<DynValue, ort::Error> {
    let api = ort::api();
    let mut allocator = Allocator::default();
    let mut value: *mut OrtValue = ptr::null_mut();
    // SAFETY: the allocator is ONNX Runtime's default CPU one; `shape` is valid for the call.
    check(unsafe {
        (api.CreateTensorAsOrtValue)(
            allocator.ptr_mut(),
            shape.as_ptr(),
            shape.len(),
            ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING,
            &mut value,
        )
    })?;
    let value = NonNull::new(value)
        .ok_or_else(|| ort::Error::new("ONNX Runtime created no string tensor"))?;
    // SAFETY: `value` is a tensor this call created with `allocator`; the `Value` owns it
    // from here on and releases it when dropped, on error too.
    let tensor: DynValue = unsafe { DynValue::from_ptr(value, Some(&allocator)) };
    for (index, s) in strings.iter().enumerate() {
        let mut buffer: *mut std::ffi::c_char = ptr::null_mut();
        // SAFETY: ONNX Runtime checks `index` against the tensor's size and returns a buffer
        // of `s.len()` bytes (the element resized to it), which is written whole and no more.
        unsafe {
            check((api.GetResizedStringTensorElementBuffer)(
                value.as_ptr(),
                index,
                s.len(),
                &mut buffer,
            ))?;
            if !s.is_empty() {
                ptr::copy_nonoverlapping(s.as_ptr(), buffer.cast::<u8>(), s.len());
            }
        }
    }
    Ok(tensor)
}

/// The shape and strings of an ONNX Runtime string tensor.
pub(crate) fn from_ort(value: &DynValue) -> Result<(&Shape, Vec<String>), ort::Error> {
    let ValueType::Tensor {
        ty: TensorElementType::String,
        shape,
        ..
    } = value.dtype()
    else {
        return Err(ort::Error::new(format!(
            "expected a string tensor, got {}",
            value.dtype()
        )));
    };
    let count = shape.num_elements();
    let api = ort::api();
    let raw = value.ptr();
    let mut strings = Vec::with_capacity(count);
    for index in 0..count {
        let mut len = 0usize;
        // SAFETY: `raw` is a live string tensor; ONNX Runtime checks `index` against its
        // size and writes at most `len` bytes, the length it just reported.
        let text = unsafe {
            check((api.GetStringTensorElementLength)(raw, index, &mut len))?;
            let mut text = Vec::<u8>::with_capacity(len);
            if len > 0 {
                check((api.GetStringTensorElement)(
                    raw,
                    len,
                    index,
                    text.as_mut_ptr().cast(),
                ))?;
                text.set_len(len);
            }
            text
        };
        strings.push(String::from_utf8(text).map_err(|e| {
            ort::Error::new(format!(
                "string output element {index} is not UTF-8: {}",
                e.utf8_error()
            ))
        })?);
    }
    Ok((shape, strings))
}
