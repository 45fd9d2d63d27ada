// An alexc built without LLVM (-DALEXC_LLVM=OFF, the GPU machine's build) has the CPU
// target's calls, each saying why it cannot run.
#include "cpu.h"

static bool no_llvm(void) {
  error("cpu: this alexc was built without LLVM (-DALEXC_LLVM=OFF): no --target cpu");
  return false;
}

bool cpu_run_graph(const Graph *g, const Weights *w, const float *x, int batch, const int *want,
                   int n_want, const CpuOptions *o, float **out) {
  (void)g, (void)w, (void)x, (void)batch, (void)want, (void)n_want, (void)o, (void)out;
  return no_llvm();
}

bool cpu_emit_llvm(const Graph *g, const CpuOptions *o, const char *dir) {
  (void)g, (void)o, (void)dir;
  return no_llvm();
}

int cmd_bench_cpu(int argc, char **argv) {
  (void)argc, (void)argv;
  return no_llvm() ? 0 : 1;
}

int cmd_compile_cpu(int argc, char **argv) {
  (void)argc, (void)argv;
  return no_llvm() ? 0 : 1;
}

int cmd_build(int argc, char **argv) {
  (void)argc, (void)argv;
  return no_llvm() ? 0 : 1;
}
