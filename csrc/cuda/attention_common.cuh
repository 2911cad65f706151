// Device helpers shared by the CUDA attention kernels: the compile-time
// features of a kernel variant, the per-(batch, head) view of a Problem
// (lengths, the band of causal and window, mask, ALiBi and softcap,
// dropout), and thin wrappers over the sm_80 instructions the tensor-core
// kernels use (cp.async, ldmatrix, mma.sync m16n8k16). The tile loops built from them: attention_tiles.cuh.
//
// Scores are kept in log2 units: x = (q.k * scale + bias) * log2(e), so that
// softmax weights are exp2(x - max) (one MUFU.EX2 each) and
// lse = (max + log2(sum)) * ln(2).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dropout_hash.h"
#include "cuda/attention.h"

namespace fastattn {
namespace cuda {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// -------------------------------------------------------------- features

// The compile-time features of one kernel variant (attention_variants.h):
// the launchers pick them once per launch (attention_tiles.cuh,
// with_features), so no kernel switches over them at run time.
template <MaskKind MASK, bool BANDED, bool DROPOUT, bool EVEN, bool SCORE_TERMS = false>
struct Features {
  static constexpr MaskKind kMask = MASK;
  // Each row attends a band of keys (causal and/or a window, the edges in
  // the HeadView): the key range of a row and the interior tiles depend on
  // the row. Without it a row attends every key within the lengths.
  static constexpr bool kBanded = BANDED;
  static constexpr bool kDropout = DROPOUT;
  // No lengths, Lq and Lk multiples of 64, head dim = bucket: no bounds
  // checks anywhere (attention_variants.h, even_tiles).
  static constexpr bool kEven = EVEN;
  static constexpr bool kHasMask = MASK != MaskKind::kNone;
  // ALiBi, softcap and/or T5's relative bias (ScoreTerms, values at run time).
  static constexpr bool kScoreTerms = SCORE_TERMS;
};

// A band edge that bounds nothing: every position is < 2^30 (the binding
// checks Lq + Lk < 2^30), so i + kUnbounded and j - kUnbounded neither
// overflow nor bound anything.

// Element type of a mask kind in memory.
template <MaskKind M> struct MaskElem { using type = unsigned char; };  // kNone, kBool
template <> struct MaskElem<MaskKind::kFloat16> { using type = __half; };
template <> struct MaskElem<MaskKind::kBFloat16> { using type = __nv_bfloat16; };
template <> struct MaskElem<MaskKind::kFloat32> { using type = float; };

__device__ __forceinline__ float mask_to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float mask_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float mask_to_float(float x) { return x; }

// ------------------------------------------------------------------ rows

constexpr int kUnbounded = 1 << 30;

// Everything a block needs to know about its (batch row, query head):
// the valid lengths, the band, and base pointers.
struct HeadView {
  int64_t b = 0, h = 0, hk = 0;  // batch row, query head, kv head (h / group)
  int q_len = 0, kv_len = 0;     // clamped valid lengths
  int off = 0;                   // kv_len - q_len: query i sits at key position i + off
  // The band (banded variants): query i may attend key j only if
  // i + lo_off <= j <= i + hi_off (causal: hi_off <= off; a window of
  // (left, right): lo_off = off - left, hi_off <= off + right).
  int lo_off = -kUnbounded, hi_off = kUnbounded;
  const unsigned char* mask = nullptr;  // mask base of (b, h), bytes; nullptr if none
};

__device__ __forceinline__ int clamp_len(const int32_t* lengths, int64_t b, int64_t full) {
  if (lengths == nullptr) return static_cast<int>(full);
  const int v = lengths[b];
  return v < 0 ? 0 : (v > full ? static_cast<int>(full) : v);
}

template <MaskKind M>
__device__ __forceinline__ HeadView head_view(const Problem& pb, int64_t b, int64_t h) {
  HeadView hv;
  hv.b = b;
  hv.h = h;
  hv.hk = h / (pb.Hq / pb.Hkv);
  hv.q_len = clamp_len(pb.q_lengths, b, pb.Lq);
  hv.kv_len = clamp_len(pb.kv_lengths, b, pb.Lk);
  hv.off = hv.kv_len - hv.q_len;
  if (pb.causal) hv.hi_off = hv.off;
  if (pb.window_right >= 0) hv.hi_off = min(hv.hi_off, hv.off + pb.window_right);
  if (pb.window_left >= 0) hv.lo_off = hv.off - pb.window_left;
  if constexpr (M != MaskKind::kNone) {
    hv.mask = static_cast<const unsigned char*>(pb.mask) +
              (b * pb.mask_stride_b + h * pb.mask_stride_h) *
                  static_cast<int64_t>(sizeof(typename MaskElem<M>::type));
  }
  return hv;
}

// The mask of one (batch row, query head), of kind M, as the score loops
// read it: apply(pb, i, j, x) returns the score x (log2 units) with the
// mask's verdict on pair (i, j): -inf where a bool mask forbids the pair,
// x + bias * log2(e) for a bias, x itself without mask. The caller makes
// sure (i, j) lies inside the (Lq, Lk) mask. Only the base pointer lives in
// registers; the strides are read from the kernel parameters at each use.
template <MaskKind M>
struct MaskView {
  using Elem = typename MaskElem<M>::type;
  const Elem* base = nullptr;

