// The CPU target's machine code: a TargetMachine for the host (or --cpu NAME), an
// explicit optimisation pipeline, the object file, and ORC's LLJIT to load it in process.
//
// The JIT is handed the object file the target machine emitted, not the IR: the code
// that runs is exactly what an AOT bundle of the same module would hold, for the CPU
// the user chose, whatever the JIT would have picked for itself.
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "backend.h"

// The CPUs --cpu accepts: the x86-64 levels, which every x86 CPU of the last decade
// meets one of. Each names what the host must have to run its code.
static const struct {
  const char *name, *isa;
  int vector, registers;
} LEVELS[] = {
    {"x86-64", "sse2", 4, 16},
    {"x86-64-v2", "sse2", 4, 16},
    {"x86-64-v3", "avx2", 8, 16},
    {"x86-64-v4", "avx512", 16, 32},
};

static void target_from_features(CpuTarget *t) {
  const char *f = t->features;
  if (strstr(f, "+avx512f"))
    t->vector = 16, t->registers = 32, t->isa = "avx512";
  else if (strstr(f, "+avx2") && strstr(f, "+fma"))
    t->vector = 8, t->registers = 16, t->isa = "avx2";
  else
    t->vector = 4, t->registers = 16, t->isa = "sse2";
}

bool cpu_target(const CpuOptions *o, CpuTarget *t, LLVMTargetMachineRef *tm) {
  const char *cpu = o->cpu;
  *t = (CpuTarget){0};
  if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) {
    error("cpu: this LLVM cannot generate code for the host (no native target)");
    return false;
  }
  bool host = !cpu || !strcmp(cpu, "native") || !strcmp(cpu, "host");
  if (host) {
    char *name = LLVMGetHostCPUName(), *features = LLVMGetHostCPUFeatures();
    snprintf(t->cpu, sizeof t->cpu, "%s", name);
    t->features = xstrdup(features);
    LLVMDisposeMessage(name);
    LLVMDisposeMessage(features);
    target_from_features(t);
  } else {
    size_t k = 0, n = sizeof LEVELS / sizeof *LEVELS;
    while (k < n && strcmp(LEVELS[k].name, cpu))
      k++;
    if (k == n) {
      error("cpu: unknown --cpu '%s' (native, x86-64, x86-64-v2, x86-64-v3, x86-64-v4)", cpu);
      return false;
    }
    snprintf(t->cpu, sizeof t->cpu, "%s", cpu);
    t->features = xstrdup("");
    t->vector = LEVELS[k].vector;
    t->registers = LEVELS[k].registers;
    t->isa = LEVELS[k].isa;
  }
  char *triple = LLVMGetDefaultTargetTriple(), *msg = NULL;
  LLVMTargetRef target;
  if (LLVMGetTargetFromTriple(triple, &target, &msg)) {
    error("cpu: no LLVM target for '%s': %s", triple, msg ? msg : "");
    LLVMDisposeMessage(msg);
    LLVMDisposeMessage(triple);
    cpu_target_free(t);
    return false;
  }
  if (o->bf16 && !strstr(t->features, "+avx512bf16")) {
    error("cpu: --precision bf16 needs AVX512_BF16, which %s does not have", host ?
          "this CPU" : t->cpu);
    LLVMDisposeMessage(triple);
    cpu_target_free(t);
    return false;
  }
  t->bf16 = o->bf16;
  *tm = LLVMCreateTargetMachine(target, triple, t->cpu, t->features, LLVMCodeGenLevelAggressive,
                                LLVMRelocPIC, LLVMCodeModelDefault);
  LLVMDisposeMessage(triple);
  if (!*tm) {
    error("cpu: cannot create a target machine for '%s'", t->cpu);
    cpu_target_free(t);
    return false;
  }
  return true;
}

void cpu_target_free(CpuTarget *t) {
  free(t->features);
  t->features = NULL;
}

bool cpu_host_can_run(const CpuTarget *t) {
  bool ok = rt_cpu_host_has(t->isa);
  if (!ok)
    error("cpu: code for '%s' needs %s, which this CPU does not have (try --cpu x86-64-v3 or "
          "x86-64)", t->cpu, t->isa);
  return ok;
}

// ---------------------------------------------------------------- compiling

static bool consume_error(LLVMErrorRef e, const char *what) {
  if (!e)
    return true;
  char *msg = LLVMGetErrorMessage(e);
  error("cpu: %s: %s", what, msg);
  LLVMDisposeErrorMessage(msg);
  return false;
}

