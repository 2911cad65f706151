// Tile primitives of the C++ CPU attention kernels (attention_fwd.cpp,
// attention_bwd.cpp): small matrix products, exponentials, score masking and
// dropout on tiles held in per-thread scratch buffers of the accumulation
// type A (float; double for double inputs).
//
// Everything here is FASTATTN_INLINE so that it is compiled into the
// instruction-set variants of the kernels (cpu_isa.h): the same plain loops
// become SSE2, AVX2 or AVX-512 code depending on the caller's target. The
// loops are written for gcc -O3's auto-vectorizer: unit-stride innermost
// loops of fixed trip count, no reductions across the vectorized dim
// (reductions keep independent lanes, as csrc/cpu/norm.cpp does, so results
// do not depend on the vector width).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/dropout_hash.h"
#include "cpu/cpu_isa.h"

namespace fastattn {
namespace cpu {
namespace tiles {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A>
constexpr A kNegInf = -std::numeric_limits<A>::infinity();

// Independent partial results per row reduction.
constexpr int kLanes = 16;

// Products sum at most this many terms in registers before adding them into
// C: a blocked summation, whose rounding error grows with K / kSumChunk +
// kSumChunk rather than with K (the sums run over D, or over up to Lq rows
// in dk/dv, and must stay as accurate as PyTorch's matmul).
constexpr int64_t kSumChunk = 16;

// C[m, n] += sum_k A(m, k) * B[k, n] for a register block of MR rows and NV
// vectors of VB bytes: A(m, k) = a[m * sam + k * sak] (any strides: A may be
// a tile read transposed), B rows contiguous with leading dim ldb, C with
// leading dim ldc. The block's partial sums are gcc vector-extension values
// (SIMD registers of the caller's target), which gcc keeps in registers
// where it spills a plain array of scalars.
// One unaligned vector load (one instruction, no trip through the stack).
template <typename V, typename A>
FASTATTN_INLINE V load_vec(const A* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int MR, int NV, int VB, typename A>
FASTATTN_INLINE void gemm_block(int64_t K, const A* __restrict a, int64_t sam, int64_t sak,
                                const A* __restrict b, int64_t ldb, A* __restrict c,
                                int64_t ldc) {
  typedef A V __attribute__((vector_size(VB)));
  // The r/v loops must be unrolled completely before gcc's scalar
  // replacement runs, or the accumulators live on the stack.
  for (int64_t k0 = 0; k0 < K; k0 += kSumChunk) {
    const int64_t k1 = k0 + kSumChunk < K ? k0 + kSumChunk : K;
    V acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V{};
    for (int64_t k = k0; k < k1; ++k) {
      V bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = load_vec<V>(b + k * ldb + v * (VB / sizeof(A)));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const A av = a[r * sam + k * sak];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        A* cp = c + r * ldc + v * (VB / sizeof(A));
        const V cv = load_vec<V>(cp) + acc[r][v];
        std::memcpy(cp, &cv, sizeof(cv));
      }
    }
  }
}

// C (M x N) += A (M x K) * B (K x N), layouts as in gemm_block. VB is the
// vector width in bytes of the target: register blocks of MR rows by two
// vectors (MR = 8 with AVX-512's 32 registers, else 4); a remainder of
// columns narrower than two vectors goes one row at a time.
template <int VB, typename A>
FASTATTN_INLINE void gemm_acc(int64_t M, int64_t N, int64_t K, const A* a, int64_t sam,
                              int64_t sak, const A* b, int64_t ldb, A* c, int64_t ldc) {
  constexpr int MR = VB >= 64 ? 8 : 4;
  constexpr int NR = 2 * VB / static_cast<int>(sizeof(A));
  int64_t n0 = 0;
  for (; n0 + NR <= N; n0 += NR) {
    int64_t m = 0;
    for (; m + MR <= M; m += MR)
      gemm_block<MR, 2, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc);
    for (; m < M; ++m)
      gemm_block<1, 2, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc);
  }
  if (n0 == N) return;
  // Remaining columns (fewer than NR), one row and at most NR / 2 columns
  // at a time: same chunked summation.
  constexpr int NH = NR / 2;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = n0; n < N; n += NH) {
      const int64_t w = N - n < NH ? N - n : NH;
      A* __restrict crow = c + m * ldc + n;
      for (int64_t k0 = 0; k0 < K; k0 += kSumChunk) {
        const int64_t k1 = k0 + kSumChunk < K ? k0 + kSumChunk : K;
        A acc[NH] = {};
        for (int64_t k = k0; k < k1; ++k) {
          const A av = a[m * sam + k * sak];
          const A* __restrict brow = b + k * ldb + n;
          for (int64_t x = 0; x < w; ++x) acc[x] += av * brow[x];
        }
        for (int64_t x = 0; x < w; ++x) crow[x] += acc[x];
      }
    }
  }
}

// exp(x) for float, vectorizable: x = n ln2 + r with |r| <= ln2/2 (n by
// round-to-nearest through the 1.5 * 2^23 trick), e^r by its Taylor series to
// r^7 (relative error < 1e-8 on that interval), 2^n built in the exponent
// bits. Exactly 0 below -87 (and for -inf), where e^x would be subnormal;
// inputs above 88 saturate (softmax only feeds x <= ~0).
FASTATTN_INLINE float exp_fast(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float fn = (xc * 1.44269504088896341f + shifter) - shifter;
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;  // ln2 in two parts
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.0f ? 0.0f : p * two_n;
}

FASTATTN_INLINE float exp_acc(float x) { return exp_fast(x); }
FASTATTN_INLINE double exp_acc(double x) { return std::exp(x); }

