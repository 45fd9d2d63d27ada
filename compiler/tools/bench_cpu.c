// `alexc bench --target cpu`: times the network on this machine's CPU, fused against
// unfused, layer by layer, beside the FMA peak the machine reaches with the same code
// generator (a probe compiled with the kernels).
//
// Each configuration is compiled and its weights packed once; after warm-up runs, `runs`
// runs are timed end to end, and the executor's per-step clock gives the layer table
// (medians). A node's steps on several logical devices run at once as thread groups; the
// executor books their time on the first, so a layer's time is its wall time. Rows are the fused graph's nodes; an unfused run's layers are
// added into the fused row that holds them, so both columns time the same work.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dlfcn.h>

#include "../backends/cpu/cpu.h"
#include "cli.h"

static const char HELP[] =
    "usage: alexc bench SPEC --target cpu [--batch N] [--runs R] [--warmup W]\n"
    "                   [--compare-unfused] [--threads N] [--cpu NAME] [--devices N] ...\n"
    "\n"
    "Times the network on the CPU: total and per-layer times (median of R runs after W\n"
    "warm-up runs), each convolution's GFLOP/s beside the FMA peak measured here, and\n"
    "with --compare-unfused the same without fusion. Prints Markdown tables\n"
    "(docs/benchmarks.md keeps them).\n"
    "\n"
    "  --batch N         images per batch (default 16)\n"
    "  --runs R          timed runs (default 10)\n"
    "  --warmup W        untimed runs first (default 2)\n"
    "  --compare-unfused also compile without fusion; checks that the outputs agree\n"
    "  --gemm            also time OpenBLAS's sgemm (libopenblas.so.0, loaded at run time)\n"
    "                    on each conv and fc layer's GEMM shapes, beside the layer\n"
    "  --threads N       threads (default: one per core)\n"
    "  --cpu NAME        native (default), x86-64, x86-64-v2, x86-64-v3 (AVX2), x86-64-v4\n"
    "  --precision P     fp32 (default) or bf16: fc layers with bfloat16 weights and inputs,\n"
    "                    float sums (needs AVX512_BF16)\n"
    "  --seed S          weights from seed S (default 1; times do not depend on values)\n"
    "  --train           time the training step instead (forward, backward, SGD update)\n"
    "                    per layer, with the CPU target's training kernels; --no-fuse\n"
    "                    times the plain training program, --compare-unfused both, a\n"
    "                    step of each in turn (wall and CPU time, memory per image)\n"
    PASS_OPTIONS_HELP;

typedef struct {
  int batch, runs, warmup;
  bool compare_unfused, gemm, train;
  uint64_t seed;
  PassOptions passes;
  CpuOptions cpu;
} Args;

