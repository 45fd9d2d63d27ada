// The training program's verifier (alexc.h: train_program_verify): what a program must
// satisfy after autodiff and after every rewrite, as ir/verify.c for the graph.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static bool lives_across_steps(TValueKind k) {
  return k == TV_INPUT || k == TV_LABELS || k == TV_PARAM || k == TV_MOMENTUM;
}

static bool fail(const TrainProgram *p, int i, const char *fmt, const char *a, const char *b) {
  const TInstr *in = &p->instrs[i];
  fprintf(stderr, "alexc: internal error: training program instruction %d (%s %s): ", i,
          train_instr_names[in->kind], p->g->nodes[in->node].name);
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  return false;
}

// The kind each role must have.
static TValueKind role_kind(const TInstr *in, const TOperand *o) {
  const char *r = o->role;
  if (!strcmp(r, "x"))
    return TV_KIND_COUNT;  // the input or an activation: checked by the caller
  if (!strcmp(r, "y") || !strcmp(r, "relu_y") || !strcmp(r, "pool_y"))
    return TV_ACT;
  if (!strcmp(r, "dy") || !strcmp(r, "dx"))
    return TV_GRAD;
  if (!strcmp(r, "w") || !strcmp(r, "b"))
    return TV_PARAM;
  if (!strcmp(r, "dw") || !strcmp(r, "db"))
    return TV_PARAM_GRAD;
  if (!strcmp(r, "v"))
    return TV_MOMENTUM;
  if (!strcmp(r, "mask"))
    return TV_MASK;
  if (!strcmp(r, "saved") || !strcmp(r, "lrn_saved"))
    return TV_SAVED;
  (void)in;
  return !strcmp(r, "labels") ? TV_LABELS : TV_LOSS;
}

// Each value's size follows from its node: an output's elements, or a parameter's count.
static bool value_ok(const TrainProgram *p, int v) {
  const TValue *t = &p->values[v];
  if (t->node < 0)
    return t->elems == 1 && (t->kind == TV_LABELS || t->kind == TV_LOSS);
  if (t->node >= p->g->n_nodes)
    return false;
  const Node *n = &p->g->nodes[t->node];
  if (t->kind >= TV_PARAM)
    return t->elems == (t->bias ? n->n_bias : n->n_weight);
  return t->elems == shape_elems(n->out);
}

// The last node of the chain fused into a backward (its dy is that node's gradient), or
// the instruction's own node.
static int chain_end(const TInstr *in) {
  return in->pool >= 0 ? in->pool : in->lrn >= 0 ? in->lrn : in->relu >= 0 ? in->relu : in->node;
}

// Which node an operand must belong to: the instruction's own node for its output and
// parameters, input j's for x[j] and dx[j], the fused chain's last node for dy, each
// fused node for its own operands (relu_y, lrn_saved, pool_y).
static int role_node(const TrainProgram *p, const TInstr *in, const TOperand *o) {
  const Node *n = &p->g->nodes[in->node];
  if (o->ref >= in->x && o->ref < in->x + in->n_x)
    return in->kind == TI_LOSS ? p->logits : n->inputs[o->ref - in->x];
  if (in->dx && o->ref >= in->dx && o->ref < in->dx + in->n_x)
    return n->inputs[o->ref - in->dx];
  if (!strcmp(o->role, "labels") || !strcmp(o->role, "loss"))
    return -1;
  if (in->kind == TI_BACKWARD && !strcmp(o->role, "dy"))
    return chain_end(in);
  if (!strcmp(o->role, "relu_y"))
    return in->relu;
  if (!strcmp(o->role, "lrn_saved"))
    return in->lrn;
  if (!strcmp(o->role, "pool_y"))
    return in->pool;
  return in->node;
}

