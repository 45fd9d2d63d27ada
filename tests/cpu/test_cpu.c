// The CPU target against the reference over every spec, in the manner of ggml's
// test-backend-ops: the reference runs the plain graph once; each variant (fused or
// not, 1 to 8 logical devices, run one after another or as thread groups, AVX-512, AVX2
// or SSE2 code, bf16 fc layers) is compiled, JIT-loaded and
// run on the same batch, and every layer it computes must match within CPU_TOLERANCE
// (1e-5 relative). A softmax's output is compared through its input (the logits): a
// softmax turns an absolute logit error e into a relative output error of up to 2e, so
// its output gets the tolerance of the whole-network check (1e-4), its logits 1e-5.
//
// Layers compared: the network's output (and a softmax's input); in the variants marked
// every_layer, every layer, kept observable (so unfused: a kept layer is not fused away),
// which checks that each kernel writes exactly the channels of its range.
//
// usage: test_cpu [--quick] SPEC...
//   --quick   fewer variants (the sanitizer build's run)
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

typedef struct {
  bool fuse;
  int devices;
  const char *cpu;   // NULL: the host
  bool every_layer;  // keep and compare every layer (which leaves nothing to fuse)
  bool bf16;         // fc layers in bf16 (skipped where the CPU has no AVX512_BF16)
  int threads;       // 0: one per core; more than the devices runs them as thread groups
} Variant;

static const Variant FULL[] = {
    {true, 1, NULL, false, false, 0},         {false, 1, NULL, false, false, 0},        {true, 2, NULL, false, false, 0},
    {true, 3, NULL, false, false, 0},         {true, 4, NULL, false, false, 0},         {true, 5, NULL, false, false, 0},
    {true, 6, NULL, false, false, 0},         {true, 7, NULL, false, false, 0},         {true, 8, NULL, false, false, 0},
    {false, 3, NULL, false, false, 0},        {true, 1, "x86-64-v3", false, false, 0},  {false, 2, "x86-64-v3", false, false, 0},
    {true, 1, "x86-64", false, false, 0},     {false, 1, NULL, true, false, 0},         {false, 3, "x86-64-v3", true, false, 0},
    {true, 1, NULL, false, true, 0},   {false, 2, NULL, false, true, 0},
    {true, 3, NULL, false, false, 7},  {false, 8, NULL, false, false, 5},
};
static const Variant QUICK[] = {
    {true, 1, NULL, false, false, 0},
    {false, 2, NULL, true, false, 0},
    {true, 3, "x86-64-v3", false, false, 3},  // the sanitizer sees the thread groups too
};

static bool big(const Graph *g) { return graph_macs(g) > 100000000; }

// Layers to compare: the output, or every layer (but the input) with `all`; a softmax's
// input is always among them.
static int pick_layers(const Graph *g, bool all, char **names) {
  int n = 0;
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *nd = &g->nodes[i];
    bool feeds_softmax = false;
    for (int j = i + 1; j < g->n_nodes; j++)
      if (g->nodes[j].op == OP_SOFTMAX && g->nodes[j].inputs[0] == i)
        feeds_softmax = true;
    if (all || i == g->output || feeds_softmax)
      names[n++] = nd->name;
  }
  return n;
}

static bool after_softmax(const Graph *g, const char *name) {
  int i = graph_find(g, name);
  return i >= 0 && g->nodes[i].op == OP_SOFTMAX;
}

// Runs `path` on target t with a variant, keeping `names` observable.
static bool run_variant(const char *path, const char *target, const Variant *v, const Weights *w,
                        const float *x, int batch, char **names, int n, float **out) {
  Graph *g = load_spec(path);
  PassOptions o = pass_defaults();
  o.devices = v->devices;
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = v->fuse;
  bool ok = g && compile_graph(g, &o, names, n);
  int nodes[256];
  for (int k = 0; ok && k < n; k++)
    ok = (nodes[k] = graph_find_value(g, names[k])) >= 0;
  TargetOptions t = {.cpu = {.cpu = v->cpu, .bf16 = v->bf16, .threads = v->threads}};
  ok = ok && target_find(target)->run(g, w, x, batch, nodes, n, &t, out);
  graph_free(g);
  return ok;
}

