/*
 * abi_errors.c - bad input through the C ABI: every case must return its status code with a
 * message naming the problem, and nothing may crash or leak (run under valgrind by
 * tests/c_abi.rs).
 *
 *   abi_errors TESTDATA_DIR MLP_SHA256 EXTERNAL_MODEL_SHA256
 *
 * mlp.onnx: `x` float32 [batch, 16] -> `y` float32 [batch, 4].
 * corpus/models/nudenet-320n-external.onnx: a model whose weights are external data
 * (nudenet-320n-external.onnx.data); only its verification is exercised here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static int failures = 0;

/* Checks that `got` is `want` and the thread's last error contains `needle`. */
static void expect(int line, const char *what, KilnStatus got, KilnStatus want, const char *needle) {
  const char *msg = kiln_last_error();
  if (got != want || (needle && !strstr(msg, needle))) {
    fprintf(stderr, "FAIL line %d: %s: got %s (%u) \"%s\", want %s (%u) containing \"%s\"\n",
            line, what, kiln_status_name(got), (unsigned)got, msg, kiln_status_name(want),
            (unsigned)want, needle ? needle : "");
    failures++;
  } else {
    printf("ok   %-44s %-26s %s\n", what, kiln_status_name(got), msg);
  }
}
#define EXPECT(what, call, want, needle) expect(__LINE__, what, (call), (want), (needle))

