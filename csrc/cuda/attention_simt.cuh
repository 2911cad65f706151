// float32 attention on CUDA cores: exact fp32 FMAs (no TF32), so the cuda
// backend keeps float32's accuracy. The kernel templates and their
// per-bucket entry points detail::fwd_simt / bwd_dkdv_simt / bwd_dq_simt,
// instantiated in attention_simt_hdim<D>.cu (attention_simt.cu holds the
// public launchers).
//
// Simple by design: one warp per query row (forward, dQ) or per key (dK/dV),
// lane l owning the l-th key (query) of a 32-wide tile for the scores and
// head-dim columns l, l + 32, ... for the accumulators. Tiles are staged in
// shared memory; rows that are read by a lane each (the "lane = key"
// operand) use a row stride of D + 1 floats, so the 32 lanes hit 32 banks.
//
// Same math and conventions as the tensor-core kernels (attention_fwd.cuh,
// attention_bwd.cuh): scores in log2 units, online softmax, delta from the
// shared preprocess kernel, dK/dV per key tile looping over the query heads
// of its GQA group and their query tiles, dQ per query tile: no atomics.
// Features are template parameters too (no even variants: the loads here
// are plain predicated loads); interior tiles skip the bounds checks, tiles
// outside the band (causal, window) are not visited.
#pragma once

#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

constexpr int kSimtWarps = 4;
constexpr int kSimtThreads = 32 * kSimtWarps;
constexpr int kRowsPerWarp = 4;                       // query rows (fwd, dQ) or keys (dK/dV)
constexpr int kSimtRows = kSimtWarps * kRowsPerWarp;  // rows per block
constexpr int kSimtTile = 32;                         // the lane-indexed tile
// Blocks per SM the kernels are compiled for (4 caps registers at 128, 3 at
// 168): an explicit bound, since ptxas left to pick the occupancy itself
// spills a few registers in some variants to reach the next occupancy
// step. D = 256 takes 3: its dK/dV accumulators next to the score terms'
// state do not fit 128 registers without spilling.
template <int D>
constexpr int simt_min_blocks() { return D >= 256 ? 3 : 4; }

// Copies rows [row0, row0 + ROWS) of a (L, D) float slice into shared
// memory with row stride STRIDE; rows >= rows_valid, columns >= d are 0.
template <int ROWS, int D, int STRIDE>
__device__ __forceinline__ void load_rows(float* tile, const float* src, int64_t row_stride,
                                          int row0, int rows_valid, int d) {
  for (int e = threadIdx.x; e < ROWS * D; e += kSimtThreads) {
    const int r = e / D, c = e % D;
    const bool valid = row0 + r < rows_valid && c < d;
    tile[r * STRIDE + c] = valid ? src[static_cast<int64_t>(row0 + r) * row_stride + c] : 0.f;
  }
}

template <int D>
__device__ __forceinline__ float dot_rows(const float* a, const float* b) {
  float s = 0.f;
#pragma unroll 16
  for (int c = 0; c < D; ++c) s = fmaf(a[c], b[c], s);
  return s;
}

// ---------------------------------------------------------------- forward

