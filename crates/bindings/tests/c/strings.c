/*
 * strings.c - string tensors (KILN_DTYPE_STRING, Triton's BYTES layout: each element a 4-byte
 * little-endian length and that many bytes) through the C ABI, against a real ONNX graph:
 * 8 threads each send their own rows at once (batched together), every answer is checked
 * exactly; then bad string buffers are refused with their status codes.
 *
 *   strings TESTDATA_DIR STRINGS_SHA256
 *
 * strings.onnx: `text` string [batch, 3] -> `echo` (Identity) and `ids` int64 [batch, 3]
 * (LabelEncoder: "cat" 1, "dog" 2, "ünïcödé" 3, else -1); `n` int64 [batch, 1] -> `label`
 * string [batch, 1] (1 "one", 2 "two", else "other").
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static int failures = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, const char *detail) {
  pthread_mutex_lock(&lock);
  fprintf(stderr, "FAIL %s: %s (%s)\n", what, detail, kiln_last_error());
  failures++;
  pthread_mutex_unlock(&lock);
}

/* Appends one string in BYTES layout; returns the new length. */
static size_t put(uint8_t *buf, size_t at, const char *s) {
  uint32_t n = (uint32_t)strlen(s);
  buf[at] = n & 0xff;
  buf[at + 1] = (n >> 8) & 0xff;
  buf[at + 2] = (n >> 16) & 0xff;
  buf[at + 3] = (n >> 24) & 0xff;
  memcpy(buf + at + 4, s, n);
  return at + 4 + n;
}

/* Element `i` of a BYTES buffer: a pointer to its bytes and its length (-1 past the end). */
static long element(const uint8_t *buf, size_t len, size_t i, const uint8_t **out) {
  size_t at = 0;
  for (;;) {
    if (at + 4 > len) return -1;
    uint32_t n = buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16 | (uint32_t)buf[at + 3] << 24;
    if (at + 4 + n > len) return -1;
    if (i == 0) {
      *out = buf + at + 4;
      return (long)n;
    }
    at += 4 + n;
    i--;
  }
}