  __device__ __forceinline__ explicit MaskView(const HeadView& hv) {
    if constexpr (M != MaskKind::kNone) base = reinterpret_cast<const Elem*>(hv.mask);
  }

  __device__ __forceinline__ float apply(const Problem& pb, int i, int j, float x) const {
    if constexpr (M == MaskKind::kNone) {
      return x;
    } else {
      const Elem m = base[i * pb.mask_stride_q + j * pb.mask_stride_k];
      if constexpr (M == MaskKind::kBool) {
        return m != 0 ? x : -INFINITY;
      } else {
        return x + mask_to_float(m) * kLog2e;
      }
    }
  }
};

// Bounds of the boundary tiles, precomputed per row or per key so that a
// boundary pair costs a few integer compares:
//   query-major (forward, dQ): key j of row i passes iff
//       j < key_limit(i) and j - i >= lo_off;
//   key-major (dK/dV): query i of key j passes iff
//       query_low(j) <= i < query_high(j).
// They fold the lengths (a row past q_len passes no key, a key past kv_len
// no row) and the band i + lo_off <= j <= i + hi_off. Without a band the
// lower bounds are 0 and the upper ones the lengths.
template <bool BANDED>
__device__ __forceinline__ int key_limit(const HeadView& hv, int i) {
  if (i >= hv.q_len) return 0;
  return BANDED ? min(hv.kv_len, i + hv.hi_off + 1) : hv.kv_len;
}
template <bool BANDED>
__device__ __forceinline__ int query_low(const HeadView& hv, int j) {
  if (j >= hv.kv_len) return 0x7fffffff;
  return BANDED ? j - hv.hi_off : 0;
}
template <bool BANDED>
__device__ __forceinline__ int query_high(const HeadView& hv, int j) {
  return BANDED ? min(hv.q_len, j - hv.lo_off + 1) : hv.q_len;
}

// The masked score of pair (i, j) from its score x in log2 units
// (pair_score). BOUNDARY: the tile may hold pairs that may not attend (past
// the lengths, outside the band): `pass` (RowBand / KeyBand) says
// whether this one may. A pair that does not pass reads mask element
// (0, 0) instead of its own (always inside the mask: a tile is only visited
// when Lq, Lk >= 1; never past the end of a row) and gets -inf: the load is
// not predicated, which keeps ptxas from holding every address of the tile
// in registers at once. Otherwise (interior tiles, attention_tiles.cuh) the
// caller knows that every pair of the tile passes and only the mask applies.
template <class F, bool BOUNDARY>
__device__ __forceinline__ float tile_score(const Problem& pb, const MaskView<F::kMask>& mask,
                                            int i, int j, float x, bool pass) {
  if constexpr (!BOUNDARY) {
    return mask.apply(pb, i, j, x);
  } else if constexpr (F::kHasMask) {
    const float y = mask.apply(pb, pass ? i : 0, pass ? j : 0, x);
    return pass ? y : -INFINITY;
  } else {
    return pass ? x : -INFINITY;
  }
}

// The keys [key_begin, key_end) that some query row in [row0, row_end) may
// attend (key_end clamped to >= 0): the key loop of a query tile runs over
// them only, so fully padded key tiles and those outside the band are never
// visited (a window's cost grows with the window, not with Lk).
template <bool BANDED>
__device__ __forceinline__ int key_end(const HeadView& hv, int row0, int row_end) {
  const int last_row = min(row_end, hv.q_len) - 1;
  if (last_row < row0) return 0;
  int end = hv.kv_len;
  if (BANDED) end = min(end, last_row + hv.hi_off + 1);
  return max(end, 0);
}
template <bool BANDED>
__device__ __forceinline__ int key_begin(const HeadView& hv, int row0) {
  return BANDED ? max(0, row0 + hv.lo_off) : 0;
}

// The query rows [query_begin, query_end) that may attend some key in
// [key0, key_stop): the query loop of a key tile (dK/dV) runs over the
// query tiles holding them.
template <bool BANDED>
__device__ __forceinline__ int query_begin(const HeadView& hv, int key0) {
  return BANDED ? max(0, key0 - hv.hi_off) : 0;
}
template <bool BANDED>
__device__ __forceinline__ int query_end(const HeadView& hv, int key_stop) {
  return BANDED ? min(hv.q_len, key_stop - 1 - hv.lo_off + 1) : hv.q_len;
}

// ---------------------------------------------------------- score terms

// ALiBi and softcapping of one (batch row, query head), in log2 units (the
// scores' unit): with x = q.k * scale * log2(e),
//   softcap:  x <- cap2 * tanh(x / cap2),   cap2 = softcap * log2(e)
//             (= softcap * tanh(s / softcap) * log2(e) for s = q.k * scale),
//   ALiBi:    x <- x - slope2 * |i + off - j|,   slope2 = slope * log2(e),
//   T5:       x <- x + rel[j - i]   (Problem::rel_bias, already in log2 units).
// Only the kernels of a SCORE_TERMS variant build one; cap2 = 0 means no
// softcap, slope2 = 0 no ALiBi, rel = nullptr no relative bias (a
// block-uniform branch each).
struct ScoreTerms {
  float cap2 = 0.f, inv_cap2 = 0.f;
  float slope2 = 0.f;
  int off = 0;
  const float* rel = nullptr;  // rel[j - i]: T5's bias of pair (i, j), log2 units
};

template <bool SCORE_TERMS>
__device__ __forceinline__ ScoreTerms score_terms(const Problem& pb, const HeadView& hv) {
  ScoreTerms st;
  if constexpr (SCORE_TERMS) {
    if (pb.softcap > 0.f) {
      st.cap2 = pb.softcap * kLog2e;
      st.inv_cap2 = 1.f / st.cap2;
    }
    if (pb.alibi_slopes != nullptr) {
      st.slope2 = pb.alibi_slopes[hv.b * pb.alibi_stride_b + hv.h] * kLog2e;
    }
    st.off = hv.off;
    if (pb.rel_bias != nullptr) {
      st.rel = pb.rel_bias + hv.h * pb.rel_stride + kRelPad + pb.rel_radius - (pb.Lk - pb.Lq);
    }
  }
  return st;
}

// tanh(y) = 1 - 2 / (1 + e^(2y)): one exp2 and one fast division, exact to
// a few float32 ulp of absolute error (what the softmax sees; tanh.approx
// would be off by up to 2^-11 relative, i.e. 0.02 in a score capped at 50).
// e^(2y) = inf gives 1, e^(2y) = 0 gives -1: never NaN.
__device__ __forceinline__ float tanh_exp2(float y) {
  const float e = exp2f(y * (2.f * kLog2e));
  return 1.f - __fdividef(2.f, 1.f + e);
}

// The additive score terms of pair (i, j) after the softcap, log2 units:
// ALiBi's -slope |i + off - j| and T5's relative bias.
__device__ __forceinline__ float additive_terms(const ScoreTerms& st, int i, int j) {
  float a = -st.slope2 * static_cast<float>(abs(i + st.off - j));
  if (st.rel != nullptr) a += st.rel[j - i];
  return a;
}

// The score of pair (i, j) in log2 units from its raw q.k: scaled, then
// (SCORE_TERMS) softcapped and the additive terms added. The mask and the
// bounds come after (tile_score).
template <bool SCORE_TERMS>
__device__ __forceinline__ float pair_score(const ScoreTerms& st, float qk, float scale_log2,
                                            int i, int j) {
  float x = qk * scale_log2;
  if constexpr (SCORE_TERMS) {
    if (st.cap2 > 0.f) x = st.cap2 * tanh_exp2(x * st.inv_cap2);
    x += additive_terms(st, i, j);
  }
  return x;
}

// The factor the score gradient of pair (i, j) takes through the softcap,
// d(cap tanh(s / cap)) / ds = 1 - tanh^2, recovered from the pair's final
// score x (log2 units; -inf for an excluded pair, which gives 0, as its dS
// is 0 anyway). 1 without softcap.
__device__ __forceinline__ float softcap_grad(const ScoreTerms& st, float x, int i, int j) {
  if (st.cap2 == 0.f) return 1.f;
  float t = (x - additive_terms(st, i, j)) * st.inv_cap2;
  t = fminf(fmaxf(t, -1.f), 1.f);
  return 1.f - t * t;
}

// lse of a row in log2 units, +inf for an empty row (then every exp2 is 0).
__device__ __forceinline__ float lse_log2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// ---------------------------------------------------------------- dropout

// Dropout of one kernel launch: the keep threshold and 1 / (1 - p); the
// seed is read on the device (no host synchronisation). Only kernels of a
// DROPOUT variant build one.
struct Dropout {
  uint32_t threshold = 0;
  float inv_keep = 1.f;
  uint64_t seed = 0;
};

__device__ __forceinline__ Dropout make_dropout(const Problem& pb, float inv_keep,
                                                uint32_t threshold) {
  Dropout d;
  d.seed = static_cast<uint64_t>(*pb.seed);
  d.threshold = threshold;
  d.inv_keep = inv_keep;
  return d;
}

// The logical dropout row of query i of (b, h): (b * Hq + h) * Lq + i.
__device__ __forceinline__ uint64_t dropout_row(const Problem& pb, const HeadView& hv, int i) {
  return static_cast<uint64_t>((hv.b * pb.Hq + hv.h) * pb.Lq + i);
}

__device__ __forceinline__ dropout::RowKeys dropout_keys(const Dropout& d, const Problem& pb,
                                                         const HeadView& hv, int i) {
  return dropout::row_keys(d.seed, dropout_row(pb, hv, i));
}

// Multiplier of a probability: 0 if dropped, 1 / (1 - p) if kept.
__device__ __forceinline__ float dropout_factor(const Dropout& d, dropout::RowKeys keys, int j) {
  return dropout::keep(keys, static_cast<uint32_t>(j), d.threshold) ? d.inv_keep : 0.f;
}

// ------------------------------------------------------------- elements

template <typename T> struct Elem;
template <> struct Elem<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
  // Two floats as one 32-bit register of two halves (lo = first).
  __device__ static uint32_t pack2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <> struct Elem<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <> struct Elem<float> {
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
};

// --------------------------------------------------- sm_80 instructions

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous global->shared copy; when !valid the 16 bytes are
// zero-filled and nothing is read (src-size 0).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8,
// row l % 8, and receives in r[m] the elements (l / 4, 2 (l % 4) + {0, 1})
// of matrix m (transposed with .trans: elements (2 (l % 4) + {0, 1}, l / 4)).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a (16x16, row-major) * b (16x8, column-major), fp32 accumulators.
// Fragment layout (g = lane / 4, t = lane % 4):
//   a[0] (g, 2t..2t+1)  a[1] (g+8, 2t..)  a[2] (g, 2t+8..)  a[3] (g+8, 2t+8..)
//   b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   c[0..1] (g, 2t..2t+1)  c[2..3] (g+8, 2t..2t+1)
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ------------------------------------------------------ tile operations

// Shared-memory row stride (elements) of a tile with head-dim bucket D:
// 16 bytes of padding shift consecutive rows by 4 banks, so the 8 row
// addresses of an ldmatrix hit 32 distinct banks (no swizzle needed).
template <int D>
constexpr int smem_stride() {
  return D + 8;
}

// Starts the copy of rows [row0, row0 + ROWS) of a (L, D) slice into a
// shared tile (ROWS x smem_stride<D>()); rows >= rows_valid and columns
// >= d are zero-filled. EVEN: the caller knows every row is < rows_valid
// and d == D, so no chunk is predicated. Caller commits the cp.async group.
template <typename T, int ROWS, int D, int THREADS, bool EVEN = false>
__device__ __forceinline__ void load_tile_async(T* tile, const T* src, int64_t row_stride,
                                                int row0, int rows_valid, int d) {
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  constexpr int kChunks = ROWS * kChunksPerRow;
#pragma unroll
  for (int c0 = 0; c0 < kChunks; c0 += THREADS) {
    const int c = c0 + static_cast<int>(threadIdx.x);
    if (kChunks % THREADS == 0 || c < kChunks) {
      const int r = c / kChunksPerRow;
      const int col = (c % kChunksPerRow) * 8;
      const bool valid = EVEN || (row0 + r < rows_valid && col < d);
      const T* g = valid ? src + static_cast<int64_t>(row0 + r) * row_stride + col : src;
      cp_async16(smem_addr(tile + r * smem_stride<D>() + col), g, valid);
    }
  }
}

// A fragments (16 rows x 16 columns starting at column k0) of a row-major
// shared tile whose row 0 is the warp's first row.
template <int D>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const void* tile, int k0,
                                            int lane) {
  const int row = lane & 15;
  const int col = k0 + (lane >> 4) * 8;
  ldmatrix_x4(a, smem_addr(static_cast<const char*>(tile) +
                           (row * smem_stride<D>() + col) * 2));
}

// B fragments of two adjacent 8-column blocks for "x @ tile^T": the tile is
// (N rows, D) row-major and plays B[k = column][n = row]. Rows n0..n0+15,
// columns k0..k0+15: b[0], b[1] for rows n0..n0+7; b[2], b[3] for n0+8..15.
template <int D>
__device__ __forceinline__ void load_bt_frag(uint32_t (&b)[4], const void* tile, int n0, int k0,
                                             int lane) {
  const int row = n0 + (lane & 7) + (lane >> 4) * 8;
  const int col = k0 + ((lane >> 3) & 1) * 8;
  ldmatrix_x4(b, smem_addr(static_cast<const char*>(tile) +
                           (row * smem_stride<D>() + col) * 2));
}

// B fragments of two adjacent 8-column blocks for "x @ tile": the tile is
// (K rows, D) row-major and plays B[k = row][n = column]. Rows k0..k0+15,
// columns n0..n0+15: b[0], b[1] for columns n0..n0+7; b[2], b[3] for n0+8..15.
template <int D>
__device__ __forceinline__ void load_b_frag(uint32_t (&b)[4], const void* tile, int k0, int n0,
                                            int lane) {
  const int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = n0 + (lane >> 4) * 8;
  ldmatrix_x4_trans(b, smem_addr(static_cast<const char*>(tile) +
                                 (row * smem_stride<D>() + col) * 2));
}

// Sum over the 4 lanes of a quad (the lanes sharing one accumulator row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Host side: the launch-time dropout constants.
inline uint32_t dropout_threshold(double p) { return dropout::threshold(p); }
inline float dropout_inv_keep(double p) { return p > 0.0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.f; }

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
