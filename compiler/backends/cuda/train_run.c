// Training on the GPU(s) through the runtime (runtime/cuda.c): the step train.c generates,
// compiled by NVRTC, loaded once; the parameters and momenta stay on the devices from
// step to step, and only each step's images, labels and control block (learning rate,
// seed, step) go up, and its per-image losses and hits come back. Checkpoints download
// the parameters and momenta (cuda_trainer_download). Checked against the fake driver
// (tests/cuda/fake/: the same kernels compiled for the CPU), never yet on a GPU.
//
// Data parallelism (one rank of an mpirun job): the plan sums the gradients over the ranks
// (NCCL, once joined: cuda_trainer_join) before its update; each step's control block
// carries the rank's first image in the global batch and the global batch's size.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

struct CudaTrainer {
  const Graph *g;
  CudaTrainPlan t;
  RtCuda *rt;
  int classes;
  float *zero_grads;  // several ranks: a rank with no images of a step sums zeros
};

typedef struct {
  const Weights *w;
} Source;

static const float *tensor_of(void *ctx, const char *name) {
  const Weights *w = ((Source *)ctx)->w;
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, name))
      return w->data[i];
  return NULL;
}

// The rows [first, first + count) of layout tensor i each device computes (every row on
// one device; with a split, the pieces' rows), passed to fn.
typedef bool (*RowsFn)(CudaTrainer *c, int device, int tensor, int64_t first, int64_t count,
                       void *arg);

static bool each_rows(CudaTrainer *c, RowsFn fn, void *arg) {
  const Weights *l = c->t.layout;
  if (c->t.devices == 1) {
    for (int i = 0; i < l->n; i++)
      if (!fn(c, 0, i, 0, l->info[i].elems, arg))
        return false;
    return true;
  }
  for (int k = 0; k < split_n_pieces(c->t.split); k++) {
    SplitPiece sp = split_piece(c->t.split, k);
    const Node *n = &c->g->nodes[sp.node];
    int64_t out = n->op == OP_CONV ? n->conv.out : n->op == OP_FC ? n->fc.out : 0;
    for (int i = 0; out && i < l->n; i++)
      if (l->info[i].node == sp.node) {
        int64_t row = l->info[i].elems / out;
        if (!fn(c, sp.device, i, sp.out.begin * row, range_len(sp.out) * row, arg))
          return false;
      }
  }
  return true;
}

typedef struct {
  Weights *w, *v;
} Pair;

static bool download_rows(CudaTrainer *c, int d, int i, int64_t first, int64_t count, void *arg) {
  Pair *p = arg;
  RtAddr w = {RT_SPACE_WEIGHTS, 0, c->t.param_offset[i] + first, 0}, v = w;
  v.fixed += c->t.momentum_base;
  return (!p->w || rt_cuda_read(c->rt, d, w, 1, p->w->data[i] + first, count)) &&
         (!p->v || rt_cuda_read(c->rt, d, v, 1, p->v->data[i] + first, count));
}

bool cuda_trainer_download(CudaTrainer *c, Weights *w, Weights *v) {
  Pair p = {w, v};
  if (each_rows(c, download_rows, &p))
    return true;
  error("cuda training: downloading the parameters: %s", rt_error());
  return false;
}

CudaTrainer *cuda_trainer_new(const Graph *g, int devices, const char *arch, const Weights *w,
                              const Weights *v) {
  return cuda_trainer_new_rank(g, devices, 1, 0, arch, w, v);
}

CudaTrainer *cuda_trainer_new_rank(const Graph *g, int devices, int ranks, int first_gpu,
                                   const char *arch, const Weights *w, const Weights *v) {
  CudaTrainer *c = xcalloc(1, sizeof *c);
  c->g = g;
  if (!cuda_train_generate_ranks(g, NULL, devices, ranks, &c->t)) {
    free(c);
    return NULL;
  }
  c->classes = (int)g->nodes[c->t.prog->logits].out.c;
  CudaProgram prog = {.plan = c->t.plan};
  for (int d = 0; d < devices; d++)
    prog.source[d] = c->t.source[d];
  bool ok = cuda_compile(&prog, arch);  // says why not itself
  c->t.plan = prog.plan;                 // now with the modules
  Source src = {w};
  if (ok && !(c->rt = rt_cuda_open(&c->t.plan, first_gpu, tensor_of, &src))) {
    error("cuda training: %s", rt_error());
    ok = false;
  }
  // Every device's momenta (the parameters went up as the plan's slices).
  for (int d = 0; ok && d < devices; d++)
    for (int i = 0; ok && i < v->n; i++) {
      RtAddr at = {RT_SPACE_WEIGHTS, 0, c->t.momentum_base + c->t.param_offset[i], 0};
      if (!(ok = rt_cuda_write(c->rt, d, at, 1, v->data[i], v->info[i].elems)))
        error("cuda training: uploading the momenta: %s", rt_error());
    }
  if (!ok) {
    cuda_trainer_free(c);
    return NULL;
  }
  return c;
}

