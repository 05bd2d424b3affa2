// Package kiln runs verified ONNX models from Go through libkiln's C ABI (cgo), with the
// Rust runtime's batching: Model.Infer is safe from any number of goroutines, and concurrent
// calls are batched together by the scheduler.
//
// Build against an installed libkiln (make install PREFIX=...): cgo finds it through
// pkg-config, so set PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig (and LD_LIBRARY_PATH=$PREFIX/lib,
// or an rpath, to run).
//
// Errors are *Error values carrying the KILN_STATUS_* code and the library's message. The
// message is read in the same C call that failed: a goroutine can move to another OS thread
// between two cgo calls, and libkiln's last-error message is per thread.
package kiln

/*
#cgo pkg-config: kiln
#include <stdlib.h>
#include "kiln.h"

// The message of a failure on this thread, copied into malloc'd memory (the caller frees),
// taken right after the call that failed, on the same OS thread.
static char *kiln_go_message(KilnStatus s) {
	if (s == KILN_STATUS_OK) return NULL;
	size_t needed = 0;
	kiln_last_error_copy(NULL, 0, &needed);
	if (needed == 0) needed = 1;
	char *msg = malloc(needed);
	if (msg == NULL) return NULL;
	kiln_last_error_copy(msg, needed, NULL);
	return msg;
}

static KilnStatus go_runtime_create(const char *path, KilnRuntime **out, char **msg) {
	KilnStatus s = kiln_runtime_create(path, out);
	*msg = kiln_go_message(s);
	return s;
}

static KilnStatus go_options_set(KilnModelOptions *o, const char *k, const char *v, char **msg) {
	KilnStatus s = kiln_model_options_set(o, k, v);
	*msg = kiln_go_message(s);
	return s;
}

static KilnStatus go_model_load(const KilnRuntime *r, const char *name, const char *path,
                                const KilnModelOptions *o, KilnModel **out, char **msg) {
	KilnStatus s = kiln_model_load(r, name, path, o, out);
	*msg = kiln_go_message(s);
	return s;
}

static KilnStatus go_add_input(KilnRequest *req, const char *name, uint32_t dtype,
                               const int64_t *shape, size_t rank, const void *data,
                               size_t len, char **msg) {
	KilnStatus s = kiln_request_add_input(req, name, dtype, shape, rank, data, len);
	*msg = kiln_go_message(s);
	return s;
}

static KilnStatus go_infer(const KilnModel *m, const KilnRequest *req, uint64_t timeout_ms,
                           KilnResult **out, char **msg) {
	KilnStatus s = kiln_model_infer(m, req, timeout_ms, out);
	*msg = kiln_go_message(s);
	return s;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"strconv"
	"time"
	"unsafe"
)

// Status is a KILN_STATUS_* code.
type Status uint32

// The status codes callers branch on (kiln.h lists them all).
const (
	StatusOK               Status = 0
	StatusInvalidArgument  Status = 1
	StatusChecksumMismatch Status = 5
	StatusUnknownInput     Status = 8
	StatusDtypeMismatch    Status = 9
	StatusShapeMismatch    Status = 10
	StatusOverloaded       Status = 12
	StatusDeadlineExceeded Status = 13
	StatusUnavailable      Status = 14
)

// Error is a failed libkiln call: its status, the status's short name and the message.
type Error struct {
	Status  Status
	Name    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("kiln: %s (%d): %s", e.Name, e.Status, e.Message)
}

// check turns a status and the message captured with it into an error (nil for OK).
func check(s C.KilnStatus, msg *C.char) error {
	if msg != nil {
		defer C.free(unsafe.Pointer(msg))
	}
	if s == C.KILN_STATUS_OK {
		return nil
	}
	return &Error{
		Status:  Status(s),
		Name:    C.GoString(C.kiln_status_name(C.uint32_t(s))),
		Message: C.GoString(msg),
	}
}

// DType is a KILN_DTYPE_* element type.
type DType uint32

// Element types.
const (
	Float32 DType = 1
	Uint8   DType = 2
	Int8    DType = 3
	Int32   DType = 6
	Int64   DType = 7
	String  DType = 8
	Bool    DType = 9
	Float64 DType = 11
)

// Tensor is a named tensor: its element type, shape (dim 0: rows) and row-major bytes in
// native byte order (a String tensor's elements each a 4-byte little-endian length and that
// many bytes of UTF-8, as Triton's BYTES).
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
}

// Float32Tensor makes a float32 tensor from values (copied).
func Float32Tensor(name string, shape []int64, values []float32) Tensor {
	return Tensor{Name: name, DType: Float32, Shape: shape, Data: rawBytes(values)}
}

// Int32Tensor makes an int32 tensor from values (copied).
func Int32Tensor(name string, shape []int64, values []int32) Tensor {
	return Tensor{Name: name, DType: Int32, Shape: shape, Data: rawBytes(values)}
}

// rawBytes copies 4-byte values into their native-order bytes.
func rawBytes[T float32 | int32](values []T) []byte {
	data := make([]byte, 4*len(values))
	if len(values) > 0 {
		copy(data, unsafe.Slice((*byte)(unsafe.Pointer(&values[0])), len(data)))
	}
	return data
}

// StringTensor makes a string tensor from values (UTF-8, no NUL byte; copied).
func StringTensor(name string, shape []int64, values []string) Tensor {
	size := 0
	for _, v := range values {
		size += 4 + len(v)
	}
	data := make([]byte, 0, size)
	for _, v := range values {
		n := uint32(len(v))
		data = append(data, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
		data = append(data, v...)
	}
	return Tensor{Name: name, DType: String, Shape: shape, Data: data}
}

// Strings reads a string tensor's values.
func (t Tensor) Strings() ([]string, error) {
	if t.DType != String {
		return nil, fmt.Errorf("kiln: tensor %q is dtype %d, not string", t.Name, t.DType)
	}
	var out []string
	for data := t.Data; len(data) > 0; {
		if len(data) < 4 {
			return nil, fmt.Errorf("kiln: tensor %q: a string's length is cut short", t.Name)
		}
		n := uint64(data[0]) | uint64(data[1])<<8 | uint64(data[2])<<16 | uint64(data[3])<<24
		if uint64(len(data)-4) < n {
			return nil, fmt.Errorf("kiln: tensor %q: a string runs past the data", t.Name)
		}
		out = append(out, string(data[4:4+n]))
		data = data[4+n:]
	}
	return out, nil
}

// Float32s reads a float32 tensor's values (copied).
func (t Tensor) Float32s() ([]float32, error) {
	if t.DType != Float32 || len(t.Data)%4 != 0 {
		return nil, fmt.Errorf("kiln: tensor %q is dtype %d, not float32", t.Name, t.DType)
	}
	out := make([]float32, len(t.Data)/4)
	if len(out) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(t.Data)), t.Data)
	}
	return out, nil
}

// Runtime is a loaded ONNX Runtime.
type Runtime struct {
	h *C.KilnRuntime
}

// NewRuntime loads ONNX Runtime from ortLibraryPath, or, when it is "", from
// ORT_DYLIB_PATH, KILN_ORT_DIR, lib/ beside the executable, then the system loader's path.
func NewRuntime(ortLibraryPath string) (*Runtime, error) {
	var path *C.char
	if ortLibraryPath != "" {
		path = C.CString(ortLibraryPath)
		defer C.free(unsafe.Pointer(path))
	}
	var h *C.KilnRuntime
	var msg *C.char
	if err := check(C.go_runtime_create(path, &h, &msg), msg); err != nil {
		return nil, err
	}
	r := &Runtime{h: h}
	runtime.SetFinalizer(r, (*Runtime).Close)
	return r, nil
}

// OrtVersion is the loaded ONNX Runtime's version.
func (r *Runtime) OrtVersion() string {
	var v *C.char
	if C.kiln_runtime_ort_version(r.h, &v) != C.KILN_STATUS_OK {
		return ""
	}
	return C.GoString(v)
}

// Close frees the runtime; models loaded through it keep working.
func (r *Runtime) Close() {
	if r.h != nil {
		C.kiln_runtime_free(r.h)
		r.h = nil
	}
}

// Options are a model's load options: SHA256 pins the model file (the load fails on any
// other bytes); Set holds any other key kiln_model_options_set accepts
// ("max_batch_size", "max_queue_delay_us", "instances", "device", ...).
type Options struct {
	SHA256 string
	Set    map[string]string
}

// Model is a loaded, verified, warmed model with its scheduler running.
type Model struct {
	h *C.KilnModel
}

// Load loads, verifies and warms the model at path, named name in errors and logs.
func (r *Runtime) Load(name, path string, opts Options) (*Model, error) {
	var o *C.KilnModelOptions
	if s := C.kiln_model_options_create(&o); s != C.KILN_STATUS_OK {
		return nil, &Error{Status: Status(s), Name: "options", Message: "cannot create options"}
	}
	defer C.kiln_model_options_free(o)
	set := map[string]string{}
	for k, v := range opts.Set {
		set[k] = v
	}
	if opts.SHA256 != "" {
		set["sha256"] = opts.SHA256
	}
	for k, v := range set {
		ck, cv := C.CString(k), C.CString(v)
		var msg *C.char
		err := check(C.go_options_set(o, ck, cv, &msg), msg)
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
		if err != nil {
			return nil, err
		}
	}
	cname, cpath := C.CString(name), C.CString(path)
	defer C.free(unsafe.Pointer(cname))
	defer C.free(unsafe.Pointer(cpath))
	var h *C.KilnModel
	var msg *C.char
	if err := check(C.go_model_load(r.h, cname, cpath, o, &h, &msg), msg); err != nil {
		return nil, err
	}
	m := &Model{h: h}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Infer runs one request (inputs, dim 0 of each its rows) and returns the outputs by name.
// It blocks until the answer; timeout > 0 is the request's deadline (queue wait included).
// Safe from many goroutines at once: their requests are batched together.
func (m *Model) Infer(inputs []Tensor, timeout time.Duration) (map[string]Tensor, error) {
	var req *C.KilnRequest
	if s := C.kiln_request_create(&req); s != C.KILN_STATUS_OK {
		return nil, &Error{Status: Status(s), Name: "request", Message: "cannot create a request"}
	}
	defer C.kiln_request_free(req)
	for _, t := range inputs {
		name := C.CString(t.Name)
		var shape *C.int64_t
		if len(t.Shape) > 0 {
			shape = (*C.int64_t)(unsafe.Pointer(&t.Shape[0]))
		}
		var data unsafe.Pointer
		if len(t.Data) > 0 {
			data = unsafe.Pointer(&t.Data[0])
		}
		var msg *C.char
		err := check(C.go_add_input(req, name, C.uint32_t(t.DType), shape, C.size_t(len(t.Shape)),
			data, C.size_t(len(t.Data)), &msg), msg)
		C.free(unsafe.Pointer(name))
		if err != nil {
			return nil, err
		}
	}
	var res *C.KilnResult
	var msg *C.char
	ms := uint64(0)
	if timeout > 0 {
		ms = uint64((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	if err := check(C.go_infer(m.h, req, C.uint64_t(ms), &res, &msg), msg); err != nil {
		return nil, err
	}
	defer C.kiln_result_free(res)
	var n C.size_t
	C.kiln_result_count(res, &n)
	out := make(map[string]Tensor, int(n))
	for i := C.size_t(0); i < n; i++ {
		var name *C.char
		var t *C.KilnTensor
		if C.kiln_result_output(res, i, &name, &t) != C.KILN_STATUS_OK {
			return nil, &Error{Status: StatusInvalidArgument, Name: "result", Message: "output " + strconv.Itoa(int(i))}
		}
		var dtype C.uint32_t
		var dims *C.int64_t
		var rank, size C.size_t
		var data unsafe.Pointer
		C.kiln_tensor_dtype(t, &dtype)
		C.kiln_tensor_shape(t, &dims, &rank)
		if s := C.kiln_tensor_data(t, &data, &size); s != C.KILN_STATUS_OK {
			return nil, &Error{Status: Status(s), Name: "result", Message: "output " + C.GoString(name) + " has no C form"}
		}
		shape := make([]int64, int(rank))
		if rank > 0 {
			copy(shape, unsafe.Slice((*int64)(unsafe.Pointer(dims)), int(rank)))
		}
		tensor := Tensor{Name: C.GoString(name), DType: DType(dtype), Shape: shape}
		tensor.Data = C.GoBytes(data, C.int(size))
		out[tensor.Name] = tensor
	}
	return out, nil
}

// BatchSizes returns how many batches ran with each size (index: rows in the batch).
func (m *Model) BatchSizes() []uint64 {
	counts := make([]uint64, 1024)
	var n C.size_t
	if C.kiln_model_batch_sizes(m.h, (*C.uint64_t)(unsafe.Pointer(&counts[0])), C.size_t(len(counts)), &n) != C.KILN_STATUS_OK {
		return nil
	}
	if int(n) < len(counts) {
		counts = counts[:int(n)]
	}
	return counts
}

// Close stops the model (admitted requests finish) and frees it. Call it after every other
// call on the model has returned.
func (m *Model) Close() {
	if m.h != nil {
		C.kiln_model_free(m.h)
		m.h = nil
	}
}
