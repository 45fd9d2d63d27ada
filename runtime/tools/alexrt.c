// alexrt: runs a compiled model with the runtime alone (no LLVM, no libyaml, no
// spec): the model is the shared object (or plan file) `alexc compile --target cuda
// -o MODEL` wrote, or the shared object of `alexc compile --target cpu -o MODEL.so`;
// the weights a safetensors file, the input a .npy batch.
//
//   alexrt info MODEL
//   alexrt run MODEL --weights W.safetensors --input X.npy [--output Y.npy] [--batch-check]
//
// The CUDA driver and cuBLAS are found at run time (runtime/cuda.c), so alexrt starts
// on a machine without a GPU: `info` works, `run` says that no driver or GPU is there.
// Exit status: 0 ok, 1 error, 2 usage.
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cpu.h"
#include "alexrt_cuda.h"

enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2 };
enum { MAX_BATCH = 1 << 20 };  // images in one input file

static const char RUN_HELP[] =
    "usage: alexrt run MODEL --weights W.safetensors --input X.npy [--output Y.npy]\n"
    "                  [--batch-check]\n"
    "\n"
    "Runs a batch through a compiled model. MODEL is what 'alexc compile --target cuda\n"
    "-o MODEL' wrote (a .so bundle or a plan file: runs on the GPU(s)), or 'alexc compile\n"
    "--target cpu -o MODEL.so' (runs on this CPU, every core).\n"
    "\n"
    "  --weights FILE   safetensors holding every tensor the model names (float32)\n"
    "  --input FILE     .npy float32 batch (N, C, H, W) of the model's input shape per\n"
    "                   image ('alexrt info' shows it), or one image (C, H, W)\n"
    "  --output FILE    write the output batch as .npy (N, the output's shape); without\n"
    "                   it, print each image's top class\n"
    "  --batch-check    also run every image alone and check it matches the batch run\n"
    "                   (1e-4 relative): the batch-dependent addressing on the device\n"
    "\n"
    "Loading a .so runs its code: run only bundles you trust, as with any library.\n";

static const char INFO_HELP[] =
    "usage: alexrt info MODEL\n"
    "\n"
    "Prints what a compiled model (.so bundle or plan file) holds: the network, the GPU\n"
    "architecture, devices, steps, and per device the activation arena, weight buffer,\n"
    "scratch, modules and weight slices. Needs no GPU.\n";

static void help(FILE *out) {
  fprintf(out, "usage: alexrt COMMAND [ARGS]\n\n"
               "Runs models compiled by 'alexc compile --target cuda -o MODEL' (.so or plan).\n\n"
               "commands:\n"
               "  info     what a model holds: network, arch, devices, steps, memory\n"
               "  run      run a batch on the GPU(s)\n"
               "\n'alexrt COMMAND --help' describes each. Exit status: 0 ok, 1 error, 2 usage.\n");
}

static void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("alexrt: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "alexrt %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see 'alexrt %s --help')\n", cmd);
  va_end(ap);
  return EXIT_USAGE;
}

static bool load_model(const char *path, RtPlan *plan) {
  if (rt_plan_load(path, plan))
    return true;
  error("%s", rt_error());
  return false;
}

static double mib(int64_t floats) { return (double)floats * sizeof(float) / (1 << 20); }

// ---------------------------------------------------------------- CPU models

