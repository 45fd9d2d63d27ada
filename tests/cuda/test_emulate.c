// The CUDA backend checked without a GPU, in the manner of ggml's test-backend-ops:
// for each spec and variant (fused or not; one to three devices; --conv direct, gemm,
// implicit, fused or a per-layer mix; fp32, tf32 or bf16), generate the CUDA source,
// compile it with g++ as C++ (cuda_emu.h and emu_include/mma.h stand in for the CUDA
// headers), and run the plan through the runtime's own interpreter (rt_plan_run) with
// CPU implementations of kernel launch, GEMM (emu_gemm.h: cublasSgemm's and
// cublasGemmEx's semantics: column-major, transa/transb, lda/ldb/ldc, alpha/beta, their
// argument checks) and copy. The output
// must match the reference executor within the precision's tolerance (cuda_tolerance():
// 1e-4 relative, max|got-want| / max|want|, for fp32). tf32 and bf16 variants round the
// GEMM operands as the tensor cores do.
//
// Arenas, scratch and weight buffers start as NaN, so a kernel that reads memory nobody wrote
// (a missing transfer, a wrong offset or held range) poisons the output. Copies and
// GEMMs are bounds-checked against their buffers. Under ALEXC_SANITIZE the kernels
// are compiled with ASan + UBSan too. Small specs also run with the grid capped at
// 3 blocks, to exercise the kernels' grid-stride loops; gemm variants with a capped
// chunk exercise the plan's chunk loop, a last chunk shorter than the others included.
//
// The plan runs as the artifact file carries it (saved and loaded back), so the file
// format is checked along with it.
//
// usage: test_emulate CXX EMU_HEADER WORKDIR SPEC [VARIANT]   (VARIANT: a name filter)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alexc.h"
#include "backends/cuda/cuda.h"
#include "tools/cli.h"
#include "emu_gemm.h"
#include "emu_module.h"


static const char *cxx, *emu_header, *workdir;

typedef struct {
  const char *name;
  bool fuse;
  int devices;
  int batch;      // 0: the spec's default (3, or 1 for big nets)
  int max_grid;   // 0: the plan's grid
  bool big_too;   // run on big nets as well
  CudaConv conv;
  int max_chunk;  // gemm: images per chunk at most (0: as the scratch budget allows)
  RtPrecision prec;
  const char *first_conv;  // the first conv layer's strategy, if not `conv` (--conv L=S)
} Variant;

