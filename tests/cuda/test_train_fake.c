// CUDA training through the real runtime (runtime/cuda.c) on the CPU: the fake libcuda
// and cuBLAS of tests/cuda/fake/ (train_fake.sh sets them up) run the generated step's
// kernels, compiled for the CPU from the NVRTC cache's sources, with every stream's work
// in a seeded random order that respects only the runtime's events. Two SGD steps of
// cuda_trainer_step (parameters and momenta resident on the fake devices, downloaded
// after each step) against the reference's on the same state: the loss, the top-1 hits,
// the momenta and the weights.
//
// The same binary on a real driver is cuda.train_gpu (label gpu): the device machine's
// check of the training step against the reference.
//
// usage: test_train_fake SPEC DEVICES     (exit 77: no NVRTC in this build, or no GPU)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "backends/cuda/train.h"
#include "tools/cli.h"

#define TOL 1e-5  // as cuda.train_emulate's (the same kernels, the same GEMM)

static double worst(const Weights *got, const Weights *want) {
  double rel = 0;
  for (int i = 0; i < want->n; i++) {
    Compare c = compare(got->data[i], want->data[i], want->info[i].elems);
    double r = c.finite ? c.rel : INFINITY;
    rel = r > rel || r != r ? r : rel;
  }
  return rel;
}

static Weights *dup(const Graph *g, const Weights *w) {
  Weights *c = weights_zeros(g);
  for (int i = 0; i < w->n; i++)
    memcpy(c->data[i], w->data[i], w->info[i].elems * sizeof(float));
  return c;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_train_fake SPEC DEVICES\n");
    return 2;
  }
  if (!cuda_have_nvrtc()) {
    printf("SKIP: no NVRTC in this build\n");
    return 77;
  }
  if (!rt_cuda_available()) {  // run as cuda.train_gpu on a machine without one
    printf("SKIP: %s\n", rt_error());
    return 77;
  }
  int devices = atoi(argv[2]), batch = 3;
  Graph *g = load_spec(argv[1]);
  if (!g)
    return 1;
  Weights *w = weights_init(g, 7, INIT_FAN_IN), *v = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {  // as cuda.train_emulate's
    if (w->info[i].is_bias)
      fill_normal(w->data[i], w->info[i].elems, 7, w->info[i].name, 0.1);
    fill_normal(v->data[i], v->info[i].elems, 9, v->info[i].name, 1e-3);
  }
  CudaTrainer *c = cuda_trainer_new(g, devices, "sm_90", w, v);
  if (!c) {
    weights_free(w);
    weights_free(v);
    graph_free(g);
    return 1;
  }
  Trainer *ref = trainer_new(g, &ref_train_kernels, batch, 1);
  int classes = trainer_classes(ref);
  int32_t labels[3];
  for (int i = 0; i < batch; i++)
    labels[i] = (i * 7 + 3) % classes;
  float *x = random_input(g, batch, 3);
  bool ok = true;
  const double lrs[2] = {0.002, 0.001};
  for (int k = 0; k < 2 && ok; k++) {
    // The reference from the state the device has now.
    Weights *gw = weights_zeros(g), *rw = dup(g, w), *rv = dup(g, v);
    int ref_hits = 0, hits = -1;
    double ref_loss = trainer_grad(ref, w, 5, k, x, labels, batch, gw, &ref_hits);
    for (int i = 0; i < rw->n; i++)
      sgd_update_span(rw->data[i], rv->data[i], gw->data[i], rw->info[i].elems, lrs[k]);
    double loss = cuda_trainer_step(c, lrs[k], 5, k, x, labels, batch, &hits);
    ok = loss == loss && cuda_trainer_download(c, w, v);
    double el = fabs(loss - ref_loss) / fmax(1.0, fabs(ref_loss));
    double ev = ok ? worst(v, rv) : INFINITY, ew = ok ? worst(w, rw) : INFINITY;
    ok = ok && el <= TOL && ev <= TOL && ew <= TOL && hits == ref_hits;
    printf("  %s, %d device(s), step %d: loss %.9g (reference %.9g, rel %.3g), top-1 %d (%d), "
           "momenta %.3g, weights %.3g: %s\n",
           g->name, devices, k, loss, ref_loss, el, hits, ref_hits, ev, ew, ok ? "OK" : "FAIL");
    weights_free(gw);
    weights_free(rw);
    weights_free(rv);
  }
  // A bad label: a message and NaN, nothing run.
  int32_t bad[3] = {0, classes, 0};
  bool refused = isnan(cuda_trainer_step(c, 0.001, 5, 2, x, bad, batch, NULL));
  printf("  a label out of range: %s\n", refused ? "refused" : "NOT refused (FAIL)");
  ok = ok && refused;
  free(x);
  trainer_free(ref);
  cuda_trainer_free(c);
  weights_free(w);
  weights_free(v);
  graph_free(g);
  return ok ? 0 : 1;
}
