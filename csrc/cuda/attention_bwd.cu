// Backward attention: the delta preprocess (every dtype), and the
// tensor-core dK/dV and dQ kernels for float16/bfloat16 (float32 goes to
// attention_simt.cu). Formulas (fastattn/reference.py, _attention_bwd), with
// P recomputed from the saved lse instead of stored:
//
//   p = exp(s - lse),  dp = dout v^T (* keep / (1 - p_drop)),
//   delta = rowsum(dout * out) - dlse,  ds = p (dp - delta),
//   dq = scale ds k,  dk = scale ds^T q,  dv = p_dropped^T dout,  dmask = ds.
//
// dK/dV and dQ are separate kernels, each the only writer of its outputs:
// no atomics, so gradients are deterministic (bitwise identical run to run).
// The price is computing S and dP twice (once per kernel).
//
// dK/dV: a block owns BN = 64 keys of one (batch row, kv head) and loops
// over the query heads of its GQA group and, per head, over the query tiles
// that may attend its keys (causal: from the first such query; lengths: up
// to q_len). Scores are formed transposed (keys as MMA rows), so P^T and
// dS^T are directly the A operands of dV += P^T dO and dK += dS^T Q. Q, dO
// and their lse/delta stream through two shared-memory stages (cp.async).
// At D = 256 a warp's dK and dV accumulators would need 256 registers per
// thread, so 8 warps split the head dim in two halves (each pair of warps
// recomputes the same scores; the price of staying spill-free).
//
// dQ: a block owns 64 query rows, like the forward, streams K/V tiles
// (same key bounds as the forward), and also writes dS into the full bias
// gradient when the mask requires grad (each pair is visited exactly once).
#include "cuda/attention_common.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace {

// ---------------------------------------------------------------- delta

constexpr int kDeltaWarps = 8;

// delta[row] = sum_d dout * out - (dlse[row] where lse is finite), one warp
// per (b, h, i) row. p: strides of dout/out, lse/dlse, the delta output.
template <typename T>
__global__ void __launch_bounds__(kDeltaWarps * 32) attention_bwd_delta_kernel(const BwdParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kDeltaWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const Problem& pb = p.pb;
  if (row >= pb.B * pb.Hq * pb.Lq) return;
  const int64_t i = row % pb.Lq, bh = row / pb.Lq;
  const int64_t b = bh / pb.Hq, h = bh % pb.Hq;
  const T* dout = static_cast<const T*>(p.dout.ptr) + b * p.dout.stride_b +
                  h * p.dout.stride_h + i * p.dout.stride_l;
  const T* out = static_cast<const T*>(p.out.ptr) + b * p.out.stride_b + h * p.out.stride_h +
                 i * p.out.stride_l;
  float sum = 0.f;
  for (int c = lane; c < pb.D; c += 32) {
    sum = fmaf(Elem<T>::to_float(dout[c]), Elem<T>::to_float(out[c]), sum);
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    const float lse = p.lse[row];
    const bool finite = lse != -INFINITY && lse != INFINITY && lse == lse;
    p.delta[row] = sum - (p.dlse != nullptr && finite ? p.dlse[row] : 0.f);
  }
}

// ---------------------------------------------------------------- dK/dV

constexpr int kKvBN = 64;  // keys per block: 4 key warps x 16

template <int D>
constexpr int kv_split() {  // warps sharing one key group, each a D / split slice
  return D >= 256 ? 2 : 1;
}
template <int D>
constexpr int kv_block_m() {  // query tile streamed through the block
  return D == 64 ? 64 : 32;  // 64 at D = 32 spills on sm_80 (ptxas -v)
}
template <int D>
constexpr int kv_threads() {
  return 128 * kv_split<D>();
}
template <int D>
constexpr size_t kv_smem_bytes() {
  return static_cast<size_t>(2 * kKvBN + 4 * kv_block_m<D>()) * smem_stride<D>() * 2 +
         4 * kv_block_m<D>() * sizeof(float);
}

