// CUDA code generation, the rendering half: the source of one node's kernels.
//
// The kernel scheme and the buffer layout are described at the top of schedule.c,
// which decides what runs where and calls these for the source.
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "render.h"

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


static void describe_stage(FILE *f, const Node *s, Shape in, Shape out) {
  char a[64], b[64], pads[64];
  fprintf(f, "%s: %s %s -> %s", s->name, op_name(s->op), shape_str(in, a, sizeof a),
          shape_str(out, b, sizeof b));
  switch (s->op) {
  case OP_CONV:
    fprintf(f, ", %d kernels %dx%d, stride %d, pad %s, groups %d%s", s->conv.out, s->conv.kernel,
            s->conv.kernel, s->conv.stride, pads_str(s->conv.pad, pads, sizeof pads),
            s->conv.groups, s->conv.bias ? "" : ", no bias");
    break;
  case OP_LRN:
    fprintf(f, ", size %d, alpha %g, beta %g, k %g, groups %d", s->lrn.size, s->lrn.alpha,
            s->lrn.beta, s->lrn.k, s->lrn.groups);
    break;
  case OP_MAXPOOL:
    fprintf(f, ", %dx%d window, stride %d, pad %s%s", s->pool.kernel, s->pool.kernel,
            s->pool.stride, pads_str(s->pool.pad, pads, sizeof pads),
            s->pool.ceil_mode ? ", ceil_mode" : "");
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
  // --conv fused: the stage the first pool reads is computed once per region pixel into
  // shared memory (cuda_fused_staged): stageK_compute is the stage itself, which the
  // kernel calls for that; stageK, which the pool calls, reads the result.
  bool staged = x->region && k && k == cuda_fused_staged(n);
  fprintf(f, "// Stage %d, ", k);
  describe_stage(f, s, in, out);
  fprintf(f, ".\n__device__ __forceinline__ float stage%d%s(" STAGE_ARGS ") {\n", k,
          staged ? "_compute" : "");
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
            "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD_TOP = %d, PAD_LEFT = %d;\n"
            "  constexpr int IN_PER_GROUP = %lld, OUT_PER_GROUP = %d;\n"
            "  constexpr int FIRST_KERNEL = %lld;  // this device's weights start there\n"
            "  const int group = c / OUT_PER_GROUP;\n"
            "  const float *w = p.w + (c - FIRST_KERNEL) * (IN_PER_GROUP * K * K);\n"
            "  float acc = %s;\n"
            "  for (int ic = 0; ic < IN_PER_GROUP; ic++)\n"
            "    for (int ky = 0; ky < K; ky++) {\n"
            "      const int iy = y * STRIDE - PAD_TOP + ky;\n"
            "      if (iy < 0 || iy >= IN_H)\n"
            "        continue;\n"
            "      for (int kx = 0; kx < K; kx++) {\n"
            "        const int ix = x * STRIDE - PAD_LEFT + kx;\n"
            "        if (ix >= 0 && ix < IN_W)\n"
            "          acc += in0(p, img, group * IN_PER_GROUP + ic, iy, ix) * w[(ic * K + ky) * K + kx];\n"
            "      }\n"
            "    }\n"
            "  return acc;\n",
            (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad.top, a->pad.left,
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
    // The paper's beta, 0.75: x^-0.75 = x^-0.5 * x^-0.25, rsqrtf and a sqrtf instead of
    // powf's logarithm and exponential. Other betas keep powf.
    bool three_quarters = a->beta == 0.75;
    fprintf(f,
            "  constexpr int HALF = %d, PER_GROUP = %lld;  // window: c +- HALF within c's group\n"
            "  constexpr float K = %s, ALPHA = %s%s%s;\n"
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
            "%s",
            a->size / 2, (long long)(in.c / a->groups), flit(a->k, fa), flit(a->alpha, fb),
            three_quarters ? "" : ", BETA = ", three_quarters ? "" : flit(a->beta, fc), prev,
            three_quarters ? "  // (K + ALPHA * sum)^-0.75 as rsqrt(x) * sqrt(rsqrt(x)): no powf.\n"
                             "  const float r = rsqrtf(K + ALPHA * sum);\n"
                             "  return centre * (r * sqrtf(r));\n"
                           : "  return centre / powf(K + ALPHA * sum, BETA);\n");
    break;
  }
  case OP_MAXPOOL: {
    const PoolAttrs *a = &s->pool;
    fprintf(f,
            "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD_TOP = %d, PAD_LEFT = %d;\n"
            "  float m = -INFINITY;  // padding never wins: windows are clipped to the input\n"
            "#pragma unroll 1\n"
            "  for (int ky = 0; ky < K; ky++)\n"
            "    for (int kx = 0; kx < K; kx++) {\n"
            "      const int iy = y * STRIDE - PAD_TOP + ky, ix = x * STRIDE - PAD_LEFT + kx;\n"
            "      if (iy >= 0 && iy < IN_H && ix >= 0 && ix < IN_W) {\n"
            "        const float v = %s(p, img, c, iy, ix);\n"
            "        if (v > m)\n"
            "          m = v;\n"
            "      }\n"
            "    }\n"
            "  return m;\n",
            (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad.top, a->pad.left, prev);
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
  if (staged)
    fprintf(f,
            "// Stage %d as the kernel computed it into shared memory (stage%d_compute, once per\n"
            "// channel of the tile and region pixel), for the pool's overlapping windows.\n"
            "__device__ __forceinline__ float stage%d(" STAGE_ARGS ") {\n"
            "  using namespace node%02d_fused;\n"
            "  (void)img;\n"
            "  return p.staged[(c - p.s0) * RP + (y - p.y0) * RW + (x - p.x0)];\n"
            "}\n\n",
            k, k, k, x->node);
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
          "// A warp per image: the normaliser needs the whole vector of %lld. Lane l reads\n"
          "// elements l, l + 32, ... (a warp's loads are consecutive floats: coalesced) and\n"
          "// keeps their max and sum; shuffles combine the 32 lanes' values, leaving every\n"
          "// lane the same max and sum (each step adds the same two values, in either order).\n"
          "extern \"C\" __global__ void %s(\n    ",
          (long long)n->out.c, kname);
  emit_params(x, true);
  fprintf(x->f,
          ") {\n"
          "  constexpr int N = %lld, WARP = 32;\n"
          "  constexpr int IN_HELD_BEGIN = %lld, IN_HELD = %lld;\n"
          "  constexpr int OUT_HELD_BEGIN = %lld, OUT_HELD = %lld;\n"
          "  constexpr int C_BEGIN = %lld, C_END = %lld;  // computed here\n"
          "  constexpr unsigned ALL = 0xffffffffu;  // every lane takes part in each shuffle\n"
          "  const int lane = threadIdx.x %% WARP;\n"
          "  // The lanes of a warp take the same images (blockDim is a multiple of 32), so they\n"
          "  // meet at every shuffle.\n"
          "  for (long long img = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / WARP; img < batch;\n"
          "       img += (long long)gridDim.x * blockDim.x / WARP) {\n"
          "    const float *v = x0 + img * IN_HELD - IN_HELD_BEGIN;\n"
          "    float m = -INFINITY;\n"
          "    for (int k = lane; k < N; k += WARP)\n"
          "      m = v[k] > m ? v[k] : m;\n"
          "    for (int o = WARP / 2; o > 0; o /= 2) {\n"
          "      const float other = __shfl_xor_sync(ALL, m, o);\n"
          "      m = other > m ? other : m;\n"
          "    }\n"
          "    float sum = 0.0f;\n"
          "    for (int k = lane; k < N; k += WARP)\n"
          "      sum += expf(v[k] - m);\n"
          "    for (int o = WARP / 2; o > 0; o /= 2)\n"
          "      sum += __shfl_xor_sync(ALL, sum, o);\n"
          "    for (int k = C_BEGIN + lane; k < C_END; k += WARP)\n"
          "      y[img * OUT_HELD + (k - OUT_HELD_BEGIN)] = expf(v[k] - m) / sum;\n"
          "  }\n"
          "}\n",
          (long long)n->out.c, (long long)pi->held.begin, (long long)range_len(pi->held),
          (long long)po->held.begin, (long long)range_len(po->held), (long long)r.begin,
          (long long)r.end);
}

// namespace nodeNN: struct Ptrs, the pointers every stage may read (gathered so stage
// functions share one signature), the input loaders and the stage functions.
bool emit_stage_functions(const Ctx *x) {
  const Node *n = x->n;
  FILE *f = x->f;
  fprintf(f, "namespace node%02d {\n\n", x->node);
  fputs("struct Ptrs {\n", f);
  if (x->region) {
    fputs("  const float *region;  // the conv output the block computed (shared memory)\n"
          "  int c0, y0, x0;       // its first channel, row and column\n",
          f);
    if (cuda_fused_staged(n))
      fprintf(f,
              "  const float *staged;  // stage %d over the tile's channels and the region's pixels\n"
              "  int s0;               // its first channel (the tile's)\n",
              cuda_fused_staged(n));
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

bool emit_node(const Ctx *x, const char *kname) {
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
//
// One thread per (image, input channel, output pixel) writes that pixel's K x K taps of
// the channel: the taps are unrolled at generation-time constants, so per element a
// thread does a bounds test, a load at a constant offset and a store one column (ld
// elements) further on; the index arithmetic (divisions by constants only) is paid
// once per K x K elements. Consecutive threads take consecutive pixels: their stores
// are consecutive rows of a column, coalesced.
void emit_im2col(const Ctx *x, const char *kname, const ConvGemm *cg) {
  const Node *n = x->n;
  const ConvAttrs *a = &n->conv;
  Shape in = x->g->nodes[n->inputs[0]].out;
  FILE *f = x->f;
  fprintf(f, "namespace node%02d_im2col {\n\nstruct Ptrs {\n  const float *x0;\n};\n\n",
          x->node);
  emit_loader(x, 0);
  fprintf(f, "}  // namespace node%02d_im2col\n\n", x->node);
  fprintf(f,
          "// im2col for groups [%lld, %lld)%s: one thread per image, input channel and output\n"
          "// pixel, writing that pixel's K x K column-matrix elements of the channel.\n"
          "extern \"C\" __global__ void %s(\n"
          "    const float *__restrict__ x0,\n    %s *__restrict__ col,\n    int batch) {\n"
          "  using namespace node%02d_im2col;\n"
          "  constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD_TOP = %d, PAD_LEFT = %d;\n"
          "  constexpr int OUT_H = %lld, OUT_W = %lld, IN_PER_GROUP = %lld;\n"
          "  constexpr int FIRST_GROUP = %lld, GROUPS = %lld;\n"
          "  constexpr int PIXELS = OUT_H * OUT_W;\n"
          "  constexpr int PER_IMAGE = GROUPS * IN_PER_GROUP * PIXELS;  // threads per image\n%s"
          "  const Ptrs p = {x0};\n"
          "  const long long ld = (long long)batch * PIXELS;  // rows: the chunk's pixels\n"
          "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < batch * (long long)PER_IMAGE;\n"
          "       i += (long long)gridDim.x * blockDim.x) {\n"
          "    // Divisions by constants only, which the compiler turns into multiplications.\n"
          "    const long long img = i / PER_IMAGE;\n"
          "    const int e = (int)(i - img * PER_IMAGE), pixel = e %% PIXELS;\n"
          "    const int ch = e / PIXELS;  // input channel, counted from the first group's first\n"
          "    const int c = FIRST_GROUP * IN_PER_GROUP + ch;\n"
          "    const int iy0 = pixel / OUT_W * STRIDE - PAD_TOP, ix0 = pixel %% OUT_W * STRIDE - PAD_LEFT;\n"
          "    // Column (ch, 0, 0) in this pixel's row; tap (ky, kx) is ky * K + kx columns further.%s\n"
          "    %s *out = col + (ch * (K * K)%s) * ld + img * PIXELS + pixel;\n"
          "#pragma unroll\n"
          "    for (int ky = 0; ky < K; ky++) {\n"
          "      const bool row_in = iy0 + ky >= 0 && iy0 + ky < IN_H;\n"
          "#pragma unroll\n"
          "      for (int kx = 0; kx < K; kx++) {\n"
          "        const bool in = row_in && ix0 + kx >= 0 && ix0 + kx < IN_W;\n"
          "        const float v = in ? in0(p, img, c, iy0 + ky, ix0 + kx) : 0.0f;\n"
          "        out[(ky * K + kx) * ld] = %s;\n"
          "      }\n"
          "    }\n"
          "  }\n"
          "}\n\n",
          (long long)cg->first_group, (long long)(cg->first_group + cg->groups),
          x->bf16 ? " (bfloat16: unsigned short)" : "", kname, x->bf16 ? "unsigned short" : "float", x->node,
          (long long)in.h, (long long)in.w, a->kernel, a->stride, a->pad.top, a->pad.left,
          (long long)n->head_out.h, (long long)n->head_out.w, (long long)(in.c / a->groups),
          (long long)cg->first_group, (long long)cg->groups,
          x->bf16 ? "  constexpr int KK = IN_PER_GROUP * K * K;  // a group's columns\n" : "",
          x->bf16 ? "\n    // Each group's bfloat16 columns start at its float-sized offset (as for fp32),\n"
                    "    // group g's at element 2 * g * KK * ld: channel ch is ch / IN_PER_GROUP groups\n"
                    "    // of KK columns further than its fp32 place."
                  : "",
          x->bf16 ? "unsigned short" : "float", x->bf16 ? " + ch / IN_PER_GROUP * KK" : "",
          x->bf16 ? "to_bf16(v)" : "v");
}


// bf16 fc: the kernel that converts the fc's input to bfloat16 in scratch for the GEMM.
void emit_fc_to_bf16(FILE *f, const Node *n, int64_t features, const char *kname) {
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
    if (!range_len(r) || is_noop(n, d))
      continue;
    char kname[RT_PLAN_NAME], stages[256];
    cuda_kernel_name(g, i, kname, sizeof kname);
    int at = snprintf(stages, sizeof stages, "%s", n->name);
    for (int k = 0; k < n->n_epilogue && at < (int)sizeof stages; k++)
      at += snprintf(stages + at, sizeof stages - at, "+%s", n->epilogue[k].name);
    Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
    if (fc_gemm_only(n)) {  // a plan step, not a kernel of this file
      static const char *const how[] = {"cuBLAS GEMM", "cublasLt GEMM, bias epilogue",
                                        "cublasLt GEMM, bias+ReLU epilogue"};
      fprintf(f, "//   %-22s %-28s %s -> %s, features [%lld, %lld): %s\n", "-",
              stages, shape_str(in, a, sizeof a), shape_str(n->out, b, sizeof b),
              (long long)r.begin, (long long)r.end, how[fc_gemm_epilogue(n)]);
      continue;
    }
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

void emit_header(const Graph *g, int d, const char *how, const CudaOptions *o,
                        const RtPlanDevice *dev, FILE *f) {
  fprintf(f,
          "// Generated by alexc (compiler/backends/cuda/). Do not edit.\n"
          "//\n"
          "// Network '%s' (%s), device %d of %d: the kernels this device runs.\n"
          "// float32, NCHW; a device holds a channel range of each tensor, stored image,\n"
          "// then held channel, then plane. One thread per output element; fused stages\n"
          "// are computed in registers (each stage a __device__ function calling the one\n"
          "// before it at the positions it needs), never written to memory. fc layers are\n"
          "// GEMMs in cuBLAS, their bias and ReLU its epilogue (cublasLt) where nothing\n"
          "// else follows them, or a kernel here. Kernel arguments: buffers, then the\n"
          "// batch size; everything else is a constant.\n"
          "//\n",
          g->name, how, d, g->n_devices);
  static const char *const GEMMS[] = {
      [RT_FP32] = "GEMMs in fp32 (cublasSgemm, default math mode: no TF32)",
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

