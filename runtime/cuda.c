// The CUDA executor: runs a plan (alexrt_cuda.h) on one or more GPUs through the
// driver API and cuBLAS, both loaded with dlopen at run time. The headers give the
// types; nothing links against libcuda or libcublas, so a binary built with the
// toolkit starts on a machine without a GPU and reports "no CUDA driver found" or
// "no GPU" instead of failing to load.
//
// Logical devices map to GPUs round robin. Each logical device has its own stream
// (and cuBLAS handle bound to it), so a two-device plan runs its two towers
// concurrently: on two GPUs, or on two streams of one GPU. The plan's steps are issued
// in order; ordering between devices exists only at transfers, which the executor
// turns into event waits both ways (the receiver waits until the sender has produced
// the data; the sender waits until the copy has read it before its later steps may
// reuse that memory: the memory plan reuses buffers).
//
// Per logical device: a weight buffer (allocated and filled at open), an activation
// arena and a scratch buffer (im2col columns and conv GEMM output of one chunk of
// images: rt_plan_scratch_elems), both reallocated when a larger batch arrives. The
// chunk loops, like every address, are rt_plan_run's (runtime/cuda_plan.c), the same
// code the CPU emulator of tests/cuda/ runs. tests/cuda/fake/ is a CPU stand-in for
// libcuda and cuBLAS that runs this file's calls with the streams in a random order.
//
// CUDA graphs. A batch's steps (everything between the input's upload and the output's
// download) are captured once per batch size into a CUDA graph and replayed: one
// cuGraphLaunch instead of a launch and a GEMM call per step, so the GPU does not wait
// for the host between kernels. The capture starts on device 0's stream; the other
// streams join it through the first transfer's event and are joined back at the end
// (join_streams), so a multi-stream plan is one graph with its concurrency kept.
// Only when every logical device is on one GPU (graphs spanning GPUs are not used);
// rt_cuda_set_graphs(r, false) or ALEXC_CUDA_GRAPHS=0 issues the steps directly, as
// per-step timing (rt_cuda_time with per_layer) always does.
//
// NCCL (data-parallel training: rt_cuda_nccl_join). libnccl.so.2 is loaded with dlopen
// the first time a rank asks for an id or joins. An RT_STEP_ALLREDUCE step is one
// ncclAllReduce, in place, on the device's stream, so it runs after the backward's
// kernels and before the update's in stream order; the host does not wait for it. An
// executor that has joined never captures a graph. NCCL calls can be captured (NCCL 2.9
// and later), but the training step, the only plan with the step, is issued step by step
// anyway (rt_cuda_steps), so capture would buy nothing here and would need checking on
// real NCCL, which this was never run against (the fake NCCL does not model capture).
#define _GNU_SOURCE
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda.h>
#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cuda.h"
#include "internal.h"

#define STR(x) STR2(x)
#define STR2(x) #x

// The driver and cuBLAS entry points used here. cuda.h maps some names to versioned
// symbols (cuMemAlloc -> cuMemAlloc_v2); STR() expands the macro, so dlsym asks for
// the symbol the header means.
#define DRIVER_FUNCS(X)                                                                    \
  X(cuInit) X(cuGetErrorString) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)     \
  X(cuDeviceGetAttribute) X(cuDeviceCanAccessPeer) X(cuDevicePrimaryCtxRetain)            \
  X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuCtxSynchronize)                     \
  X(cuCtxEnablePeerAccess) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)   \
  X(cuMemAlloc) X(cuMemFree) X(cuMemGetInfo) X(cuMemcpy2D) X(cuMemcpy2DAsync)             \
  X(cuMemcpy3DPeerAsync) X(cuLaunchKernel) X(cuStreamCreate) X(cuStreamDestroy)           \
  X(cuStreamSynchronize) X(cuStreamWaitEvent) X(cuEventCreate) X(cuEventDestroy)          \
  X(cuEventRecord) X(cuEventElapsedTime) X(cuStreamBeginCapture) X(cuStreamEndCapture)   \
  X(cuGraphInstantiate) X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy)         \
  X(cuFuncSetAttribute)
#define CUBLAS_FUNCS(X)                                                                    \
  X(cublasCreate) X(cublasDestroy) X(cublasSetStream) X(cublasSetMathMode) X(cublasSgemm) \
  X(cublasGemmEx)

// cublasLt, for GEMMs with an epilogue (an fc layer's bias and ReLU): loaded when a
// plan has such a GEMM.
#define LT_FUNCS(X)                                                                        \
  X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtMatmulDescCreate)                        \
  X(cublasLtMatmulDescDestroy) X(cublasLtMatmulDescSetAttribute)                          \
  X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutDestroy)                            \
  X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy)                    \
  X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmul)
#define DECLARE(f) __typeof__(&f) f;
static struct {
  void *lib;
  DRIVER_FUNCS(DECLARE)
} cu;
static struct {
  void *lib;
  CUBLAS_FUNCS(DECLARE)
} blas;
static struct {
  void *lib;
  LT_FUNCS(DECLARE)
} lt;
// NCCL, for RT_STEP_ALLREDUCE: loaded when a rank asks for an id or joins.
#define NCCL_FUNCS(X)                                                                      \
  X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclAllReduce) X(ncclCommDestroy)              \
  X(ncclGetErrorString)
static struct {
  void *lib;
  NCCL_FUNCS(DECLARE)
} nccl;

static bool cu_fail(const char *what, CUresult rc) {
  const char *msg = NULL;
  if (cu.cuGetErrorString)
    cu.cuGetErrorString(rc, &msg);
  return rt_fail("cuda: %s: %s (error %d)", what, msg ? msg : "unknown error", (int)rc);
}

#define CU(call, what)                      \
  do {                                      \
    CUresult rc_ = (call);                  \
    if (rc_ != CUDA_SUCCESS)                \
      return cu_fail(what, rc_);            \
  } while (0)

static int gpu_count;

static bool load_libraries(char *why, size_t size) {
  cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!cu.lib) {
    snprintf(why, size, "no CUDA driver found (libcuda.so.1: %s)", dlerror());
    return false;
  }
#define LOAD(lib_, table, f)                                                                \
  if (!(table.f = (__typeof__(table.f))dlsym(lib_, STR(f)))) {                             \
    snprintf(why, size, "the CUDA libraries lack %s: they are older than this toolkit", STR(f)); \
    return false;                                                                           \
  }
