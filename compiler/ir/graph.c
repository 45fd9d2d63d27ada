// The graph IR: building it, inferring shapes, counting parameters and MACs.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"


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
  g->train.augment = -1;
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
  free(g->train.schedule);
  free(g->train.init);
  free(g->plan_note);
  free(g->name);
  free(g);
}

// A deep copy, for a pass that must not change the graph it was given (the trainer
// partitions its own copy of the spec).
Graph *graph_clone(const Graph *src) {
  Graph *g = xcalloc(1, sizeof *g);
  *g = *src;
  g->name = xstrdup(src->name);
  g->nodes = xcalloc(src->cap_nodes ? src->cap_nodes : 1, sizeof *g->nodes);
  for (int i = 0; i < src->n_nodes; i++) {
    Node *n = &g->nodes[i];
    *n = src->nodes[i];
    n->name = xstrdup(n->name);
    n->inputs = xcalloc(n->n_inputs ? n->n_inputs : 1, sizeof *n->inputs);
    if (n->n_inputs)
      memcpy(n->inputs, src->nodes[i].inputs, n->n_inputs * sizeof *n->inputs);
    n->epilogue = n->n_epilogue ? xcalloc(n->n_epilogue, sizeof *n->epilogue) : NULL;
    for (int k = 0; k < n->n_epilogue; k++) {
      n->epilogue[k] = src->nodes[i].epilogue[k];
      n->epilogue[k].name = xstrdup(n->epilogue[k].name);
    }
  }
  g->transfers = xcalloc(src->n_transfers ? src->n_transfers : 1, sizeof *g->transfers);
  if (src->n_transfers)
    memcpy(g->transfers, src->transfers, src->n_transfers * sizeof *g->transfers);
  g->plan_note = src->plan_note ? xstrdup(src->plan_note) : NULL;
  g->train.schedule = src->train.schedule ? xstrdup(src->train.schedule) : NULL;
  g->train.init = src->train.init ? xstrdup(src->train.init) : NULL;
  return g;
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

static bool infer_node(const Graph *g, Node *n) {
  Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  return op_info(n->op)->infer(g, n, in);
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
