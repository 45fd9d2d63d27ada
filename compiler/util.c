// Diagnostics and allocation helpers used by every phase.
#define _GNU_SOURCE  // vasprintf
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <time.h>

#include "alexc.h"

void error_at(SrcLoc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (loc.line > 0)
    fprintf(stderr, "%s:%d:%d: error: ", loc.file, loc.line, loc.col);
  else
    fprintf(stderr, "%s: error: ", loc.file ? loc.file : "alexc");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

// Levenshtein distance; names longer than 128 characters count as far from everything.
static int edit_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la > 128 || lb > 128)
    return 1 << 20;
  int prev[129], cur[129];
  for (int j = 0; j <= lb; j++)
    prev[j] = j;
  for (int i = 1; i <= la; i++) {
    cur[0] = i;
    for (int j = 1; j <= lb; j++) {
      int best = prev[j - 1] + (a[i - 1] != b[j - 1]);
      if (prev[j] + 1 < best)
        best = prev[j] + 1;
      if (cur[j - 1] + 1 < best)
        best = cur[j - 1] + 1;
      cur[j] = best;
    }
    memcpy(prev, cur, (lb + 1) * sizeof *prev);
  }
  return prev[lb];
}

const char *closest_word(const char *s, const char *const *words, int n) {
  const char *best = NULL;
  int best_d = 3;
  for (int i = 0; i < n; i++) {
    if (!words[i])
      continue;
    int d = edit_distance(s, words[i]);
    int longer = (int)(strlen(s) > strlen(words[i]) ? strlen(s) : strlen(words[i]));
    if (d < best_d && 2 * d <= longer) {
      best_d = d;
      best = words[i];
    }
  }
  return best;
}

void error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "alexc: error: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void *check_alloc(void *p) {
  if (!p) {
    fprintf(stderr, "alexc: fatal: out of memory\n");
    exit(1);
  }
  return p;
}

void *xcalloc(size_t n, size_t size) { return check_alloc(calloc(n ? n : 1, size ? size : 1)); }

void *xrealloc(void *p, size_t size) { return check_alloc(realloc(p, size ? size : 1)); }

char *xstrdup(const char *s) { return check_alloc(strdup(s)); }

char *format(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *buf = NULL;
  if (vasprintf(&buf, fmt, ap) < 0)
    buf = NULL;
  va_end(ap);
  return check_alloc(buf);
}

uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

char *cache_dir(void) {
  const char *env = getenv("ALEXC_CACHE"), *home = getenv("HOME");
  if (env && !strcmp(env, "off"))
    return NULL;
  char *dir = env && *env ? xstrdup(env) : home && *home ? format("%s/.cache/alexc", home) : NULL;
  if (!dir)
    return NULL;
  // mkdir -p
  for (char *s = dir + 1; *s; s++)
    if (*s == '/') {
      *s = 0;
      mkdir(dir, 0755);
      *s = '/';
    }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    free(dir);
    return NULL;
  }
  return dir;
}

double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
