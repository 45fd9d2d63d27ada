// Every pass checked against the reference over every spec, in the manner of ggml's
// test-backend-ops: the unfused single-device graph is the baseline, and each
// variant (fused or not, partitioned over 1 to MAX_DEVICES devices) must reproduce its
// output. Big nets (the AlexNets) run 1 and 2 devices only, to keep CI and ASan quick.
// Fusion must agree within 1e-6 relative, partitioning within 1e-5 (the issue's
// bounds; the executor computes each channel in the same order, so the differences
// seen in practice are zero).
//
// usage: test_equivalence SPEC...
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

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
  int max_devices = big(g) ? 2 : MAX_DEVICES;
  for (int devices = 1; base && devices <= max_devices; devices++)
    for (int fuse = 0; fuse <= 1; fuse++) {
      if (devices == 1 && !fuse)
        continue;  // the baseline
      double tolerance = devices == 1 ? 1e-6 : 1e-5;
      float *y = run_variant(path, w, x, batch, fuse, devices);
      Compare c = y ? compare(y, base, n) : (Compare){.rel = 1e30};
      bool ok = c.rel <= tolerance;
      char name[32];
      snprintf(name, sizeof name, "%s/%ddev", fuse ? "fused" : "unfused", devices);
      printf("  %-28s %-14s max rel err %-10.3g (tolerance %g) %s\n", g->name, name, c.rel,
             tolerance, ok ? "OK" : "FAIL");
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
