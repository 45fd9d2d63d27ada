// `alexc run`: run a batch through a network and write (or summarise) the output.
#include <stdlib.h>
#include <string.h>

#include "../backends/cpu/cpu.h"
#include "../backends/cuda/cuda.h"
#include "cli.h"

static const char RUN_HELP[] =
    "usage: alexc run SPEC (--weights W.safetensors | --seed S) (--input X.npy | --random N)\n"
    "                 [--output Y.npy] [--layer NAME] [--top K] [--target ref|cpu|cuda]\n"
    "                 [--precision fp32|tf32|bf16] [--conv gemm|direct|implicit|fused] [--compare-ref]\n"
    "\n"
    "Runs a batch through the network.\n"
    "\n"
    "  --weights W       weights as safetensors (alexc init, or PyTorch's names and layout)\n"
    "  --seed S          instead of --weights: initialise from seed S (see alexc init)\n"
    "  --scheme SCHEME   with --seed: 'spec' (default) or 'fan-in'\n"
    "  --input X.npy     float32 batch (N, C, H, W), or one image (C, H, W)\n"
    "  --random N        instead of --input: N images of N(0,1) noise (--input-seed, default 1)\n"
    "  --output Y.npy    write the output: (N, C, H, W) or (N, features); replaced atomically\n"
    "  --layer NAME      output this layer instead of the network's last one (with\n"
    "                    --target cuda: the network is compiled as if it ended there)\n"
    "  --top K           print the K highest-scoring classes of each image\n"
    "  --target T        the executor: 'ref', the reference executor (the default), 'cpu':\n"
    "                    native code through LLVM, JIT-compiled for this CPU, or 'cuda':\n"
    "                    generated kernels compiled by NVRTC, run on the GPU(s)\n"
    "  --compare-ref     with --target cpu or cuda: also run the reference executor and print\n"
    "                    the largest difference, max|got - want| / max|want|; exit 1 when\n"
    "                    it exceeds the precision's tolerance (fp32 1e-4, tf32 %g, bf16 %g)\n"
    "with --target cpu:\n"
    "  --cpu NAME        native (default), x86-64, x86-64-v2, x86-64-v3 (AVX2), x86-64-v4\n"
    "  --threads N       threads (default: one per core)\n"
    "with --target cuda:\n"
    CUDA_OPTIONS_HELP
    PASS_OPTIONS_HELP;

static void print_top(const Graph *g, int node, const float *y, int batch, int k) {
  int64_t classes = shape_elems(g->nodes[node].out);
  if (k > classes)
    k = (int)classes;
  for (int i = 0; i < batch; i++) {
    const float *row = y + i * classes;
    printf("image %d: top-%d", i, k);
    char *taken = xcalloc(classes, 1);
    for (int r = 0; r < k; r++) {
      int64_t best = -1;
      for (int64_t j = 0; j < classes; j++)
        if (!taken[j] && (best < 0 || row[j] > row[best]))
          best = j;
      taken[best] = 1;
      printf("  %lld (%.4g)", (long long)best, row[best]);
    }
    free(taken);
    printf("\n");
  }
}

// --compare-ref: the reference executor on the same compiled graph, inputs and weights.
static bool compare_to_reference(Graph *g, const Weights *w, const float *x, int batch, int node,
                                 const float *y, RtPrecision precision) {
  float *want = NULL;
  if (!ref_run(g, w, x, batch, &node, 1, &want))
    return false;
  Compare c = compare(y, want, shape_elems(g->nodes[node].out) * batch);
  double tolerance = cuda_tolerance(precision);
  bool ok = c.finite && c.rel <= tolerance;
  printf("max rel err %.3g against the reference (%s tolerance %g): %s\n", c.rel,
         rt_precision_name(precision), tolerance, ok ? "OK" : "FAIL");
  if (!ok)
    error("--target cuda differs from the reference: max rel err %.3g%s at element %lld",
          c.rel, c.finite ? "" : " (non-finite values)", (long long)c.at);
  free(want);
  return ok;
}

typedef struct {
  const char *weights, *input, *output, *layer, *target, *arch;
  uint64_t seed, input_seed;
  bool have_seed, compare_ref;
  InitScheme scheme;
  int random, top;
  PassOptions passes;
  CudaOptions cuda;
  CpuOptions cpu;
} RunArgs;

