// The reference training kernels: every op's forward (training mode) and backward on
// whole tensors, in plain C written to be obviously correct rather than fast. This is
// the oracle the CPU kernels and the trainer are checked against (tests/train), so each
// backward is the textbook formula, one function per op, with every sum accumulated in
// double, as exec/reference.c does for the forward.
//
// Layout is batch-major NCHW: input j of a call is (batch, g->nodes[n->inputs[j]].out),
// the output (batch, n->out). Semantics (alexc.h, TrainKernels): dx[j] += dL/dx_j when
// dx[j] is not NULL (several consumers of a value add into one buffer), dw and db are
// overwritten with the gradient summed over the batch.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static Shape in_shape(const OpCall *c, int j) { return c->g->nodes[c->n->inputs[j]].out; }

// ---------------------------------------------------------------- forward

// The forward is reference.c's (ref_node_forward wants its parameters as a Weights set,
// found by layer name, so the call's two tensors are wrapped in one), then dropout's
// training mask: y = x * mask / (1 - p), inverted dropout.
static void ref_forward(const OpCall *c, float *y) {
  const Node *n = c->n;
  ParamInfo info[2] = {0};
  float *data[2];
  Weights w = {0, info, data};
  if (c->w) {
    snprintf(info[w.n].name, sizeof info[w.n].name, "%s.weight", n->name);
    data[w.n++] = (float *)c->w;
  }
  if (c->b) {
    snprintf(info[w.n].name, sizeof info[w.n].name, "%s.bias", n->name);
    data[w.n++] = (float *)c->b;
  }
  ref_node_forward(c->g, n, &w, c->x, y, c->batch);
  if (n->op == OP_DROPOUT && c->mask) {
    double scale = 1.0 / (1.0 - n->dropout.p);
    int64_t total = shape_elems(n->out) * c->batch;
    for (int64_t i = 0; i < total; i++)
      y[i] = c->mask[i] ? (float)(y[i] * scale) : 0.0f;  // dropped: 0, never 0 * inf
  }
}

// ---------------------------------------------------------------- backward, one op each

// Conv: y[i,oc,oy,ox] = b[oc] + sum_{ic,ky,kx} w[oc,ic,ky,kx] x[i, g*ipg+ic, oy*s-top+ky,
// ox*s-left+kx] over the taps inside the input (padding reads zeros).

// The input position a tap reads, or -1 when it falls in the padding; `lead` is the
// top or left pad (the bottom/right pads only set the output size).
static int64_t conv_tap(int64_t o, int64_t k, const ConvAttrs *a, int lead, int64_t extent) {
  int64_t i = o * a->stride - lead + k;
  return i >= 0 && i < extent ? i : -1;
}

// dw[oc,ic,ky,kx] = sum over images and output positions of dy[i,oc,oy,ox] * the input
// element that tap read; db[oc] = sum of dy[i,oc,.,.].
static void conv_dw_db(const OpCall *c, const float *dy, float *dw, float *db) {
  const ConvAttrs *a = &c->n->conv;
  Shape in = in_shape(c, 0), out = c->n->out;
  int64_t ipg = in.c / a->groups, opg = a->out / a->groups, k = a->kernel;
  int64_t ohw = shape_plane(out), ihw = shape_plane(in);
  for (int64_t oc = 0; oc < a->out && dw; oc++)
    for (int64_t ic = 0; ic < ipg; ic++)
      for (int64_t ky = 0; ky < k; ky++)
        for (int64_t kx = 0; kx < k; kx++) {
          double acc = 0;
          for (int i = 0; i < c->batch; i++) {
            const float *g = dy + ((int64_t)i * out.c + oc) * ohw;
            const float *x = c->x[0] + ((int64_t)i * in.c + oc / opg * ipg + ic) * ihw;
            for (int64_t oy = 0; oy < out.h; oy++) {
              int64_t iy = conv_tap(oy, ky, a, a->pad.top, in.h);
              for (int64_t ox = 0; ox < out.w && iy >= 0; ox++) {
                int64_t ix = conv_tap(ox, kx, a, a->pad.left, in.w);
                if (ix >= 0)
                  acc += (double)g[oy * out.w + ox] * x[iy * in.w + ix];
              }
            }
          }
          dw[((oc * ipg + ic) * k + ky) * k + kx] = (float)acc;
        }
  for (int64_t oc = 0; oc < a->out && db; oc++) {
    double acc = 0;
    for (int i = 0; i < c->batch; i++)
      for (int64_t p = 0; p < ohw; p++)
        acc += dy[((int64_t)i * out.c + oc) * ohw + p];
    db[oc] = (float)acc;
  }
}

