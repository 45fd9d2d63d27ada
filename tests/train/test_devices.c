// Training on N logical devices against one device, in the manner of ggml's
// test-backend-ops: for every graph given, every device count from 2 to MAX_DEVICES and
// both kernel tables, the loss and every parameter gradient of one step (dropout on)
// must equal one device's. Only the order of float additions differs (partial input
// gradients are summed across devices), hence the tolerance of 1e-5 relative per tensor.
//
// usage: test_devices ref|cpu SPEC...
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

#define TOLERANCE 1e-5
#define BATCH 3

static bool same_gradients(const Weights *many, const Weights *one, double *worst,
                           const char **where) {
  bool ok = true;
  for (int i = 0; i < one->n; i++) {
    Compare c = compare(many->data[i], one->data[i], one->info[i].elems);
    if (!c.finite || !(c.rel <= *worst)) {
      *worst = c.finite ? c.rel : INFINITY;
      *where = one->info[i].name;
    }
    ok &= c.finite && c.rel <= TOLERANCE;
  }
  return ok;
}

static int check_spec(const char *path, const TrainKernels *k) {
  Graph *g = load_spec(path);
  if (!g)
    return 1;
  Weights *w = weights_init(g, 3, INIT_FAN_IN);
  float *x = random_input(g, BATCH, 4);
  Trainer *one = trainer_new(g, k, BATCH, 1);
  if (!one)
    return 1;
  int32_t labels[BATCH];
  for (int i = 0; i < BATCH; i++)
    labels[i] = (5 * i + 1) % trainer_classes(one);
  Weights *want = weights_zeros(g), *got = weights_zeros(g);
  double loss1 = trainer_grad(one, w, 9, 2, x, labels, BATCH, want, NULL);
  int failures = 0;
  for (int devices = 2; devices <= MAX_DEVICES; devices++) {
    Trainer *t = trainer_new(g, k, BATCH, devices);
    double loss = t ? trainer_grad(t, w, 9, 2, x, labels, BATCH, got, NULL) : NAN;
    double worst = 0, loss_err = fabs(loss - loss1) / fabs(loss1);
    const char *where = "-";
    bool ok = t && loss_err <= TOLERANCE && same_gradients(got, want, &worst, &where);
    printf("  %-14s %s %d devices: loss rel err %.3g, worst gradient rel err %.3g (%s)  %s\n",
           g->name, k->name, devices, loss_err, worst, where, ok ? "OK" : "FAIL");
    failures += !ok;
    trainer_free(t);
  }
  weights_free(want);
  weights_free(got);
  trainer_free(one);
  weights_free(w);
  free(x);
  graph_free(g);
  return failures;
}

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[1], "ref") && strcmp(argv[1], "cpu"))) {
    fprintf(stderr, "usage: test_devices ref|cpu SPEC...\n");
    return 2;
  }
  const TrainKernels *k = !strcmp(argv[1], "ref") ? &ref_train_kernels : &cpu_train_kernels;
  int failures = 0;
  for (int i = 2; i < argc; i++)
    failures += check_spec(argv[i], k);
  printf("%d spec(s), %d failure(s)\n", argc - 2, failures);
  return failures ? 1 : 0;
}
