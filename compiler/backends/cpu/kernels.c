// The CPU target's kernels, built as LLVM IR with the C API: one function per node and
// logical device, every shape, channel range and constant compiled in.
//
// A kernel runs work items [begin, end). For a node with spatial output an item is one
// image and one band of output rows; the node's stages (a fused conv, ReLU, LRN, pool)
// are run one after another over that band, each into a band buffer in the thread's
// scratch, so what a stage writes is still in cache when the next reads it, and only
// the last stage writes the arena. A band of pooled rows needs one conv row more than
// it advances (the pool windows overlap): that row is recomputed, never exchanged.
//
// Convolutions are implicit GEMMs in the BLIS manner without an im2col matrix: the
// band's input rows are copied, zero-padded, into scratch; a micro-kernel keeps an
// nv x nw block of accumulators in vector registers (nv vectors of output channels
// times nw output pixels of a row) and, for each input channel and tap, loads nv weight
// vectors from the packed panel and broadcasts nw input pixels. Weights are packed once
// at load (runtime/cpu.c) as [block][tap][channel in block]. A fully connected layer is
// the same micro-kernel with images in place of pixels.
//
// Names that reach LLVM (function symbols) are made of [A-Za-z0-9_] by the caller.
#include <math.h>
#include <string.h>

#include <llvm-c/Core.h>

#include "backend.h"

// ---------------------------------------------------------------- IR building helpers

typedef struct {
  LLVMContextRef ctx;
  LLVMModuleRef m;
  LLVMBuilderRef b;
  LLVMTypeRef i1, i64, f32, f64, pf32, vec, pvec;
  LLVMValueRef fn;
  LLVMBasicBlockRef entry;  // allocas go here, so mem2reg can promote them
  int vw;
} Cg;

static LLVMValueRef k64(Cg *c, int64_t v) { return LLVMConstInt(c->i64, (unsigned long long)v, 1); }
static LLVMValueRef kf(Cg *c, double v) { return LLVMConstReal(c->f32, v); }
static LLVMValueRef add(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(c->b, a, b, ""); }
static LLVMValueRef sub(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWSub(c->b, a, b, ""); }
static LLVMValueRef mul(Cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWMul(c->b, a, b, ""); }
static LLVMValueRef addk(Cg *c, LLVMValueRef a, int64_t k) { return k ? add(c, a, k64(c, k)) : a; }
static LLVMValueRef mulk(Cg *c, LLVMValueRef a, int64_t k) { return k == 1 ? a : mul(c, a, k64(c, k)); }

static LLVMValueRef smin(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static LLVMValueRef smax(Cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b, "");
}

// &p[i] for a float pointer.
static LLVMValueRef at(Cg *c, LLVMValueRef p, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(c->b, c->f32, p, &i, 1, "");
}
static LLVMValueRef atk(Cg *c, LLVMValueRef p, int64_t i) { return i ? at(c, p, k64(c, i)) : p; }

static LLVMValueRef load(Cg *c, LLVMValueRef p) { return LLVMBuildLoad2(c->b, c->f32, p, ""); }
static void store(Cg *c, LLVMValueRef v, LLVMValueRef p) { LLVMBuildStore(c->b, v, p); }

// Vectors are loaded and stored at float alignment: panels and rows are not padded to
// the vector width.
static LLVMValueRef vload(Cg *c, LLVMValueRef p) {
  LLVMValueRef v = LLVMBuildLoad2(c->b, c->vec, LLVMBuildBitCast(c->b, p, c->pvec, ""), "");
  LLVMSetAlignment(v, 4);
  return v;
}
static void vstore(Cg *c, LLVMValueRef v, LLVMValueRef p) {
  LLVMValueRef s = LLVMBuildStore(c->b, v, LLVMBuildBitCast(c->b, p, c->pvec, ""));
  LLVMSetAlignment(s, 4);
}

static LLVMValueRef splat(Cg *c, LLVMValueRef scalar) {
  LLVMValueRef v = LLVMBuildInsertElement(c->b, LLVMGetUndef(c->vec), scalar,
                                          LLVMConstInt(LLVMInt32TypeInContext(c->ctx), 0, 0), "");
  LLVMValueRef mask = LLVMConstNull(LLVMVectorType(LLVMInt32TypeInContext(c->ctx), c->vw));
  return LLVMBuildShuffleVector(c->b, v, LLVMGetUndef(c->vec), mask, "");
}

static LLVMValueRef intrinsic(Cg *c, const char *name, LLVMTypeRef type, LLVMValueRef *args,
                              unsigned n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(c->m, id, &type, 1);
  return LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, &type, 1), f, args, n, "");
}

static LLVMValueRef fma_v(Cg *c, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc) {
  LLVMValueRef args[] = {a, b, acc};
  return intrinsic(c, "llvm.fma", c->vec, args, 3);
}

// x > 0 ? x : 0, as the reference has it (a NaN becomes 0).
static LLVMValueRef relu(Cg *c, LLVMValueRef x) {
  LLVMValueRef zero = LLVMConstNull(LLVMTypeOf(x));
  return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealOGT, x, zero, ""), x, zero, "");
}

static LLVMValueRef entry_alloca(Cg *c, LLVMTypeRef t, const char *name) {
  LLVMBuilderRef b = LLVMCreateBuilderInContext(c->ctx);
  LLVMValueRef first = LLVMGetFirstInstruction(c->entry);
  if (first)
    LLVMPositionBuilderBefore(b, first);
  else
    LLVMPositionBuilderAtEnd(b, c->entry);
  LLVMValueRef a = LLVMBuildAlloca(b, t, name);
  LLVMSetAlignment(a, 64);
  LLVMDisposeBuilder(b);
  return a;
}

// A float array on the stack, as a float pointer.
static LLVMValueRef stack_floats(Cg *c, int64_t n, const char *name) {
  LLVMValueRef a = entry_alloca(c, LLVMArrayType(c->f32, (unsigned)n), name);
  LLVMValueRef zero = k64(c, 0), idx[] = {zero, zero};
  return LLVMBuildInBoundsGEP2(c->b, LLVMArrayType(c->f32, (unsigned)n), a, idx, 2, "");
}

// for (i = lo; i < hi; i++): loop_begin returns i; the body follows; loop_end closes.
typedef struct {
  LLVMBasicBlockRef header, exit;
  LLVMValueRef i;
} Loop;

static LLVMValueRef loop_begin(Cg *c, Loop *l, LLVMValueRef lo, LLVMValueRef hi, const char *name) {
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  l->header = LLVMAppendBasicBlockInContext(c->ctx, c->fn, name);
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "body");
  l->exit = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "after");
  LLVMBuildBr(c->b, l->header);
  LLVMPositionBuilderAtEnd(c->b, l->header);
  l->i = LLVMBuildPhi(c->b, c->i64, name);
  LLVMAddIncoming(l->i, &lo, &pre, 1);
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, l->i, hi, ""), body, l->exit);
  LLVMPositionBuilderAtEnd(c->b, body);
  return l->i;
}

