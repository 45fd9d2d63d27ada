// safetensors: an 8-byte little-endian header length, a JSON header, then raw data.
// Header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
// with offsets relative to the data section, and an optional "__metadata__" object of
// string -> string pairs (written first). Every offset and size is checked
// against the file before use; the header is parsed with cJSON.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "internal.h"

#define MAX_HEADER ((size_t)100 << 20)

static int dtype_size(const char *dt) {
  if (!strcmp(dt, "F32") || !strcmp(dt, "I32") || !strcmp(dt, "U32"))
    return 4;
  if (!strcmp(dt, "F64") || !strcmp(dt, "I64") || !strcmp(dt, "U64"))
    return 8;
  if (!strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "I16") || !strcmp(dt, "U16"))
    return 2;
  if (!strcmp(dt, "I8") || !strcmp(dt, "U8") || !strcmp(dt, "BOOL") || !strcmp(dt, "F8_E4M3") ||
      !strcmp(dt, "F8_E5M2"))
    return 1;
  return 0;
}

// Reads a JSON number that must be a non-negative integer.
static bool json_index(const cJSON *j, int64_t *out) {
  if (!cJSON_IsNumber(j))
    return false;
  double v = j->valuedouble;
  if (v < 0 || v > 9.0e15 || v != (double)(int64_t)v)
    return false;
  *out = (int64_t)v;
  return true;
}

static bool parse_entry(const char *path, const cJSON *item, size_t data_size, RtStEntry *e) {
  const char *name = item->string;
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
      cJSON_GetArraySize(off) != 2)
    return rt_fail("%s: tensor '%s': malformed header entry", path, name);
  snprintf(e->dtype, sizeof e->dtype, "%s", dt->valuestring);
  int es = dtype_size(e->dtype);
  if (!es)
    return rt_fail("%s: tensor '%s': unknown dtype '%s'", path, name, e->dtype);
  int rank = cJSON_GetArraySize(sh);
  if (rank > RT_MAX_RANK)
    return rt_fail("%s: tensor '%s': rank %d is too large", path, name, rank);
  e->rank = rank;
  for (int i = 0; i < rank; i++)
    if (!json_index(cJSON_GetArrayItem(sh, i), &e->dims[i]))
      return rt_fail("%s: tensor '%s': bad shape", path, name);
  if (!rt_checked_elems(rank, e->dims, &e->elems))
    return rt_fail("%s: tensor '%s': shape is too large", path, name);
  int64_t b, end;
  if (!json_index(cJSON_GetArrayItem(off, 0), &b) || !json_index(cJSON_GetArrayItem(off, 1), &end) ||
      end < b)
    return rt_fail("%s: tensor '%s': bad data_offsets", path, name);
  if ((uint64_t)end > data_size)
    return rt_fail("%s: tensor '%s': data runs past the end of the file (truncated?)", path, name);
  if ((uint64_t)(end - b) != (uint64_t)e->elems * (uint64_t)es)
    return rt_fail("%s: tensor '%s': %lld data bytes do not match its shape and dtype", path, name,
                   (long long)(end - b));
  e->offset = (size_t)b;
  e->nbytes = (size_t)(end - b);
  e->name = strdup(name);
  return true;
}

bool rt_st_open(const char *path, RtSafetensors *st) {
  memset(st, 0, sizeof *st);
  if (!rt_read_file(path, RT_MAX_FILE, &st->file, &st->file_size))
    return false;
  st->path = strdup(path);
  uint64_t hlen = 0;
  if (st->file_size < 8)
    goto truncated;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | st->file[i];
  if (hlen > MAX_HEADER) {
    rt_fail("%s: header length %llu is implausible (not a safetensors file?)", path,
            (unsigned long long)hlen);
    goto fail;
  }
  if (hlen > st->file_size - 8)
    goto truncated;
  st->data = st->file + 8 + hlen;
  st->data_size = st->file_size - 8 - hlen;

  cJSON *root = cJSON_ParseWithLength((const char *)st->file + 8, (size_t)hlen);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    rt_fail("%s: header is not a JSON object", path);
    goto fail;
  }
  int n = cJSON_GetArraySize(root);
  st->entries = calloc(n ? n : 1, sizeof *st->entries);
  for (cJSON *item = root->child; item; item = item->next) {
    if (!strcmp(item->string, "__metadata__")) {
      if (!cJSON_IsObject(item) || st->meta_keys)
        continue;
      int m = cJSON_GetArraySize(item);
      st->meta_keys = calloc(m ? m : 1, sizeof *st->meta_keys);
      st->meta_values = calloc(m ? m : 1, sizeof *st->meta_values);
      for (const cJSON *kv = item->child; kv; kv = kv->next)
        if (cJSON_IsString(kv)) {
          st->meta_keys[st->n_meta] = strdup(kv->string);
          st->meta_values[st->n_meta++] = strdup(kv->valuestring);
        }
      continue;
    }
    if (!parse_entry(path, item, st->data_size, &st->entries[st->n])) {
      cJSON_Delete(root);
      goto fail;
    }
    st->n++;
  }
  cJSON_Delete(root);
  return true;
