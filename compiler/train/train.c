// The trainer: runs the training program autodiff made of a spec's graph
// (train/autodiff.c), with the paper's SGD.
//
// Every target trains through the same program and differs only in its kernel table
// (TrainKernels): the trainer keeps the per-image values (activations, their gradients,
// dropout masks) in its own buffers sized for its batch, the parameter gradients in its
// own Weights, and reads the parameters and momenta from the caller's TrainState. With
// --devices N the program also holds the plan's sends and gradient reductions, and its
// forward and backward instructions run each device's share of their node
// (train/parallel.c, which keeps the devices' copies).
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
  TrainProgram *p;
  int batch;       // capacity: the largest batch this trainer runs
  int classes;
  float *arena;    // the per-image values, as the program's memory plan places them
  void **buf;      // per value: where it is in the arena (or, with a split, its own
                   // allocation); NULL for the values kept elsewhere
  uint8_t **masks; // per node: its dropout mask's buffer (for the split), or NULL
  Weights *gw;     // gradients of the parameters
  Split *split;    // devices > 1: the model-parallel plan
  double *prof_forward, *prof_backward, *prof_update;  // trainer_profile, or NULL
  Bucket *buckets;  // trainer_step_part's, planned at its first call
  int n_buckets, next_bucket;  // next_bucket: the first not started this step
  int64_t bucket_bytes;
  bool syncing;  // the backward pass in progress starts the bucket sums
};

void trainer_set_bucket_bytes(Trainer *t, int64_t bytes) { t->bucket_bytes = bytes; }

void trainer_set_device_rank(Trainer *t, int device) {
  if (t->split)
    split_set_self(t->split, device);
}

void trainer_assemble_state(const Trainer *t, TrainState *s) {
  if (!t->split)
    return;
  split_assemble(t->split, s->w);
  split_assemble(t->split, s->v);
}

// One step's (or one inference's) settings, as the instructions see them.
typedef struct {
  const Weights *w;  // parameters
  Weights *v;        // momenta (updates only)
  uint64_t seed;
  int64_t step;
  bool training;     // dropout applies its mask; else it is the identity
  int n;             // images in the batch (this process's part of it)
  int first, total;  // data parallelism: the part's first image in the global batch of
                     // `total` (0 total: the batch is whole)
  const float *x;    // the images (a split reads them from here)
  const int32_t *labels;
  int *top1;
  double lr, loss;
} Step;

void trainer_profile(Trainer *t, double *forward_s, double *backward_s, double *update_s) {
  t->prof_forward = forward_s;
  t->prof_backward = backward_s;
  t->prof_update = update_s;
}

// Per-image values the trainer stores; with a split only the logits' and the masks.
static bool stored(const Trainer *t, const TValue *v) {
  return v->kind != TV_LABELS && train_value_per_image(v->kind) &&
         (!t->split || v->kind == TV_MASK || v->node == t->p->logits);
}

// One device: the arena the memory plan laid out. A split: only the logits, their
// gradient and the masks, each its own buffer (the devices hold the rest).
static void alloc_values(Trainer *t) {
  const TrainProgram *p = t->p;
  t->buf = xcalloc(p->n_values, sizeof *t->buf);
  t->masks = xcalloc(t->g->n_nodes, sizeof *t->masks);
  if (!t->split)
    t->arena = xcalloc(p->arena * t->batch, sizeof(float));
  for (int v = 0; v < p->n_values; v++) {
    const TValue *tv = &p->values[v];
    if (!stored(t, tv))
      continue;
    if (t->split)
      t->buf[v] = xcalloc(train_value_floats(tv) * t->batch, sizeof(float));
    else if (p->offset[v] >= 0)
      t->buf[v] = t->arena + p->offset[v] * t->batch;
    if (tv->kind == TV_MASK)
      t->masks[tv->node] = t->buf[v];
  }
}

Trainer *trainer_new_fused(const Graph *spec, const TrainKernels *k, int batch, int devices,
                           const char *const *patterns) {
  TrainProgram *p = autodiff(spec);
  if (!p)
    return NULL;
  Trainer *t = xcalloc(1, sizeof *t);
  *t = (Trainer){.g = spec, .k = k, .p = p, .batch = batch,
                 .classes = (int)spec->nodes[p->logits].out.c};
  if (devices > 1 &&
      !(t->split = split_new(spec, devices, batch, p->logits, p->needs_grad))) {
    trainer_free(t);
    return NULL;
  }
  if (t->split)  // its pieces run the plain ops, so nothing is fused
    train_add_transfers(p, split_plan(t->split));
  else
    train_fuse_backward(p, patterns);
  train_plan_memory(p);
  if (!train_program_verify(p))
    abort();  // autodiff, fusion or the plan broke an invariant: a bug, not a user error
  alloc_values(t);
  t->gw = weights_zeros(spec);
  return t;
}

Trainer *trainer_new(const Graph *spec, const TrainKernels *k, int batch, int devices) {
  return trainer_new_fused(spec, k, batch, devices, NULL);
}

