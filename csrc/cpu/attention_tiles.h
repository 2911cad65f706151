// Tile primitives of the C++ CPU attention kernels (attention_fwd.cpp,
// attention_bwd.cpp): small matrix products, exponentials, score masking and
// dropout on tiles held in per-thread scratch buffers of the accumulation
// type A (float; double for double inputs).
//
// Score tiles are KEY-MAJOR: element (query i, key j) of a tile lives at
// t[j * ld + i], one row per key, one column per query. With that layout
// every product of the forward and backward reads its operands as they lie
// in memory (keys as rows of K and V, queries as columns of a Q^T that is
// transposed once per query block), so no key tile is ever transposed; and
// the per-query softmax reductions (max, sum over keys) run down the
// columns, lane by lane, with full-width vectors and results that do not
// depend on the vector width.
//
// Everything here is FASTATTN_INLINE so that it is compiled into the
// instruction-set variants of the kernels (cpu_isa.h): the same plain loops
// become SSE2, AVX2 or AVX-512 code depending on the caller's target. The
// loops are written for gcc -O3's auto-vectorizer: unit-stride innermost
// loops, no reductions across the vectorized dim.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
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

// Products sum at most this many terms in registers before adding them into
// C: a blocked summation, whose rounding error grows with K / kSumChunk +
// kSumChunk rather than with K. The sums run over D (score tiles) or over
// one tile of 64 rows or keys (gradients), so one chunk covers most of them.
constexpr int64_t kSumChunk = 64;

// v = one unaligned vector load (one instruction, no trip through the
// stack). The vector goes out through a reference, not as a return value:
// a function returning an AVX vector from a translation unit compiled for
// SSE2 has another calling convention (gcc's -Wpsabi), even where, as here,
// it is always inlined into the variant of the right target.
template <typename V, typename A>
FASTATTN_INLINE void load_vec(V& v, const A* p) {
  std::memcpy(&v, p, sizeof(v));
}

// C[m, n] (+)= sum_k A(m, k) * B[k, n] for a register block of MR rows and
// NV vectors of VB bytes: A(m, k) = a[m * sam + k * sak] (any strides: A may
// be a tile read transposed; each element is broadcast), B rows contiguous
// with leading dim ldb, C with leading dim ldc. `overwrite` stores the first
// chunk's sums instead of adding them (no zero fill of C beforehand). The
// partial sums are gcc vector-extension values (SIMD registers of the
// caller's target), which gcc keeps in registers where it would spill a
// plain array of scalars.
template <int MR, int NV, int VB, typename A>
FASTATTN_INLINE void gemm_block(int64_t K, const A* __restrict a, int64_t sam, int64_t sak,
                                const A* __restrict b, int64_t ldb, A* __restrict c,
                                int64_t ldc, bool overwrite) {
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
      for (int v = 0; v < NV; ++v) load_vec(bv[v], b + k * ldb + v * (VB / sizeof(A)));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const A av = a[r * sam + k * sak];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
      }
    }
    const bool store = overwrite && k0 == 0;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        A* cp = c + r * ldc + v * (VB / sizeof(A));
        V cv = acc[r][v];
        if (!store) {
          V old;
          load_vec(old, cp);
          cv += old;
        }
        std::memcpy(cp, &cv, sizeof(cv));
      }
    }
  }
}