#define LOAD_CU(f) LOAD(cu.lib, cu, f)
  DRIVER_FUNCS(LOAD_CU)
  CUresult rc = cu.cuInit(0);
  if (rc == CUDA_SUCCESS)
    rc = cu.cuDeviceGetCount(&gpu_count);
  if (rc != CUDA_SUCCESS || gpu_count == 0) {
    const char *msg = NULL;
    if (rc != CUDA_SUCCESS && cu.cuGetErrorString(rc, &msg) != CUDA_SUCCESS)
      msg = NULL;
    if (rc == CUDA_SUCCESS)
      snprintf(why, size, "no GPU: the CUDA driver sees no device");
    else
      snprintf(why, size, "no GPU: cuInit failed: %s (CUDA error %d)",
               msg ? msg : "no description", (int)rc);
    return false;
  }
  const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  for (size_t i = 0; i < sizeof names / sizeof *names && !blas.lib; i++)
    blas.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!blas.lib) {
    snprintf(why, size, "cuBLAS not found (libcublas.so.13/12): fc layers and --conv gemm need it");
    return false;
  }
#define LOAD_BLAS(f) LOAD(blas.lib, blas, f)
  CUBLAS_FUNCS(LOAD_BLAS)
  return true;
}

// In a library loaded on first use (cuBLASLt, NCCL), inside its loader: resolves table.f,
// or closes the library and fails, keeping why in the loader's `why` for later calls.
#define LOAD_OR_FORGET(table, f, what)                                                     \
  if (!(table.f = (__typeof__(table.f))dlsym(table.lib, STR(f)))) {                        \
    snprintf(why, sizeof why, "%s lacks %s: it is older than this toolkit's headers", what, \
             STR(f));                                                                       \
    dlclose(table.lib);                                                                    \
    table.lib = NULL;                                                                      \
    return rt_fail("%s", why);                                                             \
  }

// cublasLt, the first time a plan needs it.
static bool load_cublaslt(void) {
  static char why[512];
  if (lt.lib)
    return true;
  if (why[0])
    return rt_fail("%s", why);
  const char *names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  for (size_t i = 0; i < sizeof names / sizeof *names && !lt.lib; i++)
    lt.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!lt.lib) {
    snprintf(why, sizeof why, "cuBLASLt not found (libcublasLt.so.13/12): the fc layers' "
             "bias and ReLU epilogues need it");
    return rt_fail("%s", why);
  }
#define LOAD_LT(f) LOAD_OR_FORGET(lt, f, "cuBLASLt")
  LT_FUNCS(LOAD_LT)
  return true;
}

// NCCL, the first time data parallelism needs it.
static bool load_nccl(void) {
  static char why[512];
  if (nccl.lib)
    return true;
  if (why[0])
    return rt_fail("%s", why);
  if (!(nccl.lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL))) {
    snprintf(why, sizeof why, "NCCL not found (libnccl.so.2: %s): training on several ranks "
             "with --target cuda needs it", dlerror());
    return rt_fail("%s", why);
  }
#define LOAD_NCCL(f) LOAD_OR_FORGET(nccl, f, "NCCL")
  NCCL_FUNCS(LOAD_NCCL)
  return true;
}

static bool nccl_ok(ncclResult_t rc, const char *what) {
  return rc == ncclSuccess ||
         rt_fail("nccl: %s: %s (error %d)", what, nccl.ncclGetErrorString(rc), (int)rc);
}

bool rt_cuda_available(void) {
  static bool tried, ok;
  static char why[512];
  if (!tried) {
    tried = true;
    ok = load_libraries(why, sizeof why);
  }
  return ok || rt_fail("%s", why);
}

bool rt_cuda_gpu_count(int *count) {
  if (!rt_cuda_available())
    return false;
  *count = gpu_count;
  return true;
}

bool rt_cuda_device(char *arch, size_t arch_size, char *name, size_t name_size) {
  CUdevice dev;
  int major = 0, minor = 0;
  if (!rt_cuda_available())
    return false;
  CU(cu.cuDeviceGet(&dev, 0), "cuDeviceGet");
  CU(cu.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
     "cuDeviceGetAttribute");
  CU(cu.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
     "cuDeviceGetAttribute");
  snprintf(arch, arch_size, "sm_%d%d", major, minor);
  if (name && name_size)
    CU(cu.cuDeviceGetName(name, (int)name_size, dev), "cuDeviceGetName");
  return true;
}

// ---------------------------------------------------------------- the executor

typedef struct {
  CUdevice dev;
  CUcontext ctx;
  size_t used_before;  // device memory in use once the primary context was current
} Gpu;

// A cublasLt matmul ready to run: its descriptors and the algorithm cuBLASLt's heuristic
// chose, for one GEMM shape with an epilogue and the alignments of its pointers (the
// heuristic picks by them, so a call whose pointers are less aligned gets its own).
typedef struct {
  int device;
  RtPrecision prec;
  char ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  bool relu;
  unsigned align[4];  // bytes: A, B, C (and D), bias; 256 at most
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
  size_t workspace;
} LtMatmul;

// The workspace each device with cublasLt matmuls gets: what cuBLAS's documentation
// recommends for Hopper, allocated at open (a graph capture may not allocate).
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)

// A step run between two timing events (rt_cuda_time with per_layer).
typedef struct {
  const RtStep *step;
  CUevent begin, end;
} Timed;

struct RtCuda {
  const RtPlan *plan;
  int n_gpus;
  Gpu gpu[RT_PLAN_MAX_DEVICES];
  int gpu_of[RT_PLAN_MAX_DEVICES];  // logical device -> gpu[]
  // Per logical device:
  CUstream stream[RT_PLAN_MAX_DEVICES];
  cublasHandle_t blas[RT_PLAN_MAX_DEVICES];  // bound to that stream
  CUevent ready[RT_PLAN_MAX_DEVICES];        // "the stream got this far", for waits
  CUmodule module[RT_PLAN_MAX_DEVICES];
  CUdeviceptr arena[RT_PLAN_MAX_DEVICES], weights[RT_PLAN_MAX_DEVICES];
  CUdeviceptr scratch[RT_PLAN_MAX_DEVICES];  // one chunk's im2col columns and conv GEMM output
  cublasLtHandle_t lt[RT_PLAN_MAX_DEVICES];  // devices with epilogue GEMMs
  CUdeviceptr lt_workspace[RT_PLAN_MAX_DEVICES];
  LtMatmul *matmuls;
  int n_matmuls;
  cublasMath_t math[RT_PLAN_MAX_DEVICES];    // the mode blas[d] is in (set when it changes)
  bool math_set[RT_PLAN_MAX_DEVICES];
  int arena_batch;  // the arenas (and scratch buffers) are sized for this many images
  bool graphs;       // replay captured graphs (one GPU only)
  CUgraphExec graph;  // the steps of a batch of graph_batch images, on these buffers
  int graph_batch;
  int graph_captures, graph_launches;  // for rt_cuda_graph_stats
  // Timing (rt_cuda_time): events recorded around steps, reused from run to run.
  Timed *timed;
  int n_timed, cap_timed;
  ncclComm_t comm;  // joined (rt_cuda_nccl_join): the plan's one device's communicator
};

