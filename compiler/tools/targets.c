// The targets a compiled graph runs on, as a table like the pass table: a row names the
// target, how it runs a batch (`run`, `golden check`), and its own `compile` and `bench`
// commands, which own their options. The commands look targets up here instead of
// comparing strings; adding a target is a backend folder and a row.
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
    {"ref", "the reference executor (the oracle): plain C loops, double sums", run_ref, NULL,
     NULL, &ref_train_kernels},
    {"cpu", "native code through LLVM for this CPU, JIT-compiled in process", run_cpu,
     cmd_compile_cpu, cmd_bench_cpu, &cpu_train_kernels},
    {"cuda", "generated kernels compiled by NVRTC, run on the GPU(s)", NULL, cmd_compile_cuda,
     cmd_bench_cuda, NULL},
};

// The --target a command line names (--target T or --target=T), or NULL.
static const char *target_arg(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--target") && i + 1 < argc)
      return argv[i + 1];
    if (!strncmp(argv[i], "--target=", 9))
      return argv[i] + 9;
  }
  return NULL;
}

// `alexc compile` and `alexc bench`: the named target's own command.
static int dispatch(const char *cmd, int argc, char **argv, bool bench) {
  const char *name = target_arg(argc, argv);
  const Target *t = name ? target_find(name) : NULL;
  int (*fn)(int, char **) = t ? (bench ? t->bench : t->compile) : NULL;
  if (fn)
    return fn(argc, argv);
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      // No target named: every target's help, one after the other.
      for (size_t k = 0; k < sizeof TARGETS / sizeof *TARGETS; k++) {
        int (*each)(int, char **) = bench ? TARGETS[k].bench : TARGETS[k].compile;
        char *help_argv[] = {argv[0], "--help", NULL};
        if (!each)
          continue;
        printf("%s--target %s:\n\n", k > 1 ? "\n" : "", TARGETS[k].name);
        fflush(stdout);
        optind = 0;  // each parses its own argv from the start
        each(2, help_argv);
      }
      return EXIT_OK;
    }
  return usage_error(cmd, "--target: want cpu or cuda%s%s", name ? ", not " : "",
                     name ? name : "");
}

int cmd_compile(int argc, char **argv) { return dispatch("compile", argc, argv, false); }
int cmd_bench(int argc, char **argv) { return dispatch("bench", argc, argv, true); }

const Target *target_find(const char *name) {
  for (size_t i = 0; i < sizeof TARGETS / sizeof *TARGETS; i++)
    if (!strcmp(TARGETS[i].name, name))
      return &TARGETS[i];
  return NULL;
}