static int parse_args(int argc, char **argv, Args *a) {
  static const struct option opts[] = {
      {"target", required_argument, 0, 'T'}, BENCH_LONG_OPTIONS,
      {"compare-unfused", no_argument, 0, 'u'},
      {"threads", required_argument, 0, 'N'}, {"cpu", required_argument, 0, 'C'},
      {"gemm", no_argument, 0, 'g'},         {"precision", required_argument, 0, 'p'},
      {"train", no_argument, 0, 't'},
      {"help", no_argument, 0, 'h'},         PASS_LONG_OPTIONS,
      {0, 0, 0, 0}};
  *a = (Args){.batch = 16, .runs = 10, .warmup = 2, .seed = 1, .passes = pass_defaults()};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int rc = pass_option("bench", c, optarg, &a->passes);
    if (rc < 0)
      rc = bench_option(c, optarg, &a->batch, &a->runs, &a->warmup, &a->seed);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'T': break;  // cmd_bench chose this target
    case 'u': a->compare_unfused = true; break;
    case 'g': a->gemm = true; break;
    case 't': a->train = true; break;
    case 'p':
      if (strcmp(optarg, "fp32") && strcmp(optarg, "bf16"))
        return usage_error("bench", "--precision on the cpu target is fp32 or bf16, not '%s'",
                           optarg);
      a->cpu.bf16 = !strcmp(optarg, "bf16");
      break;
    case 'C': a->cpu.cpu = optarg; break;
    case 'N':
      if (!parse_int_in(optarg, 1, 256, &a->cpu.threads))
        return usage_error("bench", "--threads wants 1 to 256, not '%s'", optarg);
      break;
    case 'h':
      fputs(HELP, stdout);
      return -1;
    default:
      return usage_error("bench", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("bench", "expected one SPEC file");
  return EXIT_OK;
}

// The fused graph's node holding layer `name` (itself or in its epilogue); 0 if none.
static int row_of(const Graph *fused, const char *name) {
  for (int i = 1; i < fused->n_nodes; i++) {
    const Node *n = &fused->nodes[i];
    if (!strcmp(n->name, name))
      return i;
    for (int k = 0; k < n->n_epilogue; k++)
      if (!strcmp(n->epilogue[k].name, name))
        return i;
  }
  return 0;
}

typedef struct {
  double total;    // median ms
  double *row_ms;  // per fused node: median ms (index 0: the input copies and gathers)
  float *y;
} Result;

// Compiles, loads and times one configuration; rows are the fused graph's nodes.
static bool bench_config(const Args *a, const char *spec, bool fuse, const Graph *fused,
                         const Weights *w, const float *x, Result *res, double *peak,
                         CpuTarget *target) {
  Graph *g = load_spec(spec);
  PassOptions o = a->passes;
  if (!fuse)
    for (int i = 0; i < FUSE_COUNT; i++)
      o.fuse[i] = false;
  CpuJit *j = g && run_passes(g, &o) ? cpu_jit(g, &g->output, 1, &a->cpu) : NULL;
  const RtCpuProgram *p = j ? cpu_jit_program(j) : NULL;
  RtCpuModel *m = p ? rt_cpu_load(p, cpu_weight_by_name, (void *)w, a->cpu.threads) : NULL;
  if (j && !m)
    error("cpu: %s", rt_error());
  bool ok = m != NULL;
  int64_t out = ok ? shape_elems(g->nodes[g->output].out) * a->batch : 0;
  res->y = ok ? xcalloc(out, sizeof(float)) : NULL;
  res->row_ms = xcalloc(fused->n_nodes, sizeof(double));
  double *totals = xcalloc(a->runs, sizeof(double));
  double *steps = ok ? xcalloc((size_t)a->runs * fused->n_nodes, sizeof(double)) : NULL;
  for (int r = 0; ok && r < a->warmup + a->runs; r++) {
    double t0 = now_seconds() * 1e3;
    ok = rt_cpu_run(m, x, a->batch, &res->y);
    if (r < a->warmup)
      continue;
    totals[r - a->warmup] = now_seconds() * 1e3 - t0;
    const double *us = rt_cpu_step_times(m);
    for (int s = 0; s < p->n_steps; s++) {
      int row = row_of(fused, g->nodes[p->steps[s].node].name);
      steps[(size_t)row * a->runs + (r - a->warmup)] += us[s] / 1e3;
    }
  }
  if (ok) {
    res->total = median(totals, a->runs);
    for (int i = 0; i < fused->n_nodes; i++)
      res->row_ms[i] = median(steps + (size_t)i * a->runs, a->runs);
  }
  if (ok && peak) {
    // One probe item per thread, long enough (~0.1 s) to hide the start.
    int threads = rt_cpu_threads(m);
    int64_t iters = 2000000;
    double t0 = now_seconds() * 1e3;
    rt_cpu_parallel(m, cpu_jit_probe(j), threads, iters);
    double ms = now_seconds() * 1e3 - t0;
    const CpuTarget *t = cpu_jit_target(j);
    *peak = (double)threads * iters * cpu_probe_chains(t) * 2 * t->vector / (ms * 1e6);
    *target = *cpu_jit_target(j);
    target->features = NULL;  // owned by the JIT
  }
  if (!ok && m)
    error("cpu: %s", rt_error());
  free(steps);
  free(totals);
  rt_cpu_free(m);
  cpu_jit_free(j);
  graph_free(g);
  return ok;
}

// ---------------------------------------------------------------- OpenBLAS beside us

// cblas_sgemm and friends, from the OpenBLAS the system has (Debian: libopenblas0).
typedef void (*SgemmFn)(int order, int ta, int tb, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111 };

// One conv or fc layer as GEMMs: `count` of M x N x K (a conv: one per group, N its
// output pixels of the whole batch, as im2col would make them).
typedef struct {
  int64_t count, m, n, k;
} GemmShape;

static GemmShape gemm_shape(const Graph *g, const Node *n, int batch) {
  Shape in = g->nodes[n->inputs[0]].out;
  if (n->op == OP_FC)
    return (GemmShape){1, n->fc.out, batch, in.c};
  const ConvAttrs *a = &n->conv;
  return (GemmShape){a->groups, a->out / a->groups, shape_plane(n->head_out) * batch,
                     in.c / a->groups * a->kernel * a->kernel};
}

// Median ms of `runs` sgemm calls on the shape (after one warm-up).
static double time_sgemm(SgemmFn sgemm, GemmShape s, int runs) {
  float *a = xcalloc(s.m * s.k, sizeof(float)), *b = xcalloc(s.k * s.n, sizeof(float));
  float *c = xcalloc(s.m * s.n, sizeof(float));
  for (int64_t i = 0; i < s.m * s.k; i++)
    a[i] = (float)(i % 7) * 0.1f;
  for (int64_t i = 0; i < s.k * s.n; i++)
    b[i] = (float)(i % 5) * 0.1f;
  double *ms = xcalloc(runs, sizeof(double));
  for (int r = -1; r < runs; r++) {
    double t0 = now_seconds() * 1e3;
    for (int64_t g = 0; g < s.count; g++)
      sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, (int)s.m, (int)s.n, (int)s.k, 1.0f,
            a, (int)s.k, b, (int)s.n, 0.0f, c, (int)s.n);
    if (r >= 0)
      ms[r] = now_seconds() * 1e3 - t0;
  }
  double med = median(ms, runs);
  free(ms);
  free(a);
  free(b);
  free(c);
  return med;
}

