// The reference executor: plain C for every op's forward pass, written to be
// obviously correct rather than fast. Storage is float32; sums accumulate in double
// so that the oracle's own rounding error stays far below any backend's tolerance.
// Layout is NCHW (flat tensors: N x features), as in PyTorch.
//
// It runs whatever the passes produced: each logical device has its own arena,
// allocated from the memory plan, holding its channel range of each tensor; fused
// nodes run stage by stage; transfers copy channels between devices. Every channel
// access goes through chan(), which stops with an internal error if a device reads
// a channel that it has neither computed nor received: a plan that forgets a
// transfer cannot pass silently.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// Own channels, plus what each other device sends on either side of them. Received
// ranges that touch are merged, so in practice a buffer needs three.
#define MAX_VALID (2 * MAX_DEVICES + 1)

// Which channels of a buffer hold data yet: computed here or received.
typedef struct {
  Range r[MAX_VALID];
  int n;
} Valid;

// A device's copy of channels [held.begin, held.end) of a tensor of per-image shape
// `shape`, stored (image, held channel, plane).
typedef struct {
  float *data;
  Shape shape;
  Range held;
  int device;
  const char *name;
  Valid *valid;  // NULL for a view being written
} View;


static bool is_valid(const View *v, int64_t c) {
  if (!v->valid)
    return c >= v->held.begin && c < v->held.end;
  for (int k = 0; k < v->valid->n; k++)
    if (c >= v->valid->r[k].begin && c < v->valid->r[k].end)
      return true;
  return false;
}

static float *chan(View v, int img, int64_t c) {
  if (!is_valid(&v, c)) {
    fprintf(stderr, "alexc: internal error: device %d uses channel %lld of '%s', which it has "
            "neither computed nor received (holds [%lld, %lld))\n", v.device, (long long)c,
            v.name, (long long)v.held.begin, (long long)v.held.end);
    abort();
  }
  return v.data + ((int64_t)img * range_len(v.held) + (c - v.held.begin)) * shape_plane(v.shape);
}

// Adds r to the valid ranges, merging it with those it touches. Running out of room
// stops with an internal error: dropping a range would turn a correct plan into a
// spurious "neither computed nor received".
static void mark_valid(Valid *v, Range r) {
  if (!range_len(r))
    return;
  for (int k = 0; k < v->n;) {
    Range q = v->r[k];
    if (q.end < r.begin || r.end < q.begin) {
      k++;
      continue;
    }
    r = (Range){q.begin < r.begin ? q.begin : r.begin, q.end > r.end ? q.end : r.end};
    v->r[k] = v->r[--v->n];  // absorbed: re-check the rest against the union
    k = 0;
  }
  if (v->n == MAX_VALID) {
    fprintf(stderr, "alexc: internal error: more than %d separate channel ranges valid in one "
            "buffer\n", MAX_VALID);
    abort();
  }
  v->r[v->n++] = r;
}

// ---------------------------------------------------------------- ops
// Each computes output channels r (absolute) of `y` from its input view(s).

static void conv(const Node *n, View x, View y, Range r, const float *w, const float *b,
                 int batch) {
  const ConvAttrs *a = &n->conv;
  Shape in = x.shape, out = y.shape;
  int64_t ipg = in.c / a->groups, opg = a->out / a->groups, k = a->kernel;
  for (int i = 0; i < batch; i++)
    for (int64_t oc = r.begin; oc < r.end; oc++) {
      int64_t g = oc / opg;
      const float *wk = w + oc * ipg * k * k;
      float *dst = chan(y, i, oc);
      for (int64_t oy = 0; oy < out.h; oy++)
        for (int64_t ox = 0; ox < out.w; ox++) {
          double acc = b ? b[oc] : 0.0;
          for (int64_t ic = 0; ic < ipg; ic++) {
            const float *src = chan(x, i, g * ipg + ic);
            for (int64_t ky = 0; ky < k; ky++) {
              int64_t iy = oy * a->stride - a->pad.top + ky;
              if (iy < 0 || iy >= in.h)
                continue;
              for (int64_t kx = 0; kx < k; kx++) {
                int64_t ix = ox * a->stride - a->pad.left + kx;
                if (ix >= 0 && ix < in.w)
                  acc += (double)src[iy * in.w + ix] * wk[(ic * k + ky) * k + kx];
              }
            }
          }
          dst[oy * out.w + ox] = (float)acc;
        }
    }
}

