// Forward attention on tensor cores (float16/bfloat16): the kernel template
// and its per-bucket entry point detail::fwd_tc<DT, D>, instantiated in
// attention_fwd_hdim<D>.cu (attention_fwd.cu holds the public launcher).
//
// One block of 4 warps owns BM = 64 query rows of one (batch row, query
// head); each warp owns 16 rows. Q is copied once into shared memory; K and
// V tiles of BN keys stream through two shared-memory stages with cp.async
// (the copy of tile n+1 overlaps the math of tile n). Per key tile a warp
// computes S = Q K^T (mma.sync m16n8k16, fp32 accumulators), masks it,
// updates the running row max m and row sum l (online softmax, log2 units),
// rescales its output accumulator by exp2(m_old - m_new) and adds P V, P
// rounded to the input type as the second MMA's operand:
//
//   x_ij = q_i.k_j * scale * log2(e) + bias_ij * log2(e)  (-inf if masked)
//   m_i  = max_j x_ij,  l_i = sum_j exp2(x_ij - m_i)
//   out_i = sum_j exp2(x_ij - m_i) * keep_ij / (1 - p) * v_j / l_i
//   lse_i = (m_i + log2(l_i)) * ln(2)
//
// The key loop runs from the first to the last key any of the block's rows
// may attend (lengths, causal, window), so fully padded key tiles and those
// outside the band cost nothing; the interior key tiles
// (attention_tiles.cuh) are masked without bounds checks, the boundary ones
// with. ALiBi and softcap (score-term variants) enter each score before the
// mask (attention_common.cuh, pair_score).
//
// Rows that attend nothing keep m = -inf and l = 0: they write out = 0 and
// lse = -inf (exp2 is evaluated against 0 instead of -inf, never NaN).
#pragma once

#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kFwdBM = 16 * kFwdWarps;

// Tiles and occupancy of a variant. Registers per thread: the output
// accumulator holds D / 2 floats, the score tile BN / 2, and a masked
// variant as many mask values again while they are in flight. So D = 256
// takes BN = 16, and masked variants of D >= 96 take BN = 32, to stay within
// 255 registers without spilling. kMinBlocks (blocks resident per SM, which
// caps the registers per thread) keeps the occupancy ptxas picks for the
// unmasked kernels; masked and score-term variants of D <= 64 run 2 blocks
// per SM, dropout variants (the row keys and the keep threshold held in
// registers) one block less than the others, instead of spilling. (Any
// spill fails .ci/check_cuda.sh.)
template <int D, class F>
struct FwdConfig {
  static constexpr int BM = kFwdBM;
  static constexpr int BN = D >= 256 ? 16 : (F::kHasMask && D >= 96 ? 32 : 64);
  static constexpr int kMinBlocks =
      (F::kHasMask || F::kScoreTerms)
          ? 2
          : (D <= 32 ? (F::kDropout ? 3 : 4) : (D <= 64 ? (F::kDropout ? 2 : 3) : 2));
  static constexpr size_t kSmemBytes = static_cast<size_t>(BM + 4 * BN) * smem_stride<D>() * 2;
};