static void loop_end(Cg *c, Loop *l) {
  LLVMValueRef next = addk(c, l->i, 1);
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMBuildBr(c->b, l->header);
  LLVMAddIncoming(l->i, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(c->b, l->exit);
}

// ---------------------------------------------------------------- tensors in memory

// Where a stage reads or writes: element (c, y, x) of one image is at
// base + (c - c0) * cs + (y - y0) * w + x. For an arena buffer y0 is 0 and cs the plane;
// for a band buffer y0 is the band's first row and cs its rows times w.
typedef struct {
  LLVMValueRef base, y0;
  int64_t c0, cs, w;
} Acc;

static LLVMValueRef acc_at(Cg *c, const Acc *a, LLVMValueRef ch, LLVMValueRef y, LLVMValueRef x) {
  LLVMValueRef i = add(c, mulk(c, addk(c, ch, -a->c0), a->cs),
                       add(c, mulk(c, sub(c, y, a->y0), a->w), x));
  return at(c, a->base, i);
}

// Node `node`'s buffer on device d, image `img`, from the memory plan.
static Acc arena_acc(Cg *c, LLVMValueRef arena, LLVMValueRef batch, LLVMValueRef img,
                     const Node *node, int d) {
  const Placement *p = &node->place[d];
  int64_t plane = shape_plane(node->out);
  LLVMValueRef off = add(c, mulk(c, batch, p->offset), mulk(c, img, range_len(p->held) * plane));
  return (Acc){at(c, arena, off), k64(c, 0), p->held.begin, plane, node->out.w};
}

// ---------------------------------------------------------------- a node's stages

// One stage of a node on one device: its op, shapes and the channels it computes. A
// ReLU or dropout right after a conv or fc is folded into it (applied in registers).
typedef struct {
  const Node *op;
  Shape in, out;
  Range r;
  bool relu;
  int64_t max_rows;  // rows of the largest band it produces
  int64_t buf;       // scratch offset of its band buffer (all but the last stage)
} Stage;

typedef struct {
  const Graph *g;
  const Node *node;
  int d;
  Stage st[MAX_EPILOGUE + 1];
  int n;
  int64_t band;     // output rows per work item
  int64_t chunks;   // bands per image
  int64_t in_rows;  // conv head: rows of padded input the largest band reads
  int64_t scratch;  // floats
} Plan;

static bool folds(OpKind op) { return op == OP_RELU || op == OP_DROPOUT; }

static void plan_stages(const Graph *g, const Node *n, int d, Plan *p) {
  *p = (Plan){.g = g, .node = n, .d = d};
  Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  for (int k = 0; k <= n->n_epilogue; k++) {
    const Node *op = node_stage(n, k);
    Shape out = node_stage_shape(n, k);
    Range r = n->place[d].stage[k];
    Stage *prev = p->n ? &p->st[p->n - 1] : NULL;
    if (prev && folds(op->op) && (prev->op->op == OP_CONV || prev->op->op == OP_FC)) {
      prev->relu |= op->op == OP_RELU;
      if (k == n->n_epilogue)
        prev->r = r;  // the last stage writes exactly the node's output range
    } else if (prev && op->op == OP_DROPOUT) {
      if (k == n->n_epilogue)
        prev->r = r;  // inference: dropout is the identity
    } else {
      p->st[p->n++] = (Stage){.op = op, .in = in, .out = out, .r = r};
    }
    in = out;
  }
}

// Rows of stage k's output that rows [lo, hi) of stage k+1's output need.
static int64_t rows_needed(const Stage *next, int64_t rows) {
  if (next->op->op != OP_MAXPOOL)
    return rows;
  int64_t need = (rows - 1) * next->op->pool.stride + next->op->pool.kernel;
  return need < next->in.h ? need : next->in.h;
}

static bool has_pool(const Plan *p) {
  for (int k = 1; k < p->n; k++)
    if (p->st[k].op->op == OP_MAXPOOL)
      return true;
  return false;
}

static bool has_lrn(const Plan *p) {
  for (int k = 1; k < p->n; k++)
    if (p->st[k].op->op == OP_LRN)
      return true;
  return false;
}

// Bands: one output row per item, unless a pool's overlapping windows would make every
// band recompute conv rows; then a few bands per image (an even number, so that two
// threads share a single image evenly), at most 7 pooled rows each (one conv row in 15
// recomputed).
static void plan_bands(Plan *p) {
  int64_t h = p->st[p->n - 1].out.h;
  if (p->st[0].op->op == OP_CONV && !has_lrn(p)) {
    // Two bands per image: each block's weight panel serves half an image of rows
    // from cache (one band per row would stream every panel from memory per row).
    p->band = (h + 1) / 2;
  } else if (has_pool(p) && p->st[0].op->op == OP_CONV) {
    int64_t chunks = 2 * ((h + 13) / 14);
    p->band = (h + chunks - 1) / chunks;
  } else {
    p->band = 1;
  }
  p->chunks = (h + p->band - 1) / p->band;
  p->st[p->n - 1].max_rows = p->band;
  for (int k = p->n - 2; k >= 0; k--)
    p->st[k].max_rows = rows_needed(&p->st[k + 1], p->st[k + 1].max_rows);
  const Stage *head = &p->st[0];
  if (head->op->op == OP_CONV)
    p->in_rows = (head->max_rows - 1) * head->op->conv.stride + head->op->conv.kernel;
}

// The weights of node n as `blocks` panels of k x width floats and width biases each.
static void describe_pack(const Node *n, int64_t k, int width, int64_t blocks, CpuKernelInfo *info) {
  RtCpuPack *pk = &info->pack;
  info->has_pack = true;
  snprintf(pk->weight, sizeof pk->weight, "%s.weight", n->name);
  bool bias = n->op == OP_CONV ? n->conv.bias : n->fc.bias;
  if (bias)
    snprintf(pk->bias, sizeof pk->bias, "%s.bias", n->name);
  // The weight's shape as PyTorch has it: (out, in/groups, kh, kw) or (out, in).
  if (n->op == OP_CONV) {
    pk->rank = 4;
    pk->dims[0] = n->conv.out, pk->dims[1] = k / (n->conv.kernel * n->conv.kernel);
    pk->dims[2] = pk->dims[3] = n->conv.kernel;
  } else {
    pk->rank = 2;
    pk->dims[0] = n->fc.out, pk->dims[1] = k;
  }
  pk->k = k;
  pk->width = width;
  pk->blocks = (int)blocks;
  pk->oc_begin = xcalloc(blocks, sizeof *pk->oc_begin);
  pk->n_oc = xcalloc(blocks, sizeof *pk->n_oc);
}

// ---------------------------------------------------------------- convolution

// The input channels a conv computing channels r reads: whole groups.
static Range conv_inputs(const Stage *s) {
  const ConvAttrs *a = &s->op->conv;
  int64_t ipg = s->in.c / a->groups, opg = a->out / a->groups;
  return (Range){s->r.begin / opg * ipg, ((s->r.end - 1) / opg + 1) * ipg};
}

// The conv's output channels on this device, cut at group boundaries (a register block
// reads one group's input channels) into blocks of nv vectors: `full` whole blocks
// from oc, then one of `rem` channels if rem > 0. Blocks are numbered from `block`. A
// segment stands for `count` consecutive groups cut alike (group + t, oc + t * opg,
// block + t * blocks per group): code is generated once for them, whatever the groups.
typedef struct {
  int64_t group, oc, full, rem, block, count;
  int nv;
} ConvSegment;

static int64_t blocks_of(const ConvSegment *g) { return g->full + (g->rem > 0); }

// At most three segments: a partial first group, the whole ones, a partial last one.
static int conv_segments(const Stage *s, int vw, ConvSegment out[3]) {
  const ConvAttrs *a = &s->op->conv;
  int64_t opg = a->out / a->groups, block = 0;
  int n = 0;
  for (int64_t oc = s->r.begin; oc < s->r.end;) {
    int64_t group = oc / opg, end = (group + 1) * opg < s->r.end ? (group + 1) * opg : s->r.end;
    int nv = end - oc > vw ? 2 : 1;
    ConvSegment g = {group, oc, (end - oc) / (nv * vw), (end - oc) % (nv * vw), block, 1, nv};
    ConvSegment *last = n ? &out[n - 1] : NULL;
    if (last && oc % opg == 0 && end - oc == opg && last->oc % opg == 0 &&
        last->full == g.full && last->rem == g.rem && last->nv == g.nv)
      last->count++;  // another whole group like the last
    else
      out[n++] = g;
    block += blocks_of(&g);
    oc = end;
  }
  return n;
}

// Accumulator columns (pixels) per block: what fits in the registers beside nv weight
// vectors and the broadcasts, balanced over the row (55 = 5 x 11 rather than 4 x 13 + 3).
// With AVX-512's 32 registers, 8 are left free: LLVM's scheduler hoists broadcasts, and
// 26 accumulators (13-pixel rows) spilled; 24 at most ran conv3-5 about 15% faster
// (bench, batch 16). AVX2's 16 registers are best with 10 accumulators (measured too).
static int64_t conv_nw(int64_t width, int nv, int registers) {
  int64_t most = (registers - (registers >= 32 ? 8 : 6)) / nv;
  if (most < 1)
    most = 1;
  int64_t pieces = (width + most - 1) / most;
  return (width + pieces - 1) / pieces;
}

// Copies input rows [y_in, y_in + rows) of channels `in` into scratch, zero-padded:
// scratch channel c, row r, column x holds input (in.begin + c, y_in + r, x - left pad),
// each row followed by the right pad (which the last windows of `pad: same` read).
// Floats in a row of the conv's padded input band: left pad, the input row, right pad.
static int64_t conv_padded_width(const Stage *s) {
  return s->op->conv.pad.left + s->in.w + s->op->conv.pad.right;
}

static void conv_copy_input(Cg *c, const Stage *s, const Acc *src, LLVMValueRef pad_buf,
                            int64_t row_stride, int64_t chan_stride, LLVMValueRef y_in,
                            LLVMValueRef rows) {
  Range in = conv_inputs(s);
  int64_t left = s->op->conv.pad.left, right = s->op->conv.pad.right, w = s->in.w;
  LLVMValueRef zero8 = LLVMConstInt(LLVMInt8TypeInContext(c->ctx), 0, 0);
  Loop lc, lr;
  LLVMValueRef ch = loop_begin(c, &lc, k64(c, in.begin), k64(c, in.end), "ic_copy");
  LLVMValueRef dst_c = at(c, pad_buf, mulk(c, addk(c, ch, -in.begin), chan_stride));
  LLVMValueRef r = loop_begin(c, &lr, k64(c, 0), rows, "row_copy");
  LLVMValueRef dst = at(c, dst_c, mulk(c, r, row_stride));
  LLVMValueRef iy = add(c, y_in, r);
  LLVMValueRef inside = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, iy, k64(c, 0), ""),
                                     LLVMBuildICmp(c->b, LLVMIntSLT, iy, k64(c, s->in.h), ""), "");
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "in_image");
  LLVMBasicBlockRef outside = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "padding_row");
  LLVMBasicBlockRef next = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "row_copied");
  LLVMBuildCondBr(c->b, inside, then, outside);
  LLVMPositionBuilderAtEnd(c->b, then);
  if (left)
    LLVMBuildMemSet(c->b, dst, zero8, k64(c, left * 4), 4);
  if (right)
    LLVMBuildMemSet(c->b, atk(c, dst, left + w), zero8, k64(c, right * 4), 4);
  LLVMBuildMemCpy(c->b, atk(c, dst, left), 4, acc_at(c, src, ch, iy, k64(c, 0)), 4, k64(c, w * 4));
  LLVMBuildBr(c->b, next);
  LLVMPositionBuilderAtEnd(c->b, outside);
  LLVMBuildMemSet(c->b, dst, zero8, k64(c, row_stride * 4), 4);
  LLVMBuildBr(c->b, next);
  LLVMPositionBuilderAtEnd(c->b, next);
  loop_end(c, &lr);
  loop_end(c, &lc);
}

