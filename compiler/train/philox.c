// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2,
// 3", SC'11), bit for bit as Random123's philox4x32_R(10, ...), and the dropout masks drawn
// from it. Checked against Random123's known-answer vectors in tests/train/test_philox.c;
// tests/train/make_train_golden.py has an independent numpy version for the goldens.
#include <string.h>

#include "../alexc.h"

#define PHILOX_M0 0xD2511F53u  // round multipliers
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u  // Weyl key increments (golden ratio, sqrt(3) - 1)
#define PHILOX_W1 0xBB67AE85u

// Ten rounds; the key is bumped between rounds (nine times), as Random123 does.
static inline void philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                          uint32_t k1, uint32_t out[4]) {
  for (int r = 0; r < 10; r++) {
    if (r) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  philox(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1], out);
}

uint32_t dropout_layer_key(const char *layer) {
  uint64_t h = fnv1a(FNV_OFFSET, layer, strlen(layer));
  return (uint32_t)h ^ (uint32_t)(h >> 32);
}

// Word 0 of philox(ctr = {i mod 2^32, i >> 32, step mod 2^32, layer_key}, key = seed) for
// `LANES` consecutive i at a time, written lane-parallel so that the compiler can
// vectorise the 32x32->64 multiplies. Element i is kept when (word >> 8) * 2^-24 >= p,
// i.e. when word >> 8 >= ceil(p * 2^24): an exact integer comparison of the same test.
#define LANES 16

void dropout_mask(uint64_t seed, uint64_t step, const char *layer, int64_t first, int64_t n,
                  double p, uint8_t *mask) {
  const uint32_t c2 = (uint32_t)step, c3 = dropout_layer_key(layer);
  const uint32_t key0 = (uint32_t)seed, key1 = (uint32_t)(seed >> 32);
  // u >= p with u = m * 2^-24, m an integer in [0, 2^24): m >= p * 2^24 <=> m >= ceil(p * 2^24)
  // (p * 2^24 is exact in double). p <= 0 keeps all, p >= 1 drops all.
  double scaled = p * 16777216.0;
  uint32_t threshold;
  if (!(scaled > 0))
    threshold = 0;
  else if (scaled >= 16777216.0)
    threshold = 1u << 24;
  else {
    threshold = (uint32_t)scaled;
    if ((double)threshold < scaled)
      threshold++;
  }
  for (int64_t base = 0; base < n; base += LANES) {
    uint32_t a0[LANES], a1[LANES], a2[LANES], a3[LANES];
    for (int l = 0; l < LANES; l++) {
      uint64_t i = (uint64_t)first + (uint64_t)base + (uint64_t)l;
      a0[l] = (uint32_t)i;
      a1[l] = (uint32_t)(i >> 32);
      a2[l] = c2;
      a3[l] = c3;
    }
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
      if (r) {
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
      }
      for (int l = 0; l < LANES; l++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * a0[l], p1 = (uint64_t)PHILOX_M1 * a2[l];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ a1[l] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ a3[l] ^ k1;
        a1[l] = (uint32_t)p1;
        a3[l] = (uint32_t)p0;
        a0[l] = n0;
        a2[l] = n2;
      }
    }
    int64_t m = n - base < LANES ? n - base : LANES;
    for (int64_t l = 0; l < m; l++)
      mask[base + l] = (a0[l] >> 8) >= threshold;
  }
}