// dx[i,ic,iy,ix] += sum of dy[i,oc,oy,ox] * w[oc,ic',ky,kx] over the output channels of
// ic's group and the taps (oy, ky), (ox, kx) that read (iy, ix): iy = oy*s - top + ky.
// Gathered per input element (one double sum each) rather than scattered, so every
// element is rounded once.
static void conv_dx(const OpCall *c, const float *dy, float *dx) {
  const ConvAttrs *a = &c->n->conv;
  Shape in = in_shape(c, 0), out = c->n->out;
  int64_t ipg = in.c / a->groups, opg = a->out / a->groups, k = a->kernel;
  for (int i = 0; i < c->batch; i++)
    for (int64_t ch = 0; ch < in.c; ch++) {
      int64_t grp = ch / ipg, ic = ch % ipg;
      for (int64_t iy = 0; iy < in.h; iy++)
        for (int64_t ix = 0; ix < in.w; ix++) {
          double acc = 0;
          for (int64_t oc = grp * opg; oc < (grp + 1) * opg; oc++) {
            const float *g = dy + ((int64_t)i * out.c + oc) * shape_plane(out);
            for (int64_t ky = 0; ky < k; ky++) {
              int64_t ty = iy + a->pad.top - ky;  // = oy * stride
              if (ty < 0 || ty % a->stride || ty / a->stride >= out.h)
                continue;
              for (int64_t kx = 0; kx < k; kx++) {
                int64_t tx = ix + a->pad.left - kx;
                if (tx < 0 || tx % a->stride || tx / a->stride >= out.w)
                  continue;
                acc += (double)g[ty / a->stride * out.w + tx / a->stride] *
                       c->w[((oc * ipg + ic) * k + ky) * k + kx];
              }
            }
          }
          dx[(((int64_t)i * in.c + ch) * in.h + iy) * in.w + ix] += (float)acc;
        }
    }
}

static void conv_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                          float *db) {
  conv_dw_db(c, dy, dw, db);
  if (dx[0])
    conv_dx(c, dy, dx[0]);
}

// FC: y[i,o] = b[o] + sum_k w[o,k] x[i,k]. dw[o,k] = sum_i dy[i,o] x[i,k], db[o] =
// sum_i dy[i,o], dx[i,k] += sum_o dy[i,o] w[o,k].
static void fc_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                        float *db) {
  int64_t in = in_shape(c, 0).c, out = c->n->fc.out;
  const float *x = c->x[0];
  for (int64_t o = 0; o < out && dw; o++)
    for (int64_t k = 0; k < in; k++) {
      double acc = 0;
      for (int i = 0; i < c->batch; i++)
        acc += (double)dy[i * out + o] * x[i * in + k];
      dw[o * in + k] = (float)acc;
    }
  for (int64_t o = 0; o < out && db; o++) {
    double acc = 0;
    for (int i = 0; i < c->batch; i++)
      acc += dy[i * out + o];
    db[o] = (float)acc;
  }
  for (int i = 0; i < c->batch && dx[0]; i++)
    for (int64_t k = 0; k < in; k++) {
      double acc = 0;
      for (int64_t o = 0; o < out; o++)
        acc += (double)dy[i * out + o] * c->w[o * in + k];
      dx[0][i * in + k] += (float)acc;
    }
}

// ReLU passes the gradient where its input was positive. At x == 0 the derivative is
// taken as 0, as PyTorch does (the forward's `x > 0 ? x : 0` has slope 0 there).
static void relu_backward(const OpCall *c, const float *dy, float *const *dx) {
  int64_t total = shape_elems(c->n->out) * c->batch;
  for (int64_t i = 0; i < total && dx[0]; i++)
    if (c->x[0][i] > 0)
      dx[0][i] += dy[i];
}

