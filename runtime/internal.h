// Helpers shared by the runtime's own files; not part of its interface.
#ifndef ALEXRT_INTERNAL_H
#define ALEXRT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

// Sets rt_error() and returns false.
bool rt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Product of dims, false on a negative dim or if the byte size would overflow.
bool rt_checked_elems(int rank, const int64_t *dims, int64_t *elems);

// Largest file the runtime reads: bigger than any AlexNet-family weight file.
#define RT_MAX_FILE ((size_t)8 << 30)

#endif
