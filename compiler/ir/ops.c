// The ops: what alexc knows of each, in one table. A row gives the op's name in specs,
// its arity, the spec keys it takes (besides name, op and inputs), its shape inference,
// which channels of each input it needs for a range of its output (what the partition
// pass plans transfers from), and whether it works channel by channel (which fusion and
// the partition's "follow the input" rely on). Adding an op is a row here, a case in
// the frontend's attribute parser, and its kernels in each backend.
#include <string.h>

#include "../alexc.h"

static Range rng(int64_t b, int64_t e) { return (Range){b, e}; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---------------------------------------------------------------- shape inference

static Shape vec(int64_t n) { return (Shape){.rank = 1, .c = n, .h = 1, .w = 1}; }
static Shape chw(int64_t c, int64_t h, int64_t w) { return (Shape){.rank = 3, .c = c, .h = h, .w = w}; }

// ceil_mode rounds up, as PyTorch does: the last window must still start inside the
// input or the leading pad (else it would see only padding).
int64_t window_extent(int64_t in, int kernel, int stride, int lo, int hi, bool ceil_mode) {
  int64_t span = in + lo + hi;
  if (span < kernel)
    return 0;
  if (!ceil_mode)
    return (span - kernel) / stride + 1;
  int64_t out = (span - kernel + stride - 1) / stride + 1;
  if ((out - 1) * stride >= in + lo)
    out--;
  return out;
}

// `pad: same` on one axis: output ceil(in/stride), the padding split with the odd pixel
// after (ONNX's SAME_UPPER), none when the windows already cover the input.
static void same_pads(int64_t in, int kernel, int stride, int *lo, int *hi) {
  int64_t out = (in + stride - 1) / stride;
  int64_t total = (out - 1) * stride + kernel - in;
  if (total < 0)
    total = 0;
  *lo = (int)(total / 2);  // kernel <= 1024, so both fit an int
  *hi = (int)(total - total / 2);
}

Pads pads_same(Shape in, int kernel, int stride) {
  Pads p = {.same = true};
  same_pads(in.h, kernel, stride, &p.top, &p.bottom);
  same_pads(in.w, kernel, stride, &p.left, &p.right);
  return p;
}

static void resolve_same(Pads *p, Shape in, int kernel, int stride) {
  if (p->same)
    *p = pads_same(in, kernel, stride);
}

// The output's spatial size, or false (with a message) when the kernel does not fit.
static bool window_shape(const Node *n, Shape in, int kernel, int stride, Pads p, bool ceil_mode,
                         int64_t *oh, int64_t *ow) {
  *oh = window_extent(in.h, kernel, stride, p.top, p.bottom, ceil_mode);
  *ow = window_extent(in.w, kernel, stride, p.left, p.right, ceil_mode);
  if (*oh && *ow)
    return true;
  error_at(n->loc, "%s layer '%s': kernel %d is larger than its padded input %lldx%lld",
           op_name(n->op), n->name, kernel, (long long)(in.h + p.top + p.bottom),
           (long long)(in.w + p.left + p.right));
  return false;
}

static bool need_rank3(const Graph *g, Node *n, Shape in) {
  if (in.rank == 3)
    return true;
  error_at(n->loc, "%s layer '%s' needs a CxHxW input, but '%s' gives a flat %lld-vector",
           op_name(n->op), n->name, g->nodes[n->inputs[0]].name, (long long)in.c);
  return false;
}

static bool need_flat(const Graph *g, Node *n, Shape in) {
  if (in.rank == 1)
    return true;
  char buf[64];
  error_at(n->loc, "%s layer '%s' needs a flat input, but '%s' gives %s (add a flatten layer)",
           op_name(n->op), n->name, g->nodes[n->inputs[0]].name, shape_str(in, buf, sizeof buf));
  return false;
}

static bool infer_conv(const Graph *g, Node *n, Shape in) {
  ConvAttrs *a = &n->conv;
  if (!need_rank3(g, n, in))
    return false;
  if (in.c % a->groups) {
    error_at(n->loc, "conv layer '%s': groups=%d must divide its input channels, but '%s' gives "
             "%lld", n->name, a->groups, g->nodes[n->inputs[0]].name, (long long)in.c);
    return false;
  }
  if (a->out % a->groups) {
    error_at(n->loc, "conv layer '%s': groups=%d must divide its output channels (out=%d)", n->name,
             a->groups, a->out);
    return false;
  }
  resolve_same(&a->pad, in, a->kernel, a->stride);
  int64_t oh, ow;
  if (!window_shape(n, in, a->kernel, a->stride, a->pad, false, &oh, &ow))
    return false;
  // Counts are checked before they are multiplied: in.c < MAX_ELEMS (its producer was
  // checked) and kernel <= 1024, so per_out < 2^51; the product with out could overflow.
  int64_t per_out = (in.c / a->groups) * a->kernel * a->kernel;
  if (per_out > (MAX_ELEMS - 1) / a->out) {
    error_at(n->loc, "conv layer '%s' is too large: %d x %lld x %d x %d weights (limit %lld)",
             n->name, a->out, (long long)(in.c / a->groups), a->kernel, a->kernel,
             (long long)MAX_ELEMS - 1);
    return false;
  }
  n->out = chw(a->out, oh, ow);
  n->n_weight = a->out * per_out;
  n->n_bias = a->bias ? a->out : 0;
  // When the output is too large graph_infer() reports it; oh * ow could overflow the MACs.
  n->macs = shape_elems(n->out) < MAX_ELEMS ? n->n_weight * oh * ow : 0;
  return true;
}

// Every window must hold an input pixel, so that the maximum (padding never wins) is
// defined: each pad smaller than the kernel (ONNX's limit) does it, since windows start
// at most pad_top before the input and, by window_extent's rounding, before its end.
// PyTorch allows only half the kernel; alexc takes what ONNX models carry.
static bool pool_pads_ok(const Node *n) {
  const PoolAttrs *a = &n->pool;
  const int sides[4] = {a->pad.top, a->pad.left, a->pad.bottom, a->pad.right};
  static const char *const side_names[4] = {"top ", "left ", "bottom ", "right "};
  bool all = pads_symmetric(a->pad);  // then "pad 2", as written
  for (int i = 0; i < 4; i++)
    if (sides[i] >= a->kernel) {
      error_at(n->loc, "maxpool layer '%s': %s%spad %d must be smaller than the kernel (%d), so "
               "that every window holds an input pixel", n->name,
               all ? "" : "its ", all ? "" : side_names[i], sides[i], a->kernel);
      return false;
    }
  return true;
}

static bool infer_pool(const Graph *g, Node *n, Shape in) {
  PoolAttrs *a = &n->pool;
  if (!need_rank3(g, n, in))
    return false;
  resolve_same(&a->pad, in, a->kernel, a->stride);
  if (!pool_pads_ok(n))
    return false;
  int64_t oh, ow;
  if (!window_shape(n, in, a->kernel, a->stride, a->pad, a->ceil_mode, &oh, &ow))
    return false;
  n->out = chw(in.c, oh, ow);
  return true;
}

static bool infer_concat(const Graph *g, Node *n, Shape in) {
  (void)in;
  Shape first = g->nodes[n->inputs[0]].out;
  int64_t c = 0;
  for (int i = 0; i < n->n_inputs; i++) {
    const Node *in = &g->nodes[n->inputs[i]];
    Shape s = in->out;
    if (s.rank != first.rank || s.h != first.h || s.w != first.w) {
      char a[64], b[64];
      error_at(n->loc, "concat layer '%s': '%s' is %s but '%s' is %s (only channels may differ)",
               n->name, g->nodes[n->inputs[0]].name, shape_str(first, a, sizeof a), in->name,
               shape_str(s, b, sizeof b));
      return false;
    }
    c += s.c;
  }
  n->out = first;
  n->out.c = c;
  return true;
}

static bool infer_none(const Graph *g, Node *n, Shape in) {
  (void)g, (void)n, (void)in;
  return true;
}

static bool infer_same(const Graph *g, Node *n, Shape in) {
  (void)g;
  n->out = in;
  return true;
}

static bool infer_lrn(const Graph *g, Node *n, Shape in) {
  if (!need_rank3(g, n, in))
    return false;
  if (in.c % n->lrn.groups) {
    error_at(n->loc, "lrn layer '%s': groups=%d must divide its input channels (%lld)", n->name,
             n->lrn.groups, (long long)in.c);
    return false;
  }
  n->out = in;
  return true;
}

static bool infer_fc(const Graph *g, Node *n, Shape in) {
  if (!need_flat(g, n, in))
    return false;
  n->out = vec(n->fc.out);
  n->n_weight = (int64_t)n->fc.out * in.c;
  n->n_bias = n->fc.bias ? n->fc.out : 0;
  n->macs = n->n_weight;
  return true;
}

static bool infer_flatten(const Graph *g, Node *n, Shape in) {
  (void)g;
  n->out = vec(shape_elems(in));
  return true;
}

static bool infer_softmax(const Graph *g, Node *n, Shape in) {
  if (in.rank == 3) {  // refused by name: a reader of ONNX's Softmax(axis=1) may expect it
    char buf[64];
    error_at(n->loc, "softmax layer '%s': a softmax over the channels at each position of a "
             "CxHxW input (ONNX's axis=1) is not supported, and '%s' gives %s; add a flatten "
             "layer for a softmax over all its features", n->name, g->nodes[n->inputs[0]].name,
             shape_str(in, buf, sizeof buf));
    return false;
  }
  n->out = in;
  return true;
}

// ---------------------------------------------------------------- channel needs
// Each gives the channels of input j that op n needs to compute its output range r
// (r not empty); `in` is that input's shape.

Range lrn_input_need(const LrnAttrs *a, int64_t channels, Range r) {
  if (!range_len(r))
    return r;
  int64_t per_group = channels / a->groups, half = a->size / 2;
  int64_t lo_group = r.begin / per_group * per_group;
  int64_t hi_group = (r.end - 1) / per_group * per_group + per_group;
  return rng(max64(r.begin - half, lo_group), min64(r.end + half, hi_group));
}

static Range need_same(const Graph *g, const Node *n, int j, Shape in, Range r) {
  (void)g, (void)n, (void)j, (void)in;
  return r;  // channel for channel
}

static Range need_all(const Graph *g, const Node *n, int j, Shape in, Range r) {
  (void)g, (void)n, (void)j, (void)r;
  return rng(0, in.c);  // the whole input vector
}

static Range need_conv(const Graph *g, const Node *n, int j, Shape in, Range r) {
  (void)g, (void)j;
  int64_t opg = n->conv.out / n->conv.groups, ipg = in.c / n->conv.groups;
  return rng(r.begin / opg * ipg, ((r.end - 1) / opg + 1) * ipg);  // whole groups
}

static Range need_lrn(const Graph *g, const Node *n, int j, Shape in, Range r) {
  (void)g, (void)j;
  return lrn_input_need(&n->lrn, in.c, r);  // the window's halo
}

static Range need_flatten(const Graph *g, const Node *n, int j, Shape in, Range r) {
  (void)g, (void)n, (void)j;
  int64_t plane = shape_plane(in);
  return rng(r.begin / plane, (r.end + plane - 1) / plane);
}

static Range need_concat(const Graph *g, const Node *n, int j, Shape in, Range r) {
  int64_t offset = 0;
  for (int k = 0; k < j; k++)
    offset += g->nodes[n->inputs[k]].out.c;
  Range part = rng(max64(r.begin, offset), min64(r.end, offset + in.c));
  return range_len(part) ? rng(part.begin - offset, part.end - offset) : rng(0, 0);
}

// ---------------------------------------------------------------- the table

static const char *const CONV_KEYS[] = {"out", "kernel", "stride", "pad", "groups", "bias", "init", NULL};
static const char *const LRN_KEYS[] = {"size", "alpha", "beta", "k", "groups", NULL};
static const char *const POOL_KEYS[] = {"kernel", "stride", "pad", "ceil_mode", NULL};
static const char *const FC_KEYS[] = {"out", "bias", "init", NULL};
static const char *const DROPOUT_KEYS[] = {"p", NULL};
static const char *const NO_KEYS[] = {NULL};

static const OpInfo OPS[OP_COUNT] = {
    //               name       inputs  keys          infer          channel needs  per channel
    [OP_INPUT] =   {"input",    0, 0,   NO_KEYS,      infer_none,    need_same,     false},
    [OP_CONV] =    {"conv",     1, 1,   CONV_KEYS,    infer_conv,    need_conv,     false},
    [OP_RELU] =    {"relu",     1, 1,   NO_KEYS,      infer_same,    need_same,     true},
    [OP_LRN] =     {"lrn",      1, 1,   LRN_KEYS,     infer_lrn,     need_lrn,      false},
    [OP_MAXPOOL] = {"maxpool",  1, 1,   POOL_KEYS,    infer_pool,    need_same,     true},
    [OP_FC] =      {"fc",       1, 1,   FC_KEYS,      infer_fc,      need_all,      false},
    [OP_DROPOUT] = {"dropout",  1, 1,   DROPOUT_KEYS, infer_same,    need_same,     true},
    [OP_FLATTEN] = {"flatten",  1, 1,   NO_KEYS,      infer_flatten, need_flatten,  false},
    [OP_CONCAT] =  {"concat",   2, -1,  NO_KEYS,      infer_concat,  need_concat,   false},
    [OP_SOFTMAX] = {"softmax",  1, 1,   NO_KEYS,      infer_softmax, need_all,      false},
};

const OpInfo *op_info(OpKind op) { return &OPS[op >= 0 && op < OP_COUNT ? op : OP_INPUT]; }

const char *op_name(OpKind op) { return op >= 0 && op < OP_COUNT ? OPS[op].name : "?"; }

OpKind op_from_name(const char *name) {
  for (int i = 0; i < OP_COUNT; i++)
    if (i != OP_INPUT && !strcmp(OPS[i].name, name))
      return (OpKind)i;
  return OP_COUNT;
}

bool op_arity_ok(OpKind op, int n_inputs) {
  const OpInfo *o = op_info(op);
  return n_inputs >= o->min_inputs && (o->max_inputs < 0 || n_inputs <= o->max_inputs);
}

Range op_input_need(const Graph *g, const Node *n, int j, Range r) {
  if (!range_len(r))
    return r;
  return op_info(n->op)->input_need(g, n, j, g->nodes[n->inputs[j]].out, r);
}
