// .npy and safetensors: round trips, and every kind of bad file rejected with a
// message that names the file and the tensor.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alexrt.h"
#include "test.h"

static char dir[] = "/tmp/alexc-test-io-XXXXXX";

static char *path(const char *name) {
  static char buf[256];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

static void write_bytes(const char *p, const void *data, size_t n) {
  FILE *f = fopen(p, "wb");
  fwrite(data, 1, n, f);
  fclose(f);
}

static bool error_has(const char *s) {
  bool ok = strstr(rt_error(), s) != NULL;
  if (!ok)
    fprintf(stderr, "  error was: %s (wanted '%s')\n", rt_error(), s);
  return ok;
}

static void test_npy_roundtrip(void) {
  float data[24];
  for (int i = 0; i < 24; i++)
    data[i] = (float)i * 0.5f - 3;
  int64_t dims[4] = {1, 2, 3, 4};
  CHECK(rt_npy_save(path("a.npy"), data, 4, dims));
  RtTensor t;
  CHECK(rt_npy_load(path("a.npy"), &t));
  CHECK(t.rank == 4 && t.dims[0] == 1 && t.dims[3] == 4 && t.elems == 24);
  CHECK(t.data && !memcmp(t.data, data, sizeof data));
  rt_tensor_free(&t);

  int64_t one[1] = {5};
  CHECK(rt_npy_save(path("v.npy"), data, 1, one));
  CHECK(rt_npy_load(path("v.npy"), &t) && t.rank == 1 && t.dims[0] == 5);
  rt_tensor_free(&t);
}

static void test_npy_bad(void) {
  RtTensor t;
  write_bytes(path("junk.npy"), "hello world", 11);
  CHECK(!rt_npy_load(path("junk.npy"), &t) && error_has("junk.npy") && error_has("magic"));

  // A valid header that promises more data than there is.
  float data[6] = {0};
  int64_t dims[2] = {2, 3};
  CHECK(rt_npy_save(path("t.npy"), data, 2, dims));
  uint8_t *buf;
  size_t n;
  CHECK(rt_read_file(path("t.npy"), 1 << 20, &buf, &n));
  write_bytes(path("trunc.npy"), buf, n - 4);
  CHECK(!rt_npy_load(path("trunc.npy"), &t) && error_has("truncated"));

  // Same header with dtype int32.
  char *d = strstr((char *)buf + 10, "<f4");  // past the binary preamble
  memcpy(d, "<i4", 3);
  write_bytes(path("int.npy"), buf, n);
  CHECK(!rt_npy_load(path("int.npy"), &t) && error_has("'<i4'"));
  free(buf);

  CHECK(!rt_npy_load(path("missing.npy"), &t) && error_has("missing.npy"));

  // Found by fuzzing: a header that ends right after "'descr':" (the error message
  // used to read past the end of the header).
  static const char tail_key[] = "\x93NUMPY\x01\x00\x30\x00"
                                 "{'fortran_order': False, 'shape': (1,), 'descr':";
  write_bytes(path("tail.npy"), tail_key, sizeof tail_key - 1);
  CHECK(!rt_npy_load(path("tail.npy"), &t) && error_has("tail.npy"));
}

static void test_safetensors(void) {
  float w[6] = {1, 2, 3, 4, 5, 6}, b[2] = {7, 8};
  int64_t wd[2] = {2, 3}, bd[1] = {2};
  RtStTensor ts[2] = {{"fc.weight", 2, wd, w}, {"fc.bias", 1, bd, b}};
  CHECK(rt_st_save(path("w.safetensors"), ts, 2));

  RtSafetensors st;
  CHECK(rt_st_open(path("w.safetensors"), &st));
  CHECK(st.n == 2);
  float got[6];
  CHECK(rt_st_read_f32(&st, "fc.weight", 2, wd, got) && !memcmp(got, w, sizeof w));
  CHECK(rt_st_read_f32(&st, "fc.bias", 1, bd, got) && got[1] == 8);
  int64_t wrong[2] = {3, 2};
  CHECK(!rt_st_read_f32(&st, "fc.weight", 2, wrong, got) && error_has("'fc.weight'") &&
        error_has("[2, 3]"));
  CHECK(!rt_st_read_f32(&st, "fc.nope", 1, bd, got) && error_has("missing"));
  rt_st_close(&st);

  uint8_t *buf;
  size_t n;
  CHECK(rt_read_file(path("w.safetensors"), 1 << 20, &buf, &n));
  write_bytes(path("trunc.safetensors"), buf, n - 4);
  CHECK(!rt_st_open(path("trunc.safetensors"), &st) && error_has("trunc.safetensors") &&
        error_has("fc.bias"));
  write_bytes(path("tiny.safetensors"), buf, 5);
  CHECK(!rt_st_open(path("tiny.safetensors"), &st) && error_has("truncated"));

  // An oversized header length.
  uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0};
  write_bytes(path("big.safetensors"), big, sizeof big);
  CHECK(!rt_st_open(path("big.safetensors"), &st) && error_has("header length"));

  // The first tensor's dtype changed to F16: its byte count no longer matches.
  char *dt = strstr((char *)buf + 8, "\"F32\"");
  memcpy(dt, "\"F16\"", 5);
  write_bytes(path("f16.safetensors"), buf, n);
  CHECK(!rt_st_open(path("f16.safetensors"), &st) && error_has("do not match"));
  free(buf);
}

static void test_atomic_write(void) {
  // A failed write (directory does not exist) leaves no file and reports the path.
  CHECK(!rt_write_file_atomic("/nonexistent-dir/x.npy", "a", 1) && error_has("x.npy"));
  // Replacing a file never leaves a temporary behind.
  CHECK(rt_write_file_atomic(path("f"), "one", 3));
  CHECK(rt_write_file_atomic(path("f"), "two!", 4));
  uint8_t *buf;
  size_t n;
  CHECK(rt_read_file(path("f"), 100, &buf, &n) && n == 4 && !memcmp(buf, "two!", 4));
  free(buf);
  CHECK(!rt_read_file(path("f"), 2, &buf, &n) && error_has("limit"));
}

int main(void) {
  if (!mkdtemp(dir))
    return 1;
  test_npy_roundtrip();
  test_npy_bad();
  test_safetensors();
  test_atomic_write();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
