// Training on the CUDA backend: a fused, memory-planned training program (train/) becomes
// one CUDA C++ translation unit and a plan of kernel launches and cuBLAS GEMMs that runs a
// whole SGD step on one device (train.h gives the memory layout).
//
// The walk is the trainer's (train/train.c): instruction by instruction, in program order,
// each instruction becoming a few steps; gradients are zeroed by a kernel just before the
// first instruction touching them, as the memory plan says. Per instruction:
//   mask      Philox4x32-10, a thread per element: exactly dropout_mask()'s bits
//   forward   conv: im2col + a GEMM per group into channel-major scratch + a kernel that
//             adds the bias and writes NCHW; fc: a GEMM straight into the output + bias;
//             relu, lrn (saving its window sums when the program keeps them), maxpool,
//             dropout, flatten, concat: a thread per output element
//   loss      a thread per image: log-sum-exp in double, dlogits, its loss and top-1 hit
//   backward  conv: dy (masked by the fused ReLU) transposed channel-major, the bias
//             gradient from it, im2col again, dW = col^T dy and dcol = dy W^T as GEMMs per
//             group, col2im adding into dx; fc: dW and dx as GEMMs, dx added from scratch;
//             the rest a thread per input element, gathering (no atomics: deterministic)
//   allreduce built for several ranks (data parallelism): the gradient region summed over
//             the ranks in place (an RT_STEP_ALLREDUCE step: NCCL), after the backward
//   update    one kernel over every parameter: sgd_update_span's arithmetic in double
//             with the rounding intrinsics, so no multiply-add is contracted
// Every shape is a constexpr in the kernel's namespace; arguments are buffers and the
// batch. Not tuned: one thread per element everywhere but the GEMMs.
//
// With devices > 1 the program carries the partition plan's sends and reductions, and
// train/parallel.c's pieces run as kernels (generate_split): each piece's op goes through
// the same emitters on the piece's local graph, between gathers and scatters of channels.
// Checked by CPU emulation and a fake driver (tests/cuda/); never run on a GPU yet.
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

#define PARAM_ALIGN 4  // floats: every parameter tensor 16-byte aligned

typedef struct {
  const Graph *g;          // the graph whose nodes instructions name (a piece's, with devices)
  const TrainProgram *p;
  CudaTrainPlan *t;
  FILE *src;               // the device's translation unit
  int device;              // where the steps run
  int64_t scratch[MAX_DEVICES];  // floats per image the largest instruction needs, per device
  RtAddr *addr;            // devices > 1: operand ids index this instead of the program's values
  char prefix[16];         // devices > 1: before kernel names ("p07_": piece 7's)
  int uniq;                // numbers the copy and zero kernels
  bool ok;
} Gen;

// ---------------------------------------------------------------- addresses and steps

static RtAddr arena_at(int64_t per_image) { return (RtAddr){RT_SPACE_ARENA, per_image, 0, 0}; }
static RtAddr weight_at(int64_t at) { return (RtAddr){RT_SPACE_WEIGHTS, 0, at, 0}; }
static RtAddr scratch_at(int64_t per_image) { return (RtAddr){RT_SPACE_SCRATCH, per_image, 0, 0}; }
static RtDim per_image(int64_t n) { return (RtDim){n, 0}; }
static RtDim fixed(int64_t n) { return (RtDim){0, n}; }

// The layout index of a parameter-kind value's tensor.
static int tensor_of(const Gen *G, int v) {
  const TValue *tv = &G->p->values[v];
  const Weights *l = G->t->layout;
  for (int i = 0; i < l->n; i++)
    if (l->info[i].node == tv->node && l->info[i].is_bias == tv->bias)
      return i;
  fprintf(stderr, "alexc: internal error: no parameter tensor for value %d\n", v);
  abort();
}

// Where value v lives on the device.
static RtAddr value_at(const Gen *G, int v) {
  if (G->addr)
    return G->addr[v];
  const TValue *tv = &G->p->values[v];
  switch (tv->kind) {
  case TV_PARAM:
    return weight_at(G->t->param_offset[tensor_of(G, v)]);
  case TV_PARAM_GRAD:
    return weight_at(G->t->grad_base + G->t->param_offset[tensor_of(G, v)]);
  case TV_MOMENTUM:
    return weight_at(G->t->momentum_base + G->t->param_offset[tensor_of(G, v)]);
  default:
    if (G->p->offset[v] < 0) {
      fprintf(stderr, "alexc: internal error: value %d has no place in the arena\n", v);
      abort();
    }
    return arena_at(G->p->offset[v]);
  }
}

static void name_of(const Gen *G, int node, const char *suffix, char *buf, size_t size) {
  char k[RT_PLAN_NAME];
  cuda_kernel_name(G->g, node, k, sizeof k);
  // A piece's kernels: "p07_" (the piece) and the layer, without the node number (the
  // piece's local graph numbers its nodes otherwise).
  const char *base = G->prefix[0] && strchr(k, '_') ? strchr(k, '_') + 1 : k;
  if (snprintf(buf, size, "%s%s_%s", G->prefix, base, suffix) >= (int)size) {  // names are <= 64 characters
    fprintf(stderr, "alexc: internal error: kernel name %s%s_%s too long\n", G->prefix, base,
            suffix);
    abort();
  }
}

// A launch of kernel `name` over `work` threads per image (the kernels loop over the rest).
static void launch(Gen *G, const char *name, int node, int64_t work, int n, const RtAddr *args) {
  RtStep s = {.kind = RT_STEP_KERNEL, .device = G->device, .work = work > 0 ? work : 1,
              .block = CUDA_BLOCK, .n_args = n};
  snprintf(s.name, sizeof s.name, "%s", name);
  snprintf(s.layer, sizeof s.layer, "%s", node >= 0 ? G->g->nodes[node].name : "update");
  if (n > RT_PLAN_MAX_ARGS) {
    fprintf(stderr, "alexc: %s: %d kernel arguments, at most %d\n", name, n, RT_PLAN_MAX_ARGS);
    G->ok = false;
    return;
  }
  memcpy(s.args, args, n * sizeof *args);
  rt_plan_add_step(&G->t->plan, &s);
}

static void gemm(Gen *G, int node, char ta, char tb, RtDim m, RtDim n, RtDim k, RtAddr a,
                 RtDim lda, RtAddr b, RtDim ldb, RtAddr c, RtDim ldc) {
  RtStep s = {.kind = RT_STEP_GEMM, .device = G->device, .transa = ta, .transb = tb, .prec = RT_FP32, .m = m,
              .n = n, .k = k, .a = a, .lda = lda, .b = b, .ldb = ldb, .c = c, .ldc = ldc};
  snprintf(s.name, sizeof s.name, "%s", G->g->nodes[node].name);
  snprintf(s.layer, sizeof s.layer, "%s", G->g->nodes[node].name);
  rt_plan_add_step(&G->t->plan, &s);
}

static void need_scratch(Gen *G, int64_t floats) {
  if (floats > G->scratch[G->device])
    G->scratch[G->device] = floats;
}

// ---------------------------------------------------------------- source helpers

static void out(Gen *G, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(G->src, fmt, ap);
  va_end(ap);
}

static Shape in_shape(const Gen *G, const Node *n, int j) { return G->g->nodes[n->inputs[j]].out; }

// The kernel's opening: its comment, its namespace of constants, its signature and the
// grid-stride loop header (`for (long long i ...; i < TOTAL; ...)`), left open.
static void open_kernel(Gen *G, const char *name, const char *comment, const char *consts,
                        const char *params, const char *total) {
  out(G, "\n// %s\nnamespace %s_c {\n%s}  // namespace %s_c\n", comment, name, consts, name);
  out(G, "extern \"C\" __global__ void %s(%s, int batch) {\n  using namespace %s_c;\n", name,
      params, name);
  if (!strstr(total, "batch"))  // a kernel whose work does not grow with the batch
    out(G, "  (void)batch;\n");
  out(G, "  GRID_STRIDE(i, %s) {\n", total);
}

static void close_kernel(Gen *G) { out(G, "  }\n}\n"); }

// ---------------------------------------------------------------- masks, zeroing

static void emit_zero(Gen *G, int v) {
  const TValue *tv = &G->p->values[v];
  char name[RT_PLAN_NAME], consts[128];
  name_of(G, tv->node, "zero_grad", name, sizeof name);
  snprintf(consts, sizeof consts, "constexpr long long N = %lld;  // floats per image\n",
           (long long)tv->elems);
  open_kernel(G, name, "The gradient starts at zero: its memory held another value until now.",
              consts, "float *__restrict__ g", "N * batch");
  out(G, "    g[i] = 0.0f;\n");
  close_kernel(G);
  RtAddr a = value_at(G, v);
  launch(G, name, tv->node, tv->elems, 1, &a);
}

