// Each pass on small graphs of its own: what fusion matches and what it must leave
// alone, where the partition puts transfers (for the paper's AlexNet exactly where
// the paper does, plus the LRN halo), and that the memory plan never lets two live
// buffers overlap.
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alexc.h"
#include "../unit/test.h"

static Graph *compile(const char *text, bool fuse, int devices) {
  Graph *g = parse_spec_string("<test>", text, strlen(text));
  CHECK(g != NULL);
  PassOptions o = pass_defaults();
  o.devices = devices;
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = fuse;
  CHECK(g && run_passes(g, &o));
  return g;
}

static Graph *compile_file(const char *path, const PassOptions *o) {
  Graph *g = parse_spec_file(path);
  CHECK(g && run_passes(g, o));
  return g;
}

static const char *value_of(const Node *n) {
  return n->n_epilogue ? n->epilogue[n->n_epilogue - 1].name : n->name;
}

// ---------------------------------------------------------------- fusion

static const char CHAIN[] = "name: t\ninput: {channels: 3, height: 9, width: 9}\nlayers:\n"
                            "  - {name: c, op: conv, out: 4, kernel: 3}\n"
                            "  - {name: r, op: relu}\n"
                            "  - {name: n, op: lrn, size: 3, alpha: 0.1, beta: 0.75, k: 1}\n"
                            "  - {name: p, op: maxpool, kernel: 3, stride: 2}\n"
                            "  - {name: f, op: flatten}\n"
                            "  - {name: fc, op: fc, out: 5}\n"
                            "  - {name: fr, op: relu}\n"
                            "  - {name: d, op: dropout, p: 0.5}\n"
                            "  - {name: out, op: fc, out: 2}\n";

static void test_fuse_chain(void) {
  Graph *g = compile(CHAIN, true, 1);
  // input, c+r+n+p, f, fc+fr+d, out
  CHECK(g->n_nodes == 5);
  CHECK(g->nodes[1].n_epilogue == 3 && !strcmp(g->nodes[1].fused_by, "conv-relu-lrn-pool"));
  CHECK(g->nodes[3].n_epilogue == 2 && !strcmp(g->nodes[3].fused_by, "fc-relu-dropout"));
  CHECK(g->nodes[1].out.c == 4 && g->nodes[1].out.h == 3 && g->nodes[1].head_out.h == 7);
  CHECK(graph_find_value(g, "p") == 1 && graph_find_value(g, "r") == -1);
  graph_free(g);
}

static void test_fuse_switches(void) {
  Graph *g = parse_spec_string("<t>", CHAIN, strlen(CHAIN));
  PassOptions o = pass_defaults();
  char bad[32];
  CHECK(parse_fuse_list("conv-relu,fc-relu", &o, bad, sizeof bad));
  CHECK(!parse_fuse_list("conv-relu,conv-lrn", &o, bad, sizeof bad) && !strcmp(bad, "conv-lrn"));
  CHECK(run_passes(g, &o));
  // c+r, n, p, f, fc+fr, d, out
  CHECK(g->n_nodes == 8 && g->nodes[1].n_epilogue == 1 && g->nodes[2].op == OP_LRN);
  graph_free(g);
}

static void test_fuse_leaves_shared_values(void) {
  // The ReLU is read twice; the LRN reads the conv, not the ReLU.
  Graph *g = compile("name: t\ninput: {channels: 2, height: 6, width: 6}\nlayers:\n"
                     "  - {name: c, op: conv, out: 4, kernel: 3}\n"
                     "  - {name: r, op: relu}\n"
                     "  - {name: n, op: lrn, size: 3, alpha: 0.1, beta: 0.75, k: 1}\n"
                     "  - {name: both, op: concat, inputs: [n, r]}\n"
                     "  - {name: c2, op: conv, out: 2, kernel: 1}\n"
                     "  - {name: n2, op: lrn, size: 3, alpha: 0.1, beta: 0.75, k: 1, inputs: c2}\n"
                     "  - {name: r2, op: relu, inputs: c2}\n"
                     "  - {name: j, op: concat, inputs: [n2, r2]}\n",
                     true, 1);
  // conv+relu may fuse (the fused node's output is the ReLU's, read twice), but no
  // LRN may join: neither LRN reads a value used only by it.
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_epilogue; k++)
      CHECK(g->nodes[i].epilogue[k].op != OP_LRN);
  CHECK(g->nodes[graph_find(g, "c")].n_epilogue == 1);
  CHECK(g->nodes[graph_find(g, "c2")].n_epilogue == 0);
  graph_free(g);

  // A value the caller wants to see stays a node of its own.
  g = parse_spec_string("<t>", CHAIN, strlen(CHAIN));
  PassOptions o = pass_defaults();
  int keep = graph_find(g, "r");
  o.keep = &keep;
  o.n_keep = 1;
  CHECK(run_passes(g, &o));
  int r = graph_find_value(g, "r");
  CHECK(r >= 0 && g->nodes[r].out.c == 4 && g->nodes[r + 1].op == OP_LRN);
  graph_free(g);
}

