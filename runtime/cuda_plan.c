// The CUDA plan: building, the artifact file, and the interpreter that runs a plan
// through an RtPlanOps table (the CUDA driver, or the tests' CPU emulator).
//
// The artifact is a text header, readable with `head`, then the modules' bytes:
//
//   alexc-cuda-plan 1
//   network alexnet
//   arch sm_90
//   devices 2
//   io 154587 1000                          input and output elements per image
//   device 0 arena 1234 weights 5678 cubin 91011 ptx 121314
//   slice 0 OFFSET FIRST COUNT TENSOR       weight elements [FIRST, FIRST+COUNT) -> OFFSET
//   input 0 ADDR PITCH HOST_OFFSET HOST_PITCH WIDTH
//   output 0 ADDR PITCH HOST_OFFSET HOST_PITCH WIDTH
//   kernel 0 NAME WORK BLOCK N ADDR...      one line per step, in execution order
//   gemm 0 LAYER M K A LDA B LDB C LDC
//   transfer FROM TO LAYER SRC SRC_PITCH DST DST_PITCH WIDTH
//   end
//   <device 0 cubin><device 0 ptx><device 1 cubin>...
//
// An ADDR is `a:P+F` (arena element P * batch + F) or `w:0+F` (weight element F).
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cuda.h"
#include "internal.h"

#define MAGIC "alexc-cuda-plan 1\n"
#define MAX_LINE 4096

void rt_plan_free(RtPlan *p) {
  for (int d = 0; d < RT_PLAN_MAX_DEVICES; d++) {
    free(p->dev[d].slices);
    free(p->dev[d].cubin);
    free(p->dev[d].ptx);
  }
  free(p->steps);
  memset(p, 0, sizeof *p);
}

static void *grow(void *p, size_t n, size_t size) {
  void *q = realloc(p, n * size);
  if (!q) {
    fprintf(stderr, "alexrt: fatal: out of memory\n");
    abort();
  }
  return q;
}

void rt_plan_add_step(RtPlan *p, const RtStep *s) {
  p->steps = grow(p->steps, p->n_steps + 1, sizeof *p->steps);
  p->steps[p->n_steps++] = *s;
}

void rt_plan_add_slice(RtPlan *p, int device, const RtWeightSlice *s) {
  RtPlanDevice *d = &p->dev[device];
  d->slices = grow(d->slices, d->n_slices + 1, sizeof *d->slices);
  d->slices[d->n_slices++] = *s;
}

// ---------------------------------------------------------------- writing

static void put_addr(FILE *f, RtAddr a) {
  fprintf(f, " %c:%" PRId64 "+%" PRId64, a.space == RT_SPACE_ARENA ? 'a' : 'w', a.per_image,
          a.fixed);
}

static void put_host_copy(FILE *f, const char *what, int d, const RtHostCopy *h) {
  if (!h->width)
    return;
  fprintf(f, "%s %d", what, d);
  put_addr(f, h->dev.addr);
  fprintf(f, " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", h->dev.pitch, h->host_offset,
          h->host_pitch, h->width);
}

