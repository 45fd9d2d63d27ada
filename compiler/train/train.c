// The trainer: reverse-mode autodiff over the spec's graph and the paper's SGD.
//
// Autodiff here is a plan computed once (trainer_new), not new nodes in the graph: the
// forward runs every node up to the logits, keeping each output; the backward visits
// the same nodes in reverse and calls each op's backward through a kernel table (the
// reference's or a target's), so every target trains through the same walk and differs
// only in its kernels. The plan decides two things per node:
//   - needs_grad: whether dL/d(output) is wanted at all. It is when the node or something
//     before it has parameters; the image's gradient (and so conv1's backward-data, a
//     large share of a step) is never computed.
//   - which node's output are the logits: the input of a final softmax (the loss takes
//     log-sum-exp of the logits, which is stable where log(softmax) is not), or the
//     network's output when it does not end in softmax.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../alexc.h"

// Data parallelism: a bucket is a run of parameter tensors [lo, hi) (in graph order, so
// the backward pass finishes them from hi - 1 down to lo), packed into one buffer whose sum
// over the ranks starts as soon as node `ready` (lo's layer) has its gradients.
typedef struct {
  int lo, hi, ready;
  int64_t elems;
  float *buf;
} Bucket;

struct Trainer {
  const Graph *g;
  const TrainKernels *k;
  int batch;       // capacity: the largest batch this trainer runs
  int logits;      // node whose output are the logits
  int classes;
  bool *needs_grad;
  float **act;     // per node: its forward output, (batch, out)
  float **grad;    // per node: dL/d(output), when needs_grad
  uint8_t **mask;  // per dropout node: the step's keep mask
  Weights *gw;     // gradients of the parameters
  Split *split;    // devices > 1: the model-parallel plan (act and grad: logits only)
  double *prof_forward, *prof_backward, *prof_update;  // trainer_profile, or NULL
  Bucket *buckets;  // trainer_step_part's, planned at its first call
  int n_buckets, next_bucket;  // next_bucket: the first not started this step
  int64_t bucket_bytes;
  bool syncing;  // the backward pass in progress starts the bucket sums
};

void trainer_set_bucket_bytes(Trainer *t, int64_t bytes) { t->bucket_bytes = bytes; }

void trainer_profile(Trainer *t, double *forward_s, double *backward_s, double *update_s) {
  t->prof_forward = forward_s;
  t->prof_backward = backward_s;
  t->prof_update = update_s;
}

static int64_t elems(const Trainer *t, int i) { return shape_elems(t->g->nodes[i].out) * t->batch; }

// The logits: the input of a final softmax, else the output.
static int find_logits(const Graph *g) {
  const Node *out = &g->nodes[g->output];
  return out->op == OP_SOFTMAX ? out->inputs[0] : g->output;
}

static bool has_params(const Node *n) { return n->n_weight > 0 || n->n_bias > 0; }

// needs_grad[i]: node i or one of its ancestors has parameters. Nodes are in topological
// order, so one forward sweep settles it.
static void plan_grads(Trainer *t) {
  for (int i = 0; i <= t->logits; i++) {
    const Node *n = &t->g->nodes[i];
    bool need = has_params(n);
    for (int j = 0; j < n->n_inputs; j++)
      need = need || t->needs_grad[n->inputs[j]];
    t->needs_grad[i] = need;
  }
}

Trainer *trainer_new(const Graph *spec, const TrainKernels *k, int batch, int devices) {
  int logits = find_logits(spec);
  const Node *ln = &spec->nodes[logits];
  if (ln->out.rank != 1 || ln->out.c < 2) {
    error("%s: training needs a network that ends in class scores (a flat tensor of at least "
          "2 features, optionally followed by softmax); '%s' is not", spec->name, ln->name);
    return NULL;
  }
  Trainer *t = xcalloc(1, sizeof *t);
  *t = (Trainer){.g = spec, .k = k, .batch = batch, .logits = logits, .classes = (int)ln->out.c};
  t->needs_grad = xcalloc(spec->n_nodes, sizeof *t->needs_grad);
  t->act = xcalloc(spec->n_nodes, sizeof *t->act);
  t->grad = xcalloc(spec->n_nodes, sizeof *t->grad);
  t->mask = xcalloc(spec->n_nodes, sizeof *t->mask);
  plan_grads(t);
  if (devices > 1 && !(t->split = split_new(spec, devices, batch, logits, t->needs_grad))) {
    trainer_free(t);
    return NULL;
  }
  for (int i = 0; i <= logits; i++) {
    if (!t->split || i == logits) {  // with a split, the devices hold the rest
      t->act[i] = xcalloc(elems(t, i), sizeof(float));
      if (t->needs_grad[i])
        t->grad[i] = xcalloc(elems(t, i), sizeof(float));
    }
    if (spec->nodes[i].op == OP_DROPOUT)
      t->mask[i] = xcalloc(elems(t, i), 1);
  }
  t->gw = weights_zeros(spec);
  return t;
}