static Gpu *gpu(RtCuda *r, int d) { return &r->gpu[r->gpu_of[d]]; }

static bool use(RtCuda *r, int d) {
  CU(cu.cuCtxSetCurrent(gpu(r, d)->ctx), "cuCtxSetCurrent");
  return true;
}

// smem: the kernel's dynamic shared memory (extern __shared__), which a launch may ask
// for beyond the default 48 KiB only up to the function's
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: set to exactly that first (the
// compiler sized it for the plan's --arch; a GPU with less refuses it here).
static bool launch(void *ctx, int d, const char *kernel, int64_t grid, int block, int smem,
                   const uint64_t *args, int n_args, int batch) {
  RtCuda *r = ctx;
  CUfunction f;
  if (!use(r, d))
    return false;
  CU(cu.cuModuleGetFunction(&f, r->module[d], kernel), kernel);
  if (smem)
    CU(cu.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem),
       "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
  CUdeviceptr ptrs[RT_PLAN_MAX_ARGS];
  void *params[RT_PLAN_MAX_ARGS + 1];
  for (int a = 0; a < n_args; a++) {
    ptrs[a] = (CUdeviceptr)args[a];
    params[a] = &ptrs[a];
  }
  params[n_args] = &batch;
  CU(cu.cuLaunchKernel(f, (unsigned)grid, 1, 1, (unsigned)block, 1, 1, (unsigned)smem,
                       r->stream[d], params, NULL),
     kernel);
  return true;
}

static bool blas_ok(cublasStatus_t st, const char *what) {
  return st == CUBLAS_STATUS_SUCCESS || rt_fail("cuda: %s failed (cuBLAS status %d)", what, (int)st);
}

// Puts logical device d's cuBLAS handle in `mode`, unless it is already.
static bool set_math(RtCuda *r, int d, cublasMath_t mode) {
  if (r->math_set[d] && r->math[d] == mode)
    return true;
  if (!blas_ok(blas.cublasSetMathMode(r->blas[d], mode), "cublasSetMathMode"))
    return false;
  r->math[d] = mode;
  r->math_set[d] = true;
  return true;
}

// fp32: cublasSgemm in the default math mode, which never uses TF32 for Sgemm (pedantic
// mode is meant for numerical studies and may be slower, cuBLAS's documentation says);
// tf32: the same call with TF32 tensor-core math allowed; bf16: cublasGemmEx on bfloat16
// A and B with float accumulation and a float C. One handle serves all: its math mode is set when a GEMM
// needs another than the last.
static bool gemm(void *ctx, int d, RtPrecision prec, char transa, char transb, int64_t m,
                 int64_t n, int64_t k, float alpha, uint64_t a, int64_t lda, uint64_t b,
                 int64_t ldb, float beta, uint64_t c, int64_t ldc) {
  RtCuda *r = ctx;
  if (!use(r, d))
    return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
      ldc > INT32_MAX)
    return rt_fail("cuda: a GEMM too large for cuBLAS's int sizes");
  cublasHandle_t h = r->blas[d];
  cublasOperation_t ta = transa == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t tb = transb == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
  const void *A = (const void *)(uintptr_t)a, *B = (const void *)(uintptr_t)b;
  float *C = (float *)(uintptr_t)c;
  if (!set_math(r, d, prec == RT_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH))
    return false;
  if (prec == RT_BF16)
    return blas_ok(blas.cublasGemmEx(h, ta, tb, (int)m, (int)n, (int)k, &alpha, A, CUDA_R_16BF,
                                     (int)lda, B, CUDA_R_16BF, (int)ldb, &beta, C, CUDA_R_32F,
                                     (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx (bf16)");
  return blas_ok(blas.cublasSgemm(h, ta, tb, (int)m, (int)n, (int)k, &alpha, A, (int)lda, B,
                                  (int)ldb, &beta, C, (int)ldc),
                 prec == RT_TF32 ? "cublasSgemm (tf32)" : "cublasSgemm");
}

static unsigned alignment(uint64_t p) {
  unsigned a = 256;
  while (a > 1 && p % a)
    a /= 2;
  return a;
}

static bool lt_ok(cublasStatus_t st, const char *what) {
  return st == CUBLAS_STATUS_SUCCESS || rt_fail("cuda: %s failed (cuBLASLt status %d)", what, (int)st);
}

static void free_matmul(LtMatmul *mm) {
  if (mm->desc)
    lt.cublasLtMatmulDescDestroy(mm->desc);
  if (mm->a)
    lt.cublasLtMatrixLayoutDestroy(mm->a);
  if (mm->b)
    lt.cublasLtMatrixLayoutDestroy(mm->b);
  if (mm->c)
    lt.cublasLtMatrixLayoutDestroy(mm->c);
}

// Descriptors for mm's shape and the heuristic's best algorithm for its alignments.
static bool make_matmul(RtCuda *r, LtMatmul *mm, uint64_t bias) {
  cublasComputeType_t compute = mm->prec == RT_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cudaDataType ab = mm->prec == RT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasOperation_t ta = mm->ta == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t tb = mm->tb == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtEpilogue_t epi = mm->relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  const void *bias_ptr = (const void *)(uintptr_t)bias;  // its alignment informs the choice
  bool ok =
      lt_ok(lt.cublasLtMatmulDescCreate(&mm->desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate") &&
      lt_ok(lt.cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
            "setting TRANSA") &&
      lt_ok(lt.cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
            "setting TRANSB") &&
      lt_ok(lt.cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                              sizeof epi), "setting the epilogue") &&
      lt_ok(lt.cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                              &bias_ptr, sizeof bias_ptr), "setting the bias") &&
      lt_ok(lt.cublasLtMatrixLayoutCreate(&mm->a, ab, mm->ta == 'T' ? mm->k : mm->m,
                                          mm->ta == 'T' ? mm->m : mm->k, mm->lda), "layout of A") &&
      lt_ok(lt.cublasLtMatrixLayoutCreate(&mm->b, ab, mm->tb == 'T' ? mm->n : mm->k,
                                          mm->tb == 'T' ? mm->k : mm->n, mm->ldb), "layout of B") &&
      lt_ok(lt.cublasLtMatrixLayoutCreate(&mm->c, CUDA_R_32F, mm->m, mm->n, mm->ldc), "layout of C");
  cublasLtMatmulPreference_t pref = NULL;
  size_t ws = LT_WORKSPACE_BYTES;
  ok = ok && lt_ok(lt.cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate") &&
       lt_ok(lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &ws, sizeof ws), "setting the workspace");
  const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && ok; i++) {
    uint32_t bytes = mm->align[i < 3 ? i : 2];
    ok = lt_ok(lt.cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &bytes, sizeof bytes),
               "setting an alignment");
  }
  cublasLtMatmulHeuristicResult_t best;
  int found = 0;
  ok = ok && lt_ok(lt.cublasLtMatmulAlgoGetHeuristic(r->lt[mm->device], mm->desc, mm->a, mm->b,
                                                     mm->c, mm->c, pref, 1, &best, &found),
                   "cublasLtMatmulAlgoGetHeuristic");
  if (pref)
    lt.cublasLtMatmulPreferenceDestroy(pref);
  if (ok && !found)
    ok = rt_fail("cuda: cuBLASLt has no algorithm for a GEMM with a bias epilogue (m %lld, n "
                 "%lld, k %lld, %s)", (long long)mm->m, (long long)mm->n, (long long)mm->k,
                 rt_precision_name(mm->prec));
  if (ok) {
    mm->algo = best.algo;
    mm->workspace = best.workspaceSize;
  }
  return ok;
}

// The matmul for this shape and these alignments, made the first time it is needed.
static LtMatmul *find_matmul(RtCuda *r, const LtMatmul *key, uint64_t bias) {
  for (int i = 0; i < r->n_matmuls; i++) {
    LtMatmul *mm = &r->matmuls[i];
    if (mm->device == key->device && mm->prec == key->prec && mm->ta == key->ta &&
        mm->tb == key->tb && mm->m == key->m && mm->n == key->n && mm->k == key->k &&
        mm->lda == key->lda && mm->ldb == key->ldb && mm->ldc == key->ldc &&
        mm->relu == key->relu && !memcmp(mm->align, key->align, sizeof mm->align))
      return mm;
  }
  LtMatmul *grown = realloc(r->matmuls, (r->n_matmuls + 1) * sizeof *grown);
  if (!grown) {
    rt_fail("out of memory");
    return NULL;
  }
  r->matmuls = grown;
  LtMatmul *mm = &r->matmuls[r->n_matmuls];
  *mm = *key;
  if (!make_matmul(r, mm, bias)) {
    free_matmul(mm);
    return NULL;
  }
  r->n_matmuls++;
  return mm;
}

// A GEMM with a bias (and ReLU) epilogue, through cublasLt: an fc layer in one call.
static bool gemm_bias(void *ctx, int d, RtPrecision prec, char transa, char transb, int64_t m,
                      int64_t n, int64_t k, uint64_t a, int64_t lda, uint64_t b, int64_t ldb,
                      uint64_t c, int64_t ldc, uint64_t bias, bool relu) {
  RtCuda *r = ctx;
  if (!r->lt[d])
    return rt_fail("cuda: a GEMM with an epilogue on device %d, which has no cuBLASLt handle", d);
  if (!use(r, d))
    return false;
  LtMatmul key = {.device = d, .prec = prec, .ta = transa, .tb = transb, .m = m, .n = n,
                  .k = k, .lda = lda, .ldb = ldb, .ldc = ldc, .relu = relu,
                  .align = {alignment(a), alignment(b), alignment(c), alignment(bias)}};
  LtMatmul *mm = find_matmul(r, &key, bias);
  if (!mm)
    return false;
  const void *bias_ptr = (const void *)(uintptr_t)bias;
  float one = 1, zero = 0;
  const void *A = (const void *)(uintptr_t)a, *B = (const void *)(uintptr_t)b;
  void *C = (void *)(uintptr_t)c;
  return lt_ok(lt.cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                 &bias_ptr, sizeof bias_ptr), "setting the bias") &&
         lt_ok(lt.cublasLtMatmul(r->lt[d], mm->desc, &one, A, mm->a, B, mm->b, &zero, C, mm->c,
                                 C, mm->c, &mm->algo, (void *)(uintptr_t)r->lt_workspace[d],
                                 mm->workspace, r->stream[d]),
               "cublasLtMatmul (GEMM with bias epilogue)");
}