// Verifies and optimises the module for tm: the O3 pipeline (SROA promotes the
// accumulators to registers, the loop vectoriser takes the row loops of LRN and pooling).
bool cpu_optimise(LLVMModuleRef m, LLVMTargetMachineRef tm) {
  char *msg = NULL;
  if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg)) {
    error("cpu: the generated module does not verify (a compiler bug): %s", msg ? msg : "");
    LLVMDisposeMessage(msg);
    return false;
  }
  LLVMDisposeMessage(msg);
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(m, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(m, layout);
  LLVMDisposeTargetData(layout);
  LLVMPassBuilderOptionsRef o = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(o, 1);
  LLVMPassBuilderOptionsSetSLPVectorization(o, 1);
  bool ok = consume_error(LLVMRunPasses(m, "default<O3>", tm, o), "optimising");
  LLVMDisposePassBuilderOptions(o);
  return ok;
}

// ---------------------------------------------------------------- the object, cached

// Everything code generation reads of the compiled graph, hashed field by field (not
// as raw structs: padding bytes are not data).
static uint64_t hash_i64(uint64_t h, int64_t v) { return fnv1a(h, &v, sizeof v); }
static uint64_t hash_f64(uint64_t h, double v) { return fnv1a(h, &v, sizeof v); }
static uint64_t hash_str(uint64_t h, const char *s) { return fnv1a(h, s, strlen(s) + 1); }
static uint64_t hash_shape(uint64_t h, Shape s) {
  return hash_i64(hash_i64(hash_i64(hash_i64(h, s.rank), s.c), s.h), s.w);
}

static uint64_t hash_op(uint64_t h, const Node *n) {
  h = hash_str(hash_i64(h, n->op), n->name);
  h = hash_shape(h, n->out);
  const Pads cp = n->conv.pad, pp = n->pool.pad;
  const int64_t ints[] = {n->conv.out, n->conv.kernel, n->conv.stride, cp.top, cp.left,
                          cp.bottom, cp.right, n->conv.groups, n->conv.bias, n->lrn.size,
                          n->lrn.groups, n->pool.kernel, n->pool.stride, pp.top, pp.left,
                          pp.bottom, pp.right, n->pool.ceil_mode, n->fc.out, n->fc.bias};
  for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
    h = hash_i64(h, ints[i]);
  return hash_f64(hash_f64(hash_f64(h, n->lrn.alpha), n->lrn.beta), n->lrn.k);
}

static uint64_t hash_graph(uint64_t h, const Graph *g, const int *want, int n_want) {
  h = hash_i64(hash_i64(h, g->n_nodes), g->n_devices);
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    h = hash_shape(hash_op(h, n), n->head_out);
    for (int k = 0; k < n->n_inputs; k++)
      h = hash_i64(h, n->inputs[k]);
    h = hash_i64(h, n->n_epilogue);
    for (int k = 0; k < n->n_epilogue; k++)
      h = hash_op(h, &n->epilogue[k]);
    for (int d = 0; d < g->n_devices; d++) {
      const Placement *p = &n->place[d];
      for (int k = 0; k <= n->n_epilogue; k++)
        h = hash_i64(hash_i64(h, p->stage[k].begin), p->stage[k].end);
      h = hash_i64(hash_i64(hash_i64(h, p->held.begin), p->held.end), p->offset);
    }
  }
  for (int t = 0; t < g->n_transfers; t++) {
    const Transfer *x = &g->transfers[t];
    h = hash_i64(hash_i64(hash_i64(hash_i64(hash_i64(h, x->node), x->from), x->to),
                          x->range.begin), x->range.end);
  }
  for (int d = 0; d < g->n_devices; d++)
    h = hash_i64(h, g->arena[d]);
  for (int k = 0; k < n_want; k++)
    h = hash_i64(h, want[k]);
  return h;
}

// This alexc itself: a cache entry made by another build of the code generator must not
// be taken for ours. Hashing our own executable is simple and cannot go stale.
static uint64_t hash_self(uint64_t h) {
  static uint64_t self;
  static bool done;
  if (!done) {
    uint8_t *data;
    size_t size;
    self = rt_read_file("/proc/self/exe", (size_t)1 << 30, &data, &size) ? fnv1a(FNV_OFFSET, data, size)
                                                                        : 0;
    if (self)
      free(data);
    done = true;
  }
  return hash_i64(h, (int64_t)self);
}