#define DIRECT CUDA_CONV_DIRECT
#define GEMM CUDA_CONV_GEMM
#define IMPLICIT CUDA_CONV_IMPLICIT
#define FUSED CUDA_CONV_FUSED
static const Variant VARIANTS[] = {
    {"direct-fused", true, 1, 0, 0, false, DIRECT, 0, RT_FP32, NULL},
    {"direct-unfused", false, 1, 0, 0, false, DIRECT, 0, RT_FP32, NULL},
    {"direct-fused-2dev", true, 2, 0, 0, true, DIRECT, 0, RT_FP32, NULL},
    {"direct-unfused-2dev", false, 2, 0, 0, false, DIRECT, 0, RT_FP32, NULL},
    {"direct-fused-3dev", true, 3, 0, 0, false, DIRECT, 0, RT_FP32, NULL},
    {"direct-fused-grid3", true, 1, 2, 3, false, DIRECT, 0, RT_FP32, NULL},
    {"direct-unfused-2dev-grid3", false, 2, 2, 3, false, DIRECT, 0, RT_FP32, NULL},
    {"gemm-fused", true, 1, 0, 0, true, GEMM, 0, RT_FP32, NULL},
    {"gemm-unfused", false, 1, 0, 0, false, GEMM, 0, RT_FP32, NULL},
    {"gemm-fused-2dev", true, 2, 0, 0, true, GEMM, 0, RT_FP32, NULL},
    {"gemm-unfused-2dev", false, 2, 0, 0, true, GEMM, 0, RT_FP32, NULL},
    {"gemm-fused-3dev", true, 3, 0, 0, false, GEMM, 0, RT_FP32, NULL},
    {"gemm-fused-chunk2", true, 1, 3, 0, false, GEMM, 2, RT_FP32, NULL},
    {"gemm-unfused-2dev-chunk1-grid3", false, 2, 2, 3, false, GEMM, 1, RT_FP32, NULL},
    {"gemm-fused-tf32", true, 1, 0, 0, true, GEMM, 0, RT_TF32, NULL},
    {"gemm-unfused-2dev-tf32", false, 2, 0, 0, false, GEMM, 0, RT_TF32, NULL},
    {"gemm-fused-bf16", true, 1, 0, 0, true, GEMM, 0, RT_BF16, NULL},
    {"gemm-unfused-bf16", false, 1, 0, 0, false, GEMM, 0, RT_BF16, NULL},
    {"gemm-fused-2dev-bf16", true, 2, 0, 0, false, GEMM, 0, RT_BF16, NULL},
    {"gemm-fused-3dev-bf16-chunk1", true, 3, 2, 0, false, GEMM, 1, RT_BF16, NULL},
    {"implicit-fused", true, 1, 0, 0, true, IMPLICIT, 0, RT_FP32, NULL},
    {"implicit-unfused", false, 1, 0, 0, false, IMPLICIT, 0, RT_FP32, NULL},
    {"implicit-fused-2dev", true, 2, 0, 0, false, IMPLICIT, 0, RT_FP32, NULL},
    {"implicit-fused-3dev", true, 3, 0, 0, false, IMPLICIT, 0, RT_FP32, NULL},
    {"implicit-fused-chunk2", true, 1, 3, 0, false, IMPLICIT, 2, RT_FP32, NULL},
    {"implicit-fused-2dev-c1-grid3", true, 2, 2, 3, false, IMPLICIT, 1, RT_FP32, NULL},
    {"implicit-unfused-2dev-grid3", false, 2, 2, 3, false, IMPLICIT, 0, RT_FP32, NULL},
    // --conv fused: the whole conv node in one kernel, the stages on the tile.
    {"convfused-fused", true, 1, 0, 0, true, FUSED, 0, RT_FP32, NULL},
    {"convfused-unfused", false, 1, 0, 0, false, FUSED, 0, RT_FP32, NULL},
    {"convfused-fused-2dev", true, 2, 0, 0, true, FUSED, 0, RT_FP32, NULL},
    {"convfused-fused-3dev", true, 3, 0, 0, false, FUSED, 0, RT_FP32, NULL},
    {"convfused-fused-grid3", true, 1, 2, 3, false, FUSED, 0, RT_FP32, NULL},
    {"convfused-fused-2dev-grid3", true, 2, 3, 3, false, FUSED, 0, RT_FP32, NULL},
    // Tensor cores in the generated kernels (wmma; cuda_emu's emulated <mma.h>).
    {"implicit-fused-tf32", true, 1, 0, 0, false, IMPLICIT, 0, RT_TF32, NULL},
    {"implicit-unfused-2dev-bf16", false, 2, 0, 0, false, IMPLICIT, 0, RT_BF16, NULL},
    {"convfused-fused-tf32", true, 1, 0, 0, true, FUSED, 0, RT_TF32, NULL},
    {"convfused-fused-2dev-tf32", true, 2, 0, 0, false, FUSED, 0, RT_TF32, NULL},
    {"convfused-fused-bf16", true, 1, 0, 0, false, FUSED, 0, RT_BF16, NULL},
    {"convfused-fused-3dev-bf16-grid3", true, 3, 2, 3, false, FUSED, 0, RT_BF16, NULL},
    // Per-layer choices (--conv gemm,conv1=direct): the first conv computed otherwise.
    {"mixed-gemm-first-direct", true, 1, 0, 0, false, GEMM, 0, RT_FP32, "direct"},
    {"mixed-implicit-first-fused-2dev-tf32", true, 2, 0, 0, false, IMPLICIT, 0, RT_TF32, "fused"},
};

