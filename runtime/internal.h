// Helpers shared by the runtime's own files; not part of its interface.
#ifndef ALEXRT_INTERNAL_H
#define ALEXRT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alexrt_cuda.h"

// Product of dims, false on a negative dim or if the byte size would overflow.
bool rt_checked_elems(int rank, const int64_t *dims, int64_t *elems);

// Largest file the runtime reads: bigger than any AlexNet-family weight file.
#define RT_MAX_FILE ((size_t)8 << 30)

// Checks, in a shared object's bytes, that its ELF header and segments lie inside the
// file (dlopen trusts them: a truncated .so would SIGBUS). False after rt_fail.
bool rt_check_elf(const char *path, const uint8_t *data, size_t size);

// The bundle half of rt_plan_load (runtime/bundle.c), given the file's bytes (data,
// size) to check its ELF headers against: dlopen(RTLD_NOW | RTLD_LOCAL),
// alexc_model_v1(), rt_plan_parse (which copies everything it keeps), dlclose.
bool rt_bundle_load(const char *path, const uint8_t *data, size_t size, RtPlan *p);

#endif
