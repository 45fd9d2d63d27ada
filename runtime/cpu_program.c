// The CPU program as text, the form a compiled model carries it in (a .so or a
// standalone executable holds it as a constant beside the kernels). One line a record:
//
//   alexc-cpu-program 1
//   isa avx512                      what the host must have to run the kernels
//   input 3 227 227                 per-image input shape (C, H, W)
//   output 1000 1 1                 per-image shape of each output, in order
//   devices 1 1234567               logical devices, then each arena (floats per image)
//   pack conv1.weight conv1.bias f32 4 96 3 11 11 363 32 3 0:32 32:32 64:32
//        weight, bias ('-': none), f32 or bf16, the weight's rank and shape, k (the
//        shape's elements per output channel), width, blocks, each block's first
//        channel and count (within the shape)
//   run NODE DEVICE ITEMS PER_IMAGE SCRATCH PACK                (PACK -1: none)
//   copy NODE DEV OUT OFF STRIDE REL DEV OUT OFF STRIDE REL N
//
// Kernels are not named here: the model holds a table of them in `run` order. The
// parser bounds every count and checks every index before the executor trusts it.
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cpu.h"
#include "internal.h"

#define MAX_STEPS 100000
#define MAX_PACKS 10000
#define MAX_BLOCKS 1000000

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
    va_end(ap);
    if (*buf && *len + (size_t)n < *cap) {
      *len += (size_t)n;
      return;
    }
    *cap = (*cap + (size_t)n + 1) * 2;
    *buf = realloc(*buf, *cap);
    if (!*buf)
      abort();  // out of memory while writing a model: nothing sensible to do
  }
}

char *rt_cpu_program_text(const RtCpuProgram *p, const char *isa, const int64_t in_shape[3],
                          const int64_t (*out_shapes)[3]) {
  char *b = NULL;
  size_t len = 0, cap = 0;
  append(&b, &len, &cap, "alexc-cpu-program 1\nisa %s\ninput %lld %lld %lld\n", isa,
         (long long)in_shape[0], (long long)in_shape[1], (long long)in_shape[2]);
  for (int k = 0; k < p->n_outputs; k++)
    append(&b, &len, &cap, "output %lld %lld %lld\n", (long long)out_shapes[k][0],
           (long long)out_shapes[k][1], (long long)out_shapes[k][2]);
  append(&b, &len, &cap, "devices %d", p->n_devices);
  for (int d = 0; d < p->n_devices; d++)
    append(&b, &len, &cap, " %lld", (long long)p->arena[d]);
  append(&b, &len, &cap, "\n");
  for (int i = 0; i < p->n_packs; i++) {
    const RtCpuPack *k = &p->packs[i];
    append(&b, &len, &cap, "pack %s %s %s %d", k->weight, k->bias[0] ? k->bias : "-",
           k->bf16 ? "bf16" : "f32", k->rank);
    for (int d = 0; d < k->rank; d++)
      append(&b, &len, &cap, " %lld", (long long)k->dims[d]);
    append(&b, &len, &cap, " %lld %d %d", (long long)k->k, k->width, k->blocks);
    for (int j = 0; j < k->blocks; j++)
      append(&b, &len, &cap, " %lld:%d", (long long)k->oc_begin[j], k->n_oc[j]);
    append(&b, &len, &cap, "\n");
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtCpuStep *s = &p->steps[i];
    if (s->kind == RT_CPU_RUN)
      append(&b, &len, &cap, "run %d %d %lld %d %lld %d\n", s->node, s->device,
             (long long)s->items, s->per_image, (long long)s->scratch, s->pack);
    else
      append(&b, &len, &cap, "copy %d %d %d %lld %lld %lld %d %d %lld %lld %lld %lld\n", s->node,
             s->from.dev, s->from.out, (long long)s->from.off, (long long)s->from.stride,
             (long long)s->from.rel, s->to.dev, s->to.out, (long long)s->to.off,
             (long long)s->to.stride, (long long)s->to.rel, (long long)s->n);
  }
  return b;
}

// ---------------------------------------------------------------- parsing

