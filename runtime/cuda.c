// The CUDA executor: runs a plan (alexrt_cuda.h) on one or more GPUs through the
// driver API and cuBLAS, both loaded with dlopen at run time. The headers give the
// types; nothing links against libcuda or libcublas, so a binary built with the
// toolkit starts on a machine without a GPU and reports "no CUDA driver found" or
// "no GPU" instead of failing to load.
//
// Logical devices map to GPUs round robin (two logical devices on one GPU share its
// context). Everything runs on the default stream of each context, in plan order:
// simple and correct; overlapping the two towers is for later.
//
// Per logical device: a weight buffer (allocated and filled at open), an activation
// arena and a scratch buffer (im2col columns and conv GEMM output of one chunk of
// images: rt_plan_scratch_elems), both reallocated when a larger batch arrives. The
// chunk loops, like every address, are rt_plan_run's (runtime/cuda_plan.c), the same
// code the CPU emulator of tests/cuda/ runs.
#define _GNU_SOURCE
#include <cublas_v2.h>
#include <cuda.h>
#include <dlfcn.h>
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
#define DRIVER_FUNCS(X)                                                                  \
  X(cuInit) X(cuGetErrorString) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)   \
  X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)           \
  X(cuCtxSynchronize) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)      \
  X(cuMemAlloc) X(cuMemFree) X(cuMemcpy2D) X(cuMemcpy3DPeer) X(cuLaunchKernel)
#define CUBLAS_FUNCS(X) X(cublasCreate) X(cublasDestroy) X(cublasSetMathMode) X(cublasSgemm)

#define DECLARE(f) __typeof__(&f) f;
static struct {
  void *lib;
  DRIVER_FUNCS(DECLARE)
} cu;
static struct {
  void *lib;
  CUBLAS_FUNCS(DECLARE)
} blas;

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

bool rt_cuda_available(void) {
  static bool tried, ok;
  static char why[512];
  if (tried) {
    if (!ok)
      rt_fail("%s", why);
    return ok;
  }
  tried = true;
  cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!cu.lib) {
    snprintf(why, sizeof why, "no CUDA driver found (libcuda.so.1: %s)", dlerror());
    return rt_fail("%s", why);
  }
#define LOAD(lib_, table, f)                                                                 \
  if (!(table.f = (__typeof__(table.f))dlsym(lib_, STR(f)))) {                              \
    snprintf(why, sizeof why, "the CUDA driver lacks %s: it is older than this toolkit", STR(f)); \
    return rt_fail("%s", why);                                                               \
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
      snprintf(why, sizeof why, "no GPU: the CUDA driver sees no device");
    else
      snprintf(why, sizeof why, "no GPU: cuInit failed: %s (CUDA error %d)",
               msg ? msg : "no description", (int)rc);
    return rt_fail("%s", why);
  }
  const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  for (size_t i = 0; i < sizeof names / sizeof *names && !blas.lib; i++)
    blas.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!blas.lib) {
    snprintf(why, sizeof why,
             "cuBLAS not found (libcublas.so.13/12): fc layers and --conv gemm need it");
    return rt_fail("%s", why);
  }
#define LOAD_BLAS(f) LOAD(blas.lib, blas, f)
  CUBLAS_FUNCS(LOAD_BLAS)
  ok = true;
  return true;
}

// ---------------------------------------------------------------- the executor

typedef struct {
  CUdevice dev;
  CUcontext ctx;
  cublasHandle_t blas;
  bool blas_ok;
} Gpu;

struct RtCuda {
  const RtPlan *plan;
  int n_gpus;
  Gpu gpu[RT_PLAN_MAX_DEVICES];
  int gpu_of[RT_PLAN_MAX_DEVICES];  // logical device -> gpu[]
  CUmodule module[RT_PLAN_MAX_DEVICES];
  CUdeviceptr arena[RT_PLAN_MAX_DEVICES], weights[RT_PLAN_MAX_DEVICES];
  CUdeviceptr scratch[RT_PLAN_MAX_DEVICES];  // one chunk's im2col columns and conv GEMM output
  int arena_batch;  // the arenas (and scratch buffers) are sized for this many images
};

static Gpu *gpu(RtCuda *r, int d) { return &r->gpu[r->gpu_of[d]]; }

static bool use(RtCuda *r, int d) {
  CU(cu.cuCtxSetCurrent(gpu(r, d)->ctx), "cuCtxSetCurrent");
  return true;
}

