// `alexc import`: an ONNX model -> a spec (YAML) and its weights (safetensors).
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char IMPORT_HELP[] =
    "usage: alexc import MODEL.onnx -o SPEC.yaml --weights W.safetensors [--name NAME]\n"
    "\n"
    "Converts an ONNX model made of the ops alexc has (Conv, Relu, LRN, MaxPool, Gemm,\n"
    "MatMul+Add, Flatten or Reshape to (N, features), Dropout, Concat, Softmax, and\n"
    "Identity and Constant) into a spec and its weights, converting conventions: ONNX's\n"
    "LRN alpha is divided by size in the spec, Gemm's transB, alpha and beta and\n"
    "MatMul's (in, out) weights become an fc layer's (out, in) weight and bias. Layers\n"
    "are named after their weights ('features.0' for 'features.0.weight'), else after\n"
    "their nodes. What the spec cannot express (other ops, asymmetric pads, ceil_mode,\n"
    "dilations, non-square kernels or strides) is refused with the node named; every\n"
    "unsupported op is listed at once. Weights must be float32. Both files are written\n"
    "in full beside their destinations and renamed into place together, only when the\n"
    "whole model converted: a failure leaves the old files. See docs/onnx.md.\n"
    "\n"
    "  -o, --output SPEC    the spec to write\n"
    "  --weights W          the safetensors weights to write\n"
    "  --name NAME          the network's name (default: the model's file name)\n";

// The model's file name without directory and extension, made a valid spec name.
static void default_name(const char *path, char *out, size_t size) {
  const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
  size_t n = strcspn(base, ".");
  size_t k = 0;
  if (!(isalpha((unsigned char)base[0]) || base[0] == '_'))
    out[k++] = 'm';
  for (size_t i = 0; i < n && k + 1 < size && k < 64; i++)
    out[k++] = isalnum((unsigned char)base[i]) || strchr("_-", base[i]) ? base[i] : '_';
  out[k] = 0;
}

// The imported tensors in the order the spec's graph lists its parameters, each checked
// against the graph's name and shape: a mismatch is an importer bug, caught here.
static Weights *match_weights(const Graph *g, Weights *w) {
  int n = graph_params_list(g, NULL);
  ParamInfo *info = xcalloc(n + 1, sizeof *info);
  graph_params_list(g, info);
  bool ok = n == w->n;
  for (int i = 0; i < n && ok; i++) {
    ok = !strcmp(info[i].name, w->info[i].name) && info[i].rank == w->info[i].rank;
    for (int d = 0; d < info[i].rank && ok; d++)
      ok = info[i].dims[d] == w->info[i].dims[d];
  }
  free(info);
  if (!ok)
    error("import: the weights do not match the spec written for them (an importer bug)");
  return ok ? w : NULL;
}

// Renames `from` over `to` and makes the rename durable (fsync of to's directory).
static bool rename_into_place(const char *from, const char *to) {
  if (rename(from, to) != 0) {
    error("import: cannot rename %s to %s: %s", from, to, strerror(errno));
    return false;
  }
  char *dir = xstrdup(to), *slash = strrchr(dir, '/');
  if (slash)
    slash[slash == dir] = 0;  // "/x" -> "/", "a/b" -> "a"
  int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);  // best effort: some file systems cannot sync a directory
    close(fd);
  }
  free(dir);
  return true;
}

// The spec and its weights change together or not at all: each is first written in
// full (atomically) beside its destination, and only when both are complete are they
// renamed into place, weights first. A failure before the renames leaves both old files;
// only a crash between the two renames could leave new weights beside the old spec.
static bool write_pair(const char *spec_path, const char *spec, const char *weights_path,
                       const Weights *w) {
  char *stmp = format("%s.import.%d", spec_path, (int)getpid());
  char *wtmp = format("%s.import.%d", weights_path, (int)getpid());
  bool ok = weights_save(w, wtmp);
  if (ok && !rt_write_file_atomic(stmp, spec, strlen(spec))) {
    error("%s", rt_error());
    ok = false;
  }
  ok = ok && rename_into_place(wtmp, weights_path) && rename_into_place(stmp, spec_path);
  unlink(wtmp);  // gone after a rename; left by a failure
  unlink(stmp);
  free(stmp);
  free(wtmp);
  return ok;
}

static int import_model(const char *model, const char *spec_path, const char *weights_path,
                        const char *name) {
  char *spec;
  Weights *w;
  if (!onnx_import(model, name, &spec, &w))
    return EXIT_ERR;
  // The spec is checked by the frontend before anything is written.
  Graph *g = parse_spec_string(spec_path, spec, strlen(spec));
  bool ok = g && graph_verify(g) && match_weights(g, w);
  if (!g)  // a limit the importer does not check itself, such as the network's MACs
    error("import: %s converts to a spec that alexc does not accept (see above)", model);
  ok = ok && write_pair(spec_path, spec, weights_path, w);
  if (ok)
    printf("wrote %s (%d layers) and %s (%d tensors, %lld parameters)\n", spec_path,
           g->n_nodes - 1, weights_path, w->n, (long long)graph_params(g));
  graph_free(g);
  weights_free(w);
  free(spec);
  return ok ? EXIT_OK : EXIT_ERR;
}

int cmd_import(int argc, char **argv) {
  static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                       {"weights", required_argument, 0, 'W'},
                                       {"name", required_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL, *weights = NULL, *name = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'o':
      out = optarg;
      break;
    case 'W':
      weights = optarg;
      break;
    case 'n':
      name = optarg;
      break;
    case 'h':
      fputs(IMPORT_HELP, stdout);
      return EXIT_OK;
    default:
      return usage_error("import", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("import", "expected one MODEL.onnx file");
  if (!out || !weights)
    return usage_error("import", "-o SPEC.yaml and --weights W.safetensors are required");
  if (!strcmp(out, weights))
    return usage_error("import", "the spec and the weights must be different files");
  char buf[80];
  if (!name) {
    default_name(argv[optind], buf, sizeof buf);
    name = buf;
  }
  // Checked as the frontend checks names: a letter or '_', then [A-Za-z0-9_.-], <= 64.
  size_t len = strlen(name);
  bool valid = len > 0 && len <= 64 && (isalpha((unsigned char)name[0]) || name[0] == '_') &&
               strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") ==
                   len;
  if (!valid)
    return usage_error("import", "--name '%.80s' is not a valid network name", name);
  return import_model(argv[optind], out, weights, name);
}
