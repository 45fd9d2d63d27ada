// Model-parallel training: the partition pass's plan, run forward and transposed
// backward on logical devices in one process (alexc train --devices N). The training
// program drives it: its forward and backward instructions call split_node_forward and
// split_node_backward, its sends and reductions (train_add_transfers) split_send and
// split_reduce.
//
// The partition pass (passes/partition.c) says which output channels of each node
// every device computes and which channels it receives from the others (transfers).
//   - Forward: each device computes its channels of each node from the input channels
//     it holds; then the node's transfers copy channels to the devices that read them.
//   - Backward: each device turns dL/d(its channels) into the gradient of its own rows
//     of the layer's weights (no other device has those rows: no reduction) and into a
//     partial dL/d(input) over the input channels it read. Each forward transfer's
//     transpose is a reduction: the receiver's partial gradient is added into the
//     sender's, so a layer split over devices sums its partial input gradients on the
//     device that owns those channels.
// Each device's share of a node runs through the same kernel table as one device, as a
// "piece": a small graph of the inputs it reads and the op, with local shapes. A conv
// piece lies within one channel group (a plain conv over that group's input channels,
// whose weights are a contiguous block of rows), an LRN piece within one LRN group (an
// LRN over its channels plus the halo its windows read; only its own channels are kept).
// Ranges in this file are in the whole tensor's coordinates; buffers of pieces are
// local, (batch, channels read, plane). Each device keeps each node it holds in the
// whole tensor's layout, so channel ranges index it directly.
//
// Devices as MPI ranks (split_set_self, alexc train --device-ranks): each process runs
// only device `self`'s pieces. A transfer is then a message from the sender's rank to the
// receiver's (split_send packs the channels of n images), its transpose a message back
// (split_reduce), and the logits are summed over the ranks, each holding its own channels
// and zeros elsewhere. Every rank runs the same instructions in the same order, so each
// blocking send meets its receive. A rank's weight gradients are right only in its own
// pieces' rows; split_assemble gathers the owners' rows where the whole weights are needed.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

typedef struct {
  int node, device;
  Graph *g;         // the inputs it reads, then the op (the output node)
  Range out;        // output channels this piece contributes
  Range lout;       // output channels the local op computes: out, plus an LRN's halo
  int n_in;
  int *input;       // spec node of each local input
  Range *in;        // channels read of each
  int64_t w_off, b_off;  // first element of the piece's weight rows and biases
  float **x, *y, *dy, **dx;
  uint8_t *mask;
} Piece;

struct Split {
  Graph *plan;        // the spec, partitioned
  int devices, batch, logits;
  int self;           // the one device this process runs (an MPI rank), or -1: all of them
  const bool *needs_grad;
  Piece *pieces;      // in node order, devices in order within a node
  int n_pieces;
  float **act[MAX_DEVICES], **grad[MAX_DEVICES];  // per device, per node: whole-tensor layout
};

static Range rng(int64_t b, int64_t e) { return (Range){b, e}; }

static Shape with_channels(Shape s, int64_t c) {
  s.c = c;
  return s;
}

// dst channels [dst_at, dst_at+count) (+)= src channels [src_at, ...) for n images of
// tensors with dst_c and src_c channels of `plane` elements.
static void move_channels(float *dst, int64_t dst_c, int64_t dst_at, const float *src,
                          int64_t src_c, int64_t src_at, int64_t count, int64_t plane, int n,
                          bool add) {
  if (count <= 0)  // a device with no share: its buffers may not exist
    return;
  for (int i = 0; i < n; i++) {
    float *d = dst + (i * dst_c + dst_at) * plane;
    const float *s = src + (i * src_c + src_at) * plane;
    if (add)
      for (int64_t e = 0; e < count * plane; e++)
        d[e] += s[e];
    else
      memcpy(d, s, count * plane * sizeof(float));
  }
}

// The channel group a piece must not cross: a conv's or an LRN's groups (a conv group
// reads only its own input channels, an LRN window stops at the group's edge); 0 for
// ops whose device share is one piece.
static int64_t piece_group(const Graph *g, const Node *n) {
  if (n->op == OP_CONV)
    return n->conv.out / n->conv.groups;
  if (n->op == OP_LRN)
    return g->nodes[n->inputs[0]].out.c / n->lrn.groups;
  return 0;
}

