// Backward attention on tensor cores (float16/bfloat16): the dK/dV and dQ
// kernel templates and their per-bucket entry points detail::bwd_dkdv_tc /
// bwd_dq_tc, instantiated in attention_bwd_{dkdv,dq}_hdim<D>.cu
// (attention_bwd.cu holds the delta kernel and the public launcher).
// Formulas (fastattn/reference.py, _attention_bwd), with P recomputed from
// the saved lse instead of stored:
//
//   p = exp(s - lse),  dp = dout v^T (* keep / (1 - p_drop)),
//   delta = rowsum(dout * out) - dlse,  ds = p (dp - delta),
//   dq = scale ds' k,  dk = scale ds'^T q,  dv = p_dropped^T dout,  dmask = ds,
//
// with ds' = ds (1 - tanh^2) through a softcap (softcap_grad), ds' = ds
// otherwise.
//
// dK/dV and dQ are separate kernels, each the only writer of its outputs:
// no atomics, so gradients are deterministic (bitwise identical run to run).
// The price is computing S and dP twice (once per kernel).
//
// dK/dV: a block owns BN = 64 keys of one (batch row, kv head) and loops
// over the query heads of its GQA group and, per head, over the query tiles
// that may attend its keys (banded: from the first to the last such query;
// lengths: up to q_len). Scores are formed transposed (keys as MMA rows), so P^T and
// dS^T are directly the A operands of dV += P^T dO and dK += dS^T Q. Q, dO
// and their lse/delta stream through two shared-memory stages (cp.async).
// At D = 256 a warp's dK and dV accumulators would need 256 registers per
// thread, so 8 warps split the head dim in two halves (each pair of warps
// recomputes the same scores; the price of staying spill-free).
//
// dQ: a block owns 64 query rows, like the forward, streams K/V tiles
// (same key bounds as the forward), and also writes dS into the full bias
// gradient when p.dmask is set (each pair is visited exactly once).
//
// Both mask interior tiles without bounds checks and boundary tiles with
// them (attention_tiles.cuh).
#pragma once

#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

// ---------------------------------------------------------------- dK/dV

// Tiles and occupancy (as FwdConfig): kMinBlocks keeps the occupancy ptxas
// picks for the unmasked kernels; masked and score-term variants of D = 32
// get one block less instead of spilling. BM = 64 at D = 32 would spill, and masked
// variants take smaller query tiles (their mask values are in flight next
// to the dK/dV accumulators): 32 at D = 64, 16 from D = 96 on.
template <int D, class F>
struct DkdvConfig {
  static constexpr int BN = 64;                // keys per block: 4 key warps x 16
  static constexpr int kSplit = D >= 256 ? 2 : 1;  // warps sharing a key group
  static constexpr int BM = F::kHasMask ? (D >= 96 ? 16 : 32) : (D == 64 ? 64 : 32);
  static constexpr int kThreads = 128 * kSplit;
  static constexpr int kMinBlocks =
      D >= 256 ? 1 : (D <= 32 && !F::kHasMask && !F::kScoreTerms ? 3 : 2);
  // K, V; 2 stages of Q, dO, lse, delta and (dropout) the queries' row keys.
  static constexpr size_t kSmemBytes =
      static_cast<size_t>(2 * BN + 4 * BM) * smem_stride<D>() * 2 + 4 * BM * sizeof(float) +
      (F::kDropout ? 2 * BM * sizeof(uint2) : 0);
};