static void relu(View x, View y, Range r, int batch) {
  for (int i = 0; i < batch; i++)
    for (int64_t c = r.begin; c < r.end; c++) {
      const float *src = chan(x, i, c);
      float *dst = chan(y, i, c);
      for (int64_t p = 0; p < shape_plane(y.shape); p++)
        dst[p] = src[p] > 0 ? src[p] : 0.0f;
    }
}

// Dropout at inference (identity: training scales by 1/(1-p) when it drops), and
// flatten, whose (C, H, W) -> C*H*W is the same bytes: both copy channels.
static void copy_channels(View x, View y, Range r, int batch) {
  int64_t scale = shape_plane(x.shape) / shape_plane(y.shape);  // flatten: features per channel
  for (int i = 0; i < batch; i++)
    for (int64_t c = r.begin; c < r.end; c += scale) {
      const float *src = chan(x, i, c / scale);
      float *dst = chan(y, i, c);
      if (src != dst)
        memmove(dst, src, shape_plane(x.shape) * sizeof(float));
    }
}

// The seed's formula: b_i = a_i / (k + alpha * sum_j a_j^2)^beta, j over the `size`
// channels centred on i, clipped at the channel (group) edges. No division by size.
static void lrn(const Node *n, View x, View y, Range r, int batch) {
  const LrnAttrs *a = &n->lrn;
  int64_t per_group = x.shape.c / a->groups, half = a->size / 2, hw = shape_plane(x.shape);
  for (int i = 0; i < batch; i++)
    for (int64_t c = r.begin; c < r.end; c++) {
      int64_t g0 = c / per_group * per_group, g1 = g0 + per_group - 1;
      int64_t lo = c - half < g0 ? g0 : c - half, hi = c + half > g1 ? g1 : c + half;
      const float *src = chan(x, i, c);
      float *dst = chan(y, i, c);
      for (int64_t p = 0; p < hw; p++) {
        double sum = 0;
        for (int64_t j = lo; j <= hi; j++) {
          double v = chan(x, i, j)[p];
          sum += v * v;
        }
        dst[p] = (float)(src[p] / pow(a->k + a->alpha * sum, a->beta));
      }
    }
}

// Padding never wins the max: windows are clipped to the input, as in PyTorch.
static void maxpool(const Node *n, View x, View y, Range r, int batch) {
  const PoolAttrs *a = &n->pool;
  Shape in = x.shape, out = y.shape;
  for (int i = 0; i < batch; i++)
    for (int64_t c = r.begin; c < r.end; c++) {
      const float *src = chan(x, i, c);
      float *dst = chan(y, i, c);
      for (int64_t oy = 0; oy < out.h; oy++)
        for (int64_t ox = 0; ox < out.w; ox++) {
          float m = -INFINITY;
          for (int ky = 0; ky < a->kernel; ky++)
            for (int kx = 0; kx < a->kernel; kx++) {
              int64_t iy = oy * a->stride - a->pad.top + ky, ix = ox * a->stride - a->pad.left + kx;
              if (iy >= 0 && iy < in.h && ix >= 0 && ix < in.w && src[iy * in.w + ix] > m)
                m = src[iy * in.w + ix];
            }
          dst[oy * out.w + ox] = m;
        }
    }
}

static void fc(const Node *n, View x, View y, Range r, const float *w, const float *b,
               int batch) {
  int64_t in = x.shape.c;
  for (int i = 0; i < batch; i++) {
    const float *xi = chan(x, i, 0);
    chan(x, i, in - 1);  // the whole input vector must be here
    for (int64_t o = r.begin; o < r.end; o++) {
      double acc = b ? b[o] : 0.0;
      const float *row = w + o * in;
      for (int64_t k = 0; k < in; k++)
        acc += (double)row[k] * xi[k];
      *chan(y, i, o) = (float)acc;
    }
  }
  (void)n;
}

