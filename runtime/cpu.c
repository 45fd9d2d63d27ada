// The CPU target's executor: packs weights once, then walks the program's steps. A run
// step's work items are split into contiguous ranges, one per thread of a small pool;
// the pool meets at a barrier after every step, since the next step reads what this one
// wrote. The logical devices of a partitioned plan run as thread groups: the steps of
// one node on several devices (which write different arenas) run at once, each on its
// share of the threads. Copies are done by the calling thread (they are small:
// transfers and the edges).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alexrt.h"
#include "alexrt_cpu.h"
#include "internal.h"

#define MAX_THREADS 256
#define RT_CPU_MAX_GROUP 8  // steps run at once: the devices of a plan

struct RtCpuModel {
  const RtCpuProgram *p;
  float **packed;  // per pack
  int threads;
  float **scratch;  // per thread
  int64_t scratch_size;
  double *times;
  float *arenas[8];      // kept between runs (fresh pages would fault in every run)
  int64_t arena_batch;   // the batch they are sized for

  // The pool: workers 1..threads-1; the caller is thread 0.
  pthread_t *workers;
  pthread_mutex_t lock;
  pthread_cond_t start, done;
  unsigned generation;  // bumped to start a step
  int pending;          // workers still running the step
  bool quit;
  // The steps being run at once (one node on several devices), each on a group of threads.
  const RtCpuStep *step[RT_CPU_MAX_GROUP];
  float *arena[RT_CPU_MAX_GROUP];
  int64_t total[RT_CPU_MAX_GROUP];
  int n_step;
  int64_t batch;
};

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

// Thread t's share: the threads are cut into n_step groups (group k is the threads t
// with t * n_step / threads == k), and within its group a thread takes a contiguous
// range of that step's items, sizes differing by at most one.
static void run_share(RtCpuModel *m, int t) {
  int g = m->n_step, T = m->threads;
  int k = (int)((int64_t)t * g / T);
  int first = (k * T + g - 1) / g, next = ((k + 1) * T + g - 1) / g;
  int n = next - first, r = t - first;
  int64_t per = m->total[k] / n, extra = m->total[k] % n;
  int64_t begin = r * per + (r < extra ? r : extra);
  int64_t end = begin + per + (r < extra);
  if (begin < end) {
    const RtCpuStep *s = m->step[k];
    s->fn(m->arena[k], s->pack >= 0 ? m->packed[s->pack] : NULL, m->scratch[t], m->batch,
          begin, end);
  }
}

static void *worker(void *arg) {
  RtCpuModel *m = arg;
  pthread_mutex_lock(&m->lock);
  int t = 0;
  for (int i = 1; i < m->threads; i++)
    if (pthread_equal(m->workers[i], pthread_self()))
      t = i;
  unsigned seen = 0;  // the generation when the pool started: a step may begin before we run
  for (;;) {
    while (m->generation == seen && !m->quit)
      pthread_cond_wait(&m->start, &m->lock);
    if (m->quit)
      break;
    seen = m->generation;
    pthread_mutex_unlock(&m->lock);
    run_share(m, t);
    pthread_mutex_lock(&m->lock);
    if (--m->pending == 0)
      pthread_cond_signal(&m->done);
  }
  pthread_mutex_unlock(&m->lock);
  return NULL;
}

// Runs steps s[0..n) at once (n <= threads), each on its group of threads.
static void run_steps(RtCpuModel *m, const RtCpuStep *const *s, float *const *arena, int n,
                      int64_t batch) {
  m->n_step = n;
  m->batch = batch;
  for (int k = 0; k < n; k++) {
    m->step[k] = s[k];
    m->arena[k] = arena[k];
    m->total[k] = s[k]->per_image ? s[k]->items * batch : s[k]->items;
  }
  if (m->threads > 1) {
    pthread_mutex_lock(&m->lock);
    m->pending = m->threads - 1;
    m->generation++;
    pthread_cond_broadcast(&m->start);
    pthread_mutex_unlock(&m->lock);
  }
  run_share(m, 0);
  if (m->threads > 1) {
    pthread_mutex_lock(&m->lock);
    while (m->pending)
      pthread_cond_wait(&m->done, &m->lock);
    pthread_mutex_unlock(&m->lock);
  }
}

// ---------------------------------------------------------------- weights

int64_t rt_cpu_pack_floats(const RtCpuPack *k) {
  int64_t rows = k->bf16 ? rt_cpu_bf16_k(k->k) / 2 : k->k;
  return (int64_t)k->blocks * k->width * (rows + 1);
}