// info for a CPU model .so.
static int cpu_info(const char *path, RtCpuBundle *b) {
  const RtCpuProgram *p = &b->program;
  int runs = 0, packs_bf16 = 0;
  int64_t params = 0;
  for (int i = 0; i < p->n_steps; i++)
    runs += p->steps[i].kind == RT_CPU_RUN;
  for (int i = 0; i < p->n_packs; i++) {
    const RtCpuPack *k = &p->packs[i];
    packs_bf16 += k->bf16;
    int64_t n = 1;
    for (int d = 0; d < k->rank; d++)
      n *= k->dims[d];
    params += n + (k->bias[0] ? k->dims[0] : 0);
  }
  printf("model      %s\n", path);
  printf("target     cpu (%s code%s)\n", b->isa, packs_bf16 ? ", bf16 fc layers" : "");
  printf("devices    %d (run at once, as thread groups)\n", p->n_devices);
  printf("steps      %d (%d kernels, %d copies)\n", p->n_steps, runs, p->n_steps - runs);
  printf("input      %lldx%lldx%lld\n", (long long)b->in_shape[0], (long long)b->in_shape[1],
         (long long)b->in_shape[2]);
  printf("output     %lldx%lldx%lld\n", (long long)b->out_shape[0][0],
         (long long)b->out_shape[0][1], (long long)b->out_shape[0][2]);
  printf("weights    %d tensors with weights, %" PRId64 " parameters (as this plan splits them)\n",
         p->n_packs, params);
  for (int d = 0; d < p->n_devices; d++)
    printf("device %d   arena %" PRId64 " floats/image (%.2f MiB)\n", d, p->arena[d],
           mib(p->arena[d]));
  return EXIT_OK;
}

// run for a CPU model .so: x is (batch, input) already checked; y is written.
static bool cpu_run(RtCpuBundle *b, const char *weights, const float *x, int batch, float *y) {
  RtCpuWeights w;
  if (!rt_cpu_weights_open(weights, &w)) {
    error("%s", rt_error());
    return false;
  }
  RtCpuModel *m = rt_cpu_load(&b->program, rt_cpu_weight, &w, 0);
  bool ok = m && rt_cpu_run(m, x, batch, &y);
  if (!ok)
    error("%s", rt_error());
  rt_cpu_free(m);
  rt_cpu_weights_close(&w);
  return ok;
}

// `alexrt run` on a CPU model: the input checked against its shape, the output saved in
// (N, C) or (N, C, H, W), or each image's top class printed.
static int cpu_cmd_run(RtCpuBundle *b, const char *weights, const char *input,
                       const char *output) {
  RtTensor x = {0};
  if (!rt_npy_load(input, &x)) {
    error("%s", rt_error());
    return EXIT_ERR;
  }
  const int64_t *s = b->in_shape;
  bool shaped = (x.rank == 4 || x.rank == 3) && x.dims[x.rank - 3] == s[0] &&
                x.dims[x.rank - 2] == s[1] && x.dims[x.rank - 1] == s[2];
  int64_t batch = x.rank == 4 ? x.dims[0] : 1;
  if (!shaped || batch < 1 || batch > MAX_BATCH) {
    error("%s: want a batch (N, %lld, %lld, %lld) or one image (%lld, %lld, %lld) of float32",
          input, (long long)s[0], (long long)s[1], (long long)s[2], (long long)s[0],
          (long long)s[1], (long long)s[2]);
    rt_tensor_free(&x);
    return EXIT_ERR;
  }
  int64_t out = b->program.out_elems[0];
  float *y = malloc((size_t)(batch * out) * sizeof(float));
  bool ok = y && cpu_run(b, weights, x.data, (int)batch, y);
  if (ok && output) {
    const int64_t *o = b->out_shape[0];
    int64_t dims[4] = {batch, o[0], o[1], o[2]};
    if (!(ok = rt_npy_save(output, y, o[1] == 1 && o[2] == 1 ? 2 : 4, dims)))
      error("%s", rt_error());
  }
  for (int64_t i = 0; ok && !output && i < batch; i++) {
    const float *yi = y + i * out;
    int64_t best = 0;
    for (int64_t k = 1; k < out; k++)
      if (yi[k] > yi[best])
        best = k;
    printf("image %lld: top class %lld (%.6g)\n", (long long)i, (long long)best, yi[best]);
  }
  free(y);
  rt_tensor_free(&x);
  return ok ? EXIT_OK : EXIT_ERR;
}

// ---------------------------------------------------------------- info