// C (M x N) (+)= A (M x K) * B (K x N), layouts as in gemm_block. VB is the
// vector width in bytes of the target: register blocks of MR rows by two
// vectors (MR = 12 with AVX-512's 32 registers, else 4; fewer than 4 rows
// take four vectors per row instead, for more independent sums); then one
// vector of columns, then what is left of a vector one row at a time.
template <int VB, typename A>
FASTATTN_INLINE void gemm_acc(int64_t M, int64_t N, int64_t K, const A* a, int64_t sam,
                              int64_t sak, const A* b, int64_t ldb, A* c, int64_t ldc,
                              bool overwrite = false) {
  constexpr int MR = VB >= 64 ? 12 : 4;
  constexpr int64_t NR = 2 * VB / static_cast<int64_t>(sizeof(A));  // two vectors
  if (K == 0) {
    if (overwrite)
      for (int64_t m = 0; m < M; ++m) std::fill(c + m * ldc, c + m * ldc + N, A(0));
    return;
  }
  int64_t n0 = 0;
  if (M < 4) {  // a few rows (decoding): four vectors per row, four FMA chains
    for (; n0 + 2 * NR <= N; n0 += 2 * NR)
      for (int64_t m = 0; m < M; ++m)
        gemm_block<1, 4, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                             overwrite);
  }
  for (; n0 + NR <= N; n0 += NR) {
    int64_t m = 0;
    for (; m + MR <= M; m += MR)
      gemm_block<MR, 2, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                            overwrite);
    for (; m + 4 <= M; m += 4)
      gemm_block<4, 2, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                           overwrite);
    for (; m < M; ++m)
      gemm_block<1, 2, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                           overwrite);
  }
  constexpr int64_t NH = NR / 2;
  for (; n0 + NH <= N; n0 += NH) {  // one vector of columns left
    int64_t m = 0;
    for (; m + MR <= M; m += MR)
      gemm_block<MR, 1, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                            overwrite);
    for (; m < M; ++m)
      gemm_block<1, 1, VB>(K, a + m * sam, sam, sak, b + n0, ldb, c + m * ldc + n0, ldc,
                           overwrite);
  }
  if (n0 == N) return;
  // Remaining columns (less than a vector), one row at a time: same chunked
  // summation.
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
        if (overwrite && k0 == 0) {
          for (int64_t x = 0; x < w; ++x) crow[x] = acc[x];
        } else {
          for (int64_t x = 0; x < w; ++x) crow[x] += acc[x];
        }
      }
    }
  }
}

// Independent partial sums of a dot product (a gcc vector of kLanes values,
// split into the target's registers: the same lanes, so the same result, on
// every target).
constexpr int kLanes = 16;

// One dot product of contiguous a[0, K) and b[0, K) as kLanes partial sums
// (lane l sums the products of k = l mod kLanes), reduced by halving: lanes
// [0, 8) += [8, 16), then [0, 4) += [4, 8), and so on; a head dim that is
// not a multiple of kLanes adds its tail last.
template <typename A>
FASTATTN_INLINE A dot(const A* a, const A* b, int64_t K) {
  typedef A Lanes __attribute__((vector_size(kLanes * sizeof(A))));
  const int64_t kv = K / kLanes * kLanes;
  Lanes acc = {};
  for (int64_t k = 0; k < kv; k += kLanes) {
    Lanes av, bv;
    load_vec(av, a + k);
    load_vec(bv, b + k);
    acc += av * bv;
  }
  A tail = 0;
  for (int64_t k = kv; k < K; ++k) tail += a[k] * b[k];
  A lanes[kLanes];
  std::memcpy(lanes, &acc, sizeof(acc));
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int x = 0; x < w; ++x) lanes[x] += lanes[x + w];
  return lanes[0] + tail;
}

#if defined(__GNUC__) && !defined(__clang__)
#define FASTATTN_DOT_BLOCKS 1
// The halving reduction of 16 dot products at once: the same additions as
// dot() (so the same results), with vector shuffles instead of a trip
// through memory per dot. Level with s lanes per dot: each vector holds
// 16 / s dots of s lanes; pairs of vectors merge into one of s / 2 lanes per
// dot, adding each dot's lower and upper half. Dot order stays natural.
template <typename A>
FASTATTN_INLINE void dot_block16(const A* const* arows, const A* b, int64_t K, A* out,
                                 int64_t out_stride) {
  typedef A Lanes __attribute__((vector_size(kLanes * sizeof(A))));
  typedef std::conditional_t<sizeof(A) == 4, int32_t, int64_t> I;
  typedef I Mask __attribute__((vector_size(kLanes * sizeof(A))));
  static_assert(kLanes == 16, "the shuffle masks below are for 16 lanes");
  const int64_t kv = K / kLanes * kLanes;
  Lanes v[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) v[r] = Lanes{};
  for (int64_t k = 0; k < kv; k += kLanes) {
    Lanes bv;
    load_vec(bv, b + k);
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) {
      Lanes av;
      load_vec(av, arows[r] + k);
      v[r] += av * bv;
    }
  }
  const Mask lo16 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Mask hi16 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const Mask lo8 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const Mask hi8 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const Mask lo4 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const Mask hi4 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const Mask lo2 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const Mask hi2 = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
    v[r] = __builtin_shuffle(v[2 * r], v[2 * r + 1], lo16) +
           __builtin_shuffle(v[2 * r], v[2 * r + 1], hi16);
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
    v[r] = __builtin_shuffle(v[2 * r], v[2 * r + 1], lo8) +
           __builtin_shuffle(v[2 * r], v[2 * r + 1], hi8);