bool rt_plan_save(const RtPlan *p, const char *path) {
  char *buf = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&buf, &size);
  if (!f)
    return rt_fail("%s: out of memory", path);
  fputs(MAGIC, f);
  fprintf(f, "network %s\narch %s\ndevices %d\nio %" PRId64 " %" PRId64 "\n", p->network,
          p->arch[0] ? p->arch : "none",
          p->n_devices, p->in_elems, p->out_elems);
  for (int d = 0; d < p->n_devices; d++) {
    const RtPlanDevice *v = &p->dev[d];
    fprintf(f, "device %d arena %" PRId64 " weights %" PRId64 " cubin %zu ptx %zu\n", d, v->arena,
            v->weights, v->cubin_size, v->ptx_size);
    for (int s = 0; s < v->n_slices; s++)
      fprintf(f, "slice %d %" PRId64 " %" PRId64 " %" PRId64 " %s\n", d, v->slices[s].offset,
              v->slices[s].first, v->slices[s].count, v->slices[s].tensor);
    put_host_copy(f, "input", d, &v->input);
    put_host_copy(f, "output", d, &v->output);
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *s = &p->steps[i];
    switch (s->kind) {
    case RT_STEP_KERNEL:
      fprintf(f, "kernel %d %s %" PRId64 " %d %d", s->device, s->name, s->work, s->block,
              s->n_args);
      for (int a = 0; a < s->n_args; a++)
        put_addr(f, s->args[a]);
      break;
    case RT_STEP_GEMM:
      fprintf(f, "gemm %d %s %" PRId64 " %" PRId64, s->device, s->name, s->m, s->k);
      put_addr(f, s->a);
      fprintf(f, " %" PRId64, s->lda);
      put_addr(f, s->b);
      fprintf(f, " %" PRId64, s->ldb);
      put_addr(f, s->c);
      fprintf(f, " %" PRId64, s->ldc);
      break;
    case RT_STEP_TRANSFER:
      fprintf(f, "transfer %d %d %s", s->from, s->device, s->name);
      put_addr(f, s->src.addr);
      fprintf(f, " %" PRId64, s->src.pitch);
      put_addr(f, s->dst.addr);
      fprintf(f, " %" PRId64 " %" PRId64, s->dst.pitch, s->width);
      break;
    }
    fputc('\n', f);
  }
  fputs("end\n", f);
  for (int d = 0; d < p->n_devices; d++) {
    if (p->dev[d].cubin_size)
      fwrite(p->dev[d].cubin, 1, p->dev[d].cubin_size, f);
    if (p->dev[d].ptx_size)
      fwrite(p->dev[d].ptx, 1, p->dev[d].ptx_size, f);
  }
  bool ok = fclose(f) == 0;
  ok = ok && rt_write_file_atomic(path, buf, size);
  free(buf);
  return ok || rt_fail("%s: cannot write the plan", path);
}

// ---------------------------------------------------------------- reading

typedef struct {
  char *tok[RT_PLAN_MAX_ARGS + 16];
  int n;
} Tokens;

static void split(char *line, Tokens *t) {
  t->n = 0;
  char *save = NULL;
  for (char *s = strtok_r(line, " \t", &save); s && t->n < (int)(sizeof t->tok / sizeof *t->tok);
       s = strtok_r(NULL, " \t", &save))
    t->tok[t->n++] = s;
}

static bool num(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  char *end;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || v < lo || v > hi)
    return false;
  *out = v;
  return true;
}

static bool addr(const char *s, RtAddr *a) {
  long long per, fixed;
  char space, extra;
  if (sscanf(s, "%c:%lld+%lld%c", &space, &per, &fixed, &extra) != 3 ||
      (space != 'a' && space != 'w') || per < 0 || fixed < 0 || (space == 'w' && per))
    return false;
  *a = (RtAddr){space == 'a' ? RT_SPACE_ARENA : RT_SPACE_WEIGHTS, per, fixed};
  return true;
}

static bool name(const char *s, char *out) {
  size_t n = strlen(s);
  if (!n || n >= RT_PLAN_NAME)
    return false;
  memcpy(out, s, n + 1);
  return true;
}

#define BIG ((int64_t)1 << 40)

