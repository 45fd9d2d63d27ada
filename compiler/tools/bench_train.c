// `alexc bench SPEC --target cpu --train`: times the training step (forward keeping
// activations, loss, backward, the SGD update) with the CPU target's training kernels,
// layer by layer, on random images and labels. Medians of R steps after W warm-up steps;
// a layer's GFLOP/s counts the forward's MACs once and the backward's twice (data and
// weights), which is what a convolution's backward does (conv1's data gradient, which
// nothing needs, is skipped, so its backward counts once); the whole step's rate counts
// every layer's MACs three times.
#include <stdlib.h>
#include <string.h>

#include "cli.h"

// The steps' per-node times, one array per timed step, then the median of each node.
typedef struct {
  double *forward, *backward, update, total;
} StepTimes;

static void print_layers(const Graph *g, const StepTimes *st, int runs, int batch) {
  double *f = xcalloc(runs, sizeof *f), *b = xcalloc(runs, sizeof *b);
  printf("| layer | forward ms | backward ms | GFLOP/s |\n|---|---:|---:|---:|\n");
  for (int i = 1; i < g->n_nodes; i++) {
    for (int r = 0; r < runs; r++) {
      f[r] = st[r].forward[i];
      b[r] = st[r].backward[i];
    }
    double fm = median(f, runs), bm = median(b, runs);
    if (fm + bm < 1e-7)
      continue;
    const Node *n = &g->nodes[i];
    double passes = n->macs ? (g->nodes[n->inputs[0]].op == OP_INPUT ? 2 : 3) : 0;
    double flops = 2.0 * n->macs * batch * passes;
    if (flops > 0)
      printf("| %s | %.2f | %.2f | %.1f |\n", n->name, fm * 1e3, bm * 1e3, flops / (fm + bm) / 1e9);
    else
      printf("| %s | %.2f | %.2f | |\n", n->name, fm * 1e3, bm * 1e3);
  }
  for (int r = 0; r < runs; r++)
    f[r] = st[r].update;
  printf("| SGD update | | %.2f | |\n", median(f, runs) * 1e3);
  free(f);
  free(b);
}

// Times `runs` steps of one program (fused or plain) and prints its per-layer table;
// returns the median step in seconds, or a negative number on error.
static double time_program(const Graph *g, bool fused, int batch, int runs, int warmup,
                           uint64_t seed) {
  static const char *const plain[] = {NULL};
  Trainer *t = trainer_new_fused(g, &cpu_train_kernels, batch, 1, fused ? NULL : plain);
  if (!t)
    return -1;
  TrainState s = {.w = weights_init(g, seed, INIT_FAN_IN), .v = weights_zeros(g), .seed = seed};
  float *x = random_input(g, batch, seed);
  int32_t *labels = xcalloc(batch, sizeof *labels);
  for (int i = 0; i < batch; i++)
    labels[i] = (7 * i + 3) % trainer_classes(t);
  StepTimes *st = xcalloc(runs, sizeof *st);
  double *totals = xcalloc(runs, sizeof *totals);
  for (int r = -warmup; r < runs; r++) {
    StepTimes *at = r >= 0 ? &st[r] : NULL;
    if (at) {
      at->forward = xcalloc(g->n_nodes, sizeof(double));
      at->backward = xcalloc(g->n_nodes, sizeof(double));
      trainer_profile(t, at->forward, at->backward, &at->update);
    }
    double t0 = now_seconds();
    trainer_step(t, &s, 1e-4, x, labels, batch, NULL);
    if (at)
      totals[r] = now_seconds() - t0;
  }
  printf("%s: training step (forward, loss, backward, SGD) on the CPU target, batch %d, "
         "%s program (`alexc dump --train%s`), median of %d steps\n\n", g->name, batch,
         fused ? "fused" : "unfused", fused ? "" : " --no-fuse", runs);
  print_layers(g, st, runs, batch);
  double step = median(totals, runs);
  printf("\nstep: %.2f ms (%.0f images/s), %.1f GFLOP/s over the whole step\n", step * 1e3,
         batch / step, 6.0 * graph_macs(g) * batch / step / 1e9);
  for (int r = 0; r < runs; r++) {
    free(st[r].forward);
    free(st[r].backward);
  }
  free(st);
  free(totals);
  free(x);
  free(labels);
  weights_free(s.w);
  weights_free(s.v);
  trainer_free(t);
  return step;
}

int bench_train(const char *spec, int batch, int runs, int warmup, int threads, uint64_t seed,
                bool fused, bool compare_unfused) {
  Graph *g = load_spec(spec);
  if (!g)
    return EXIT_ERR;
  if (threads)
    cpu_train_set_threads(threads);
  double a = time_program(g, fused, batch, runs, warmup, seed), b = 0;
  if (a >= 0 && compare_unfused && fused) {
    printf("\n");
    b = time_program(g, false, batch, runs, warmup, seed);
    if (b > 0)
      printf("\nfused step / unfused step: %.3f (same run; the two compute the same bits)\n",
             a / b);
  }
  graph_free(g);
  return a >= 0 && b >= 0 ? EXIT_OK : EXIT_ERR;
}
