// Op test cases for the training kernels, in the style of ggml's test-backend-ops: one
// table of small graphs, each naming the layer under test, shared by every test that
// checks an op's forward and backward (the reference against finite differences in
// test_grad.c, the CPU kernels against the reference in test_grad_cpu.c).
//
// Use:
//
//   #include "op_cases.h"
//   for (size_t i = 0; i < N_OP_CASES; i++) {
//     OpCaseData d;
//     if (!op_case_setup(&OP_CASES[i], 1, &d))   // graph, random inputs, weights, dy
//       { fail; continue; }
//     float *y = xcalloc(d.y_elems, sizeof(float));
//     kernels->forward(&d.call, y);
//     d.call.y = y;                               // backward reads the forward output
//     kernels->backward(&d.call, d.dy, dx, dw, db);  // dx[j]: d.x_elems[j] floats, zeroed
//     ...                                         // dw: d.w_elems, db: d.b_elems (or NULL)
//     free(y);
//     op_case_free(&d);
//   }
//
// Each case is a tiny spec (parsed with parse_spec_string, which infers shapes); the op
// under test is the layer `node` (NULL: the last one). Its inputs are not computed from the
// graph: every input j gets its own random tensor of that input node's shape, (batch,
// g->nodes[n->inputs[j]].out), so each op is tested alone. Values are chosen so that
// finite differences are meaningful (see op_case_fill_input): ReLU inputs stay at least
// 0.1 from the kink, max-pool inputs are distinct multiples of 1/32 (no ties within
// 2^-6), except in cases flagged OPC_TIES, whose inputs are quantised to {-1, 0, 1} so
// that windows tie (for comparing tie rules; not for finite differences). Dropout cases
// get a keep mask from dropout_mask() unless flagged OPC_NO_MASK (inference: identity).
// Everything is a pure function of (case, seed).
#ifndef ALEXC_OP_CASES_H
#define ALEXC_OP_CASES_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"

#define OPC_TIES 1u     // max-pool inputs with ties (no finite differences)
#define OPC_NO_MASK 2u  // dropout without a mask (the identity)

typedef struct {
  const char *name;  // unique, used in messages and as the random streams' prefix
  const char *spec;  // the graph, a spec in YAML
  const char *node;  // the layer under test; NULL: the last layer
  int batch;
  unsigned flags;
} OpCase;

// "name: t / input: CxHxW / layers:" and the layers follow, one per line.
#define OPC_IN(c, h, w) \
  "name: t\ninput: {channels: " #c ", height: " #h ", width: " #w "}\nlayers:\n"

