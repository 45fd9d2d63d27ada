// The CUDA plan: building, the artifact file, and the interpreter that runs a plan
// through an RtPlanOps table (the CUDA driver, or the tests' CPU emulator).
//
// The artifact is a text header, readable with `head`, then the modules' bytes:
//
//   alexc-cuda-plan 7
//   network alexnet
//   arch sm_90
//   precision fp32                          fp32, tf32 or bf16: the GEMMs' arithmetic
//   devices 2
//   io 3x227x227 1000                       input and output shapes per image
//   tensor conv1.weight 96x3x11x11          a weight tensor the slices read, its shape
//   device 0 arena 1234 weights 5678 scratch 4321 chunk 46 cubin 91011 ptx 121314
//   slice 0 OFFSET FIRST COUNT TYPE TENSOR  weight elements [FIRST, FIRST+COUNT) -> OFFSET,
//                                           TYPE f32, or bf16 (two per float slot)
//   input 0 ADDR PITCH HOST_OFFSET HOST_PITCH WIDTH
//   output 0 ADDR PITCH HOST_OFFSET HOST_PITCH WIDTH
//   kernel 0 NAME LAYER WORK BLOCK SMEM N ADDR...  one line per step, in execution order;
//                                           SMEM: bytes of dynamic shared memory per block
//   gemm 0 LAYER PREC TA TB M N K A LDA B LDB C LDC EPILOGUE [BIAS]
//   chunk 0 LAYER IMAGES STEPS
//   transfer FROM TO LAYER SRC SRC_PITCH DST DST_PITCH WIDTH
//   allreduce 0 LAYER ADDR COUNT            COUNT floats at ADDR summed over the ranks
//   end
//   <device 0 cubin><device 0 ptx><device 1 cubin>...
//
// An ADDR is `a:P+F` (arena element P * batch + F), `a:P+F@I` (the same plus I times
// the chunk's first image), `s:P+F` (scratch element P * chunk images + F) or `w:0+F`
// (weight element F).
//
// `gemm` is cublasSgemm(TA, TB, M, N, K, 1, A, LDA, B, LDB, 0, C, LDC), column-major,
// in precision PREC (fp32, tf32, or bf16: A and B in bfloat16), TA and TB `N` or `T`,
// then EPILOGUE: `plain`, or `bias` or `bias_relu` followed by the BIAS address (M floats,
// added to each column of C, then the ReLU: cublasLt's epilogues, which let an fc layer
// with its bias and ReLU be one call). Each of M N K LDA LDB LDC is written `Pb+F`: P times the batch
// (the chunk's image count inside a chunk) plus F. The fc layers use `T N 0b+OUT 1b+0
// 0b+IN`; a conv with --conv gemm uses `N N PIXb+0 0b+KERNELS 0b+IN*K*K`, the A matrix
// its im2col columns in scratch (rows: pixels of the chunk's images, columns: input
// channel x kernel row x kernel column), B its weights as stored (out x in*K*K
// row-major), C the conv output in scratch, channel-major (channel, image, pixel).
//
// `chunk` runs the next STEPS steps (kernels and gemms on its device, no transfers)
// once per chunk of at most IMAGES images of the batch (IMAGES <= the device's
// `chunk`): kernels get the chunk's image count as their batch, `@I` addresses see the
// chunk's first image, and scratch and `b` dimensions scale with the chunk's images.
// Each device's scratch buffer holds `scratch * min(chunk, batch)` elements; the
// runtime allocates it once per batch size, like the arena. A conv with --conv gemm
// is one chunk: the im2col kernel, a gemm per group the device computes, and the
// epilogue kernel (bias, then the fused ReLU, LRN and pool) writing the node's output.
#define _GNU_SOURCE
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cuda.h"
#include "internal.h"

#define MAGIC_ANY "alexc-cuda-plan "  // then the format: an old plan is not junk
#define FORMAT "7"  // 7: allreduce steps
#define MAGIC MAGIC_ANY FORMAT "\n"
#define MAX_LINE 4096
#define BIG ((int64_t)1 << 40)
#define BIG_DIM ((int64_t)1 << 31)