static bool check_operand(const TrainProgram *p, int i, const TOperand *o) {
  const TInstr *in = &p->instrs[i];
  int v = *o->ref;
  if (v >= p->n_values)
    return fail(p, i, "operand %s names value %s, which does not exist", o->role, "");
  const TValue *t = &p->values[v];
  TValueKind want = role_kind(in, o);
  bool kind_ok = want == TV_KIND_COUNT ? t->kind == TV_INPUT || t->kind == TV_ACT : t->kind == want;
  if (!kind_ok)
    return fail(p, i, "operand %s is a value of kind %s", o->role, train_value_kinds[t->kind]);
  if (t->node != role_node(p, in, o))
    return fail(p, i, "operand %s belongs to the wrong node%s", o->role, "");
  bool bias_role = !strcmp(o->role, "b") || !strcmp(o->role, "db");
  if (t->kind >= TV_PARAM && in->kind != TI_UPDATE && t->bias != bias_role)
    return fail(p, i, "operand %s is the %s", o->role, t->bias ? "bias" : "weight");
  return true;
}

// Whether node `node` reads node `from` (and only it: the chain's ops have one input).
static bool reads(const TrainProgram *p, int node, int from) {
  return node >= 0 && node < p->g->n_nodes && p->g->nodes[node].n_inputs == 1 &&
         p->g->nodes[node].inputs[0] == from;
}

// A chain fused into a backward (node -> ReLU -> LRN? -> max-pool?): each fused node of
// the op its role says, reading the one before, with its operands present; only a
// backward carries one; and the backward is dy's last reader (a kernel may mask that
// gradient in place). Returns NULL or what is wrong.
static const char *fused_chain_error(const TrainProgram *p, int i) {
  const TInstr *in = &p->instrs[i];
  if (in->relu < 0)
    return in->relu_y < 0 && in->lrn < 0 && in->pool < 0 && in->lrn_saved < 0 && in->pool_y < 0
               ? NULL
               : "an LRN or max-pool fused without a ReLU";
  const Node *g = p->g->nodes;
  if (in->kind != TI_BACKWARD || !reads(p, in->relu, in->node) || g[in->relu].op != OP_RELU ||
      in->relu_y < 0)
    return "the fused ReLU is not the reader of the node's output";
  if ((in->lrn >= 0 || in->pool >= 0) && g[in->node].op != OP_CONV)
    return "an LRN or max-pool fused into the backward of an op other than a conv";
  int prev = in->relu;
  if (in->lrn >= 0) {
    if (!reads(p, in->lrn, prev) || g[in->lrn].op != OP_LRN)
      return "the fused LRN is not the reader of the ReLU's output";
    if (in->lrn_saved < 0)  // its output is recomputed from them
      return "the fused LRN has no saved window sums";
    prev = in->lrn;
  } else if (in->lrn_saved >= 0) {
    return "LRN operands without a fused LRN";
  }
  if (in->pool >= 0 &&
      (!reads(p, in->pool, prev) || g[in->pool].op != OP_MAXPOOL || in->pool_y < 0))
    return "the fused max-pool is not the reader of the chain's last output";
  if (in->pool < 0 && in->pool_y >= 0)
    return "a pool operand without a fused max-pool";
  int values[TRAIN_MAX_OPERANDS];
  for (int k = i + 1; k < p->n_instrs; k++) {
    int n = train_instr_values((TInstr *)&p->instrs[k], values);
    for (int j = 0; j < n; j++)
      if (values[j] == in->dy)
        return "the chain's gradient is used after the fused backward";
  }
  return NULL;
}

