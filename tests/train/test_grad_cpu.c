// The CPU training kernels (compiler/train/grad_cpu.c) against the reference kernels
// (compiler/train/grad_ref.c, the oracle):
//   - every op case of op_cases.h, plus larger cases here that cross the GEMM's blocking
//     (K beyond a KC block, N beyond an NC block, M not a multiple of the micro-tile):
//     forward y, and backward dx (added onto a non-zero buffer: dx += is the contract),
//     dw and db (overwritten: they start as garbage);
//   - whole networks: specs/mini-alexnet.yaml walked node by node, forward then backward
//     from a random output gradient, each table on its own activations;
//   - determinism: the same walk on 1, 2 and 3 threads gives bit-identical activations,
//     gradients and dW.
// Errors are max|cpu - ref| / max|ref| per tensor.
//
//   test_grad_cpu [--quick]          the checks (--quick: a smaller network batch)
//   test_grad_cpu --bench [REPS [mini|alexnet|both [THREADS]]]  times a training step (forward + backward through
//                                    every node) of mini-alexnet at batch 128 and AlexNet
//                                    at batch 16 with the CPU kernels
// ALEXC_CPU_TRAIN_ISA=avx512|avx2|generic picks the micro-kernel (tests/train/grad_cpu.cmake
// runs the checks with each).
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alexc.h"
#include "op_cases.h"
#include "../unit/test.h"

#define TOL 1e-4

static double rel_err(const float *a, const float *b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= diff))  // NaN counts as an error
      diff = d == d ? d : INFINITY;
    scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
  }
  return diff == 0 ? 0 : scale > 0 ? diff / scale : INFINITY;
}

static double worst_err;

static void check_tensor(const char *where, const char *what, const float *cpu, const float *ref,
                         int64_t n, double tol) {
  double e = rel_err(cpu, ref, n);
  if (e > worst_err)
    worst_err = e;
  if (!(e <= tol)) {
    fprintf(stderr, "%s: %s: relative error %.3g > %.3g\n", where, what, e, tol);
    test_failures++;
  }
}

static float *dup_floats(const float *src, int64_t n) {
  float *d = xcalloc(n ? n : 1, sizeof(float));
  memcpy(d, src, n * sizeof(float));
  return d;
}

// ---------------------------------------------------------------- op cases

// Larger cases than op_cases.h's, sized to cross the GEMM's blocks (KC 256, NC 512,
// MC 96, micro-tiles up to 8 x 32) and the sub-batching of small images.
static const OpCase BIG_CASES[] = {
    {"big_conv_k3_p1", OPC_IN(40, 23, 23) "  - {name: c, op: conv, out: 37, kernel: 3, pad: 1}\n", NULL, 2, 0},
    {"big_conv_g2_small", OPC_IN(32, 6, 6) "  - {name: c, op: conv, out: 98, kernel: 3, pad: 1, groups: 2}\n", NULL, 13, 0},
    {"big_conv_k5_s2", OPC_IN(6, 30, 31) "  - {name: c, op: conv, out: 19, kernel: 5, stride: 2, pad: 2, bias: false}\n", NULL, 3, 0},
    {"big_conv_k11_s4", OPC_IN(3, 63, 63) "  - {name: c, op: conv, out: 10, kernel: 11, stride: 4}\n", NULL, 2, 0},
    {"big_conv_batch40", OPC_IN(2, 5, 5) "  - {name: c, op: conv, out: 9, kernel: 3, pad: 1}\n", NULL, 40, 0},
    {"big_fc", OPC_IN(700, 1, 1) "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 530}\n", NULL, 11, 0},
    {"big_fc_batch300", OPC_IN(33, 1, 1) "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 17}\n", NULL, 300, 0},
    {"big_lrn", OPC_IN(20, 9, 9) "  - {name: n, op: lrn, size: 5, alpha: 1e-2, beta: 0.75, k: 2, groups: 2}\n", NULL, 3, 0},
    {"big_lrn_beta", OPC_IN(11, 7, 5) "  - {name: n, op: lrn, size: 3, alpha: 0.1, beta: 0.6, k: 1}\n", NULL, 2, 0},
    {"big_pool", OPC_IN(5, 27, 27) "  - {name: p, op: maxpool, kernel: 3, stride: 2}\n", NULL, 3, 0},
    {"big_relu", OPC_IN(7, 50, 50) "  - {name: r, op: relu}\n", NULL, 3, 0},
    {"big_dropout", OPC_IN(7, 50, 50) "  - {name: d, op: dropout, p: 0.5}\n", NULL, 3, 0},
};
#define N_BIG_CASES (sizeof BIG_CASES / sizeof BIG_CASES[0])