// Builds the piece's local graph; false (an internal error) if the plan left device d
// without an input channel the piece reads.
static bool piece_build(Split *s, const Graph *spec, Piece *p) {
  const Node *n = &spec->nodes[p->node];
  p->lout = n->op == OP_LRN ? lrn_input_need(&n->lrn, n->out.c, p->out) : p->out;
  p->input = xcalloc(n->n_inputs, sizeof *p->input);
  p->in = xcalloc(n->n_inputs, sizeof *p->in);
  p->g = graph_new(n->name);
  for (int j = 0; j < n->n_inputs; j++) {
    Range need = n->op == OP_LRN ? p->lout : op_input_need(spec, n, j, p->out);
    if (!range_len(need))
      continue;  // a concat piece that reads none of this input
    Range held = s->plan->nodes[n->inputs[j]].place[p->device].held;
    if (need.begin < held.begin || need.end > held.end) {
      error("internal error: the partition plan leaves device %d without channels [%lld, %lld) "
            "of '%s', which '%s' reads", p->device, (long long)need.begin, (long long)need.end,
            spec->nodes[n->inputs[j]].name, n->name);
      return false;
    }
    const Node *src = &spec->nodes[n->inputs[j]];
    int k = graph_add(p->g, src->name, OP_INPUT, src->loc);
    p->g->nodes[k].out = with_channels(src->out, range_len(need));
    p->input[p->n_in] = n->inputs[j];
    p->in[p->n_in++] = need;
  }
  int k = graph_add(p->g, n->name, n->op, n->loc);
  Node *ln = &p->g->nodes[k];
  ln->conv = n->conv, ln->lrn = n->lrn, ln->pool = n->pool, ln->fc = n->fc;
  ln->dropout = n->dropout, ln->init = n->init;
  for (int j = 0; j < p->n_in; j++)
    node_add_input(ln, j);
  if (n->op == OP_CONV) {
    ln->conv.out = (int)range_len(p->out);
    ln->conv.groups = 1;
    p->w_off = p->out.begin * (n->n_weight / n->conv.out);
  } else if (n->op == OP_FC) {
    ln->fc.out = (int)range_len(p->out);
    p->w_off = p->out.begin * (n->n_weight / n->fc.out);
  } else if (n->op == OP_LRN) {
    ln->lrn.groups = 1;
  }
  p->b_off = p->out.begin;
  p->g->output = k;
  if (!graph_infer(p->g) || range_len(p->lout) * shape_plane(ln->out) != shape_elems(ln->out)) {
    error("internal error: no local form of '%s' for device %d", n->name, p->device);
    return false;
  }
  return true;
}

static void piece_alloc(Piece *p, const Graph *spec, int batch) {
  const Node *ln = &p->g->nodes[p->g->output];
  int64_t out = shape_elems(ln->out) * batch;
  p->x = xcalloc(p->n_in, sizeof *p->x);
  p->dx = xcalloc(p->n_in, sizeof *p->dx);
  for (int j = 0; j < p->n_in; j++) {
    p->x[j] = xcalloc(shape_elems(p->g->nodes[j].out) * batch, sizeof(float));
    p->dx[j] = xcalloc(shape_elems(p->g->nodes[j].out) * batch, sizeof(float));
  }
  p->y = xcalloc(out, sizeof(float));
  p->dy = xcalloc(out, sizeof(float));
  if (spec->nodes[p->node].op == OP_DROPOUT)
    p->mask = xcalloc(out, 1);
}

static void add_piece(Split *s, Piece p) {
  s->pieces = xrealloc(s->pieces, (s->n_pieces + 1) * sizeof *s->pieces);
  s->pieces[s->n_pieces++] = p;
}

static bool plan_pieces(Split *s, const Graph *spec) {
  for (int i = 1; i <= s->logits; i++) {
    const Node *n = &spec->nodes[i];
    int64_t group = piece_group(spec, n);
    for (int d = 0; d < s->devices; d++) {
      Range r = s->plan->nodes[i].place[d].stage[0];
      for (int64_t at = r.begin; at < r.end;) {
        int64_t end = group ? (at / group + 1) * group : r.end;
        Piece p = {.node = i, .device = d, .out = rng(at, end < r.end ? end : r.end)};
        bool ok = piece_build(s, spec, &p);
        if (ok)
          piece_alloc(&p, spec, s->batch);
        add_piece(s, p);  // split_free frees what was built, also on failure
        if (!ok)
          return false;
        at = p.out.end;
      }
    }
  }
  return true;
}

