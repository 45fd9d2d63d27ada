// Autodiff: a graph as parsed -> a training program (alexc.h: TValue, TInstr).
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
// Then, as for inference: train/fuse.c rewrites backward chains by patterns,
// train/memplan.c plans the memory, train/verify.c checks the result after each, and
// train/dump.c prints it.
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
  *in = (TInstr){kind, node, 0, NULL, NULL, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                 -1, -1, -1, -1, -1, -1, -1, -1, -1};
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

void train_add_transfers(TrainProgram *p, const Graph *plan) {
  TInstr *old = p->instrs;
  int n_old = p->n_instrs;
  p->instrs = NULL;
  p->n_instrs = 0;
  p->plan = plan;
  for (int i = 0; i < n_old; i++) {
    int node = old[i].node;
    for (int t = plan->n_transfers - 1; old[i].kind == TI_BACKWARD && node != p->logits && t >= 0;
         t--)
      if (plan->transfers[t].node == node) {
        TInstr *r = add_instr(p, TI_REDUCE, node);
        r->dy = p->grad[node], r->transfer = t;
      }
    TInstr *in = add_instr(p, old[i].kind, node);
    *in = old[i];  // its x and dx move with it
    in->saved = p->saved[node] = -1;
    for (int t = 0; old[i].kind == TI_FORWARD && t < plan->n_transfers; t++)
      if (plan->transfers[t].node == node) {
        TInstr *send = add_instr(p, TI_SEND, node);
        send->y = p->act[node], send->transfer = t;
      }
  }
  free(old);
  train_drop_unused_values(p);
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

static int push(TOperand *ops, int n, int *ref, const char *role, bool write) {
  if (*ref >= 0 && n < TRAIN_MAX_OPERANDS)
    ops[n++] = (TOperand){ref, role, write};
  return n;
}

int train_instr_operands(TInstr *in, TOperand *ops) {
  int n = 0;
  for (int j = 0; j < in->n_x; j++)
    n = push(ops, n, &in->x[j], "x", false);
  bool bwd = in->kind == TI_BACKWARD, upd = in->kind == TI_UPDATE;
  n = push(ops, n, &in->y, "y", in->kind == TI_FORWARD);
  n = push(ops, n, &in->dy, "dy", in->kind == TI_LOSS || in->kind == TI_REDUCE);
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
  n = push(ops, n, &in->lrn_saved, "lrn_saved", false);
  n = push(ops, n, &in->pool_y, "pool_y", false);
  for (int j = 0; bwd && j < in->n_x; j++)
    n = push(ops, n, &in->dx[j], "dx", true);
  if (upd) {
    n = push(ops, n, &in->w, "w", true);
    n = push(ops, n, &in->v, "v", true);
  }
  return n;
}

TPhase train_instr_phase(TInstrKind k) {
  static const TPhase phase[] = {PHASE_MASK,   PHASE_FORWARD, PHASE_LOSS,    PHASE_BACKWARD,
                                 PHASE_UPDATE, PHASE_FORWARD, PHASE_BACKWARD};
  return phase[k];
}

bool train_value_per_image(TValueKind k) { return k <= TV_GRAD && k != TV_LOSS; }

int train_instr_values(TInstr *in, int *values) {
  TOperand ops[TRAIN_MAX_OPERANDS];
  int n = train_instr_operands(in, ops), distinct = 0;
  for (int k = 0; k < n; k++) {
    bool seen = false;
    for (int j = 0; j < distinct; j++)
      seen = seen || values[j] == *ops[k].ref;
    if (!seen)
      values[distinct++] = *ops[k].ref;
  }
  return distinct;
}

const char *const train_instr_names[] = {"mask",   "forward", "loss",  "backward",
                                         "update", "send",    "reduce"};
const char *const train_value_kinds[] = {"input",    "labels",    "activation",
                                         "mask",     "saved",     "loss",
                                         "gradient", "parameter", "parameter gradient",
                                         "momentum"};