void trainer_free(Trainer *t) {
  if (!t)
    return;
  for (int v = 0; t->split && t->buf && v < t->p->n_values; v++)
    free(t->buf[v]);
  free(t->buf);
  free(t->arena);
  free(t->masks);
  train_program_free(t->p);
  split_free(t->split);
  weights_free(t->gw);
  for (int b = 0; b < t->n_buckets; b++)
    free(t->buckets[b].buf);
  free(t->buckets);
  free(t);
}

int trainer_classes(const Trainer *t) { return t->classes; }

// Where value v is this step: the trainer's buffers, its parameter gradients, or the
// caller's parameters and momenta. NULL for -1.
static float *value_at(const Trainer *t, const Step *s, int v) {
  if (v < 0)
    return NULL;
  const TValue *tv = &t->p->values[v];
  const char *layer = tv->node >= 0 ? t->g->nodes[tv->node].name : "";
  switch (tv->kind) {
  case TV_PARAM:
    return (float *)weights_get(s->w, layer, tv->bias);
  case TV_PARAM_GRAD:
    return (float *)weights_get(t->gw, layer, tv->bias);
  case TV_MOMENTUM:
    return (float *)weights_get(s->v, layer, tv->bias);
  default:
    return t->buf[v];
  }
}

static OpCall call_for(const Trainer *t, const Step *s, const TInstr *in, const float **xs) {
  for (int j = 0; j < in->n_x; j++)
    xs[j] = value_at(t, s, in->x[j]);
  const Node *nodes = t->g->nodes;
  return (OpCall){.g = t->g, .n = &nodes[in->node], .batch = s->n, .x = xs,
                  .y = value_at(t, s, in->y), .w = value_at(t, s, in->w),
                  .b = value_at(t, s, in->b),
                  .mask = s->training && in->mask >= 0 ? t->buf[in->mask] : NULL,
                  .relu_y = value_at(t, s, in->relu_y), .saved = value_at(t, s, in->saved),
                  .lrn = in->lrn >= 0 ? &nodes[in->lrn] : NULL,
                  .pool = in->pool >= 0 ? &nodes[in->pool] : NULL,
                  .lrn_saved = value_at(t, s, in->lrn_saved),
                  .pool_y = value_at(t, s, in->pool_y)};
}

static void run_forward(Trainer *t, const Step *s, const TInstr *in) {
  if (t->split) {
    float *logits = in->node == t->p->logits ? value_at(t, s, in->y) : NULL;
    split_node_forward(t->split, t->k, s->w, s->x, s->n, s->training ? t->masks : NULL,
                       in->node, logits);
    return;
  }
  const float *xs[64];
  OpCall c = call_for(t, s, in, xs);
  t->k->forward(&c, value_at(t, s, in->y));
}

static void run_backward(Trainer *t, const Step *s, const TInstr *in) {
  if (t->split) {
    split_node_backward(t->split, t->k, s->w, in->node,
                        value_at(t, s, t->p->grad[t->p->logits]), s->n, t->gw);
    return;
  }
  const float *xs[64];
  float *dx[64];
  OpCall c = call_for(t, s, in, xs);
  for (int j = 0; j < in->n_x; j++)
    dx[j] = value_at(t, s, in->dx[j]);  // NULL where no gradient is wanted
  t->k->backward(&c, value_at(t, s, in->dy), dx, value_at(t, s, in->dw), value_at(t, s, in->db));
}

void sgd_update_span(float *w, float *v, const float *g, int64_t n, double lr) {
  for (int64_t j = 0; j < n; j++) {
    v[j] = (float)(0.9 * v[j] - 0.0005 * lr * w[j] - lr * g[j]);
    w[j] += v[j];
  }
}

static void run_update(Trainer *t, const Step *s, const TInstr *in) {
  t->k->update(value_at(t, s, in->w), value_at(t, s, in->v), value_at(t, s, in->dw),
               t->p->values[in->w].elems, s->lr);
}

// Gradients start at zero: each is cleared just before the first instruction touching
// it (its memory held another value until then).
static void zero_gradients_born_at(Trainer *t, int i, int n) {
  for (int v = 0; v < t->p->n_values; v++)
    if (t->p->values[v].kind == TV_GRAD && t->p->first[v] == i && t->buf[v])
      memset(t->buf[v], 0, t->p->values[v].elems * n * sizeof(float));
}

static void start_ready_buckets(Trainer *t, int node);