static void emit_mask(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  double scaled = n->dropout.p * 16777216.0;  // dropout_mask()'s threshold, exactly
  uint32_t threshold;
  if (!(scaled > 0))
    threshold = 0;
  else if (scaled >= 16777216.0)
    threshold = 1u << 24;
  else {
    threshold = (uint32_t)scaled;
    threshold += (double)threshold < scaled;
  }
  char name[RT_PLAN_NAME], consts[512];
  name_of(G, in->node, "mask", name, sizeof name);
  snprintf(consts, sizeof consts,
           "constexpr long long N = %lld;            // features per image\n"
           "constexpr unsigned LAYER_KEY = 0x%08xu;  // dropout_layer_key(\"%s\")\n"
           "constexpr unsigned THRESHOLD = %uu;      // ceil(p * 2^24), p = %g\n",
           (long long)shape_elems(n->out), dropout_layer_key(n->name), n->name, threshold,
           n->dropout.p);
  open_kernel(G, name,
              "Dropout's keep mask: element i of the batch is kept when the top 24 "
              "bits of\n// philox({e, e >> 32, step, LAYER_KEY}, seed) word 0 are >= "
              "THRESHOLD, as train/philox.c draws it,\n// e = i + first * N its index in the "
              "global batch (this rank's images start at image\n// ctl->first), so the masks "
              "do not depend on how the ranks split it.",
              consts, "unsigned char *__restrict__ mask, const TrainControl *__restrict__ ctl",
              "N * batch");
  out(G, "    unsigned long long e = (unsigned long long)i + (unsigned long long)ctl->first * N;\n"
         "    unsigned word = philox_word0((unsigned)e, (unsigned)(e >> 32), (unsigned)ctl->step,\n"
         "                                 LAYER_KEY, (unsigned)ctl->seed,\n"
         "                                 (unsigned)(ctl->seed >> 32));\n"
         "    mask[i] = (word >> 8) >= THRESHOLD;\n");
  close_kernel(G);
  RtAddr args[2] = {value_at(G, in->mask), weight_at(G->t->control)};
  launch(G, name, in->node, shape_elems(n->out), 2, args);
}

// ---------------------------------------------------------------- conv

typedef struct {
  int64_t cin, h, w, k, stride, top, left, oh, ow, pixels, cout, groups, ipg, opg, kc, kcg;
} ConvDims;

static ConvDims conv_dims(const Gen *G, const Node *n) {
  Shape in = in_shape(G, n, 0);
  const ConvAttrs *a = &n->conv;
  ConvDims d = {in.c, in.h, in.w, a->kernel, a->stride, a->pad.top, a->pad.left, n->out.h,
                n->out.w, shape_plane(n->out), a->out, a->groups, in.c / a->groups,
                a->out / a->groups, 0, 0};
  d.kc = d.cin * d.k * d.k;
  d.kcg = d.ipg * d.k * d.k;
  return d;
}

static void conv_consts(const ConvDims *d, char *buf, size_t size) {
  snprintf(buf, size,
           "constexpr int C_IN = %lld, H = %lld, W = %lld;            // input\n"
           "constexpr int K = %lld, STRIDE = %lld, TOP = %lld, LEFT = %lld;  // window, pads\n"
           "constexpr int C_OUT = %lld, OH = %lld, OW = %lld, P = OH * OW;  // output\n"
           "constexpr int KC = C_IN * K * K;  // im2col columns: (input channel, ky, kx)\n",
           (long long)d->cin, (long long)d->h, (long long)d->w, (long long)d->k,
           (long long)d->stride, (long long)d->top, (long long)d->left, (long long)d->cout,
           (long long)d->oh, (long long)d->ow);
}

// Scratch of a conv: the column matrix (batch * P rows, KC columns, column-major), then
// the channel-major output or output gradient (C_OUT rows of batch * P).
static void emit_conv_forward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  ConvDims d = conv_dims(G, n);
  char consts[1024], im2col[RT_PLAN_NAME], bias[RT_PLAN_NAME];
  conv_consts(&d, consts, sizeof consts);
  name_of(G, in->node, "im2col", im2col, sizeof im2col);
  name_of(G, in->node, "forward_bias", bias, sizeof bias);
  open_kernel(G, im2col,
              "im2col of the whole batch, column-major as cuBLAS reads it: element (row r = "
              "image * P +\n// pixel, column kk = (c, ky, kx)) at kk * rows + r, zero where the "
              "window hangs over the padding.\n// Consecutive threads take consecutive rows, so "
              "the stores coalesce.",
              consts, "const float *__restrict__ x, float *__restrict__ col",
              "(long long)KC * P * batch");
  out(G, "    long long rows = (long long)P * batch, r = i %% rows;\n"
         "    int kk = (int)(i / rows), img = (int)(r / P), p = (int)(r %% P);\n"
         "    int c = kk / (K * K), ky = kk / K %% K, kx = kk %% K;\n"
         "    int iy = p / OW * STRIDE - TOP + ky, ix = p %% OW * STRIDE - LEFT + kx;\n"
         "    col[i] = iy >= 0 && iy < H && ix >= 0 && ix < W\n"
         "                 ? x[((long long)img * C_IN + c) * H * W + iy * W + ix]\n"
         "                 : 0.0f;\n");
  close_kernel(G);
  RtAddr a2[2] = {value_at(G, in->x[0]), scratch_at(0)};
  launch(G, im2col, in->node, d.kc * d.pixels, 2, a2);
  // out_t[c][r] = sum_kk col[kk][r] w[c][kk]: N, N, m = rows, n = the group's kernels.
  RtAddr w = value_at(G, in->w), outt = scratch_at(d.kc * d.pixels);
  for (int64_t gi = 0; gi < d.groups; gi++) {
    RtAddr a = scratch_at(gi * d.kcg * d.pixels), b = w, c = outt;
    b.fixed += gi * d.opg * d.kcg;
    c.per_image += gi * d.opg * d.pixels;
    gemm(G, in->node, 'N', 'N', per_image(d.pixels), fixed(d.opg), fixed(d.kcg), a,
         per_image(d.pixels), b, fixed(d.kcg), c, per_image(d.pixels));
  }
  bool has_bias = in->b >= 0;
  open_kernel(G, bias,
              "The GEMMs' channel-major output (C_OUT rows of batch * P) plus the bias, written "
              "NCHW.",
              consts,
              has_bias ? "const float *__restrict__ out_t, const float *__restrict__ bias, "
                         "float *__restrict__ y"
                       : "const float *__restrict__ out_t, float *__restrict__ y",
              "(long long)C_OUT * P * batch");
  out(G, "    int img = (int)(i / ((long long)C_OUT * P)), c = (int)(i / P %% C_OUT), p = (int)(i %% P);\n"
         "    y[i] = out_t[((long long)c * batch + img) * P + p]%s;\n",
      has_bias ? " + bias[c]" : "");
  close_kernel(G);
  RtAddr a3[3] = {outt, has_bias ? value_at(G, in->b) : value_at(G, in->y), value_at(G, in->y)};
  launch(G, bias, in->node, d.cout * d.pixels, has_bias ? 3 : 2, a3);
  need_scratch(G, (d.kc + d.cout) * d.pixels);
}

