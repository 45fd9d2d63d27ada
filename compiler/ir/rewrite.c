// Graph rewriting helpers for passes: removing nodes and cutting a fused node in two,
// keeping node indices dense and every input reference correct.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// Keeps the nodes with keep[i], in order. Readers of a removed node i read
// replace[i] instead (which must be kept). Frees what the removed nodes owned.
void graph_compact(Graph *g, const bool *keep, const int *replace) {
  int *new_index = xcalloc(g->n_nodes, sizeof *new_index);
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++)
    new_index[i] = keep[i] ? n++ : -1;
  for (int i = 0; i < g->n_nodes; i++)
    if (!keep[i])
      new_index[i] = new_index[replace[i]];
  int out = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    Node *node = &g->nodes[i];
    if (!keep[i]) {
      free(node->name);
      free(node->inputs);
      continue;
    }
    for (int j = 0; j < node->n_inputs; j++)
      node->inputs[j] = new_index[node->inputs[j]];
    g->nodes[out++] = *node;
  }
  g->output = new_index[g->output];
  g->n_nodes = n;
  free(new_index);
}

void graph_truncate(Graph *g, int node) {
  bool *keep = xcalloc(g->n_nodes, sizeof *keep);
  int *replace = xcalloc(g->n_nodes, sizeof *replace);
  keep[node] = true;
  for (int i = node; i >= 0; i--)  // topological: every input comes before its reader
    for (int j = 0; keep[i] && j < g->nodes[i].n_inputs; j++)
      keep[g->nodes[i].inputs[j]] = true;
  for (int i = 0; i < g->n_nodes; i++)
    replace[i] = node;  // nobody kept reads a removed node; compact wants a target anyway
  g->output = node;
  graph_compact(g, keep, replace);
  free(replace);
  free(keep);
}

// Inserts `node` (taking ownership) at index `at`; later nodes and every reference
// to them shift by one. Returns `at`.
int graph_insert(Graph *g, int at, Node node) {
  if (g->n_nodes == g->cap_nodes) {
    g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 16;
    g->nodes = xrealloc(g->nodes, g->cap_nodes * sizeof *g->nodes);
  }
  memmove(&g->nodes[at + 1], &g->nodes[at], (g->n_nodes - at) * sizeof *g->nodes);
  g->nodes[at] = node;
  g->n_nodes++;
  for (int i = 0; i < g->n_nodes; i++) {
    if (i == at)
      continue;
    for (int j = 0; j < g->nodes[i].n_inputs; j++)
      if (g->nodes[i].inputs[j] >= at)
        g->nodes[i].inputs[j]++;
  }
  for (int t = 0; t < g->n_transfers; t++)
    if (g->transfers[t].node >= at)
      g->transfers[t].node++;
  if (g->output >= at)
    g->output++;
  return at;
}

// Cuts fused node i before epilogue stage k (1 <= k <= n_epilogue): the node keeps
// stages 0..k-1, and a new node right after it runs stage k as its head with the
// rest as its epilogue. Readers of i now read the new node. Returns its index.
int graph_cut_fused(Graph *g, int i, int k) {
  Node *head = &g->nodes[i];
  Node tail = head->epilogue[k - 1];
  tail.inputs = NULL;
  tail.n_inputs = 0;
  int rest = head->n_epilogue - k;
  tail.n_epilogue = rest;
  tail.epilogue = rest ? xcalloc(rest, sizeof(Node)) : NULL;
  if (rest)
    memcpy(tail.epilogue, &head->epilogue[k], rest * sizeof(Node));
  tail.head_out = tail.out;
  tail.out = head->out;
  tail.fused_by = rest ? head->fused_by : NULL;
  tail.fusion_cut = rest > 0;
  head->fusion_cut = true;
  head->n_epilogue = k - 1;
  head->out = k > 1 ? head->epilogue[k - 2].out : head->head_out;
  if (head->n_epilogue == 0) {
    free(head->epilogue);
    head->epilogue = NULL;
    head->fused_by = NULL;
  }
  // Readers of node i (before insertion) must read the tail instead.
  for (int r = i + 1; r < g->n_nodes; r++)
    for (int j = 0; j < g->nodes[r].n_inputs; j++)
      if (g->nodes[r].inputs[j] == i)
        g->nodes[r].inputs[j] = -1;  // patched below, after indices shift
  bool was_output = g->output == i;
  int t = graph_insert(g, i + 1, tail);
  node_add_input(&g->nodes[t], i);
  for (int r = t + 1; r < g->n_nodes; r++)
    for (int j = 0; j < g->nodes[r].n_inputs; j++)
      if (g->nodes[r].inputs[j] == -1)
        g->nodes[r].inputs[j] = t;
  if (was_output)
    g->output = t;
  return t;
}

int graph_find_value(const Graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    const char *value = n->n_epilogue ? n->epilogue[n->n_epilogue - 1].name : n->name;
    if (!strcmp(value, name))
      return i;
  }
  return -1;
}
