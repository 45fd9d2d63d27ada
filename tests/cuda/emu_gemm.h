// emu_gemm.h — a CPU GEMM with cuBLAS's semantics, for the tests that stand in for
// cuBLAS (test_emulate.c's emulated machine, tests/cuda/fake/'s fake libcublas).
//
// emu_gemm() is cublasSgemm / cublasGemmEx exactly where it matters to a caller:
// column-major, transa/transb 'N' or 'T', leading dimensions, alpha and beta, cuBLAS's
// argument checks (CUBLAS_STATUS_INVALID_VALUE), m or n of 0 returning at once, and
// beta == 0 not reading C, so NaN in an unwritten C does not propagate. Accumulation is
// in float, as a GPU's is, in a fixed order, so results are deterministic.
//
// Operands are float or bfloat16 (EMU_BF16: uint16_t, the top half of a float), and
// EMU_MATH_TF32 rounds every A and B element to TF32 (10 explicit mantissa bits, round
// to nearest even) before multiplying, as cuBLAS's TF32 tensor-op math does; the
// products and the sums stay float. Header-only (static functions), so each test
// links its own copy and needs no library; C and C++ (emu_include/mma.h uses its
// rounding functions).
#ifndef ALEXC_EMU_GEMM_H
#define ALEXC_EMU_GEMM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum { EMU_F32, EMU_BF16 } EmuType;             // operand storage
typedef enum { EMU_MATH_FP32, EMU_MATH_TF32 } EmuMath;  // how A and B enter the products

static inline uint32_t emu_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float emu_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline int emu_is_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// float -> bfloat16, round to nearest even; a NaN stays a (quiet) NaN instead of
// rounding into infinity.
static inline uint16_t emu_float_to_bf16(float f) {
  uint32_t u = emu_bits(f);
  if (emu_is_nan(u))
    return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float emu_bf16_to_float(uint16_t h) { return emu_float((uint32_t)h << 16); }

// float -> TF32 (kept in a float): round to nearest even at mantissa bit 13. NaN and
// infinity pass unchanged; a finite value may round up to infinity, as RNE does.
static inline float emu_round_tf32(float f) {
  uint32_t u = emu_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u)
    return f;
  u += 0xfffu + ((u >> 13) & 1u);
  return emu_float(u & ~0x1fffu);
}

static inline int64_t emu_max1(int64_t v) { return v > 1 ? v : 1; }

// cuBLAS's argument checks: NULL when the GEMM may run, else the status it returns.
static inline const char *emu_gemm_check(char ta, char tb, int64_t m, int64_t n, int64_t k,
                                         int64_t lda, int64_t ldb, int64_t ldc) {
  int tra = ta == 'T', trb = tb == 'T';
  if ((ta != 'N' && !tra) || (tb != 'N' && !trb) || m < 0 || n < 0 || k < 0 ||
      lda < emu_max1(tra ? k : m) || ldb < emu_max1(trb ? n : k) || ldc < emu_max1(m) ||
      m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
      ldc > INT32_MAX)
    return "CUBLAS_STATUS_INVALID_VALUE";
  return NULL;
}

// Bytes of a column-major operand of `cols` columns of `rows` elements with leading
// dimension ld: what a bounds check must allow (0 for an empty operand).
static inline int64_t emu_operand_bytes(int64_t rows, int64_t cols, int64_t ld, EmuType t) {
  if (rows <= 0 || cols <= 0)
    return 0;
  return ((cols - 1) * ld + rows) * (t == EMU_BF16 ? 2 : 4);
}

// `len` elements of a stored operand, element i at p[off + i * stride], as the GEMM
// multiplies them. Plain fp32 with stride 1 is read in place; anything else is
// converted (and TF32-rounded) into tmp, so one set of loops serves every type and the
// fp32 results keep their exact order of operations.
static inline const float *emu_load(const void *p, EmuType t, EmuMath math, int64_t off,
                                    int64_t stride, int64_t len, float *tmp) {
  if (t == EMU_F32 && math == EMU_MATH_FP32 && stride == 1)
    return (const float *)p + off;
  for (int64_t i = 0; i < len; i++) {
    int64_t at = off + i * stride;
    float v = t == EMU_BF16 ? emu_bf16_to_float(((const uint16_t *)p)[at]) : ((const float *)p)[at];
    tmp[i] = math == EMU_MATH_TF32 ? emu_round_tf32(v) : v;
  }
  return tmp;
}

// C = alpha * op(A) * op(B) + beta * C, op(A) m x k, op(B) k x n, column-major.
// NULL on success, else a static message ("CUBLAS_STATUS_INVALID_VALUE"; or
// "out of memory" for the scratch columns).
static inline const char *emu_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha,
                                   const void *A, EmuType at, int64_t lda, const void *B,
                                   EmuType bt, int64_t ldb, float beta, float *C, int64_t ldc,
                                   EmuMath math) {
  const char *bad = emu_gemm_check(ta, tb, m, n, k, lda, ldb, ldc);
  if (bad)
    return bad;
  if (!m || !n)
    return NULL;
  int tra = ta == 'T', trb = tb == 'T';
  // acc: one column of the result; bcol: op(B)'s column j; acol: a column of A.
  int64_t acol_len = tra ? k : m;
  // (Casts: the emulated <mma.h> includes this header in C++.)
  float *acc = (float *)calloc((size_t)m, sizeof(float));
  float *bcol = (float *)calloc((size_t)emu_max1(k), sizeof(float));
  float *acol = (float *)calloc((size_t)emu_max1(acol_len), sizeof(float));
  if (!acc || !bcol || !acol) {
    free(acc);
    free(bcol);
    free(acol);
    return "out of memory";
  }
  for (int64_t j = 0; j < n; j++) {
    // op(B)(l, j) = B[j + l * ldb] transposed, B[l + j * ldb] as stored.
    const float *bj = emu_load(B, bt, math, trb ? j : j * ldb, trb ? ldb : 1, k, bcol);
    if (tra) {  // op(A)(i, l) = A[l + i * lda]: dot products along A's columns
      for (int64_t i = 0; i < m; i++) {
        const float *ai = emu_load(A, at, math, i * lda, 1, k, acol);
        float s = 0;
        for (int64_t l = 0; l < k; l++)
          s += ai[l] * bj[l];
        acc[i] = s;
      }
    } else {  // op(A)(i, l) = A[i + l * lda]: columns of A scaled and summed
      for (int64_t i = 0; i < m; i++)
        acc[i] = 0;
      for (int64_t l = 0; l < k; l++) {
        const float bl = bj[l], *col = emu_load(A, at, math, l * lda, 1, m, acol);
        for (int64_t i = 0; i < m; i++)
          acc[i] += col[i] * bl;
      }
    }
    for (int64_t i = 0; i < m; i++)
      C[i + j * ldc] = beta == 0.0f ? alpha * acc[i] : alpha * acc[i] + beta * C[i + j * ldc];
  }
  free(acc);
  free(bcol);
  free(acol);
  return NULL;
}

// cublasLt's CUBLASLT_EPILOGUE_BIAS and _RELU_BIAS after a GEMM into the float C (m x n,
// column-major): C[i][j] += bias[i], then max(0, C[i][j]) when relu, in float, as the
// epilogue adds the bias to the accumulator before storing.
static inline void emu_bias_epilogue(int64_t m, int64_t n, float *c, int64_t ldc,
                                     const float *bias, int relu) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      float v = c[j * ldc + i] + bias[i];
      c[j * ldc + i] = relu && !(v > 0) ? 0.0f : v;
    }
}

#endif