static void emit_conv_backward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  ConvDims d = conv_dims(G, n);
  char consts[1024], im2col[RT_PLAN_NAME], tr[RT_PLAN_NAME], db[RT_PLAN_NAME], c2i[RT_PLAN_NAME];
  conv_consts(&d, consts, sizeof consts);
  name_of(G, in->node, "im2col", im2col, sizeof im2col);
  name_of(G, in->node, "backward_dy", tr, sizeof tr);
  name_of(G, in->node, "backward_db", db, sizeof db);
  name_of(G, in->node, "backward_col2im", c2i, sizeof c2i);
  bool relu = in->relu_y >= 0;
  RtAddr dyt = scratch_at(d.kc * d.pixels);
  // dy_t: the output gradient channel-major, for the GEMMs; the fused ReLU's mask here.
  open_kernel(G, tr,
              relu ? "dy channel-major (C_OUT rows of batch * P) for the GEMMs, kept where the "
                     "fused ReLU's output is > 0\n// (0 + dy: a -0 becomes +0, as the reference's "
                     "plain ReLU backward adds it to a zero)."
                   : "dy channel-major (C_OUT rows of batch * P) for the GEMMs.",
              consts,
              relu ? "const float *__restrict__ dy, const float *__restrict__ relu_y, "
                     "float *__restrict__ dy_t"
                   : "const float *__restrict__ dy, float *__restrict__ dy_t",
              "(long long)C_OUT * P * batch");
  out(G, "    int img = (int)(i / ((long long)C_OUT * P)), c = (int)(i / P %% C_OUT), p = (int)(i %% P);\n");
  if (relu)
    out(G, "    dy_t[((long long)c * batch + img) * P + p] = relu_y[i] > 0.0f ? 0.0f + dy[i] : 0.0f;\n");
  else
    out(G, "    dy_t[((long long)c * batch + img) * P + p] = dy[i];\n");
  close_kernel(G);
  RtAddr at[3] = {value_at(G, in->dy), relu ? value_at(G, in->relu_y) : dyt, dyt};
  launch(G, tr, in->node, d.cout * d.pixels, relu ? 3 : 2, at);
  if (in->db >= 0) {
    open_kernel(G, db,
                "The bias gradient: a thread per channel sums its row of dy_t (batch * P "
                "contiguous floats) in double.",
                consts, "const float *__restrict__ dy_t, float *__restrict__ db", "C_OUT");
    out(G, "    const float *row = dy_t + i * batch * P;\n"
           "    double sum = 0;\n"
           "    for (long long r = 0; r < (long long)batch * P; r++)\n"
           "      sum += row[r];\n"
           "    db[i] = (float)sum;\n");
    close_kernel(G);
    RtAddr a[2] = {dyt, value_at(G, in->db)};
    launch(G, db, in->node, d.cout, 2, a);
  }
  RtAddr a2[2] = {value_at(G, in->x[0]), scratch_at(0)};
  launch(G, im2col, in->node, d.kc * d.pixels, 2, a2);  // the forward's kernel, again
  // dW[c][kk] = sum_r dy_t[c][r] col[kk][r]: T, N, m = the group's columns, n = its kernels,
  // k = batch * P; C = dW as stored (row-major (out, in/groups*K*K) = column-major KCg x opg).
  for (int64_t gi = 0; gi < d.groups && in->dw >= 0; gi++) {
    RtAddr a = scratch_at(gi * d.kcg * d.pixels), b = dyt, c = value_at(G, in->dw);
    b.per_image += gi * d.opg * d.pixels;
    c.fixed += gi * d.opg * d.kcg;
    gemm(G, in->node, 'T', 'N', fixed(d.kcg), fixed(d.opg), per_image(d.pixels), a,
         per_image(d.pixels), b, per_image(d.pixels), c, fixed(d.kcg));
  }
  if (in->dx[0] < 0) {
    need_scratch(G, (d.kc + d.cout) * d.pixels);
    return;
  }
  // dcol[r][kk] = sum_c dy_t[c][r] w[c][kk]: N, T, over the columns dW has read.
  RtAddr w = value_at(G, in->w);
  for (int64_t gi = 0; gi < d.groups; gi++) {
    RtAddr a = dyt, b = w, c = scratch_at(gi * d.kcg * d.pixels);
    a.per_image += gi * d.opg * d.pixels;
    b.fixed += gi * d.opg * d.kcg;
    gemm(G, in->node, 'N', 'T', per_image(d.pixels), fixed(d.kcg), fixed(d.opg), a,
         per_image(d.pixels), b, fixed(d.kcg), c, per_image(d.pixels));
  }
  open_kernel(G, c2i,
              "col2im: a thread per input element gathers the column entries of every tap "
              "that read it\n// (iy = oy * STRIDE - TOP + ky) and adds their sum to dx: no "
              "atomics, a fixed order.",
              consts, "const float *__restrict__ col, float *__restrict__ dx",
              "(long long)C_IN * H * W * batch");
  out(G, "    long long rows = (long long)P * batch;\n"
         "    int img = (int)(i / ((long long)C_IN * H * W)), c = (int)(i / (H * W) %% C_IN);\n"
         "    int iy = (int)(i / W %% H), ix = (int)(i %% W);\n"
         "    float sum = 0.0f;\n"
         "    for (int ky = 0; ky < K; ky++) {\n"
         "      int ty = iy + TOP - ky;  // oy * STRIDE\n"
         "      if (ty < 0 || ty %% STRIDE || ty / STRIDE >= OH)\n"
         "        continue;\n"
         "      for (int kx = 0; kx < K; kx++) {\n"
         "        int tx = ix + LEFT - kx;\n"
         "        if (tx < 0 || tx %% STRIDE || tx / STRIDE >= OW)\n"
         "          continue;\n"
         "        long long r = (long long)img * P + ty / STRIDE * OW + tx / STRIDE;\n"
         "        sum += col[((c * K) + ky) * K * rows + kx * rows + r];\n"
         "      }\n"
         "    }\n"
         "    dx[i] += sum;\n");
  close_kernel(G);
  RtAddr a3[2] = {scratch_at(0), value_at(G, in->dx[0])};
  launch(G, c2i, in->node, d.cin * d.h * d.w, 2, a3);
  need_scratch(G, (d.kc + d.cout) * d.pixels);
}

// ---------------------------------------------------------------- fc

static void fc_consts(const Gen *G, const Node *n, char *buf, size_t size) {
  snprintf(buf, size, "constexpr int IN = %lld, OUT = %lld;\n",
           (long long)in_shape(G, n, 0).c, (long long)n->fc.out);
}

static void emit_fc_forward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  int64_t nin = in_shape(G, n, 0).c, nout = n->fc.out;
  // y[img][o] = sum_j W[o][j] x[img][j]: T, N, m = OUT, n = batch, k = IN.
  gemm(G, in->node, 'T', 'N', fixed(nout), per_image(1), fixed(nin), value_at(G, in->w),
       fixed(nin), value_at(G, in->x[0]), fixed(nin), value_at(G, in->y), fixed(nout));
  if (in->b < 0)
    return;
  char consts[256], name[RT_PLAN_NAME];
  fc_consts(G, n, consts, sizeof consts);
  name_of(G, in->node, "forward_bias", name, sizeof name);
  open_kernel(G, name, "The bias, added to the GEMM's output in place.", consts,
              "float *__restrict__ y, const float *__restrict__ bias", "(long long)OUT * batch");
  out(G, "    y[i] += bias[i %% OUT];\n");
  close_kernel(G);
  RtAddr a[2] = {value_at(G, in->y), value_at(G, in->b)};
  launch(G, name, in->node, nout, 2, a);
}

static void emit_fc_backward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  int64_t nin = in_shape(G, n, 0).c, nout = n->fc.out;
  char consts[256], name[RT_PLAN_NAME];
  fc_consts(G, n, consts, sizeof consts);
  RtAddr dy = value_at(G, in->dy);
  if (in->relu_y >= 0) {  // the fused ReLU: dy is this backward's alone (the verifier's rule)
    name_of(G, in->node, "backward_relu", name, sizeof name);
    open_kernel(G, name,
                "The fused ReLU's backward, in place: dy kept where the ReLU's output is > 0 "
                "(0 + dy: -0 becomes +0).",
                consts, "float *__restrict__ dy, const float *__restrict__ relu_y",
                "(long long)OUT * batch");
    out(G, "    dy[i] = relu_y[i] > 0.0f ? 0.0f + dy[i] : 0.0f;\n");
    close_kernel(G);
    RtAddr a[2] = {dy, value_at(G, in->relu_y)};
    launch(G, name, in->node, nout, 2, a);
  }
  if (in->db >= 0) {
    name_of(G, in->node, "backward_db", name, sizeof name);
    open_kernel(G, name, "The bias gradient: a thread per output sums its column of dy in double.",
                consts, "const float *__restrict__ dy, float *__restrict__ db", "OUT");
    out(G, "    double sum = 0;\n"
           "    for (int img = 0; img < batch; img++)\n"
           "      sum += dy[(long long)img * OUT + i];\n"
           "    db[i] = (float)sum;\n");
    close_kernel(G);
    RtAddr a[2] = {dy, value_at(G, in->db)};
    launch(G, name, in->node, nout, 2, a);
  }
  // dW[o][j] = sum_img dy[img][o] x[img][j]: N, T, m = IN, n = OUT, k = batch.
  if (in->dw >= 0)
    gemm(G, in->node, 'N', 'T', fixed(nin), fixed(nout), per_image(1), value_at(G, in->x[0]),
         fixed(nin), dy, fixed(nout), value_at(G, in->dw), fixed(nin));
  if (in->dx[0] < 0)
    return;
  // dx[img][j] += sum_o W[o][j] dy[img][o]: N, N into scratch, then added (cuBLAS's beta
  // would do it, but the plan's GEMMs overwrite).
  gemm(G, in->node, 'N', 'N', fixed(nin), per_image(1), fixed(nout), value_at(G, in->w),
       fixed(nin), dy, fixed(nout), scratch_at(0), fixed(nin));
  name_of(G, in->node, "backward_dx", name, sizeof name);
  open_kernel(G, name, "dx += the GEMM's input gradient.", consts,
              "const float *__restrict__ part, float *__restrict__ dx", "(long long)IN * batch");
  out(G, "    dx[i] += part[i];\n");
  close_kernel(G);
  RtAddr a[2] = {scratch_at(0), value_at(G, in->dx[0])};
  launch(G, name, in->node, nin, 2, a);
  need_scratch(G, nin);
}

// ---------------------------------------------------------------- per-element ops

static void dropout_consts(const Node *n, int64_t elems, char *buf, size_t size) {
  snprintf(buf, size, "constexpr long long N = %lld;\nconstexpr double SCALE = %.17g;  // 1 / (1 - p)\n",
           (long long)elems, 1.0 / (1.0 - n->dropout.p));
}

static void pool_consts(const Node *n, Shape in, char *buf, size_t size) {
  const PoolAttrs *a = &n->pool;
  snprintf(buf, size,
           "constexpr int C = %lld, H = %lld, W = %lld, OH = %lld, OW = %lld;\n"
           "constexpr int K = %d, STRIDE = %d, TOP = %d, LEFT = %d;\n",
           (long long)in.c, (long long)in.h, (long long)in.w, (long long)n->out.h,
           (long long)n->out.w, a->kernel, a->stride, a->pad.top, a->pad.left);
}

static void lrn_consts(const Node *n, char *buf, size_t size) {
  const LrnAttrs *a = &n->lrn;
  snprintf(buf, size,
           "constexpr int C = %lld, PLANE = %lld;  // channels, pixels per channel\n"
           "constexpr int HALF = %d, PER_GROUP = %lld;  // window: HALF each side, clipped at "
           "the group\n"
           "constexpr double K = %.17g, ALPHA = %.17g, BETA = %.17g;\n",
           (long long)n->out.c, (long long)shape_plane(n->out), a->size / 2,
           (long long)(n->out.c / a->groups), a->k, a->alpha, a->beta);
}

static const char LRN_WINDOW[] =
    "    int g0 = c / PER_GROUP * PER_GROUP, g1 = g0 + PER_GROUP - 1;\n"
    "    int lo = c - HALF < g0 ? g0 : c - HALF, hi = c + HALF > g1 ? g1 : c + HALF;\n";

