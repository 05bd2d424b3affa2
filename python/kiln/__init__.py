"""kiln from Python through libkiln's C ABI (ctypes): numpy arrays in, numpy arrays out.

    import kiln
    runtime = kiln.Runtime()                             # the libkiln in this wheel; ONNX Runtime via KILN_ORT_DIR etc.
    model = kiln.Model(runtime, "model.onnx", sha256="...", max_batch_size=32)
    outputs = model.infer({"x": np.zeros((1, 16), np.float32)})
    outputs = await model.infer_async({"x": ...})      # from asyncio, on a thread

`Model.infer` is thread-safe and releases the GIL while it waits (ctypes does), so calls from a
thread pool run concurrently and the scheduler batches them together. Inputs are read in place
from C-contiguous arrays (libkiln copies them once, into its batch); each output is copied once
into a fresh, writable array. Errors raise a `KilnError` subclass per status
(`ChecksumMismatch`, `Overloaded`, `DeadlineExceeded`, ...) with the library's message.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
from concurrent.futures import Executor
from ctypes import POINTER, byref, c_char_p, c_int32, c_size_t, c_uint32, c_uint64, c_void_p

import numpy as np

__version__ = "0.1.0"

# KILN_DTYPE_* (ONNX TensorProto numbers) <-> numpy.
_TO_CODE = {
    np.dtype(np.float32): 1,
    np.dtype(np.uint8): 2,
    np.dtype(np.int8): 3,
    np.dtype(np.uint16): 4,
    np.dtype(np.int16): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
    np.dtype(np.float16): 10,
    np.dtype(np.float64): 11,
    np.dtype(np.uint32): 12,
    np.dtype(np.uint64): 13,
}
_FROM_CODE = {code: dtype for dtype, code in _TO_CODE.items()}
# KILN_DTYPE_STRING: numpy `str`/`bytes`/object arrays in, object arrays of `str` out (as
# onnxruntime's Python API answers); in the C buffer each element is a 4-byte little-endian
# length and its UTF-8 bytes.
_STRING = 8
_FROM_CODE[_STRING] = np.dtype(object)


def _encode_strings(name: str, array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode()
        elif not isinstance(item, bytes):
            raise TypeError(f"input {name!r}: a string tensor holds {type(item).__name__}, not str or bytes")
        parts.append(len(item).to_bytes(4, "little") + item)
    return b"".join(parts)


def _decode_strings(buffer: bytes, shape: tuple[int, ...]) -> np.ndarray:
    items, at = [], 0
    while at < len(buffer):
        n = int.from_bytes(buffer[at:at + 4], "little")
        items.append(buffer[at + 4:at + 4 + n].decode())
        at += 4 + n
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)
_STATES = ["loading", "warming", "ready", "draining", "unloaded", "failed"]


class KilnError(Exception):
    """A kiln call failed: `status` is the KILN_STATUS_* value, `name` its short name,
    `message` the library's explanation. Each status has its own subclass."""

    status = -1

    def __init__(self, status: int, name: str, message: str):
        super().__init__(f"{name} ({status}): {message}")
        self.status = status
        self.name = name
        self.message = message


class InvalidArgument(KilnError):
    """KILN_STATUS_INVALID_ARGUMENT: a bad option, dtype code or buffer size."""

    status = 1


class LibraryNotFound(KilnError):
    """KILN_STATUS_LIBRARY_NOT_FOUND: ONNX Runtime was not found (the message lists where)."""

    status = 3


class KilnIOError(KilnError):
    """KILN_STATUS_IO: a model file is missing or unreadable."""

    status = 4


class ChecksumMismatch(KilnError):
    """KILN_STATUS_CHECKSUM_MISMATCH: the model's bytes are not the pinned ones."""

    status = 5


class InvalidModel(KilnError):
    """KILN_STATUS_INVALID_MODEL: ONNX Runtime refused the model."""

    status = 6


class ProviderUnavailable(KilnError):
    """KILN_STATUS_PROVIDER_UNAVAILABLE: the requested device (CUDA) cannot be used."""

    status = 7