// The LRN window of channel ch: [lo, hi], `size` channels centred on ch, clipped at the
// edges of ch's channel group, exactly as the forward (exec/reference.c) computes it.
static void lrn_window(const LrnAttrs *a, int64_t channels, int64_t ch, int64_t *lo,
                       int64_t *hi) {
  int64_t per_group = channels / a->groups, half = a->size / 2;
  int64_t g0 = ch / per_group * per_group, g1 = g0 + per_group - 1;
  *lo = ch - half < g0 ? g0 : ch - half;
  *hi = ch + half > g1 ? g1 : ch + half;
}

// LRN: b_i = a_i D_i^-beta, D_i = k + alpha S_i, S_i = sum_{j in W(i)} a_j^2 (no division
// by size). Then
//   dL/da_m = dy_m D_m^-beta - 2 alpha beta a_m sum_{i: m in W(i)} dy_i a_i D_i^(-beta-1).
// Windows are symmetric and clipped at the same group edges, so m is in W(i) exactly when
// i is in W(m): the second sum runs over W(m). D is recomputed from x in double.
static void lrn_backward(const OpCall *c, const float *dy, float *const *dx) {
  const LrnAttrs *a = &c->n->lrn;
  Shape s = c->n->out;
  int64_t hw = shape_plane(s);
  double *d = xcalloc(s.c, sizeof *d);
  for (int i = 0; i < c->batch && dx[0]; i++) {
    const float *x = c->x[0] + (int64_t)i * s.c * hw;
    const float *g = dy + (int64_t)i * s.c * hw;
    for (int64_t p = 0; p < hw; p++) {
      for (int64_t ch = 0; ch < s.c; ch++) {  // D for every channel at this pixel
        int64_t lo, hi;
        lrn_window(a, s.c, ch, &lo, &hi);
        double sum = 0;
        for (int64_t j = lo; j <= hi; j++)
          sum += (double)x[j * hw + p] * x[j * hw + p];
        d[ch] = a->k + a->alpha * sum;
      }
      for (int64_t m = 0; m < s.c; m++) {
        int64_t lo, hi;
        lrn_window(a, s.c, m, &lo, &hi);
        double cross = 0;
        for (int64_t j = lo; j <= hi; j++)
          cross += (double)g[j * hw + p] * x[j * hw + p] * pow(d[j], -a->beta - 1);
        double grad = g[m * hw + p] * pow(d[m], -a->beta) -
                      2 * a->alpha * a->beta * x[m * hw + p] * cross;
        dx[0][((int64_t)i * s.c + m) * hw + p] += (float)grad;
      }
    }
  }
  free(d);
}

// Max pooling routes each output's gradient to the input element that won its window:
// the first maximum in scan order (ky, then kx), compared as the forward compares
// (`>` against a running float max from -inf), so ties go to the earliest element and
// padding never wins. Overlapping windows add into the same element.
static void maxpool_backward(const OpCall *c, const float *dy, float *const *dx) {
  const PoolAttrs *a = &c->n->pool;
  Shape in = in_shape(c, 0), out = c->n->out;
  for (int64_t plane = 0; plane < (int64_t)c->batch * in.c && dx[0]; plane++) {
    const float *x = c->x[0] + plane * shape_plane(in);
    const float *g = dy + plane * shape_plane(out);
    float *d = dx[0] + plane * shape_plane(in);
    for (int64_t oy = 0; oy < out.h; oy++)
      for (int64_t ox = 0; ox < out.w; ox++) {
        float m = -INFINITY;
        int64_t arg = -1;  // stays -1 only if every element of the window is -inf
        for (int ky = 0; ky < a->kernel; ky++)
          for (int kx = 0; kx < a->kernel; kx++) {
            int64_t iy = oy * a->stride - a->pad.top + ky, ix = ox * a->stride - a->pad.left + kx;
            if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w && x[iy * in.w + ix] > m) {
              m = x[iy * in.w + ix];
              arg = iy * in.w + ix;
            }
          }
        if (arg >= 0)
          d[arg] += g[oy * out.w + ox];
      }
  }
}