// ---------------------------------------------------------------- partition

// Bytes per image moved of `value` from device `from`, over all its transfers.
static int64_t moved(const Graph *g, const char *value, int from) {
  int64_t total = 0;
  for (int t = 0; t < g->n_transfers; t++)
    if (!strcmp(value_of(&g->nodes[g->transfers[t].node]), value) && g->transfers[t].from == from)
      total += g->transfers[t].bytes;
  return total;
}

static void test_alexnet_partition(bool fuse) {
  PassOptions o = pass_defaults();
  o.devices = 2;
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = fuse;
  Graph *g = compile_file("specs/alexnet.yaml", &o);
  // The paper: conv3 and the fully connected layers read both halves.
  CHECK(moved(g, "pool2", 0) == 128 * 13 * 13 * 4 && moved(g, "pool2", 1) == 128 * 13 * 13 * 4);
  CHECK(moved(g, "flatten", 0) == 4608 * 4 && moved(g, "flatten", 1) == 4608 * 4);
  CHECK(moved(g, "drop6", 0) == 2048 * 4);
  CHECK(moved(g, "drop7", 1) == 2048 * 4);
  // The softmax gathers fc8 on device 0.
  CHECK(moved(g, "fc8", 1) == 500 * 4 && moved(g, "fc8", 0) == 0);
  // LRN halo: norm2 reads 2 channels across the split. Unfused, norm1 does too; fused,
  // conv1 recomputes them (its input is on both devices anyway).
  CHECK(moved(g, "relu2", 0) == 2 * 27 * 27 * 4 && moved(g, "relu2", 1) == 2 * 27 * 27 * 4);
  CHECK(moved(g, "relu1", 0) == (fuse ? 0 : 2 * 55 * 55 * 4));
  // Nothing else moves: conv2, conv4, conv5 (groups 2) read only their own half.
  int64_t total = 0;
  for (int t = 0; t < g->n_transfers; t++)
    total += g->transfers[t].bytes;
  int64_t expect = 2 * (86528 + 18432 + 8192 + 8192 + 5832) + 2000 + (fuse ? 0 : 2 * 24200);
  CHECK(total == expect);
  if (fuse) {
    int c1 = graph_find(g, "conv1");
    CHECK(g->nodes[c1].place[0].stage[0].end == 50 && g->nodes[c1].place[1].stage[0].begin == 46);
    CHECK(g->nodes[c1].place[0].stage[3].end == 48);
    CHECK(g->plan_note && strstr(g->plan_note, "fusion cut before 'norm2'"));
  }
  graph_free(g);
}

static void test_pergroup_lrn_has_no_halo(void) {
  PassOptions o = pass_defaults();
  o.devices = 2;
  Graph *g = compile_file("tests/passes/graphs/pergroup_lrn.yaml", &o);
  CHECK(moved(g, "relu1", 0) == 0 && moved(g, "relu2", 0) == 0);
  CHECK(g->nodes[1].n_epilogue == 3);  // conv1+relu1+norm1+pool1 stays whole
  CHECK(g->nodes[1].place[0].stage[0].end == 8);  // no recomputed halo either
  graph_free(g);
}

static void test_nogroups_says_why(void) {
  PassOptions o = pass_defaults();
  o.devices = 2;
  Graph *g = compile_file("tests/passes/graphs/nogroups.yaml", &o);
  CHECK(g->plan_note && strstr(g->plan_note, "no grouped convolution"));
  CHECK(moved(g, value_of(&g->nodes[graph_find(g, "conv1")]), 0) > 0 ||
        moved(g, "norm1", 0) > 0);  // conv2 needs all of conv1's channels
  graph_free(g);
}

// Two towers meeting in a concat: on two devices each tower stays whole on its own
// device (branch placement), which moves fewer bytes than splitting both; on three the
// towers would leave a device idle, and the even split is kept. The notes say which.
static void test_branch_placement(void) {
  PassOptions o = pass_defaults();
  for (int fuse = 0; fuse <= 1; fuse++) {
    for (int i = 0; i < FUSE_COUNT; i++)
      o.fuse[i] = fuse;
    o.devices = 2;
    Graph *g = compile_file("tests/passes/graphs/two_towers.yaml", &o);
    int a = graph_find_value(g, "a_pool"), b = graph_find_value(g, "b_pool");
    int cat = graph_find(g, "joined");
    CHECK(a > 0 && b > 0 && cat > 0);
    CHECK(range_len(g->nodes[a].place[0].stage[0]) == g->nodes[a].head_out.c &&
          range_len(g->nodes[a].place[1].held) == 0);
    CHECK(range_len(g->nodes[b].place[1].stage[0]) == g->nodes[b].head_out.c &&
          range_len(g->nodes[b].place[0].held) == 0);
    CHECK(g->nodes[cat].place[0].stage[0].end == 12 && g->nodes[cat].place[1].stage[0].begin == 12);
    CHECK(moved(g, "a_pool", 0) == 0 && moved(g, "b_pool", 0) == 0);
    CHECK(g->plan_note && strstr(g->plan_note, "branch placement ('joined'") &&
          strstr(g->plan_note, ": chosen"));
    graph_free(g);
    o.devices = 3;
    g = compile_file("tests/passes/graphs/two_towers.yaml", &o);
    CHECK(g->plan_note && strstr(g->plan_note, "not chosen, the even split is kept"));
    a = graph_find_value(g, "a_pool");
    CHECK(range_len(g->nodes[a].place[1].stage[0]) > 0);  // split over the devices
    graph_free(g);
  }
}