truncated:
  rt_fail("%s: truncated safetensors file", path);
fail:
  rt_st_close(st);
  return false;
}

void rt_st_close(RtSafetensors *st) {
  for (int i = 0; i < st->n; i++)
    free(st->entries[i].name);
  free(st->entries);
  for (int i = 0; i < st->n_meta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_values[i]);
  }
  free(st->meta_keys);
  free(st->meta_values);
  free(st->file);
  free(st->path);
  memset(st, 0, sizeof *st);
}

const RtStEntry *rt_st_find(const RtSafetensors *st, const char *name) {
  for (int i = 0; i < st->n; i++)
    if (!strcmp(st->entries[i].name, name))
      return &st->entries[i];
  return NULL;
}

const char *rt_st_meta(const RtSafetensors *st, const char *key) {
  for (int i = 0; i < st->n_meta; i++)
    if (!strcmp(st->meta_keys[i], key))
      return st->meta_values[i];
  return NULL;
}

static void shape_text(int rank, const int64_t *dims, char *buf, size_t size) {
  int n = snprintf(buf, size, "[");
  for (int i = 0; i < rank && n < (int)size; i++)
    n += snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)dims[i]);
  if (n < (int)size)
    snprintf(buf + n, size - n, "]");
}

// IEEE half to float, subnormals, infinities and NaNs included.
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, mant = h & 1023, bits;
  if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else if (exp) {
    bits = sign | (exp + 112) << 23 | mant << 13;
  } else if (mant) {  // subnormal: normalise
    int shift = 0;
    while (!(mant & 1024))
      mant <<= 1, shift++;
    bits = sign | (uint32_t)(113 - shift) << 23 | (mant & 1023) << 13;
  } else {
    bits = sign;
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// Converts a tensor's data to float32: F32 copied; F16, BF16 widened exactly; F64
// rounded, refused where a finite value does not fit a float. Data may be unaligned.
static bool to_f32(const RtSafetensors *st, const RtStEntry *e, float *dst) {
  const uint8_t *src = st->data + e->offset;
  if (!strcmp(e->dtype, "F32")) {
    memcpy(dst, src, e->nbytes);
    return true;
  }
  for (int64_t i = 0; i < e->elems; i++) {
    if (!strcmp(e->dtype, "F64")) {
      double v;
      memcpy(&v, src + 8 * i, 8);
      if (v == v && (v > 3.4028234663852886e38 || v < -3.4028234663852886e38) &&
          v - v == 0)
        return rt_fail("%s: tensor '%s': F64 value %g at element %lld is outside float32's "
                       "range", st->path, e->name, v, (long long)i);
      dst[i] = (float)v;
    } else {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      if (!strcmp(e->dtype, "F16")) {
        dst[i] = half_to_float(h);
      } else {
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&dst[i], &bits, 4);
      }
    }
  }
  return true;
}

bool rt_st_convertible(const char *dtype) {
  return !strcmp(dtype, "F32") || !strcmp(dtype, "F16") || !strcmp(dtype, "BF16") ||
         !strcmp(dtype, "F64");
}

