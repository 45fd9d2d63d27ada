// Fusion: a chain conv -> relu -> lrn -> maxpool (or fc -> relu -> dropout) becomes
// one node whose later ops run as an epilogue on the tile the head op computed, so
// the intermediate tensors never travel through memory.
//
// Patterns are data: a list of op chains, tried longest first. A chain matches only
// when each op's output feeds exactly the next op and nothing else (a ReLU whose
// output is also read elsewhere, an LRN on another input, a value the caller wants
// to observe, or the network output in the middle of a chain all stop the match).
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

typedef struct {
  FusePattern id;
  OpKind ops[MAX_EPILOGUE + 1];
  int n;
} Pattern;

static const Pattern PATTERNS[] = {
    {FUSE_CONV_RELU_LRN_POOL, {OP_CONV, OP_RELU, OP_LRN, OP_MAXPOOL}, 4},
    {FUSE_CONV_RELU_LRN, {OP_CONV, OP_RELU, OP_LRN}, 3},
    {FUSE_CONV_RELU_POOL, {OP_CONV, OP_RELU, OP_MAXPOOL}, 3},
    {FUSE_FC_RELU_DROPOUT, {OP_FC, OP_RELU, OP_DROPOUT}, 3},
    {FUSE_CONV_RELU, {OP_CONV, OP_RELU}, 2},
    {FUSE_FC_RELU, {OP_FC, OP_RELU}, 2},
};

typedef struct {
  int *uses;     // readers of each node
  int *reader;   // the (last) reader of each node
  bool *kept;    // observable: must not disappear into a fused node
} Uses;

static Uses count_uses(const Graph *g, const PassOptions *opts) {
  Uses u = {xcalloc(g->n_nodes, sizeof(int)), xcalloc(g->n_nodes, sizeof(int)),
            xcalloc(g->n_nodes, sizeof(bool))};
  for (int i = 0; i < g->n_nodes; i++)
    for (int j = 0; j < g->nodes[i].n_inputs; j++) {
      u.uses[g->nodes[i].inputs[j]]++;
      u.reader[g->nodes[i].inputs[j]] = i;
    }
  for (int k = 0; k < opts->n_keep; k++)
    if (opts->keep[k] >= 0 && opts->keep[k] < g->n_nodes)
      u.kept[opts->keep[k]] = true;
  u.kept[g->output] = true;
  return u;
}

// The chain of nodes matching `p` from node i, or 0 if it does not match.
static int match(const Graph *g, const Uses *u, const Pattern *p, int i, int *chain) {
  if (g->nodes[i].op != p->ops[0] || g->nodes[i].n_epilogue)
    return 0;
  chain[0] = i;
  for (int k = 1; k < p->n; k++) {
    int cur = chain[k - 1];
    if (u->uses[cur] != 1 || u->kept[cur])
      return 0;
    int next = u->reader[cur];
    if (g->nodes[next].op != p->ops[k] || g->nodes[next].n_inputs != 1 ||
        g->nodes[next].n_epilogue)
      return 0;
    chain[k] = next;
  }
  return p->n;
}

// Moves the chain's tail nodes into the head's epilogue.
static void fold(Graph *g, const Pattern *p, const int *chain, bool *keep, int *replace) {
  Node *head = &g->nodes[chain[0]];
  head->n_epilogue = p->n - 1;
  head->epilogue = xcalloc(p->n - 1, sizeof(Node));
  head->fused_by = fuse_pattern_name(p->id);
  head->head_out = head->out;
  for (int k = 1; k < p->n; k++) {
    Node stage = g->nodes[chain[k]];
    stage.name = xstrdup(stage.name);
    stage.inputs = NULL;
    stage.n_inputs = 0;
    head->epilogue[k - 1] = stage;
    head->out = stage.out;
    keep[chain[k]] = false;
    replace[chain[k]] = chain[0];
  }
}

bool pass_fuse(Graph *g, const PassOptions *opts) {
  Uses u = count_uses(g, opts);
  bool *keep = xcalloc(g->n_nodes, sizeof(bool));
  int *replace = xcalloc(g->n_nodes, sizeof(int));
  for (int i = 0; i < g->n_nodes; i++)
    keep[i] = true;
  for (int i = 0; i < g->n_nodes; i++) {
    if (!keep[i])
      continue;
    for (size_t p = 0; p < sizeof PATTERNS / sizeof *PATTERNS; p++) {
      int chain[MAX_EPILOGUE + 1];
      if (opts->fuse[PATTERNS[p].id] && match(g, &u, &PATTERNS[p], i, chain)) {
        fold(g, &PATTERNS[p], chain, keep, replace);
        break;
      }
    }
  }
  graph_compact(g, keep, replace);
  free(keep);
  free(replace);
  free(u.uses);
  free(u.reader);
  free(u.kept);
  return true;
}
