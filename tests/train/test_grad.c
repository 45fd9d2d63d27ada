// The reference training kernels (compiler/train/grad_ref.c) against finite differences,
// on every case of op_cases.h, plus the loss (softmax_xent), dropout with a mask, the
// max-pool tie rule, and a check that the comparison can fail.
//
// For each case, L = sum_k y_k r_k with y = op(x, w, b) and r a fixed random N(0, 1)
// tensor (the case's dy), so dL/dy = r and the kernels' backward of r is dL/dx, dL/dw,
// dL/db. Each is compared with central differences (L(t + h) - L(t - h)) / 2h, on every
// element of small tensors and a sample of larger ones, and along one random direction
// of the whole tensor (which sees an error in any element, sampled or not).
//
// The step h = 2^-7: a power of two, so t +- h is exact in float for |t| < 2^16 and the
// step taken is exactly the h divided by. Inputs keep clear of kinks (op_cases.h: ReLU
// inputs >= 0.1 from 0, max-pool inputs distinct multiples of 2^-5), so within +-h every
// op is smooth, and for the piecewise linear ones (conv, fc, relu, maxpool, dropout,
// flatten, concat) the difference is exact but for rounding.
//
// Tolerance, per compared value: |analytic - numeric| <= round + 1e-3 |numeric| + 1e-4 s.
//  - round bounds the float rounding in the numerator: each output y_k is rounded once to
//    float (the kernels sum in double), an error <= 2^-24 |y_k|, so L(t+h) - L(t-h) is off
//    by at most 2^-24 sum_k (|y+_k| + |y-_k|) |r_k| over the outputs that changed, divided
//    by 2h (outputs equal on both sides cancel exactly in the double sum; one that moved
//    by less than its rounding step is missed, at most 2 ulps, which the next term covers).
//  - 1e-3 |numeric|: the truncation error of a central difference is h^2/6 f''' ~ 1e-5 f'''
//    for LRN and softmax, well below 1e-3 of the derivative at O(1) inputs; the analytic
//    side's own rounding (one float rounding of a double sum) is 6e-8 relative.
//  - 1e-4 s, s the largest |analytic| of the tensor: room for elements whose gradient is
//    tiny beside the tensor's (truncation and rounding do not scale down with them). Along
//    a direction, s is sum_i |grad_i step_i| / 2h instead.
// On every case the worst |analytic - numeric| / tolerance is 0.2 (run `test_grad -v`),
// and a wrong formula is off by far more: test_can_fail shows a 1% error in one element,
// or 0.5% in all, is caught (and removing the 2 of LRN's cross term, a stride bound off
// by one, softmax's sign, dropout's scale, the batch sum of fc's bias, concat's offset
// or max-pool's accumulation each fails the cases of its op).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "../unit/test.h"
#include "op_cases.h"

#define FD_STEP (1.0 / 128)  // h = 2^-7
#define FD_SAMPLES 40        // elements compared per tensor (all of a smaller one)
#define FD_RTOL 1e-3
#define FD_STOL 1e-4
#define ULP_REL (1.0 / (1 << 24))  // float's unit roundoff

static const TrainKernels *K = &ref_train_kernels;

// ---------------------------------------------------------------- the comparison

// Compares analytic gradients with numeric ones; `round` is each value's rounding bound
// (see the top), `scale` the tensor's largest |analytic|, idx (or NULL) the elements'
// indices for messages. Returns the number of values
// out of tolerance, printing each (when not quiet).
static double worst_ratio;  // the largest |analytic - numeric| / tolerance seen (-v prints it)

static int grad_compare(const char *what, const int64_t *idx, const double *analytic,
                        const double *numeric, const double *round, int n, double scale,
                        bool quiet) {
  int bad = 0;
  for (int i = 0; i < n; i++) {
    double tol = round[i] + FD_RTOL * fabs(numeric[i]) + FD_STOL * scale;
    if (!quiet && tol > 0)
      worst_ratio = fmax(worst_ratio, fabs(analytic[i] - numeric[i]) / tol);
    if (!(fabs(analytic[i] - numeric[i]) <= tol)) {  // NaN fails
      bad++;
      if (!quiet)
        fprintf(stderr, "  %s[%lld]: analytic %.9g, numeric %.9g (tolerance %.3g)\n", what,
                (long long)(idx ? idx[i] : i), analytic[i], numeric[i], tol);
    }
  }
  return bad;
}

