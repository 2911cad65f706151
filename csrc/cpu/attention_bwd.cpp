// C++ CPU attention backward, recomputing the probabilities from lse.
//
// With s, the masked scaled scores, and keep_ij / (1 - p_drop) = z_ij the
// dropout factor (1 without dropout), per (i, j):
//     p_ij  = e^(s_ij - lse_i)             (0 where s = -inf or lse = -inf)
//     dp_ij = z_ij (dout_i . v_j)
//     ds_ij = p_ij (dp_ij - delta_i),      delta_i = dout_i . out_i - dlse_i
//     dq_i  = c sum_j ds_ij k_j,   dk_j = c sum_i ds_ij q_i,
//     dv_j  = sum_i z_ij p_ij dout_i,      dbias_ij = ds_ij   (c = scale)
// (delta comes from the binding, attention.cpp).
//
// Two passes, each writing disjoint outputs so that no two threads ever add
// into the same element and results do not depend on the thread count:
//   1. dK/dV: work item = (b, kv head, block of kBlockN keys); it walks the
//      query heads of its group and their query blocks that may see the
//      keys, accumulating dk, dv of its keys in scratch.
//   2. dQ (and the full bias gradient): work item = (b, query head, block of
//      kBlockM rows) over the key tiles the block may attend, as the forward.
// Both recompute s and dp; that costs a second pair of products but needs no
// atomics and no O(L^2) storage.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention_cpu.h"

