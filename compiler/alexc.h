// alexc.h — the one header the compiler shares (chibicc style).
//
// The pipeline, one phase per file:
//   frontend/spec.c      YAML spec (libyaml)      -> Graph
//   ir/graph.c           graph building, shape inference, parameter/MAC counts
//   ir/verify.c          invariants checked after building and after every pass
//   ir/dump.c            stable text form of the IR (`alexc dump`)
//   exec/init.c          deterministic weight / input generation from a seed
//   exec/reference.c     the reference executor: the oracle for every backend
//   tools/*.c            the CLI subcommands
// Tensors on disk (safetensors, .npy) live in runtime/, which the compiler links.
#ifndef ALEXC_H
#define ALEXC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/alexrt.h"

// ---------------------------------------------------------------- diagnostics

// A place in a spec file, for FILE:LINE:COL messages. line/col are 1-based; 0 = unknown.
typedef struct {
  const char *file;
  int line, col;
} SrcLoc;

// Prints "FILE:LINE:COL: error: ..." to stderr.
void error_at(SrcLoc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prints "alexc: error: ..." to stderr.
void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Allocation that never returns NULL (out of memory is fatal, not a user error).
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---------------------------------------------------------------- ops

typedef enum {
  OP_INPUT,
  OP_CONV,
  OP_RELU,
  OP_LRN,
  OP_MAXPOOL,
  OP_FC,
  OP_DROPOUT,
  OP_FLATTEN,
  OP_CONCAT,
  OP_SOFTMAX,
  OP_COUNT
} OpKind;

const char *op_name(OpKind op);
// Returns OP_COUNT when `name` is not an op.
OpKind op_from_name(const char *name);

typedef struct {
  int out, kernel, stride, pad, groups;
  bool bias;
} ConvAttrs;

// b_i = a_i / (k + alpha * sum_j a_j^2)^beta over `size` channels centred on i,
// clipped at the edges of the channel range, or of the channel group when groups > 1.
typedef struct {
  int size, groups;
  double alpha, beta, k;
} LrnAttrs;

typedef struct {
  int kernel, stride, pad;
} PoolAttrs;

typedef struct {
  int out;
  bool bias;
} FcAttrs;

typedef struct {
  double p;
} DropoutAttrs;

// How a layer's parameters are initialised: weights ~ N(0, weight_std), biases = bias.
typedef struct {
  double weight_std;
  double bias;
} InitRule;

// ---------------------------------------------------------------- IR

// Per-image shape: rank 3 is (C, H, W), rank 1 is (features). The batch is a runtime value.
typedef struct {
  int rank;
  int64_t c, h, w;  // rank 1: c = features, h = w = 1
} Shape;

int64_t shape_elems(Shape s);
// "96x55x55" or "4096"
char *shape_str(Shape s, char *buf, size_t size);

// One node computes one tensor (its output). Nodes are stored in a topological
// order, so node i only reads nodes < i; a node's index is its value's name.
typedef struct Node {
  char *name;  // unique; a C identifier ([A-Za-z_][A-Za-z0-9_]*), checked by the frontend
  OpKind op;
  SrcLoc loc;
  int *inputs;  // node indices
  int n_inputs;
  Shape out;

  ConvAttrs conv;
  LrnAttrs lrn;
  PoolAttrs pool;
  FcAttrs fc;
  DropoutAttrs dropout;
  InitRule init;

  // Derived by graph_infer():
  int64_t n_weight, n_bias;  // parameter element counts (0 for ops without)
  int64_t macs;              // multiply-accumulates per image
} Node;

typedef struct {
  char *name;
  SrcLoc loc;
  Node *nodes;
  int n_nodes, cap_nodes;
  int output;  // index of the network's output node (the last layer)
} Graph;

Graph *graph_new(const char *name);
void graph_free(Graph *g);
// Appends a node and returns its index. Copies `name`.
int graph_add(Graph *g, const char *name, OpKind op, SrcLoc loc);
void node_add_input(Node *n, int input);
int graph_find(const Graph *g, const char *name);  // -1 if absent

// Shape inference and parameter/MAC counting; reports shape errors at the layer's
// location. Returns false on error.
bool graph_infer(Graph *g);
// Checks the IR's invariants (topological order, shapes, attributes). Returns false
// and prints what is wrong; a failure here is a compiler bug, not a user error.
bool graph_verify(const Graph *g);
void graph_dump(const Graph *g, FILE *out);
int64_t graph_params(const Graph *g);
int64_t graph_macs(const Graph *g);

// Parameter tensors, named as PyTorch names them: "<layer>.weight", "<layer>.bias".
// Weights are (out, in/groups, k, k) for conv and (out, in) for fc.
typedef struct {
  int node;
  bool is_bias;
  char name[160];
  int rank;
  int64_t dims[4];
  int64_t elems;
} ParamInfo;

// Fills `out` (may be NULL to count) and returns the number of parameter tensors.
int graph_params_list(const Graph *g, ParamInfo *out);

// ---------------------------------------------------------------- frontend

// Parses a spec file. On error prints FILE:LINE:COL messages and returns NULL.
Graph *parse_spec_file(const char *path);
// Same for an in-memory spec; `path` is used in messages.
Graph *parse_spec_string(const char *path, const char *text, size_t len);

// ---------------------------------------------------------------- weights and inputs

// A set of named float32 tensors in memory (weights of a graph).
typedef struct {
  int n;
  ParamInfo *info;
  float **data;
} Weights;

// Deterministic initialisation: every tensor's values depend only on the seed and
// the tensor's name, so adding a layer does not change the weights of the others.
// scheme "spec" follows each layer's init rule; "fan-in" uses N(0, sqrt(2/fan_in))
// weights and zero biases, which keeps activations O(1) through deep nets (golden tests).
typedef enum { INIT_SPEC, INIT_FAN_IN } InitScheme;
Weights *weights_init(const Graph *g, uint64_t seed, InitScheme scheme);
// Loads a safetensors file, checking each tensor's presence, dtype and shape.
Weights *weights_load(const Graph *g, const char *path);
bool weights_save(const Weights *w, const char *path);
void weights_free(Weights *w);
const float *weights_get(const Weights *w, int node, bool is_bias);

// N(0,1) float32 values for `n` elements, from (seed, stream name).
void fill_normal(float *dst, int64_t n, uint64_t seed, const char *stream, double std);

// ---------------------------------------------------------------- reference executor

// Runs the graph on a batch. `x` is (batch, input shape). Returns every node's output
// (index = node), each (batch, node shape); free with ref_free_outputs().
float **ref_run(const Graph *g, const Weights *w, const float *x, int batch);
void ref_free_outputs(const Graph *g, float **outs);

// ---------------------------------------------------------------- CLI

int cmd_check(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_input(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_golden(int argc, char **argv);

#endif
