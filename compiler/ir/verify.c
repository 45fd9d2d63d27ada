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

static bool arity_ok(const Node *n) {
  switch (n->op) {
  case OP_INPUT:
    return n->n_inputs == 0;
  case OP_CONCAT:
    return n->n_inputs >= 2;
  default:
    return n->n_inputs == 1;
  }
}

static bool shape_ok(Shape s) {
  if (s.rank == 1)
    return s.c > 0 && s.h == 1 && s.w == 1;
  return s.rank == 3 && s.c > 0 && s.h > 0 && s.w > 0;
}

static bool same_shape(Shape a, Shape b) {
  return a.rank == b.rank && a.c == b.c && a.h == b.h && a.w == b.w;
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
    if (!arity_ok(n))
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
  // Shapes and counts must be exactly what inference derives from the attributes.
  Graph copy = *g;
  copy.nodes = xcalloc(g->n_nodes, sizeof *copy.nodes);
  memcpy(copy.nodes, g->nodes, g->n_nodes * sizeof *copy.nodes);
  bool ok = graph_infer(&copy);
  for (int i = 0; ok && i < g->n_nodes; i++) {
    const Node *a = &g->nodes[i], *b = &copy.nodes[i];
    if (!same_shape(a->out, b->out) || a->n_weight != b->n_weight || a->n_bias != b->n_bias ||
        a->macs != b->macs)
      ok = fail(g, i, "shape or parameter count disagrees with its attributes");
  }
  free(copy.nodes);
  return ok;
}
