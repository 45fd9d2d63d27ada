// Deterministic weights and inputs. Each tensor draws from its own stream, keyed by
// (seed, tensor name), so a tensor's values do not depend on the other layers.
// The generator is SplitMix64 with Box-Muller: simple, portable, reproducible
// bit for bit on every machine (no libm differences: only log, sqrt, cos of doubles,
// rounded once to float).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t stream_key(uint64_t seed, const char *stream) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (const char *p = stream; *p; p++)
    h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
  uint64_t s = seed ^ h;
  return splitmix64(&s);
}

// A uniform double in (0, 1).
static double uniform(uint64_t *state) {
  return ((splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

void fill_normal(float *dst, int64_t n, uint64_t seed, const char *stream, double std) {
  uint64_t state = stream_key(seed, stream);
  for (int64_t i = 0; i < n; i += 2) {
    double r = sqrt(-2.0 * log(uniform(&state)));
    double t = 2.0 * M_PI * uniform(&state);
    dst[i] = (float)(std * r * cos(t));
    if (i + 1 < n)
      dst[i + 1] = (float)(std * r * sin(t));
  }
}

Weights *weights_zeros(const Graph *g) {
  Weights *w = xcalloc(1, sizeof *w);
  w->n = graph_params_list(g, NULL);
  w->info = xcalloc(w->n, sizeof *w->info);
  w->data = xcalloc(w->n, sizeof *w->data);
  graph_params_list(g, w->info);
  for (int i = 0; i < w->n; i++)
    w->data[i] = xcalloc(w->info[i].elems, sizeof(float));
  return w;
}

static int64_t fan_in(const ParamInfo *p) {
  int64_t f = 1;
  for (int d = 1; d < p->rank; d++)
    f *= p->dims[d];
  return f;
}

// A bias tensor: all `rule->bias`, plus N(0, bias_std) noise from the tensor's own
// stream when the rule asks for it; all zero without a rule (the fan-in scheme).
// Noise is drawn only when bias_std > 0, so a rule without it gives the same bytes
// as before bias_std existed.
static void init_bias(float *dst, const ParamInfo *p, uint64_t seed, const InitRule *rule) {
  if (rule && rule->bias_std > 0)
    fill_normal(dst, p->elems, seed, p->name, rule->bias_std);
  else
    memset(dst, 0, p->elems * sizeof *dst);
  float b = rule ? (float)rule->bias : 0.0f;
  for (int64_t j = 0; j < p->elems; j++)
    dst[j] += b;
}

Weights *weights_init(const Graph *g, uint64_t seed, InitScheme scheme) {
  Weights *w = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {
    const ParamInfo *p = &w->info[i];
    const InitRule *rule = &g->nodes[p->node].init;
    if (p->is_bias) {
      init_bias(w->data[i], p, seed, scheme == INIT_SPEC ? rule : NULL);
    } else {
      double std = scheme == INIT_SPEC ? rule->weight_std : sqrt(2.0 / (double)fan_in(p));
      fill_normal(w->data[i], p->elems, seed, p->name, std);
    }
  }
  return w;
}

static bool used_by(const Weights *w, const char *name) {
  for (int j = 0; j < w->n; j++)
    if (!strcmp(name, w->info[j].name))
      return true;
  return false;
}

// A training checkpoint's momenta ("momentum/<name>") are expected extras.
static bool expected_extra(const RtSafetensors *st, const char *name) {
  const char *format = rt_st_meta(st, "format");
  return format && !strncmp(format, "alexc-checkpoint-", 17) && !strncmp(name, "momentum/", 9);
}

// A tensor the network needs is not in the file: name the closest tensor the network
// does not use (a typo such as 'fc.weights'), and the file's unused tensors.
static void report_missing(const RtSafetensors *st, const Weights *w, const char *missing,
                           const Graph *g) {
  const char **strays = xcalloc(st->n + 1, sizeof *strays);
  int n = 0;
  for (int i = 0; i < st->n; i++)
    if (!used_by(w, st->entries[i].name) && !expected_extra(st, st->entries[i].name))
      strays[n++] = st->entries[i].name;
  const char *guess = closest_word(missing, strays, n);
  char list[320] = "";
  for (int i = 0; i < n && strlen(list) < 240; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s'%s'", i ? ", " : "", strays[i]);
  if (strlen(list) >= 240)
    snprintf(list + strlen(list), sizeof list - strlen(list), ", ...");
  char *tail = n ? format(" (the file's tensors that network '%s' does not use: %s)", g->name, list)
                 : xstrdup("");
  if (guess)
    error("%s: tensor '%s' is missing; did you mean '%s'?%s", st->path, missing, guess, tail);
  else
    error("%s: tensor '%s' is missing%s", st->path, missing, tail);
  free(tail);
  free(strays);
}

// Says which tensors were converted to float32 (F16, BF16, F64 are accepted).
static void note_conversions(const RtSafetensors *st, const Weights *w) {
  static const char *const dtypes[] = {"F16", "BF16", "F64"};
  for (int k = 0; k < 3; k++) {
    int count = 0;
    for (int i = 0; i < st->n; i++)
      count += used_by(w, st->entries[i].name) && !strcmp(st->entries[i].dtype, dtypes[k]);
    if (count)
      fprintf(stderr, "alexc: note: %s: converted %d %s tensor%s to float32\n", st->path, count,
              dtypes[k], count == 1 ? "" : "s");
  }
}

Weights *weights_load(const Graph *g, const char *path) {
  RtSafetensors st;
  if (!rt_st_open(path, &st)) {
    error("%s", rt_error());
    return NULL;
  }
  Weights *w = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {
    const ParamInfo *p = &w->info[i];
    if (!rt_st_find(&st, p->name)) {
      report_missing(&st, w, p->name, g);
    } else if (rt_st_read_f32(&st, p->name, p->rank, p->dims, w->data[i])) {
      continue;
    } else {
      error("%s", rt_error());
    }
    weights_free(w);
    rt_st_close(&st);
    return NULL;
  }
  note_conversions(&st, w);
  // A tensor the network does not use usually means the file is for another spec.
  for (int i = 0; i < st.n; i++)
    if (!used_by(w, st.entries[i].name) && !expected_extra(&st, st.entries[i].name))
      fprintf(stderr, "alexc: warning: %s: tensor '%s' is not used by network '%s'\n", path,
              st.entries[i].name, g->name);
  rt_st_close(&st);
  return w;
}

bool weights_save(const Weights *w, const char *path) {
  RtStTensor *t = xcalloc(w->n, sizeof *t);
  for (int i = 0; i < w->n; i++)
    t[i] = (RtStTensor){w->info[i].name, w->info[i].rank, w->info[i].dims, w->data[i]};
  bool ok = rt_st_save(path, t, w->n);
  free(t);
  if (!ok)
    error("%s", rt_error());
  return ok;
}

void weights_free(Weights *w) {
  if (!w)
    return;
  for (int i = 0; i < w->n; i++)
    free(w->data[i]);
  free(w->data);
  free(w->info);
  free(w);
}

const float *weights_get(const Weights *w, const char *layer, bool is_bias) {
  char name[160];
  snprintf(name, sizeof name, "%s.%s", layer, is_bias ? "bias" : "weight");
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, name))
      return w->data[i];
  return NULL;
}
