// `alexc bench`: times a network on the GPU(s), fused against unfused side by side.
//
// Each configuration is compiled and loaded once; after warm-up runs, `runs` runs are
// timed end to end (a CUDA event before the first step and after the last, input
// already on the GPU) and `runs` more with events around every step for the per-layer
// table. Medians throughout. Layers are the fused graph's nodes (conv1+relu1+norm1+pool1
// is one row); an unfused run's layers are added up into the fused row that holds them,
// so the two columns compare the same work. With several devices a row's time is the
// slowest device's (the towers run concurrently). The end-to-end runs replay the batch's
// steps as a CUDA graph (runtime/cuda.c; on one GPU, unless --no-graph); the per-layer
// runs issue each step between its events, so their sum also holds the launch gaps a
// graph removes.
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char BENCH_HELP[] =
    "usage: alexc bench SPEC --target cuda [--batch N] [--runs R] [--warmup W]\n"
    "                   [--compare-unfused] [--precision P] [--conv S] [--devices N] ...\n"
    "\n"
    "Times the network on the GPU: per-layer and total times from CUDA events (median\n"
    "of R runs after W warm-up runs), and the device memory it uses. Prints a Markdown\n"
    "table (docs/benchmarks.md keeps them).\n"
    "\n"
    "  --target cuda     this help's target (--target cpu: alexc bench --target cpu --help)\n"
    "  --batch N         images per batch (default 128)\n"
    "  --runs R          timed runs, each for the total and for the per-layer table\n"
    "                    (default 20)\n"
    "  --warmup W        untimed runs first (default 3)\n"
    "  --compare-unfused also compile without fusion and show both side by side; checks\n"
    "                    that their outputs agree within the precision's tolerance\n"
    "  --seed S          weights from seed S (default 1; times do not depend on values)\n"
    "  --no-graph        issue the steps one by one instead of replaying them as a CUDA\n"
    "                    graph (the per-layer runs always issue them one by one)\n"
    CUDA_OPTIONS_HELP
    PASS_OPTIONS_HELP;

typedef struct {
  const char *target, *arch;
  int batch, runs, warmup;
  bool compare_unfused, no_graph;
  uint64_t seed;
  PassOptions passes;
  CudaOptions cuda;
} BenchArgs;

static int parse_bench_args(int argc, char **argv, BenchArgs *a) {
  static const struct option opts[] = {
      {"target", required_argument, 0, 'T'}, BENCH_LONG_OPTIONS,
      {"compare-unfused", no_argument, 0, 'u'}, {"no-graph", no_argument, 0, 'G'},
      {"help", no_argument, 0, 'h'},         CUDA_LONG_OPTIONS,
      PASS_LONG_OPTIONS,                     {0, 0, 0, 0}};
  *a = (BenchArgs){.batch = 128, .runs = 20, .warmup = 3, .seed = 1, .passes = pass_defaults(),
                   .cuda = cuda_defaults()};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int rc = target_option("bench", c, optarg, &a->passes, &a->cuda, &a->arch);
    if (rc < 0)
      rc = bench_option(c, optarg, &a->batch, &a->runs, &a->warmup, &a->seed);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'T': a->target = optarg; break;
    case 'u': a->compare_unfused = true; break;
    case 'G': a->no_graph = true; break;
    case 'h':
      fputs(BENCH_HELP, stdout);
      return -1;
    default:
      return usage_error("bench", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("bench", "expected one SPEC file");
  if (!a->target || strcmp(a->target, "cuda") != 0)
    return usage_error("bench", "--target: want 'cuda'%s%s", a->target ? ", not " : "",
                       a->target ? a->target : "");
  return EXIT_OK;
}

// ---------------------------------------------------------------- the table

// A row: a node of the fused graph (its compute, or its transfers), with each
// configuration's per-run times.
typedef struct {
  char label[256];
  bool transfer;
  int64_t macs;   // per image: the fused node's (0 for transfers)
  double *ms[2];  // [config][run]
  bool seen[2];
} Row;

typedef struct {
  const Graph *fused;  // rows come from its nodes
  Row *rows;
  int n_rows, runs;
} Table;

static int node_row_of(const Graph *g, const char *layer) {
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    if (!strcmp(n->name, layer))
      return i;
    for (int k = 0; k < n->n_epilogue; k++)
      if (!strcmp(n->epilogue[k].name, layer))
        return i;
  }
  return -1;
}

