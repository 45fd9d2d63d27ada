// The reference executor on tiny graphs whose outputs can be worked out by hand.
// (Every op is also checked against PyTorch by the golden tests in tests/golden.)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "test.h"

static Graph *spec(const char *text) {
  Graph *g = parse_spec_string("<test>", text, strlen(text));
  CHECK(g && graph_verify(g));
  return g;
}

// Every node's output (the graph is planned for one device, unfused).
static float **ref_all(Graph *g, const Weights *w, const float *x, int batch) {
  int *want = xcalloc(g->n_nodes, sizeof(int));
  float **out = xcalloc(g->n_nodes, sizeof(float *));
  for (int i = 0; i < g->n_nodes; i++)
    want[i] = i;
  CHECK(plan_plain(g));
  CHECK(ref_run(g, w, x, batch, want, g->n_nodes, out));
  free(want);
  return out;
}

static void ref_free_all(const Graph *g, float **y) {
  for (int i = 0; i < g->n_nodes; i++)
    free(y[i]);
  free(y);
}

static void set_param(Weights *w, const char *layer, bool bias, const float *v, int n) {
  memcpy((float *)weights_get(w, layer, bias), v, n * sizeof(float));
}

static void test_conv(void) {
  // 1x3x3 input, one 2x2 kernel, stride 1, pad 0: out[y][x] = sum of a 2x2 window * w + b.
  Graph *g = spec("name: t\ninput: {channels: 1, height: 3, width: 3}\n"
                  "layers:\n  - {name: c, op: conv, out: 1, kernel: 2}\n");
  Weights *w = weights_init(g, 0, INIT_SPEC);
  set_param(w, "c", false, (float[]){1, 2, 3, 4}, 4);
  set_param(w, "c", true, (float[]){0.5f}, 1);
  float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  float **y = ref_all(g, w, x, 1);
  CHECK_NEAR(y[1][0], 1 * 1 + 2 * 2 + 4 * 3 + 5 * 4 + 0.5, 1e-6);
  CHECK_NEAR(y[1][3], 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4 + 0.5, 1e-6);
  ref_free_all(g, y);
  weights_free(w);
  graph_free(g);
}

static void test_grouped_conv(void) {
  // groups 2, 1x1 kernels: each output channel sees only its own input channel.
  Graph *g = spec("name: t\ninput: {channels: 2, height: 1, width: 1}\n"
                  "layers:\n  - {name: c, op: conv, out: 2, kernel: 1, groups: 2, bias: false}\n");
  Weights *w = weights_init(g, 0, INIT_SPEC);
  set_param(w, "c", false, (float[]){10, 100}, 2);
  float x[2] = {3, 5};
  float **y = ref_all(g, w, x, 1);
  CHECK_NEAR(y[1][0], 30, 1e-6);
  CHECK_NEAR(y[1][1], 500, 1e-6);
  ref_free_all(g, y);
  weights_free(w);
  graph_free(g);
}

static void test_lrn_edges(void) {
  // size 3 over 4 channels: channel 0 sums channels 0..1, channel 2 sums 1..3.
  Graph *g = spec("name: t\ninput: {channels: 4, height: 1, width: 1}\n"
                  "layers:\n  - {name: n, op: lrn, size: 3, alpha: 0.5, beta: 0.75, k: 2}\n");
  float x[4] = {1, 2, 3, 4};
  float **y = ref_all(g, NULL, x, 1);
  CHECK_NEAR(y[1][0], 1 / pow(2 + 0.5 * (1 + 4), 0.75), 1e-6);
  CHECK_NEAR(y[1][2], 3 / pow(2 + 0.5 * (4 + 9 + 16), 0.75), 1e-6);
  CHECK_NEAR(y[1][3], 4 / pow(2 + 0.5 * (9 + 16), 0.75), 1e-6);
  ref_free_all(g, y);
  graph_free(g);

  // groups 2: channel 1's window stops at the group edge (channels 0..1 only).
  g = spec("name: t\ninput: {channels: 4, height: 1, width: 1}\n"
           "layers:\n  - {name: n, op: lrn, size: 3, alpha: 0.5, beta: 0.75, k: 2, groups: 2}\n");
  y = ref_all(g, NULL, x, 1);
  CHECK_NEAR(y[1][1], 2 / pow(2 + 0.5 * (1 + 4), 0.75), 1e-6);
  ref_free_all(g, y);
  graph_free(g);
}