// The micro-kernel: nv x nw accumulators for output row y, pixels [x0, x0 + nw) of
// block b; then bias, ReLU, and the store of the block's real channels. Panel rows are
// `width` floats (two vectors; a one-vector block uses the first).
static void conv_micro(Cg *c, const Stage *s, const ConvSegment *b, LLVMValueRef ic0,
                       LLVMValueRef oc,
                       int64_t n_oc, int64_t nw, LLVMValueRef x0,
                       LLVMValueRef yrel, LLVMValueRef y, LLVMValueRef pad_buf,
                       int64_t row_stride, int64_t chan_stride, LLVMValueRef w_panel,
                       LLVMValueRef w_bias, const Acc *dst, LLVMValueRef tile, int64_t width) {
  const ConvAttrs *a = &s->op->conv;
  int64_t k = a->kernel, stride = a->stride, ipg = s->in.c / a->groups;
  LLVMValueRef accs[2][32];
  for (int v = 0; v < b->nv; v++)
    for (int64_t j = 0; j < nw; j++) {
      accs[v][j] = entry_alloca(c, c->vec, "acc");
      LLVMBuildStore(c->b, LLVMConstNull(c->vec), accs[v][j]);
    }
  Loop lic, lky;
  LLVMValueRef ic = loop_begin(c, &lic, k64(c, 0), k64(c, ipg), "ic");
  LLVMValueRef ky = loop_begin(c, &lky, k64(c, 0), k64(c, k), "ky");
  LLVMValueRef row = at(c, pad_buf, add(c, mulk(c, add(c, ic, ic0), chan_stride),
                                        add(c, mulk(c, add(c, mulk(c, yrel, stride), ky), row_stride),
                                            mulk(c, x0, stride))));
  LLVMValueRef wrow = at(c, w_panel, mulk(c, add(c, mulk(c, ic, k), ky), k * width));
  for (int64_t kx = 0; kx < k; kx++) {
    LLVMValueRef wv[2];
    for (int v = 0; v < b->nv; v++)
      wv[v] = vload(c, atk(c, wrow, kx * width + v * c->vw));
    for (int64_t j = 0; j < nw; j++) {
      LLVMValueRef xv = splat(c, load(c, atk(c, row, j * stride + kx)));
      for (int v = 0; v < b->nv; v++) {
        LLVMValueRef acc = LLVMBuildLoad2(c->b, c->vec, accs[v][j], "");
        LLVMBuildStore(c->b, fma_v(c, wv[v], xv, acc), accs[v][j]);
      }
    }
  }
  loop_end(c, &lky);
  loop_end(c, &lic);
  // Bias and ReLU in registers, then through a small tile to the NCHW rows.
  for (int v = 0; v < b->nv; v++) {
    LLVMValueRef bias = vload(c, atk(c, w_bias, v * c->vw));
    for (int64_t j = 0; j < nw; j++) {
      LLVMValueRef r = LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, c->vec, accs[v][j], ""), bias, "");
      vstore(c, s->relu ? relu(c, r) : r, atk(c, tile, j * width + v * c->vw));
    }
  }
  Loop ll, lj;
  LLVMValueRef lane = loop_begin(c, &ll, k64(c, 0), k64(c, n_oc), "lane");
  LLVMValueRef ch = add(c, lane, oc);
  LLVMValueRef j = loop_begin(c, &lj, k64(c, 0), k64(c, nw), "px");
  store(c, load(c, at(c, tile, add(c, mulk(c, j, width), lane))),
        acc_at(c, dst, ch, y, add(c, x0, j)));
  loop_end(c, &lj);
  loop_end(c, &ll);
}