#pragma GCC unroll 2
  for (int r = 0; r < 2; ++r)
    v[r] = __builtin_shuffle(v[2 * r], v[2 * r + 1], lo4) +
           __builtin_shuffle(v[2 * r], v[2 * r + 1], hi4);
  const Lanes sums = __builtin_shuffle(v[0], v[1], lo2) + __builtin_shuffle(v[0], v[1], hi2);
  for (int r = 0; r < 16; ++r) {
    A tail = 0;
    for (int64_t k = kv; k < K; ++k) tail += arows[r][k] * b[k];
    out[r * out_stride] = sums[r] + tail;
  }
}
#else
#define FASTATTN_DOT_BLOCKS 0
#endif

// C[m, n] = sum_k a[m * lda + k] * b[n * ldb + k]: rows of A against rows of
// B, both contiguous in k, as dot(). For score tiles with very few query
// columns (decoding), where a register panel of gemm_acc would be mostly
// padding.
template <typename A>
FASTATTN_INLINE void gemm_dots(int64_t M, int64_t N, int64_t K, const A* a, int64_t lda,
                               const A* b, int64_t ldb, A* c, int64_t ldc) {
  for (int64_t n = 0; n < N; ++n) {
    int64_t m = 0;
#if FASTATTN_DOT_BLOCKS
    for (; m + 16 <= M; m += 16) {
      const A* rows[16];
      for (int r = 0; r < 16; ++r) rows[r] = a + (m + r) * lda;
      dot_block16(rows, b + n * ldb, K, c + m * ldc + n, ldc);
    }
#endif
    for (; m < M; ++m) c[m * ldc + n] = dot(a + m * lda, b + n * ldb, K);
  }
}

// exp(x) for float, vectorizable: x = n ln2 + r with |r| <= ln2/2 (n by
// round-to-nearest through the 1.5 * 2^23 trick, which also leaves n in the
// low mantissa bits, so no float-to-int conversion is needed), e^r by its
// Taylor series to r^7 (relative error < 1e-8 on that interval), 2^n built
// in the exponent bits. Exactly 0 below -87 (and for -inf), where e^x would
// be subnormal; inputs above 88 saturate (softmax only feeds x <= ~0); NaN
// stays NaN. Only selects, no branches: gcc vectorizes it for every target
// (given -fno-trapping-math, setup.py).
FASTATTN_INLINE float exp_fast(float x) {
  float xc = x < -87.0f ? -87.0f : x;  // NaN passes both clamps
  xc = xc > 88.0f ? 88.0f : xc;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float t = xc * 1.44269504088896341f + shifter;
  const float fn = t - shifter;
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;  // ln2 in two parts
  float q = 1.0f / 5040.0f;  // q = (e^r - 1) / r = 1 + r/2 + r^2/6 + ... + r^6/7!
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  int32_t n;  // = fn, read from t's mantissa (t's bits minus the shifter's)
  std::memcpy(&n, &t, sizeof(n));
  n -= 0x4B400000;
  const int32_t bits = (n + 127) * (1 << 23);
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.0f ? 0.0f : (q * r + 1.0f) * two_n;
}

FASTATTN_INLINE float exp_acc(float x) { return exp_fast(x); }
FASTATTN_INLINE double exp_acc(double x) { return std::exp(x); }

