// The pass manager: an ordered list of passes over the IR, the verifier after each,
// and the printing and timing options of `alexc dump`. Adding a pass is adding a
// file with one entry point and a line to PASSES.
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static const struct {
  const char *name;
  bool (*run)(Graph *, const PassOptions *);
  const char *summary;
} PASSES[] = {
    {"fuse", pass_fuse, "fold ReLU, LRN, max-pool and dropout into the conv/fc before them"},
    {"partition", pass_partition, "plan the model-parallel split over devices and the transfers"},
    {"memplan", pass_memplan, "assign activation buffers from lifetimes, reusing dead ones"},
};
#define N_PASSES ((int)(sizeof PASSES / sizeof *PASSES))

static const char *FUSE_NAMES[FUSE_COUNT] = {
    [FUSE_CONV_RELU_LRN_POOL] = "conv-relu-lrn-pool",
    [FUSE_CONV_RELU_LRN] = "conv-relu-lrn",
    [FUSE_CONV_RELU_POOL] = "conv-relu-pool",
    [FUSE_CONV_RELU] = "conv-relu",
    [FUSE_FC_RELU_DROPOUT] = "fc-relu-dropout",
    [FUSE_FC_RELU] = "fc-relu",
};

const char *fuse_pattern_name(FusePattern p) { return FUSE_NAMES[p]; }

PassOptions pass_defaults(void) {
  PassOptions o = {.devices = 1, .print_to = stdout};
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = true;
  return o;
}

bool parse_fuse_list(const char *list, PassOptions *opts, char *bad, size_t bad_size) {
  bool on[FUSE_COUNT] = {0};
  char *copy = xstrdup(list), *save = NULL;
  bool ok = true;
  for (char *t = strtok_r(copy, ",", &save); ok && t; t = strtok_r(NULL, ",", &save)) {
    int p = 0;
    while (p < FUSE_COUNT && strcmp(FUSE_NAMES[p], t) != 0)
      p++;
    if (p == FUSE_COUNT) {
      snprintf(bad, bad_size, "%s", t);
      ok = false;
    } else {
      on[p] = true;
    }
  }
  free(copy);
  if (ok)
    memcpy(opts->fuse, on, sizeof on);
  return ok;
}

bool pass_exists(const char *name) {
  for (int i = 0; i < N_PASSES; i++)
    if (!strcmp(PASSES[i].name, name))
      return true;
  return false;
}

const char *pass_names(void) { return "fuse, partition, memplan"; }

bool run_passes(Graph *g, const PassOptions *opts) {
  double times[N_PASSES];
  for (int i = 0; i < N_PASSES; i++) {
    double t0 = now_seconds() * 1e3;
    bool ok = PASSES[i].run(g, opts) && graph_verify(g);
    times[i] = now_seconds() * 1e3 - t0;
    if (!ok) {
      fprintf(stderr, "alexc: error: pass '%s' failed on network '%s'\n", PASSES[i].name, g->name);
      return false;
    }
    if (opts->print_after_all || (opts->print_after && !strcmp(opts->print_after, PASSES[i].name))) {
      fprintf(opts->print_to, "// after %s\n", PASSES[i].name);
      graph_dump(g, opts->print_to);
    }
  }
  if (opts->time_passes) {
    fprintf(stderr, "pass timings for '%s':\n", g->name);
    for (int i = 0; i < N_PASSES; i++)
      fprintf(stderr, "  %-10s %8.3f ms  %s\n", PASSES[i].name, times[i], PASSES[i].summary);
  }
  return true;
}

bool plan_plain(Graph *g) {
  if (g->planned)
    return true;
  PassOptions o = pass_defaults();
  for (int i = 0; i < FUSE_COUNT; i++)
    o.fuse[i] = false;
  return run_passes(g, &o);
}
