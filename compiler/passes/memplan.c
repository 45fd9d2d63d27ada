// Memory planning: every device gets one activation arena; each node's output gets
// an offset in it, live from the node that writes it to the last node that reads it
// on that device. Dead buffers are reused first fit; relu, dropout and flatten write
// over their input when it dies with them. A fused node's intermediate stages get
// no buffer: a fused kernel keeps them on chip. (The reference executor, which runs
// the stages one after another, allocates them itself.)
//
// Sizes are in elements per image: every buffer scales with the batch, so an offset
// planned per image, times the batch, is valid for any batch.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

#define ALIGN 16  // elements: keeps each buffer 64-byte aligned

typedef struct {
  int64_t offset, size;
  int last_use;  // node index after which the buffer is dead
} Block;

typedef struct {
  Block *live;
  int n;
  int64_t top;  // arena size so far
} Arena;

static int64_t align_up(int64_t v) { return (v + ALIGN - 1) / ALIGN * ALIGN; }

static int by_offset(const void *a, const void *b) {
  int64_t x = ((const Block *)a)->offset, y = ((const Block *)b)->offset;
  return (x > y) - (x < y);
}

static int64_t arena_alloc(Arena *a, int64_t size, int last_use) {
  size = align_up(size);
  if (a->n)
    qsort(a->live, a->n, sizeof *a->live, by_offset);
  int64_t at = 0;
  for (int i = 0; i < a->n; i++) {
    if (a->live[i].offset - at >= size)
      break;
    if (a->live[i].offset + a->live[i].size > at)
      at = a->live[i].offset + a->live[i].size;
  }
  a->live = xrealloc(a->live, (a->n + 1) * sizeof *a->live);
  a->live[a->n++] = (Block){at, size, last_use};
  if (at + size > a->top)
    a->top = at + size;
  return at;
}

static void arena_free_dead(Arena *a, int now) {
  int k = 0;
  for (int i = 0; i < a->n; i++)
    if (a->live[i].last_use >= now)
      a->live[k++] = a->live[i];
  a->n = k;
}

static Block *arena_find(Arena *a, int64_t offset) {
  for (int i = 0; i < a->n; i++)
    if (a->live[i].offset == offset)
      return &a->live[i];
  return NULL;
}

static bool reads_on(const Node *n, int d) { return range_len(n->place[d].stage[0]) > 0; }

// The last node that reads node i on device d (i itself if none does).
static int last_use(const Graph *g, int i, int d) {
  if (i == g->output)
    return g->n_nodes;
  int last = i;
  for (int r = i + 1; r < g->n_nodes; r++)
    for (int j = 0; j < g->nodes[r].n_inputs; j++)
      if (g->nodes[r].inputs[j] == i && reads_on(&g->nodes[r], d))
        last = r;
  return last;
}


// Can node i's output overwrite its input on device d?
static bool can_share(const Graph *g, int i, int d, const int *last) {
  const Node *n = &g->nodes[i];
  if (n->n_epilogue || (n->op != OP_RELU && n->op != OP_DROPOUT && n->op != OP_FLATTEN))
    return false;
  int in = n->inputs[0];
  const Node *src = &g->nodes[in];
  return in != g->output && src->op != OP_INPUT && last[in] == i &&
         node_buffer_elems(src, d) == node_buffer_elems(n, d) &&
         src->place[d].held.begin * shape_plane(src->out) == n->place[d].held.begin * shape_plane(n->out);
}

static void plan_device(Graph *g, int d) {
  Arena a = {0};
  int *last = xcalloc(g->n_nodes, sizeof(int));
  for (int i = 0; i < g->n_nodes; i++)
    last[i] = last_use(g, i, d);
  for (int i = 0; i < g->n_nodes; i++) {
    Placement *p = &g->nodes[i].place[d];
    arena_free_dead(&a, i);
    p->offset = -1;
    p->in_place = false;
    if (!node_buffer_elems(&g->nodes[i], d))
      continue;
    if (can_share(g, i, d, last)) {
      Block *b = arena_find(&a, g->nodes[g->nodes[i].inputs[0]].place[d].offset);
      b->last_use = last[i];
      p->offset = b->offset;
      p->in_place = true;
    } else {
      p->offset = arena_alloc(&a, node_buffer_elems(&g->nodes[i], d), last[i]);
    }
  }
  g->arena[d] = a.top;
  free(a.live);
  free(last);
}

bool pass_memplan(Graph *g, const PassOptions *opts) {
  (void)opts;
  memset(g->arena, 0, sizeof g->arena);
  for (int d = 0; d < g->n_devices; d++)
    plan_device(g, d);
  g->planned = true;
  return true;
}

int64_t plan_peak_bytes(const Graph *g, int device, int batch) {
  return g->arena[device] * (int64_t)batch * (int64_t)sizeof(float);
}

int64_t plan_param_count(const Graph *g, int device) {
  int64_t total = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    if (!n->n_weight)
      continue;
    int64_t rows = n->op == OP_CONV ? n->conv.out : n->fc.out;
    int64_t head = range_len(n->place[device].stage[0]);
    total += (n->n_weight / rows + (n->n_bias ? 1 : 0)) * head;
  }
  return total;
}

int64_t plan_bytes_in(const Graph *g, int device) {
  int64_t total = 0;
  for (int t = 0; t < g->n_transfers; t++)
    if (g->transfers[t].to == device)
      total += g->transfers[t].bytes;
  return total;
}