static bool place_ok(const RtCpuProgram *p, const RtCpuPlace *pl, bool source, int64_t n) {
  if (pl->dev >= p->n_devices || pl->dev < -1 || pl->off < 0 || pl->stride < 0 || pl->rel < 0)
    return false;
  if (pl->dev >= 0)  // a buffer of `stride` floats per image inside the arena
    return pl->rel + n <= pl->stride && pl->off + pl->stride <= p->arena[pl->dev];
  if (source)
    return pl->stride == p->in_elems && pl->rel + n <= p->in_elems;
  return pl->out >= 0 && pl->out < p->n_outputs && pl->stride == p->out_elems[pl->out] &&
         pl->rel + n <= pl->stride;
}

bool rt_cpu_program_parse(const char *text, size_t size, RtCpuProgram *p, char *isa,
                          size_t isa_size, int64_t in_shape[3], int64_t (*out_shapes)[3],
                          int max_outputs) {
  *p = (RtCpuProgram){0};
  char *copy = strndup(text, size), *save = NULL;
  if (!copy)
    return rt_fail("out of memory");
  int line_no = 0, cap_steps = 0;
  bool ok = true, header = false;
  for (char *line = strtok_r(copy, "\n", &save); ok && line; line = strtok_r(NULL, "\n", &save)) {
    line_no++;
    char word[32];
    int at = 0;
    if (sscanf(line, "%31s%n", word, &at) != 1)
      continue;
    const char *rest = line + at;
    if (!header) {
      ok = header = !strcmp(word, "alexc-cpu-program") && atoi(rest) == 1;
      if (!ok)
        rt_fail("not an alexc CPU program (format 1)");
      continue;
    }
    if (!strcmp(word, "isa")) {
      ok = sscanf(rest, " %15s", isa) == 1 && isa_size >= 16;
    } else if (!strcmp(word, "input")) {
      long long c, h, w;
      ok = sscanf(rest, "%lld %lld %lld", &c, &h, &w) == 3 && c > 0 && h > 0 && w > 0 &&
           c * h * w < (1LL << 31);
      in_shape[0] = c, in_shape[1] = h, in_shape[2] = w;
      p->in_elems = c * h * w;
    } else if (!strcmp(word, "output")) {
      long long c, h, w;
      ok = p->n_outputs < max_outputs && sscanf(rest, "%lld %lld %lld", &c, &h, &w) == 3 &&
           c > 0 && h > 0 && w > 0 && c * h * w < (1LL << 31);
      if (ok) {
        out_shapes[p->n_outputs][0] = c, out_shapes[p->n_outputs][1] = h;
        out_shapes[p->n_outputs][2] = w;
        p->out_elems = realloc(p->out_elems, (p->n_outputs + 1) * sizeof *p->out_elems);
        ok = p->out_elems != NULL;
        if (ok)
          p->out_elems[p->n_outputs++] = c * h * w;
      }
    } else if (!strcmp(word, "devices")) {
      int n = 0, used = 0;
      ok = sscanf(rest, "%d%n", &p->n_devices, &n) == 1 && p->n_devices >= 1 && p->n_devices <= 8;
      for (int d = 0; ok && d < p->n_devices; d++, n += used) {
        long long a;
        ok = sscanf(rest + n, "%lld%n", &a, &used) == 1 && a >= 0 && a < (1LL << 34);
        p->arena[d] = a;
      }
    } else if (!strcmp(word, "pack")) {
      ok = p->n_packs < MAX_PACKS;
      RtCpuPack k = {0};
      long long kk;
      char type[8];
      int n = 0, used = 0;
      ok = ok && sscanf(rest, "%159s %159s %7s %d%n", k.weight, k.bias, type, &k.rank, &n) == 4 &&
           k.rank >= 1 && k.rank <= 4 && (!strcmp(type, "f32") || !strcmp(type, "bf16"));
      int64_t per_row = 1;  // elements of the weight per output channel: must be k
      for (int d = 0; ok && d < k.rank; d++, n += used) {
        long long v;
        ok = sscanf(rest + n, " %lld%n", &v, &used) == 1 && v > 0 && v < (1LL << 31);
        k.dims[d] = v;
        if (ok && d > 0 && (per_row *= v) >= (1LL << 31))
          ok = false;
      }
      int more = 0;
      ok = ok && sscanf(rest + n, " %lld %d %d%n", &kk, &k.width, &k.blocks, &more) == 3 &&
           kk == per_row && k.width > 0 && k.width <= 64 && k.blocks > 0 &&
           k.blocks <= MAX_BLOCKS;
      n += more;
      k.k = kk;
      k.bf16 = ok && !strcmp(type, "bf16");
      if (ok && !strcmp(k.bias, "-"))
        k.bias[0] = 0;
      if (ok) {
        k.oc_begin = calloc(k.blocks, sizeof *k.oc_begin);
        k.n_oc = calloc(k.blocks, sizeof *k.n_oc);
        ok = k.oc_begin && k.n_oc;
      }
      for (int j = 0; ok && j < k.blocks; j++, n += used) {
        long long oc;
        ok = sscanf(rest + n, " %lld:%d%n", &oc, &k.n_oc[j], &used) == 2 && oc >= 0 &&
             k.n_oc[j] >= 1 && k.n_oc[j] <= k.width && oc + k.n_oc[j] <= k.dims[0];
        k.oc_begin[j] = oc;
      }
      p->packs = ok ? realloc(p->packs, (p->n_packs + 1) * sizeof *p->packs) : p->packs;
      if (ok && p->packs)
        p->packs[p->n_packs++] = k;
      else {
        free(k.oc_begin);
        free(k.n_oc);
        ok = false;
      }
    } else if (!strcmp(word, "run") || !strcmp(word, "copy")) {
      ok = p->n_steps < MAX_STEPS;
      if (ok && p->n_steps == cap_steps) {
        cap_steps = cap_steps ? 2 * cap_steps : 64;
        RtCpuStep *grown = realloc(p->steps, cap_steps * sizeof *p->steps);
        ok = grown != NULL;
        if (ok)
          p->steps = grown;
      }
      RtCpuStep s = {.pack = -1};
      if (ok && word[0] == 'r') {
        long long items, scratch;
        int per_image;
        s.kind = RT_CPU_RUN;
        ok = sscanf(rest, "%d %d %lld %d %lld %d", &s.node, &s.device, &items, &per_image,
                    &scratch, &s.pack) == 6 && s.device >= 0 && s.device < p->n_devices &&
             items >= 1 && items < (1LL << 31) && scratch >= 0 && scratch < (1LL << 31) &&
             s.pack >= -1 && s.pack < p->n_packs;
        s.items = items, s.scratch = scratch, s.per_image = per_image != 0;
      } else if (ok) {
        long long v[8];
        s.kind = RT_CPU_COPY;
        ok = sscanf(rest, "%d %d %d %lld %lld %lld %d %d %lld %lld %lld %lld", &s.node,
                    &s.from.dev, &s.from.out, &v[0], &v[1], &v[2], &s.to.dev, &s.to.out, &v[3],
                    &v[4], &v[5], &v[6]) == 12 && v[6] >= 0;
        s.from.off = v[0], s.from.stride = v[1], s.from.rel = v[2];
        s.to.off = v[3], s.to.stride = v[4], s.to.rel = v[5], s.n = v[6];
        ok = ok && place_ok(p, &s.from, true, s.n) && place_ok(p, &s.to, false, s.n);
      }
      if (ok)
        p->steps[p->n_steps++] = s;
    } else {
      ok = false;
    }
    if (!ok)
      rt_fail("CPU program line %d: malformed '%s' record", line_no, word);
  }
  free(copy);
  if (ok && (!header || !p->n_devices || !p->in_elems || !p->n_outputs))
    ok = rt_fail("CPU program is incomplete (no header, devices, input or output)");
  if (!ok)
    rt_cpu_program_free(p);
  return ok;
}

void rt_cpu_program_free(RtCpuProgram *p) {
  for (int i = 0; i < p->n_packs; i++) {
    free(p->packs[i].oc_begin);
    free(p->packs[i].n_oc);
  }
  free(p->packs);
  free(p->steps);
  free(p->out_elems);
  *p = (RtCpuProgram){0};
}
