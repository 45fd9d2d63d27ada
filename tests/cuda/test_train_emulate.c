// CUDA training checked without a GPU: the training step compiler/backends/cuda/train.c
// generates for a spec (one CUDA translation unit and a plan) is compiled by g++ for the
// CPU (cuda_emu.h), and its plan run through the runtime's interpreter (rt_plan_steps)
// with emu_gemm.h standing in for cuBLAS; arena, scratch and every gradient start as NaN,
// and every kernel argument, copy and GEMM operand is bounds-checked. Each SGD step is
// compared with the reference table's (ref_train_kernels: double sums) on the same
// weights, momenta, data and step: the dropout masks bit for bit, the loss, the top-1
// hits, every parameter gradient, and the updated momenta and weights.
//
// Two steps with different learning rates and nonzero starting momenta (so the 0.9 and
// the weight decay both show); the second starts from the first's CUDA result, given to
// the reference as well, so each step is compared on identical inputs.
//
// With --mutants, known breakages of the generated source (the ReLU mask dropped,
// col2im off by one, the momentum constant wrong, ...) are applied one at a time and
// each must make the comparison fail: the check is shown to be able to fail.
//
// usage: test_train_emulate CXX EMU_HEADER WORKDIR SPEC [--batch N] [--mutants]
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alexc.h"
#include "backends/cuda/train.h"
#include "tools/cli.h"
#include "emu_gemm.h"
#include "emu_module.h"

static const char *cxx, *emu_header, *workdir;

// Tolerances, max|got - want| / max|want| per tensor (see compiler/backends/cuda/README.md
// for what was measured). The gradients come from float GEMMs of up to batch * pixels
// terms against the reference's double sums.
#define TOL_LOSS 1e-5
#define TOL_GRAD 1e-4
#define TOL_STATE 1e-4  // momenta and weights after the update

// ---------------------------------------------------------------- the emulated device

typedef struct {
  void *so;
  float *arena, *weights, *scratch;
  int64_t arena_elems, weight_elems, scratch_elems;
  bool failed;
} Emu;

static bool inside(const Emu *e, uint64_t p, int64_t bytes) {
  const float *bufs[3] = {e->arena, e->weights, e->scratch};
  int64_t sizes[3] = {e->arena_elems, e->weight_elems, e->scratch_elems};
  for (int k = 0; k < 3; k++) {
    uint64_t lo = (uint64_t)(uintptr_t)bufs[k], hi = lo + sizes[k] * sizeof(float);
    if (bufs[k] && p >= lo && p + bytes <= hi)
      return true;
  }
  return false;
}

static bool check(Emu *e, uint64_t p, int64_t bytes, const char *what) {
  if (inside(e, p, bytes))
    return true;
  fprintf(stderr, "  %s: %lld bytes at %#llx are outside the device's buffers\n", what,
          (long long)bytes, (unsigned long long)p);
  e->failed = true;
  return false;
}

#define MAX_ARGS 8
typedef struct {
  void *f;
  int n_args;
  void *a[MAX_ARGS];
  int batch;
} KernelCall;

