// The graph IR: building it, inferring shapes, counting parameters and MACs.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// Per-image tensors must stay indexable with 32-bit ints in generated kernels.
#define MAX_ELEMS ((int64_t)1 << 31)

static const char *OP_NAMES[OP_COUNT] = {
    [OP_INPUT] = "input",     [OP_CONV] = "conv",       [OP_RELU] = "relu",
    [OP_LRN] = "lrn",         [OP_MAXPOOL] = "maxpool", [OP_FC] = "fc",
    [OP_DROPOUT] = "dropout", [OP_FLATTEN] = "flatten", [OP_CONCAT] = "concat",
    [OP_SOFTMAX] = "softmax",
};

const char *op_name(OpKind op) { return op >= 0 && op < OP_COUNT ? OP_NAMES[op] : "?"; }

OpKind op_from_name(const char *name) {
  for (int i = 0; i < OP_COUNT; i++)
    if (i != OP_INPUT && !strcmp(OP_NAMES[i], name))
      return (OpKind)i;
  return OP_COUNT;
}

int64_t shape_elems(Shape s) { return s.c * s.h * s.w; }

int64_t node_buffer_elems(const Node *n, int d) {
  return range_len(n->place[d].held) * shape_plane(n->out);
}

char *shape_str(Shape s, char *buf, size_t size) {
  if (s.rank == 1)
    snprintf(buf, size, "%lld", (long long)s.c);
  else
    snprintf(buf, size, "%lldx%lldx%lld", (long long)s.c, (long long)s.h, (long long)s.w);
  return buf;
}

Graph *graph_new(const char *name) {
  Graph *g = xcalloc(1, sizeof *g);
  g->name = xstrdup(name);
  g->output = -1;
  return g;
}

void graph_free(Graph *g) {
  if (!g)
    return;
  for (int i = 0; i < g->n_nodes; i++) {
    Node *n = &g->nodes[i];
    for (int k = 0; k < n->n_epilogue; k++)
      free(n->epilogue[k].name);
    free(n->epilogue);
    free(n->name);
    free(n->inputs);
  }
  free(g->nodes);
  free(g->transfers);
  free(g->plan_note);
  free(g->name);
  free(g);
}

int graph_add(Graph *g, const char *name, OpKind op, SrcLoc loc) {
  if (g->n_nodes == g->cap_nodes) {
    g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 16;
    g->nodes = xrealloc(g->nodes, g->cap_nodes * sizeof *g->nodes);
  }
  Node *n = &g->nodes[g->n_nodes];
  memset(n, 0, sizeof *n);
  n->name = xstrdup(name);
  n->op = op;
  n->loc = loc;
  return g->n_nodes++;
}

void node_add_input(Node *n, int input) {
  n->inputs = xrealloc(n->inputs, (n->n_inputs + 1) * sizeof *n->inputs);
  n->inputs[n->n_inputs++] = input;
}

int graph_find(const Graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].name, name))
      return i;
  return -1;
}

// ---------------------------------------------------------------- shape inference

static Shape vec(int64_t n) { return (Shape){.rank = 1, .c = n, .h = 1, .w = 1}; }
static Shape chw(int64_t c, int64_t h, int64_t w) { return (Shape){.rank = 3, .c = c, .h = h, .w = w}; }

