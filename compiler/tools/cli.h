// Helpers shared by the subcommands in tools/: option parsing and common loading.
#ifndef ALEXC_CLI_H
#define ALEXC_CLI_H

#include <getopt.h>

#include "../alexc.h"

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
int pass_option(const char *cmd, int c, const char *arg, PassOptions *o);

// Runs the passes, keeping the named layers observable; false (message printed) on
// error, e.g. an unknown layer.
bool compile_graph(Graph *g, const PassOptions *o, char *const *keep, int n_keep);

// Relative error used by golden checks: max |got - want| / max |want|.
typedef struct {
  double rel, abs;
  int64_t at;  // flat index of the worst element
  bool finite;
} Compare;
Compare compare(const float *got, const float *want, int64_t n);

#endif
