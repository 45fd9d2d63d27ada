// Reports (stub: being written).
#include "../alexc.h"
bool metrics_append(const char *csv, const EpochRow *r) { (void)csv; (void)r; return true; }
bool metrics_plot(const char *csv, const char *png) { (void)csv; (void)png; return true; }
void progress_show(FILE *out, int epoch, int epochs, int64_t step, int64_t steps, double loss,
                   double images_per_s, double eta_s) {
  fprintf(out, "epoch %d/%d step %lld/%lld loss %.4f %.0f img/s eta %.0fs\n", epoch, epochs,
          (long long)step, (long long)steps, loss, images_per_s, eta_s);
}
