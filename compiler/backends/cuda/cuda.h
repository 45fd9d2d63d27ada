// The CUDA backend: CUDA C++ source per device from a compiled graph, the plan that
// runs it (runtime/alexrt_cuda.h), and NVRTC compilation with a content-hash cache.
//
//   options.c   CudaOptions: defaults, --conv parsing, names, tolerances
//   schedule.c  Graph (after run_passes) -> RtPlan + one translation unit per device
//   render.c    each node's kernel source (render.h: what the two share)
//   implicit.c  the implicit-GEMM and fused conv kernels' source
//   nvrtc.c     source -> CUBIN (+ PTX), cached in $ALEXC_CACHE or ~/.cache/alexc
#ifndef ALEXC_CUDA_H
#define ALEXC_CUDA_H

#include "../../alexc.h"
#include "alexrt_cuda.h"

#define CUDA_BLOCK 256  // threads per block of every generated kernel
#define CUDA_WARP 32    // threads per warp (the softmax's threads per image)

// How a conv layer is computed (`--conv`):
//   gemm    im2col kernel + one cuBLAS SGEMM per group + one epilogue kernel (bias and
//           the fused ReLU, LRN, pool) reading the GEMM's output; each conv output is
//           computed once. Needs per-device scratch (bounded: images go in chunks).
//   direct  one thread per final output element, the conv recomputed wherever a fused
//           stage needs it (no scratch, no cuBLAS for convs).
//   implicit  one tiled implicit-GEMM kernel (implicit.c; shared memory, no im2col
//           buffer) writing the conv output where gemm's cuBLAS does, then the same
//           epilogue kernel. Scratch: the conv output alone.
//   fused   the whole node (conv, bias, ReLU, LRN, pool) in one kernel (implicit.c):
//           a block computes the conv output its output tile needs into shared memory
//           with implicit's GEMM, then the fused stages from there; no scratch. A
//           conv with a ReLU or nothing after it is implicit's one kernel.
// implicit and fused run their GEMM on the CUDA cores in fp32 and on the tensor cores
// (wmma) in tf32 and bf16; direct is fp32 only.
typedef enum { CUDA_CONV_GEMM, CUDA_CONV_DIRECT, CUDA_CONV_IMPLICIT, CUDA_CONV_FUSED } CudaConv;

#define CUDA_SCRATCH_BYTES ((int64_t)256 << 20)  // default per-device scratch budget
#define CUDA_CHUNK_ALIGN 8  // images per chunk: a multiple of this (see schedule.c)
#define CUDA_MAX_LAYER_CONVS 16                  // per-layer --conv choices at most

typedef struct {
  char layer[64];  // a conv layer's name
  CudaConv conv;
} CudaLayerConv;

typedef struct {
  CudaConv conv;          // default CUDA_CONV_GEMM, for every conv without a choice below
  int n_layer_convs;      // --conv conv1=fused,...: the layers computed otherwise
  CudaLayerConv layer_conv[CUDA_MAX_LAYER_CONVS];
  RtPrecision precision;  // the GEMMs' arithmetic (default fp32); not tf32/bf16 with direct
  int64_t scratch_bytes;  // per-device scratch budget: sets the images per chunk
  int64_t max_chunk;      // at most this many images per chunk (0: no cap; tests use it)
} CudaOptions;

CudaOptions cuda_defaults(void);
// The largest max|got - want| / max|want| against the reference executor each precision
// is held to (tests, `alexc run --compare-ref`). See compiler/backends/cuda/README.md.
double cuda_tolerance(RtPrecision p);
// "gemm" / "direct" / "implicit" / "fused"; false for anything else.
bool cuda_parse_conv(const char *name, CudaConv *out);
const char *cuda_conv_name(CudaConv c);
// --conv's argument into o: a strategy for every conv ("fused"), or a comma-separated
// list of a default and LAYER=STRATEGY choices ("gemm,conv1=fused,conv2=fused"; with no
// default, gemm). False with a message in err (size bytes) for anything else.
bool cuda_parse_conv_option(const char *arg, CudaOptions *o, char *err, size_t size);
// How conv node n is computed under o: its layer's choice, else the default.
CudaConv cuda_conv_of(const CudaOptions *o, const Node *n);
// o's --conv as cuda_parse_conv_option reads it ("gemm,conv1=fused"), at most size bytes.
void cuda_describe_conv(const CudaOptions *o, char *buf, size_t size);