static int cmd_info(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (c != 'h')
      return usage_error("info", "unknown option");
    fputs(INFO_HELP, stdout);
    return EXIT_OK;
  }
  if (optind + 1 != argc)
    return usage_error("info", "expected one MODEL file");
  const char *path = argv[optind];
  RtCpuBundle cpu;
  int is_cpu = rt_cpu_bundle_open(path, &cpu);
  if (is_cpu < 0) {
    error("%s", rt_error());
    return EXIT_ERR;
  }
  if (is_cpu) {
    int rc = cpu_info(path, &cpu);
    rt_cpu_bundle_close(&cpu);
    return rc;
  }
  RtPlan p;
  if (!load_model(path, &p))
    return EXIT_ERR;
  int kinds[4] = {0};
  for (int i = 0; i < p.n_steps; i++)
    kinds[p.steps[i].kind]++;
  printf("model      %s\n", path);
  printf("network    %s\n", p.network);
  printf("arch       %s\n", p.arch);
  printf("precision  %s\n", rt_precision_name(p.precision));
  printf("devices    %d\n", p.n_devices);
  printf("steps      %d (%d kernels, %d gemms, %d chunks, %d transfers)\n", p.n_steps,
         kinds[RT_STEP_KERNEL], kinds[RT_STEP_GEMM], kinds[RT_STEP_CHUNK],
         kinds[RT_STEP_TRANSFER]);
  char in[64], out[64];
  rt_shape_str(p.in, in, sizeof in);
  rt_shape_str(p.out, out, sizeof out);
  printf("input      %s (%" PRId64 " floats per image)\n", in, rt_shape_elems(p.in));
  printf("output     %s (%" PRId64 " floats per image)\n", out, rt_shape_elems(p.out));
  int64_t params = 0;
  for (int i = 0; i < p.n_tensors; i++)
    params += rt_shape_elems(p.tensors[i].shape);
  printf("weights    %d tensors, %" PRId64 " parameters\n", p.n_tensors, params);
  for (int d = 0; d < p.n_devices; d++) {
    const RtPlanDevice *v = &p.dev[d];
    printf("device %d   arena %" PRId64 " floats/image (%.2f MiB), weights %" PRId64
           " floats (%.2f MiB) in %d slices, scratch %" PRId64
           " floats/image, chunk %" PRId64 " images, cubin %zu bytes, ptx %zu bytes\n",
           d, v->arena, mib(v->arena), v->weights, mib(v->weights), v->n_slices, v->scratch,
           v->chunk, v->cubin_size, v->ptx_size);
  }
  rt_plan_free(&p);
  return EXIT_OK;
}

// ---------------------------------------------------------------- run

// The weight tensors the plan names, read once each as float32.
typedef struct {
  char **names;
  float **data;
  int n;
} Weights;

static void weights_free(Weights *w) {
  for (int i = 0; i < w->n; i++) {
    free(w->names[i]);
    free(w->data[i]);
  }
  free(w->names);
  free(w->data);
}

static const float *weight_by_name(void *ctx, const char *tensor) {
  const Weights *w = ctx;
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->names[i], tensor))
      return w->data[i];
  return NULL;
}

// "(2, 3, 227, 227)", or "(32,)" as Python writes a 1-tuple
static void shape_str(int rank, const int64_t *dims, char *buf, size_t size) {
  size_t n = (size_t)snprintf(buf, size, "(");
  for (int i = 0; i < rank && n < size; i++)
    n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64, i ? ", " : "", dims[i]);
  if (n < size)
    snprintf(buf + n, size - n, rank == 1 ? ",)" : ")");
}