// The scores of a key-major warp tile, from st = masked scores (log2
// units, mask_keys_tile) and dpt = V dO^T: st becomes p_dropped^T and dpt
// becomes dS'^T, with
//   p = exp2(x - lse2),  f = keep / (1 - p_drop),
//   p_dropped = p f,  dS' = p (dP f - delta) (* softcap_grad).
// Element [mb][2r + e] is key keys[r], query i0 + mb * 8 + 2t + e (lse2, dl
// and row_keys, the dropout keys of the tile's queries, indexed by the
// query's row in the tile).
template <class F, int MB>
__device__ __forceinline__ void dkdv_scores(float (&st)[MB][4], float (&dpt)[MB][4],
                                            const Dropout& drop, const uint2* row_keys,
                                            const ScoreTerms& terms, const int (&keys)[2],
                                            int i0, int t, const float* lse2, const float* dl) {
#pragma unroll
  for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int iq = mb * 8 + 2 * t + e;
      dropout::RowKeys rk{0u, 0u};
      if constexpr (F::kDropout) {
        const uint2 k2 = row_keys[iq];
        rk = dropout::RowKeys{k2.x, k2.y};
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float pr = exp2f(st[mb][2 * r + e] - lse2[iq]);
        float dp = dpt[mb][2 * r + e];
        float pd = pr;
        if constexpr (F::kDropout) {
          const float f = dropout_factor(drop, rk, keys[r]);
          dp *= f;
          pd *= f;
        }
        float ds = pr * (dp - dl[iq]);
        if constexpr (F::kScoreTerms) ds *= softcap_grad(terms, st[mb][2 * r + e], i0 + iq, keys[r]);
        st[mb][2 * r + e] = pd;
        dpt[mb][2 * r + e] = ds;
      }
    }
  }
}

