// The IR verifier: invariants every pass must preserve. It runs after the frontend
// and after every pass; a failure is a compiler bug, reported with the node at fault.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static bool fail(const Graph *g, int i, const char *what) {
  fprintf(stderr, "alexc: internal error: IR verifier: graph '%s', node %d ('%s'): %s\n", g->name,
          i, i >= 0 && i < g->n_nodes ? g->nodes[i].name : "?", what);
  return false;
}

static bool shape_ok(Shape s) {
  if (s.rank == 1)
    return s.c > 0 && s.h == 1 && s.w == 1;
  return s.rank == 3 && s.c > 0 && s.h > 0 && s.w > 0;
}

static bool same_shape(Shape a, Shape b) {
  return a.rank == b.rank && a.c == b.c && a.h == b.h && a.w == b.w;
}


static bool within(Range inner, Range outer) {
  return !range_len(inner) || (inner.begin >= outer.begin && inner.end <= outer.end);
}

// Fused stages: only per-element or per-channel ops, on a conv, fc or lrn head.
static bool epilogue_ok(const Graph *g, int i) {
  const Node *n = &g->nodes[i];
  if (n->n_epilogue < 0 || n->n_epilogue > MAX_EPILOGUE)
    return fail(g, i, "bad epilogue length");
  if (n->n_epilogue && n->op != OP_CONV && n->op != OP_FC && n->op != OP_LRN)
    return fail(g, i, "only conv, fc and lrn nodes may have fused stages");
  for (int k = 0; k < n->n_epilogue; k++) {
    OpKind op = n->epilogue[k].op;
    if (op != OP_RELU && op != OP_LRN && op != OP_MAXPOOL && op != OP_DROPOUT)
      return fail(g, i, "a fused stage must be relu, lrn, maxpool or dropout");
  }
  return true;
}

// After partitioning: each stage's ranges lie in its tensor, every output channel is
// computed by exactly one device (the input: by all), each device holds what it
// computes, and each transfer moves channels its sender computes to a holder.
static bool partition_ok(const Graph *g) {
  if (g->n_devices == 0)
    return true;
  if (g->n_devices < 0 || g->n_devices > MAX_DEVICES)
    return fail(g, 0, "bad device count");
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    int64_t covered = 0;
    for (int d = 0; d < g->n_devices; d++) {
      const Placement *p = &n->place[d];
      for (int k = 0; k <= n->n_epilogue; k++) {
        Shape s = node_stage_shape(n, k);
        if (!within(p->stage[k], (Range){0, s.c}))
          return fail(g, i, "a device's channel range lies outside the tensor");
      }
      Range mine = p->stage[n->n_epilogue];
      if (!within(mine, p->held) || !within(p->held, (Range){0, n->out.c}))
        return fail(g, i, "a device does not hold what it computes");
      covered += range_len(mine);
      for (int e = 0; e < g->n_devices && i > 0; e++) {
        Range other = n->place[e].stage[n->n_epilogue];
        if (e != d && range_len(mine) && range_len(other) && mine.begin < other.end && other.begin < mine.end)
          return fail(g, i, "two devices compute the same output channels");
      }
    }
    if (covered != (i == 0 ? n->out.c * g->n_devices : n->out.c))
      return fail(g, i, "the devices do not compute every output channel exactly once");
  }
  for (int t = 0; t < g->n_transfers; t++) {
    const Transfer *tr = &g->transfers[t];
    const Node *n = &g->nodes[tr->node];
    if (tr->from == tr->to || !within(tr->range, n->place[tr->from].stage[n->n_epilogue]) ||
        !within(tr->range, n->place[tr->to].held) || !range_len(tr->range))
      return fail(g, tr->node, "a transfer moves channels its sender does not compute or its "
                  "receiver does not hold");
  }
  return true;
}

bool graph_verify(const Graph *g) {
  if (g->n_nodes < 2 || g->nodes[0].op != OP_INPUT)
    return fail(g, 0, "the first node must be the network input, followed by layers");
  if (g->output < 0 || g->output >= g->n_nodes)
    return fail(g, g->output, "the output index is out of range");
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    if (n->op < 0 || n->op >= OP_COUNT || (i > 0 && n->op == OP_INPUT))
      return fail(g, i, "bad op");
    if (!op_arity_ok(n->op, n->n_inputs))
      return fail(g, i, "wrong number of inputs for its op");
    for (int j = 0; j < n->n_inputs; j++)
      if (n->inputs[j] < 0 || n->inputs[j] >= i)
        return fail(g, i, "reads a node that does not come before it (not topological)");
    for (int j = 0; j < i; j++)
      if (!strcmp(g->nodes[j].name, n->name))
        return fail(g, i, "duplicate node name");
    if (!shape_ok(n->out))
      return fail(g, i, "malformed output shape");
  }
  for (int i = 0; i < g->n_nodes; i++)
    if (!epilogue_ok(g, i))
      return false;
  // Shapes and counts must be exactly what inference derives from the attributes.
  Graph copy = *g;
  copy.nodes = xcalloc(g->n_nodes, sizeof *copy.nodes);
  memcpy(copy.nodes, g->nodes, g->n_nodes * sizeof *copy.nodes);
  for (int i = 0; i < g->n_nodes; i++) {  // inference writes stage shapes: use copies
    Node *n = &copy.nodes[i];
    n->epilogue = xcalloc(n->n_epilogue, sizeof(Node));
    if (n->n_epilogue)
      memcpy(n->epilogue, g->nodes[i].epilogue, n->n_epilogue * sizeof(Node));
  }
  bool ok = graph_infer(&copy);
  for (int i = 0; ok && i < g->n_nodes; i++) {
    const Node *a = &g->nodes[i], *b = &copy.nodes[i];
    if (!same_shape(a->out, b->out) || !same_shape(a->head_out, b->head_out) ||
        a->n_weight != b->n_weight || a->n_bias != b->n_bias || a->macs != b->macs)
      ok = fail(g, i, "shape or parameter count disagrees with its attributes");
    for (int k = 0; ok && k < a->n_epilogue; k++)
      if (!same_shape(a->epilogue[k].out, b->epilogue[k].out))
        ok = fail(g, i, "a fused stage's shape disagrees with its attributes");
  }
  for (int i = 0; i < g->n_nodes; i++)
    free(copy.nodes[i].epilogue);
  free(copy.nodes);
  return ok && partition_ok(g);
}
