// CUDA training checked without a GPU: the training step compiler/backends/cuda/train.c
// generates for a spec (one CUDA translation unit and a plan) is compiled by g++ for the
// CPU (cuda_emu.h), and its plan run through the runtime's interpreter (rt_plan_steps)
// with emu_gemm.h standing in for cuBLAS; arena, scratch and every gradient start as NaN,
// and every kernel argument, copy and GEMM operand is bounds-checked. Each SGD step is
// compared with the reference table's (ref_train_kernels: double sums) on the same
// weights, momenta, data and step: the dropout masks bit for bit, the loss, the top-1
// hits, every parameter gradient, and the updated momenta and weights.
//
// The plan runs as the artifact file carries it (saved and loaded back). Two steps with
// different learning rates and nonzero starting momenta (so the 0.9 and
// the weight decay both show); the second starts from the first's CUDA result, given to
// the reference as well, so each step is compared on identical inputs.
//
// With --mutants, known breakages of the generated source (the ReLU mask dropped,
// col2im off by one, the momentum constant wrong, ...) are applied one at a time and
// each must make the comparison fail: the check is shown to be able to fail.
//
// With --nvrtc, the generated source is compiled by NVRTC for sm_90 instead (exit 77, a
// skip, in a build without NVRTC): what a GPU would load, checked without one.
//
// With --devices N, the split plan (train/parallel.c's pieces on N devices) is run from the
// same state as one device's at each step and compared with it; --split-mutants leaves a
// send or a reduction out of it, which must fail.
//
// usage: test_train_emulate CXX EMU_HEADER WORKDIR SPEC [--batch N] [--devices N]
//                           [--mutants] [--split-mutants] [--nvrtc]
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alexc.h"
#include "backends/cuda/train.h"
#include "tools/cli.h"
#include "emu_device.h"

static const char *cxx, *emu_header, *workdir;

// Tolerances, max|got - want| / max|want| per tensor (losses: |got - want| / max(1, |want|)).
// Measured when this was written (two steps of every spec; compiler/backends/cuda/README.md):
// forward outputs 2.9e-6, losses 2.2e-6, gradients on the device's forward 2.0e-6 (AlexNet;
// small specs 1.4e-6 against the reference's own step); each limit is 3.5 to 5 times that.
// The device's float sums (the emulated GEMM adds its k terms in order) against the
// reference's double ones.
#define TOL_FORWARD 1e-5
#define TOL_LOSS 1e-5
#define TOL_GRAD 1e-5
#define TOL_STATE 1e-5  // momenta and weights after the update

// ---------------------------------------------------------------- comparing

static Weights *weights_dup(const Graph *g, const Weights *w) {
  Weights *c = weights_zeros(g);
  for (int i = 0; i < w->n; i++)
    memcpy(c->data[i], w->data[i], w->info[i].elems * sizeof(float));
  return c;
}

// The worst max|got - want| / max|want| over the tensors of a set; its tensor's name.
static double worst(const Weights *got, const Weights *want, const char **which) {
  double rel = 0;
  for (int i = 0; i < want->n; i++) {
    Compare c = compare(got->data[i], want->data[i], want->info[i].elems);
    double r = c.finite ? c.rel : INFINITY;
    if (!(r <= rel)) {
      rel = r;
      *which = want->info[i].name;
    }
  }
  return rel;
}

typedef struct {
  double loss, grad, momentum, weight;  // against the reference's own step
  double same_loss, same_grad;          // against the reference backward on the device's forward
  double forward;      // the forward's outputs against the reference's training forward
  int64_t decisions;  // ReLU signs and max-pool winners that differ between the two forwards
  bool masks_ok, hits_ok, update_exact, ran;
} Result;

// Runs steps [from, to) of the plan.
static bool run_steps(const CudaTrainPlan *t, const RtPlanOps *ops, int from, int to, int batch) {
  RtPlan part = t->plan;
  part.steps += from;
  part.n_steps = to - from;
  return rt_plan_steps(&part, ops, batch) && !((EmuMachine *)ops->ctx)->failed;
}

