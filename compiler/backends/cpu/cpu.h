// The CPU target: the compiled graph as native code through the LLVM C API.
//
//   codegen.c   graph (after fuse, partition, memplan) -> LLVM module + RtCpuProgram:
//               the schedule (which kernel runs where, the copies between them)
//   kernels.c   the IR of each node's kernel (conv micro-kernels, fc, lrn, pool, ...)
//   jit.c       target machine, optimisation pipeline, the object (cached), ORC LLJIT
//   aot.c       the object as a .so with a C header, or linked into an executable
//
// The program (runtime/alexrt_cpu.h) is what the runtime executes; the module exports
// it as text with a table of its kernels, which the JIT, a .so and an executable read
// the same way. This header has no LLVM types (an alexc built without LLVM has the same
// calls, saying why not: no_cpu.c); backend.h has the rest.
#ifndef ALEXC_CPU_H
#define ALEXC_CPU_H

#include "../../alexc.h"
#include "alexrt_cpu.h"

typedef struct {
  const char *cpu;  // NULL or "native": the host; else x86-64, x86-64-v2, -v3, -v4
  int threads;      // 0: one per core
  bool bf16;        // fc layers with bfloat16 weights and inputs, float sums (AVX512_BF16)
} CpuOptions;

// What the generated code may use, derived from the target machine.
typedef struct {
  char cpu[64];
  char *features;  // LLVM feature string (owned)
  int vector;      // floats per vector register: 16 (AVX-512), 8 (AVX2), 4 (SSE)
  int registers;   // vector registers: 32 or 16
  const char *isa; // "avx512", "avx2" or "sse2": what the host must have to run it
  bool bf16;       // fc layers in bf16 (asked for, and the target has AVX512_BF16)
} CpuTarget;

// FMA chains the peak probe runs per thread (see cpu_emit_probe in backend.h).
static inline int cpu_probe_chains(const CpuTarget *t) { return t->registers >= 32 ? 16 : 12; }

// ---- jit.c

// Whether this machine can run code for t; false after a message naming what is missing.
bool cpu_host_can_run(const CpuTarget *t);

typedef struct CpuJit CpuJit;
// Compiles g for nodes want[0..n_want) and loads it in this process: the program's
// kernels are callable. NULL after a message.
CpuJit *cpu_jit(const Graph *g, const int *want, int n_want, const CpuOptions *o);
const RtCpuProgram *cpu_jit_program(const CpuJit *j);
// The peak probe compiled with the kernels (see cpu_emit_probe).
RtCpuKernel cpu_jit_probe(const CpuJit *j);
const CpuTarget *cpu_jit_target(const CpuJit *j);
void cpu_jit_free(CpuJit *j);
// Writes the optimised module as DIR/<graph>.ll. False after a message.
bool cpu_emit_llvm(const Graph *g, const CpuOptions *o, const char *dir);

// Weights by tensor name, for rt_cpu_load (ctx is a Weights *).
const float *cpu_weight_by_name(void *ctx, const char *name, int rank, const int64_t *dims);

// The largest relative difference (compare()) from the reference the CPU target allows
// in fp32: its sums are float (the reference's double), in another order. With bf16 fc
// layers, CPU_BF16_TOLERANCE (measured: see tests/cpu/test_cpu.c).
#define CPU_TOLERANCE 1e-5
#define CPU_BF16_TOLERANCE 1e-2

// ---- aot.c

// alexc compile --target cpu -o PATH.so: the model as a shared object (program text and
// kernel table, see aot.c), and with `header` a C header describing it.
bool cpu_write_so(const Graph *g, const CpuOptions *o, const char *path, const char *header);
// alexc build: a standalone executable that classifies photos, linked with the runtime
// and main found in runner_dir (libalexrt.a, libalexc_classify.a).
bool cpu_write_executable(const Graph *g, const CpuOptions *o, const char *path,
                          const char *runner_dir);

// Runs a batch through the compiled graph with the given weights, as ref_run does: the
// outputs of nodes want[k] to out[k] (allocated, (batch, node shape)). False after a
// message.
bool cpu_run_graph(const Graph *g, const Weights *w, const float *x, int batch, const int *want,
                   int n_want, const CpuOptions *o, float **out);

#endif
