// The training program's memory plan: one arena for the per-image values of a step.
//
// Each per-image value (the input, activations, gradients, masks, saved state) is live
// from the first instruction that touches it to the last one that touches it; values
// whose lives do not overlap share memory, placed first fit in order of birth.
// Activations live from their forward to their backward, so they mostly stay; a gradient
// lives only from the first backward that adds to it to the backward that reads it, so
// gradients reuse each other's memory. Two operands of one instruction are both live at
// it and never share memory, so no kernel runs in place.
//
// Sizes are in floats per image (a mask's bytes rounded up to floats): every value
// scales with the batch, so offset * batch is valid for any batch. The parameters,
// their gradients and momenta are persistent and batch-independent: they live outside.
#include <limits.h>
#include <stdlib.h>

#include "../alexc.h"

#define ALIGN 16  // floats: each value 64-byte aligned for any batch

typedef struct {
  int64_t offset, size;
  int last;  // the instruction after which it is dead
} Block;

bool train_value_in_arena(TValueKind k) {
  return k == TV_INPUT || k == TV_ACT || k == TV_MASK || k == TV_SAVED || k == TV_GRAD;
}

int64_t train_value_floats(const TValue *v) {
  int64_t n = v->kind == TV_MASK ? (v->elems + 3) / 4 : v->elems;
  return (n + ALIGN - 1) / ALIGN * ALIGN;
}

// The lowest offset where `size` fits between the live blocks.
static int64_t first_fit(const Block *live, int n, int64_t size) {
  int64_t at = 0;
  for (bool moved = true; moved;) {
    moved = false;
    for (int i = 0; i < n; i++)
      if (live[i].offset < at + size && at < live[i].offset + live[i].size) {
        at = live[i].offset + live[i].size;
        moved = true;
      }
  }
  return at;
}

// Fills p->first and p->last: the first and last instruction touching each value (-1
// first for the input, which the trainer writes before the first instruction).
static void lifetimes(TrainProgram *p) {
  for (int v = 0; v < p->n_values; v++) {
    p->first[v] = v == p->input ? -1 : INT_MAX;
    p->last[v] = -1;
  }
  int refs[TRAIN_MAX_OPERANDS];
  for (int i = 0; i < p->n_instrs; i++) {
    int n = train_instr_values(&p->instrs[i], refs);
    for (int k = 0; k < n; k++) {
      int v = refs[k];
      p->first[v] = i < p->first[v] ? i : p->first[v];
      p->last[v] = i > p->last[v] ? i : p->last[v];
    }
  }
}

void train_plan_memory(TrainProgram *p) {
  free(p->offset), free(p->first), free(p->last);
  p->offset = xcalloc(p->n_values, sizeof *p->offset);
  p->first = xcalloc(p->n_values, sizeof *p->first);
  p->last = xcalloc(p->n_values, sizeof *p->last);
  lifetimes(p);
  Block *live = xcalloc(p->n_values, sizeof *live);
  int n_live = 0;
  p->arena = p->unshared = 0;
  // Values in order of birth: before instruction i, the values born there.
  for (int i = -1; i < p->n_instrs; i++)
    for (int v = 0; v < p->n_values; v++) {
      const TValue *tv = &p->values[v];
      if (p->first[v] != i)
        continue;
      p->offset[v] = -1;
      if (!train_value_in_arena(tv->kind))
        continue;
      int k = 0;
      for (int j = 0; j < n_live; j++)  // the dead make room
        if (live[j].last >= i)
          live[k++] = live[j];
      n_live = k;
      int64_t size = train_value_floats(tv);
      p->offset[v] = first_fit(live, n_live, size);
      live[n_live++] = (Block){p->offset[v], size, p->last[v]};
      p->unshared += size;
      if (p->offset[v] + size > p->arena)
        p->arena = p->offset[v] + size;
    }
  for (int v = 0; v < p->n_values; v++)  // never touched: not placed
    if (p->first[v] == INT_MAX)
      p->offset[v] = -1;
  free(live);
}
