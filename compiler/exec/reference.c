// The reference executor: plain C for every op's forward pass, written to be
// obviously correct rather than fast. Storage is float32; sums accumulate in double
// so that the oracle's own rounding error stays far below any backend's tolerance.
// Layout is NCHW (rank-1 tensors: N x features), as in PyTorch.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

static void conv(const Node *n, Shape in, const float *x, const float *w, const float *b,
                 float *y, int batch) {
  const ConvAttrs *a = &n->conv;
  Shape out = n->out;
  int64_t in_per_group = in.c / a->groups, out_per_group = a->out / a->groups;
  for (int i = 0; i < batch; i++)
    for (int64_t oc = 0; oc < out.c; oc++) {
      int64_t g = oc / out_per_group;
      const float *wk = w + oc * in_per_group * a->kernel * a->kernel;
      for (int64_t oy = 0; oy < out.h; oy++)
        for (int64_t ox = 0; ox < out.w; ox++) {
          double acc = b ? b[oc] : 0.0;
          for (int64_t ic = 0; ic < in_per_group; ic++) {
            const float *plane = x + ((i * in.c) + g * in_per_group + ic) * in.h * in.w;
            for (int ky = 0; ky < a->kernel; ky++) {
              int64_t iy = oy * a->stride - a->pad + ky;
              if (iy < 0 || iy >= in.h)
                continue;
              for (int kx = 0; kx < a->kernel; kx++) {
                int64_t ix = ox * a->stride - a->pad + kx;
                if (ix < 0 || ix >= in.w)
                  continue;
                acc += (double)plane[iy * in.w + ix] *
                       wk[(ic * a->kernel + ky) * a->kernel + kx];
              }
            }
          }
          y[((i * out.c + oc) * out.h + oy) * out.w + ox] = (float)acc;
        }
    }
}

static void relu(const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = x[i] > 0 ? x[i] : 0.0f;
}

// The seed's formula: b_i = a_i / (k + alpha * sum_j a_j^2)^beta, j over the `size`
// channels centred on i, clipped at the channel (group) edges. No division by size.
static void lrn(const Node *n, const float *x, float *y, int batch) {
  const LrnAttrs *a = &n->lrn;
  Shape s = n->out;
  int64_t plane = s.h * s.w, per_group = s.c / a->groups, half = a->size / 2;
  for (int i = 0; i < batch; i++)
    for (int64_t c = 0; c < s.c; c++) {
      int64_t g0 = c / per_group * per_group, g1 = g0 + per_group - 1;
      int64_t lo = c - half < g0 ? g0 : c - half, hi = c + half > g1 ? g1 : c + half;
      for (int64_t p = 0; p < plane; p++) {
        double sum = 0;
        for (int64_t j = lo; j <= hi; j++) {
          double v = x[(i * s.c + j) * plane + p];
          sum += v * v;
        }
        int64_t at = (i * s.c + c) * plane + p;
        y[at] = (float)(x[at] / pow(a->k + a->alpha * sum, a->beta));
      }
    }
}

// Padding never wins the max: windows are clipped to the input, as in PyTorch.
static void maxpool(const Node *n, Shape in, const float *x, float *y, int batch) {
  const PoolAttrs *a = &n->pool;
  Shape out = n->out;
  for (int i = 0; i < batch; i++)
    for (int64_t c = 0; c < out.c; c++) {
      const float *plane = x + (i * in.c + c) * in.h * in.w;
      for (int64_t oy = 0; oy < out.h; oy++)
        for (int64_t ox = 0; ox < out.w; ox++) {
          float m = -INFINITY;
          for (int ky = 0; ky < a->kernel; ky++)
            for (int kx = 0; kx < a->kernel; kx++) {
              int64_t iy = oy * a->stride - a->pad + ky, ix = ox * a->stride - a->pad + kx;
              if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w && plane[iy * in.w + ix] > m)
                m = plane[iy * in.w + ix];
            }
          y[((i * out.c + c) * out.h + oy) * out.w + ox] = m;
        }
    }
}

