// Philox4x32-10 against Random123's known-answer vectors, and the dropout masks drawn
// from it (compiler/train/philox.c): the spec of alexc.h element by element, the keep rate,
// independence of layers, steps and seeds, and bits computed by the independent numpy
// implementation in tests/train/make_train_golden.py (--mask-vectors prints them).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "../unit/test.h"

static void test_kat(void) {
  // Random123's tests/kat_vectors, "philox4x32 10": counter, key, output.
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
       0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
       0x94fdcceb, 0x5001e420, 0x24126ea1},
  };
  for (int t = 0; t < 3; t++) {
    uint32_t out[4];
    philox4x32_10(kat[t], kat[t] + 4, out);
    for (int j = 0; j < 4; j++) {
      if (out[j] != kat[t][6 + j])
        fprintf(stderr, "KAT %d word %d: got %08x, want %08x\n", t, j, out[j], kat[t][6 + j]);
      CHECK(out[j] == kat[t][6 + j]);
    }
  }
}

// The mask as alexc.h specifies it, one philox4x32_10 call per element.
static void spec_mask(uint64_t seed, uint64_t step, const char *layer, int64_t n, double p,
                      uint8_t *mask) {
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (int64_t i = 0; i < n; i++) {
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), (uint32_t)step,
                       dropout_layer_key(layer)};
    uint32_t out[4];
    philox4x32_10(ctr, key, out);
    double u = (double)(out[0] >> 8) * 0x1p-24;
    mask[i] = u >= p;
  }
}

static void test_layer_key(void) {
  // Expected values from make_train_golden.py --mask-vectors (fnv1a-64, low ^ high).
  static const struct {
    const char *name;
    uint32_t key;
  } keys[] = {
      {"drop5", 0x5234a832u}, {"drop6", 0x5234ab67u}, {"drop7", 0x5234a6a8u},
      {"", 0x4fd0bfc1u},      {"a-much-longer.layer_name", 0x5a8a50dau},
  };
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    CHECK(dropout_layer_key(keys[i].name) == keys[i].key);
}

static void test_known_bits(void) {
  // From make_train_golden.py --mask-vectors: its numpy Philox4x32-10 (uint64 arithmetic),
  // which shares no code with compiler/train/philox.c.
  static const struct {
    uint64_t seed, step;
    const char *layer;
    double p;
    const char *bits;
  } cases[] = {
      {21474836523ull, 7ull, "drop6", 0.5,
       "1001110010010010001111010101111100100101001111011001111011011100001000110100011101001001000101001011"},
      {0ull, 0ull, "drop5", 0.3,
       "1110011111011111100101111110011111101001011101001100110111111101010001100110111111111100101110101101"},
      {18446744073709551615ull, 4294967295ull, "fc", 0.9,
       "0000100010000000000000010000000000000100000000000010000000000010000000000000001000000100000001000000"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    int n = (int)strlen(cases[c].bits);
    uint8_t mask[128];
    dropout_mask(cases[c].seed, cases[c].step, cases[c].layer, 0, n, cases[c].p, mask);
    int bad = 0;
    for (int i = 0; i < n; i++)
      bad += mask[i] != (cases[c].bits[i] == '1');
    if (bad)
      fprintf(stderr, "known bits, case %zu: %d of %d bits differ\n", c, bad, n);
    CHECK(bad == 0);
    // The step is taken mod 2^32: step + 2^32 draws the same mask.
    uint8_t again[128];
    dropout_mask(cases[c].seed, cases[c].step + (1ull << 32), cases[c].layer, 0, n, cases[c].p,
                 again);
    CHECK(memcmp(mask, again, n) == 0);
  }
}

// The fast (lane-parallel) dropout_mask against the element-by-element spec, for sizes
// that are not multiples of its block, and p at and around the 2^-24 grid.
static void test_matches_spec(void) {
  enum { N = 4099 };
  uint8_t *a = malloc(N), *b = malloc(N);
  const double ps[] = {0.5, 0.3, 0.1, 0.9, 0.0, 1.0, -0.5, 1.5, 0x1p-24, 1 - 0x1p-24,
                       0.5 + 0x1p-25, 12345 * 0x1p-24, 12345.5 * 0x1p-24};
  const uint64_t seeds[] = {0, 1, 0x123456789abcdef0ull};
  for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++)
    for (size_t k = 0; k < sizeof ps / sizeof *ps; k++)
      for (int64_t n = 1; n <= N; n = n * 3 + 1) {
        dropout_mask(seeds[s], 3 + s, "drop7", 0, n, ps[k], a);
        spec_mask(seeds[s], 3 + s, "drop7", n, ps[k], b);
        if (memcmp(a, b, n)) {
          fprintf(stderr, "dropout_mask != spec: seed %llu p %.17g n %lld\n",
                  (unsigned long long)seeds[s], ps[k], (long long)n);
          CHECK(false);
        }
      }
  // p <= 0 keeps everything, p >= 1 drops everything.
  dropout_mask(1, 2, "x", 0, N, 0.0, a);
  for (int i = 0; i < N; i++)
    CHECK(a[i] == 1);
  dropout_mask(1, 2, "x", 0, N, 1.0, a);
  for (int i = 0; i < N; i++)
    CHECK(a[i] == 0);
  free(a);
  free(b);
}