// Inverted dropout: dx = dy * mask / (1 - p), the forward's own scaling; without a mask
// (inference) the identity.
static void dropout_backward(const OpCall *c, const float *dy, float *const *dx) {
  int64_t total = shape_elems(c->n->out) * c->batch;
  double scale = 1.0 / (1.0 - c->n->dropout.p);
  for (int64_t i = 0; i < total && dx[0]; i++)
    if (!c->mask)
      dx[0][i] += dy[i];
    else if (c->mask[i])
      dx[0][i] += (float)(dy[i] * scale);
}

// Flatten keeps the bytes: (C, H, W) and C*H*W are the same layout per image.
static void flatten_backward(const OpCall *c, const float *dy, float *const *dx) {
  int64_t total = shape_elems(c->n->out) * c->batch;
  for (int64_t i = 0; i < total && dx[0]; i++)
    dx[0][i] += dy[i];
}

// Concat: input j's channels are output channels [offset_j, offset_j + C_j) of each
// image; its gradient is that slice of dy.
static void concat_backward(const OpCall *c, const float *dy, float *const *dx) {
  Shape out = c->n->out;
  int64_t offset = 0;  // in channels
  for (int j = 0; j < c->n->n_inputs; j++) {
    Shape in = in_shape(c, j);
    int64_t len = shape_elems(in);  // per image
    for (int i = 0; i < c->batch && dx[j]; i++) {
      const float *src = dy + (int64_t)i * shape_elems(out) + offset * shape_plane(out);
      float *dst = dx[j] + (int64_t)i * len;
      for (int64_t e = 0; e < len; e++)
        dst[e] += src[e];
    }
    offset += in.c;
  }
}

// Softmax (of its own output y, not fused with a loss): dy_k/dx_m = y_k (delta_km - y_m),
// so dx_m += y_m (dy_m - sum_k dy_k y_k), per image.
static void softmax_backward(const OpCall *c, const float *dy, float *const *dx) {
  int64_t n = c->n->out.c;
  for (int i = 0; i < c->batch && dx[0]; i++) {
    const float *y = c->y + i * n, *g = dy + i * n;
    double dot = 0;
    for (int64_t k = 0; k < n; k++)
      dot += (double)g[k] * y[k];
    for (int64_t m = 0; m < n; m++)
      dx[0][i * n + m] += (float)(y[m] * (g[m] - dot));
  }
}

// A fused ReLU's backward (OpCall.relu_y): its output gradient kept where its output is
// > 0, as relu_backward would add it to a zeroed gradient (0 + dy, so a -0 becomes +0 and
// fused and plain programs agree to the bit). Allocated; the caller frees it.
static float *relu_masked(const OpCall *c, const float *dy) {
  int64_t total = shape_elems(c->n->out) * c->batch;
  float *m = xcalloc(total, sizeof *m);
  for (int64_t i = 0; i < total; i++)
    m[i] = c->relu_y[i] > 0 ? 0.0f + dy[i] : 0.0f;
  return m;
}

static void ref_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                         float *db);

// A fused chain's backward after the ReLU (OpCall.lrn, .pool): the plain ops composed,
// each into a zeroed whole-batch temporary as the plain program's gradients would be,
// then the ReLU's mask and the head's backward; the LRN's output is recomputed by the
// LRN's own forward, so it is the one the forward stored. The oracle fuses nothing.
static void chain_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                           float *db) {
  int64_t inner = shape_elems(c->n->out) * c->batch;  // the ReLU's (and the LRN's) output
  const float *g = dy;
  float *pooled = NULL, *normed = NULL, *lrn_y = NULL;
  if (c->lrn) {
    const float *xs[1] = {c->relu_y};
    OpCall fc = {.g = c->g, .n = c->lrn, .batch = c->batch, .x = xs};
    lrn_y = xcalloc(inner, sizeof *lrn_y);
    ref_forward(&fc, lrn_y);
  }
  if (c->pool) {  // into d(pool input): the LRN's output, or the ReLU's
    const float *xs[1] = {c->lrn ? lrn_y : c->relu_y};
    OpCall pc = {.g = c->g, .n = c->pool, .batch = c->batch, .x = xs, .y = c->pool_y};
    pooled = xcalloc(inner, sizeof *pooled);
    maxpool_backward(&pc, g, &pooled);
    g = pooled;
  }
  if (c->lrn) {  // into d(ReLU output)
    const float *xs[1] = {c->relu_y};
    OpCall lc = {.g = c->g, .n = c->lrn, .batch = c->batch, .x = xs, .y = lrn_y,
                 .saved = (float *)c->lrn_saved};
    normed = xcalloc(inner, sizeof *normed);
    lrn_backward(&lc, g, &normed);
    g = normed;
  }
  OpCall head = *c;
  head.lrn = head.pool = NULL;
  ref_backward(&head, g, dx, dw, db);  // the ReLU's mask, then the head's backward
  free(pooled);
  free(normed);
  free(lrn_y);
}