// p: problem, out, lse. inv_keep / threshold: dropout constants.
// D: head-dim bucket (multiple of 32, >= p.pb.D). F: the variant's features.
template <int D, class F>
__global__ void __launch_bounds__(kSimtThreads, simt_min_blocks<D>())
    attention_fwd_simt_kernel(const FwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int DPL = D / 32;  // accumulator columns per lane
  constexpr int KS = D + 1;
  extern __shared__ float smem_f[];
  float* sQ = smem_f;               // kSimtRows x D
  float* sK = sQ + kSimtRows * D;   // kSimtTile x KS
  float* sV = sK + kSimtTile * KS;  // kSimtTile x D

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, kSimtRows);
  const int m0 = static_cast<int>(blockIdx.x % tiles_m) * kSimtRows;
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view<F::kMask>(pb, bh / pb.Hq, bh % pb.Hq);
  const MaskView<F::kMask> mask(hv);
  const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* q = static_cast<const float*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const float* k = static_cast<const float*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const float* v = static_cast<const float*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;

  load_rows<kSimtRows, D, D>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
  const int n_begin = key_begin<F::kBanded>(hv, m0) / kSimtTile * kSimtTile;
  const int n_end = key_end<F::kBanded>(hv, m0, m0 + kSimtRows);
  const TileRange interior_tiles = interior_key_tiles<F, kSimtRows, kSimtTile>(hv, m0);
  Dropout drop;
  if constexpr (F::kDropout) drop = make_dropout(pb, inv_keep, threshold);
  const float scale_log2 = pb.scale * kLog2e;

  float m_run[kRowsPerWarp], l_run[kRowsPerWarp], acc[kRowsPerWarp][DPL];
  int key_lim[kRowsPerWarp];
  dropout::RowKeys keys[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) acc[r][c] = 0.f;
    const int i = m0 + warp * kRowsPerWarp + r;
    key_lim[r] = key_limit<F::kBanded>(hv, i);
    keys[r] = F::kDropout ? dropout_keys(drop, pb, hv, i) : dropout::RowKeys{0u, 0u};
  }

  for (int n0 = n_begin; n0 < n_end; n0 += kSimtTile) {
    __syncthreads();  // the previous tile is consumed
    load_rows<kSimtTile, D, KS>(sK, k, pb.k.stride_l, n0, n_end, d);
    load_rows<kSimtTile, D, D>(sV, v, pb.v.stride_l, n0, n_end, d);
    __syncthreads();
    const int j = n0 + lane;
    const bool interior = interior_tiles.holds(n0 / kSimtTile);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const float dot = pair_score<F::kScoreTerms>(
          terms, dot_rows<D>(sQ + row * D, sK + lane * KS), scale_log2, m0 + row, j);
      // the lower band edge as RowBand checks it (attention_tiles.cuh)
      const bool pass = j < key_lim[r] && (!F::kBanded || j - (m0 + row) >= hv.lo_off);
      const float x = interior ? tile_score<F, false>(pb, mask, m0 + row, j, dot, true)
                               : tile_score<F, true>(pb, mask, m0 + row, j, dot, pass);
      const float m_new = fmaxf(m_run[r], warp_max(x));
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[r] - m_use);
      m_run[r] = m_new;
      float pr = exp2f(x - m_use);
      l_run[r] = l_run[r] * alpha + warp_sum(pr);
      if constexpr (F::kDropout) pr *= dropout_factor(drop, keys[r], j);
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[r][c] *= alpha;
      for (int jj = 0; jj < kSimtTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, pr, jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) acc[r][c] = fmaf(pj, sV[jj * D + lane + 32 * c], acc[r][c]);
      }
    }
  }

  float* out = static_cast<float*>(p.out.ptr) + hv.b * p.out.stride_b + hv.h * p.out.stride_h;
  float* lse = p.lse + (hv.b * pb.Hq + hv.h) * pb.Lq;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = m0 + warp * kRowsPerWarp + r;
    if (i >= pb.Lq) continue;
    const float l = l_run[r];
    const float inv = l != 0.f ? 1.f / l : 0.f;  // NaN scores propagate, as in torch
    if (lane == 0) lse[i] = l != 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int col = lane + 32 * c;
      if (col < d) out[static_cast<int64_t>(i) * p.out.stride_l + col] = acc[r][c] * inv;
    }
  }
}

// ------------------------------------------------------------- backward