void trainer_free(Trainer *t) {
  if (!t)
    return;
  for (int i = 0; i < t->g->n_nodes; i++) {
    free(t->act[i]);
    free(t->grad[i]);
    free(t->mask[i]);
  }
  free(t->act);
  free(t->grad);
  free(t->mask);
  free(t->needs_grad);
  split_free(t->split);
  weights_free(t->gw);
  for (int b = 0; b < t->n_buckets; b++)
    free(t->buckets[b].buf);
  free(t->buckets);
  free(t);
}

int trainer_classes(const Trainer *t) { return t->classes; }

// A parameter tensor of layer `layer` in w, writable (w is the trainer's own gradients).
static float *param(const Weights *w, const char *layer, bool is_bias) {
  return (float *)weights_get(w, layer, is_bias);
}

static OpCall call_for(const Trainer *t, const Weights *w, int i, int n, const float **xs) {
  const Node *node = &t->g->nodes[i];
  for (int j = 0; j < node->n_inputs; j++)
    xs[j] = t->act[node->inputs[j]];
  return (OpCall){t->g, node, n, xs, t->act[i], weights_get(w, node->name, false),
                  weights_get(w, node->name, true), NULL};
}

// The forward pass up to the logits. With `training`, dropout applies its mask for
// (seed, step); without, dropout is the identity (inference).
static void forward(Trainer *t, const Weights *w, const float *x, int n, bool training,
                    uint64_t seed, int64_t step, int64_t first) {
  if (t->split) {
    for (int i = 1; training && i <= t->logits; i++) {
      const Node *node = &t->g->nodes[i];
      if (node->op == OP_DROPOUT)
        dropout_mask(seed, (uint64_t)step, node->name, shape_elems(node->out) * first,
                     shape_elems(node->out) * n, node->dropout.p, t->mask[i]);
    }
    split_forward(t->split, t->k, w, x, n, training ? t->mask : NULL, t->act[t->logits]);
    return;
  }
  memcpy(t->act[0], x, shape_elems(t->g->nodes[0].out) * n * sizeof(float));
  const float *xs[64];
  for (int i = 1; i <= t->logits; i++) {
    const Node *node = &t->g->nodes[i];
    OpCall c = call_for(t, w, i, n, xs);
    if (node->op == OP_DROPOUT && training) {
      dropout_mask(seed, (uint64_t)step, node->name, shape_elems(node->out) * first,
                   shape_elems(node->out) * n, node->dropout.p, t->mask[i]);
      c.mask = t->mask[i];
    }
    double t0 = t->prof_forward ? now_seconds() : 0;
    t->k->forward(&c, t->act[i]);
    if (t->prof_forward)
      t->prof_forward[i] += now_seconds() - t0;
  }
}

static void start_ready_buckets(Trainer *t, int node);

// The backward pass from dL/d(logits), already in grad[logits]. While syncing, each
// bucket's sum starts once its last layer is done, and MPI is given a turn between
// layers so that the sums already started move on while the next layer computes.
static void backward(Trainer *t, const Weights *w, int n) {
  if (t->split) {  // the devices' pieces run in their own order: the sums start after
    split_backward(t->split, t->k, w, t->grad[t->logits], n, t->gw);
    return;
  }
  for (int i = 0; i < t->logits; i++)
    if (t->grad[i])
      memset(t->grad[i], 0, elems(t, i) * sizeof(float));
  const float *xs[64];
  float *dx[64];
  for (int i = t->logits; i >= 1; i--) {
    const Node *node = &t->g->nodes[i];
    if (!t->needs_grad[i])
      continue;
    OpCall c = call_for(t, w, i, n, xs);
    c.mask = t->mask[i];
    for (int j = 0; j < node->n_inputs; j++)
      dx[j] = t->grad[node->inputs[j]];  // NULL where no gradient is wanted
    double t0 = t->prof_backward ? now_seconds() : 0;
    t->k->backward(&c, t->grad[i], dx, param(t->gw, node->name, false),
                   param(t->gw, node->name, true));
    if (t->prof_backward)
      t->prof_backward[i] += now_seconds() - t0;
    if (t->syncing) {
      start_ready_buckets(t, i);
      dist_progress();
    }
  }
}

