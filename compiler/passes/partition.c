// Partition: the paper's model-parallel plan over N devices, derived from the graph.
//
// Every node computes a contiguous range of its output channels (features for flat
// tensors) on each device:
//   - conv and fc split their output channels evenly ("half of the kernels of every
//     layer" for two devices); a grouped conv with at least as many groups as
//     devices splits at group boundaries, so it reads only its own device's groups;
//   - per-channel ops (relu, dropout, lrn, maxpool, flatten) follow their input;
//   - concat splits its output evenly; softmax runs on device 0;
//   - the network input is copied to every device.
// What each device then needs of each input follows from the op's data dependencies
// (a conv group's input channels, an fc's whole input vector, an LRN window's halo),
// and whatever it needs but does not compute itself becomes a transfer from the
// device that does. A fused node whose LRN window crosses the split either
// recomputes the halo channels (when that needs no extra input) or is cut before
// the LRN so the halo can be moved; the plan says which and why.
//
// Branches: when a concat joins towers (chains of nodes that only their own tower
// reads), splitting every tower over all devices moves each tower's channels to the
// device that owns them in the concat's split, and then moves them again for whatever
// reads the concat. The alternative keeps each tower whole on one device (towers in
// order over the devices, balanced by MACs). The planner builds both plans and keeps
// the branch placement when it moves fewer bytes without loading the busiest device
// more than a quarter beyond the even split's; the plan's notes give the figures.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static Range rng(int64_t b, int64_t e) { return (Range){b, e}; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static Range hull(Range a, Range b) {
  if (!range_len(a))
    return b;
  if (!range_len(b))
    return a;
  return rng(min64(a.begin, b.begin), max64(a.end, b.end));
}

static Range intersect(Range a, Range b) {
  Range r = rng(max64(a.begin, b.begin), min64(a.end, b.end));
  return range_len(r) ? r : rng(0, 0);
}

static int last_stage(const Node *n) { return n->n_epilogue; }
static Range computed(const Node *n, int d) { return n->place[d].stage[last_stage(n)]; }

// Device d's share of `n` items split evenly over `devices`.
static Range even(int64_t n, int d, int devices) {
  return rng(n * d / devices, n * (d + 1) / devices);
}

// The op of stage k of a node: the head for k = 0, else the epilogue's.
// The range of stage k-1's output that stage k needs to compute r.
static Range stage_need(const Node *n, int k, Range r) {
  const Node *s = node_stage(n, k);
  Shape in = node_stage_shape(n, k - 1);
  return s->op == OP_LRN ? lrn_input_need(&s->lrn, in.c, r) : r;
}

// The channels each device treats as its own share of node `i`'s output.
static Range owner(const Graph *g, int i, int d) {
  const Node *n = &g->nodes[i];
  return n->op == OP_INPUT ? even(n->out.c, d, g->n_devices) : computed(n, d);
}

// Splits a head op's output over the devices; returns the reason.
static const char *split_output(const Graph *g, Node *n, Range *out) {
  int D = g->n_devices;
  Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  switch (n->op) {
  case OP_CONV: {
    int groups = n->conv.groups;
    if (groups > 1 && groups >= D) {
      int64_t per = n->conv.out / groups;
      for (int d = 0; d < D; d++)
        out[d] = rng(per * (groups * d / D), per * (groups * (d + 1) / D));
      return "kernels split at group boundaries: each device reads only its own groups";
    }
    for (int d = 0; d < D; d++)
      out[d] = even(n->conv.out, d, D);
    return groups > 1 ? "kernels split evenly (fewer groups than devices)"
                      : "kernels split evenly: every device needs the whole input";
  }
  case OP_FC:
    for (int d = 0; d < D; d++)
      out[d] = even(n->fc.out, d, D);
    return "outputs split evenly: every device needs the whole input vector";
  case OP_CONCAT:
    for (int d = 0; d < D; d++)
      out[d] = even(n->out.c, d, D);
    return "output channels split evenly";
  case OP_SOFTMAX:
    for (int d = 0; d < D; d++)
      out[d] = d == 0 ? rng(0, n->out.c) : rng(0, 0);
    return "on device 0: normalises over the whole vector";
  case OP_FLATTEN:
    for (int d = 0; d < D; d++) {
      Range c = owner(g, n->inputs[0], d);
      out[d] = rng(c.begin * shape_plane(in), c.end * shape_plane(in));
    }
    return "follows its input's channels";
  default:  // relu, dropout, lrn, maxpool
    for (int d = 0; d < D; d++)
      out[d] = owner(g, n->inputs[0], d);
    return "follows its input's channels";
  }
}

