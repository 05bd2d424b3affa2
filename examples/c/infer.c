/*
 * infer.c - libkiln from C: load the real model (verified by sha256), run it from 8 threads
 * at once, check every answer against the same input run alone, and print the batch sizes
 * the scheduler formed.
 *
 *   cc -std=c11 infer.c -I crates/bindings/include -L <dir of libkiln.so> -lkiln -lpthread
 *   KILN_ORT_DIR=.cache/ort/cpu ./a.out testdata/real/magika.onnx "$(cut -c1-64 testdata/real/magika.onnx.sha256)" \
 *     [REQUESTS_PER_THREAD [TIMEOUT_MS]]
 *
 * TIMEOUT_MS is each request's deadline (default 10000; 0 for none, as under valgrind).
 *
 * Exit status: 0 when every request succeeded and matched, 1 otherwise.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

#define THREADS 8
#define ROW 2048 /* magika: `bytes` int32 [batch, 2048] -> `target_label` float32 [batch, 214] */

static KilnModel *model;
static int requests_per_thread = 32;
static uint64_t timeout_ms = 10000;

/* Prints the failed call and its message, and returns 1. */
static int fail(const char *what, KilnStatus status) {
  fprintf(stderr, "%s failed: %s (status %u): %s\n", what, kiln_status_name(status),
          (unsigned)status, kiln_last_error());
  return 1;
}

/* Runs one row of input `seed` and writes the top class and its score. */
static KilnStatus classify(int seed, int *label, float *score) {
  int32_t row[ROW];
  for (int i = 0; i < ROW; i++) row[i] = (i * 31 + seed * 7) % 257; /* 256 is magika's padding */
  int64_t shape[2] = {1, ROW};
  KilnRequest *request = NULL;
  KilnResult *result = NULL;
  KilnStatus s = kiln_request_create(&request);
  if (s == KILN_STATUS_OK)
    s = kiln_request_add_input(request, "bytes", KILN_DTYPE_INT32, shape, 2, row, sizeof row);
  if (s == KILN_STATUS_OK) s = kiln_model_infer(model, request, timeout_ms, &result);
  const KilnTensor *scores = NULL;
  if (s == KILN_STATUS_OK) s = kiln_result_find(result, "target_label", &scores);
  const void *data = NULL;
  size_t bytes = 0;
  if (s == KILN_STATUS_OK) s = kiln_tensor_data(scores, &data, &bytes);
  if (s == KILN_STATUS_OK) {
    const float *p = data;
    size_t n = bytes / sizeof(float);
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
      if (p[i] > p[best]) best = i;
    *label = (int)best;
    *score = p[best];
  }
  kiln_result_free(result);
  kiln_request_free(request);
  return s;
}

static int expected_label[THREADS];
static float expected_score[THREADS];

