// `alexc run --target cuda` and `alexc bench`: generate, compile (cached), and load the
// result with the CUDA runtime (runtime/cuda.c), which finds the driver only now, at
// run time.
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

// Weight tensors by name for the runtime's upload ("conv1.weight").
static const float *weight_by_name(void *ctx, const char *tensor) {
  const Weights *w = ctx;
  for (int i = 0; i < w->n; i++)
    if (!strcmp(w->info[i].name, tensor))
      return w->data[i];
  return NULL;
}

bool cuda_load_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                     const Weights *w, CudaModel *m) {
  memset(m, 0, sizeof *m);
  // Ask for the driver first: without a GPU there is no point compiling.
  if (!rt_cuda_available()) {
    error("cuda: %s", rt_error());
    return false;
  }
  if (!cuda_generate(g, how, o, &m->prog))
    return false;
  if (!cuda_compile(&m->prog, arch)) {
    cuda_model_free(m);
    return false;
  }
  m->rt = rt_cuda_open(&m->prog.plan, 0, weight_by_name, (void *)w);
  if (!m->rt) {
    error("%s", rt_error());
    cuda_model_free(m);
    return false;
  }
  return true;
}

void cuda_model_free(CudaModel *m) {
  rt_cuda_close(m->rt);
  cuda_program_free(&m->prog);
  memset(m, 0, sizeof *m);
}

bool cuda_run_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                    const Weights *w, const float *x, int batch, float *y) {
  CudaModel m;
  if (!cuda_load_graph(g, how, o, arch, w, &m))
    return false;
  bool ok = rt_cuda_run(m.rt, x, batch, y);
  if (!ok)
    error("%s", rt_error());
  cuda_model_free(&m);
  return ok;
}