// Bytes of node i's inputs that device d would have to receive to compute head range r.
static int64_t receive_bytes(const Graph *g, const Node *n, int d, Range r) {
  int64_t bytes = 0;
  for (int j = 0; j < n->n_inputs; j++) {
    const Node *in = &g->nodes[n->inputs[j]];
    Range need = op_input_need(g, n, j, r);
    Range have = in->op == OP_INPUT ? rng(0, in->out.c) : computed(in, d);
    int64_t missing = range_len(need) - range_len(intersect(need, have));
    bytes += missing * shape_plane(in->out) * 4;
  }
  return bytes;
}

static void note(Graph *g, const char *text) {
  char *s = g->plan_note ? format("%s%s\n", g->plan_note, text) : format("%s\n", text);
  free(g->plan_note);
  g->plan_note = s;
}

// Fills the stage ranges of node i from its output split, back to the head. For a
// fused node, an LRN stage whose halo crosses the split is recomputed when that
// costs no extra input (returns true); otherwise the node is cut before the LRN and
// the cut-off rest becomes node i+1, planned next by the caller. Every epilogue op
// keeps channel indices, so the same split applies to each shortened node.
static bool plan_stages(Graph *g, int i, const Range *out) {
  int D = g->n_devices;
  for (;;) {
    Node *n = &g->nodes[i];
    for (int d = 0; d < D; d++) {
      n->place[d].stage[last_stage(n)] = out[d];
      for (int k = last_stage(n); k > 0; k--)
        n->place[d].stage[k - 1] = stage_need(n, k, n->place[d].stage[k]);
    }
    int cut = 0;
    bool halo = false;
    for (int k = last_stage(n); k > 0 && !cut; k--) {
      if (node_stage(n, k)->op != OP_LRN)
        continue;
      for (int d = 0; d < D && !cut; d++) {
        Range with_halo = n->place[d].stage[0], without = n->place[d].stage[k];
        if (range_len(with_halo) == range_len(without))
          continue;
        halo = true;
        int64_t extra = receive_bytes(g, n, d, with_halo) - receive_bytes(g, n, d, without);
        if (extra > 0) {
          cut = k;
          int64_t moved = (range_len(with_halo) - range_len(without)) * shape_plane(node_stage(n, k - 1)->out) * 4;
          char *msg = format("%s: fusion cut before '%s': recomputing the LRN halo would need "
                             "%lld more bytes/image of input, moving it costs %lld",
                             n->name, node_stage(n, k)->name, (long long)extra, (long long)moved);
          note(g, msg);
          free(msg);
        }
      }
    }
    if (!cut)
      return halo;
    graph_cut_fused(g, i, cut);
  }
}

static void add_transfer(Graph *g, int node, int from, int to, Range r) {
  g->transfers = xrealloc(g->transfers, (g->n_transfers + 1) * sizeof *g->transfers);
  g->transfers[g->n_transfers++] =
      (Transfer){node, from, to, r, range_len(r) * shape_plane(g->nodes[node].out) * 4};
}

// Channels device d holds of node i but does not compute come from their owners.
static void plan_transfers(Graph *g, int i) {
  const Node *n = &g->nodes[i];
  for (int d = 0; d < g->n_devices; d++) {
    Range held = n->place[d].held, mine = computed(n, d);
    Range pieces[2] = {rng(held.begin, range_len(mine) ? mine.begin : held.end),
                       rng(range_len(mine) ? mine.end : held.end, held.end)};
    for (int p = 0; p < 2; p++)
      for (int s = 0; s < g->n_devices && range_len(pieces[p]); s++) {
        Range r = intersect(pieces[p], computed(n, s));
        if (s != d && range_len(r))
          add_transfer(g, i, s, d, r);
      }
  }
}

// ---------------------------------------------------------------- branches

// Which devices keep whole branches: device[i] >= 0 puts all of node i there; for a
// concat joining placed towers, concat_range[i][d] is the channels device d computes.
typedef struct {
  int *device;
  Range (*concat_range)[MAX_DEVICES];
  char *summary;  // the towers and their devices, for the notes
} Branches;

static void branches_free(Branches *b) {
  free(b->device);
  free(b->concat_range);
  free(b->summary);
}

// readers[i]: how many inputs of later nodes read node i.
static int *count_readers(const Graph *g) {
  int *readers = xcalloc(g->n_nodes, sizeof *readers);
  for (int i = 0; i < g->n_nodes; i++)
    for (int j = 0; j < g->nodes[i].n_inputs; j++)
      readers[g->nodes[i].inputs[j]]++;
  return readers;
}