// Output rows [lo, hi) of a conv stage: copy the input band, then every block, row and
// run of nw pixels.
static void emit_conv(Cg *c, const Plan *p, const Stage *s, const Acc *src, const Acc *dst,
                      LLVMValueRef lo, LLVMValueRef hi, LLVMValueRef weights, LLVMValueRef scratch,
                      int registers, CpuKernelInfo *info) {
  const ConvAttrs *a = &s->op->conv;
  int64_t stride = a->stride;
  int64_t row_stride = conv_padded_width(s), chan_stride = p->in_rows * row_stride;
  LLVMValueRef pad_buf = scratch;  // scratch starts with the padded input band
  LLVMValueRef y_in = addk(c, mulk(c, lo, stride), -a->pad.top);
  LLVMValueRef rows = addk(c, mulk(c, addk(c, sub(c, hi, lo), -1), stride), a->kernel);
  conv_copy_input(c, s, src, pad_buf, row_stride, chan_stride, y_in, rows);

  ConvSegment segs[3];
  int n = conv_segments(s, c->vw, segs);
  const ConvSegment *end = &segs[n - 1];
  int64_t blocks = end->block + end->count * blocks_of(end);
  int64_t opg = a->out / a->groups, ipg = s->in.c / a->groups, in0 = conv_inputs(s).begin;
  int width = 2 * c->vw;  // panels are two vectors wide; one-vector blocks use half
  int64_t k = (s->in.c / a->groups) * a->kernel * a->kernel;
  describe_pack(p->node, k, width, blocks, info);
  LLVMValueRef tile = stack_floats(c, 32 * width, "tile");
  for (int i = 0; i < n; i++) {
    const ConvSegment *b = &segs[i];
    int64_t bw = b->nv * c->vw, per = blocks_of(b);
    for (int64_t t = 0; t < b->count; t++)
      for (int64_t j = 0; j < per; j++) {
        info->pack.oc_begin[b->block + t * per + j] = b->oc + t * opg + j * bw;
        info->pack.n_oc[b->block + t * per + j] = (int)(j < b->full ? bw : b->rem);
      }
    // Group t of the segment: its scratch input channels, first channel and block.
    Loop lg;
    LLVMValueRef t = loop_begin(c, &lg, k64(c, 0), k64(c, b->count), "group");
    LLVMValueRef ic0 = addk(c, mulk(c, t, ipg), b->group * ipg - in0);
    LLVMValueRef oc_g = addk(c, mulk(c, t, opg), b->oc);
    LLVMValueRef block_g = addk(c, mulk(c, t, per), b->block);
    // Whole blocks in a loop, the partial one after it.
    for (int part = 0; part < 2; part++) {
      int64_t count = part ? (b->rem > 0) : b->full, n_oc = part ? b->rem : bw;
      if (!count)
        continue;
      Loop lb;
      LLVMValueRef j = loop_begin(c, &lb, k64(c, 0), k64(c, count), "block");
      if (part)
        j = k64(c, b->full);
      LLVMValueRef blk = add(c, j, block_g), oc = add(c, mulk(c, j, bw), oc_g);
      LLVMValueRef panel = at(c, weights, mulk(c, blk, k * width));
      LLVMValueRef bias = at(c, weights, addk(c, mulk(c, blk, width), blocks * k * width));
      int64_t nw = conv_nw(s->out.w, b->nv, registers);
      int64_t full = s->out.w / nw, tail = s->out.w % nw;
      Loop ly, lx;
      LLVMValueRef y = loop_begin(c, &ly, lo, hi, "oy");
      LLVMValueRef yrel = sub(c, y, lo);
      LLVMValueRef xb = loop_begin(c, &lx, k64(c, 0), k64(c, full), "ox");
      conv_micro(c, s, b, ic0, oc, n_oc, nw, mulk(c, xb, nw), yrel, y, pad_buf, row_stride,
                 chan_stride, panel, bias, dst, tile, width);
      loop_end(c, &lx);
      if (tail)
        conv_micro(c, s, b, ic0, oc, n_oc, tail, k64(c, full * nw), yrel, y, pad_buf,
                   row_stride, chan_stride, panel, bias, dst, tile, width);
      loop_end(c, &ly);
      loop_end(c, &lb);
    }
    loop_end(c, &lg);
  }
}

// ---------------------------------------------------------------- fully connected

// y[i][oc] for a register block of nb images [i0, i0 + nb) and nv vectors of output
// features: per input feature, nv weight vectors against each image's feature broadcast.
static void fc_micro(Cg *c, const Stage *s, LLVMValueRef x, int64_t x_stride, LLVMValueRef i0,
                     int nv, int64_t nb, LLVMValueRef panel, LLVMValueRef bias, LLVMValueRef tile) {
  int64_t k_in = s->in.c, width = nv * c->vw;
  LLVMValueRef accs[2][32];
  for (int v = 0; v < nv; v++)
    for (int64_t j = 0; j < nb; j++) {
      accs[v][j] = entry_alloca(c, c->vec, "acc");
      LLVMBuildStore(c->b, LLVMConstNull(c->vec), accs[v][j]);
    }
  LLVMValueRef xi = at(c, x, mulk(c, i0, x_stride));
  Loop lk;
  LLVMValueRef k = loop_begin(c, &lk, k64(c, 0), k64(c, k_in), "k");
  LLVMValueRef wv[2];
  for (int v = 0; v < nv; v++)
    wv[v] = vload(c, at(c, panel, addk(c, mulk(c, k, width), v * c->vw)));
  for (int64_t j = 0; j < nb; j++) {
    LLVMValueRef xv = splat(c, load(c, at(c, xi, addk(c, k, j * x_stride))));
    for (int v = 0; v < nv; v++) {
      LLVMValueRef acc = LLVMBuildLoad2(c->b, c->vec, accs[v][j], "");
      LLVMBuildStore(c->b, fma_v(c, wv[v], xv, acc), accs[v][j]);
    }
  }
  loop_end(c, &lk);
  for (int v = 0; v < nv; v++) {
    LLVMValueRef b = vload(c, atk(c, bias, v * c->vw));
    for (int64_t j = 0; j < nb; j++) {
      LLVMValueRef r = LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, c->vec, accs[v][j], ""), b, "");
      vstore(c, s->relu ? relu(c, r) : r, atk(c, tile, j * width + v * c->vw));
    }
  }
}