// p: problem, dout, lse, delta, dk, dv. inv_keep / threshold: dropout
// constants. D: head-dim bucket (>= p.pb.D).
template <typename T, int D>
__global__ void __launch_bounds__(kv_threads<D>())
    attention_bwd_dkdv_tc_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int BM = kv_block_m<D>();
  constexpr int SS = smem_stride<D>();
  constexpr int THREADS = kv_threads<D>();
  constexpr int DW = D / kv_split<D>();  // accumulator columns of a warp
  constexpr int MB = BM / 8;             // 8-query column blocks of S^T
  constexpr int DB = DW / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + kKvBN * SS;
  T* sQ = sV + kKvBN * SS;     // 2 stages of BM x SS
  T* sdO = sQ + 2 * BM * SS;   // 2 stages of BM x SS
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BM * SS);  // 2 stages of BM, log2 units
  float* sDelta = sLse + 2 * BM;                              // 2 stages of BM

  const Problem& pb = p.pb;
  const int64_t tiles_n = ceil_div(pb.Lk, kKvBN);
  const int key0 = static_cast<int>(blockIdx.x % tiles_n) * kKvBN;
  const int64_t bhk = blockIdx.x / tiles_n;
  const int64_t b = bhk / pb.Hkv, hk = bhk % pb.Hkv;
  const int64_t group = pb.Hq / pb.Hkv;
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kw = warp % 4;             // key group: keys key0 + 16 kw ..
  const int col0 = (warp / 4) * DW;    // first accumulator column
  const int g = lane >> 2, t = lane & 3;

  // Lengths and causal offset are per batch row, the same for every head.
  const HeadView hv0 = head_view(pb, b, hk * group);
  const int i_begin = query_begin(hv0, pb.causal, key0) / BM * BM;
  const int q_tiles = (key0 < hv0.kv_len && i_begin < hv0.q_len)
                          ? static_cast<int>(ceil_div(hv0.q_len - i_begin, BM))
                          : 0;
  const int total = q_tiles * static_cast<int>(group);

  const T* k = static_cast<const T*>(pb.k.ptr) + b * pb.k.stride_b + hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + b * pb.v.stride_b + hk * pb.v.stride_h;
  // Iteration `it` is query tile it % q_tiles of head hk * group + it / q_tiles.
  auto prefetch = [&](int it, int stage) {
    const int64_t h = hk * group + it / q_tiles;
    const int i0 = i_begin + (it % q_tiles) * BM;
    const T* q = static_cast<const T*>(pb.q.ptr) + b * pb.q.stride_b + h * pb.q.stride_h;
    const T* dout = static_cast<const T*>(p.dout.ptr) + b * p.dout.stride_b + h * p.dout.stride_h;
    load_tile_async<T, BM, D, THREADS>(sQ + stage * BM * SS, q, pb.q.stride_l, i0, hv0.q_len, d);
    load_tile_async<T, BM, D, THREADS>(sdO + stage * BM * SS, dout, p.dout.stride_l, i0,
                                       hv0.q_len, d);
    const int64_t row_base = (b * pb.Hq + h) * pb.Lq;
    for (int r = threadIdx.x; r < BM; r += THREADS) {
      const int i = i0 + r;
      const bool valid = i < hv0.q_len;
      const float lse = valid ? p.lse[row_base + i] : -INFINITY;
      sLse[stage * BM + r] = lse == -INFINITY ? INFINITY : lse * kLog2e;
      sDelta[stage * BM + r] = valid ? p.delta[row_base + i] : 0.f;
    }
  };

  if (total > 0) {
    load_tile_async<T, kKvBN, D, THREADS>(sK, k, pb.k.stride_l, key0, hv0.kv_len, d);
    load_tile_async<T, kKvBN, D, THREADS>(sV, v, pb.v.stride_l, key0, hv0.kv_len, d);
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
  const float scale_log2 = pb.scale * kLog2e;
  const Dropout drop = make_dropout(pb, inv_keep, threshold);
  const T* sKw = sK + kw * 16 * SS;
  const T* sVw = sV + kw * 16 * SS;

  for (int it = 0; it < total; ++it) {
    const int stage = it & 1;
    if (it + 1 < total) {
      prefetch(it + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const HeadView hv = head_view(pb, b, hk * group + it / q_tiles);
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
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      load_a_frag<D>(ak, sKw, kk * 16, lane);
      load_a_frag<D>(av, sVw, kk * 16, lane);
#pragma unroll
      for (int mb = 0; mb < MB; mb += 2) {
        uint32_t bq[4], bo[4];
        load_bt_frag<D>(bq, sQs, mb * 8, kk * 16, lane);
        mma16816<T>(st[mb], ak, bq[0], bq[1]);
        mma16816<T>(st[mb + 1], ak, bq[2], bq[3]);
        load_bt_frag<D>(bo, sdOs, mb * 8, kk * 16, lane);
        mma16816<T>(dpt[mb], av, bo[0], bo[1]);
        mma16816<T>(dpt[mb + 1], av, bo[2], bo[3]);
      }
    }

    // Element [mb][2r + e] is key keys_j[r], query i0 + mb * 8 + 2t + e.
    // st becomes p_dropped^T, dpt becomes dS^T.
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int iq = mb * 8 + 2 * t + e;
        const int i = i0 + iq;
        dropout::RowKeys rk{0u, 0u};
        if (drop.on) rk = dropout::row_keys(drop.seed, dropout_row(pb, hv, i));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float x = masked_score(pb, hv, i, keys_j[r], st[mb][2 * r + e] * scale_log2);
          const float pr = exp2f(x - lse2[iq]);
          float dp = dpt[mb][2 * r + e];
          float pd = pr;
          if (drop.on) {
            const float f = dropout_factor(drop, rk, keys_j[r]);
            dp *= f;
            pd *= f;
          }
          st[mb][2 * r + e] = pd;
          dpt[mb][2 * r + e] = pr * (dp - dl[iq]);
        }
      }
    }

    // dV += P^T dO and dK += dS^T Q over the warp's column slice.
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t ap[4], as[4];
      ap[0] = Elem<T>::pack2(st[2 * kk][0], st[2 * kk][1]);
      ap[1] = Elem<T>::pack2(st[2 * kk][2], st[2 * kk][3]);
      ap[2] = Elem<T>::pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      ap[3] = Elem<T>::pack2(st[2 * kk + 1][2], st[2 * kk + 1][3]);
      as[0] = Elem<T>::pack2(dpt[2 * kk][0], dpt[2 * kk][1]);
      as[1] = Elem<T>::pack2(dpt[2 * kk][2], dpt[2 * kk][3]);
      as[2] = Elem<T>::pack2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      as[3] = Elem<T>::pack2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
      for (int db = 0; db < DB; db += 2) {
        uint32_t bo[4], bq[4];
        load_b_frag<D>(bo, sdOs, kk * 16, col0 + db * 8, lane);
        mma16816<T>(dv[db], ap, bo[0], bo[1]);
        mma16816<T>(dv[db + 1], ap, bo[2], bo[3]);
        load_b_frag<D>(bq, sQs, kk * 16, col0 + db * 8, lane);
        mma16816<T>(dk[db], as, bq[0], bq[1]);
        mma16816<T>(dk[db + 1], as, bq[2], bq[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  T* dkp = static_cast<T*>(p.dk.ptr) + b * p.dk.stride_b + hk * p.dk.stride_h;
  T* dvp = static_cast<T*>(p.dv.ptr) + b * p.dv.stride_b + hk * p.dv.stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = keys_j[r];
    if (j >= pb.Lk) continue;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = col0 + db * 8 + 2 * t;
      if (col < d) {
        *reinterpret_cast<uint32_t*>(dkp + static_cast<int64_t>(j) * p.dk.stride_l + col) =
            Elem<T>::pack2(dk[db][2 * r] * pb.scale, dk[db][2 * r + 1] * pb.scale);
        *reinterpret_cast<uint32_t*>(dvp + static_cast<int64_t>(j) * p.dv.stride_l + col) =
            Elem<T>::pack2(dv[db][2 * r], dv[db][2 * r + 1]);
      }
    }
  }
}