// Marks tower[i] = j for the nodes of concat c's input j's tower: the input itself
// (read by c alone) and, going back, every node all of whose readers are in that tower.
// False when an input is not a tower (read elsewhere, or the network input).
static bool find_towers(const Graph *g, int c, const int *readers, int *tower) {
  const Node *cat = &g->nodes[c];
  for (int i = 0; i < g->n_nodes; i++)
    tower[i] = -1;
  for (int j = 0; j < cat->n_inputs; j++) {
    int in = cat->inputs[j];
    if (in == 0 || readers[in] != 1 || tower[in] >= 0)
      return false;
    tower[in] = j;
  }
  for (int i = c - 1; i >= 1; i--) {
    if (tower[i] >= 0)
      continue;
    int t = -1, seen = 0;
    for (int k = i + 1; k < c; k++)  // only nodes before the concat can be in a tower
      for (int j = 0; j < g->nodes[k].n_inputs; j++)
        if (g->nodes[k].inputs[j] == i) {
          seen++;
          t = seen == 1 || tower[k] == t ? tower[k] : -1;
        }
    if (seen == readers[i] && t >= 0)
      tower[i] = t;
  }
  return true;
}

// Towers in input order over the devices, each device taking a contiguous run of
// towers whose MACs reach its share of the total.
static void assign_towers(const Graph *g, int c, const int *tower, int D, int *dev_of_tower) {
  int k = g->nodes[c].n_inputs;
  double *macs = xcalloc(k, sizeof *macs), total = 0;
  for (int i = 0; i < c; i++)
    if (tower[i] >= 0)
      macs[tower[i]] += (double)g->nodes[i].macs + 1;  // +1: a tower of free ops still counts
  for (int j = 0; j < k; j++)
    total += macs[j];
  double done = 0;
  for (int j = 0; j < k; j++) {
    int d = k <= D ? j : (int)((done + macs[j] / 2) / total * D);
    dev_of_tower[j] = d < D ? d : D - 1;
    done += macs[j];
  }
  free(macs);
}

// Finds every concat of towers (outside other towers) and places its towers.
static bool find_branches(const Graph *g, int D, Branches *b) {
  *b = (Branches){xcalloc(g->n_nodes, sizeof *b->device),
                  xcalloc(g->n_nodes, sizeof *b->concat_range), NULL};
  for (int i = 0; i < g->n_nodes; i++)
    b->device[i] = -1;
  int *readers = count_readers(g), *tower = xcalloc(g->n_nodes, sizeof *tower);
  bool any = false;
  for (int c = 1; c < g->n_nodes; c++) {
    const Node *cat = &g->nodes[c];
    if (cat->op != OP_CONCAT || b->device[c] >= 0 || !find_towers(g, c, readers, tower))
      continue;
    int dev_of_tower[64];
    if (cat->n_inputs > 64)
      continue;
    assign_towers(g, c, tower, D, dev_of_tower);
    int64_t at = 0;
    for (int j = 0; j < cat->n_inputs; j++) {
      int64_t len = g->nodes[cat->inputs[j]].out.c;
      Range *r = &b->concat_range[c][dev_of_tower[j]];
      *r = range_len(*r) ? rng(r->begin, at + len) : rng(at, at + len);
      at += len;
    }
    for (int i = 1; i < c; i++)
      if (tower[i] >= 0 && b->device[i] < 0)
        b->device[i] = dev_of_tower[tower[i]];
    char *s = format("%s%s'%s': ", b->summary ? b->summary : "", b->summary ? "; " : "", cat->name);
    for (int j = 0; j < cat->n_inputs; j++) {
      char *t = format("%s%s'%s' on d%d", s, j ? ", " : "", g->nodes[cat->inputs[j]].name,
                       dev_of_tower[j]);
      free(s);
      s = t;
    }
    free(b->summary);
    b->summary = s;
    any = true;
  }
  free(readers);
  free(tower);
  if (!any)
    branches_free(b);
  return any;
}

// ---------------------------------------------------------------- the pass

static bool placed_concat(const Branches *b, int i, int D) {
  for (int d = 0; d < D; d++)
    if (range_len(b->concat_range[i][d]))
      return true;
  return false;
}

