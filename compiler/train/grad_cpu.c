// The CPU target's training kernels: every op's forward (training mode) and backward in
// float32, fast, with the semantics of the reference (train/grad_ref.c, the oracle):
// dx[j] += dL/dx_j when dx[j] is not NULL, dw and db overwritten (summed over the batch).
//
// Design:
//   - Convolution and fully connected layers are GEMMs. Conv forward per sub-batch of
//     images and group: Y[oc][n,p] = W[oc][K] col[K][n,p], col the im2col of the images;
//     backward data: dcol = W^T dY, then col2im adds into dx; backward weights:
//     dW = dY col^T, one partial per fixed chunk of images, the partials summed in order.
//     Sub-batches put several small images side by side so that N is wide enough for the
//     micro-kernel (conv3 of mini-alexnet has 6x6 outputs).
//   - One SGEMM (BLIS loop order: NC, KC, MC blocks, packed panels, an MR x NR register
//     micro-kernel). The micro-kernel exists in three versions, picked at run time from
//     what the CPU supports: AVX-512 (8 x 32), AVX2+FMA (6 x 16) and generic vectors
//     (4 x 8, any target GCC builds for). ALEXC_CPU_TRAIN_ISA=avx512|avx2|generic picks
//     one (tests use it to run the others on an AVX-512 machine); never more than the CPU
//     has. Weights are packed once per call and shared by every task.
//   - A small pthread pool runs parallel-for over tasks; a task is a fixed piece of work
//     (a sub-batch, a chunk of images, a tile of C) that never depends on the thread
//     count, tasks write disjoint outputs, and every sum over the batch is taken in a
//     fixed order: results are bit-identical for any number of threads and run to run.
//     Every element of a GEMM is summed in the same order wherever its tile falls (the K
//     blocking is global, edge tiles go through the same kernel), so tiling is free.
//   - LRN's backward reads the window sums its forward saved (recomputed when none
//     were), with x^-0.75 as 1/(sqrt(s) sqrt(sqrt(s))) for the paper's beta; max-pool
//     recomputes its argmax (first maximum in scan order, padding never wins, as the
//     reference).
//   - A fused backward chain (conv -> ReLU -> LRN? -> max-pool?) runs image by image in
//     per-thread scratch inside the conv's backward, with the plain ops' own code, so it
//     computes the plain program's bits ("fused chains" below).
//
// Calls are serialised by a lock (the pool and the scratch buffers are shared).
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define GCPU_X86 1
#else
#define GCPU_X86 0
#endif

#include "../alexc.h"

// The loops here are written for GCC's vectoriser, so CMakeLists.txt compiles this file
// with -O3: -O2 (the default RelWithDebInfo build) runs it with its very-cheap cost model
// and most loops would stay scalar (LRN twice as slow). The GEMM micro-kernels are
// intrinsics and do not depend on this.

// Element-wise loops with a version for AVX-512 / AVX2 machines (GCC's function
// multi-versioning, picked once at load time; each version is deterministic).
#if GCPU_X86 && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define MAX_THREADS 64

// ---------------------------------------------------------------- threads

typedef void (*TaskFn)(void *ctx, int task, int tid);

static struct {
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  int spawned;  // workers started, ids 1..spawned
  int want;     // cpu_train_set_threads (0: the default)
  unsigned gen;
  TaskFn fn;
  void *ctx;
  int n_tasks, n_threads;
  atomic_int next;
  int running;  // workers still on the current job
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t op_lock = PTHREAD_MUTEX_INITIALIZER;

void cpu_train_set_threads(int threads) {
  pthread_mutex_lock(&op_lock);
  pool.want = threads < 1 ? 0 : threads > MAX_THREADS ? MAX_THREADS : threads;
  pthread_mutex_unlock(&op_lock);
}

static int default_threads(void) {
  cpu_set_t set;
  int n = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    n = CPU_COUNT(&set);
  if (n < 1)
    n = (int)sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n;
}

static int threads(void) {
  if (!pool.want)
    pool.want = default_threads();
  return pool.want;
}

static void run_tasks(int tid) {
  for (;;) {
    int t = atomic_fetch_add(&pool.next, 1);
    if (t >= pool.n_tasks)
      break;
    pool.fn(pool.ctx, t, tid);
  }
}

static void *worker(void *arg) {
  int id = (int)(intptr_t)arg;
  unsigned seen = 0;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (pool.gen == seen)
      pthread_cond_wait(&pool.wake, &pool.mu);
    seen = pool.gen;
    if (id >= pool.n_threads)
      continue;
    pthread_mutex_unlock(&pool.mu);
    run_tasks(id);
    pthread_mutex_lock(&pool.mu);
    if (--pool.running == 0)
      pthread_cond_signal(&pool.done);
  }
  return NULL;
}

// Runs fn(ctx, task, tid) for task in [0, n), on up to threads() threads; tid < MAX_THREADS
// names the thread (for its scratch buffers). Not reentrant (calls hold op_lock).
static void parallel_for(int n, TaskFn fn, void *ctx) {
  int t = threads() < n ? threads() : n;
  if (t > 1) {
    pthread_mutex_lock(&pool.mu);
    while (pool.spawned < t - 1) {
      pthread_t th;
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      int bad = pthread_create(&th, &attr, worker, (void *)(intptr_t)(pool.spawned + 1));
      pthread_attr_destroy(&attr);
      if (bad)
        break;
      pool.spawned++;
    }
    if (t > pool.spawned + 1)
      t = pool.spawned + 1;
    pthread_mutex_unlock(&pool.mu);
  }
  if (t <= 1) {
    for (int i = 0; i < n; i++)
      fn(ctx, i, 0);
    return;
  }
  pthread_mutex_lock(&pool.mu);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.n_tasks = n;
  pool.n_threads = t;
  atomic_store(&pool.next, 0);
  pool.running = t - 1;
  pool.gen++;
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.mu);
  run_tasks(0);
  pthread_mutex_lock(&pool.mu);
  while (pool.running)
    pthread_cond_wait(&pool.done, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
}

// ---------------------------------------------------------------- scratch memory

enum { S_PACKA, S_PACKB, S_COL, S_DY, S_OUT, S_CHAIN, N_SLOTS };

typedef struct {
  float *p;
  size_t n;
} Buf;

static Buf scratch_bufs[MAX_THREADS][N_SLOTS];
static Buf shared_bufs[3];  // packed weights, dW partials, bias sums (used under op_lock)

static float *grow(Buf *b, size_t n) {
  if (b->n < n) {
    free(b->p);
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    b->p = aligned_alloc(64, bytes);
    if (!b->p) {
      fprintf(stderr, "alexc: out of memory (%zu bytes for the CPU training kernels)\n", bytes);
      abort();
    }
    b->n = n;
  }
  return b->p;
}

static float *scratch(int tid, int slot, size_t n) { return grow(&scratch_bufs[tid][slot], n); }

// ---------------------------------------------------------------- SGEMM

// A matrix view: element (i, j) at p[i * rs + j * cs].
typedef struct {
  const float *p;
  ptrdiff_t rs, cs;
} Mat;

// C (MR x NR, row stride ldc) = [C +] A panel (kc x MR) * B panel (kc x NR).
typedef void (*KernFn)(int kc, const float *a, const float *b, float *c, ptrdiff_t ldc, int acc);

typedef struct {
  const char *name;
  int mr, nr;
  KernFn kern;
} Isa;

#define KC 256
#define MC 96  // a multiple of every MR (8, 6, 4)
#define NC 512
#define MR_MAX 8
#define NR_MAX 32

#if GCPU_X86
__attribute__((target("avx512f,avx2,fma"))) static void kern_avx512(int kc, const float *a,
                                                                      const float *b, float *c,
                                                                      ptrdiff_t ldc, int acc) {
  __m512 r[8][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++)
    r[i][0] = r[i][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
      __m512 ai = _mm512_set1_ps(a[i]);
      r[i][0] = _mm512_fmadd_ps(ai, b0, r[i][0]);
      r[i][1] = _mm512_fmadd_ps(ai, b1, r[i][1]);
    }
    a += 8;
    b += 32;
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    float *ci = c + i * ldc;
    if (acc) {
      r[i][0] = _mm512_add_ps(_mm512_loadu_ps(ci), r[i][0]);
      r[i][1] = _mm512_add_ps(_mm512_loadu_ps(ci + 16), r[i][1]);
    }
    _mm512_storeu_ps(ci, r[i][0]);
    _mm512_storeu_ps(ci + 16, r[i][1]);
  }
}

