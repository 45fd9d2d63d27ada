// emu_device.h — the emulated GPUs the CUDA emulation tests run plans on
// (test_emulate.c: the forward; test_train_emulate.c: the training step). Each device's
// arena, weight and scratch buffers are host memory, filled with NaN until written; its
// kernels come from its generated source compiled by g++ with cuda_emu.h; cuBLAS is
// emu_gemm.h. The RtPlanOps the runtime's plan interpreter calls check every kernel
// argument, GEMM operand and copy against the buffers of the device it names (device -1:
// the host's input and output), so a plan that addresses outside its memory fails here.
#ifndef EMU_DEVICE_H
#define EMU_DEVICE_H

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "backends/cuda/cuda.h"
#include "emu_gemm.h"
#include "emu_module.h"

#define EMU_MAX_ARGS 8  // kernel arguments before the batch

typedef struct {
  int n_devices;
  void *so[MAX_DEVICES];
  float *arena[MAX_DEVICES], *weights[MAX_DEVICES], *scratch[MAX_DEVICES];
  int64_t arena_elems[MAX_DEVICES], weight_elems[MAX_DEVICES], scratch_elems[MAX_DEVICES];
  const float *x, *y;  // the host's input and output, for the plan's copies (device -1)
  int64_t x_elems, y_elems;
  int max_grid;  // blocks a launch runs at most (the grid-stride loops do the rest); 0: all
  bool failed;
} EmuMachine;

// Is [p, p + bytes) inside one of the buffers device d (or the host, d = -1) owns?
static bool emu_inside(const EmuMachine *m, int d, uint64_t p, int64_t bytes) {
  if (d < -1 || d >= m->n_devices)
    return false;
  const float *bufs[3] = {d < 0 ? m->x : m->arena[d], d < 0 ? m->y : m->weights[d],
                          d < 0 ? NULL : m->scratch[d]};
  int64_t sizes[3] = {d < 0 ? m->x_elems : m->arena_elems[d],
                      d < 0 ? m->y_elems : m->weight_elems[d], d < 0 ? 0 : m->scratch_elems[d]};
  for (int k = 0; k < 3; k++) {
    uint64_t lo = (uint64_t)(uintptr_t)bufs[k], hi = lo + sizes[k] * sizeof(float);
    if (bufs[k] && p >= lo && p + bytes <= hi)
      return true;
  }
  return false;
}

static bool emu_check(EmuMachine *m, int d, uint64_t p, int64_t bytes, const char *what) {
  if (emu_inside(m, d, p, bytes))
    return true;
  fprintf(stderr, "  %s: %lld bytes at %#llx are outside device %d's buffers\n", what,
          (long long)bytes, (unsigned long long)p, d);
  m->failed = true;
  return false;
}

// One kernel launch's call, for every thread of every block.
typedef struct {
  void *f;
  int n_args;
  void *a[EMU_MAX_ARGS];
  int batch;
} EmuKernelCall;

