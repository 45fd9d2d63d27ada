// The training program as text (alexc.h: train_program_dump; `alexc dump --train`).
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static void print_value(const TrainProgram *p, int v, FILE *out) {
  const TValue *t = &p->values[v];
  const char *node = t->node >= 0 ? p->g->nodes[t->node].name : "";
  const char *param = t->bias ? "bias" : "weight";
  switch (t->kind) {
  case TV_INPUT:
  case TV_ACT:
    fprintf(out, "%%%s", node);
    break;
  case TV_LABELS:
    fputs("labels", out);
    break;
  case TV_LOSS:
    fputs("loss", out);
    break;
  case TV_MASK:
    fprintf(out, "mask.%s", node);
    break;
  case TV_SAVED:
    fprintf(out, "saved.%s", node);
    break;
  case TV_GRAD:
    fprintf(out, "d%%%s", node);
    break;
  case TV_PARAM:
    fprintf(out, "%s.%s", node, param);
    break;
  case TV_PARAM_GRAD:
    fprintf(out, "d.%s.%s", node, param);
    break;
  case TV_MOMENTUM:
    fprintf(out, "v.%s.%s", node, param);
    break;
  case TV_KIND_COUNT:
    break;
  }
}

// "a, b, c": the operands read (write false) or written (write true), each once, dy
// first; an update's own parameter and momentum are shown as written only.
static void print_list(const TrainProgram *p, TInstr *in, bool write, FILE *out) {
  TOperand ops[TRAIN_MAX_OPERANDS];
  int n = train_instr_operands(in, ops);
  const char *sep = "";
  if (!write && in->dy >= 0 && in->kind == TI_BACKWARD) {
    print_value(p, in->dy, out);
    sep = ", ";
  }
  for (int k = 0; k < n; k++) {
    bool own = in->kind == TI_UPDATE && (ops[k].ref == &in->w || ops[k].ref == &in->v);
    bool shown = (in->kind == TI_BACKWARD && ops[k].ref == &in->dy) ||
                 ops[k].ref == &in->relu_y;  // the ReLU's note shows it
    if (ops[k].write != write || (own && !write) || shown)
      continue;
    fputs(sep, out);
    print_value(p, *ops[k].ref, out);
    if (write && p->values[*ops[k].ref].kind == TV_GRAD && in->kind == TI_BACKWARD)
      fputs(" (+=)", out);
    sep = ", ";
  }
}

static void print_instr(const TrainProgram *p, TInstr *in, FILE *out) {
  const Node *n = &p->g->nodes[in->node];
  fprintf(out, "  %-8s ", train_instr_names[in->kind]);
  switch (in->kind) {
  case TI_MASK:
    print_value(p, in->mask, out);
    fprintf(out, " = philox(seed, step, %s), p = %g\n", n->name, n->dropout.p);
    break;
  case TI_LOSS:
    fputs("loss, ", out);
    print_value(p, in->dy, out);
    fputs(" = softmax_xent(", out);
    print_list(p, in, false, out);
    fputs(")\n", out);
    break;
  case TI_BACKWARD:
    fprintf(out, "%s'(", op_name(n->op));
    print_list(p, in, false, out);
    fputs(") -> ", out);
    print_list(p, in, true, out);
    if (in->relu >= 0) {  // the fused chain, last node first, as its backward runs
      const char *relu = p->g->nodes[in->relu].name;
      fputs("  [", out);
      if (in->pool >= 0)
        fprintf(out, "%s' fused, ", p->g->nodes[in->pool].name);
      if (in->lrn >= 0)
        fprintf(out, "%s' fused (its output recomputed from its saved sums), ",
                p->g->nodes[in->lrn].name);
      fprintf(out, "%s fused: dy where %%%s > 0]", relu, relu);
    }
    fputc('\n', out);
    break;
  case TI_SEND:
  case TI_REDUCE: {
    const Transfer *t = &p->plan->transfers[in->transfer];
    bool send = in->kind == TI_SEND;
    print_value(p, send ? in->y : in->dy, out);
    fprintf(out, " channels [%lld, %lld): d%d -> d%d%s\n", (long long)t->range.begin,
            (long long)t->range.end, send ? t->from : t->to, send ? t->to : t->from,
            send ? "" : " (+=)");
    break;
  }
  default:  // forward, update
    print_list(p, in, true, out);
    fprintf(out, " = %s(", in->kind == TI_UPDATE ? "sgd" : op_name(n->op));
    print_list(p, in, false, out);
    fputs(")\n", out);
    break;
  }
}

void train_program_dump(const TrainProgram *p, FILE *out) {
  const Graph *g = p->g;
  int64_t bytes[TV_KIND_COUNT] = {0};
  int count[TV_KIND_COUNT] = {0};
  for (int v = 0; v < p->n_values; v++) {
    const TValue *t = &p->values[v];
    bytes[t->kind] += t->elems * (t->kind == TV_MASK ? 1 : 4);
    count[t->kind]++;
  }
  fprintf(out, "train %s: loss = softmax_xent(%%%s, labels), %d classes\n", g->name,
          g->nodes[p->logits].name, (int)g->nodes[p->logits].out.c);
  fprintf(out, "values (%d instructions, %d values):\n", p->n_instrs, p->n_values);
  for (int k = 0; k < TV_KIND_COUNT; k++)
    if (count[k])
      fprintf(out, "  %-19s %4d  %12lld bytes%s\n", train_value_kinds[k], count[k],
              (long long)bytes[k], train_value_per_image(k) ? " per image" : "");
  if (p->plan)  // the values are the whole tensors; each device keeps its own copies
    fprintf(out, "memory: each device's copies of the tensors, kept by the split (below)\n");
  else if (p->offset)
    fprintf(out, "memory plan: %lld bytes per image for the step's per-image values, shared "
            "where their lives do not overlap (%lld if each had its own)\n",
            (long long)p->arena * 4, (long long)p->unshared * 4);
  static const char *const phase_names[] = {"masks", "forward", NULL, "backward", "update"};
  int last = -1;
  for (int i = 0; i < p->n_instrs; i++) {
    TPhase phase = train_instr_phase(p->instrs[i].kind);
    if ((int)phase != last && phase_names[phase])
      fprintf(out, "%s:\n", phase_names[phase]);
    last = (int)phase;
    print_instr(p, &p->instrs[i], out);
  }
}