static void softmax(View x, View y, Range r, int batch) {
  int64_t n = x.shape.c;
  for (int i = 0; i < batch; i++) {
    const float *xi = chan(x, i, 0);
    chan(x, i, n - 1);
    double m = -INFINITY, sum = 0;
    for (int64_t k = 0; k < n; k++)
      m = xi[k] > m ? xi[k] : m;
    for (int64_t k = 0; k < n; k++)
      sum += exp(xi[k] - m);
    for (int64_t k = r.begin; k < r.end; k++)
      *chan(y, i, k) = (float)(exp(xi[k] - m) / sum);
  }
}

// Channel concatenation: output channel c comes from the input that covers it.
static void concat(const Graph *g, const Node *n, const View *xs, View y, Range r, int batch) {
  for (int i = 0; i < batch; i++)
    for (int64_t c = r.begin; c < r.end; c++) {
      int64_t offset = 0;
      int j = 0;
      while (c >= offset + g->nodes[n->inputs[j]].out.c)
        offset += g->nodes[n->inputs[j++]].out.c;
      memcpy(chan(y, i, c), chan(xs[j], i, c - offset), shape_plane(y.shape) * sizeof(float));
    }
}

// Runs one stage (the head, or an epilogue op `s`) for output channels r.
static void run_stage(const Graph *g, const Node *node, const Node *s, const Weights *w,
                      const View *xs, View y, Range r, int batch) {
  switch (s->op) {
  case OP_CONV:
    conv(s, xs[0], y, r, weights_get(w, node->name, false), weights_get(w, node->name, true),
         batch);
    break;
  case OP_FC:
    fc(s, xs[0], y, r, weights_get(w, node->name, false), weights_get(w, node->name, true), batch);
    break;
  case OP_RELU:
    relu(xs[0], y, r, batch);
    break;
  case OP_LRN:
    lrn(s, xs[0], y, r, batch);
    break;
  case OP_MAXPOOL:
    maxpool(s, xs[0], y, r, batch);
    break;
  case OP_DROPOUT:
  case OP_FLATTEN:
    copy_channels(xs[0], y, r, batch);
    break;
  case OP_CONCAT:
    concat(g, s, xs, y, r, batch);
    break;
  case OP_SOFTMAX:
    softmax(xs[0], y, r, batch);
    break;
  case OP_INPUT:
  case OP_COUNT:
    break;
  }
}

// ---------------------------------------------------------------- the plan

typedef struct {
  const Graph *g;
  int batch;
  float *arena[MAX_DEVICES];
  Valid (*valid)[MAX_DEVICES];  // per node and device
} Exec;

// A node's buffer on device d, for reading (checked against what is valid there).
static View node_view(const Exec *e, int i, int d) {
  const Node *n = &e->g->nodes[i];
  const Placement *p = &n->place[d];
  return (View){e->arena[d] + p->offset * e->batch, n->out, p->held, d, n->name,
                &e->valid[i][d]};
}

// The same buffer for writing: any held channel.
static View node_target(const Exec *e, int i, int d) {
  View v = node_view(e, i, d);
  v.valid = NULL;
  return v;
}

// Runs node i on device d: its head, then each fused stage into the next buffer.
static void run_on_device(Exec *e, const Weights *w, int i, int d) {
  const Node *n = &e->g->nodes[i];
  const Placement *p = &n->place[d];
  if (!range_len(p->stage[n->n_epilogue]))
    return;
  View xs[64];
  for (int j = 0; j < n->n_inputs && j < 64; j++)
    xs[j] = node_view(e, n->inputs[j], d);
  // Intermediate stages are materialised here, outside the memory plan: a fused
  // kernel keeps them on chip, so the plan gives them no buffer.
  float *stage_buf[MAX_EPILOGUE] = {0};
  Valid stage_valid[MAX_EPILOGUE];
  for (int k = 0; k <= n->n_epilogue; k++) {
    const Node *s = k ? &n->epilogue[k - 1] : n;
    View y;
    if (k == n->n_epilogue) {
      y = node_target(e, i, d);
    } else {
      Shape shape = node_stage_shape(n, k);
      stage_buf[k] = xcalloc(range_len(p->stage[k]) * shape_plane(shape) * e->batch, sizeof(float));
      y = (View){stage_buf[k], shape, p->stage[k], d, s->name, NULL};
    }
    run_stage(e->g, n, s, w, xs, y, p->stage[k], e->batch);
    if (k < n->n_epilogue) {
      stage_valid[k] = (Valid){{p->stage[k]}, 1};
      y.valid = &stage_valid[k];
    }
    xs[0] = y;
  }
  e->valid[i][d] = (Valid){{p->stage[n->n_epilogue]}, 1};
  for (int k = 0; k < n->n_epilogue; k++)
    free(stage_buf[k]);
}

