// Backward fusion of the training program (alexc.h: train_fuse_backward), patterns as
// data as in passes/fuse.c: a ReLU's backward folds into the backward of the op that
// feeds it, which masks the ReLU's output gradient itself.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// A pattern names the op whose backward takes over its ReLU's: the op's own output
// gradient is then never stored, zeroed or added to.
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
    train_drop_unused_values(p);
}