static bool launch(void *ctx, int d, const char *kernel, int64_t grid, int block,
                   const uint64_t *args, int n_args, int batch) {
  RtCuda *r = ctx;
  CUfunction f;
  if (!use(r, d))
    return false;
  CU(cu.cuModuleGetFunction(&f, r->module[d], kernel), kernel);
  CUdeviceptr ptrs[RT_PLAN_MAX_ARGS];
  void *params[RT_PLAN_MAX_ARGS + 1];
  for (int a = 0; a < n_args; a++) {
    ptrs[a] = (CUdeviceptr)args[a];
    params[a] = &ptrs[a];
  }
  params[n_args] = &batch;
  CU(cu.cuLaunchKernel(f, (unsigned)grid, 1, 1, (unsigned)block, 1, 1, 0, NULL, params, NULL),
     kernel);
  return true;
}

static bool gemm(void *ctx, int d, char transa, char transb, int64_t m, int64_t n, int64_t k,
                 float alpha, uint64_t a, int64_t lda, uint64_t b, int64_t ldb, float beta,
                 uint64_t c, int64_t ldc) {
  RtCuda *r = ctx;
  if (!use(r, d))
    return false;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
      ldc > INT32_MAX)
    return rt_fail("cuda: a GEMM too large for cuBLAS's int sizes");
  cublasStatus_t st = blas.cublasSgemm(
      gpu(r, d)->blas, transa == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N,
      transb == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N, (int)m, (int)n, (int)k, &alpha,
      (const float *)(uintptr_t)a, (int)lda, (const float *)(uintptr_t)b, (int)ldb, &beta,
      (float *)(uintptr_t)c, (int)ldc);
  return st == CUBLAS_STATUS_SUCCESS || rt_fail("cuda: cublasSgemm failed (status %d)", (int)st);
}

// Rows of floats between host and device, or device and device (peer or not).
static bool copy(void *ctx, int dst_dev, uint64_t dst, int64_t dst_pitch, int src_dev,
                 uint64_t src, int64_t src_pitch, int64_t width, int64_t height) {
  RtCuda *r = ctx;
  size_t f = sizeof(float);
  if (dst_dev >= 0 && src_dev >= 0 && r->gpu_of[dst_dev] != r->gpu_of[src_dev]) {
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
    CU(cu.cuMemcpy3DPeer(&c), "cuMemcpy3DPeer (transfer between GPUs)");
    return true;
  }
  CUDA_MEMCPY2D c = {0};
  if (src_dev < 0) {
    c.srcMemoryType = CU_MEMORYTYPE_HOST;
    c.srcHost = (const void *)(uintptr_t)src;
  } else {
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    c.srcDevice = (CUdeviceptr)src;
  }
  if (dst_dev < 0) {
    c.dstMemoryType = CU_MEMORYTYPE_HOST;
    c.dstHost = (void *)(uintptr_t)dst;
  } else {
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    c.dstDevice = (CUdeviceptr)dst;
  }
  c.srcPitch = src_pitch * f;
  c.dstPitch = dst_pitch * f;
  c.WidthInBytes = width * f;
  c.Height = height;
  if (!use(r, dst_dev >= 0 ? dst_dev : src_dev))
    return false;
  CU(cu.cuMemcpy2D(&c), "cuMemcpy2D");
  return true;
}

void rt_cuda_close(RtCuda *r) {
  if (!r)
    return;
  for (int d = 0; d < r->plan->n_devices; d++) {
    if (use(r, d)) {
      if (r->arena[d])
        cu.cuMemFree(r->arena[d]);
      if (r->weights[d])
        cu.cuMemFree(r->weights[d]);
      if (r->scratch[d])
        cu.cuMemFree(r->scratch[d]);
      if (r->module[d])
        cu.cuModuleUnload(r->module[d]);
    }
  }
  for (int g = 0; g < r->n_gpus; g++) {
    if (r->gpu[g].blas_ok) {
      cu.cuCtxSetCurrent(r->gpu[g].ctx);
      blas.cublasDestroy(r->gpu[g].blas);
    }
    if (r->gpu[g].ctx)
      cu.cuDevicePrimaryCtxRelease(r->gpu[g].dev);
  }
  free(r);
}