static void run_instr(Trainer *t, Step *s, const TInstr *in) {
  const Node *node = &t->g->nodes[in->node];
  switch (in->kind) {
  case TI_MASK:
    if (s->training)
      dropout_mask(s->seed, (uint64_t)s->step, node->name, shape_elems(node->out) * s->first,
                   shape_elems(node->out) * s->n, node->dropout.p, t->buf[in->mask]);
    break;
  case TI_FORWARD: {
    double t0 = t->prof_forward ? now_seconds() : 0;
    run_forward(t, s, in);
    if (t->prof_forward)
      t->prof_forward[in->node] += now_seconds() - t0;
    break;
  }
  case TI_SEND:
    split_send(t->split, in->transfer, s->n);
    break;
  case TI_REDUCE:
    split_reduce(t->split, in->transfer, s->n);
    break;
  case TI_LOSS: {
    float *dl = t->buf[in->dy];
    s->loss = softmax_xent(t->buf[in->x[0]], s->labels, s->n, t->classes, dl, s->top1, NULL);
    // softmax_xent's gradient is of this part's mean; weighted by n / total the ranks'
    // gradients sum to that of the global batch's mean (and a short part weighs less).
    for (int64_t j = 0; s->total && j < (int64_t)s->n * t->classes; j++)
      dl[j] = (float)((double)dl[j] * s->n / s->total);
    break;
  }
  case TI_BACKWARD: {
    double t0 = t->prof_backward ? now_seconds() : 0;
    run_backward(t, s, in);
    if (t->prof_backward)
      t->prof_backward[in->node] += now_seconds() - t0;
    if (t->syncing) {  // buckets whose layers are done start their sums meanwhile
      start_ready_buckets(t, in->node);
      dist_progress();
    }
    break;
  }
  case TI_UPDATE:
    run_update(t, s, in);
    break;
  }
}

// Runs the instructions of the phases [first, last] in program order.
static void run(Trainer *t, Step *s, const float *x, TPhase first, TPhase last) {
  const TrainProgram *p = t->p;
  s->x = x;
  if (first <= PHASE_FORWARD && !t->split)
    memcpy(t->buf[p->input], x, p->values[p->input].elems * s->n * sizeof(float));
  for (int i = 0; i < p->n_instrs; i++) {
    const TInstr *in = &p->instrs[i];
    TPhase phase = train_instr_phase(in->kind);
    if (phase < first || phase > last)
      continue;
    zero_gradients_born_at(t, i, s->n);
    double t0 = in->kind == TI_UPDATE && t->prof_update ? now_seconds() : 0;
    run_instr(t, s, in);
    if (in->kind == TI_UPDATE && t->prof_update)
      *t->prof_update += now_seconds() - t0;
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
  Step s = {.w = w, .seed = seed, .step = step, .training = true, .n = n, .labels = labels,
            .top1 = top1};
  run(t, &s, x, PHASE_MASK, PHASE_BACKWARD);
  for (int i = 0; grad && i < grad->n; i++)  // the same graph: the same tensors in order
    memcpy(grad->data[i], t->gw->data[i], grad->info[i].elems * sizeof(float));
  return s.loss;
}

double trainer_step(Trainer *t, TrainState *st, double lr, const float *x, const int32_t *labels,
                    int n, int *top1) {
  double loss = trainer_grad(t, st->w, st->seed, st->step, x, labels, n, NULL, top1);
  if (loss != loss)
    return loss;
  Step s = {.w = st->w, .v = st->v, .n = n, .lr = lr};
  run(t, &s, x, PHASE_UPDATE, PHASE_UPDATE);
  st->step++;
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
// is done (backward instructions run in descending node order; node -1: all of them).
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

double trainer_step_part(Trainer *t, TrainState *st, double lr, const float *x,
                         const int32_t *labels, int n, int first, int total, int *top1) {
  if (n > t->batch || n > total || !labels_ok(t, labels, n))
    return NAN;
  if (!t->buckets)
    plan_buckets(t);
  t->next_bucket = 0;
  double loss_sum = 0;
  int hits = 0;
  if (n > 0) {
    Step s = {.w = st->w, .seed = st->seed, .step = st->step, .training = true, .n = n,
              .first = first, .total = total, .labels = labels, .top1 = &hits};
    t->syncing = true;
    run(t, &s, x, PHASE_MASK, PHASE_BACKWARD);
    t->syncing = false;
    loss_sum = n * s.loss;
  } else {  // nothing of this batch here: a zero gradient, still summed with the others'
    for (int i = 0; i < t->gw->n; i++)
      memset(t->gw->data[i], 0, t->gw->info[i].elems * sizeof(float));
  }
  finish_buckets(t);
  Step u = {.w = st->w, .v = st->v, .lr = lr};
  run(t, &u, x, PHASE_UPDATE, PHASE_UPDATE);
  st->step++;
  if (top1)
    *top1 = hits;
  return loss_sum;
}

void trainer_logits(Trainer *t, const Weights *w, const float *x, int n, float *logits) {
  const float *logits_buf = t->buf[t->p->act[t->p->logits]];
  for (int at = 0; at < n; at += t->batch) {
    Step s = {.w = w, .n = n - at < t->batch ? n - at : t->batch};
    run(t, &s, x + (int64_t)at * shape_elems(t->g->nodes[0].out), PHASE_FORWARD, PHASE_FORWARD);
    memcpy(logits + (int64_t)at * t->classes, logits_buf, (size_t)s.n * t->classes * sizeof(float));
  }
}

void trainer_dump(const Trainer *t, FILE *out) {
  train_program_dump(t->p, out);
  if (t->split)
    split_dump(t->split, out);
}
