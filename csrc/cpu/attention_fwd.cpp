// C++ CPU attention forward: flash-style tiles with an online softmax.
//
// Work item = (batch b, query head h, block of kBlockM query rows), taken by
// threads from a queue, costliest first (work_queue.h); the score matrix is never
// materialized, only one key-major kBlockN x kBlockM tile per thread
// (attention_tiles.h). Per row i, over key tiles (c = scale, folded into the
// block's Q^T once):
//     s_ij = (c q_i) . k_j (+ bias_ij; -inf where i may not attend j)
//     m' = max(m, max_j s_ij),  alpha = e^(m - m'),  p_ij = e^(s_ij - m')
//     l = alpha l + sum_j p_ij,  acc = alpha acc + sum_j drop(p_ij) v_j
// and at the end out_i = acc / l, lse_i = m + ln l. A row that has seen only
// -inf keeps m = -inf (its p are e^-inf = 0), so rows with nothing to
// attend end with l = 0: out 0 and lse -inf, as the contract wants.
// Dropout (fastattn._rng, row = (b Hq + h) Lq + i, col = j) multiplies the
// probabilities entering acc, not l: lse is taken before dropout.
//
// Scores pass through the score path (attention_scores.h: softcap, masks,
// ALiBi, relative bias, causal, window). Key tiles are skipped by the loop
// bounds: keys at or beyond kv_len, beyond the causal diagonal of the
// block's last valid row, or outside every row's window are never loaded;
// only tiles that cross such a bound get the per-element restrictions.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention_cpu.h"
#include "cpu/work_queue.h"

namespace fastattn {
namespace cpu {
namespace {

using tiles::acc_t;
using tiles::kNegInf;

// Query blocks of at most this many rows (decoding) form their scores as dot
// products instead of register panels of mostly padding.
constexpr int64_t kDotRows = 4;

// Work item `item` of the forward: (b, h, query block), as numbered by
// item = (b * Hq + h) * n_mblocks + mb.
struct FwdItem {
  int64_t b, h, mb;
};

FASTATTN_INLINE FwdItem fwd_item(const Problem& pb, int64_t item) {
  const int64_t n_mblocks = (pb.Lq + kBlockM - 1) / kBlockM;
  return {item / (n_mblocks * pb.Hq), (item / n_mblocks) % pb.Hq, item % n_mblocks};
}

// The rows of query block mb of batch row b the item writes (`rows_all`:
// the padded ones too, none of them in packed sequences), the valid ones
// (`rows`), and the keys these may attend (lengths, causal, window:
// attention_scores.h).
FASTATTN_INLINE KeyRange fwd_extent(const Problem& pb, int64_t b, int64_t mb, int64_t& rows,
                                    int64_t& rows_all) {
  const int64_t m0 = mb * kBlockM;
  const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b];
  rows_all = std::min(kBlockM, pb.Lq - m0);
  rows = std::clamp<int64_t>(q_len - m0, 0, rows_all);
  if (pb.packed()) rows_all = rows;
  return KeyRange(m0, rows, kv_len, kv_len - q_len, pb.causal, pb.mods);
}

// Forward of the items the queue hands this thread, for a target of VB-byte vectors.
template <typename T, int VB>
FASTATTN_INLINE void fwd_items(const FwdParams<T>& p, WorkQueue& queue) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  const int64_t D = pb.D, BM = kBlockM, BN = kBlockN;
  const int64_t group = pb.Hq / pb.Hkv;
  const A scale = static_cast<A>(pb.scale);
  const A drop_scale = static_cast<A>(pb.drop.scale);