// The places where the gradient is not continuous: a ReLU's output at 0 (its backward
// passes dy only where it is > 0) and a max-pool window's winner (its backward routes dy
// to one element). Runs the reference's own training forward (ref_train_kernels, the
// trainer's masks) on the host and counts the ReLU outputs whose sign test and the
// windows whose first maximum differ from the device's forward (hv, its host copies).
// Where any differs, the two steps' gradients differ by whole dy terms, as those of any
// two float forwards may.
// Also returns in *forward the worst max|device - reference| / max|reference| over the
// forward's outputs (and *which, its layer).
static int64_t decisions_differ(const Graph *g, const TrainProgram *p, const Weights *w,
                                const float *x, int batch, const float *const *hv,
                                uint64_t seed, int64_t stepno, double *forward,
                                const char **which) {
  *forward = 0;
  float **rv = xcalloc(p->n_values, sizeof *rv);
  for (int v = 0; v < p->n_values; v++)
    if (train_value_in_arena(p->values[v].kind))
      rv[v] = xcalloc(train_value_floats(&p->values[v]) * batch, sizeof(float));
  memcpy(rv[p->input], x, p->values[p->input].elems * batch * sizeof(float));
  int64_t total = 0;
  for (int i = 0; i < p->n_instrs; i++) {
    const TInstr *in = &p->instrs[i];
    const Node *n = &g->nodes[in->node];
    if (in->kind == TI_MASK)
      dropout_mask(seed, (uint64_t)stepno, n->name, 0, shape_elems(n->out) * batch,
                   n->dropout.p, (uint8_t *)rv[in->mask]);
    if (in->kind != TI_FORWARD)
      continue;
    const float *xs[64];
    for (int j = 0; j < in->n_x; j++)
      xs[j] = rv[in->x[j]];
    OpCall c = {.g = g, .n = n, .batch = batch, .x = xs,
                .w = in->w >= 0 ? weights_get(w, n->name, false) : NULL,
                .b = in->b >= 0 ? weights_get(w, n->name, true) : NULL,
                .mask = in->mask >= 0 ? (const uint8_t *)rv[in->mask] : NULL};
    ref_train_kernels.forward(&c, rv[in->y]);
    Compare fc = compare(hv[in->y], rv[in->y], shape_elems(n->out) * batch);
    double rel = fc.finite ? fc.rel : INFINITY;
    if (!(rel <= *forward)) {
      *forward = rel;
      *which = n->name;
    }
    int64_t differ = 0, count = 0;
    if (n->op == OP_RELU) {
      const float *a = hv[in->y], *b = rv[in->y];
      count = shape_elems(n->out) * batch;
      for (int64_t e = 0; e < count; e++)
        differ += (a[e] > 0) != (b[e] > 0);
    }
    Shape s = g->nodes[n->inputs[0]].out;
    const PoolAttrs *a = &n->pool;
    for (int64_t pl = 0; n->op == OP_MAXPOOL && pl < s.c * batch; pl++)
      for (int64_t oy = 0; oy < n->out.h; oy++)
        for (int64_t ox = 0; ox < n->out.w; ox++) {
          int64_t arg[2] = {-1, -1};
          for (int side = 0; side < 2; side++) {
            const float *src = (side ? rv : (float *const *)hv)[in->x[0]] + pl * s.h * s.w;
            float m = -INFINITY;
            for (int ky = 0; ky < a->kernel; ky++)
              for (int kx = 0; kx < a->kernel; kx++) {
                int64_t iy = oy * a->stride - a->pad.top + ky;
                int64_t ix = ox * a->stride - a->pad.left + kx;
                if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w && src[iy * s.w + ix] > m) {
                  m = src[iy * s.w + ix];
                  arg[side] = iy * s.w + ix;
                }
              }
          }
          differ += arg[0] != arg[1];
          count++;
        }
    if (differ)
      printf("      %s: %lld of %lld %s differ from the reference's forward\n", n->name,
             (long long)differ, (long long)count,
             n->op == OP_RELU ? "outputs' signs" : "windows' winners");
    total += differ;
  }
  for (int v = 0; v < p->n_values; v++)
    free(rv[v]);
  free(rv);
  return total;
}

// A device's state before a step: NaN wherever nothing is written on purpose, then the
// parameters and momenta (w, v) where the plan keeps them.
static void load_state(EmuMachine *m, int d, const CudaTrainPlan *t, const Weights *w,
                       const Weights *v) {
  emu_fill_nan(m->arena[d], m->arena_elems[d]);
  emu_fill_nan(m->scratch[d], m->scratch_elems[d]);
  emu_fill_nan(m->weights[d], m->weight_elems[d]);
  for (int i = 0; i < w->n; i++) {
    memcpy(m->weights[d] + t->param_offset[i], w->data[i], w->info[i].elems * sizeof(float));
    memcpy(m->weights[d] + t->momentum_base + t->param_offset[i], v->data[i],
           v->info[i].elems * sizeof(float));
  }
}

