// `alexc compile --target cpu` and `alexc build`: a network compiled to native code for
// this CPU (or --cpu NAME), as a shared object with a C header, as LLVM IR to read, or
// as a standalone executable that classifies photos.
#define _GNU_SOURCE
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char COMPILE_HELP[] =
    "usage: alexc compile SPEC --target cpu [-o MODEL.so] [--header MODEL.h] [--emit-llvm DIR]\n"
    "                     [--cpu NAME] [--no-fuse] [--devices N] ...\n"
    "\n"
    "Compiles the network to native code through LLVM: one function per (fused) node and\n"
    "device, every shape compiled in, and the program the runtime runs them with.\n"
    "\n"
    "  -o MODEL.so       the model as a shared object (runtime/alexrt_cpu.h loads it)\n"
    "  --header MODEL.h  with -o: a C header with its entry points and tensor shapes\n"
    "                    (default MODEL.h beside MODEL.so)\n"
    "  --emit-llvm DIR   write the optimised LLVM IR as DIR/<network>.ll\n"
    "  --cpu NAME        native (default: this machine), x86-64, x86-64-v2, x86-64-v3\n"
    "                    (AVX2), x86-64-v4 (AVX-512)\n"
    PASS_OPTIONS_HELP;

static const char BUILD_HELP[] =
    "usage: alexc build SPEC (--weights W.safetensors | --seed S) -o PROGRAM [--cpu NAME]\n"
    "\n"
    "Builds a standalone executable that runs the network: PROGRAM classifies JPEG and PNG\n"
    "photos (PROGRAM photo.jpg --top 5 --labels FILE) and runs .npy batches; PROGRAM --help\n"
    "says how. The weights are written beside it as PROGRAM.safetensors. It links only the\n"
    "alexc runtime, libjpeg, libpng and cJSON: no LLVM, no libyaml.\n"
    "\n"
    "  --weights W       the weights (PyTorch's names and layout; see alexc init)\n"
    "  --seed S          instead: initial weights from seed S (--scheme spec|fan-in)\n"
    "  --cpu NAME        as for alexc compile --target cpu\n"
    PASS_OPTIONS_HELP;

typedef struct {
  const char *out, *header, *emit, *weights;
  uint64_t seed;
  bool have_seed;
  InitScheme scheme;
  PassOptions passes;
  CpuOptions cpu;
} Args;

static int parse(const char *cmd, const char *help, int argc, char **argv, Args *a) {
  static const struct option opts[] = {
      {"target", required_argument, 0, 'T'}, {"output", required_argument, 0, 'o'},
      {"header", required_argument, 0, 'H'}, {"emit-llvm", required_argument, 0, 'e'},
      {"cpu", required_argument, 0, 'C'},    {"weights", required_argument, 0, 'w'},
      {"seed", required_argument, 0, 's'},   {"scheme", required_argument, 0, 'S'},
      {"help", no_argument, 0, 'h'},         PASS_LONG_OPTIONS,
      {0, 0, 0, 0}};
  *a = (Args){.passes = pass_defaults()};
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    int rc = pass_option(cmd, c, optarg, &a->passes);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'T':
      if (strcmp(optarg, "cpu"))
        return usage_error(cmd, "--target: want 'cpu', not '%s'", optarg);
      break;
    case 'o': a->out = optarg; break;
    case 'H': a->header = optarg; break;
    case 'e': a->emit = optarg; break;
    case 'C': a->cpu.cpu = optarg; break;
    case 'w': a->weights = optarg; break;
    case 's':
      if (!(a->have_seed = parse_u64(optarg, &a->seed)))
        return usage_error(cmd, "--seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'S':
      if (!parse_init_scheme(optarg, &a->scheme))
        return usage_error(cmd, "--scheme is 'spec' or 'fan-in', not '%s'", optarg);
      break;
    case 'h':
      fputs(help, stdout);
      return -1;
    default:
      return usage_error(cmd, "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error(cmd, "expected one SPEC file");
  return EXIT_OK;
}

static Graph *compiled(const char *spec, const PassOptions *passes) {
  Graph *g = load_spec(spec);
  char *layer = g ? g->nodes[g->output].name : NULL;
  if (g && !compile_graph(g, passes, &layer, 1)) {
    graph_free(g);
    return NULL;
  }
  return g;
}

int cmd_compile_cpu(int argc, char **argv) {
  Args a;
  int rc = parse("compile", COMPILE_HELP, argc, argv, &a);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  if (!a.out && !a.emit)
    return usage_error("compile", "nothing to write: give -o MODEL.so and/or --emit-llvm DIR");
  if (a.header && !a.out)
    return usage_error("compile", "--header goes with -o MODEL.so");
  Graph *g = compiled(argv[optind], &a.passes);
  bool ok = g != NULL;
  if (ok && a.emit)
    ok = make_dirs(a.emit) && cpu_emit_llvm(g, &a.cpu, a.emit);
  if (ok && a.out) {
    size_t n = strlen(a.out);
    char *header = a.header ? xstrdup(a.header)
                   : n > 3 && !strcmp(a.out + n - 3, ".so") ? format("%.*s.h", (int)(n - 3), a.out)
                                                            : format("%s.h", a.out);
    ok = cpu_write_so(g, &a.cpu, a.out, header);
    if (ok)
      printf("compiled '%s' for the CPU -> %s (and %s)\n", g->name, a.out, header);
    free(header);
  }
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}

// Where this alexc's runtime libraries are: the build directory it was built in, or the
// directory of the alexc binary (an installed or moved build tree).
static char *runner_dir(void) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    char *dir = format("%s", dirname(self)), *lib = format("%s/libalexrt.a", dir);
    bool here = access(lib, R_OK) == 0;
    free(lib);
    if (here)
      return dir;
    free(dir);
  }
  return xstrdup(ALEXC_RUNNER_DIR);
}

int cmd_build(int argc, char **argv) {
  Args a;
  int rc = parse("build", BUILD_HELP, argc, argv, &a);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  if (!a.out)
    return usage_error("build", "give -o PROGRAM");
  if (!a.weights == !a.have_seed)
    return usage_error("build", "give exactly one of --weights and --seed");
  Graph *spec = load_spec(argv[optind]);
  Weights *w = !spec ? NULL : a.weights ? weights_load(spec, a.weights)
                                        : weights_init(spec, a.seed, a.scheme);
  Graph *g = w ? compiled(argv[optind], &a.passes) : NULL;
  char *dir = runner_dir(), *wpath = format("%s.safetensors", a.out);
  bool ok = g && cpu_write_executable(g, &a.cpu, a.out, dir) && weights_save(w, wpath);
  if (ok)
    printf("built '%s' -> %s (weights: %s); try: %s IMAGE.jpg --top 5\n", g->name, a.out, wpath,
           a.out);
  free(dir);
  free(wpath);
  weights_free(w);
  graph_free(g);
  graph_free(spec);
  return ok ? EXIT_OK : EXIT_ERR;
}