// Parses one header line into p; false if it is malformed.
static bool parse_line(Tokens *t, RtPlan *p, int *devices_seen) {
  const char *w = t->tok[0];
  int64_t v[8];
  if (!strcmp(w, "network") && t->n == 2)
    return name(t->tok[1], p->network);
  if (!strcmp(w, "arch") && t->n == 2 && strlen(t->tok[1]) < sizeof p->arch) {
    strcpy(p->arch, t->tok[1]);
    return true;
  }
  if (!strcmp(w, "devices") && t->n == 2 && num(t->tok[1], 1, RT_PLAN_MAX_DEVICES, &v[0])) {
    p->n_devices = (int)v[0];
    return true;
  }
  if (!strcmp(w, "io") && t->n == 3)
    return num(t->tok[1], 1, BIG, &p->in_elems) && num(t->tok[2], 1, BIG, &p->out_elems);
  if (t->n < 2 || !p->n_devices || !num(t->tok[1], 0, p->n_devices - 1, &v[0]))
    return false;
  int d = (int)v[0];
  RtPlanDevice *dev = &p->dev[d];
  if (!strcmp(w, "device") && t->n == 10 && !strcmp(t->tok[2], "arena") &&
      !strcmp(t->tok[4], "weights") && !strcmp(t->tok[6], "cubin") && !strcmp(t->tok[8], "ptx") &&
      num(t->tok[3], 0, BIG, &dev->arena) && num(t->tok[5], 0, BIG, &dev->weights) &&
      num(t->tok[7], 0, BIG, &v[1]) && num(t->tok[9], 0, BIG, &v[2])) {
    dev->cubin_size = (size_t)v[1];
    dev->ptx_size = (size_t)v[2];
    (*devices_seen)++;
    return true;
  }
  if (!strcmp(w, "slice") && t->n == 6) {
    RtWeightSlice s;
    if (!num(t->tok[2], 0, BIG, &s.offset) || !num(t->tok[3], 0, BIG, &s.first) ||
        !num(t->tok[4], 1, BIG, &s.count) || !name(t->tok[5], s.tensor) ||
        s.offset + s.count > dev->weights)
      return false;
    rt_plan_add_slice(p, d, &s);
    return true;
  }
  if ((!strcmp(w, "input") || !strcmp(w, "output")) && t->n == 7) {
    RtHostCopy *h = w[0] == 'i' ? &dev->input : &dev->output;
    return addr(t->tok[2], &h->dev.addr) && num(t->tok[3], 1, BIG, &h->dev.pitch) &&
           num(t->tok[4], 0, BIG, &h->host_offset) && num(t->tok[5], 1, BIG, &h->host_pitch) &&
           num(t->tok[6], 1, BIG, &h->width);
  }
  RtStep s = {.device = d};
  if (!strcmp(w, "kernel") && t->n >= 6) {
    s.kind = RT_STEP_KERNEL;
    if (!name(t->tok[2], s.name) || !num(t->tok[3], 1, BIG, &s.work) ||
        !num(t->tok[4], 1, 1024, &v[1]) || !num(t->tok[5], 0, RT_PLAN_MAX_ARGS, &v[2]) ||
        t->n != 6 + v[2])
      return false;
    s.block = (int)v[1];
    s.n_args = (int)v[2];
    for (int a = 0; a < s.n_args; a++)
      if (!addr(t->tok[6 + a], &s.args[a]))
        return false;
  } else if (!strcmp(w, "gemm") && t->n == 11) {
    s.kind = RT_STEP_GEMM;
    if (!name(t->tok[2], s.name) || !num(t->tok[3], 1, BIG, &s.m) ||
        !num(t->tok[4], 1, BIG, &s.k) || !addr(t->tok[5], &s.a) ||
        !num(t->tok[6], 1, BIG, &s.lda) || !addr(t->tok[7], &s.b) ||
        !num(t->tok[8], 1, BIG, &s.ldb) || !addr(t->tok[9], &s.c) ||
        !num(t->tok[10], 1, BIG, &s.ldc))
      return false;
  } else if (!strcmp(w, "transfer") && t->n == 9) {
    s.kind = RT_STEP_TRANSFER;
    s.from = d;
    if (!num(t->tok[2], 0, p->n_devices - 1, &v[1]) || !name(t->tok[3], s.name) ||
        !addr(t->tok[4], &s.src.addr) || !num(t->tok[5], 1, BIG, &s.src.pitch) ||
        !addr(t->tok[6], &s.dst.addr) || !num(t->tok[7], 1, BIG, &s.dst.pitch) ||
        !num(t->tok[8], 1, BIG, &s.width))
      return false;
    s.device = (int)v[1];
  } else {
    return false;
  }
  rt_plan_add_step(p, &s);
  return true;
}

static uint8_t *copy_blob(const uint8_t *src, size_t n) {
  if (!n)
    return NULL;
  uint8_t *b = malloc(n);
  if (!b) {
    fprintf(stderr, "alexrt: fatal: out of memory\n");
    abort();
  }
  memcpy(b, src, n);
  return b;
}