static const char *const PRECISIONS[] = {"fp32", "tf32", "bf16"};
static const char *const EPILOGUES[] = {"plain", "bias", "bias_relu"};  // by RtGemmEpilogue

const char *rt_precision_name(RtPrecision p) {
  return (unsigned)p < 3 ? PRECISIONS[p] : "?";
}

bool rt_parse_precision(const char *name, RtPrecision *out) {
  for (int i = 0; i < 3; i++)
    if (!strcmp(name, PRECISIONS[i])) {
      *out = (RtPrecision)i;
      return true;
    }
  return false;
}

int64_t rt_shape_elems(RtShape s) {
  int64_t n = 1;
  for (int i = 0; i < s.rank; i++)
    n *= s.dims[i];
  return n;
}

void rt_shape_str(RtShape s, char *buf, size_t size) {
  size_t n = 0;
  buf[0] = 0;
  for (int i = 0; i < s.rank && n < size; i++)
    n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64, i ? "x" : "", s.dims[i]);
}

// float -> bfloat16 (its top 16 bits), rounded to nearest even; NaN stays NaN.
static uint16_t float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: keep it a (quiet) NaN
    return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

int64_t rt_slice_slots(const RtWeightSlice *s) { return s->bf16 ? (s->count + 1) / 2 : s->count; }

void rt_slice_pack(const RtWeightSlice *s, const float *tensor, void *dst) {
  const float *src = tensor + s->first;
  if (!s->bf16) {
    memcpy(dst, src, s->count * sizeof(float));
    return;
  }
  uint16_t *h = dst;
  for (int64_t i = 0; i < s->count; i++)
    h[i] = float_to_bf16(src[i]);
  if (s->count % 2)
    h[s->count] = 0;  // the last slot's unused half
}