// ---------------------------------------------------------------- finite differences

// L = sum_k y_k r_k of the case's forward as its tensors are now, in double. With `other`
// (the outputs of the opposite step), adds to *round 2^-24 (|y_k| + |other_k|) |r_k| over
// the outputs that differ from it. `y` receives the outputs.
static double loss_of(OpCaseData *d, float *y, const float *other, double *round) {
  memset(y, 0, d->y_elems * sizeof *y);
  K->forward(&d->call, y);
  double l = 0;
  for (int64_t k = 0; k < d->y_elems; k++) {
    l += (double)y[k] * d->dy[k];
    if (other && y[k] != other[k])
      *round += ULP_REL * (fabs(y[k]) + fabs(other[k])) * fabs(d->dy[k]);
  }
  return l;
}

// dL/dt[i] by central difference; *round gets its rounding bound.
static double numeric_at(OpCaseData *d, float *t, int64_t i, float *y1, float *y2,
                         double *round) {
  float keep = t[i];
  t[i] = keep + (float)FD_STEP;
  double lp = loss_of(d, y1, NULL, round);
  t[i] = keep - (float)FD_STEP;
  *round = 0;
  double lm = loss_of(d, y2, y1, round);
  t[i] = keep;
  *round /= 2 * FD_STEP;
  return (lp - lm) / (2 * FD_STEP);
}

// Which elements to compare: all of a small tensor, else one at random from each of
// FD_SAMPLES equal strata (the first stratum's first element and the last's last, where
// edge effects live), so the sample is spread over the whole tensor without repeats.
static int pick(int64_t n, uint64_t seed, int64_t *idx) {
  if (n <= FD_SAMPLES) {
    for (int64_t i = 0; i < n; i++)
      idx[i] = i;
    return (int)n;
  }
  for (int k = 0; k < FD_SAMPLES; k++) {
    int64_t lo = k * n / FD_SAMPLES, hi = (k + 1) * n / FD_SAMPLES;
    idx[k] = lo + (int64_t)(op_case_next(&seed) % (uint64_t)(hi - lo));
  }
  idx[0] = 0;
  idx[FD_SAMPLES - 1] = n - 1;
  return FD_SAMPLES;
}

// Element by element: the sampled entries of `grad` (the analytic dL/dt) against
// central differences of t. Returns the failures.
static int check_elements(OpCaseData *d, const char *what, float *t, int64_t n,
                          const float *grad, float *y1, float *y2, bool quiet) {
  int64_t idx[FD_SAMPLES];
  double a[FD_SAMPLES], num[FD_SAMPLES], round[FD_SAMPLES], scale = 0;
  for (int64_t i = 0; i < n; i++)
    scale = fmax(scale, fabs(grad[i]));
  int m = pick(n, fnv1a(FNV_OFFSET, what, strlen(what)), idx);
  for (int k = 0; k < m; k++) {
    a[k] = grad[idx[k]];
    num[k] = numeric_at(d, t, idx[k], y1, y2, &round[k]);
  }
  int bad = grad_compare(what, idx, a, num, round, m, scale, quiet);
  if (bad && !quiet)
    fprintf(stderr, "  (%s: %d of %d sampled elements out of tolerance)\n", what, bad, m);
  return bad;
}

// Along one direction v (uniform in [-1, 1] per element): (L(t + hv) - L(t - hv)) against
// the analytic sum_i grad_i (step+_i + step-_i), with the steps as float rounding made
// them. Tolerance as for one element, relative to sum_i |grad_i| |step_i| (so that one
// bad element among many still shows).
static int check_direction(OpCaseData *d, const char *what, float *t, int64_t n,
                           const float *grad, float *y1, float *y2, bool quiet) {
  float *keep = xcalloc(n, sizeof *keep);
  double *step = xcalloc(n, sizeof *step);
  memcpy(keep, t, n * sizeof *keep);
  uint64_t s = fnv1a(FNV_OFFSET, what, strlen(what));
  double *v = xcalloc(n, sizeof *v);
  for (int64_t i = 0; i < n; i++) {
    v[i] = (double)(op_case_next(&s) >> 11) / 9007199254740992.0 * 2 - 1;
    t[i] = (float)(keep[i] + FD_STEP * v[i]);
    step[i] = (double)t[i] - keep[i];
  }
  double round = 0, lp = loss_of(d, y1, NULL, &round);
  for (int64_t i = 0; i < n; i++) {
    t[i] = (float)(keep[i] - FD_STEP * v[i]);
    step[i] += keep[i] - (double)t[i];
  }
  double lm = loss_of(d, y2, y1, &round);
  memcpy(t, keep, n * sizeof *keep);
  double predicted = 0, mass = 0;
  for (int64_t i = 0; i < n; i++) {
    predicted += grad[i] * step[i];
    mass += fabs(grad[i] * step[i]);
  }
  // Compared as derivatives along v: both sides divided by 2h.
  double a = predicted / (2 * FD_STEP), num = (lp - lm) / (2 * FD_STEP);
  double rb = round / (2 * FD_STEP);
  char name[160];
  snprintf(name, sizeof name, "%s along a random direction", what);
  int bad = grad_compare(name, NULL, &a, &num, &rb, 1, mass / (2 * FD_STEP), quiet);
  free(keep);
  free(step);
  free(v);
  return bad;
}