// dK/dV of kSimtRows keys of one (batch row, kv head), summed over the query
// heads of its group and all their query rows. Warp w owns keys
// w * kRowsPerWarp + r; lane l is query i0 + l of the current query tile.
template <int D, class F>
__global__ void __launch_bounds__(kSimtThreads, simt_min_blocks<D>())
    attention_bwd_dkdv_simt_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int DPL = D / 32;
  constexpr int QS = D + 1;
  extern __shared__ float smem_f[];
  float* sK = smem_f;                  // kSimtRows x D
  float* sV = sK + kSimtRows * D;      // kSimtRows x D
  float* sQ = sV + kSimtRows * D;      // kSimtTile x QS
  float* sdO = sQ + kSimtTile * QS;    // kSimtTile x QS
  float* sLse = sdO + kSimtTile * QS;  // kSimtTile, log2 units
  float* sDelta = sLse + kSimtTile;    // kSimtTile

  const Problem& pb = p.pb;
  const int64_t tiles_n = ceil_div(pb.Lk, kSimtRows);
  const int key0 = static_cast<int>(blockIdx.x % tiles_n) * kSimtRows;
  const int64_t bhk = blockIdx.x / tiles_n;
  const int64_t b = bhk / pb.Hkv, hk = bhk % pb.Hkv;
  const int64_t group = pb.Hq / pb.Hkv;
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale_log2 = pb.scale * kLog2e;
  Dropout drop;
  if constexpr (F::kDropout) drop = make_dropout(pb, inv_keep, threshold);

  const float* k = static_cast<const float*>(pb.k.ptr) + b * pb.k.stride_b + hk * pb.k.stride_h;
  const float* v = static_cast<const float*>(pb.v.ptr) + b * pb.v.stride_b + hk * pb.v.stride_h;
  // Lengths and causal offset are per batch row, the same for every head.
  const HeadView hv0 = head_view<MaskKind::kNone>(pb, b, hk * group);
  load_rows<kSimtRows, D, D>(sK, k, pb.k.stride_l, key0, hv0.kv_len, d);
  load_rows<kSimtRows, D, D>(sV, v, pb.v.stride_l, key0, hv0.kv_len, d);

  float dk[kRowsPerWarp][DPL], dv[kRowsPerWarp][DPL];
  int q_low[kRowsPerWarp], q_high[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int c = 0; c < DPL; ++c) dk[r][c] = dv[r][c] = 0.f;
    q_low[r] = query_low<F::kBanded>(hv0, key0 + warp * kRowsPerWarp + r);
    q_high[r] = query_high<F::kBanded>(hv0, key0 + warp * kRowsPerWarp + r);
  }

  if (key0 < hv0.kv_len) {  // else the whole key tile is padding: dk = dv = 0
    const int i_begin = query_begin<F::kBanded>(hv0, key0) / kSimtTile * kSimtTile;
    const int i_end = query_end<F::kBanded>(hv0, min(key0 + kSimtRows, hv0.kv_len));
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const HeadView hv = head_view<F::kMask>(pb, b, h);
      const MaskView<F::kMask> mask(hv);
      const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
      const float* q = static_cast<const float*>(pb.q.ptr) + b * pb.q.stride_b + h * pb.q.stride_h;
      const float* dout =
          static_cast<const float*>(p.dout.ptr) + b * p.dout.stride_b + h * p.dout.stride_h;
      const float* lse = p.lse + (b * pb.Hq + h) * pb.Lq;
      const float* delta = p.delta + (b * pb.Hq + h) * pb.Lq;
      for (int i0 = i_begin; i0 < i_end; i0 += kSimtTile) {
        __syncthreads();  // the previous query tile is consumed
        load_rows<kSimtTile, D, QS>(sQ, q, pb.q.stride_l, i0, hv.q_len, d);
        load_rows<kSimtTile, D, QS>(sdO, dout, p.dout.stride_l, i0, hv.q_len, d);
        if (threadIdx.x < kSimtTile) {
          const int i = i0 + threadIdx.x;
          sLse[threadIdx.x] = i < hv.q_len ? lse_log2(lse[i]) : INFINITY;
          sDelta[threadIdx.x] = i < hv.q_len ? delta[i] : 0.f;
        }
        __syncthreads();
        const int i = i0 + lane;
        const bool interior = interior_query_tile<F, kSimtTile, kSimtRows>(hv0, i0, key0);
        const dropout::RowKeys keys =
            F::kDropout ? dropout_keys(drop, pb, hv, i) : dropout::RowKeys{0u, 0u};
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const int jr = warp * kRowsPerWarp + r;
          const int j = key0 + jr;
          const float s = pair_score<F::kScoreTerms>(
              terms, dot_rows<D>(sQ + lane * QS, sK + jr * D), scale_log2, i, j);
          const bool pass = i >= q_low[r] && i < q_high[r];
          const float x = interior ? tile_score<F, false>(pb, mask, i, j, s, true)
                                   : tile_score<F, true>(pb, mask, i, j, s, pass);
          const float pr = exp2f(x - sLse[lane]);
          float dp = dot_rows<D>(sdO + lane * QS, sV + jr * D);
          float pd = pr;
          if constexpr (F::kDropout) {
            const float f = dropout_factor(drop, keys, j);
            dp *= f;
            pd *= f;
          }
          float ds = pr * (dp - sDelta[lane]);
          if constexpr (F::kScoreTerms) ds *= softcap_grad(terms, x, i, j);
          for (int ii = 0; ii < kSimtTile; ++ii) {
            const float pdi = __shfl_sync(0xffffffffu, pd, ii);
            const float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
            for (int c = 0; c < DPL; ++c) {
              dv[r][c] = fmaf(pdi, sdO[ii * QS + lane + 32 * c], dv[r][c]);
              dk[r][c] = fmaf(dsi, sQ[ii * QS + lane + 32 * c], dk[r][c]);
            }
          }
        }
      }
    }
  }

  float* dkp = static_cast<float*>(p.dk.ptr) + b * p.dk.stride_b + hk * p.dk.stride_h;
  float* dvp = static_cast<float*>(p.dv.ptr) + b * p.dv.stride_b + hk * p.dv.stride_h;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int j = key0 + warp * kRowsPerWarp + r;
    if (j >= pb.Lk) continue;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int col = lane + 32 * c;
      if (col < d) {
        dkp[static_cast<int64_t>(j) * p.dk.stride_l + col] = dk[r][c] * pb.scale;
        dvp[static_cast<int64_t>(j) * p.dv.stride_l + col] = dv[r][c];
      }
    }
  }
}

