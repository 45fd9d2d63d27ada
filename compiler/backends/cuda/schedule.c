// CUDA code generation, the scheduling half: the compiled graph becomes the plan (its
// steps, buffers and weight slices, runtime/alexrt_cuda.h) and one translation unit per
// device, with one kernel per node that has work there; render.c writes each kernel's
// source, with every shape, stride, channel range and LRN/pool constant compiled in.
//
// Stages: a node's stages become a chain of __device__ functions, stageK(p, img, c, y,
// x) returning stage K's value at one position, each calling the stage before it at the
// positions it needs: a pool calls the LRN at each window position, the LRN calls the
// ReLU at each window channel, the ReLU calls stage 0. They are the semantics every
// conv scheme's epilogue shares.
//
// Buffers follow the reference executor's View exactly: a device holds channels
// [held.begin, held.end) of a tensor, stored image-major, then held channel, then
// plane, at arena offset `offset * batch` (the memory plan is per image). Weights are
// the device's slice of each tensor (rows of the head's channel range), so kernel
// FIRST_KERNEL constants rebase channel numbers into the slice.
//
// fc layers: the GEMM runs in cuBLAS (a plan step), written straight into the output
// buffer. Its bias and ReLU are the GEMM's epilogue (cublasLt's bias and ReLU-bias
// epilogues) when nothing else follows them (dropout is the identity at inference), so
// the node has no kernel; otherwise the node's kernel is its epilogue, reading and
// rewriting the same elements.
//
// conv layers (--conv, per layer; cuda.h lists the schemes):
//   gemm (the default): per chunk of images, an im2col kernel writes the column matrix
//     of every group the device computes into scratch, one cuBLAS SGEMM per group
//     multiplies it by that group's weights into a channel-major conv output (also
//     scratch), and the node's kernel is the epilogue: stage 0 reads that output and
//     adds the bias, the fused stages follow. Each conv output is computed once; the
//     epilogue only recomputes the cheap ReLU/LRN at a pool's overlapping windows.
//   direct: one thread per output element, stage 0 the direct convolution, recomputed
//     where fused stages need it (about 5 x 2.25 times under an LRN and a 3x3/2 pool).
//   implicit: a tiled implicit-GEMM kernel (implicit.c) replaces im2col + cuBLAS,
//     writing the same scratch for the same epilogue; a conv with only a ReLU (or
//     nothing) after it is that one kernel, bias and ReLU included.
//   fused: the whole node in one kernel (implicit.c): a block computes the conv tile
//     its output tile needs into shared memory, then the stages read it from there.
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "render.h"

#define WEIGHT_ALIGN 64  // elements (256 bytes) between weight slices

void cuda_kernel_name(const Graph *g, int node, char *buf, size_t size) {
  snprintf(buf, size, "k%02d_%s", node, g->nodes[node].name);
  for (char *s = buf + 1; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
      *s = '_';
}



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
  // A thread per (image, input channel, pixel), each writing its K x K taps.
  im.work = cg.groups * (cg.kk / ((int64_t)n->conv.kernel * n->conv.kernel)) * P;
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
// kernel that writes the output, or the fused kernel): a block of CUDA_IMPLICIT_THREADS
// with `smem` bytes of dynamic shared memory, arguments input, weights, bias (if any),
// output.
static void add_whole_conv_step(RtPlan *p, const Graph *g, int i, int d, const char *kname,
                                int64_t work, int smem, int64_t w_at, int64_t b_at) {
  const Node *n = &g->nodes[i], *in = &g->nodes[n->inputs[0]];
  RtStep k = step(RT_STEP_KERNEL, d, n, kname);
  k.work = work;
  k.block = CUDA_IMPLICIT_THREADS;
  k.smem = smem;
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
    add_whole_conv_step(p, g, i, d, kname, cuda_implicit_work(n, d, prec), 0, w_at, b_at);
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
  add_whole_conv_step(p, g, i, d, kname, cuda_fused_work(n, d, prec),
                      cuda_fused_tile(n, d, prec).smem, w_at, b_at);
  return true;
}
static bool plan_fc_gemm(const Graph *g, int i, int d, FILE *src, RtPlan *p, int64_t w_at,
                         int64_t b_at, const char *kname, RtPrecision prec) {
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
  s.epilogue = fc_gemm_epilogue(n);
  s.bias = weight(b_at);
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
    if (!plan_fc_gemm(g, i, d, src, p, w_at, b_at, kname, o->precision))
      return false;
    if (fc_gemm_only(n))
      return true;  // nothing left for a kernel
  }
  Ctx x = {g, n, i, d, src, false, false, false};
  if (!emit_node(&x, kname))
    return false;
  fputc('\n', src);
  RtStep s = step(RT_STEP_KERNEL, d, n, kname);
  s.work = n->op == OP_SOFTMAX ? CUDA_WARP  // a warp per image (render.c)
                               : range_len(pl->stage[n->n_epilogue]) * shape_plane(n->out);
  for (int j = 0; j < n->n_inputs && !reads_own_output(n); j++) {
    // A device's share of a concat may read none of one input (a branch kept on another
    // device), which then has no buffer here: the kernel never touches it, so the
    // output's own address stands in for it.
    int64_t offset = g->nodes[n->inputs[j]].place[d].offset;
    s.args[s.n_args++] = arena(offset >= 0 ? offset : pl->offset, 0);
  }
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

// Images per chunk: as many as the scratch budget holds (at least one), rounded down to
// a multiple of CUDA_CHUNK_ALIGN (8) where that many fit. The conv GEMMs' leading
// dimensions and operand offsets are pixels x images of the chunk, and the pixel counts
// are often odd (AlexNet's 3025, 729, 169): 34 images made every conv GEMM's leading
// dimension 2 floats past a multiple of 4. A multiple of 8 images makes each of them,
// and each operand's start in scratch, a multiple of 16 bytes in every full chunk, for
// fp32 and for bf16 (2-byte elements) alike, which cuBLAS's vectorized kernels want.
// A batch that is a multiple of 8 then has no unaligned chunk at all.
static int64_t images_per_chunk(int64_t scratch_per_image, const CudaOptions *o) {
  int64_t chunk = o->scratch_bytes / (int64_t)sizeof(float) / scratch_per_image;
  if (chunk >= CUDA_CHUNK_ALIGN)
    chunk -= chunk % CUDA_CHUNK_ALIGN;
  if (o->max_chunk > 0 && chunk > o->max_chunk)  // tests: short chunks on small batches
    chunk = o->max_chunk;
  return chunk > 1 ? chunk : 1;
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
    if (p->dev[d].scratch)
      p->dev[d].chunk = images_per_chunk(p->dev[d].scratch, &o);
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