static int check_tensor(OpCaseData *d, const char *what, float *t, int64_t n,
                        const float *grad, float *y1, float *y2) {
  return check_elements(d, what, t, n, grad, y1, y2, false) +
         check_direction(d, what, t, n, grad, y1, y2, false);
}

// The analytic gradients of a case: backward of r into fresh buffers. dx[j] is zeroed
// (backward adds), dw and db are filled with garbage (backward overwrites).
typedef struct {
  float *y, *dx[OPC_MAX_INPUTS], *dw, *db;
} Grads;

static void analytic(OpCaseData *d, Grads *gr, float dx_start, float dwdb_start) {
  gr->y = xcalloc(d->y_elems, sizeof(float));
  K->forward(&d->call, gr->y);
  d->call.y = gr->y;
  for (int j = 0; j < d->n_x; j++) {
    gr->dx[j] = xcalloc(d->x_elems[j], sizeof(float));
    for (int64_t i = 0; i < d->x_elems[j]; i++)
      gr->dx[j][i] = dx_start;
  }
  gr->dw = d->w_elems ? xcalloc(d->w_elems, sizeof(float)) : NULL;
  gr->db = d->b_elems ? xcalloc(d->b_elems, sizeof(float)) : NULL;
  for (int64_t i = 0; i < d->w_elems; i++)
    gr->dw[i] = dwdb_start;
  for (int64_t i = 0; i < d->b_elems; i++)
    gr->db[i] = dwdb_start;
  K->backward(&d->call, d->dy, gr->dx, gr->dw, gr->db);
}

static void grads_free(const OpCaseData *d, Grads *gr) {
  for (int j = 0; j < d->n_x; j++)
    free(gr->dx[j]);
  free(gr->y);
  free(gr->dw);
  free(gr->db);
}

// dx is accumulated into (a buffer starting at 1 ends at 1 + the gradient), dw and db
// overwritten (garbage before makes no difference).
static void check_semantics(OpCaseData *d, const Grads *clean) {
  Grads pre = {0};
  analytic(d, &pre, 1.0f, 1e30f);
  // Up to 9 additions (overlapping pool windows) each rounded: a few ulps of 1 + |dx|.
  int64_t bad = 0;
  for (int j = 0; j < d->n_x; j++)
    for (int64_t i = 0; i < d->x_elems[j]; i++)
      bad += !(fabs(pre.dx[j][i] - (1.0 + clean->dx[j][i])) <= 1e-6 * (1 + fabs(clean->dx[j][i])));
  for (int64_t i = 0; i < d->w_elems; i++)
    bad += pre.dw[i] != clean->dw[i];
  for (int64_t i = 0; i < d->b_elems; i++)
    bad += pre.db[i] != clean->db[i];
  CHECK(bad == 0);
  grads_free(d, &pre);
  // Nothing wanted: backward must cope with NULL everywhere.
  float *none[OPC_MAX_INPUTS] = {0};
  K->backward(&d->call, d->dy, none, NULL, NULL);
}

