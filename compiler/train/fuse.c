// Backward fusion of the training program (alexc.h: train_fuse_backward), patterns as
// data as in passes/fuse.c: the backward of a chain of ops that follow a conv or fc (a
// ReLU, then an LRN and/or a max-pool) folds into the head's backward, which takes the
// chain's last output gradient and produces the head's parameter and input gradients.
// The gradients inside the chain are then never values of the program: a kernel keeps
// them per image (grad_cpu.c) or in temporaries (grad_ref.c).
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

#define MAX_CHAIN 3

// A pattern: the head op, then the ops after it, each the sole reader of the one before.
// Longer patterns come first: the first enabled pattern that matches wins, so that with
// every pattern on, conv1 and conv2 of AlexNet fuse their whole conv-relu-lrn-pool chain,
// and conv5 its conv-relu-pool.
typedef struct {
  const char *name;
  OpKind head;
  int n_chain;
  OpKind chain[MAX_CHAIN];
} BackwardPattern;

static const BackwardPattern backward_patterns[] = {
    {"conv-relu-lrn-pool", OP_CONV, 3, {OP_RELU, OP_LRN, OP_MAXPOOL}},
    {"conv-relu-lrn", OP_CONV, 2, {OP_RELU, OP_LRN}},
    {"conv-relu-pool", OP_CONV, 2, {OP_RELU, OP_MAXPOOL}},
    {"conv-relu", OP_CONV, 1, {OP_RELU}},
    {"fc-relu", OP_FC, 1, {OP_RELU}},
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

void train_drop_unused_values(TrainProgram *p) {
  int *map = xcalloc(p->n_values, sizeof *map);
  for (int v = 0; v < p->n_values; v++)
    map[v] = -1;
  TOperand ops[TRAIN_MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs; i++) {
    int n = train_instr_operands(&p->instrs[i], ops);
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
    int n = train_instr_operands(&p->instrs[i], ops);
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

// The sole reader of node `node` among the nodes up to the logits, or -1.
static int sole_reader(const TrainProgram *p, int node) {
  if (node == p->logits || readers(p, node) != 1)
    return -1;
  for (int i = node + 1; i <= p->logits; i++)
    for (int j = 0; j < p->g->nodes[i].n_inputs; j++)
      if (p->g->nodes[i].inputs[j] == node)
        return i;
  return -1;
}

// The nodes of pattern `pat` after head `head` into chain[], if they are there: each op
// the pattern's, each the sole reader of the one before (so that nothing else adds to
// the gradients that disappear), each with its own backward to fold, an LRN with its
// saved window sums (the fused kernel recomputes its output from them).
static bool match(const TrainProgram *p, const BackwardPattern *pat, int head, int *chain) {
  if (p->g->nodes[head].op != pat->head)
    return false;
  for (int k = 0, at = head; k < pat->n_chain; k++) {
    at = sole_reader(p, at);
    if (at < 0 || p->g->nodes[at].op != pat->chain[k] || backward_of(p, at) < 0 ||
        (pat->chain[k] == OP_LRN && p->saved[at] < 0))
      return false;
    chain[k] = at;
  }
  return true;
}

// Folds the chain after head h's node into instruction h, if a pattern allows: h takes
// the chain's last gradient, and the chain's backward instructions go. Returns how many
// instructions went.
static int fuse_chain(TrainProgram *p, int h, const char *const *enabled) {
  int head = p->instrs[h].node, chain[MAX_CHAIN];
  const BackwardPattern *pat = NULL;
  for (size_t k = 0; !pat && k < sizeof backward_patterns / sizeof *backward_patterns; k++)
    if (pattern_on(backward_patterns[k].name, enabled) &&
        match(p, &backward_patterns[k], head, chain))
      pat = &backward_patterns[k];
  if (!pat)
    return 0;
  TInstr *hi = &p->instrs[h];
  int last = chain[pat->n_chain - 1];
  hi->dy = p->grad[last];
  p->grad[head] = -1;
  for (int k = 0; k < pat->n_chain; k++) {
    int node = chain[k];
    if (k < pat->n_chain - 1)
      p->grad[node] = -1;
    switch (p->g->nodes[node].op) {
    case OP_RELU:
      hi->relu = node, hi->relu_y = p->act[node];
      break;
    case OP_LRN:
      hi->lrn = node, hi->lrn_saved = p->saved[node];  // its output is recomputed
      break;
    default:  // OP_MAXPOOL
      hi->pool = node, hi->pool_y = p->act[node];
      break;
    }
  }
  // The chain's own backward instructions come before h (reverse node order).
  for (int k = 0; k < pat->n_chain; k++)
    remove_instr(p, backward_of(p, chain[k]));
  return pat->n_chain;
}

void train_fuse_backward(TrainProgram *p, const char *const *patterns) {
  bool fused = false;
  for (int i = 0; i < p->n_instrs; i++)
    if (p->instrs[i].kind == TI_BACKWARD) {
      int gone = fuse_chain(p, i, patterns);
      i -= gone;  // the chain's instructions were before i
      fused = fused || gone > 0;
    }
  if (fused)
    train_drop_unused_values(p);
}