// The bf16 micro-kernel (AVX512_BF16, one vector of 16 outputs): per chunk of 32 input
// features, each image's chunk is rounded to bf16 pairs in a register (vcvtne2ps2bf16),
// then for each of the 16 pairs vdpbf16ps multiplies the panel's pair vector by the
// image's pair, broadcast, adding both products to the float sums. A last partial chunk
// is read with a mask (the panel holds zeros there; the input must not be read past).
static void fc_micro_bf16(Cg *c, const Stage *s, LLVMValueRef x, int64_t x_stride,
                          LLVMValueRef i0, int64_t nb, LLVMValueRef panel, LLVMValueRef bias,
                          LLVMValueRef tile) {
  int64_t k_in = s->in.c, chunks = rt_cpu_bf16_k(k_in) / 32;
  LLVMTypeRef i32 = LLVMInt32TypeInContext(c->ctx), vi32 = LLVMVectorType(i32, 16);
  LLVMTypeRef i1 = LLVMInt1TypeInContext(c->ctx);
  LLVMValueRef accs[32];
  for (int64_t j = 0; j < nb; j++) {
    accs[j] = entry_alloca(c, c->vec, "acc");
    LLVMBuildStore(c->b, LLVMConstNull(c->vec), accs[j]);
  }
  LLVMValueRef xi = at(c, x, mulk(c, i0, x_stride));
  LLVMModuleRef m = c->m;
  LLVMTypeRef cvt_ty = LLVMFunctionType(LLVMVectorType(LLVMInt16TypeInContext(c->ctx), 32),
                                        (LLVMTypeRef[]){c->vec, c->vec}, 2, 0);
  LLVMValueRef cvt = LLVMGetNamedFunction(m, "llvm.x86.avx512bf16.cvtne2ps2bf16.512");
  if (!cvt)
    cvt = LLVMAddFunction(m, "llvm.x86.avx512bf16.cvtne2ps2bf16.512", cvt_ty);
  LLVMTypeRef dp_ty = LLVMFunctionType(c->vec, (LLVMTypeRef[]){c->vec, vi32, vi32}, 3, 0);
  LLVMValueRef dp = LLVMGetNamedFunction(m, "llvm.x86.avx512bf16.dpbf16ps.512");
  if (!dp)
    dp = LLVMAddFunction(m, "llvm.x86.avx512bf16.dpbf16ps.512", dp_ty);
  // Loads 16 features from p; in the last chunk only the first `valid` (masked).
  int64_t tail = k_in - (chunks - 1) * 32;
  for (int part = 0; part < 2; part++) {  // whole chunks in a loop, then the last one
    bool last = part == 1;
    Loop lk;
    LLVMValueRef kc = last ? k64(c, chunks - 1)
                           : loop_begin(c, &lk, k64(c, 0), k64(c, tail == 32 ? chunks : chunks - 1), "chunk");
    if (last && tail == 32)
      break;
    LLVMValueRef k0 = mulk(c, kc, 32), xv[32];
    for (int64_t j = 0; j < nb; j++) {
      LLVMValueRef halves[2];
      for (int h = 0; h < 2; h++) {
        LLVMValueRef p = at(c, xi, addk(c, k0, j * x_stride + 16 * h));
        if (!last) {
          halves[h] = vload(c, p);
          continue;
        }
        LLVMValueRef bits[16];
        for (int e = 0; e < 16; e++)
          bits[e] = LLVMConstInt(i1, 16 * h + e < tail, 0);
        LLVMValueRef args[] = {LLVMBuildBitCast(c->b, p, c->pvec, ""),
                               LLVMConstInt(i32, 4, 0), LLVMConstVector(bits, 16),
                               LLVMConstNull(c->vec)};
        LLVMTypeRef tys[] = {c->vec, c->pvec};
        unsigned id = LLVMLookupIntrinsicID("llvm.masked.load", 16);
        LLVMValueRef f = LLVMGetIntrinsicDeclaration(m, id, tys, 2);
        halves[h] = LLVMBuildCall2(c->b, LLVMIntrinsicGetType(c->ctx, id, tys, 2), f, args, 4, "");
      }
      LLVMValueRef pair_args[] = {halves[1], halves[0]};  // the second operand fills the low words
      xv[j] = LLVMBuildBitCast(c->b, LLVMBuildCall2(c->b, cvt_ty, cvt, pair_args, 2, ""), vi32, "");
    }
    for (int q = 0; q < 16; q++) {
      LLVMValueRef wp = at(c, panel, mulk(c, addk(c, mulk(c, kc, 16), q), 16));
      LLVMValueRef w = LLVMBuildLoad2(c->b, vi32, LLVMBuildBitCast(c->b, wp, LLVMPointerType(vi32, 0), ""), "");
      LLVMSetAlignment(w, 4);
      LLVMValueRef mask[16];
      for (int e = 0; e < 16; e++)
        mask[e] = LLVMConstInt(i32, q, 0);
      for (int64_t j = 0; j < nb; j++) {
        LLVMValueRef xb = LLVMBuildShuffleVector(c->b, xv[j], LLVMGetUndef(vi32), LLVMConstVector(mask, 16), "");
        LLVMValueRef args[] = {LLVMBuildLoad2(c->b, c->vec, accs[j], ""), w, xb};
        LLVMBuildStore(c->b, LLVMBuildCall2(c->b, dp_ty, dp, args, 3, ""), accs[j]);
      }
    }
    if (!last)
      loop_end(c, &lk);
  }
  LLVMValueRef b = vload(c, bias);
  for (int64_t j = 0; j < nb; j++) {
    LLVMValueRef r = LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, c->vec, accs[j], ""), b, "");
    vstore(c, s->relu ? relu(c, r) : r, atk(c, tile, j * 16));
  }
}

// Copies the tile's nb x lanes results to y[i0 + j][oc + lane].
static void fc_store(Cg *c, LLVMValueRef tile, int64_t width, int64_t nb, LLVMValueRef lanes,
                     LLVMValueRef y, int64_t y_stride, LLVMValueRef i0, LLVMValueRef oc) {
  Loop ll, lj;
  LLVMValueRef lane = loop_begin(c, &ll, k64(c, 0), lanes, "lane");
  LLVMValueRef j = loop_begin(c, &lj, k64(c, 0), k64(c, nb), "img");
  store(c, load(c, at(c, tile, add(c, mulk(c, j, width), lane))),
        at(c, y, add(c, mulk(c, add(c, i0, j), y_stride), add(c, oc, lane))));
  loop_end(c, &lj);
  loop_end(c, &ll);
}