// Reads every tensor a slice names. Each must have the shape the plan gives it, so a
// file for another network, or one laid out another way, fails here, before anything
// reaches a GPU.
static bool load_weights(const RtPlan *p, const char *path, Weights *w) {
  memset(w, 0, sizeof *w);
  RtSafetensors st;
  if (!rt_st_open(path, &st)) {
    error("%s", rt_error());
    return false;
  }
  bool ok = true;
  for (int d = 0; d < p->n_devices && ok; d++)
    for (int s = 0; s < p->dev[d].n_slices && ok; s++) {
      const char *name = p->dev[d].slices[s].tensor;
      if (weight_by_name(w, name))
        continue;
      const RtStEntry *e = rt_st_find(&st, name);
      if (!e) {
        error("%s: no tensor '%s' (the model needs it)", path, name);
        ok = false;
        break;
      }
      const RtPlanTensor *want = rt_plan_tensor(p, name);  // rt_plan_load checked it is there
      if (e->rank != want->shape.rank ||
          memcmp(e->dims, want->shape.dims, (size_t)e->rank * sizeof e->dims[0])) {
        char got_s[128], want_s[128];
        shape_str(e->rank, e->dims, got_s, sizeof got_s);
        shape_str(want->shape.rank, want->shape.dims, want_s, sizeof want_s);
        error("%s: tensor '%s' has shape %s; the model wants %s", path, name, got_s, want_s);
        ok = false;
        break;
      }
      float *data = malloc((size_t)(e->elems ? e->elems : 1) * sizeof(float));
      if (!data) {
        error("%s: out of memory for tensor '%s'", path, name);
        ok = false;
        break;
      }
      if (!rt_st_read_f32(&st, name, e->rank, e->dims, data)) {
        error("%s", rt_error());
        free(data);
        ok = false;
        break;
      }
      w->names = realloc(w->names, (w->n + 1) * sizeof *w->names);
      w->data = realloc(w->data, (w->n + 1) * sizeof *w->data);
      if (!w->names || !w->data) {
        fprintf(stderr, "alexrt: fatal: out of memory\n");
        abort();
      }
      w->names[w->n] = strdup(name);
      w->data[w->n++] = data;
    }
  rt_st_close(&st);
  if (!ok)
    weights_free(w);
  return ok;
}

// True when x's last dimensions are the shape s.
static bool ends_with(const RtTensor *x, RtShape s) {
  if (x->rank < s.rank)
    return false;
  for (int i = 0; i < s.rank; i++)
    if (x->dims[x->rank - s.rank + i] != s.dims[i])
      return false;
  return true;
}

// The batch: (N, C, H, W) with the model's input shape per image, or one image (C, H, W).
// The shape must match, not only the size: (N, H, W, C) has as many floats, in
// another layout.
static bool load_input(const RtPlan *p, const char *path, RtTensor *x, int *batch) {
  if (!rt_npy_load(path, x)) {
    error("%s", rt_error());
    return false;
  }
  if (ends_with(x, p->in) && x->rank == p->in.rank) {
    *batch = 1;
    return true;
  }
  if (ends_with(x, p->in) && x->rank == p->in.rank + 1 && x->dims[0] >= 1 &&
      x->dims[0] <= MAX_BATCH) {
    *batch = (int)x->dims[0];
    return true;
  }
  char got[128], one[128];
  shape_str(x->rank, x->dims, got, sizeof got);
  shape_str(p->in.rank, p->in.dims, one, sizeof one);
  int inner = (int)strlen(one) - 2 - (p->in.rank == 1);  // "(3, 227, 227)" less "(" and ")"
  error("%s: input shape %s does not fit the model: it wants (N, %.*s) with N from 1 to %d, "
        "or one image %s",
        path, got, inner, one + 1, MAX_BATCH, one);
  rt_tensor_free(x);
  return false;
}

