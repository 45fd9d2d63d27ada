// fake_cublaslt.c — a fake cuBLASLt (libcublasLt.so.13) on top of the fake driver
// (fake_cuda.c): what runtime/cuda.c uses for a GEMM with a bias (and ReLU) epilogue,
// computed on the CPU by tests/cuda/emu_gemm.h.
//
// It checks what cuBLASLt would refuse and what would go wrong silently on a GPU:
// - descriptors: the compute and scale types, TRANSA/TRANSB, the epilogue (BIAS or
//   RELU_BIAS here), a bias pointer set; layouts whose rows and columns agree with the
//   GEMM's m, n, k and transposes, leading dimensions of at least the rows, A and B of
//   one type (fp32, or bf16 with fp32 compute), C and D fp32;
// - the heuristic: the algorithm it returns remembers the minimum alignments the
//   preference allowed (default 256 bytes, as cuBLASLt's) and the workspace it may
//   use; a cublasLtMatmul whose A, B, C, D or bias pointer is less aligned than the
//   algorithm was chosen for, or with less workspace than it asked, is a violation (on
//   a GPU: a misaligned access, or CUBLAS_STATUS_INVALID_VALUE);
// - memory: A, B, C and the bias (m floats) must lie in allocations of the stream's
//   device; the workspace too when the algorithm uses one.
// The matmul is queued on its stream like every asynchronous operation of the fake.
#define _GNU_SOURCE
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../emu_gemm.h"
#include "fake_cuda.h"

// What the fake keeps in cuBLASLt's semi-opaque descriptors (which are larger).
typedef struct {
  cublasComputeType_t compute;
  cudaDataType scale;
  cublasOperation_t ta, tb;
  cublasLtEpilogue_t epilogue;
  const void *bias;
} Desc;
typedef struct {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
} Layout;
typedef struct {
  size_t workspace;
  uint32_t align[4];  // A, B, C, D
} Pref;
typedef struct {  // what an algorithm returned by the heuristic was chosen for
  uint64_t magic;
  size_t workspace;
  uint32_t align[5];  // A, B, C, D, bias
} Algo;

#define ALGO_MAGIC 0xa1e8c1a160ull
#define WORKSPACE_USED ((size_t)1 << 20)  // what the fake's algorithms ask for

_Static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "Desc fits");
_Static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "Layout fits");
_Static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "Algo fits");

struct cublasLtContext {
  int live;
};