// One step on the emulated device, from (w, v), compared two ways:
//  - with the reference's own step (trainer_grad with ref_train_kernels, then its update):
//    the loss, the top-1 hits, every gradient, the updated momenta and weights;
//  - with the reference backward run on the device's forward (its activations, masks and
//    logits, copied out as each forward instruction finishes): the same ReLU masks and
//    max-pool winners on both sides, so what differs is the backward's arithmetic alone.
//    The loss is softmax_xent() of the device's logits, and the update is
//    sgd_update_span() of the device's gradients, which must give the device's bits.
// On return w and v hold the device's step.
static Result step(const Graph *g, const CudaTrainPlan *t, EmuMachine *e, Weights *w, Weights *v,
                   const float *x, const int32_t *labels, int batch, int64_t stepno, double lr,
                   bool verbose, Weights *grad_out, double *loss_out) {
  Result res = {0};
  const TrainProgram *p = t->prog;
  const uint64_t seed = 5;
  int classes = (int)g->nodes[p->logits].out.c;
  load_state(e, 0, t, w, v);
  float *arena = e->arena[0], *weights = e->weights[0];
  CudaTrainControl ctl = {lr, seed, (uint64_t)stepno, 0, batch};  // one process: all images
  memcpy(weights + t->control, &ctl, sizeof ctl);
  memcpy(arena + p->offset[p->input] * batch, x,
         p->values[p->input].elems * batch * sizeof(float));
  memcpy(arena + t->labels.per_image * batch, labels, batch * sizeof(int32_t));
  RtPlanOps ops = emu_plan_ops(e);

  // The masks, the forward and the loss, one instruction at a time, keeping a host copy
  // of every per-image value as its instruction leaves it (the backward may reuse its
  // memory later). Gradients get host buffers of their own, zeroed.
  float **hv = xcalloc(p->n_values, sizeof *hv);
  for (int v2 = 0; v2 < p->n_values; v2++)
    if (train_value_in_arena(p->values[v2].kind))
      hv[v2] = xcalloc(train_value_floats(&p->values[v2]) * batch, sizeof(float));
  memcpy(hv[p->input], x, p->values[p->input].elems * batch * sizeof(float));
  int first_backward = p->n_instrs;
  bool ran = true;
  for (int i = 0; i < p->n_instrs && ran; i++) {
    TInstr *in = &p->instrs[i];
    if (train_instr_phase(in->kind) >= PHASE_BACKWARD) {
      first_backward = i;
      break;
    }
    ran = run_steps(t, &ops, t->instr_step[i], t->instr_step[i + 1], batch);
    int vals[TRAIN_MAX_OPERANDS], n = train_instr_values(in, vals);
    for (int k = 0; k < n && in->kind != TI_LOSS; k++)
      if (hv[vals[k]] && vals[k] != p->input)
        memcpy(hv[vals[k]], arena + p->offset[vals[k]] * batch,
               train_value_floats(&p->values[vals[k]]) * batch * sizeof(float));
  }
  ran = ran && run_steps(t, &ops, t->instr_step[first_backward], t->plan.n_steps, batch);
  if (!ran) {
    fprintf(stderr, "  the step failed: %s\n", rt_error());
    for (int v2 = 0; v2 < p->n_values; v2++)
      free(hv[v2]);
    free(hv);
    return res;
  }
  res.ran = true;
  res.masks_ok = true;
  for (int n = 0; n < g->n_nodes; n++) {
    if (p->mask[n] < 0)
      continue;
    int64_t elems = shape_elems(g->nodes[n].out) * batch;
    uint8_t *want = xcalloc(elems, 1);
    dropout_mask(seed, (uint64_t)stepno, g->nodes[n].name, 0, elems, g->nodes[n].dropout.p, want);
    const uint8_t *got = (const uint8_t *)hv[p->mask[n]];
    int64_t bad = 0;
    for (int64_t i = 0; i < elems; i++)
      bad += got[i] != want[i];
    if (bad)
      printf("    mask of %s: %lld of %lld bytes differ\n", g->nodes[n].name, (long long)bad,
             (long long)elems);
    res.masks_ok &= bad == 0;
    free(want);
  }
  double loss = 0;
  int hits = 0;
  const double *losses = (const double *)(arena + t->loss.per_image * batch);
  const int32_t *hit = (const int32_t *)(arena + t->hits.per_image * batch);
  for (int i = 0; i < batch; i++) {
    loss += losses[i];
    hits += hit[i];
  }
  loss /= batch;
  // The device's results: gradients, and w and v after the update.
  Weights *cg = weights_zeros(g), *w0 = weights_dup(g, w), *v0 = weights_dup(g, v);
  for (int i = 0; i < w->n; i++) {
    memcpy(cg->data[i], weights + t->grad_base + t->param_offset[i],
           w->info[i].elems * sizeof(float));
    memcpy(w->data[i], weights + t->param_offset[i], w->info[i].elems * sizeof(float));
    memcpy(v->data[i], weights + t->momentum_base + t->param_offset[i],
           v->info[i].elems * sizeof(float));
  }

  // The reference backward on the device's forward.
  int same_hits = 0;
  const TInstr *loss_in = NULL;
  for (int i = 0; i < p->n_instrs; i++)
    loss_in = p->instrs[i].kind == TI_LOSS ? &p->instrs[i] : loss_in;
  double same_loss = softmax_xent(hv[loss_in->x[0]], labels, batch, classes, hv[loss_in->dy],
                                  &same_hits, NULL);
  Weights *sg = weights_zeros(g);
  for (int i = first_backward; i < p->n_instrs; i++) {
    const TInstr *in = &p->instrs[i];
    if (in->kind != TI_BACKWARD)
      continue;
    const Node *node = &g->nodes[in->node];
    const float *xs[64];
    float *dx[64];
    for (int j = 0; j < in->n_x; j++) {  // -1: an input this backward does not read
      xs[j] = in->x[j] >= 0 ? hv[in->x[j]] : NULL;
      dx[j] = in->dx[j] >= 0 ? hv[in->dx[j]] : NULL;
    }
    OpCall c = {.g = g, .n = node, .batch = batch, .x = xs, .y = in->y >= 0 ? hv[in->y] : NULL,
                .w = in->w >= 0 ? weights_get(w0, node->name, false) : NULL,
                .b = in->b >= 0 ? weights_get(w0, node->name, true) : NULL,
                .mask = in->mask >= 0 ? (const uint8_t *)hv[in->mask] : NULL,
                .relu_y = in->relu_y >= 0 ? hv[in->relu_y] : NULL};
    ref_train_kernels.backward(&c, hv[in->dy], dx,
                               in->dw >= 0 ? (float *)weights_get(sg, node->name, false) : NULL,
                               in->db >= 0 ? (float *)weights_get(sg, node->name, true) : NULL);
  }
  const char *ws = "";
  // Losses relative to max(1, |loss|): a step whose loss is near 0 has no relative scale.
  res.same_loss = fabs(loss - same_loss) / fmax(1.0, fabs(same_loss));
  res.same_grad = worst(cg, sg, &ws);
  // The update of the device's own gradients on the host: the same bits.
  Weights *uw = weights_dup(g, w0), *uv = weights_dup(g, v0);
  res.update_exact = true;
  for (int i = 0; i < uw->n; i++) {
    sgd_update_span(uw->data[i], uv->data[i], cg->data[i], uw->info[i].elems, lr);
    res.update_exact &= !memcmp(uw->data[i], w->data[i], uw->info[i].elems * sizeof(float)) &&
                        !memcmp(uv->data[i], v->data[i], uv->info[i].elems * sizeof(float));
  }

  // The reference's own step: its gradients on the same inputs, then its table's update
  // on copies of the same weights and momenta.
  Trainer *r = trainer_new(g, &ref_train_kernels, batch, 1);
  Weights *gw = weights_zeros(g), *rw = weights_dup(g, w0), *rv = weights_dup(g, v0);
  int ref_hits = 0;
  double ref_loss = trainer_grad(r, w0, seed, stepno, x, labels, batch, gw, &ref_hits);
  for (int i = 0; i < rw->n; i++)
    ref_train_kernels.update(rw->data[i], rv->data[i], gw->data[i], rw->info[i].elems, lr);
  // The CPU target's table on the same step, for scale: its float forward may flip the
  // same near-ties (a ReLU at 0, a max-pool window's winner) as the device's.
  Trainer *cpu = trainer_new(g, &cpu_train_kernels, batch, 1);
  Weights *cpug = weights_zeros(g);
  trainer_grad(cpu, w0, seed, stepno, x, labels, batch, cpug, NULL);
  const char *wc = "", *wg = "", *wv = "", *ww = "";
  double cpu_rel = worst(cpug, gw, &wc);
  if (getenv("ALEXC_TRAIN_EMU_DETAIL"))  // per tensor: the reference's largest, the errors
    for (int i = 0; i < gw->n; i++) {
      Compare a = compare(cg->data[i], gw->data[i], gw->info[i].elems);
      Compare b = compare(cpug->data[i], gw->data[i], gw->info[i].elems);
      Compare d = compare(cg->data[i], sg->data[i], sg->info[i].elems);
      printf("      %-16s max|ref| %.3g  cuda rel %.3g  cpu rel %.3g  cuda vs same forward %.3g\n",
             gw->info[i].name, a.abs / (a.rel > 0 ? a.rel : 1), a.rel, b.rel, d.rel);
    }
  const char *wf = "";
  res.decisions = decisions_differ(g, p, w0, x, batch, (const float *const *)hv, seed, stepno,
                                   &res.forward, &wf);
  res.loss = fabs(loss - ref_loss) / fmax(1.0, fabs(ref_loss));
  if (!(res.loss >= 0))
    res.loss = INFINITY;
  if (!(res.same_loss >= 0))
    res.same_loss = INFINITY;
  res.grad = worst(cg, gw, &wg);
  res.momentum = worst(v, rv, &wv);
  res.weight = worst(w, rw, &ww);
  res.hits_ok = hits == ref_hits && hits == same_hits;
  if (verbose)
    printf("    step %lld lr %g: loss %.9g (reference %.9g, rel %.3g), top-1 %d/%d (%d), "
           "masks %s\n"
           "      forward outputs against the reference's: %.3g (%s)\n"
           "      against the reference's step: gradients %.3g (%s), momenta %.3g (%s), "
           "weights %.3g (%s)%s\n"
           "      (the CPU target's table against it: gradients %.3g (%s))\n"
           "      against the reference backward on the device's forward: loss %.3g, "
           "gradients %.3g (%s); update %s\n",
           (long long)stepno, lr, loss, ref_loss, res.loss, hits, batch, ref_hits,
           res.masks_ok ? "equal" : "DIFFER", res.forward, wf, res.grad, wg, res.momentum, wv, res.weight, ww,
           res.decisions ? " (not held: the forwards decided differently)" : "", cpu_rel, wc, res.same_loss, res.same_grad, ws,
           res.update_exact ? "bit-exact" : "NOT bit-exact");
  trainer_free(r);
  trainer_free(cpu);
  for (int i = 0; grad_out && i < cg->n; i++)
    memcpy(grad_out->data[i], cg->data[i], cg->info[i].elems * sizeof(float));
  if (loss_out)
    *loss_out = loss;
  Weights *all[] = {gw, rw, rv, cg, w0, v0, sg, uw, uv, cpug};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    weights_free(all[i]);
  for (int v2 = 0; v2 < p->n_values; v2++)
    free(hv[v2]);
  free(hv);
  return res;
}