// max |got - want| / max |want|, as the tests measure it; +inf when something is not finite.
static double rel_err(const float *got, const float *want, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(got[i]) || !isfinite(want[i]))
      return INFINITY;
    diff = fmax(diff, fabs((double)got[i] - want[i]));
    scale = fmax(scale, fabs((double)want[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// Runs every image alone and compares with the batch's output.
static bool batch_check(RtCuda *r, const RtPlan *p, const float *x, int batch, const float *y) {
  int64_t in_elems = rt_shape_elems(p->in), out_elems = rt_shape_elems(p->out);
  float *one = malloc((size_t)out_elems * sizeof(float));
  if (!one) {
    error("out of memory");
    return false;
  }
  double worst = 0;
  int at = 0;
  bool ok = true;
  for (int i = 0; i < batch && ok; i++) {
    if (!(ok = rt_cuda_run(r, x + (size_t)i * in_elems, 1, one))) {
      error("%s", rt_error());
      break;
    }
    double e = rel_err(one, y + (size_t)i * out_elems, out_elems);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  free(one);
  if (!ok)
    return false;
  if (!(worst <= 1e-4)) {
    error("batch check: image %d run alone differs from the batch of %d: max rel err %.3g "
          "(want <= 1e-4)",
          at, batch, worst);
    return false;
  }
  printf("batch check: each of the %d image(s) run alone matches the batch run (max rel err "
         "%.3g)\n",
         batch, worst);
  return true;
}

// Without a GPU (or in a runtime built without CUDA) rt_cuda_open says why not.
static bool run_model(const RtPlan *p, const Weights *w, const float *x, int batch, float *y,
                      bool check) {
  RtCuda *r = rt_cuda_open(p, 0, weight_by_name, (void *)w);
  if (!r) {
    error("%s", rt_error());
    return false;
  }
  bool ok = rt_cuda_run(r, x, batch, y);
  if (!ok)
    error("%s", rt_error());
  ok = ok && (!check || batch_check(r, p, x, batch, y));
  rt_cuda_close(r);
  return ok;
}

static int cmd_run(int argc, char **argv) {
  static const struct option opts[] = {
      {"weights", required_argument, 0, 'w'}, {"input", required_argument, 0, 'i'},
      {"output", required_argument, 0, 'o'},  {"batch-check", no_argument, 0, 'b'},
      {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  const char *weights = NULL, *input = NULL, *output = NULL;
  bool check = false;
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'w': weights = optarg; break;
    case 'i': input = optarg; break;
    case 'o': output = optarg; break;
    case 'b': check = true; break;
    case 'h':
      fputs(RUN_HELP, stdout);
      return EXIT_OK;
    default:
      return usage_error("run", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("run", "expected one MODEL file");
  if (!weights || !input)
    return usage_error("run", "--weights and --input are required");

  RtCpuBundle cpu;
  int is_cpu = rt_cpu_bundle_open(argv[optind], &cpu);
  if (is_cpu < 0) {
    error("%s", rt_error());
    return EXIT_ERR;
  }
  if (is_cpu) {
    if (check)
      fprintf(stderr, "alexrt: note: --batch-check is for GPU models; ignored\n");
    int rc = cpu_cmd_run(&cpu, weights, input, output);
    rt_cpu_bundle_close(&cpu);
    return rc;
  }
  RtPlan p;
  if (!load_model(argv[optind], &p))
    return EXIT_ERR;
  Weights w;
  RtTensor x = {0};
  int batch = 0;
  float *y = NULL;
  int64_t out_elems = rt_shape_elems(p.out);
  bool ok = load_weights(&p, weights, &w);
  if (ok && !(ok = load_input(&p, input, &x, &batch)))
    weights_free(&w);
  if (ok) {
    y = malloc((size_t)batch * out_elems * sizeof(float));
    if (!(ok = y != NULL))
      error("out of memory for the output");
    ok = ok && run_model(&p, &w, x.data, batch, y, check);
    weights_free(&w);
  }
  if (ok && output) {
    int64_t dims[1 + RT_SHAPE_RANK] = {batch};  // (N, the output's shape per image)
    memcpy(dims + 1, p.out.dims, (size_t)p.out.rank * sizeof dims[0]);
    if (!(ok = rt_npy_save(output, y, 1 + p.out.rank, dims)))
      error("%s", rt_error());
  }
  if (ok && !output) {
    printf("ran %d image(s) through '%s': %" PRId64 " outputs per image (--output saves them)\n",
           batch, p.network, out_elems);
    for (int i = 0; i < batch; i++) {
      const float *yi = y + (size_t)i * out_elems;
      int64_t best = 0;
      for (int64_t k = 1; k < out_elems; k++)
        if (yi[k] > yi[best])
          best = k;
      printf("image %d: top class %" PRId64 " (%.6g)\n", i, best, yi[best]);
    }
  }
  free(y);
  rt_tensor_free(&x);
  rt_plan_free(&p);
  return ok ? EXIT_OK : EXIT_ERR;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    help(stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    help(stdout);
    return EXIT_OK;
  }
  if (!strcmp(argv[1], "info"))
    return cmd_info(argc - 1, argv + 1);
  if (!strcmp(argv[1], "run"))
    return cmd_run(argc - 1, argv + 1);
  fprintf(stderr, "alexrt: unknown command '%s' (see 'alexrt --help')\n", argv[1]);
  return EXIT_USAGE;
}
