// Helpers shared by the subcommands in tools/: option parsing and common loading.
#ifndef ALEXC_CLI_H
#define ALEXC_CLI_H

#include <getopt.h>

#include "../alexc.h"
#include "../backends/cpu/cpu.h"
#include "../backends/cuda/cuda.h"

// Exit codes: 0 ok, 1 error, 2 usage.
enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2 };

// Prints "alexc CMD: MESSAGE" and a pointer to --help; returns EXIT_USAGE.
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

bool parse_u64(const char *s, uint64_t *out);
bool parse_int_in(const char *s, long lo, long hi, int *out);
bool parse_init_scheme(const char *s, InitScheme *out);

// Parses and verifies a spec; NULL (message printed) on error.
Graph *load_spec(const char *path);

// An input batch from a .npy file, checked against the graph's input shape.
// Accepts (N, C, H, W) or a single image (C, H, W).
bool load_input(const Graph *g, const char *path, float **x, int *batch);
// A batch of N(0,1) values from the seed's "input" stream.
float *random_input(const Graph *g, int batch, uint64_t seed);

// Saves a node's output for a batch as .npy: (N, C, H, W) or (N, features).
bool save_output(const Graph *g, int node, const float *y, int batch, const char *path);

// Options every compiling subcommand accepts: --no-fuse, --fuse=LIST, --devices N.
#define PASS_OPT_NO_FUSE 1001
#define PASS_OPT_FUSE 1002
#define PASS_OPT_DEVICES 1003
#define PASS_LONG_OPTIONS                                \
  {"no-fuse", no_argument, 0, PASS_OPT_NO_FUSE},         \
      {"fuse", required_argument, 0, PASS_OPT_FUSE},     \
  {                                                      \
    "devices", required_argument, 0, PASS_OPT_DEVICES    \
  }
#define PASS_OPTIONS_HELP                                                                 \
  "  --no-fuse         compile without fusion (to compare fused against unfused)\n"    \
  "  --fuse=LIST       only these fusion patterns: conv-relu-lrn-pool, conv-relu-lrn,\n" \
  "                    conv-relu-pool, conv-relu, fc-relu-dropout, fc-relu\n"           \
  "  --devices N       plan the model-parallel split over N devices (default 1)\n"

// Handles a PASS_LONG_OPTIONS option: 0 if handled, EXIT_USAGE after a message for a
// bad value, -1 if `c` is not one of them.
// Whether any fusion pattern is on (training fuses its backward unless --no-fuse).
bool any_fusion(const PassOptions *o);
int pass_option(const char *cmd, int c, const char *arg, PassOptions *o);

// Options of the subcommands that target CUDA: --arch, --conv, --precision.
#define CUDA_OPT_ARCH 1101
#define CUDA_OPT_CONV 1102
#define CUDA_OPT_PRECISION 1103
#define CUDA_LONG_OPTIONS                                   \
  {"arch", required_argument, 0, CUDA_OPT_ARCH},            \
      {"conv", required_argument, 0, CUDA_OPT_CONV},        \
  {                                                         \
    "precision", required_argument, 0, CUDA_OPT_PRECISION   \
  }
#define CUDA_OPTIONS_HELP                                                                   \
  "  --arch sm_XX|native  GPU architecture of the CUBIN (default: the GPU present when\n"  \
  "                    running, sm_90 when compiling); the artifact also holds PTX,\n"     \
  "                    which other GPUs can JIT\n"                                          \
  "  --precision P     the GEMMs' arithmetic: fp32 (default; no TF32 anywhere), tf32\n"    \
  "                    (TF32 tensor cores) or bf16 (bfloat16 operands, float sums);\n"    \
  "                    not with --conv direct\n"                                          \
  "  --conv S          'gemm' (default): im2col + cuBLAS per group + one kernel for bias\n" \
  "                    and the fused ReLU/LRN/pool, each conv output computed once (per-\n" \
  "                    device scratch, at most 256 MiB, images in chunks); 'direct': one\n" \
  "                    thread per output, the conv recomputed in fused stages;\n"        \
  "                    'implicit': a tiled implicit-GEMM kernel (no im2col buffer)\n"      \
  "                    then the same kernel for bias and the fused stages; 'fused': the\n" \
  "                    whole node in one kernel, the fused stages computed on the conv\n"  \
  "                    tile in shared memory (no scratch). Per layer: a list such as\n"  \
  "                    'gemm,conv1=fused,conv2=fused' (the default first; gemm if none)\n"

// Handles a CUDA_LONG_OPTIONS option like pass_option; --arch is stored as given.
int cuda_option(const char *cmd, int c, const char *arg, CudaOptions *o, const char **arch);
// pass_option, then cuda_option: the options of the commands that compile for a target.
int target_option(const char *cmd, int c, const char *arg, PassOptions *p, CudaOptions *o,
                  const char **arch);
// The architecture to compile for: `arch` as given (sm_XX, checked by cuda_option), the GPU present for
// "native" or, with no --arch, when `running`; sm_90 otherwise. False after a message.
bool resolve_arch(const char *arch, bool running, char *out, size_t size);

// --layer with --target cuda (run, compile): cuts g at `layer` (graph_truncate), which
// becomes its output. False (message printed) for an unknown layer or the input.
bool cut_at_layer(Graph *g, const char *layer);
// Runs the passes, keeping the named layers observable; false (message printed) on
// error, e.g. an unknown layer.
bool compile_graph(Graph *g, const PassOptions *o, char *const *keep, int n_keep);

// ---- targets (targets.c)

typedef struct {
  CpuOptions cpu;
} TargetOptions;

// A target: how it runs a batch through a compiled graph, writing the outputs of nodes
// want[k] to out[k] as ref_run does (allocated). `run` is NULL for a target that runs
// only through its own command path (cuda: run and bench).
typedef struct {
  const char *name, *help;
  bool (*run)(Graph *g, const Weights *w, const float *x, int batch, const int *want,
              int n_want, const TargetOptions *o, float **out);
  int (*compile)(int argc, char **argv);  // `alexc compile --target T ...`, or NULL
  int (*bench)(int argc, char **argv);    // `alexc bench --target T ...`, or NULL
  const TrainKernels *train;              // `alexc train|eval --target T`, or NULL
} Target;

const Target *target_find(const char *name);  // NULL if unknown

// ---- options both bench targets take (cli.c)

#define BENCH_LONG_OPTIONS                                                       \
  {"batch", required_argument, 0, 'b'}, {"runs", required_argument, 0, 'r'},     \
      {"warmup", required_argument, 0, 'w'}, {                                   \
    "seed", required_argument, 0, 's'                                            \
  }
// Handles --batch, --runs, --warmup, --seed like pass_option (0, EXIT_USAGE, or -1).
int bench_option(int c, const char *arg, int *batch, int *runs, int *warmup, uint64_t *seed);
// `alexc bench --target cpu --train`: the training step's time per layer (bench_train.c).
// fused: the fused training program (else the plain one); compare_unfused: both, in turn.
int bench_train(const char *spec, int batch, int runs, int warmup, int threads, uint64_t seed,
                bool fused, bool compare_unfused);
// The median of v[0..n) (sorts v).
double median(double *v, int n);

// mkdir -p; false after a message.
bool make_dirs(const char *path);

// Relative error used by golden checks: max |got - want| / max |want|.
typedef struct {
  double rel, abs;
  int64_t at;  // flat index of the worst element
  bool finite;
} Compare;
Compare compare(const float *got, const float *want, int64_t n);

#endif
