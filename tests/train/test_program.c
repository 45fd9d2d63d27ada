// The training program (train/autodiff.c): its verifier, its backward fusion, and the
// fused program computing the plain program's bits.
//
// For every graph given: autodiff's program and the fused one verify; the fusion folds
// exactly the chains a walk over the graph finds (a conv's or fc's ReLU, then for a conv
// an LRN and/or a max-pool, each the sole reader of the one before), the longest an
// enabled pattern allows, and only the patterns asked for; no gradient inside a fused
// chain is left in the program; the memory plan shares memory and verifies; one step's
// loss and gradients and two SGD steps' weights are bit-identical between the fused and
// plain programs with both kernel tables (the CPU one on 1, 2 and 3 threads, and at
// batch 40 too, where a chunk of its conv backward holds several sub-batches). Then
// broken programs, each made by editing a good one, must be refused by the verifier. The
// same for the program of a model-parallel split (sends and reductions in place of the
// plan's transfers).
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

// Fused instructions of head op `head` whose chain is `lrn` and `pool` (whether each is there).
static int count_fused(const TrainProgram *p, OpKind head, bool lrn, bool pool) {
  int n = 0;
  for (int i = 0; i < p->n_instrs; i++) {
    const TInstr *in = &p->instrs[i];
    n += in->relu >= 0 && p->g->nodes[in->node].op == head && (in->lrn >= 0) == lrn &&
         (in->pool >= 0) == pool;
  }
  return n;
}

static int all_fused(const TrainProgram *p) {
  int n = 0;
  for (int i = 0; i < p->n_instrs; i++)
    n += p->instrs[i].relu >= 0;
  return n;
}

// The only reader of node i's output among the nodes up to the logits, or -1 (none,
// several, or i is the logits).
static int only_reader(const TrainProgram *p, int i) {
  const Graph *g = p->g;
  int reader = -1, readers = 0;
  for (int j = i + 1; j <= p->logits; j++)
    for (int k = 0; k < g->nodes[j].n_inputs; k++)
      if (g->nodes[j].inputs[k] == i)
        reader = j, readers++;
  return readers == 1 && i != p->logits ? reader : -1;
}

// What the fusion must find, walked from the graph: per head op and chain shape (index
// lrn * 2 + pool), how many chains fuse with the patterns `on` (conv-relu, fc-relu,
// conv-relu-lrn, conv-relu-pool, conv-relu-lrn-pool), and the nodes they fold in all.
typedef struct {
  bool conv_relu, fc_relu, lrn, pool, lrn_pool;
} Patterns;

static int expected(const TrainProgram *p, Patterns on, OpKind head, int shape, int *folded) {
  const Graph *g = p->g;
  int n = 0;
  for (int i = 1; i <= p->logits; i++) {
    int r = g->nodes[i].op == head ? only_reader(p, i) : -1;
    if (r < 0 || g->nodes[r].op != OP_RELU)
      continue;
    int l = only_reader(p, r), q = -1;
    if (l >= 0 && g->nodes[l].op != OP_LRN)
      q = l, l = -1;
    else if (l >= 0)
      q = only_reader(p, l);
    if (q >= 0 && g->nodes[q].op != OP_MAXPOOL)
      q = -1;
    int got = -1;  // the shape that fuses: the longest pattern on
    if (head == OP_FC)
      got = on.fc_relu ? 0 : -1;
    else if (l >= 0 && q >= 0 && on.lrn_pool)
      got = 3;
    else if (l >= 0 && on.lrn)
      got = 2;
    else if (l < 0 && q >= 0 && on.pool)
      got = 1;
    else if (on.conv_relu)
      got = 0;
    if (got == shape) {
      *folded += 1 + (got >> 1) + (got & 1);
      n++;
    }
  }
  return n;
}

// No gradient of a node inside a fused chain (the head's, the ReLU's, an LRN's followed
// by a pool) is a value of the program.
static bool inner_gradients_gone(const TrainProgram *p) {
  for (int i = 0; i < p->n_instrs; i++) {
    const TInstr *in = &p->instrs[i];
    if (in->relu < 0)
      continue;
    int inner[3] = {in->node, in->lrn >= 0 || in->pool >= 0 ? in->relu : -1,
                    in->lrn >= 0 && in->pool >= 0 ? in->lrn : -1};
    for (int v = 0; v < p->n_values; v++)
      for (int k = 0; k < 3; k++)
        if (p->values[v].kind == TV_GRAD && inner[k] >= 0 && p->values[v].node == inner[k])
          return false;
  }
  return true;
}