static void test_one_device_is_trivial(void) {
  Graph *g = compile(CHAIN, true, 1);
  CHECK(g->n_devices == 1 && g->n_transfers == 0);
  for (int i = 1; i < g->n_nodes; i++)
    CHECK(g->nodes[i].place[0].stage[g->nodes[i].n_epilogue].end == g->nodes[i].out.c);
  graph_free(g);
}

// ---------------------------------------------------------------- memory plan

// Simulates lifetimes: no two buffers that are live at once may overlap, unless one
// was written in place over the other.
static void check_no_overlap(const Graph *g) {
  for (int d = 0; d < g->n_devices; d++)
    for (int i = 0; i < g->n_nodes; i++)
      for (int j = i + 1; j < g->n_nodes; j++) {
        const Placement *a = &g->nodes[i].place[d], *b = &g->nodes[j].place[d];
        if (a->offset < 0 || b->offset < 0)
          continue;
        int64_t ae = a->offset + node_buffer_elems(&g->nodes[i], d);
        int64_t be = b->offset + node_buffer_elems(&g->nodes[j], d);
        if (a->offset >= be || b->offset >= ae || b->in_place)
          continue;
        // Overlap: i must be dead before j writes, i.e. no node at or after j reads i on d.
        bool live = j <= g->output && i == g->output;
        for (int r = j; r < g->n_nodes; r++)
          for (int k = 0; k < g->nodes[r].n_inputs; k++)
            if (g->nodes[r].inputs[k] == i && g->nodes[r].place[d].stage[0].end >
                                                  g->nodes[r].place[d].stage[0].begin)
              live = true;
        if (live)
          fprintf(stderr, "  overlap on d%d: %s and %s\n", d, g->nodes[i].name, g->nodes[j].name);
        CHECK(!live);
        CHECK(ae <= g->arena[d] && be <= g->arena[d]);
      }
}

static void test_memplan(void) {
  for (int devices = 1; devices <= 4; devices++)
    for (int fuse = 0; fuse < 2; fuse++) {
      PassOptions o = pass_defaults();
      o.devices = devices;
      for (int i = 0; i < FUSE_COUNT; i++)
        o.fuse[i] = fuse;
      const char *files[] = {"specs/alexnet.yaml", "tests/passes/graphs/branch_concat.yaml",
                             "tests/passes/graphs/groups4.yaml"};
      for (int f = 0; f < 3; f++) {
        Graph *g = compile_file(files[f], &o);
        check_no_overlap(g);
        graph_free(g);
      }
    }
  // Reuse pays: AlexNet's fused plan needs much less than the sum of its tensors
  // (which no live set reaches), and fusion needs less than no fusion.
  Graph *g = compile_file("specs/alexnet.yaml", &(PassOptions){.devices = 1, .fuse = {1, 1, 1, 1, 1, 1}});
  int64_t sum = 0;
  for (int i = 0; i < g->n_nodes; i++)
    sum += node_buffer_elems(&g->nodes[i], 0);
  CHECK(g->arena[0] < sum * 3 / 4);
  // Unfused, the ReLUs run in place.
  Graph *u = compile_file("specs/alexnet.yaml", &(PassOptions){.devices = 1});
  CHECK(u->nodes[graph_find(u, "relu1")].place[0].in_place);
  CHECK(g->arena[0] < u->arena[0]);
  graph_free(g);
  graph_free(u);
}

// A plan that forgets a transfer must not pass silently: the executor stops.
static void test_missing_transfer_is_caught(void) {
  PassOptions o = pass_defaults();
  o.devices = 2;
  Graph *g = compile_file("tests/passes/graphs/nogroups.yaml", &o);
  Weights *w = weights_init(g, 1, INIT_FAN_IN);
  float x[3 * 20 * 20] = {0};
  g->n_transfers = 0;
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    float *y = ref_run_output(g, w, x, 1);
    free(y);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
  weights_free(w);
  graph_free(g);
}

int main(void) {
  test_fuse_chain();
  test_fuse_switches();
  test_fuse_leaves_shared_values();
  test_alexnet_partition(true);
  test_alexnet_partition(false);
  test_pergroup_lrn_has_no_halo();
  test_nogroups_says_why();
  test_branch_placement();
  test_one_device_is_trivial();
  test_memplan();
  test_missing_transfer_is_caught();
  TEST_MAIN_END();
}
