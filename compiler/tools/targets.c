// The targets a compiled graph runs on, as a table like the pass table: a row names the
// target and how it runs a batch. `run` and `golden check` look targets up here instead
// of comparing strings; adding a target is a backend folder and a row.
#include <string.h>

#include "../backends/cpu/cpu.h"
#include "cli.h"

static bool run_ref(Graph *g, const Weights *w, const float *x, int batch, const int *want,
                    int n_want, const TargetOptions *o, float **out) {
  (void)o;
  return ref_run(g, w, x, batch, want, n_want, out);
}

static bool run_cpu(Graph *g, const Weights *w, const float *x, int batch, const int *want,
                    int n_want, const TargetOptions *o, float **out) {
  return cpu_run_graph(g, w, x, batch, want, n_want, &o->cpu, out);
}

static const Target TARGETS[] = {
    {"ref", "the reference executor (the oracle): plain C loops, double sums", run_ref, 0},
    {"cpu", "native code through LLVM for this CPU, JIT-compiled in process", run_cpu, CPU_TOLERANCE},
    {"cuda", "generated kernels compiled by NVRTC, run on the GPU(s)", NULL, 0},
};

const Target *target_find(const char *name) {
  for (size_t i = 0; i < sizeof TARGETS / sizeof *TARGETS; i++)
    if (!strcmp(TARGETS[i].name, name))
      return &TARGETS[i];
  return NULL;
}

const char *target_names(void) { return "ref, cpu, cuda"; }