static void run_transfers(Exec *e, int i) {
  for (int t = 0; t < e->g->n_transfers; t++) {
    const Transfer *tr = &e->g->transfers[t];
    if (tr->node != i)
      continue;
    View from = node_view(e, i, tr->from), to = node_target(e, i, tr->to);
    chan(from, 0, tr->range.end - 1);  // the sender must have all of it
    for (int img = 0; img < e->batch; img++)
      memcpy(chan(to, img, tr->range.begin), chan(from, img, tr->range.begin),
             range_len(tr->range) * shape_plane(from.shape) * sizeof(float));
    mark_valid(&e->valid[i][tr->to], tr->range);
  }
}

// Copies the whole of node i's output, each channel from the device computing it.
static void gather(Exec *e, int i, float *out) {
  const Node *n = &e->g->nodes[i];
  int64_t hw = shape_plane(n->out), c = n->out.c;
  for (int d = 0; d < e->g->n_devices; d++) {
    Range r = n->place[d].stage[n->n_epilogue];
    if (n->op == OP_INPUT)
      r = d == 0 ? (Range){0, c} : (Range){0, 0};
    if (!range_len(r))
      continue;
    View v = node_view(e, i, d);
    for (int img = 0; img < e->batch; img++)
      memcpy(out + (img * c + r.begin) * hw, chan(v, img, r.begin), range_len(r) * hw * sizeof(float));
  }
}

static void upload_input(Exec *e, const float *x) {
  const Node *n = &e->g->nodes[0];
  int64_t hw = shape_plane(n->out);
  for (int d = 0; d < e->g->n_devices; d++) {
    Range r = n->place[d].held;
    if (!range_len(r))
      continue;
    View v = node_target(e, 0, d);
    for (int img = 0; img < e->batch; img++)
      memcpy(chan(v, img, r.begin), x + (img * n->out.c + r.begin) * hw,
             range_len(r) * hw * sizeof(float));
    e->valid[0][d] = (Valid){{r}, 1};
  }
}

bool ref_run(const Graph *g, const Weights *w, const float *x, int batch, const int *want,
             int n_want, float **out) {
  if (!g->planned) {
    error("internal error: the reference executor needs a planned graph (run_passes or "
          "plan_plain first)");
    return false;
  }
  Exec e = {g, batch, {0}, xcalloc(g->n_nodes, sizeof *e.valid)};
  for (int d = 0; d < g->n_devices; d++)
    e.arena[d] = xcalloc(g->arena[d] * batch, sizeof(float));
  for (int k = 0; k < n_want; k++)
    out[k] = xcalloc(shape_elems(g->nodes[want[k]].out) * batch, sizeof(float));
  for (int i = 0; i < g->n_nodes; i++) {
    if (i == 0)
      upload_input(&e, x);
    else
      for (int d = 0; d < g->n_devices; d++)
        run_on_device(&e, w, i, d);
    run_transfers(&e, i);
    for (int k = 0; k < n_want; k++)
      if (want[k] == i)
        gather(&e, i, out[k]);
  }
  for (int d = 0; d < g->n_devices; d++)
    free(e.arena[d]);
  free(e.valid);
  return true;
}

float *ref_run_output(const Graph *g, const Weights *w, const float *x, int batch) {
  float *y = NULL;
  int want = g->output;
  return ref_run(g, w, x, batch, &want, 1, &y) ? y : NULL;
}

void ref_node_forward(const Graph *g, const Node *n, const Weights *w, const float *const *xs,
                      float *y, int batch) {
  View in[64];
  for (int j = 0; j < n->n_inputs && j < 64; j++) {
    Shape s = g->nodes[n->inputs[j]].out;
    in[j] = (View){(float *)xs[j], s, {0, s.c}, 0, g->nodes[n->inputs[j]].name, NULL};
  }
  Range all = {0, n->out.c};
  View out = {y, n->out, all, 0, n->name, NULL};
  run_stage(g, n, n, w, in, out, all, batch);
}