// p: problem, dout, lse, delta, dk, dv. inv_keep / threshold: dropout
// constants. D: head-dim bucket (>= p.pb.D). F: the variant's features.
template <typename T, int D, class F>
__global__ void __launch_bounds__(DkdvConfig<D, F>::kThreads, (DkdvConfig<D, F>::kMinBlocks))
    attention_bwd_dkdv_tc_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  using C = DkdvConfig<D, F>;
  constexpr int BN = C::BN;
  constexpr int BM = C::BM;
  constexpr int SS = smem_stride<D>();
  constexpr int THREADS = C::kThreads;
  constexpr int DW = D / C::kSplit;  // accumulator columns of a warp
  constexpr int MB = BM / 8;         // 8-query column blocks of S^T
  constexpr int DB = DW / 8;
  constexpr bool E = F::kEven;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BN * SS;
  T* sQ = sV + BN * SS;       // 2 stages of BM x SS
  T* sdO = sQ + 2 * BM * SS;  // 2 stages of BM x SS
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BM * SS);  // 2 stages of BM, log2 units
  float* sDelta = sLse + 2 * BM;                              // 2 stages of BM
  uint2* sRowKeys = reinterpret_cast<uint2*>(sDelta + 2 * BM);  // 2 stages of BM (dropout)

  const Problem& pb = p.pb;
  const int64_t tiles_n = ceil_div(pb.Lk, BN);
  const int key0 = static_cast<int>(blockIdx.x % tiles_n) * BN;
  const int64_t bhk = blockIdx.x / tiles_n;
  const int64_t b = bhk / pb.Hkv, hk = bhk % pb.Hkv;
  const int64_t group = pb.Hq / pb.Hkv;
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kw = warp % 4;           // key group: keys key0 + 16 kw ..
  const int col0 = (warp / 4) * DW;  // first accumulator column
  const int g = lane >> 2, t = lane & 3;

  // Lengths and the band are per batch row, the same for every head.
  const HeadView hv0 = head_view<MaskKind::kNone>(pb, b, hk * group);
  const int i_begin = query_begin<F::kBanded>(hv0, key0) / BM * BM;
  const int i_end = query_end<F::kBanded>(hv0, min(key0 + BN, hv0.kv_len));
  const int q_tiles = (key0 < hv0.kv_len && i_begin < i_end)
                          ? static_cast<int>(ceil_div(i_end - i_begin, BM))
                          : 0;
  const int total = q_tiles * static_cast<int>(group);

  const T* k = static_cast<const T*>(pb.k.ptr) + b * pb.k.stride_b + hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + b * pb.v.stride_b + hk * pb.v.stride_h;
  Dropout drop;
  if constexpr (F::kDropout) drop = make_dropout(pb, inv_keep, threshold);
  // Iteration `it` is query tile it % q_tiles of head hk * group + it / q_tiles.
  auto prefetch = [&](int it, int stage) {
    const int64_t h = hk * group + it / q_tiles;
    const int i0 = i_begin + (it % q_tiles) * BM;
    const T* q = static_cast<const T*>(pb.q.ptr) + b * pb.q.stride_b + h * pb.q.stride_h;
    const T* dout = static_cast<const T*>(p.dout.ptr) + b * p.dout.stride_b + h * p.dout.stride_h;
    load_tile_async<T, BM, D, THREADS, E>(sQ + stage * BM * SS, q, pb.q.stride_l, i0, hv0.q_len,
                                          d);
    load_tile_async<T, BM, D, THREADS, E>(sdO + stage * BM * SS, dout, p.dout.stride_l, i0,
                                          hv0.q_len, d);
    const int64_t row_base = (b * pb.Hq + h) * pb.Lq;
    static_assert(BM <= THREADS, "one thread per query row of the tile");
    if (threadIdx.x < BM) {
      const int r = threadIdx.x;
      const int i = i0 + r;
      const bool valid = E || i < hv0.q_len;
      sLse[stage * BM + r] = valid ? lse_log2(p.lse[row_base + i]) : INFINITY;
      sDelta[stage * BM + r] = valid ? p.delta[row_base + i] : 0.f;
      if constexpr (F::kDropout) {  // once per query, not once per (query, key warp)
        const dropout::RowKeys rk = dropout::row_keys(drop.seed, static_cast<uint64_t>(row_base + i));
        sRowKeys[stage * BM + r] = make_uint2(rk.a, rk.b);
      }
    }
  };

  if (total > 0) {
    load_tile_async<T, BN, D, THREADS, E>(sK, k, pb.k.stride_l, key0, hv0.kv_len, d);
    load_tile_async<T, BN, D, THREADS, E>(sV, v, pb.v.stride_l, key0, hv0.kv_len, d);
    prefetch(0, 0);
    cp_async_commit();
  }

  float dk[DB][4], dv[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }
  int keys_j[2];  // this thread's two keys (accumulator rows g and g + 8)
  keys_j[0] = key0 + kw * 16 + g;
  keys_j[1] = keys_j[0] + 8;
  const KeyBand band = key_bands<F::kBanded>(hv0, keys_j);
  const float scale_log2 = pb.scale * kLog2e;
  const T* sKw = sK + kw * 16 * SS;
  const T* sVw = sV + kw * 16 * SS;

  for (int it = 0; it < total; ++it) {
    pipeline_next(it, total, prefetch);
    const int stage = it & 1;
    const HeadView hv = head_view<F::kMask>(pb, b, hk * group + it / q_tiles);
    const MaskView<F::kMask> mask(hv);
    const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
    const int i0 = i_begin + (it % q_tiles) * BM;
    const T* sQs = sQ + stage * BM * SS;
    const T* sdOs = sdO + stage * BM * SS;
    const float* lse2 = sLse + stage * BM;
    const float* dl = sDelta + stage * BM;

    // S^T = K Q^T and dP^T = V dO^T: 16 keys x BM queries per warp.
    float st[MB][4], dpt[MB][4];
#pragma unroll
    for (int i = 0; i < MB; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
    }
    mma_abt2<T, D, MB>(st, sKw, sQs, dpt, sVw, sdOs, lane);
    // Element [mb][2r + e] is key keys_j[r], query i0 + mb * 8 + 2t + e.
    if (interior_query_tile<F, BM, BN>(hv0, i0, key0)) {
      mask_keys_tile<F, false>(st, pb, mask, terms, keys_j, band, i0, t, scale_log2);
    } else {
      mask_keys_tile<F, true>(st, pb, mask, terms, keys_j, band, i0, t, scale_log2);
    }
    // st becomes p_dropped^T, dpt becomes dS'^T.
    dkdv_scores<F>(st, dpt, drop, sRowKeys + stage * BM, terms, keys_j, i0, t, lse2, dl);

    // dV += P^T dO and dK += dS^T Q over the warp's column slice.
    mma_pb2<T, D, MB, DB>(dv, st, sdOs, dk, dpt, sQs, col0, lane);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  T* dkp = static_cast<T*>(p.dk.ptr) + b * p.dk.stride_b + hk * p.dk.stride_h;
  T* dvp = static_cast<T*>(p.dv.ptr) + b * p.dv.stride_b + hk * p.dv.stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = keys_j[r];
    if (!E && j >= pb.Lk) continue;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = col0 + db * 8 + 2 * t;
      if (E || col < d) {
        *reinterpret_cast<uint32_t*>(dkp + static_cast<int64_t>(j) * p.dk.stride_l + col) =
            Elem<T>::pack2(dk[db][2 * r] * pb.scale, dk[db][2 * r + 1] * pb.scale);
        *reinterpret_cast<uint32_t*>(dvp + static_cast<int64_t>(j) * p.dv.stride_l + col) =
            Elem<T>::pack2(dv[db][2 * r], dv[db][2 * r + 1]);
      }
    }
  }
}