// An fc node: items are blocks of nv vectors of output features, each over the whole
// batch, so a block's weights come from memory once per batch. The batch goes in
// register blocks of nb images, then 8, 4, 2 and 1 for what is left.
static void emit_fc(Cg *c, const Plan *p, LLVMValueRef arena, LLVMValueRef weights,
                    LLVMValueRef batch, LLVMValueRef begin, LLVMValueRef end, int registers,
                    bool bf16, CpuKernelInfo *info) {
  const Stage *s = &p->st[0];
  const Node *in = &p->g->nodes[p->node->inputs[0]];
  Range in_held = in->place[p->d].held, out_held = p->node->place[p->d].held;
  bf16 = bf16 && c->vw == 16;
  int nv = !bf16 && range_len(s->r) > c->vw ? 2 : 1;
  int64_t width = nv * c->vw, k_in = s->in.c, blocks = (range_len(s->r) + width - 1) / width;
  describe_pack(p->node, k_in, (int)width, blocks, info);
  info->pack.bf16 = bf16;
  int64_t rows = bf16 ? rt_cpu_bf16_k(k_in) / 2 : k_in;  // panel rows: features or pairs
  for (int64_t b = 0; b < blocks; b++) {
    info->pack.oc_begin[b] = s->r.begin + b * width;
    int64_t left = s->r.end - info->pack.oc_begin[b];
    info->pack.n_oc[b] = (int)(left < width ? left : width);
  }
  info->items = blocks;
  info->per_image = false;
  int64_t nb = bf16 ? 12 : (registers - 6) / nv;  // bf16: sums, converted inputs, a panel row
  // x[i][k] and y[i][oc], the features in whole-tensor coordinates.
  LLVMValueRef x = at(c, arena, addk(c, mulk(c, batch, in->place[p->d].offset), -in_held.begin));
  LLVMValueRef y = at(c, arena, addk(c, mulk(c, batch, p->node->place[p->d].offset), -out_held.begin));
  LLVMValueRef tile = stack_floats(c, 32 * width, "tile");
  Loop lb;
  LLVMValueRef blk = loop_begin(c, &lb, begin, end, "block");
  LLVMValueRef oc = addk(c, mulk(c, blk, width), s->r.begin);
  LLVMValueRef lanes = smin(c, k64(c, width), sub(c, k64(c, s->r.end), oc));
  LLVMValueRef panel = at(c, weights, mulk(c, blk, rows * width));
  LLVMValueRef bias = at(c, weights, addk(c, mulk(c, blk, width), blocks * rows * width));
  LLVMValueRef done = k64(c, 0);
  int64_t sizes[] = {nb, 8, 4, 2, 1};
  for (int k = 0; k < 5; k++) {
    if (k && sizes[k] >= nb)
      continue;
    int64_t n = sizes[k];
    Loop li;
    LLVMValueRef count = LLVMBuildSDiv(c->b, sub(c, batch, done), k64(c, n), "");
    LLVMValueRef ib = loop_begin(c, &li, k64(c, 0), count, "images");
    LLVMValueRef i0 = add(c, done, mulk(c, ib, n));
    if (bf16)
      fc_micro_bf16(c, s, x, range_len(in_held), i0, n, panel, bias, tile);
    else
      fc_micro(c, s, x, range_len(in_held), i0, nv, n, panel, bias, tile);
    fc_store(c, tile, width, n, lanes, y, range_len(out_held), i0, oc);
    loop_end(c, &li);
    done = add(c, done, mulk(c, count, n));
  }
  loop_end(c, &lb);
}

// ---------------------------------------------------------------- per-pixel stages

// The seed's LRN over rows [lo, hi): b = a / (k + alpha * sum of squares)^beta over the
// `size` channels around, clipped at the channel group's edges. Squares are summed into
// a row buffer channel by channel, so the innermost loops run along the row (vectorised).
static void emit_lrn(Cg *c, const Stage *s, const Acc *src, const Acc *dst, LLVMValueRef lo,
                     LLVMValueRef hi) {
  const LrnAttrs *a = &s->op->lrn;
  int64_t per_group = s->in.c / a->groups, half = a->size / 2, w = s->out.w;
  LLVMValueRef sums = stack_floats(c, w, "sums");
  Loop lc, ly, lj, lx, lx2;
  LLVMValueRef ch = loop_begin(c, &lc, k64(c, s->r.begin), k64(c, s->r.end), "c");
  LLVMValueRef g0 = mulk(c, LLVMBuildSDiv(c->b, ch, k64(c, per_group), ""), per_group);
  LLVMValueRef jlo = smax(c, addk(c, ch, -half), g0);
  LLVMValueRef jhi = smin(c, addk(c, ch, half), addk(c, g0, per_group - 1));
  LLVMValueRef y = loop_begin(c, &ly, lo, hi, "y");
  LLVMBuildMemSet(c->b, sums, LLVMConstInt(LLVMInt8TypeInContext(c->ctx), 0, 0), k64(c, w * 4), 4);
  LLVMValueRef j = loop_begin(c, &lj, jlo, addk(c, jhi, 1), "j");
  LLVMValueRef row = acc_at(c, src, j, y, k64(c, 0));
  LLVMValueRef x = loop_begin(c, &lx, k64(c, 0), k64(c, w), "x");
  LLVMValueRef v = load(c, at(c, row, x)), sp = at(c, sums, x);
  store(c, LLVMBuildFAdd(c->b, load(c, sp), LLVMBuildFMul(c->b, v, v, ""), ""), sp);
  loop_end(c, &lx);
  loop_end(c, &lj);
  LLVMValueRef in_row = acc_at(c, src, ch, y, k64(c, 0)), out_row = acc_at(c, dst, ch, y, k64(c, 0));
  x = loop_begin(c, &lx2, k64(c, 0), k64(c, w), "x");
  LLVMValueRef d = LLVMBuildFAdd(c->b, kf(c, a->k),
                                 LLVMBuildFMul(c->b, kf(c, a->alpha), load(c, at(c, sums, x)), ""), "");
  LLVMValueRef den;
  if (a->beta == 0.75) {  // d^0.75 = sqrt(d) * sqrt(sqrt(d)): no pow call, vectorises
    LLVMValueRef r = intrinsic(c, "llvm.sqrt", c->f32, &d, 1);
    LLVMValueRef rr = intrinsic(c, "llvm.sqrt", c->f32, &r, 1);
    den = LLVMBuildFMul(c->b, r, rr, "");
  } else {
    LLVMValueRef args[] = {d, kf(c, a->beta)};
    den = intrinsic(c, "llvm.pow", c->f32, args, 2);
  }
  store(c, LLVMBuildFDiv(c->b, load(c, at(c, in_row, x)), den, ""), at(c, out_row, x));
  loop_end(c, &lx2);
  loop_end(c, &ly);
  loop_end(c, &lc);
}

// Max-pooling rows [lo, hi): windows clipped to the input (padding never wins), as in
// the reference. Reads clamp their coordinates and discard what falls outside.
static void emit_pool(Cg *c, const Stage *s, const Acc *src, const Acc *dst, LLVMValueRef lo,
                      LLVMValueRef hi) {
  const PoolAttrs *a = &s->op->pool;
  Loop lc, ly, lx;
  LLVMValueRef ch = loop_begin(c, &lc, k64(c, s->r.begin), k64(c, s->r.end), "c");
  LLVMValueRef y = loop_begin(c, &ly, lo, hi, "y");
  LLVMValueRef x = loop_begin(c, &lx, k64(c, 0), k64(c, s->out.w), "x");
  LLVMValueRef m = LLVMConstReal(c->f32, -INFINITY);
  for (int ky = 0; ky < a->kernel; ky++) {
    LLVMValueRef iy = addk(c, mulk(c, y, a->stride), ky - a->pad.top);
    LLVMValueRef vy = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, iy, k64(c, 0), ""),
                                   LLVMBuildICmp(c->b, LLVMIntSLT, iy, k64(c, s->in.h), ""), "");
    LLVMValueRef iyc = smin(c, smax(c, iy, k64(c, 0)), k64(c, s->in.h - 1));
    for (int kx = 0; kx < a->kernel; kx++) {
      LLVMValueRef ix = addk(c, mulk(c, x, a->stride), kx - a->pad.left);
      LLVMValueRef vx = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, ix, k64(c, 0), ""),
                                     LLVMBuildICmp(c->b, LLVMIntSLT, ix, k64(c, s->in.w), ""), "");
      LLVMValueRef ixc = smin(c, smax(c, ix, k64(c, 0)), k64(c, s->in.w - 1));
      LLVMValueRef v = load(c, acc_at(c, src, ch, iyc, ixc));
      LLVMValueRef take = LLVMBuildAnd(c->b, LLVMBuildAnd(c->b, vy, vx, ""),
                                       LLVMBuildFCmp(c->b, LLVMRealOGT, v, m, ""), "");
      m = LLVMBuildSelect(c->b, take, v, m, "");
    }
  }
  store(c, m, acc_at(c, dst, ch, y, x));
  loop_end(c, &lx);
  loop_end(c, &ly);
  loop_end(c, &lc);
}