// Makes stream `waiter` wait for everything issued so far on logical device `d`'s stream.
static bool wait_for(RtCuda *r, int waiter, int d) {
  if (!use(r, d))
    return false;
  CU(cu.cuEventRecord(r->ready[d], r->stream[d]), "cuEventRecord");
  if (!use(r, waiter))
    return false;
  CU(cu.cuStreamWaitEvent(r->stream[waiter], r->ready[d], 0), "cuStreamWaitEvent");
  return true;
}

static bool copy_between_gpus(RtCuda *r, int dst_dev, uint64_t dst, int64_t dst_pitch,
                              int src_dev, uint64_t src, int64_t src_pitch, int64_t width,
                              int64_t height) {
  size_t f = sizeof(float);
  CUDA_MEMCPY3D_PEER c = {0};
  c.srcMemoryType = c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
  c.srcDevice = (CUdeviceptr)src;
  c.srcContext = gpu(r, src_dev)->ctx;
  c.srcPitch = src_pitch * f;
  c.srcHeight = height;
  c.dstDevice = (CUdeviceptr)dst;
  c.dstContext = gpu(r, dst_dev)->ctx;
  c.dstPitch = dst_pitch * f;
  c.dstHeight = height;
  c.WidthInBytes = width * f;
  c.Height = height;
  c.Depth = 1;
  CU(cu.cuMemcpy3DPeerAsync(&c, r->stream[dst_dev]), "cuMemcpy3DPeerAsync (transfer between GPUs)");
  return true;
}