static int parse_run_args(int argc, char **argv, RunArgs *a) {
  static const struct option opts[] = {
      {"weights", required_argument, 0, 'w'}, {"seed", required_argument, 0, 's'},
      {"scheme", required_argument, 0, 'S'},  {"input", required_argument, 0, 'i'},
      {"random", required_argument, 0, 'r'},  {"input-seed", required_argument, 0, 'I'},
      {"output", required_argument, 0, 'o'},  {"layer", required_argument, 0, 'l'},
      {"top", required_argument, 0, 't'},     {"target", required_argument, 0, 'T'},
      {"help", no_argument, 0, 'h'},          {"compare-ref", no_argument, 0, 'R'},
      {"cpu", required_argument, 0, 'C'},     {"threads", required_argument, 0, 'N'},
      CUDA_LONG_OPTIONS,                      PASS_LONG_OPTIONS,
      {0, 0, 0, 0}};
  *a = (RunArgs){.target = "ref", .input_seed = 1, .passes = pass_defaults(),
                 .cuda = cuda_defaults()};
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    int rc = target_option("run", c, optarg, &a->passes, &a->cuda, &a->arch);
    if (rc >= 0) {
      if (rc)
        return rc;
      continue;
    }
    switch (c) {
    case 'w': a->weights = optarg; break;
    case 'i': a->input = optarg; break;
    case 'o': a->output = optarg; break;
    case 'l': a->layer = optarg; break;
    case 'T': a->target = optarg; break;
    case 'R': a->compare_ref = true; break;
    case 'C': a->cpu.cpu = optarg; break;
    case 'N':
      if (!parse_int_in(optarg, 1, 256, &a->cpu.threads))
        return usage_error("run", "--threads wants a number from 1 to 256, not '%s'", optarg);
      break;
    case 's':
      if (!(a->have_seed = parse_u64(optarg, &a->seed)))
        return usage_error("run", "--seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'I':
      if (!parse_u64(optarg, &a->input_seed))
        return usage_error("run", "--input-seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'S':
      if (!parse_init_scheme(optarg, &a->scheme))
        return usage_error("run", "--scheme is 'spec' or 'fan-in', not '%s'", optarg);
      break;
    case 'r':
      if (!parse_int_in(optarg, 1, 65536, &a->random))
        return usage_error("run", "--random wants a batch size from 1 to 65536, not '%s'", optarg);
      break;
    case 't':
      if (!parse_int_in(optarg, 1, 1000000, &a->top))
        return usage_error("run", "--top wants a positive integer, not '%s'", optarg);
      break;
    case 'h':
      printf(RUN_HELP, cuda_tolerance(RT_TF32), cuda_tolerance(RT_BF16));
      return -1;
    default:
      return usage_error("run", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("run", "expected one SPEC file");
  if (!a->weights == !a->have_seed)
    return usage_error("run", "give exactly one of --weights and --seed");
  if (!a->input == !a->random)
    return usage_error("run", "give exactly one of --input and --random");
  if (strcmp(a->target, "ref") != 0 && strcmp(a->target, "cuda") != 0 && strcmp(a->target, "cpu") != 0)
    return usage_error("run", "unknown target '%s' (targets: ref, cpu, cuda)", a->target);
  if (!strcmp(a->target, "cpu") && a->cuda.precision == RT_TF32)
    return usage_error("run", "--target cpu has fp32 and bf16, not tf32 (a GPU's format)");
  a->cpu.bf16 = a->cuda.precision == RT_BF16;
  if (a->compare_ref && !strcmp(a->target, "ref"))
    return usage_error("run", "--compare-ref compares --target cpu or cuda against the reference");
  return EXIT_OK;
}

int cmd_run(int argc, char **argv) {
  RunArgs a;
  int rc = parse_run_args(argc, argv, &a);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  Graph *g = load_spec(argv[optind]);
  if (!g)
    return EXIT_ERR;
  // Weights are made for (or checked against) the spec's graph, before any rewrite.
  Weights *w = a.weights ? weights_load(g, a.weights) : weights_init(g, a.seed, a.scheme);
  bool cuda = !strcmp(a.target, "cuda");
  // --target cuda returns a network's output only: cut the network at the layer asked
  // for (fusion and partition then see that layer as the output; values are the same).
  if (cuda && a.layer && !cut_at_layer(g, a.layer)) {
    weights_free(w);
    graph_free(g);
    return EXIT_ERR;
  }
  // A copy: fusion frees the names of the nodes it folds into others, the output's too.
  char name[256], *layer = name;
  snprintf(name, sizeof name, "%s", a.layer ? a.layer : g->nodes[g->output].name);
  if (!w || !compile_graph(g, &a.passes, &layer, 1)) {
    weights_free(w);
    graph_free(g);
    return EXIT_ERR;
  }
  int node = graph_find_value(g, layer);
  if (cuda && node != g->output) {
    error("--target cuda computes the network's output only, not layer '%s'", layer);
    weights_free(w);
    graph_free(g);
    return EXIT_ERR;
  }
  if (a.top && g->nodes[node].out.rank != 1) {
    error("--top needs a flat output, but layer '%s' is not", layer);
    weights_free(w);
    graph_free(g);
    return EXIT_ERR;
  }
  float *x = NULL;
  int batch = a.random;
  bool ok = true;
  if (a.input)
    ok = load_input(g, a.input, &x, &batch);
  else if (ok)
    x = random_input(g, batch, a.input_seed);
  float *y = NULL;
  char arch[16];
  if (ok && cuda) {
    char *how = cuda_describe_options(&a.passes);
    y = xcalloc(shape_elems(g->nodes[node].out) * batch, sizeof(float));
    ok = resolve_arch(a.arch, true, arch, sizeof arch) &&
         cuda_run_graph(g, how, &a.cuda, arch, w, x, batch, y);
    free(how);
  } else if (ok && !strcmp(a.target, "cpu")) {
    ok = cpu_run_graph(g, w, x, batch, &node, 1, &a.cpu, &y);
  } else if (ok) {
    ok = ref_run(g, w, x, batch, &node, 1, &y);
  }
  if (ok && a.compare_ref)
    ok = compare_to_reference(g, w, x, batch, node, y, a.cuda.precision);
  if (ok && a.output)
    ok = save_output(g, node, y, batch, a.output);
  if (ok && a.top)
    print_top(g, node, y, batch, a.top);
  if (ok && !a.output && !a.top) {
    char s[64];
    printf("ran %d image(s) through '%s'; layer '%s' output %s per image (use --output to save)\n",
           batch, g->name, layer, shape_str(g->nodes[node].out, s, sizeof s));
  }
  free(y);
  free(x);
  weights_free(w);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
