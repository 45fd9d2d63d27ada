// alexrt.h — the runtime library: small, no LLVM, no libyaml.
//
// For now it holds what both the compiler and a deployed model need: reading and
// writing tensors on disk (.npy for inputs/outputs, safetensors for weights), with
// every read bounded and every write atomic (a temporary file renamed into place,
// so a file a user saved is never left half-written).
#ifndef ALEXRT_H
#define ALEXRT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_MAX_RANK 8

// The last error message of a failing rt_* call ("FILE: tensor 'x': ..."), per thread.
const char *rt_error(void);
// Sets rt_error() and returns false (also for callbacks the runtime calls, such as a
// weight lookup, to say why they failed).
bool rt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- whole files

// Reads at most `limit` bytes; a larger file is an error. Caller frees *data.
bool rt_read_file(const char *path, size_t limit, uint8_t **data, size_t *size);
// Writes to PATH.tmp.PID (same directory), fflush, fsync, renames it over PATH, then
// fsyncs the directory: a crash at any moment leaves the old file or the new one.
bool rt_write_file_atomic(const char *path, const void *data, size_t size);
// The same for a file made of n pieces written in order, so that a large file (a
// checkpoint) need not be assembled in memory first.
typedef struct {
  const void *data;
  size_t size;
} RtPiece;
bool rt_write_pieces_atomic(const char *path, const RtPiece *pieces, int n);

// ---- .npy (float32, C order)

typedef struct {
  int rank;
  int64_t dims[RT_MAX_RANK];
  int64_t elems;
  float *data;  // owned
} RtTensor;

// Accepts little-endian float32 ('<f4'), and float64 ('<f8') converted to float32.
bool rt_npy_load(const char *path, RtTensor *out);
bool rt_npy_save(const char *path, const float *data, int rank, const int64_t *dims);
void rt_tensor_free(RtTensor *t);

// ---- safetensors (float32 tensors; header parsed with cJSON)

typedef struct {
  char *name;
  char dtype[16];
  int rank;
  int64_t dims[RT_MAX_RANK];
  int64_t elems;
  size_t offset, nbytes;  // within the data section
} RtStEntry;

typedef struct {
  char *path;
  uint8_t *file;  // the whole file
  size_t file_size;
  const uint8_t *data;  // start of the data section
  size_t data_size;
  RtStEntry *entries;
  int n;
  // The "__metadata__" object's string -> string pairs, in file order (values that
  // are not strings are skipped).
  char **meta_keys, **meta_values;
  int n_meta;
} RtSafetensors;

bool rt_st_open(const char *path, RtSafetensors *st);
void rt_st_close(RtSafetensors *st);
const RtStEntry *rt_st_find(const RtSafetensors *st, const char *name);
// Copies a tensor as float32 after checking its shape; F16, BF16 and F64 data are
// converted (rt_st_convertible), other dtypes refused. Messages name the file and the
// tensor.
bool rt_st_convertible(const char *dtype);
bool rt_st_read_f32(const RtSafetensors *st, const char *name, int rank, const int64_t *dims,
                    float *dst);

typedef struct {
  const char *name;
  int rank;
  const int64_t *dims;
  const float *data;
} RtStTensor;

bool rt_st_save(const char *path, const RtStTensor *tensors, int n);
// The same with a "__metadata__" object of n_meta string pairs (keys[i]: values[i]).
bool rt_st_save_meta(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                     const char *const *values, int n_meta);
// The header of the file rt_st_save_meta writes (*header, *size; caller frees): the
// 8-byte length and the JSON padded to 8 bytes. The file is the header followed by each
// tensor's float32 data in order. `path` only names it in messages.
bool rt_st_header(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                  const char *const *values, int n_meta, uint8_t **header, size_t *size);
// The whole file in memory (*data, *size; caller frees), for tests that alter it.
bool rt_st_encode(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                  const char *const *values, int n_meta, uint8_t **data, size_t *size);
// The value of a "__metadata__" key, or NULL when it has none.
const char *rt_st_meta(const RtSafetensors *st, const char *key);

#endif
