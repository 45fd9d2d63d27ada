// The CUDA executor's entry points in a runtime built without the CUDA toolkit's
// headers (ALEXC_CUDA=OFF): the same interface, each call saying why it cannot run.
#include "alexrt.h"
#include "alexrt_cuda.h"
#include "internal.h"

static bool none(void) {
  return rt_fail("this runtime was built without the CUDA toolkit (ALEXC_CUDA=OFF): "
                 "it cannot run on a GPU");
}

bool rt_cuda_available(void) { return none(); }

bool rt_cuda_device(char *arch, size_t arch_size, char *name, size_t name_size) {
  (void)arch, (void)arch_size, (void)name, (void)name_size;
  return none();
}

bool rt_cuda_gpu_count(int *count) {
  *count = 0;
  return none();
}

RtCuda *rt_cuda_open(const RtPlan *p, int first_gpu,
                     const float *(*get)(void *ctx, const char *tensor), void *ctx) {
  (void)p, (void)first_gpu, (void)get, (void)ctx;
  none();
  return NULL;
}

bool rt_cuda_run(RtCuda *r, const float *x, int batch, float *y) {
  (void)r, (void)x, (void)batch, (void)y;
  return none();
}

void rt_cuda_close(RtCuda *r) { (void)r; }

void rt_cuda_set_graphs(RtCuda *r, bool on) { (void)r, (void)on; }

void rt_cuda_graph_stats(const RtCuda *r, int *captures, int *launches) {
  (void)r;
  *captures = *launches = 0;
}

bool rt_cuda_time(RtCuda *r, const float *x, int batch, float *y, bool per_layer, RtTimes *t) {
  (void)r, (void)x, (void)batch, (void)y, (void)per_layer, (void)t;
  return none();
}

void rt_times_free(RtTimes *t) { (void)t; }

bool rt_cuda_memory(RtCuda *r, RtMemory *m) {
  (void)r, (void)m;
  return none();
}

bool rt_cuda_write(RtCuda *r, int d, RtAddr a, int batch, const void *host, int64_t floats) {
  (void)r, (void)d, (void)a, (void)batch, (void)host, (void)floats;
  return none();
}

bool rt_cuda_read(RtCuda *r, int d, RtAddr a, int batch, void *host, int64_t floats) {
  (void)r, (void)d, (void)a, (void)batch, (void)host, (void)floats;
  return none();
}

bool rt_cuda_steps(RtCuda *r, int batch) {
  (void)r, (void)batch;
  return none();
}

bool rt_cuda_steps_from(RtCuda *r, int batch, int first) {
  (void)r, (void)batch, (void)first;
  return none();
}

bool rt_cuda_nccl_id(void *id) {
  (void)id;
  return none();
}

bool rt_cuda_nccl_join(RtCuda *r, int rank, int nranks, const void *id) {
  (void)r, (void)rank, (void)nranks, (void)id;
  return none();
}
