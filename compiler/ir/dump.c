// `alexc dump`: a stable, line-per-node text form of the IR that tests can diff.
//   conv1 = conv(input) out=96 kernel=11 stride=4 pad=0 groups=1 bias=true -> 96x55x55
// Fused stages follow their node as "+ name = op ..." lines; after the partition pass
// each node shows what each device computes and the transfers of its output; after
// memory planning, each device's buffer offsets (elements per image).
#include "../alexc.h"

const char *pads_str(Pads p, char *buf, size_t size) {
  if (pads_symmetric(p))
    snprintf(buf, size, "%d", p.top);
  else
    snprintf(buf, size, "[%d,%d,%d,%d]", p.top, p.left, p.bottom, p.right);
  return buf;
}

// pad=P when all four sides agree (so dumps of symmetric specs read as before),
// pad=[top,left,bottom,right] otherwise, and pad=same(...) with the sides it resolved to.
static void dump_pads(Pads p, FILE *out) {
  char buf[64];
  fprintf(out, p.same ? " pad=same(%s)" : " pad=%s", pads_str(p, buf, sizeof buf));
}

static void dump_attrs(const Node *n, FILE *out) {
  switch (n->op) {
  case OP_CONV:
    fprintf(out, " out=%d kernel=%d stride=%d", n->conv.out, n->conv.kernel, n->conv.stride);
    dump_pads(n->conv.pad, out);
    fprintf(out, " groups=%d bias=%s", n->conv.groups, n->conv.bias ? "true" : "false");
    break;
  case OP_LRN:
    fprintf(out, " size=%d alpha=%.9g beta=%.9g k=%.9g groups=%d", n->lrn.size, n->lrn.alpha,
            n->lrn.beta, n->lrn.k, n->lrn.groups);
    break;
  case OP_MAXPOOL:
    fprintf(out, " kernel=%d stride=%d", n->pool.kernel, n->pool.stride);
    dump_pads(n->pool.pad, out);
    if (n->pool.ceil_mode)  // printed only when set, so older dumps read the same
      fputs(" ceil_mode=true", out);
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
  if (n->n_weight) {
    fprintf(out, " init=(std=%.9g bias=%.9g", n->init.weight_std, n->init.bias);
    if (n->init.bias_std != 0)  // printed only when set, so older dumps read the same
      fprintf(out, " bias_std=%.9g", n->init.bias_std);
    fputc(')', out);
  }
}

static void dump_range(Range r, FILE *out) {
  fprintf(out, "[%lld,%lld)", (long long)r.begin, (long long)r.end);
}

static void dump_placement(const Graph *g, const Node *n, FILE *out) {
  fprintf(out, "    devices:");
  for (int d = 0; d < g->n_devices; d++) {
    fprintf(out, " d%d ", d);
    dump_range(n->place[d].stage[n->n_epilogue], out);
    if (n->place[d].stage[0].begin != n->place[d].stage[n->n_epilogue].begin ||
        n->place[d].stage[0].end != n->place[d].stage[n->n_epilogue].end) {
      fprintf(out, " (head ");
      dump_range(n->place[d].stage[0], out);
      fprintf(out, ")");
    }
  }
  fprintf(out, "  # %s\n", n->place[0].why ? n->place[0].why : "");
  if (!g->planned)
    return;
  fprintf(out, "    memory:");
  for (int d = 0; d < g->n_devices; d++) {
    const Placement *p = &n->place[d];
    if (p->offset < 0) {
      fprintf(out, " d%d -", d);
      continue;
    }
    fprintf(out, " d%d @%lld+%lld", d, (long long)p->offset,
            (long long)node_buffer_elems(n, d));
    if (p->in_place)
      fprintf(out, " (in place)");
  }
  fprintf(out, "\n");
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
    fprintf(out, " -> %s\n", shape_str(n->n_epilogue ? n->head_out : n->out, buf, sizeof buf));
    for (int k = 0; k < n->n_epilogue; k++) {
      const Node *s = &n->epilogue[k];
      fprintf(out, "    + %s = %s", s->name, op_name(s->op));
      dump_attrs(s, out);
      fprintf(out, " -> %s", shape_str(s->out, buf, sizeof buf));
      if (k + 1 == n->n_epilogue)
        fprintf(out, "  # fused: %s%s", n->fused_by, n->fusion_cut ? ", cut by partition" : "");
      fprintf(out, "\n");
    }
    if (g->n_devices)
      dump_placement(g, n, out);
    for (int t = 0; t < g->n_transfers; t++) {
      const Transfer *tr = &g->transfers[t];
      if (tr->node != i)
        continue;
      fprintf(out, "    transfer ");
      dump_range(tr->range, out);
      fprintf(out, " d%d -> d%d: %lld bytes/image\n", tr->from, tr->to, (long long)tr->bytes);
    }
  }
  fprintf(out, "  output %s\n", g->nodes[g->output].name);
  if (g->planned) {
    fprintf(out, "  arena:");
    for (int d = 0; d < g->n_devices; d++)
      fprintf(out, " d%d %lld", d, (long long)g->arena[d]);
    fprintf(out, " elements/image\n");
  }
  if (g->plan_note) {
    const char *p = g->plan_note;
    while (*p) {
      const char *e = p;
      while (*e && *e != '\n')
        e++;
      fprintf(out, "  # %.*s\n", (int)(e - p), p);
      p = *e ? e + 1 : e;
    }
  }
  fprintf(out, "}\n");
}