// --conv implicit (implicit.c): the tiled implicit-GEMM kernel `kname` of conv node
// `node` on device d, computing place[d].stage[0] (LRN halo included) of a chunk's
// images into scratch, channel-major as the gemm path's cuBLAS writes it, for the
// epilogue kernel `epilogue`. Its arguments: the input (arena, @ the chunk's first
// image), the weight slice of stage[0] as stored, the scratch, the batch.
// When cuda_implicit_writes_output(n, d) (the node is the conv alone or conv + ReLU, no
// halo, not in place), the kernel is the node's only one instead, over the whole batch:
// it adds the bias, applies the ReLU and writes the node's output buffer; its arguments
// are the input, the weights, the bias (if any), the output, the batch; `epilogue` is
// unused.
void cuda_emit_implicit_conv(FILE *f, const Graph *g, int node, int d, const char *kname,
                             const char *epilogue, RtPrecision prec);
bool cuda_implicit_writes_output(const Node *n, int d);
#define CUDA_IMPLICIT_THREADS 256  // its block size
// Its plan step's `work` per image: CUDA_IMPLICIT_THREADS per block, and blocks for whole
// pixel tiles of each image, so the launch has at least one block per tile.
int64_t cuda_implicit_work(const Node *n, int d, RtPrecision prec);

// --conv fused (implicit.c). A block's tile of the node's output on device d, and the
// region of the conv output (stage 0) it needs: channels [c - halo, c + tc + halo) for a
// tile starting at channel c, rows [y * y_scale + y_shift, + rh) for one starting at row
// y (columns alike). tc == 0 when no tile's region fits in shared memory.
typedef struct {
  int tc, th, tw;              // the output tile: channels x rows x columns
  int c_tiles, y_tiles, x_tiles;  // tiles per image
  int halo;                    // channels the LRNs read on each side
  int rc, rh, rw;              // the region: channels x rows x columns
  int y_scale, y_shift, x_scale, x_shift;
  int bn;                      // kernels per GEMM tile (the pixels: 64)
  int64_t gemm_tiles;          // 64 x bn GEMM tiles per image
  int staged;                  // cuda_fused_staged(n)
  int smem;                    // bytes of (dynamic) shared memory per block
} CudaFusedTile;
// The shared memory a block of the fused kernel may have, in bytes: 227 KiB, the most a
// block can opt in to on sm_90 (the CUDA C++ Programming Guide's table of technical
// specifications per compute capability: 227 KB of the SM's 228 KB for 9.0), as dynamic
// shared memory raised with cuFuncSetAttribute (runtime/cuda.c). A constant, not a query:
// the tiles are compile-time constants of the generated source, which is generated
// before --arch is known to the code generator and for the sm_90 the project targets. A
// GPU with less (sm_80: 163 KB; sm_86, sm_89: 99 KB) refuses the attribute at launch.
#define CUDA_SMEM_LIMIT (227 * 1024)
CudaFusedTile cuda_fused_tile(const Node *n, int d, RtPrecision prec);
// The stage whose values the fused kernel computes once per region pixel into shared
// memory after the GEMM, for the first max-pool to read (the LRN before it, which the
// pool's overlapping windows would otherwise recompute): the stage before the first
// pool, where an LRN precedes that pool and none follows it; 0 for none.
int cuda_fused_staged(const Node *n);
// Whether conv node n on device d is one tiled kernel under --conv fused: its fused
// stages are ReLU, dropout, LRN and max-pool (what the fusion pass makes), its region
// fits, and it is not the simpler implicit kernel that writes its output.
bool cuda_fused_applies(const Node *n, int d, RtPrecision prec);
// Its source: the comment and constants (namespace nodeNN_fused), before the node's
// stage functions (render.c, whose stage 0 reads the region: struct Ptrs {region,
// c0, y0, x0}), then the kernel `kname` calling them. Arguments: the input, the
// weight slice of stage[0], the bias (if any), the output, the batch.
void cuda_emit_fused_head(FILE *f, const Graph *g, int node, int d, const char *kname,
                          RtPrecision prec);
void cuda_emit_fused_kernel(FILE *f, const Graph *g, int node, const char *kname,
                            RtPrecision prec);
// Its plan step's `work` per image: a block (CUDA_IMPLICIT_THREADS) per tile.
int64_t cuda_fused_work(const Node *n, int d, RtPrecision prec);

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


// A compiled graph loaded on the GPU(s) (execute.c): the program (its plan must outlive
// the runtime's handle) and the runtime's executor, weights uploaded.
typedef struct {
  CudaProgram prog;
  RtCuda *rt;
} CudaModel;

// Generates, compiles (cached), loads the plan with the CUDA runtime, uploads the
// weights. False with a message, e.g. "no CUDA driver found", when it cannot run.
bool cuda_load_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                     const Weights *w, CudaModel *m);
void cuda_model_free(CudaModel *m);

// Runs a batch through the network on the GPU(s): cuda_load_graph, one batch, free.
// y is (batch, output).
bool cuda_run_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                    const Weights *w, const float *x, int batch, float *y);

#endif