// Rows of floats between host and device, or device and device (peer or not). Host
// copies run on the device's stream; a transfer runs on the receiver's, fenced both
// ways against the sender's (see the top of this file).
static bool copy(void *ctx, int dst_dev, uint64_t dst, int64_t dst_pitch, int src_dev,
                 uint64_t src, int64_t src_pitch, int64_t width, int64_t height) {
  RtCuda *r = ctx;
  size_t f = sizeof(float);
  bool transfer = dst_dev >= 0 && src_dev >= 0;
  int on = dst_dev >= 0 ? dst_dev : src_dev;  // the stream that runs the copy
  if (transfer && !wait_for(r, dst_dev, src_dev))
    return false;
  if (transfer && r->gpu_of[dst_dev] != r->gpu_of[src_dev]) {
    if (!copy_between_gpus(r, dst_dev, dst, dst_pitch, src_dev, src, src_pitch, width, height))
      return false;
  } else {
    CUDA_MEMCPY2D c = {0};
    c.srcMemoryType = src_dev < 0 ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
    c.dstMemoryType = dst_dev < 0 ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
    if (src_dev < 0)
      c.srcHost = (const void *)(uintptr_t)src;
    else
      c.srcDevice = (CUdeviceptr)src;
    if (dst_dev < 0)
      c.dstHost = (void *)(uintptr_t)dst;
    else
      c.dstDevice = (CUdeviceptr)dst;
    c.srcPitch = src_pitch * f;
    c.dstPitch = dst_pitch * f;
    c.WidthInBytes = width * f;
    c.Height = height;
    if (!use(r, on))
      return false;
    CU(cu.cuMemcpy2DAsync(&c, r->stream[on]), "cuMemcpy2DAsync");
  }
  return !transfer || wait_for(r, src_dev, dst_dev);
}

static bool sync_all(RtCuda *r) {
  for (int d = 0; d < r->plan->n_devices; d++) {
    if (!use(r, d))
      return false;
    CU(cu.cuStreamSynchronize(r->stream[d]), "running the network");
  }
  return true;
}

static void free_timing(RtCuda *r) {
  for (int i = 0; i < r->cap_timed; i++) {
    if (r->timed[i].begin)
      cu.cuEventDestroy(r->timed[i].begin);
    if (r->timed[i].end)
      cu.cuEventDestroy(r->timed[i].end);
  }
  free(r->timed);
  r->timed = NULL;
  r->n_timed = r->cap_timed = 0;
}

static void free_buffer(CUdeviceptr *p) {
  if (*p)
    cu.cuMemFree(*p);
  *p = 0;
}

static void drop_graph(RtCuda *r) {
  if (r->graph && use(r, 0))
    cu.cuGraphExecDestroy(r->graph);
  r->graph = NULL;
  r->graph_batch = 0;
}

void rt_cuda_close(RtCuda *r) {
  if (!r)
    return;
  drop_graph(r);
  if (r->comm && use(r, 0)) {
    cu.cuStreamSynchronize(r->stream[0]);  // its last sum may still be queued
    nccl.ncclCommDestroy(r->comm);
  }
  for (int d = 0; d < r->plan->n_devices; d++) {
    if (!gpu(r, d)->ctx || !use(r, d))
      continue;
    if (r->stream[d])
      cu.cuStreamSynchronize(r->stream[d]);
    free_buffer(&r->arena[d]);
    free_buffer(&r->weights[d]);
    free_buffer(&r->scratch[d]);
    if (r->module[d])
      cu.cuModuleUnload(r->module[d]);
    if (r->blas[d])
      blas.cublasDestroy(r->blas[d]);
    if (r->ready[d])
      cu.cuEventDestroy(r->ready[d]);
    free_buffer(&r->lt_workspace[d]);
  }
  for (int i = 0; i < r->n_matmuls; i++)
    free_matmul(&r->matmuls[i]);
  free(r->matmuls);
  for (int d = 0; d < r->plan->n_devices; d++)
    if (r->lt[d])
      lt.cublasLtDestroy(r->lt[d]);
  free_timing(r);
  for (int d = 0; d < r->plan->n_devices; d++)
    if (r->stream[d] && use(r, d))
      cu.cuStreamDestroy(r->stream[d]);
  for (int g = 0; g < r->n_gpus; g++)
    if (r->gpu[g].ctx)
      cu.cuDevicePrimaryCtxRelease(r->gpu[g].dev);
  free(r);
}

static bool open_gpu(Gpu *g, int ordinal) {
  CU(cu.cuDeviceGet(&g->dev, ordinal), "cuDeviceGet");
  CU(cu.cuDevicePrimaryCtxRetain(&g->ctx, g->dev), "cuDevicePrimaryCtxRetain");
  CU(cu.cuCtxSetCurrent(g->ctx), "cuCtxSetCurrent");
  size_t free_bytes, total;
  CU(cu.cuMemGetInfo(&free_bytes, &total), "cuMemGetInfo");
  g->used_before = total - free_bytes;
  return true;
}

// Lets each GPU read the others' memory directly (NVLink or PCIe peer-to-peer) when
// the hardware allows; transfers work without it too (staged by the driver).
static bool enable_peers(RtCuda *r) {
  for (int a = 0; a < r->n_gpus; a++)
    for (int b = 0; b < r->n_gpus; b++) {
      int can = 0;
      if (a == b || cu.cuDeviceCanAccessPeer(&can, r->gpu[a].dev, r->gpu[b].dev) != CUDA_SUCCESS ||
          !can)
        continue;
      CU(cu.cuCtxSetCurrent(r->gpu[a].ctx), "cuCtxSetCurrent");
      CUresult rc = cu.cuCtxEnablePeerAccess(r->gpu[b].ctx, 0);
      if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)
        return cu_fail("cuCtxEnablePeerAccess", rc);
    }
  return true;
}

