// alexc: the command-line driver. Each subcommand lives in tools/.
#include <string.h>

#include "alexc.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *summary;
} COMMANDS[] = {
    {"check", cmd_check, "verify a spec; print layers, shapes, parameters and MACs"},
    {"dump", cmd_dump, "print the graph IR, before or after the passes"},
    {"plan", cmd_plan, "the device plan: parameters, memory and transfers per device"},
    {"init", cmd_init, "write deterministic initial weights (safetensors)"},
    {"input", cmd_input, "write a random input batch (.npy)"},
    {"run", cmd_run, "run a batch through a network"},
    {"golden", cmd_golden, "record and check golden-output regression tests"},
    {"compile", cmd_compile, "compile for a target (cpu: a .so and header; cuda: NVRTC modules and plan)"},
    {"build", cmd_build, "build a standalone executable that classifies photos (CPU)"},
    {"bench", cmd_bench, "time a network (cpu or cuda): per layer, fused against unfused"},
    {"train", cmd_train, "train a network with SGD (checkpoints, metrics, curves)"},
    {"eval", cmd_eval, "loss, top-1 and top-5 of weights on a test set"},
    {"compare", cmd_compare, "compare two saved outputs (.npy) within a tolerance"},
    {"import", cmd_import, "convert an ONNX model into a spec and safetensors weights"},
};

static void help(FILE *out) {
  fprintf(out, "usage: alexc COMMAND [ARGS]\n\n"
               "A compiler for AlexNet-family convolutional networks described in YAML.\n\n"
               "commands:\n");
  for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
    fprintf(out, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
  fprintf(out, "\n'alexc COMMAND --help' describes each. Exit status: 0 ok, 1 error, 2 usage.\n"
               "Spec format: docs/spec-format.md.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    help(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    help(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
    if (!strcmp(argv[1], COMMANDS[i].name))
      return COMMANDS[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "alexc: unknown command '%s' (see 'alexc --help')\n", argv[1]);
  return 2;
}
