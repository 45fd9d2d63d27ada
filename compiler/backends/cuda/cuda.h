// The CUDA backend: CUDA C++ source per device from a compiled graph, the plan that
// runs it (runtime/alexrt_cuda.h), and NVRTC compilation with a content-hash cache.
//
//   codegen.c   Graph (after run_passes) -> one translation unit per device + RtPlan
//   nvrtc.c     source -> CUBIN (+ PTX), cached in $ALEXC_CACHE or ~/.cache/alexc
#ifndef ALEXC_CUDA_H
#define ALEXC_CUDA_H

#include "../../alexc.h"
#include "alexrt_cuda.h"

#define CUDA_BLOCK 256  // threads per block of every generated kernel

// How a conv layer is computed (`--conv`):
//   gemm    im2col kernel + one cuBLAS SGEMM per group + one epilogue kernel (bias and
//           the fused ReLU, LRN, pool) reading the GEMM's output; each conv output is
//           computed once. Needs per-device scratch (bounded: images go in chunks).
//   direct  one thread per final output element, the conv recomputed wherever a fused
//           stage needs it (no scratch, no cuBLAS for convs).
typedef enum { CUDA_CONV_GEMM, CUDA_CONV_DIRECT } CudaConv;

#define CUDA_SCRATCH_BYTES ((int64_t)256 << 20)  // default per-device scratch budget

typedef struct {
  CudaConv conv;          // default CUDA_CONV_GEMM, for every conv
  int64_t scratch_bytes;  // per-device scratch budget: sets the images per chunk
  int64_t max_chunk;      // at most this many images per chunk (0: no cap; tests use it)
} CudaOptions;

CudaOptions cuda_defaults(void);
// "gemm" / "direct"; false for anything else.
bool cuda_parse_conv(const char *name, CudaConv *out);
const char *cuda_conv_name(CudaConv c);

typedef struct {
  RtPlan plan;                    // the steps; modules empty until cuda_compile()
  char *source[MAX_DEVICES];      // CUDA C++ per device (owned)
} CudaProgram;

// Renders every device's translation unit and the plan. `how` describes the options
// the graph was compiled with, for the sources' header ("fused, 2 devices"); `o` may be
// NULL (cuda_defaults()). Returns false (message printed) if the graph is not planned
// or uses something the backend cannot express.
bool cuda_generate(const Graph *g, const char *how, const CudaOptions *o, CudaProgram *out);
void cuda_program_free(CudaProgram *p);
// "fused, 1 device", "unfused, 2 devices", "fusion conv-relu, 1 device": for headers.
char *cuda_describe_options(const PassOptions *o);

// "k07_features_3": the node index and the layer name, every character outside
// [A-Za-z0-9_] replaced by '_'. Writes at most `size` bytes.
void cuda_kernel_name(const Graph *g, int node, char *buf, size_t size);

// NVRTC (nvrtc.c). True when this build has NVRTC.
bool cuda_have_nvrtc(void);
// Compiles every device's source for `arch` ("sm_90"), filling plan.dev[d].cubin and
// .ptx (compute_XX PTX of the same source, for other GPUs). Results are cached by a
// hash of the source, the options and the NVRTC version. On a compile error prints
// the NVRTC log and the source lines around the first error. Devices compile in
// parallel.
bool cuda_compile(CudaProgram *p, const char *arch);
// Compiles one source; for tests and tools. *cubin / *ptx are malloc'd.
bool cuda_compile_source(const char *source, const char *name, const char *arch,
                         uint8_t **cubin, size_t *cubin_size, uint8_t **ptx, size_t *ptx_size);


// Runs a batch through the network on the GPU(s) (execute.c): generates, compiles
// (cached), loads the plan with the CUDA runtime, uploads the weights. y is (batch,
// output). False with a message, e.g. "no CUDA driver found", when it cannot run.
bool cuda_run_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                    const Weights *w, const float *x, int batch, float *y);

#endif