static bool upload_weights(RtCuda *r, int d, const float *(*get)(void *, const char *), void *ctx) {
  const RtPlanDevice *v = &r->plan->dev[d];
  if (!v->weights)
    return true;
  CU(cu.cuMemAlloc(&r->weights[d], v->weights * sizeof(float)), "allocating weights");
  for (int s = 0; s < v->n_slices; s++) {
    const RtWeightSlice *w = &v->slices[s];
    const float *data = get(ctx, w->tensor);
    if (!data)
      return rt_fail("cuda: no weight tensor '%s'", w->tensor);
    // A float slice goes up as it is; a bf16 one is converted into a buffer first. The
    // copy is synchronous, so that buffer may be freed after it.
    size_t bytes = rt_slice_slots(w) * sizeof(float);
    void *packed = w->bf16 ? malloc(bytes) : NULL;
    if (w->bf16 && !packed)
      return rt_fail("out of memory");
    if (packed)
      rt_slice_pack(w, data, packed);
    CUDA_MEMCPY2D c = {.srcMemoryType = CU_MEMORYTYPE_HOST,
                       .srcHost = packed ? packed : (const void *)(data + w->first),
                       .dstMemoryType = CU_MEMORYTYPE_DEVICE,
                       .dstDevice = r->weights[d] + w->offset * sizeof(float),
                       .srcPitch = bytes, .dstPitch = bytes, .WidthInBytes = bytes, .Height = 1};
    CUresult rc = cu.cuMemcpy2D(&c);
    free(packed);
    CU(rc, "uploading weights");
  }
  return true;
}

static bool has_epilogue_gemm(const RtPlan *p, int d) {
  for (int i = 0; i < p->n_steps; i++)
    if (p->steps[i].kind == RT_STEP_GEMM && p->steps[i].device == d &&
        p->steps[i].epilogue != RT_GEMM_PLAIN)
      return true;
  return false;
}