static void print_gemm_table(const Args *a, const Graph *fused, const Result *res, int threads) {
  void *lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  SgemmFn sgemm = lib ? (SgemmFn)dlsym(lib, "cblas_sgemm") : NULL;
  if (!sgemm) {
    printf("\n(--gemm: no OpenBLAS here: %s; Debian: apt-get install libopenblas0)\n",
           lib ? "no cblas_sgemm in libopenblas.so.0" : dlerror());
    if (lib)
      dlclose(lib);
    return;
  }
  void (*set_threads)(int) = (void (*)(int))dlsym(lib, "openblas_set_num_threads");
  char *(*corename)(void) = (char *(*)(void))dlsym(lib, "openblas_get_corename");
  if (set_threads)
    set_threads(threads);
  const char *coretype = getenv("OPENBLAS_CORETYPE");
  printf("\nOpenBLAS sgemm on each layer's GEMMs (kernel: %s%s%s, %d threads), beside the alexc "
         "layer (fused epilogue included):\n\n",
         corename ? corename() : "?", coretype ? ", OPENBLAS_CORETYPE=" : "",
         coretype ? coretype : "", threads);
  printf("| layer | GEMMs (count x M x N x K) | OpenBLAS ms | OpenBLAS GFLOP/s | alexc ms | "
         "alexc / OpenBLAS time |\n|---|---|---:|---:|---:|---:|\n");
  for (int i = 1; i < fused->n_nodes; i++) {
    const Node *n = &fused->nodes[i];
    if (n->op != OP_CONV && n->op != OP_FC)
      continue;
    GemmShape s = gemm_shape(fused, n, a->batch);
    double ms = time_sgemm(sgemm, s, a->runs);
    double flops = 2.0 * s.count * s.m * s.n * s.k;
    printf("| %s | %lld x %lld x %lld x %lld | %.3f | %.1f | %.3f | %.2f |\n", n->name,
           (long long)s.count, (long long)s.m, (long long)s.n, (long long)s.k, ms,
           flops / (ms * 1e6), res->row_ms[i], res->row_ms[i] / ms);
  }
  dlclose(lib);
}

