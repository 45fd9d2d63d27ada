// The CUDA backend's entry points in a build without the CUDA toolkit (ALEXC_CUDA=OFF):
// code generation still works (it needs no toolkit); compiling and running say why not.
#include <string.h>

#include "cuda.h"

static const char WHY[] = "this alexc was built without the CUDA toolkit (ALEXC_CUDA=OFF): "
                          "NVRTC and the CUDA runtime are not available";

bool cuda_have_nvrtc(void) { return false; }

bool cuda_compile(CudaProgram *p, const char *arch) {
  (void)p;
  (void)arch;
  error("%s", WHY);
  return false;
}

bool cuda_compile_source(const char *source, const char *name, const char *arch,
                         uint8_t **cubin, size_t *cubin_size, uint8_t **ptx, size_t *ptx_size) {
  (void)source, (void)name, (void)arch;
  *cubin = *ptx = NULL;
  *cubin_size = *ptx_size = 0;
  error("%s", WHY);
  return false;
}

bool cuda_run_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                    const Weights *w, const float *x, int batch, float *y) {
  (void)g, (void)how, (void)o, (void)arch, (void)w, (void)x, (void)batch, (void)y;
  error("%s", WHY);
  return false;
}

bool cuda_load_graph(const Graph *g, const char *how, const CudaOptions *o, const char *arch,
                     const Weights *w, CudaModel *m) {
  (void)g, (void)how, (void)o, (void)arch, (void)w;
  memset(m, 0, sizeof *m);
  error("%s", WHY);
  return false;
}

void cuda_model_free(CudaModel *m) { memset(m, 0, sizeof *m); }