static void check_case(const OpCase *oc) {
  OpCaseData d;
  if (!op_case_setup(oc, 1, &d)) {
    CHECK(!"op case sets up");
    return;
  }
  int before = test_failures;
  Grads gr = {0};
  analytic(&d, &gr, 0.0f, 1e30f);
  check_semantics(&d, &gr);
  float *y1 = xcalloc(d.y_elems, sizeof(float)), *y2 = xcalloc(d.y_elems, sizeof(float));
  char what[200];
  int bad = 0;
  for (int j = 0; j < d.n_x && !(oc->flags & OPC_TIES); j++) {
    snprintf(what, sizeof what, "%s dx%d", oc->name, j);
    bad += check_tensor(&d, what, d.x[j], d.x_elems[j], gr.dx[j], y1, y2);
  }
  if (d.w) {
    snprintf(what, sizeof what, "%s dw", oc->name);
    bad += check_tensor(&d, what, d.w, d.w_elems, gr.dw, y1, y2);
  }
  if (d.b) {
    snprintf(what, sizeof what, "%s db", oc->name);
    bad += check_tensor(&d, what, d.b, d.b_elems, gr.db, y1, y2);
  }
  test_failures += bad;
  if (test_failures != before)
    fprintf(stderr, "FAIL %s\n", oc->name);
  free(y1);
  free(y2);
  grads_free(&d, &gr);
  op_case_free(&d);
}

// ---------------------------------------------------------------- the check can fail

// A deliberately wrong gradient must be caught: the analytic dw of a conv case off by 1%
// in one element, and by 0.5% everywhere (seen along a direction).
static void test_can_fail(void) {
  OpCaseData d;
  CHECK(op_case_setup(&OP_CASES[0], 1, &d));
  Grads gr = {0};
  analytic(&d, &gr, 0.0f, 0.0f);
  float *y1 = xcalloc(d.y_elems, sizeof(float)), *y2 = xcalloc(d.y_elems, sizeof(float));
  // One element, compared with the quiet comparison directly.
  int64_t worst = 0;
  for (int64_t i = 0; i < d.w_elems; i++)
    if (fabs(gr.dw[i]) > fabs(gr.dw[worst]))
      worst = i;
  double round, num = numeric_at(&d, d.w, worst, y1, y2, &round);
  double right = gr.dw[worst], wrong = gr.dw[worst] * 1.01;
  CHECK(grad_compare("right", NULL, &right, &num, &round, 1, fabs(right), true) == 0);
  CHECK(grad_compare("wrong", NULL, &wrong, &num, &round, 1, fabs(right), true) == 1);
  // The whole tensor 0.5% off: the element and direction checks both object.
  for (int64_t i = 0; i < d.w_elems; i++)
    gr.dw[i] *= 1.005f;
  int elements = check_elements(&d, "wrong dw", d.w, d.w_elems, gr.dw, y1, y2, true);
  int direction = check_direction(&d, "wrong dw", d.w, d.w_elems, gr.dw, y1, y2, true);
  printf("a deliberately wrong dw: %d of %d sampled elements and %d of 1 direction caught\n",
         elements, FD_SAMPLES, direction);
  CHECK(elements >= FD_SAMPLES / 2);
  CHECK(direction == 1);
  free(y1);
  free(y2);
  grads_free(&d, &gr);
  op_case_free(&d);
}

// ---------------------------------------------------------------- hand-worked cases

static Graph *spec(const char *text) {
  Graph *g = parse_spec_string("<test>", text, strlen(text));
  CHECK(g != NULL);
  return g;
}

// Max pool: the gradient goes to the first maximum in scan order (ky, then kx), and
// padding never wins, even when every real element is negative.
static void test_pool_ties(void) {
  Graph *g = spec(OPC_IN(1, 2, 3) "  - {name: p, op: maxpool, kernel: 2, stride: 1}\n");
  float x[6] = {1, 1, 1, 1, 1, 1}, y[2], dy[2] = {10, 100}, dx[6] = {0};
  const float *xs[1] = {x};
  OpCall c = {.g = g, .n = &g->nodes[1], .batch = 1, .x = xs, .y = y};
  K->forward(&c, y);
  K->backward(&c, dy, (float *[]){dx}, NULL, NULL);
  // Windows at columns 0-1 and 1-2: each's first element is row 0 of its first column.
  float want[6] = {10, 100, 0, 0, 0, 0};
  for (int i = 0; i < 6; i++)
    CHECK(dx[i] == want[i]);
  graph_free(g);

  g = spec(OPC_IN(1, 2, 2) "  - {name: p, op: maxpool, kernel: 3, stride: 2, pad: 1}\n");
  float neg[4] = {-5, -3, -3, -7}, y1[1], g1[1] = {2}, d1[4] = {0};
  const float *ns[1] = {neg};
  c = (OpCall){.g = g, .n = &g->nodes[1], .batch = 1, .x = ns, .y = y1};
  K->forward(&c, y1);
  CHECK(y1[0] == -3);
  K->backward(&c, g1, (float *[]){d1}, NULL, NULL);
  float want1[4] = {0, 2, 0, 0};  // the first -3 (row 0), not the padding's zeros
  for (int i = 0; i < 4; i++)
    CHECK(d1[i] == want1[i]);
  graph_free(g);
}