static void emit_forward_simple(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  char consts[1024], name[RT_PLAN_NAME];
  name_of(G, in->node, "forward", name, sizeof name);
  int64_t elems = shape_elems(n->out);
  RtAddr args[RT_PLAN_MAX_ARGS];
  int na = 0;
  switch (n->op) {
  case OP_RELU:
    snprintf(consts, sizeof consts, "constexpr long long N = %lld;\n", (long long)elems);
    open_kernel(G, name, "ReLU.", consts, "const float *__restrict__ x, float *__restrict__ y",
                "N * batch");
    out(G, "    y[i] = x[i] > 0.0f ? x[i] : 0.0f;\n");
    break;
  case OP_LRN: {
    bool save = in->saved >= 0;
    lrn_consts(n, consts, sizeof consts);
    open_kernel(G, name,
                save ? "LRN: y = x / (K + ALPHA S)^BETA, S the window's sum of squares (in "
                       "double), saved for the backward."
                     : "LRN: y = x / (K + ALPHA S)^BETA, S the window's sum of squares (in "
                       "double).",
                consts,
                save ? "const float *__restrict__ x, float *__restrict__ y, "
                       "float *__restrict__ saved"
                     : "const float *__restrict__ x, float *__restrict__ y",
                "(long long)C * PLANE * batch");
    out(G, "    int c = (int)(i / PLANE %% C);\n    long long base = i - (long long)c * PLANE;\n%s",
        LRN_WINDOW);
    out(G, "    double sum = 0;\n"
           "    for (int j = lo; j <= hi; j++) {\n"
           "      double v = x[base + (long long)j * PLANE];\n"
           "      sum += v * v;\n"
           "    }\n"
           "    y[i] = (float)(x[i] / pow(K + ALPHA * sum, BETA));\n");
    if (save)
      out(G, "    saved[i] = (float)sum;\n");
    if (save) {  // a third argument: the saved sums
      args[2] = value_at(G, in->saved);
      na = 1;
    }
    break;
  }
  case OP_MAXPOOL: {
    pool_consts(n, in_shape(G, n, 0), consts, sizeof consts);
    open_kernel(G, name,
                "Max-pool: the window clipped to the input (padding never wins), `>` from -inf "
                "as the reference.",
                consts, "const float *__restrict__ x, float *__restrict__ y",
                "(long long)C * OH * OW * batch");
    out(G, "    long long plane = i / (OH * OW);\n"
           "    int oy = (int)(i / OW %% OH), ox = (int)(i %% OW);\n"
           "    const float *src = x + plane * H * W;\n"
           "    float m = -INFINITY;\n"
           "    for (int ky = 0; ky < K; ky++)\n"
           "      for (int kx = 0; kx < K; kx++) {\n"
           "        int iy = oy * STRIDE - TOP + ky, ix = ox * STRIDE - LEFT + kx;\n"
           "        if (iy >= 0 && iy < H && ix >= 0 && ix < W && src[iy * W + ix] > m)\n"
           "          m = src[iy * W + ix];\n"
           "      }\n"
           "    y[i] = m;\n");
    break;
  }
  case OP_DROPOUT:
    dropout_consts(n, elems, consts, sizeof consts);
    open_kernel(G, name, "Inverted dropout: kept elements scaled by 1 / (1 - p), dropped ones 0.",
                consts,
                "const float *__restrict__ x, const unsigned char *__restrict__ mask, "
                "float *__restrict__ y",
                "N * batch");
    out(G, "    y[i] = mask[i] ? (float)(x[i] * SCALE) : 0.0f;\n");
    args[2] = value_at(G, in->y);
    args[1] = value_at(G, in->mask);
    args[0] = value_at(G, in->x[0]);
    close_kernel(G);
    launch(G, name, in->node, elems, 3, args);
    return;
  case OP_FLATTEN:
    snprintf(consts, sizeof consts, "constexpr long long N = %lld;\n", (long long)elems);
    open_kernel(G, name, "Flatten: the same bytes per image.", consts,
                "const float *__restrict__ x, float *__restrict__ y", "N * batch");
    out(G, "    y[i] = x[i];\n");
    break;
  case OP_CONCAT: {
    char params[1024];
    int at = 0, pos = snprintf(consts, sizeof consts,
                               "constexpr int PLANE = %lld, C = %lld;  // output\n",
                               (long long)shape_plane(n->out), (long long)n->out.c);
    for (int j = 0; j < n->n_inputs; j++) {
      Shape s = in_shape(G, n, j);
      pos += snprintf(consts + pos, sizeof consts - pos, "constexpr int C%d = %lld, AT%d = %d;\n",
                      j, (long long)s.c, j, at);
      at += (int)s.c;
      args[j] = value_at(G, in->x[j]);
    }
    pos = 0;
    for (int j = 0; j < n->n_inputs; j++)
      pos += snprintf(params + pos, sizeof params - pos, "const float *__restrict__ x%d, ", j);
    snprintf(params + pos, sizeof params - pos, "float *__restrict__ y");
    open_kernel(G, name, "Concat along channels: each output element copies its input's.",
                consts, params, "(long long)C * PLANE * batch");
    out(G, "    long long img = i / ((long long)C * PLANE);\n"
           "    int c = (int)(i / PLANE %% C), p = (int)(i %% PLANE);\n");
    for (int j = 0; j < n->n_inputs; j++)
      out(G, "    %sif (c < AT%d + C%d)\n      y[i] = x%d[(img * C%d + c - AT%d) * PLANE + p];\n",
          j ? "else " : "", j, j, j, j, j);
    args[n->n_inputs] = value_at(G, in->y);
    close_kernel(G);
    launch(G, name, in->node, elems, n->n_inputs + 1, args);
    return;
  }
  default:
    fprintf(stderr, "alexc: cuda training: no forward kernel for layer '%s' (%s)\n", n->name,
            op_name(n->op));
    G->ok = false;
    return;
  }
  close_kernel(G);
  RtAddr base[3] = {value_at(G, in->x[0]), value_at(G, in->y), na ? args[2] : (RtAddr){0}};
  launch(G, name, in->node, elems, 2 + na, base);
}