static int row_index(Table *t, const char *layer, bool transfer) {
  int node = node_row_of(t->fused, layer);
  char label[256];
  if (node < 0) {
    snprintf(label, sizeof label, "%s", layer);
  } else {
    const Node *n = &t->fused->nodes[node];
    int at = snprintf(label, sizeof label, "%s", n->name);
    for (int k = 0; k < n->n_epilogue && at < (int)sizeof label; k++)
      at += snprintf(label + at, sizeof label - at, "+%s", n->epilogue[k].name);
  }
  if (transfer)
    snprintf(label + strlen(label), sizeof label - strlen(label), " (transfers)");
  for (int i = 0; i < t->n_rows; i++)
    if (t->rows[i].transfer == transfer && !strcmp(t->rows[i].label, label))
      return i;
  t->rows = xrealloc(t->rows, (t->n_rows + 1) * sizeof *t->rows);
  Row *r = &t->rows[t->n_rows];
  memset(r, 0, sizeof *r);
  snprintf(r->label, sizeof r->label, "%s", label);
  r->transfer = transfer;
  r->macs = node >= 0 && !transfer ? t->fused->nodes[node].macs : 0;
  r->ms[0] = xcalloc(t->runs, sizeof(double));
  r->ms[1] = xcalloc(t->runs, sizeof(double));
  return t->n_rows++;
}

// Adds one per-layer run. A row gathers several layers (unfused) on several devices:
// sum per row and device, then keep the slowest device.
static void add_run(Table *t, int config, int run, const RtTimes *times) {
  int *row = xcalloc(times->n_layers + 1, sizeof *row);
  for (int i = 0; i < times->n_layers; i++)
    row[i] = row_index(t, times->layers[i].layer, times->layers[i].transfer);
  double *sum = xcalloc((size_t)t->n_rows * MAX_DEVICES, sizeof *sum);
  for (int i = 0; i < times->n_layers; i++)
    sum[row[i] * MAX_DEVICES + times->layers[i].device] += times->layers[i].ms;
  for (int i = 0; i < times->n_layers; i++) {
    Row *r = &t->rows[row[i]];
    double ms = sum[row[i] * MAX_DEVICES + times->layers[i].device];
    r->seen[config] = true;
    if (ms > r->ms[config][run])
      r->ms[config][run] = ms;
  }
  free(sum);
  free(row);
}

static void table_free(Table *t) {
  for (int i = 0; i < t->n_rows; i++) {
    free(t->rows[i].ms[0]);
    free(t->rows[i].ms[1]);
  }
  free(t->rows);
}

// ---------------------------------------------------------------- one configuration

typedef struct {
  const char *name;
  double total[2];  // median, min (ms)
  int captures, launches;  // CUDA graphs behind the end-to-end runs
  RtMemory mem;
  float *y;
} Result;

