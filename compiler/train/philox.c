// Philox4x32-10 and dropout masks (stub: being written).
#include "../alexc.h"
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  (void)ctr; (void)key; out[0] = out[1] = out[2] = out[3] = 0;
}
uint32_t dropout_layer_key(const char *layer) { (void)layer; return 0; }
void dropout_mask(uint64_t seed, uint64_t step, const char *layer, int64_t n, double p,
                  uint8_t *mask) {
  (void)seed; (void)step; (void)layer; (void)p;
  for (int64_t i = 0; i < n; i++) mask[i] = 1;
}
