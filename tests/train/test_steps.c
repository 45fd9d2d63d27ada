// Steps of SGD through the trainer against PyTorch (tests/train/golden/CASE, written by
// tests/train/make_train_golden.py in float64): 20 for mini-AlexNet, 5 for AlexNet.
//
//   test_steps ref|cpu GOLDEN_DIR [DEVICES]
//
// The manifest's paths are relative to GOLDEN_DIR (the spec's may be absolute).
// Regenerates what the golden started from (weights_init with the manifest's seed and
// scheme, the inputs of `alexc input --batch steps*batch`, labels (7*i + 3) % classes),
// runs trainer_step `steps` times with the chosen kernel table (TrainState: momenta zero,
// step 0, the manifest's train_seed), then compares each step's loss and every final
// tensor (or, for AlexNet, the golden's samples of it: flat indices k * stride, stride =
// ceil(elems / sample_max)) within 1e-4: max|got - want| / max|want| per tensor, as
// compare() in compiler/tools/cli.c, and |got - want| / |want| per loss.
//
// With DEVICES > 1 the trainer runs the model-parallel plan (train/parallel.c), and a
// one-device trainer takes the same steps beside it: the two must end with the same
// weights within DEVICE_TOLERANCE. They are not bit-identical by design: a layer split
// over devices sums its partial input gradients across them, a float addition the single
// device does in another order (its kernels accumulate the whole sum at once).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

#define TOLERANCE 1e-4
#define DEVICE_TOLERANCE 1e-5

typedef struct {
  char spec[512], init[32], weights[256];
  uint64_t seed, input_seed, train_seed;
  int batch, steps;
  double lr;
  int64_t sample_max;  // 0: the whole tensors
} Manifest;

static bool read_manifest(const char *dir, Manifest *m) {
  char *path = format("%s/manifest", dir);
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "%s: cannot open\n", path);
    free(path);
    return false;
  }
  *m = (Manifest){0};
  char line[1024];
  int have = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    char *colon = strchr(line, ':');
    if (line[0] == '#' || !colon)
      continue;
    *colon = 0;
    const char *key = line, *val = colon + 1;
    while (*val == ' ')
      val++;
    if (!strcmp(key, "spec"))
      snprintf(m->spec, sizeof m->spec, "%s%s%s", val[0] == '/' ? "" : dir,
               val[0] == '/' ? "" : "/", val), have |= 1;
    else if (!strcmp(key, "init"))
      snprintf(m->init, sizeof m->init, "%s", val), have |= 2;
    else if (!strcmp(key, "weights"))
      snprintf(m->weights, sizeof m->weights, "%s/%s", dir, val), have |= 4;
    else if (!strcmp(key, "seed"))
      m->seed = strtoull(val, NULL, 10), have |= 8;
    else if (!strcmp(key, "input_seed"))
      m->input_seed = strtoull(val, NULL, 10), have |= 16;
    else if (!strcmp(key, "train_seed"))
      m->train_seed = strtoull(val, NULL, 10), have |= 32;
    else if (!strcmp(key, "batch"))
      m->batch = atoi(val), have |= 64;
    else if (!strcmp(key, "steps"))
      m->steps = atoi(val), have |= 128;
    else if (!strcmp(key, "lr"))
      m->lr = strtod(val, NULL), have |= 256;
    else if (!strcmp(key, "sample_max"))
      m->sample_max = strtoll(val, NULL, 10);
  }
  fclose(f);
  if (have != 511 || m->batch < 1 || m->steps < 1) {
    fprintf(stderr, "%s: a key is missing or bad (have mask %d of 511)\n", path, have);
    free(path);
    return false;
  }
  free(path);
  return true;
}

// Compares one tensor (or its samples); prints a line; returns whether it passes.
static bool check_tensor(const char *name, const float *got, const float *want, int64_t n,
                         double *worst) {
  Compare c = compare(got, want, n);
  bool ok = c.finite && c.rel <= TOLERANCE;
  printf("  %-16s %8lld values: rel err %.3g (at %lld: got %.9g, want %.9g)%s\n", name,
         (long long)n, c.rel, (long long)c.at, got[c.at], want[c.at], ok ? "" : "  FAIL");
  if (!(c.rel <= *worst))
    *worst = c.rel;
  return ok;
}

// The N-device run against the one-device run that took the same steps.
static bool check_devices(const TrainState *many, const TrainState *one, int devices) {
  double worst = 0;
  int64_t at = 0;
  const char *where = "";
  for (int i = 0; i < many->w->n; i++) {
    Compare c = compare(many->w->data[i], one->w->data[i], many->w->info[i].elems);
    if (!c.finite || !(c.rel <= worst))
      worst = c.finite ? c.rel : INFINITY, at = c.at, where = many->w->info[i].name;
  }
  bool ok = worst <= DEVICE_TOLERANCE;
  printf("%s: %d devices against 1: worst weight rel err %.3g (%s at %lld; tolerance %g)\n",
         ok ? "PASS" : "FAIL", devices, worst, where, (long long)at, DEVICE_TOLERANCE);
  return ok;
}