static const OpCase OP_CASES[] = {
    // conv: kernels 1/3/5/11, strides 1/2/4, pads 0/1/2, groups 1/2/4, bias on and off
    {"conv_k3_p1", OPC_IN(3, 6, 6) "  - {name: c, op: conv, out: 4, kernel: 3, pad: 1}\n", NULL, 2, 0},
    {"conv_k1_nobias", OPC_IN(4, 5, 5) "  - {name: c, op: conv, out: 6, kernel: 1, bias: false}\n", NULL, 2, 0},
    {"conv_k5_s2_p2", OPC_IN(2, 9, 9) "  - {name: c, op: conv, out: 3, kernel: 5, stride: 2, pad: 2}\n", NULL, 2, 0},
    {"conv_k11_s4_p2", OPC_IN(3, 23, 23) "  - {name: c, op: conv, out: 4, kernel: 11, stride: 4, pad: 2}\n", NULL, 2, 0},
    {"conv_k11_s4_p0", OPC_IN(3, 19, 17) "  - {name: c, op: conv, out: 2, kernel: 11, stride: 4}\n", NULL, 1, 0},
    {"conv_g2_k3_p1", OPC_IN(4, 5, 5) "  - {name: c, op: conv, out: 6, kernel: 3, pad: 1, groups: 2}\n", NULL, 2, 0},
    {"conv_g4_k3_s2_p1_nobias", OPC_IN(8, 7, 7) "  - {name: c, op: conv, out: 8, kernel: 3, stride: 2, pad: 1, groups: 4, bias: false}\n", NULL, 2, 0},
    {"conv_g2_k5_p0", OPC_IN(2, 6, 6) "  - {name: c, op: conv, out: 2, kernel: 5, groups: 2}\n", NULL, 3, 0},
    {"conv_k3_s2_odd", OPC_IN(3, 8, 7) "  - {name: c, op: conv, out: 5, kernel: 3, stride: 2}\n", NULL, 2, 0},
    {"conv_k1_s4", OPC_IN(2, 9, 9) "  - {name: c, op: conv, out: 3, kernel: 1, stride: 4}\n", NULL, 2, 0},
    {"conv_k3_p2", OPC_IN(2, 4, 4) "  - {name: c, op: conv, out: 2, kernel: 3, pad: 2}\n", NULL, 2, 0},
    {"conv_g4_k1_s2_p1", OPC_IN(4, 5, 6) "  - {name: c, op: conv, out: 8, kernel: 1, stride: 2, pad: 1, groups: 4}\n", NULL, 2, 0},
    {"conv_k5_s1_p2_batch1", OPC_IN(1, 7, 7) "  - {name: c, op: conv, out: 3, kernel: 5, pad: 2}\n", NULL, 1, 0},
    // pads per side and per axis, and `same` (odd pixel at the bottom/right)
    {"conv_k3_pad_tlbr", OPC_IN(2, 6, 5) "  - {name: c, op: conv, out: 3, kernel: 3, pad: [2, 0, 1, 1]}\n", NULL, 2, 0},
    {"conv_k3_s2_pad_hw", OPC_IN(3, 7, 6) "  - {name: c, op: conv, out: 2, kernel: 3, stride: 2, pad: [0, 1]}\n", NULL, 2, 0},
    {"conv_k4_s2_same_g2", OPC_IN(4, 7, 6) "  - {name: c, op: conv, out: 4, kernel: 4, stride: 2, pad: same, groups: 2}\n", NULL, 2, 0},
    {"conv_k2_same", OPC_IN(2, 5, 4) "  - {name: c, op: conv, out: 3, kernel: 2, pad: same}\n", NULL, 2, 0},

    // fc (its input flattened first), bias on and off
    {"fc", OPC_IN(2, 3, 3) "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 5}\n", NULL, 3, 0},
    {"fc_nobias", OPC_IN(10, 1, 1) "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 7, bias: false}\n", NULL, 2, 0},
    {"fc_wide", OPC_IN(4, 4, 4) "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 3}\n", NULL, 4, 0},

    // relu, on images and on vectors
    {"relu", OPC_IN(3, 4, 5) "  - {name: r, op: relu}\n", NULL, 2, 0},
    {"relu_flat", OPC_IN(2, 2, 3) "  - {name: f, op: flatten}\n  - {name: r, op: relu}\n", NULL, 3, 0},

    // lrn: sizes 3 and 5, groups 1 and 2, windows clipped at channel and group edges
    {"lrn_s5", OPC_IN(7, 3, 3) "  - {name: n, op: lrn, size: 5, alpha: 0.5, beta: 0.75, k: 2}\n", NULL, 2, 0},
    {"lrn_s3", OPC_IN(5, 2, 3) "  - {name: n, op: lrn, size: 3, alpha: 0.3, beta: 0.75, k: 1}\n", NULL, 2, 0},
    {"lrn_s3_g2", OPC_IN(6, 3, 2) "  - {name: n, op: lrn, size: 3, alpha: 0.5, beta: 0.75, k: 2, groups: 2}\n", NULL, 2, 0},
    {"lrn_s5_g2", OPC_IN(8, 2, 2) "  - {name: n, op: lrn, size: 5, alpha: 0.4, beta: 0.6, k: 1.5, groups: 2}\n", NULL, 2, 0},
    {"lrn_s5_2ch", OPC_IN(2, 3, 3) "  - {name: n, op: lrn, size: 5, alpha: 1, beta: 0.5, k: 1}\n", NULL, 2, 0},
    {"lrn_alexnet", OPC_IN(8, 3, 3) "  - {name: n, op: lrn, size: 5, alpha: 1e-4, beta: 0.75, k: 2}\n", NULL, 2, 0},

    // maxpool: overlapping 3/2, 2/2, pad 1, stride 1, odd sizes, ties
    {"pool_k3_s2", OPC_IN(2, 7, 7) "  - {name: p, op: maxpool, kernel: 3, stride: 2}\n", NULL, 2, 0},
    {"pool_k2_s2", OPC_IN(3, 6, 6) "  - {name: p, op: maxpool, kernel: 2, stride: 2}\n", NULL, 2, 0},
    {"pool_k3_s2_p1", OPC_IN(2, 6, 6) "  - {name: p, op: maxpool, kernel: 3, stride: 2, pad: 1}\n", NULL, 2, 0},
    {"pool_k3_s1_p1", OPC_IN(2, 5, 5) "  - {name: p, op: maxpool, kernel: 3, stride: 1, pad: 1}\n", NULL, 2, 0},
    {"pool_k2_s2_odd", OPC_IN(2, 7, 5) "  - {name: p, op: maxpool, kernel: 2, stride: 2}\n", NULL, 2, 0},
    {"pool_k3_s2_13", OPC_IN(3, 13, 13) "  - {name: p, op: maxpool, kernel: 3, stride: 2}\n", NULL, 1, 0},
    {"pool_k3_s2_p1_ties", OPC_IN(2, 7, 7) "  - {name: p, op: maxpool, kernel: 3, stride: 2, pad: 1}\n", NULL, 2, OPC_TIES},
    {"pool_k2_s1_ties", OPC_IN(2, 4, 5) "  - {name: p, op: maxpool, kernel: 2, stride: 1}\n", NULL, 2, OPC_TIES},
    // ceil_mode (last windows clipped at the bottom/right), per-side pads, same, the
    // default stride (= kernel)
    {"pool_k3_s2_ceil", OPC_IN(2, 8, 7) "  - {name: p, op: maxpool, kernel: 3, stride: 2, ceil_mode: true}\n", NULL, 2, 0},
    {"pool_k3_s3_p1_ceil", OPC_IN(2, 7, 8) "  - {name: p, op: maxpool, kernel: 3, stride: 3, pad: 1, ceil_mode: true}\n", NULL, 2, 0},
    {"pool_k3_s2_pad_tlbr_ceil", OPC_IN(2, 7, 6) "  - {name: p, op: maxpool, kernel: 3, stride: 2, pad: [1, 0, 0, 1], ceil_mode: true}\n", NULL, 2, 0},
    {"pool_k2_same", OPC_IN(3, 5, 4) "  - {name: p, op: maxpool, kernel: 2, pad: same}\n", NULL, 2, 0},
    {"pool_k3_default_stride", OPC_IN(2, 8, 7) "  - {name: p, op: maxpool, kernel: 3}\n", NULL, 2, 0},
    {"pool_k3_s2_ceil_ties", OPC_IN(2, 8, 7) "  - {name: p, op: maxpool, kernel: 3, stride: 2, pad: [0, 1, 1, 0], ceil_mode: true}\n", NULL, 2, OPC_TIES},
    // pads beyond half the kernel (ONNX's limit, kernel - 1): windows of one pixel
    {"pool_k3_s1_p2_wide", OPC_IN(2, 5, 4) "  - {name: p, op: maxpool, kernel: 3, stride: 1, pad: 2}\n", NULL, 2, 0},
    {"pool_k4_s3_wide_sides", OPC_IN(2, 7, 6) "  - {name: p, op: maxpool, kernel: 4, stride: 3, pad: [3, 0, 2, 3]}\n", NULL, 2, 0},

    // dropout: with masks (p 0.5 and 0.25), and without (the identity)
    {"dropout_p05", OPC_IN(3, 4, 4) "  - {name: d, op: dropout, p: 0.5}\n", NULL, 2, 0},
    {"dropout_p025_flat", OPC_IN(2, 3, 3) "  - {name: f, op: flatten}\n  - {name: d, op: dropout, p: 0.25}\n", NULL, 3, 0},
    {"dropout_nomask", OPC_IN(2, 3, 3) "  - {name: d, op: dropout, p: 0.5}\n", NULL, 2, OPC_NO_MASK},

    // flatten
    {"flatten", OPC_IN(3, 4, 5) "  - {name: f, op: flatten}\n", NULL, 2, 0},

    // concat: 2 and 3 inputs, images and vectors
    {"concat2", OPC_IN(2, 4, 4) "  - {name: c, op: conv, out: 3, kernel: 1}\n"
                                "  - {name: cat, op: concat, inputs: [input, c]}\n", NULL, 2, 0},
    {"concat3", OPC_IN(2, 3, 5) "  - {name: c, op: conv, out: 3, kernel: 1}\n"
                                "  - {name: d, op: conv, out: 1, kernel: 3, pad: 1, inputs: input}\n"
                                "  - {name: cat, op: concat, inputs: [c, input, d]}\n", NULL, 2, 0},
    {"concat2_flat", OPC_IN(2, 2, 2) "  - {name: f, op: flatten}\n  - {name: a, op: fc, out: 3}\n"
                                     "  - {name: cat, op: concat, inputs: [f, a]}\n", NULL, 2, 0},

    // softmax (its own backward, not fused with the loss)
    {"softmax", OPC_IN(2, 2, 3) "  - {name: f, op: flatten}\n  - {name: s, op: softmax}\n", NULL, 3, 0},
    {"softmax_10", OPC_IN(10, 1, 1) "  - {name: f, op: flatten}\n  - {name: s, op: softmax}\n", NULL, 2, 0},
};
#define N_OP_CASES (sizeof OP_CASES / sizeof OP_CASES[0])