class UnknownInput(KilnError):
    """KILN_STATUS_UNKNOWN_INPUT: the model has no input of that name."""

    status = 8


class DtypeMismatch(KilnError):
    """KILN_STATUS_DTYPE_MISMATCH: an input's element type is not the model's."""

    status = 9


class ShapeMismatch(KilnError):
    """KILN_STATUS_SHAPE_MISMATCH: an input's shape does not fit the model's."""

    status = 10


class TooLarge(KilnError):
    """KILN_STATUS_TOO_LARGE: more rows or elements than the model admits."""

    status = 11


class Overloaded(KilnError):
    """KILN_STATUS_OVERLOADED: the queue is full; retry later."""

    status = 12


class DeadlineExceeded(KilnError):
    """KILN_STATUS_DEADLINE_EXCEEDED: the request's deadline passed."""

    status = 13


class Unavailable(KilnError):
    """KILN_STATUS_UNAVAILABLE: the model is unloaded."""

    status = 14


class InferenceFailed(KilnError):
    """KILN_STATUS_INFERENCE_FAILED: ONNX Runtime failed while running."""

    status = 15


_ERRORS: dict[int, type[KilnError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument, LibraryNotFound, KilnIOError, ChecksumMismatch, InvalidModel,
        ProviderUnavailable, UnknownInput, DtypeMismatch, ShapeMismatch, TooLarge, Overloaded,
        DeadlineExceeded, Unavailable, InferenceFailed,
    )
}


class _Lib:
    """The loaded libkiln with every function's signature declared."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        h = c_void_p
        sigs = {
            "kiln_last_error": ([], c_char_p),
            "kiln_status_name": ([c_uint32], c_char_p),
            "kiln_abi_version": ([POINTER(c_uint32), POINTER(c_uint32)], c_uint32),
            "kiln_runtime_create": ([c_char_p, POINTER(h)], c_uint32),
            "kiln_runtime_free": ([h], None),
            "kiln_model_options_create": ([POINTER(h)], c_uint32),
            "kiln_model_options_free": ([h], None),
            "kiln_model_options_set": ([h, c_char_p, c_char_p], c_uint32),
            "kiln_model_load": ([h, c_char_p, c_char_p, h, POINTER(h)], c_uint32),
            "kiln_model_free": ([h], None),
            "kiln_model_unload": ([h], c_uint32),
            "kiln_model_state": ([h, POINTER(c_uint32)], c_uint32),
            "kiln_model_counter": ([h, c_char_p, POINTER(c_uint64)], c_uint32),
            "kiln_model_batch_sizes": ([h, POINTER(c_uint64), c_size_t, POINTER(c_size_t)], c_uint32),
            "kiln_model_io_count": ([h, c_uint32, POINTER(c_size_t)], c_uint32),
            "kiln_model_io_name": ([h, c_uint32, c_size_t, POINTER(c_char_p)], c_uint32),
            "kiln_model_io_dtype": ([h, c_uint32, c_size_t, POINTER(c_uint32)], c_uint32),
            "kiln_model_io_shape": (
                [h, c_uint32, c_size_t, POINTER(POINTER(ctypes.c_int64)), POINTER(c_size_t)],
                c_uint32,
            ),
            "kiln_request_create": ([POINTER(h)], c_uint32),
            "kiln_request_free": ([h], None),
            "kiln_request_add_input": (
                [h, c_char_p, c_uint32, POINTER(ctypes.c_int64), c_size_t, c_void_p, c_size_t],
                c_uint32,
            ),
            "kiln_request_add_input_borrowed": (
                [h, c_char_p, c_uint32, POINTER(ctypes.c_int64), c_size_t, c_void_p, c_size_t],
                c_uint32,
            ),
            "kiln_model_infer": ([h, h, c_uint64, POINTER(h)], c_uint32),
            "kiln_result_free": ([h], None),
            "kiln_result_count": ([h, POINTER(c_size_t)], c_uint32),
            "kiln_result_output": ([h, c_size_t, POINTER(c_char_p), POINTER(h)], c_uint32),
            "kiln_tensor_dtype": ([h, POINTER(c_uint32)], c_uint32),
            "kiln_tensor_shape": ([h, POINTER(POINTER(ctypes.c_int64)), POINTER(c_size_t)], c_uint32),
            "kiln_tensor_data": ([h, POINTER(c_void_p), POINTER(c_size_t)], c_uint32),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = res
        self.lib = lib

    def check(self, status: int) -> None:
        """Raises KilnError for a failed status. Same OS thread as the call, so the
        thread-local message is the call's own."""
        if status != 0:
            message = self.lib.kiln_last_error().decode("utf-8", "replace")
            name = self.lib.kiln_status_name(status).decode()
            raise _ERRORS.get(status, KilnError)(status, name, message)