// Compiles and times one configuration into column `config` of t; with `each`, also
// layer by layer under its own graph's names (the unfused run's own table).
static bool bench_config(const BenchArgs *a, const char *spec, bool fuse, Table *t, int config,
                         Table *each, const Weights *w, const float *x, const char *arch,
                         Result *res) {
  Graph *g = load_spec(spec);
  PassOptions o = a->passes;
  if (!fuse)
    for (int i = 0; i < FUSE_COUNT; i++)
      o.fuse[i] = false;
  char *layer = g ? g->nodes[g->output].name : NULL;
  if (!g || !compile_graph(g, &o, &layer, 1)) {
    graph_free(g);
    return false;
  }
  if (!t->fused)
    t->fused = g;  // kept: the rows' labels come from it
  if (each && !each->fused)
    each->fused = g;
  char *how = cuda_describe_options(&o);
  CudaModel m;
  bool ok = cuda_load_graph(g, how, &a->cuda, arch, w, &m);
  free(how);
  int64_t out = shape_elems(g->nodes[g->output].out) * a->batch;
  res->y = xcalloc(out, sizeof(float));
  double *totals = xcalloc(a->runs, sizeof(double));
  RtTimes times;
  if (ok)
    rt_cuda_set_graphs(m.rt, !a->no_graph);
  for (int i = 0; ok && i < a->warmup; i++)
    ok = rt_cuda_run(m.rt, x, a->batch, res->y);
  for (int i = 0; ok && i < a->runs; i++) {
    ok = rt_cuda_time(m.rt, x, a->batch, res->y, false, &times);
    totals[i] = times.total_ms;
    rt_times_free(&times);
  }
  for (int i = 0; ok && i < a->runs; i++) {
    ok = rt_cuda_time(m.rt, x, a->batch, res->y, true, &times);
    if (ok)
      add_run(t, config, i, &times);
    if (ok && each)
      add_run(each, 0, i, &times);
    rt_times_free(&times);
  }
  ok = ok && rt_cuda_memory(m.rt, &res->mem);
  if (ok)
    rt_cuda_graph_stats(m.rt, &res->captures, &res->launches);
  if (!ok && m.rt)
    error("%s", rt_error());
  if (ok) {
    res->total[0] = median(totals, a->runs);
    res->total[1] = totals[0];  // sorted by median()
  }
  free(totals);
  cuda_model_free(&m);
  if (t->fused != g && (!each || each->fused != g))
    graph_free(g);
  return ok;
}

static void print_table(const BenchArgs *a, Table *t, const Result *res, int configs,
                        const char *gpu, const char *arch) {
  const char *cols[2] = {res[0].name, configs > 1 ? res[1].name : NULL};
  char conv[256];
  cuda_describe_conv(&a->cuda, conv, sizeof conv);
  printf("%s on %s (%s), batch %d, %s, --conv %s, %d device%s: median of %d runs after %d "
         "warm-up\n\n",
         t->fused->name, gpu, arch, a->batch, rt_precision_name(a->cuda.precision),
         conv, a->passes.devices, a->passes.devices > 1 ? "s" : "",
         a->runs, a->warmup);
  // The last column: the first configuration's multiply-adds (conv and fc, 2 flops
  // each) per second, to hold against the GPU's peak for the precision.
  printf("| layer | %s ms |%s%s%s %s TFLOP/s |\n", cols[0], configs > 1 ? " " : "",
         configs > 1 ? cols[1] : "", configs > 1 ? " ms |" : "", cols[0]);
  printf("|---|---:|%s---:|\n", configs > 1 ? "---:|" : "");
  double sum[2] = {0, 0}, batch = a->batch;
  for (int i = 0; i < t->n_rows; i++) {
    Row *r = &t->rows[i];
    printf("| %s |", r->label);
    double first_ms = 0;
    for (int c = 0; c < configs; c++) {
      if (!r->seen[c]) {
        printf(" - |");
        continue;
      }
      double ms = median(r->ms[c], t->runs);
      sum[c] += ms;
      first_ms = c ? first_ms : ms;
      printf(" %.3f |", ms);
    }
    if (r->macs && first_ms > 0)
      printf(" %.2f |\n", 2.0 * r->macs * batch / first_ms / 1e9);
    else
      printf(" |\n");
  }
  printf("| sum of layers (events around each step, issued one by one) |");
  for (int c = 0; c < configs; c++)
    printf(" %.3f |", sum[c]);
  printf(" |\n| **total** (end to end, median; %s) |",
         res[0].launches ? "a CUDA graph" : "issued one by one");
  for (int c = 0; c < configs; c++)
    printf(" **%.3f** |", res[c].total[0]);
  printf(" %.2f |\n| total, fastest run |", 2.0 * graph_macs(t->fused) * batch / res[0].total[0] / 1e9);
  for (int c = 0; c < configs; c++)
    printf(" %.3f |", res[c].total[1]);
  printf(" |\n| images/s |");
  for (int c = 0; c < configs; c++)
    printf(" %.0f |", batch / (res[c].total[0] / 1000));
  printf(" |");
  for (int g = 0; g < res[0].mem.n_gpus; g++) {
    printf("\n| GPU %d memory: alexc buffers / in use, MiB |", g);
    for (int c = 0; c < configs; c++)
      printf(" %.1f / %.1f |", res[c].mem.alexc_bytes[g] / 1048576.0,
             res[c].mem.used_bytes[g] / 1048576.0);
    printf(" |");
  }
  printf("\n\n%.3g GMAC per image (alexc check): TFLOP/s = 2 x MACs x batch / time.\n",
         graph_macs(t->fused) / 1e9);
  for (int c = 0; c < configs; c++)
    if (res[c].launches)
      printf("%s: the end-to-end runs replayed %d capture%s of the batch's steps as a CUDA "
             "graph (%d launches).\n", res[c].name, res[c].captures,
             res[c].captures == 1 ? "" : "s", res[c].launches);
}