static int check_spec(const char *path, bool quick) {
  Graph *g = load_spec(path);
  if (!g)
    return 1;
  int batch = big(g) ? 1 : 7;  // odd, so register blocks of images have tails
  Weights *w = weights_init(g, 11, INIT_FAN_IN);
  float *x = random_input(g, batch, 5);
  // The reference's values of every layer, once.
  char *names[256], *every[256];
  int n_out = pick_layers(g, false, names), n_every = pick_layers(g, true, every);
  float *want[256] = {0};
  Variant plain = {false, 1, NULL, true, false, 0};
  int failures = run_variant(path, "ref", &plain, w, x, batch, every, n_every, want) ? 0 : 1;
  const Variant *vs = quick ? QUICK : FULL;
  size_t nv = quick ? sizeof QUICK / sizeof *QUICK : sizeof FULL / sizeof *FULL;
  for (size_t v = 0; !failures && v < nv; v++) {
    if (big(g) && (vs[v].devices > 2 || (vs[v].cpu && vs[v].devices > 1) || vs[v].every_layer))
      continue;
    if (vs[v].bf16 && !rt_cpu_host_has_bf16()) {
      printf("  %-22s bf16 variants skipped: this CPU has no AVX512_BF16\n", g->name);
      continue;
    }
    char **layers = vs[v].every_layer ? every : names;
    int n = vs[v].every_layer ? n_every : n_out;
    float *got[256] = {0};
    bool ran = run_variant(path, "cpu", &vs[v], w, x, batch, layers, n, got);
    double worst = 0, worst_rel = 0;  // the worst error, as a fraction of its tolerance
    const char *worst_layer = "-";
    bool ok = ran;
    for (int k = 0; ran && k < n; k++) {
      int node = graph_find(g, layers[k]);
      // bf16: CPU_BF16_TOLERANCE before a softmax (about 2.5x the worst error measured on
      // every spec, 0.0042 on alexnet's fc7), and as much again after one.
      double tol = vs[v].bf16 ? CPU_BF16_TOLERANCE : CPU_TOLERANCE;
      if (after_softmax(g, layers[k]))
        tol = vs[v].bf16 ? 3 * CPU_BF16_TOLERANCE : 1e-4;
      Compare c = compare(got[k], want[node - 1], shape_elems(g->nodes[node].out) * batch);
      double ratio = c.finite ? c.rel / tol : 1e30;
      ok = ok && ratio <= 1;
      if (ratio >= worst) {
        worst = ratio, worst_rel = c.rel;
        worst_layer = layers[k];
      }
      free(got[k]);
    }
    char label[64];
    char threads[16] = "";
    if (vs[v].threads)
      snprintf(threads, sizeof threads, "/%dthr", vs[v].threads);
    snprintf(label, sizeof label, "%s/%ddev/%s%s%s", vs[v].every_layer ? "every-layer"
             : vs[v].fuse ? "fused" : "unfused", vs[v].devices, vs[v].cpu ? vs[v].cpu : "native",
             vs[v].bf16 ? "/bf16" : "", threads);
    printf("  %-22s %-24s %2d layer(s), worst %-8s %-9.3g (%3.0f%% of its tolerance) %s\n",
           g->name, label, n, worst_layer, worst_rel, 100 * worst, ok ? "OK" : "FAIL");
    failures += !ok;
  }
  for (int k = 0; k < n_every; k++)
    free(want[k]);
  free(x);
  weights_free(w);
  graph_free(g);
  return failures;
}

int main(int argc, char **argv) {
  bool quick = false;
  int failures = 0, specs = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick"))
      quick = true;
    else
      failures += check_spec(argv[i], quick), specs++;
  }
  printf("%d specs checked on the cpu target, %d failure(s)\n", specs, failures);
  return failures || !specs ? 1 : 0;
}
