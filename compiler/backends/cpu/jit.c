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

bool cpu_target(const char *cpu, CpuTarget *t, LLVMTargetMachineRef *tm) {
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

// The module for nodes `want` of g, optimised for the target; NULL after a message.
static LLVMModuleRef build(const Graph *g, const int *want, int n_want, const CpuTarget *t,
                           LLVMTargetMachineRef tm, LLVMContextRef ctx, RtCpuProgram *program) {
  LLVMModuleRef m;
  if (!cpu_codegen(g, want, n_want, t, ctx, &m, program))
    return NULL;
  cpu_emit_probe(m, t, CPU_PROBE_SYMBOL);
  if (!cpu_optimise(m, tm)) {
    LLVMDisposeModule(m);
    cpu_program_free(program);
    return NULL;
  }
  return m;
}

struct CpuJit {
  CpuTarget target;
  RtCpuProgram program;
  LLVMOrcLLJITRef jit;
  RtCpuKernel probe;
};

RtCpuKernel cpu_jit_probe(const CpuJit *j) { return j->probe; }

const RtCpuProgram *cpu_jit_program(const CpuJit *j) { return &j->program; }
const CpuTarget *cpu_jit_target(const CpuJit *j) { return &j->target; }

// Loads the object into a fresh LLJIT whose symbols resolve against this process (libm's
// exp and pow, memcpy) and looks every kernel up.
static bool load_object(CpuJit *j, LLVMMemoryBufferRef obj) {
  if (!consume_error(LLVMOrcCreateLLJIT(&j->jit, NULL), "starting the JIT")) {
    LLVMDisposeMemoryBuffer(obj);
    return false;
  }
  LLVMOrcJITDylibRef lib = LLVMOrcLLJITGetMainJITDylib(j->jit);
  LLVMOrcDefinitionGeneratorRef gen;
  if (!consume_error(LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
                         &gen, LLVMOrcLLJITGetGlobalPrefix(j->jit), NULL, NULL),
                     "resolving symbols")) {
    LLVMDisposeMemoryBuffer(obj);
    return false;
  }
  LLVMOrcJITDylibAddGenerator(lib, gen);
  if (!consume_error(LLVMOrcLLJITAddObjectFile(j->jit, lib, obj), "loading the object"))
    return false;
  for (int i = 0; i < j->program.n_steps; i++) {
    RtCpuStep *s = &j->program.steps[i];
    if (s->kind != RT_CPU_RUN)
      continue;
    LLVMOrcExecutorAddress addr = 0;
    if (!consume_error(LLVMOrcLLJITLookup(j->jit, &addr, s->symbol), s->symbol))
      return false;
    s->fn = (RtCpuKernel)(uintptr_t)addr;
  }
  LLVMOrcExecutorAddress addr = 0;
  if (!consume_error(LLVMOrcLLJITLookup(j->jit, &addr, CPU_PROBE_SYMBOL), CPU_PROBE_SYMBOL))
    return false;
  j->probe = (RtCpuKernel)(uintptr_t)addr;
  return true;
}

CpuJit *cpu_jit(const Graph *g, const int *want, int n_want, const CpuOptions *o) {
  CpuJit *j = xcalloc(1, sizeof *j);
  LLVMTargetMachineRef tm;
  if (!cpu_target(o->cpu, &j->target, &tm)) {
    free(j);
    return NULL;
  }
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m = build(g, want, n_want, &j->target, tm, ctx, &j->program);
  LLVMMemoryBufferRef obj = NULL;
  char *msg = NULL;
  bool ok = m != NULL;
  if (ok && LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMObjectFile, &msg, &obj)) {
    error("cpu: emitting machine code failed: %s", msg ? msg : "");
    ok = false;
  }
  LLVMDisposeMessage(msg);
  if (m)
    LLVMDisposeModule(m);
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  if (ok && cpu_host_can_run(&j->target))
    ok = load_object(j, obj);  // which owns obj from here
  else if (obj)
    LLVMDisposeMemoryBuffer(obj), ok = false;
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
  cpu_program_free(&j->program);
  cpu_target_free(&j->target);
  free(j);
}

bool cpu_emit_llvm(const Graph *g, const CpuOptions *o, const char *dir) {
  CpuTarget t;
  LLVMTargetMachineRef tm;
  if (!cpu_target(o->cpu, &t, &tm))
    return false;
  LLVMContextRef ctx = LLVMContextCreate();
  RtCpuProgram program;
  LLVMModuleRef m = build(g, &g->output, 1, &t, tm, ctx, &program);
  bool ok = m != NULL;
  if (ok) {
    char *path = format("%s/%s.ll", dir, g->name), *text = LLVMPrintModuleToString(m);
    ok = rt_write_file_atomic(path, text, strlen(text));
    if (!ok)
      error("%s", rt_error());
    LLVMDisposeMessage(text);
    free(path);
    LLVMDisposeModule(m);
    cpu_program_free(&program);
  }
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  cpu_target_free(&t);
  return ok;
}

// ---------------------------------------------------------------- running

const float *cpu_weight_by_name(void *ctx, const char *name) {
  const Weights *w = ctx;
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, name))
      return w->data[i];
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