  // Per-thread scratch: scale * Q^T of the block (D x BM; scale * Q, rows x
  // D, for a block that forms its scores as dot products), the key-major
  // score tile (BN x BM), K and V tiles widened from 16-bit inputs (BN x D
  // each), the output accumulator (BM x D), per-query running max, shift
  // and rescale factor, the running sum and tile sums in double (see below),
  // and dropout keys.
  std::vector<A> buf(static_cast<size_t>(D * BM + BN * BM + 2 * BN * D + BM * D + 3 * BM +
                                         BN + BM));
  // The softmax sums l in double: lse = m + ln l is what the backward
  // normalizes every p by, so the rounding of a float sum over the row's
  // keys (about sqrt(Lk) float ulps) would scale the row's gradients by as
  // much; in double it is gone, at one wider add per score.
  std::vector<double> sums(static_cast<size_t>(2 * BM));
  double* l = sums.data();
  double* tsum = l + BM;
  A* qt = buf.data();
  A* st = qt + D * BM;
  A* kw = st + BN * BM;
  A* vw = kw + BN * D;
  A* acc = vw + BN * D;
  A* m = acc + BM * D;
  A* shift = m + BM;
  A* alpha = shift + BM;
  A* diag_bias = alpha + BM;  // the relative bias along a tile's diagonals
  std::vector<uint32_t> keys(static_cast<size_t>(2 * BM));
  uint32_t* ka = keys.data();
  uint32_t* kb = ka + BM;