static char path[4096];
static const char *in(const char *dir, const char *file) {
  snprintf(path, sizeof path, "%s/%s", dir, file);
  return path;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TESTDATA_DIR MLP_SHA256\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1], *sha = argv[2];
  const char *zeros = "0000000000000000000000000000000000000000000000000000000000000000";

  /* NULL everywhere: a status naming the parameter, never a crash. */
  EXPECT("runtime_create(out NULL)", kiln_runtime_create(NULL, NULL), KILN_STATUS_NULL_POINTER, "`out`");
  KilnResult *result = NULL;
  EXPECT("model_infer(model NULL)", kiln_model_infer(NULL, NULL, 0, &result), KILN_STATUS_NULL_POINTER, "`model`");
  EXPECT("model_options_set(options NULL)", kiln_model_options_set(NULL, "x", "y"), KILN_STATUS_NULL_POINTER, "`options`");
  size_t n = 0;
  EXPECT("result_count(result NULL)", kiln_result_count(NULL, &n), KILN_STATUS_NULL_POINTER, "`result`");
  EXPECT("tensor_data(tensor NULL)", kiln_tensor_data(NULL, NULL, NULL), KILN_STATUS_NULL_POINTER, NULL);
  kiln_runtime_free(NULL);
  kiln_model_free(NULL);
  kiln_model_options_free(NULL);
  kiln_request_free(NULL);
  kiln_result_free(NULL);

  KilnRuntime *rt = NULL;
  EXPECT("runtime_create", kiln_runtime_create(NULL, &rt), KILN_STATUS_OK, NULL);
  KilnRuntime *other = NULL;
  EXPECT("runtime_create(other library)", kiln_runtime_create("/nonexistent/libonnxruntime.so", &other),
         KILN_STATUS_LIBRARY_NOT_FOUND, "/nonexistent/libonnxruntime.so");

  /* Options. */
  KilnModelOptions *opts = NULL;
  EXPECT("model_options_create", kiln_model_options_create(&opts), KILN_STATUS_OK, NULL);
  EXPECT("options: unknown key", kiln_model_options_set(opts, "max_batch", "8"), KILN_STATUS_INVALID_ARGUMENT, "unknown option `max_batch`");
  EXPECT("options: bad number", kiln_model_options_set(opts, "max_batch_size", "lots"), KILN_STATUS_INVALID_ARGUMENT, "max_batch_size");
  EXPECT("options: bad digest", kiln_model_options_set_sha256(opts, "abc"), KILN_STATUS_INVALID_ARGUMENT, "sha256");
  EXPECT("options: bad device", kiln_model_options_set(opts, "device", "tpu"), KILN_STATUS_INVALID_ARGUMENT, "device");

  /* Loads that must fail. */
  KilnModel *model = NULL;
  EXPECT("load: no digest, no manifest", kiln_model_load(rt, "mlp", in(dir, "mlp.onnx"), NULL, &model),
         KILN_STATUS_CHECKSUM_MISMATCH, "kiln-manifest.json");
  EXPECT("options: wrong sha256", kiln_model_options_set_sha256(opts, zeros), KILN_STATUS_OK, NULL);
  EXPECT("load: wrong checksum", kiln_model_load(rt, "mlp", in(dir, "mlp.onnx"), opts, &model),
         KILN_STATUS_CHECKSUM_MISMATCH, zeros);
  EXPECT("load: missing file", kiln_model_load(rt, "gone", in(dir, "no-such-model.onnx"), opts, &model),
         KILN_STATUS_IO, "no-such-model.onnx");
  EXPECT("options: verify skip", kiln_model_options_set(opts, "verify", "skip"), KILN_STATUS_OK, NULL);
  EXPECT("load: garbage bytes", kiln_model_load(rt, "garbage", in(dir, "garbage.onnx"), opts, &model),
         KILN_STATUS_INVALID_MODEL, "garbage.onnx");
  EXPECT("load: path NULL", kiln_model_load(rt, "mlp", NULL, opts, &model), KILN_STATUS_NULL_POINTER, "`path`");
  EXPECT("options: bad combination", kiln_model_options_set(opts, "instances", "0"), KILN_STATUS_OK, NULL);
  EXPECT("load: instances 0", kiln_model_load(rt, "mlp", in(dir, "mlp.onnx"), opts, &model),
         KILN_STATUS_INVALID_ARGUMENT, "instances");
  if (model) { fprintf(stderr, "FAIL: a failed load wrote a model\n"); failures++; }

  /* External data: the weights file must be pinned too, and must match (both refused before
   * ONNX Runtime sees the model). */
  if (argc > 3) {
    KilnModelOptions *ext = NULL;
    kiln_model_options_create(&ext);
    kiln_model_options_set_sha256(ext, argv[3]);
    EXPECT("options: external_data_sha256 format", kiln_model_options_set(ext, "external_data_sha256", "no-equals"),
           KILN_STATUS_INVALID_ARGUMENT, "LOCATION=SHA256");
    EXPECT("load: external data not pinned",
           kiln_model_load(rt, "ext", in(dir, "corpus/models/nudenet-320n-external.onnx"), ext, &model),
           KILN_STATUS_CHECKSUM_MISMATCH, "nudenet-320n-external.onnx.data");
    char pin[256];
    snprintf(pin, sizeof pin, "nudenet-320n-external.onnx.data=%s", zeros);
    EXPECT("options: external_data_sha256", kiln_model_options_set(ext, "external_data_sha256", pin), KILN_STATUS_OK, NULL);
    EXPECT("load: external data mismatch",
           kiln_model_load(rt, "ext", in(dir, "corpus/models/nudenet-320n-external.onnx"), ext, &model),
           KILN_STATUS_CHECKSUM_MISMATCH, zeros);
    kiln_model_options_free(ext);
  }

  /* A good load. */
  kiln_model_options_set(opts, "instances", "1");
  kiln_model_options_set_sha256(opts, sha);
  kiln_model_options_set_max_batch_size(opts, 8);
  EXPECT("load: mlp", kiln_model_load(rt, "mlp", in(dir, "mlp.onnx"), opts, &model), KILN_STATUS_OK, NULL);
  kiln_model_options_free(opts);
  if (!model) return 1;
  const char *name = NULL;
  EXPECT("io_name: index out of range", kiln_model_io_name(model, KILN_IO_INPUT, 5, &name), KILN_STATUS_OUT_OF_RANGE, "index 5");
  EXPECT("io_name: bad io kind", kiln_model_io_name(model, 7, 0, &name), KILN_STATUS_INVALID_ARGUMENT, "io kind");
  uint64_t value = 0;
  EXPECT("counter: unknown", kiln_model_counter(model, "bogus", &value), KILN_STATUS_OUT_OF_RANGE, "bogus");

  float x[17 * 16];
  for (int i = 0; i < 17 * 16; i++) x[i] = (float)i / 100.0f;
  int64_t good[2] = {1, 16}, wide[2] = {1, 15}, tall[2] = {17, 16}, negative[2] = {-1, 16};

  /* Requests that must fail when built. */
  KilnRequest *req = NULL;
  kiln_request_create(&req);
  EXPECT("add_input: unknown dtype code", kiln_request_add_input(req, "x", 99, good, 2, x, 64), KILN_STATUS_INVALID_ARGUMENT, "dtype code 99");
  EXPECT("add_input: bytes vs shape", kiln_request_add_input(req, "x", KILN_DTYPE_FLOAT32, good, 2, x, 60), KILN_STATUS_INVALID_ARGUMENT, "60 bytes");
  EXPECT("add_input: negative dim", kiln_request_add_input(req, "x", KILN_DTYPE_FLOAT32, negative, 2, x, 64), KILN_STATUS_INVALID_ARGUMENT, "negative");
  EXPECT("add_input: data NULL", kiln_request_add_input(req, "x", KILN_DTYPE_FLOAT32, good, 2, NULL, 64), KILN_STATUS_NULL_POINTER, "`data`");
  kiln_request_free(req);

  /* Requests that must fail when run: a fresh request per case. */
  struct { const char *what, *input; uint32_t dtype; int64_t *shape; size_t bytes; KilnStatus want; const char *needle; } cases[] = {
      {"infer: unknown input", "z", KILN_DTYPE_FLOAT32, good, 64, KILN_STATUS_UNKNOWN_INPUT, "`z`"},
      {"infer: wrong dtype", "x", KILN_DTYPE_INT32, good, 64, KILN_STATUS_DTYPE_MISMATCH, "float32"},
      {"infer: wrong shape", "x", KILN_DTYPE_FLOAT32, wide, 60, KILN_STATUS_SHAPE_MISMATCH, "[?, 16]"},
      {"infer: over max_batch_size", "x", KILN_DTYPE_FLOAT32, tall, sizeof x, KILN_STATUS_TOO_LARGE, "17 rows"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    kiln_request_create(&req);
    kiln_request_add_input(req, cases[i].input, cases[i].dtype, cases[i].shape, 2, x, cases[i].bytes);
    result = NULL;
    EXPECT(cases[i].what, kiln_model_infer(model, req, 0, &result), cases[i].want, cases[i].needle);
    if (result) { fprintf(stderr, "FAIL: a failed inference wrote a result\n"); failures++; }
    kiln_request_free(req);
  }

  /* A good request, then bad lookups in its result. */
  kiln_request_create(&req);
  kiln_request_add_input(req, "x", KILN_DTYPE_FLOAT32, good, 2, x, 64);
  EXPECT("infer: good", kiln_model_infer(model, req, 5000, &result), KILN_STATUS_OK, NULL);
  const KilnTensor *t = NULL;
  EXPECT("result_find: unknown output", kiln_result_find(result, "q", &t), KILN_STATUS_OUT_OF_RANGE, "no output `q`");
  EXPECT("result_output: index out of range", kiln_result_output(result, 3, NULL, &t), KILN_STATUS_OUT_OF_RANGE, "index 3");
  EXPECT("result_find: y", kiln_result_find(result, "y", &t), KILN_STATUS_OK, NULL);
  const int64_t *dims = NULL;
  size_t rank = 0;
  EXPECT("tensor_shape", kiln_tensor_shape(t, &dims, &rank), KILN_STATUS_OK, NULL);
  if (rank != 2 || dims[0] != 1 || dims[1] != 4) { fprintf(stderr, "FAIL: output shape\n"); failures++; }
  kiln_result_free(result);

  /* The last error survives in a caller buffer; a too-small buffer is reported. */
  kiln_model_counter(model, "bogus", &value);
  char small[8];
  size_t needed = 0;
  EXPECT("last_error_copy: small buffer", kiln_last_error_copy(small, sizeof small, &needed), KILN_STATUS_BUFFER_TOO_SMALL, "bogus");
  if (strlen(small) != sizeof small - 1 || needed <= sizeof small) { fprintf(stderr, "FAIL: truncation\n"); failures++; }
  char big[512];
  EXPECT("last_error_copy: big buffer", kiln_last_error_copy(big, sizeof big, NULL), KILN_STATUS_OK, "bogus");
  if (!strstr(big, "unknown counter `bogus`")) { fprintf(stderr, "FAIL: copy \"%s\"\n", big); failures++; }

  /* Use after unload: a status, not a crash; unloading twice is fine. */
  EXPECT("unload", kiln_model_unload(model), KILN_STATUS_OK, NULL);
  EXPECT("unload again", kiln_model_unload(model), KILN_STATUS_OK, NULL);
  result = NULL;
  EXPECT("infer after unload", kiln_model_infer(model, req, 0, &result), KILN_STATUS_UNAVAILABLE, "not accepting requests");
  uint32_t state = 0;
  EXPECT("state after unload", kiln_model_state(model, &state), KILN_STATUS_OK, NULL);
  if (state != KILN_MODEL_STATE_UNLOADED) { fprintf(stderr, "FAIL: state %u\n", state); failures++; }
  kiln_request_free(req);
  kiln_model_free(model);
  kiln_runtime_free(rt);

  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