// ReLU at exactly 0 passes no gradient (slope 0 there, as PyTorch takes it); the FD cases
// keep away from 0, so this is the only check of the convention.
static void test_relu_zero(void) {
  Graph *g = spec(OPC_IN(1, 1, 3) "  - {name: r, op: relu}\n");
  float x[3] = {-1, 0, 2}, y[3], dy[3] = {5, 6, 7}, dx[3] = {0};
  const float *xs[1] = {x};
  OpCall c = {.g = g, .n = &g->nodes[1], .batch = 1, .x = xs, .y = y};
  K->forward(&c, y);
  K->backward(&c, dy, (float *[]){dx}, NULL, NULL);
  CHECK(dx[0] == 0 && dx[1] == 0 && dx[2] == 7);
  graph_free(g);
}

// Dropout with a mask: y = x * mask / (1 - p) and dx += dy * mask / (1 - p), exactly
// (p = 0.75 scales by 4, a power of two); without a mask both are the identity.
static void test_dropout_mask(void) {
  Graph *g = spec(OPC_IN(2, 2, 2) "  - {name: d, op: dropout, p: 0.75}\n");
  enum { N = 16 };  // batch 2
  float x[N], y[N], dy[N], dx[N];
  uint8_t mask[N];
  for (int i = 0; i < N; i++) {
    x[i] = (float)(i - 7) * 0.37f;
    dy[i] = (float)(i % 5) - 2.1f;
    dx[i] = 0.5f;
    mask[i] = (uint8_t)(i % 3 != 1);
  }
  const float *xs[1] = {x};
  OpCall c = {.g = g, .n = &g->nodes[1], .batch = 2, .x = xs, .y = y, .mask = mask};
  K->forward(&c, y);
  K->backward(&c, dy, (float *[]){dx}, NULL, NULL);
  for (int i = 0; i < N; i++) {
    CHECK(y[i] == (mask[i] ? x[i] * 4 : 0));
    CHECK(dx[i] == 0.5f + (mask[i] ? dy[i] * 4 : 0));
  }
  // A real mask from dropout_mask: about 1 - p kept.
  uint8_t big[4000];
  dropout_mask(7, 3, "d", 0, 4000, 0.75, big);
  int kept = 0;
  for (int i = 0; i < 4000; i++)
    kept += big[i];
  CHECK(kept > 850 && kept < 1150);
  // No mask: the identity both ways.
  c.mask = NULL;
  for (int i = 0; i < N; i++)
    dx[i] = 0;
  K->forward(&c, y);
  K->backward(&c, dy, (float *[]){dx}, NULL, NULL);
  for (int i = 0; i < N; i++)
    CHECK(y[i] == x[i] && dx[i] == dy[i]);
  graph_free(g);
}

// ---------------------------------------------------------------- the loss

// The textbook formula in long double, for logits where it does not overflow.
static double xent_direct(const float *z, int classes, int label) {
  long double sum = 0;
  for (int k = 0; k < classes; k++)
    sum += expl((long double)z[k]);
  return (double)(logl(sum) - z[label]);
}