// max over v[0, n) (kNegInf for n = 0), with kLanes partial maxima.
template <typename A>
FASTATTN_INLINE A row_max(const A* __restrict v, int64_t n) {
  // kLanes values as one gcc vector (split into the target's registers): the
  // lane-wise arithmetic, hence the result, is the same on every target.
  typedef A Lanes __attribute__((vector_size(kLanes * sizeof(A))));
  Lanes part;
  for (int l = 0; l < kLanes; ++l) part[l] = kNegInf<A>;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Lanes x;
    std::memcpy(&x, v + j, sizeof(x));
    part = x > part ? x : part;
  }
  for (int l = 0; j < n; ++j, ++l) part[l] = v[j] > part[l] ? v[j] : part[l];
  A m = kNegInf<A>;
  for (int l = 0; l < kLanes; ++l) m = part[l] > m ? part[l] : m;
  return m;
}

// sum over v[0, n), with kLanes partial sums combined in a fixed order.
template <typename A>
FASTATTN_INLINE A row_sum(const A* __restrict v, int64_t n) {
  typedef A Lanes __attribute__((vector_size(kLanes * sizeof(A))));  // as in row_max
  Lanes part = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Lanes x;
    std::memcpy(&x, v + j, sizeof(x));
    part += x;
  }
  for (int l = 0; j < n; ++j, ++l) part[l] += v[j];
  A s = 0;
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

// v[j] = exp(v[j] - shift) for j < n.
template <typename A>
FASTATTN_INLINE void exp_shifted(A* __restrict v, int64_t n, A shift) {
  for (int64_t j = 0; j < n; ++j) v[j] = exp_acc(v[j] - shift);
}

// dst[j] = src[j] widened to A.
template <typename A, typename T>
FASTATTN_INLINE void widen(A* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<A>(src[j]);
}

// dst[j] = src[j] rounded to T.
template <typename T, typename A>
FASTATTN_INLINE void narrow(T* __restrict dst, const A* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

// v[j] *= keep(row, col0 + j) ? scale : 0 for j < n: the dropout of one row
// of a tile whose first key is col0. Multiplying by 0 keeps NaN/inf as the
// reference propagates them.
template <typename A>
FASTATTN_INLINE void dropout_row(A* __restrict v, int64_t n, dropout::RowKeys keys,
                                 uint32_t col0, uint32_t thresh, A scale) {
  for (int64_t j = 0; j < n; ++j) {
    const bool kept = dropout::bits(keys, col0 + static_cast<uint32_t>(j)) >= thresh;
    v[j] *= kept ? scale : A(0);
  }
}

// The attention mask as the kernels read it: element (b, h, i, j) at
// ptr + b * sb + h * sh + i * sm + j * sn (strides 0 on broadcast dims).
struct MaskView {
  enum Kind { kNone, kBool, kFloat, kDouble, kHalf, kBFloat16 };
  Kind kind = kNone;
  const void* ptr = nullptr;
  int64_t sb = 0, sh = 0, sm = 0, sn = 0;
};

template <typename A, typename M>
FASTATTN_INLINE void add_bias_row(A* __restrict s, const M* row, int64_t sn, int64_t n) {
  if (sn == 1) {
    const M* __restrict r = row;
    for (int64_t j = 0; j < n; ++j) s[j] += static_cast<A>(r[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] += static_cast<A>(row[j * sn]);
  }
}

// Applies the mask to a rows x n score tile s (leading dim lds) whose first
// element is (b, h, i0, j0): a bool mask sets forbidden scores to -inf, a
// float mask is added (in A, as the reference adds it after the scaling).
template <typename A>
FASTATTN_INLINE void apply_mask(A* s, int64_t lds, int64_t rows, int64_t n, const MaskView& mv,
                                int64_t b, int64_t h, int64_t i0, int64_t j0) {
  if (mv.kind == MaskView::kNone) return;
  const int64_t base = b * mv.sb + h * mv.sh + i0 * mv.sm + j0 * mv.sn;
  for (int64_t i = 0; i < rows; ++i) {
    A* __restrict srow = s + i * lds;
    const int64_t off = base + i * mv.sm;
    switch (mv.kind) {
      case MaskView::kBool: {
        const uint8_t* mrow = static_cast<const uint8_t*>(mv.ptr) + off;
        for (int64_t j = 0; j < n; ++j) srow[j] = mrow[j * mv.sn] ? srow[j] : kNegInf<A>;
        break;
      }
      case MaskView::kFloat: add_bias_row(srow, static_cast<const float*>(mv.ptr) + off, mv.sn, n); break;
      case MaskView::kDouble: add_bias_row(srow, static_cast<const double*>(mv.ptr) + off, mv.sn, n); break;
      case MaskView::kHalf: add_bias_row(srow, static_cast<const at::Half*>(mv.ptr) + off, mv.sn, n); break;
      case MaskView::kBFloat16: add_bias_row(srow, static_cast<const at::BFloat16*>(mv.ptr) + off, mv.sn, n); break;
      default: break;
    }
  }
}

// Causal band on a rows x n tile starting at (i0, j0): score (i, j) becomes
// -inf where j > i + diag (bottom-right aligned, diag = kv_len - q_len).
template <typename A>
FASTATTN_INLINE void apply_causal(A* s, int64_t lds, int64_t rows, int64_t n, int64_t i0,
                                  int64_t j0, int64_t diag) {
  for (int64_t i = 0; i < rows; ++i) {
    // first forbidden column of row i within the tile
    int64_t first = i0 + i + diag + 1 - j0;
    if (first >= n) continue;
    if (first < 0) first = 0;
    A* __restrict srow = s + i * lds;
    for (int64_t j = first; j < n; ++j) srow[j] = kNegInf<A>;
  }
}

}  // namespace tiles
}  // namespace cpu
}  // namespace fastattn