// Compiles the module (kernels, program, probe) and emits its object; false after a message.
static bool compile_object(const Graph *g, const int *want, int n_want, const CpuTarget *t,
                           LLVMTargetMachineRef tm, uint8_t **obj, size_t *size) {
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m;
  RtCpuProgram program;
  bool ok = cpu_codegen(g, want, n_want, t, ctx, &m, &program);
  if (ok) {
    rt_cpu_program_free(&program);  // the module holds it as text
    cpu_emit_probe(m, t, CPU_PROBE_SYMBOL);
    ok = cpu_optimise(m, tm);
    LLVMMemoryBufferRef buf = NULL;
    char *msg = NULL;
    if (ok && LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMObjectFile, &msg, &buf)) {
      error("cpu: emitting machine code failed: %s", msg ? msg : "");
      ok = false;
    }
    LLVMDisposeMessage(msg);
    if (ok) {
      *size = LLVMGetBufferSize(buf);
      *obj = xcalloc(*size, 1);
      memcpy(*obj, LLVMGetBufferStart(buf), *size);
      LLVMDisposeMemoryBuffer(buf);
    }
    LLVMDisposeModule(m);
  }
  LLVMContextDispose(ctx);
  return ok;
}

bool cpu_object(const Graph *g, const int *want, int n_want, const CpuOptions *o, CpuTarget *t,
                uint8_t **obj, size_t *size) {
  LLVMTargetMachineRef tm;
  if (!cpu_target(o, t, &tm))
    return false;
  uint64_t h = hash_str(hash_self(FNV_OFFSET), "alexc-cpu-object-1");
  h = hash_graph(hash_i64(hash_str(hash_str(h, t->cpu), t->features), t->bf16), g, want, n_want);
  char *dir = cache_dir();
  char *path = dir ? format("%s/%016llx.cpu.o", dir, (unsigned long long)h) : NULL;
  bool ok = path && rt_read_file(path, (size_t)1 << 30, obj, size);
  if (ok && (*size < 64 || memcmp(*obj, "\177ELF", 4) != 0)) {  // not ours after all: rebuild
    free(*obj);
    ok = false;
  }
  if (!ok) {
    ok = compile_object(g, want, n_want, t, tm, obj, size);
    if (ok && path)
      rt_write_file_atomic(path, *obj, *size);  // a cache that cannot be written is only slower
  }
  LLVMDisposeTargetMachine(tm);
  free(path);
  free(dir);
  if (!ok)
    cpu_target_free(t);
  return ok;
}

// ---------------------------------------------------------------- the JIT

struct CpuJit {
  CpuTarget target;
  RtCpuProgram program;
  LLVMOrcLLJITRef jit;
  RtCpuKernel probe;
};

RtCpuKernel cpu_jit_probe(const CpuJit *j) { return j->probe; }
const RtCpuProgram *cpu_jit_program(const CpuJit *j) { return &j->program; }
const CpuTarget *cpu_jit_target(const CpuJit *j) { return &j->target; }

static bool lookup(CpuJit *j, const char *name, LLVMOrcExecutorAddress *addr) {
  return consume_error(LLVMOrcLLJITLookup(j->jit, addr, name), name);
}