static void test_xent(void) {
  enum { B = 4, C = 7 };
  float z[B * C], dz[B * C];
  int32_t labels[B] = {0, 3, 6, 2};
  fill_normal(z, B * C, 5, "xent.logits", 3.0);
  double loss = softmax_xent(z, labels, B, C, dz, NULL, NULL), want = 0;
  for (int i = 0; i < B; i++)
    want += xent_direct(z + i * C, C, labels[i]) / B;
  CHECK_NEAR(loss, want, 1e-12 * fmax(1, fabs(want)));
  // dlogits = (softmax - onehot) / B, and the gradient of the mean loss: central
  // differences of the loss (double arithmetic inside, so a tight tolerance holds).
  for (int i = 0; i < B; i++) {
    long double sum = 0;
    for (int k = 0; k < C; k++)
      sum += expl((long double)z[i * C + k]);
    for (int k = 0; k < C; k++) {
      double p = (double)(expl((long double)z[i * C + k]) / sum);
      CHECK_NEAR(dz[i * C + k], (p - (k == labels[i])) / B, 1e-7);
      float keep = z[i * C + k];
      z[i * C + k] = keep + (float)FD_STEP;
      double lp = softmax_xent(z, labels, B, C, NULL, NULL, NULL);
      z[i * C + k] = keep - (float)FD_STEP;
      double lm = softmax_xent(z, labels, B, C, NULL, NULL, NULL);
      z[i * C + k] = keep;
      // Truncation h^2/6 f''' with |f'''| <= 1/B: ~3e-6; the loss is exact to ~1e-15.
      CHECK_NEAR((lp - lm) / (2 * FD_STEP), dz[i * C + k], 1e-5);
    }
  }

  // Extreme logits: no overflow, exact answers. Row 0: the label is far below the max
  // (loss 2e4); row 1: the label is the max by 1e4 (loss ~0, gradient 0); row 2: two
  // equal huge logits (loss log 2).
  float e[3 * 3] = {1e4f, 0, -1e4f, 1e4f, 0, -1e4f, -1e4f, -1e4f, -3e4f};
  int32_t el[3] = {2, 0, 1};
  float de[9];
  double eloss = softmax_xent(e, el, 3, 3, de, NULL, NULL);
  CHECK(isfinite(eloss));
  CHECK_NEAR(eloss, (2e4 + 0 + log(2.0)) / 3, 1e-9);
  for (int i = 0; i < 9; i++)
    CHECK(isfinite(de[i]));
  float de_want[9] = {1 / 3.f, 0, -1 / 3.f, 0, 0, 0, 0.5f / 3, -0.5f / 3, 0};
  for (int i = 0; i < 9; i++)
    CHECK_NEAR(de[i], de_want[i], 1e-7);
}

// Top-1 and top-5: a hit when fewer than k other classes have a logit that the label's
// does not strictly exceed (ties count against the label).
static void test_topk(void) {
  enum { C = 10 };
  float z[6 * C];
  for (int i = 0; i < 6 * C; i++)
    z[i] = (float)(i % C);  // row: 0, 1, ..., 9
  int32_t labels[6] = {9, 7, 5, 4, 0, 9};
  // Row 0: label the max (top-1). Row 1: third (top-5). Row 2: fifth (top-5: 4 above it).
  // Row 3: sixth (5 above: miss). Row 4: the min (miss). Row 5: the max tied with one
  // other class: a top-5 hit, not a top-1 hit.
  z[5 * C + 3] = 9;
  int top1 = -1, top5 = -1;
  softmax_xent(z, labels, 6, C, NULL, &top1, &top5);
  CHECK(top1 == 1);
  CHECK(top5 == 4);
  // All logits equal: no hits at all (9 ties > 4).
  float flat[2 * C] = {0};
  int32_t fl[2] = {0, 9};
  double loss = softmax_xent(flat, fl, 2, C, NULL, &top1, &top5);
  CHECK(top1 == 0 && top5 == 0);
  CHECK_NEAR(loss, log((double)C), 1e-12);
  // Fewer than 5 classes: every label is a top-5 hit.
  float few[3] = {3, 1, 2};
  int32_t fw[1] = {1};
  softmax_xent(few, fw, 1, 3, NULL, &top1, &top5);
  CHECK(top1 == 0 && top5 == 1);
}

int main(int argc, char **argv) {
  bool verbose = argc > 1 && !strcmp(argv[1], "-v");
  for (size_t i = 0; i < N_OP_CASES; i++) {
    worst_ratio = 0;
    check_case(&OP_CASES[i]);
    if (verbose)
      printf("%-26s worst |analytic - numeric| / tolerance %.3g\n", OP_CASES[i].name, worst_ratio);
  }
  test_can_fail();
  test_pool_ties();
  test_relu_zero();
  test_dropout_mask();
  test_xent();
  test_topk();
  if (!test_failures)
    printf("train.grad: %zu op cases and the loss match finite differences\n", N_OP_CASES);
  TEST_MAIN_END();
}