// ---------------------------------------------------------------- the emulated machine

typedef struct {
  void *so[MAX_DEVICES];
  float *arena[MAX_DEVICES], *weights[MAX_DEVICES], *scratch[MAX_DEVICES];
  int64_t arena_elems[MAX_DEVICES], weight_elems[MAX_DEVICES], scratch_elems[MAX_DEVICES];
  const float *x, *y;
  int64_t x_elems, y_elems;
  int max_grid;
  bool failed;
} Emu;

// Is [p, p + bytes) inside one of the buffers device d (or the host, d = -1) owns?
static bool inside(const Emu *e, int d, uint64_t p, int64_t bytes) {
  const float *bufs[3] = {d < 0 ? e->x : e->arena[d], d < 0 ? e->y : e->weights[d],
                          d < 0 ? NULL : e->scratch[d]};
  int64_t sizes[3] = {d < 0 ? e->x_elems : e->arena_elems[d],
                      d < 0 ? e->y_elems : e->weight_elems[d], d < 0 ? 0 : e->scratch_elems[d]};
  for (int k = 0; k < 3; k++) {
    uint64_t lo = (uint64_t)(uintptr_t)bufs[k], hi = lo + sizes[k] * sizeof(float);
    if (bufs[k] && p >= lo && p + bytes <= hi)
      return true;
  }
  return false;
}

static bool check(Emu *e, int d, uint64_t p, int64_t bytes, const char *what) {
  if (inside(e, d, p, bytes))
    return true;
  fprintf(stderr, "  %s: %lld bytes at %#llx are outside device %d's buffers\n", what,
          (long long)bytes, (unsigned long long)p, d);
  e->failed = true;
  return false;
}

typedef void (*K1)(void *, int);
typedef void (*K2)(void *, void *, int);
typedef void (*K3)(void *, void *, void *, int);
typedef void (*K4)(void *, void *, void *, void *, int);
typedef void (*K5)(void *, void *, void *, void *, void *, int);
typedef void (*K6)(void *, void *, void *, void *, void *, void *, int);

// One kernel launch's call, for every thread of every block.
typedef struct {
  void *f;
  int n_args;
  void *a[6];
  int batch;
} KernelCall;

// alexc_emu_run_block's thread: the kernel with its arguments.
static void call_kernel(void *arg) {
  const KernelCall *c = arg;
  void *const *a = c->a;
  switch (c->n_args) {
  case 1: ((K1)c->f)(a[0], c->batch); break;
  case 2: ((K2)c->f)(a[0], a[1], c->batch); break;
  case 3: ((K3)c->f)(a[0], a[1], a[2], c->batch); break;
  case 4: ((K4)c->f)(a[0], a[1], a[2], a[3], c->batch); break;
  case 5: ((K5)c->f)(a[0], a[1], a[2], a[3], a[4], c->batch); break;
  case 6: ((K6)c->f)(a[0], a[1], a[2], a[3], a[4], a[5], c->batch); break;
  }
}

