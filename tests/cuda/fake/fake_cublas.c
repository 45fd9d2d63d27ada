// fake_cublas.c — a fake cuBLAS (libcublas.so.13) on top of the fake driver
// (fake_cuda.c): the handle calls the runtime makes, and GEMMs computed on the CPU by
// tests/cuda/emu_gemm.h with cuBLAS's argument checks and math modes.
//
// A GEMM is asynchronous, as on a GPU: its arguments are checked when it is called
// (sizes: CUBLAS_STATUS_INVALID_VALUE; each operand's range must lie inside one
// allocation of the handle's device), alpha and beta are read then (host pointer
// mode, the default), and the multiplication is queued on the handle's stream through
// fake_cuda_enqueue, so it runs when the fake driver drains that stream, in whatever
// order relative to other streams the fake's scheduler picks.
//
// Precision: cublasSgemm follows the handle's math mode (CUBLAS_TF32_TENSOR_OP_MATH:
// A and B rounded to TF32; DEFAULT and PEDANTIC: fp32). cublasGemmEx takes A and B both
// CUDA_R_32F or both CUDA_R_16BF, C CUDA_R_32F, and CUBLAS_COMPUTE_32F (TF32 if the
// handle's math mode asks for it and the inputs are fp32), CUBLAS_COMPUTE_32F_PEDANTIC
// (fp32) or CUBLAS_COMPUTE_32F_FAST_TF32 (fp32 inputs only, as in cuBLAS's table);
// anything else is CUBLAS_STATUS_NOT_SUPPORTED. Accumulation is fp32 throughout.
//
// One rule of alexc's rather than cuBLAS's: a GEMM in CUBLAS_PEDANTIC_MATH is a
// violation. Real cuBLAS accepts it, but pedantic mode is meant for numerical studies
// and may be slower, and the default mode already keeps Sgemm off TF32, so the runtime
// must not ask for it.
#define _GNU_SOURCE
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>

#include "../emu_gemm.h"
#include "fake_cuda.h"