// One configuration layer by layer (the unfused run: each op alone, as a peer that
// runs ops one by one would, e.g. to set its LRN beside PyTorch's).
static void print_layers(Table *t, const char *name) {
  printf("\n%s, layer by layer:\n\n| layer | ms |\n|---|---:|\n", name);
  for (int i = 0; i < t->n_rows; i++)
    printf("| %s | %.3f |\n", t->rows[i].label, median(t->rows[i].ms[0], t->runs));
}

int cmd_bench_cuda(int argc, char **argv) {
  BenchArgs a;
  int rc = parse_bench_args(argc, argv, &a);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  const char *spec = argv[optind];
  Graph *g = load_spec(spec);
  if (!g)
    return EXIT_ERR;
  // The GPU present (its absence is the error), and the architecture to compile for.
  char arch[16], gpu[128] = "", present[16];
  bool ok = rt_cuda_device(present, sizeof present, gpu, sizeof gpu);
  if (!ok)
    error("cuda: %s", rt_error());
  else
    snprintf(arch, sizeof arch, "%s", a.arch && strcmp(a.arch, "native") ? a.arch : present);
  Weights *w = ok ? weights_init(g, a.seed, INIT_FAN_IN) : NULL;
  float *x = ok ? random_input(g, a.batch, 1) : NULL;
  Table t = {.runs = a.runs}, each = {.runs = a.runs};
  char *how = cuda_describe_options(&a.passes);
  Result res[2] = {{.name = how}, {.name = "unfused"}};
  int configs = a.compare_unfused ? 2 : 1;
  for (int c = 0; ok && c < configs; c++)
    ok = bench_config(&a, spec, c == 0, &t, c, c == 1 ? &each : NULL, w, x, arch, &res[c]);
  if (ok)
    print_table(&a, &t, res, configs, gpu, arch);
  if (ok && configs == 2)
    print_layers(&each, "unfused");
  if (ok && configs == 2) {
    Compare cmp = compare(res[1].y, res[0].y, shape_elems(g->nodes[g->output].out) * a.batch);
    double tol = cuda_tolerance(a.cuda.precision);
    printf("\nfused and unfused outputs: max rel diff %.3g (tolerance %g)\n", cmp.rel, tol);
    if (!(ok = cmp.finite && cmp.rel <= tol))
      error("fused and unfused outputs differ");
  }
  free(how);
  for (int c = 0; c < 2; c++)
    free(res[c].y);
  if (t.fused)
    graph_free((Graph *)t.fused);
  if (each.fused)
    graph_free((Graph *)each.fused);
  table_free(&t);
  table_free(&each);
  free(x);
  weights_free(w);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