static int64_t count(const uint8_t *m, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    k += m[i];
  return k;
}

static int64_t differ(const uint8_t *a, const uint8_t *b, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    k += a[i] != b[i];
  return k;
}

// Over 1e6 elements the kept count is Binomial(n, 1 - p): within 6 standard deviations.
// Two masks that should be independent differ in Binomial(n, 2p(1-p)) places.
static void test_statistics(void) {
  enum { N = 1000000 };
  uint8_t *m = malloc(N), *o = malloc(N);
  const double ps[] = {0.5, 0.3, 0.9};
  for (size_t k = 0; k < sizeof ps / sizeof *ps; k++) {
    double p = ps[k];
    dropout_mask(42, 0, "drop6", 0, N, p, m);
    double mean = N * (1 - p), sd = sqrt(N * p * (1 - p));
    int64_t kept = count(m, N);
    if (fabs(kept - mean) > 6 * sd)
      fprintf(stderr, "p %g: kept %lld of %d, want %.0f +- %.0f\n", p, (long long)kept, N, mean,
              6 * sd);
    CHECK(fabs(kept - mean) <= 6 * sd);
    // Runs: in a fair sequence, about n p (1-p) * 2 changes of value.
    int64_t changes = 0;
    for (int i = 1; i < N; i++)
      changes += m[i] != m[i - 1];
    double cmean = (N - 1) * 2 * p * (1 - p), csd = sqrt((N - 1) * 2 * p * (1 - p));
    CHECK(fabs(changes - cmean) <= 6 * 2 * csd);

    double dmean = N * 2 * p * (1 - p), dsd = sqrt(N * 2 * p * (1 - p) * (1 - 2 * p * (1 - p)));
    struct {
      uint64_t seed, step;
      const char *layer;
    } other[] = {{42, 1, "drop6"},  {42, 0, "drop7"}, {43, 0, "drop6"},
                 {42ull | (1ull << 32), 0, "drop6"}, {42, 1ull << 31, "drop6"}};
    for (size_t j = 0; j < sizeof other / sizeof *other; j++) {
      dropout_mask(other[j].seed, other[j].step, other[j].layer, 0, N, p, o);
      int64_t d = differ(m, o, N);
      if (fabs(d - dmean) > 6 * dsd)
        fprintf(stderr, "p %g, variant %zu: masks differ in %lld places, want %.0f +- %.0f\n",
                p, j, (long long)d, dmean, 6 * dsd);
      CHECK(fabs(d - dmean) <= 6 * dsd);
    }
    // The same arguments draw the same mask, and a prefix of a longer mask is the mask.
    dropout_mask(42, 0, "drop6", 0, N / 3, p, o);
    CHECK(memcmp(m, o, N / 3) == 0);
    // A part drawn from element `first` on (a data-parallel rank's share of the batch) is
    // that part of the whole mask, at any offset (not only multiples of the lanes).
    for (int64_t first = 1; first < N; first += N / 7) {
      dropout_mask(42, 0, "drop6", first, N - first, p, o);
      CHECK(memcmp(m + first, o, (size_t)(N - first)) == 0);
    }
  }
  free(m);
  free(o);
}

int main(void) {
  test_kat();
  test_layer_key();
  test_known_bits();
  test_matches_spec();
  test_statistics();
  TEST_MAIN_END();
}