static void *worker(void *arg) {
  int id = (int)(size_t)arg;
  long bad = 0;
  for (int r = 0; r < requests_per_thread; r++) {
    int label;
    float score;
    KilnStatus s = classify(id, &label, &score);
    if (s != KILN_STATUS_OK) {
      fail("kiln_model_infer", s);
      bad++;
    } else if (label != expected_label[id] || fabsf(score - expected_score[id]) > 1e-4f) {
      fprintf(stderr, "thread %d: got class %d (%.6f), alone it was %d (%.6f)\n", id, label,
              score, expected_label[id], expected_score[id]);
      bad++;
    }
  }
  return (void *)bad;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.onnx SHA256 [REQUESTS_PER_THREAD [TIMEOUT_MS]]\n", argv[0]);
    return 2;
  }
  if (argc > 3) requests_per_thread = atoi(argv[3]);
  if (argc > 4) timeout_ms = strtoull(argv[4], NULL, 10);

  uint32_t major = 0, minor = 0;
  kiln_abi_version(&major, &minor);
  if (major != KILN_ABI_MAJOR) {
    fprintf(stderr, "libkiln ABI %u.%u, header %d.%d\n", major, minor, KILN_ABI_MAJOR, KILN_ABI_MINOR);
    return 1;
  }

  KilnRuntime *runtime = NULL;
  KilnStatus s = kiln_runtime_create(NULL, &runtime);
  if (s != KILN_STATUS_OK) return fail("kiln_runtime_create", s);
  const char *ort = NULL;
  kiln_runtime_ort_version(runtime, &ort);
  printf("kiln %s (ABI %u.%u), ONNX Runtime %s\n", kiln_version(), major, minor, ort);

  KilnModelOptions *options = NULL;
  s = kiln_model_options_create(&options);
  if (s == KILN_STATUS_OK) s = kiln_model_options_set_sha256(options, argv[2]);
  if (s == KILN_STATUS_OK) s = kiln_model_options_set_max_batch_size(options, 16);
  if (s == KILN_STATUS_OK) s = kiln_model_options_set(options, "max_queue_delay_us", "2000");
  if (s == KILN_STATUS_OK) s = kiln_model_options_set(options, "version", "example");
  if (s != KILN_STATUS_OK) return fail("options", s);
  s = kiln_model_load(runtime, "magika", argv[1], options, &model);
  kiln_model_options_free(options);
  if (s != KILN_STATUS_OK) return fail("kiln_model_load", s);

  size_t inputs = 0, outputs = 0;
  kiln_model_io_count(model, KILN_IO_INPUT, &inputs);
  kiln_model_io_count(model, KILN_IO_OUTPUT, &outputs);
  for (int io = 0; io < 2; io++) {
    for (size_t i = 0; i < (io ? outputs : inputs); i++) {
      const char *name;
      uint32_t dtype;
      const int64_t *dims;
      size_t rank;
      kiln_model_io_name(model, io, i, &name);
      kiln_model_io_dtype(model, io, i, &dtype);
      kiln_model_io_shape(model, io, i, &dims, &rank);
      printf("%s %s: dtype %u, shape [", io ? "output" : "input", name, dtype);
      for (size_t d = 0; d < rank; d++) printf("%s%lld", d ? ", " : "", (long long)dims[d]);
      printf("]\n");
    }
  }

  /* Each thread's input alone first: the answers batching must reproduce. */
  for (int t = 0; t < THREADS; t++) {
    s = classify(t, &expected_label[t], &expected_score[t]);
    if (s != KILN_STATUS_OK) return fail("kiln_model_infer (alone)", s);
    printf("input %d alone: class %d, score %.4f\n", t, expected_label[t], expected_score[t]);
  }

  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, worker, (void *)(size_t)t);
  long bad = 0;
  for (int t = 0; t < THREADS; t++) {
    void *r;
    pthread_join(threads[t], &r);
    bad += (long)r;
  }

  uint64_t counts[64];
  size_t len = 0;
  kiln_model_batch_sizes(model, counts, 64, &len);
  uint64_t batches = 0, rows = 0, succeeded = 0;
  kiln_model_counter(model, "batches", &batches);
  kiln_model_counter(model, "rows", &rows);
  kiln_model_counter(model, "succeeded", &succeeded);
  printf("%d threads x %d requests: %llu succeeded, %ld wrong or failed\n", THREADS,
         requests_per_thread, (unsigned long long)succeeded, bad);
  printf("batches: %llu for %llu rows (mean %.2f rows per batch)\n", (unsigned long long)batches,
         (unsigned long long)rows, batches ? (double)rows / (double)batches : 0.0);
  printf("batch sizes seen:");
  for (size_t i = 1; i < len && i < 64; i++)
    if (counts[i]) printf(" %zu:%llu", i, (unsigned long long)counts[i]);
  printf("\n");

  kiln_model_unload(model);
  uint32_t state = 0;
  kiln_model_state(model, &state);
  printf("state after unload: %u (KILN_MODEL_STATE_UNLOADED = %d)\n", state, KILN_MODEL_STATE_UNLOADED);
  kiln_model_free(model);
  kiln_runtime_free(runtime);
  return bad == 0 && state == KILN_MODEL_STATE_UNLOADED ? 0 : 1;
}