static void emit_backward_simple(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  char consts[1024], name[RT_PLAN_NAME];
  name_of(G, in->node, "backward", name, sizeof name);
  int64_t elems = shape_elems(n->out);
  if (in->dx[0] < 0 && n->op != OP_CONCAT)
    return;  // nothing to propagate
  RtAddr args[RT_PLAN_MAX_ARGS];
  int na = 0;
  switch (n->op) {
  case OP_RELU:
    snprintf(consts, sizeof consts, "constexpr long long N = %lld;\n", (long long)elems);
    open_kernel(G, name, "ReLU's backward: dy passes where the input was > 0.", consts,
                "const float *__restrict__ x, const float *__restrict__ dy, "
                "float *__restrict__ dx",
                "N * batch");
    out(G, "    if (x[i] > 0.0f)\n      dx[i] += dy[i];\n");
    args[na++] = value_at(G, in->x[0]);
    break;
  case OP_LRN: {
    lrn_consts(n, consts, sizeof consts);
    bool saved = in->saved >= 0;
    open_kernel(G, name,
                "LRN's backward, D = K + ALPHA S (S from the forward's saved window sums):\n"
                "// dx_m += dy_m D_m^-BETA - 2 ALPHA BETA x_m sum_{j in W(m)} dy_j x_j "
                "D_j^(-BETA-1); the windows\n// are symmetric, so m is in W(j) exactly when j "
                "is in W(m). In double.",
                consts,
                saved ? "const float *__restrict__ x, const float *__restrict__ saved, "
                        "const float *__restrict__ dy, float *__restrict__ dx"
                      : "const float *__restrict__ x, const float *__restrict__ dy, "
                        "float *__restrict__ dx",
                "(long long)C * PLANE * batch");
    out(G, "    int c = (int)(i / PLANE %% C);\n    long long base = i - (long long)c * PLANE;\n%s",
        LRN_WINDOW);
    if (saved)
      out(G, "    auto d_of = [&](long long at, int) { return K + ALPHA * (double)saved[at]; };\n");
    else
      out(G, "    auto d_of = [&](long long at, int ch) {  // recomputed: nothing saved\n"
             "      int g0 = ch / PER_GROUP * PER_GROUP, g1 = g0 + PER_GROUP - 1;\n"
             "      int l = ch - HALF < g0 ? g0 : ch - HALF, h = ch + HALF > g1 ? g1 : ch + HALF;\n"
             "      double s = 0;\n"
             "      for (int j = l; j <= h; j++) {\n"
             "        double v = x[at + (long long)(j - ch) * PLANE];\n"
             "        s += v * v;\n"
             "      }\n"
             "      return K + ALPHA * s;\n"
             "    };\n");
    out(G, "    double cross = 0;\n"
           "    for (int j = lo; j <= hi; j++) {\n"
           "      long long at = base + (long long)j * PLANE;\n"
           "      cross += (double)dy[at] * x[at] * pow(d_of(at, j), -BETA - 1);\n"
           "    }\n"
           "    dx[i] += (float)(dy[i] * pow(d_of(i, c), -BETA) - 2 * ALPHA * BETA * x[i] * cross);\n");
    args[na++] = value_at(G, in->x[0]);
    if (saved)
      args[na++] = value_at(G, in->saved);
    break;
  }
  case OP_MAXPOOL: {
    Shape s = in_shape(G, n, 0);
    pool_consts(n, s, consts, sizeof consts);
    open_kernel(G, name,
                "Max-pool's backward, gathered: a thread per input element visits the windows "
                "that contain it\n// (in the reference's scatter order) and adds dy of each "
                "whose first maximum (scan order, `>`) it is.",
                consts,
                "const float *__restrict__ x, const float *__restrict__ dy, "
                "float *__restrict__ dx",
                "(long long)C * H * W * batch");
    out(G, "    long long plane = i / (H * W);\n"
           "    int iy = (int)(i / W %% H), ix = (int)(i %% W);\n"
           "    const float *src = x + plane * H * W;\n"
           "    const float *g = dy + plane * OH * OW;\n"
           "    float acc = dx[i];\n"
           "    // Windows oy with oy * STRIDE - TOP <= iy < oy * STRIDE - TOP + K.\n"
           "    int oy0 = iy + TOP - K + 1 > 0 ? (iy + TOP - K + 1 + STRIDE - 1) / STRIDE : 0;\n"
           "    int ox0 = ix + LEFT - K + 1 > 0 ? (ix + LEFT - K + 1 + STRIDE - 1) / STRIDE : 0;\n"
           "    for (int oy = oy0; oy < OH && oy * STRIDE - TOP <= iy; oy++)\n"
           "      for (int ox = ox0; ox < OW && ox * STRIDE - LEFT <= ix; ox++) {\n"
           "        float m = -INFINITY;\n"
           "        int arg = -1;\n"
           "        for (int ky = 0; ky < K; ky++)\n"
           "          for (int kx = 0; kx < K; kx++) {\n"
           "            int y = oy * STRIDE - TOP + ky, xx = ox * STRIDE - LEFT + kx;\n"
           "            if (y >= 0 && y < H && xx >= 0 && xx < W && src[y * W + xx] > m) {\n"
           "              m = src[y * W + xx];\n"
           "              arg = y * W + xx;\n"
           "            }\n"
           "          }\n"
           "        if (arg == iy * W + ix)\n"
           "          acc += g[oy * OW + ox];\n"
           "      }\n"
           "    dx[i] = acc;\n");
    args[na++] = value_at(G, in->x[0]);
    elems = shape_elems(s);
    break;
  }
  case OP_DROPOUT:
    dropout_consts(n, elems, consts, sizeof consts);
    open_kernel(G, name, "Dropout's backward: dy scaled where the mask kept the element.",
                consts,
                "const unsigned char *__restrict__ mask, const float *__restrict__ dy, "
                "float *__restrict__ dx",
                "N * batch");
    out(G, "    if (mask[i])\n      dx[i] += (float)(dy[i] * SCALE);\n");
    args[na++] = value_at(G, in->mask);
    break;
  case OP_FLATTEN:
    snprintf(consts, sizeof consts, "constexpr long long N = %lld;\n", (long long)elems);
    open_kernel(G, name, "Flatten's backward: the same bytes.", consts,
                "const float *__restrict__ dy, float *__restrict__ dx", "N * batch");
    out(G, "    dx[i] += dy[i];\n");
    break;
  case OP_CONCAT: {
    // One kernel per input that wants a gradient: its slice of dy.
    for (int j = 0; j < n->n_inputs; j++) {
      if (in->dx[j] < 0)
        continue;
      Shape s = in_shape(G, n, j);
      int64_t at = 0;
      for (int q = 0; q < j; q++)
        at += in_shape(G, n, q).c;
      char nm[RT_PLAN_NAME], suffix[32];
      snprintf(suffix, sizeof suffix, "backward_x%d", j);
      name_of(G, in->node, suffix, nm, sizeof nm);
      snprintf(consts, sizeof consts,
               "constexpr int PLANE = %lld, C = %lld;  // output\n"
               "constexpr int CJ = %lld, AT = %lld;    // input %d: channels [AT, AT + CJ)\n",
               (long long)shape_plane(n->out), (long long)n->out.c, (long long)s.c,
               (long long)at, j);
      open_kernel(G, nm, "Concat's backward for one input: its channels of dy.", consts,
                  "const float *__restrict__ dy, float *__restrict__ dx",
                  "(long long)CJ * PLANE * batch");
      out(G, "    long long img = i / ((long long)CJ * PLANE), rest = i %% ((long long)CJ * PLANE);\n"
             "    dx[i] += dy[(img * C + AT) * PLANE + rest];\n");
      close_kernel(G);
      RtAddr a[2] = {value_at(G, in->dy), value_at(G, in->dx[j])};
      launch(G, nm, in->node, shape_elems(s), 2, a);
    }
    return;
  }
  default:
    fprintf(stderr, "alexc: cuda training: no backward kernel for layer '%s' (%s)\n", n->name,
            op_name(n->op));
    G->ok = false;
    return;
  }
  close_kernel(G);
  args[na++] = value_at(G, in->dy);
  args[na++] = value_at(G, in->dx[0]);
  launch(G, name, in->node, elems, na, args);
}

// ---------------------------------------------------------------- loss, update

static void emit_loss(Gen *G, const TInstr *in) {
  int classes = (int)G->g->nodes[G->p->logits].out.c;
  char consts[128], name[RT_PLAN_NAME];
  name_of(G, G->p->logits, "loss", name, sizeof name);
  snprintf(consts, sizeof consts, "constexpr int CLASSES = %d;\n", classes);
  open_kernel(G, name,
              "Softmax cross-entropy, a thread per image, in double as softmax_xent(): "
              "lse = m + log sum e^(z - m),\n// loss = lse - z[label], dlogits = (softmax - "
              "onehot) / batch; a top-1 hit when every other\n// logit is strictly below the "
              "label's (ties and NaN count against it). A label out of range\n// gives a NaN "
              "loss (the host checks labels first). One rank's part of a global batch of\n// "
              "ctl->total images: dlogits weighted by batch / total (train.c's TI_LOSS), so the "
              "ranks'\n// gradients sum to the global batch's.",
              consts,
              "const float *__restrict__ logits, const int *__restrict__ labels, "
              "float *__restrict__ dlogits, double *__restrict__ loss, int *__restrict__ hits, "
              "const TrainControl *__restrict__ ctl",
              "batch");
  out(G, "    const float *z = logits + i * CLASSES;\n"
         "    float *dz = dlogits + i * CLASSES;\n"
         "    int label = labels[i];\n"
         "    if (label < 0 || label >= CLASSES) {\n"
         "      loss[i] = NAN;\n"
         "      hits[i] = 0;\n"
         "      continue;\n"
         "    }\n"
         "    double m = z[0];\n"
         "    for (int k = 1; k < CLASSES; k++)\n"
         "      m = z[k] > m ? z[k] : m;\n"
         "    double sum = 0;\n"
         "    for (int k = 0; k < CLASSES; k++)\n"
         "      sum += exp(z[k] - m);\n"
         "    loss[i] = m + log(sum) - z[label];\n"
         "    int not_beaten = 0;\n"
         "    for (int k = 0; k < CLASSES; k++) {\n"
         "      dz[k] = (float)((exp(z[k] - m) / sum - (k == label)) / batch);\n"
         "      if (ctl->total && ctl->total != batch)  // 0: the batch is whole\n"
         "        dz[k] = (float)((double)dz[k] * batch / ctl->total);\n"
         "      not_beaten += k != label && !(z[label] > z[k]);\n"
         "    }\n"
         "    hits[i] = not_beaten < 1;\n");
  close_kernel(G);
  RtAddr a[6] = {value_at(G, in->x[0]), G->t->labels, value_at(G, in->dy), G->t->loss,
                 G->t->hits, weight_at(G->t->control)};
  launch(G, name, G->p->logits, 1, 6, a);
}

// Several ranks: the gradient region summed over them, in place, before the update.
static void emit_allreduce(Gen *G) {
  RtStep s = {.kind = RT_STEP_ALLREDUCE, .device = G->device,
              .dst = {weight_at(G->t->grad_base), G->t->params}, .width = G->t->params};
  snprintf(s.name, sizeof s.name, "gradients");
  snprintf(s.layer, sizeof s.layer, "allreduce");
  G->t->allreduce_step = G->t->plan.n_steps;
  rt_plan_add_step(&G->t->plan, &s);
}

static void emit_update(Gen *G) {
  char consts[256];
  snprintf(consts, sizeof consts, "constexpr long long N = %lld;  // parameters, padding included\n",
           (long long)G->t->params);
  open_kernel(G, "k_sgd_update",
              "The paper's SGD over every parameter at once (weights, gradients and momenta "
              "at the same offsets):\n// v = 0.9 v - 0.0005 lr w - lr g, w += v, in double and "
              "stored as float: sgd_update_span()'s\n// operations in its order, each rounded "
              "(__dmul_rn, __dsub_rn, __fadd_rn are never contracted into an FMA),\n// so the "
              "bits are the CPU's.",
              consts,
              "float *__restrict__ w, float *__restrict__ v, const float *__restrict__ g, "
              "const TrainControl *__restrict__ ctl",
              "N");
  out(G, "    double lr = ctl->lr;\n"
         "    double nv = __dsub_rn(__dsub_rn(__dmul_rn(0.9, (double)v[i]),\n"
         "                                    __dmul_rn(__dmul_rn(0.0005, lr), (double)w[i])),\n"
         "                          __dmul_rn(lr, (double)g[i]));\n"
         "    v[i] = (float)nv;\n"
         "    w[i] = __fadd_rn(w[i], v[i]);\n");
  close_kernel(G);
  RtAddr a[4] = {weight_at(0), weight_at(G->t->momentum_base), weight_at(G->t->grad_base),
                 weight_at(G->t->control)};
  // The work does not grow with the batch; the launch is sized for batch 1 and the grid
  // stride covers the rest.
  launch(G, "k_sgd_update", -1, G->t->params, 4, a);
}

