// C++ CPU attention forward: flash-style tiles with an online softmax.
//
// Work item = (batch b, query head h, block of kBlockM query rows), spread
// over threads with at::parallel_for; the score matrix is never
// materialized, only one kBlockM x kBlockN tile per thread. Per row i, over
// key tiles (c = scale):
//     s_ij = c q_i . k_j (+ bias_ij; -inf where i may not attend j)
//     m' = max(m, max_j s_ij),  alpha = e^(m - m'),  p_ij = e^(s_ij - m')
//     l = alpha l + sum_j p_ij,  acc = alpha acc + sum_j drop(p_ij) v_j
// and at the end out_i = acc / l, lse_i = m + ln l. A row that has seen only
// -inf keeps m = -inf (nothing is exponentiated), so rows with nothing to
// attend end with l = 0: out 0 and lse -inf, as the contract wants.
// Dropout (fastattn._rng, row = (b Hq + h) Lq + i, col = j) multiplies the
// probabilities entering acc, not l: lse is taken before dropout.
//
// Key tiles are skipped by the loop bound: keys at or beyond kv_len and,
// with causal, beyond the diagonal of the block's last valid row are never
// loaded. Only tiles that cross the diagonal get the per-element causal mask.
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

// Forward over work items [begin, end) for a target of VB-byte vectors.
template <typename T, int VB>
FASTATTN_INLINE void fwd_range(const FwdParams<T>& p, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  const int64_t D = pb.D, BM = kBlockM, BN = kBlockN;
  const int64_t group = pb.Hq / pb.Hkv;
  const int64_t n_mblocks = (pb.Lq + BM - 1) / BM;
  const A scale = static_cast<A>(pb.scale);
  const A drop_scale = static_cast<A>(pb.drop.scale);

  // Per-thread scratch: q rows, K^T tile (D x BN), V tile (BN x D), scores,
  // output accumulator, running max and sum.
  std::vector<A> buf(static_cast<size_t>(BM * D + D * BN + BN * D + BM * BN + BM * D + 2 * BM));
  A* __restrict qb = buf.data();
  A* __restrict kt = qb + BM * D;
  A* __restrict vb = kt + D * BN;
  A* __restrict s = vb + BN * D;
  A* __restrict acc = s + BM * BN;
  A* __restrict m = acc + BM * D;
  A* __restrict l = m + BM;

  for (int64_t item = begin; item < end; ++item) {
    const int64_t mb = item % n_mblocks;
    const int64_t h = (item / n_mblocks) % pb.Hq;
    const int64_t b = item / (n_mblocks * pb.Hq);
    const int64_t hk = h / group;
    const int64_t m0 = mb * BM;
    const int64_t rows_all = std::min(BM, pb.Lq - m0);
    const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b];
    const int64_t diag = kv_len - q_len;
    const int64_t rows = std::clamp<int64_t>(q_len - m0, 0, rows_all);
    // Keys [0, hi) that some valid row of the block may attend.
    int64_t hi = rows > 0 ? kv_len : 0;
    if (pb.causal && rows > 0) hi = std::max<int64_t>(0, std::min(hi, m0 + rows + diag));

    const T* qbase = p.q + b * p.qs.b + h * p.qs.h + m0 * p.qs.l;
    const T* kbase = p.k + b * p.ks.b + hk * p.ks.h;
    const T* vbase = p.v + b * p.vs.b + hk * p.vs.h;
    T* obase = p.out + b * p.os.b + h * p.os.h + m0 * p.os.l;
    A* lse = p.lse + (b * pb.Hq + h) * pb.Lq + m0;
    const int64_t drop_row0 = (b * pb.Hq + h) * pb.Lq + m0;

    for (int64_t i = 0; i < rows; ++i) tiles::widen(qb + i * D, qbase + i * p.qs.l, D);
    std::fill(acc, acc + rows * D, A(0));
    std::fill(m, m + rows, kNegInf<A>);
    std::fill(l, l + rows, A(0));

    for (int64_t n0 = 0; n0 < hi; n0 += BN) {
      const int64_t nb = std::min(BN, hi - n0);
      for (int64_t j = 0; j < nb; ++j) {
        const T* __restrict kr = kbase + (n0 + j) * p.ks.l;
        for (int64_t d = 0; d < D; ++d) kt[d * BN + j] = static_cast<A>(kr[d]);
        tiles::widen(vb + j * D, vbase + (n0 + j) * p.vs.l, D);
      }
      for (int64_t i = 0; i < rows; ++i) std::fill(s + i * BN, s + i * BN + nb, A(0));
      tiles::gemm_acc<VB>(rows, nb, D, qb, D, 1, kt, BN, s, BN);
      for (int64_t i = 0; i < rows; ++i) {
        A* __restrict sr = s + i * BN;
        for (int64_t j = 0; j < nb; ++j) sr[j] *= scale;
      }
      tiles::apply_mask(s, BN, rows, nb, pb.mask, b, h, m0, n0);
      if (pb.causal && n0 + nb - 1 > m0 + diag) tiles::apply_causal(s, BN, rows, nb, m0, n0, diag);

      for (int64_t i = 0; i < rows; ++i) {
        A* __restrict sr = s + i * BN;
        const A m_new = std::max(m[i], tiles::row_max(sr, nb));
        if (m_new == kNegInf<A>) {  // nothing attendable yet: p = 0, state unchanged
          // unless the max skipped NaN scores: then the row is NaN, as in torch
          // (a NaN m keeps every later max, alpha and l NaN).
          if (std::any_of(sr, sr + nb, [](A x) { return x != x; })) {
            m[i] = l[i] = std::numeric_limits<A>::quiet_NaN();
          }
          std::fill(sr, sr + nb, A(0));
          continue;
        }
        const A alpha = tiles::exp_acc(m[i] - m_new);  // 0 on the first live tile
        tiles::exp_shifted(sr, nb, m_new);
        l[i] = l[i] * alpha + tiles::row_sum(sr, nb);
        m[i] = m_new;
        if (alpha != A(1)) {
          A* __restrict ar = acc + i * D;
          for (int64_t d = 0; d < D; ++d) ar[d] *= alpha;
        }
        if (pb.drop.on) {
          tiles::dropout_row(sr, nb, dropout::row_keys(pb.drop.seed, drop_row0 + i),
                             static_cast<uint32_t>(n0), pb.drop.thresh, drop_scale);
        }
      }
      tiles::gemm_acc<VB>(rows, D, nb, s, BN, 1, vb, D, acc, D);
    }

    for (int64_t i = 0; i < rows_all; ++i) {
      T* __restrict orow = obase + i * p.os.l;
      if (i < rows && l[i] != A(0)) {  // a NaN sum stays NaN, as in torch
        const A inv = A(1) / l[i];
        const A* __restrict ar = acc + i * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(ar[d] * inv);
        lse[i] = m[i] + std::log(l[i]);
      } else {
        for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(0);
        lse[i] = kNegInf<A>;
      }
    }
  }
}