#define OPC_MAX_INPUTS 8

// One case, set up: the graph, the node under test and random tensors for its call.
typedef struct {
  const OpCase *oc;
  Graph *g;
  int node;       // index of the node under test in g
  const Node *n;  // &g->nodes[node]
  int batch;
  int n_x;                              // inputs of the node
  float *x[OPC_MAX_INPUTS];             // input j, (batch, input j's shape)
  int64_t x_elems[OPC_MAX_INPUTS];      // floats in x[j] (the whole batch)
  float *w, *b;                         // parameters, or NULL
  int64_t w_elems, b_elems;             // 0 when absent
  uint8_t *mask;                        // dropout's keep mask, (batch, n->out); or NULL
  int64_t y_elems;                      // floats in the output (the whole batch)
  float *dy;                            // a random output gradient, N(0, 1), y_elems floats
  OpCall call;                          // g, n, batch, x, w, b, mask set; y NULL
} OpCaseData;

// A stream name for fill_normal: "<case>.<what>".
static const char *op_case_stream(const OpCase *oc, const char *what, char *buf, size_t size) {
  snprintf(buf, size, "%s.%s", oc->name, what);
  return buf;
}

// The splitmix64 step, for shuffles (fill_normal gives the normal values).
static uint64_t op_case_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random values for input j of the node, suited to its op (see the top of the file).
static void op_case_fill_input(const OpCase *oc, OpKind op, int j, uint64_t seed, float *x,
                               int64_t n) {
  char what[32], buf[200];
  snprintf(what, sizeof what, "x%d", j);
  fill_normal(x, n, seed, op_case_stream(oc, what, buf, sizeof buf), 1.0);
  if (op == OP_RELU) {  // at least 0.1 from the kink at 0, so x +- 2^-7 keeps its side
    for (int64_t i = 0; i < n; i++)
      x[i] = x[i] >= 0 ? x[i] + 0.1f : x[i] - 0.1f;
  } else if (op == OP_MAXPOOL && (oc->flags & OPC_TIES)) {
    for (int64_t i = 0; i < n; i++)  // -1, 0 or 1: most windows hold a tie
      x[i] = x[i] > 0.5f ? 1.0f : x[i] < -0.5f ? -1.0f : 0.0f;
  } else if (op == OP_MAXPOOL) {
    // A shuffle of (i - n/2) / 32: distinct values 2^-5 apart (exact in float), so moving
    // any two by at most 2^-7 each never changes which one is larger.
    uint64_t s = seed ^ fnv1a(FNV_OFFSET, oc->name, strlen(oc->name));
    for (int64_t i = 0; i < n; i++)
      x[i] = (float)(i - n / 2) / 32.0f;
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t k = (int64_t)(op_case_next(&s) % (uint64_t)(i + 1));
      float t = x[i];
      x[i] = x[k];
      x[k] = t;
    }
  } else if (op == OP_SOFTMAX) {
    for (int64_t i = 0; i < n; i++)  // logits spread over a few units: a peaked softmax
      x[i] *= 2.0f;
  }
}