static bool open_gpu(Gpu *g, int ordinal) {
  char name[128] = "";
  CU(cu.cuDeviceGet(&g->dev, ordinal), "cuDeviceGet");
  cu.cuDeviceGetName(name, sizeof name, g->dev);
  CU(cu.cuDevicePrimaryCtxRetain(&g->ctx, g->dev), "cuDevicePrimaryCtxRetain");
  CU(cu.cuCtxSetCurrent(g->ctx), "cuCtxSetCurrent");
  if (blas.cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS)
    return rt_fail("cuda: cublasCreate failed on GPU %d (%s)", ordinal, name);
  g->blas_ok = true;
  // fp32 means fp32: no TF32 tensor-core shortcuts in the fc and conv GEMMs.
  if (blas.cublasSetMathMode(g->blas, CUBLAS_PEDANTIC_MATH) != CUBLAS_STATUS_SUCCESS)
    return rt_fail("cuda: cublasSetMathMode failed");
  return true;
}

static bool load_device(RtCuda *r, int d, const float *(*get)(void *, const char *), void *ctx) {
  const RtPlanDevice *v = &r->plan->dev[d];
  if (!use(r, d))
    return false;
  CUresult rc = v->cubin_size ? cu.cuModuleLoadData(&r->module[d], v->cubin)
                              : CUDA_ERROR_NO_BINARY_FOR_GPU;
  if (rc != CUDA_SUCCESS && v->ptx_size)  // a GPU of another architecture: JIT the PTX
    rc = cu.cuModuleLoadData(&r->module[d], v->ptx);
  if (rc != CUDA_SUCCESS)
    return cu_fail("loading the kernels (built for the plan's --arch)", rc);
  if (v->weights) {
    CU(cu.cuMemAlloc(&r->weights[d], v->weights * sizeof(float)), "allocating weights");
    for (int s = 0; s < v->n_slices; s++) {
      const RtWeightSlice *w = &v->slices[s];
      const float *data = get(ctx, w->tensor);
      if (!data)
        return rt_fail("cuda: no weight tensor '%s'", w->tensor);
      if (!copy(r, d, r->weights[d] + w->offset * sizeof(float), w->count, -1,
                (uint64_t)(uintptr_t)(data + w->first), w->count, w->count, 1))
        return false;
    }
  }
  return true;
}

RtCuda *rt_cuda_open(const RtPlan *p, const float *(*get)(void *ctx, const char *tensor),
                     void *ctx) {
  if (!rt_cuda_available())
    return NULL;
  RtCuda *r = calloc(1, sizeof *r);
  if (!r) {
    rt_fail("out of memory");
    return NULL;
  }
  r->plan = p;
  r->n_gpus = p->n_devices < gpu_count ? p->n_devices : gpu_count;
  bool ok = true;
  for (int g = 0; g < r->n_gpus && ok; g++)
    ok = open_gpu(&r->gpu[g], g);
  for (int d = 0; d < p->n_devices; d++)
    r->gpu_of[d] = d % r->n_gpus;
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

bool rt_cuda_run(RtCuda *r, const float *x, int batch, float *y) {
  const RtPlan *p = r->plan;
  if (batch > r->arena_batch) {
    for (int d = 0; d < p->n_devices; d++) {
      if (!use(r, d))
        return false;
      if (r->arena[d])
        cu.cuMemFree(r->arena[d]);
      r->arena[d] = 0;
      if (r->scratch[d])
        cu.cuMemFree(r->scratch[d]);
      r->scratch[d] = 0;
      r->arena_batch = 0;
      if (p->dev[d].arena)
        CU(cu.cuMemAlloc(&r->arena[d], p->dev[d].arena * batch * sizeof(float)),
           "allocating activations");
      int64_t scratch = rt_plan_scratch_elems(p, d, batch);
      if (scratch)
        CU(cu.cuMemAlloc(&r->scratch[d], scratch * sizeof(float)),
           "allocating conv scratch (im2col columns and GEMM output)");
    }
    r->arena_batch = batch;
  }
  RtPlanOps ops = {.ctx = r, .launch = launch, .gemm = gemm, .copy = copy};
  for (int d = 0; d < p->n_devices; d++) {
    ops.arena[d] = r->arena[d];
    ops.weights[d] = r->weights[d];
    ops.scratch[d] = r->scratch[d];
  }
  if (!rt_plan_run(p, &ops, x, batch, y))
    return false;
  for (int g = 0; g < r->n_gpus; g++) {
    CU(cu.cuCtxSetCurrent(r->gpu[g].ctx), "cuCtxSetCurrent");
    CU(cu.cuCtxSynchronize(), "running the network");
  }
  return true;
}