namespace fastattn {
namespace cpu {
namespace {

using tiles::acc_t;
using tiles::kNegInf;

// Recomputes the rows x nb probability tile p (leading dim kBlockN) of rows
// [i0, i0 + rows) and keys [j0, j0 + nb) of head (b, h), and the tile dp =
// z * (dout . v^T). qb/dob: the rows of q and dout (rows x D); kt/vt: K^T and
// V^T of the keys (D x kBlockN); lse: the rows' lse.
template <typename A, int VB>
FASTATTN_INLINE void probs_and_dp(const Problem& pb, int64_t b, int64_t h, int64_t i0,
                                  int64_t rows, int64_t j0, int64_t nb, const A* qb,
                                  const A* dob, const A* kt, const A* vt, const A* lse, A* p,
                                  A* dp, A* pd) {
  const int64_t D = pb.D, BN = kBlockN;
  const A scale = static_cast<A>(pb.scale);
  for (int64_t i = 0; i < rows; ++i) {
    std::fill(p + i * BN, p + i * BN + nb, A(0));
    std::fill(dp + i * BN, dp + i * BN + nb, A(0));
  }
  tiles::gemm_acc<VB>(rows, nb, D, qb, D, 1, kt, BN, p, BN);
  for (int64_t i = 0; i < rows; ++i) {
    A* __restrict sr = p + i * BN;
    for (int64_t j = 0; j < nb; ++j) sr[j] *= scale;
  }
  tiles::apply_mask(p, BN, rows, nb, pb.mask, b, h, i0, j0);
  const int64_t diag = pb.kv_len[b] - pb.q_len[b];
  if (pb.causal && j0 + nb - 1 > i0 + diag) tiles::apply_causal(p, BN, rows, nb, i0, j0, diag);
  for (int64_t i = 0; i < rows; ++i) {
    A* __restrict sr = p + i * BN;
    if (lse[i] == kNegInf<A>) {
      std::fill(sr, sr + nb, A(0));
    } else {
      tiles::exp_shifted(sr, nb, lse[i]);
    }
  }
  tiles::gemm_acc<VB>(rows, nb, D, dob, D, 1, vt, BN, dp, BN);
  if (!pb.drop.on) return;
  const A drop_scale = static_cast<A>(pb.drop.scale);
  for (int64_t i = 0; i < rows; ++i) {
    const auto keys = dropout::row_keys(pb.drop.seed, (b * pb.Hq + h) * pb.Lq + i0 + i);
    const uint32_t col0 = static_cast<uint32_t>(j0);
    tiles::dropout_row(dp + i * BN, nb, keys, col0, pb.drop.thresh, drop_scale);
    if (pd != nullptr) {
      std::copy(p + i * BN, p + i * BN + nb, pd + i * BN);
      tiles::dropout_row(pd + i * BN, nb, keys, col0, pb.drop.thresh, drop_scale);
    }
  }
}

// dp becomes ds = p * (dp - delta).
template <typename A>
FASTATTN_INLINE void scores_grad(int64_t rows, int64_t nb, const A* p, A* dp, const A* delta) {
  for (int64_t i = 0; i < rows; ++i) {
    const A* __restrict pr = p + i * kBlockN;
    A* __restrict dr = dp + i * kBlockN;
    const A di = delta[i];
    for (int64_t j = 0; j < nb; ++j) dr[j] = pr[j] * (dr[j] - di);
  }
}

// Loads keys [j0, j0 + nb) of a (L, D) slice transposed into dst (D x kBlockN).
template <typename A, typename T>
FASTATTN_INLINE void load_transposed(A* __restrict dst, const T* base, int64_t stride,
                                     int64_t j0, int64_t nb, int64_t D) {
  for (int64_t j = 0; j < nb; ++j) {
    const T* __restrict r = base + (j0 + j) * stride;
    for (int64_t d = 0; d < D; ++d) dst[d * kBlockN + j] = static_cast<A>(r[d]);
  }
}

template <typename A, typename T>
FASTATTN_INLINE void load_rows(A* __restrict dst, const T* base, int64_t stride, int64_t r0,
                               int64_t rows, int64_t D) {
  for (int64_t i = 0; i < rows; ++i) tiles::widen(dst + i * D, base + (r0 + i) * stride, D);
}

// Writes rows x D of acc * factor into rows [r0, r0 + rows) of a slice.
template <typename T, typename A>
FASTATTN_INLINE void store_rows(T* base, int64_t stride, int64_t r0, int64_t rows, int64_t D,
                                const A* acc, A factor) {
  for (int64_t i = 0; i < rows; ++i) {
    T* __restrict o = base + (r0 + i) * stride;
    const A* __restrict a = acc + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(a[d] * factor);
  }
}

template <typename T>
FASTATTN_INLINE void zero_rows(T* base, int64_t stride, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t i = r0; i < r1; ++i) std::fill(base + i * stride, base + i * stride + D, T(0));
}

// Pass 1: dk, dv for work items [begin, end) = (b, kv head, key block).
template <typename T, int VB>
FASTATTN_INLINE void dkdv_range(const BwdParams<T>& p, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  const int64_t D = pb.D, BM = kBlockM, BN = kBlockN;
  const int64_t group = pb.Hq / pb.Hkv;
  const int64_t n_nblocks = (pb.Lk + BN - 1) / BN;
  const A scale = static_cast<A>(pb.scale);

  std::vector<A> buf(static_cast<size_t>(2 * D * BN + 2 * BM * D + 3 * BM * BN + 2 * BN * D));
  A* kt = buf.data();          // K^T of the key block (D x BN)
  A* vt = kt + D * BN;         // V^T (D x BN)
  A* qb = vt + D * BN;         // q rows (BM x D)
  A* dob = qb + BM * D;        // dout rows (BM x D)
  A* pt = dob + BM * D;        // probabilities (BM x BN)
  A* dpt = pt + BM * BN;       // dp, then ds (BM x BN)
  A* pdt = dpt + BM * BN;      // probabilities after dropout (BM x BN)
  A* dk_acc = pdt + BM * BN;   // (BN x D)
  A* dv_acc = dk_acc + BN * D; // (BN x D)

  for (int64_t item = begin; item < end; ++item) {
    const int64_t nblk = item % n_nblocks;
    const int64_t hk = (item / n_nblocks) % pb.Hkv;
    const int64_t b = item / (n_nblocks * pb.Hkv);
    const int64_t j0 = nblk * BN;
    const int64_t cols_all = std::min(BN, pb.Lk - j0);
    const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b];
    const int64_t diag = kv_len - q_len;
    const int64_t cols = std::clamp<int64_t>(kv_len - j0, 0, cols_all);
    T* dkb = p.dk + b * p.dks.b + hk * p.dks.h;
    T* dvb = p.dv + b * p.dvs.b + hk * p.dvs.h;
    zero_rows(dkb, p.dks.l, j0 + cols, j0 + cols_all, D);
    zero_rows(dvb, p.dvs.l, j0 + cols, j0 + cols_all, D);
    if (cols == 0) continue;

    load_transposed(kt, p.k + b * p.ks.b + hk * p.ks.h, p.ks.l, j0, cols, D);
    load_transposed(vt, p.v + b * p.vs.b + hk * p.vs.h, p.vs.l, j0, cols, D);
    std::fill(dk_acc, dk_acc + cols * D, A(0));
    std::fill(dv_acc, dv_acc + cols * D, A(0));
    // Rows that may see a key of the block: i < q_len and, with causal,
    // i + diag >= j0.
    const int64_t i_lo = pb.causal ? std::max<int64_t>(0, j0 - diag) : 0;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      const T* qbase = p.q + b * p.qs.b + h * p.qs.h;
      const T* dobase = p.dout + b * p.dos.b + h * p.dos.h;
      const A* lse = p.lse + (b * pb.Hq + h) * pb.Lq;
      const A* delta = p.delta + (b * pb.Hq + h) * pb.Lq;
      for (int64_t i0 = i_lo; i0 < q_len; i0 += BM) {
        const int64_t rows = std::min(BM, q_len - i0);
        load_rows(qb, qbase, p.qs.l, i0, rows, D);
        load_rows(dob, dobase, p.dos.l, i0, rows, D);
        probs_and_dp<A, VB>(pb, b, h, i0, rows, j0, cols, qb, dob, kt, vt, lse + i0, pt, dpt,
                            pb.drop.on ? pdt : nullptr);
        // dv += pd^T dout: A(m = key j, k = row i) = pd[i * BN + j].
        tiles::gemm_acc<VB>(cols, D, rows, pb.drop.on ? pdt : pt, 1, BN, dob, D, dv_acc, D);
        scores_grad(rows, cols, pt, dpt, delta + i0);
        tiles::gemm_acc<VB>(cols, D, rows, dpt, 1, BN, qb, D, dk_acc, D);
      }
    }
    store_rows(dkb, p.dks.l, j0, cols, D, dk_acc, scale);
    store_rows(dvb, p.dvs.l, j0, cols, D, dv_acc, A(1));
  }
}