void rt_plan_free(RtPlan *p) {
  for (int d = 0; d < RT_PLAN_MAX_DEVICES; d++) {
    free(p->dev[d].slices);
    free(p->dev[d].cubin);
    free(p->dev[d].ptx);
  }
  free(p->steps);
  free(p->tensors);
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

void rt_plan_add_tensor(RtPlan *p, const char *name, RtShape shape) {
  p->tensors = grow(p->tensors, p->n_tensors + 1, sizeof *p->tensors);
  RtPlanTensor *t = &p->tensors[p->n_tensors++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->shape = shape;
}

const RtPlanTensor *rt_plan_tensor(const RtPlan *p, const char *name) {
  for (int i = 0; i < p->n_tensors; i++)
    if (!strcmp(p->tensors[i].name, name))
      return &p->tensors[i];
  return NULL;
}

// ---------------------------------------------------------------- writing

static void put_addr(FILE *f, RtAddr a) {
  fprintf(f, " %c:%" PRId64 "+%" PRId64,
          a.space == RT_SPACE_ARENA ? 'a' : a.space == RT_SPACE_SCRATCH ? 's' : 'w', a.per_image,
          a.fixed);
  if (a.per_first)
    fprintf(f, "@%" PRId64, a.per_first);
}

static void put_dim(FILE *f, RtDim d) {
  fprintf(f, " %" PRId64 "b+%" PRId64, d.per_image, d.fixed);
}

static void put_host_copy(FILE *f, const char *what, int d, const RtHostCopy *h) {
  if (!h->width)
    return;
  fprintf(f, "%s %d", what, d);
  put_addr(f, h->dev.addr);
  fprintf(f, " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", h->dev.pitch, h->host_offset,
          h->host_pitch, h->width);
}

bool rt_plan_serialize(const RtPlan *p, uint8_t **data, size_t *data_size) {
  char *buf = NULL;
  size_t size = 0;
  *data = NULL;
  *data_size = 0;
  FILE *f = open_memstream(&buf, &size);
  if (!f)
    return rt_fail("plan: out of memory");
  fputs(MAGIC, f);
  char in[64], out[64];
  rt_shape_str(p->in, in, sizeof in);
  rt_shape_str(p->out, out, sizeof out);
  fprintf(f, "network %s\narch %s\nprecision %s\ndevices %d\nio %s %s\n", p->network,
          p->arch[0] ? p->arch : "none", rt_precision_name(p->precision), p->n_devices, in,
          out);
  for (int i = 0; i < p->n_tensors; i++) {
    char shape[96];
    rt_shape_str(p->tensors[i].shape, shape, sizeof shape);
    fprintf(f, "tensor %s %s\n", p->tensors[i].name, shape);
  }
  for (int d = 0; d < p->n_devices; d++) {
    const RtPlanDevice *v = &p->dev[d];
    fprintf(f,
            "device %d arena %" PRId64 " weights %" PRId64 " scratch %" PRId64 " chunk %" PRId64
            " cubin %zu ptx %zu\n",
            d, v->arena, v->weights, v->scratch, v->chunk, v->cubin_size, v->ptx_size);
    for (int s = 0; s < v->n_slices; s++)
      fprintf(f, "slice %d %" PRId64 " %" PRId64 " %" PRId64 " %s %s\n", d, v->slices[s].offset,
              v->slices[s].first, v->slices[s].count, v->slices[s].bf16 ? "bf16" : "f32",
              v->slices[s].tensor);
    put_host_copy(f, "input", d, &v->input);
    put_host_copy(f, "output", d, &v->output);
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *s = &p->steps[i];
    switch (s->kind) {
    case RT_STEP_KERNEL:
      fprintf(f, "kernel %d %s %s %" PRId64 " %d %d %d", s->device, s->name, s->layer, s->work,
              s->block, s->smem, s->n_args);
      for (int a = 0; a < s->n_args; a++)
        put_addr(f, s->args[a]);
      break;
    case RT_STEP_GEMM:
      fprintf(f, "gemm %d %s %s %c %c", s->device, s->name, rt_precision_name(s->prec),
              s->transa, s->transb);
      put_dim(f, s->m);
      put_dim(f, s->n);
      put_dim(f, s->k);
      put_addr(f, s->a);
      put_dim(f, s->lda);
      put_addr(f, s->b);
      put_dim(f, s->ldb);
      put_addr(f, s->c);
      put_dim(f, s->ldc);
      fprintf(f, " %s", EPILOGUES[s->epilogue]);
      if (s->epilogue != RT_GEMM_PLAIN)
        put_addr(f, s->bias);
      break;
    case RT_STEP_CHUNK:
      fprintf(f, "chunk %d %s %" PRId64 " %d", s->device, s->name, s->images, s->body);
      break;
    case RT_STEP_TRANSFER:
      fprintf(f, "transfer %d %d %s", s->from, s->device, s->name);
      put_addr(f, s->src.addr);
      fprintf(f, " %" PRId64, s->src.pitch);
      put_addr(f, s->dst.addr);
      fprintf(f, " %" PRId64 " %" PRId64, s->dst.pitch, s->width);
      break;
    case RT_STEP_ALLREDUCE:
      fprintf(f, "allreduce %d %s", s->device, s->name);
      put_addr(f, s->dst.addr);
      fprintf(f, " %" PRId64, s->width);
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
  if (fclose(f) != 0) {
    free(buf);
    return rt_fail("plan: out of memory");
  }
  *data = (uint8_t *)buf;
  *data_size = size;
  return true;
}

bool rt_plan_save(const RtPlan *p, const char *path) {
  uint8_t *data;
  size_t size;
  if (!rt_plan_serialize(p, &data, &size))
    return false;
  bool ok = rt_write_file_atomic(path, data, size);
  free(data);
  return ok;
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

static bool epilogue(const char *s, RtGemmEpilogue *e) {
  for (int i = 0; i < 3; i++)
    if (!strcmp(s, EPILOGUES[i])) {
      *e = (RtGemmEpilogue)i;
      return true;
    }
  return false;
}

static bool addr(const char *s, RtAddr *a) {
  long long per, fixed, first = 0;
  char space, extra;
  int n = sscanf(s, "%c:%lld+%lld%c%lld%c", &space, &per, &fixed, &extra, &first, &extra);
  if ((n != 3 && !(n == 5 && extra == '@' && space == 'a' && first > 0)) ||
      (space != 'a' && space != 'w' && space != 's') || per < 0 || fixed < 0 ||
      (space == 'w' && per))
    return false;
  *a = (RtAddr){space == 'a'   ? RT_SPACE_ARENA
                : space == 's' ? RT_SPACE_SCRATCH
                               : RT_SPACE_WEIGHTS,
                per, fixed, first};
  return true;
}

// `Pb+F`; at least 1 for a batch of 1.
static bool dim(const char *s, RtDim *d) {
  long long per, fixed;
  char b, extra;
  if (sscanf(s, "%lld%c+%lld%c", &per, &b, &fixed, &extra) != 3 || b != 'b' || per < 0 ||
      fixed < 0 || per > BIG_DIM || fixed > BIG_DIM || per + fixed < 1)
    return false;
  *d = (RtDim){per, fixed};
  return true;
}

// "3x227x227": 1 to RT_SHAPE_RANK dimensions, each and their product at most BIG.
static bool shape(const char *s, RtShape *out) {
  char buf[64];
  if (strlen(s) >= sizeof buf)
    return false;
  strcpy(buf, s);
  RtShape r = {0};
  int64_t elems = 1;
  char *rest = buf, *dim;
  while ((dim = strsep(&rest, "x"))) {
    if (r.rank == RT_SHAPE_RANK || !num(dim, 1, BIG, &r.dims[r.rank]) ||
        r.dims[r.rank] > BIG / elems)
      return false;
    elems *= r.dims[r.rank++];
  }
  *out = r;
  return true;
}

static bool name(const char *s, char *out) {
  size_t n = strlen(s);
  if (!n || n >= RT_PLAN_NAME)
    return false;
  memcpy(out, s, n + 1);
  return true;
}


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
  if (!strcmp(w, "precision") && t->n == 2)
    return rt_parse_precision(t->tok[1], &p->precision);
  if (!strcmp(w, "devices") && t->n == 2 && num(t->tok[1], 1, RT_PLAN_MAX_DEVICES, &v[0])) {
    p->n_devices = (int)v[0];
    return true;
  }
  if (!strcmp(w, "io") && t->n == 3)
    return shape(t->tok[1], &p->in) && shape(t->tok[2], &p->out);
  if (!strcmp(w, "tensor") && t->n == 3) {
    RtPlanTensor tensor;
    if (!name(t->tok[1], tensor.name) || !shape(t->tok[2], &tensor.shape) ||
        rt_plan_tensor(p, tensor.name))
      return false;
    rt_plan_add_tensor(p, tensor.name, tensor.shape);
    return true;
  }
  if (t->n < 2 || !p->n_devices || !num(t->tok[1], 0, p->n_devices - 1, &v[0]))
    return false;
  int d = (int)v[0];
  RtPlanDevice *dev = &p->dev[d];
  if (!strcmp(w, "device") && t->n == 14 && !strcmp(t->tok[2], "arena") &&
      !strcmp(t->tok[4], "weights") && !strcmp(t->tok[6], "scratch") &&
      !strcmp(t->tok[8], "chunk") && !strcmp(t->tok[10], "cubin") &&
      !strcmp(t->tok[12], "ptx") && num(t->tok[3], 0, BIG, &dev->arena) &&
      num(t->tok[5], 0, BIG, &dev->weights) && num(t->tok[7], 0, BIG, &dev->scratch) &&
      num(t->tok[9], 0, BIG, &dev->chunk) && num(t->tok[11], 0, BIG, &v[1]) &&
      num(t->tok[13], 0, BIG, &v[2])) {
    dev->cubin_size = (size_t)v[1];
    dev->ptx_size = (size_t)v[2];
    (*devices_seen)++;
    return true;
  }
  if (!strcmp(w, "slice") && t->n == 7) {
    RtWeightSlice s = {0};
    if (!num(t->tok[2], 0, BIG, &s.offset) || !num(t->tok[3], 0, BIG, &s.first) ||
        !num(t->tok[4], 1, BIG, &s.count) || (strcmp(t->tok[5], "f32") && strcmp(t->tok[5], "bf16")) ||
        !name(t->tok[6], s.tensor))
      return false;
    s.bf16 = !strcmp(t->tok[5], "bf16");
    const RtPlanTensor *tensor = rt_plan_tensor(p, s.tensor);  // declared before, and holds it
    if (s.offset + rt_slice_slots(&s) > dev->weights || !tensor ||
        s.first + s.count > rt_shape_elems(tensor->shape))
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
  if (!strcmp(w, "kernel") && t->n >= 8) {
    s.kind = RT_STEP_KERNEL;
    if (!name(t->tok[2], s.name) || !name(t->tok[3], s.layer) || !num(t->tok[4], 1, BIG, &s.work) ||
        !num(t->tok[5], 1, 1024, &v[1]) || !num(t->tok[6], 0, RT_PLAN_MAX_SMEM, &v[3]) ||
        !num(t->tok[7], 0, RT_PLAN_MAX_ARGS, &v[2]) || t->n != 8 + v[2])
      return false;
    s.block = (int)v[1];
    s.smem = (int)v[3];
    s.n_args = (int)v[2];
    for (int a = 0; a < s.n_args; a++)
      if (!addr(t->tok[8 + a], &s.args[a]))
        return false;
    rt_plan_add_step(p, &s);
    return true;
  } else if (!strcmp(w, "gemm") && (t->n == 16 || t->n == 17)) {
    s.kind = RT_STEP_GEMM;
    const char *ta = t->tok[4], *tb = t->tok[5];
    if (!name(t->tok[2], s.name) || !rt_parse_precision(t->tok[3], &s.prec) || strlen(ta) != 1 ||
        strlen(tb) != 1 || !strchr("NT", *ta) || !strchr("NT", *tb) || !dim(t->tok[6], &s.m) ||
        !dim(t->tok[7], &s.n) || !dim(t->tok[8], &s.k) || !addr(t->tok[9], &s.a) ||
        !dim(t->tok[10], &s.lda) || !addr(t->tok[11], &s.b) || !dim(t->tok[12], &s.ldb) ||
        !addr(t->tok[13], &s.c) || !dim(t->tok[14], &s.ldc) ||
        !epilogue(t->tok[15], &s.epilogue) || (t->n == 17) != (s.epilogue != RT_GEMM_PLAIN) ||
        (t->n == 17 && !addr(t->tok[16], &s.bias)))
      return false;
    s.transa = *ta;
    s.transb = *tb;
  } else if (!strcmp(w, "chunk") && t->n == 5) {
    s.kind = RT_STEP_CHUNK;
    if (!name(t->tok[2], s.name) || !num(t->tok[3], 1, dev->chunk, &s.images) ||
        !num(t->tok[4], 1, 64, &v[1]))
      return false;
    s.body = (int)v[1];
  } else if (!strcmp(w, "transfer") && t->n == 9) {
    s.kind = RT_STEP_TRANSFER;
    s.from = d;
    if (!num(t->tok[2], 0, p->n_devices - 1, &v[1]) || !name(t->tok[3], s.name) ||
        !addr(t->tok[4], &s.src.addr) || !num(t->tok[5], 1, BIG, &s.src.pitch) ||
        !addr(t->tok[6], &s.dst.addr) || !num(t->tok[7], 1, BIG, &s.dst.pitch) ||
        !num(t->tok[8], 1, BIG, &s.width))
      return false;
    s.device = (int)v[1];
  } else if (!strcmp(w, "allreduce") && t->n == 5) {
    s.kind = RT_STEP_ALLREDUCE;
    if (!name(t->tok[2], s.name) || !addr(t->tok[3], &s.dst.addr) ||
        s.dst.addr.space != RT_SPACE_WEIGHTS || !num(t->tok[4], 1, BIG, &s.width) ||
        s.dst.addr.fixed + s.width > dev->weights)
      return false;
  } else {
    return false;
  }
  memcpy(s.layer, s.name, sizeof s.layer);  // a gemm, chunk or transfer is named by its layer
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
  if (size < at || memcmp(data, MAGIC, at) != 0) {
    size_t any = strlen(MAGIC_ANY), digits = 0;
    while (any + digits < size && digits < 8 && isdigit(data[any + digits]))
      digits++;
    if (digits && !memcmp(data, MAGIC_ANY, any))
      return rt_fail("a plan of format %.*s; this runtime reads format " FORMAT
                     ": compile the model again with this alexc",
                     (int)digits, (const char *)data + any);
    return rt_fail("not an alexc CUDA plan (no '%.*s' header)", (int)at - 1, MAGIC);
  }
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
  if (!p->n_devices || devices_seen != p->n_devices || !p->in.rank) {
    rt_plan_free(p);
    return rt_fail("plan: incomplete header (devices, io)");
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *c = &p->steps[i];
    // Scratch only where the device has some.
    bool scratch = false;
    for (int a = 0; a < c->n_args && c->kind == RT_STEP_KERNEL; a++)
      scratch |= c->args[a].space == RT_SPACE_SCRATCH;
    if (c->kind == RT_STEP_GEMM)
      scratch = c->a.space == RT_SPACE_SCRATCH || c->b.space == RT_SPACE_SCRATCH ||
                c->c.space == RT_SPACE_SCRATCH;
    if (scratch && !p->dev[c->device].scratch) {
      rt_fail("plan: step '%s' uses scratch, device %d has none", c->name, c->device);
      rt_plan_free(p);  // after the message: c points into p's steps
      return false;
    }
  }
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *c = &p->steps[i];
    if (c->kind != RT_STEP_CHUNK)
      continue;
    bool ok = i + c->body < p->n_steps;
    for (int j = i + 1; ok && j <= i + c->body; j++)
      ok = (p->steps[j].kind == RT_STEP_KERNEL || p->steps[j].kind == RT_STEP_GEMM) &&
           p->steps[j].device == c->device;
    if (!ok) {
      rt_fail("plan: chunk '%s': its %d steps are not kernels and gemms of device %d", c->name,
              c->body, c->device);
      rt_plan_free(p);  // after the message: c points into p's steps
      return false;
    }
    i += c->body;
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
  if (size >= 4 && !memcmp(data, "\x7f" "ELF", 4)) {  // a bundle (runtime/bundle.c)
    bool ok = rt_bundle_load(path, data, size, p);
    free(data);
    return ok;
  }
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

int64_t rt_plan_scratch_elems(const RtPlan *p, int d, int batch) {
  const RtPlanDevice *v = &p->dev[d];
  return v->scratch * (v->chunk < batch ? v->chunk : batch);
}

// Where the steps run: the whole batch, or one chunk of it (images [first, first + n)).
typedef struct {
  int batch, first, n;
} Span;

static uint64_t resolve(const RtPlanOps *ops, int d, RtAddr a, Span sp) {
  switch (a.space) {
  case RT_SPACE_ARENA:
    return ops->arena[d] +
           (uint64_t)(a.per_image * sp.batch + a.fixed + a.per_first * sp.first) * sizeof(float);
  case RT_SPACE_SCRATCH:
    return ops->scratch[d] + (uint64_t)(a.per_image * sp.n + a.fixed) * sizeof(float);
  case RT_SPACE_WEIGHTS:
    break;
  }
  return ops->weights[d] + (uint64_t)a.fixed * sizeof(float);
}

static int64_t extent(RtDim d, Span sp) { return d.per_image * sp.n + d.fixed; }

static bool run_step(const RtStep *s, const RtPlanOps *ops, Span sp) {
  int d = s->device;
  switch (s->kind) {
  case RT_STEP_KERNEL: {
    uint64_t args[RT_PLAN_MAX_ARGS];
    for (int a = 0; a < s->n_args; a++)
      args[a] = resolve(ops, d, s->args[a], sp);
    return ops->launch(ops->ctx, d, s->name, rt_plan_grid(s, sp.n), s->block, s->smem, args,
                       s->n_args, sp.n);
  }
  case RT_STEP_GEMM:
    if (s->epilogue != RT_GEMM_PLAIN)
      return ops->gemm_bias(ops->ctx, d, s->prec, s->transa, s->transb, extent(s->m, sp),
                            extent(s->n, sp), extent(s->k, sp), resolve(ops, d, s->a, sp),
                            extent(s->lda, sp), resolve(ops, d, s->b, sp), extent(s->ldb, sp),
                            resolve(ops, d, s->c, sp), extent(s->ldc, sp),
                            resolve(ops, d, s->bias, sp), s->epilogue == RT_GEMM_BIAS_RELU);
    return ops->gemm(ops->ctx, d, s->prec, s->transa, s->transb, extent(s->m, sp), extent(s->n, sp),
                     extent(s->k, sp), 1.0f, resolve(ops, d, s->a, sp), extent(s->lda, sp),
                     resolve(ops, d, s->b, sp), extent(s->ldb, sp), 0.0f,
                     resolve(ops, d, s->c, sp), extent(s->ldc, sp));
  case RT_STEP_TRANSFER:
    return ops->copy(ops->ctx, d, resolve(ops, d, s->dst.addr, sp), s->dst.pitch, s->from,
                     resolve(ops, s->from, s->src.addr, sp), s->src.pitch, s->width, sp.n);
  case RT_STEP_ALLREDUCE:
    if (!ops->allreduce)
      return rt_fail("plan: step '%s' sums over the ranks of a data-parallel job, and this "
                     "executor has no all-reduce (NCCL not joined)", s->name);
    return ops->allreduce(ops->ctx, d, resolve(ops, d, s->dst.addr, sp), s->width);
  case RT_STEP_CHUNK:
    break;
  }
  return rt_fail("plan: step '%s' cannot run here", s->name);
}

// One run of a step, between the executor's timing marks.
static bool run_marked(const RtStep *s, const RtPlanOps *ops, Span sp) {
  return (!ops->mark || ops->mark(ops->ctx, s, false)) && run_step(s, ops, sp) &&
         (!ops->mark || ops->mark(ops->ctx, s, true));
}

static uint64_t host(const float *p, int64_t offset) { return (uint64_t)(uintptr_t)(p + offset); }

bool rt_plan_upload(const RtPlan *p, const RtPlanOps *ops, const float *x, int batch) {
  const Span whole = {batch, 0, batch};
  for (int d = 0; d < p->n_devices; d++) {
    const RtHostCopy *in = &p->dev[d].input;
    if (in->width && !ops->copy(ops->ctx, d, resolve(ops, d, in->dev.addr, whole), in->dev.pitch,
                                -1, host(x, in->host_offset), in->host_pitch, in->width, batch))
      return false;
  }
  return true;
}

bool rt_plan_steps(const RtPlan *p, const RtPlanOps *ops, int batch) {
  return rt_plan_steps_from(p, ops, batch, 0);
}

bool rt_plan_steps_from(const RtPlan *p, const RtPlanOps *ops, int batch, int first) {
  const Span whole = {batch, 0, batch};
  if (first < 0 || first > p->n_steps)
    return rt_fail("plan: no step %d (the plan has %d)", first, p->n_steps);
  for (int i = first; i < p->n_steps; i++) {
    const RtStep *s = &p->steps[i];
    if (s->kind != RT_STEP_CHUNK) {
      if (!run_marked(s, ops, whole))
        return false;
      continue;
    }
    if (i + s->body >= p->n_steps || s->images < 1)
      return rt_fail("plan: chunk '%s' is cut short", s->name);
    for (int first = 0; first < batch; first += (int)s->images) {
      Span sp = {batch, first, batch - first < s->images ? batch - first : (int)s->images};
      for (int j = i + 1; j <= i + s->body; j++)
        if (!run_marked(&p->steps[j], ops, sp))
          return false;
    }
    i += s->body;
  }
  return true;
}

bool rt_plan_download(const RtPlan *p, const RtPlanOps *ops, float *y, int batch) {
  const Span whole = {batch, 0, batch};
  for (int d = 0; d < p->n_devices; d++) {
    const RtHostCopy *out = &p->dev[d].output;
    if (out->width && !ops->copy(ops->ctx, -1, host(y, out->host_offset), out->host_pitch, d,
                                 resolve(ops, d, out->dev.addr, whole), out->dev.pitch,
                                 out->width, batch))
      return false;
  }
  return true;
}

bool rt_plan_run(const RtPlan *p, const RtPlanOps *ops, const float *x, int batch, float *y) {
  return rt_plan_upload(p, ops, x, batch) && rt_plan_steps(p, ops, batch) &&
         rt_plan_download(p, ops, y, batch);
}