__attribute__((target("avx2,fma"))) static void kern_avx2(int kc, const float *a, const float *b,
                                                          float *c, ptrdiff_t ldc, int acc) {
  __m256 r[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; i++)
    r[i][0] = r[i][1] = _mm256_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      r[i][0] = _mm256_fmadd_ps(ai, b0, r[i][0]);
      r[i][1] = _mm256_fmadd_ps(ai, b1, r[i][1]);
    }
    a += 6;
    b += 16;
  }
#pragma GCC unroll 6
  for (int i = 0; i < 6; i++) {
    float *ci = c + i * ldc;
    if (acc) {
      r[i][0] = _mm256_add_ps(_mm256_loadu_ps(ci), r[i][0]);
      r[i][1] = _mm256_add_ps(_mm256_loadu_ps(ci + 8), r[i][1]);
    }
    _mm256_storeu_ps(ci, r[i][0]);
    _mm256_storeu_ps(ci + 8, r[i][1]);
  }
}
#endif

// Generic vectors: 4 x 8 with 16-byte vectors, which GCC lowers for any target.
typedef float V4 __attribute__((vector_size(16)));
typedef float V4u __attribute__((vector_size(16), aligned(4)));
typedef int V4i __attribute__((vector_size(16)));

static void kern_generic(int kc, const float *a, const float *b, float *c, ptrdiff_t ldc,
                         int acc) {
  V4 r[4][2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++)
    r[i][0] = r[i][1] = (V4){0, 0, 0, 0};
  for (int k = 0; k < kc; k++) {
    V4 b0 = *(const V4 *)b, b1 = *(const V4 *)(b + 4);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
      r[i][0] += a[i] * b0;
      r[i][1] += a[i] * b1;
    }
    a += 4;
    b += 8;
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    V4u *ci = (V4u *)(c + i * ldc);
    if (acc) {
      r[i][0] = ci[0] + r[i][0];
      r[i][1] = ci[1] + r[i][1];
    }
    ci[0] = r[i][0];
    ci[1] = r[i][1];
  }
}

static Isa isa;

