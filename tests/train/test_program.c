// The training program (train/autodiff.c): its verifier, its backward fusion, and the
// fused program computing the plain program's bits.
//
// For every graph given: autodiff's program and the fused one verify; the fusion folds
// exactly the ReLUs that read a conv's or fc's output alone, and only the patterns asked
// for; the memory plan shares memory and verifies; one step's loss and gradients and two
// SGD steps' weights are bit-identical between the fused and plain programs with both
// kernel tables. Then broken programs, each made by editing a good one, must be refused
// by the verifier. The same for the program of a model-parallel split (sends and
// reductions in place of the plan's transfers).
//
// usage: test_program SPEC...
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "tools/cli.h"

#define BATCH 3

static int failures;

static void expect(bool ok, const char *what, const char *spec) {
  if (!ok) {
    printf("FAIL %s: %s\n", spec, what);
    failures++;
  }
}

static int count_fused(const TrainProgram *p, OpKind head) {
  int n = 0;
  for (int i = 0; i < p->n_instrs; i++)
    n += p->instrs[i].relu >= 0 && p->g->nodes[p->instrs[i].node].op == head;
  return n;
}

// ReLUs that read a conv's (or fc's) output alone, that output not being the logits.
static int fusable(const TrainProgram *p, OpKind head) {
  const Graph *g = p->g;
  int n = 0;
  for (int i = 1; i <= p->logits; i++) {
    const Node *r = &g->nodes[i];
    if (r->op != OP_RELU || g->nodes[r->inputs[0]].op != head || r->inputs[0] == p->logits)
      continue;
    int readers = 0;
    for (int j = 1; j <= p->logits; j++)
      for (int k = 0; k < g->nodes[j].n_inputs; k++)
        readers += g->nodes[j].inputs[k] == r->inputs[0];
    n += readers == 1;
  }
  return n;
}

static void check_fusion(const Graph *g, const char *spec) {
  static const char *const none[] = {NULL}, *const fc_only[] = {"fc-relu", NULL};
  TrainProgram *all = autodiff(g), *plain = autodiff(g), *fc = autodiff(g);
  expect(all && train_program_verify(all), "autodiff's program verifies", spec);
  if (!all)
    return;
  train_fuse_backward(all, NULL);
  train_fuse_backward(plain, none);
  train_fuse_backward(fc, fc_only);
  expect(train_program_verify(all) && train_program_verify(plain) && train_program_verify(fc),
         "fused programs verify", spec);
  expect(count_fused(all, OP_CONV) == fusable(all, OP_CONV) &&
             count_fused(all, OP_FC) == fusable(all, OP_FC),
         "every conv-relu and fc-relu backward is fused", spec);
  expect(count_fused(plain, OP_CONV) + count_fused(plain, OP_FC) == 0, "no patterns: no fusion",
         spec);
  expect(count_fused(fc, OP_CONV) == 0 && count_fused(fc, OP_FC) == fusable(fc, OP_FC),
         "fc-relu alone fuses only fc", spec);
  train_plan_memory(all);
  expect(train_program_verify(all), "the memory plan verifies", spec);
  expect(all->arena <= all->unshared, "the arena is no larger than the values", spec);
  if (strstr(spec, "mini-alexnet"))  // its gradients die young (0.56 of the memory here)
    expect(all->arena < all->unshared, "the plan shares memory between values", spec);
  int fused = fusable(all, OP_CONV) + fusable(all, OP_FC);
  expect(all->n_instrs == plain->n_instrs - fused, "a fused ReLU's instruction is gone", spec);
  train_program_free(all);
  train_program_free(plain);
  train_program_free(fc);
}

static bool same_bits(const Weights *a, const Weights *b) {
  for (int i = 0; i < a->n; i++)
    if (memcmp(a->data[i], b->data[i], a->info[i].elems * sizeof(float)))
      return false;
  return true;
}

