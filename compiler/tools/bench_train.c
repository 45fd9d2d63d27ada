// `alexc bench SPEC --target cpu --train`: times the training step (forward keeping
// activations, loss, backward, the SGD update) with the CPU target's training kernels,
// layer by layer, on random images and labels. Medians of R steps after W warm-up steps;
// a layer's GFLOP/s counts the MACs of what runs: the forward once, and in the backward
// the weight gradient and the data gradient once each where the program computes them
// (conv1's data gradient, which nothing needs, is never computed); the whole step's
// rate sums the same counts. A fused chain's backward (conv-relu-lrn-pool, ...) runs in
// its conv's instruction, so the conv's row holds it and the chain's rows show none.
// Also the program's memory plan (the per-image values' bytes per image), and the CPU
// time a step takes summed over the threads (getrusage): on a machine shared with other
// work the wall time measures the load as much as the program, the CPU time much less.
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"

// The steps' per-node times, one array per timed step, then the median of each node.
typedef struct {
  double *forward, *backward, update, total;
} StepTimes;

static double cpu_seconds(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// How many times a step runs node i's MACs: the forward, and the backward's weight and
// data gradients where the program computes them.
static int mac_passes(const TrainProgram *p, int i) {
  int passes = 1;
  for (int k = 0; k < p->n_instrs; k++) {
    const TInstr *in = &p->instrs[k];
    if (in->kind == TI_BACKWARD && in->node == i)
      passes += (in->dw >= 0) + (in->n_x > 0 && in->dx[0] >= 0);
  }
  return passes;
}

// The step's floating-point operations counted as above.
static double step_flops(const Graph *g, const TrainProgram *p, int batch) {
  double flops = 0;
  for (int i = 1; i < g->n_nodes; i++)
    flops += 2.0 * g->nodes[i].macs * batch * mac_passes(p, i);
  return flops;
}

static void print_layers(const Graph *g, const TrainProgram *p, const StepTimes *st, int runs,
                         int batch) {
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
    double flops = 2.0 * n->macs * batch * mac_passes(p, i);
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
  TrainProgram *p = autodiff(g);  // the trainer's program, for its counts and memory plan
  train_fuse_backward(p, fused ? NULL : plain);
  train_plan_memory(p);
  TrainState s = {.w = weights_init(g, seed, INIT_FAN_IN), .v = weights_zeros(g), .seed = seed};
  float *x = random_input(g, batch, seed);
  int32_t *labels = xcalloc(batch, sizeof *labels);
  for (int i = 0; i < batch; i++)
    labels[i] = (7 * i + 3) % trainer_classes(t);
  StepTimes *st = xcalloc(runs, sizeof *st);
  double *totals = xcalloc(runs, sizeof *totals);
  double cpu0 = 0;
  for (int r = -warmup; r < runs; r++) {
    if (r == 0)
      cpu0 = cpu_seconds();
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
  print_layers(g, p, st, runs, batch);
  double cpu = (cpu_seconds() - cpu0) / runs, step = median(totals, runs);
  printf("\nstep: %.2f ms (%.0f images/s), %.1f GFLOP/s over the whole step\n", step * 1e3,
         batch / step, step_flops(g, p, batch) / step / 1e9);
  printf("CPU time per step (all threads, mean): %.2f ms\n", cpu * 1e3);
  printf("per-image values (the memory plan): %.2f MB per image, %.1f MB at batch %d\n",
         p->arena * 4 / 1e6, p->arena * 4.0 * batch / 1e6, batch);
  train_program_free(p);
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
