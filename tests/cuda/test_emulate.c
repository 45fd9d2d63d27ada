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
#include "emu_device.h"


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

// ---------------------------------------------------------------- one variant

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
  EmuMachine e = {.x = x, .y = y, .x_elems = rt_shape_elems(p->in) * batch,
                  .y_elems = out_elems, .max_grid = v->max_grid};
  char *prefix = format("%s/%s-%s", workdir, g->name, v->name);
  bool ok = emu_machine_load(&e, p, prog.source, batch, cxx, emu_header, prefix);
  free(prefix);
  for (int d = 0; d < p->n_devices && ok; d++)
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
  RtPlanOps ops = emu_plan_ops(&e);
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
  emu_machine_free(&e);
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