template <DType DT, int D>
cudaError_t bwd_dkdv_tc(const BwdParams& p, cudaStream_t stream) {
  using T = typename CudaType<DT>::type;
  return with_features<DT>(p.pb, [&](auto features) {
    using C = DkdvConfig<D, decltype(features)>;
    return launch_kernel(attention_bwd_dkdv_tc_kernel<T, D, decltype(features)>,
                         ceil_div(p.pb.Lk, C::BN) * p.pb.B * p.pb.Hkv, C::kThreads,
                         C::kSmemBytes, stream, p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

// ------------------------------------------------------------------- dQ

constexpr int kQWarps = 4;
constexpr int kQThreads = 32 * kQWarps;
constexpr int kQBM = 16 * kQWarps;
static_assert(kQBM == drel_block_rows(DType::kFloat16) && kQBM == drel_block_rows(DType::kBFloat16),
              "the binding sizes the relative-bias workspace by drel_block_rows (attention.h)");

// Tiles and occupancy (as FwdConfig). The key tile holds D / 2 + BN
// accumulator floats per thread (dQ, S and dP), and a masked variant BN / 2
// mask values more; masked, dropout or score-term variants get 2 blocks per
// SM.
template <int D, class F>
struct DqConfig {
  static constexpr int BM = kQBM;
  static constexpr int BN = D >= 256 ? 16 : (D >= 128 || (F::kHasMask && D >= 96) ? 32 : 64);
  static constexpr int kMinBlocks =
      (F::kHasMask || F::kDropout || F::kScoreTerms) ? 2 : ((D <= 32 || D == 128) ? 3 : 2);
  static constexpr size_t kSmemBytes = static_cast<size_t>(2 * BM + 4 * BN) * smem_stride<D>() * 2;
};

// p: problem, dout, lse, delta, dq, dmask. inv_keep / threshold: dropout
// constants. D: head-dim bucket (>= p.pb.D). F: the variant's features.
template <typename T, int D, class F>
__global__ void __launch_bounds__(kQThreads, (DqConfig<D, F>::kMinBlocks))
    attention_bwd_dq_tc_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  using C = DqConfig<D, F>;
  constexpr int BM = C::BM;
  constexpr int BN = C::BN;
  constexpr int SS = smem_stride<D>();
  constexpr int NB = BN / 8;
  constexpr int DB = D / 8;
  constexpr bool E = F::kEven;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + BM * SS;
  T* sK = sdO + BM * SS;     // 2 stages of BN x SS
  T* sV = sK + 2 * BN * SS;  // 2 stages of BN x SS
  // With a relative-bias gradient: the tile's dS (add_tile_diagonals).
  float* sDS = reinterpret_cast<float*>(sV + 2 * BN * SS);

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, BM);
  const int m0 = static_cast<int>(blockIdx.x % tiles_m) * BM;
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view<F::kMask>(pb, bh / pb.Hq, bh % pb.Hq);
  const MaskView<F::kMask> mask(hv);
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;

  const T* q = static_cast<const T*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const T* dout =
      static_cast<const T*>(p.dout.ptr) + hv.b * p.dout.stride_b + hv.h * p.dout.stride_h;
  const T* k = static_cast<const T*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;

  // Key tiles as the forward's: first_tile .. first_tile + num_tiles - 1.
  const int n_end = key_end<F::kBanded>(hv, m0, m0 + BM);
  const int first_tile = key_begin<F::kBanded>(hv, m0) / BN;
  const int num_tiles = static_cast<int>(ceil_div(n_end, BN)) - first_tile;  // <= 0: none
  const TileRange interior_tiles = interior_key_tiles<F, BM, BN>(hv, m0);
  auto prefetch = [&](int it, int stage) {
    const int n0 = (first_tile + it) * BN;
    load_tile_async<T, BN, D, kQThreads, E>(sK + stage * BN * SS, k, pb.k.stride_l, n0, n_end, d);
    load_tile_async<T, BN, D, kQThreads, E>(sV + stage * BN * SS, v, pb.v.stride_l, n0, n_end, d);
  };
  if (num_tiles > 0) {
    load_tile_async<T, BM, D, kQThreads, E>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
    load_tile_async<T, BM, D, kQThreads, E>(sdO, dout, p.dout.stride_l, m0, hv.q_len, d);
    prefetch(0, 0);
    cp_async_commit();
  }

  int rows[2];
  rows[0] = m0 + warp * 16 + g;
  rows[1] = rows[0] + 8;
  const RowBand band = row_bands<F::kBanded>(hv, rows);
  const int64_t row_base = (hv.b * pb.Hq + hv.h) * pb.Lq;
  Dropout drop;
  if constexpr (F::kDropout) drop = make_dropout(pb, inv_keep, threshold);
  float lse2[2], delta[2];
  dropout::RowKeys keys[2] = {{0u, 0u}, {0u, 0u}};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = E || rows[r] < hv.q_len;
    lse2[r] = valid ? lse_log2(p.lse[row_base + rows[r]]) : INFINITY;
    delta[r] = valid ? p.delta[row_base + rows[r]] : 0.f;
    if constexpr (F::kDropout) keys[r] = dropout_keys(drop, pb, hv, rows[r]);
  }

  float dq[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
  const float scale_log2 = pb.scale * kLog2e;
  const T* sQw = sQ + warp * 16 * SS;
  const T* sdOw = sdO + warp * 16 * SS;

  for (int it = 0; it < num_tiles; ++it) {
    pipeline_next(it, num_tiles, prefetch);
    const int stage = it & 1;
    const int n0 = (first_tile + it) * BN;
    const T* sKs = sK + stage * BN * SS;
    const T* sVs = sV + stage * BN * SS;

    // S = Q K^T and dP = dO V^T: 16 rows x BN keys per warp.
    float s[NB][4], dp[NB][4];
#pragma unroll
    for (int i = 0; i < NB; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
    }
    mma_abt2<T, D, NB>(s, sQw, sKs, dp, sdOw, sVs, lane);
    // Formed per tile (from the kernel parameters), not held across the
    // loop: at D = 256 those registers are what the MMAs need.
    const ScoreTerms terms = score_terms<F::kScoreTerms>(pb, hv);
    const bool interior = interior_tiles.holds(first_tile + it);
    if (interior) {
      mask_rows_tile<F, false>(s, pb, mask, terms, rows, band, n0, t, scale_log2);
    } else {
      mask_rows_tile<F, true>(s, pb, mask, terms, rows, band, n0, t, scale_log2);
    }

    // dS = P (dP - delta) (dS' through a softcap); element [nb][2r + e] is
    // row rows[r], key n0 + nb * 8 + 2t + e.
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = exp2f(s[nb][2 * r + e] - lse2[r]);
          float dpv = dp[nb][2 * r + e];
          if constexpr (F::kDropout) {
            dpv *= dropout_factor(drop, keys[r], n0 + nb * 8 + 2 * t + e);
          }
          float ds = pr * (dpv - delta[r]);
          if constexpr (F::kScoreTerms) {
            if (p.drel_rows != nullptr) {
              sDS[(warp * 16 + g + 8 * r) * (BN + 1) + nb * 8 + 2 * t + e] = ds;
            }
            ds *= softcap_grad(terms, s[nb][2 * r + e], rows[r], n0 + nb * 8 + 2 * t + e);
          }
          s[nb][2 * r + e] = ds;
        }
      }
    }
    if constexpr (F::kScoreTerms) {
      if (p.drel_rows != nullptr) {  // block-uniform
        __syncthreads();
        add_tile_diagonals<BM, BN, kQThreads>(sDS, block_drel_row(p), n0, p.drel_width);
      }
    }

    // The bias gradient: dS of every pair inside (Lq, Lk) (the caller
    // zero-filled it; pairs that may not attend get dS = 0 here).
    if (p.dmask != nullptr) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float* drow = p.dmask + (row_base + rows[r]) * pb.Lk;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = n0 + nb * 8 + 2 * t + e;
            if (E || interior || (rows[r] < pb.Lq && j < pb.Lk)) drow[j] = s[nb][2 * r + e];
          }
        }
      }
    }

    // dQ += dS K (scaled at the end).
    mma_pb<T, D, NB, DB>(dq, s, sKs, 0, lane);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  T* dqp = static_cast<T*>(p.dq.ptr) + hv.b * p.dq.stride_b + hv.h * p.dq.stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = rows[r];
    if (!E && i >= pb.Lq) continue;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = db * 8 + 2 * t;
      if (E || col < d) {
        *reinterpret_cast<uint32_t*>(dqp + static_cast<int64_t>(i) * p.dq.stride_l + col) =
            Elem<T>::pack2(dq[db][2 * r] * pb.scale, dq[db][2 * r + 1] * pb.scale);
      }
    }
  }
}