static bool load_device(RtCuda *r, int d, const float *(*get)(void *, const char *), void *ctx) {
  const RtPlanDevice *v = &r->plan->dev[d];
  if (!use(r, d))
    return false;
  CU(cu.cuStreamCreate(&r->stream[d], CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  CU(cu.cuEventCreate(&r->ready[d], CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  if (!blas_ok(blas.cublasCreate(&r->blas[d]), "cublasCreate") ||
      !blas_ok(blas.cublasSetStream(r->blas[d], r->stream[d]), "cublasSetStream"))
    return false;
  CUresult rc = v->cubin_size ? cu.cuModuleLoadData(&r->module[d], v->cubin)
                              : CUDA_ERROR_NO_BINARY_FOR_GPU;
  if (rc != CUDA_SUCCESS && v->ptx_size)  // a GPU of another architecture: JIT the PTX
    rc = cu.cuModuleLoadData(&r->module[d], v->ptx);
  if (rc != CUDA_SUCCESS)
    return cu_fail("loading the kernels (built for the plan's --arch)", rc);
  if (!upload_weights(r, d, get, ctx))
    return false;
  if (has_epilogue_gemm(r->plan, d)) {
    if (!load_cublaslt() || !lt_ok(lt.cublasLtCreate(&r->lt[d]), "cublasLtCreate"))
      return false;
    CU(cu.cuMemAlloc(&r->lt_workspace[d], LT_WORKSPACE_BYTES), "allocating cuBLASLt's workspace");
  }
  CU(cu.cuCtxSynchronize(), "uploading weights");
  return true;
}

RtCuda *rt_cuda_open(const RtPlan *p, int first_gpu,
                     const float *(*get)(void *ctx, const char *tensor), void *ctx) {
  if (!rt_cuda_available())
    return NULL;
  if (first_gpu < 0 || first_gpu >= gpu_count) {
    rt_fail("cuda: GPU %d was asked for, and this machine has %d (GPUs 0 to %d)", first_gpu,
            gpu_count, gpu_count - 1);
    return NULL;
  }
  RtCuda *r = calloc(1, sizeof *r);
  if (!r) {
    rt_fail("out of memory");
    return NULL;
  }
  r->plan = p;
  int usable = gpu_count - first_gpu;  // GPUs first_gpu.. are this executor's
  r->n_gpus = p->n_devices < usable ? p->n_devices : usable;
  const char *graphs = getenv("ALEXC_CUDA_GRAPHS");
  r->graphs = !(graphs && !strcmp(graphs, "0"));
  bool ok = true;
  for (int g = 0; g < r->n_gpus && ok; g++)
    ok = open_gpu(&r->gpu[g], first_gpu + g);
  for (int d = 0; d < p->n_devices; d++)
    r->gpu_of[d] = d % r->n_gpus;
  ok = ok && enable_peers(r);
  for (int d = 0; d < p->n_devices && ok; d++)
    ok = load_device(r, d, get, ctx);
  if (!ok) {
    char why[512];
    snprintf(why, sizeof why, "%s", rt_error());
    rt_cuda_close(r);
    rt_fail("%s", why);
    return NULL;
  }
  return r;
}

// Arenas and scratch for `batch` images, reallocated only when the batch grows.
static bool size_buffers(RtCuda *r, int batch) {
  const RtPlan *p = r->plan;
  if (batch <= r->arena_batch)
    return true;
  if (!sync_all(r))
    return false;
  drop_graph(r);  // its addresses are those of the buffers about to go
  r->arena_batch = 0;
  for (int d = 0; d < p->n_devices; d++) {
    if (!use(r, d))
      return false;
    free_buffer(&r->arena[d]);
    free_buffer(&r->scratch[d]);
    int64_t arena = p->dev[d].arena * batch * (int64_t)sizeof(float);
    int64_t scratch = rt_plan_scratch_elems(p, d, batch) * (int64_t)sizeof(float);
    if (arena)
      CU(cu.cuMemAlloc(&r->arena[d], arena), "allocating activations");
    if (scratch)
      CU(cu.cuMemAlloc(&r->scratch[d], scratch),
         "allocating conv scratch (im2col columns and GEMM output)");
  }
  r->arena_batch = batch;
  return true;
}

// The next event pair, made on step s's GPU (events belong to a context, so a pair
// left from a step on another GPU is replaced).
static Timed *next_timed(RtCuda *r, const RtStep *s) {
  if (r->n_timed == r->cap_timed) {
    int cap = r->cap_timed ? 2 * r->cap_timed : 256;
    Timed *t = realloc(r->timed, cap * sizeof *t);
    if (!t) {
      rt_fail("out of memory");
      return NULL;
    }
    memset(t + r->cap_timed, 0, (cap - r->cap_timed) * sizeof *t);
    r->timed = t;
    r->cap_timed = cap;
  }
  Timed *t = &r->timed[r->n_timed];
  if (t->begin && gpu(r, t->step->device) != gpu(r, s->device)) {
    cu.cuEventDestroy(t->begin);
    cu.cuEventDestroy(t->end);
    t->begin = t->end = NULL;
  }
  CUresult rc = CUDA_SUCCESS;
  if (!t->begin && ((rc = cu.cuEventCreate(&t->begin, CU_EVENT_DEFAULT)) != CUDA_SUCCESS ||
                    (rc = cu.cuEventCreate(&t->end, CU_EVENT_DEFAULT)) != CUDA_SUCCESS)) {
    cu_fail("cuEventCreate", rc);
    return NULL;
  }
  t->step = s;
  return t;
}

// Timing marks: an event pair per step run, recorded on the step's stream.
static bool mark(void *ctx, const RtStep *s, bool end) {
  RtCuda *r = ctx;
  if (!use(r, s->device))
    return false;
  Timed *t = end ? &r->timed[r->n_timed] : next_timed(r, s);
  if (!t)
    return false;
  CU(cu.cuEventRecord(end ? t->end : t->begin, r->stream[s->device]), "cuEventRecord");
  r->n_timed += end;
  return true;
}

// RT_STEP_ALLREDUCE: the sum over the ranks, in place, queued on the device's stream.
static bool allreduce(void *ctx, int d, uint64_t buf, int64_t floats) {
  RtCuda *r = ctx;
  if (d != 0)
    return rt_fail("cuda: an all-reduce on logical device %d; a rank sums on one device", d);
  void *p = (void *)(uintptr_t)buf;
  return use(r, d) && nccl_ok(nccl.ncclAllReduce(p, p, (size_t)floats, ncclFloat, ncclSum,
                                                  r->comm, (cudaStream_t)r->stream[d]),
                              "ncclAllReduce");
}

static RtPlanOps plan_ops(RtCuda *r) {
  RtPlanOps ops = {.ctx = r, .launch = launch, .gemm = gemm, .gemm_bias = gemm_bias, .copy = copy,
                   .allreduce = r->comm ? allreduce : NULL};
  for (int d = 0; d < r->plan->n_devices; d++) {
    ops.arena[d] = r->arena[d];
    ops.weights[d] = r->weights[d];
    ops.scratch[d] = r->scratch[d];
  }
  return ops;
}

// Every stream waits for device 0's, and device 0's for every other: a common start
// and end line for the whole run's two events, and for a captured graph.
static bool join_streams(RtCuda *r, bool start) {
  for (int d = 1; d < r->plan->n_devices; d++)
    if (!(start ? wait_for(r, d, 0) : wait_for(r, 0, d)))
      return false;
  return true;
}

void rt_cuda_set_graphs(RtCuda *r, bool on) {
  if (!on)
    drop_graph(r);
  r->graphs = on;
}

void rt_cuda_graph_stats(const RtCuda *r, int *captures, int *launches) {
  *captures = r->graph_captures;
  *launches = r->graph_launches;
}

// Captures the steps of a batch of `batch` images into r->graph. A capture that fails
// is ended (a stream left capturing would refuse all later work) before reporting.
static bool capture_graph(RtCuda *r, const RtPlanOps *ops, int batch) {
  drop_graph(r);
  if (!use(r, 0))
    return false;
  CU(cu.cuStreamBeginCapture(r->stream[0], CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
     "cuStreamBeginCapture");
  bool ok = join_streams(r, true) && rt_plan_steps(r->plan, ops, batch) &&
            join_streams(r, false) && use(r, 0);
  char why[512] = "";
  if (!ok)
    snprintf(why, sizeof why, "%s", rt_error());
  CUgraph g = NULL;
  CUresult rc = cu.cuStreamEndCapture(r->stream[0], &g);
  if (ok && rc != CUDA_SUCCESS)
    return cu_fail("capturing the steps into a CUDA graph", rc);
  if (ok)
    rc = cu.cuGraphInstantiate(&r->graph, g, 0);
  if (g)
    cu.cuGraphDestroy(g);
  if (!ok)
    return rt_fail("%s", why);
  CU(rc, "cuGraphInstantiate");
  r->graph_batch = batch;
  r->graph_captures++;
  return true;
}

// The steps of a batch: the graph captured for this batch size (captured now if there
// is none), or each step issued directly.
static bool run_steps(RtCuda *r, const RtPlanOps *ops, int batch) {
  if (!r->graphs || r->n_gpus != 1 || r->comm)
    return rt_plan_steps(r->plan, ops, batch);
  if (r->graph_batch != batch && !capture_graph(r, ops, batch))
    return false;
  // Device 0's stream launches it: the others' earlier work (their input uploads)
  // comes first, and their later work (downloads) waits for it.
  if (!join_streams(r, false) || !use(r, 0))
    return false;
  CU(cu.cuGraphLaunch(r->graph, r->stream[0]), "cuGraphLaunch");
  r->graph_launches++;
  return join_streams(r, true);
}

bool rt_cuda_run(RtCuda *r, const float *x, int batch, float *y) {
  if (!size_buffers(r, batch))
    return false;
  RtPlanOps ops = plan_ops(r);
  return rt_plan_upload(r->plan, &ops, x, batch) && run_steps(r, &ops, batch) &&
         rt_plan_download(r->plan, &ops, y, batch) && sync_all(r);
}

static RtLayerTime *layer_slot(RtTimes *t, const RtStep *s) {
  bool transfer = s->kind == RT_STEP_TRANSFER;
  for (int i = 0; i < t->n_layers; i++)
    if (t->layers[i].device == s->device && t->layers[i].transfer == transfer &&
        !strcmp(t->layers[i].layer, s->layer))
      return &t->layers[i];
  RtLayerTime *l = realloc(t->layers, (t->n_layers + 1) * sizeof *l);
  if (!l)
    return NULL;
  t->layers = l;
  l = &t->layers[t->n_layers++];
  memset(l, 0, sizeof *l);
  snprintf(l->layer, sizeof l->layer, "%s", s->layer);
  l->transfer = transfer;
  l->device = s->device;
  return l;
}

static bool collect_layers(RtCuda *r, RtTimes *t) {
  for (int i = 0; i < r->n_timed; i++) {
    const Timed *e = &r->timed[i];
    float ms = 0;
    if (!use(r, e->step->device))
      return false;
    CU(cu.cuEventElapsedTime(&ms, e->begin, e->end), "cuEventElapsedTime");
    RtLayerTime *l = layer_slot(t, e->step);
    if (!l)
      return rt_fail("out of memory");
    l->ms += ms;
  }
  return true;
}

bool rt_cuda_time(RtCuda *r, const float *x, int batch, float *y, bool per_layer, RtTimes *t) {
  memset(t, 0, sizeof *t);
  if (!size_buffers(r, batch))
    return false;
  RtPlanOps ops = plan_ops(r);
  if (per_layer)
    ops.mark = mark;
  r->n_timed = 0;
  CUevent start, stop;
  if (!use(r, 0))
    return false;
  CU(cu.cuEventCreate(&start, CU_EVENT_DEFAULT), "cuEventCreate");
  CUresult rc = cu.cuEventCreate(&stop, CU_EVENT_DEFAULT);
  if (rc != CUDA_SUCCESS) {
    cu.cuEventDestroy(start);
    return cu_fail("cuEventCreate", rc);
  }
  float ms = 0;
  bool ok = rt_plan_upload(r->plan, &ops, x, batch) && sync_all(r) && use(r, 0);
  ok = ok && (rc = cu.cuEventRecord(start, r->stream[0])) == CUDA_SUCCESS;
  ok = ok && join_streams(r, true) &&
       (per_layer ? rt_plan_steps(r->plan, &ops, batch) : run_steps(r, &ops, batch)) &&
       join_streams(r, false) && use(r, 0);
  ok = ok && (rc = cu.cuEventRecord(stop, r->stream[0])) == CUDA_SUCCESS;
  ok = ok && rt_plan_download(r->plan, &ops, y, batch) && sync_all(r) && use(r, 0);
  ok = ok && (rc = cu.cuEventElapsedTime(&ms, start, stop)) == CUDA_SUCCESS;
  if (!ok && rc != CUDA_SUCCESS)
    cu_fail("timing the run", rc);
  cu.cuEventDestroy(start);
  cu.cuEventDestroy(stop);
  t->total_ms = ms;
  ok = ok && (!per_layer || collect_layers(r, t));
  if (!ok)
    rt_times_free(t);
  return ok;
}

void rt_times_free(RtTimes *t) {
  free(t->layers);
  memset(t, 0, sizeof *t);
}

bool rt_cuda_memory(RtCuda *r, RtMemory *m) {
  memset(m, 0, sizeof *m);
  m->n_gpus = r->n_gpus;
  const RtPlan *p = r->plan;
  for (int d = 0; d < p->n_devices; d++)  // as upload_weights and size_buffers allocate
    m->alexc_bytes[r->gpu_of[d]] +=
        (p->dev[d].weights + p->dev[d].arena * r->arena_batch +
         rt_plan_scratch_elems(p, d, r->arena_batch)) * (int64_t)sizeof(float) +
        (r->lt_workspace[d] ? (int64_t)LT_WORKSPACE_BYTES : 0);
  for (int g = 0; g < r->n_gpus; g++) {
    size_t free_bytes, total;
    CU(cu.cuCtxSetCurrent(r->gpu[g].ctx), "cuCtxSetCurrent");
    CU(cu.cuMemGetInfo(&free_bytes, &total), "cuMemGetInfo");
    m->used_bytes[g] = (int64_t)(total - free_bytes) - (int64_t)r->gpu[g].used_before;
  }
  return true;
}

// ---------------------------------------------------------------- training

// Device d's address `a` for `batch` images (the plan's arithmetic, rt_plan_run's).
static CUdeviceptr resolve_addr(RtCuda *r, int d, RtAddr a, int batch) {
  CUdeviceptr base = a.space == RT_SPACE_ARENA     ? r->arena[d]
                     : a.space == RT_SPACE_WEIGHTS ? r->weights[d]
                                                   : r->scratch[d];
  int64_t at = a.space == RT_SPACE_WEIGHTS ? a.fixed : a.per_image * batch + a.fixed;
  return base + (CUdeviceptr)at * sizeof(float);
}

static bool move_floats(RtCuda *r, int d, RtAddr a, int batch, void *host, int64_t floats,
                        bool to_device) {
  if (d < 0 || d >= r->plan->n_devices)
    return rt_fail("cuda: no device %d in this plan", d);
  if (!size_buffers(r, batch))
    return false;
  uint64_t dev = resolve_addr(r, d, a, batch), h = (uint64_t)(uintptr_t)host;
  bool ok = to_device ? copy(r, d, dev, floats, -1, h, floats, floats, 1)
                      : copy(r, -1, h, floats, d, dev, floats, floats, 1);
  return ok && sync_all(r);
}

bool rt_cuda_write(RtCuda *r, int d, RtAddr a, int batch, const void *host, int64_t floats) {
  return move_floats(r, d, a, batch, (void *)host, floats, true);
}

bool rt_cuda_read(RtCuda *r, int d, RtAddr a, int batch, void *host, int64_t floats) {
  return move_floats(r, d, a, batch, host, floats, false);
}

bool rt_cuda_steps(RtCuda *r, int batch) { return rt_cuda_steps_from(r, batch, 0); }

bool rt_cuda_steps_from(RtCuda *r, int batch, int first) {
  if (!size_buffers(r, batch))
    return false;
  RtPlanOps ops = plan_ops(r);
  return rt_plan_steps_from(r->plan, &ops, batch, first) && sync_all(r);
}

// ---------------------------------------------------------------- NCCL

bool rt_cuda_nccl_id(void *id) {
  ncclUniqueId u;
  if (!rt_cuda_available() || !load_nccl() || !nccl_ok(nccl.ncclGetUniqueId(&u), "ncclGetUniqueId"))
    return false;
  memcpy(id, &u, sizeof u);
  return true;
}

// ncclCommInitRank blocks until every rank has called it with the same id.
bool rt_cuda_nccl_join(RtCuda *r, int rank, int nranks, const void *id) {
  _Static_assert(sizeof(ncclUniqueId) == RT_NCCL_ID_BYTES, "nccl.h's id size");
  if (r->plan->n_devices != 1)
    return rt_fail("cuda: NCCL with %d logical devices per rank: one only", r->plan->n_devices);
  if (r->comm)
    return rt_fail("cuda: this executor has joined a communicator already");
  ncclUniqueId u;
  memcpy(&u, id, sizeof u);
  drop_graph(r);  // captured without the sums (none are captured once joined)
  return load_nccl() && use(r, 0) &&
         nccl_ok(nccl.ncclCommInitRank(&r->comm, nranks, u, rank), "ncclCommInitRank");
}