static void fc(const Node *n, Shape in, const float *x, const float *w, const float *b, float *y,
               int batch) {
  int64_t out = n->fc.out;
  for (int i = 0; i < batch; i++)
    for (int64_t o = 0; o < out; o++) {
      double acc = b ? b[o] : 0.0;
      const float *row = w + o * in.c, *xi = x + i * in.c;
      for (int64_t k = 0; k < in.c; k++)
        acc += (double)row[k] * xi[k];
      y[i * out + o] = (float)acc;
    }
}

static void softmax(Shape s, const float *x, float *y, int batch) {
  for (int i = 0; i < batch; i++) {
    const float *xi = x + i * s.c;
    double m = -INFINITY, sum = 0;
    for (int64_t k = 0; k < s.c; k++)
      m = xi[k] > m ? xi[k] : m;
    for (int64_t k = 0; k < s.c; k++)
      sum += exp(xi[k] - m);
    for (int64_t k = 0; k < s.c; k++)
      y[i * s.c + k] = (float)(exp(xi[k] - m) / sum);
  }
}

// Channel concatenation: per image, the inputs' (C_i, H, W) blocks one after another.
static void concat(const Graph *g, const Node *n, float **outs, float *y, int batch) {
  int64_t out_elems = shape_elems(n->out);
  for (int i = 0; i < batch; i++) {
    float *dst = y + i * out_elems;
    for (int j = 0; j < n->n_inputs; j++) {
      int64_t e = shape_elems(g->nodes[n->inputs[j]].out);
      memcpy(dst, outs[n->inputs[j]] + i * e, e * sizeof(float));
      dst += e;
    }
  }
}

static void run_node(const Graph *g, const Weights *w, int idx, float **outs, int batch) {
  const Node *n = &g->nodes[idx];
  const float *x = n->n_inputs ? outs[n->inputs[0]] : NULL;
  Shape in = n->n_inputs ? g->nodes[n->inputs[0]].out : n->out;
  float *y = outs[idx];
  int64_t total = shape_elems(n->out) * batch;
  switch (n->op) {
  case OP_INPUT:
    break;
  case OP_CONV:
    conv(n, in, x, weights_get(w, idx, false), weights_get(w, idx, true), y, batch);
    break;
  case OP_RELU:
    relu(x, y, total);
    break;
  case OP_LRN:
    lrn(n, x, y, batch);
    break;
  case OP_MAXPOOL:
    maxpool(n, in, x, y, batch);
    break;
  case OP_FC:
    fc(n, in, x, weights_get(w, idx, false), weights_get(w, idx, true), y, batch);
    break;
  case OP_DROPOUT:  // inference: identity (training scales by 1/(1-p) when it drops)
  case OP_FLATTEN:  // NCHW is already (N, C*H*W) in memory
    memcpy(y, x, total * sizeof(float));
    break;
  case OP_CONCAT:
    concat(g, n, outs, y, batch);
    break;
  case OP_SOFTMAX:
    softmax(n->out, x, y, batch);
    break;
  case OP_COUNT:
    break;
  }
}

float **ref_run(const Graph *g, const Weights *w, const float *x, int batch) {
  float **outs = xcalloc(g->n_nodes, sizeof *outs);
  for (int i = 0; i < g->n_nodes; i++)
    outs[i] = xcalloc(shape_elems(g->nodes[i].out) * batch, sizeof(float));
  memcpy(outs[0], x, shape_elems(g->nodes[0].out) * batch * sizeof(float));
  for (int i = 1; i < g->n_nodes; i++)
    run_node(g, w, i, outs, batch);
  return outs;
}

void ref_free_outputs(const Graph *g, float **outs) {
  if (!outs)
    return;
  for (int i = 0; i < g->n_nodes; i++)
    free(outs[i]);
  free(outs);
}