// p: the problem, output and lse (see attention.h). inv_keep / threshold:
// dropout constants (unused without dropout). D: head-dim bucket (>= p.D).
// F: the variant's features (Features<...>).
template <typename T, int D, class F>
__global__ void __launch_bounds__(kFwdThreads, (FwdConfig<D, F>::kMinBlocks))
    attention_fwd_tc_kernel(const FwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int BM = FwdConfig<D, F>::BM;
  constexpr int BN = FwdConfig<D, F>::BN;
  constexpr int SS = smem_stride<D>();
  constexpr int NB = BN / 8;  // 8-key column blocks of the score tile
  constexpr int DB = D / 8;   // 8-wide column blocks of the output tile
  constexpr bool E = F::kEven;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BM * SS;      // 2 stages of BN x SS
  T* sV = sK + 2 * BN * SS;  // 2 stages of BN x SS

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, BM);
  const int m0 = static_cast<int>(blockIdx.x % tiles_m) * BM;
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view<F::kMask>(pb, bh / pb.Hq, bh % pb.Hq);
  const MaskView<F::kMask> mask(hv);
  const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;

  const T* q = static_cast<const T*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const T* k = static_cast<const T*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;

  // Key tiles first_tile .. first_tile + num_tiles - 1 hold the keys
  // [key_begin, n_end) that the block's rows may attend.
  const int n_end = key_end<F::kBanded>(hv, m0, m0 + BM);
  const int first_tile = key_begin<F::kBanded>(hv, m0) / BN;
  const int num_tiles = static_cast<int>(ceil_div(n_end, BN)) - first_tile;  // <= 0: none
  const TileRange interior = interior_key_tiles<F, BM, BN>(hv, m0);

  auto prefetch = [&](int it, int stage) {
    const int n0 = (first_tile + it) * BN;
    load_tile_async<T, BN, D, kFwdThreads, E>(sK + stage * BN * SS, k, pb.k.stride_l, n0,
                                              n_end, d);
    load_tile_async<T, BN, D, kFwdThreads, E>(sV + stage * BN * SS, v, pb.v.stride_l, n0,
                                              n_end, d);
  };
  load_tile_async<T, BM, D, kFwdThreads, E>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
  cp_async_commit();
  if (num_tiles > 0) {
    prefetch(0, 0);
    cp_async_commit();
  }

  // The two rows of this thread: g and g + 8 of the warp's 16.
  int rows[2];
  rows[0] = m0 + warp * 16 + g;
  rows[1] = rows[0] + 8;
  const RowBand band = row_bands<F::kBanded>(hv, rows);
  Dropout drop;
  dropout::RowKeys keys[2] = {{0u, 0u}, {0u, 0u}};
  if constexpr (F::kDropout) {
    drop = make_dropout(pb, inv_keep, threshold);
    keys[0] = dropout_keys(drop, pb, hv, rows[0]);
    keys[1] = dropout_keys(drop, pb, hv, rows[1]);
  }

  float acc[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};  // this thread's partial row sums (quad-reduced at the end)
  const float scale_log2 = pb.scale * kLog2e;
  const T* sQw = sQ + warp * 16 * SS;

  for (int it = 0; it < num_tiles; ++it) {
    pipeline_next(it, num_tiles, prefetch);
    const int stage = it & 1;
    const int tile = first_tile + it;
    const int n0 = tile * BN;
    const T* sKs = sK + stage * BN * SS;
    const T* sVs = sV + stage * BN * SS;

    // S = Q K^T for the warp's 16 rows and the tile's BN keys, then masked.
    float s[NB][4];
#pragma unroll
    for (int i = 0; i < NB; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    mma_abt<T, D, NB>(s, sQw, sKs, lane);
    if (interior.holds(tile)) {
      mask_rows_tile<F, false>(s, pb, mask, terms, rows, band, n0, t, scale_log2);
    } else {
      mask_rows_tile<F, true>(s, pb, mask, terms, rows, band, n0, t, scale_log2);
    }

    // Online softmax and dropout. s[nb][2r + e] is row rows[r], key
    // n0 + nb * 8 + 2t + e.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
      const float m_new = fmaxf(m_run[r], quad_max(mx));
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[r] - m_use);
      m_run[r] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float pr = exp2f(s[nb][2 * r + e] - m_use);
          sum += pr;
          if constexpr (F::kDropout) pr *= dropout_factor(drop, keys[r], n0 + nb * 8 + 2 * t + e);
          s[nb][2 * r + e] = pr;
        }
      }
      l_run[r] = l_run[r] * alpha + sum;
#pragma unroll
      for (int db = 0; db < DB; ++db) {
        acc[db][2 * r] *= alpha;
        acc[db][2 * r + 1] *= alpha;
      }
    }

    // acc += P V.
    mma_pb<T, D, NB, DB>(acc, s, sVs, 0, lane);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  // Epilogue: out = acc / l (0 for empty rows), lse in natural log.
  T* out = static_cast<T*>(p.out.ptr) + hv.b * p.out.stride_b + hv.h * p.out.stride_h;
  float* lse = p.lse + (hv.b * pb.Hq + hv.h) * pb.Lq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const float inv = l != 0.f ? 1.f / l : 0.f;  // NaN scores propagate, as in torch
    const int i = rows[r];
    if (!E && i >= pb.Lq) continue;
    if (t == 0) lse[i] = l != 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
    T* orow = out + static_cast<int64_t>(i) * p.out.stride_l;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = db * 8 + 2 * t;
      if (E || col < d) {
        const uint32_t pair = Elem<T>::pack2(acc[db][2 * r] * inv, acc[db][2 * r + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + col) = pair;
      }
    }
  }
}

template <DType DT, int D>
cudaError_t fwd_tc(const FwdParams& p, cudaStream_t stream) {
  using T = typename CudaType<DT>::type;
  return with_features<DT>(p.pb, [&](auto features) {
    using F = decltype(features);
    return launch_kernel(attention_fwd_tc_kernel<T, D, F>,
                         ceil_div(p.pb.Lq, kFwdBM) * p.pb.B * p.pb.Hq, kFwdThreads,
                         FwdConfig<D, F>::kSmemBytes, stream, p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

// Explicit instantiation of both 16-bit dtypes of one bucket.
#define FASTATTN_INSTANTIATE_FWD_TC(D)                                                \
  template cudaError_t fwd_tc<DType::kFloat16, D>(const FwdParams&, cudaStream_t);    \
  template cudaError_t fwd_tc<DType::kBFloat16, D>(const FwdParams&, cudaStream_t);

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
