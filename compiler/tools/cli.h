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

// Relative error used by golden checks: max |got - want| / max |want|.
typedef struct {
  double rel, abs;
  int64_t at;  // flat index of the worst element
  bool finite;
} Compare;
Compare compare(const float *got, const float *want, int64_t n);

#endif