// A fused LRN's output is recomputed from its saved sums: when a fused pool reads it, no
// backward does, so it dies after the pool's forward. (Without a pool it is the next
// layer's input, which that layer's backward reads.)
static bool lrn_outputs_unread(TrainProgram *p) {
  int values[TRAIN_MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs; i++) {
    int lrn = p->instrs[i].pool >= 0 ? p->instrs[i].lrn : -1;
    for (int k = 0; lrn >= 0 && k < p->n_instrs; k++) {
      int n = train_instr_values(&p->instrs[k], values);
      for (int j = 0; j < n && p->instrs[k].kind == TI_BACKWARD; j++)
        if (values[j] == p->act[lrn])
          return false;
    }
  }
  return true;
}

static void check_patterns(const Graph *g, const char *spec, const char *const *names,
                           Patterns on) {
  static const char *const none[] = {NULL};
  TrainProgram *p = autodiff(g), *plain = autodiff(g);
  if (!p || !plain) {
    expect(false, "autodiff", spec);
    train_program_free(p), train_program_free(plain);
    return;
  }
  train_fuse_backward(p, names);
  train_fuse_backward(plain, none);
  char what[160];
  snprintf(what, sizeof what, "patterns %s%s...: the program verifies", names ? "" : "(all)",
           names && names[0] ? names[0] : "");
  expect(train_program_verify(p), what, spec);
  int folded = 0;
  for (int shape = 0; shape < 4; shape++) {
    snprintf(what, sizeof what, "patterns %s%s...: the chains of shape %d fused are the graph's",
             names ? "" : "(all)", names && names[0] ? names[0] : "", shape);
    expect(count_fused(p, OP_CONV, shape >> 1, shape & 1) ==
               expected(p, on, OP_CONV, shape, &folded),
           what, spec);
  }
  expect(count_fused(p, OP_FC, false, false) == expected(p, on, OP_FC, 0, &folded) &&
             count_fused(p, OP_FC, true, false) + count_fused(p, OP_FC, false, true) == 0,
         "fc-relu fuses as the graph says", spec);
  expect(p->n_instrs == plain->n_instrs - folded, "a fused node's backward instruction is gone",
         spec);
  expect(inner_gradients_gone(p), "no gradient inside a fused chain is left", spec);
  expect(lrn_outputs_unread(p), "no backward reads a fused LRN's output (recomputed)", spec);
  train_program_free(p);
  train_program_free(plain);
}

static void check_fusion(const Graph *g, const char *spec) {
  static const char *const none[] = {NULL}, *const fc_only[] = {"fc-relu", NULL},
                           *const short_only[] = {"conv-relu", "fc-relu", NULL},
                           *const pool_only[] = {"conv-relu-pool", NULL},
                           *const lrn_only[] = {"conv-relu-lrn", NULL},
                           *const whole[] = {"conv-relu-lrn-pool", NULL};
  TrainProgram *all = autodiff(g), *plain = autodiff(g);
  expect(all && train_program_verify(all), "autodiff's program verifies", spec);
  if (!all)
    return;
  check_patterns(g, spec, NULL, (Patterns){true, true, true, true, true});
  check_patterns(g, spec, none, (Patterns){0});
  check_patterns(g, spec, fc_only, (Patterns){.fc_relu = true});
  check_patterns(g, spec, short_only, (Patterns){.conv_relu = true, .fc_relu = true});
  check_patterns(g, spec, pool_only, (Patterns){.pool = true});
  check_patterns(g, spec, lrn_only, (Patterns){.lrn = true});
  check_patterns(g, spec, whole, (Patterns){.lrn_pool = true});
  train_fuse_backward(all, NULL);
  train_fuse_backward(plain, none);
  train_plan_memory(all);
  train_plan_memory(plain);
  expect(train_program_verify(all), "the memory plan verifies", spec);
  expect(all->arena <= all->unshared, "the arena is no larger than the values", spec);
  if (strstr(spec, "mini-alexnet")) {  // its gradients die young (0.56 of the memory here)
    expect(all->arena < all->unshared, "the plan shares memory between values", spec);
    // conv1's and conv2's whole chains, conv4's conv-relu-pool
    expect(count_fused(all, OP_CONV, true, true) == 2 &&
               count_fused(all, OP_CONV, false, true) == 1,
           "mini-AlexNet fuses conv1 and conv2 with their LRN and pool, conv4 with its pool", spec);
    expect(all->arena < plain->arena, "the fused program's arena is smaller than the plain one's",
           spec);
  }
  train_program_free(all);
  train_program_free(plain);
}

