/*
 * borrowed.c - inputs borrowed from the caller (kiln_request_add_input_borrowed): read in
 * place by every kiln_model_infer of the request. 8 threads run borrowed requests at once
 * (batched together) and every answer must equal the same input added by copy and run alone;
 * a buffer the caller rewrites between two runs of one request is read anew each time; a
 * misaligned buffer is read through a copy; strings and wrong sizes are refused.
 *
 *   borrowed TESTDATA_DIR MLP_SHA256
 *
 * mlp.onnx: `x` float32 [batch, 16] -> `y` float32 [batch, 4].
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static int failures = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const KilnModel *model;

static void fail(const char *what) {
  pthread_mutex_lock(&lock);
  fprintf(stderr, "FAIL %s: %s\n", what, kiln_last_error());
  failures++;
  pthread_mutex_unlock(&lock);
}

static void fill(float *x, int rows, int seed) {
  for (int i = 0; i < rows * 16; i++) x[i] = (float)((i * 7 + seed * 13) % 101) / 101.0f - 0.5f;
}

/* Runs `x` (rows x 16) borrowed or copied; writes rows x 4 outputs to `y`. 0 on success. */
static int run(const float *x, int rows, int borrowed, float *y) {
  int64_t shape[2] = {rows, 16};
  size_t n = sizeof(float) * 16 * (size_t)rows;
  KilnRequest *req = NULL;
  KilnResult *res = NULL;
  /* A borrowed buffer lives on the heap only until kiln_model_infer returns: poisoned and
     freed right after, so a read after the call is garbage here and an error under valgrind. */
  float *lent = borrowed ? malloc(n) : NULL;
  if (borrowed) memcpy(lent, x, n);
  KilnStatus s = kiln_request_create(&req);
  if (s == KILN_STATUS_OK)
    s = borrowed ? kiln_request_add_input_borrowed(req, "x", KILN_DTYPE_FLOAT32, shape, 2, lent, n)
                 : kiln_request_add_input(req, "x", KILN_DTYPE_FLOAT32, shape, 2, x, n);
  if (s == KILN_STATUS_OK) s = kiln_model_infer(model, req, 30000, &res);
  kiln_request_free(req);
  if (lent) {
    memset(lent, 0xff, n);
    free(lent);
  }
  if (s != KILN_STATUS_OK) return -1;
  const KilnTensor *t = NULL;
  const void *data = NULL;
  size_t bytes = 0;
  if (kiln_result_find(res, "y", &t) != KILN_STATUS_OK || kiln_tensor_data(t, &data, &bytes) != KILN_STATUS_OK ||
      bytes != sizeof(float) * 4 * (size_t)rows) {
    kiln_result_free(res);
    return -1;
  }
  memcpy(y, data, bytes);
  kiln_result_free(res);
  return 0;
}

static void *client(void *arg) {
  int thread = (int)(intptr_t)arg;
  float x[3 * 16], want[3 * 4], got[3 * 4];
  for (int round = 0; round < 40; round++) {
    int rows = 1 + (thread + round) % 3;
    fill(x, rows, thread * 100 + round);
    if (run(x, rows, 0, want) != 0 || run(x, rows, 1, got) != 0) {
      fail("infer");
      return NULL;
    }
    if (memcmp(want, got, sizeof(float) * 4 * rows) != 0) fail("a borrowed answer differs from the copied one");
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TESTDATA_DIR MLP_SHA256\n", argv[0]);
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/mlp.onnx", argv[1]);
  KilnRuntime *rt = NULL;
  KilnModelOptions *opts = NULL;
  KilnModel *m = NULL;
  if (kiln_runtime_create(NULL, &rt) != KILN_STATUS_OK || kiln_model_options_create(&opts) != KILN_STATUS_OK ||
      kiln_model_options_set_sha256(opts, argv[2]) != KILN_STATUS_OK ||
      kiln_model_options_set_max_batch_size(opts, 32) != KILN_STATUS_OK ||
      kiln_model_options_set_max_queue_delay_us(opts, 2000) != KILN_STATUS_OK ||
      kiln_model_load(rt, "mlp", path, opts, &m) != KILN_STATUS_OK) {
    fprintf(stderr, "setup failed: %s\n", kiln_last_error());
    return 1;
  }
  model = m;

  pthread_t threads[8];
  for (int t = 0; t < 8; t++) pthread_create(&threads[t], NULL, client, (void *)(intptr_t)t);
  for (int t = 0; t < 8; t++) pthread_join(threads[t], NULL);

  /* One request, its buffer rewritten between two runs: each run reads what is there. */
  float x[16], want[4], got[4];
  int64_t one[2] = {1, 16};
  KilnRequest *req = NULL;
  kiln_request_create(&req);
  if (kiln_request_add_input_borrowed(req, "x", KILN_DTYPE_FLOAT32, one, 2, x, sizeof x) != KILN_STATUS_OK) fail("add");
  for (int seed = 0; seed < 2; seed++) {
    fill(x, 1, 1000 + seed);
    KilnResult *res = NULL;
    const KilnTensor *t = NULL;
    const void *data = NULL;
    size_t bytes = 0;
    if (kiln_model_infer(model, req, 30000, &res) != KILN_STATUS_OK || kiln_result_find(res, "y", &t) != KILN_STATUS_OK ||
        kiln_tensor_data(t, &data, &bytes) != KILN_STATUS_OK) {
      fail("rerun");
    } else {
      memcpy(got, data, sizeof got);
      if (run(x, 1, 0, want) != 0 || memcmp(want, got, sizeof got) != 0) fail("a rerun did not read the rewritten buffer");
    }
    kiln_result_free(res);
  }
  kiln_request_free(req);

  /* A misaligned buffer: read through a copy, same answer. */
  char raw[sizeof(float) * 16 + 1];
  fill(x, 1, 7);
  memcpy(raw + 1, x, sizeof x);
  if (run((const float *)(void *)(raw + 1), 1, 1, got) != 0 || run(x, 1, 0, want) != 0 || memcmp(want, got, sizeof got) != 0)
    fail("misaligned");

  /* Refused when added: a string input, a size that does not match the shape. */
  kiln_request_create(&req);
  int64_t three[1] = {3};
  KilnStatus s = kiln_request_add_input_borrowed(req, "text", KILN_DTYPE_STRING, three, 1, raw, 4);
  if (s != KILN_STATUS_INVALID_ARGUMENT || !strstr(kiln_last_error(), "cannot be borrowed")) fail("string borrowed");
  s = kiln_request_add_input_borrowed(req, "x", KILN_DTYPE_FLOAT32, one, 2, x, sizeof x - 4);
  if (s != KILN_STATUS_INVALID_ARGUMENT || !strstr(kiln_last_error(), "bytes for shape")) fail("short buffer");
  kiln_request_free(req);

  uint64_t batches = 0, requests = 0;
  kiln_model_counter(model, "batches", &batches);
  kiln_model_counter(model, "succeeded", &requests);
  printf("%llu requests in %llu batches\n", (unsigned long long)requests, (unsigned long long)batches);
  kiln_model_free(m);
  kiln_model_options_free(opts);
  kiln_runtime_free(rt);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