// Every block through cuda_emu.h's alexc_emu_run_block, exported by the kernel's .so:
// its threads one after another, or as fibers that meet at each __syncthreads().
// Dynamic shared memory: `smem` bytes per block, at most what sm_90 lets a block have.
static bool launch(void *ctx, int d, const char *kernel, int64_t grid, int block, int smem,
                   const uint64_t *args, int n_args, int batch) {
  Emu *e = ctx;
  KernelCall call = {.f = dlsym(e->so[d], kernel), .n_args = n_args, .batch = batch};
  int (*run_block)(unsigned, unsigned, unsigned, void (*)(void *), void *);
  int (*dynamic_shared)(unsigned);
  *(void **)&run_block = dlsym(e->so[d], "alexc_emu_run_block");
  *(void **)&dynamic_shared = dlsym(e->so[d], "alexc_emu_dynamic_shared");
  if (!call.f || !run_block || !dynamic_shared || n_args < 1 || n_args > 6 || smem < 0 ||
      smem > CUDA_SMEM_LIMIT || dynamic_shared((unsigned)smem) != 0) {
    fprintf(stderr, "  launch %s on device %d: %s\n", kernel, d,
            !call.f                         ? "no such kernel"
            : !run_block || !dynamic_shared ? "no alexc_emu_run_block (cuda_emu.h)"
            : n_args < 1 || n_args > 6      ? "unsupported argument count"
                                            : "more dynamic shared memory than sm_90 allows");
    e->failed = true;
    return false;
  }
  for (int i = 0; i < n_args; i++) {
    call.a[i] = (void *)(uintptr_t)args[i];
    if (!check(e, d, args[i], 4, kernel))
      return false;
  }
  if (e->max_grid && grid > e->max_grid)
    grid = e->max_grid;
  for (int64_t bx = 0; bx < grid; bx++)
    if (run_block((unsigned)bx, (unsigned)block, (unsigned)grid, call_kernel, &call) != 0) {
      fprintf(stderr, "  launch %s on device %d: block %lld failed\n", kernel, d, (long long)bx);
      e->failed = true;
      return false;
    }
  return true;
}

// The step's GEMM through emu_gemm.h: cublasSgemm's / cublasGemmEx's semantics
// (column-major, transa/transb, leading dimensions, alpha/beta, argument checks; beta = 0
// does not read C), TF32 rounding of the operands for tf32, bfloat16 A and B for bf16,
// accumulating in float as a GPU does. Every operand is bounds-checked.
static bool gemm(void *ctx, int d, RtPrecision prec, char ta, char tb, int64_t m, int64_t n,
                 int64_t k, float alpha, uint64_t a, int64_t lda, uint64_t b, int64_t ldb,
                 float beta, uint64_t c, int64_t ldc) {
  Emu *e = ctx;
  EmuType type = prec == RT_BF16 ? EMU_BF16 : EMU_F32;
  const char *bad = emu_gemm_check(ta, tb, m, n, k, lda, ldb, ldc);
  if (!bad && m && n) {
    bool tra = ta == 'T', trb = tb == 'T';
    if ((k && !check(e, d, a, emu_operand_bytes(tra ? k : m, tra ? m : k, lda, type), "gemm A")) ||
        (k && !check(e, d, b, emu_operand_bytes(trb ? n : k, trb ? k : n, ldb, type), "gemm B")) ||
        !check(e, d, c, emu_operand_bytes(m, n, ldc, EMU_F32), "gemm C"))
      return false;
    bad = emu_gemm(ta, tb, m, n, k, alpha, (const void *)(uintptr_t)a, type, lda,
                   (const void *)(uintptr_t)b, type, ldb, beta, (float *)(uintptr_t)c, ldc,
                   prec == RT_TF32 ? EMU_MATH_TF32 : EMU_MATH_FP32);
  }
  if (bad) {
    fprintf(stderr, "  gemm %s %c %c m %lld n %lld k %lld lda %lld ldb %lld ldc %lld: %s\n",
            rt_precision_name(prec), ta, tb, (long long)m, (long long)n, (long long)k,
            (long long)lda, (long long)ldb, (long long)ldc, bad);
    e->failed = true;
    return false;
  }
  return true;
}

// The GEMM, then cublasLt's bias (and ReLU) epilogue on C (emu_gemm.h).
static bool gemm_bias(void *ctx, int d, RtPrecision prec, char ta, char tb, int64_t m, int64_t n,
                      int64_t k, uint64_t a, int64_t lda, uint64_t b, int64_t ldb, uint64_t c,
                      int64_t ldc, uint64_t bias, bool relu) {
  Emu *e = ctx;
  if (!gemm(ctx, d, prec, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc))
    return false;
  if (m && n && !check(e, d, bias, m * 4, "gemm bias"))
    return false;
  emu_bias_epilogue(m, n, (float *)(uintptr_t)c, ldc, (const float *)(uintptr_t)bias, relu);
  return true;
}

