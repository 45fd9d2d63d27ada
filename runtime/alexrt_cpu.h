// alexrt_cpu.h — the CPU target's program and its executor (runtime/cpu.c).
//
// The compiler (compiler/backends/cpu/) turns a compiled graph into native kernels, one
// per node and logical device, and a program: a list of steps the executor walks in
// order. A step either runs a kernel over a range of work items, split across a thread
// pool, or copies a block of floats per image between buffers (the input upload, the
// partition's transfers, the output gather). The executor knows no op: what a kernel
// computes is compiled into it.
//
// Memory is one arena per logical device, sized and laid out by the memory plan
// (elements per image, times the batch); a kernel gets its device's arena, its packed
// weights and a scratch area of its own thread.
#ifndef ALEXRT_CPU_H
#define ALEXRT_CPU_H

#include <stdbool.h>
#include <stdint.h>

#include "alexrt.h"

// A generated kernel: work items [begin, end) of the batch; items are images times
// row bands (convolutions, pooling, LRN) or output blocks (fully connected).
typedef void (*RtCpuKernel)(float *arena, const float *weights, float *scratch, int64_t batch,
                            int64_t begin, int64_t end);

// The place of a block of floats: device `dev`'s arena (-1: the caller's input for a
// source, the caller's output number `out` for a destination), image i at
// off*batch + i*stride + rel.
typedef struct {
  int dev, out;
  int64_t off, stride, rel;
} RtCpuPlace;

// How a kernel's weights are packed at load: `blocks` blocks of `width` output channels,
// each [k][width] (channel oc_begin[b] + lane at lane; lanes past n_oc[b] are zeros),
// then the biases [blocks][width] (float). A conv weight (out, in/groups, kh, kw) has
// k = in/groups*kh*kw; an fc weight (out, in) has k = in. With bf16, a block is
// [kp/2][width] pairs of bfloat16 (k and k+1 of a lane in one 32-bit word, the even one
// low), kp = k rounded up to 32, zeros past k: what AVX512_BF16's vdpbf16ps multiplies.
typedef struct {
  char weight[160], bias[160];  // tensor names; bias "" when the layer has none
  int rank;                     // the weight tensor's shape (the bias is (dims[0]))
  int64_t dims[4];
  int64_t k;
  bool bf16;
  int width, blocks;
  int64_t *oc_begin;
  int *n_oc;
} RtCpuPack;

typedef enum { RT_CPU_RUN, RT_CPU_COPY } RtCpuStepKind;

typedef struct {
  RtCpuStepKind kind;
  int node;  // the graph node it runs or whose output it copies (for timings)
  // RT_CPU_RUN
  char symbol[96];
  RtCpuKernel fn;
  int device;
  int64_t items;    // work items per image (per_image) or in all
  bool per_image;
  int64_t scratch;  // floats of scratch each thread needs
  int pack;         // index into packs, -1: no weights
  // RT_CPU_COPY: n floats per image
  RtCpuPlace from, to;
  int64_t n;
} RtCpuStep;

typedef struct {
  int n_devices;
  int64_t arena[8];          // elements per image, per device
  int64_t in_elems;   // per image
  int n_outputs;
  int64_t *out_elems;  // per output, per image
  RtCpuStep *steps;
  int n_steps;
  RtCpuPack *packs;
  int n_packs;
} RtCpuProgram;

// Floats a pack takes in memory (weights, then biases).
int64_t rt_cpu_pack_floats(const RtCpuPack *k);
// k rounded up for a bf16 pack: a whole number of 32-element chunks.
static inline int64_t rt_cpu_bf16_k(int64_t k) { return (k + 31) / 32 * 32; }

// A weight tensor by name ("conv1.weight"), which must have this shape: its floats, or
// NULL with rt_error() saying why (absent, another shape or type). The packer reads
// exactly that many floats.
typedef const float *(*RtCpuWeightFn)(void *ctx, const char *name, int rank,
                                      const int64_t *dims);

// The program as text (runtime/cpu_program.c), as a compiled model carries it, with the
// ISA its kernels need and the input's and each output's per-image (C, H, W). Returns a
// malloc'd string.
char *rt_cpu_program_text(const RtCpuProgram *p, const char *isa, const int64_t in_shape[3],
                          const int64_t (*out_shapes)[3]);
// Parses it, bounding and checking every record; kernels (fn) are left NULL. False, with
// rt_error() set, for a malformed program. isa needs 16 bytes.
bool rt_cpu_program_parse(const char *text, size_t size, RtCpuProgram *p, char *isa,
                          size_t isa_size, int64_t in_shape[3], int64_t (*out_shapes)[3],
                          int max_outputs);
void rt_cpu_program_free(RtCpuProgram *p);

// Whether this CPU runs code of `isa` ("avx512", "avx2", "sse2"): the executor must not
// start kernels that would stop on an illegal instruction.
bool rt_cpu_host_has(const char *isa);
// Whether it has AVX512_BF16 (what --precision bf16 needs).
bool rt_cpu_host_has_bf16(void);

// ---- runtime/cpu_bundle.c

// A CPU model .so, open: its program with kernels bound.
typedef struct {
  void *lib;
  RtCpuProgram program;
  char isa[16];
  int64_t in_shape[3], out_shape[1][3];  // per image (C, H, W)
} RtCpuBundle;

// 1: opened; 0: not a CPU model (not ELF, or no alexc_cpu_program_v1); -1: an error
// (rt_error(): a truncated file, a malformed program, an ISA this CPU lacks).
int rt_cpu_bundle_open(const char *path, RtCpuBundle *b);
void rt_cpu_bundle_close(RtCpuBundle *b);

// Weights from a safetensors file for rt_cpu_load: rt_cpu_weight is the RtCpuWeightFn
// (ctx: the RtCpuWeights), reading each tensor once, checked against the shape asked.
typedef struct {
  RtSafetensors st;
  float **data;
} RtCpuWeights;
bool rt_cpu_weights_open(const char *path, RtCpuWeights *w);
const float *rt_cpu_weight(void *ctx, const char *name, int rank, const int64_t *dims);
void rt_cpu_weights_close(RtCpuWeights *w);

typedef struct RtCpuModel RtCpuModel;

// Packs the program's weights and starts `threads` threads (0: one per core). The
// program must outlive the model. NULL, with rt_error() set, on failure.
RtCpuModel *rt_cpu_load(const RtCpuProgram *p, RtCpuWeightFn get, void *ctx, int threads);
// Runs a batch: x is (batch, in_elems), y[k] (batch, out_elems[k]).
bool rt_cpu_run(RtCpuModel *m, const float *x, int64_t batch, float **y);
// Runs one kernel over items [0, items) on the pool, with no arena and no weights: for
// probes (at least 1024 floats of scratch per thread).
void rt_cpu_parallel(RtCpuModel *m, RtCpuKernel fn, int64_t items, int64_t batch);
// Microseconds each step took in the last rt_cpu_run (n_steps of them), for `bench`.
const double *rt_cpu_step_times(const RtCpuModel *m);
int rt_cpu_threads(const RtCpuModel *m);
void rt_cpu_free(RtCpuModel *m);

#endif