// ---------------------------------------------------------------- the program

static const char PREAMBLE[] =
    "// The host writes this before each step (CudaTrainControl, compiler/backends/cuda/train.h).\n"
    "struct TrainControl {\n"
    "  double lr;\n"
    "  unsigned long long seed, step;\n"
    "  int first, total;  // this rank's first image in the global batch, and its size\n"
    "};\n"
    "\n"
    "// Every kernel loops over its elements with a grid stride, so any grid covers them.\n"
    "#define GRID_STRIDE(i, total) \\\n"
    "  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \\\n"
    "       i += (long long)blockDim.x * gridDim.x)\n"
    "\n"
    "// Philox4x32-10 (Salmon et al., SC'11) word 0, as train/philox.c: ten rounds, the key\n"
    "// bumped by the Weyl constants between rounds.\n"
    "__device__ __forceinline__ unsigned philox_word0(unsigned c0, unsigned c1, unsigned c2,\n"
    "                                                 unsigned c3, unsigned k0, unsigned k1) {\n"
    "  for (int r = 0; r < 10; r++) {\n"
    "    if (r) {\n"
    "      k0 += 0x9E3779B9u;\n"
    "      k1 += 0xBB67AE85u;\n"
    "    }\n"
    "    unsigned long long p0 = 0xD2511F53ull * c0, p1 = 0xCD9E8D57ull * c2;\n"
    "    unsigned n0 = (unsigned)(p1 >> 32) ^ c1 ^ k0, n2 = (unsigned)(p0 >> 32) ^ c3 ^ k1;\n"
    "    c1 = (unsigned)p1;\n"
    "    c3 = (unsigned)p0;\n"
    "    c0 = n0;\n"
    "    c2 = n2;\n"
    "  }\n"
    "  return c0;\n"
    "}\n"
    "\n"
    "#ifndef INFINITY\n"
    "#define INFINITY __int_as_float(0x7f800000)\n"
    "#endif\n"
    "#ifndef NAN\n"
    "#define NAN __longlong_as_double(0x7ff8000000000000ll)\n"
    "#endif\n";

static void layout_params(CudaTrainPlan *t, const Graph *g) {
  t->layout = weights_zeros(g);
  t->param_offset = xcalloc(t->layout->n ? t->layout->n : 1, sizeof *t->param_offset);
  int64_t at = 0;
  for (int i = 0; i < t->layout->n; i++) {
    t->param_offset[i] = at;
    at += (t->layout->info[i].elems + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
  }
  t->params = at;
  t->grad_base = at;
  t->momentum_base = 2 * at;
  t->control = 3 * at;  // 16-byte aligned: a double first
}

static void emit_forward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  if (n->op == OP_CONV)
    emit_conv_forward(G, in);
  else if (n->op == OP_FC)
    emit_fc_forward(G, in);
  else
    emit_forward_simple(G, in);
}

static void emit_backward(Gen *G, const TInstr *in) {
  const Node *n = &G->g->nodes[in->node];
  if (n->op == OP_CONV)
    emit_conv_backward(G, in);
  else if (n->op == OP_FC)
    emit_fc_backward(G, in);
  else
    emit_backward_simple(G, in);
}

static void source_header(Gen *G, int devices) {
  out(G, "// alexc: one SGD step of '%s' on %s (training program: %d values, %d "
         "instructions).\n// Generated by compiler/backends/cuda/train.c; the plan's steps "
         "launch these kernels in order,\n// with the GEMMs in cuBLAS between them.\n\n%s",
      G->g->name, devices > 1 ? "its device of a model-parallel split" : "one device",
      G->p->n_values, G->p->n_instrs, PREAMBLE);
}

// One device: the program's memory plan is the arena.
static void generate_one(Gen *G) {
  const TrainProgram *p = G->p;
  CudaTrainPlan *t = G->t;
  RtPlan *plan = &t->plan;
  bool updated = false;
  for (int i = 0; i < p->n_instrs && G->ok; i++) {
    const TInstr *in = &p->instrs[i];
    t->instr_step[i] = plan->n_steps;
    if (train_instr_phase(in->kind) == PHASE_LOSS && !t->forward_end)
      t->forward_end = plan->n_steps;
    for (int v = 0; v < p->n_values; v++)  // gradients born here (the loss overwrites its own)
      if (p->values[v].kind == TV_GRAD && p->first[v] == i && in->kind != TI_LOSS)
        emit_zero(G, v);
    switch (in->kind) {
    case TI_MASK:
      emit_mask(G, in);
      break;
    case TI_FORWARD:
      emit_forward(G, in);
      break;
    case TI_LOSS:
      emit_loss(G, in);
      break;
    case TI_BACKWARD:
      emit_backward(G, in);
      break;
    case TI_UPDATE:  // all of them in one kernel, at the first
      if (!updated && t->ranks > 1)
        emit_allreduce(G);
      if (!updated)
        emit_update(G);
      updated = true;
      break;
    case TI_SEND:
    case TI_REDUCE:
      fprintf(stderr, "alexc: internal error: a one-device program with transfers\n");
      G->ok = false;
      break;
    }
  }
}

// ---------------------------------------------------------------- devices > 1

// dst channels [D0, D0 + LEN) (+)= src channels [S0, S0 + LEN) of (batch, C, PLANE)
// tensors of SC and DC channels: the gathers and scatters between a device's whole-tensor
// copies and its pieces' local buffers (train/parallel.c's move_channels).
static void emit_copy_channels(Gen *G, int node, const char *tag, const char *what,
                               const char *type, RtAddr src, int64_t sc, int64_t s0, RtAddr dst,
                               int64_t dc, int64_t d0, int64_t len, int64_t plane, bool add) {
  if (len <= 0)
    return;
  char name[RT_PLAN_NAME], consts[512], params[256], suffix[48];
  snprintf(suffix, sizeof suffix, "%s%d", tag, G->uniq++);
  name_of(G, node, suffix, name, sizeof name);
  snprintf(consts, sizeof consts,
           "constexpr int SC = %lld, S0 = %lld;  // source channels, the first copied\n"
           "constexpr int DC = %lld, D0 = %lld;  // destination channels, where they go\n"
           "constexpr long long LEN = %lld, PLANE = %lld;\n",
           (long long)sc, (long long)s0, (long long)dc, (long long)d0, (long long)len,
           (long long)plane);
  snprintf(params, sizeof params, "const %s *__restrict__ src, %s *__restrict__ dst", type, type);
  char comment[256];
  snprintf(comment, sizeof comment, "%s: channels [S0, S0 + LEN) %s channels [D0, D0 + LEN).",
           what, add ? "added to" : "copied to");
  open_kernel(G, name, comment, consts, params, "LEN * PLANE * batch");
  out(G, "    long long img = i / (LEN * PLANE), r = i %% (LEN * PLANE);\n"
         "    dst[(img * DC + D0) * PLANE + r] %s src[(img * SC + S0) * PLANE + r];\n",
      add ? "+=" : "=");
  close_kernel(G);
  RtAddr a[2] = {src, dst};
  launch(G, name, node, len * plane, 2, a);
}

static void emit_fill_zero(Gen *G, int node, RtAddr at, int64_t floats) {
  char name[RT_PLAN_NAME], consts[128], suffix[48];
  snprintf(suffix, sizeof suffix, "zero%d", G->uniq++);
  name_of(G, node, suffix, name, sizeof name);
  snprintf(consts, sizeof consts, "constexpr long long N = %lld;  // floats per image\n",
           (long long)floats);
  open_kernel(G, name, "Zeroes a gradient buffer.", consts, "float *__restrict__ g", "N * batch");
  out(G, "    g[i] = 0.0f;\n");
  close_kernel(G);
  launch(G, name, node, floats, 1, &at);
}

static void emit_transfer(Gen *G, int from, int to, RtAddr src, RtAddr dst, int64_t src_pitch,
                          int64_t dst_pitch, int64_t width, const char *layer) {
  RtStep s = {.kind = RT_STEP_TRANSFER, .device = to, .from = from, .src = {src, src_pitch},
              .dst = {dst, dst_pitch}, .width = width};
  snprintf(s.name, sizeof s.name, "%s", layer);
  snprintf(s.layer, sizeof s.layer, "%s", layer);
  rt_plan_add_step(&G->t->plan, &s);
}

static int64_t bump(int64_t *at, int64_t floats) {
  int64_t o = *at;
  *at += (floats + 15) / 16 * 16;  // 64-byte aligned for any batch
  return o;
}

// The pieces' operands, by the ids a piece's synthetic instruction uses.
enum { PX = 0, PDX = 64, PY = 128, PDY, PW, PB, PDW, PDB, PMASK, P_IDS };

