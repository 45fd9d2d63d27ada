// Checkpoints: one safetensors file that is also a weights file.
//
//   "conv1.weight", "conv1.bias", ...     the parameters, under their usual names, so
//                                         `alexc run --weights CKPT` takes a checkpoint
//   "momentum/conv1.weight", ...          the SGD momenta, same shapes
//   "__metadata__" (string -> string):
//     format       "alexc-checkpoint-1"
//     hash         FNV-1a 64 of the whole file, 16 lowercase hex digits, computed with
//                  these 16 digits read as '0' (so it covers the header and the data)
//     step, epoch, epoch_step, bad_epochs, hits, seen   decimal integers
//     seed         decimal, 64 bits
//     lr, best_metric, loss_sum             C99 hex floats ("%a"): resume is bit-exact
//
// Written atomically (rt_write_pieces_atomic: temporary file in the same directory,
// fsync, rename, fsync of the directory): a crash or kill -9 at any moment leaves the
// old checkpoint or the new one, never a mix. Read back, any single changed byte fails
// the hash, and the file is refused with "checkpoint PATH is corrupt: ...".
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../alexc.h"

#define FORMAT "alexc-checkpoint-1"
#define MOMENTUM "momentum/"
#define HASH_DIGITS 16
#define HASH_NEEDLE "\"hash\":\""  // how cJSON writes the key, right before the digits

// FNV-1a 64 of buf with the hash digits at `at` taken as '0'.
static uint64_t file_hash(const uint8_t *buf, size_t size, size_t at) {
  static const char zeros[] = "0000000000000000";
  uint64_t h = fnv1a(FNV_OFFSET, buf, at);
  h = fnv1a(h, zeros, HASH_DIGITS);
  return fnv1a(h, buf + at + HASH_DIGITS, size - at - HASH_DIGITS);
}

// Where the hash digits start in the header (bytes [8, 8 + hlen) of the file): the
// one place HASH_NEEDLE occurs there. 0 when it is absent or occurs twice.
static size_t find_hash(const uint8_t *buf, size_t header_end) {
  size_t k = strlen(HASH_NEEDLE), at = 0;
  for (size_t i = 8; i + k + HASH_DIGITS <= header_end; i++)
    if (!memcmp(buf + i, HASH_NEEDLE, k)) {
      if (at)
        return 0;
      at = i + k;
    }
  return at;
}

// A message naming the checkpoint: "checkpoint PATH <what>: <details>".
static bool fail(const char *path, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(const char *path, const char *what, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  error("checkpoint %s %s: %s", path, what, msg);
  return false;
}

// rt_error() without its leading "PATH: " (the message names the file already).
static const char *rt_detail(const char *path) {
  const char *e = rt_error();
  size_t n = strlen(path);
  return !strncmp(e, path, n) && !strncmp(e + n, ": ", 2) ? e + n + 2 : e;
}

bool checkpoint_save(const char *path, const TrainState *s) {
  const Weights *w = s->w, *v = s->v;
  if (!w || !v || v->n != w->n) {
    error("checkpoint %s: the training state has no %s", path,
          !w ? "weights" : "momenta matching its weights");
    return false;
  }
  for (int i = 0; i < w->n; i++)
    if (v->info[i].elems != w->info[i].elems || strcmp(v->info[i].name, w->info[i].name)) {
      error("checkpoint %s: momentum %d ('%s') does not match weight '%s'", path, i,
            v->info[i].name, w->info[i].name);
      return false;
    }

  int n = 2 * w->n;
  RtStTensor *t = xcalloc(n ? n : 1, sizeof *t);
  char **names = xcalloc(w->n ? w->n : 1, sizeof *names);
  for (int i = 0; i < w->n; i++) {
    const ParamInfo *p = &w->info[i];
    names[i] = format(MOMENTUM "%s", p->name);
    t[i] = (RtStTensor){p->name, p->rank, p->dims, w->data[i]};
    t[w->n + i] = (RtStTensor){names[i], p->rank, p->dims, v->data[i]};
  }

  char step[32], epoch[32], epoch_step[32], seed[32], lr[64], best[64], bad[32], loss_sum[64],
      hits[32], seen[32];
  snprintf(step, sizeof step, "%lld", (long long)s->step);
  snprintf(epoch, sizeof epoch, "%d", s->epoch);
  snprintf(epoch_step, sizeof epoch_step, "%lld", (long long)s->epoch_step);
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->seed);
  snprintf(lr, sizeof lr, "%a", s->lr);
  snprintf(best, sizeof best, "%a", s->best_metric);
  snprintf(bad, sizeof bad, "%d", s->bad_epochs);
  snprintf(loss_sum, sizeof loss_sum, "%a", s->loss_sum);
  snprintf(hits, sizeof hits, "%lld", (long long)s->hits);
  snprintf(seen, sizeof seen, "%lld", (long long)s->seen);
  const char *keys[] = {"format", "hash",        "step",       "epoch",    "epoch_step", "seed",
                        "lr",     "best_metric", "bad_epochs", "loss_sum", "hits",       "seen"};
  const char *values[] = {FORMAT, "0000000000000000", step, epoch,    epoch_step, seed,
                          lr,     best,               bad,  loss_sum, hits,       seen};
  int n_meta = (int)(sizeof keys / sizeof *keys);

  // The file is streamed from the tensors (never assembled in memory: AlexNet's would
  // take twice its 240 MB of weights). The header holds the hash as zeros, so hashing
  // it and then each tensor's data in order is file_hash() of the file to be written.
  uint8_t *header = NULL;
  size_t size = 0;
  bool ok = rt_st_header(path, t, n, keys, values, n_meta, &header, &size);
  size_t at = ok ? find_hash(header, size) : 0;
  if (!ok) {
    error("%s", rt_error());
  } else if (!at) {  // cannot happen: the header is ours
    error("checkpoint %s: internal error: no place for the hash in the header", path);
    ok = false;
  }
  RtPiece *pieces = xcalloc(n + 1, sizeof *pieces);
  uint64_t h = fnv1a(FNV_OFFSET, header, ok ? size : 0);
  for (int i = 0; ok && i < n; i++) {
    pieces[i + 1] = (RtPiece){t[i].data, (size_t)w->info[i % w->n].elems * sizeof(float)};
    h = fnv1a(h, pieces[i + 1].data, pieces[i + 1].size);
  }
  if (ok) {
    char digits[HASH_DIGITS + 1];
    snprintf(digits, sizeof digits, "%016llx", (unsigned long long)h);
    memcpy(header + at, digits, HASH_DIGITS);
    pieces[0] = (RtPiece){header, size};
    if (!(ok = rt_write_pieces_atomic(path, pieces, n + 1)))
      error("cannot write checkpoint %s", rt_error());
  }
  free(pieces);
  free(header);
  for (int i = 0; i < w->n; i++)
    free(names[i]);
  free(names);
  free(t);
  return ok;
}

