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
    "usage: alexc dump SPEC [--after PASS | --print-after-all] [--time-passes] [options]\n"
    "\n"
    "Prints the graph IR of a spec in its stable text form, one node per line. Without\n"
    "options, as the frontend built it; with any option, after the passes\n"
    "(fuse, partition, memplan), each followed by the IR verifier.\n"
    "\n"
    "  --after PASS       print the IR after PASS\n"
    "  --print-after-all  print the IR after every pass\n"
    "  --time-passes      print each pass's time on stderr\n"
    "  --train            print the training plan instead: the forward it keeps, the loss,\n"
    "                     and each backward step with the gradients it produces\n" PASS_OPTIONS_HELP;

static const char PLAN_HELP[] =
    "usage: alexc plan SPEC [--devices N] [--batch B] [--no-fuse | --fuse=LIST]\n"
    "\n"
    "Compiles SPEC and summarises the plan per device: parameters, peak activation\n"
    "memory for a batch of B (default 128) with and without fusion, and the bytes each\n"
    "device receives per image, then every transfer.\n\n" PASS_OPTIONS_HELP
    "  --batch B         batch size for the memory figures (default 128)\n";

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
  int rc = EXIT_OK;
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
  static const struct option opts[] = {{"after", required_argument, 0, 'a'},
                                       {"print-after-all", no_argument, 0, 'A'},
                                       {"time-passes", no_argument, 0, 't'},
                                       {"train", no_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       PASS_LONG_OPTIONS,
                                       {0, 0, 0, 0}};
  PassOptions po = pass_defaults();
  bool compile = false, train = false;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (c == 'T') {
      train = true;
      continue;
    }
    int rc = pass_option("dump", c, optarg, &po);
    if (rc > 0)
      return rc;
    compile = true;
    if (rc == 0)
      continue;
    if (c == 'a') {
      if (!pass_exists(optarg))
        return usage_error("dump", "unknown pass '%s' (passes: %s)", optarg, pass_names());
      po.print_after = optarg;
    } else if (c == 'A') {
      po.print_after_all = true;
    } else if (c == 't') {
      po.time_passes = true;
    } else if (c == 'h') {
      fputs(DUMP_HELP, stdout);
      return EXIT_OK;
    } else {
      return usage_error("dump", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("dump", "expected one SPEC file");
  Graph *g = load_spec(argv[optind]);
  if (!g)
    return EXIT_ERR;
  bool ok = true;
  if (train) {
    static const char *const plain[] = {NULL};
    Trainer *t = trainer_new_fused(g, &ref_train_kernels, 1, po.devices,
                                   any_fusion(&po) ? NULL : plain);
    if ((ok = t != NULL))
      trainer_dump(t, stdout);
    trainer_free(t);
  } else if (!compile) {
    graph_dump(g, stdout);
  } else {
    if (!po.print_after && !po.print_after_all)
      po.print_after = "memplan";  // only pipeline options: show the end result
    ok = run_passes(g, &po);
  }
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}

static double mib(int64_t bytes) { return bytes / (1024.0 * 1024.0); }

// Compiles a fresh copy of the spec with `po`; NULL on error.
static Graph *compiled(const char *path, const PassOptions *po) {
  Graph *g = load_spec(path);
  if (g && !run_passes(g, po)) {
    graph_free(g);
    return NULL;
  }
  return g;
}

static void print_plan(const Graph *g, const Graph *unfused, int batch) {
  char a[32], b[32];
  printf("network %s on %d device(s), batch %d\n\n", g->name, g->n_devices, batch);
  printf("%-7s %14s %12s %18s %18s %16s\n", "device", "parameters", "param MiB",
         "activations MiB", "(unfused MiB)", "received B/img");
  int64_t moved = 0;
  for (int d = 0; d < g->n_devices; d++) {
    int64_t params = plan_param_count(g, d);
    printf("d%-6d %14s %12.1f %18.1f %18.1f %16s\n", d, grouped(params, a, sizeof a),
           mib(params * 4), mib(plan_peak_bytes(g, d, batch)),
           mib(plan_peak_bytes(unfused, d, batch)), grouped(plan_bytes_in(g, d), b, sizeof b));
    moved += plan_bytes_in(g, d);
  }
  printf("\ntransfers (%s bytes per image in all):\n", grouped(moved, a, sizeof a));
  for (int t = 0; t < g->n_transfers; t++) {
    const Transfer *tr = &g->transfers[t];
    const Node *n = &g->nodes[tr->node];
    const char *value = n->n_epilogue ? n->epilogue[n->n_epilogue - 1].name : n->name;
    printf("  %-12s %-8s [%lld,%lld) d%d -> d%d %12s bytes/image\n", value,
           n->out.rank == 1 ? "features" : "channels", (long long)tr->range.begin,
           (long long)tr->range.end, tr->from, tr->to, grouped(tr->bytes, a, sizeof a));
  }
  if (!g->n_transfers)
    printf("  none\n");
  if (g->plan_note)
    printf("\nnotes:\n%s", g->plan_note);
}

int cmd_plan(int argc, char **argv) {
  static const struct option opts[] = {{"batch", required_argument, 0, 'b'},
                                       {"help", no_argument, 0, 'h'},
                                       PASS_LONG_OPTIONS,
                                       {0, 0, 0, 0}};
  PassOptions po = pass_defaults();
  int batch = 128, c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int rc = pass_option("plan", c, optarg, &po);
    if (rc > 0)
      return rc;
    if (rc == 0)
      continue;
    if (c == 'b') {
      if (!parse_int_in(optarg, 1, 65536, &batch))
        return usage_error("plan", "--batch wants an integer from 1 to 65536, not '%s'", optarg);
    } else if (c == 'h') {
      fputs(PLAN_HELP, stdout);
      return EXIT_OK;
    } else {
      return usage_error("plan", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("plan", "expected one SPEC file");
  PassOptions plain = po;
  for (int i = 0; i < FUSE_COUNT; i++)
    plain.fuse[i] = false;
  Graph *g = compiled(argv[optind], &po);
  Graph *unfused = g ? compiled(argv[optind], &plain) : NULL;
  if (unfused)
    print_plan(g, unfused, batch);
  bool ok = unfused != NULL;
  graph_free(g);
  graph_free(unfused);
  return ok ? EXIT_OK : EXIT_ERR;
}