void split_free(Split *s) {
  if (!s)
    return;
  for (int k = 0; k < s->n_pieces; k++) {
    Piece *p = &s->pieces[k];
    for (int j = 0; p->x && j < p->n_in; j++) {
      free(p->x[j]);
      free(p->dx[j]);
    }
    free(p->x);
    free(p->dx);
    free(p->y);
    free(p->dy);
    free(p->mask);
    free(p->input);
    free(p->in);
    graph_free(p->g);
  }
  free(s->pieces);
  for (int d = 0; d < s->devices; d++) {
    for (int i = 0; i < s->plan->n_nodes; i++) {
      free(s->act[d][i]);
      free(s->grad[d][i]);
    }
    free(s->act[d]);
    free(s->grad[d]);
  }
  graph_free(s->plan);
  free(s);
}

Split *split_new(const Graph *spec, int devices, int batch, int logits, const bool *needs_grad) {
  Split *s = xcalloc(1, sizeof *s);
  *s = (Split){.devices = devices, .batch = batch, .logits = logits, .needs_grad = needs_grad,
               .self = -1};
  s->plan = graph_clone(spec);
  PassOptions o = pass_defaults();
  o.devices = devices;
  bool ok = pass_partition(s->plan, &o) && graph_verify(s->plan);
  for (int d = 0; d < devices; d++) {
    s->act[d] = xcalloc(spec->n_nodes, sizeof *s->act[d]);
    s->grad[d] = xcalloc(spec->n_nodes, sizeof *s->grad[d]);
    for (int i = 1; ok && i <= logits; i++) {
      if (!range_len(s->plan->nodes[i].place[d].held))
        continue;
      int64_t elems = shape_elems(spec->nodes[i].out) * batch;
      s->act[d][i] = xcalloc(elems, sizeof(float));
      if (needs_grad[i])
        s->grad[d][i] = xcalloc(elems, sizeof(float));
    }
  }
  if (!ok || !plan_pieces(s, spec)) {
    split_free(s);
    return NULL;
  }
  return s;
}

// Device d's copy of node i: the network input is the same on every device.
static const float *value(const Split *s, const float *x, int d, int i) {
  return i == 0 ? x : s->act[d][i];
}

static OpCall piece_call(const Piece *p, const Weights *w, int n) {
  const Graph *g = p->g;
  const char *name = g->nodes[g->output].name;
  const float *wt = weights_get(w, name, false), *b = weights_get(w, name, true);
  return (OpCall){.g = g, .n = &g->nodes[g->output], .batch = n, .x = (const float *const *)p->x,
                  .y = p->y, .w = wt ? wt + p->w_off : NULL, .b = b ? b + p->b_off : NULL,
                  .mask = p->mask};  // the plain op: nothing fused, nothing saved
}

// The piece's input channels, gathered from its device's copies.
static void piece_gather(const Split *s, Piece *p, const float *x, int n) {
  for (int j = 0; j < p->n_in; j++) {
    Shape whole = s->plan->nodes[p->input[j]].out;
    move_channels(p->x[j], range_len(p->in[j]), 0, value(s, x, p->device, p->input[j]), whole.c,
                  p->in[j].begin, range_len(p->in[j]), shape_plane(whole), n, false);
  }
}

// The piece's share of the node's dropout mask (the whole node's, drawn once a step, so
// the masks do not depend on the split).
static void piece_mask(Piece *p, const Shape whole, const uint8_t *mask, int n) {
  int64_t plane = shape_plane(whole), len = range_len(p->lout);
  for (int i = 0; i < n; i++)
    memcpy(p->mask + i * len * plane, mask + (i * whole.c + p->lout.begin) * plane, len * plane);
}

void split_set_self(Split *s, int self) { s->self = self; }

// Whether this process runs device d's pieces.
static bool runs(const Split *s, int d) { return s->self < 0 || s->self == d; }

// Between ranks: channels `r` of n images of a node of shape sh, from `src` on rank `from`
// to `dst` on rank `to` (added there when `add`), packed into one message. A rank that is
// neither does nothing.
static void message_channels(const Split *s, float *dst, const float *src, Shape sh, Range r,
                             int n, int from, int to, bool add) {
  int64_t count = range_len(r), plane = shape_plane(sh), elems = count * plane * n;
  if (elems <= 0 || (s->self != from && s->self != to))
    return;
  float *packed = xcalloc(elems, sizeof(float));
  if (s->self == from) {
    move_channels(packed, count, 0, src, sh.c, r.begin, count, plane, n, false);
    dist_send_f32(packed, elems, to);
  } else {
    dist_recv_f32(packed, elems, from);
    move_channels(dst, sh.c, r.begin, packed, count, 0, count, plane, n, add);
  }
  free(packed);
}