// float -> bfloat16, rounding to nearest even (as vcvtne2ps2bf16 does); NaN stays NaN.
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static void pack_bf16(const RtCpuPack *k, const float *w, float *dst) {
  int64_t pairs = rt_cpu_bf16_k(k->k) / 2;
  uint32_t *out = (uint32_t *)dst;
  for (int blk = 0; blk < k->blocks; blk++)
    for (int lane = 0; lane < k->n_oc[blk]; lane++) {
      const float *row = w + (k->oc_begin[blk] + lane) * k->k;
      for (int64_t q = 0; q < pairs; q++) {
        uint32_t lo = 2 * q < k->k ? to_bf16(row[2 * q]) : 0;
        uint32_t hi = 2 * q + 1 < k->k ? to_bf16(row[2 * q + 1]) : 0;
        out[((int64_t)blk * pairs + q) * k->width + lane] = lo | hi << 16;
      }
    }
}

static bool pack_weights(const RtCpuPack *k, RtCpuWeightFn get, void *ctx, float *dst) {
  const float *w = get(ctx, k->weight, k->rank, k->dims);
  const float *b = w && k->bias[0] ? get(ctx, k->bias, 1, k->dims) : NULL;
  if (!w || (k->bias[0] && !b))
    return false;  // get() said why
  int64_t rows = k->bf16 ? rt_cpu_bf16_k(k->k) / 2 : k->k;
  if (k->bf16)
    pack_bf16(k, w, dst);
  for (int blk = 0; blk < k->blocks; blk++) {
    float *out = dst + blk * k->k * k->width;
    for (int lane = 0; !k->bf16 && lane < k->n_oc[blk]; lane++) {
      const float *row = w + (k->oc_begin[blk] + lane) * k->k;
      for (int64_t i = 0; i < k->k; i++)
        out[i * k->width + lane] = row[i];
    }
    float *bias = dst + k->blocks * rows * k->width + blk * k->width;
    for (int lane = 0; b && lane < k->n_oc[blk]; lane++)
      bias[lane] = b[k->oc_begin[blk] + lane];
  }
  return true;
}

