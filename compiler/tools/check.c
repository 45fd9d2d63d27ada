// `alexc check SPEC` and `alexc dump SPEC`.
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char CHECK_HELP[] =
    "usage: alexc check SPEC\n"
    "\n"
    "Parses and verifies a network spec and prints a table of its layers: output\n"
    "shape per image, parameters and multiply-accumulates (MACs) per image, with totals.\n";

static const char DUMP_HELP[] =
    "usage: alexc dump SPEC\n"
    "\n"
    "Prints the graph IR of a spec in its stable text form, one node per line.\n";

// 60965224 -> "60,965,224"
static char *grouped(int64_t v, char *buf, size_t size) {
  char digits[32];
  int n = snprintf(digits, sizeof digits, "%lld", (long long)v);
  size_t o = 0;
  for (int i = 0; i < n && o + 2 < size; i++) {
    if (i > 0 && (n - i) % 3 == 0)
      buf[o++] = ',';
    buf[o++] = digits[i];
  }
  buf[o] = 0;
  return buf;
}

// Parses the single SPEC argument shared by check and dump; NULL after a usage message.
static const char *spec_arg(const char *cmd, const char *help, int argc, char **argv, int *rc) {
  static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (c == 'h') {
      fputs(help, stdout);
      *rc = EXIT_OK;
      return NULL;
    }
    *rc = usage_error(cmd, "unknown option");
    return NULL;
  }
  if (optind + 1 != argc) {
    *rc = usage_error(cmd, "expected one SPEC file");
    return NULL;
  }
  return argv[optind];
}

int cmd_check(int argc, char **argv) {
  int rc;
  const char *path = spec_arg("check", CHECK_HELP, argc, argv, &rc);
  if (!path)
    return rc;
  Graph *g = load_spec(path);
  if (!g)
    return EXIT_ERR;
  char a[32], b[32], s[64];
  printf("network %s: input %s\n\n", g->name, shape_str(g->nodes[0].out, s, sizeof s));
  printf("%-16s %-8s %-14s %14s %16s\n", "layer", "op", "output", "params", "MACs");
  for (int i = 1; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    printf("%-16s %-8s %-14s %14s %16s\n", n->name, op_name(n->op),
           shape_str(n->out, s, sizeof s), grouped(n->n_weight + n->n_bias, a, sizeof a),
           grouped(n->macs, b, sizeof b));
  }
  printf("%-16s %-8s %-14s %14s %16s\n", "total", "", "", grouped(graph_params(g), a, sizeof a),
         grouped(graph_macs(g), b, sizeof b));
  printf("\n%s parameters, %s multiply-accumulates per image\n", a, b);
  graph_free(g);
  return EXIT_OK;
}

int cmd_dump(int argc, char **argv) {
  int rc;
  const char *path = spec_arg("dump", DUMP_HELP, argc, argv, &rc);
  if (!path)
    return rc;
  Graph *g = load_spec(path);
  if (!g)
    return EXIT_ERR;
  graph_dump(g, stdout);
  graph_free(g);
  return EXIT_OK;
}