static bool passed(const Result *r) {
  // The gradients of the two steps are held to each other only where the forwards made
  // the same decisions; the backward on the device's forward always is.
  bool same_path = r->decisions == 0;
  return r->ran && r->masks_ok && r->hits_ok && r->update_exact && r->forward <= TOL_FORWARD &&
         r->loss <= TOL_LOSS &&
         r->same_loss <= TOL_LOSS && r->same_grad <= TOL_GRAD &&
         (!same_path ||
          (r->grad <= TOL_GRAD && r->momentum <= TOL_STATE && r->weight <= TOL_STATE));
}

// ---------------------------------------------------------------- devices > 1

// One step of the split plan from (w, v); its loss, top-1 hits, gradients (each row from
// the device whose piece computed it) and the updated w and v.
static bool split_step(const Graph *g, const CudaTrainPlan *t, EmuMachine *m, Weights *w,
                       Weights *v, const float *x, const int32_t *labels, int batch,
                       int64_t stepno, double lr, Weights *grad, double *loss, int *hits) {
  const TrainProgram *p = t->prog;
  int64_t in_elems = p->values[p->input].elems;
  RtPlanOps ops = emu_plan_ops(m);
  for (int d = 0; d < m->n_devices; d++) {
    load_state(m, d, t, w, v);
    CudaTrainControl ctl = {lr, 5, (uint64_t)stepno, 0, batch};
    memcpy(m->weights[d] + t->control, &ctl, sizeof ctl);
    const RtAddr *in = &t->plan.dev[d].input.dev.addr;
    memcpy(m->arena[d] + in->per_image * batch + in->fixed, x, in_elems * batch * sizeof(float));
  }
  memcpy(m->arena[0] + t->labels.per_image * batch, labels, batch * sizeof(int32_t));
  bool ok = rt_plan_steps(&t->plan, &ops, batch) && !m->failed;
  if (!ok) {
    fprintf(stderr, "  the split step failed: %s\n", rt_error());
    return false;
  }
  const double *losses = (const double *)(m->arena[0] + t->loss.per_image * batch);
  const int32_t *hit = (const int32_t *)(m->arena[0] + t->hits.per_image * batch);
  *loss = 0, *hits = 0;
  for (int i = 0; i < batch; i++) {
    *loss += losses[i];
    *hits += hit[i];
  }
  *loss /= batch;
  for (int i = 0; i < w->n; i++)  // NaN: a row no piece computed shows
    for (int64_t k = 0; k < w->info[i].elems; k++)
      grad->data[i][k] = w->data[i][k] = v->data[i][k] = NAN;
  for (int k = 0; k < split_n_pieces(t->split); k++) {
    SplitPiece sp = split_piece(t->split, k);
    const Node *n = &g->nodes[sp.node];
    const float *dev = m->weights[sp.device];
    int64_t out = n->op == OP_CONV ? n->conv.out : n->op == OP_FC ? n->fc.out : 0;
    for (int i = 0; out && i < w->n; i++) {
      if (w->info[i].node != sp.node)
        continue;
      int64_t row = w->info[i].elems / out, first = sp.out.begin * row;
      int64_t count = range_len(sp.out) * row, at = t->param_offset[i] + first;
      memcpy(grad->data[i] + first, dev + t->grad_base + at, count * sizeof(float));
      memcpy(w->data[i] + first, dev + at, count * sizeof(float));
      memcpy(v->data[i] + first, dev + t->momentum_base + at, count * sizeof(float));
    }
  }
  return true;
}