// One step's gradients, then two SGD steps' weights, fused against plain.
static void check_bits(const Graph *g, const TrainKernels *k, const char *spec) {
  static const char *const none[] = {NULL};
  Trainer *fused = trainer_new_fused(g, k, BATCH, 1, NULL);
  Trainer *plain = trainer_new_fused(g, k, BATCH, 1, none);
  if (!fused || !plain) {
    expect(false, "trainers", spec);
    return;
  }
  float *x = random_input(g, BATCH, 4);
  int32_t labels[BATCH];
  for (int i = 0; i < BATCH; i++)
    labels[i] = (5 * i + 1) % trainer_classes(fused);
  Weights *w = weights_init(g, 3, INIT_FAN_IN), *ga = weights_zeros(g), *gb = weights_zeros(g);
  double la = trainer_grad(fused, w, 9, 2, x, labels, BATCH, ga, NULL);
  double lb = trainer_grad(plain, w, 9, 2, x, labels, BATCH, gb, NULL);
  expect(la == lb && same_bits(ga, gb), k == &ref_train_kernels
                                            ? "ref: fused gradients equal plain ones bit for bit"
                                            : "cpu: fused gradients equal plain ones bit for bit",
         spec);
  TrainState sa = {.w = weights_init(g, 3, INIT_FAN_IN), .v = weights_zeros(g), .seed = 5};
  TrainState sb = {.w = weights_init(g, 3, INIT_FAN_IN), .v = weights_zeros(g), .seed = 5};
  for (int s = 0; s < 2; s++) {
    trainer_step(fused, &sa, 0.01, x, labels, BATCH, NULL);
    trainer_step(plain, &sb, 0.01, x, labels, BATCH, NULL);
  }
  expect(same_bits(sa.w, sb.w) && same_bits(sa.v, sb.v), "two fused SGD steps equal plain ones",
         spec);
  weights_free(sa.w), weights_free(sa.v), weights_free(sb.w), weights_free(sb.v);
  weights_free(w), weights_free(ga), weights_free(gb);
  free(x);
  trainer_free(fused);
  trainer_free(plain);
}

static int find_instr(const TrainProgram *p, TInstrKind kind, int from) {
  for (int i = from; i < p->n_instrs; i++)
    if (p->instrs[i].kind == kind)
      return i;
  return -1;
}

static void swap_instrs(TrainProgram *p, int a, int b) {
  TInstr t = p->instrs[a];
  p->instrs[a] = p->instrs[b];
  p->instrs[b] = t;
}

static int *copy_ints(const int *a, int n) {
  int *c = malloc((n ? n : 1) * sizeof *c);
  if (a)
    memcpy(c, a, n * sizeof *c);
  return a ? c : (free(c), NULL);
}

static void duplicate_instr(TrainProgram *p, int i) {
  p->instrs = realloc(p->instrs, (p->n_instrs + 1) * sizeof *p->instrs);
  memmove(&p->instrs[i + 1], &p->instrs[i], (p->n_instrs - i) * sizeof *p->instrs);
  p->n_instrs++;
  p->instrs[i + 1].x = copy_ints(p->instrs[i].x, p->instrs[i].n_x);
  p->instrs[i + 1].dx = copy_ints(p->instrs[i].dx, p->instrs[i].n_x);
}