int main(int argc, char **argv) {
  int devices = 1;
  if (argc < 3 || argc > 4 || (strcmp(argv[1], "ref") && strcmp(argv[1], "cpu")) ||
      (argc == 4 && !parse_int_in(argv[3], 1, MAX_DEVICES, &devices))) {
    fprintf(stderr, "usage: test_steps ref|cpu GOLDEN_DIR [DEVICES]\n");
    return 2;
  }
  const TrainKernels *k = !strcmp(argv[1], "ref") ? &ref_train_kernels : &cpu_train_kernels;
  const char *dir = argv[2];
  Manifest m;
  if (!read_manifest(dir, &m))
    return 1;
  InitScheme scheme;
  if (!parse_init_scheme(m.init, &scheme)) {
    fprintf(stderr, "%s: init '%s'\n", dir, m.init);
    return 1;
  }
  Graph *g = load_spec(m.spec);
  if (!g)
    return 1;
  Trainer *t = trainer_new(g, k, m.batch, devices);
  Trainer *single = devices > 1 ? trainer_new(g, k, m.batch, 1) : NULL;
  if (!t || (devices > 1 && !single))
    return 1;
  int classes = trainer_classes(t);
  int64_t n_total = (int64_t)m.batch * m.steps, image = shape_elems(g->nodes[0].out);
  float *x = random_input(g, (int)n_total, m.input_seed);
  int32_t *labels = xcalloc(n_total, sizeof *labels);
  for (int64_t i = 0; i < n_total; i++)
    labels[i] = (int32_t)((7 * i + 3) % classes);

  TrainState s = {.w = weights_init(g, m.seed, scheme), .v = weights_zeros(g), .step = 0,
                  .seed = m.train_seed, .lr = m.lr};
  TrainState s1 = s;  // the one-device twin
  if (single)
    s1.w = weights_init(g, m.seed, scheme), s1.v = weights_zeros(g);
  char *loss_path = format("%s/losses.npy", dir);
  RtTensor want_loss;
  if (!rt_npy_load(loss_path, &want_loss) || want_loss.elems != m.steps) {
    fprintf(stderr, "%s: cannot load, or not %d losses\n", loss_path, m.steps);
    return 1;
  }
  printf("%s, %s kernels: %d steps of batch %d on %d device(s)\n", dir, k->name, m.steps,
         m.batch, devices);
  bool ok = true;
  double worst_loss = 0, t0 = now_seconds();
  for (int step = 0; step < m.steps; step++) {
    double loss = trainer_step(t, &s, m.lr, x + (int64_t)step * m.batch * image,
                               labels + (int64_t)step * m.batch, m.batch, NULL);
    if (single)
      trainer_step(single, &s1, m.lr, x + (int64_t)step * m.batch * image,
                   labels + (int64_t)step * m.batch, m.batch, NULL);
    double want = want_loss.data[step];
    double rel = fabs(loss - want) / fabs(want);
    bool pass = rel <= TOLERANCE;  // false for NaN
    ok &= pass;
    if (!(rel <= worst_loss))
      worst_loss = rel;
    printf("  step %2d loss %.9f want %.9f rel err %.3g%s\n", step, loss, want, rel,
           pass ? "" : "  FAIL");
    fflush(stdout);
  }
  printf("  %d steps in %.1f s; trainer step count %lld\n", m.steps, now_seconds() - t0,
         (long long)s.step);
  if (s.step != m.steps) {
    printf("  FAIL: TrainState.step is %lld after %d steps\n", (long long)s.step, m.steps);
    ok = false;
  }

  double worst_w = 0;
  if (m.sample_max == 0) {
    Weights *want = weights_load(g, m.weights);
    if (!want)
      return 1;
    for (int i = 0; i < s.w->n; i++) {
      const float *wi = weights_get(want, g->nodes[s.w->info[i].node].name, s.w->info[i].is_bias);
      ok &= check_tensor(s.w->info[i].name, s.w->data[i], wi, s.w->info[i].elems, &worst_w);
    }
    weights_free(want);
  } else {
    RtSafetensors st;
    if (!rt_st_open(m.weights, &st)) {
      fprintf(stderr, "%s\n", rt_error());
      return 1;
    }
    for (int i = 0; i < s.w->n; i++) {
      const ParamInfo *p = &s.w->info[i];
      int64_t stride = (p->elems + m.sample_max - 1) / m.sample_max;
      int64_t n = (p->elems + stride - 1) / stride;
      float *want = xcalloc(n, sizeof *want), *got = xcalloc(n, sizeof *got);
      if (!rt_st_read_f32(&st, p->name, 1, &n, want)) {
        fprintf(stderr, "%s\n", rt_error());
        return 1;
      }
      for (int64_t j = 0; j < n; j++)
        got[j] = s.w->data[i][j * stride];
      ok &= check_tensor(p->name, got, want, n, &worst_w);
      free(want);
      free(got);
    }
    rt_st_close(&st);
  }
  printf("%s: %s kernels: worst loss rel err %.3g, worst weight rel err %.3g (tolerance %g)\n",
         ok ? "PASS" : "FAIL", k->name, worst_loss, worst_w, TOLERANCE);
  if (single) {
    ok &= check_devices(&s, &s1, devices);
    weights_free(s1.w);
    weights_free(s1.v);
    trainer_free(single);
  }

  rt_tensor_free(&want_loss);
  free(loss_path);
  weights_free(s.w);
  weights_free(s.v);
  free(labels);
  free(x);
  trainer_free(t);
  graph_free(g);
  return ok ? 0 : 1;
}