struct cublasContext {
  CUcontext ctx;  // the context current at cublasCreate: the handle's device
  cudaStream_t stream;
  cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
  CUcontext ctx = fake_cuda_current();
  if (!handle)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!ctx) {
    fake_cuda_violation("cublasCreate: no current context");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  cublasHandle_t h = calloc(1, sizeof *h);
  if (!h)
    return CUBLAS_STATUS_ALLOC_FAILED;
  h->ctx = ctx;
  h->math = CUBLAS_DEFAULT_MATH;
  *handle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  fake_cuda_drain_all();  // cublasDestroy synchronises the device
  free(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream)
    return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  unsigned base = (unsigned)mode & 0xf, extra = (unsigned)mode & ~0xfu;
  if (base > CUBLAS_TF32_TENSOR_OP_MATH ||
      (extra & ~(unsigned)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode)
    return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------- GEMM

typedef struct {
  char ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const void *a, *b;
  float *c;
  EmuType at, bt;
  EmuMath math;
} Gemm;

static void run_gemm(void *arg) {
  const Gemm *g = arg;
  const char *bad = emu_gemm(g->ta, g->tb, g->m, g->n, g->k, g->alpha, g->a, g->at, g->lda, g->b,
                             g->bt, g->ldb, g->beta, g->c, g->ldc, g->math);
  if (bad)  // checked when queued; only "out of memory" can come back here
    fake_cuda_violation("GEMM failed when it ran: %s", bad);
}

// CUBLAS_OP_C is CUBLAS_OP_T for real matrices; anything else fails emu_gemm_check.
static char op_char(cublasOperation_t op) {
  return op == CUBLAS_OP_N ? 'N' : op == CUBLAS_OP_T || op == CUBLAS_OP_C ? 'T' : '?';
}

// Checks a GEMM as cuBLAS would and against the fake's memory, then queues it.
static cublasStatus_t queue_gemm(const char *what, cublasHandle_t h, const Gemm *g) {
  if (!h)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  CUcontext cur = fake_cuda_current();
  if (cur != h->ctx) {
    fake_cuda_violation("%s: the handle belongs to device %d, the current context is %s%d's", what,
                        fake_cuda_context_device(h->ctx),
                        cur ? "device " : "none: ", fake_cuda_context_device(cur));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (fake_cuda_stream_context(h->stream) != h->ctx) {
    fake_cuda_violation("%s: the handle's stream %p is not a live stream of the handle's device",
                        what, (void *)h->stream);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const char *bad = emu_gemm_check(g->ta, g->tb, g->m, g->n, g->k, g->lda, g->ldb, g->ldc);
  if (bad) {
    fake_cuda_violation("%s %c %c m %lld n %lld k %lld lda %lld ldb %lld ldc %lld: %s", what, g->ta,
                        g->tb, (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->lda,
                        (long long)g->ldb, (long long)g->ldc, bad);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (!g->m || !g->n)
    return CUBLAS_STATUS_SUCCESS;
  int d = fake_cuda_context_device(h->ctx);
  bool tra = g->ta == 'T', trb = g->tb == 'T';
  char name[160];
  snprintf(name, sizeof name, "%s A", what);
  bool ok = fake_cuda_check_range(
      name, d, (CUdeviceptr)(uintptr_t)g->a,
      (size_t)emu_operand_bytes(tra ? g->k : g->m, tra ? g->m : g->k, g->lda, g->at));
  snprintf(name, sizeof name, "%s B", what);
  ok = ok && fake_cuda_check_range(
                 name, d, (CUdeviceptr)(uintptr_t)g->b,
                 (size_t)emu_operand_bytes(trb ? g->n : g->k, trb ? g->k : g->n, g->ldb, g->bt));
  snprintf(name, sizeof name, "%s C", what);
  ok = ok && fake_cuda_check_range(name, d, (CUdeviceptr)(uintptr_t)g->c,
                                   (size_t)emu_operand_bytes(g->m, g->n, g->ldc, EMU_F32));
  if (!ok)
    return CUBLAS_STATUS_INVALID_VALUE;
  Gemm *arg = malloc(sizeof *arg);
  if (!arg)
    return CUBLAS_STATUS_ALLOC_FAILED;
  *arg = *g;
  return fake_cuda_enqueue(h->stream, what, run_gemm, arg) == CUDA_SUCCESS
             ? CUBLAS_STATUS_SUCCESS
             : CUBLAS_STATUS_EXECUTION_FAILED;
}

// The math mode's effect on fp32 operands.
static EmuMath handle_math(cublasHandle_t h) {
  return h && ((unsigned)h->math & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH ? EMU_MATH_TF32
                                                                      : EMU_MATH_FP32;
}

// The rule in the header comment: no GEMM in pedantic math mode.
static bool pedantic_ok(const char *what, cublasHandle_t h) {
  if (!h || ((unsigned)h->math & 0xf) != CUBLAS_PEDANTIC_MATH)
    return true;
  fake_cuda_violation("%s in CUBLAS_PEDANTIC_MATH: alexc's fp32 GEMMs use CUBLAS_DEFAULT_MATH "
                      "(which never uses TF32 for Sgemm)", what);
  return false;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float *alpha,
                           const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
  if (!alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!pedantic_ok("cublasSgemm", handle))
    return CUBLAS_STATUS_INVALID_VALUE;
  Gemm g = {op_char(transa), op_char(transb), m, n, k, lda,     ldb,     ldc,
            *alpha,          *beta,           A, B, C, EMU_F32, EMU_F32, handle_math(handle)};
  return queue_gemm("cublasSgemm", handle, &g);
}

static bool emu_type(cudaDataType t, EmuType *out) {
  if (t == CUDA_R_32F)
    *out = EMU_F32;
  else if (t == CUDA_R_16BF)
    *out = EMU_BF16;
  else
    return false;
  return true;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
  (void)algo;  // any algorithm computes the same here
  EmuType at, bt;
  if (!emu_type(Atype, &at) || !emu_type(Btype, &bt) || at != bt || Ctype != CUDA_R_32F ||
      (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC &&
       computeType != CUBLAS_COMPUTE_32F_FAST_TF32) ||
      (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 && at != EMU_F32)) {
    fprintf(stderr,
            "fake cublas: cublasGemmEx: A type %d, B type %d, C type %d, compute type %d: "
            "not supported\n",
            (int)Atype, (int)Btype, (int)Ctype, (int)computeType);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!alpha || !beta || !pedantic_ok("cublasGemmEx", handle))
    return CUBLAS_STATUS_INVALID_VALUE;
  // Compute type 32F is the handle's choice; PEDANTIC never, FAST_TF32 always rounds.
  EmuMath math = computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ? EMU_MATH_TF32
                 : computeType == CUBLAS_COMPUTE_32F         ? handle_math(handle)
                                                             : EMU_MATH_FP32;
  Gemm g = {op_char(transa),       op_char(transb),      m, n, k, lda, ldb, ldc,
            *(const float *)alpha, *(const float *)beta, A, B, C, at,  bt,  math};
  return queue_gemm("cublasGemmEx", handle, &g);
}