template <DType DT, int D>
cudaError_t bwd_dq_tc(const BwdParams& p, cudaStream_t stream) {
  using T = typename CudaType<DT>::type;
  return with_features<DT>(p.pb, [&](auto features) {
    using C = DqConfig<D, decltype(features)>;
    const size_t smem =
        C::kSmemBytes + (p.drel_rows != nullptr ? drel_tile_bytes<C::BM, C::BN>() : 0);
    return launch_kernel(attention_bwd_dq_tc_kernel<T, D, decltype(features)>,
                         ceil_div(p.pb.Lq, C::BM) * p.pb.B * p.pb.Hq, kQThreads, smem, stream,
                         p, dropout_inv_keep(p.pb.dropout_p),
                         dropout_threshold(p.pb.dropout_p));
  });
}

// Explicit instantiation of both 16-bit dtypes of one bucket.
#define FASTATTN_INSTANTIATE_BWD_DKDV_TC(D)                                               \
  template cudaError_t bwd_dkdv_tc<DType::kFloat16, D>(const BwdParams&, cudaStream_t);   \
  template cudaError_t bwd_dkdv_tc<DType::kBFloat16, D>(const BwdParams&, cudaStream_t);
#define FASTATTN_INSTANTIATE_BWD_DQ_TC(D)                                                 \
  template cudaError_t bwd_dq_tc<DType::kFloat16, D>(const BwdParams&, cudaStream_t);     \
  template cudaError_t bwd_dq_tc<DType::kBFloat16, D>(const BwdParams&, cudaStream_t);

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