// Plans every node: its output split (even, or a placed branch's), its stages, then what
// each device holds and the transfers.
static void plan_graph(Graph *g, int D, const Branches *b) {
  g->n_devices = D;
  free(g->transfers);
  g->transfers = NULL;
  g->n_transfers = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    Node *n = &g->nodes[i];
    memset(n->place, 0, sizeof n->place);
    if (n->op == OP_INPUT) {
      for (int d = 0; d < D; d++)
        n->place[d].stage[0] = rng(0, n->out.c);
      n->place[0].why = "copied to every device";
      continue;
    }
    Range out[MAX_DEVICES] = {{0, 0}};
    const char *why;
    if (b && b->device[i] >= 0) {
      out[b->device[i]] = rng(0, n->out.c);
      why = "whole on one device: a branch of a concat (branch placement)";
    } else if (b && placed_concat(b, i, D)) {
      memcpy(out, b->concat_range[i], sizeof out);
      why = "each device concatenates the branches it computed";
    } else {
      why = D == 1 ? "one device" : split_output(g, n, out);
      if (D == 1)
        out[0] = rng(0, n->out.c);
    }
    bool halo = plan_stages(g, i, out);
    g->nodes[i].place[0].why =
        halo ? "kernels split; LRN halo channels recomputed on each device (no extra input)" : why;
  }
  // What each device holds of each tensor: its own share plus what its readers need.
  for (int i = 0; i < g->n_nodes; i++)
    for (int d = 0; d < D; d++)
      g->nodes[i].place[d].held = computed(&g->nodes[i], d);
  for (int i = 0; i < g->n_nodes; i++) {
    Node *n = &g->nodes[i];
    for (int d = 0; d < D; d++)
      for (int j = 0; j < n->n_inputs; j++) {
        Placement *p = &g->nodes[n->inputs[j]].place[d];
        p->held = hull(p->held, op_input_need(g, n, j, n->place[d].stage[0]));
      }
  }
  for (int i = 0; i < g->n_nodes; i++)
    plan_transfers(g, i);
}

static int64_t bytes_moved(const Graph *g) {
  int64_t bytes = 0;
  for (int t = 0; t < g->n_transfers; t++)
    bytes += g->transfers[t].bytes;
  return bytes;
}

// The busiest device's MACs per image: each node's MACs shared by the channels it computes.
static double busiest_macs(const Graph *g) {
  double load[MAX_DEVICES] = {0}, most = 0;
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    for (int d = 0; d < g->n_devices; d++)
      load[d] += (double)n->macs * range_len(computed(n, d)) / (double)n->out.c;
  }
  for (int d = 0; d < g->n_devices; d++)
    most = load[d] > most ? load[d] : most;
  return most;
}

// Replaces g's contents with plan's (both graphs of the same spec); frees plan.
static void take_plan(Graph *g, Graph *plan) {
  Graph old = *g;
  *g = *plan;
  *plan = old;
  graph_free(plan);
}

// g holds the even split; `unplanned` is the graph before it (planning may cut fused
// nodes). Plans the branch placement on `unplanned` and keeps it when it moves fewer
// bytes at a fair balance; notes the comparison either way. Frees unplanned.
static void consider_branches(Graph *g, Graph *unplanned, int D) {
  Branches b;
  if (!find_branches(unplanned, D, &b)) {
    graph_free(unplanned);
    return;
  }
  plan_graph(unplanned, D, &b);
  int64_t even = bytes_moved(g), placed = bytes_moved(unplanned);
  double load_even = busiest_macs(g), load_placed = busiest_macs(unplanned);
  bool better = placed < even && load_placed <= 1.25 * load_even;
  char *msg = format("branch placement (%s): %lld bytes/image moved against %lld for the even "
                     "split; busiest device %.0f%% of the even split's MACs: %s",
                     b.summary, (long long)placed, (long long)even,
                     100.0 * load_placed / (load_even > 0 ? load_even : 1),
                     better ? "chosen" : "not chosen, the even split is kept");
  if (better)
    take_plan(g, unplanned);  // g's notes are now the branch plan's own
  else
    graph_free(unplanned);
  note(g, msg);
  free(msg);
  branches_free(&b);
}

bool pass_partition(Graph *g, const PassOptions *opts) {
  int D = opts->devices;
  free(g->plan_note);
  g->plan_note = NULL;
  bool grouped = false;
  for (int i = 0; i < g->n_nodes; i++)
    grouped |= g->nodes[i].op == OP_CONV && g->nodes[i].conv.groups > 1;
  Graph *unplanned = D > 1 ? graph_clone(g) : NULL;
  plan_graph(g, D, NULL);
  if (unplanned)
    consider_branches(g, unplanned, D);
  if (D == 1)
    note(g, "one device: the trivial plan, no transfers");
  else if (!grouped)
    note(g, "no grouped convolution: no layer can stay on its own device's channels, so every "
            "split conv and fc receives the other devices' shares of its input (model "
            "parallelism still halves each device's weights; it does not avoid transfers)");
  return true;
}