static void pick_isa(void) {
  if (isa.kern)
    return;
  const char *want = getenv("ALEXC_CPU_TRAIN_ISA");
  isa = (Isa){"generic", 4, 8, kern_generic};
#if GCPU_X86
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (want && !strcmp(want, "generic"))
    return;
  if (avx512 && !(want && !strcmp(want, "avx2")))
    isa = (Isa){"avx512", 8, 32, kern_avx512};
  else if (avx2)
    isa = (Isa){"avx2", 6, 16, kern_avx2};
#else
  (void)want;
#endif
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int round_up(int a, int m) { return (a + m - 1) / m * m; }

// Packs rows [i0, i0 + m) x columns [k0, k0 + kc) of A as MR-row panels (kc x MR each,
// zero-padded rows).
static void pack_a(Mat A, int i0, int m, int k0, int kc, float *dst) {
  const int MR = isa.mr;
  for (int ir = 0; ir < m; ir += MR, dst += (size_t)MR * kc) {
    int mr = imin(MR, m - ir);
    const float *src = A.p + (ptrdiff_t)(i0 + ir) * A.rs + (ptrdiff_t)k0 * A.cs;
    if (A.rs == 1) {
      for (int k = 0; k < kc; k++) {
        const float *s = src + (ptrdiff_t)k * A.cs;
        float *d = dst + (size_t)k * MR;
        int i = 0;
        for (; i < mr; i++)
          d[i] = s[i];
        for (; i < MR; i++)
          d[i] = 0;
      }
    } else {
      for (int i = 0; i < mr; i++) {
        const float *s = src + (ptrdiff_t)i * A.rs;
        for (int k = 0; k < kc; k++)
          dst[(size_t)k * MR + i] = s[(ptrdiff_t)k * A.cs];
      }
      for (int i = mr; i < MR; i++)
        for (int k = 0; k < kc; k++)
          dst[(size_t)k * MR + i] = 0;
    }
  }
}

// Packs rows [k0, k0 + kc) x columns [j0, j0 + n) of B as NR-column panels (kc x NR).
static void pack_b(Mat B, int k0, int kc, int j0, int n, float *dst) {
  const int NR = isa.nr;
  for (int jr = 0; jr < n; jr += NR, dst += (size_t)NR * kc) {
    int nr = imin(NR, n - jr);
    const float *src = B.p + (ptrdiff_t)k0 * B.rs + (ptrdiff_t)(j0 + jr) * B.cs;
    if (B.cs == 1) {
      for (int k = 0; k < kc; k++) {
        const float *s = src + (ptrdiff_t)k * B.rs;
        float *d = dst + (size_t)k * NR;
        if (nr == NR) {
          memcpy(d, s, NR * sizeof(float));
        } else {
          int j = 0;
          for (; j < nr; j++)
            d[j] = s[j];
          for (; j < NR; j++)
            d[j] = 0;
        }
      }
    } else if (B.rs == 1) {  // B^T stored: a transpose, 4 x 4 blocks in vector registers
      int j0 = 0;
      for (; j0 + 4 <= nr; j0 += 4) {
        const float *s0 = src + (ptrdiff_t)j0 * B.cs, *s1 = s0 + B.cs, *s2 = s1 + B.cs,
                    *s3 = s2 + B.cs;
        int k = 0;
        for (; k + 4 <= kc; k += 4) {
          V4 r0 = *(const V4u *)(s0 + k), r1 = *(const V4u *)(s1 + k),
             r2 = *(const V4u *)(s2 + k), r3 = *(const V4u *)(s3 + k);
          V4 t0 = __builtin_shufflevector(r0, r1, 0, 4, 1, 5),
             t1 = __builtin_shufflevector(r0, r1, 2, 6, 3, 7),
             t2 = __builtin_shufflevector(r2, r3, 0, 4, 1, 5),
             t3 = __builtin_shufflevector(r2, r3, 2, 6, 3, 7);
          float *d = dst + (size_t)k * NR + j0;
          *(V4u *)d = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
          *(V4u *)(d + NR) = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
          *(V4u *)(d + 2 * NR) = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
          *(V4u *)(d + 3 * NR) = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
        }
        for (; k < kc; k++) {
          float *d = dst + (size_t)k * NR + j0;
          d[0] = s0[k];
          d[1] = s1[k];
          d[2] = s2[k];
          d[3] = s3[k];
        }
      }
      for (int k = 0; k < kc; k++)
        for (int j = j0; j < NR; j++)
          dst[(size_t)k * NR + j] = j < nr ? src[(ptrdiff_t)j * B.cs + k] : 0.0f;
    } else {
      for (int j = 0; j < nr; j++) {
        const float *s = src + (ptrdiff_t)j * B.cs;
        for (int k = 0; k < kc; k++)
          dst[(size_t)k * NR + j] = s[(ptrdiff_t)k * B.rs];
      }
      for (int j = nr; j < NR; j++)
        for (int k = 0; k < kc; k++)
          dst[(size_t)k * NR + j] = 0;
    }
  }
}

// The size of A (M x K) packed whole, and the packing: KC block pc at pc * Mp, in it
// MR-row panel r at r * kc.
static size_t packed_a_size(int M, int K) { return (size_t)round_up(M, isa.mr) * K; }

// Packs KC block `blk` of A (M x K) into its place in the whole packing.
static void pack_a_whole_block(Mat A, int M, int K, int blk, float *dst) {
  int pc = blk * KC, kc = imin(KC, K - pc);
  pack_a(A, 0, M, pc, kc, dst + (size_t)pc * round_up(M, isa.mr));
}

// C (M x N, row stride ldc) = [C +] A (M x K) * B (K x N). apk: A packed whole
// (pack_a_whole_block), or NULL to pack here. Single-threaded; tid picks the scratch.
static void gemm(int M, int N, int K, Mat A, const float *apk, Mat B, float *C, ptrdiff_t ldc,
                 bool acc, int tid) {
  const int MR = isa.mr, NR = isa.nr, Mp = round_up(M, MR);
  if (M <= 0 || N <= 0)
    return;
  if (K <= 0) {
    for (int i = 0; i < M && !acc; i++)
      memset(C + (ptrdiff_t)i * ldc, 0, (size_t)N * sizeof(float));
    return;
  }
  float *pb = scratch(tid, S_PACKB, (size_t)KC * round_up(imin(NC, N), NR));
  float *pa = apk ? NULL : scratch(tid, S_PACKA, (size_t)KC * MC);
  float tile[MR_MAX * NR_MAX] __attribute__((aligned(64)));
  for (int jc = 0; jc < N; jc += NC) {
    int nc = imin(NC, N - jc);
    for (int pc = 0; pc < K; pc += KC) {
      int kc = imin(KC, K - pc);
      int a_ = acc || pc > 0;
      pack_b(B, pc, kc, jc, nc, pb);
      for (int ic = 0; ic < M; ic += MC) {
        int mc = imin(MC, M - ic);
        const float *pan;
        if (apk) {
          pan = apk + (size_t)pc * Mp + (size_t)ic * kc;
        } else {
          pack_a(A, ic, mc, pc, kc, pa);
          pan = pa;
        }
        for (int jr = 0; jr < nc; jr += NR) {
          int nr = imin(NR, nc - jr);
          const float *bp = pb + (size_t)jr * kc;
          for (int ir = 0; ir < mc; ir += MR) {
            int mr = imin(MR, mc - ir);
            const float *ap = pan + (size_t)ir * kc;
            float *c = C + (ptrdiff_t)(ic + ir) * ldc + jc + jr;
            if (mr == MR && nr == NR) {
              isa.kern(kc, ap, bp, c, ldc, a_);
            } else {
              isa.kern(kc, ap, bp, tile, NR, 0);
              for (int i = 0; i < mr; i++)
                for (int j = 0; j < nr; j++)
                  c[(ptrdiff_t)i * ldc + j] =
                      a_ ? c[(ptrdiff_t)i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
            }
          }
        }
      }
    }
  }
}

// A GEMM cut into fixed tiles of C (TM x TN), run in parallel.
typedef struct {
  int M, N, K, tm, tn, tiles_n;
  Mat A, B;
  float *C;
  ptrdiff_t ldc;
  bool acc;
} ParGemm;

static void par_gemm_task(void *ctx, int t, int tid) {
  const ParGemm *p = ctx;
  int i0 = t / p->tiles_n * p->tm, j0 = t % p->tiles_n * p->tn;
  Mat A = {p->A.p + (ptrdiff_t)i0 * p->A.rs, p->A.rs, p->A.cs};
  Mat B = {p->B.p + (ptrdiff_t)j0 * p->B.cs, p->B.rs, p->B.cs};
  gemm(imin(p->tm, p->M - i0), imin(p->tn, p->N - j0), p->K, A, NULL, B,
       p->C + (ptrdiff_t)i0 * p->ldc + j0, p->ldc, p->acc, tid);
}

static void par_gemm(int M, int N, int K, Mat A, Mat B, float *C, ptrdiff_t ldc, bool acc) {
  ParGemm p = {M, N, K, 256, 512, 0, A, B, C, ldc, acc};
  p.tiles_n = (N + p.tn - 1) / p.tn;
  int tiles = (M + p.tm - 1) / p.tm * p.tiles_n;
  parallel_for(tiles, par_gemm_task, &p);
}

// Packs A (M x K) whole into buf, one task per KC block.
typedef struct {
  Mat A;
  int M, K, groups;
  ptrdiff_t group_rs;  // A of group g starts at A.p + g * group_rs... (in elements)
  size_t group_size;   // packed floats per group
  float *dst;
} PackJob;

static void pack_task(void *ctx, int t, int tid) {
  const PackJob *j = ctx;
  (void)tid;
  int blocks = (j->K + KC - 1) / KC, g = t / blocks, blk = t % blocks;
  Mat A = {j->A.p + g * j->group_rs, j->A.rs, j->A.cs};
  pack_a_whole_block(A, j->M, j->K, blk, j->dst + g * j->group_size);
}

// Packs `groups` matrices A_g (M x K, A_g at A.p + g * group_rs) into a shared buffer.
static float *pack_groups(Mat A, int M, int K, int groups, ptrdiff_t group_rs, int which) {
  size_t size = packed_a_size(M, K);
  float *dst = grow(&shared_bufs[which], size * groups);
  PackJob j = {A, M, K, groups, group_rs, size, dst};
  parallel_for(groups * ((K + KC - 1) / KC), pack_task, &j);
  return dst;
}

// ---------------------------------------------------------------- elementwise helpers

static Shape in_shape(const OpCall *c, int j) { return c->g->nodes[c->n->inputs[j]].out; }

#define EW_CHUNK 32768

typedef struct {
  const OpCall *c;
  const float *x, *dy;
  float *y, *dx;
  int64_t total;
  double scale;
} Ew;

static int ew_tasks(int64_t total) { return (int)((total + EW_CHUNK - 1) / EW_CHUNK); }

// The loops on restrict pointers, so that GCC vectorises them (kept out of line: inlined,
// GCC 12 loses the restrict and emits a scalar loop with a mispredicted branch).
#define LOOP __attribute__((noinline))

LOOP static void relu_fwd_loop(const float *restrict x, float *restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = x[i] > 0 ? x[i] : 0.0f;
}

// Vector extensions (SSE2 and up, at any -O level: GCC 12 vectorises this select only at
// -O3).
LOOP static void relu_bwd_loop(const float *restrict x, const float *restrict dy, float *restrict dx,
                               int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    V4 xv = *(const V4u *)(x + i), g = *(const V4u *)(dy + i);
    V4i keep = xv > (V4){0, 0, 0, 0};
    *(V4u *)(dx + i) = *(const V4u *)(dx + i) + (V4)((V4i)g & keep);
  }
  for (; i < n; i++) {
    float g = dy[i];
    dx[i] += x[i] > 0 ? g : 0.0f;
  }
}

// A fused ReLU's backward on one value: 0 + g where the ReLU's output y > 0, as
// relu_bwd_loop adds it to a zeroed gradient (so a -0 becomes +0 the same way).
// Vector masks, as relu_bwd_loop: a branch per element is mispredicted half the time.
static inline float relu_keep(float y, float g) { return y > 0 ? 0.0f + g : 0.0f; }

static inline V4 relu_keep4(const float *y, const float *g) {
  V4 yv = *(const V4u *)y, gv = *(const V4u *)g;  // unaligned loads
  V4i keep = yv > (V4){0, 0, 0, 0};
  return (V4){0, 0, 0, 0} + (V4)((V4i)gv & keep);
}

LOOP static void relu_keep_span(const float *restrict y, const float *dy, float *out,
                                int64_t n) {  // out may be dy (in place)
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    *(V4u *)(out + i) = relu_keep4(y + i, dy + i);
  for (; i < n; i++)
    out[i] = relu_keep(y[i], dy[i]);
}

LOOP static void add_loop(const float *restrict src, float *restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    dst[i] += src[i];
}

// Dropped elements are 0 (never 0 * inf); kept ones x * scale rounded once, as the reference.
LOOP static void dropout_loop(const float *restrict x, const uint8_t *restrict m, double scale,
                         float *restrict y, bool add, int64_t n) {
  float fs = (float)scale;
  if ((double)fs == scale) {  // 1/(1-p) exact in float (p = 0.5): x * scale needs no double
    for (int64_t i = 0; i < n; i++) {
      float v = x[i] * fs, o = add ? y[i] : 0.0f;
      y[i] = m[i] ? o + v : o;
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float v = m[i] ? (float)(x[i] * scale) : 0.0f;
    y[i] = add ? y[i] + v : v;
  }
}

#define EW_RANGE                                                                  \
  const Ew *e = ctx;                                                              \
  (void)tid;                                                                      \
  int64_t i0 = (int64_t)t * EW_CHUNK, n = e->total - i0 < EW_CHUNK ? e->total - i0 : EW_CHUNK

static void relu_fwd_task(void *ctx, int t, int tid) {
  EW_RANGE;
  relu_fwd_loop(e->x + i0, e->y + i0, n);
}

static void relu_bwd_task(void *ctx, int t, int tid) {
  EW_RANGE;
  relu_bwd_loop(e->x + i0, e->dy + i0, e->dx + i0, n);
}

static void dropout_fwd_task(void *ctx, int t, int tid) {
  EW_RANGE;
  if (e->c->mask)
    dropout_loop(e->x + i0, e->c->mask + i0, e->scale, e->y + i0, false, n);
  else
    memcpy(e->y + i0, e->x + i0, (size_t)n * sizeof(float));
}

static void dropout_bwd_task(void *ctx, int t, int tid) {
  EW_RANGE;
  if (e->c->mask)
    dropout_loop(e->dy + i0, e->c->mask + i0, e->scale, e->dx + i0, true, n);
  else
    add_loop(e->dy + i0, e->dx + i0, n);
}

// A fused ReLU's backward (OpCall.relu_y): dy = 0 + (dy where relu_y > 0) in place, exactly
// what relu_bwd_loop adds to a zeroed gradient, so fused and plain programs agree to the
// bit; the op's backward then reads it as the plain program's gradient.
static void relu_mask_task(void *ctx, int t, int tid) {
  EW_RANGE;
  relu_keep_span(e->c->relu_y + i0, e->dy + i0, e->y + i0, n);
}

static void copy_task(void *ctx, int t, int tid) {
  EW_RANGE;
  memcpy(e->y + i0, e->x + i0, (size_t)n * sizeof(float));
}

static void add_task(void *ctx, int t, int tid) {
  EW_RANGE;
  add_loop(e->dy + i0, e->dx + i0, n);
}

// ---------------------------------------------------------------- convolution

typedef struct {
  const OpCall *c;
  const float *x, *dy;
  float *y, *dx, *part;  // part: nchunk partial dW, or dw itself when nchunk == 1
  int C, H, W, OC, OH, OW, k, s, pt, pl, G, ipg, opg, Kg, P;  // pt, pl: top, left pads
  int nb, nsub, nchunk;  // images per sub-batch, sub-batches, dW chunks
  const float *wpk;      // packed W_g (forward) or W_g^T (backward data), per group
  size_t wpk_size;
  size_t w_elems;
} Conv;

static Conv conv_setup(const OpCall *c) {
  const ConvAttrs *a = &c->n->conv;
  Shape in = in_shape(c, 0), out = c->n->out;
  Conv v = {.c = c, .x = c->x[0], .C = (int)in.c, .H = (int)in.h, .W = (int)in.w,
            .OC = a->out, .OH = (int)out.h, .OW = (int)out.w, .k = a->kernel, .s = a->stride,
            .pt = a->pad.top, .pl = a->pad.left, .G = a->groups};
  v.ipg = v.C / v.G;
  v.opg = v.OC / v.G;
  v.Kg = v.ipg * v.k * v.k;
  v.P = v.OH * v.OW;
  // Images side by side until N = nb * P is at least 256 wide (a sub-batch).
  v.nb = imin(c->batch, (256 + v.P - 1) / v.P);
  if (v.nb < 1)
    v.nb = 1;
  v.nsub = (c->batch + v.nb - 1) / v.nb;
  v.nchunk = imin(v.nsub, 16);
  v.w_elems = (size_t)v.OC * v.Kg;
  return v;
}

static int sub_first(const Conv *v, int sb) { return sb * v->nb; }
static int sub_count(const Conv *v, int sb) { return imin(v->nb, v->c->batch - sb * v->nb); }

// col[(ic*k + ky)*k + kx][img*P + oy*OW + ox] = x[n0 + img][g*ipg + ic][oy*s - pt + ky]
// [ox*s - pl + kx], 0 in the padding.
static void im2col(const Conv *v, int n0, int cnt, int g, float *col) {
  const int N = cnt * v->P, k = v->k, s = v->s, pt = v->pt, pl = v->pl, W = v->W, H = v->H;
  const int OW = v->OW;
  for (int ic = 0; ic < v->ipg; ic++)
    for (int ky = 0; ky < k; ky++)
      for (int kx = 0; kx < k; kx++) {
        float *row = col + (size_t)((ic * k + ky) * k + kx) * N;
        int t = pl - kx, u = W - 1 + pl - kx;
        int ox0 = t <= 0 ? 0 : (t + s - 1) / s;
        int ox1 = u < 0 ? 0 : imin(OW, u / s + 1);
        if (ox1 < ox0)
          ox1 = ox0;
        if (ox0 > OW)
          ox0 = ox1 = OW;
        for (int img = 0; img < cnt; img++) {
          const float *src = v->x + ((size_t)(n0 + img) * v->C + g * v->ipg + ic) * H * W;
          float *dst = row + (size_t)img * v->P;
          for (int oy = 0; oy < v->OH; oy++) {
            int iy = oy * s - pt + ky;
            float *d = dst + oy * OW;
            if (iy < 0 || iy >= H) {
              memset(d, 0, OW * sizeof(float));
              continue;
            }
            for (int ox = 0; ox < ox0; ox++)
              d[ox] = 0;
            const float *sr = src + iy * W - pl + kx;
            if (s == 1)
              memcpy(d + ox0, sr + ox0, (size_t)(ox1 - ox0) * sizeof(float));
            else
              for (int ox = ox0; ox < ox1; ox++)
                d[ox] = sr[ox * s];
            for (int ox = ox1; ox < OW; ox++)
              d[ox] = 0;
          }
        }
      }
}

// The adjoint of im2col: dx[...] += dcol[...] at every tap inside the input.
static void col2im_add(const Conv *v, int n0, int cnt, int g, const float *col) {
  const int N = cnt * v->P, k = v->k, s = v->s, pt = v->pt, pl = v->pl, W = v->W, H = v->H;
  const int OW = v->OW;
  for (int img = 0; img < cnt; img++)
    for (int ic = 0; ic < v->ipg; ic++) {
      float *dst = v->dx + ((size_t)(n0 + img) * v->C + g * v->ipg + ic) * H * W;
      for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
          const float *row = col + (size_t)((ic * k + ky) * k + kx) * N + (size_t)img * v->P;
          int t = pl - kx, u = W - 1 + pl - kx;
          int ox0 = t <= 0 ? 0 : (t + s - 1) / s;
          int ox1 = u < 0 ? 0 : imin(OW, u / s + 1);
          for (int oy = 0; oy < v->OH; oy++) {
            int iy = oy * s - pt + ky;
            if (iy < 0 || iy >= H)
              continue;
            float *d = dst + iy * W - pl + kx;
            const float *r = row + oy * OW;
            if (s == 1)
              for (int ox = ox0; ox < ox1; ox++)
                d[ox] += r[ox];
            else
              for (int ox = ox0; ox < ox1; ox++)
                d[ox * s] += r[ox];
          }
        }
    }
}

static void conv_fwd_task(void *ctx, int t, int tid) {
  const Conv *v = ctx;
  int sb = t / v->G, g = t % v->G, n0 = sub_first(v, sb), cnt = sub_count(v, sb);
  int N = cnt * v->P;
  float *col = scratch(tid, S_COL, (size_t)v->Kg * N);
  im2col(v, n0, cnt, g, col);
  Mat A = {NULL, 0, 0}, B = {col, N, 1};
  const float *apk = v->wpk + g * v->wpk_size;
  const float *bias = v->c->b;
  if (cnt == 1) {
    float *y = v->y + ((size_t)n0 * v->OC + g * v->opg) * v->P;
    gemm(v->opg, N, v->Kg, A, apk, B, y, v->P, false, tid);
    for (int oc = 0; oc < v->opg && bias; oc++) {
      float bv = bias[g * v->opg + oc], *yr = y + (size_t)oc * v->P;
      for (int p = 0; p < v->P; p++)
        yr[p] += bv;
    }
  } else {
    float *out = scratch(tid, S_OUT, (size_t)v->opg * N);
    gemm(v->opg, N, v->Kg, A, apk, B, out, N, false, tid);
    for (int img = 0; img < cnt; img++)
      for (int oc = 0; oc < v->opg; oc++) {
        float bv = bias ? bias[g * v->opg + oc] : 0.0f;
        const float *o = out + (size_t)oc * N + (size_t)img * v->P;
        float *yr = v->y + ((size_t)(n0 + img) * v->OC + g * v->opg + oc) * v->P;
        if (bias)
          for (int p = 0; p < v->P; p++)
            yr[p] = o[p] + bv;
        else
          memcpy(yr, o, (size_t)v->P * sizeof(float));
      }
  }
}

static void conv_forward(const OpCall *c, float *y) {
  Conv v = conv_setup(c);
  v.y = y;
  v.wpk_size = packed_a_size(v.opg, v.Kg);
  v.wpk = pack_groups((Mat){c->w, v.Kg, 1}, v.opg, v.Kg, v.G, (ptrdiff_t)v.opg * v.Kg, 0);
  parallel_for(v.nsub * v.G, conv_fwd_task, &v);
}

// Sub-batch sb (of chunk ch, whose first is sb0), group g, from dY (the group's opg rows
// of the sub-batch's images side by side): the chunk's dW partial += dY col^T, and
// dx += col2im(W^T dY).
static void conv_bwd_sub(const Conv *v, int ch, int sb, int sb0, int g, Mat dY, int tid) {
  int n0 = sub_first(v, sb), cnt = sub_count(v, sb), N = cnt * v->P;
  float *col = scratch(tid, S_COL, (size_t)v->Kg * N);
  if (v->part) {
    im2col(v, n0, cnt, g, col);
    float *dw = v->part + (v->nchunk > 1 ? (size_t)ch * v->w_elems : 0) +
                (size_t)g * v->opg * v->Kg;
    gemm(v->opg, v->Kg, N, dY, NULL, (Mat){col, 1, N}, dw, v->Kg, sb > sb0, tid);
  }
  if (v->dx) {
    gemm(v->Kg, N, v->opg, (Mat){NULL, 0, 0}, v->wpk + g * v->wpk_size, dY, col, N, false, tid);
    col2im_add(v, n0, cnt, g, col);
  }
}

static int chunk_first(const Conv *v, int ch) { return (int)((int64_t)ch * v->nsub / v->nchunk); }

// Chunk `ch` of the backward: sub-batches [first, end), group g. dW partial of the chunk
// (dY col^T, summed over its sub-batches in order), and dx += col2im(W^T dY).
static void conv_bwd_task(void *ctx, int t, int tid) {
  const Conv *v = ctx;
  int ch = t / v->G, g = t % v->G, sb0 = chunk_first(v, ch), sb1 = chunk_first(v, ch + 1);
  for (int sb = sb0; sb < sb1; sb++) {
    int n0 = sub_first(v, sb), cnt = sub_count(v, sb), N = cnt * v->P;
    Mat dY;
    if (cnt == 1) {
      dY = (Mat){v->dy + ((size_t)n0 * v->OC + g * v->opg) * v->P, v->P, 1};
    } else {  // the sub-batch's images side by side
      float *dyb = scratch(tid, S_DY, (size_t)v->opg * N);
      for (int oc = 0; oc < v->opg; oc++)
        for (int img = 0; img < cnt; img++)
          memcpy(dyb + (size_t)oc * N + (size_t)img * v->P,
                 v->dy + ((size_t)(n0 + img) * v->OC + g * v->opg + oc) * v->P,
                 (size_t)v->P * sizeof(float));
      dY = (Mat){dyb, N, 1};
    }
    conv_bwd_sub(v, ch, sb, sb0, g, dY, tid);
  }
}

typedef struct {
  const float *part;
  float *dst;
  int64_t n;
  int parts;
} Reduce;

static void reduce_task(void *ctx, int t, int tid) {
  const Reduce *r = ctx;
  (void)tid;
  int64_t i0 = (int64_t)t * EW_CHUNK, i1 = i0 + EW_CHUNK < r->n ? i0 + EW_CHUNK : r->n;
  for (int64_t i = i0; i < i1; i++) {
    float s = r->part[i];
    for (int p = 1; p < r->parts; p++)
      s += r->part[(size_t)p * r->n + i];
    r->dst[i] = s;
  }
}

// db[o] = sum over images and positions of dy[img][o][p], in double, in order.
typedef struct {
  const float *dy;
  float *db;
  int batch, channels, plane;
} BiasGrad;

// Sum of a plane: 16 float lanes (vectorised), then the lanes in double; a fixed order.
static double plane_sum(const float *restrict r, int n) {
  float lane[16] = {0};
  int p = 0;
  for (; p + 16 <= n; p += 16)
    for (int l = 0; l < 16; l++)
      lane[l] += r[p + l];
  double acc = 0;
  for (int l = 0; l < 16; l++)
    acc += lane[l];
  for (; p < n; p++)
    acc += r[p];
  return acc;
}

static void bias_task(void *ctx, int t, int tid) {
  const BiasGrad *b = ctx;
  (void)tid;
  for (int o = t * 64; o < imin(b->channels, t * 64 + 64); o++) {
    double acc = 0;
    for (int i = 0; i < b->batch; i++)
      acc += b->plane == 1 ? b->dy[(size_t)i * b->channels + o]
                           : plane_sum(b->dy + ((size_t)i * b->channels + o) * b->plane, b->plane);
    b->db[o] = (float)acc;
  }
}

static void bias_grad(const float *dy, float *db, int batch, int channels, int plane) {
  BiasGrad b = {dy, db, batch, channels, plane};
  parallel_for((channels + 63) / 64, bias_task, &b);
}

static void conv_backward(const OpCall *c, const float *dy, float *dx, float *dw, float *db) {
  Conv v = conv_setup(c);
  v.dy = dy;
  v.dx = dx;
  if (dw)
    v.part = v.nchunk > 1 ? grow(&shared_bufs[1], (size_t)v.nchunk * v.w_elems) : dw;
  if (dx) {
    v.wpk_size = packed_a_size(v.Kg, v.opg);
    // W_g^T: element (kidx, oc) at w[(g*opg + oc)*Kg + kidx].
    v.wpk = pack_groups((Mat){c->w, 1, v.Kg}, v.Kg, v.opg, v.G, (ptrdiff_t)v.opg * v.Kg, 0);
  }
  if (dw || dx)
    parallel_for(v.nchunk * v.G, conv_bwd_task, &v);
  if (dw && v.nchunk > 1) {
    Reduce r = {v.part, dw, (int64_t)v.w_elems, v.nchunk};
    parallel_for(ew_tasks(r.n), reduce_task, &r);
  }
  if (db)
    bias_grad(dy, db, c->batch, v.OC, v.P);
}

// ---------------------------------------------------------------- fully connected

static void fc_forward(const OpCall *c, float *y) {
  int in = (int)shape_elems(in_shape(c, 0)), out = c->n->fc.out, B = c->batch;
  par_gemm(B, out, in, (Mat){c->x[0], in, 1}, (Mat){c->w, 1, in}, y, out, false);
  if (c->b)
    for (int i = 0; i < B; i++)
      for (int o = 0; o < out; o++)
        y[(size_t)i * out + o] += c->b[o];
}

static void fc_backward(const OpCall *c, const float *dy, float *dx, float *dw, float *db) {
  int in = (int)shape_elems(in_shape(c, 0)), out = c->n->fc.out, B = c->batch;
  if (dw)  // dW = dY^T X
    par_gemm(out, in, B, (Mat){dy, 1, out}, (Mat){c->x[0], in, 1}, dw, in, false);
  if (dx)  // dX += dY W
    par_gemm(B, in, out, (Mat){dy, out, 1}, (Mat){c->w, in, 1}, dx, in, true);
  if (db)
    bias_grad(dy, db, B, out, 1);
}

// ---------------------------------------------------------------- LRN

typedef struct {
  const OpCall *c;
  const float *x, *y, *dy;
  float *out, *dx;
  float *saved;  // window sums of squares, (batch, C, P): written forward, read backward
  int C, P, per_group, half;
  float alpha, k, beta;
  bool b075;
} Lrn;

// s^-0.75 = 1 / (sqrt(s) sqrt(sqrt(s))): IEEE square roots and division, the same in
// every version (GCC does not vectorise sqrtf while errno is on).
#if GCPU_X86
__attribute__((target("avx512f"))) static void pow075_avx512(const float *sum, float *dst,
                                                               int n, float k, float alpha) {
  int p = 0;
  __m512 vk = _mm512_set1_ps(k), va = _mm512_set1_ps(alpha), one = _mm512_set1_ps(1.0f);
  for (; p + 16 <= n; p += 16) {
    __m512 s = _mm512_add_ps(vk, _mm512_mul_ps(va, _mm512_loadu_ps(sum + p)));
    __m512 r = _mm512_sqrt_ps(s);
    _mm512_storeu_ps(dst + p, _mm512_div_ps(one, _mm512_mul_ps(r, _mm512_sqrt_ps(r))));
  }
  for (; p < n; p++) {
    float r = sqrtf(k + alpha * sum[p]);
    dst[p] = 1.0f / (r * sqrtf(r));
  }
}

__attribute__((target("avx2"))) static void pow075_avx2(const float *sum, float *dst, int n,
                                                         float k, float alpha) {
  int p = 0;
  __m256 vk = _mm256_set1_ps(k), va = _mm256_set1_ps(alpha), one = _mm256_set1_ps(1.0f);
  for (; p + 8 <= n; p += 8) {
    __m256 s = _mm256_add_ps(vk, _mm256_mul_ps(va, _mm256_loadu_ps(sum + p)));
    __m256 r = _mm256_sqrt_ps(s);
    _mm256_storeu_ps(dst + p, _mm256_div_ps(one, _mm256_mul_ps(r, _mm256_sqrt_ps(r))));
  }
  for (; p < n; p++) {
    float r = sqrtf(k + alpha * sum[p]);
    dst[p] = 1.0f / (r * sqrtf(r));
  }
}
#endif

// dst = (k + alpha sum)^-beta
static void lrn_scale(const Lrn *l, const float *sum, float *dst, int n) {
  if (l->b075) {
#if GCPU_X86
    if (isa.mr == 8) {
      pow075_avx512(sum, dst, n, l->k, l->alpha);
      return;
    }
    if (isa.mr == 6) {
      pow075_avx2(sum, dst, n, l->k, l->alpha);
      return;
    }
#endif
    for (int p = 0; p < n; p++) {
      float r = sqrtf(l->k + l->alpha * sum[p]);
      dst[p] = 1.0f / (r * sqrtf(r));
    }
  } else {
    for (int p = 0; p < n; p++)
      dst[p] = powf(l->k + l->alpha * sum[p], -l->beta);
  }
}

static void lrn_window(const Lrn *l, int ch, int *lo, int *hi) {
  int g0 = ch / l->per_group * l->per_group, g1 = g0 + l->per_group - 1;
  *lo = ch - l->half < g0 ? g0 : ch - l->half;
  *hi = ch + l->half > g1 ? g1 : ch + l->half;
}

// Window sums of squares for channel ch: sum[p] = sum_{j in W(ch)} x_j[p]^2.
static void lrn_sum(const Lrn *l, const float *x, int ch, float *sum) {
  int lo, hi;
  lrn_window(l, ch, &lo, &hi);
  for (int p = 0; p < l->P; p++)
    sum[p] = 0;
  for (int j = lo; j <= hi; j++) {
    const float *xj = x + (size_t)j * l->P;
    for (int p = 0; p < l->P; p++)
      sum[p] += xj[p] * xj[p];
  }
}

// One image's forward, y = x (k + alpha s)^-beta, s the window sums of squares: into
// sums (the image's saved sums, or NULL: scratch), or read from them when `have_sums` (a
// fused chain recomputing the output from the forward's saved sums, which also keeps the
// scales (k + alpha s)^-beta in `scales` for the LRN's backward; else NULL). Out of line
// and cloned, so that the forward and the recomputation run the same machine code: the
// same sums give the same bits. Uses S_COL.
CLONES __attribute__((noinline)) static void lrn_fwd_image(const Lrn *l, const float *x,
                                                           float *y, float *sums,
                                                           bool have_sums, float *scales,
                                                           int tid) {
  float *tmp = scratch(tid, S_COL, (size_t)2 * l->P), *sc = tmp + l->P;
  for (int ch = 0; ch < l->C; ch++) {
    float *sum = sums ? sums + (size_t)ch * l->P : tmp;
    if (!have_sums)
      lrn_sum(l, x, ch, sum);
    if (scales)
      sc = scales + (size_t)ch * l->P;
    lrn_scale(l, sum, sc, l->P);
    const float *xc = x + (size_t)ch * l->P;
    float *yc = y + (size_t)ch * l->P;
    for (int p = 0; p < l->P; p++)
      yc[p] = xc[p] * sc[p];
  }
}

static void lrn_fwd_task(void *ctx, int t, int tid) {
  const Lrn *l = ctx;
  size_t off = (size_t)t * l->C * l->P;
  lrn_fwd_image(l, l->x + off, l->out + off, l->saved ? l->saved + off : NULL, false, NULL,
                tid);
}

// One image's backward (x, y, dy, dx its planes; saved its window sums, or NULL to
// recompute them; scales their (k + alpha s)^-beta when a fused chain has them from
// recomputing y, else NULL: computed here, by the same function, so the same bits):
// dx_m += dy_m s_m^-beta - 2 alpha beta x_m sum_{i in W(m)} dy_i y_i / s_i.
// Out of line (and cloned), so that the plain LRN backward and a fused chain's run the
// same machine code and round alike. Uses S_COL.
CLONES __attribute__((noinline)) static void lrn_bwd_image(const Lrn *l, const float *x,
                                                           const float *y, const float *dy,
                                                           const float *saved,
                                                           const float *scales, float *dx,
                                                           int tid) {
  float *buf = scratch(tid, S_COL, (size_t)(2 * l->C + 2) * l->P);
  float *ts = buf, *ss = buf + (size_t)l->C * l->P, *sum = ss + (size_t)l->C * l->P,
        *sc = sum + l->P;
  if (saved)  // the forward's window sums: the same function of x, so the same bits
    ss = (float *)saved;
  for (int ch = 0; ch < l->C; ch++) {  // ss = window sums, ts = dy y / s
    float *sch = ss + (size_t)ch * l->P, *tc = ts + (size_t)ch * l->P;
    if (!saved)
      lrn_sum(l, x, ch, sch);
    const float *yc = y + (size_t)ch * l->P, *gc = dy + (size_t)ch * l->P;
    for (int p = 0; p < l->P; p++)
      tc[p] = gc[p] * yc[p] / (l->k + l->alpha * sch[p]);
  }
  float f = 2.0f * l->alpha * l->beta;
  for (int ch = 0; ch < l->C; ch++) {
    if (scales)
      sc = (float *)scales + (size_t)ch * l->P;
    else
      lrn_scale(l, ss + (size_t)ch * l->P, sc, l->P);
    int lo, hi;
    lrn_window(l, ch, &lo, &hi);
    for (int p = 0; p < l->P; p++)
      sum[p] = 0;
    for (int j = lo; j <= hi; j++) {
      const float *tj = ts + (size_t)j * l->P;
      for (int p = 0; p < l->P; p++)
        sum[p] += tj[p];
    }
    const float *xc = x + (size_t)ch * l->P, *gc = dy + (size_t)ch * l->P;
    float *dc = dx + (size_t)ch * l->P;
    for (int p = 0; p < l->P; p++)
      dc[p] += gc[p] * sc[p] - f * xc[p] * sum[p];
  }
}

static void lrn_bwd_task(void *ctx, int t, int tid) {
  const Lrn *l = ctx;
  size_t off = (size_t)t * l->C * l->P;
  lrn_bwd_image(l, l->x + off, l->y + off, l->dy + off, l->saved ? l->saved + off : NULL,
                NULL, l->dx + off, tid);
}

// LRN node n's shape and constants (no tensors).
static Lrn lrn_for(const Node *n) {
  const LrnAttrs *a = &n->lrn;
  Shape s = n->out;
  return (Lrn){.C = (int)s.c, .P = (int)shape_plane(s), .per_group = (int)(s.c / a->groups),
               .half = a->size / 2, .alpha = (float)a->alpha, .k = (float)a->k,
               .beta = (float)a->beta, .b075 = a->beta == 0.75};
}

static Lrn lrn_setup(const OpCall *c) {
  Lrn l = lrn_for(c->n);
  l.c = c;
  l.x = c->x[0];
  l.saved = c->saved;
  return l;
}

// ---------------------------------------------------------------- max-pool

typedef struct {
  const float *x, *dy;
  float *y, *dx;
  int H, W, OH, OW, k, s, pt, pl, planes;  // pt, pl: top, left pads
} Pool;

#define POOL_PLANES 16

// Window (oy, ox): its maximum (forward), or the index of its first maximum in scan order
// (ky, then kx; backward, given the maximum m), -1 when no element beats -inf (all -inf
// or NaN). The first maximum of the forward's scan with > is the earliest element equal
// to the maximum (an element before it is strictly smaller; NaN never compares): a
// backward scan for equality finds it with no dependency between elements, and masks on
// the index instead of a branch (GCC emits a mispredicted branch for `eq ? i : arg`).
// K: the kernel size, a constant when the caller specialises it.
static inline __attribute__((always_inline)) float pool_window(const Pool *p, const float *x,
                                                               int oy, int ox, int K, bool bwd,
                                                               float m, int *arg_out) {
  int y0 = oy * p->s - p->pt, x0 = ox * p->s - p->pl;
  int ky0 = 0, kx0 = 0, ky1 = K, kx1 = K;
  if (y0 < 0 || x0 < 0 || y0 + K > p->H || x0 + K > p->W) {
    ky0 = y0 < 0 ? -y0 : 0;
    kx0 = x0 < 0 ? -x0 : 0;
    ky1 = imin(K, p->H - y0);
    kx1 = imin(K, p->W - x0);
  }
  if (!bwd) {
    m = -INFINITY;
    for (int ky = ky0; ky < ky1; ky++) {
      const float *r = x + (y0 + ky) * p->W + x0;
      for (int kx = kx0; kx < kx1; kx++)
        m = r[kx] > m ? r[kx] : m;
    }
    return m;
  }
  uint32_t arg = (uint32_t)-1;
  for (int ky = ky1 - 1; ky >= ky0; ky--) {
    int row = (y0 + ky) * p->W + x0;
    for (int kx = kx1 - 1; kx >= kx0; kx--) {
      uint32_t eq = -(uint32_t)(x[row + kx] == m);
      arg = ((uint32_t)(row + kx) & eq) | (arg & ~eq);
    }
  }
  *arg_out = m == -INFINITY ? -1 : (int)arg;
  return m;
}

static inline __attribute__((always_inline)) void pool_plane(const Pool *p, int pl, int K,
                                                             bool bwd, int *args) {
  const float *x = p->x + (size_t)pl * p->H * p->W;
  size_t o = (size_t)pl * p->OH * p->OW;
  int n = p->OH * p->OW;
  for (int oy = 0; oy < p->OH; oy++)
    for (int ox = 0; ox < p->OW; ox++) {
      int i = oy * p->OW + ox;
      if (!bwd) {
        p->y[o + i] = pool_window(p, x, oy, ox, K, false, 0, NULL);
      } else {
        float m = p->y ? p->y[o + i] : pool_window(p, x, oy, ox, K, false, 0, NULL);
        pool_window(p, x, oy, ox, K, true, m, args + i);
      }
    }
  if (bwd) {  // each output's gradient to its winner, in output order
    float *dx = p->dx + (size_t)pl * p->H * p->W;
    const float *dy = p->dy + o;
    for (int i = 0; i < n; i++)
      if (args[i] >= 0)
        dx[args[i]] += dy[i];
  }
}

// Planes [pl0, pl1) (a plain pool's task, or one image of a fused chain). Uses S_COL.
static void pool_planes(const Pool *p, int pl0, int pl1, int tid, bool bwd) {
  int *args = bwd ? (int *)scratch(tid, S_COL, (size_t)p->OH * p->OW) : NULL;
  for (int pl = pl0; pl < pl1; pl++) {
    if (p->k == 3)
      pool_plane(p, pl, 3, bwd, args);
    else
      pool_plane(p, pl, p->k, bwd, args);
  }
}

static void pool_task(const Pool *p, int t, int tid, bool bwd) {
  pool_planes(p, t * POOL_PLANES, imin(p->planes, (t + 1) * POOL_PLANES), tid, bwd);
}

static void pool_fwd_task(void *ctx, int t, int tid) { pool_task(ctx, t, tid, false); }
static void pool_bwd_task(void *ctx, int t, int tid) { pool_task(ctx, t, tid, true); }

// Max-pool node n's shapes and window, for `batch` images (no tensors).
static Pool pool_for(const Graph *g, const Node *n, int batch) {
  Shape in = g->nodes[n->inputs[0]].out, out = n->out;
  const PoolAttrs *a = &n->pool;
  return (Pool){.H = (int)in.h, .W = (int)in.w, .OH = (int)out.h, .OW = (int)out.w,
                .k = a->kernel, .s = a->stride, .pt = a->pad.top, .pl = a->pad.left,
                .planes = (int)(in.c * batch)};
}

static Pool pool_setup(const OpCall *c) {
  Pool p = pool_for(c->g, c->n, c->batch);
  p.x = c->x[0];
  return p;
}

// ---------------------------------------------------------------- fused chains

// A conv's backward with a fused chain after it (conv -> ReLU -> LRN? -> max-pool?,
// OpCall.lrn, .pool): per sub-batch of the conv's backward, each image's chain runs in
// this thread's scratch (S_CHAIN: the LRN's output, recomputed from the saved sums, and
// the pool's and LRN's input gradients; S_DY: the masked d(conv out) in the GEMM's
// layout), which the sub-batch's dW and dx GEMMs then read while it is still in cache; no
// whole-batch gradient inside the chain exists. Each piece is the plain op's own code on
// the same image (lrn_fwd_image, pool_planes, lrn_bwd_image, relu_keep_span, plane_sum),
// into zeroed buffers as the plain program's gradients are, so the result is the plain
// program's to the bit.
typedef struct {
  Conv v;             // the conv's backward; v.dy unused (dY comes from the chain)
  const OpCall *c;
  Lrn lrn;
  Pool pool;
  const float *dy;    // the chain's last gradient (batch, the last node's out)
  size_t inner, last, pooled;  // per image: the conv's (ReLU's, LRN's) output, dy, pool_y
  double *bsum;       // per image and channel: the plane sum of d(conv out), for db
} Chain;

// Image i's d(conv out) into dst, channel oc at dst + oc * ld.
static void chain_image(const Chain *ch, int i, float *dst, ptrdiff_t ld, int tid) {
  const OpCall *c = ch->c;
  size_t E = ch->inner;
  int OC = ch->v.OC, P = ch->v.P;
  const float *g = ch->dy + (size_t)i * ch->last, *relu_y = c->relu_y + (size_t)i * E;
  // [LRN output | its scales | its sums without saved ones | d(pool input) | d(LRN
  // input)], the parts the chain has
  float *buf = scratch(tid, S_CHAIN, 5 * E), *lrn_y = buf, *scales = buf + E,
        *sums = buf + 2 * E, *pooled = buf + 3 * E;
  const float *saved = c->lrn_saved ? c->lrn_saved + (size_t)i * E : NULL;
  if (c->lrn) {  // the forward's output again: from its saved sums, or from scratch
    lrn_fwd_image(&ch->lrn, relu_y, lrn_y, saved ? (float *)saved : sums, saved != NULL,
                  scales, tid);
    saved = saved ? saved : sums;
  }
  if (c->pool) {  // d(pool input) = pool'(dy), into zeros
    Pool p = ch->pool;
    p.x = c->lrn ? lrn_y : relu_y;
    p.y = c->pool_y ? (float *)c->pool_y + (size_t)i * ch->pooled : NULL;
    p.dy = g;
    p.dx = pooled;
    memset(pooled, 0, E * sizeof(float));
    pool_planes(&p, 0, OC, tid, true);
    g = pooled;
  }
  if (c->lrn) {  // d(ReLU output) = LRN'(...), into zeros
    float *d = buf + 4 * E;
    memset(d, 0, E * sizeof(float));
    lrn_bwd_image(&ch->lrn, relu_y, lrn_y, g, saved, scales, d, tid);
    g = d;
  }
  for (int oc = 0; oc < OC; oc++) {  // the ReLU's mask, and db's share (as bias_task sums)
    float *d = dst + (ptrdiff_t)oc * ld;
    relu_keep_span(relu_y + (size_t)oc * P, g + (size_t)oc * P, d, P);
    ch->bsum[(size_t)i * OC + oc] = P == 1 ? d[0] : plane_sum(d, P);
  }
}

static void chain_task(void *ctx, int t, int tid) {
  const Chain *ch = ctx;
  const Conv *v = &ch->v;
  int sb0 = chunk_first(v, t), sb1 = chunk_first(v, t + 1);
  for (int sb = sb0; sb < sb1; sb++) {
    int n0 = sub_first(v, sb), cnt = sub_count(v, sb), N = cnt * v->P;
    float *dyb = scratch(tid, S_DY, (size_t)v->OC * N);
    for (int img = 0; img < cnt; img++)
      chain_image(ch, n0 + img, dyb + (size_t)img * v->P, N, tid);
    for (int g = 0; g < v->G; g++)
      conv_bwd_sub(v, t, sb, sb0, g, (Mat){dyb + (size_t)g * v->opg * N, N, 1}, tid);
  }
}

static void conv_backward_chain(const OpCall *c, const float *dy, float *dx, float *dw,
                                float *db) {
  Chain ch = {.v = conv_setup(c), .c = c, .dy = dy};
  Conv *v = &ch.v;
  v->dx = dx;
  if (dw)
    v->part = v->nchunk > 1 ? grow(&shared_bufs[1], (size_t)v->nchunk * v->w_elems) : dw;
  if (dx) {
    v->wpk_size = packed_a_size(v->Kg, v->opg);
    v->wpk = pack_groups((Mat){c->w, 1, v->Kg}, v->Kg, v->opg, v->G, (ptrdiff_t)v->opg * v->Kg, 0);
  }
  ch.inner = (size_t)v->OC * v->P;
  ch.last = shape_elems(c->pool ? c->pool->out : c->lrn->out);
  if (c->lrn)
    ch.lrn = lrn_for(c->lrn);
  if (c->pool) {
    ch.pool = pool_for(c->g, c->pool, 1);
    ch.pooled = shape_elems(c->pool->out);
  }
  ch.bsum = (double *)grow(&shared_bufs[2], (size_t)2 * c->batch * v->OC);
  parallel_for(v->nchunk, chain_task, &ch);
  if (dw && v->nchunk > 1) {
    Reduce r = {v->part, dw, (int64_t)v->w_elems, v->nchunk};
    parallel_for(ew_tasks(r.n), reduce_task, &r);
  }
  for (int o = 0; o < v->OC && db; o++) {  // bias_task's sum: images in order, in double
    double acc = 0;
    for (int i = 0; i < c->batch; i++)
      acc += ch.bsum[(size_t)i * v->OC + o];
    db[o] = (float)acc;
  }
}

// ---------------------------------------------------------------- softmax, concat

static void softmax_forward(const OpCall *c, float *y) {
  int64_t n = c->n->out.c;
  for (int i = 0; i < c->batch; i++) {
    const float *x = c->x[0] + i * n;
    double m = -INFINITY, sum = 0;
    for (int64_t k = 0; k < n; k++)
      m = x[k] > m ? x[k] : m;
    for (int64_t k = 0; k < n; k++)
      sum += exp(x[k] - m);
    for (int64_t k = 0; k < n; k++)
      y[i * n + k] = (float)(exp(x[k] - m) / sum);
  }
}

static void softmax_backward(const OpCall *c, const float *dy, float *dx) {
  int64_t n = c->n->out.c;
  for (int i = 0; i < c->batch; i++) {
    const float *y = c->y + i * n, *g = dy + i * n;
    double dot = 0;
    for (int64_t k = 0; k < n; k++)
      dot += (double)g[k] * y[k];
    for (int64_t m = 0; m < n; m++)
      dx[i * n + m] += (float)(y[m] * (g[m] - dot));
  }
}

// Output channels [offset_j, offset_j + C_j) of each image are input j's.
static void concat_run(const OpCall *c, float *y, const float *dy, float *const *dx) {
  int64_t per_out = shape_elems(c->n->out), plane = shape_plane(c->n->out), offset = 0;
  for (int j = 0; j < c->n->n_inputs; j++) {
    Shape in = in_shape(c, j);
    int64_t len = shape_elems(in);
    for (int i = 0; i < c->batch; i++) {
      size_t o = (size_t)i * per_out + offset * plane;
      if (y) {
        memcpy(y + o, c->x[j] + (size_t)i * len, (size_t)len * sizeof(float));
      } else if (dx[j]) {
        float *d = dx[j] + (size_t)i * len;
        for (int64_t e = 0; e < len; e++)
          d[e] += dy[o + e];
      }
    }
    offset += in.c;
  }
}

// ---------------------------------------------------------------- the table

static void cpu_forward(const OpCall *c, float *y) {
  const Node *n = c->n;
  int64_t total = shape_elems(n->out) * c->batch;
  pthread_mutex_lock(&op_lock);
  pick_isa();
  Ew e = {c, n->n_inputs ? c->x[0] : NULL, NULL, y, NULL, total, 0};
  switch (n->op) {
  case OP_CONV:
    conv_forward(c, y);
    break;
  case OP_FC:
    fc_forward(c, y);
    break;
  case OP_RELU:
    parallel_for(ew_tasks(total), relu_fwd_task, &e);
    break;
  case OP_LRN: {
    Lrn l = lrn_setup(c);
    l.out = y;
    parallel_for(c->batch, lrn_fwd_task, &l);
    break;
  }
  case OP_MAXPOOL: {
    Pool p = pool_setup(c);
    p.y = y;
    parallel_for((p.planes + POOL_PLANES - 1) / POOL_PLANES, pool_fwd_task, &p);
    break;
  }
  case OP_DROPOUT:
    e.scale = 1.0 / (1.0 - n->dropout.p);
    parallel_for(ew_tasks(total), dropout_fwd_task, &e);
    break;
  case OP_FLATTEN:
    parallel_for(ew_tasks(total), copy_task, &e);
    break;
  case OP_CONCAT:
    concat_run(c, y, NULL, NULL);
    break;
  case OP_SOFTMAX:
    softmax_forward(c, y);
    break;
  case OP_INPUT:
  case OP_COUNT:
    break;
  }
  pthread_mutex_unlock(&op_lock);
}

static void cpu_backward(const OpCall *c, const float *dy, float *const *dx, float *dw,
                         float *db) {
  const Node *n = c->n;
  int64_t total = shape_elems(n->out) * c->batch;
  float *dx0 = n->n_inputs ? dx[0] : NULL;
  pthread_mutex_lock(&op_lock);
  pick_isa();
  if (c->relu_y && !c->lrn && !c->pool) {  // masked in place: one pass for the ReLU's
                                            // backward and dy's zeroing
    Ew m = {c, NULL, dy, (float *)dy, NULL, total, 0};
    parallel_for(ew_tasks(total), relu_mask_task, &m);
  }
  Ew e = {c, n->n_inputs ? c->x[0] : NULL, dy, NULL, dx0, total, 0};
  switch (n->op) {
  case OP_CONV:
    if (c->lrn || c->pool)
      conv_backward_chain(c, dy, dx0, dw, db);
    else
      conv_backward(c, dy, dx0, dw, db);
    break;
  case OP_FC:
    fc_backward(c, dy, dx0, dw, db);
    break;
  case OP_RELU:
    if (dx0)
      parallel_for(ew_tasks(total), relu_bwd_task, &e);
    break;
  case OP_LRN:
    if (dx0) {
      Lrn l = lrn_setup(c);
      l.y = c->y;
      l.dy = dy;
      l.dx = dx0;
      parallel_for(c->batch, lrn_bwd_task, &l);
    }
    break;
  case OP_MAXPOOL:
    if (dx0) {
      Pool p = pool_setup(c);
      p.y = (float *)c->y;  // the forward's maxima (read only); NULL: recomputed
      p.dy = dy;
      p.dx = dx0;
      parallel_for((p.planes + POOL_PLANES - 1) / POOL_PLANES, pool_bwd_task, &p);
    }
    break;
  case OP_DROPOUT:
    e.scale = 1.0 / (1.0 - n->dropout.p);
    if (dx0)
      parallel_for(ew_tasks(total), dropout_bwd_task, &e);
    break;
  case OP_FLATTEN:
    if (dx0)
      parallel_for(ew_tasks(total), add_task, &e);
    break;
  case OP_CONCAT:
    concat_run(c, NULL, dy, dx);
    break;
  case OP_SOFTMAX:
    if (dx0)
      softmax_backward(c, dy, dx0);
    break;
  case OP_INPUT:
  case OP_COUNT:
    break;
  }
  pthread_mutex_unlock(&op_lock);
}

// The update, memory-bound: spans of EW_CHUNK elements on every thread.
typedef struct {
  float *w, *v;
  const float *g;
  int64_t n;
  double lr;
} Update;

static void update_task(void *ctx, int t, int tid) {
  const Update *u = ctx;
  (void)tid;
  int64_t i0 = (int64_t)t * EW_CHUNK, n = u->n - i0 < EW_CHUNK ? u->n - i0 : EW_CHUNK;
  sgd_update_span(u->w + i0, u->v + i0, u->g + i0, n, u->lr);
}

static void cpu_update(float *w, float *v, const float *g, int64_t n, double lr) {
  Update u = {w, v, g, n, lr};
  pthread_mutex_lock(&op_lock);
  parallel_for(ew_tasks(n), update_task, &u);
  pthread_mutex_unlock(&op_lock);
}

const TrainKernels cpu_train_kernels = {"cpu", cpu_forward, cpu_backward, cpu_update};