static bool labels_ok(const Trainer *t, const int32_t *labels, int n) {
  for (int i = 0; i < n; i++)
    if (labels[i] < 0 || labels[i] >= t->classes) {
      error("label %d of image %d is out of range: network '%s' has %d classes", labels[i], i,
            t->g->name, t->classes);
      return false;
    }
  return true;
}

double trainer_grad(Trainer *t, const Weights *w, uint64_t seed, int64_t step, const float *x,
                    const int32_t *labels, int n, Weights *grad, int *top1) {
  if (n > t->batch || !labels_ok(t, labels, n))
    return NAN;
  forward(t, w, x, n, true, seed, step, 0);
  double loss = softmax_xent(t->act[t->logits], labels, n, t->classes, t->grad[t->logits], top1,
                             NULL);
  backward(t, w, n);
  for (int i = 0; grad && i < grad->n; i++)  // the same graph: the same tensors in order
    memcpy(grad->data[i], t->gw->data[i], grad->info[i].elems * sizeof(float));
  return loss;
}

// The paper's update (section 5), for every parameter tensor:
//   v <- 0.9 v - 0.0005 lr w - lr dL/dw;  w <- w + v.
// Computed in double per element and stored as float, the same on every target.
static void sgd_update(Weights *w, Weights *v, const Weights *g, double lr) {
  for (int i = 0; i < w->n; i++) {
    float *wi = w->data[i], *vi = v->data[i];
    const float *gi = g->data[i];
    for (int64_t j = 0; j < w->info[i].elems; j++) {
      vi[j] = (float)(0.9 * vi[j] - 0.0005 * lr * wi[j] - lr * gi[j]);
      wi[j] += vi[j];
    }
  }
}

double trainer_step(Trainer *t, TrainState *s, double lr, const float *x, const int32_t *labels,
                    int n, int *top1) {
  double loss = trainer_grad(t, s->w, s->seed, s->step, x, labels, n, NULL, top1);
  if (loss != loss)
    return loss;
  double t0 = t->prof_update ? now_seconds() : 0;
  sgd_update(s->w, s->v, t->gw, lr);
  if (t->prof_update)
    *t->prof_update += now_seconds() - t0;
  s->step++;
  return loss;
}

// ---- data parallelism

// Buckets of about bucket_bytes (at least one tensor each), from the last tensor back, so
// that the first bucket is the first the backward pass finishes.
static void plan_buckets(Trainer *t) {
  const Weights *g = t->gw;
  int64_t cap = t->bucket_bytes > 0 ? t->bucket_bytes : (int64_t)1 << 20;
  t->buckets = xcalloc(g->n ? g->n : 1, sizeof *t->buckets);
  for (int hi = g->n; hi > 0;) {
    Bucket *b = &t->buckets[t->n_buckets++];
    b->hi = b->lo = hi;
    while (b->lo > 0 && (b->lo == hi || (b->elems + g->info[b->lo - 1].elems) * 4 <= cap))
      b->elems += g->info[--b->lo].elems;
    b->ready = g->info[b->lo].node;
    b->buf = xcalloc(b->elems, sizeof(float));
    hi = b->lo;
  }
}

static void start_bucket(Trainer *t, Bucket *b) {
  float *at = b->buf;
  for (int j = b->lo; j < b->hi; j++) {
    memcpy(at, t->gw->data[j], t->gw->info[j].elems * sizeof(float));
    at += t->gw->info[j].elems;
  }
  dist_iallreduce_f32(b->buf, b->elems);
}

// Starts the sums of the buckets whose tensors are all final once node `node`'s backward
// is done (nodes run in descending order; node -1: all of them).
static void start_ready_buckets(Trainer *t, int node) {
  while (t->next_bucket < t->n_buckets && t->buckets[t->next_bucket].ready >= node)
    start_bucket(t, &t->buckets[t->next_bucket++]);
}

