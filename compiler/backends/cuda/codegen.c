// CUDA code generation: one translation unit per device, one kernel per node that has
// work there, every shape, stride, channel range and LRN/pool constant compiled in.
//
// The kernel scheme (correctness first; performance is for a session with a GPU):
// one thread per element of the node's final output on this device. A node's stages
// become a chain of __device__ functions, stageK(p, img, c, y, x) returning stage K's
// value at one position, each calling the stage before it at the positions it needs:
// a pool calls the LRN at each window position, the LRN calls the ReLU at each window
// channel, the ReLU calls the convolution. Intermediate values therefore never leave
// registers and no kernel needs shared memory or a barrier, at the price of
// recomputation (a conv+ReLU+LRN+3x3/2 pool computes each convolution output about
// 5 x 2.25 times). The obvious next step on a GPU is a block per output tile with
// the conv tile in shared memory; the stage functions stay the semantics to check
// it against.
//
// Buffers follow the reference executor's View exactly: a device holds channels
// [held.begin, held.end) of a tensor, stored image-major, then held channel, then
// plane, at arena offset `offset * batch` (the memory plan is per image). Weights are
// the device's slice of each tensor (rows of the head's channel range), so kernel
// FIRST_KERNEL constants rebase channel numbers into the slice.
//
// fc layers: the GEMM runs in cuBLAS (a plan step), written straight into the output
// buffer; the node's kernel is then only its epilogue (bias, ReLU, dropout), reading
// and rewriting the same elements.
//
// conv layers with --conv gemm (the default): per chunk of images, an im2col kernel
// writes the column matrix of every group the device computes into scratch, one
// cuBLAS SGEMM per group multiplies it by that group's weights into a channel-major
// conv output (also scratch), and the node's kernel is the epilogue: stage 0 reads
// that output and adds the bias, the fused stages (ReLU, LRN, pool) are the same
// __device__ functions as above. Each conv output is computed once (by cuBLAS); the
// epilogue only recomputes the cheap ReLU/LRN at a pool's overlapping windows. With
// --conv direct, stage 0 is the direct convolution. With --conv implicit, a tiled
// implicit-GEMM kernel (implicit.c) replaces im2col + cuBLAS, writing the same scratch
// for the same epilogue; a conv with only a ReLU (or nothing) after it is that one
// kernel, bias and ReLU included, writing the node's output.
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

#define WEIGHT_ALIGN 64  // elements (256 bytes) between weight slices

