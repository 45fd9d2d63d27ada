// `alexc compile`: a network compiled for a target. For now the target is CUDA: the
// generated source per device (--emit-source) and the artifact, a plan file holding
// the steps, the weight slices and the NVRTC-compiled modules (runtime/alexrt_cuda.h),
// or with -o X.so the same bytes inside a shared object (backends/llvm/bundle.h).
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../backends/cuda/cuda.h"
#include "../backends/cuda/train.h"
#include "../backends/llvm/bundle.h"
#include "cli.h"

static const char COMPILE_HELP[] =
    "usage: alexc compile SPEC --target cuda [--arch sm_90|native] [--precision fp32|tf32|bf16]\n"
    "                     [--conv gemm|direct|implicit|fused] [--emit-source DIR] [-o OUT]\n"
    "\n"
    "Compiles the network for a target: CUDA C++ for every (fused) node, compiled by\n"
    "NVRTC, and the plan that runs it (launches, cuBLAS GEMMs for fc layers, transfers).\n"
    "\n"
    "  --target cuda     this help's target (--target cpu: alexc compile --target cpu --help)\n"
    CUDA_OPTIONS_HELP
    "  --emit-source DIR write the generated source as DIR/deviceN.cu (no NVRTC needed)\n"
    "  --train           with --emit-source: the training step instead (DIR/train.cu, or\n"
    "                    DIR/train-deviceN.cu with --devices N; the spec's graph as parsed;\n"
    "                    compiler/backends/cuda/README.md)\n"
    "  --layer NAME      compile the network as if it ended at layer NAME (what alexc run\n"
    "                    --target cuda --layer NAME runs)\n"
    "  -o OUT            write the artifact (needs NVRTC). OUT ending in .so: a shared\n"
    "                    object holding the plan and the modules, for alexrt and the\n"
    "                    runtime (built with LLVM, linked by $CC or cc); otherwise the\n"
    "                    plan file: a text header, then the modules (runtime/cuda_plan.c)\n"
    PASS_OPTIONS_HELP
    "\n"
    "NVRTC results are cached in $ALEXC_CACHE (default ~/.cache/alexc; 'off': no cache).\n";

// -o OUT: a bundle (.so) or the plan file; false after a message.
static bool write_artifact(const RtPlan *plan, const char *out) {
  size_t n = strlen(out);
  if (n < 3 || strcmp(out + n - 3, ".so") != 0) {
    if (!rt_plan_save(plan, out)) {
      error("%s", rt_error());
      return false;
    }
    return true;
  }
  uint8_t *bytes;
  size_t size;
  if (!rt_plan_serialize(plan, &bytes, &size)) {
    error("%s", rt_error());
    return false;
  }
  bool ok = llvm_write_bundle(bytes, size, out);
  free(bytes);
  return ok;
}

bool make_dirs(const char *path) {
  char *dir = xstrdup(path);
  bool ok = true;
  for (char *s = dir + 1; ok && *s; s++)
    if (*s == '/') {
      *s = 0;
      ok = mkdir(dir, 0755) == 0 || errno == EEXIST;
      *s = '/';
    }
  ok = ok && (mkdir(dir, 0755) == 0 || errno == EEXIST);
  if (!ok)
    error("%s: cannot create directory: %s", dir, strerror(errno));
  free(dir);
  return ok;
}

// --train: the training step's source (compiler/backends/cuda/train.c), written as
// DIR/train.cu, or DIR/train-deviceN.cu per device of a --devices split. Not compiled into
// an artifact yet: nothing runs it but the emulation.
static int compile_train(const char *spec, const PassOptions *passes, const char *out,
                         const char *emit) {
  if (out || !emit)
    return usage_error("compile", "--train: only --emit-source DIR for now (no artifact)");
  Graph *g = load_spec(spec);
  CudaTrainPlan t;
  bool ok = g && cuda_train_generate(g, NULL, passes->devices, &t);
  if (ok) {
    ok = make_dirs(emit);  // says why not itself
    for (int d = 0; ok && d < t.devices; d++) {
      char *path = t.devices > 1 ? format("%s/train-device%d.cu", emit, d)
                                 : format("%s/train.cu", emit);
      if (!(ok = rt_write_file_atomic(path, t.source[d], strlen(t.source[d]))))
        error("%s", rt_error());
      free(path);
    }
    cuda_train_free(&t);
  }
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}

int cmd_compile_cuda(int argc, char **argv) {
  static const struct option opts[] = {
      {"target", required_argument, 0, 'T'}, {"emit-source", required_argument, 0, 'e'},
      {"output", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'},
      {"layer", required_argument, 0, 'l'}, {"train", no_argument, 0, 't'},
      CUDA_LONG_OPTIONS,                     PASS_LONG_OPTIONS,
      {0, 0, 0, 0}};
  const char *target = NULL, *arch_opt = NULL, *emit = NULL, *out = NULL, *cut_at = NULL;
  char arch[16];
  bool train = false;
  PassOptions passes = pass_defaults();
  CudaOptions cuda = cuda_defaults();
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    int rc = target_option("compile", c, optarg, &passes, &cuda, &arch_opt);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'T': target = optarg; break;
    case 'e': emit = optarg; break;
    case 'o': out = optarg; break;
    case 'l': cut_at = optarg; break;
    case 't': train = true; break;
    case 'h':
      fputs(COMPILE_HELP, stdout);
      return EXIT_OK;
    default:
      return usage_error("compile", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("compile", "expected one SPEC file");
  if (!target || strcmp(target, "cuda") != 0)
    return usage_error("compile", "--target: want 'cuda'%s%s", target ? ", not " : "",
                       target ? target : "");
  if (!out && !emit)
    return usage_error("compile", "nothing to write: give -o OUT and/or --emit-source DIR");
  if (!resolve_arch(arch_opt, false, arch, sizeof arch))
    return EXIT_ERR;

  if (train)
    return compile_train(argv[optind], &passes, out, emit);
  Graph *g = load_spec(argv[optind]);
  if (g && cut_at && !cut_at_layer(g, cut_at)) {
    graph_free(g);
    return EXIT_ERR;
  }
  char *layer = g ? g->nodes[g->output].name : NULL;
  if (!g || !compile_graph(g, &passes, &layer, 1)) {
    graph_free(g);
    return EXIT_ERR;
  }
  char *how = cuda_describe_options(&passes);
  CudaProgram prog;
  bool generated = cuda_generate(g, how, &cuda, &prog), ok = generated;
  if (ok && emit) {
    ok = make_dirs(emit);
    for (int d = 0; ok && d < g->n_devices; d++) {
      char *path = format("%s/device%d.cu", emit, d);
      ok = rt_write_file_atomic(path, prog.source[d], strlen(prog.source[d]));
      if (!ok)
        error("%s", rt_error());
      free(path);
    }
  }
  if (ok && out) {
    ok = cuda_compile(&prog, arch);
    ok = ok && write_artifact(&prog.plan, out);
  }
  if (ok && out) {
    size_t bytes = 0;
    for (int d = 0; d < g->n_devices; d++)
      bytes += prog.plan.dev[d].cubin_size;
    printf("compiled '%s' (%s) for %s: %d steps, %zu bytes of CUBIN -> %s\n", g->name, how, arch,
           prog.plan.n_steps, bytes, out);
  }
  if (generated)
    cuda_program_free(&prog);
  free(how);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
