// Bounded reads and atomic writes of whole files, and the runtime's error message.
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alexrt.h"
#include "internal.h"

static _Thread_local char last_error[512];

const char *rt_error(void) { return last_error; }

bool rt_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return false;
}

bool rt_read_file(const char *path, size_t limit, uint8_t **data, size_t *size) {
  *data = NULL;
  *size = 0;
  FILE *f = fopen(path, "rb");
  if (!f)
    return rt_fail("%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return rt_fail("%s: not a regular file", path);
  }
  if ((uint64_t)st.st_size > limit) {
    fclose(f);
    return rt_fail("%s: file is %lld bytes, more than the limit of %zu", path,
                   (long long)st.st_size, limit);
  }
  size_t n = (size_t)st.st_size;
  uint8_t *buf = malloc(n + 1);  // +1: callers may treat text as NUL-terminated
  if (!buf) {
    fclose(f);
    return rt_fail("%s: out of memory reading %zu bytes", path, n);
  }
  size_t got = fread(buf, 1, n, f);
  fclose(f);
  if (got != n) {
    free(buf);
    return rt_fail("%s: short read (%zu of %zu bytes)", path, got, n);
  }
  buf[n] = 0;
  *data = buf;
  *size = n;
  return true;
}

// Makes a rename in the directory holding `path` durable. A directory that cannot be
// opened or does not support fsync (EINVAL: some network and FUSE file systems) is
// let go: the rename itself is still atomic, only its durability is not assured.
static bool fsync_parent(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir)
    return rt_fail("%s: out of memory", path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0)
    return true;
  bool ok = fsync(fd) == 0 || errno == EINVAL || errno == EROFS;
  int err = errno;
  close(fd);
  return ok || rt_fail("%s: fsync of its directory failed: %s", path, strerror(err));
}

bool rt_write_pieces_atomic(const char *path, const RtPiece *pieces, int n) {
  size_t len = strlen(path) + 32;
  char *tmp = malloc(len);
  if (!tmp)
    return rt_fail("%s: out of memory", path);
  snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    rt_fail("%s: cannot write: %s", path, strerror(errno));
    free(tmp);
    return false;
  }
  bool ok = true;
  for (int i = 0; i < n && ok; i++)
    ok = pieces[i].size == 0 || fwrite(pieces[i].data, 1, pieces[i].size, f) == pieces[i].size;
  ok = (fflush(f) == 0) && ok;
  ok = (fsync(fileno(f)) == 0 || errno == EINVAL) && ok;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    rt_fail("%s: write failed: %s", path, strerror(errno));
    remove(tmp);
    free(tmp);
    return false;
  }
  free(tmp);
  return fsync_parent(path);
}

bool rt_write_file_atomic(const char *path, const void *data, size_t size) {
  RtPiece one = {data, size};
  return rt_write_pieces_atomic(path, &one, 1);
}

void rt_tensor_free(RtTensor *t) {
  free(t->data);
  t->data = NULL;
}

bool rt_checked_elems(int rank, const int64_t *dims, int64_t *elems) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0)
      return false;
    if (dims[i] != 0 && n > INT64_MAX / 4 / dims[i])  // keep n * sizeof(float) representable
      return false;
    n *= dims[i];
  }
  *elems = n;
  return true;
}