// Builds the source (as given) and runs two steps; true when both match the reference.
static bool run(const Graph *g, const CudaTrainPlan *t, const char *source, const char *tag,
                int batch, bool verbose, const CudaTrainPlan *split) {
  // A few blocks a launch at most: the kernels' grid-stride loops must cover the rest.
  EmuMachine e = {.max_grid = 5}, m = {.max_grid = 5};
  char *prefix = format("%s/%s-train%s", workdir, g->name, tag);
  char *src[1] = {(char *)source};
  bool ok = emu_machine_load(&e, &t->plan, src, batch, cxx, emu_header, prefix);
  free(prefix);
  if (ok && split) {
    prefix = format("%s/%s-train-%ddev", workdir, g->name, split->devices);
    ok = emu_machine_load(&m, &split->plan, split->source, batch, cxx, emu_header, prefix);
    free(prefix);
  }
  if (!ok) {
    emu_machine_free(&e);
    emu_machine_free(&m);
    return false;
  }

  Weights *w = weights_init(g, 7, INIT_FAN_IN), *v = weights_zeros(g);
  for (int i = 0; i < w->n; i++) {  // nonzero biases and momenta: a wrong offset shows
    if (w->info[i].is_bias)
      fill_normal(w->data[i], w->info[i].elems, 7, w->info[i].name, 0.1);
    fill_normal(v->data[i], v->info[i].elems, 9, v->info[i].name, 1e-3);
    // The logits' layer a tenth of fan-in's scale: AlexNet's logits are otherwise ~20
    // apart (loss 20), and one step saturates the softmax (loss 0, no gradient left).
    if (w->info[i].node == t->prog->logits)
      for (int64_t k = 0; k < w->info[i].elems; k++)
        w->data[i][k] *= 0.1f;
  }
  int classes = (int)g->nodes[t->prog->logits].out.c;
  int32_t *labels = xcalloc(batch, sizeof *labels);
  for (int i = 0; i < batch; i++)
    labels[i] = (int32_t)((i * 7 + 3) % classes);
  float *x = random_input(g, batch, 3);
  bool ok2 = true;
  const double lrs[2] = {0.002, 0.001};
  for (int k = 0; k < 2 && ok2; k++) {
    Weights *w0 = weights_dup(g, w), *v0 = weights_dup(g, v), *g1 = weights_zeros(g);
    double loss1 = 0;
    Result r = step(g, t, &e, w, v, x, labels, batch, k, lrs[k], verbose, g1, &loss1);
    ok2 = passed(&r);
    if (ok2 && split) {  // the split's step from the same state, against one device's
      Weights *gs = weights_zeros(g);
      double loss2 = 0;
      int hits2 = 0;
      ok2 = split_step(g, split, &m, w0, v0, x, labels, batch, k, lrs[k], gs, &loss2, &hits2);
      const char *wg = "", *wv = "", *ww = "";
      double dl = fabs(loss2 - loss1) / fmax(1.0, fabs(loss1)), eg = worst(gs, g1, &wg);
      double ev = worst(v0, v, &wv), ew = worst(w0, w, &ww);
      ok2 = ok2 && dl <= TOL_LOSS && eg <= TOL_GRAD && ev <= TOL_STATE && ew <= TOL_STATE;
      printf("      %d devices against one: loss %.3g, gradients %.3g (%s), momenta %.3g (%s), "
             "weights %.3g (%s): %s\n",
             split->devices, dl, eg, wg, ev, wv, ew, ww, ok2 ? "OK" : "FAIL");
      weights_free(gs);
    }
    weights_free(w0);
    weights_free(v0);
    weights_free(g1);
  }
  emu_machine_free(&m);
  free(x);
  free(labels);
  weights_free(w);
  weights_free(v);
  emu_machine_free(&e);
  return ok2;
}