def _default_library() -> str:
    """The libkiln shipped in this package (the wheel's `kiln/_lib/`), else `KILN_LIBRARY`,
    else the system loader's `libkiln.so.0`."""
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", "libkiln.so.0")
    if os.path.exists(bundled):
        return bundled
    return os.environ.get("KILN_LIBRARY", "libkiln.so.0")


class Runtime:
    """The loaded libkiln and ONNX Runtime (`library`: optional path to libkiln, default the
    bundled one; `ort_library`: optional path to libonnxruntime, default KILN_ORT_DIR etc.)."""

    def __init__(self, library: str | None = None, ort_library: str | None = None):
        self._lib = _Lib(library or _default_library())
        handle = c_void_p()
        path = ort_library.encode() if ort_library else None
        self._lib.check(self._lib.lib.kiln_runtime_create(path, byref(handle)))
        self._handle = handle

    def close(self) -> None:
        if self._handle:
            self._lib.lib.kiln_runtime_free(self._handle)
            self._handle = None

    def __del__(self):
        self.close()


class Model:
    """A loaded, verified model with its batching scheduler.

    Options are kiln's keys (`kiln_model_options_set`): sha256, verify, device, version,
    max_batch_size, max_queue_delay_us, instances, ...; values are converted to text.
    """

    def __init__(self, runtime: Runtime, path: str, name: str | None = None, **options):
        self._lib = runtime._lib
        L = self._lib.lib
        opts = c_void_p()
        self._lib.check(L.kiln_model_options_create(byref(opts)))
        try:
            for key, value in options.items():
                if isinstance(value, bool):
                    value = "true" if value else "false"
                elif isinstance(value, (list, tuple)):
                    value = ",".join(str(v) for v in value)
                self._lib.check(L.kiln_model_options_set(opts, key.encode(), str(value).encode()))
            handle = c_void_p()
            self._lib.check(
                L.kiln_model_load(
                    runtime._handle, name.encode() if name else None, path.encode(), opts, byref(handle)
                )
            )
        finally:
            L.kiln_model_options_free(opts)
        self._handle = handle
        self.inputs = self._signature(0)
        self.outputs = self._signature(1)

    def _signature(self, io: int) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        L = self._lib.lib
        n = c_size_t()
        self._lib.check(L.kiln_model_io_count(self._handle, io, byref(n)))
        out = []
        for i in range(n.value):
            name, dtype = c_char_p(), c_uint32()
            dims, rank = POINTER(ctypes.c_int64)(), c_size_t()
            self._lib.check(L.kiln_model_io_name(self._handle, io, i, byref(name)))
            self._lib.check(L.kiln_model_io_dtype(self._handle, io, i, byref(dtype)))
            self._lib.check(L.kiln_model_io_shape(self._handle, io, i, byref(dims), byref(rank)))
            shape = tuple(dims[d] for d in range(rank.value))
            out.append((name.value.decode(), _FROM_CODE[dtype.value], shape))
        return out

    def infer(self, inputs: dict[str, np.ndarray], timeout_ms: int = 0) -> dict[str, np.ndarray]:
        """Runs one request (blocking; thread-safe). Returns fresh numpy arrays.

        Numeric inputs are read in place (borrowed, not copied): do not write to an input
        array from another thread while this call runs."""
        L = self._lib.lib
        request = c_void_p()
        self._lib.check(L.kiln_request_create(byref(request)))
        result = c_void_p()
        lent = []
        try:
            for name, array in inputs.items():
                array = np.asarray(array)
                shape = (ctypes.c_int64 * array.ndim)(*array.shape)
                if array.dtype.kind in "USO":
                    buffer = _encode_strings(name, array)
                    self._lib.check(
                        L.kiln_request_add_input(
                            request, name.encode(), _STRING, shape, array.ndim, buffer, len(buffer),
                        )
                    )
                    continue
                array = np.ascontiguousarray(array)
                code = _TO_CODE.get(array.dtype)
                if code is None:
                    raise TypeError(f"input {name!r}: dtype {array.dtype} is not supported by kiln")
                # Borrowed, not copied: the batcher reads the array in place (copied once,
                # into its batch buffer); `lent` keeps it alive until the call returns.
                lent.append(array)
                self._lib.check(
                    L.kiln_request_add_input_borrowed(
                        request, name.encode(), code, shape, array.ndim,
                        array.ctypes.data_as(c_void_p), array.nbytes,
                    )
                )
            self._lib.check(L.kiln_model_infer(self._handle, request, timeout_ms, byref(result)))
            return self._outputs(result)
        finally:
            L.kiln_result_free(result)
            L.kiln_request_free(request)

    def _outputs(self, result: c_void_p) -> dict[str, np.ndarray]:
        L = self._lib.lib
        n = c_size_t()
        self._lib.check(L.kiln_result_count(result, byref(n)))
        outputs = {}
        for i in range(n.value):
            name, tensor = c_char_p(), c_void_p()
            self._lib.check(L.kiln_result_output(result, i, byref(name), byref(tensor)))
            dtype, dims, rank = c_uint32(), POINTER(ctypes.c_int64)(), c_size_t()
            data, nbytes = c_void_p(), c_size_t()
            self._lib.check(L.kiln_tensor_dtype(tensor, byref(dtype)))
            self._lib.check(L.kiln_tensor_shape(tensor, byref(dims), byref(rank)))
            self._lib.check(L.kiln_tensor_data(tensor, byref(data), byref(nbytes)))
            shape = tuple(dims[d] for d in range(rank.value))
            if dtype.value == _STRING:
                outputs[name.value.decode()] = _decode_strings(ctypes.string_at(data, nbytes.value), shape)
                continue
            # One copy, straight into a fresh array that outlives the result.
            array = np.empty(shape, dtype=_FROM_CODE[dtype.value])
            if array.nbytes != nbytes.value:
                raise InvalidArgument(1, "invalid argument", f"output {name.value!r}: {nbytes.value} bytes for shape {shape}")
            if nbytes.value:
                ctypes.memmove(array.ctypes.data, data, nbytes.value)
            outputs[name.value.decode()] = array
        return outputs

    async def infer_async(
        self,
        inputs: dict[str, np.ndarray],
        timeout_ms: int = 0,
        executor: Executor | None = None,
    ) -> dict[str, np.ndarray]:
        """`infer` from asyncio: runs on `executor` (the loop's default thread pool when None),
        so the event loop keeps running; concurrent awaits are batched like threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self.infer, inputs, timeout_ms))

    def state(self) -> str:
        s = c_uint32()
        self._lib.check(self._lib.lib.kiln_model_state(self._handle, byref(s)))
        return _STATES[s.value]

    def counter(self, name: str) -> int:
        v = c_uint64()
        self._lib.check(self._lib.lib.kiln_model_counter(self._handle, name.encode(), byref(v)))
        return v.value

    def batch_sizes(self) -> dict[int, int]:
        """{rows: batches} for every batch size that occurred."""
        cap = 1025
        counts, length = (c_uint64 * cap)(), c_size_t()
        self._lib.check(self._lib.lib.kiln_model_batch_sizes(self._handle, counts, cap, byref(length)))
        return {i: counts[i] for i in range(min(length.value, cap)) if counts[i]}

    def unload(self) -> None:
        self._lib.check(self._lib.lib.kiln_model_unload(self._handle))

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.lib.kiln_model_free(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