static const char *words[] = {"cat", "dog", "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "d" "\xc3\xa9", "bird", "", "a longer sentence"};
static const int64_t ids[] = {1, 2, 3, -1, -1, -1};

struct job {
  const KilnModel *model;
  int thread;
};

static void *client(void *arg) {
  struct job *job = arg;
  for (int round = 0; round < 20; round++) {
    /* Two rows of three words, chosen by thread and round, and two numbers. */
    int pick[6];
    uint8_t text[256];
    size_t len = 0;
    for (int k = 0; k < 6; k++) {
      pick[k] = (job->thread + round + k * 5) % 6;
      len = put(text, len, words[pick[k]]);
    }
    int64_t n[2] = {job->thread % 3, 1 + round % 2};
    int64_t text_shape[2] = {2, 3}, n_shape[2] = {2, 1};
    KilnRequest *req = NULL;
    KilnResult *res = NULL;
    if (kiln_request_create(&req) != KILN_STATUS_OK ||
        kiln_request_add_input(req, "text", KILN_DTYPE_STRING, text_shape, 2, text, len) != KILN_STATUS_OK ||
        kiln_request_add_input(req, "n", KILN_DTYPE_INT64, n_shape, 2, n, sizeof n) != KILN_STATUS_OK) {
      fail("request", "build");
      kiln_request_free(req);
      return NULL;
    }
    KilnStatus s = kiln_model_infer(job->model, req, 30000, &res);
    kiln_request_free(req);
    if (s != KILN_STATUS_OK) {
      fail("infer", kiln_status_name(s));
      return NULL;
    }
    const KilnTensor *echo = NULL, *got_ids = NULL, *label = NULL;
    const void *data = NULL;
    size_t bytes = 0;
    uint32_t dtype = 0;
    if (kiln_result_find(res, "echo", &echo) != KILN_STATUS_OK ||
        kiln_result_find(res, "ids", &got_ids) != KILN_STATUS_OK ||
        kiln_result_find(res, "label", &label) != KILN_STATUS_OK) {
      fail("outputs", "missing");
    } else {
      kiln_tensor_dtype(echo, &dtype);
      kiln_tensor_data(echo, &data, &bytes);
      if (dtype != KILN_DTYPE_STRING || bytes != len || memcmp(data, text, len) != 0)
        fail("echo", "not the input's bytes");
      kiln_tensor_data(got_ids, &data, &bytes);
      const int64_t *v = data;
      for (int k = 0; k < 6; k++)
        if (bytes != 6 * sizeof(int64_t) || v[k] != ids[pick[k]]) fail("ids", words[pick[k]]);
      kiln_tensor_data(label, &data, &bytes);
      for (int r = 0; r < 2; r++) {
        const char *want = n[r] == 1 ? "one" : n[r] == 2 ? "two" : "other";
        const uint8_t *p = NULL;
        long l = element(data, bytes, (size_t)r, &p);
        if (l != (long)strlen(want) || memcmp(p, want, (size_t)l) != 0) fail("label", want);
      }
    }
    kiln_result_free(res);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s TESTDATA_DIR STRINGS_SHA256\n", argv[0]);
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/strings.onnx", argv[1]);
  KilnRuntime *rt = NULL;
  KilnModelOptions *opts = NULL;
  KilnModel *model = NULL;
  if (kiln_runtime_create(NULL, &rt) != KILN_STATUS_OK || kiln_model_options_create(&opts) != KILN_STATUS_OK ||
      kiln_model_options_set_sha256(opts, argv[2]) != KILN_STATUS_OK ||
      kiln_model_options_set_max_batch_size(opts, 16) != KILN_STATUS_OK ||
      kiln_model_options_set_max_queue_delay_us(opts, 2000) != KILN_STATUS_OK ||
      kiln_model_load(rt, "strings", path, opts, &model) != KILN_STATUS_OK) {
    fprintf(stderr, "setup failed: %s\n", kiln_last_error());
    return 1;
  }
  uint32_t dtype = 0;
  kiln_model_io_dtype(model, KILN_IO_INPUT, 0, &dtype);
  if (dtype != KILN_DTYPE_STRING) fail("signature", "input 0 is not KILN_DTYPE_STRING");

  pthread_t threads[8];
  struct job jobs[8];
  for (int t = 0; t < 8; t++) {
    jobs[t] = (struct job){model, t};
    pthread_create(&threads[t], NULL, client, &jobs[t]);
  }
  for (int t = 0; t < 8; t++) pthread_join(threads[t], NULL);
  uint64_t batches = 0, requests = 0;
  kiln_model_counter(model, "batches", &batches);
  kiln_model_counter(model, "succeeded", &requests);
  printf("%llu requests in %llu batches\n", (unsigned long long)requests, (unsigned long long)batches);

  /* Bad string buffers: refused when added, with the reason. */
  int64_t one[2] = {1, 3};
  KilnRequest *req = NULL;
  kiln_request_create(&req);
  uint8_t buf[64];
  size_t len = put(buf, 0, "cat");
  len = put(buf, len, "dog");
  struct { const char *what; const uint8_t *data; size_t len; const char *needle; } bad[] = {
      {"two strings for three", buf, len, "elements"},
      {"a length past the end", (const uint8_t *)"\x09\x00\x00\x00" "cat", 7, "string"},
      {"not UTF-8", (const uint8_t *)"\x01\x00\x00\x00\xff" "\x01\x00\x00\x00" "a" "\x01\x00\x00\x00" "b", 15, "UTF-8"},
      {"a NUL inside", (const uint8_t *)"\x03\x00\x00\x00" "a\0b" "\x01\x00\x00\x00" "a" "\x01\x00\x00\x00" "b", 17, "NUL"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    KilnStatus s = kiln_request_add_input(req, "text", KILN_DTYPE_STRING, one, 2, bad[i].data, bad[i].len);
    if (s != KILN_STATUS_INVALID_ARGUMENT || !strstr(kiln_last_error(), bad[i].needle)) {
      fail(bad[i].what, kiln_status_name(s));
    } else {
      printf("ok   %-24s %s\n", bad[i].what, kiln_last_error());
    }
  }
  kiln_request_free(req);
  kiln_model_free(model);
  kiln_model_options_free(opts);
  kiln_runtime_free(rt);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
