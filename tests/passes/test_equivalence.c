// Every pass checked against the reference over every spec, in the manner of ggml's
// test-backend-ops: the unfused single-device graph is the baseline, and each
// variant (fused, partitioned over 2-4 devices, both) must reproduce its output.
// Fusion must agree within 1e-6 relative, partitioning within 1e-5 (the issue's
// bounds; the executor computes each channel in the same order, so the differences
// seen in practice are zero).
//
// usage: test_equivalence SPEC...
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

typedef struct {
  const char *name;
  bool fuse;
  int devices;
  double tolerance;
} Variant;

static const Variant VARIANTS[] = {
    {"fused", true, 1, 1e-6},          {"unfused/2dev", false, 2, 1e-5},
    {"fused/2dev", true, 2, 1e-5},     {"fused/3dev", true, 3, 1e-5},
    {"unfused/4dev", false, 4, 1e-5},  {"fused/4dev", true, 4, 1e-5},
};

// Big nets run only the variants the issue names, to keep CI (and ASan) quick.
static bool big(const Graph *g) { return graph_macs(g) > 100000000; }

static float *run_variant(const char *path, const Weights *w, const float *x, int batch,
                          bool fuse, int devices) {
  Graph *g = load_spec(path);
  PassOptions o = pass_defaults();
  o.devices = devices;
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = fuse;
  float *y = g && run_passes(g, &o) ? ref_run_output(g, w, x, batch) : NULL;
  graph_free(g);
  return y;
}

static int check_spec(const char *path) {
  Graph *g = load_spec(path);
  if (!g)
    return 1;
  int batch = big(g) ? 1 : 3;
  Weights *w = weights_init(g, 11, INIT_FAN_IN);
  float *x = random_input(g, batch, 5);
  int64_t n = shape_elems(g->nodes[g->output].out) * batch;
  float *base = run_variant(path, w, x, batch, false, 1);
  int failures = base ? 0 : 1;
  for (size_t v = 0; base && v < sizeof VARIANTS / sizeof *VARIANTS; v++) {
    const Variant *var = &VARIANTS[v];
    if (big(g) && var->devices > 2)
      continue;
    float *y = run_variant(path, w, x, batch, var->fuse, var->devices);
    Compare c = y ? compare(y, base, n) : (Compare){.rel = 1e30};
    bool ok = c.rel <= var->tolerance;
    printf("  %-28s %-14s max rel err %-10.3g (tolerance %g) %s\n", g->name, var->name, c.rel,
           var->tolerance, ok ? "OK" : "FAIL");
    failures += !ok;
    free(y);
  }
  free(base);
  free(x);
  weights_free(w);
  graph_free(g);
  return failures;
}

int main(int argc, char **argv) {
  int failures = 0, specs = 0;
  for (int i = 1; i < argc; i++, specs++)
    failures += check_spec(argv[i]);
  printf("%d specs checked, %d failure(s)\n", specs, failures);
  return failures || !specs ? 1 : 0;
}