// ------------------------------------------------------------ one column
// A score tile of a single query (decoding) is a contiguous vector over the
// keys: these run along it with kLanes partial results, reduced by halving.

// max(init, v[0, n)); NaN entries are skipped, as by col_max.
template <typename A>
FASTATTN_INLINE A vec_max(const A* v, int64_t n, A init) {
  A part[kLanes];
  for (int l = 0; l < kLanes; ++l) part[l] = init;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] = v[j + l] > part[l] ? v[j + l] : part[l];
  for (int l = 0; j < n; ++j, ++l) part[l] = v[j] > part[l] ? v[j] : part[l];
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] = part[l + w] > part[l] ? part[l + w] : part[l];
  return part[0];
}

// v[j] = exp(v[j] - shift) for j < n; returns their sum.
template <typename A>
FASTATTN_INLINE A vec_exp_sum(A* v, int64_t n, A shift) {
  A part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      v[j + l] = exp_acc(v[j + l] - shift);
      part[l] += v[j + l];
    }
  }
  for (int l = 0; j < n; ++j, ++l) {
    v[j] = exp_acc(v[j] - shift);
    part[l] += v[j];
  }
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
}

// ------------------------------------------------------------ column ops
// On a key-major tile t (nkeys rows of ld elements; column c is query c).

// cmax[c] = max(cmax[c], t[j, c] for j < nkeys) for c < ncols. NaN scores are
// skipped by the max, as by torch's softmax, and come back through exp.
template <typename A>
FASTATTN_INLINE void col_max(const A* t, int64_t ld, int64_t nkeys, int64_t ncols, A* cmax) {
  for (int64_t j = 0; j < nkeys; ++j) {
    const A* __restrict row = t + j * ld;
    A* __restrict mx = cmax;
    for (int64_t c = 0; c < ncols; ++c) mx[c] = row[c] > mx[c] ? row[c] : mx[c];
  }
}

// t[j, c] = exp(t[j, c] - shift[c]), and csum[c] = the column's sum, summed
// down the keys in order, in double (attention_fwd.cpp says why).
template <typename A>
FASTATTN_INLINE void col_exp_sum(A* t, int64_t ld, int64_t nkeys, int64_t ncols,
                                 const A* shift, double* csum) {
  std::fill(csum, csum + ncols, 0.0);
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    const A* __restrict sh = shift;
    double* __restrict sm = csum;
    for (int64_t c = 0; c < ncols; ++c) {
      row[c] = exp_acc(row[c] - sh[c]);
      sm[c] += static_cast<double>(row[c]);
    }
  }
}

// t[j, c] = exp((t[j, c] - hi[c]) - lo[c]): probabilities from the saved
// lse, given as the sum hi + lo of two values of A (a float's rounding of
// lse, and the rest) so that no rounding of lse enters p.
template <typename A>
FASTATTN_INLINE void col_exp(A* t, int64_t ld, int64_t nkeys, int64_t ncols, const A* hi,
                             const A* lo) {
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    const A* __restrict sh = hi;
    const A* __restrict sl = lo;
    for (int64_t c = 0; c < ncols; ++c) row[c] = exp_acc((row[c] - sh[c]) - sl[c]);
  }
}

// dst[j, c] = p[j, c] * (dp[j, c] - delta[c]): the score gradient.
template <typename A>
FASTATTN_INLINE void col_scores_grad(const A* p, A* dp, int64_t ld, int64_t nkeys,
                                     int64_t ncols, const A* delta) {
  for (int64_t j = 0; j < nkeys; ++j) {
    const A* __restrict pr = p + j * ld;
    A* __restrict dr = dp + j * ld;
    const A* __restrict dl = delta;
    for (int64_t c = 0; c < ncols; ++c) dr[c] = pr[c] * (dr[c] - dl[c]);
  }
}

// dst[j, c] = a[j, c] * b[j, c] (dst may be a).
template <typename A>
FASTATTN_INLINE void col_product(const A* a, const A* b, A* dst, int64_t ld, int64_t nkeys,
                                 int64_t ncols) {
  for (int64_t j = 0; j < nkeys; ++j) {
    const A* ar = a + j * ld;
    const A* __restrict br = b + j * ld;
    A* dr = dst + j * ld;
    for (int64_t c = 0; c < ncols; ++c) dr[c] = ar[c] * br[c];
  }
}

