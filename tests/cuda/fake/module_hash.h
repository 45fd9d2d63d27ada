// What fake_cuda.c and prepare.c (and test_emulate.c) must agree on. The name of a
// module's CPU build: FNV-1a 64 of the image (CUBIN or PTX) the runtime loads;
// fake_cuda.c looks modules up by it and prepare.c builds them under it. And where the
// emulated headers are.
#ifndef FAKE_MODULE_HASH_H
#define FAKE_MODULE_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t fake_module_hash(const void *data, size_t n) {
  const uint8_t *p = data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// The length of the directory part of `path`, slash included (0 for a bare name): the
// emulated CUDA headers (cuda_emu.h and emu_include/, for the kernels' <mma.h>) sit
// together, so "-I DIRemu_include" is built from the path to cuda_emu.h.
static inline int emu_dir_len(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? (int)(slash - path + 1) : 0;
}

#endif
