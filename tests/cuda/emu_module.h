// What the CPU builds of generated kernels agree on: the g++ command that makes one
// (test_emulate.c, and the fake driver, fake/fake_cuda.c, for the modules it loads) and
// the name the fake driver files a module's build under.
#ifndef EMU_MODULE_H
#define EMU_MODULE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// FNV-1a 64 of a module image (CUBIN or PTX): the fake driver's cuModuleLoadData only
// sees the bytes, so its CPU build is <hash>.so.
static inline uint64_t fake_module_hash(const void *data, size_t n) {
  const uint8_t *p = data;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// The shell command that compiles generated CUDA source SRC for the CPU into the shared
// object OUT: C++17, cuda_emu.h (EMU_HEADER, its path) included first, and the emulated
// <mma.h> of the emu_include/ beside it; FLAGS adds the optimization level, warnings or
// sanitizers. malloc'd; NULL when out of memory.
static inline char *emu_build_command(const char *cxx, const char *flags,
                                      const char *emu_header, const char *src,
                                      const char *out) {
  const char *slash = strrchr(emu_header, '/');
  int dir = slash ? (int)(slash - emu_header + 1) : 0;  // slash included; 0: a bare name
  char *cmd;
  if (asprintf(&cmd, "%s -std=c++17 -fPIC -shared %s -I '%.*semu_include' -include '%s' "
                     "-x c++ '%s' -o '%s'",
               cxx, flags, dir, emu_header, emu_header, src, out) < 0)
    return NULL;
  return cmd;
}

#endif