// csum[c] += sum_j a[j, c] * b[j, c] for c < ncols, summed down the keys in
// double (a sum over all of a row's keys, whose float rounding would show).
template <typename A>
FASTATTN_INLINE void col_dot_sum(const A* a, const A* b, int64_t ld, int64_t nkeys,
                                 int64_t ncols, double* csum) {
  for (int64_t j = 0; j < nkeys; ++j) {
    const A* __restrict ar = a + j * ld;
    const A* __restrict br = b + j * ld;
    double* __restrict sm = csum;
    for (int64_t c = 0; c < ncols; ++c) sm[c] += static_cast<double>(ar[c] * br[c]);
  }
}

// dst (D x ld, columns [0, ncols)) = factor * rows^T, where rows (nrows x D)
// are read from src with row stride `stride`; columns [nrows, ncols) are 0.
template <typename A, typename T>
FASTATTN_INLINE void load_transposed(A* __restrict dst, int64_t ld, const T* src,
                                     int64_t stride, int64_t nrows, int64_t ncols, int64_t D,
                                     A factor) {
  for (int64_t c = 0; c < nrows; ++c) {
    const T* __restrict r = src + c * stride;
    for (int64_t d = 0; d < D; ++d) dst[d * ld + c] = factor * static_cast<A>(r[d]);
  }
  for (int64_t d = 0; d < D; ++d) std::fill(dst + d * ld + nrows, dst + d * ld + ncols, A(0));
}

// dst[j] = src[j] widened to A.
template <typename A, typename T>
FASTATTN_INLINE void widen(A* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<A>(src[j]);
}

// dst rows (nrows x D, leading dim D) = factor * src rows, widened to A.
template <typename A, typename T>
FASTATTN_INLINE void load_rows(A* __restrict dst, const T* src, int64_t stride, int64_t nrows,
                               int64_t D, A factor = A(1)) {
  for (int64_t i = 0; i < nrows; ++i) {
    widen(dst + i * D, src + i * stride, D);
    if (factor != A(1))
      for (int64_t d = 0; d < D; ++d) dst[i * D + d] *= factor;
  }
}

// Rows of a (L, D) slice as an operand of gemm_acc: the slice itself when T
// is already the accumulation type and its rows are contiguous (no copy),
// else its rows copied (widened) into `scratch`, contiguous. Rows apart by
// another stride are copied too: in the (B, L, H, D) and packed (total, H,
// D) layouts the stride is H * D elements, a multiple of a large power of
// two for the usual H and D, so a tile's rows fall into a few L1 cache sets
// and evict each other on every pass of the tile products (measured: 11%
// slower forward, 23% forward+backward at H=12, D=64 without the copy).
// Returns the pointer and sets `ld` to its row stride.
template <typename A, typename T>
FASTATTN_INLINE const A* rows_operand(const T* src, int64_t stride, int64_t nrows, int64_t D,
                                      A* scratch, int64_t& ld) {
  if constexpr (std::is_same_v<A, T>) {
    if (stride == D || nrows <= 1) {
      ld = stride;
      return src;
    }
  }
  load_rows(scratch, src, stride, nrows, D);
  ld = D;
  return scratch;
}

// Dropout keys of up to n query rows: rows row0 .. row0 + n - 1 (fastattn._rng).
FASTATTN_INLINE void dropout_keys(uint64_t seed, uint64_t row0, int64_t n, uint32_t* ka,
                                  uint32_t* kb) {
  for (int64_t c = 0; c < n; ++c) {
    const dropout::RowKeys k = dropout::row_keys(seed, row0 + static_cast<uint64_t>(c));
    ka[c] = k.a;
    kb[c] = k.b;
  }
}

