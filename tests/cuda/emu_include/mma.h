// nvcuda::wmma for the CPU emulation (cuda_emu.h): the generated kernels' `#include
// <mma.h>` finds this file through -I when g++ compiles them (test_emulate, the fake
// driver). Only what the generated tensor-core GEMM uses: fragments of 16x16x8 tf32 and
// 16x16x16 bfloat16 operands with float accumulators, fill, load, mma, store.
//
// A warp's fragment is spread over its 32 threads in an unspecified layout on a GPU.
// Here every thread holds the whole matrix (num_elements = all of it, x[] row-major)
// and gets the whole product: the API's results, 32 times over (computed once, see
// mma_sync).
// load_matrix_sync and store_matrix_sync check the pointer alignment (32 bytes) and
// ldm (a multiple of 16 bytes) that the hardware requires, so a layout that would fault
// on a GPU aborts here.
//
// Rounding as the tensor cores do it: a tf32 operand is the float with its low 13
// mantissa bits ignored (wmma::__float_to_tf32, what the kernels call first, rounds to
// nearest, ties away from zero, as cvt.rna.tf32.f32 does); bfloat16 operands are
// exact in float; products and sums in float.
#ifndef ALEXC_EMU_MMA_H
#define ALEXC_EMU_MMA_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "../emu_gemm.h"  // the bit casts and bfloat16 rounding the cuBLAS emulation uses

struct __nv_bfloat16 {
  unsigned short bits;
};

// Round to nearest even; NaN stays NaN (cuda_bf16.h's __float2bfloat16).
static inline __nv_bfloat16 __float2bfloat16(float f) { return {emu_float_to_bf16(f)}; }
static inline float __bfloat162float(__nv_bfloat16 h) { return emu_bf16_to_float(h.bits); }

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// cvt.rna.tf32.f32: round to nearest at mantissa bit 13, ties away from zero.
static inline float __float_to_tf32(float f) {
  uint32_t u = emu_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u)
    return f;
  return emu_float((u + 0x1000u) & ~0x1fffu);
}

template <class T> struct storage_of { using type = T; };
template <> struct storage_of<precision::tf32> { using type = float; };

static inline float operand_value(float v) { return emu_float(emu_bits(v) & ~0x1fffu); }
static inline float operand_value(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  using element_type = typename storage_of<T>::type;
  element_type x[rows * cols];  // (r, c) at r * cols + c
};

template <class E> static inline void emu_check(const E *p, unsigned ldm, const char *what) {
  if ((uintptr_t)p % 32 || (ldm * sizeof(E)) % 16) {
    fprintf(stderr, "emulated wmma::%s: pointer %p must be 32-byte aligned and ldm %u a "
                    "multiple of %zu elements\n", what, (const void *)p, ldm, 16 / sizeof(E));
    abort();
  }
}

template <class Use, int M, int N, int K, class T, class Layout, class E>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const E *p, unsigned ldm) {
  static_assert(std::is_same<E, typename fragment<Use, M, N, K, T, Layout>::element_type>::value,
                "the pointer's type is the fragment's element type");
  emu_check(p, ldm, "load_matrix_sync");
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < f.rows; r++)
    for (int c = 0; c < f.cols; c++)
      f.x[r * f.cols + c] = row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

template <int M, int N, int K>
static inline void fill_fragment(fragment<accumulator, M, N, K, float> &f, float v) {
  for (int i = 0; i < f.num_elements; i++)
    f.x[i] = v;
}

template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                                     unsigned ldm, layout_t layout) {
  emu_check(p, ldm, "store_matrix_sync");
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++)
      p[layout == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = f.x[r * N + c];
}

template <int M, int N, int K, class T, class LA, class LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                            const fragment<matrix_a, M, N, K, T, LA> &a,
                            const fragment<matrix_b, M, N, K, T, LB> &b,
                            const fragment<accumulator, M, N, K, float> &c) {
  // A warp's 32 lanes call this one after another (a block's fibers share one OS thread,
  // each running to its next barrier) with the same fragments: lane 0's products are
  // kept, and the other lanes copy them. A lane makes a few calls between barriers
  // (depth steps x fragments), hence a few entries.
  using E = typename fragment<matrix_a, M, N, K, T, LA>::element_type;
  struct Memo {
    bool valid;
    E a[M * K], b[K * N];
    float c[M * N], d[M * N];
  };
  constexpr int ENTRIES = 8;
  static thread_local Memo memo[ENTRIES];
  static thread_local int next;
  for (int i = 0; i < ENTRIES; i++) {
    const Memo &m = memo[i];
    if (m.valid && !memcmp(m.a, a.x, sizeof m.a) && !memcmp(m.b, b.x, sizeof m.b) &&
        !memcmp(m.c, c.x, sizeof m.c)) {
      memcpy(d.x, m.d, sizeof m.d);
      return;
    }
  }
  Memo &m = memo[next];
  next = (next + 1) % ENTRIES;
  memcpy(m.a, a.x, sizeof m.a);
  memcpy(m.b, b.x, sizeof m.b);
  memcpy(m.c, c.x, sizeof m.c);
  float out[M * N];
  for (int r = 0; r < M; r++)
    for (int col = 0; col < N; col++) {
      float sum = c.x[r * N + col];
      for (int k = 0; k < K; k++)
        sum += operand_value(a.x[r * K + k]) * operand_value(b.x[k * N + col]);
      out[r * N + col] = sum;
    }
  memcpy(d.x, out, sizeof out);
  memcpy(m.d, out, sizeof out);
  m.valid = true;
}

}  // namespace wmma
}  // namespace nvcuda

#endif