// dQ (and the bias gradient dS) of kSimtRows query rows of one (batch row,
// query head); warp w owns rows w * kRowsPerWarp + r, lane l is key n0 + l.
template <int D, class F>
__global__ void __launch_bounds__(kSimtThreads, simt_min_blocks<D>())
    attention_bwd_dq_simt_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int DPL = D / 32;
  constexpr int KS = D + 1;
  extern __shared__ float smem_f[];
  float* sQ = smem_f;               // kSimtRows x D
  float* sdO = sQ + kSimtRows * D;  // kSimtRows x D
  float* sK = sdO + kSimtRows * D;  // kSimtTile x KS
  float* sV = sK + kSimtTile * KS;  // kSimtTile x KS
  float* sDS = sV + kSimtTile * KS;  // kSimtRows x (kSimtTile + 1), relative-bias gradient

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, kSimtRows);
  const int m0 = static_cast<int>(blockIdx.x % tiles_m) * kSimtRows;
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view<F::kMask>(pb, bh / pb.Hq, bh % pb.Hq);
  const MaskView<F::kMask> mask(hv);
  const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float scale_log2 = pb.scale * kLog2e;
  Dropout drop;
  if constexpr (F::kDropout) drop = make_dropout(pb, inv_keep, threshold);

  const float* q = static_cast<const float*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const float* k = static_cast<const float*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const float* v = static_cast<const float*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;
  const float* dout =
      static_cast<const float*>(p.dout.ptr) + hv.b * p.dout.stride_b + hv.h * p.dout.stride_h;
  load_rows<kSimtRows, D, D>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
  load_rows<kSimtRows, D, D>(sdO, dout, p.dout.stride_l, m0, hv.q_len, d);

  const int64_t row_base = (hv.b * pb.Hq + hv.h) * pb.Lq;
  float lse2[kRowsPerWarp], delta[kRowsPerWarp], dq[kRowsPerWarp][DPL];
  int key_lim[kRowsPerWarp];
  dropout::RowKeys keys[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = m0 + warp * kRowsPerWarp + r;
    lse2[r] = i < hv.q_len ? lse_log2(p.lse[row_base + i]) : INFINITY;
    delta[r] = i < hv.q_len ? p.delta[row_base + i] : 0.f;
    key_lim[r] = key_limit<F::kBanded>(hv, i);
    keys[r] = F::kDropout ? dropout_keys(drop, pb, hv, i) : dropout::RowKeys{0u, 0u};
#pragma unroll
    for (int c = 0; c < DPL; ++c) dq[r][c] = 0.f;
  }

  const int n_begin = key_begin<F::kBanded>(hv, m0) / kSimtTile * kSimtTile;
  const int n_end = key_end<F::kBanded>(hv, m0, m0 + kSimtRows);
  const TileRange interior_tiles = interior_key_tiles<F, kSimtRows, kSimtTile>(hv, m0);
  for (int n0 = n_begin; n0 < n_end; n0 += kSimtTile) {
    __syncthreads();
    load_rows<kSimtTile, D, KS>(sK, k, pb.k.stride_l, n0, n_end, d);
    load_rows<kSimtTile, D, KS>(sV, v, pb.v.stride_l, n0, n_end, d);
    __syncthreads();
    const int j = n0 + lane;
    const bool interior = interior_tiles.holds(n0 / kSimtTile);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int i = m0 + row;
      const float s = pair_score<F::kScoreTerms>(
          terms, dot_rows<D>(sQ + row * D, sK + lane * KS), scale_log2, i, j);
      const bool pass = j < key_lim[r] && (!F::kBanded || j - i >= hv.lo_off);
      const float x = interior ? tile_score<F, false>(pb, mask, i, j, s, true)
                               : tile_score<F, true>(pb, mask, i, j, s, pass);
      const float pr = exp2f(x - lse2[r]);
      float dp = dot_rows<D>(sdO + row * D, sV + lane * KS);
      if constexpr (F::kDropout) dp *= dropout_factor(drop, keys[r], j);
      float ds = pr * (dp - delta[r]);
      if constexpr (F::kScoreTerms) {
        if (p.drel_rows != nullptr) sDS[row * (kSimtTile + 1) + lane] = ds;
        ds *= softcap_grad(terms, x, i, j);
      }
      if (p.dmask != nullptr && (interior || (i < pb.Lq && j < pb.Lk))) {
        p.dmask[(row_base + i) * pb.Lk + j] = ds;
      }
      for (int jj = 0; jj < kSimtTile; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) dq[r][c] = fmaf(dsj, sK[jj * KS + lane + 32 * c], dq[r][c]);
      }
    }
    if constexpr (F::kScoreTerms) {
      if (p.drel_rows != nullptr) {  // block-uniform; the loop's first sync orders the next tile
        __syncthreads();
        add_tile_diagonals<kSimtRows, kSimtTile, kSimtThreads>(sDS, block_drel_row(p), n0,
                                                               p.drel_width);
      }
    }
  }

  float* dqp = static_cast<float*>(p.dq.ptr) + hv.b * p.dq.stride_b + hv.h * p.dq.stride_h;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = m0 + warp * kRowsPerWarp + r;
    if (i >= pb.Lq) continue;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int col = lane + 32 * c;
      if (col < d) dqp[static_cast<int64_t>(i) * p.dq.stride_l + col] = dq[r][c] * pb.scale;
    }
  }
}