// The gradients a fused chain keeps to itself, those of the head's and every fused
// node's output but the last, are no values of the program: no instruction reads or
// adds to one (nothing else may, since the kernel never stores them), and no other
// instruction runs a fused node's backward again. Each fused node's output has the next
// as its only reader among the nodes up to the logits, so no other backward adds to
// those gradients; this checks that no gradient of them is left in the program.
static bool chain_gradients_ok(const TrainProgram *p) {
  bool ok = true;
  for (int i = 0; i < p->n_instrs && ok; i++) {
    const TInstr *in = &p->instrs[i];
    if (in->kind != TI_BACKWARD || in->relu < 0)
      continue;
    int inner[4], n_inner = 0, fused[3] = {in->relu, in->lrn, in->pool};
    inner[n_inner++] = in->node;
    for (int k = 0; k < 3; k++)
      if (fused[k] >= 0 && fused[k] != chain_end(in))
        inner[n_inner++] = fused[k];
    for (int k = 0; k < n_inner && ok; k++) {
      int readers = 0;
      for (int j = inner[k] + 1; j <= p->logits; j++)
        for (int e = 0; e < p->g->nodes[j].n_inputs; e++)
          readers += p->g->nodes[j].inputs[e] == inner[k];
      ok = readers == 1 || fail(p, i, "fused node %s%s's output has another reader",
                                p->g->nodes[inner[k]].name, "");
    }
    for (int v = 0; v < p->n_values && ok; v++)
      for (int k = 0; k < n_inner && ok; k++)
        ok = !(p->values[v].kind == TV_GRAD && p->values[v].node == inner[k]) ||
             fail(p, i, "the gradient of %s%s, kept inside the fused chain, is a value of the "
                  "program", p->g->nodes[inner[k]].name, "");
    for (int j = 0; j < p->n_instrs && ok; j++)
      for (int k = 0; k < 3 && ok; k++)
        ok = !(j != i && fused[k] >= 0 && p->instrs[j].kind == TI_BACKWARD &&
               p->instrs[j].node == fused[k]) ||
             fail(p, i, "the backward of fused node %s%s runs again", p->g->nodes[fused[k]].name,
                  "");
  }
  return ok;
}

typedef struct {
  int writes, first_read, last_read, last_write, updates;
} Use;

static bool check_order(const TrainProgram *p, const Use *use) {
  for (int v = 0; v < p->n_values; v++) {
    const TValue *t = &p->values[v];
    const Use *u = &use[v];
    const char *name = t->node >= 0 ? p->g->nodes[t->node].name : train_value_kinds[t->kind];
    if (t->kind == TV_PARAM || t->kind == TV_MOMENTUM) {
      if (u->updates != 1 || (u->last_read >= 0 && u->last_read > u->last_write)) {
        fprintf(stderr, "alexc: internal error: training program: %s of %s is %s\n",
                train_value_kinds[t->kind], name,
                u->updates != 1 ? "not updated exactly once" : "read after its update");
        return false;
      }
    } else if (t->kind == TV_PARAM_GRAD && u->writes != 1) {
      fprintf(stderr, "alexc: internal error: training program: the gradient of %s's %s is "
              "written %d times (once expected)\n", name, t->bias ? "bias" : "weight", u->writes);
      return false;
    } else if (t->kind != TV_GRAD && !lives_across_steps(t->kind) && u->writes > 1) {
      fprintf(stderr, "alexc: internal error: training program: %s %s written twice\n",
              train_value_kinds[t->kind], name);
      return false;
    }
  }
  return true;
}

// With a memory plan: two arena values that are live at the same instruction never
// overlap in memory.
static bool check_plan(const TrainProgram *p) {
  for (int a = 0; p->offset && a < p->n_values; a++)
    for (int b = a + 1; b < p->n_values; b++) {
      if (p->offset[a] < 0 || p->offset[b] < 0)
        continue;
      bool same_time = p->first[a] <= p->last[b] && p->first[b] <= p->last[a];
      int64_t ea = p->offset[a] + train_value_floats(&p->values[a]),
              eb = p->offset[b] + train_value_floats(&p->values[b]);
      if (same_time && p->offset[a] < eb && p->offset[b] < ea) {
        fprintf(stderr, "alexc: internal error: training program: values %d and %d are live "
                "together but share memory\n", a, b);
        return false;
      }
    }
  return true;
}

// Where instruction kind `kind` of node `node` is (the first, or the last when `last`);
// -1 if none.
static int find(const TrainProgram *p, TInstrKind kind, int node, bool last) {
  int at = -1;
  for (int i = 0; i < p->n_instrs; i++)
    if (p->instrs[i].kind == kind && p->instrs[i].node == node && (last || at < 0))
      at = i;
  return at;
}

// Whether instruction i reads (as an input) or adds to (as an input's gradient) value v.
static bool uses_as_input(const TInstr *in, int v, bool gradient) {
  for (int j = 0; j < in->n_x; j++)
    if ((gradient ? (in->dx ? in->dx[j] : -1) : in->x[j]) == v)
      return true;
  return false;
}