// ---------------------------------------------------------------- broken variants

typedef struct {
  const char *what, *from, *to;
} Mutant;

static const Mutant MUTANTS[] = {
    {"the fused ReLU's mask dropped (conv)", "relu_y[i] > 0.0f ? 0.0f + dy[i] : 0.0f;\n  }",
     "0.0f + dy[i];\n  }"},
    {"col2im one column off", "int tx = ix + LEFT - kx;", "int tx = ix + LEFT - kx + 1;"},
    {"the momentum constant 0.9 -> 0.91", "__dmul_rn(0.9,", "__dmul_rn(0.91,"},
    {"no weight decay", "__dmul_rn(0.0005, lr)", "__dmul_rn(0.0, lr)"},
    {"dropout's backward unscaled", "dx[i] += (float)(dy[i] * SCALE);", "dx[i] += dy[i];"},
    {"a dropout mask bit moved", "(word >> 8) >= THRESHOLD", "(word >> 9) >= THRESHOLD"},
    {"max-pool's backward misses the windows starting at the element",
     "oy * STRIDE - TOP <= iy; oy++)", "oy * STRIDE - TOP < iy; oy++)"},
    {"LRN's backward without the cross term", "- 2 * ALPHA * BETA * x[i] * cross", "- 0 * cross"},
    {"dlogits not divided by the batch", "- (k == label)) / batch)", "- (k == label)))"},
    {"the bias gradient summed over one image", "r < (long long)batch * P;", "r < (long long)P;"},
};

