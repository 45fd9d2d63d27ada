// `alexc init` (weights from a seed) and `alexc input` (a random input batch).
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char INIT_HELP[] =
    "usage: alexc init SPEC --seed S -o W.safetensors [--scheme spec|fan-in]\n"
    "\n"
    "Writes deterministic initial weights for SPEC as safetensors, named as PyTorch\n"
    "names them (conv1.weight, conv1.bias, ...). The same seed gives the same bytes on\n"
    "every machine; each tensor depends only on the seed and its own name.\n"
    "\n"
    "  --seed S          unsigned integer seed (required)\n"
    "  -o, --output W    file to write (replaced atomically)\n"
    "  --scheme spec     each layer's init rule from the spec (default): weights\n"
    "                    N(0, weight_std), biases N(bias, bias_std); without a rule,\n"
    "                    the paper's N(0, 0.01) weights and zero biases\n"
    "  --scheme fan-in   N(0, sqrt(2/fan_in)) weights, zero biases: activations stay\n"
    "                    O(1) through deep nets, which makes golden tests sensitive\n";

static const char INPUT_HELP[] =
    "usage: alexc input SPEC --batch N --seed S -o X.npy\n"
    "\n"
    "Writes a batch of N(0,1) inputs of the spec's input shape, (N, C, H, W) float32.\n";

int cmd_init(int argc, char **argv) {
  static const struct option opts[] = {{"seed", required_argument, 0, 's'},
                                       {"output", required_argument, 0, 'o'},
                                       {"scheme", required_argument, 0, 'S'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  uint64_t seed = 0;
  bool have_seed = false;
  const char *out = NULL;
  InitScheme scheme = INIT_SPEC;
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 's':
      if (!(have_seed = parse_u64(optarg, &seed)))
        return usage_error("init", "--seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'o':
      out = optarg;
      break;
    case 'S':
      if (!parse_init_scheme(optarg, &scheme))
        return usage_error("init", "--scheme is 'spec' or 'fan-in', not '%s'", optarg);
      break;
    case 'h':
      fputs(INIT_HELP, stdout);
      return EXIT_OK;
    default:
      return usage_error("init", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("init", "expected one SPEC file");
  if (!have_seed || !out)
    return usage_error("init", "--seed and -o are required");
  Graph *g = load_spec(argv[optind]);
  if (!g)
    return EXIT_ERR;
  Weights *w = weights_init(g, seed, scheme);
  bool ok = weights_save(w, out);
  if (ok)
    printf("wrote %s: %d tensors, %lld parameters\n", out, w->n, (long long)graph_params(g));
  weights_free(w);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}

int cmd_input(int argc, char **argv) {
  static const struct option opts[] = {{"seed", required_argument, 0, 's'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"output", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  uint64_t seed = 0;
  bool have_seed = false;
  int batch = 1;
  const char *out = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 's':
      if (!(have_seed = parse_u64(optarg, &seed)))
        return usage_error("input", "--seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'b':
      if (!parse_int_in(optarg, 1, 65536, &batch))
        return usage_error("input", "--batch wants an integer from 1 to 65536, not '%s'", optarg);
      break;
    case 'o':
      out = optarg;
      break;
    case 'h':
      fputs(INPUT_HELP, stdout);
      return EXIT_OK;
    default:
      return usage_error("input", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("input", "expected one SPEC file");
  if (!have_seed || !out)
    return usage_error("input", "--seed and -o are required");
  Graph *g = load_spec(argv[optind]);
  if (!g)
    return EXIT_ERR;
  float *x = random_input(g, batch, seed);
  bool ok = save_output(g, 0, x, batch, out);
  free(x);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}