bool cuda_trainer_nccl_id(uint8_t id[RT_NCCL_ID_BYTES]) {
  if (rt_cuda_nccl_id(id))
    return true;
  error("cuda training: %s", rt_error());
  return false;
}

bool cuda_trainer_join(CudaTrainer *c, int rank, int ranks, const uint8_t id[RT_NCCL_ID_BYTES]) {
  if (c->t.ranks != ranks) {
    error("cuda training: internal error: a step built for %d ranks joins %d", c->t.ranks, ranks);
    return false;
  }
  if (rt_cuda_nccl_join(c->rt, rank, ranks, id))
    return true;
  error("cuda training: rank %d joining the NCCL communicator: %s", rank, rt_error());
  return false;
}

// A rank with none of a step's images: its gradients are zeros, summed with the others',
// then the update (the plan from its all-reduce on), so that every rank takes the step.
static bool empty_part(CudaTrainer *c, const CudaTrainControl *ctl) {
  if (c->t.allreduce_step < 0) {
    error("cuda training: internal error: a step of no images in one process");
    return false;
  }
  if (!c->zero_grads)
    c->zero_grads = xcalloc(c->t.params, sizeof *c->zero_grads);
  RtAddr grads = {RT_SPACE_WEIGHTS, 0, c->t.grad_base, 0};
  RtAddr at_ctl = {RT_SPACE_WEIGHTS, 0, c->t.control, 0};
  if (rt_cuda_write(c->rt, 0, at_ctl, 1, ctl, sizeof *ctl / sizeof(float)) &&
      rt_cuda_write(c->rt, 0, grads, 1, c->zero_grads, c->t.params) &&
      rt_cuda_steps_from(c->rt, 1, c->t.allreduce_step))
    return true;
  error("cuda training: %s", rt_error());
  return false;
}

double cuda_trainer_step(CudaTrainer *c, double lr, uint64_t seed, int64_t step, const float *x,
                         const int32_t *labels, int n, int *top1) {
  double sum = cuda_trainer_step_part(c, lr, seed, step, x, labels, n, 0, n, top1);
  return n ? sum / n : sum;
}

double cuda_trainer_step_part(CudaTrainer *c, double lr, uint64_t seed, int64_t step,
                              const float *x, const int32_t *labels, int n, int first, int total,
                              int *top1) {
  CudaTrainControl ctl = {lr, seed, (uint64_t)step, first, total};
  if (n == 0) {
    if (top1)
      *top1 = 0;
    return empty_part(c, &ctl) ? 0 : NAN;
  }
  for (int i = 0; i < n; i++)
    if (labels[i] < 0 || labels[i] >= c->classes) {
      error("label %d of image %d is out of range: network '%s' has %d classes", labels[i], i,
            c->g->name, c->classes);
      return NAN;
    }
  const RtPlan *p = &c->t.plan;
  RtAddr at_ctl = {RT_SPACE_WEIGHTS, 0, c->t.control, 0};
  bool ok = true;
  for (int d = 0; ok && d < p->n_devices; d++) {
    const RtHostCopy *in = &p->dev[d].input;
    ok = rt_cuda_write(c->rt, d, at_ctl, n, &ctl, sizeof ctl / sizeof(float)) &&
         (!in->width || rt_cuda_write(c->rt, d, in->dev.addr, n, x, in->width * n));
  }
  ok = ok && rt_cuda_write(c->rt, 0, c->t.labels, n, labels, n) && rt_cuda_steps(c->rt, n);
  double *loss = xcalloc(n, sizeof *loss);
  int32_t *hits = xcalloc(n, sizeof *hits);
  ok = ok && rt_cuda_read(c->rt, 0, c->t.loss, n, loss, 2 * (int64_t)n) &&
       rt_cuda_read(c->rt, 0, c->t.hits, n, hits, n);
  double sum = 0;
  int hit = 0;
  for (int i = 0; ok && i < n; i++) {
    sum += loss[i];
    hit += hits[i];
  }
  free(loss);
  free(hits);
  if (!ok) {
    error("cuda training: %s", rt_error());
    return NAN;
  }
  if (top1)
    *top1 = hit;
  return sum;
}

void cuda_trainer_free(CudaTrainer *c) {
  if (!c)
    return;
  if (c->rt)
    rt_cuda_close(c->rt);
  cuda_train_free(&c->t);
  free(c->zero_grads);
  free(c);
}
