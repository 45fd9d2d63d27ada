// The name of a module's CPU build: FNV-1a 64 of the image (CUBIN or PTX) the runtime
// loads. fake_cuda.c looks modules up by it and prepare.c builds them under it, so
// both take it from here.
#ifndef FAKE_MODULE_HASH_H
#define FAKE_MODULE_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t fake_module_hash(const void *data, size_t n) {
  const uint8_t *p = data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

#endif
