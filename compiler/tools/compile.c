// `alexc compile`: a network compiled for a target. For now the target is CUDA: the
// generated source per device (--emit-source) and the artifact, a plan file holding
// the steps, the weight slices and the NVRTC-compiled modules (runtime/alexrt_cuda.h).
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../backends/cuda/cuda.h"
#include "cli.h"

static const char COMPILE_HELP[] =
    "usage: alexc compile SPEC --target cuda [--arch sm_90] [--precision fp32]\n"
    "                     [--conv gemm|direct] [--emit-source DIR] [-o OUT]\n"
    "\n"
    "Compiles the network for a target: CUDA C++ for every (fused) node, compiled by\n"
    "NVRTC, and the plan that runs it (launches, cuBLAS GEMMs for fc layers, transfers).\n"
    "\n"
    "  --target cuda       the only compiling target so far\n"
    "  --arch sm_XX        GPU architecture of the CUBIN (default sm_90); the artifact\n"
    "                      also holds compute_XX PTX, which newer GPUs can JIT\n"
    "  --precision fp32    arithmetic precision (fp32 only, so far)\n"
    "  --conv gemm|direct  how convolutions run: 'gemm' (default): im2col + cuBLAS SGEMM\n"
    "                      per group + one kernel for bias and the fused ReLU/LRN/pool,\n"
    "                      each conv output computed once (per-device scratch, at most\n"
    "                      256 MiB, images in chunks); 'direct': one thread per output,\n"
    "                      the conv recomputed in the fused stages (no scratch)\n"
    "  --emit-source DIR   write the generated source as DIR/deviceN.cu (no NVRTC needed)\n"
    "  -o OUT              write the artifact: a text plan header, then the modules\n"
    "                      (see runtime/cuda_plan.c); needs NVRTC\n"
    PASS_OPTIONS_HELP
    "\n"
    "NVRTC results are cached in $ALEXC_CACHE (default ~/.cache/alexc; 'off': no cache).\n";

// mkdir -p
static bool make_dirs(const char *path) {
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

int cmd_compile(int argc, char **argv) {
  static const struct option opts[] = {
      {"target", required_argument, 0, 'T'},    {"arch", required_argument, 0, 'a'},
      {"precision", required_argument, 0, 'p'}, {"emit-source", required_argument, 0, 'e'},
      {"output", required_argument, 0, 'o'},    {"help", no_argument, 0, 'h'},
      {"conv", required_argument, 0, 'C'},
      PASS_LONG_OPTIONS,                        {0, 0, 0, 0}};
  const char *target = NULL, *arch = "sm_90", *emit = NULL, *out = NULL;
  PassOptions passes = pass_defaults();
  CudaOptions cuda = cuda_defaults();
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    int rc = pass_option("compile", c, optarg, &passes);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'T': target = optarg; break;
    case 'a': arch = optarg; break;
    case 'e': emit = optarg; break;
    case 'C':
      if (!cuda_parse_conv(optarg, &cuda.conv))
        return usage_error("compile", "--conv is 'gemm' or 'direct', not '%s'", optarg);
      break;
    case 'o': out = optarg; break;
    case 'p':
      if (strcmp(optarg, "fp32") != 0)
        return usage_error("compile", "--precision: only fp32 so far, not '%s'", optarg);
      break;
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
  if (strncmp(arch, "sm_", 3) != 0 || strlen(arch) < 5 ||
      strspn(arch + 3, "0123456789") != strlen(arch + 3))
    return usage_error("compile", "--arch wants a GPU architecture such as sm_90, not '%s'", arch);

  Graph *g = load_spec(argv[optind]);
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
    if (ok && !(ok = rt_plan_save(&prog.plan, out)))
      error("%s", rt_error());
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