static void fill_garbage(float *p, int64_t n, float v) {
  for (int64_t i = 0; i < n; i++)
    p[i] = v;
}

static void run_case(const OpCase *oc) {
  OpCaseData d;
  if (!op_case_setup(oc, 1, &d)) {
    fprintf(stderr, "%s: setup failed\n", oc->name);
    test_failures++;
    return;
  }
  float *y_ref = xcalloc(d.y_elems, sizeof(float)), *y_cpu = xcalloc(d.y_elems, sizeof(float));
  ref_train_kernels.forward(&d.call, y_ref);
  fill_garbage(y_cpu, d.y_elems, NAN);
  cpu_train_kernels.forward(&d.call, y_cpu);
  check_tensor(oc->name, "y", y_cpu, y_ref, d.y_elems, TOL);

  d.call.y = y_ref;  // both backwards read the same forward output
  float *dx_ref[OPC_MAX_INPUTS] = {0}, *dx_cpu[OPC_MAX_INPUTS] = {0};
  char buf[200];
  for (int j = 0; j < d.n_x; j++) {
    // dx starts non-zero: the kernels add into it.
    dx_ref[j] = xcalloc(d.x_elems[j], sizeof(float));
    snprintf(buf, sizeof buf, "%s.dx%d", oc->name, j);
    fill_normal(dx_ref[j], d.x_elems[j], 7, buf, 0.5);
    dx_cpu[j] = dup_floats(dx_ref[j], d.x_elems[j]);
  }
  float *dw_ref = NULL, *dw_cpu = NULL, *db_ref = NULL, *db_cpu = NULL;
  if (d.w_elems) {
    dw_ref = xcalloc(d.w_elems, sizeof(float));
    dw_cpu = xcalloc(d.w_elems, sizeof(float));
    fill_garbage(dw_cpu, d.w_elems, 1e30f);
  }
  if (d.b_elems) {
    db_ref = xcalloc(d.b_elems, sizeof(float));
    db_cpu = xcalloc(d.b_elems, sizeof(float));
    fill_garbage(db_cpu, d.b_elems, -1e30f);
  }
  ref_train_kernels.backward(&d.call, d.dy, dx_ref, dw_ref, db_ref);
  cpu_train_kernels.backward(&d.call, d.dy, dx_cpu, dw_cpu, db_cpu);
  for (int j = 0; j < d.n_x; j++) {
    snprintf(buf, sizeof buf, "dx%d", j);
    check_tensor(oc->name, buf, dx_cpu[j], dx_ref[j], d.x_elems[j], TOL);
  }
  if (d.w_elems)
    check_tensor(oc->name, "dw", dw_cpu, dw_ref, d.w_elems, TOL);
  if (d.b_elems)
    check_tensor(oc->name, "db", db_cpu, db_ref, d.b_elems, TOL);

  // Saved state (OpCall.saved, the LRN's window sums): a forward that saves it and a
  // backward that reads it give the recomputing path's bits.
  float *saved = xcalloc(d.y_elems, sizeof(float)), *y_saved = xcalloc(d.y_elems, sizeof(float));
  OpCall cs = d.call;
  cs.saved = saved;
  cs.y = NULL;
  cpu_train_kernels.forward(&cs, y_saved);
  CHECK(!memcmp(y_saved, y_cpu, d.y_elems * sizeof(float)));
  cs.y = y_ref;
  for (int j = 0; j < d.n_x; j++) {
    float *dx_saved[OPC_MAX_INPUTS] = {0};
    snprintf(buf, sizeof buf, "%s.dx%d", oc->name, j);
    dx_saved[j] = xcalloc(d.x_elems[j], sizeof(float));
    fill_normal(dx_saved[j], d.x_elems[j], 7, buf, 0.5);
    cpu_train_kernels.backward(&cs, d.dy, dx_saved, NULL, NULL);
    CHECK(!memcmp(dx_saved[j], dx_cpu[j], d.x_elems[j] * sizeof(float)));
    free(dx_saved[j]);
  }
  free(saved);
  free(y_saved);

  // dw and db alone (dx NULL), and dx alone: the same values.
  if (d.w_elems || d.b_elems) {
    float *none[OPC_MAX_INPUTS] = {0};
    float *dw2 = d.w_elems ? xcalloc(d.w_elems, sizeof(float)) : NULL;
    float *db2 = d.b_elems ? xcalloc(d.b_elems, sizeof(float)) : NULL;
    cpu_train_kernels.backward(&d.call, d.dy, none, dw2, db2);
    CHECK(!dw2 || !memcmp(dw2, dw_cpu, d.w_elems * sizeof(float)));
    CHECK(!db2 || !memcmp(db2, db_cpu, d.b_elems * sizeof(float)));
    free(dw2);
    free(db2);
  }
  for (int j = 0; j < d.n_x; j++) {
    free(dx_ref[j]);
    free(dx_cpu[j]);
  }
  free(dw_ref);
  free(dw_cpu);
  free(db_ref);
  free(db_cpu);
  free(y_ref);
  free(y_cpu);
  op_case_free(&d);
}