// Each edit breaks one invariant; the verifier must refuse the result (it prints why).
static void check_refusals(const Graph *g, const char *spec) {
  enum { GRAD_ORDER, UPDATE_EARLY, PARAM_GRAD_TWICE, WRONG_KIND, WRONG_RELU, SHARED, EDITS };
  static const char *const what[] = {
      "a gradient read before every addition to it", "a parameter updated before its gradient and its forward",
      "a parameter gradient written twice", "an operand of the wrong kind",
      "a fused ReLU that does not read the node",
      "a memory plan placing two live values together"};
  for (int e = 0; e < EDITS; e++) {
    TrainProgram *p = autodiff(g);
    train_fuse_backward(p, NULL);
    int b1 = find_instr(p, TI_BACKWARD, 0), b2 = b1 >= 0 ? find_instr(p, TI_BACKWARD, b1 + 1) : -1;
    int u = find_instr(p, TI_UPDATE, 0), f = find_instr(p, TI_FORWARD, 0);
    bool edited = true;
    if (e == GRAD_ORDER && b2 >= 0)
      swap_instrs(p, b1, b2);  // the second backward reads what the first adds to
    else if (e == UPDATE_EARLY && u >= 0 && f >= 0)
      swap_instrs(p, f, u);  // conv1's update before the first forward reads conv1.weight
    else if (e == PARAM_GRAD_TWICE && b1 >= 0 && p->instrs[b1].dw >= 0)
      duplicate_instr(p, b1);  // the same backward twice: its weight gradient written twice
    else if (e == WRONG_KIND && f >= 0)
      p->instrs[f].y = p->labels;
    else if (e == WRONG_RELU && b1 >= 0 && count_fused(p, OP_CONV) + count_fused(p, OP_FC))
      for (int i = 0; i < p->n_instrs; i++) {
        if (p->instrs[i].relu >= 0) {
          p->instrs[i].relu = p->instrs[i].node;  // a conv is not a ReLU
          break;
        }
      }
    else if (e == SHARED && f >= 0) {
      train_plan_memory(p);  // the first forward's output is live with its input
      p->offset[p->instrs[f].y] = p->offset[p->instrs[f].x[0]];
    } else
      edited = false;
    if (edited) {
      printf("  %s: expect a refusal of %s:\n", spec, what[e]);
      fflush(stdout);
      expect(!train_program_verify(p), what[e], spec);
    }
    train_program_free(p);
  }
}

// The program of a model-parallel split: the plan's transfers as sends and reductions,
// verified on 2 to 4 devices; then three edits the verifier must refuse.
static void check_split(const Graph *g, const char *spec) {
  for (int devices = 2; devices <= 4; devices++) {
    TrainProgram *p = autodiff(g);
    Split *s = p ? split_new(g, devices, 2, p->logits, p->needs_grad) : NULL;
    if (!s) {
      expect(false, "a split program", spec);
      train_program_free(p);
      continue;
    }
    train_add_transfers(p, split_plan(s));
    train_plan_memory(p);
    expect(train_program_verify(p), "the split program verifies", spec);
    int reduce = find_instr(p, TI_REDUCE, 0), send = find_instr(p, TI_SEND, 0);
    if (devices == 2 && reduce >= 0 && send >= 0) {
      printf("  %s: expect refusals of a send before its forward, a reduction after its "
             "node's backward, and a lost reduction:\n", spec);
      fflush(stdout);
      swap_instrs(p, send, send - 1);  // the forward before it is its node's
      expect(!train_program_verify(p), "a send before its node's forward", spec);
      swap_instrs(p, send, send - 1);
      int r = reduce;  // the last reduction of its node, then its backward
      while (p->instrs[r + 1].kind == TI_REDUCE)
        r++;
      swap_instrs(p, r, r + 1);
      expect(!train_program_verify(p), "a reduction after its node's backward", spec);
      swap_instrs(p, r, r + 1);
      memmove(&p->instrs[reduce], &p->instrs[reduce + 1],  // a reduction lost
              (p->n_instrs - reduce - 1) * sizeof *p->instrs);
      p->n_instrs--;
      expect(!train_program_verify(p), "a lost reduction", spec);
    }
    train_program_free(p);
    split_free(s);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_program SPEC...\n");
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    Graph *g = load_spec(argv[i]);
    if (!g) {
      failures++;
      continue;
    }
    int before = failures;
    check_fusion(g, argv[i]);
    check_bits(g, &ref_train_kernels, argv[i]);
    check_bits(g, &cpu_train_kernels, argv[i]);
    check_refusals(g, argv[i]);
    check_split(g, argv[i]);
    printf("%s %s\n", failures == before ? "ok  " : "FAIL", argv[i]);
    graph_free(g);
  }
  printf("%d spec(s), %d failure(s)\n", argc - 1, failures);
  return failures ? 1 : 0;
}