static bool same_bits(const Weights *a, const Weights *b) {
  for (int i = 0; i < a->n; i++)
    if (memcmp(a->data[i], b->data[i], a->info[i].elems * sizeof(float)))
      return false;
  return true;
}

// One step's gradients, then two SGD steps' weights, fused against plain, at batch B.
static void check_bits(const Graph *g, const TrainKernels *k, const char *spec, int B) {
  static const char *const none[] = {NULL};
  Trainer *fused = trainer_new_fused(g, k, B, 1, NULL);
  Trainer *plain = trainer_new_fused(g, k, B, 1, none);
  if (!fused || !plain) {
    expect(false, "trainers", spec);
    return;
  }
  float *x = random_input(g, B, 4);
  int32_t *labels = calloc(B, sizeof *labels);
  for (int i = 0; i < B; i++)
    labels[i] = (5 * i + 1) % trainer_classes(fused);
  Weights *w = weights_init(g, 3, INIT_FAN_IN), *ga = weights_zeros(g), *gb = weights_zeros(g);
  double lb = trainer_grad(plain, w, 9, 2, x, labels, B, gb, NULL);
  // The CPU kernels split work by fixed tasks, not by threads: the fused chain's bits must
  // not depend on the thread count either (0: the default, last).
  static const int thread_counts[] = {1, 3, 0};
  for (int t = k == &cpu_train_kernels ? 0 : 2; t < 3; t++) {
    cpu_train_set_threads(thread_counts[t]);
    double la = trainer_grad(fused, w, 9, 2, x, labels, B, ga, NULL);
    char what[96];
    snprintf(what, sizeof what, "%s (%d threads, batch %d): fused gradients equal plain ones "
             "bit for bit", k->name, thread_counts[t], B);
    expect(la == lb && same_bits(ga, gb), what, spec);
  }
  TrainState sa = {.w = weights_init(g, 3, INIT_FAN_IN), .v = weights_zeros(g), .seed = 5};
  TrainState sb = {.w = weights_init(g, 3, INIT_FAN_IN), .v = weights_zeros(g), .seed = 5};
  for (int s = 0; s < 2; s++) {
    trainer_step(fused, &sa, 0.01, x, labels, B, NULL);
    trainer_step(plain, &sb, 0.01, x, labels, B, NULL);
  }
  expect(same_bits(sa.w, sb.w) && same_bits(sa.v, sb.v), "two fused SGD steps equal plain ones",
         spec);
  weights_free(sa.w), weights_free(sa.v), weights_free(sb.w), weights_free(sb.v);
  weights_free(w), weights_free(ga), weights_free(gb);
  free(x);
  free(labels);
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

// The first fused instruction with an LRN (lrn) or a pool (!lrn), or -1.
static int chain_with(const TrainProgram *p, bool lrn) {
  for (int i = 0; i < p->n_instrs; i++)
    if (lrn ? p->instrs[i].lrn >= 0 : p->instrs[i].pool >= 0)
      return i;
  return -1;
}

// Breaks a fused chain, edit `e` (NO_LRN - NO_LRN, ...); false when the graph has no
// chain to break that way.
static bool break_chain(TrainProgram *p, int e) {
  const Graph *g = p->g;
  int l = chain_with(p, true), q = chain_with(p, false);
  if (e == 0 && l >= 0 && p->instrs[l].pool >= 0) {  // the LRN dropped from lrn-pool
    p->instrs[l].lrn = p->instrs[l].lrn_saved = -1;
    return true;
  }
  if (e == 1 && l >= 0) {  // another LRN's node and operands
    for (int i = l + 1; i < p->n_instrs; i++)
      if (p->instrs[i].lrn >= 0) {
        p->instrs[l].lrn = p->instrs[i].lrn;
        p->instrs[l].lrn_saved = p->instrs[i].lrn_saved;
        return true;
      }
    return false;
  }
  if (e == 2 && q >= 0) {  // the pool's plain backward again, adding to d(pool input)
    int pool = p->instrs[q].pool, in = g->nodes[pool].inputs[0];
    int grad = p->n_values;
    p->values = realloc(p->values, (p->n_values + 1) * sizeof *p->values);
    p->values[p->n_values++] = (TValue){TV_GRAD, in, false, shape_elems(g->nodes[in].out)};
    duplicate_instr(p, q);
    TInstr *b = &p->instrs[q];  // the copy runs second: the original (now b) first
    b->node = pool;
    b->x[0] = p->act[in];
    b->dx[0] = grad;
    b->y = p->act[pool];
    b->w = b->b = b->dw = b->db = -1;
    b->relu = b->relu_y = b->lrn = b->lrn_saved = b->pool = b->pool_y = -1;
    return true;
  }
  if (e == 3) {  // a conv-relu whose ReLU feeds a max-pool and something else
    for (int i = 0; i < p->n_instrs; i++) {
      TInstr *in = &p->instrs[i];
      if (in->relu < 0 || in->lrn >= 0 || in->pool >= 0)
        continue;
      for (int j = in->relu + 1; j <= p->logits; j++)
        if (g->nodes[j].op == OP_MAXPOOL && g->nodes[j].inputs[0] == in->relu &&
            p->grad[j] >= 0) {
          in->pool = j, in->pool_y = p->act[j], in->dy = p->grad[j];
          return true;
        }
    }
    return false;
  }
  if (e == 4 && q >= 0) {  // the fused backward twice: the first is not dy's last reader
    duplicate_instr(p, q);
    return true;
  }
  return false;
}

// Each edit breaks one invariant; the verifier must refuse the result (it prints why).
static void check_refusals(const Graph *g, const char *spec) {
  enum { GRAD_ORDER, UPDATE_EARLY, PARAM_GRAD_TWICE, WRONG_KIND, WRONG_RELU, SHARED, NO_LRN,
         WRONG_LRN, POOL_AGAIN, PAST_BRANCH, DY_LATER, EDITS };
  static const char *const what[] = {
      "a gradient read before every addition to it", "a parameter updated before its gradient and its forward",
      "a parameter gradient written twice", "an operand of the wrong kind",
      "a fused ReLU that does not read the node",
      "a memory plan placing two live values together",
      "a fused chain with its LRN dropped (the pool then does not read the chain)",
      "a fused chain with another node's LRN",
      "a fused max-pool whose plain backward also runs, into a gradient inside the chain",
      "a chain fused past a ReLU whose output has another reader",
      "a fused chain's gradient read after the fused backward"};
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
    else if (e == WRONG_RELU && b1 >= 0 && all_fused(p))
      for (int i = 0; i < p->n_instrs; i++) {
        if (p->instrs[i].relu >= 0) {
          p->instrs[i].relu = p->instrs[i].node;  // a conv is not a ReLU
          break;
        }
      }
    else if (e == SHARED && f >= 0) {
      train_plan_memory(p);  // the first forward's output is live with its input
      p->offset[p->instrs[f].y] = p->offset[p->instrs[f].x[0]];
    } else if (e >= NO_LRN && e <= DY_LATER)
      edited = break_chain(p, e - NO_LRN);
    else
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
    check_bits(g, &ref_train_kernels, argv[i], BATCH);
    check_bits(g, &cpu_train_kernels, argv[i], BATCH);
    // More sub-batches than the CPU conv backward's 16 chunks: a chunk then runs several
    // in turn, its dW partial summed over them (the reference is too slow for this size).
    check_bits(g, &cpu_train_kernels, argv[i], 40);
    check_refusals(g, argv[i]);
    check_split(g, argv[i]);
    printf("%s %s\n", failures == before ? "ok  " : "FAIL", argv[i]);
    graph_free(g);
  }
  printf("%d spec(s), %d failure(s)\n", argc - 1, failures);
  return failures ? 1 : 0;
}