static cublasStatus_t bad(const char *fmt, const char *what) {
  fake_cuda_violation(fmt, what);
  return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
  if (!h)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!fake_cuda_current()) {
    fake_cuda_violation("cublasLtCreate: no current context");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  *h = calloc(1, sizeof **h);
  if (!*h)
    return CUBLAS_STATUS_ALLOC_FAILED;
  (*h)->live = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  if (!h || !h->live)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  fake_cuda_drain_all();
  h->live = 0;
  free(h);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (!d)
    return CUBLAS_STATUS_INVALID_VALUE;
  if ((compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32) ||
      scale != CUDA_R_32F) {
    fake_cuda_violation("cublasLtMatmulDescCreate: compute type %d, scale type %d: not emulated",
                        (int)compute, (int)scale);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  *d = calloc(1, sizeof **d);
  if (!*d)
    return CUBLAS_STATUS_ALLOC_FAILED;
  Desc *x = (Desc *)*d;
  *x = (Desc){compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, NULL};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  free(d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
  if (!d || !buf)
    return CUBLAS_STATUS_INVALID_VALUE;
  Desc *x = (Desc *)d;
  switch (attr) {
  case CUBLASLT_MATMUL_DESC_TRANSA:
  case CUBLASLT_MATMUL_DESC_TRANSB: {
    int32_t op;
    if (size != sizeof op)
      return bad("%s: a transpose is an int32", "cublasLtMatmulDescSetAttribute");
    memcpy(&op, buf, sizeof op);
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T)
      return bad("%s: transpose not N or T", "cublasLtMatmulDescSetAttribute");
    *(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &x->ta : &x->tb) = (cublasOperation_t)op;
    return CUBLAS_STATUS_SUCCESS;
  }
  case CUBLASLT_MATMUL_DESC_EPILOGUE: {
    uint32_t e;
    if (size != sizeof e)
      return bad("%s: the epilogue is a uint32", "cublasLtMatmulDescSetAttribute");
    memcpy(&e, buf, sizeof e);
    if (e != CUBLASLT_EPILOGUE_BIAS && e != CUBLASLT_EPILOGUE_RELU_BIAS &&
        e != CUBLASLT_EPILOGUE_DEFAULT) {
      fake_cuda_violation("cublasLtMatmulDescSetAttribute: epilogue %u is not emulated", e);
      return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    x->epilogue = (cublasLtEpilogue_t)e;
    return CUBLAS_STATUS_SUCCESS;
  }
  case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
    if (size != sizeof x->bias)
      return bad("%s: the bias pointer is a pointer", "cublasLtMatmulDescSetAttribute");
    memcpy(&x->bias, buf, sizeof x->bias);
    return CUBLAS_STATUS_SUCCESS;
  default:
    fake_cuda_violation("cublasLtMatmulDescSetAttribute: attribute %d is not emulated", (int)attr);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (!l)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (type != CUDA_R_32F && type != CUDA_R_16BF) {
    fake_cuda_violation("cublasLtMatrixLayoutCreate: type %d is not emulated", (int)type);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (ld < (int64_t)(rows ? rows : 1))
    return bad("%s: leading dimension below the rows", "cublasLtMatrixLayoutCreate");
  *l = calloc(1, sizeof **l);
  if (!*l)
    return CUBLAS_STATUS_ALLOC_FAILED;
  *(Layout *)*l = (Layout){type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  free(l);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
  if (!p)
    return CUBLAS_STATUS_INVALID_VALUE;
  Pref *x = malloc(sizeof *x);
  if (!x)
    return CUBLAS_STATUS_ALLOC_FAILED;
  *x = (Pref){0, {256, 256, 256, 256}};
  *p = (cublasLtMatmulPreference_t)x;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  free(p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void *buf, size_t size) {
  if (!p || !buf)
    return CUBLAS_STATUS_INVALID_VALUE;
  Pref *x = (Pref *)p;
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && size == sizeof(uint64_t)) {
    uint64_t v;
    memcpy(&v, buf, sizeof v);
    x->workspace = (size_t)v;
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
      attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES && size == sizeof(uint32_t)) {
    uint32_t v;
    memcpy(&v, buf, sizeof v);
    if (!v || (v & (v - 1)))
      return bad("%s: an alignment is a power of two", "cublasLtMatmulPreferenceSetAttribute");
    x->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = v;
    return CUBLAS_STATUS_SUCCESS;
  }
  fake_cuda_violation("cublasLtMatmulPreferenceSetAttribute: attribute %d (size %zu) is not "
                      "emulated", (int)attr, size);
  return CUBLAS_STATUS_NOT_SUPPORTED;
}

// The GEMM the descriptors describe: m, n, k from D and op(A), checked against op(B).
static const char *shape(const Desc *x, const Layout *a, const Layout *b, const Layout *c,
                         const Layout *d, int64_t *m, int64_t *n, int64_t *k) {
  *m = (int64_t)c->rows;
  *n = (int64_t)c->cols;
  *k = (int64_t)(x->ta == CUBLAS_OP_T ? a->rows : a->cols);
  uint64_t am = x->ta == CUBLAS_OP_T ? a->cols : a->rows;
  uint64_t bk = x->tb == CUBLAS_OP_T ? b->cols : b->rows, bn = x->tb == CUBLAS_OP_T ? b->rows : b->cols;
  if (am != c->rows || bn != c->cols || bk != (uint64_t)*k)
    return "the layouts of A, B and C do not make a GEMM";
  if (memcmp(c, d, sizeof *c))
    return "C and D differ (in place: they must be the same)";
  if (a->type != b->type || c->type != CUDA_R_32F)
    return "A and B differ in type, or C is not fp32";
  if (a->type == CUDA_R_16BF && x->compute != CUBLAS_COMPUTE_32F)
    return "bf16 inputs want CUBLAS_COMPUTE_32F";
  if (x->epilogue != CUBLASLT_EPILOGUE_DEFAULT && !x->bias)
    return "a bias epilogue without a bias pointer";
  return NULL;
}

static uint32_t alignment(const void *p) {
  uint32_t a = 256;
  while (a > 1 && (uintptr_t)p % a)
    a /= 2;
  return a;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results,
                                              int *returned) {
  if (!h || !desc || !a || !b || !c || !d || !pref || requested < 1 || !results || !returned)
    return CUBLAS_STATUS_INVALID_VALUE;
  const Desc *x = (const Desc *)desc;
  const Pref *p = (const Pref *)pref;
  int64_t m, n, k;
  const char *why = shape(x, (Layout *)a, (Layout *)b, (Layout *)c, (Layout *)d, &m, &n, &k);
  if (why)
    return bad("cublasLtMatmulAlgoGetHeuristic: %s", why);
  memset(results, 0, sizeof *results);
  Algo *al = (Algo *)&results->algo;
  // The bias pointer set in the descriptor informs its alignment, as cuBLASLt's does.
  *al = (Algo){ALGO_MAGIC, p->workspace >= WORKSPACE_USED ? WORKSPACE_USED : 0,
               {p->align[0], p->align[1], p->align[2], p->align[3], alignment(x->bias)}};
  results->workspaceSize = al->workspace;
  results->state = CUBLAS_STATUS_SUCCESS;
  results->wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

typedef struct {
  char ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  const void *a, *b;
  float *c;
  const float *bias;
  EmuType type;
  EmuMath math;
  int relu;
} Matmul;

static void run_matmul(void *arg) {
  const Matmul *g = arg;
  const char *why = emu_gemm(g->ta, g->tb, g->m, g->n, g->k, 1.0f, g->a, g->type, g->lda, g->b,
                             g->type, g->ldb, 0.0f, g->c, g->ldc, g->math);
  if (why) {
    fake_cuda_violation("cublasLtMatmul failed when it ran: %s", why);
    return;
  }
  if (g->bias)
    emu_bias_epilogue(g->m, g->n, g->c, g->ldc, g->bias, g->relu);
}

static bool in_memory(const char *what, int dev, const void *p, size_t bytes) {
  return fake_cuda_check_range(what, dev, (CUdeviceptr)(uintptr_t)p, bytes);
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t a, const void *B,
                              cublasLtMatrixLayout_t b, const void *beta, const void *C,
                              cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  if (!h || !h->live)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!desc || !alpha || !beta || !a || !b || !c || !d || !algo)
    return CUBLAS_STATUS_INVALID_VALUE;
  const Desc *x = (const Desc *)desc;
  const Algo *al = (const Algo *)algo;
  int64_t m, n, k;
  const char *why = shape(x, (Layout *)a, (Layout *)b, (Layout *)c, (Layout *)d, &m, &n, &k);
  if (why)
    return bad("cublasLtMatmul: %s", why);
  if (al->magic != ALGO_MAGIC)
    return bad("%s: the algorithm does not come from cublasLtMatmulAlgoGetHeuristic", "cublasLtMatmul");
  float one, zero;
  memcpy(&one, alpha, sizeof one);
  memcpy(&zero, beta, sizeof zero);
  if (one != 1.0f || zero != 0.0f || C != D)
    return bad("%s: only alpha 1, beta 0 and D = C are emulated", "cublasLtMatmul");
  const void *ptrs[5] = {A, B, C, D, x->bias};
  static const char *const names[5] = {"A", "B", "C", "D", "bias"};
  for (int i = 0; i < 5; i++)
    if (ptrs[i] && alignment(ptrs[i]) < al->align[i]) {
      fake_cuda_violation("cublasLtMatmul: %s at %p is %u-byte aligned; the algorithm was chosen "
                          "for %u (tell the heuristic the alignment)", names[i], ptrs[i],
                          alignment(ptrs[i]), al->align[i]);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  if (workspace_bytes < al->workspace)
    return bad("%s: less workspace than the algorithm asked for", "cublasLtMatmul");
  CUcontext ctx = fake_cuda_stream_context(stream);
  if (!ctx)
    return bad("%s: not a live stream", "cublasLtMatmul");
  int dev = fake_cuda_context_device(ctx);
  EmuType type = ((Layout *)a)->type == CUDA_R_16BF ? EMU_BF16 : EMU_F32;
  bool tra = x->ta == CUBLAS_OP_T, trb = x->tb == CUBLAS_OP_T;
  Matmul g = {tra ? 'T' : 'N', trb ? 'T' : 'N', m, n, k, ((Layout *)a)->ld, ((Layout *)b)->ld,
              ((Layout *)c)->ld, A, B, D,
              x->epilogue == CUBLASLT_EPILOGUE_DEFAULT ? NULL : x->bias, type,
              x->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? EMU_MATH_TF32 : EMU_MATH_FP32,
              x->epilogue == CUBLASLT_EPILOGUE_RELU_BIAS};
  if (m && n &&
      (!in_memory("cublasLtMatmul A", dev, A,
                  (size_t)emu_operand_bytes(tra ? k : m, tra ? m : k, g.lda, type)) ||
       !in_memory("cublasLtMatmul B", dev, B,
                  (size_t)emu_operand_bytes(trb ? n : k, trb ? k : n, g.ldb, type)) ||
       !in_memory("cublasLtMatmul C", dev, D, (size_t)emu_operand_bytes(m, n, g.ldc, EMU_F32)) ||
       (g.bias && !in_memory("cublasLtMatmul bias", dev, g.bias, (size_t)m * sizeof(float))) ||
       (al->workspace && !in_memory("cublasLtMatmul workspace", dev, workspace, al->workspace))))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!m || !n)
    return CUBLAS_STATUS_SUCCESS;
  Matmul *arg = malloc(sizeof *arg);
  if (!arg)
    return CUBLAS_STATUS_ALLOC_FAILED;
  *arg = g;
  return fake_cuda_enqueue(stream, "cublasLtMatmul", run_matmul, arg) == CUDA_SUCCESS
             ? CUBLAS_STATUS_SUCCESS
             : CUBLAS_STATUS_EXECUTION_FAILED;
}