// alexc_emu_run_block's thread: the kernel with its arguments, then the batch.
static void emu_call_kernel(void *arg) {
  typedef void *P;
  const EmuKernelCall *c = arg;
  P const *a = c->a;
  int b = c->batch;
  switch (c->n_args) {
  case 1: ((void (*)(P, int))c->f)(a[0], b); break;
  case 2: ((void (*)(P, P, int))c->f)(a[0], a[1], b); break;
  case 3: ((void (*)(P, P, P, int))c->f)(a[0], a[1], a[2], b); break;
  case 4: ((void (*)(P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], b); break;
  case 5: ((void (*)(P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], b); break;
  case 6: ((void (*)(P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], b); break;
  case 7:
    ((void (*)(P, P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], b);
    break;
  case 8:
    ((void (*)(P, P, P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                                  a[7], b);
    break;
  }
}

// Every block through cuda_emu.h's alexc_emu_run_block, exported by the device's module:
// its threads one after another, or as fibers that meet at each __syncthreads().
// Dynamic shared memory: `smem` bytes per block, at most what sm_90 lets a block have.
static bool emu_launch(void *ctx, int d, const char *kernel, int64_t grid, int block, int smem,
                       const uint64_t *args, int n_args, int batch) {
  EmuMachine *m = ctx;
  void *so = d >= 0 && d < m->n_devices ? m->so[d] : NULL;
  EmuKernelCall call = {.f = so ? dlsym(so, kernel) : NULL, .n_args = n_args, .batch = batch};
  int (*run_block)(unsigned, unsigned, unsigned, void (*)(void *), void *) = NULL;
  int (*dynamic_shared)(unsigned) = NULL;
  if (so) {
    *(void **)&run_block = dlsym(so, "alexc_emu_run_block");
    *(void **)&dynamic_shared = dlsym(so, "alexc_emu_dynamic_shared");
  }
  if (!call.f || !run_block || !dynamic_shared || n_args < 1 || n_args > EMU_MAX_ARGS ||
      smem < 0 || smem > CUDA_SMEM_LIMIT || dynamic_shared((unsigned)smem) != 0) {
    fprintf(stderr, "  launch %s on device %d: %s\n", kernel, d,
            !so                             ? "no such device"
            : !call.f                       ? "no such kernel"
            : !run_block || !dynamic_shared ? "no alexc_emu_run_block (cuda_emu.h)"
            : n_args < 1 || n_args > EMU_MAX_ARGS ? "unsupported argument count"
                                            : "more dynamic shared memory than sm_90 allows");
    m->failed = true;
    return false;
  }
  for (int i = 0; i < n_args; i++) {
    call.a[i] = (void *)(uintptr_t)args[i];
    if (!emu_check(m, d, args[i], 4, kernel))
      return false;
  }
  if (m->max_grid && grid > m->max_grid)
    grid = m->max_grid;
  for (int64_t bx = 0; bx < grid; bx++)
    if (run_block((unsigned)bx, (unsigned)block, (unsigned)grid, emu_call_kernel, &call) != 0) {
      fprintf(stderr, "  launch %s on device %d: block %lld failed\n", kernel, d, (long long)bx);
      m->failed = true;
      return false;
    }
  return true;
}

// cublasSgemm's / cublasGemmEx's semantics through emu_gemm.h (column-major, transa/transb,
// leading dimensions, alpha/beta, argument checks; beta = 0 does not read C), TF32 rounding
// of the operands for tf32, bfloat16 A and B for bf16, float sums as a GPU's.
static bool emu_gemm_op(void *ctx, int d, RtPrecision prec, char ta, char tb, int64_t mm,
                        int64_t n, int64_t k, float alpha, uint64_t a, int64_t lda, uint64_t b,
                        int64_t ldb, float beta, uint64_t c, int64_t ldc) {
  EmuMachine *m = ctx;
  EmuType type = prec == RT_BF16 ? EMU_BF16 : EMU_F32;
  const char *bad = emu_gemm_check(ta, tb, mm, n, k, lda, ldb, ldc);
  if (!bad && mm && n) {
    bool tra = ta == 'T', trb = tb == 'T';
    if ((k && !emu_check(m, d, a, emu_operand_bytes(tra ? k : mm, tra ? mm : k, lda, type),
                         "gemm A")) ||
        (k && !emu_check(m, d, b, emu_operand_bytes(trb ? n : k, trb ? k : n, ldb, type),
                         "gemm B")) ||
        !emu_check(m, d, c, emu_operand_bytes(mm, n, ldc, EMU_F32), "gemm C"))
      return false;
    bad = emu_gemm(ta, tb, mm, n, k, alpha, (const void *)(uintptr_t)a, type, lda,
                   (const void *)(uintptr_t)b, type, ldb, beta, (float *)(uintptr_t)c, ldc,
                   prec == RT_TF32 ? EMU_MATH_TF32 : EMU_MATH_FP32);
  }
  if (bad) {
    fprintf(stderr, "  gemm %s %c %c m %lld n %lld k %lld lda %lld ldb %lld ldc %lld: %s\n",
            rt_precision_name(prec), ta, tb, (long long)mm, (long long)n, (long long)k,
            (long long)lda, (long long)ldb, (long long)ldc, bad);
    m->failed = true;
    return false;
  }
  return true;
}

// The GEMM, then cublasLt's bias (and ReLU) epilogue on C (emu_gemm.h).
static bool emu_gemm_bias_op(void *ctx, int d, RtPrecision prec, char ta, char tb, int64_t mm,
                             int64_t n, int64_t k, uint64_t a, int64_t lda, uint64_t b,
                             int64_t ldb, uint64_t c, int64_t ldc, uint64_t bias, bool relu) {
  EmuMachine *m = ctx;
  if (!emu_gemm_op(ctx, d, prec, ta, tb, mm, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc))
    return false;
  if (mm && n && !emu_check(m, d, bias, mm * 4, "gemm bias"))
    return false;
  emu_bias_epilogue(mm, n, (float *)(uintptr_t)c, ldc, (const float *)(uintptr_t)bias, relu);
  return true;
}

static bool emu_copy_op(void *ctx, int dst_dev, uint64_t dst, int64_t dst_pitch, int src_dev,
                        uint64_t src, int64_t src_pitch, int64_t width, int64_t height) {
  EmuMachine *m = ctx;
  if (!emu_check(m, dst_dev, dst, ((height - 1) * dst_pitch + width) * 4, "copy destination") ||
      !emu_check(m, src_dev, src, ((height - 1) * src_pitch + width) * 4, "copy source"))
    return false;
  for (int64_t r = 0; r < height; r++)
    memcpy((float *)(uintptr_t)dst + r * dst_pitch, (const float *)(uintptr_t)src + r * src_pitch,
           width * sizeof(float));
  return true;
}

// The operations on m, with its devices' buffers as the bases.
static RtPlanOps emu_plan_ops(EmuMachine *m) {
  RtPlanOps ops = {.ctx = m, .launch = emu_launch, .gemm = emu_gemm_op,
                   .gemm_bias = emu_gemm_bias_op, .copy = emu_copy_op};
  for (int d = 0; d < m->n_devices; d++) {
    ops.arena[d] = (uint64_t)(uintptr_t)m->arena[d];
    ops.weights[d] = (uint64_t)(uintptr_t)m->weights[d];
    ops.scratch[d] = (uint64_t)(uintptr_t)m->scratch[d];
  }
  return ops;
}

static void emu_fill_nan(float *p, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    p[i] = NAN;
}

// Every buffer of every device back to NaN: nothing a step reads unwritten goes unseen.
static void emu_machine_poison(EmuMachine *m) {
  for (int d = 0; d < m->n_devices; d++) {
    emu_fill_nan(m->arena[d], m->arena_elems[d]);
    emu_fill_nan(m->weights[d], m->weight_elems[d]);
    emu_fill_nan(m->scratch[d], m->scratch_elems[d]);
  }
}

// Compiles source (written to CU) for the CPU into the module SO: cuda_emu.h included
// first, warnings as errors, and the sanitizers in a sanitizer build's tests.
static bool emu_build_module(const char *cxx, const char *emu_header, const char *source,
                             const char *cu, const char *so) {
  if (!rt_write_file_atomic(cu, source, strlen(source))) {
    fprintf(stderr, "  %s\n", rt_error());
    return false;
  }
#ifdef ALEXC_SANITIZE_KERNELS
  const char *flags = "-O2 -Wall -Wno-unknown-pragmas -Werror "
                      "-fsanitize=address,undefined -fno-sanitize-recover=all";
#else
  const char *flags = "-O2 -Wall -Wno-unknown-pragmas -Werror";
#endif
  char *cmd = emu_build_command(cxx, flags, emu_header, cu, so);
  if (!cmd)
    abort();
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr, "  failed (%d): %s\n", rc, cmd);
  free(cmd);
  return rc == 0;
}

// The plan's devices for `batch` images: each device's source[d] compiled and loaded (its
// files PREFIX-device<d>.cu and .so), its buffers allocated and filled with NaN. False
// after a message; emu_machine_free cleans up either way.
static bool emu_machine_load(EmuMachine *m, const RtPlan *p, char *const *source, int batch,
                             const char *cxx, const char *emu_header, const char *prefix) {
  m->n_devices = p->n_devices;
  for (int d = 0; d < p->n_devices; d++) {
    char *cu = format("%s-device%d.cu", prefix, d), *so = format("%s-device%d.so", prefix, d);
    bool ok = emu_build_module(cxx, emu_header, source[d], cu, so);
    m->so[d] = ok ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (ok && !m->so[d])
      fprintf(stderr, "  dlopen %s: %s\n", so, dlerror());
    free(cu);
    free(so);
    if (!m->so[d])
      return false;
    m->arena_elems[d] = p->dev[d].arena * batch;
    m->weight_elems[d] = p->dev[d].weights;
    m->scratch_elems[d] = rt_plan_scratch_elems(p, d, batch);
    m->arena[d] = xcalloc(m->arena_elems[d] ? m->arena_elems[d] : 1, sizeof(float));
    m->weights[d] = xcalloc(m->weight_elems[d] ? m->weight_elems[d] : 1, sizeof(float));
    m->scratch[d] = m->scratch_elems[d] ? xcalloc(m->scratch_elems[d], sizeof(float)) : NULL;
  }
  emu_machine_poison(m);
  return true;
}

static void emu_machine_free(EmuMachine *m) {
  for (int d = 0; d < m->n_devices; d++) {
    if (m->so[d])
      dlclose(m->so[d]);
    free(m->arena[d]);
    free(m->weights[d]);
    free(m->scratch[d]);
  }
  memset(m, 0, sizeof *m);
}

#endif