static void op_case_free(OpCaseData *d) {
  for (int j = 0; j < d->n_x; j++)
    free(d->x[j]);
  free(d->w);
  free(d->b);
  free(d->mask);
  free(d->dy);
  graph_free(d->g);
  memset(d, 0, sizeof *d);
}

// Builds case `oc` with random data drawn from `seed`. Weights are N(0, 1/fan_in), biases
// N(0, 0.5^2), so outputs stay O(1). Returns false (with a message) if the spec does not
// parse or names no such node.
static bool op_case_setup(const OpCase *oc, uint64_t seed, OpCaseData *d) {
  memset(d, 0, sizeof *d);
  d->oc = oc;
  d->batch = oc->batch;
  d->g = parse_spec_string(oc->name, oc->spec, strlen(oc->spec));
  if (!d->g)
    return false;
  d->node = oc->node ? graph_find(d->g, oc->node) : d->g->n_nodes - 1;
  if (d->node < 0 || d->g->nodes[d->node].n_inputs > OPC_MAX_INPUTS) {
    fprintf(stderr, "op case %s: no layer '%s' (or too many inputs)\n", oc->name,
            oc->node ? oc->node : "?");
    graph_free(d->g);
    return false;
  }
  const Node *n = d->n = &d->g->nodes[d->node];
  char buf[200];
  d->n_x = n->n_inputs;
  for (int j = 0; j < d->n_x; j++) {
    d->x_elems[j] = shape_elems(d->g->nodes[n->inputs[j]].out) * d->batch;
    d->x[j] = xcalloc(d->x_elems[j], sizeof(float));
    op_case_fill_input(oc, n->op, j, seed, d->x[j], d->x_elems[j]);
  }
  d->w_elems = n->n_weight;
  d->b_elems = n->n_bias;
  if (d->w_elems) {
    int64_t fan_in = n->n_weight / (n->op == OP_CONV ? n->conv.out : n->fc.out);
    d->w = xcalloc(d->w_elems, sizeof(float));
    fill_normal(d->w, d->w_elems, seed, op_case_stream(oc, "w", buf, sizeof buf),
                1.0 / sqrt((double)fan_in));
  }
  if (d->b_elems) {
    d->b = xcalloc(d->b_elems, sizeof(float));
    fill_normal(d->b, d->b_elems, seed, op_case_stream(oc, "b", buf, sizeof buf), 0.5);
  }
  d->y_elems = shape_elems(n->out) * d->batch;
  if (n->op == OP_DROPOUT && !(oc->flags & OPC_NO_MASK)) {
    d->mask = xcalloc(d->y_elems, 1);
    dropout_mask(seed, 0, oc->name, 0, d->y_elems, n->dropout.p, d->mask);
  }
  d->dy = xcalloc(d->y_elems, sizeof(float));
  fill_normal(d->dy, d->y_elems, seed, op_case_stream(oc, "dy", buf, sizeof buf), 1.0);
  d->call = (OpCall){.g = d->g, .n = n, .batch = d->batch, .x = (const float *const *)d->x,
                     .w = d->w, .b = d->b, .mask = d->mask};
  return true;
}

#endif
