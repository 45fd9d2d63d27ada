// .npy and safetensors: round trips, and every kind of bad file rejected with a
// message that names the file and the tensor.
#include <math.h>
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

// Writes a safetensors file from a header and its data section.
static void write_st(const char *p, const char *header, const void *data, size_t n) {
  uint64_t len = strlen(header);
  FILE *f = fopen(p, "wb");
  fwrite(&len, 8, 1, f);  // little-endian on the hosts we build on
  fwrite(header, 1, len, f);
  fwrite(data, 1, n, f);
  fclose(f);
}

// F16, BF16 and F64 weights are converted to float32 exactly (F64: rounded); an F64
// value beyond float32 and a non-float dtype are refused.
static void test_safetensors_dtypes(void) {
  struct {
    uint16_t h[8];
    uint16_t b[2];
    double d[2];
    int32_t i[1];
  } data = {{0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x7c00, 0x8000, 0x3555},
            {0x3f80, 0xc060},
            {0.1, -1e-3},
            {7}};
  const char *header =
      "{\"h\":{\"dtype\":\"F16\",\"shape\":[8],\"data_offsets\":[0,16]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]},"
      "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[20,36]},"
      "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[36,40]}}";
  char packed[40];  // the struct's fields without padding: offsets 0, 16, 20, 36
  memcpy(packed, data.h, 16);
  memcpy(packed + 16, data.b, 4);
  memcpy(packed + 20, data.d, 16);
  memcpy(packed + 36, data.i, 4);
  write_st(path("dt.safetensors"), header, packed, sizeof packed);
  RtSafetensors st;
  CHECK(rt_st_open(path("dt.safetensors"), &st));
  float h[8], b[2], d[2], i[1];
  int64_t n8 = 8, n2 = 2, n1 = 1;
  CHECK(rt_st_read_f32(&st, "h", 1, &n8, h));
  CHECK(h[0] == 1.0f && h[1] == -2.0f && h[2] == 65504.0f && h[3] == 0x1p-24f &&
        h[4] == 0x1p-14f && h[5] == INFINITY && h[6] == 0.0f && signbit(h[6]) &&
        h[7] == 0x1.554p-2f);
  CHECK(rt_st_read_f32(&st, "b", 1, &n2, b) && b[0] == 1.0f && b[1] == -3.5f);
  CHECK(rt_st_read_f32(&st, "d", 1, &n2, d) && d[0] == 0.1f && d[1] == -1e-3f);
  CHECK(!rt_st_read_f32(&st, "i", 1, &n1, i) && error_has("'i'") && error_has("I32"));
  rt_st_close(&st);

  double huge[1] = {1e300};
  write_st(path("huge.safetensors"),
           "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", huge, 8);
  CHECK(rt_st_open(path("huge.safetensors"), &st));
  CHECK(!rt_st_read_f32(&st, "w", 1, &n1, d) && error_has("outside float32"));
  rt_st_close(&st);
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
  test_safetensors_dtypes();
  test_atomic_write();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