static bool transfer_fail(const TrainProgram *p, int t, const char *what) {
  const Transfer *tr = &p->plan->transfers[t];
  fprintf(stderr, "alexc: internal error: training program: transfer %d (%s, d%d -> d%d) %s\n",
          t, p->g->nodes[tr->node].name, tr->from, tr->to, what);
  return false;
}

// With a plan: each transfer is sent once, after its node's forward and before any
// forward that reads the node; and reduced once when its node wants a gradient (and is
// not the logits), after every backward that adds to that gradient and before the
// node's own backward: a device's gradient is complete before its backward reads it.
static bool check_transfers(const TrainProgram *p) {
  for (int t = 0; p->plan && t < p->plan->n_transfers; t++) {
    int node = p->plan->transfers[t].node, sends = 0, reduces = 0, send = -1, reduce = -1;
    for (int i = 0; i < p->n_instrs; i++)
      if (p->instrs[i].transfer == t && p->instrs[i].kind == TI_SEND)
        sends++, send = i;
      else if (p->instrs[i].transfer == t && p->instrs[i].kind == TI_REDUCE)
        reduces++, reduce = i;
    bool wants = p->needs_grad[node] && node != p->logits;
    if (sends != 1 || reduces != wants)
      return transfer_fail(p, t, wants ? "is not sent and reduced exactly once"
                                       : "is not sent exactly once, or is reduced");
    if (send < find(p, TI_FORWARD, node, false))
      return transfer_fail(p, t, "is sent before its node's forward");
    for (int i = 0; i < p->n_instrs; i++) {
      const TInstr *in = &p->instrs[i];
      if (in->kind == TI_FORWARD && uses_as_input(in, p->act[node], false) && i < send)
        return transfer_fail(p, t, "is sent after a forward that reads it");
      if (wants && in->kind == TI_BACKWARD && uses_as_input(in, p->grad[node], true) &&
          i > reduce)
        return transfer_fail(p, t, "is reduced before a backward adds to its gradient");
    }
    if (wants && reduce > find(p, TI_BACKWARD, node, true))
      return transfer_fail(p, t, "is reduced after its node's backward");
  }
  return true;
}

bool train_program_verify(const TrainProgram *p) {
  for (int v = 0; v < p->n_values; v++)
    if (!value_ok(p, v)) {
      fprintf(stderr, "alexc: internal error: training program: value %d (%s) has the wrong "
              "size for its node\n", v, train_value_kinds[p->values[v].kind]);
      return false;
    }
  Use *use = xcalloc(p->n_values, sizeof *use);
  for (int v = 0; v < p->n_values; v++)
    use[v] = (Use){0, -1, -1, -1, 0};
  bool ok = true;
  TOperand ops[TRAIN_MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs && ok; i++) {
    TInstr *in = &p->instrs[i];
    const char *chain = fused_chain_error(p, i);
    ok = !chain || fail(p, i, "%s%s", chain, "");
    int n = train_instr_operands(in, ops);
    for (int k = 0; k < n && ok; k++) {
      int v = *ops[k].ref;
      if (!(ok = check_operand(p, i, &ops[k])))
        break;
      Use *u = &use[v];
      TValueKind kind = p->values[v].kind;
      if (!ops[k].write) {
        bool defined = lives_across_steps(kind) || kind == TV_GRAD || u->writes > 0;
        ok = defined || fail(p, i, "reads %s before anything writes it%s", ops[k].role, "");
        if (u->first_read < 0)
          u->first_read = i;
        if (!(in->kind == TI_UPDATE && (kind == TV_PARAM || kind == TV_MOMENTUM)))
          u->last_read = i;
      } else {
        ok = !(kind == TV_GRAD && u->first_read >= 0) ||
             fail(p, i, "adds to gradient %s after it was read%s", ops[k].role, "");
        u->writes++;
        u->last_write = i;
        u->updates += in->kind == TI_UPDATE && kind != TV_PARAM_GRAD;
      }
    }
  }
  ok = ok && chain_gradients_ok(p) && check_order(p, use) && check_plan(p) && check_transfers(p);
  free(use);
  return ok;
}

