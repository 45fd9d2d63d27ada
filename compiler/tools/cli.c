// Shared pieces of the subcommands.
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "alexc %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see 'alexc %s --help')\n", cmd);
  va_end(ap);
  return EXIT_USAGE;
}

bool parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (!s || !*s || *s == '-')
    return false;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end || errno)
    return false;
  *out = v;
  return true;
}

bool parse_int_in(const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  if (!s || !*s)
    return false;
  long v = strtol(s, &end, 10);
  if (*end || errno || v < lo || v > hi)
    return false;
  *out = (int)v;
  return true;
}

bool parse_init_scheme(const char *s, InitScheme *out) {
  if (!strcmp(s, "spec"))
    *out = INIT_SPEC;
  else if (!strcmp(s, "fan-in"))
    *out = INIT_FAN_IN;
  else
    return false;
  return true;
}

Graph *load_spec(const char *path) {
  Graph *g = parse_spec_file(path);
  if (g && !graph_verify(g)) {
    graph_free(g);
    return NULL;
  }
  return g;
}

bool load_input(const Graph *g, const char *path, float **x, int *batch) {
  RtTensor t;
  if (!rt_npy_load(path, &t)) {
    error("%s", rt_error());
    return false;
  }
  Shape s = g->nodes[0].out;
  int64_t n = t.rank == 3 ? 1 : t.dims[0];
  const int64_t *chw = t.rank == 3 ? t.dims : t.dims + 1;
  if ((t.rank != 3 && t.rank != 4) || chw[0] != s.c || chw[1] != s.h || chw[2] != s.w) {
    char have[128] = "";
    for (int i = 0, len = 0; i < t.rank && len < 100; i++)
      len += snprintf(have + len, sizeof have - len, "%s%lld", i ? ", " : "", (long long)t.dims[i]);
    error("%s: input has shape (%s), want (N, %lld, %lld, %lld) for network '%s'", path, have,
          (long long)s.c, (long long)s.h, (long long)s.w, g->name);
    rt_tensor_free(&t);
    return false;
  }
  if (n < 1 || n > 65536) {
    error("%s: batch of %lld images; it must be between 1 and 65536", path, (long long)n);
    rt_tensor_free(&t);
    return false;
  }
  for (int64_t i = 0; i < t.elems; i++)
    if (!isfinite(t.data[i])) {
      error("%s: element %lld is not a finite number", path, (long long)i);
      rt_tensor_free(&t);
      return false;
    }
  *x = t.data;
  *batch = (int)n;
  return true;
}

float *random_input(const Graph *g, int batch, uint64_t seed) {
  int64_t n = shape_elems(g->nodes[0].out) * batch;
  float *x = xcalloc(n, sizeof(float));
  fill_normal(x, n, seed, "input", 1.0);
  return x;
}

bool save_output(const Graph *g, int node, const float *y, int batch, const char *path) {
  Shape s = g->nodes[node].out;
  int64_t dims[4] = {batch, s.c, s.h, s.w};
  if (!rt_npy_save(path, y, s.rank == 1 ? 2 : 4, dims)) {
    error("%s", rt_error());
    return false;
  }
  return true;
}

Compare compare(const float *got, const float *want, int64_t n) {
  Compare c = {.finite = true};
  double scale = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(got[i]) || !isfinite(want[i])) {
      if (c.finite)
        c.at = i;
      c.finite = false;
      continue;
    }
    double d = fabs((double)got[i] - want[i]);
    if (d > c.abs) {
      c.abs = d;
      c.at = i;
    }
    if (fabs(want[i]) > scale)
      scale = fabs(want[i]);
  }
  c.rel = scale > 0 ? c.abs / scale : c.abs;
  if (!c.finite)
    c.rel = INFINITY;
  return c;
}

bool any_fusion(const PassOptions *o) {
  for (int i = 0; i < FUSE_COUNT; i++)
    if (o->fuse[i])
      return true;
  return false;
}