static bool copy(void *ctx, int dst_dev, uint64_t dst, int64_t dst_pitch, int src_dev,
                 uint64_t src, int64_t src_pitch, int64_t width, int64_t height) {
  Emu *e = ctx;
  if (!check(e, dst_dev, dst, ((height - 1) * dst_pitch + width) * 4, "copy destination") ||
      !check(e, src_dev, src, ((height - 1) * src_pitch + width) * 4, "copy source"))
    return false;
  for (int64_t r = 0; r < height; r++)
    memcpy((float *)(uintptr_t)dst + r * dst_pitch, (const float *)(uintptr_t)src + r * src_pitch,
           width * sizeof(float));
  return true;
}

// ---------------------------------------------------------------- one variant

static bool build_so(const char *source, const char *path_cu, const char *path_so) {
  if (!rt_write_file_atomic(path_cu, source, strlen(source))) {
    fprintf(stderr, "  %s\n", rt_error());
    return false;
  }
#ifdef ALEXC_SANITIZE_KERNELS
  const char *san = "-fsanitize=address,undefined -fno-sanitize-recover=all";
#else
  const char *san = "";
#endif
  char *flags = format("-O2 -Wall -Wno-unknown-pragmas -Werror %s", san);
  char *cmd = emu_build_command(cxx, flags, emu_header, path_cu, path_so);
  free(flags);
  if (!cmd)
    abort();
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr, "  failed (%d): %s\n", rc, cmd);
  free(cmd);
  return rc == 0;
}

static const float *weight_by_name(const Weights *w, const char *tensor) {
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, tensor))
      return w->data[i];
  return NULL;
}

// ---------------------------------------------------------------- the schedule

// A chunk-sized GEMM quantity of `bytes` in a full chunk: a multiple of 16 bytes?
static bool aligned16(const RtStep *s, const char *what, int64_t bytes) {
  if (bytes % 16 == 0)
    return true;
  fprintf(stderr, "  %s: a GEMM's %s is %lld bytes in a full chunk, not a multiple of 16\n",
          s->layer, what, (long long)bytes);
  return false;
}

// Every GEMM inside a chunk, with the chunk's full image count n: its leading dimensions
// and its operands' offsets that grow with n are multiples of 16 bytes (the chunk size is
// chosen for it, schedule.c). Those fixed by the network (an fc layer's feature count)
// are not the chunk's to choose and are not checked.
static bool gemms_aligned(const RtPlan *p) {
  bool ok = true;
  for (int i = 0; i < p->n_steps; i++) {
    const RtStep *c = &p->steps[i];
    if (c->kind != RT_STEP_CHUNK || c->images < CUDA_CHUNK_ALIGN)
      continue;
    int64_t n = c->images;
    for (int j = i + 1; j <= i + c->body && j < p->n_steps; j++) {
      const RtStep *s = &p->steps[j];
      if (s->kind != RT_STEP_GEMM)
        continue;
      int64_t ab = s->prec == RT_BF16 ? 2 : 4;  // bytes per A and B element
      const RtDim ld[] = {s->lda, s->ldb, s->ldc};
      const int64_t size[] = {ab, ab, 4};
      const char *name[] = {"lda", "ldb", "ldc"};
      for (int k = 0; k < 3; k++)
        if (ld[k].per_image)
          ok &= aligned16(s, name[k], (ld[k].per_image * n + ld[k].fixed) * size[k]);
      // Addresses count float-sized elements whatever the operand's type.
      const RtAddr at[] = {s->a, s->b, s->c};
      const char *op[] = {"A offset", "B offset", "C offset"};
      for (int k = 0; k < 3; k++)
        if (at[k].space == RT_SPACE_SCRATCH && at[k].per_image)
          ok &= aligned16(s, op[k], (at[k].per_image * n + at[k].fixed) * 4);
    }
  }
  return ok;
}

