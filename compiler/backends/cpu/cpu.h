// The CPU target: the compiled graph as native code through the LLVM C API.
//
//   codegen.c   graph (after fuse, partition, memplan) -> LLVM module + RtCpuProgram:
//               the schedule (which kernel runs where, the copies between them)
//   kernels.c   the IR of each node's kernel (conv micro-kernels, fc, lrn, pool, ...)
//   jit.c       target machine, optimisation pipeline, object code, ORC LLJIT
//
// The program (runtime/alexrt_cpu.h) is what the runtime executes; the compiler fills
// in its kernel pointers from the JIT.
#ifndef ALEXC_CPU_H
#define ALEXC_CPU_H

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>

#include "../../alexc.h"
#include "alexrt_cpu.h"

typedef struct {
  const char *cpu;  // NULL or "native": the host; else x86-64, x86-64-v2, -v3, -v4
  int threads;      // 0: one per core
} CpuOptions;

// What the generated code may use, derived from the target machine.
typedef struct {
  char cpu[64];
  char *features;  // LLVM feature string (owned)
  int vector;      // floats per vector register: 16 (AVX-512), 8 (AVX2), 4 (SSE)
  int registers;   // vector registers: 32 or 16
  const char *isa; // "avx512", "avx2" or "sse2": what the host must have to run it
} CpuTarget;

// ---- codegen.c

// Builds the module for computing node `want` of g (after the passes) and the program
// that runs it. Kernel pointers in the program are left NULL. False after a message.
bool cpu_codegen(const Graph *g, int want, const CpuTarget *t, LLVMContextRef ctx,
                 LLVMModuleRef *module, RtCpuProgram *program);
void cpu_program_free(RtCpuProgram *p);

// ---- kernels.c: one kernel's IR, called by codegen.c

// What codegen needs to know of a kernel it asked for.
typedef struct {
  int64_t items;     // work items per image, or in all when !per_image
  bool per_image;
  int64_t scratch;   // floats per thread
  bool has_pack;     // pack below describes its weights
  RtCpuPack pack;
} CpuKernelInfo;

// Adds `symbol`, the kernel computing node i of g on device d, to module m.
void cpu_emit_kernel(LLVMModuleRef m, const CpuTarget *t, const Graph *g, int i, int d,
                     const char *symbol, CpuKernelInfo *info);
// Adds the FMA peak probe (a kernel: each item runs `batch` iterations of 16 FMA chains;
// FLOPs per item = batch * 16 * 2 * vector; needs 16 * vector floats of scratch).
void cpu_emit_probe(LLVMModuleRef m, const CpuTarget *t, const char *symbol);
#define CPU_PROBE_SYMBOL "alexc_fma_probe"

// ---- jit.c

// Chooses the target machine for `cpu` (see CpuOptions). False after a message.
bool cpu_target(const char *cpu, CpuTarget *t, LLVMTargetMachineRef *tm);
void cpu_target_free(CpuTarget *t);
// Whether this machine can run code for t; false after a message naming what is missing.
bool cpu_host_can_run(const CpuTarget *t);

typedef struct CpuJit CpuJit;
// Compiles g for node `want` and loads it in this process: the program's kernels are
// callable. NULL after a message.
CpuJit *cpu_jit(const Graph *g, int want, const CpuOptions *o);
const RtCpuProgram *cpu_jit_program(const CpuJit *j);
// The peak probe compiled with the kernels (see cpu_emit_probe).
RtCpuKernel cpu_jit_probe(const CpuJit *j);
const CpuTarget *cpu_jit_target(const CpuJit *j);
void cpu_jit_free(CpuJit *j);
// Writes the optimised module as DIR/<graph>.ll. False after a message.
bool cpu_emit_llvm(const Graph *g, int want, const CpuOptions *o, const char *dir);

// Weights by tensor name, for rt_cpu_load (ctx is a Weights *).
const float *cpu_weight_by_name(void *ctx, const char *name);

// The largest relative difference (compare()) from the reference the CPU target allows
// in fp32: its sums are float (the reference's double), in another order.
#define CPU_TOLERANCE 1e-5

// Runs a batch through the compiled graph with the given weights: y is (batch, want's
// shape). False after a message.
bool cpu_run_graph(const Graph *g, int want, const CpuOptions *o, const Weights *w,
                   const float *x, int batch, float *y);

#endif