int pass_option(const char *cmd, int c, const char *arg, PassOptions *o) {
  char bad[64];
  switch (c) {
  case PASS_OPT_NO_FUSE:
    for (int i = 0; i < FUSE_COUNT; i++)
      o->fuse[i] = false;
    return 0;
  case PASS_OPT_FUSE:
    if (!parse_fuse_list(arg, o, bad, sizeof bad))
      return usage_error(cmd, "unknown fusion pattern '%s'", bad);
    return 0;
  case PASS_OPT_DEVICES:
    if (!parse_int_in(arg, 1, MAX_DEVICES, &o->devices))
      return usage_error(cmd, "--devices wants an integer from 1 to %d, not '%s'", MAX_DEVICES,
                         arg);
    return 0;
  default:
    return -1;
  }
}

int target_option(const char *cmd, int c, const char *arg, PassOptions *p, CudaOptions *o,
                  const char **arch) {
  int rc = pass_option(cmd, c, arg, p);
  return rc < 0 ? cuda_option(cmd, c, arg, o, arch) : rc;
}

bool cut_at_layer(Graph *g, const char *layer) {
  int cut = graph_find(g, layer);
  if (cut < 0) {
    error("network '%s' has no layer '%s'", g->name, layer);
    return false;
  }
  if (cut == 0) {
    error("--target cuda: layer '%s' is the network's input: there is nothing to compute",
          layer);
    return false;
  }
  graph_truncate(g, cut);
  return true;
}

bool compile_graph(Graph *g, const PassOptions *o, char *const *keep, int n_keep) {
  int *idx = xcalloc(n_keep, sizeof(int));
  bool ok = true;
  for (int k = 0; k < n_keep && ok; k++) {
    idx[k] = graph_find(g, keep[k]);
    if (idx[k] < 0) {
      error("network '%s' has no layer '%s'", g->name, keep[k]);
      ok = false;
    }
  }
  PassOptions opts = *o;
  opts.keep = idx;
  opts.n_keep = n_keep;
  ok = ok && run_passes(g, &opts);
  free(idx);
  return ok;
}

int cuda_option(const char *cmd, int c, const char *arg, CudaOptions *o, const char **arch) {
  switch (c) {
  case CUDA_OPT_ARCH:
    if (strcmp(arg, "native") != 0 &&
        (strncmp(arg, "sm_", 3) != 0 || strlen(arg) < 5 || strlen(arg) > 8 ||
         strspn(arg + 3, "0123456789") != strlen(arg + 3)))
      return usage_error(cmd, "--arch wants a GPU architecture such as sm_90, or native, not '%s'",
                         arg);
    *arch = arg;
    return 0;
  case CUDA_OPT_CONV: {
    char err[256];
    if (!cuda_parse_conv_option(arg, o, err, sizeof err))
      return usage_error(cmd, "%s", err);
    return 0;
  }
  case CUDA_OPT_PRECISION:
    if (!rt_parse_precision(arg, &o->precision))
      return usage_error(cmd, "--precision is fp32, tf32 or bf16, not '%s'", arg);
    return 0;
  }
  return -1;
}

bool resolve_arch(const char *arch, bool running, char *out, size_t size) {
  if (arch && strcmp(arch, "native") != 0) {  // checked by cuda_option
    snprintf(out, size, "%s", arch);
    return true;
  }
  if (!arch && !running) {
    snprintf(out, size, "sm_90");
    return true;
  }
  if (!rt_cuda_device(out, size, NULL, 0)) {
    error("%s%s", arch ? "--arch native: " : "cuda: ", rt_error());
    return false;
  }
  return true;
}

int bench_option(int c, const char *arg, int *batch, int *runs, int *warmup, uint64_t *seed) {
  switch (c) {
  case 'b':
    return parse_int_in(arg, 1, 65536, batch)
               ? 0 : usage_error("bench", "--batch wants 1 to 65536, not '%s'", arg);
  case 'r':
    return parse_int_in(arg, 1, 100000, runs)
               ? 0 : usage_error("bench", "--runs wants a positive count, not '%s'", arg);
  case 'w':
    return parse_int_in(arg, 0, 100000, warmup)
               ? 0 : usage_error("bench", "--warmup wants a count, not '%s'", arg);
  case 's':
    return parse_u64(arg, seed)
               ? 0 : usage_error("bench", "--seed wants an unsigned integer, not '%s'", arg);
  default:
    return -1;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double median(double *v, int n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