// ---------------------------------------------------------------- loading

// The metadata value `key` as an integer in [lo, hi].
static bool meta_int(const char *path, const RtSafetensors *st, const char *key, int64_t lo,
                     int64_t hi, int64_t *out) {
  const char *v = rt_st_meta(st, key);
  if (!v)
    return fail(path, "has bad metadata", "no \"%s\"", key);
  const char *d = v[0] == '-' ? v + 1 : v;
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (*d < '0' || *d > '9' || *end || errno || x < lo || x > hi)
    return fail(path, "has bad metadata", "\"%s\" is '%s', not an integer in [%lld, %lld]", key,
                v, (long long)lo, (long long)hi);
  *out = x;
  return true;
}

static bool meta_u64(const char *path, const RtSafetensors *st, const char *key, uint64_t *out) {
  const char *v = rt_st_meta(st, key);
  if (!v)
    return fail(path, "has bad metadata", "no \"%s\"", key);
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (*v < '0' || *v > '9' || *end || errno)
    return fail(path, "has bad metadata", "\"%s\" is '%s', not a 64-bit unsigned integer", key,
                v);
  *out = x;
  return true;
}

static bool meta_double(const char *path, const RtSafetensors *st, const char *key, bool finite,
                        double *out) {
  const char *v = rt_st_meta(st, key);
  if (!v)
    return fail(path, "has bad metadata", "no \"%s\"", key);
  char *end;
  double x = strtod(v, &end);
  if (!*v || *end || (*v != '-' && *v != 'i' && *v != 'n' && (*v < '0' || *v > '9')) ||
      (finite && !isfinite(x)))
    return fail(path, "has bad metadata", "\"%s\" is '%s', not a%s number", key, v,
                finite ? " finite" : "");
  *out = x;
  return true;
}