static void test_pool_softmax_concat(void) {
  Graph *g = spec("name: t\ninput: {channels: 1, height: 2, width: 2}\n"
                  "layers:\n"
                  "  - {name: p, op: maxpool, kernel: 2, stride: 2, pad: 1}\n"
                  "  - {name: both, op: concat, inputs: [p, input]}\n"
                  "  - {name: f, op: flatten}\n"
                  "  - {name: s, op: softmax}\n");
  CHECK(g && g->nodes[1].out.h == 2);  // (2 + 2 - 2) / 2 + 1
  float x[4] = {-1, -2, -3, -4};
  float **y = ref_all(g, NULL, x, 1);
  // Padding never wins: every window holds exactly one real pixel.
  CHECK(y[1][0] == -1 && y[1][3] == -4);
  // concat: pool's 4 values, then the input's 4.
  CHECK(y[2][4] == -1 && y[2][7] == -4);
  double sum = 0;
  for (int i = 0; i < 8; i++)
    sum += y[4][i];
  CHECK_NEAR(sum, 1, 1e-6);
  CHECK(y[4][0] > y[4][3]);
  ref_free_all(g, y);
  graph_free(g);
}

static void test_init_is_deterministic(void) {
  Graph *g = spec("name: t\ninput: {channels: 3, height: 8, width: 8}\n"
                  "layers:\n  - {name: c, op: conv, out: 4, kernel: 3, init: {bias: 1}}\n"
                  "  - {name: f, op: flatten}\n  - {name: fc, op: fc, out: 5}\n");
  Weights *a = weights_init(g, 42, INIT_SPEC), *b = weights_init(g, 42, INIT_SPEC);
  Weights *c = weights_init(g, 43, INIT_SPEC);
  CHECK(a->n == 4);
  CHECK(!memcmp(a->data[0], b->data[0], a->info[0].elems * sizeof(float)));
  CHECK(memcmp(a->data[0], c->data[0], a->info[0].elems * sizeof(float)) != 0);
  CHECK(a->data[1][0] == 1.0f && a->data[3][0] == 0.0f);  // conv bias 1, fc bias 0
  // Sample std of 4*3*3*3 = 108 N(0, 0.01) draws is within 30% of 0.01.
  double ss = 0;
  for (int i = 0; i < 108; i++)
    ss += (double)a->data[0][i] * a->data[0][i];
  CHECK(fabs(sqrt(ss / 108) - 0.01) < 0.003);
  weights_free(a);
  weights_free(b);
  weights_free(c);
  graph_free(g);
}

// bias_std draws each bias from N(bias, bias_std), from the tensor's own stream.
static void test_init_bias_std(void) {
  Graph *g = spec("name: t\ninput: {channels: 3, height: 8, width: 8}\n"
                  "layers:\n  - {name: c, op: conv, out: 64, kernel: 3,"
                  " init: {bias: 2, bias_std: 0.5}}\n");
  Weights *a = weights_init(g, 42, INIT_SPEC), *b = weights_init(g, 42, INIT_SPEC);
  Weights *f = weights_init(g, 42, INIT_FAN_IN);
  const float *bias = weights_get(a, "c", true);
  CHECK(!memcmp(bias, weights_get(b, "c", true), 64 * sizeof(float)));
  double sum = 0, ss = 0;
  for (int i = 0; i < 64; i++) {
    sum += bias[i];
    ss += (bias[i] - 2.0) * (bias[i] - 2.0);
  }
  CHECK(bias[0] != bias[1]);
  CHECK(fabs(sum / 64 - 2) < 0.25);             // 4 standard errors of the mean
  CHECK(fabs(sqrt(ss / 64) - 0.5) < 0.5 * 0.3);  // sample std within 30%
  CHECK(weights_get(f, "c", true)[5] == 0.0f);   // fan-in ignores the rule
  weights_free(a);
  weights_free(b);
  weights_free(f);
  graph_free(g);
}

int main(void) {
  test_conv();
  test_grouped_conv();
  test_lrn_edges();
  test_pool_softmax_concat();
  test_init_is_deterministic();
  test_init_bias_std();
  TEST_MAIN_END();
}
