// The model bundle: a host shared object, built with the LLVM C API, that holds a
// compiled model's bytes (for CUDA: the plan file of runtime/cuda_plan.c, modules
// included) and one exported entry point,
//
//   const unsigned char *alexc_model_v1(unsigned long long *size);
//
// returning the payload and its size. The runtime (runtime/bundle.c) dlopens the .so,
// calls the entry point and parses the payload as it parses a plan file. The "v1" is
// the bundle's format: a future change gets a new name, so an old runtime fails
// loudly ("not an alexc model") instead of misreading a new bundle.
#ifndef ALEXC_LLVM_BUNDLE_H
#define ALEXC_LLVM_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alexrt_cuda.h"  // RT_BUNDLE_ENTRY: the runtime looks the plan up by that name

// Writes the bundle to `path`: emits an object file for the host (LLVM's default
// target triple, PIC), links it with the system C compiler ($CC, default cc) as
// `-shared -nostdlib` (no libc, no start files: no undefined symbols, no
// constructors), and renames the result onto `path`. Temporary files sit next to
// `path` and are removed on every path; `path` is never left half-written. On error
// prints one "alexc: error: ..." line and returns false.
bool llvm_write_bundle(const uint8_t *payload, size_t size, const char *path);

// Runs the system C compiler ($CC split at blanks, default cc) with `args`, to link
// `path` (`what`: "the bundle"); false after one message naming the command that failed.
bool llvm_cc(const char *const *args, int n_args, const char *path, const char *what);

#endif