// Pass 2: dq (and dbias) for work items [begin, end) = (b, query head, row block).
template <typename T, int VB>
FASTATTN_INLINE void dq_range(const BwdParams<T>& p, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  const int64_t D = pb.D, BM = kBlockM, BN = kBlockN;
  const int64_t group = pb.Hq / pb.Hkv;
  const int64_t n_mblocks = (pb.Lq + BM - 1) / BM;
  const A scale = static_cast<A>(pb.scale);

  std::vector<A> buf(static_cast<size_t>(2 * D * BN + BN * D + 3 * BM * D + 2 * BM * BN));
  A* kt = buf.data();        // K^T of a key tile (D x BN)
  A* vt = kt + D * BN;       // V^T (D x BN)
  A* kb = vt + D * BN;       // K rows (BN x D)
  A* qb = kb + BN * D;       // q rows (BM x D)
  A* dob = qb + BM * D;      // dout rows (BM x D)
  A* dq_acc = dob + BM * D;  // (BM x D)
  A* pt = dq_acc + BM * D;   // probabilities (BM x BN)
  A* dpt = pt + BM * BN;     // dp, then ds (BM x BN)

  for (int64_t item = begin; item < end; ++item) {
    const int64_t mb = item % n_mblocks;
    const int64_t h = (item / n_mblocks) % pb.Hq;
    const int64_t b = item / (n_mblocks * pb.Hq);
    const int64_t hk = h / group;
    const int64_t i0 = mb * BM;
    const int64_t rows_all = std::min(BM, pb.Lq - i0);
    const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b];
    const int64_t rows = std::clamp<int64_t>(q_len - i0, 0, rows_all);
    int64_t hi = rows > 0 ? kv_len : 0;
    if (pb.causal && rows > 0) hi = std::max<int64_t>(0, std::min(hi, i0 + rows + kv_len - q_len));
    T* dqb = p.dq + b * p.dqs.b + h * p.dqs.h;
    zero_rows(dqb, p.dqs.l, i0 + rows, i0 + rows_all, D);
    if (rows == 0) continue;

    const T* kbase = p.k + b * p.ks.b + hk * p.ks.h;
    const T* vbase = p.v + b * p.vs.b + hk * p.vs.h;
    const A* lse = p.lse + (b * pb.Hq + h) * pb.Lq + i0;
    const A* delta = p.delta + (b * pb.Hq + h) * pb.Lq + i0;
    load_rows(qb, p.q + b * p.qs.b + h * p.qs.h, p.qs.l, i0, rows, D);
    load_rows(dob, p.dout + b * p.dos.b + h * p.dos.h, p.dos.l, i0, rows, D);
    std::fill(dq_acc, dq_acc + rows * D, A(0));
    for (int64_t j0 = 0; j0 < hi; j0 += BN) {
      const int64_t nb = std::min(BN, hi - j0);
      load_transposed(kt, kbase, p.ks.l, j0, nb, D);
      load_transposed(vt, vbase, p.vs.l, j0, nb, D);
      load_rows(kb, kbase, p.ks.l, j0, nb, D);
      probs_and_dp<A, VB>(pb, b, h, i0, rows, j0, nb, qb, dob, kt, vt, lse, pt, dpt, nullptr);
      scores_grad(rows, nb, pt, dpt, delta);
      if (p.dbias != nullptr) {
        A* dbase = p.dbias + ((b * pb.Hq + h) * pb.Lq + i0) * pb.Lk + j0;
        for (int64_t i = 0; i < rows; ++i) {
          std::copy(dpt + i * BN, dpt + i * BN + nb, dbase + i * pb.Lk);
        }
      }
      tiles::gemm_acc<VB>(rows, D, nb, dpt, BN, 1, kb, D, dq_acc, D);
    }
    store_rows(dqb, p.dqs.l, i0, rows, D, dq_acc, scale);
  }
}