static TInstr piece_instr(const SplitPiece *sp, const Node *spec_node, int *xs, int *dxs,
                          const bool *needs_grad) {
  TInstr in = {.node = sp->g->output, .n_x = sp->n_in, .x = xs, .dx = dxs, .y = PY, .dy = PDY,
               .w = spec_node->n_weight ? PW : -1, .b = spec_node->n_bias ? PB : -1,
               .dw = spec_node->n_weight ? PDW : -1, .db = spec_node->n_bias ? PDB : -1,
               .v = -1, .mask = spec_node->op == OP_DROPOUT ? PMASK : -1, .saved = -1,
               .labels = -1, .loss = -1, .relu = -1, .relu_y = -1, .transfer = -1};
  for (int j = 0; j < sp->n_in; j++) {
    xs[j] = PX + j;
    dxs[j] = needs_grad[sp->input[j]] && sp->input[j] != 0 ? PDX + j : -1;
  }
  return in;
}

// Devices > 1: train/parallel.c's split as kernels. Each device keeps a whole-tensor copy
// of every node's output and gradient (only the channels it holds are ever written or
// read); each piece gathers its input channels into local buffers, runs the op there
// (the same emitters as one device, on the piece's local graph) and scatters its output
// channels back; backward, it scatters (adds) its partial input gradients. The plan's
// sends are transfers, each reduction a transfer of the receiver's partial gradient into
// the sender's scratch area plus a kernel adding it. The parameters are replicated; each
// device computes the gradient rows of its pieces and updates every row (the others'
// are not its to read: the host reads each row from the device that computed it).
static void generate_split(Gen *G, const bool *needs_grad) {
  const TrainProgram *p = G->p;
  CudaTrainPlan *t = G->t;
  const Graph *spec = G->g, *plan_g = split_plan(t->split);
  int devices = t->devices, logits = p->logits, np = split_n_pieces(t->split);
  int64_t at[MAX_DEVICES] = {0};
  RtAddr *act[MAX_DEVICES], *grad[MAX_DEVICES], *mask[MAX_DEVICES];
  for (int d = 0; d < devices; d++) {
    act[d] = xcalloc(spec->n_nodes, sizeof *act[d]);
    grad[d] = xcalloc(spec->n_nodes, sizeof *grad[d]);
    mask[d] = xcalloc(spec->n_nodes, sizeof *mask[d]);
    for (int i = 0; i <= logits; i++) {
      int64_t e = shape_elems(spec->nodes[i].out);
      act[d][i] = arena_at(bump(&at[d], e));
      grad[d][i] = arena_at(bump(&at[d], e));
      if (spec->nodes[i].op == OP_DROPOUT)
        mask[d][i] = arena_at(bump(&at[d], (e + 3) / 4));
    }
  }
  // Per piece: its local inputs and their gradients, output, output gradient, mask.
  RtAddr(*pa)[P_IDS] = xcalloc(np ? np : 1, sizeof *pa);
  for (int k = 0; k < np; k++) {
    SplitPiece sp = split_piece(t->split, k);
    int d = sp.device;
    const Node *ln = &sp.g->nodes[sp.g->output];
    for (int j = 0; j < sp.n_in; j++) {
      pa[k][PX + j] = arena_at(bump(&at[d], shape_elems(sp.g->nodes[j].out)));
      pa[k][PDX + j] = arena_at(bump(&at[d], shape_elems(sp.g->nodes[j].out)));
    }
    pa[k][PY] = arena_at(bump(&at[d], shape_elems(ln->out)));
    pa[k][PDY] = arena_at(bump(&at[d], shape_elems(ln->out)));
    pa[k][PMASK] = arena_at(bump(&at[d], (shape_elems(ln->out) + 3) / 4));
    for (int q = 0; q < t->layout->n; q++) {
      if (t->layout->info[q].node != sp.node)
        continue;
      int64_t off = t->param_offset[q] + (t->layout->info[q].is_bias ? sp.b_off : sp.w_off);
      pa[k][t->layout->info[q].is_bias ? PB : PW] = weight_at(off);
      pa[k][t->layout->info[q].is_bias ? PDB : PDW] = weight_at(t->grad_base + off);
    }
  }
  // Loss, labels, hits, and the whole dlogits on device 0; a reduction's landing area on
  // its sender.
  t->loss = arena_at(bump(&at[0], 2));
  t->labels = arena_at(bump(&at[0], 1));
  t->hits = arena_at(bump(&at[0], 1));
  RtAddr dlogits = arena_at(bump(&at[0], spec->nodes[logits].out.c));
  RtAddr *landing = xcalloc(plan_g->n_transfers ? plan_g->n_transfers : 1, sizeof *landing);
  for (int k = 0; k < plan_g->n_transfers; k++) {
    const Transfer *tr = &plan_g->transfers[k];
    landing[k] = arena_at(
        bump(&at[tr->from], range_len(tr->range) * shape_plane(spec->nodes[tr->node].out)));
  }
  for (int d = 0; d < devices; d++) {
    int64_t e = p->values[p->input].elems;
    t->plan.dev[d].arena = at[d];
    t->plan.dev[d].input = (RtHostCopy){{act[d][0], e}, 0, e, e};
  }
  int64_t classes = spec->nodes[logits].out.c;
  t->plan.dev[0].output = (RtHostCopy){{act[0][logits], classes}, 0, classes, classes};

  int xs[64], dxs[64];
  RtAddr ctl = weight_at(t->control);
  bool updated = false, backward_started = false;
  for (int i = 0; i < p->n_instrs && G->ok; i++) {
    const TInstr *in = &p->instrs[i];
    const Node *n = &spec->nodes[in->node];
    t->instr_step[i] = t->plan.n_steps;
    if (train_instr_phase(in->kind) == PHASE_LOSS && !t->forward_end)
      t->forward_end = t->plan.n_steps;
    G->g = spec;
    G->prefix[0] = 0;
    switch (in->kind) {
    case TI_MASK:  // every device draws the whole mask (the same bits), pieces take theirs
      for (int d = 0; d < devices; d++) {
        RtAddr a[2] = {mask[d][in->node], ctl};
        TInstr m = *in;
        m.mask = 0;
        G->addr = a, G->device = d, G->src = t->src_files[d];
        emit_mask(G, &m);
      }
      break;
    case TI_FORWARD:
    case TI_BACKWARD: {
      bool fwd = in->kind == TI_FORWARD;
      if (!fwd && !backward_started) {  // every gradient zeroed, then each device's dlogits
        backward_started = true;
        for (int d = 0; d < devices; d++) {
          G->device = d, G->src = t->src_files[d];
          for (int j = 1; j <= logits; j++)
            emit_fill_zero(G, j, grad[d][j], shape_elems(spec->nodes[j].out));
        }
        for (int d = 0; d < devices; d++) {
          Range r = plan_g->nodes[logits].place[d].stage[0];
          if (d == 0) {
            G->device = 0, G->src = t->src_files[0];
            emit_copy_channels(G, logits, "dlogits", "dlogits, this device's share", "float",
                               dlogits, classes,
                               r.begin, grad[0][logits], classes, r.begin, range_len(r), 1,
                               false);
          } else if (range_len(r)) {  // rows of `classes` floats, from channel r.begin
            RtAddr src = dlogits, dst = grad[d][logits];
            src.fixed = dst.fixed = r.begin;
            emit_transfer(G, 0, d, src, dst, classes, classes, range_len(r),
                          spec->nodes[logits].name);
          }
        }
      }
      for (int q = 0; q < np && G->ok; q++) {
        int k = fwd ? q : np - 1 - q;
        SplitPiece sp = split_piece(t->split, k);
        if (sp.node != in->node)
          continue;
        int d = sp.device;
        Shape whole = n->out;
        int64_t plane = shape_plane(whole), lout = range_len(sp.lout);
        G->device = d, G->src = t->src_files[d], G->addr = NULL, G->g = spec;
        snprintf(G->prefix, sizeof G->prefix, "p%02d_", k);
        TInstr pin = piece_instr(&sp, n, xs, dxs, needs_grad);
        if (fwd) {
          for (int j = 0; j < sp.n_in; j++) {
            Shape ws = spec->nodes[sp.input[j]].out;
            emit_copy_channels(G, in->node, "gather_x", "the piece's input", "float",
                               act[d][sp.input[j]], ws.c,
                               sp.in[j].begin, pa[k][PX + j], range_len(sp.in[j]), 0,
                               range_len(sp.in[j]), shape_plane(ws), false);
          }
          if (n->op == OP_DROPOUT)
            emit_copy_channels(G, in->node, "gather_mask", "the piece's share of the mask",
                               "unsigned char",
                               mask[d][in->node], whole.c, sp.lout.begin, pa[k][PMASK], lout, 0,
                               lout, plane, false);
          G->g = sp.g, G->addr = pa[k];
          emit_forward(G, &pin);
          G->g = spec, G->addr = NULL;
          emit_copy_channels(G, in->node, "scatter_y", "the piece's output", "float", pa[k][PY],
                             lout,
                             sp.out.begin - sp.lout.begin, act[d][in->node], whole.c,
                             sp.out.begin, range_len(sp.out), plane, false);
        } else {
          if (lout != range_len(sp.out))  // an LRN's halo channels: no gradient
            emit_fill_zero(G, in->node, pa[k][PDY], lout * plane);
          emit_copy_channels(G, in->node, "gather_dy", "the piece's output gradient", "float",
                             grad[d][in->node],
                             whole.c, sp.out.begin, pa[k][PDY], lout, sp.out.begin - sp.lout.begin,
                             range_len(sp.out), plane, false);
          for (int j = 0; j < sp.n_in; j++)
            if (dxs[j] >= 0)
              emit_fill_zero(G, in->node, pa[k][PDX + j], shape_elems(sp.g->nodes[j].out));
          G->g = sp.g, G->addr = pa[k];
          emit_backward(G, &pin);
          G->g = spec, G->addr = NULL;
          for (int j = 0; j < sp.n_in; j++) {
            Shape ws = spec->nodes[sp.input[j]].out;
            if (dxs[j] >= 0)
              emit_copy_channels(G, in->node, "scatter_dx", "the piece's input gradient",
                                 "float", pa[k][PDX + j],
                                 range_len(sp.in[j]), 0, grad[d][sp.input[j]], ws.c,
                                 sp.in[j].begin, range_len(sp.in[j]), shape_plane(ws), true);
          }
        }
      }
      G->prefix[0] = 0;
      break;
    }
    case TI_SEND: {
      const Transfer *tr = &plan_g->transfers[in->transfer];
      Shape sh = spec->nodes[tr->node].out;
      int64_t plane = shape_plane(sh);
      RtAddr src = act[tr->from][tr->node], dst = act[tr->to][tr->node];
      src.fixed = dst.fixed = tr->range.begin * plane;
      emit_transfer(G, tr->from, tr->to, src, dst, sh.c * plane, sh.c * plane,
                    range_len(tr->range) * plane, n->name);
      break;
    }
    case TI_REDUCE: {
      const Transfer *tr = &plan_g->transfers[in->transfer];
      Shape sh = spec->nodes[tr->node].out;
      int64_t plane = shape_plane(sh), len = range_len(tr->range);
      RtAddr src = grad[tr->to][tr->node];
      src.fixed = tr->range.begin * plane;
      emit_transfer(G, tr->to, tr->from, src, landing[in->transfer], sh.c * plane, len * plane,
                    len * plane, n->name);
      G->device = tr->from, G->src = t->src_files[tr->from];
      emit_copy_channels(G, in->node, "reduce", "a reduction: the receiver's partial gradient",
                         "float",
                         landing[in->transfer], len, 0, grad[tr->from][tr->node], sh.c,
                         tr->range.begin, len, plane, true);
      break;
    }
    case TI_LOSS: {  // on device 0, from the logits gathered there
      for (int d = 1; d < devices; d++) {
        Range r = plan_g->nodes[logits].place[d].stage[0];
        if (!range_len(r))
          continue;
        RtAddr src = act[d][logits], dst = act[0][logits];
        src.fixed = dst.fixed = r.begin;
        emit_transfer(G, d, 0, src, dst, classes, classes, range_len(r), n->name);
      }
      RtAddr a[5] = {act[0][logits], t->labels, dlogits, t->loss, t->hits};
      TInstr l = *in;
      int x0 = 0;
      l.x = &x0, l.dy = 2;
      G->addr = a, G->device = 0, G->src = t->src_files[0];
      emit_loss(G, &l);
      G->addr = NULL;
      break;
    }
    case TI_UPDATE:
      for (int d = 0; d < devices && !updated; d++) {
        G->device = d, G->src = t->src_files[d];
        emit_update(G);
      }
      updated = true;
      break;
    }
  }
  for (int d = 0; d < devices; d++) {
    free(act[d]);
    free(grad[d]);
    free(mask[d]);
  }
  free(pa);
  free(landing);
}