// Loads the object into a fresh LLJIT whose symbols resolve against this process (libm's
// exp and pow, memcpy), then reads the program out of it as a compiled model's runtime
// does: its text, parsed and checked, and its kernel table.
static bool load_object(CpuJit *j, const uint8_t *obj, size_t size) {
  if (!consume_error(LLVMOrcCreateLLJIT(&j->jit, NULL), "starting the JIT"))
    return false;
  LLVMOrcJITDylibRef lib = LLVMOrcLLJITGetMainJITDylib(j->jit);
  LLVMOrcDefinitionGeneratorRef gen;
  if (!consume_error(LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
                         &gen, LLVMOrcLLJITGetGlobalPrefix(j->jit), NULL, NULL),
                     "resolving symbols"))
    return false;
  LLVMOrcJITDylibAddGenerator(lib, gen);
  LLVMMemoryBufferRef buf =
      LLVMCreateMemoryBufferWithMemoryRangeCopy((const char *)obj, size, "alexc-cpu-model");
  if (!consume_error(LLVMOrcLLJITAddObjectFile(j->jit, lib, buf), "loading the object"))
    return false;
  LLVMOrcExecutorAddress text_fn = 0, table = 0, probe = 0;
  if (!lookup(j, "alexc_cpu_program_v1", &text_fn) || !lookup(j, "alexc_cpu_kernels_v1", &table) ||
      !lookup(j, CPU_PROBE_SYMBOL, &probe))
    return false;
  unsigned long long text_size = 0;
  const char *text = ((const char *(*)(unsigned long long *))(uintptr_t)text_fn)(&text_size);
  char isa[16];
  int64_t in_shape[3], out_shapes[256][3];
  if (!rt_cpu_program_parse(text, text_size, &j->program, isa, sizeof isa, in_shape, out_shapes,
                            256)) {
    error("cpu: the compiled program does not parse (a compiler bug): %s", rt_error());
    return false;
  }
  const RtCpuKernel *kernels = (const RtCpuKernel *)(uintptr_t)table;
  for (int i = 0, k = 0; i < j->program.n_steps; i++)
    if (j->program.steps[i].kind == RT_CPU_RUN)
      j->program.steps[i].fn = kernels[k++];
  j->probe = (RtCpuKernel)(uintptr_t)probe;
  return true;
}

CpuJit *cpu_jit(const Graph *g, const int *want, int n_want, const CpuOptions *o) {
  CpuJit *j = xcalloc(1, sizeof *j);
  uint8_t *obj = NULL;
  size_t size = 0;
  bool ok = cpu_object(g, want, n_want, o, &j->target, &obj, &size);
  if (!ok) {
    free(j);
    return NULL;
  }
  ok = cpu_host_can_run(&j->target) && load_object(j, obj, size);
  free(obj);
  if (!ok) {
    cpu_jit_free(j);
    return NULL;
  }
  return j;
}

void cpu_jit_free(CpuJit *j) {
  if (!j)
    return;
  if (j->jit)
    LLVMOrcDisposeLLJIT(j->jit);
  rt_cpu_program_free(&j->program);
  cpu_target_free(&j->target);
  free(j);
}

bool cpu_emit_llvm(const Graph *g, const CpuOptions *o, const char *dir) {
  CpuTarget t;
  LLVMTargetMachineRef tm;
  if (!cpu_target(o, &t, &tm))
    return false;
  LLVMContextRef ctx = LLVMContextCreate();
  RtCpuProgram program;
  LLVMModuleRef m;
  bool ok = cpu_codegen(g, &g->output, 1, &t, ctx, &m, &program);
  if (ok) {
    rt_cpu_program_free(&program);
    ok = cpu_optimise(m, tm);
    char *path = format("%s/%s.ll", dir, g->name), *text = LLVMPrintModuleToString(m);
    ok = ok && rt_write_file_atomic(path, text, strlen(text));
    if (!ok)
      error("%s", rt_error());
    LLVMDisposeMessage(text);
    free(path);
    LLVMDisposeModule(m);
  }
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  cpu_target_free(&t);
  return ok;
}

// ---------------------------------------------------------------- running

const float *cpu_weight_by_name(void *ctx, const char *name, int rank, const int64_t *dims) {
  const Weights *w = ctx;
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, name)) {
      // Weights are checked against the spec when loaded; this is the compiler's own
      // consistency check.
      if (w->info[i].rank != rank || memcmp(w->info[i].dims, dims, rank * sizeof *dims)) {
        rt_fail("internal error: tensor '%s' has another shape than the program's", name);
        return NULL;
      }
      return w->data[i];
    }
  rt_fail("no tensor '%s' among the weights", name);
  return NULL;
}

bool cpu_run_graph(const Graph *g, const Weights *w, const float *x, int batch, const int *want,
                   int n_want, const CpuOptions *o, float **out) {
  CpuJit *j = cpu_jit(g, want, n_want, o);
  if (!j)
    return false;
  for (int k = 0; k < n_want; k++)
    out[k] = xcalloc(shape_elems(g->nodes[want[k]].out) * batch, sizeof(float));
  RtCpuModel *m = rt_cpu_load(&j->program, cpu_weight_by_name, (void *)w, o->threads);
  bool ok = m && rt_cpu_run(m, x, batch, out);
  if (!ok)
    error("cpu: %s", rt_error());
  rt_cpu_free(m);
  cpu_jit_free(j);
  return ok;
}