// ------------------------------------------------------------------- dQ

constexpr int kQWarps = 4;
constexpr int kQThreads = 32 * kQWarps;
constexpr int kQBM = 16 * kQWarps;

template <int D>
constexpr int q_block_n() {  // key tile: D / 2 + BN accumulator floats per thread
  return D >= 256 ? 16 : (D >= 128 ? 32 : 64);
}
template <int D>
constexpr size_t q_smem_bytes() {
  return static_cast<size_t>(2 * kQBM + 4 * q_block_n<D>()) * smem_stride<D>() * 2;
}

// p: problem, dout, lse, delta, dq, dmask. inv_keep / threshold: dropout
// constants. D: head-dim bucket (>= p.pb.D).
template <typename T, int D>
__global__ void __launch_bounds__(kQThreads)
    attention_bwd_dq_tc_kernel(const BwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int BN = q_block_n<D>();
  constexpr int SS = smem_stride<D>();
  constexpr int NB = BN / 8;
  constexpr int DB = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + kQBM * SS;
  T* sK = sdO + kQBM * SS;  // 2 stages of BN x SS
  T* sV = sK + 2 * BN * SS;  // 2 stages of BN x SS

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, kQBM);
  const int m0 = static_cast<int>(blockIdx.x % tiles_m) * kQBM;
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view(pb, bh / pb.Hq, bh % pb.Hq);
  const int d = static_cast<int>(pb.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;

  const T* q = static_cast<const T*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const T* dout =
      static_cast<const T*>(p.dout.ptr) + hv.b * p.dout.stride_b + hv.h * p.dout.stride_h;
  const T* k = static_cast<const T*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;

  const int n_end = key_end(hv, pb.causal, m0, m0 + kQBM);
  const int num_tiles = static_cast<int>(ceil_div(n_end, BN));
  if (num_tiles > 0) {
    load_tile_async<T, kQBM, D, kQThreads>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
    load_tile_async<T, kQBM, D, kQThreads>(sdO, dout, p.dout.stride_l, m0, hv.q_len, d);
    load_tile_async<T, BN, D, kQThreads>(sK, k, pb.k.stride_l, 0, n_end, d);
    load_tile_async<T, BN, D, kQThreads>(sV, v, pb.v.stride_l, 0, n_end, d);
    cp_async_commit();
  }

  int rows[2];
  rows[0] = m0 + warp * 16 + g;
  rows[1] = rows[0] + 8;
  const int64_t row_base = (hv.b * pb.Hq + hv.h) * pb.Lq;
  const Dropout drop = make_dropout(pb, inv_keep, threshold);
  float lse2[2], delta[2];
  dropout::RowKeys keys[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = rows[r] < hv.q_len;
    const float lse = valid ? p.lse[row_base + rows[r]] : -INFINITY;
    lse2[r] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    delta[r] = valid ? p.delta[row_base + rows[r]] : 0.f;
    keys[r] = drop.on ? dropout::row_keys(drop.seed, dropout_row(pb, hv, rows[r]))
                      : dropout::RowKeys{0u, 0u};
  }

  float dq[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
  const float scale_log2 = pb.scale * kLog2e;
  const T* sQw = sQ + warp * 16 * SS;
  const T* sdOw = sdO + warp * 16 * SS;

  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it & 1;
    const int n0 = it * BN;
    if (it + 1 < num_tiles) {
      const int nxt = (stage ^ 1) * BN * SS;
      load_tile_async<T, BN, D, kQThreads>(sK + nxt, k, pb.k.stride_l, n0 + BN, n_end, d);
      load_tile_async<T, BN, D, kQThreads>(sV + nxt, v, pb.v.stride_l, n0 + BN, n_end, d);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* sKs = sK + stage * BN * SS;
    const T* sVs = sV + stage * BN * SS;

    // S = Q K^T and dP = dO V^T: 16 rows x BN keys per warp.
    float s[NB][4], dp[NB][4];
#pragma unroll
    for (int i = 0; i < NB; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ao[4];
      load_a_frag<D>(aq, sQw, kk * 16, lane);
      load_a_frag<D>(ao, sdOw, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < NB; nb += 2) {
        uint32_t bk[4], bv[4];
        load_bt_frag<D>(bk, sKs, nb * 8, kk * 16, lane);
        mma16816<T>(s[nb], aq, bk[0], bk[1]);
        mma16816<T>(s[nb + 1], aq, bk[2], bk[3]);
        load_bt_frag<D>(bv, sVs, nb * 8, kk * 16, lane);
        mma16816<T>(dp[nb], ao, bv[0], bv[1]);
        mma16816<T>(dp[nb + 1], ao, bv[2], bv[3]);
      }
    }

    // dS = P (dP - delta); element [nb][2r + e] is row rows[r], key
    // n0 + nb * 8 + 2t + e.
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = n0 + nb * 8 + 2 * t + e;
          const float x = masked_score(pb, hv, rows[r], j, s[nb][2 * r + e] * scale_log2);
          const float pr = exp2f(x - lse2[r]);
          float dpv = dp[nb][2 * r + e];
          if (drop.on) dpv *= dropout_factor(drop, keys[r], j);
          const float ds = pr * (dpv - delta[r]);
          s[nb][2 * r + e] = ds;
          if (p.dmask != nullptr && rows[r] < pb.Lq && j < pb.Lk) {
            p.dmask[(row_base + rows[r]) * pb.Lk + j] = ds;
          }
        }
      }
    }

    // dQ += dS K (scaled at the end).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = Elem<T>::pack2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Elem<T>::pack2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Elem<T>::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Elem<T>::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int db = 0; db < DB; db += 2) {
        uint32_t b[4];
        load_b_frag<D>(b, sKs, kk * 16, db * 8, lane);
        mma16816<T>(dq[db], a, b[0], b[1]);
        mma16816<T>(dq[db + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  T* dqp = static_cast<T*>(p.dq.ptr) + hv.b * p.dq.stride_b + hv.h * p.dq.stride_h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = rows[r];
    if (i >= pb.Lq) continue;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = db * 8 + 2 * t;
      if (col < d) {
        *reinterpret_cast<uint32_t*>(dqp + static_cast<int64_t>(i) * p.dq.stride_l + col) =
            Elem<T>::pack2(dq[db][2 * r] * pb.scale, dq[db][2 * r + 1] * pb.scale);
      }
    }
  }
}