bool rt_cpu_host_has(const char *isa) {
  __builtin_cpu_init();
  if (!strcmp(isa, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (!strcmp(isa, "avx2"))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return !strcmp(isa, "sse2");
}

bool rt_cpu_host_has_bf16(void) {
  // cpuid leaf 7, subleaf 1, eax bit 5 (GCC 12's __builtin_cpu_supports has no name for it).
  unsigned a = 0, b = 0, c = 0, d = 0;
  __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
  return rt_cpu_host_has("avx512") && (a >> 5 & 1);
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

RtCpuModel *rt_cpu_load(const RtCpuProgram *p, RtCpuWeightFn get, void *ctx, int threads) {
  if (threads <= 0)
    threads = default_threads();
  if (threads > MAX_THREADS) {
    rt_fail("%d threads is more than the limit of %d", threads, MAX_THREADS);
    return NULL;
  }
  RtCpuModel *m = calloc(1, sizeof *m);
  if (!m) {
    rt_fail("out of memory");
    return NULL;
  }
  m->p = p;
  m->threads = threads;
  m->packed = calloc(p->n_packs ? p->n_packs : 1, sizeof *m->packed);
  m->times = calloc(p->n_steps ? p->n_steps : 1, sizeof *m->times);
  bool ok = m->packed && m->times;
  for (int i = 0; ok && i < p->n_packs; i++) {
    const RtCpuPack *k = &p->packs[i];
    size_t n = (size_t)rt_cpu_pack_floats(k);
    ok = (m->packed[i] = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64)) != NULL;
    if (ok) {
      memset(m->packed[i], 0, n * sizeof(float));
      ok = pack_weights(k, get, ctx, m->packed[i]);
    } else {
      rt_fail("out of memory packing '%s'", k->weight);
    }
  }
  for (int i = 0; i < p->n_steps; i++)
    if (p->steps[i].kind == RT_CPU_RUN && p->steps[i].scratch > m->scratch_size)
      m->scratch_size = p->steps[i].scratch;
  if (m->scratch_size < 1024)
    m->scratch_size = 1024;
  m->scratch = ok ? calloc(threads, sizeof *m->scratch) : NULL;
  ok = ok && m->scratch;
  for (int t = 0; ok && t < threads; t++)
    ok = (m->scratch[t] = aligned_alloc(64, ((size_t)m->scratch_size * 4 + 64) / 64 * 64)) != NULL;
  if (ok && threads > 1) {
    m->workers = calloc(threads, sizeof *m->workers);
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->start, NULL);
    pthread_cond_init(&m->done, NULL);
    // Hold the lock while starting workers, so each finds its own index in `workers`.
    pthread_mutex_lock(&m->lock);
    int started = 1;
    for (; ok && started < threads; started++)
      ok = pthread_create(&m->workers[started], NULL, worker, m) == 0;
    pthread_mutex_unlock(&m->lock);
    if (!ok) {
      rt_fail("cannot start %d threads", threads);
      m->threads = started - 1;  // rt_cpu_free joins those that started
    }
  }
  if (!ok && !rt_error()[0])
    rt_fail("out of memory");
  if (!ok) {
    rt_cpu_free(m);
    return NULL;
  }
  return m;
}

// ---------------------------------------------------------------- running

static float *place(const RtCpuPlace *pl, float **arena, const float *x, float **y,
                    int64_t batch, int64_t img, bool is_source) {
  float *base = pl->dev >= 0 ? arena[pl->dev] + pl->off * batch
                             : is_source ? (float *)x : y[pl->out];
  return base + img * pl->stride + pl->rel;
}

// The arenas for a batch: the last ones if they are large enough.
static bool ensure_arenas(RtCpuModel *m, int64_t batch) {
  if (batch <= m->arena_batch)
    return true;
  for (int d = 0; d < m->p->n_devices; d++) {
    free(m->arenas[d]);
    m->arenas[d] = aligned_alloc(64, ((size_t)(m->p->arena[d] * batch) * 4 + 64) / 64 * 64);
    if (!m->arenas[d]) {
      m->arena_batch = 0;
      return rt_fail("out of memory for a batch of %lld", (long long)batch);
    }
  }
  m->arena_batch = batch;
  return true;
}

bool rt_cpu_run(RtCpuModel *m, const float *x, int64_t batch, float **y) {
  const RtCpuProgram *p = m->p;
  bool ok = ensure_arenas(m, batch);
  float **arena = m->arenas;
  for (int i = 0; ok && i < p->n_steps; i++) {
    const RtCpuStep *s = &p->steps[i];
    double t0 = now_us();
    if (s->kind == RT_CPU_RUN) {
      // This node's steps on the following devices run with it, when there are threads
      // enough for a group each; the time is the group's, booked on its first step.
      const RtCpuStep *group[RT_CPU_MAX_GROUP] = {s};
      float *arenas[RT_CPU_MAX_GROUP] = {arena[s->device]};
      int n = 1;
      while (i + n < p->n_steps && n < RT_CPU_MAX_GROUP && n < m->threads &&
             p->steps[i + n].kind == RT_CPU_RUN && p->steps[i + n].node == s->node) {
        group[n] = &p->steps[i + n];
        arenas[n] = arena[group[n]->device];
        n++;
      }
      run_steps(m, group, arenas, n, batch);
      for (int k = 1; k < n; k++)
        m->times[i + k] = 0;
      m->times[i] = now_us() - t0;
      i += n - 1;
      continue;
    } else {
      for (int64_t img = 0; img < batch; img++)
        memmove(place(&s->to, arena, x, y, batch, img, false),
                place(&s->from, arena, x, y, batch, img, true), s->n * sizeof(float));
    }
    m->times[i] = now_us() - t0;
  }
  return ok;
}

void rt_cpu_parallel(RtCpuModel *m, RtCpuKernel fn, int64_t items, int64_t batch) {
  RtCpuStep s = {.kind = RT_CPU_RUN, .fn = fn, .items = items, .pack = -1};
  const RtCpuStep *one = &s;
  float *none = NULL;
  run_steps(m, &one, &none, 1, batch);
}

const double *rt_cpu_step_times(const RtCpuModel *m) { return m->times; }
int rt_cpu_threads(const RtCpuModel *m) { return m->threads; }

void rt_cpu_free(RtCpuModel *m) {
  if (!m)
    return;
  if (m->workers) {
    pthread_mutex_lock(&m->lock);
    m->quit = true;
    pthread_cond_broadcast(&m->start);
    pthread_mutex_unlock(&m->lock);
    for (int t = 1; t < m->threads; t++)
      pthread_join(m->workers[t], NULL);
    free(m->workers);
  }
  for (int i = 0; m->packed && i < m->p->n_packs; i++)
    free(m->packed[i]);
  for (int t = 0; m->scratch && t < m->threads; t++)
    free(m->scratch[t]);
  for (int d = 0; d < 8; d++)
    free(m->arenas[d]);
  free(m->scratch);
  free(m->packed);
  free(m->times);
  free(m);
}