static void emit_relu(Cg *c, const Stage *s, const Acc *src, const Acc *dst, LLVMValueRef lo,
                      LLVMValueRef hi) {
  Loop lc, ly, lx;
  LLVMValueRef ch = loop_begin(c, &lc, k64(c, s->r.begin), k64(c, s->r.end), "c");
  LLVMValueRef y = loop_begin(c, &ly, lo, hi, "y");
  LLVMValueRef x = loop_begin(c, &lx, k64(c, 0), k64(c, s->out.w), "x");
  store(c, relu(c, load(c, acc_at(c, src, ch, y, x))), acc_at(c, dst, ch, y, x));
  loop_end(c, &lx);
  loop_end(c, &ly);
  loop_end(c, &lc);
}

// ---------------------------------------------------------------- whole-image ops

// Copies `n` floats (memmove: flatten and dropout may run in place).
static void move(Cg *c, LLVMValueRef dst, LLVMValueRef src, int64_t n) {
  if (n > 0)
    LLVMBuildMemMove(c->b, dst, 4, src, 4, k64(c, n * 4));
}

// The first float of absolute element `e` (per-image, flattened) of node n's buffer.
static LLVMValueRef element(Cg *c, LLVMValueRef arena, LLVMValueRef batch, LLVMValueRef img,
                            const Node *n, int d, int64_t e) {
  Acc a = arena_acc(c, arena, batch, img, n, d);
  return atk(c, a.base, e - a.c0 * a.cs);
}

// Dropout (the identity at inference) and flatten: the same floats, copied.
static void emit_copy(Cg *c, const Plan *p, LLVMValueRef arena, LLVMValueRef batch,
                      LLVMValueRef img) {
  const Node *n = p->node, *in = &p->g->nodes[n->inputs[0]];
  int64_t plane = shape_plane(n->out);
  Range r = p->st[0].r;
  move(c, element(c, arena, batch, img, n, p->d, r.begin * plane),
       element(c, arena, batch, img, in, p->d, r.begin * plane), range_len(r) * plane);
}

static void emit_concat(Cg *c, const Plan *p, LLVMValueRef arena, LLVMValueRef batch,
                        LLVMValueRef img) {
  const Node *n = p->node;
  int64_t plane = shape_plane(n->out), offset = 0;
  Range r = p->st[0].r;
  for (int j = 0; j < n->n_inputs; j++) {
    const Node *in = &p->g->nodes[n->inputs[j]];
    int64_t lo = r.begin > offset ? r.begin : offset;
    int64_t hi = r.end < offset + in->out.c ? r.end : offset + in->out.c;
    if (lo < hi)
      move(c, element(c, arena, batch, img, n, p->d, lo * plane),
           element(c, arena, batch, img, in, p->d, (lo - offset) * plane), (hi - lo) * plane);
    offset += in->out.c;
  }
}

// Softmax over the whole vector (max subtracted first), in double like the reference;
// this device writes its range of the output.
static void emit_softmax(Cg *c, const Plan *p, LLVMValueRef arena, LLVMValueRef batch,
                         LLVMValueRef img) {
  const Node *n = p->node, *in = &p->g->nodes[n->inputs[0]];
  int64_t len = n->out.c;
  LLVMValueRef x = element(c, arena, batch, img, in, p->d, 0);
  LLVMValueRef y = element(c, arena, batch, img, n, p->d, 0);
  LLVMValueRef m_slot = entry_alloca(c, c->f64, "max"), s_slot = entry_alloca(c, c->f64, "sum");
  LLVMBuildStore(c->b, LLVMConstReal(c->f64, -INFINITY), m_slot);
  LLVMBuildStore(c->b, LLVMConstReal(c->f64, 0), s_slot);
  Loop l1, l2, l3;
  LLVMValueRef k = loop_begin(c, &l1, k64(c, 0), k64(c, len), "k");
  LLVMValueRef v = LLVMBuildFPExt(c->b, load(c, at(c, x, k)), c->f64, "");
  LLVMValueRef m = LLVMBuildLoad2(c->b, c->f64, m_slot, "");
  LLVMBuildStore(c->b, LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealOGT, v, m, ""), v, m, ""),
                 m_slot);
  loop_end(c, &l1);
  LLVMValueRef mx = LLVMBuildLoad2(c->b, c->f64, m_slot, "");
  k = loop_begin(c, &l2, k64(c, 0), k64(c, len), "k");
  LLVMValueRef e = LLVMBuildFSub(c->b, LLVMBuildFPExt(c->b, load(c, at(c, x, k)), c->f64, ""), mx, "");
  e = intrinsic(c, "llvm.exp", c->f64, &e, 1);
  LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, c->f64, s_slot, ""), e, ""), s_slot);
  loop_end(c, &l2);
  LLVMValueRef sum = LLVMBuildLoad2(c->b, c->f64, s_slot, "");
  k = loop_begin(c, &l3, k64(c, p->st[0].r.begin), k64(c, p->st[0].r.end), "k");
  e = LLVMBuildFSub(c->b, LLVMBuildFPExt(c->b, load(c, at(c, x, k)), c->f64, ""), mx, "");
  e = intrinsic(c, "llvm.exp", c->f64, &e, 1);
  store(c, LLVMBuildFPTrunc(c->b, LLVMBuildFDiv(c->b, e, sum, ""), c->f32, ""), at(c, y, k));
  loop_end(c, &l3);
}

// ---------------------------------------------------------------- a node's kernel

// Rows [lo[k], hi[k]) each stage computes for final rows [lo[n-1], hi[n-1]).
static void band_rows(Cg *c, const Plan *p, LLVMValueRef *lo, LLVMValueRef *hi) {
  for (int k = p->n - 2; k >= 0; k--) {
    const Stage *next = &p->st[k + 1];
    if (next->op->op == OP_MAXPOOL) {
      const PoolAttrs *a = &next->op->pool;
      lo[k] = smax(c, addk(c, mulk(c, lo[k + 1], a->stride), -a->pad.top), k64(c, 0));
      hi[k] = smin(c, addk(c, mulk(c, addk(c, hi[k + 1], -1), a->stride), a->kernel - a->pad.top),
                   k64(c, next->in.h));
    } else {
      lo[k] = lo[k + 1];
      hi[k] = hi[k + 1];
    }
  }
}

// Scratch: the conv's padded input band, then a band buffer per stage but the last.
static void plan_scratch(Plan *p) {
  const Stage *head = &p->st[0];
  int64_t at = 0;
  if (head->op->op == OP_CONV)
    at = range_len(conv_inputs(head)) * p->in_rows * conv_padded_width(head);
  for (int k = 0; k + 1 < p->n; k++) {
    at = (at + 15) / 16 * 16;
    p->st[k].buf = at;
    at += range_len(p->st[k].r) * p->st[k].max_rows * p->st[k].out.w;
  }
  p->scratch = at;
}