// Checks the format and the hash of an open file.
static bool check_file(const char *path, const RtSafetensors *st) {
  const char *format = rt_st_meta(st, "format"), *stored = rt_st_meta(st, "hash");
  if (!format && !stored)
    return fail(path, "is not an alexc checkpoint",
                "its metadata has no \"format\" (a plain weights file?)");
  if (!stored)
    return fail(path, "is corrupt", "its metadata has no \"hash\"");
  size_t header_end = (size_t)(st->data - st->file);
  size_t at = find_hash(st->file, header_end);
  bool hex = strlen(stored) == HASH_DIGITS;
  for (int i = 0; hex && i < HASH_DIGITS; i++)
    hex = (stored[i] >= '0' && stored[i] <= '9') || (stored[i] >= 'a' && stored[i] <= 'f');
  if (!hex || !at || memcmp(st->file + at, stored, HASH_DIGITS))
    return fail(path, "is corrupt", "its content hash '%s' is malformed", stored);
  char digits[HASH_DIGITS + 1];
  snprintf(digits, sizeof digits, "%016llx",
           (unsigned long long)file_hash(st->file, st->file_size, at));
  if (memcmp(digits, stored, HASH_DIGITS))
    return fail(path, "is corrupt", "content hash mismatch (stored %s, computed %s)", stored,
                digits);
  if (!format || strcmp(format, FORMAT))
    return fail(path, "has an unsupported format", "'%s' (this alexc reads %s)",
                format ? format : "(none)", FORMAT);
  return true;
}

static Weights *alloc_like(const Graph *g) {
  Weights *w = xcalloc(1, sizeof *w);
  w->n = graph_params_list(g, NULL);
  w->info = xcalloc(w->n ? w->n : 1, sizeof *w->info);
  w->data = xcalloc(w->n ? w->n : 1, sizeof *w->data);
  graph_params_list(g, w->info);
  for (int i = 0; i < w->n; i++)
    w->data[i] = xcalloc(w->info[i].elems ? w->info[i].elems : 1, sizeof(float));
  return w;
}

// Reads the parameters (prefix "") or the momenta (prefix MOMENTUM) into w.
static bool read_tensors(const char *path, const Graph *g, const RtSafetensors *st,
                         const char *prefix, Weights *w) {
  for (int i = 0; i < w->n; i++) {
    const ParamInfo *p = &w->info[i];
    char name[sizeof p->name + 16];
    snprintf(name, sizeof name, "%s%s", prefix, p->name);
    if (!rt_st_read_f32(st, name, p->rank, p->dims, w->data[i])) {
      char what[300];
      snprintf(what, sizeof what, "does not fit network '%s'", g->name);
      return fail(path, what, "%s", rt_detail(path));
    }
  }
  return true;
}

bool checkpoint_load(const char *path, const Graph *g, TrainState *s) {
  struct stat sb;
  if (stat(path, &sb) != 0) {
    error("cannot read checkpoint %s: %s", path, strerror(errno));
    return false;
  }
  if (!S_ISREG(sb.st_mode)) {
    error("checkpoint %s is not a regular file", path);
    return false;
  }
  RtSafetensors st;
  if (!rt_st_open(path, &st))
    return fail(path, "is corrupt", "%s", rt_detail(path));

  TrainState t = {0};
  int64_t step, epoch, epoch_step, bad, hits, seen;
  bool ok = check_file(path, &st) && meta_int(path, &st, "step", 0, INT64_MAX, &step) &&
            meta_int(path, &st, "epoch", 0, INT32_MAX, &epoch) &&
            meta_int(path, &st, "epoch_step", 0, INT64_MAX, &epoch_step) &&
            meta_int(path, &st, "bad_epochs", 0, INT32_MAX, &bad) &&
            meta_u64(path, &st, "seed", &t.seed) && meta_double(path, &st, "lr", true, &t.lr) &&
            meta_double(path, &st, "best_metric", false, &t.best_metric) &&
            meta_double(path, &st, "loss_sum", false, &t.loss_sum) &&
            meta_int(path, &st, "hits", 0, INT64_MAX, &hits) &&
            meta_int(path, &st, "seen", 0, INT64_MAX, &seen);
  if (ok) {
    t.w = alloc_like(g);
    t.v = alloc_like(g);
    ok = read_tensors(path, g, &st, "", t.w) && read_tensors(path, g, &st, MOMENTUM, t.v);
  }
  // Every tensor must be one the network has: a superset is another spec's checkpoint.
  for (int i = 0; ok && i < st.n; i++) {
    const char *name = st.entries[i].name;
    if (!strncmp(name, MOMENTUM, strlen(MOMENTUM)))
      name += strlen(MOMENTUM);
    bool known = false;
    for (int j = 0; j < t.w->n && !known; j++)
      known = !strcmp(name, t.w->info[j].name);
    if (!known) {
      char what[300];
      snprintf(what, sizeof what, "does not fit network '%s'", g->name);
      ok = fail(path, what, "it holds tensor '%s', which the network does not have",
                st.entries[i].name);
    }
  }
  rt_st_close(&st);
  if (!ok) {
    weights_free(t.w);
    weights_free(t.v);
    return false;
  }
  t.step = step;
  t.epoch = (int)epoch;
  t.epoch_step = epoch_step;
  t.bad_epochs = (int)bad;
  t.hits = hits;
  t.seen = seen;
  *s = t;
  return true;
}