// dst[j, c] = src[j, c] * (keep(row c, col0 + j) ? scale : 0) for j < nkeys,
// c < ncols (ka, kb: the rows' keys). Multiplying by 0 keeps NaN/inf as the
// reference propagates them. dst may be src.
template <typename A>
FASTATTN_INLINE void col_dropout(const A* src, A* dst, int64_t ld, int64_t nkeys,
                                 int64_t ncols, const uint32_t* ka, const uint32_t* kb,
                                 uint32_t col0, uint32_t thresh, A scale) {
  for (int64_t j = 0; j < nkeys; ++j) {
    const uint32_t col = col0 + static_cast<uint32_t>(j);
    const A* sr = src + j * ld;
    A* dr = dst + j * ld;
    for (int64_t c = 0; c < ncols; ++c) {
      const uint32_t bits = dropout::mix32(dropout::mix32(col ^ ka[c]) ^ kb[c]);
      dr[c] = sr[c] * (bits >= thresh ? scale : A(0));
    }
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
FASTATTN_INLINE void add_bias_row(A* __restrict s, const M* src, int64_t stride, int64_t n) {
  if (stride == 1) {
    const M* __restrict r = src;
    for (int64_t c = 0; c < n; ++c) s[c] += static_cast<A>(r[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) s[c] += static_cast<A>(src[c * stride]);
  }
}

// Applies the mask to the key-major tile t of keys [j0, j0 + nkeys) and
// queries [i0, i0 + ncols) of head (b, h): a bool mask sets forbidden scores
// to -inf, a float mask is added (in A, as the reference adds it after the
// scaling). Only the ncols real query columns are read.
template <typename A>
FASTATTN_INLINE void apply_mask(A* t, int64_t ld, int64_t nkeys, int64_t ncols,
                                const MaskView& mv, int64_t b, int64_t h, int64_t i0,
                                int64_t j0) {
  if (mv.kind == MaskView::kNone) return;
  const int64_t base = b * mv.sb + h * mv.sh + i0 * mv.sm + j0 * mv.sn;
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    const int64_t off = base + j * mv.sn;
    switch (mv.kind) {
      case MaskView::kBool: {
        const uint8_t* m = static_cast<const uint8_t*>(mv.ptr) + off;
        for (int64_t c = 0; c < ncols; ++c) row[c] = m[c * mv.sm] ? row[c] : kNegInf<A>;
        break;
      }
      case MaskView::kFloat: add_bias_row(row, static_cast<const float*>(mv.ptr) + off, mv.sm, ncols); break;
      case MaskView::kDouble: add_bias_row(row, static_cast<const double*>(mv.ptr) + off, mv.sm, ncols); break;
      case MaskView::kHalf: add_bias_row(row, static_cast<const at::Half*>(mv.ptr) + off, mv.sm, ncols); break;
      case MaskView::kBFloat16: add_bias_row(row, static_cast<const at::BFloat16*>(mv.ptr) + off, mv.sm, ncols); break;
      default: break;
    }
  }
}

// Whether the tile of queries [i0, i0 + nrows) and keys [j0, j0 + nkeys)
// crosses the causal diagonal (some key after some row's last allowed key).
FASTATTN_INLINE bool crosses_diagonal(int64_t i0, int64_t j0, int64_t nkeys, int64_t diag) {
  return j0 + nkeys - 1 > i0 + diag;
}

// Causal band on the key-major tile of keys [j0, j0 + nkeys) and queries
// [i0, i0 + ncols): score (i, j) becomes -inf where j > i + diag
// (bottom-right aligned, diag = kv_len - q_len).
template <typename A>
FASTATTN_INLINE void apply_causal(A* t, int64_t ld, int64_t nkeys, int64_t ncols, int64_t i0,
                                  int64_t j0, int64_t diag) {
  for (int64_t j = 0; j < nkeys; ++j) {
    // queries c < j0 + j - diag - i0 may not see key j0 + j
    const int64_t end = std::min<int64_t>(ncols, j0 + j - diag - i0);
    if (end > 0) std::fill(t + j * ld, t + j * ld + end, kNegInf<A>);
  }
}

}  // namespace tiles
}  // namespace cpu
}  // namespace fastattn