void split_send(Split *s, int transfer, int n) {
  const Transfer *t = &s->plan->transfers[transfer];
  Shape sh = s->plan->nodes[t->node].out;
  if (s->self >= 0) {
    message_channels(s, s->act[t->to][t->node], s->act[t->from][t->node], sh, t->range, n,
                     t->from, t->to, false);
    return;
  }
  move_channels(s->act[t->to][t->node], sh.c, t->range.begin, s->act[t->from][t->node], sh.c,
                t->range.begin, range_len(t->range), shape_plane(sh), n, false);
}

void split_reduce(Split *s, int transfer, int n) {
  const Transfer *t = &s->plan->transfers[transfer];
  Shape sh = s->plan->nodes[t->node].out;
  if (!s->grad[t->from][t->node])  // the same on every rank: needs_grad is the spec's
    return;
  if (s->self >= 0) {  // the transpose: the receiver's partial gradient goes back
    message_channels(s, s->grad[t->from][t->node], s->grad[t->to][t->node], sh, t->range, n,
                     t->to, t->from, true);
    return;
  }
  move_channels(s->grad[t->from][t->node], sh.c, t->range.begin, s->grad[t->to][t->node],
                sh.c, t->range.begin, range_len(t->range), shape_plane(sh), n, true);
}

void split_node_forward(Split *s, const TrainKernels *k, const Weights *w, const float *x,
                        int n, uint8_t *const *masks, int i, float *logits) {
  Shape sh = s->plan->nodes[i].out;
  for (int at = 0; at < s->n_pieces; at++) {
    Piece *p = &s->pieces[at];
    if (p->node != i || !runs(s, p->device))
      continue;
    piece_gather(s, p, x, n);
    OpCall c = piece_call(p, w, n);
    if (!masks || !masks[i])
      c.mask = NULL;
    else
      piece_mask(p, sh, masks[i], n);
    k->forward(&c, p->y);
    move_channels(s->act[p->device][i], sh.c, p->out.begin, p->y, range_len(p->lout),
                  p->out.begin - p->lout.begin, range_len(p->out), shape_plane(sh), n, false);
  }
  if (i != s->logits)
    return;
  // The loss sees the whole logits: each device's own channels, as a transfer would.
  // Ranks: each fills its channels of zeros and the sum over the ranks is the whole
  // (x + 0 is x: the same bits as one process).
  if (s->self >= 0)
    memset(logits, 0, shape_elems(sh) * n * sizeof(float));
  for (int d = 0; d < s->devices; d++) {
    Range r = s->plan->nodes[i].place[d].stage[0];
    if (runs(s, d))
      move_channels(logits, sh.c, r.begin, s->act[d][i], sh.c, r.begin, range_len(r),
                    shape_plane(sh), n, false);
  }
  if (s->self >= 0) {
    dist_iallreduce_f32(logits, shape_elems(sh) * n);
    dist_wait_all();
  }
}

static void piece_backward(Split *s, const TrainKernels *k, const Weights *w, Weights *gw,
                           Piece *p, int n) {
  const Node *node = &s->plan->nodes[p->node];
  Shape sh = node->out;
  int64_t lout = range_len(p->lout);
  memset(p->dy, 0, lout * shape_plane(sh) * n * sizeof(float));  // an LRN halo: no gradient
  move_channels(p->dy, lout, p->out.begin - p->lout.begin, s->grad[p->device][p->node], sh.c,
                p->out.begin, range_len(p->out), shape_plane(sh), n, false);
  float *dx[64];
  for (int j = 0; j < p->n_in; j++) {
    dx[j] = s->needs_grad[p->input[j]] ? p->dx[j] : NULL;
    if (dx[j])
      memset(dx[j], 0, shape_elems(p->g->nodes[j].out) * n * sizeof(float));
  }
  float *dw = (float *)weights_get(gw, node->name, false);
  float *db = (float *)weights_get(gw, node->name, true);
  OpCall c = piece_call(p, w, n);
  k->backward(&c, p->dy, dx, dw ? dw + p->w_off : NULL, db ? db + p->b_off : NULL);
  for (int j = 0; j < p->n_in; j++) {
    Shape whole = s->plan->nodes[p->input[j]].out;
    if (dx[j])
      move_channels(s->grad[p->device][p->input[j]], whole.c, p->in[j].begin, dx[j],
                    range_len(p->in[j]), 0, range_len(p->in[j]), shape_plane(whole), n, true);
  }
}