// The backward fusion patterns the generator has kernels for: a ReLU's mask folded into
// a conv's or fc's backward. The longer chains (the LRN and pool backward folded in too,
// train/fuse.c) are the CPU table's; here they stay separate instructions.
static const char *const CUDA_TRAIN_PATTERNS[] = {"conv-relu", "fc-relu", NULL};

static bool patterns_supported(const char *const *patterns) {
  for (int i = 0; patterns && patterns[i]; i++) {
    bool known = false;
    for (int j = 0; CUDA_TRAIN_PATTERNS[j]; j++)
      known |= !strcmp(patterns[i], CUDA_TRAIN_PATTERNS[j]);
    if (!known) {
      error("cuda training: backward fusion pattern '%s' has no CUDA kernels (the CUDA "
            "target fuses conv-relu and fc-relu)", patterns[i]);
      return false;
    }
  }
  return true;
}

bool cuda_train_generate(const Graph *g, const char *const *patterns, int devices,
                         CudaTrainPlan *t) {
  return cuda_train_generate_ranks(g, patterns, devices, 1, t);
}

bool cuda_train_generate_ranks(const Graph *g, const char *const *patterns, int devices,
                               int ranks, CudaTrainPlan *t) {
  memset(t, 0, sizeof *t);
  if (devices < 1 || devices > MAX_DEVICES) {
    error("cuda training: %d devices (1 to %d)", devices, MAX_DEVICES);
    return false;
  }
  if (ranks > 1 && devices > 1) {
    error("cuda training: data parallelism over %d ranks with --devices %d: a rank trains "
          "on one device (--devices 1) under mpirun", ranks, devices);
    return false;
  }
  t->ranks = ranks > 1 ? ranks : 1;
  t->allreduce_step = -1;
  if (!patterns_supported(patterns))
    return false;
  if (!patterns)
    patterns = CUDA_TRAIN_PATTERNS;
  TrainProgram *p = autodiff(g);
  if (!p)
    return false;
  t->prog = p;
  t->devices = devices;
  if (devices > 1) {  // the pieces run the plain ops: nothing fused (as the CPU trainer)
    if (!(t->split = split_new(g, devices, 1, p->logits, p->needs_grad))) {
      cuda_train_free(t);
      return false;
    }
    train_add_transfers(p, split_plan(t->split));
  } else {
    train_fuse_backward(p, patterns);
  }
  train_plan_memory(p);
  if (!train_program_verify(p)) {
    cuda_train_free(t);
    return false;
  }
  layout_params(t, g);
  RtPlan *plan = &t->plan;
  snprintf(plan->network, sizeof plan->network, "%s", g->name);
  snprintf(plan->arch, sizeof plan->arch, "sm_90");
  plan->precision = RT_FP32;
  plan->n_devices = devices;
  plan->in = (RtShape){3, {g->nodes[0].out.c, g->nodes[0].out.h, g->nodes[0].out.w}};
  if (g->nodes[0].out.rank == 1)
    plan->in = (RtShape){1, {g->nodes[0].out.c}};
  plan->out = (RtShape){1, {g->nodes[p->logits].out.c}};
  for (int i = 0; i < t->layout->n; i++) {
    const ParamInfo *pi = &t->layout->info[i];
    RtWeightSlice s = {.first = 0, .count = pi->elems, .offset = t->param_offset[i]};
    if (snprintf(s.tensor, sizeof s.tensor, "%s", pi->name) >= (int)sizeof s.tensor) {
      error("cuda training: parameter name '%s' is too long for a plan", pi->name);
      cuda_train_free(t);
      return false;
    }
    for (int d = 0; d < devices; d++)  // replicated: each device reads its rows
      rt_plan_add_slice(plan, d, &s);
    RtShape shape = {pi->rank, {0}};
    memcpy(shape.dims, pi->dims, sizeof shape.dims);
    rt_plan_add_tensor(plan, pi->name, shape);
  }
  Gen G = {.g = g, .p = p, .t = t, .ok = true};
  char *text[MAX_DEVICES] = {0};
  size_t size[MAX_DEVICES] = {0};
  for (int d = 0; d < devices; d++) {
    t->src_files[d] = open_memstream(&text[d], &size[d]);
    G.src = t->src_files[d];
    source_header(&G, devices);
    plan->dev[d].weights = t->control + 8;
    plan->dev[d].chunk = INT32_MAX;  // no chunks: the scratch holds the whole batch
  }
  G.src = t->src_files[0];
  t->instr_step = xcalloc(p->n_instrs + 1, sizeof *t->instr_step);
  if (devices == 1) {
    // The per-image extras after the program's arena: loss (a double), label, hit.
    t->loss = arena_at(p->arena);
    t->labels = arena_at(p->arena + 2);
    t->hits = arena_at(p->arena + 3);
    RtPlanDevice *dev = &plan->dev[0];
    dev->arena = p->arena + TRAIN_CUDA_EXTRA;
    int64_t in_elems = p->values[p->input].elems, classes = g->nodes[p->logits].out.c;
    dev->input = (RtHostCopy){{arena_at(p->offset[p->input]), in_elems}, 0, in_elems, in_elems};
    dev->output = (RtHostCopy){{arena_at(p->offset[p->act[p->logits]]), classes}, 0, classes,
                               classes};
    generate_one(&G);
  } else {
    generate_split(&G, p->needs_grad);
  }
  t->instr_step[p->n_instrs] = plan->n_steps;
  for (int d = 0; d < devices; d++) {
    fclose(t->src_files[d]);
    t->src_files[d] = NULL;
    t->source[d] = text[d];
    plan->dev[d].scratch = G.scratch[d];
  }
  if (!G.ok) {
    cuda_train_free(t);
    return false;
  }
  return true;
}

void cuda_train_free(CudaTrainPlan *t) {
  rt_plan_free(&t->plan);
  for (int d = 0; d < MAX_DEVICES; d++) {
    if (t->src_files[d])
      fclose(t->src_files[d]);
    free(t->source[d]);
  }
  split_free(t->split);
  train_program_free(t->prog);
  weights_free(t->layout);
  free(t->param_offset);
  free(t->instr_step);
  memset(t, 0, sizeof *t);
}