// Items are (image, band); each runs every stage over its band.
static void emit_banded(Cg *c, Plan *p, LLVMValueRef arena, LLVMValueRef weights,
                        LLVMValueRef scratch, LLVMValueRef batch, LLVMValueRef begin,
                        LLVMValueRef end, int registers, CpuKernelInfo *info) {
  Loop li;
  LLVMValueRef item = loop_begin(c, &li, begin, end, "item");
  LLVMValueRef img = LLVMBuildSDiv(c->b, item, k64(c, p->chunks), "");
  LLVMValueRef band = LLVMBuildSRem(c->b, item, k64(c, p->chunks), "");
  LLVMValueRef lo[MAX_EPILOGUE + 1], hi[MAX_EPILOGUE + 1];
  lo[p->n - 1] = mulk(c, band, p->band);
  hi[p->n - 1] = smin(c, addk(c, lo[p->n - 1], p->band), k64(c, p->st[p->n - 1].out.h));
  band_rows(c, p, lo, hi);
  Acc src = arena_acc(c, arena, batch, img, &p->g->nodes[p->node->inputs[0]], p->d);
  for (int k = 0; k < p->n; k++) {
    const Stage *s = &p->st[k];
    Acc dst = k == p->n - 1 ? arena_acc(c, arena, batch, img, p->node, p->d)
                            : (Acc){atk(c, scratch, s->buf), lo[k], s->r.begin,
                                    s->max_rows * s->out.w, s->out.w};
    switch (s->op->op) {
    case OP_CONV:
      emit_conv(c, p, s, &src, &dst, lo[k], hi[k], weights, scratch, registers, info);
      break;
    case OP_LRN:
      emit_lrn(c, s, &src, &dst, lo[k], hi[k]);
      break;
    case OP_MAXPOOL:
      emit_pool(c, s, &src, &dst, lo[k], hi[k]);
      break;
    default:  // relu (dropout is folded away: the identity at inference)
      emit_relu(c, s, &src, &dst, lo[k], hi[k]);
      break;
    }
    src = dst;
  }
  loop_end(c, &li);
}

// Starts kernel `symbol` in module m: the function (arena, weights, scratch, batch, begin,
// end) and a builder at its entry.
static Cg begin_kernel(LLVMModuleRef m, const CpuTarget *t, const char *symbol) {
  LLVMContextRef ctx = LLVMGetModuleContext(m);
  Cg c = {.ctx = ctx, .m = m, .vw = t->vector};
  c.i1 = LLVMInt1TypeInContext(ctx);
  c.i64 = LLVMInt64TypeInContext(ctx);
  c.f32 = LLVMFloatTypeInContext(ctx);
  c.f64 = LLVMDoubleTypeInContext(ctx);
  c.pf32 = LLVMPointerType(c.f32, 0);
  c.vec = LLVMVectorType(c.f32, (unsigned)t->vector);
  c.pvec = LLVMPointerType(c.vec, 0);
  LLVMTypeRef params[] = {c.pf32, c.pf32, c.pf32, c.i64, c.i64, c.i64};
  c.fn = LLVMAddFunction(m, symbol, LLVMFunctionType(LLVMVoidTypeInContext(ctx), params, 6, 0));
  const char *names[] = {"arena", "weights", "scratch", "batch", "begin", "end"};
  for (int k = 0; k < 6; k++)
    LLVMSetValueName2(LLVMGetParam(c.fn, (unsigned)k), names[k], strlen(names[k]));
  // The three buffers are separate allocations; saying so lets LLVM keep values in registers.
  unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
  for (unsigned k = 1; k <= 3; k++)
    LLVMAddAttributeAtIndex(c.fn, k, LLVMCreateEnumAttribute(ctx, noalias, 0));
  unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(c.fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
  c.entry = LLVMAppendBasicBlockInContext(ctx, c.fn, "entry");
  c.b = LLVMCreateBuilderInContext(ctx);
  LLVMPositionBuilderAtEnd(c.b, c.entry);
  return c;
}

static void end_kernel(Cg *c) {
  LLVMBuildRetVoid(c->b);
  LLVMDisposeBuilder(c->b);
}

void cpu_emit_kernel(LLVMModuleRef m, const CpuTarget *t, const Graph *g, int i, int d,
                     const char *symbol, CpuKernelInfo *info) {
  Cg c = begin_kernel(m, t, symbol);
  LLVMValueRef arena = LLVMGetParam(c.fn, 0), weights = LLVMGetParam(c.fn, 1);
  LLVMValueRef scratch = LLVMGetParam(c.fn, 2), batch = LLVMGetParam(c.fn, 3);
  LLVMValueRef begin = LLVMGetParam(c.fn, 4), end = LLVMGetParam(c.fn, 5);

  Plan p;
  plan_stages(g, &g->nodes[i], d, &p);
  *info = (CpuKernelInfo){.items = 1, .per_image = true};
  switch (p.st[0].op->op) {
  case OP_FC:
    emit_fc(&c, &p, arena, weights, batch, begin, end, t->registers, t->bf16, info);
    break;
  case OP_CONV:
  case OP_LRN:
  case OP_MAXPOOL:
  case OP_RELU:
    plan_bands(&p);
    plan_scratch(&p);
    info->items = p.chunks;
    info->scratch = p.scratch;
    emit_banded(&c, &p, arena, weights, scratch, batch, begin, end, t->registers, info);
    break;
  default: {  // whole-image ops: an item is an image
    Loop li;
    LLVMValueRef img = loop_begin(&c, &li, begin, end, "image");
    if (p.st[0].op->op == OP_CONCAT)
      emit_concat(&c, &p, arena, batch, img);
    else if (p.st[0].op->op == OP_SOFTMAX)
      emit_softmax(&c, &p, arena, batch, img);
    else
      emit_copy(&c, &p, arena, batch, img);
    loop_end(&c, &li);
    break;
  }
  }
  end_kernel(&c);
}

// ---------------------------------------------------------------- the FMA peak probe

// A kernel that does nothing but FMAs: each item runs `batch` iterations of 12 or 16
// independent vector FMA chains (enough to cover the FMA latency on any x86 core), then
// stores the chains to scratch so none is optimised away. `alexc bench` runs one item
// per thread to measure the machine's peak with the same code generator.
void cpu_emit_probe(LLVMModuleRef m, const CpuTarget *t, const char *symbol) {
  Cg c = begin_kernel(m, t, symbol);
  LLVMValueRef scratch = LLVMGetParam(c.fn, 2), iters = LLVMGetParam(c.fn, 3);
  // Enough chains to cover the FMA latency on two pipes, few enough to stay in registers
  // (16 with AVX-512, 12 with 16 registers: the constants need two).
  enum { CHAINS_MAX = 16 };
  int CHAINS = cpu_probe_chains(t);
  LLVMValueRef acc[CHAINS_MAX];
  LLVMValueRef a = splat(&c, kf(&c, 0.999999f)), b = splat(&c, kf(&c, 1e-7f));
  for (int k = 0; k < CHAINS; k++) {
    acc[k] = entry_alloca(&c, c.vec, "chain");
    LLVMBuildStore(c.b, splat(&c, kf(&c, (double)k)), acc[k]);
  }
  Loop l;
  loop_begin(&c, &l, k64(&c, 0), iters, "i");
  for (int k = 0; k < CHAINS; k++)
    LLVMBuildStore(c.b, fma_v(&c, LLVMBuildLoad2(c.b, c.vec, acc[k], ""), a, b), acc[k]);
  loop_end(&c, &l);
  for (int k = 0; k < CHAINS; k++)
    vstore(&c, LLVMBuildLoad2(c.b, c.vec, acc[k], ""), atk(&c, scratch, k * c.vw));
  end_kernel(&c);
}