void split_node_backward(Split *s, const TrainKernels *k, const Weights *w, int i,
                         const float *dlogits, int n, Weights *gw) {
  if (i == s->logits) {  // the backward starts: each device's share of dL/d(logits)
    for (int d = 0; d < s->devices; d++)
      for (int j = 1; j <= s->logits; j++)
        if (s->grad[d][j])
          memset(s->grad[d][j], 0, shape_elems(s->plan->nodes[j].out) * n * sizeof(float));
    Shape sh = s->plan->nodes[i].out;
    for (int d = 0; d < s->devices; d++) {
      Range r = s->plan->nodes[i].place[d].stage[0];
      move_channels(s->grad[d][i], sh.c, r.begin, dlogits, sh.c, r.begin, range_len(r),
                    shape_plane(sh), n, false);
    }
  }
  for (int at = s->n_pieces - 1; at >= 0; at--)  // the forward's order, reversed
    if (s->pieces[at].node == i && runs(s, s->pieces[at].device))
      piece_backward(s, k, w, gw, &s->pieces[at], n);
}

const Graph *split_plan(const Split *s) { return s->plan; }

// The device whose copy of each element of tensor `data` (elems long) counts: the first
// piece, in device order, that computes its row; rows no piece computes stay rank 0's.
static void mark_owners(const Split *s, const Weights *w, const float *data, int64_t elems,
                        int *owner) {
  for (int64_t e = 0; e < elems; e++)
    owner[e] = -1;
  for (int k = 0; k < s->n_pieces; k++) {
    const Piece *p = &s->pieces[k];
    const Node *node = &s->plan->nodes[p->node];
    const float *wt = weights_get(w, node->name, false), *b = weights_get(w, node->name, true);
    int64_t begin, end;
    if (data == wt && wt) {
      int64_t rows = node->op == OP_CONV ? node->conv.out : node->fc.out;
      begin = p->w_off, end = p->w_off + range_len(p->out) * (node->n_weight / rows);
    } else if (data == b && b) {
      begin = p->b_off, end = p->b_off + range_len(p->out);
    } else {
      continue;
    }
    for (int64_t e = begin; e < end && e < elems; e++)
      if (owner[e] < 0)
        owner[e] = p->device;
  }
  for (int64_t e = 0; e < elems; e++)
    owner[e] = owner[e] < 0 ? 0 : owner[e];
}

void split_assemble(const Split *s, Weights *w) {
  if (s->self < 0)
    return;
  for (int i = 0; i < w->n; i++) {
    int64_t elems = w->info[i].elems;
    int *owner = xcalloc(elems ? elems : 1, sizeof *owner);
    mark_owners(s, w, w->data[i], elems, owner);
    for (int64_t e = 0; e < elems; e++)
      if (owner[e] != s->self)
        w->data[i][e] = 0;  // the owner's value, x + 0, arrives in the sum
    free(owner);
    dist_iallreduce_f32(w->data[i], elems);
    dist_wait_all();
  }
}

int split_n_pieces(const Split *s) { return s->n_pieces; }

SplitPiece split_piece(const Split *s, int k) {
  const Piece *p = &s->pieces[k];
  return (SplitPiece){p->node, p->device, p->g, p->out, p->lout, p->n_in, p->input, p->in,
                      p->w_off, p->b_off};
}

static void put_range(FILE *out, Range r) {
  fprintf(out, "[%lld, %lld)", (long long)r.begin, (long long)r.end);
}

void split_dump(const Split *s, FILE *out) {
  fprintf(out, "devices: %d, each node's forward and backward run as these pieces:\n",
          s->devices);
  for (int k = 0; k < s->n_pieces; k++) {
    const Piece *p = &s->pieces[k];
    fprintf(out, "  %s on d%d: channels ", s->plan->nodes[p->node].name, p->device);
    put_range(out, p->out);
    for (int j = 0; j < p->n_in; j++) {
      fprintf(out, "%s %s ", j ? "," : " from", s->plan->nodes[p->input[j]].name);
      put_range(out, p->in[j]);
    }
    if (p->w_off || s->plan->nodes[p->node].n_weight)
      fprintf(out, "; weight rows from %lld", (long long)p->out.begin);
    fprintf(out, "\n");
  }
}