// Replaces the first occurrence of from (which must occur) by to; NULL if absent.
static char *mutate(const char *source, const char *from, const char *to) {
  const char *at = strstr(source, from);
  if (!at)
    return NULL;
  return format("%.*s%s%s", (int)(at - source), source, to, at + strlen(from));
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: test_train_emulate CXX EMU_HEADER WORKDIR SPEC [--batch N] "
                    "[--devices N] [--mutants] [--split-mutants] [--nvrtc]\n");
    return 2;
  }
  cxx = argv[1];
  emu_header = argv[2];
  workdir = argv[3];
  const char *spec = argv[4];
  int batch = 0;
  bool mutants = false, nvrtc = false, split_mutants = false;
  int devices = 1;
  for (int i = 5; i < argc; i++) {
    if (!strcmp(argv[i], "--batch") && i + 1 < argc)
      batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mutants"))
      mutants = true;
    else if (!strcmp(argv[i], "--nvrtc"))
      nvrtc = true;
    else if (!strcmp(argv[i], "--split-mutants"))
      split_mutants = true;
    else if (!strcmp(argv[i], "--devices") && i + 1 < argc)
      devices = atoi(argv[++i]);
    else {
      fprintf(stderr, "test_train_emulate: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (mkdir(workdir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: %s\n", workdir, strerror(errno));
    return 1;
  }
  Graph *g = load_spec(spec);
  if (!g)
    return 1;
  if (batch <= 0)
    batch = graph_macs(g) > 100000000 ? 2 : 3;
  CudaTrainPlan t;
  if (!cuda_train_generate(g, NULL, 1, &t)) {
    graph_free(g);
    return 1;
  }
  if (nvrtc) {  // one device's source, or each device's of the split
    CudaTrainPlan split = {0};
    bool have = cuda_have_nvrtc(), ok = have;
    if (ok && devices > 1)
      ok = cuda_train_generate(g, NULL, devices, &split);
    const CudaTrainPlan *c = devices > 1 ? &split : &t;
    for (int d = 0; ok && d < c->devices; d++) {
      uint8_t *cubin = NULL, *ptx = NULL;
      size_t cubin_size = 0, ptx_size = 0;
      ok = cuda_compile_source(c->source[d], "train.cu", "sm_90", &cubin, &cubin_size, &ptx,
                               &ptx_size);
      printf("  %s: the training step's source (device %d of %d) with NVRTC for sm_90: %s "
             "(CUBIN %zu bytes, PTX %zu)\n",
             g->name, d, c->devices, ok ? "OK" : "FAIL", cubin_size, ptx_size);
      free(cubin);
      free(ptx);
    }
    if (!have)
      printf("  %s: skipped, no NVRTC in this build\n", g->name);
    if (devices > 1 && split.prog)
      cuda_train_free(&split);
    cuda_train_free(&t);
    graph_free(g);
    return !have ? 77 : ok ? 0 : 1;
  }
  // Run the plan as the artifact file carries it (saved, loaded back), so the training
  // step's steps and addresses are shown to fit the format the runtime reads.
  char *plan_path = format("%s/%s-train.plan", workdir, g->name);
  RtPlan loaded;
  if (!rt_plan_save(&t.plan, plan_path) || !rt_plan_load(plan_path, &loaded)) {
    fprintf(stderr, "  %s\n", rt_error());
    free(plan_path);
    cuda_train_free(&t);
    graph_free(g);
    return 1;
  }
  free(plan_path);
  rt_plan_free(&t.plan);
  t.plan = loaded;
  int kernels = 0, gemms = 0;
  for (int i = 0; i < t.plan.n_steps; i++) {
    kernels += t.plan.steps[i].kind == RT_STEP_KERNEL;
    gemms += t.plan.steps[i].kind == RT_STEP_GEMM;
  }
  printf("  %s: batch %d, %d steps (%d kernels, %d gemms), arena %lld floats/image, scratch "
         "%lld floats/image\n",
         g->name, batch, t.plan.n_steps, kernels, gemms, (long long)t.plan.dev[0].arena,
         (long long)t.plan.dev[0].scratch);
  CudaTrainPlan split = {0};
  if (devices > 1 && !cuda_train_generate(g, NULL, devices, &split)) {
    cuda_train_free(&t);
    graph_free(g);
    return 1;
  }
  if (devices > 1)
    printf("  %s on %d devices: %d steps\n", g->name, devices, split.plan.n_steps);
  bool ok = run(g, &t, t.source[0], "", batch, true, devices > 1 ? &split : NULL);
  // Broken split plans: the steps of the first send, or of the first reduction, left out.
  // Each must fail the comparison with one device.
  int split_caught = 0, split_tried = 0;
  for (int kind = 0; ok && split_mutants && devices > 1 && kind < 2; kind++) {
    TInstrKind want = kind ? TI_REDUCE : TI_SEND;
    int at = -1;
    for (int i = 0; i < split.prog->n_instrs && at < 0; i++)
      if (split.prog->instrs[i].kind == want)
        at = i;
    split_tried++;
    if (at < 0) {
      printf("  split mutant: no %s to leave out (FAIL)\n", train_instr_names[want]);
      continue;
    }
    int from = split.instr_step[at], to = split.instr_step[at + 1];
    CudaTrainPlan broken = split;
    broken.plan.steps = xcalloc(split.plan.n_steps, sizeof *broken.plan.steps);
    broken.plan.n_steps = 0;
    for (int k = 0; k < split.plan.n_steps; k++)
      if (k < from || k >= to)
        broken.plan.steps[broken.plan.n_steps++] = split.plan.steps[k];
    bool survived = run(g, &t, t.source[0], "", batch, false, &broken);
    printf("  split mutant: the first %s (%d steps) left out: %s\n", train_instr_names[want],
           to - from, survived ? "NOT caught (FAIL)" : "caught");
    split_caught += !survived;
    free(broken.plan.steps);
  }
  if (devices > 1)
    cuda_train_free(&split);
  printf("  %s: %s\n", g->name, ok ? "OK" : "FAIL");
  int caught = 0, tried = 0;
  for (size_t m = 0; ok && mutants && m < sizeof MUTANTS / sizeof *MUTANTS; m++) {
    char *src = mutate(t.source[0], MUTANTS[m].from, MUTANTS[m].to);
    tried++;
    if (!src) {
      printf("  mutant '%s': not applicable to this source (FAIL)\n", MUTANTS[m].what);
      continue;
    }
    char tag[32];
    snprintf(tag, sizeof tag, "-mutant%zu", m);
    bool survived = run(g, &t, src, tag, batch, false, NULL);
    printf("  mutant '%s': %s\n", MUTANTS[m].what, survived ? "NOT caught (FAIL)" : "caught");
    caught += !survived;
    free(src);
  }
  if (mutants && ok)
    printf("  %d of %d broken variants caught\n", caught, tried);
  cuda_train_free(&t);
  graph_free(g);
  return ok && caught == tried && split_caught == split_tried ? 0 : 1;
}