static void cpu_model_name(char *out, size_t size) {
  snprintf(out, size, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
      snprintf(out, size, "%s", strchr(line, ':') + 2);
      out[strcspn(out, "\n")] = 0;
      break;
    }
  if (f)
    fclose(f);
}

static void print_tables(const Args *a, const Graph *fused, const Result *res, int configs,
                         double peak, const CpuTarget *t, int threads) {
  char model[256];
  cpu_model_name(model, sizeof model);
  printf("CPU: %s (LLVM: %s, %s code%s), %d threads; batch %d; median of %d runs\n", model,
         t->cpu, t->isa, t->bf16 ? ", bf16 fc layers" : "", threads, a->batch, a->runs);
  printf("FMA peak measured here: %.1f GFLOP/s\n\n", peak);
  printf("| layer | fused ms | GFLOP/s | %% of peak |%s\n", configs == 2 ? " unfused ms | fused gain |" : "");
  printf("|---|---:|---:|---:|%s\n", configs == 2 ? "---:|---:|" : "");
  for (int i = 0; i < fused->n_nodes; i++) {
    const Node *n = &fused->nodes[i];
    char label[256];
    int at = snprintf(label, sizeof label, "%s", i ? n->name : "(input, output copies)");
    for (int k = 0; i && k < n->n_epilogue && at < (int)sizeof label; k++)
      at += snprintf(label + at, sizeof label - at, "+%s", n->epilogue[k].name);
    double ms = res[0].row_ms[i], gflops = 2.0 * n->macs * a->batch / (ms * 1e6);
    printf("| %s | %.3f |", label, ms);
    if (n->macs && ms > 0)
      printf(" %.1f | %.0f%% |", gflops, 100 * gflops / peak);
    else
      printf(" | |");
    if (configs == 2)
      printf(" %.3f | %.2fx |", res[1].row_ms[i], res[0].row_ms[i] > 0 ? res[1].row_ms[i] / res[0].row_ms[i] : 0);
    printf("\n");
  }
  printf("| **total** | **%.3f** | %.1f | |", res[0].total,
         2.0 * graph_macs(fused) * a->batch / (res[0].total * 1e6));
  if (configs == 2)
    printf(" **%.3f** | %.2fx |", res[1].total, res[1].total / res[0].total);
  printf("\n");
}

int cmd_bench_cpu(int argc, char **argv) {
  Args a;
  int rc = parse_args(argc, argv, &a);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  const char *spec = argv[optind];
  if (a.train)
    return bench_train(spec, a.batch, a.runs, a.warmup, a.cpu.threads, a.seed,
                       any_fusion(&a.passes), a.compare_unfused);
  Graph *g = load_spec(spec), *fused = load_spec(spec);
  if (!g || !fused || !run_passes(fused, &a.passes)) {
    graph_free(g);
    graph_free(fused);
    return EXIT_ERR;
  }
  Weights *w = weights_init(g, a.seed, INIT_FAN_IN);
  float *x = random_input(g, a.batch, 1);
  Result res[2] = {{0}};
  double peak = 0;
  CpuTarget target = {0};
  int configs = a.compare_unfused ? 2 : 1;
  bool ok = true;
  for (int c = 0; ok && c < configs; c++)
    ok = bench_config(&a, spec, c == 0, fused, w, x, &res[c], c == 0 ? &peak : NULL, &target);
  int threads = a.cpu.threads ? a.cpu.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (ok)
    print_tables(&a, fused, res, configs, peak, &target, threads);
  if (ok && a.gemm)
    print_gemm_table(&a, fused, &res[0], threads);
  if (ok && configs == 2) {
    Compare cmp = compare(res[1].y, res[0].y, shape_elems(g->nodes[g->output].out) * a.batch);
    double tol = a.cpu.bf16 ? CPU_BF16_TOLERANCE : CPU_TOLERANCE;
    printf("\nfused and unfused outputs: max rel diff %.3g (tolerance %g)\n", cmp.rel, tol);
    if (!(ok = cmp.finite && cmp.rel <= tol))
      error("fused and unfused outputs differ");
  }
  for (int c = 0; c < 2; c++) {
    free(res[c].y);
    free(res[c].row_ms);
  }
  free(x);
  weights_free(w);
  graph_free(fused);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