// ------------------------------------------------------------- launchers

template <typename Kernel>
cudaError_t launch(Kernel kernel, const BwdParams& p, int64_t blocks, int threads, size_t smem,
                   cudaStream_t stream) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  if (blocks == 0) return cudaSuccess;  // nothing to compute (an empty dim)
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
      p, dropout_inv_keep(p.pb.dropout_p), dropout_threshold(p.pb.dropout_p));
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t bwd_tc(const BwdParams& p, cudaStream_t stream) {
  const Problem& pb = p.pb;
  cudaError_t err = launch(attention_bwd_dkdv_tc_kernel<T, D>, p,
                           ceil_div(pb.Lk, kKvBN) * pb.B * pb.Hkv, kv_threads<D>(),
                           kv_smem_bytes<D>(), stream);
  if (err != cudaSuccess) return err;
  return launch(attention_bwd_dq_tc_kernel<T, D>, p, ceil_div(pb.Lq, kQBM) * pb.B * pb.Hq,
                kQThreads, q_smem_bytes<D>(), stream);
}

template <typename T>
cudaError_t dispatch_bwd_tc(const BwdParams& p, cudaStream_t stream) {
  if (p.pb.D <= 32) return bwd_tc<T, 32>(p, stream);
  if (p.pb.D <= 64) return bwd_tc<T, 64>(p, stream);
  if (p.pb.D <= 128) return bwd_tc<T, 128>(p, stream);
  return bwd_tc<T, 256>(p, stream);
}

template <typename T>
cudaError_t launch_delta(const BwdParams& p, cudaStream_t stream) {
  const int64_t rows = p.pb.B * p.pb.Hq * p.pb.Lq;
  const int64_t blocks = ceil_div(rows, kDeltaWarps);
  if (blocks == 0) return cudaSuccess;  // nothing to compute (an empty dim)
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  attention_bwd_delta_kernel<T><<<static_cast<unsigned>(blocks), kDeltaWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_bwd(const BwdParams& p, cudaStream_t stream) {
  if (p.pb.D < 8 || p.pb.D > 256 || p.pb.D % 8 != 0) return cudaErrorInvalidValue;
  cudaError_t err;
  switch (p.pb.dtype) {
    case DType::kFloat16:
      err = launch_delta<__half>(p, stream);
      return err != cudaSuccess ? err : dispatch_bwd_tc<__half>(p, stream);
    case DType::kBFloat16:
      err = launch_delta<__nv_bfloat16>(p, stream);
      return err != cudaSuccess ? err : dispatch_bwd_tc<__nv_bfloat16>(p, stream);
    default:
      err = launch_delta<float>(p, stream);
      return err != cudaSuccess ? err : attention_bwd_simt(p, stream);
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
