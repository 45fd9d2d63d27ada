// Diagnostics and allocation helpers used by every phase.
#define _GNU_SOURCE  // vasprintf
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