template <typename T>
void dkdv_default(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dkdv_range<T, vector_bytes(Isa::kDefault)>(p, begin, end);
}
template <typename T>
void dq_default(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dq_range<T, vector_bytes(Isa::kDefault)>(p, begin, end);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void dkdv_avx2(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dkdv_range<T, vector_bytes(Isa::kAvx2)>(p, begin, end);
}
template <typename T>
FASTATTN_TARGET_AVX2 void dq_avx2(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dq_range<T, vector_bytes(Isa::kAvx2)>(p, begin, end);
}
template <typename T>
FASTATTN_TARGET_AVX512 void dkdv_avx512(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dkdv_range<T, vector_bytes(Isa::kAvx512)>(p, begin, end);
}
template <typename T>
FASTATTN_TARGET_AVX512 void dq_avx512(const BwdParams<T>& p, int64_t begin, int64_t end) {
  dq_range<T, vector_bytes(Isa::kAvx512)>(p, begin, end);
}
#endif

}  // namespace

template <typename T>
void attention_bwd_kernel(const BwdParams<T>& p) {
  using Range = void (*)(const BwdParams<T>&, int64_t, int64_t);
  Range dkdv = &dkdv_default<T>, dq = &dq_default<T>;
#if FASTATTN_X86_VARIANTS
  switch (cpu_isa()) {
    case Isa::kAvx512: dkdv = &dkdv_avx512<T>; dq = &dq_avx512<T>; break;
    case Isa::kAvx2: dkdv = &dkdv_avx2<T>; dq = &dq_avx2<T>; break;
    default: break;
  }
#endif
  const Problem& pb = p.pb;
  const int64_t kv_items = pb.B * pb.Hkv * ((pb.Lk + kBlockN - 1) / kBlockN);
  const int64_t q_items = pb.B * pb.Hq * ((pb.Lq + kBlockM - 1) / kBlockM);
  if (kv_items > 0) {
    at::parallel_for(0, kv_items, 1, [&](int64_t begin, int64_t end) { dkdv(p, begin, end); });
  }
  if (q_items > 0) {
    at::parallel_for(0, q_items, 1, [&](int64_t begin, int64_t end) { dq(p, begin, end); });
  }
}

template void attention_bwd_kernel<float>(const BwdParams<float>&);
template void attention_bwd_kernel<double>(const BwdParams<double>&);
template void attention_bwd_kernel<at::Half>(const BwdParams<at::Half>&);
template void attention_bwd_kernel<at::BFloat16>(const BwdParams<at::BFloat16>&);

}  // namespace cpu
}  // namespace fastattn