// Output extent of a window op; 0 when the window does not fit.
static int64_t window_out(int64_t in, int kernel, int stride, int pad) {
  int64_t span = in + 2 * (int64_t)pad;
  if (span < kernel)
    return 0;
  return (span - kernel) / stride + 1;
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
  int64_t oh = window_out(in.h, a->kernel, a->stride, a->pad);
  int64_t ow = window_out(in.w, a->kernel, a->stride, a->pad);
  if (!oh || !ow) {
    error_at(n->loc, "conv layer '%s': kernel %d is larger than its padded input %lldx%lld",
             n->name, a->kernel, (long long)(in.h + 2 * a->pad), (long long)(in.w + 2 * a->pad));
    return false;
  }
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

static bool infer_pool(const Graph *g, Node *n, Shape in) {
  PoolAttrs *a = &n->pool;
  if (!need_rank3(g, n, in))
    return false;
  if (2 * a->pad > a->kernel) {
    error_at(n->loc, "maxpool layer '%s': pad %d must be at most half the kernel (%d)", n->name,
             a->pad, a->kernel);
    return false;
  }
  int64_t oh = window_out(in.h, a->kernel, a->stride, a->pad);
  int64_t ow = window_out(in.w, a->kernel, a->stride, a->pad);
  if (!oh || !ow) {
    error_at(n->loc, "maxpool layer '%s': kernel %d is larger than its padded input %lldx%lld",
             n->name, a->kernel, (long long)(in.h + 2 * a->pad), (long long)(in.w + 2 * a->pad));
    return false;
  }
  n->out = chw(in.c, oh, ow);
  return true;
}

static bool infer_concat(const Graph *g, Node *n) {
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

static bool infer_node(const Graph *g, Node *n) {
  Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  switch (n->op) {
  case OP_INPUT:
    return true;
  case OP_CONV:
    return infer_conv(g, n, in);
  case OP_RELU:
  case OP_DROPOUT:
    n->out = in;
    return true;
  case OP_LRN:
    if (!need_rank3(g, n, in))
      return false;
    if (in.c % n->lrn.groups) {
      error_at(n->loc, "lrn layer '%s': groups=%d must divide its input channels (%lld)", n->name,
               n->lrn.groups, (long long)in.c);
      return false;
    }
    n->out = in;
    return true;
  case OP_MAXPOOL:
    return infer_pool(g, n, in);
  case OP_FC:
    if (!need_flat(g, n, in))
      return false;
    n->out = vec(n->fc.out);
    n->n_weight = (int64_t)n->fc.out * in.c;
    n->n_bias = n->fc.bias ? n->fc.out : 0;
    n->macs = n->n_weight;
    return true;
  case OP_FLATTEN:
    n->out = vec(shape_elems(in));
    return true;
  case OP_CONCAT:
    return infer_concat(g, n);
  case OP_SOFTMAX:
    if (!need_flat(g, n, in))
      return false;
    n->out = in;
    return true;
  case OP_COUNT:
    break;
  }
  return false;
}

// A fused node's epilogue: each stage reads the previous stage's output, which is
// the node's own `out` while we go.
static bool infer_epilogue(Graph *g, int i) {
  Node *n = &g->nodes[i];
  n->head_out = n->out;
  for (int k = 0; k < n->n_epilogue; k++) {
    Node stage = n->epilogue[k];
    stage.inputs = &i;
    stage.n_inputs = 1;
    if (!infer_node(g, &stage))
      return false;
    n->epilogue[k].out = stage.out;
    n->out = stage.out;
  }
  return true;
}

bool graph_infer(Graph *g) {
  int64_t macs = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    Node *n = &g->nodes[i];
    if (!infer_node(g, n) || !infer_epilogue(g, i))
      return false;
    if (shape_elems(n->out) >= MAX_ELEMS || shape_elems(n->head_out) >= MAX_ELEMS ||
        n->n_weight >= MAX_ELEMS) {
      if (n->op == OP_INPUT)
        error_at(n->loc, "the network input is too large: %lld elements per image (limit %lld)",
                 (long long)shape_elems(n->out), (long long)MAX_ELEMS - 1);
      else
        error_at(n->loc,
                 "layer '%s' is too large: %lld elements per image, %lld weights (limit %lld)",
                 n->name, (long long)shape_elems(n->out), (long long)n->n_weight,
                 (long long)MAX_ELEMS - 1);
      return false;
    }
    // Each node's MACs are < 2^62; their sum must stay countable (graph_macs).
    if (n->macs > INT64_MAX - macs) {
      error_at(n->loc, "the network is too large: at layer '%s' its multiply-accumulates per image "
               "overflow a 64-bit count", n->name);
      return false;
    }
    macs += n->macs;
  }
  return true;
}

int64_t graph_params(const Graph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->n_nodes; i++)
    total += g->nodes[i].n_weight + g->nodes[i].n_bias;
  return total;
}

int64_t graph_macs(const Graph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->n_nodes; i++)
    total += g->nodes[i].macs;
  return total;
}

static void param_info(const Graph *g, int idx, bool is_bias, ParamInfo *p) {
  const Node *n = &g->nodes[idx];
  memset(p, 0, sizeof *p);
  p->node = idx;
  p->is_bias = is_bias;
  snprintf(p->name, sizeof p->name, "%s.%s", n->name, is_bias ? "bias" : "weight");
  if (is_bias) {
    p->rank = 1;
    p->dims[0] = n->n_bias;
  } else if (n->op == OP_CONV) {
    Shape in = g->nodes[n->inputs[0]].out;
    p->rank = 4;
    p->dims[0] = n->conv.out;
    p->dims[1] = in.c / n->conv.groups;
    p->dims[2] = p->dims[3] = n->conv.kernel;
  } else {
    p->rank = 2;
    p->dims[0] = n->fc.out;
    p->dims[1] = g->nodes[n->inputs[0]].out.c;
  }
  p->elems = is_bias ? n->n_bias : n->n_weight;
}

int graph_params_list(const Graph *g, ParamInfo *out) {
  int count = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    if (n->n_weight) {
      if (out)
        param_info(g, i, false, &out[count]);
      count++;
    }
    if (n->n_bias) {
      if (out)
        param_info(g, i, true, &out[count]);
      count++;
    }
  }
  return count;
}
