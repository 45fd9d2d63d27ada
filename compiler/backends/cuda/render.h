// The CUDA code generator's two halves and what they share: schedule.c turns the graph
// into the plan (steps, buffers, weight slices) and asks render.c for each kernel's
// source. Private to compiler/backends/cuda/.
#ifndef ALEXC_CUDA_RENDER_H
#define ALEXC_CUDA_RENDER_H

#include "cuda.h"

// What a kernel of a node needs to know about where things are on its device.
typedef struct {
  const Graph *g;
  const Node *n;
  int node, device;
  FILE *f;
  bool gemm;  // a conv computed by im2col + cuBLAS: this kernel is its epilogue
  bool bf16;  // GEMM operands in bfloat16 (--precision bf16): im2col writes bf16
  bool region;  // --conv fused: stage 0 reads the conv output from the block's region
} Ctx;

// A conv on device d computed as im2col + GEMM: its groups there and its scratch.
typedef struct {
  int64_t kernels;      // M: channels the GEMM computes (the head's range, halo included)
  int64_t first_group;  // groups [first_group, first_group + groups) intersect that range
  int64_t groups;
  int64_t kk;           // GEMM depth: input channels per group x K x K
  int64_t pixels;       // output pixels per image
  int64_t scratch;      // elements per image: the conv output, then each group's columns
} ConvGemm;

static inline bool has_weights(const Node *n) { return n->op == OP_CONV || n->op == OP_FC; }
static inline bool has_bias(const Node *n) {
  return (n->op == OP_CONV && n->conv.bias) || (n->op == OP_FC && n->fc.bias);
}
// fc: cuBLAS computes the head into the output buffer; the kernel reads it back.
static inline bool reads_own_output(const Node *n) { return n->op == OP_FC; }
// Whether an fc node's bias and ReLU are its GEMM's epilogue (cublasLt): it has a bias,
// and its fused stages are ReLUs and dropouts (the identity at inference) only. The node
// then has no kernel.
static inline RtGemmEpilogue fc_gemm_epilogue(const Node *n) {
  bool relu = false;
  for (int k = 0; k < n->n_epilogue; k++) {
    if (n->epilogue[k].op == OP_RELU)
      relu = true;
    else if (n->epilogue[k].op != OP_DROPOUT)
      return RT_GEMM_PLAIN;
  }
  return !has_bias(n) ? RT_GEMM_PLAIN : relu ? RT_GEMM_BIAS_RELU : RT_GEMM_BIAS;
}
// An fc node whose GEMM is all its work on the device (no kernel of its own).
static inline bool fc_gemm_only(const Node *n) {
  return n->op == OP_FC && (fc_gemm_epilogue(n) != RT_GEMM_PLAIN || (!has_bias(n) && !n->n_epilogue));
}
// Dropout and flatten whose output shares its input's buffer are no-ops.
static inline bool is_noop(const Node *n, int d) {
  return !n->n_epilogue && n->place[d].in_place && (n->op == OP_DROPOUT || n->op == OP_FLATTEN);
}

static inline bool is_gemm_conv(const Node *n, const CudaOptions *o) {
  return n->op == OP_CONV && cuda_conv_of(o, n) == CUDA_CONV_GEMM;
}

// --conv fused computes a conv that cuda_fused_applies() refuses as --conv implicit
// does: the implicit kernel alone, or (a region too large) with the epilogue kernel.
static inline bool is_implicit_conv(const Node *n, int d, const CudaOptions *o) {
  CudaConv c = cuda_conv_of(o, n);
  return n->op == OP_CONV && (c == CUDA_CONV_IMPLICIT ||
                              (c == CUDA_CONV_FUSED && !cuda_fused_applies(n, d, o->precision)));
}

static inline bool is_fused_conv(const Node *n, int d, const CudaOptions *o) {
  return n->op == OP_CONV && cuda_conv_of(o, n) == CUDA_CONV_FUSED &&
         cuda_fused_applies(n, d, o->precision);
}

// ---- render.c: source for one node (x->f is the device's translation unit)

// The node's __device__ stage functions (stage0 .. stageK).
bool emit_stage_functions(const Ctx *x);
// The node's kernel `kname`: its output computed from its stages.
bool emit_node(const Ctx *x, const char *kname);
// The im2col kernel of a conv computed as im2col + GEMM.
void emit_im2col(const Ctx *x, const char *kname, const ConvGemm *cg);
// bf16 fc: the kernel converting the fc's input to bfloat16 for the GEMM.
void emit_fc_to_bf16(FILE *f, const Node *n, int64_t features, const char *kname);
// The comment that opens a device's translation unit: the network, the options, each
// conv strategy in use, and its kernels.
void emit_header(const Graph *g, int d, const char *how, const CudaOptions *o,
                 const RtPlanDevice *dev, FILE *f);

#endif