// ---------------------------------------------------------------- whole networks

typedef struct {
  int n;
  float **act, **grad, **dw, **db;
  uint8_t **mask;
} Walk;

static void walk_free(Walk *w) {
  for (int i = 0; i < w->n; i++) {
    free(w->act[i]);
    free(w->grad[i]);
    free(w->dw[i]);
    free(w->db[i]);
    free(w->mask[i]);
  }
  free(w->act);
  free(w->grad);
  free(w->dw);
  free(w->db);
  free(w->mask);
}

// Forward through every node, then backward from dy_out (the output's gradient) through
// every node, dx included for the input. Adds the CPU time (all threads) of forward and
// backward per node into t_fwd/t_bwd (seconds) when not NULL.
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static Walk walk_new(const Graph *g, int batch) {
  Walk w = {.n = g->n_nodes};
  w.act = xcalloc(g->n_nodes, sizeof *w.act);
  w.grad = xcalloc(g->n_nodes, sizeof *w.grad);
  w.dw = xcalloc(g->n_nodes, sizeof *w.dw);
  w.db = xcalloc(g->n_nodes, sizeof *w.db);
  w.mask = xcalloc(g->n_nodes, sizeof *w.mask);
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    int64_t e = shape_elems(n->out) * batch;
    w.act[i] = xcalloc(e, sizeof(float));
    w.grad[i] = xcalloc(e, sizeof(float));
    if (n->n_weight)
      w.dw[i] = xcalloc(n->n_weight, sizeof(float));
    if (n->n_bias)
      w.db[i] = xcalloc(n->n_bias, sizeof(float));
    if (n->op == OP_DROPOUT) {
      w.mask[i] = xcalloc(e, 1);
      dropout_mask(5, 3, n->name, 0, e, n->dropout.p, w.mask[i]);
    }
  }
  return w;
}

static OpCall walk_call(const Graph *g, const Weights *wt, Walk *w, int i, int batch,
                        const float **xs) {
  const Node *n = &g->nodes[i];
  for (int j = 0; j < n->n_inputs; j++)
    xs[j] = w->act[n->inputs[j]];
  return (OpCall){.g = g, .n = n, .batch = batch, .x = xs, .y = w->act[i],
                  .w = weights_get(wt, n->name, false), .b = weights_get(wt, n->name, true),
                  .mask = w->mask[i]};
}

static bool input_grad = true;  // the walk computes the input's gradient (the bench: not)

static void walk_run(const Graph *g, const Weights *wt, const TrainKernels *k, Walk *w,
                     const float *x, const float *dy_out, int batch, double *t_fwd,
                     double *t_bwd) {
  memcpy(w->act[0], x, shape_elems(g->nodes[0].out) * batch * sizeof(float));
  const float *xs[64];
  float *dx[64];
  for (int i = 1; i < g->n_nodes; i++) {
    OpCall c = walk_call(g, wt, w, i, batch, xs);
    double t0 = cpu_now();
    k->forward(&c, w->act[i]);
    if (t_fwd)
      t_fwd[i] += cpu_now() - t0;
  }
  for (int i = 0; i < g->n_nodes; i++)
    memset(w->grad[i], 0, shape_elems(g->nodes[i].out) * batch * sizeof(float));
  memcpy(w->grad[g->n_nodes - 1], dy_out,
         shape_elems(g->nodes[g->n_nodes - 1].out) * batch * sizeof(float));
  for (int i = g->n_nodes - 1; i >= 1; i--) {
    const Node *n = &g->nodes[i];
    OpCall c = walk_call(g, wt, w, i, batch, xs);
    for (int j = 0; j < n->n_inputs; j++)  // the trainer wants no gradient for the input
      dx[j] = n->inputs[j] == 0 && !input_grad ? NULL : w->grad[n->inputs[j]];
    double t0 = cpu_now();
    k->backward(&c, w->grad[i], dx, w->dw[i], w->db[i]);
    if (t_bwd)
      t_bwd[i] += cpu_now() - t0;
  }
}

