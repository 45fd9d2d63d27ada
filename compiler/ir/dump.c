// `alexc dump`: a stable, line-per-node text form of the IR that tests can diff.
//   conv1 = conv(input) out=96 kernel=11 stride=4 pad=0 groups=1 bias=true -> 96x55x55
#include "../alexc.h"

static void dump_attrs(const Node *n, FILE *out) {
  switch (n->op) {
  case OP_CONV:
    fprintf(out, " out=%d kernel=%d stride=%d pad=%d groups=%d bias=%s", n->conv.out,
            n->conv.kernel, n->conv.stride, n->conv.pad, n->conv.groups,
            n->conv.bias ? "true" : "false");
    break;
  case OP_LRN:
    fprintf(out, " size=%d alpha=%.9g beta=%.9g k=%.9g groups=%d", n->lrn.size, n->lrn.alpha,
            n->lrn.beta, n->lrn.k, n->lrn.groups);
    break;
  case OP_MAXPOOL:
    fprintf(out, " kernel=%d stride=%d pad=%d", n->pool.kernel, n->pool.stride, n->pool.pad);
    break;
  case OP_FC:
    fprintf(out, " out=%d bias=%s", n->fc.out, n->fc.bias ? "true" : "false");
    break;
  case OP_DROPOUT:
    fprintf(out, " p=%.9g", n->dropout.p);
    break;
  default:
    break;
  }
  if (n->n_weight)
    fprintf(out, " init=(std=%.9g bias=%.9g)", n->init.weight_std, n->init.bias);
}

void graph_dump(const Graph *g, FILE *out) {
  fprintf(out, "graph %s {\n", g->name);
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    fprintf(out, "  %s = %s(", n->name, op_name(n->op));
    for (int j = 0; j < n->n_inputs; j++)
      fprintf(out, "%s%s", j ? ", " : "", g->nodes[n->inputs[j]].name);
    fprintf(out, ")");
    dump_attrs(n, out);
    char buf[64];
    fprintf(out, " -> %s\n", shape_str(n->out, buf, sizeof buf));
  }
  fprintf(out, "  output %s\n}\n", g->nodes[g->output].name);
}
