// .npy files: NumPy's array format, version 1.0 to 3.0, float32/float64, C order.
// The header is a Python dict literal; we parse only the three keys NumPy writes.
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "internal.h"

static const char MAGIC[] = "\x93NUMPY";

// Finds `'key':` in the header and returns a pointer just past the colon.
static const char *find_key(const char *hdr, const char *key) {
  char pat[32];
  snprintf(pat, sizeof pat, "'%s'", key);
  const char *p = strstr(hdr, pat);
  if (!p)
    return NULL;
  p += strlen(pat);
  while (*p == ' ')
    p++;
  return *p == ':' ? p + 1 : NULL;
}

static const char *skip_spaces(const char *p) {
  while (*p == ' ')
    p++;
  return p;
}

// Parses "(2, 3, 4)" or "(5,)" or "()".
static bool parse_shape(const char *p, int *rank, int64_t *dims) {
  p = skip_spaces(p);
  if (*p++ != '(')
    return false;
  *rank = 0;
  for (;;) {
    p = skip_spaces(p);
    if (*p == ')')
      return true;
    if (!isdigit((unsigned char)*p) || *rank == RT_MAX_RANK)
      return false;
    int64_t v = 0;
    while (isdigit((unsigned char)*p)) {
      if (v > (INT64_MAX - 9) / 10)
        return false;
      v = v * 10 + (*p++ - '0');
    }
    dims[(*rank)++] = v;
    p = skip_spaces(p);
    if (*p == ',')
      p++;
    else if (*p != ')')
      return false;
  }
}

bool rt_npy_load(const char *path, RtTensor *out) {
  memset(out, 0, sizeof *out);
  uint8_t *file;
  size_t size;
  if (!rt_read_file(path, RT_MAX_FILE, &file, &size))
    return false;
  bool ok = false;
  char *hdr = NULL;
  if (size < 10 || memcmp(file, MAGIC, 6) != 0) {
    rt_fail("%s: not a .npy file (bad magic)", path);
    goto done;
  }
  int major = file[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = file[8] | (size_t)file[9] << 8;
    hstart = 10;
  } else if ((major == 2 || major == 3) && size >= 12) {
    hlen = file[8] | (size_t)file[9] << 8 | (size_t)file[10] << 16 | (size_t)file[11] << 24;
    hstart = 12;
  } else {
    rt_fail("%s: unsupported .npy version %d", path, major);
    goto done;
  }
  if (hlen > size - hstart || hlen > 65536) {
    rt_fail("%s: truncated .npy header", path);
    goto done;
  }
  hdr = malloc(hlen + 1);
  memcpy(hdr, file + hstart, hlen);
  hdr[hlen] = 0;

  const char *d = find_key(hdr, "descr");
  const char *fo = find_key(hdr, "fortran_order");
  const char *sh = find_key(hdr, "shape");
  if (!d || !fo || !sh) {
    rt_fail("%s: malformed .npy header", path);
    goto done;
  }
  d = skip_spaces(d);
  int esize;
  if (!strncmp(d, "'<f4'", 5))
    esize = 4;
  else if (!strncmp(d, "'<f8'", 5))
    esize = 8;
  else {
    const char *end = *d ? strchr(d + 1, '\'') : NULL;  // d may sit on the final NUL
    int n = end ? (int)(end - d + 1) : (int)strnlen(d, 8);
    rt_fail("%s: dtype %.*s is not supported (want float32 '<f4')", path, n > 16 ? 16 : n, d);
    goto done;
  }
  if (strncmp(skip_spaces(fo), "False", 5) != 0) {
    rt_fail("%s: Fortran-order arrays are not supported (save with C order)", path);
    goto done;
  }
  if (!parse_shape(sh, &out->rank, out->dims) ||
      !rt_checked_elems(out->rank, out->dims, &out->elems)) {
    rt_fail("%s: malformed or oversized shape in .npy header", path);
    goto done;
  }
  size_t payload = size - hstart - hlen;
  size_t want = (size_t)out->elems * (size_t)esize;
  if (payload != want) {
    rt_fail("%s: data is %zu bytes but shape needs %zu (%s)", path, payload, want,
            payload < want ? "truncated" : "trailing bytes");
    goto done;
  }
  out->data = malloc(out->elems ? (size_t)out->elems * sizeof(float) : 1);
  const uint8_t *src = file + hstart + hlen;
  if (esize == 4) {
    memcpy(out->data, src, want);
  } else {
    for (int64_t i = 0; i < out->elems; i++) {
      double v;
      memcpy(&v, src + i * 8, 8);
      out->data[i] = (float)v;
    }
  }
  ok = true;
done:
  free(hdr);
  free(file);
  if (!ok)
    rt_tensor_free(out);
  return ok;
}

bool rt_npy_save(const char *path, const float *data, int rank, const int64_t *dims) {
  int64_t elems;
  if (rank < 0 || rank > RT_MAX_RANK || !rt_checked_elems(rank, dims, &elems))
    return rt_fail("%s: bad shape", path);
  char dict[256];
  int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  for (int i = 0; i < rank; i++)
    n += snprintf(dict + n, sizeof dict - n, "%lld%s", (long long)dims[i],
                  rank == 1 || i + 1 < rank ? ", " : "");
  if (rank == 1)
    n -= 1;  // "(5,)" not "(5, )"
  n += snprintf(dict + n, sizeof dict - n, "), }");
  // Pad with spaces so that magic + header is a multiple of 64, ending in '\n'.
  size_t total = 10 + n + 1;
  size_t padded = (total + 63) / 64 * 64;
  size_t hlen = padded - 10;
  size_t bytes = (size_t)elems * sizeof(float);
  uint8_t *buf = malloc(padded + bytes);
  if (!buf)
    return rt_fail("%s: out of memory", path);
  memcpy(buf, MAGIC, 6);
  buf[6] = 1;
  buf[7] = 0;
  buf[8] = hlen & 0xff;
  buf[9] = hlen >> 8;
  memset(buf + 10, ' ', hlen);
  memcpy(buf + 10, dict, n);
  buf[padded - 1] = '\n';
  if (bytes)
    memcpy(buf + padded, data, bytes);
  bool ok = rt_write_file_atomic(path, buf, padded + bytes);
  free(buf);
  return ok;
}