bool rt_st_read_f32(const RtSafetensors *st, const char *name, int rank, const int64_t *dims,
                    float *dst) {
  const RtStEntry *e = rt_st_find(st, name);
  if (!e)
    return rt_fail("%s: tensor '%s' is missing", st->path, name);
  if (!rt_st_convertible(e->dtype))
    return rt_fail("%s: tensor '%s' has dtype %s; weights must be F32, F16, BF16 or F64",
                   st->path, name, e->dtype);
  bool same = e->rank == rank;
  for (int i = 0; same && i < rank; i++)
    same = e->dims[i] == dims[i];
  if (!same) {
    char have[96], want[96];
    shape_text(e->rank, e->dims, have, sizeof have);
    shape_text(rank, dims, want, sizeof want);
    return rt_fail("%s: tensor '%s' has shape %s, want %s", st->path, name, have, want);
  }
  return to_f32(st, e, dst);
}

bool rt_st_header(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                  const char *const *values, int n_meta, uint8_t **header, size_t *size) {
  *header = NULL;
  *size = 0;
  cJSON *root = cJSON_CreateObject();
  if (n_meta > 0) {
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; i < n_meta; i++)
      cJSON_AddStringToObject(meta, keys[i], values[i]);
  }
  size_t offset = 0;
  for (int i = 0; i < n; i++) {
    int64_t elems;
    if (!rt_checked_elems(tensors[i].rank, tensors[i].dims, &elems)) {
      cJSON_Delete(root);
      return rt_fail("%s: tensor '%s': bad shape", path, tensors[i].name);
    }
    cJSON *e = cJSON_AddObjectToObject(root, tensors[i].name);
    cJSON_AddStringToObject(e, "dtype", "F32");
    cJSON *sh = cJSON_AddArrayToObject(e, "shape");
    for (int d = 0; d < tensors[i].rank; d++)
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)tensors[i].dims[d]));
    cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
    offset += (size_t)elems * sizeof(float);
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
  }
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!json)
    return rt_fail("%s: out of memory", path);
  size_t jlen = strlen(json);
  size_t hlen = (jlen + 7) / 8 * 8;  // keep the data 8-byte aligned, padded with spaces
  uint8_t *buf = malloc(8 + hlen);
  if (!buf) {
    free(json);
    return rt_fail("%s: out of memory", path);
  }
  for (int i = 0; i < 8; i++)
    buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  memset(buf + 8, ' ', hlen);
  memcpy(buf + 8, json, jlen);
  free(json);
  *header = buf;
  *size = 8 + hlen;
  return true;
}

// Each tensor's bytes (its element count was checked by rt_st_header).
static size_t data_bytes(const RtStTensor *t) {
  int64_t elems = 0;
  rt_checked_elems(t->rank, t->dims, &elems);
  return (size_t)elems * sizeof(float);
}

bool rt_st_encode(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                  const char *const *values, int n_meta, uint8_t **data, size_t *size) {
  uint8_t *header;
  size_t total;
  if (!rt_st_header(path, tensors, n, keys, values, n_meta, &header, &total))
    return false;
  size_t at = total;
  for (int i = 0; i < n; i++)
    total += data_bytes(&tensors[i]);
  uint8_t *buf = realloc(header, total);
  if (!buf) {
    free(header);
    return rt_fail("%s: out of memory (%zu bytes)", path, total);
  }
  for (int i = 0; i < n; i++) {
    size_t bytes = data_bytes(&tensors[i]);
    if (bytes)
      memcpy(buf + at, tensors[i].data, bytes);
    at += bytes;
  }
  *data = buf;
  *size = total;
  return true;
}

bool rt_st_save_meta(const char *path, const RtStTensor *tensors, int n, const char *const *keys,
                     const char *const *values, int n_meta) {
  uint8_t *header;
  size_t size;
  if (!rt_st_header(path, tensors, n, keys, values, n_meta, &header, &size))
    return false;
  RtPiece *pieces = malloc((size_t)(n + 1) * sizeof *pieces);
  if (!pieces) {
    free(header);
    return rt_fail("%s: out of memory", path);
  }
  pieces[0] = (RtPiece){header, size};
  for (int i = 0; i < n; i++)
    pieces[i + 1] = (RtPiece){tensors[i].data, data_bytes(&tensors[i])};
  bool ok = rt_write_pieces_atomic(path, pieces, n + 1);
  free(pieces);
  free(header);
  return ok;
}

bool rt_st_save(const char *path, const RtStTensor *tensors, int n) {
  return rt_st_save_meta(path, tensors, n, NULL, NULL, 0);
}
