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

// One program (fused or plain) being timed: its trainer, its program (for the counts and
// the memory plan), its state and its steps' times.
typedef struct {
  bool fused;
  Trainer *t;
  TrainProgram *p;
  TrainState s;
  float *x;
  int32_t *labels;
  StepTimes *st;
  double *totals, cpu;  // wall time per timed step; CPU time of the timed steps in all
} Timed;

static bool timed_open(Timed *b, const Graph *g, bool fused, int batch, int runs,
                       uint64_t seed) {
  static const char *const plain[] = {NULL};
  *b = (Timed){.fused = fused};
  if (!(b->t = trainer_new_fused(g, &cpu_train_kernels, batch, 1, fused ? NULL : plain)))
    return false;
  b->p = autodiff(g);  // the trainer's program, for its counts and memory plan
  train_fuse_backward(b->p, fused ? NULL : plain);
  train_plan_memory(b->p);
  b->s = (TrainState){.w = weights_init(g, seed, INIT_FAN_IN), .v = weights_zeros(g),
                      .seed = seed};
  b->x = random_input(g, batch, seed);
  b->labels = xcalloc(batch, sizeof *b->labels);
  for (int i = 0; i < batch; i++)
    b->labels[i] = (7 * i + 3) % trainer_classes(b->t);
  b->st = xcalloc(runs, sizeof *b->st);
  for (int r = 0; r < runs; r++) {
    b->st[r].forward = xcalloc(g->n_nodes, sizeof(double));
    b->st[r].backward = xcalloc(g->n_nodes, sizeof(double));
  }
  b->totals = xcalloc(runs, sizeof *b->totals);
  return true;
}

// Step r (negative: a warm-up step, not recorded).
static void timed_step(Timed *b, int r, int batch) {
  StepTimes *at = r >= 0 ? &b->st[r] : NULL;
  if (at)
    trainer_profile(b->t, at->forward, at->backward, &at->update);
  double c0 = cpu_seconds(), t0 = now_seconds();
  trainer_step(b->t, &b->s, 1e-4, b->x, b->labels, batch, NULL);
  if (at) {
    b->totals[r] = now_seconds() - t0;
    b->cpu += cpu_seconds() - c0;
  }
}

// Prints the program's per-layer table and totals; returns the median step in seconds.
static double timed_report(Timed *b, const Graph *g, int batch, int runs) {
  printf("%s: training step (forward, loss, backward, SGD) on the CPU target, batch %d, "
         "%s program (`alexc dump --train%s`), median of %d steps\n\n", g->name, batch,
         b->fused ? "fused" : "unfused", b->fused ? "" : " --no-fuse", runs);
  print_layers(g, b->p, b->st, runs, batch);
  double *t = xcalloc(runs, sizeof *t);
  memcpy(t, b->totals, runs * sizeof *t);
  double step = median(t, runs);
  free(t);
  printf("\nstep: %.2f ms (%.0f images/s), %.1f GFLOP/s over the whole step\n", step * 1e3,
         batch / step, step_flops(g, b->p, batch) / step / 1e9);
  printf("CPU time per step (all threads, mean): %.2f ms\n", b->cpu / runs * 1e3);
  printf("per-image values (the memory plan): %.2f MB per image, %.1f MB at batch %d\n",
         b->p->arena * 4 / 1e6, b->p->arena * 4.0 * batch / 1e6, batch);
  return step;
}

static void timed_close(Timed *b, int runs) {
  train_program_free(b->p);
  for (int r = 0; b->st && r < runs; r++) {
    free(b->st[r].forward);
    free(b->st[r].backward);
  }
  free(b->st);
  free(b->totals);
  free(b->x);
  free(b->labels);
  weights_free(b->s.w);
  weights_free(b->s.v);
  trainer_free(b->t);
}

// With compare_unfused, the fused and the plain program take turns step by step (each
// pair in alternating order), so that both see the same load on a shared machine; the
// ratio is also given as the median of each pair's ratio.
int bench_train(const char *spec, int batch, int runs, int warmup, int threads, uint64_t seed,
                bool fused, bool compare_unfused) {
  Graph *g = load_spec(spec);
  if (!g)
    return EXIT_ERR;
  if (threads)
    cpu_train_set_threads(threads);
  bool two = compare_unfused && fused;
  Timed a = {0}, b = {0};
  bool ok = timed_open(&a, g, fused, batch, runs, seed) &&
            (!two || timed_open(&b, g, false, batch, runs, seed));
  for (int r = -warmup; ok && r < runs; r++) {
    bool b_first = two && (r & 1);
    if (b_first)
      timed_step(&b, r, batch);
    timed_step(&a, r, batch);
    if (two && !b_first)
      timed_step(&b, r, batch);
  }
  if (ok) {
    double sa = timed_report(&a, g, batch, runs);
    if (two) {
      printf("\n");
      double sb = timed_report(&b, g, batch, runs);
      double *ratio = xcalloc(runs, sizeof *ratio);
      for (int r = 0; r < runs; r++)
        ratio[r] = a.totals[r] / b.totals[r];
      printf("\nfused step / unfused step: %.3f (medians), %.3f (median of the %d pairs of "
             "steps run one after the other), CPU time %.3f; the two compute the same bits\n",
             sa / sb, median(ratio, runs), runs, a.cpu / b.cpu);
      free(ratio);
    }
  }
  timed_close(&a, runs);
  if (two)
    timed_close(&b, runs);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