// Waits for every bucket's sum and copies the summed gradients back.
static void finish_buckets(Trainer *t) {
  start_ready_buckets(t, -1);
  dist_wait_all();
  for (int b = 0; b < t->n_buckets; b++) {
    const float *at = t->buckets[b].buf;
    for (int j = t->buckets[b].lo; j < t->buckets[b].hi; j++) {
      memcpy(t->gw->data[j], at, t->gw->info[j].elems * sizeof(float));
      at += t->gw->info[j].elems;
    }
  }
}

double trainer_step_part(Trainer *t, TrainState *s, double lr, const float *x,
                         const int32_t *labels, int n, int first, int total, int *top1) {
  if (n > t->batch || n > total || !labels_ok(t, labels, n))
    return NAN;
  if (!t->buckets)
    plan_buckets(t);
  t->next_bucket = 0;
  double loss_sum = 0;
  int hits = 0;
  if (n > 0) {
    forward(t, s->w, x, n, true, s->seed, s->step, first);
    float *dl = t->grad[t->logits];
    loss_sum = n * softmax_xent(t->act[t->logits], labels, n, t->classes, dl, &hits, NULL);
    // softmax_xent's gradient is of this part's mean; weighted by n / total the ranks'
    // gradients sum to that of the global batch's mean (and a short part weighs less).
    for (int64_t j = 0; j < (int64_t)n * t->classes; j++)
      dl[j] = (float)((double)dl[j] * n / total);
    t->syncing = true;
    backward(t, s->w, n);
    t->syncing = false;
  } else {  // nothing of this batch here: a zero gradient, still summed with the others'
    for (int i = 0; i < t->gw->n; i++)
      memset(t->gw->data[i], 0, t->gw->info[i].elems * sizeof(float));
  }
  finish_buckets(t);
  double t0 = t->prof_update ? now_seconds() : 0;
  sgd_update(s->w, s->v, t->gw, lr);
  if (t->prof_update)
    *t->prof_update += now_seconds() - t0;
  s->step++;
  if (top1)
    *top1 = hits;
  return loss_sum;
}

void trainer_logits(Trainer *t, const Weights *w, const float *x, int n, float *logits) {
  for (int at = 0; at < n; at += t->batch) {
    int m = n - at < t->batch ? n - at : t->batch;
    forward(t, w, x + (int64_t)at * shape_elems(t->g->nodes[0].out), m, false, 0, 0, 0);
    memcpy(logits + (int64_t)at * t->classes, t->act[t->logits],
           (size_t)m * t->classes * sizeof(float));
  }
}

void trainer_dump(const Trainer *t, FILE *out) {
  const Graph *g = t->g;
  char buf[64];
  fprintf(out, "train %s: loss = softmax_xent(%s, labels), %d classes\nforward:\n", g->name,
          g->nodes[t->logits].name, t->classes);
  for (int i = 1; i <= t->logits; i++) {
    const Node *n = &g->nodes[i];
    fprintf(out, "  %%%d %s = %s(", i, n->name, op_name(n->op));
    for (int j = 0; j < n->n_inputs; j++)
      fprintf(out, "%s%%%d", j ? ", " : "", n->inputs[j]);
    fprintf(out, ") : %s%s\n", shape_str(n->out, buf, sizeof buf),
            n->op == OP_DROPOUT ? "  [mask: philox(seed, step, layer)]" : "");
  }
  fprintf(out, "backward:\n");
  for (int i = t->logits; i >= 1; i--) {
    const Node *n = &g->nodes[i];
    if (!t->needs_grad[i])
      continue;
    fprintf(out, "  d%%%d %s ->", i, n->name);
    const char *sep = " ";
    for (int j = 0; j < n->n_inputs; j++)
      if (t->needs_grad[n->inputs[j]]) {
        fprintf(out, "%sd%%%d +=", sep, n->inputs[j]);
        sep = ", ";
      }
    if (n->n_weight)
      fprintf(out, "%s%s.weight", sep, n->name), sep = ", ";
    if (n->n_bias)
      fprintf(out, "%s%s.bias", sep, n->name);
    fprintf(out, "\n");
  }
  fprintf(out, "update: v = 0.9 v - 0.0005 lr w - lr dw; w += v (%d tensors)\n", t->gw->n);
  if (t->split)
    split_dump(t->split, out);
}