template <typename T>
void fwd_range_default(const FwdParams<T>& p, int64_t begin, int64_t end) {
  fwd_range<T, vector_bytes(Isa::kDefault)>(p, begin, end);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void fwd_range_avx2(const FwdParams<T>& p, int64_t begin, int64_t end) {
  fwd_range<T, vector_bytes(Isa::kAvx2)>(p, begin, end);
}

template <typename T>
FASTATTN_TARGET_AVX512 void fwd_range_avx512(const FwdParams<T>& p, int64_t begin, int64_t end) {
  fwd_range<T, vector_bytes(Isa::kAvx512)>(p, begin, end);
}
#endif

}  // namespace

template <typename T>
void attention_fwd_kernel(const FwdParams<T>& p) {
  const Problem& pb = p.pb;
  const int64_t items = pb.B * pb.Hq * ((pb.Lq + kBlockM - 1) / kBlockM);
  if (items == 0) return;
  void (*range)(const FwdParams<T>&, int64_t, int64_t) = &fwd_range_default<T>;
#if FASTATTN_X86_VARIANTS
  switch (cpu_isa()) {
    case Isa::kAvx512: range = &fwd_range_avx512<T>; break;
    case Isa::kAvx2: range = &fwd_range_avx2<T>; break;
    default: break;
  }
#endif
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) { range(p, begin, end); });
}

template void attention_fwd_kernel<float>(const FwdParams<float>&);
template void attention_fwd_kernel<double>(const FwdParams<double>&);
template void attention_fwd_kernel<at::Half>(const FwdParams<at::Half>&);
template void attention_fwd_kernel<at::BFloat16>(const FwdParams<at::BFloat16>&);

}  // namespace cpu
}  // namespace fastattn