static bool run_variant(const char *spec, const Variant *v, const Weights *w, const float *x,
                        int batch, const float *want) {
  Graph *g = load_spec(spec);
  PassOptions o = pass_defaults();
  o.devices = v->devices;
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = v->fuse;
  CudaOptions co = cuda_defaults();
  co.conv = v->conv;
  for (int i = 1; g && i < g->n_nodes && v->first_conv; i++)
    if (g->nodes[i].op == OP_CONV) {
      char list[128], err[256];
      snprintf(list, sizeof list, "%s,%s=%s", cuda_conv_name(v->conv), g->nodes[i].name,
               v->first_conv);
      if (!cuda_parse_conv_option(list, &co, err, sizeof err)) {
        fprintf(stderr, "  %s: %s\n", v->name, err);
        graph_free(g);
        return false;
      }
      break;
    }
  co.max_chunk = v->max_chunk;
  co.precision = v->prec;
  CudaProgram prog;
  if (!g || !run_passes(g, &o) || !cuda_generate(g, v->name, &co, &prog)) {
    graph_free(g);
    return false;
  }
  // The schedule as the compiler chooses it (not under a test's chunk cap).
  if (!v->max_chunk && !gemms_aligned(&prog.plan)) {
    printf("  %-20s %-30s FAIL: GEMM alignment\n", g->name, v->name);
    cuda_program_free(&prog);
    graph_free(g);
    return false;
  }
  // Run the plan as the artifact file carries it: saved, then loaded back.
  RtPlan loaded;
  char *plan_path = format("%s/%s-%s.plan", workdir, g->name, v->name);
  if (!rt_plan_save(&prog.plan, plan_path) || !rt_plan_load(plan_path, &loaded)) {
    fprintf(stderr, "  %s\n", rt_error());
    free(plan_path);
    cuda_program_free(&prog);
    graph_free(g);
    return false;
  }
  free(plan_path);
  const RtPlan *p = &loaded;
  int64_t out_elems = rt_shape_elems(p->out) * batch;
  float *y = xcalloc(out_elems, sizeof(float));
  for (int64_t i = 0; i < out_elems; i++)
    y[i] = NAN;
  Emu e = {.x = x, .y = y, .x_elems = rt_shape_elems(p->in) * batch, .y_elems = out_elems,
           .max_grid = v->max_grid};
  RtPlanOps ops = {.ctx = &e, .launch = launch, .gemm = gemm, .gemm_bias = gemm_bias,
                   .copy = copy};
  bool ok = true;
  for (int d = 0; d < p->n_devices && ok; d++) {
    char *cu = format("%s/%s-%s-device%d.cu", workdir, g->name, v->name, d);
    char *so = format("%s/%s-%s-device%d.so", workdir, g->name, v->name, d);
    ok = build_so(prog.source[d], cu, so);
    e.so[d] = ok ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (ok && !e.so[d]) {
      fprintf(stderr, "  dlopen %s: %s\n", so, dlerror());
      ok = false;
    }
    free(cu);
    free(so);
    if (!ok)
      break;
    // NaN everywhere nobody has written.
    e.arena_elems[d] = p->dev[d].arena * batch;
    e.weight_elems[d] = p->dev[d].weights;
    e.scratch_elems[d] = rt_plan_scratch_elems(p, d, batch);
    e.arena[d] = xcalloc(e.arena_elems[d], sizeof(float));
    e.weights[d] = xcalloc(e.weight_elems[d], sizeof(float));
    e.scratch[d] = e.scratch_elems[d] ? xcalloc(e.scratch_elems[d], sizeof(float)) : NULL;
    for (int64_t i = 0; i < e.arena_elems[d]; i++)
      e.arena[d][i] = NAN;
    for (int64_t i = 0; i < e.scratch_elems[d]; i++)
      e.scratch[d][i] = NAN;
    for (int64_t i = 0; i < e.weight_elems[d]; i++)
      e.weights[d][i] = NAN;
    for (int s = 0; s < p->dev[d].n_slices; s++) {
      const RtWeightSlice *sl = &p->dev[d].slices[s];
      const float *data = weight_by_name(w, sl->tensor);
      if (!data) {
        fprintf(stderr, "  no weight tensor '%s'\n", sl->tensor);
        ok = false;
        break;
      }
      rt_slice_pack(sl, data, e.weights[d] + sl->offset);
    }
    ops.arena[d] = (uint64_t)(uintptr_t)e.arena[d];
    ops.weights[d] = (uint64_t)(uintptr_t)e.weights[d];
    ops.scratch[d] = (uint64_t)(uintptr_t)e.scratch[d];
  }
  ok = ok && rt_plan_run(p, &ops, x, batch, y) && !e.failed;
  Compare c = ok ? compare(y, want, out_elems) : (Compare){.rel = INFINITY};
  ok = ok && c.rel <= cuda_tolerance(v->prec);
  int kernels = 0, gemms = 0;
  int64_t scratch = 0;
  for (int i = 0; i < p->n_steps; i++) {
    kernels += p->steps[i].kind == RT_STEP_KERNEL;
    gemms += p->steps[i].kind == RT_STEP_GEMM;
  }
  for (int d = 0; d < p->n_devices; d++)
    scratch += e.scratch_elems[d];
  printf("  %-20s %-30s batch %d  %3d steps (%2d kernels, %2d gemms)  scratch %6.2f MiB  "
         "max rel err %-10.3g %s\n",
         g->name, v->name, batch, p->n_steps, kernels, gemms, scratch * 4.0 / (1 << 20), c.rel,
         ok ? "OK" : "FAIL");
  for (int d = 0; d < p->n_devices; d++) {
    if (e.so[d])
      dlclose(e.so[d]);
    free(e.arena[d]);
    free(e.weights[d]);
    free(e.scratch[d]);
  }
  free(y);
  rt_plan_free(&loaded);
  cuda_program_free(&prog);
  graph_free(g);
  return ok;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: test_emulate CXX EMU_HEADER WORKDIR SPEC [VARIANT]\n"
                    "  VARIANT: run only the variants whose name contains it\n");
    return 2;
  }
  cxx = argv[1];
  emu_header = argv[2];
  workdir = argv[3];
  const char *spec = argv[4], *only = argc == 6 ? argv[5] : NULL;
  if (mkdir(workdir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: %s\n", workdir, strerror(errno));
    return 1;
  }
  Graph *g = load_spec(spec);
  if (!g)
    return 1;
  bool big = graph_macs(g) > 100000000;
  Weights *w = weights_init(g, 7, INIT_FAN_IN);
  // fan-in gives zero biases; nonzero ones make a bias read at a wrong offset show.
  for (int i = 0; i < w->n; i++)
    if (w->info[i].is_bias)
      fill_normal(w->data[i], w->info[i].elems, 7, w->info[i].name, 0.1);
  int failures = 0, runs = 0;
  for (size_t i = 0; i < sizeof VARIANTS / sizeof *VARIANTS; i++) {
    const Variant *v = &VARIANTS[i];
    if ((big && !v->big_too) || (only && !strstr(v->name, only)))
      continue;
    int batch = v->batch ? v->batch : big ? 1 : 3;
    float *x = random_input(g, batch, 3);
    Graph *ref = load_spec(spec);  // the plain graph: the oracle's own plan
    float *want = ref && plan_plain(ref) ? ref_run_output(ref, w, x, batch) : NULL;
    failures += !want || !run_variant(spec, v, w, x, batch, want);
    runs++;
    free(want);
    graph_free(ref);
    free(x);
  }
  printf("%d variant(s) of '%s' emulated, %d failure(s)\n", runs, g->name, failures);
  if (only && !runs) {
    fprintf(stderr, "no variant's name contains '%s'\n", only);
    failures++;
  }
  weights_free(w);
  graph_free(g);
  return failures ? 1 : 0;
}
