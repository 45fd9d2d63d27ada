// The CPU target's training kernels (stub: being written).
#include "../alexc.h"
static void fwd(const OpCall *c, float *y) { (void)c; (void)y; }
static void bwd(const OpCall *c, const float *dy, float *const *dx, float *dw, float *db) {
  (void)c; (void)dy; (void)dx; (void)dw; (void)db;
}
const TrainKernels cpu_train_kernels = {"cpu", fwd, bwd};
void cpu_train_set_threads(int threads) { (void)threads; }