static void ref_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                         float *db) {
  if (c->lrn || c->pool) {
    chain_backward(c, dy, dx, dw, db);
    return;
  }
  if (c->relu_y) {
    float *masked = relu_masked(c, dy);
    OpCall plain = *c;
    plain.relu_y = NULL;
    ref_backward(&plain, masked, dx, dw, db);
    free(masked);
    return;
  }
  switch (c->n->op) {
  case OP_CONV:
    conv_backward(c, dy, dx, dw, db);
    break;
  case OP_FC:
    fc_backward(c, dy, dx, dw, db);
    break;
  case OP_RELU:
    relu_backward(c, dy, dx);
    break;
  case OP_LRN:
    lrn_backward(c, dy, dx);
    break;
  case OP_MAXPOOL:
    maxpool_backward(c, dy, dx);
    break;
  case OP_DROPOUT:
    dropout_backward(c, dy, dx);
    break;
  case OP_FLATTEN:
    flatten_backward(c, dy, dx);
    break;
  case OP_CONCAT:
    concat_backward(c, dy, dx);
    break;
  case OP_SOFTMAX:
    softmax_backward(c, dy, dx);
    break;
  case OP_INPUT:  // the data: nothing to propagate to
  case OP_COUNT:
    break;
  }
}

const TrainKernels ref_train_kernels = {"ref", ref_forward, ref_backward, sgd_update_span};

// ---------------------------------------------------------------- the loss

// Softmax cross-entropy per image with log-sum-exp: with m = max_k z_k,
// log sum_k e^z_k = m + log sum_k e^(z_k - m), whose terms are all <= 1 (no overflow for
// any finite logits, and the largest is exactly 1, so the log never sees 0). The loss is
// lse - z_label; its gradient softmax - onehot, divided by the batch for the mean.
//
// Top-k: a hit when fewer than k other classes have a logit that the label's does not
// strictly exceed. Ties therefore count against the label (a network whose logits are
// all equal scores no top-1 hits, not one by luck of index order), and so does a NaN
// anywhere in the row.
double softmax_xent(const float *logits, const int32_t *labels, int batch, int classes,
                    float *dlogits, int *top1, int *top5) {
  double total = 0;
  int hits1 = 0, hits5 = 0;
  for (int i = 0; i < batch; i++) {
    const float *z = logits + (int64_t)i * classes;
    int32_t label = labels[i];
    if (label < 0 || label >= classes) {
      fprintf(stderr, "alexc: internal error: label %d of image %d is outside [0, %d)\n",
              (int)label, i, classes);
      abort();
    }
    double m = z[0];
    for (int k = 1; k < classes; k++)
      m = z[k] > m ? z[k] : m;
    double sum = 0;
    for (int k = 0; k < classes; k++)
      sum += exp(z[k] - m);
    double lse = m + log(sum);
    total += lse - z[label];
    for (int k = 0; k < classes && dlogits; k++)
      dlogits[(int64_t)i * classes + k] =
          (float)((exp(z[k] - m) / sum - (k == label)) / batch);
    int not_beaten = 0;  // other classes the label's logit does not strictly exceed
    for (int k = 0; k < classes; k++)
      not_beaten += k != label && !(z[label] > z[k]);
    hits1 += not_beaten < 1;
    hits5 += not_beaten < 5;
  }
  if (top1)
    *top1 = hits1;
  if (top5)
    *top5 = hits5;
  return batch ? total / batch : 0;
}