static Graph *load_spec(const char *path) {
  Graph *g = parse_spec_file(path);
  if (!g) {
    fprintf(stderr, "cannot load %s\n", path);
    exit(1);
  }
  return g;
}

// Random input and output gradient for a walk.
static void walk_data(const Graph *g, int batch, float **x, float **dy) {
  int64_t nx = shape_elems(g->nodes[0].out) * batch,
          ny = shape_elems(g->nodes[g->n_nodes - 1].out) * batch;
  *x = xcalloc(nx, sizeof(float));
  *dy = xcalloc(ny, sizeof(float));
  fill_normal(*x, nx, 11, "walk.x", 1.0);
  fill_normal(*dy, ny, 11, "walk.dy", 1.0);
}

static void test_network(const char *spec, int batch) {
  Graph *g = load_spec(spec);
  Weights *wt = weights_init(g, 3, INIT_FAN_IN);
  float *x, *dy;
  walk_data(g, batch, &x, &dy);
  Walk ref = walk_new(g, batch), cpu = walk_new(g, batch);
  walk_run(g, wt, &ref_train_kernels, &ref, x, dy, batch, NULL, NULL);
  walk_run(g, wt, &cpu_train_kernels, &cpu, x, dy, batch, NULL, NULL);
  char where[300];
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    snprintf(where, sizeof where, "%s b%d %s", g->name, batch, n->name);
    int64_t e = shape_elems(n->out) * batch;
    double ey = rel_err(cpu.act[i], ref.act[i], e), eg = rel_err(cpu.grad[i], ref.grad[i], e);
    double ew = n->n_weight ? rel_err(cpu.dw[i], ref.dw[i], n->n_weight) : 0;
    double eb = n->n_bias ? rel_err(cpu.db[i], ref.db[i], n->n_bias) : 0;
    printf("  %-10s y %.2e  dy %.2e  dw %.2e  db %.2e\n", n->name, ey, eg, ew, eb);
    check_tensor(where, "y", cpu.act[i], ref.act[i], e, TOL);
    check_tensor(where, "grad", cpu.grad[i], ref.grad[i], e, TOL);
    if (n->n_weight)
      check_tensor(where, "dw", cpu.dw[i], ref.dw[i], n->n_weight, TOL);
    if (n->n_bias)
      check_tensor(where, "db", cpu.db[i], ref.db[i], n->n_bias, TOL);
  }
  check_tensor(spec, "input grad", cpu.grad[0], ref.grad[0],
               shape_elems(g->nodes[0].out) * batch, TOL);
  walk_free(&ref);
  walk_free(&cpu);
  free(x);
  free(dy);
  weights_free(wt);
  graph_free(g);
}

// 1, 2 and 3 threads: bit-identical everything.
static void test_determinism(const char *spec, int batch) {
  Graph *g = load_spec(spec);
  Weights *wt = weights_init(g, 4, INIT_FAN_IN);
  float *x, *dy;
  walk_data(g, batch, &x, &dy);
  Walk w[3];
  for (int t = 0; t < 3; t++) {
    cpu_train_set_threads(t + 1);
    w[t] = walk_new(g, batch);
    walk_run(g, wt, &cpu_train_kernels, &w[t], x, dy, batch, NULL, NULL);
  }
  for (int t = 1; t < 3; t++)
    for (int i = 0; i < g->n_nodes; i++) {
      const Node *n = &g->nodes[i];
      size_t e = shape_elems(n->out) * batch * sizeof(float);
      bool same = !memcmp(w[t].act[i], w[0].act[i], e) && !memcmp(w[t].grad[i], w[0].grad[i], e) &&
                  (!n->n_weight || !memcmp(w[t].dw[i], w[0].dw[i], n->n_weight * sizeof(float))) &&
                  (!n->n_bias || !memcmp(w[t].db[i], w[0].db[i], n->n_bias * sizeof(float)));
      if (!same)
        fprintf(stderr, "determinism: %s differs between 1 and %d threads\n", n->name, t + 1);
      CHECK(same);
    }
  // And run to run on the same thread count.
  Walk again = walk_new(g, batch);
  cpu_train_set_threads(2);
  walk_run(g, wt, &cpu_train_kernels, &again, x, dy, batch, NULL, NULL);
  for (int i = 0; i < g->n_nodes; i++)
    CHECK(!g->nodes[i].n_weight ||
          !memcmp(again.dw[i], w[0].dw[i], g->nodes[i].n_weight * sizeof(float)));
  walk_free(&again);
  for (int t = 0; t < 3; t++)
    walk_free(&w[t]);
  cpu_train_set_threads(0);
  free(x);
  free(dy);
  weights_free(wt);
  graph_free(g);
}

