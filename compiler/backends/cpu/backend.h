// The CPU backend's own interface between its files (codegen.c, kernels.c, jit.c), with
// LLVM's types. Users of the target include cpu.h.
#ifndef ALEXC_CPU_BACKEND_H
#define ALEXC_CPU_BACKEND_H

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>

#include "cpu.h"

// ---- codegen.c

// Builds the module computing nodes want[0..n_want) of g (after the passes) and the
// program that runs it. Kernel pointers in the program are left NULL. False after a
// message.
bool cpu_codegen(const Graph *g, const int *want, int n_want, const CpuTarget *t,
                 LLVMContextRef ctx, LLVMModuleRef *module, RtCpuProgram *program);

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
// Adds the FMA peak probe (a kernel: each item runs `batch` iterations of cpu_probe_chains
// FMA chains; FLOPs per item = batch * chains * 2 * vector; needs 16 * vector floats of
// scratch).

void cpu_emit_probe(LLVMModuleRef m, const CpuTarget *t, const char *symbol);
#define CPU_PROBE_SYMBOL "alexc_fma_probe"

// ---- jit.c

// Chooses the target machine for o->cpu, and whether its fc layers use bf16 (o->bf16;
// an error when the target lacks AVX512_BF16). False after a message.
bool cpu_target(const CpuOptions *o, CpuTarget *t, LLVMTargetMachineRef *tm);
void cpu_target_free(CpuTarget *t);
// The model's object code for nodes `want` of g: from the cache ($ALEXC_CACHE, keyed
// by a hash of this alexc, the target and the compiled graph), or compiled and cached.
// Fills t (free with cpu_target_free). False after a message.
bool cpu_object(const Graph *g, const int *want, int n_want, const CpuOptions *o, CpuTarget *t,
                uint8_t **obj, size_t *size);
// Verifies the module and runs the O3 pipeline for tm. False after a message.
bool cpu_optimise(LLVMModuleRef m, LLVMTargetMachineRef tm);

#endif
