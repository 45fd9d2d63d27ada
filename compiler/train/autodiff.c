// Autodiff: a graph as parsed -> a training program, its verifier, its backward fusion
// and its text form.
//
// A training step is a list of instructions over numbered values (alexc.h: TValue,
// TInstr), so what a step reads, writes and keeps is explicit and checkable, as the graph
// is for inference. autodiff() emits, in order:
//   masks     one TI_MASK per dropout layer, drawn before the forward so that the forward
//             and the backward read the same saved state;
//   forward   one TI_FORWARD per node up to the logits, each output kept as a value;
//   loss      softmax cross-entropy of the logits, which also writes their gradient;
//   backward  the nodes in reverse, each adding to its inputs' gradients and writing its
//             parameters' gradients, only where a gradient is wanted;
//   update    one TI_UPDATE per parameter tensor.
// train_fuse_backward() then rewrites backward chains by patterns, as passes/fuse.c does
// for inference, and train_program_verify() checks the result.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// ---------------------------------------------------------------- building

static int add_value(TrainProgram *p, TValueKind kind, int node, bool bias, int64_t elems) {
  p->values = xrealloc(p->values, (p->n_values + 1) * sizeof *p->values);
  p->values[p->n_values] = (TValue){kind, node, bias, elems};
  return p->n_values++;
}