// ---------------------------------------------------------------- benchmark

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void bench(const char *spec, int batch, int reps) {
  Graph *g = load_spec(spec);
  Weights *wt = weights_init(g, 3, INIT_FAN_IN);
  float *x, *dy;
  walk_data(g, batch, &x, &dy);
  Walk w = walk_new(g, batch);
  double *tf = xcalloc(g->n_nodes, sizeof(double)), *tb = xcalloc(g->n_nodes, sizeof(double));
  double *step = xcalloc(reps, sizeof(double)), cpu = 0;
  walk_run(g, wt, &cpu_train_kernels, &w, x, dy, batch, NULL, NULL);  // warm-up
  for (int r = 0; r < reps; r++) {
    double t0 = now(), c0 = cpu_now();
    walk_run(g, wt, &cpu_train_kernels, &w, x, dy, batch, tf, tb);
    step[r] = now() - t0;
    cpu += cpu_now() - c0;
  }
  qsort(step, reps, sizeof *step, cmp_double);
  printf("%s batch %d: step min %.1f ms, median %.1f ms (%d reps; CPU time %.1f ms a step)\n",
         g->name, batch, step[0] * 1e3, step[reps / 2] * 1e3, reps, cpu * 1e3 / reps);
  for (int i = 1; i < g->n_nodes && getenv("GCPU_DEBUG"); i++) {
    int64_t e = shape_elems(g->nodes[i].out) * batch, tiny = 0;
    float mx = 0;
    for (int64_t j = 0; j < e; j++) {
      float a = fabsf(w.grad[i][j]);
      mx = a > mx ? a : mx;
      tiny += a != 0 && a < 1.1754944e-38f;
    }
    printf("  %-10s max|grad| %g, %lld denormal\n", g->nodes[i].name, mx, (long long)tiny);
  }
  for (int i = 1; i < g->n_nodes; i++)
    printf("  %-10s CPU time: fwd %7.2f ms  bwd %7.2f ms\n", g->nodes[i].name, tf[i] * 1e3 / reps,
           tb[i] * 1e3 / reps);
  fflush(stdout);
  walk_free(&w);
  free(tf);
  free(tb);
  free(step);
  free(x);
  free(dy);
  weights_free(wt);
  graph_free(g);
}

int main(int argc, char **argv) {
  bool quick = argc > 1 && !strcmp(argv[1], "--quick");
  if (argc > 1 && !strcmp(argv[1], "--bench")) {
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    input_grad = false;
    const char *which = argc > 3 ? argv[3] : "both";
    if (argc > 4)
      cpu_train_set_threads(atoi(argv[4]));
    if (strcmp(which, "alexnet"))
      bench("specs/mini-alexnet.yaml", 128, reps < 1 ? 1 : reps);
    if (strcmp(which, "mini"))
      bench("specs/alexnet.yaml", 16, reps < 1 ? 1 : reps);
    return 0;
  }
  for (size_t i = 0; i < N_OP_CASES; i++)
    run_case(&OP_CASES[i]);
  for (size_t i = 0; i < N_BIG_CASES; i++)
    run_case(&BIG_CASES[i]);
  printf("op cases: %zu, worst relative error %.3g\n", N_OP_CASES + N_BIG_CASES, worst_err);
  test_network("specs/mini-alexnet.yaml", quick ? 2 : 6);
  test_determinism("specs/mini-alexnet.yaml", quick ? 5 : 19);
  printf("worst relative error overall %.3g\n", worst_err);
  TEST_MAIN_END();
}