// ------------------------------------------------------------- launchers

template <int D>
constexpr size_t simt_fwd_smem() {
  return sizeof(float) * (kSimtRows * D + kSimtTile * (D + 1) + kSimtTile * D);
}
template <int D>
constexpr size_t simt_dkdv_smem() {
  return sizeof(float) * (2 * kSimtRows * D + 2 * kSimtTile * (D + 1) + 2 * kSimtTile);
}
template <int D>
constexpr size_t simt_dq_smem() {
  return sizeof(float) * (2 * kSimtRows * D + 2 * kSimtTile * (D + 1));
}
static_assert(kSimtRows == drel_block_rows(DType::kFloat32),
              "the binding sizes the relative-bias workspace by drel_block_rows (attention.h)");

template <int D>
cudaError_t fwd_simt(const FwdParams& p, cudaStream_t stream) {
  return with_features<DType::kFloat32>(p.pb, [&](auto features) {
    return launch_kernel(attention_fwd_simt_kernel<D, decltype(features)>,
                         ceil_div(p.pb.Lq, kSimtRows) * p.pb.B * p.pb.Hq, kSimtThreads,
                         simt_fwd_smem<D>(), stream, p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

template <int D>
cudaError_t bwd_dkdv_simt(const BwdParams& p, cudaStream_t stream) {
  return with_features<DType::kFloat32>(p.pb, [&](auto features) {
    return launch_kernel(attention_bwd_dkdv_simt_kernel<D, decltype(features)>,
                         ceil_div(p.pb.Lk, kSimtRows) * p.pb.B * p.pb.Hkv, kSimtThreads,
                         simt_dkdv_smem<D>(), stream, p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

template <int D>
cudaError_t bwd_dq_simt(const BwdParams& p, cudaStream_t stream) {
  return with_features<DType::kFloat32>(p.pb, [&](auto features) {
    const size_t smem = simt_dq_smem<D>() + (p.drel_rows != nullptr
                                                 ? drel_tile_bytes<kSimtRows, kSimtTile>()
                                                 : 0);
    return launch_kernel(attention_bwd_dq_simt_kernel<D, decltype(features)>,
                         ceil_div(p.pb.Lq, kSimtRows) * p.pb.B * p.pb.Hq, kSimtThreads, smem,
                         stream, p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

#define FASTATTN_INSTANTIATE_SIMT(D)                                      \
  template cudaError_t fwd_simt<D>(const FwdParams&, cudaStream_t);       \
  template cudaError_t bwd_dkdv_simt<D>(const BwdParams&, cudaStream_t);  \
  template cudaError_t bwd_dq_simt<D>(const BwdParams&, cudaStream_t);

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