  for (int64_t item; queue.pop(item);) {
    const auto [b, h, mb] = fwd_item(pb, item);
    const int64_t hk = h / group;
    const int64_t m0 = mb * BM;
    const int64_t diag = pb.kv_len[b] - pb.q_len[b];
    int64_t rows, rows_all;
    const KeyRange keys = fwd_extent(pb, b, mb, rows, rows_all);
    if (rows_all == 0) continue;
    // Query columns computed: the valid rows rounded up to a vector, or, for
    // a few rows (decoding), just those, as dot products.
    const bool dots = rows <= kDotRows;
    const int64_t cols = dots ? rows : tile_columns<VB, A>(rows);
    const int64_t ld = dots ? rows : BM;  // of the score tile

    const T* kbase = p.k + pb.k_offset(p.ks, b) + hk * p.ks.h;
    const T* vbase = p.v + pb.k_offset(p.vs, b) + hk * p.vs.h;
    T* obase = p.out + pb.q_offset(p.os, b) + h * p.os.h + m0 * p.os.l;
    double* lse = p.lse + pb.lse_row(b, h) + m0;

    const T* qrows = p.q + pb.q_offset(p.qs, b) + h * p.qs.h + m0 * p.qs.l;
    if (dots) {
      tiles::load_rows(qt, qrows, p.qs.l, rows, D, scale);  // scale Q, rows x D
    } else {
      tiles::load_transposed(qt, BM, qrows, p.qs.l, rows, cols, D, scale);
    }
    std::fill(acc, acc + rows * D, A(0));
    std::fill(m, m + cols, kNegInf<A>);
    std::fill(l, l + cols, 0.0);
    if (pb.drop.on) tiles::dropout_keys(pb.drop.seed, (b * pb.Hq + h) * pb.Lq + m0, rows, ka, kb);

    for (int64_t n0 = keys.lo; n0 < keys.hi; n0 += BN) {
      const int64_t nb = std::min(BN, keys.hi - n0);
      int64_t kld, vld;
      const A* kr = tiles::rows_operand(kbase + n0 * p.ks.l, p.ks.l, nb, D, kw, kld);
      const A* vr = tiles::rows_operand(vbase + n0 * p.vs.l, p.vs.l, nb, D, vw, vld);
      // s^T = K (scale Q)^T
      if (dots) {
        tiles::gemm_dots(nb, cols, D, kr, kld, qt, D, st, ld);
      } else {
        tiles::gemm_acc<VB>(nb, cols, D, kr, kld, 1, qt, BM, st, ld, /*overwrite=*/true);
      }
      score_path(st, static_cast<A*>(nullptr), diag_bias, ld, nb, cols, rows, pb.mask,
                 pb.causal, pb.mods, pb.Hq, pb.Lq, pb.Lk, b, h, m0, n0, diag,
                 keys.partial(n0, nb));

      // Online softmax, one query per column. A column that has seen only
      // -inf keeps m = -inf and exponentiates with shift 0, so its p are 0
      // (or NaN where a NaN score was skipped by the max: then l turns NaN
      // and the row comes out NaN, as in torch).
      if (ld == 1) {  // one query: its scores are one contiguous vector
        const A m_new = tiles::vec_max(st, nb, m[0]);
        shift[0] = m_new == kNegInf<A> ? A(0) : m_new;
        alpha[0] = tiles::exp_acc(m[0] - shift[0]);
        m[0] = m_new;
        tsum[0] = tiles::vec_exp_sum(st, nb, shift[0]);
      } else {
        std::copy(m, m + cols, shift);
        tiles::col_max(st, ld, nb, cols, shift);  // shift = the new running max
        for (int64_t c = 0; c < cols; ++c) {
          const A m_new = shift[c];
          if (m_new == kNegInf<A>) shift[c] = A(0);
          alpha[c] = tiles::exp_acc(m[c] - shift[c]);  // 0 on the first live tile
          m[c] = m_new;
        }
        tiles::col_exp_sum(st, ld, nb, cols, shift, tsum);
      }
      for (int64_t c = 0; c < cols; ++c) l[c] = l[c] * static_cast<double>(alpha[c]) + tsum[c];
      for (int64_t i = 0; i < rows; ++i) {
        A* __restrict ar = acc + i * D;
        const A f = alpha[i];
        for (int64_t d = 0; d < D; ++d) ar[d] *= f;
      }
      // Dropout scales the probabilities entering acc, not l.
      if (pb.drop.on) {
        tiles::col_dropout(st, st, ld, nb, rows, ka, kb, static_cast<uint32_t>(n0),
                           pb.drop.thresh, drop_scale);
      }
      // acc += P V, P read transposed from the key-major tile
      tiles::gemm_acc<VB>(rows, D, nb, st, 1, ld, vr, vld, acc, D);
    }

    for (int64_t i = 0; i < rows_all; ++i) {
      T* __restrict orow = obase + i * p.os.l;
      if (i < rows && l[i] != 0.0) {  // a NaN sum stays NaN, as in torch
        const A inv = static_cast<A>(1.0 / l[i]);
        const A* __restrict ar = acc + i * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(ar[d] * inv);
        // m is a score itself: in double, m + ln l loses nothing to rounding
        lse[i] = static_cast<double>(m[i]) + std::log(l[i]);
      } else {
        for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<T>(0);
        lse[i] = kNegInf<double>;
      }
    }
  }
}

template <typename T>
void fwd_items_default(const FwdParams<T>& p, WorkQueue& queue) {
  fwd_items<T, vector_bytes(Isa::kDefault)>(p, queue);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void fwd_items_avx2(const FwdParams<T>& p, WorkQueue& queue) {
  fwd_items<T, vector_bytes(Isa::kAvx2)>(p, queue);
}

template <typename T>
FASTATTN_TARGET_AVX512 void fwd_items_avx512(const FwdParams<T>& p, WorkQueue& queue) {
  fwd_items<T, vector_bytes(Isa::kAvx512)>(p, queue);
}
#endif

}  // namespace

template <typename T>
void attention_fwd_kernel(const FwdParams<T>& p) {
  const Problem& pb = p.pb;
  const int64_t items = pb.B * pb.Hq * ((pb.Lq + kBlockM - 1) / kBlockM);
  if (items == 0) return;
  // Cost of an item: the score elements it computes (its valid rows times
  // the keys they reach), plus writing its rows (the padded ones too).
  std::vector<int64_t> cost(static_cast<size_t>(items));
  for (int64_t item = 0; item < items; ++item) {
    const FwdItem it = fwd_item(pb, item);
    int64_t rows, rows_all;
    const KeyRange keys = fwd_extent(pb, it.b, it.mb, rows, rows_all);
    cost[item] = rows * (keys.hi - keys.lo) + rows_all;
  }
  WorkQueue queue(cost);
  const auto run = FASTATTN_PICK_VARIANT(fwd_items, T);
  run_workers(queue, [&] { run(p, queue); });
}

template void attention_fwd_kernel<float>(const FwdParams<float>&);
template void attention_fwd_kernel<double>(const FwdParams<double>&);
template void attention_fwd_kernel<at::Half>(const FwdParams<at::Half>&);
template void attention_fwd_kernel<at::BFloat16>(const FwdParams<at::BFloat16>&);

}  // namespace cpu
}  // namespace fastattn