void cuda_kernel_name(const Graph *g, int node, char *buf, size_t size) {
  snprintf(buf, size, "k%02d_%s", node, g->nodes[node].name);
  for (char *s = buf + 1; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
      *s = '_';
}

// A float constant as the shortest C++ float literal that gives the same float:
// "2.0f", "0.0001f".
static const char *flit(double v, char *buf) {
  for (int digits = 6; digits <= 9; digits++) {
    snprintf(buf, 40, "%.*g", digits, (float)v);
    if (strtof(buf, NULL) == (float)v)
      break;
  }
  if (!strpbrk(buf, ".eEn"))
    strcat(buf, ".0");
  strcat(buf, "f");
  return buf;
}

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

static ConvGemm conv_gemm(const Graph *g, const Node *n, int d) {
  const ConvAttrs *a = &n->conv;
  Range r = n->place[d].stage[0];
  ConvGemm c = {0};
  if (!range_len(r))
    return c;
  int64_t per_group = a->out / a->groups;
  c.kernels = range_len(r);
  c.first_group = r.begin / per_group;
  c.groups = (r.end - 1) / per_group - c.first_group + 1;
  c.kk = g->nodes[n->inputs[0]].out.c / a->groups * a->kernel * a->kernel;
  c.pixels = shape_plane(n->head_out);
  c.scratch = (c.kernels + c.groups * c.kk) * c.pixels;
  return c;
}

static bool has_weights(const Node *n) { return n->op == OP_CONV || n->op == OP_FC; }
static bool has_bias(const Node *n) {
  return (n->op == OP_CONV && n->conv.bias) || (n->op == OP_FC && n->fc.bias);
}
// fc: cuBLAS computes the head into the output buffer; the kernel reads it back.
static bool reads_own_output(const Node *n) { return n->op == OP_FC; }
// Dropout and flatten whose output shares its input's buffer are no-ops.
static bool is_noop(const Node *n, int d) {
  return !n->n_epilogue && n->place[d].in_place && (n->op == OP_DROPOUT || n->op == OP_FLATTEN);
}

static void describe_stage(FILE *f, const Node *s, Shape in, Shape out) {
  char a[64], b[64];
  fprintf(f, "%s: %s %s -> %s", s->name, op_name(s->op), shape_str(in, a, sizeof a),
          shape_str(out, b, sizeof b));
  switch (s->op) {
  case OP_CONV:
    fprintf(f, ", %d kernels %dx%d, stride %d, pad %d, groups %d%s", s->conv.out, s->conv.kernel,
            s->conv.kernel, s->conv.stride, s->conv.pad, s->conv.groups,
            s->conv.bias ? "" : ", no bias");
    break;
  case OP_LRN:
    fprintf(f, ", size %d, alpha %g, beta %g, k %g, groups %d", s->lrn.size, s->lrn.alpha,
            s->lrn.beta, s->lrn.k, s->lrn.groups);
    break;
  case OP_MAXPOOL:
    fprintf(f, ", %dx%d window, stride %d, pad %d", s->pool.kernel, s->pool.kernel,
            s->pool.stride, s->pool.pad);
    break;
  case OP_FC:
    fprintf(f, "%s (GEMM in cuBLAS)", s->fc.bias ? "" : ", no bias");
    break;
  case OP_DROPOUT:
    fprintf(f, ", p %g: the identity at inference", s->dropout.p);
    break;
  default:
    break;
  }
}

// ---------------------------------------------------------------- stage functions

#define STAGE_ARGS "const Ptrs &p, long long img, int c, int y, int x"

// in<j>(): input j as this device holds it.
static void emit_loader(const Ctx *x, int j) {
  const Node *in = &x->g->nodes[x->n->inputs[j]];
  const Placement *pl = &in->place[x->device];
  fprintf(x->f,
          "// Input %d, '%s' (%lldx%lldx%lld): this device holds channels [%lld, %lld).\n"
          "__device__ __forceinline__ float in%d(" STAGE_ARGS ") {\n"
          "  constexpr int HELD_BEGIN = %lld, HELD = %lld, H = %lld, W = %lld;\n"
          "  return p.x%d[((img * HELD) + (c - HELD_BEGIN)) * (H * W) + y * W + x];\n"
          "}\n\n",
          j, in->name, (long long)in->out.c, (long long)in->out.h, (long long)in->out.w,
          (long long)pl->held.begin, (long long)pl->held.end, j, (long long)pl->held.begin,
          (long long)range_len(pl->held), (long long)in->out.h, (long long)in->out.w, j);
}

// stage<k>(): the value of stage k at (img, c, y, x); `prev` is the stage before.
static bool emit_stage(const Ctx *x, int k) {
  const Node *n = x->n, *s = node_stage(n, k);
  const Graph *g = x->g;
  FILE *f = x->f;
  Shape in = k ? node_stage_shape(n, k - 1) : n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  Shape out = node_stage_shape(n, k);
  char prev[24], fa[40], fb[40], fc[40];
  if (k)
    snprintf(prev, sizeof prev, "stage%d", k - 1);
  else
    snprintf(prev, sizeof prev, "in0");
  fprintf(f, "// Stage %d, ", k);
  describe_stage(f, s, in, out);
  fprintf(f, ".\n__device__ __forceinline__ float stage%d(" STAGE_ARGS ") {\n", k);
  switch (s->op) {
  case OP_CONV: {
    const ConvAttrs *a = &s->conv;
    if (x->region) {
      // Computed by the fused kernel into the block's shared memory, bias added.
      fprintf(f,
              "  using namespace node%02d_fused;\n"
              "  (void)img;\n"
              "  return p.region[(c - p.c0) * RP + (y - p.y0) * RW + (x - p.x0)];\n",
              x->node);
      break;
    }
    if (x->gemm) {
      // cuBLAS's output, channel-major: (channel - FIRST_KERNEL, image, pixel), p.ld
      // elements per channel (the chunk's images x pixels).
      fprintf(f,
              "  constexpr int OUT_H = %lld, OUT_W = %lld;\n"
              "  constexpr int FIRST_KERNEL = %lld;  // the GEMM's first channel\n"
              "  return p.g[(c - FIRST_KERNEL) * p.ld + (img * OUT_H + y) * OUT_W + x]%s;\n",
              (long long)out.h, (long long)out.w, (long long)n->place[x->device].stage[0].begin,
              a->bias ? " + p.b[c - FIRST_KERNEL]" : "");
      break;
    }
    fprintf(f,
            "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD = %d;\n"
            "  constexpr int IN_PER_GROUP = %lld, OUT_PER_GROUP = %d;\n"
            "  constexpr int FIRST_KERNEL = %lld;  // this device's weights start there\n"
            "  const int group = c / OUT_PER_GROUP;\n"
            "  const float *w = p.w + (c - FIRST_KERNEL) * (IN_PER_GROUP * K * K);\n"
            "  float acc = %s;\n"
            "  for (int ic = 0; ic < IN_PER_GROUP; ic++)\n"
            "    for (int ky = 0; ky < K; ky++) {\n"
            "      const int iy = y * STRIDE - PAD + ky;\n"
            "      if (iy < 0 || iy >= IN_H)\n"
            "        continue;\n"
            "      for (int kx = 0; kx < K; kx++) {\n"
            "        const int ix = x * STRIDE - PAD + kx;\n"
            "        if (ix >= 0 && ix < IN_W)\n"
            "          acc += in0(p, img, group * IN_PER_GROUP + ic, iy, ix) * w[(ic * K + ky) * K + kx];\n"
            "      }\n"
            "    }\n"
            "  return acc;\n",
            (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad,
            (long long)(in.c / a->groups), a->out / a->groups,
            (long long)n->place[x->device].stage[0].begin,
            a->bias ? "p.b[c - FIRST_KERNEL]" : "0.0f");
    break;
  }
  case OP_FC:
    // The GEMM's result, already in the output buffer; add the bias.
    fprintf(f, "  constexpr int HELD_BEGIN = %lld, HELD = %lld;\n",
            (long long)n->place[x->device].held.begin, (long long)range_len(n->place[x->device].held));
    if (s->fc.bias)
      fprintf(f,
              "  constexpr int FIRST_KERNEL = %lld;  // this device's bias starts there\n"
              "  return p.y[img * HELD + (c - HELD_BEGIN)] + p.b[c - FIRST_KERNEL];\n",
              (long long)n->place[x->device].stage[0].begin);
    else
      fputs("  return p.y[img * HELD + (c - HELD_BEGIN)];\n", f);
    fputs("  (void)y;\n  (void)x;\n", f);
    break;
  case OP_RELU:
    fprintf(f, "  const float v = %s(p, img, c, y, x);\n  return v > 0.0f ? v : 0.0f;\n", prev);
    break;
  case OP_DROPOUT:
    fprintf(f, "  return %s(p, img, c, y, x);\n", prev);
    break;
  case OP_LRN: {
    const LrnAttrs *a = &s->lrn;
    fprintf(f,
            "  constexpr int HALF = %d, PER_GROUP = %lld;  // window: c +- HALF within c's group\n"
            "  constexpr float K = %s, ALPHA = %s, BETA = %s;\n"
            "  const int first = c / PER_GROUP * PER_GROUP, last = first + PER_GROUP - 1;\n"
            "  const int lo = c - HALF < first ? first : c - HALF;\n"
            "  const int hi = c + HALF > last ? last : c + HALF;\n"
            "  float sum = 0.0f, centre = 0.0f;\n"
            "#pragma unroll 1\n"
            "  for (int j = lo; j <= hi; j++) {\n"
            "    const float v = %s(p, img, j, y, x);\n"
            "    sum += v * v;\n"
            "    if (j == c)\n"
            "      centre = v;\n"
            "  }\n"
            "  return centre / powf(K + ALPHA * sum, BETA);\n",
            a->size / 2, (long long)(in.c / a->groups), flit(a->k, fa), flit(a->alpha, fb),
            flit(a->beta, fc), prev);
    break;
  }
  case OP_MAXPOOL: {
    const PoolAttrs *a = &s->pool;
    fprintf(f,
            "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD = %d;\n"
            "  float m = -INFINITY;  // padding never wins: windows are clipped to the input\n"
            "#pragma unroll 1\n"
            "  for (int ky = 0; ky < K; ky++)\n"
            "    for (int kx = 0; kx < K; kx++) {\n"
            "      const int iy = y * STRIDE - PAD + ky, ix = x * STRIDE - PAD + kx;\n"
            "      if (iy >= 0 && iy < IN_H && ix >= 0 && ix < IN_W) {\n"
            "        const float v = %s(p, img, c, iy, ix);\n"
            "        if (v > m)\n"
            "          m = v;\n"
            "      }\n"
            "    }\n"
            "  return m;\n",
            (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad, prev);
    break;
  }
  case OP_FLATTEN:
    fprintf(f,
            "  constexpr int IN_H = %lld, IN_W = %lld;  // feature c is channel c / (IN_H * IN_W)\n"
            "  (void)y;\n  (void)x;\n"
            "  return %s(p, img, c / (IN_H * IN_W), c %% (IN_H * IN_W) / IN_W, c %% IN_W);\n",
            (long long)in.h, (long long)in.w, prev);
    break;
  case OP_CONCAT: {
    int64_t offset = 0;
    for (int j = 0; j < n->n_inputs; j++) {
      int64_t c = g->nodes[n->inputs[j]].out.c;
      if (j + 1 < n->n_inputs)
        fprintf(f, "  if (c < %lld)\n  ", (long long)(offset + c));
      fprintf(f, "  return in%d(p, img, c - %lld, y, x);\n", j, (long long)offset);
      offset += c;
    }
    break;
  }
  default:
    error("cuda backend: layer '%s': op '%s' cannot be a stage", s->name, op_name(s->op));
    return false;
  }
  fputs("}\n\n", f);
  return true;
}

// ---------------------------------------------------------------- kernels

// The kernel's buffer parameters, in the order the plan passes them.
static void emit_params(const Ctx *x, bool restrict_ok) {
  const Node *n = x->n;
  const char *r = restrict_ok ? "__restrict__ " : "", *sep = ",\n    ";
  if (x->gemm) {
    fprintf(x->f, "const float *__restrict__ g%sfloat *__restrict__ y%s", sep, sep);
    if (has_bias(n))
      fprintf(x->f, "const float *__restrict__ b%s", sep);
    fputs("int batch", x->f);
    return;
  }
  for (int j = 0; j < n->n_inputs && !reads_own_output(n); j++)
    fprintf(x->f, "const float *%sx%d%s", r, j, sep);
  fprintf(x->f, "float *%sy%s", r, sep);
  if (n->op == OP_CONV)
    fprintf(x->f, "const float *__restrict__ w%s", sep);
  if (has_bias(n))
    fprintf(x->f, "const float *__restrict__ b%s", sep);
  fputs("int batch", x->f);
}

static void emit_softmax(const Ctx *x, const char *kname) {
  const Node *n = x->n, *in = &x->g->nodes[n->inputs[0]];
  const Placement *pi = &in->place[x->device], *po = &n->place[x->device];
  Range r = po->stage[0];
  fprintf(x->f,
          "// One thread per image: the normaliser needs the whole vector, and a vector\n"
          "// of %lld is small next to the layers before it.\n"
          "extern \"C\" __global__ void %s(\n    ",
          (long long)n->out.c, kname);
  emit_params(x, true);
  fprintf(x->f,
          ") {\n"
          "  constexpr int N = %lld;\n"
          "  constexpr int IN_HELD_BEGIN = %lld, IN_HELD = %lld;\n"
          "  constexpr int OUT_HELD_BEGIN = %lld, OUT_HELD = %lld;\n"
          "  constexpr int C_BEGIN = %lld, C_END = %lld;  // computed here\n"
          "  for (long long img = blockIdx.x * (long long)blockDim.x + threadIdx.x; img < batch;\n"
          "       img += (long long)gridDim.x * blockDim.x) {\n"
          "    const float *v = x0 + img * IN_HELD - IN_HELD_BEGIN;\n"
          "    float m = -INFINITY, sum = 0.0f;\n"
          "    for (int k = 0; k < N; k++)\n"
          "      m = v[k] > m ? v[k] : m;\n"
          "    for (int k = 0; k < N; k++)\n"
          "      sum += expf(v[k] - m);\n"
          "    for (int k = C_BEGIN; k < C_END; k++)\n"
          "      y[img * OUT_HELD + (k - OUT_HELD_BEGIN)] = expf(v[k] - m) / sum;\n"
          "  }\n"
          "}\n",
          (long long)n->out.c, (long long)pi->held.begin, (long long)range_len(pi->held),
          (long long)po->held.begin, (long long)range_len(po->held), (long long)r.begin,
          (long long)r.end);
}

// namespace nodeNN: struct Ptrs, the pointers every stage may read (gathered so stage
// functions share one signature), the input loaders and the stage functions.
static bool emit_stage_functions(const Ctx *x) {
  const Node *n = x->n;
  FILE *f = x->f;
  fprintf(f, "namespace node%02d {\n\n", x->node);
  fputs("struct Ptrs {\n", f);
  if (x->region) {
    fputs("  const float *region;  // the conv output the block computed (shared memory)\n"
          "  int c0, y0, x0;       // its first channel, row and column\n",
          f);
  } else if (x->gemm) {
    fputs("  const float *g;  // the conv GEMM's output (scratch)\n"
          "  long long ld;    // its elements per channel: batch x pixels\n",
          f);
  } else {
    for (int j = 0; j < n->n_inputs && !reads_own_output(n); j++)
      fprintf(f, "  const float *x%d;\n", j);
    if (reads_own_output(n))
      fputs("  const float *y;  // the GEMM's output, rewritten in place\n", f);
    if (n->op == OP_CONV)
      fputs("  const float *w;\n", f);
  }
  if (has_bias(n) && !x->region)
    fputs("  const float *b;\n", f);
  fputs("};\n\n", f);
  for (int j = 0; j < n->n_inputs && !reads_own_output(n) && !x->gemm && !x->region; j++)
    emit_loader(x, j);
  for (int k = 0; k <= n->n_epilogue; k++)
    if (!emit_stage(x, k))
      return false;
  fprintf(f, "}  // namespace node%02d\n\n", x->node);
  return true;
}

static bool emit_node(const Ctx *x, const char *kname) {
  const Node *n = x->n;
  const Placement *pl = &n->place[x->device];
  FILE *f = x->f;
  fprintf(f, "// ---------------------------------------------------------------- %s\n//\n", kname);
  for (int k = 0; k <= n->n_epilogue; k++) {
    Shape in = k ? node_stage_shape(n, k - 1) : n->n_inputs ? x->g->nodes[n->inputs[0]].out : n->out;
    fprintf(f, "// %s", k ? "then " : "");
    describe_stage(f, node_stage(n, k), in, node_stage_shape(n, k));
    fprintf(f, "\n//   %s [%lld, %lld) on this device\n",
            node_stage_shape(n, k).rank == 1 ? "features" : "channels", (long long)pl->stage[k].begin,
            (long long)pl->stage[k].end);
  }
  fputc('\n', f);
  if (n->op == OP_SOFTMAX) {
    emit_softmax(x, kname);
    return true;
  }
  if (!emit_stage_functions(x))
    return false;

  Shape out = n->out;
  Range r = pl->stage[n->n_epilogue];
  // Reading and writing the same buffer (in place, or the GEMM's output) rules out
  // __restrict__ on the pointers.
  bool restrict_ok = !pl->in_place && !reads_own_output(n);
  const char *what = x->gemm ? "// The epilogue of the conv GEMM (bias and the fused stages), one thread per\n"
                               "// output element on this device: image, channel, row, column.\n"
                             : "// One thread per output element on this device: image, channel, row, column.\n";
  fprintf(f, "%sextern \"C\" __global__ void %s(\n    ", what, kname);
  emit_params(x, restrict_ok);
  fprintf(f,
          ") {\n"
          "  using namespace node%02d;\n"
          "  constexpr int C_BEGIN = %lld, C_END = %lld, H = %lld, W = %lld;\n"
          "  constexpr int HELD_BEGIN = %lld, HELD = %lld;  // channels of y on this device\n"
          "  constexpr long long PER_IMAGE = (long long)(C_END - C_BEGIN) * H * W;\n"
          "  const Ptrs p = {",
          x->node, (long long)r.begin, (long long)r.end, (long long)out.h, (long long)out.w,
          (long long)pl->held.begin, (long long)range_len(pl->held));
  bool first = true;
  if (x->gemm) {
    fprintf(f, "g, (long long)batch * %lld", (long long)shape_plane(n->head_out));
    first = false;
  }
  for (int j = 0; j < n->n_inputs && !reads_own_output(n) && !x->gemm; j++, first = false)
    fprintf(f, "%sx%d", first ? "" : ", ", j);
  if (reads_own_output(n)) {
    fprintf(f, "%sy", first ? "" : ", ");
    first = false;
  }
  if (n->op == OP_CONV && !x->gemm) {
    fprintf(f, "%sw", first ? "" : ", ");
    first = false;
  }
  if (has_bias(n))
    fprintf(f, "%sb", first ? "" : ", ");
  fprintf(f,
          "};\n"
          "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < batch * PER_IMAGE;\n"
          "       i += (long long)gridDim.x * blockDim.x) {\n"
          "    const long long img = i / PER_IMAGE;\n"
          "    const int e = (int)(i %% PER_IMAGE);\n"
          "    const int c = C_BEGIN + e / (H * W), oy = e / W %% H, ox = e %% W;\n"
          "    y[(img * HELD + (c - HELD_BEGIN)) * (H * W) + oy * W + ox] = stage%d(p, img, c, oy, ox);\n"
          "  }\n"
          "}\n",
          n->n_epilogue);
  return true;
}

// The im2col kernel of a conv computed by GEMM: for the chunk's `batch` images, the
// column matrix of each group the device computes, column-major as cuBLAS reads it
// (rows: the chunk's pixels, image-major; columns: input channel x kernel row x kernel
// column), group after group. Zero where the window hangs over the padding.
static void emit_im2col(const Ctx *x, const char *kname, const ConvGemm *cg) {
  const Node *n = x->n;
  const ConvAttrs *a = &n->conv;
  Shape in = x->g->nodes[n->inputs[0]].out;
  FILE *f = x->f;
  fprintf(f, "namespace node%02d_im2col {\n\nstruct Ptrs {\n  const float *x0;\n};\n\n",
          x->node);
  emit_loader(x, 0);
  fprintf(f, "}  // namespace node%02d_im2col\n\n", x->node);
  fprintf(f,
          "// im2col for groups [%lld, %lld): one thread per column-matrix element%s.\n"
          "extern \"C\" __global__ void %s(\n"
          "    const float *__restrict__ x0,\n    %s *__restrict__ col,\n    int batch) {\n"
          "  using namespace node%02d_im2col;\n"
          "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD = %d;\n"
          "  constexpr int OUT_H = %lld, OUT_W = %lld, IN_PER_GROUP = %lld;\n"
          "  constexpr int FIRST_GROUP = %lld, GROUPS = %lld;\n"
          "  constexpr int KK = IN_PER_GROUP * K * K, PIXELS = OUT_H * OUT_W;\n"
          "  const Ptrs p = {x0};\n"
          "  const long long ld = (long long)batch * PIXELS;  // rows: the chunk's pixels\n"
          "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < GROUPS * KK * ld;\n"
          "       i += (long long)gridDim.x * blockDim.x) {\n"
          "    const int group = (int)(i / (KK * ld)), kk = (int)(i / ld %% KK);\n"
          "    const long long row = i %% ld, img = row / PIXELS;\n"
          "    const int pixel = (int)(row %% PIXELS), oy = pixel / OUT_W, ox = pixel %% OUT_W;\n"
          "    const int ic = kk / (K * K), ky = kk / K %% K, kx = kk %% K;\n"
          "    const int iy = oy * STRIDE - PAD + ky, ix = ox * STRIDE - PAD + kx;\n"
          "    const float v = iy >= 0 && iy < IN_H && ix >= 0 && ix < IN_W\n"
          "                        ? in0(p, img, (FIRST_GROUP + group) * IN_PER_GROUP + ic, iy, ix)\n"
          "                        : 0.0f;\n"
          "%s"
          "  }\n"
          "}\n\n",
          (long long)cg->first_group, (long long)(cg->first_group + cg->groups),
          x->bf16 ? " (bfloat16: unsigned short)" : "", kname, x->bf16 ? "unsigned short" : "float", x->node,
          (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad,
          (long long)n->head_out.h, (long long)n->head_out.w, (long long)(in.c / a->groups),
          (long long)cg->first_group, (long long)cg->groups, x->bf16 ? "    // Each group's columns start at its float-sized offset (as for fp32), so the\n"
                    "    // bfloat16 columns of group g sit at element 2 * g * KK * ld.\n"
                    "    col[i + group * (KK * ld)] = to_bf16(v);\n"
                  : "    col[i] = v;\n");
}

// ---------------------------------------------------------------- the plan

static RtAddr arena(int64_t per_image, int64_t fixed) {
  return (RtAddr){RT_SPACE_ARENA, per_image, fixed, 0};
}
static RtAddr weight(int64_t at) { return (RtAddr){RT_SPACE_WEIGHTS, 0, at, 0}; }

// Adds the device's slice of a layer's weight or bias for channels r; returns its offset.
// bf16: the slice is a GEMM operand under --precision bf16, converted at upload.
// A conv computed by GEMM adds its weights group by group (one slice per GEMM).
static int64_t add_slice(RtPlan *p, int d, const Node *n, bool bias, Range r, bool bf16) {
  RtPlanDevice *dev = &p->dev[d];
  int64_t rows = n->op == OP_CONV ? n->conv.out : n->fc.out;
  int64_t per_row = bias ? 1 : n->n_weight / rows;
  RtWeightSlice s = {.first = r.begin * per_row, .count = range_len(r) * per_row,
                     .offset = dev->weights, .bf16 = bf16};
  snprintf(s.tensor, sizeof s.tensor, "%s.%s", n->name, bias ? "bias" : "weight");
  rt_plan_add_slice(p, d, &s);
  dev->weights += (rt_slice_slots(&s) + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
  return s.offset;
}

// The name of a node's second kernel, kname + suffix ("k01_conv1_im2col"), into out
// (RT_PLAN_NAME bytes). False after a message if it is too long for a plan step.
static bool kernel_name_with(const Node *n, const char *kname, const char *suffix, char *out) {
  size_t a = strlen(kname), b = strlen(suffix);
  if (a + b >= RT_PLAN_NAME) {
    error("cuda backend: layer '%s': kernel name too long", n->name);
    return false;
  }
  memcpy(out, kname, a);
  memcpy(out + a, suffix, b + 1);
  return true;
}

// A step of node n: its name (the kernel's symbol, or the layer) and layer set.
static RtStep step(RtStepKind kind, int d, const Node *n, const char *name) {
  RtStep s = {.kind = kind, .device = d, .block = CUDA_BLOCK};
  snprintf(s.name, sizeof s.name, "%s", name);
  snprintf(s.layer, sizeof s.layer, "%s", n->name);
  return s;
}

static bool is_gemm_conv(const Node *n, const CudaOptions *o) {
  return n->op == OP_CONV && cuda_conv_of(o, n) == CUDA_CONV_GEMM;
}

// --conv fused computes a conv that cuda_fused_applies() refuses as --conv implicit
// does: the implicit kernel alone, or (a region too large) with the epilogue kernel.
static bool is_implicit_conv(const Node *n, int d, const CudaOptions *o) {
  CudaConv c = cuda_conv_of(o, n);
  return n->op == OP_CONV && (c == CUDA_CONV_IMPLICIT ||
                              (c == CUDA_CONV_FUSED && !cuda_fused_applies(n, d, o->precision)));
}

static bool is_fused_conv(const Node *n, int d, const CudaOptions *o) {
  return n->op == OP_CONV && cuda_conv_of(o, n) == CUDA_CONV_FUSED &&
         cuda_fused_applies(n, d, o->precision);
}

// The epilogue kernel of a conv whose output a GEMM (cuBLAS or the implicit kernel) left
// in scratch, channel-major: bias and the fused stages, into the node's output buffer.
static void add_conv_epilogue(RtPlan *p, int d, const Node *n, const char *kname, int64_t b_at) {
  const Placement *pl = &n->place[d];
  RtStep e = step(RT_STEP_KERNEL, d, n, kname);
  e.work = range_len(pl->stage[n->n_epilogue]) * shape_plane(n->out);
  e.args[e.n_args++] = (RtAddr){RT_SPACE_SCRATCH, 0, 0, 0};
  e.args[e.n_args++] =
      (RtAddr){RT_SPACE_ARENA, pl->offset, 0, range_len(pl->held) * shape_plane(n->out)};
  if (has_bias(n))
    e.args[e.n_args++] = weight(b_at);
  rt_plan_add_step(p, &e);
}

// The plan steps of a conv computed by GEMM: one chunk (im2col, a GEMM per group, the
// epilogue kernel), and their kernels' source.
static bool plan_conv_gemm(const Graph *g, int i, int d, FILE *src, RtPlan *p, int64_t b_at,
                           const char *kname, RtPrecision prec) {
  const Node *n = &g->nodes[i], *in = &g->nodes[n->inputs[0]];
  const Placement *pl = &n->place[d], *pi = &in->place[d];
  Range r0 = pl->stage[0];
  ConvGemm cg = conv_gemm(g, n, d);
  int64_t per_group = n->conv.out / n->conv.groups, P = cg.pixels;
  Ctx x = {g, n, i, d, src, true, prec == RT_BF16, false};
  char iname[RT_PLAN_NAME];
  if (!kernel_name_with(n, kname, "_im2col", iname))
    return false;
  fprintf(src, "// ---------------------------------------------------------------- %s\n//\n",
          iname);
  static const char *const GEMM[] = {[RT_FP32] = "SGEMM", [RT_TF32] = "SGEMM on TF32 tensor cores",
                                      [RT_BF16] = "GEMM on bfloat16 operands"};
  fprintf(src, "// %s as im2col + cuBLAS %s: this kernel writes the column\n"
               "// matrix (scratch), a GEMM per group computes channels [%lld, %lld), %s\n"
               "// reads them.\n\n",
          n->name, GEMM[prec], (long long)r0.begin, (long long)r0.end, kname);
  emit_im2col(&x, iname, &cg);
  if (!emit_node(&x, kname))
    return false;
  fputc('\n', src);

  RtStep chunk = step(RT_STEP_CHUNK, d, n, n->name);
  chunk.images = p->dev[d].chunk;
  chunk.body = (int)cg.groups + 2;
  rt_plan_add_step(p, &chunk);
  RtAddr col = {RT_SPACE_SCRATCH, cg.kernels * P, 0, 0};
  RtStep im = step(RT_STEP_KERNEL, d, n, iname);
  im.work = cg.groups * cg.kk * P;
  im.n_args = 2;
  im.args[0] = (RtAddr){RT_SPACE_ARENA, pi->offset, 0, range_len(pi->held) * shape_plane(in->out)};
  im.args[1] = col;
  rt_plan_add_step(p, &im);
  for (int64_t k = 0; k < cg.groups; k++) {
    int64_t grp = cg.first_group + k;
    Range r = {grp * per_group > r0.begin ? grp * per_group : r0.begin,
               (grp + 1) * per_group < r0.end ? (grp + 1) * per_group : r0.end};
    // out[c][pixel] = sum_kk col[kk][pixel] * W[c][kk]: C (pixels x kernels) = A (pixels x
    // kk, the columns) * B (kk x kernels, the weights as stored, row-major out x kk).
    // Under bf16 the columns and weights are bfloat16: a group's columns still start at
    // its float-sized offset (using half of its region). Each group's weights are a
    // slice of their own, so every B starts aligned whatever the group's size.
    RtStep s = step(RT_STEP_GEMM, d, n, n->name);
    s.transa = s.transb = 'N';
    s.prec = prec;
    s.m = (RtDim){P, 0};
    s.n = (RtDim){0, range_len(r)};
    s.k = (RtDim){0, cg.kk};
    s.a = (RtAddr){RT_SPACE_SCRATCH, (cg.kernels + k * cg.kk) * P, 0, 0};
    s.lda = (RtDim){P, 0};
    s.b = weight(add_slice(p, d, n, false, r, prec == RT_BF16));
    s.ldb = (RtDim){0, cg.kk};
    s.c = (RtAddr){RT_SPACE_SCRATCH, (r.begin - r0.begin) * P, 0, 0};
    s.ldc = (RtDim){P, 0};
    rt_plan_add_step(p, &s);
  }
  add_conv_epilogue(p, d, n, kname, b_at);
  return true;
}

// The plan step of a conv node computed by one kernel over the whole batch (the implicit
// kernel that writes the output, or the fused kernel): a block of CUDA_IMPLICIT_THREADS,
// arguments input, weights, bias (if any), output.
static void add_whole_conv_step(RtPlan *p, const Graph *g, int i, int d, const char *kname,
                                int64_t work, int64_t w_at, int64_t b_at) {
  const Node *n = &g->nodes[i], *in = &g->nodes[n->inputs[0]];
  RtStep k = step(RT_STEP_KERNEL, d, n, kname);
  k.work = work;
  k.block = CUDA_IMPLICIT_THREADS;
  k.args[k.n_args++] = arena(in->place[d].offset, 0);
  k.args[k.n_args++] = weight(w_at);
  if (has_bias(n))
    k.args[k.n_args++] = weight(b_at);
  k.args[k.n_args++] = arena(n->place[d].offset, 0);
  rt_plan_add_step(p, &k);
}

// The plan steps of a conv computed by the implicit-GEMM kernel (--conv implicit):
// one chunk of two kernels, kNN_layer_implicit (implicit.c) writing the conv output of
// stage[0] to scratch exactly where and how plan_conv_gemm's GEMMs do, then the same
// epilogue kernel. One weight slice: all of stage[0]'s kernels, as stored. A conv
// followed by a ReLU or nothing is one kernel step instead, kNN_layer, over the whole
// batch: bias and ReLU in registers, written to the output buffer.
static bool plan_conv_implicit(const Graph *g, int i, int d, FILE *src, RtPlan *p,
                               int64_t b_at, const char *kname, RtPrecision prec) {
  const Node *n = &g->nodes[i], *in = &g->nodes[n->inputs[0]];
  const Placement *pl = &n->place[d], *pi = &in->place[d];
  int64_t w_at = add_slice(p, d, n, false, pl->stage[0], false);
  if (cuda_implicit_writes_output(n, d)) {
    cuda_emit_implicit_conv(src, g, i, d, kname, NULL, prec);
    add_whole_conv_step(p, g, i, d, kname, cuda_implicit_work(n, d, prec), w_at, b_at);
    return true;
  }
  char cname[RT_PLAN_NAME];
  if (!kernel_name_with(n, kname, "_implicit", cname))
    return false;
  cuda_emit_implicit_conv(src, g, i, d, cname, kname, prec);
  Ctx x = {g, n, i, d, src, true, false, false};
  if (!emit_node(&x, kname))
    return false;
  fputc('\n', src);

  RtStep chunk = step(RT_STEP_CHUNK, d, n, n->name);
  chunk.images = p->dev[d].chunk;
  chunk.body = 2;
  rt_plan_add_step(p, &chunk);
  RtStep k = step(RT_STEP_KERNEL, d, n, cname);
  k.work = cuda_implicit_work(n, d, prec);
  k.block = CUDA_IMPLICIT_THREADS;
  k.n_args = 3;
  k.args[0] = (RtAddr){RT_SPACE_ARENA, pi->offset, 0, range_len(pi->held) * shape_plane(in->out)};
  k.args[1] = weight(w_at);
  k.args[2] = (RtAddr){RT_SPACE_SCRATCH, 0, 0, 0};
  rt_plan_add_step(p, &k);
  add_conv_epilogue(p, d, n, kname, b_at);
  return true;
}

// The plan step of a conv computed by the fused kernel (--conv fused): one kernel over
// the whole batch, conv + bias + the fused stages, straight into the output buffer. One
// weight slice: all of stage[0]'s kernels, as stored.
static bool plan_conv_fused(const Graph *g, int i, int d, FILE *src, RtPlan *p, int64_t b_at,
                            const char *kname, RtPrecision prec) {
  const Node *n = &g->nodes[i];
  const Placement *pl = &n->place[d];
  int64_t w_at = add_slice(p, d, n, false, pl->stage[0], false);
  cuda_emit_fused_head(src, g, i, d, kname, prec);
  Ctx x = {g, n, i, d, src, false, false, true};
  if (!emit_stage_functions(&x))
    return false;
  cuda_emit_fused_kernel(src, g, i, kname, prec);
  add_whole_conv_step(p, g, i, d, kname, cuda_fused_work(n, d, prec), w_at, b_at);
  return true;
}

// bf16 fc: the kernel that converts the fc's input to bfloat16 in scratch for the GEMM.
static void emit_fc_to_bf16(FILE *f, const Node *n, int64_t features, const char *kname) {
  fprintf(f,
          "// ---------------------------------------------------------------- %s\n//\n"
          "// %s's input (%lld features per image) as bfloat16 in scratch: cuBLAS's GEMM takes\n"
          "// both operands in one type, and the weights are bfloat16.\n"
          "extern \"C\" __global__ void %s(\n"
          "    const float *__restrict__ x0,\n    unsigned short *__restrict__ xb,\n    int batch) {\n"
          "  constexpr long long FEATURES = %lld;\n"
          "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < batch * FEATURES;\n"
          "       i += (long long)gridDim.x * blockDim.x)\n"
          "    xb[i] = to_bf16(x0[i]);\n"
          "}\n\n",
          kname, n->name, (long long)features, kname, (long long)features);
}

// The GEMM of an fc layer, straight into its output buffer: y[img][o] = sum_j W[o][j] *
// x[img][j]. Under bf16 it runs in chunks, after a kernel that converts x to bfloat16.
static bool plan_fc_gemm(const Graph *g, int i, int d, FILE *src, RtPlan *p, int64_t w_at,
                         const char *kname, RtPrecision prec) {
  const Node *n = &g->nodes[i], *in = &g->nodes[n->inputs[0]];
  const Placement *pl = &n->place[d], *pi = &in->place[d];
  Range r0 = pl->stage[0];
  int64_t features = in->out.c, held = range_len(pl->held);
  if (pi->held.begin != 0 || pi->held.end != features) {
    error("cuda backend: fc '%s' on device %d: its input is not whole there", n->name, d);
    return false;
  }
  RtStep s = step(RT_STEP_GEMM, d, n, n->name);
  s.transa = 'T';
  s.transb = 'N';
  s.prec = prec;
  s.m = (RtDim){0, range_len(r0)};
  s.n = (RtDim){1, 0};
  s.k = (RtDim){0, features};
  s.a = weight(w_at);
  s.lda = (RtDim){0, features};
  s.b = arena(pi->offset, 0);
  s.ldb = (RtDim){0, features};
  s.c = arena(pl->offset, r0.begin - pl->held.begin);
  s.ldc = (RtDim){0, held};
  if (prec != RT_BF16) {
    rt_plan_add_step(p, &s);
    return true;
  }
  char cname[RT_PLAN_NAME];
  if (!kernel_name_with(n, kname, "_bf16", cname))
    return false;
  emit_fc_to_bf16(src, n, features, cname);
  RtStep chunk = step(RT_STEP_CHUNK, d, n, n->name);
  chunk.images = p->dev[d].chunk;
  chunk.body = 2;
  rt_plan_add_step(p, &chunk);
  RtStep cv = step(RT_STEP_KERNEL, d, n, cname);
  cv.work = features;
  cv.n_args = 2;
  cv.args[0] = (RtAddr){RT_SPACE_ARENA, pi->offset, 0, features};
  cv.args[1] = (RtAddr){RT_SPACE_SCRATCH, 0, 0, 0};
  rt_plan_add_step(p, &cv);
  s.b = cv.args[1];
  s.c.per_first = held;  // the chunk's images of the output
  rt_plan_add_step(p, &s);
  return true;
}

// The plan steps of node i on device d, and its kernel's source.
static bool plan_node(const Graph *g, int i, int d, FILE *src, RtPlan *p, const CudaOptions *o) {
  const Node *n = &g->nodes[i];
  const Placement *pl = &n->place[d];
  Range r0 = pl->stage[0];
  char kname[RT_PLAN_NAME];
  cuda_kernel_name(g, i, kname, sizeof kname);
  if (n->n_inputs + 3 > RT_PLAN_MAX_ARGS) {
    error("cuda backend: layer '%s' has %d inputs; at most %d", n->name, n->n_inputs,
          RT_PLAN_MAX_ARGS - 3);
    return false;
  }
  int64_t b_at = has_bias(n) ? add_slice(p, d, n, true, r0, false) : 0;
  if (is_gemm_conv(n, o))
    return plan_conv_gemm(g, i, d, src, p, b_at, kname, o->precision);
  if (is_fused_conv(n, d, o))
    return plan_conv_fused(g, i, d, src, p, b_at, kname, o->precision);
  if (is_implicit_conv(n, d, o))
    return plan_conv_implicit(g, i, d, src, p, b_at, kname, o->precision);
  int64_t w_at = has_weights(n) ? add_slice(p, d, n, false, r0, o->precision == RT_BF16) : 0;
  if (n->op == OP_FC) {
    if (!plan_fc_gemm(g, i, d, src, p, w_at, kname, o->precision))
      return false;
    if (!has_bias(n) && !n->n_epilogue)
      return true;  // nothing left for a kernel
  }
  Ctx x = {g, n, i, d, src, false, false, false};
  if (!emit_node(&x, kname))
    return false;
  fputc('\n', src);
  RtStep s = step(RT_STEP_KERNEL, d, n, kname);
  s.work = n->op == OP_SOFTMAX ? 1 : range_len(pl->stage[n->n_epilogue]) * shape_plane(n->out);
  for (int j = 0; j < n->n_inputs && !reads_own_output(n); j++)
    s.args[s.n_args++] = arena(g->nodes[n->inputs[j]].place[d].offset, 0);
  s.args[s.n_args++] = arena(pl->offset, 0);
  if (n->op == OP_CONV)
    s.args[s.n_args++] = weight(w_at);
  if (has_bias(n))
    s.args[s.n_args++] = weight(b_at);
  rt_plan_add_step(p, &s);
  return true;
}

static void plan_transfers(const Graph *g, int i, RtPlan *p) {
  const Node *n = &g->nodes[i];
  int64_t P = shape_plane(n->out);
  for (int t = 0; t < g->n_transfers; t++) {
    const Transfer *tr = &g->transfers[t];
    if (tr->node != i)
      continue;
    const Placement *from = &n->place[tr->from], *to = &n->place[tr->to];
    RtStep s = step(RT_STEP_TRANSFER, tr->to, n, n->name);
    s.from = tr->from;
    s.src = (RtRows){arena(from->offset, (tr->range.begin - from->held.begin) * P),
                     range_len(from->held) * P};
    s.dst = (RtRows){arena(to->offset, (tr->range.begin - to->held.begin) * P),
                     range_len(to->held) * P};
    s.width = range_len(tr->range) * P;
    rt_plan_add_step(p, &s);
  }
}

static RtShape rt_shape(Shape s) {
  return s.rank == 3 ? (RtShape){3, {s.c, s.h, s.w}} : (RtShape){1, {s.c}};
}

// The weight tensors and their shapes, so a runtime can refuse a file whose tensor
// has the right size in another layout (an fc weight stored (in, out)).
static void plan_tensors(const Graph *g, RtPlan *p) {
  int n = graph_params_list(g, NULL);
  ParamInfo *info = xcalloc(n ? n : 1, sizeof *info);
  graph_params_list(g, info);
  for (int i = 0; i < n; i++) {
    RtShape shape = {.rank = info[i].rank};
    memcpy(shape.dims, info[i].dims, (size_t)info[i].rank * sizeof shape.dims[0]);
    rt_plan_add_tensor(p, info[i].name, shape);
  }
  free(info);
}

static void plan_io(const Graph *g, RtPlan *p) {
  const Node *in = &g->nodes[0], *out = &g->nodes[g->output];
  int64_t Pi = shape_plane(in->out), Po = shape_plane(out->out);
  for (int d = 0; d < g->n_devices; d++) {
    const Placement *a = &in->place[d], *b = &out->place[d];
    if (range_len(a->held))
      p->dev[d].input = (RtHostCopy){{arena(a->offset, 0), range_len(a->held) * Pi},
                                     a->held.begin * Pi, in->out.c * Pi, range_len(a->held) * Pi};
    Range r = b->stage[out->n_epilogue];
    if (range_len(r))
      p->dev[d].output =
          (RtHostCopy){{arena(b->offset, (r.begin - b->held.begin) * Po), range_len(b->held) * Po},
                       r.begin * Po, out->out.c * Po, range_len(r) * Po};
  }
}

// The header's paragraph on each way convolutions are computed here.
static void emit_conv_paragraphs(FILE *f, const bool *used, const RtPlanDevice *dev) {
  if (used[CUDA_CONV_GEMM])
    fprintf(f,
            "// Convolutions (--conv gemm): an im2col kernel writes the column matrix of a chunk\n"
            "// of images to scratch, cuBLAS (one GEMM per group) computes each conv output\n"
            "// once, and the conv's kernel is its epilogue (bias + fused ReLU/LRN/pool) reading\n"
            "// the GEMM output. Scratch: %lld floats per image, %lld images per chunk.\n"
            "//\n",
            (long long)dev->scratch, (long long)dev->chunk);
  if (used[CUDA_CONV_IMPLICIT])
    fprintf(f,
            "// Convolutions (--conv implicit): a tiled implicit-GEMM kernel (shared memory, no\n"
            "// im2col buffer) computes each conv output once into scratch, and the conv's\n"
            "// kernel is its epilogue (bias + fused ReLU/LRN/pool) reading it; a conv with a\n"
            "// ReLU or nothing after it is the one kernel, adding the bias and the ReLU\n"
            "// itself. Scratch: %lld floats per image, %lld images per chunk.\n"
            "//\n",
            (long long)dev->scratch, (long long)dev->chunk);
  if (used[CUDA_CONV_FUSED])
    fputs("// Convolutions (--conv fused): a conv node is one kernel. A block computes, with\n"
          "// an implicit GEMM, the conv output its output tile needs (LRN halo and pool\n"
          "// windows included) into shared memory, then the fused ReLU/LRN/pool from there;\n"
          "// only the node's output reaches device memory. A conv with a ReLU or nothing\n"
          "// after it is the one implicit-GEMM kernel, adding the bias and the ReLU itself.\n"
          "//\n",
          f);
  if (used[CUDA_CONV_DIRECT])
    fputs("// Convolutions (--conv direct): computed in the kernels, each conv output\n"
          "// recomputed wherever a fused stage needs it.\n"
          "//\n",
          f);
}

// The header's list of this device's kernels.
static void emit_kernel_list(const Graph *g, int d, const CudaOptions *o, FILE *f) {
  char a[64], b[64];
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    Range r = n->place[d].stage[n->n_epilogue];
    if (!range_len(r) || is_noop(n, d) || (n->op == OP_FC && !has_bias(n) && !n->n_epilogue))
      continue;
    char kname[RT_PLAN_NAME], stages[256];
    cuda_kernel_name(g, i, kname, sizeof kname);
    int at = snprintf(stages, sizeof stages, "%s", n->name);
    for (int k = 0; k < n->n_epilogue && at < (int)sizeof stages; k++)
      at += snprintf(stages + at, sizeof stages - at, "+%s", n->epilogue[k].name);
    Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
    if (is_gemm_conv(n, o)) {
      char iname[RT_PLAN_NAME + 8];
      snprintf(iname, sizeof iname, "%s_im2col", kname);
      fprintf(f, "//   %-22s %-28s %s -> columns, channels [%lld, %lld)\n", iname, n->name,
              shape_str(in, a, sizeof a), (long long)n->place[d].stage[0].begin,
              (long long)n->place[d].stage[0].end);
    }
    if (is_implicit_conv(n, d, o) && !cuda_implicit_writes_output(n, d)) {
      char cname[RT_PLAN_NAME + 16];
      snprintf(cname, sizeof cname, "%s_implicit", kname);
      fprintf(f, "//   %-22s %-28s %s -> %s, channels [%lld, %lld)\n", cname, n->name,
              shape_str(in, a, sizeof a), shape_str(n->head_out, b, sizeof b),
              (long long)n->place[d].stage[0].begin, (long long)n->place[d].stage[0].end);
    }
    fprintf(f, "//   %-22s %-28s %s -> %s, %s [%lld, %lld)\n", kname, stages,
            shape_str(in, a, sizeof a), shape_str(n->out, b, sizeof b),
            n->out.rank == 1 ? "features" : "channels", (long long)r.begin,
            (long long)r.end);
  }
  fputs("\n#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n\n", f);
}

static void emit_header(const Graph *g, int d, const char *how, const CudaOptions *o,
                        const RtPlanDevice *dev, FILE *f) {
  fprintf(f,
          "// Generated by alexc (compiler/backends/cuda/codegen.c). Do not edit.\n"
          "//\n"
          "// Network '%s' (%s), device %d of %d: the kernels this device runs.\n"
          "// float32, NCHW; a device holds a channel range of each tensor, stored image,\n"
          "// then held channel, then plane. One thread per output element; fused stages\n"
          "// are computed in registers (each stage a __device__ function calling the one\n"
          "// before it at the positions it needs), never written to memory. fc GEMMs run\n"
          "// in cuBLAS; their kernels here are the epilogues. Kernel arguments: buffers,\n"
          "// then the batch size; everything else is a constant.\n"
          "//\n",
          g->name, how, d, g->n_devices);
  static const char *const GEMMS[] = {
      [RT_FP32] = "GEMMs in fp32 (cublasSgemm, pedantic: no TF32)",
      [RT_TF32] = "GEMMs on TF32 tensor cores (float operands and sums)",
      [RT_BF16] = ("GEMMs on bfloat16 operands (im2col columns, fc inputs and weights),\n"
                   "// float sums and outputs")};
  bool used[CUDA_CONV_FUSED + 1] = {0};  // the --conv strategies of this graph's convs
  int n_used = 0;
  for (int i = 1; i < g->n_nodes; i++)
    if (g->nodes[i].op == OP_CONV && !used[cuda_conv_of(o, &g->nodes[i])]) {
      used[cuda_conv_of(o, &g->nodes[i])] = true;
      n_used++;
    }
  if (o->precision == RT_FP32 || !(used[CUDA_CONV_IMPLICIT] || used[CUDA_CONV_FUSED]))
    fprintf(f, "// Precision %s: %s.\n//\n", rt_precision_name(o->precision), GEMMS[o->precision]);
  else
    fprintf(f,
            "// Precision %s: the implicit and fused convolutions' GEMMs on tensor cores in the\n"
            "// kernels below (wmma; operands rounded to %s as they are stored in shared\n"
            "// memory, float sums), the other GEMMs in cuBLAS (%s).\n//\n",
            rt_precision_name(o->precision), o->precision == RT_TF32 ? "tf32" : "bfloat16",
            o->precision == RT_TF32 ? "TF32 tensor-core math" : "bfloat16 operands, float sums");
  if (n_used > 1) {
    char conv[256];
    cuda_describe_conv(o, conv, sizeof conv);
    fprintf(f, "// --conv %s: each conv layer as its choice says.\n//\n", conv);
  }
  emit_conv_paragraphs(f, used, dev);
  emit_kernel_list(g, d, o, f);
  if (o->precision != RT_FP32 && (used[CUDA_CONV_IMPLICIT] || used[CUDA_CONV_FUSED]))
    fputs("#include <mma.h>  // the tensor cores' warp matrix functions\nnamespace wmma = nvcuda::wmma;\n\n", f);
  if (o->precision == RT_BF16)
    fputs("// float -> bfloat16 (the float's top 16 bits), rounded to nearest even; NaN stays\n"
          "// NaN. cuBLAS reads the GEMM operands written with it as CUDA_R_16BF.\n"
          "__device__ __forceinline__ unsigned short to_bf16(float f) {\n"
          "  const unsigned u = __float_as_uint(f);\n"
          "  if ((u & 0x7fffffffu) > 0x7f800000u)\n"
          "    return (unsigned short)((u >> 16) | 0x40u);\n"
          "  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);\n"
          "}\n\n",
          f);
}

// Floats of scratch per image that node n needs on device d (one chunk's worth is
// allocated: the plan runs these nodes in chunks of images).
static int64_t scratch_per_image(const Graph *g, const Node *n, int d, const CudaOptions *o) {
  if (!range_len(n->place[d].stage[n->n_epilogue]))
    return 0;
  if (is_gemm_conv(n, o))  // im2col columns and the GEMM's output
    return conv_gemm(g, n, d).scratch;
  if (is_implicit_conv(n, d, o) && !cuda_implicit_writes_output(n, d))  // the conv output alone
    return range_len(n->place[d].stage[0]) * shape_plane(n->head_out);
  if (n->op == OP_FC && o->precision == RT_BF16)  // its input as bf16 (half would do)
    return g->nodes[n->inputs[0]].out.c;
  return 0;
}

// --conv's layer choices name conv layers, and no conv computed directly is asked for
// tf32 or bf16. False after a message.
static bool check_conv_choices(const Graph *g, const CudaOptions *o) {
  for (int c = 0; c < o->n_layer_convs; c++) {
    int i = graph_find(g, o->layer_conv[c].layer);
    if (i < 0 || g->nodes[i].op != OP_CONV) {
      error("cuda backend: --conv %s=%s: the network has no conv layer '%s'",
            o->layer_conv[c].layer, cuda_conv_name(o->layer_conv[c].conv), o->layer_conv[c].layer);
      return false;
    }
  }
  for (int i = 1; i < g->n_nodes; i++)
    if (g->nodes[i].op == OP_CONV && o->precision != RT_FP32 &&
        cuda_conv_of(o, &g->nodes[i]) == CUDA_CONV_DIRECT) {
      error("cuda backend: layer '%s': --precision %s runs the GEMMs on tensor cores, but "
            "--conv direct computes convolutions as fp32 sums: use --conv gemm, implicit or "
            "fused",
            g->nodes[i].name, rt_precision_name(o->precision));
      return false;
    }
  return true;
}

bool cuda_generate(const Graph *g, const char *how, const CudaOptions *opts, CudaProgram *out) {
  const CudaOptions o = opts ? *opts : cuda_defaults();
  memset(out, 0, sizeof *out);
  if (!g->planned || !g->n_devices) {
    error("cuda backend: the graph has not been through the passes");
    return false;
  }
  if (!check_conv_choices(g, &o)) {
    return false;
  }
  RtPlan *p = &out->plan;
  p->precision = o.precision;
  snprintf(p->network, sizeof p->network, "%s", g->name);
  p->n_devices = g->n_devices;
  p->in = rt_shape(g->nodes[0].out);
  p->out = rt_shape(g->nodes[g->output].out);
  plan_tensors(g, p);
  FILE *src[MAX_DEVICES];
  size_t size[MAX_DEVICES];
  for (int d = 0; d < g->n_devices; d++) {
    src[d] = open_memstream(&out->source[d], &size[d]);
    if (!src[d]) {
      error("out of memory");
      return false;
    }
    p->dev[d].arena = g->arena[d];
    // Scratch: the largest per-image need of a node here; as many images per chunk as
    // the budget holds (at least one).
    for (int i = 1; i < g->n_nodes; i++) {
      int64_t need = scratch_per_image(g, &g->nodes[i], d, &o);
      p->dev[d].scratch = need > p->dev[d].scratch ? need : p->dev[d].scratch;
    }
    if (p->dev[d].scratch) {
      int64_t chunk = o.scratch_bytes / (int64_t)sizeof(float) / p->dev[d].scratch;
      if (o.max_chunk > 0 && chunk > o.max_chunk)
        chunk = o.max_chunk;
      p->dev[d].chunk = chunk > 1 ? chunk : 1;
    }
    emit_header(g, d, how, &o, &p->dev[d], src[d]);
  }
  bool ok = true;
  for (int i = 1; i < g->n_nodes && ok; i++) {
    const Node *n = &g->nodes[i];
    for (int d = 0; d < g->n_devices && ok; d++)
      if (range_len(n->place[d].stage[n->n_epilogue]) && !is_noop(n, d))
        ok = plan_node(g, i, d, src[d], p, &o);
    plan_transfers(g, i, p);
  }
  plan_io(g, p);
  for (int d = 0; d < g->n_devices; d++)
    ok = fclose(src[d]) == 0 && ok;
  if (!ok)
    cuda_program_free(out);
  return ok;
}

void cuda_program_free(CudaProgram *p) {
  for (int d = 0; d < MAX_DEVICES; d++)
    free(p->source[d]);
  rt_plan_free(&p->plan);
  memset(p, 0, sizeof *p);
}