typedef void *P;
static void call_kernel(void *arg) {
  const KernelCall *c = arg;
  P const *a = c->a;
  int b = c->batch;
  switch (c->n_args) {
  case 1: ((void (*)(P, int))c->f)(a[0], b); break;
  case 2: ((void (*)(P, P, int))c->f)(a[0], a[1], b); break;
  case 3: ((void (*)(P, P, P, int))c->f)(a[0], a[1], a[2], b); break;
  case 4: ((void (*)(P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], b); break;
  case 5: ((void (*)(P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], b); break;
  case 6: ((void (*)(P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], b); break;
  case 7:
    ((void (*)(P, P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], b);
    break;
  case 8:
    ((void (*)(P, P, P, P, P, P, P, P, int))c->f)(a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                                  a[7], b);
    break;
  }
}

static bool launch(void *ctx, int d, const char *kernel, int64_t grid, int block,
                   const uint64_t *args, int n_args, int batch) {
  Emu *e = ctx;
  KernelCall call = {.f = dlsym(e->so, kernel), .n_args = n_args, .batch = batch};
  int (*run_block)(unsigned, unsigned, unsigned, void (*)(void *), void *);
  *(void **)&run_block = dlsym(e->so, "alexc_emu_run_block");
  if (d != 0 || !call.f || !run_block || n_args < 1 || n_args > MAX_ARGS) {
    fprintf(stderr, "  launch %s on device %d: %s\n", kernel, d,
            !call.f ? "no such kernel" : !run_block ? "no alexc_emu_run_block" : "bad arguments");
    e->failed = true;
    return false;
  }
  for (int i = 0; i < n_args; i++) {
    call.a[i] = (void *)(uintptr_t)args[i];
    if (!check(e, args[i], 1, kernel))
      return false;
  }
  // A few blocks at most: the grid-stride loops must cover the rest.
  if (grid > 5)
    grid = 5;
  for (int64_t bx = 0; bx < grid; bx++)
    if (run_block((unsigned)bx, (unsigned)block, (unsigned)grid, call_kernel, &call) != 0) {
      fprintf(stderr, "  launch %s: block %lld failed\n", kernel, (long long)bx);
      e->failed = true;
      return false;
    }
  return true;
}

static bool gemm(void *ctx, int d, RtPrecision prec, char ta, char tb, int64_t m, int64_t n,
                 int64_t k, float alpha, uint64_t a, int64_t lda, uint64_t b, int64_t ldb,
                 float beta, uint64_t c, int64_t ldc) {
  Emu *e = ctx;
  const char *bad = d != 0 || prec != RT_FP32 ? "not fp32 on device 0"
                                              : emu_gemm_check(ta, tb, m, n, k, lda, ldb, ldc);
  if (!bad && m && n) {
    bool tra = ta == 'T', trb = tb == 'T';
    if ((k && !check(e, a, emu_operand_bytes(tra ? k : m, tra ? m : k, lda, EMU_F32), "gemm A")) ||
        (k && !check(e, b, emu_operand_bytes(trb ? n : k, trb ? k : n, ldb, EMU_F32), "gemm B")) ||
        !check(e, c, emu_operand_bytes(m, n, ldc, EMU_F32), "gemm C"))
      return false;
    bad = emu_gemm(ta, tb, m, n, k, alpha, (const void *)(uintptr_t)a, EMU_F32, lda,
                   (const void *)(uintptr_t)b, EMU_F32, ldb, beta, (float *)(uintptr_t)c, ldc,
                   EMU_MATH_FP32);
  }
  if (bad) {
    fprintf(stderr, "  gemm %c %c m %lld n %lld k %lld: %s\n", ta, tb, (long long)m,
            (long long)n, (long long)k, bad);
    e->failed = true;
    return false;
  }
  return true;
}

static bool copy(void *ctx, int dst_dev, uint64_t dst, int64_t dst_pitch, int src_dev,
                 uint64_t src, int64_t src_pitch, int64_t width, int64_t height) {
  (void)ctx, (void)dst_dev, (void)src_dev;
  for (int64_t r = 0; r < height; r++)
    memcpy((float *)(uintptr_t)dst + r * dst_pitch, (const float *)(uintptr_t)src + r * src_pitch,
           width * sizeof(float));
  return true;
}

static bool build_so(const char *source, const char *path_cu, const char *path_so) {
  if (!rt_write_file_atomic(path_cu, source, strlen(source))) {
    fprintf(stderr, "  %s\n", rt_error());
    return false;
  }
#ifdef ALEXC_SANITIZE_KERNELS
  const char *flags = "-O2 -Wall -Wno-unknown-pragmas -Werror "
                      "-fsanitize=address,undefined -fno-sanitize-recover=all";
#else
  const char *flags = "-O2 -Wall -Wno-unknown-pragmas -Werror";
#endif
  char *cmd = emu_build_command(cxx, flags, emu_header, path_cu, path_so);
  if (!cmd)
    abort();
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr, "  failed (%d): %s\n", rc, cmd);
  free(cmd);
  return rc == 0;
}

// ---------------------------------------------------------------- comparing

static Weights *weights_dup(const Graph *g, const Weights *w) {
  Weights *c = weights_zeros(g);
  for (int i = 0; i < w->n; i++)
    memcpy(c->data[i], w->data[i], w->info[i].elems * sizeof(float));
  return c;
}

// The worst max|got - want| / max|want| over the tensors of a set; its tensor's name.
static double worst(const Weights *got, const Weights *want, const char **which) {
  double rel = 0;
  for (int i = 0; i < want->n; i++) {
    Compare c = compare(got->data[i], want->data[i], want->info[i].elems);
    double r = c.finite ? c.rel : INFINITY;
    if (!(r <= rel)) {
      rel = r;
      *which = want->info[i].name;
    }
  }
  return rel;
}

typedef struct {
  double loss, grad, momentum, weight;
  bool masks_ok, hits_ok, ran;
} Result;

// One step on the emulated device, from (w, v); compared with the reference's. On
// return w and v hold the CUDA step's result.
static Result step(const Graph *g, const CudaTrainPlan *t, Emu *e, Weights *w, Weights *v,
                   const float *x, const int32_t *labels, int batch, int64_t stepno, double lr,
                   bool verbose) {
  Result res = {0};
  const TrainProgram *p = t->prog;
  const uint64_t seed = 5;
  // The device's state: NaN wherever nothing is written on purpose.
  for (int64_t i = 0; i < e->arena_elems; i++)
    e->arena[i] = NAN;
  for (int64_t i = 0; i < e->scratch_elems; i++)
    e->scratch[i] = NAN;
  for (int64_t i = 0; i < e->weight_elems; i++)
    e->weights[i] = NAN;
  for (int i = 0; i < w->n; i++) {
    memcpy(e->weights + t->param_offset[i], w->data[i], w->info[i].elems * sizeof(float));
    memcpy(e->weights + t->momentum_base + t->param_offset[i], v->data[i],
           v->info[i].elems * sizeof(float));
  }
  CudaTrainControl ctl = {lr, seed, (uint64_t)stepno};
  memcpy(e->weights + t->control, &ctl, sizeof ctl);
  memcpy(e->arena + p->offset[p->input] * batch, x,
         p->values[p->input].elems * batch * sizeof(float));
  memcpy(e->arena + t->labels.per_image * batch, labels, batch * sizeof(int32_t));

  RtPlanOps ops = {.ctx = e, .launch = launch, .gemm = gemm, .copy = copy};
  ops.arena[0] = (uint64_t)(uintptr_t)e->arena;
  ops.weights[0] = (uint64_t)(uintptr_t)e->weights;
  ops.scratch[0] = (uint64_t)(uintptr_t)e->scratch;
  // The masks and the forward first, to read the masks before the backward may reuse
  // their memory; then the rest.
  RtPlan head = t->plan, tail = t->plan;
  head.n_steps = t->forward_end;
  tail.steps += t->forward_end;
  tail.n_steps -= t->forward_end;
  if (!rt_plan_steps(&head, &ops, batch) || e->failed) {
    fprintf(stderr, "  the forward failed: %s\n", rt_error());
    return res;
  }
  res.masks_ok = true;
  for (int n = 0; n < g->n_nodes; n++) {
    if (p->mask[n] < 0)
      continue;
    int64_t elems = shape_elems(g->nodes[n].out) * batch;
    uint8_t *want = xcalloc(elems, 1);
    dropout_mask(seed, (uint64_t)stepno, g->nodes[n].name, 0, elems, g->nodes[n].dropout.p, want);
    const uint8_t *got = (const uint8_t *)(e->arena + p->offset[p->mask[n]] * batch);
    int64_t bad = 0;
    for (int64_t i = 0; i < elems; i++)
      bad += got[i] != want[i];
    if (bad)
      printf("    mask of %s: %lld of %lld bytes differ\n", g->nodes[n].name, (long long)bad,
             (long long)elems);
    res.masks_ok &= bad == 0;
    free(want);
  }
  if (!rt_plan_steps(&tail, &ops, batch) || e->failed) {
    fprintf(stderr, "  the backward or update failed: %s\n", rt_error());
    return res;
  }
  res.ran = true;
  double loss = 0;
  int hits = 0;
  const double *losses = (const double *)(e->arena + t->loss.per_image * batch);
  const int32_t *hit = (const int32_t *)(e->arena + t->hits.per_image * batch);
  for (int i = 0; i < batch; i++) {
    loss += losses[i];
    hits += hit[i];
  }
  loss /= batch;

  // The reference: its gradients on the same inputs, then sgd_update_span (its table's
  // update) on copies of the same weights and momenta.
  Trainer *r = trainer_new(g, &ref_train_kernels, batch, 1);
  Weights *gw = weights_zeros(g), *rw = weights_dup(g, w), *rv = weights_dup(g, v);
  int ref_hits = 0;
  double ref_loss = trainer_grad(r, w, seed, stepno, x, labels, batch, gw, &ref_hits);
  for (int i = 0; i < rw->n; i++)
    ref_train_kernels.update(rw->data[i], rv->data[i], gw->data[i], rw->info[i].elems, lr);
  // The device's results, into w, v and a gradient set.
  Weights *cg = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {
    memcpy(cg->data[i], e->weights + t->grad_base + t->param_offset[i],
           w->info[i].elems * sizeof(float));
    memcpy(w->data[i], e->weights + t->param_offset[i], w->info[i].elems * sizeof(float));
    memcpy(v->data[i], e->weights + t->momentum_base + t->param_offset[i],
           v->info[i].elems * sizeof(float));
  }
  const char *wg = "", *wv = "", *ww = "";
  res.loss = fabs(loss - ref_loss) / fabs(ref_loss);
  if (!(res.loss >= 0))
    res.loss = INFINITY;
  res.grad = worst(cg, gw, &wg);
  res.momentum = worst(v, rv, &wv);
  res.weight = worst(w, rw, &ww);
  res.hits_ok = hits == ref_hits;
  if (verbose)
    printf("    step %lld lr %g: loss %.9g (reference %.9g, rel %.3g), top-1 %d/%d (%d), "
           "masks %s\n      max rel err: gradients %.3g (%s), momenta %.3g (%s), weights %.3g "
           "(%s)\n",
           (long long)stepno, lr, loss, ref_loss, res.loss, hits, batch, ref_hits,
           res.masks_ok ? "equal" : "DIFFER", res.grad, wg, res.momentum, wv, res.weight, ww);
  trainer_free(r);
  weights_free(gw);
  weights_free(rw);
  weights_free(rv);
  weights_free(cg);
  return res;
}

static bool passed(const Result *r) {
  return r->ran && r->masks_ok && r->hits_ok && r->loss <= TOL_LOSS && r->grad <= TOL_GRAD &&
         r->momentum <= TOL_STATE && r->weight <= TOL_STATE;
}

// Builds the source (as given) and runs two steps; true when both match the reference.
static bool run(const Graph *g, const CudaTrainPlan *t, const char *source, const char *tag,
                int batch, bool verbose) {
  char *cu = format("%s/%s-train%s.cu", workdir, g->name, tag);
  char *so = format("%s/%s-train%s.so", workdir, g->name, tag);
  Emu e = {0};
  bool ok = build_so(source, cu, so);
  e.so = ok ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
  if (ok && !e.so)
    fprintf(stderr, "  dlopen %s: %s\n", so, dlerror());
  free(cu);
  free(so);
  if (!e.so)
    return false;
  const RtPlanDevice *dev = &t->plan.dev[0];
  e.arena_elems = dev->arena * batch;
  e.weight_elems = dev->weights;
  e.scratch_elems = rt_plan_scratch_elems(&t->plan, 0, batch);
  e.arena = xcalloc(e.arena_elems, sizeof(float));
  e.weights = xcalloc(e.weight_elems, sizeof(float));
  e.scratch = xcalloc(e.scratch_elems ? e.scratch_elems : 1, sizeof(float));

  Weights *w = weights_init(g, 7, INIT_FAN_IN), *v = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {  // nonzero biases and momenta: a wrong offset shows
    if (w->info[i].is_bias)
      fill_normal(w->data[i], w->info[i].elems, 7, w->info[i].name, 0.1);
    fill_normal(v->data[i], v->info[i].elems, 9, v->info[i].name, 1e-3);
  }
  int classes = (int)g->nodes[t->prog->logits].out.c;
  int32_t *labels = xcalloc(batch, sizeof *labels);
  for (int i = 0; i < batch; i++)
    labels[i] = (int32_t)((i * 7 + 3) % classes);
  float *x = random_input(g, batch, 3);
  Result r1 = step(g, t, &e, w, v, x, labels, batch, 0, 0.01, verbose);
  Result r2 = passed(&r1) ? step(g, t, &e, w, v, x, labels, batch, 1, 0.05, verbose) : r1;
  bool ok2 = passed(&r1) && passed(&r2);
  free(x);
  free(labels);
  weights_free(w);
  weights_free(v);
  dlclose(e.so);
  free(e.arena);
  free(e.weights);
  free(e.scratch);
  return ok2;
}

// ---------------------------------------------------------------- broken variants

typedef struct {
  const char *what, *from, *to;
} Mutant;

static const Mutant MUTANTS[] = {
    {"the fused ReLU's mask dropped (conv)", "relu_y[i] > 0.0f ? 0.0f + dy[i] : 0.0f;\n  }",
     "0.0f + dy[i];\n  }"},
    {"col2im one column off", "int tx = ix + LEFT - kx;", "int tx = ix + LEFT - kx + 1;"},
    {"the momentum constant 0.9 -> 0.91", "__dmul_rn(0.9,", "__dmul_rn(0.91,"},
    {"no weight decay", "__dmul_rn(0.0005, lr)", "__dmul_rn(0.0, lr)"},
    {"dropout's backward unscaled", "dx[i] += (float)(dy[i] * SCALE);", "dx[i] += dy[i];"},
    {"a dropout mask bit moved", "(word >> 8) >= THRESHOLD", "(word >> 9) >= THRESHOLD"},
    {"max-pool's backward misses the windows starting at the element",
     "oy * STRIDE - TOP <= iy; oy++)", "oy * STRIDE - TOP < iy; oy++)"},
    {"LRN's backward without the cross term", "- 2 * ALPHA * BETA * x[i] * cross", "- 0 * cross"},
    {"dlogits not divided by the batch", "- (k == label)) / batch)", "- (k == label)))"},
    {"the bias gradient summed over one image", "r < (long long)batch * P;", "r < (long long)P;"},
};

// Replaces the first occurrence of from (which must occur) by to; NULL if absent.
static char *mutate(const char *source, const char *from, const char *to) {
  const char *at = strstr(source, from);
  if (!at)
    return NULL;
  return format("%.*s%s%s", (int)(at - source), source, to, at + strlen(from));
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: test_train_emulate CXX EMU_HEADER WORKDIR SPEC [--batch N] "
                    "[--mutants]\n");
    return 2;
  }
  cxx = argv[1];
  emu_header = argv[2];
  workdir = argv[3];
  const char *spec = argv[4];
  int batch = 0;
  bool mutants = false;
  for (int i = 5; i < argc; i++) {
    if (!strcmp(argv[i], "--batch") && i + 1 < argc)
      batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mutants"))
      mutants = true;
    else {
      fprintf(stderr, "test_train_emulate: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (mkdir(workdir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: %s\n", workdir, strerror(errno));
    return 1;
  }
  Graph *g = load_spec(spec);
  if (!g)
    return 1;
  if (batch <= 0)
    batch = graph_macs(g) > 100000000 ? 1 : 3;
  CudaTrainPlan t;
  if (!cuda_train_generate(g, NULL, &t)) {
    graph_free(g);
    return 1;
  }
  int kernels = 0, gemms = 0;
  for (int i = 0; i < t.plan.n_steps; i++) {
    kernels += t.plan.steps[i].kind == RT_STEP_KERNEL;
    gemms += t.plan.steps[i].kind == RT_STEP_GEMM;
  }
  printf("  %s: batch %d, %d steps (%d kernels, %d gemms), arena %lld floats/image, scratch "
         "%lld floats/image\n",
         g->name, batch, t.plan.n_steps, kernels, gemms, (long long)t.plan.dev[0].arena,
         (long long)t.plan.dev[0].scratch);
  bool ok = run(g, &t, t.source, "", batch, true);
  printf("  %s: %s\n", g->name, ok ? "OK" : "FAIL");
  int caught = 0, tried = 0;
  for (size_t m = 0; ok && mutants && m < sizeof MUTANTS / sizeof *MUTANTS; m++) {
    char *src = mutate(t.source, MUTANTS[m].from, MUTANTS[m].to);
    tried++;
    if (!src) {
      printf("  mutant '%s': not applicable to this source (FAIL)\n", MUTANTS[m].what);
      continue;
    }
    char tag[32];
    snprintf(tag, sizeof tag, "-mutant%zu", m);
    bool survived = run(g, &t, src, tag, batch, false);
    printf("  mutant '%s': %s\n", MUTANTS[m].what, survived ? "NOT caught (FAIL)" : "caught");
    caught += !survived;
    free(src);
  }
  if (mutants && ok)
    printf("  %d of %d broken variants caught\n", caught, tried);
  cuda_train_free(&t);
  graph_free(g);
  return ok && caught == tried ? 0 : 1;
}
