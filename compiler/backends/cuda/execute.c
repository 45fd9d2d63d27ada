// `alexc run --target cuda`: generate, compile (cached), and run through the CUDA
// runtime (runtime/cuda.c), which loads the driver only now, at run time.
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

bool cuda_run_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                    const Weights *w, const float *x, int batch, float *y) {
  // Ask for the driver first: without a GPU there is no point compiling.
  if (!rt_cuda_available()) {
    error("cuda: %s", rt_error());
    return false;
  }
  CudaProgram prog;
  if (!cuda_generate(g, how, o, &prog))
    return false;
  bool ok = cuda_compile(&prog, arch);
  RtCuda *r = ok ? rt_cuda_open(&prog.plan, weight_by_name, (void *)w) : NULL;
  if (ok && !r)
    error("%s", rt_error());
  ok = r && rt_cuda_run(r, x, batch, y);
  if (r && !ok)
    error("%s", rt_error());
  rt_cuda_close(r);
  cuda_program_free(&prog);
  return ok;
}