bool rt_plan_parse(const uint8_t *data, size_t size, RtPlan *p) {
  memset(p, 0, sizeof *p);
  size_t at = strlen(MAGIC);
  if (size < at || memcmp(data, MAGIC, at) != 0)
    return rt_fail("not an alexc CUDA plan (no '%.*s' header)", (int)at - 1, MAGIC);
  int line_no = 1, devices_seen = 0;
  char line[MAX_LINE];
  for (;;) {
    line_no++;
    const uint8_t *nl = memchr(data + at, '\n', size - at);
    size_t n = nl ? (size_t)(nl - (data + at)) : 0;
    if (!nl || n >= sizeof line) {
      rt_plan_free(p);
      return rt_fail("plan line %d: %s", line_no, nl ? "too long" : "no 'end' line");
    }
    memcpy(line, data + at, n);
    line[n] = 0;
    at += n + 1;
    if (!strcmp(line, "end"))
      break;
    Tokens t;
    split(line, &t);
    if (!t.n || !parse_line(&t, p, &devices_seen)) {
      rt_plan_free(p);
      return rt_fail("plan line %d: malformed", line_no);
    }
  }
  if (!p->n_devices || devices_seen != p->n_devices || !p->in_elems) {
    rt_plan_free(p);
    return rt_fail("plan: incomplete header (devices, io)");
  }
  for (int d = 0; d < p->n_devices; d++) {
    RtPlanDevice *v = &p->dev[d];
    if (v->cubin_size > size - at || v->ptx_size > size - at - v->cubin_size) {
      rt_plan_free(p);
      return rt_fail("plan: device %d's module is cut short", d);
    }
    v->cubin = copy_blob(data + at, v->cubin_size);
    at += v->cubin_size;
    v->ptx = copy_blob(data + at, v->ptx_size);
    at += v->ptx_size;
  }
  if (at != size) {
    rt_plan_free(p);
    return rt_fail("plan: %zu unexpected bytes after the modules", size - at);
  }
  return true;
}

bool rt_plan_load(const char *path, RtPlan *p) {
  uint8_t *data;
  size_t size;
  if (!rt_read_file(path, RT_MAX_FILE, &data, &size))
    return false;
  bool ok = rt_plan_parse(data, size, p);
  free(data);
  if (!ok) {
    char why[512];
    snprintf(why, sizeof why, "%s", rt_error());
    return rt_fail("%s: %s", path, why);
  }
  return true;
}

// ---------------------------------------------------------------- running

#define MAX_GRID ((int64_t)1 << 20)

int64_t rt_plan_grid(const RtStep *s, int batch) {
  int64_t threads = s->work * batch, grid = (threads + s->block - 1) / s->block;
  return grid < MAX_GRID ? grid : MAX_GRID;
}

static uint64_t resolve(const RtPlanOps *ops, int d, RtAddr a, int batch) {
  uint64_t base = a.space == RT_SPACE_ARENA ? ops->arena[d] : ops->weights[d];
  return base + (uint64_t)(a.per_image * batch + a.fixed) * sizeof(float);
}

static uint64_t host(const float *p, int64_t offset) { return (uint64_t)(uintptr_t)(p + offset); }

bool rt_plan_run(const RtPlan *p, const RtPlanOps *ops, const float *x, int batch, float *y) {
  for (int d = 0; d < p->n_devices; d++) {
    const RtHostCopy *in = &p->dev[d].input;
    if (in->width && !ops->copy(ops->ctx, d, resolve(ops, d, in->dev.addr, batch), in->dev.pitch,
                                -1, host(x, in->host_offset), in->host_pitch, in->width, batch))
      return false;
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *s = &p->steps[i];
    int d = s->device;
    bool ok = true;
    switch (s->kind) {
    case RT_STEP_KERNEL: {
      uint64_t args[RT_PLAN_MAX_ARGS];
      for (int a = 0; a < s->n_args; a++)
        args[a] = resolve(ops, d, s->args[a], batch);
      ok = ops->launch(ops->ctx, d, s->name, rt_plan_grid(s, batch), s->block, args, s->n_args,
                       batch);
      break;
    }
    case RT_STEP_GEMM:
      ok = ops->gemm(ops->ctx, d, s->m, batch, s->k, resolve(ops, d, s->a, batch), s->lda,
                     resolve(ops, d, s->b, batch), s->ldb, resolve(ops, d, s->c, batch), s->ldc);
      break;
    case RT_STEP_TRANSFER:
      ok = ops->copy(ops->ctx, d, resolve(ops, d, s->dst.addr, batch), s->dst.pitch, s->from,
                     resolve(ops, s->from, s->src.addr, batch), s->src.pitch, s->width, batch);
      break;
    }
    if (!ok)
      return false;
  }
  for (int d = 0; d < p->n_devices; d++) {
    const RtHostCopy *out = &p->dev[d].output;
    if (out->width && !ops->copy(ops->ctx, -1, host(y, out->host_offset), out->host_pitch, d,
                                 resolve(ops, d, out->dev.addr, batch), out->dev.pitch,
                                 out->width, batch))
      return false;
  }
  return true;
}