static TInstr *add_instr(TrainProgram *p, TInstrKind kind, int node) {
  p->instrs = xrealloc(p->instrs, (p->n_instrs + 1) * sizeof *p->instrs);
  TInstr *in = &p->instrs[p->n_instrs++];
  *in = (TInstr){kind, node, 0, NULL, NULL, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  return in;
}

static int *filled(int n, int v) {
  int *a = xcalloc(n > 0 ? n : 1, sizeof *a);
  for (int i = 0; i < n; i++)
    a[i] = v;
  return a;
}

// The logits: the input of a final softmax, else the output.
static int find_logits(const Graph *g) {
  const Node *out = &g->nodes[g->output];
  return out->op == OP_SOFTMAX ? out->inputs[0] : g->output;
}

// A node needs dL/d(output) when it or one of its ancestors has parameters. Nodes are in
// topological order, so one forward sweep settles it; the image never needs one, so
// conv1's backward-data (a large share of a step) is never computed.
static void plan_grads(const Graph *g, int logits, bool *needs) {
  for (int i = 0; i <= logits; i++) {
    const Node *n = &g->nodes[i];
    bool need = n->n_weight > 0 || n->n_bias > 0;
    for (int j = 0; j < n->n_inputs; j++)
      need = need || needs[n->inputs[j]];
    needs[i] = need;
  }
}

// Parameter values of one node: [0] weight, [1] bias; -1 where it has none.
typedef struct {
  int w[2], dw[2], v[2];
} ParamValues;

static ParamValues add_params(TrainProgram *p, const Node *n, int node) {
  ParamValues pv = {{-1, -1}, {-1, -1}, {-1, -1}};
  int64_t count[2] = {n->n_weight, n->n_bias};
  for (int b = 0; b < 2; b++)
    if (count[b] > 0) {
      pv.w[b] = add_value(p, TV_PARAM, node, b, count[b]);
      pv.dw[b] = add_value(p, TV_PARAM_GRAD, node, b, count[b]);
      pv.v[b] = add_value(p, TV_MOMENTUM, node, b, count[b]);
    }
  return pv;
}

static void set_inputs(TInstr *in, const TrainProgram *p, const Node *n) {
  in->n_x = n->n_inputs;
  in->x = xcalloc(n->n_inputs, sizeof *in->x);
  for (int j = 0; j < n->n_inputs; j++)
    in->x[j] = p->act[n->inputs[j]];
}

// What an op's backward reads of its forward besides dy: its inputs (a conv's or fc's
// for the weight gradient, a ReLU's sign, the LRN's and pool's windows) and its output
// (the pool's maxima, the LRN's and softmax's values). Only these must be kept.
static bool backward_reads_x(OpKind op) {
  return op == OP_CONV || op == OP_FC || op == OP_RELU || op == OP_LRN || op == OP_MAXPOOL;
}
static bool backward_reads_y(OpKind op) {
  return op == OP_LRN || op == OP_MAXPOOL || op == OP_SOFTMAX;
}

static void emit_backward(TrainProgram *p, int i, const ParamValues *pv) {
  const Node *n = &p->g->nodes[i];
  TInstr *in = add_instr(p, TI_BACKWARD, i);
  set_inputs(in, p, n);
  in->dx = xcalloc(n->n_inputs, sizeof *in->dx);
  for (int j = 0; j < n->n_inputs; j++) {
    in->dx[j] = p->grad[n->inputs[j]];  // -1 where the input needs no gradient
    if (!backward_reads_x(n->op))
      in->x[j] = -1;
  }
  in->y = backward_reads_y(n->op) ? p->act[i] : -1;
  in->dy = p->grad[i];
  in->w = pv->w[0], in->b = pv->w[1];
  in->dw = pv->dw[0], in->db = pv->dw[1];
  in->mask = p->mask[i];
  in->saved = p->saved[i];
}

TrainProgram *autodiff(const Graph *g) {
  int logits = find_logits(g);
  const Node *ln = &g->nodes[logits];
  if (ln->out.rank != 1 || ln->out.c < 2) {
    error("%s: training needs a network that ends in class scores (a flat tensor of at least "
          "2 features, optionally followed by softmax); '%s' is not", g->name, ln->name);
    return NULL;
  }
  TrainProgram *p = xcalloc(1, sizeof *p);
  p->g = g;
  p->logits = logits;
  p->act = filled(g->n_nodes, -1);
  p->grad = filled(g->n_nodes, -1);
  p->mask = filled(g->n_nodes, -1);
  p->saved = filled(g->n_nodes, -1);
  p->needs_grad = xcalloc(g->n_nodes, sizeof *p->needs_grad);
  plan_grads(g, logits, p->needs_grad);
  ParamValues *pv = xcalloc(logits + 1, sizeof *pv);

  p->input = p->act[0] = add_value(p, TV_INPUT, 0, false, shape_elems(g->nodes[0].out));
  p->labels = add_value(p, TV_LABELS, -1, false, 1);
  p->loss = add_value(p, TV_LOSS, -1, false, 1);
  for (int i = 1; i <= logits; i++) {
    const Node *n = &g->nodes[i];
    pv[i] = add_params(p, n, i);
    p->act[i] = add_value(p, TV_ACT, i, false, shape_elems(n->out));
    if (p->needs_grad[i])
      p->grad[i] = add_value(p, TV_GRAD, i, false, shape_elems(n->out));
    if (p->needs_grad[i] && n->op == OP_LRN)  // its window sums, not recomputed
      p->saved[i] = add_value(p, TV_SAVED, i, false, shape_elems(n->out));
    if (n->op == OP_DROPOUT)
      add_instr(p, TI_MASK, i)->mask = p->mask[i] =
          add_value(p, TV_MASK, i, false, shape_elems(n->out));
  }
  for (int i = 1; i <= logits; i++) {
    TInstr *in = add_instr(p, TI_FORWARD, i);
    set_inputs(in, p, &g->nodes[i]);
    in->y = p->act[i];
    in->w = pv[i].w[0], in->b = pv[i].w[1];
    in->mask = p->mask[i];
    in->saved = p->saved[i];
  }
  TInstr *loss = add_instr(p, TI_LOSS, logits);
  loss->n_x = 1;
  loss->x = filled(1, p->act[logits]);
  loss->labels = p->labels;
  loss->loss = p->loss;
  loss->dy = p->grad[logits];
  for (int i = logits; i >= 1; i--)
    if (p->needs_grad[i])
      emit_backward(p, i, &pv[i]);
  for (int i = 1; i <= logits; i++)
    for (int b = 0; b < 2; b++)
      if (pv[i].w[b] >= 0) {
        TInstr *u = add_instr(p, TI_UPDATE, i);
        u->w = pv[i].w[b], u->dw = pv[i].dw[b], u->v = pv[i].v[b];
      }
  free(pv);
  return p;
}

void train_program_free(TrainProgram *p) {
  if (!p)
    return;
  for (int i = 0; i < p->n_instrs; i++) {
    free(p->instrs[i].x);
    free(p->instrs[i].dx);
  }
  free(p->instrs);
  free(p->values);
  free(p->act);
  free(p->grad);
  free(p->mask);
  free(p->saved);
  free(p->needs_grad);
  free(p->offset);
  free(p->first);
  free(p->last);
  free(p);
}

// ---------------------------------------------------------------- operands

// One operand of an instruction: where it is stored (so a pass can renumber it), its
// role's name, and whether the instruction reads or writes it.
typedef struct {
  int *ref;
  const char *role;
  bool write;
} Operand;

#define MAX_OPERANDS TRAIN_MAX_OPERANDS

static int push(Operand *ops, int n, int *ref, const char *role, bool write) {
  if (*ref >= 0 && n < MAX_OPERANDS)
    ops[n++] = (Operand){ref, role, write};
  return n;
}

// The values an instruction uses, reads before writes (an update reads w and v, then
// writes them).
static int operands(TInstr *in, Operand *ops) {
  int n = 0;
  for (int j = 0; j < in->n_x; j++)
    n = push(ops, n, &in->x[j], "x", false);
  bool bwd = in->kind == TI_BACKWARD, upd = in->kind == TI_UPDATE;
  n = push(ops, n, &in->y, "y", in->kind == TI_FORWARD);
  n = push(ops, n, &in->dy, "dy", in->kind == TI_LOSS);
  n = push(ops, n, &in->w, "w", false);
  n = push(ops, n, &in->b, "b", false);
  n = push(ops, n, &in->dw, "dw", bwd);
  n = push(ops, n, &in->db, "db", bwd);
  n = push(ops, n, &in->v, "v", false);
  n = push(ops, n, &in->mask, "mask", in->kind == TI_MASK);
  n = push(ops, n, &in->saved, "saved", in->kind == TI_FORWARD);
  n = push(ops, n, &in->labels, "labels", false);
  n = push(ops, n, &in->loss, "loss", true);
  n = push(ops, n, &in->relu_y, "relu_y", false);
  for (int j = 0; bwd && j < in->n_x; j++)
    n = push(ops, n, &in->dx[j], "dx", true);
  if (upd) {
    n = push(ops, n, &in->w, "w", true);
    n = push(ops, n, &in->v, "v", true);
  }
  return n;
}

int train_instr_values(TInstr *in, int *values) {
  Operand ops[MAX_OPERANDS];
  int n = operands(in, ops), distinct = 0;
  for (int k = 0; k < n; k++) {
    bool seen = false;
    for (int j = 0; j < distinct; j++)
      seen = seen || values[j] == *ops[k].ref;
    if (!seen)
      values[distinct++] = *ops[k].ref;
  }
  return distinct;
}

// ---------------------------------------------------------------- the verifier

static const char *const instr_names[] = {"mask", "forward", "loss", "backward", "update"};
static const char *const value_kinds[] = {"input",    "labels",    "activation",
                                          "mask",     "saved",     "loss",
                                          "gradient", "parameter", "parameter gradient",
                                          "momentum"};

static bool per_image(TValueKind k) { return k <= TV_GRAD && k != TV_LOSS; }
static bool lives_across_steps(TValueKind k) {
  return k == TV_INPUT || k == TV_LABELS || k == TV_PARAM || k == TV_MOMENTUM;
}

static bool fail(const TrainProgram *p, int i, const char *fmt, const char *a, const char *b) {
  const TInstr *in = &p->instrs[i];
  fprintf(stderr, "alexc: internal error: training program instruction %d (%s %s): ", i,
          instr_names[in->kind], p->g->nodes[in->node].name);
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  return false;
}

// The kind each role must have.
static TValueKind role_kind(const TInstr *in, const Operand *o) {
  const char *r = o->role;
  if (!strcmp(r, "x"))
    return TV_KIND_COUNT;  // the input or an activation: checked by the caller
  if (!strcmp(r, "y") || !strcmp(r, "relu_y"))
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
  if (!strcmp(r, "saved"))
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

// Which node an operand must belong to: the instruction's own node for its output and
// parameters, input j's for x[j] and dx[j], the fused ReLU's for dy and relu_y.
static int role_node(const TrainProgram *p, const TInstr *in, const Operand *o) {
  const Node *n = &p->g->nodes[in->node];
  if (o->ref >= in->x && o->ref < in->x + in->n_x)
    return in->kind == TI_LOSS ? p->logits : n->inputs[o->ref - in->x];
  if (in->dx && o->ref >= in->dx && o->ref < in->dx + in->n_x)
    return n->inputs[o->ref - in->dx];
  if (!strcmp(o->role, "labels") || !strcmp(o->role, "loss"))
    return -1;
  if (in->relu >= 0 && (!strcmp(o->role, "dy") || !strcmp(o->role, "relu_y")))
    return in->relu;
  return in->node;
}

static bool check_operand(const TrainProgram *p, int i, const Operand *o) {
  const TInstr *in = &p->instrs[i];
  int v = *o->ref;
  if (v >= p->n_values)
    return fail(p, i, "operand %s names value %s, which does not exist", o->role, "");
  const TValue *t = &p->values[v];
  TValueKind want = role_kind(in, o);
  bool kind_ok = want == TV_KIND_COUNT ? t->kind == TV_INPUT || t->kind == TV_ACT : t->kind == want;
  if (!kind_ok)
    return fail(p, i, "operand %s is a value of kind %s", o->role, value_kinds[t->kind]);
  if (t->node != role_node(p, in, o))
    return fail(p, i, "operand %s belongs to the wrong node%s", o->role, "");
  bool bias_role = !strcmp(o->role, "b") || !strcmp(o->role, "db");
  if (t->kind >= TV_PARAM && in->kind != TI_UPDATE && t->bias != bias_role)
    return fail(p, i, "operand %s is the %s", o->role, t->bias ? "bias" : "weight");
  return true;
}

// A ReLU fused into a backward must be the ReLU that reads this node's output.
static bool fused_relu_ok(const TrainProgram *p, int i) {
  const TInstr *in = &p->instrs[i];
  if (in->relu < 0)
    return in->relu_y < 0;
  const Node *r = &p->g->nodes[in->relu];
  return in->kind == TI_BACKWARD && r->op == OP_RELU && r->inputs[0] == in->node &&
         in->relu_y >= 0;
}

typedef struct {
  int writes, first_read, last_read, last_write, updates;
} Use;

static bool check_order(const TrainProgram *p, const Use *use) {
  for (int v = 0; v < p->n_values; v++) {
    const TValue *t = &p->values[v];
    const Use *u = &use[v];
    const char *name = t->node >= 0 ? p->g->nodes[t->node].name : value_kinds[t->kind];
    if (t->kind == TV_PARAM || t->kind == TV_MOMENTUM) {
      if (u->updates != 1 || (u->last_read >= 0 && u->last_read > u->last_write)) {
        fprintf(stderr, "alexc: internal error: training program: %s of %s is %s\n",
                value_kinds[t->kind], name,
                u->updates != 1 ? "not updated exactly once" : "read after its update");
        return false;
      }
    } else if (t->kind == TV_PARAM_GRAD && u->writes != 1) {
      fprintf(stderr, "alexc: internal error: training program: the gradient of %s's %s is "
              "written %d times (once expected)\n", name, t->bias ? "bias" : "weight", u->writes);
      return false;
    } else if (t->kind != TV_GRAD && !lives_across_steps(t->kind) && u->writes > 1) {
      fprintf(stderr, "alexc: internal error: training program: %s %s written twice\n",
              value_kinds[t->kind], name);
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

bool train_program_verify(const TrainProgram *p) {
  for (int v = 0; v < p->n_values; v++)
    if (!value_ok(p, v)) {
      fprintf(stderr, "alexc: internal error: training program: value %d (%s) has the wrong "
              "size for its node\n", v, value_kinds[p->values[v].kind]);
      return false;
    }
  Use *use = xcalloc(p->n_values, sizeof *use);
  for (int v = 0; v < p->n_values; v++)
    use[v] = (Use){0, -1, -1, -1, 0};
  bool ok = true;
  Operand ops[MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs && ok; i++) {
    TInstr *in = &p->instrs[i];
    ok = fused_relu_ok(p, i) || fail(p, i, "the fused ReLU %s%s is not its output's reader",
                                     in->relu >= 0 ? p->g->nodes[in->relu].name : "", "");
    int n = operands(in, ops);
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
  ok = ok && check_order(p, use) && check_plan(p);
  free(use);
  return ok;
}

// ---------------------------------------------------------------- backward fusion

// A pattern folds a ReLU's backward into the backward of the op that feeds it: the op's
// kernel masks the ReLU's output gradient by the ReLU's output (> 0) itself, so the
// op's own output gradient is never stored, zeroed or added to.
typedef struct {
  const char *name;
  OpKind head;
} BackwardPattern;

static const BackwardPattern backward_patterns[] = {
    {"conv-relu", OP_CONV},
    {"fc-relu", OP_FC},
};

static bool pattern_on(const char *name, const char *const *enabled) {
  if (!enabled)
    return true;
  for (int i = 0; enabled[i]; i++)
    if (!strcmp(enabled[i], name))
      return true;
  return false;
}

static int backward_of(const TrainProgram *p, int node) {
  for (int i = 0; i < p->n_instrs; i++)
    if (p->instrs[i].kind == TI_BACKWARD && p->instrs[i].node == node)
      return i;
  return -1;
}

// Readers of node `node` among the nodes up to the logits.
static int readers(const TrainProgram *p, int node) {
  int count = 0;
  for (int i = node + 1; i <= p->logits; i++)
    for (int j = 0; j < p->g->nodes[i].n_inputs; j++)
      count += p->g->nodes[i].inputs[j] == node;
  return count;
}

static void remove_instr(TrainProgram *p, int i) {
  free(p->instrs[i].x);
  free(p->instrs[i].dx);
  memmove(&p->instrs[i], &p->instrs[i + 1], (p->n_instrs - i - 1) * sizeof *p->instrs);
  p->n_instrs--;
}

// Drops values no instruction uses any more and renumbers the rest.
static void compact_values(TrainProgram *p) {
  int *map = filled(p->n_values, -1);
  Operand ops[MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs; i++) {
    int n = operands(&p->instrs[i], ops);
    for (int k = 0; k < n; k++)
      map[*ops[k].ref] = 0;
  }
  map[p->input] = map[p->labels] = map[p->loss] = 0;
  int kept = 0;
  for (int v = 0; v < p->n_values; v++)
    if (map[v] == 0) {
      p->values[kept] = p->values[v];
      map[v] = kept++;
    }
  p->n_values = kept;
  for (int i = 0; i < p->n_instrs; i++) {
    int n = operands(&p->instrs[i], ops);
    for (int k = 0; k < n; k++) {
      bool seen = false;  // an update lists w and v twice (read, then written)
      for (int j = 0; j < k; j++)
        seen = seen || ops[j].ref == ops[k].ref;
      if (!seen)
        *ops[k].ref = map[*ops[k].ref];
    }
  }
  int *per_node[] = {p->act, p->grad, p->mask, p->saved};
  for (int a = 0; a < 4; a++)
    for (int i = 0; i < p->g->n_nodes; i++)
      if (per_node[a][i] >= 0)
        per_node[a][i] = map[per_node[a][i]];
  p->input = map[p->input], p->labels = map[p->labels], p->loss = map[p->loss];
  free(map);
  free(p->offset), free(p->first), free(p->last);  // planned for the old numbering
  p->offset = NULL, p->first = p->last = NULL;
}

// Folds ReLU backward i into the backward of the node feeding it, if a pattern allows.
static bool fuse_relu(TrainProgram *p, int i, const char *const *enabled) {
  const TInstr *r = &p->instrs[i];
  const Node *relu = &p->g->nodes[r->node];
  int head = relu->inputs[0], h = backward_of(p, head);
  if (relu->op != OP_RELU || h < 0 || head == p->logits || readers(p, head) != 1)
    return false;
  bool matched = false;
  for (size_t k = 0; k < sizeof backward_patterns / sizeof *backward_patterns; k++)
    matched = matched || (backward_patterns[k].head == p->g->nodes[head].op &&
                          pattern_on(backward_patterns[k].name, enabled));
  if (!matched)
    return false;
  TInstr *hi = &p->instrs[h];
  hi->dy = r->dy;
  hi->relu = r->node;
  hi->relu_y = p->act[r->node];
  p->grad[head] = -1;
  remove_instr(p, i);
  return true;
}

void train_fuse_backward(TrainProgram *p, const char *const *patterns) {
  bool fused = false;
  for (int i = 0; i < p->n_instrs;)
    if (p->instrs[i].kind == TI_BACKWARD && fuse_relu(p, i, patterns))
      fused = true;  // instruction i is gone; i now names the next one
    else
      i++;
  if (fused)
    compact_values(p);
}

// ---------------------------------------------------------------- text

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
  Operand ops[MAX_OPERANDS];
  int n = operands(in, ops);
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
  fprintf(out, "  %-8s ", instr_names[in->kind]);
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
    if (in->relu >= 0)
      fprintf(out, "  [%s fused: dy where %%%s > 0]", p->g->nodes[in->relu].name,
              p->g->nodes[in->relu].name);
    fputc('\n', out);
    break;
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
      fprintf(out, "  %-19s %4d  %12lld bytes%s\n", value_kinds[k], count[k],
              (long long)bytes[k], per_image(k) ? " per image" : "");
  if (p->offset)
    fprintf(out, "memory plan: %lld bytes per image for the step's per-image values, shared "
            "where their lives do not overlap (%lld if each had its own)\n",
            (long long)p->arena * 4, (long long)p->unshared * 4);
  TInstrKind last = TI_UPDATE + 1;
  for (int i = 0; i < p->n_instrs; i++) {
    if (p->instrs[i].kind != last && p->instrs[i].kind != TI_LOSS)
      fprintf(out, "%s:\n", instr_names[p->instrs[i].kind]);
    last = p->instrs[i].kind;
    print_instr(p, &p->instrs[i], out);
  }
}
