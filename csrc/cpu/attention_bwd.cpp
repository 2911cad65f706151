// C++ CPU attention backward, recomputing the probabilities from lse.
//
// With s, the masked scaled scores, and keep_ij / (1 - p_drop) = z_ij the
// dropout factor (1 without dropout), per (i, j):
//     p_ij  = e^(s_ij - lse_i)             (0 where s = -inf or lse = -inf;
//                                           lse in float64, see below)
//     dp_ij = z_ij (dout_i . v_j)
//     ds_ij = p_ij (dp_ij - delta_i),      delta_i = dout_i . out_i - dlse_i
//     dq_i  = c sum_j ds_ij k_j,   dk_j = c sum_i ds_ij q_i,
//     dv_j  = sum_i z_ij p_ij dout_i,      dbias_ij = ds_ij   (c = scale)
// (delta from row_deltas, below).
//
// One pass, five tile products per (query block, key block), on key-major
// tiles (attention_tiles.h): s^T = K (c Q)^T, dp^T = V dout^T, dv += p^T dout,
// dk += ds^T q, dq += ds k. Work item = (b, kv head, chunk of key blocks):
// it owns the dk, dv rows of its keys and accumulates them over every query
// head of its group and every query block, so no two threads ever add into
// the same element. dq sums over keys, i.e. over chunks: with one chunk per
// (b, kv head) the item writes dq itself; with several, each chunk stores
// its partial dq and a final pass adds the partials in chunk order. The
// chunk count depends on the problem's shape only (enough items for the
// threads of any machine), so the result is bitwise the same whatever the
// thread count. Threads take the items from a queue, costliest first
// (work_queue.h), so uneven lengths do not leave one thread all the work.
//
// Own delta for dq (p.own_delta_dq: float32 with a float mask). delta_i
// stands in for sum_j p_ij dp_ij, and where attention is concentrated (a
// large additive bias such as ALiBi, with causal) dp_ij - delta_i nearly
// cancels: delta's own rounding, which the dp_ij do not share, then becomes
// most of ds. PyTorch's softmax backward has no such mismatch (it sums
// p dp itself), so its dq is up to 3x more accurate there. dq factors as
//     dq_i = c (sum_j p_ij (dp_ij - delta_i) k_j + (delta_i - C_i) B_i),
//     C_i = sum_j p_ij dp_ij - dlse_i,   B_i = sum_j p_ij k_j,
// which is dq with the row's own sum C_i in place of delta_i: one more tile
// product (B), only on those calls.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/attention_cpu.h"
#include "cpu/work_queue.h"

namespace fastattn {
namespace cpu {
namespace {

using tiles::acc_t;
using tiles::kNegInf;

// Work items wanted at least: below that, the keys of a (b, kv head) are
// split into chunks (fixed number, not the thread count: see above).
constexpr int64_t kMinBwdItems = 32;

// One call's plan: how the keys of each (b, kv head) are split into work
// items, the buffers of the chunks' partial results, and the row deltas.
template <typename A>
struct BwdPlan {
  int64_t chunks = 1;          // chunks per (b, kv head)
  int64_t blocks = 1;          // key blocks per chunk
  const A* delta = nullptr;    // (B, Hq, Lq): dout_i . out_i - dlse_i (row_deltas)
  A* dq_part = nullptr;        // (chunks, B, Hq, Lq, D) partial dq when chunks > 1
  A* b_part = nullptr;         // the same for B (own delta, see above)
  double* c_part = nullptr;    // (chunks, B, Hq, Lq) partial C (own delta)
  // (chunks, B, Hq, query blocks): whether the chunk stored partials for the
  // block's valid rows. Only those are read, so the partial buffers need no
  // clearing, and with causal or a window (where a chunk's keys reach a
  // band of queries) their untouched pages are never even mapped.
  uint8_t* stored = nullptr;
  double* drel_part = nullptr; // (chunks, B, Hq, 2R + 1) partial sums of ds per relative position
};

template <typename T>
FASTATTN_INLINE void zero_rows(T* base, int64_t stride, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t i = r0; i < r1; ++i) std::fill(base + i * stride, base + i * stride + D, T(0));
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

// dq_acc[i] += (delta_i - (sum_j p dp - dlse_i)) B_i for rows i < rows
// (own delta, see above); c_sum holds sum_j p dp, dlse may be null.
template <typename A>
FASTATTN_INLINE void own_delta_correction(A* dq_acc, const A* b_acc, const A* delta,
                                          const A* dlse, const double* c_sum, int64_t rows,
                                          int64_t D) {
  for (int64_t i = 0; i < rows; ++i) {
    const double own = c_sum[i] - (dlse != nullptr ? static_cast<double>(dlse[i]) : 0.0);
    const A f = static_cast<A>(static_cast<double>(delta[i]) - own);
    A* __restrict o = dq_acc + i * D;
    const A* __restrict bi = b_acc + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] += f * bi[d];
  }
}

// Gradients for the work items the queue hands this thread; item =
// (b * Hkv + kv head) * chunks + key chunk.
template <typename T, int VB>
FASTATTN_INLINE void bwd_items(const BwdParams<T>& p, const BwdPlan<acc_t<T>>& sp,
                               WorkQueue& queue) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  const int64_t D = pb.D, BM = kBlockM, BN = kBlockN;
  const int64_t group = pb.Hq / pb.Hkv;
  const int64_t chunk_keys = sp.blocks * BN;
  const int64_t n_qblocks = (pb.Lq + BM - 1) / BM;
  const A scale = static_cast<A>(pb.scale);
  const A drop_scale = static_cast<A>(pb.drop.scale);
  constexpr A kInf = std::numeric_limits<A>::infinity();

  // Per-thread scratch. Chunk-wide: K and V rows widened from 16-bit inputs,
  // dk and dv accumulators (chunk_keys x D each). Per query block: c Q^T and
  // dout^T (D x BM), q and dout rows widened (BM x D), the dq accumulator
  // (BM x D), p, dp and dropped-p tiles (BN x BM), lse shift (two parts),
  // delta, keys; with own delta the B accumulator (BM x D) and C (BM).
  const bool own_delta = p.own_delta_dq;
  const bool cap = pb.mods.softcap > 0;
  std::vector<A> buf(static_cast<size_t>(4 * chunk_keys * D + 2 * D * BM + 4 * BM * D +
                                         5 * BN * BM + 4 * BM + BN));
  std::vector<double> c_buf(static_cast<size_t>(BM + BN + BM));
  A* kw = buf.data();
  A* vw = kw + chunk_keys * D;
  A* dk_acc = vw + chunk_keys * D;
  A* dv_acc = dk_acc + chunk_keys * D;
  A* qt = dv_acc + chunk_keys * D;
  A* dot = qt + D * BM;
  A* qw = dot + D * BM;
  A* dow = qw + BM * D;
  A* dq_acc = dow + BM * D;
  A* pt = dq_acc + BM * D;
  A* dpt = pt + BN * BM;
  A* pdt = dpt + BN * BM;
  A* shift = pdt + BN * BM;
  A* shift_lo = shift + BM;
  A* dlt = shift_lo + BM;
  A* b_acc = dlt + BM;            // B_i = sum_j p_ij k_j (own delta)
  A* cap_t = b_acc + BM * D;      // softcap: tanh, then the factor 1 - tanh^2 (BN x BM)
  A* pf = cap_t + BN * BM;        // softcap and own delta: p (1 - tanh^2)
  A* diag_bias = pf + BN * BM;    // the relative bias along a tile's diagonals
  double* c_sum = c_buf.data();   // C_i = sum_j p_ij dp_ij (own delta)
  double* diag_sums = c_sum + BM; // a tile's ds summed per diagonal (relative bias)
  std::vector<uint32_t> keys(static_cast<size_t>(2 * BM));
  uint32_t* ka = keys.data();
  uint32_t* kb = ka + BM;

  for (int64_t item; queue.pop(item);) {
    const int64_t chunk = item % sp.chunks;
    const int64_t hk = (item / sp.chunks) % pb.Hkv;
    const int64_t b = item / (sp.chunks * pb.Hkv);
    const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b];
    const int64_t diag = kv_len - q_len;
    const int64_t j_lo = std::min(pb.Lk, chunk * chunk_keys);
    const int64_t j_end = std::min(pb.Lk, j_lo + chunk_keys);  // the chunk's keys
    const int64_t j_hi = std::clamp<int64_t>(kv_len, j_lo, j_end);  // its valid keys
    const int64_t nkeys = j_hi - j_lo;

    T* dkb = p.dk + pb.k_offset(p.dks, b) + hk * p.dks.h;
    T* dvb = p.dv + pb.k_offset(p.dvs, b) + hk * p.dvs.h;
    if (!pb.packed()) {  // the padded keys' gradients are 0
      zero_rows(dkb, p.dks.l, j_hi, j_end, D);
      zero_rows(dvb, p.dvs.l, j_hi, j_end, D);
    }
    if (nkeys == 0 && sp.chunks > 1) continue;  // partial dq stays 0

    int64_t kld = 0, vld = 0;
    const A* kr = tiles::rows_operand(p.k + pb.k_offset(p.ks, b) + hk * p.ks.h + j_lo * p.ks.l,
                                      p.ks.l, nkeys, D, kw, kld);
    const A* vr = tiles::rows_operand(p.v + pb.k_offset(p.vs, b) + hk * p.vs.h + j_lo * p.vs.l,
                                      p.vs.l, nkeys, D, vw, vld);
    std::fill(dk_acc, dk_acc + nkeys * D, A(0));
    std::fill(dv_acc, dv_acc + nkeys * D, A(0));

    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      const int64_t row0 = (b * pb.Hq + h) * pb.Lq;  // of delta, dbias, dropout
      const int64_t lse0 = pb.lse_row(b, h);          // of lse, dlse
      const T* qbase = p.q + pb.q_offset(p.qs, b) + h * p.qs.h;
      const T* dobase = p.dout + pb.q_offset(p.dos, b) + h * p.dos.h;
      T* dqb = p.dq + pb.q_offset(p.dqs, b) + h * p.dqs.h;
      if (sp.chunks == 1 && !pb.packed()) zero_rows(dqb, p.dqs.l, q_len, pb.Lq, D);

      for (int64_t i0 = 0; i0 < q_len; i0 += BM) {
        const int64_t rows = std::min(BM, q_len - i0);
        const int64_t cols = tile_columns<VB, A>(rows);
        // Keys of the chunk that some row of the block may attend.
        const KeyRange keys(i0, rows, kv_len, diag, pb.causal, pb.mods, j_lo, j_hi);
        const int64_t kstart = keys.lo, kend = keys.hi;
        if (kend == kstart && sp.chunks > 1) continue;

        std::fill(dq_acc, dq_acc + rows * D, A(0));
        if (own_delta) {
          std::fill(b_acc, b_acc + rows * D, A(0));
          std::fill(c_sum, c_sum + rows, 0.0);
        }
        if (kend > kstart) {
          tiles::load_transposed(qt, BM, qbase + i0 * p.qs.l, p.qs.l, rows, cols, D, scale);
          tiles::load_transposed(dot, BM, dobase + i0 * p.dos.l, p.dos.l, rows, cols, D, A(1));
          int64_t qld = 0, dold = 0;
          const A* qr = tiles::rows_operand(qbase + i0 * p.qs.l, p.qs.l, rows, D, qw, qld);
          const A* dor = tiles::rows_operand(dobase + i0 * p.dos.l, p.dos.l, rows, D, dow, dold);
          // p = e^((s - lse_hi) - lse_lo), lse = lse_hi + lse_lo split from
          // the forward's float64 lse: s - lse_hi is exact where p matters
          // (s near lse), so p carries no rounding of lse at its magnitude
          // (which, with a large additive bias such as ALiBi, would add a
          // relative error of half an ulp of |lse| to every gradient of the
          // row). An empty row (lse = -inf) shifts by +inf: p = 0. Padding
          // columns beyond the block's rows get p = 0 and delta 0.
          for (int64_t c = 0; c < cols; ++c) {
            const double lse = c < rows ? p.lse[lse0 + i0 + c] : kNegInf<double>;
            shift[c] = lse == kNegInf<double> ? kInf : static_cast<A>(lse);
            shift_lo[c] = lse == kNegInf<double> ? A(0)
                                                 : static_cast<A>(lse - static_cast<double>(shift[c]));
            dlt[c] = c < rows ? sp.delta[row0 + i0 + c] : A(0);
          }
          if (pb.drop.on) tiles::dropout_keys(pb.drop.seed, row0 + i0, rows, ka, kb);

          double* drel = sp.drel_part == nullptr ? nullptr
                         : sp.drel_part + ((chunk * pb.B + b) * pb.Hq + h) *
                                              (2 * pb.mods.rel_radius + 1);
          const int64_t rel_off = pb.mods.rel_per_row ? diag : pb.Lk - pb.Lq;
          for (int64_t j0 = kstart; j0 < kend; j0 += BN) {
            const int64_t nb = std::min(BN, kend - j0);
            const A* kj = kr + (j0 - j_lo) * kld;
            const A* vj = vr + (j0 - j_lo) * vld;
            tiles::gemm_acc<VB>(nb, cols, D, kj, kld, 1, qt, BM, pt, BM, /*overwrite=*/true);
            score_path(pt, cap ? cap_t : nullptr, diag_bias, BM, nb, cols, rows, pb.mask,
                       pb.causal, pb.mods, pb.Hq, pb.Lq, pb.Lk, b, h, i0, j0, diag,
                       keys.partial(j0, nb));
            tiles::col_exp(pt, BM, nb, cols, shift, shift_lo);
            if (cap) softcap_factor(cap_t, BM, nb, cols);  // tanh -> 1 - tanh^2
            tiles::gemm_acc<VB>(nb, cols, D, vj, vld, 1, dot, BM, dpt, BM, /*overwrite=*/true);
            const A* pv = pt;  // the probabilities that multiplied v
            if (pb.drop.on) {
              const uint32_t col0 = static_cast<uint32_t>(j0);
              tiles::col_dropout(dpt, dpt, BM, nb, rows, ka, kb, col0, pb.drop.thresh, drop_scale);
              tiles::col_dropout(pt, pdt, BM, nb, rows, ka, kb, col0, pb.drop.thresh, drop_scale);
              pv = pdt;
            }
            if (own_delta) {
              tiles::col_dot_sum(pt, dpt, BM, nb, rows, c_sum);                   // C += p dp
              const A* pk = pt;  // p, or p (1 - tanh^2) under a softcap
              if (cap) {
                tiles::col_product(pt, cap_t, pf, BM, nb, cols);
                pk = pf;
              }
              tiles::gemm_acc<VB>(rows, D, nb, pk, 1, BM, kj, kld, b_acc, D);      // B += p k
            }
            A* dkj = dk_acc + (j0 - j_lo) * D;
            A* dvj = dv_acc + (j0 - j_lo) * D;
            tiles::gemm_acc<VB>(nb, D, rows, pv, BM, 1, dor, dold, dvj, D);  // dv += p^T dout
            tiles::col_scores_grad(pt, dpt, BM, nb, cols, dlt);              // dpt = ds^T
            // The gradient of the additive terms is ds itself; the product
            // with q and k also passes the softcap's tanh: ds (1 - tanh^2).
            if (p.dbias != nullptr) {
              A* dbias = p.dbias + (row0 + i0) * pb.Lk + j0;
              for (int64_t j = 0; j < nb; ++j)
                for (int64_t c = 0; c < rows; ++c) dbias[c * pb.Lk + j] = dpt[j * BM + c];
            }
            if (drel != nullptr)
              add_by_diagonal(dpt, BM, nb, rows, drel, j0 - i0 - rel_off + pb.mods.rel_radius,
                              diag_sums);
            if (cap) tiles::col_product(dpt, cap_t, dpt, BM, nb, cols);
            tiles::gemm_acc<VB>(nb, D, rows, dpt, BM, 1, qr, qld, dkj, D);   // dk += ds^T q
            tiles::gemm_acc<VB>(rows, D, nb, dpt, 1, BM, kj, kld, dq_acc, D);  // dq += ds k
          }
        }
        if (sp.chunks == 1) {
          if (own_delta) {
            own_delta_correction(dq_acc, b_acc, dlt, p.dlse ? p.dlse + lse0 + i0 : nullptr,
                                 c_sum, rows, D);
          }
          store_rows(dqb, p.dqs.l, i0, rows, D, dq_acc, scale);
        } else {
          const int64_t row = (chunk * pb.B * pb.Hq + b * pb.Hq + h) * pb.Lq + i0;
          sp.stored[((chunk * pb.B + b) * pb.Hq + h) * n_qblocks + i0 / BM] = 1;
          std::copy(dq_acc, dq_acc + rows * D, sp.dq_part + row * D);
          if (own_delta) {
            std::copy(b_acc, b_acc + rows * D, sp.b_part + row * D);
            std::copy(c_sum, c_sum + rows, sp.c_part + row);
          }
        }
      }
    }
    store_rows(dkb, p.dks.l, j_lo, nkeys, D, dk_acc, scale);
    store_rows(dvb, p.dvs.l, j_lo, nkeys, D, dv_acc, A(1));
  }
}

template <typename T>
void bwd_default(const BwdParams<T>& p, const BwdPlan<acc_t<T>>& sp, WorkQueue& queue) {
  bwd_items<T, vector_bytes(Isa::kDefault)>(p, sp, queue);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void bwd_avx2(const BwdParams<T>& p, const BwdPlan<acc_t<T>>& sp,
                                   WorkQueue& queue) {
  bwd_items<T, vector_bytes(Isa::kAvx2)>(p, sp, queue);
}
template <typename T>
FASTATTN_TARGET_AVX512 void bwd_avx512(const BwdParams<T>& p, const BwdPlan<acc_t<T>>& sp,
                                       WorkQueue& queue) {
  bwd_items<T, vector_bytes(Isa::kAvx512)>(p, sp, queue);
}
#endif

// delta_i = dout_i . out_i - dlse_i of the valid rows (padded rows take no
// part: 0), summed in double: delta stands in for sum_j p_ij dp_ij, from
// which ds_ij = p_ij (dp_ij - delta_i) subtracts dp_ij; where attention is
// concentrated (ALiBi, causal) the two nearly cancel, and a float sum's
// rounding of delta would become most of ds. Only the valid rows are read.
template <typename T>
std::vector<acc_t<T>> row_deltas(const BwdParams<T>& p) {
  using A = acc_t<T>;
  const Problem& pb = p.pb;
  std::vector<A> delta(static_cast<size_t>(pb.B * pb.Hq * pb.Lq), A(0));
  at::parallel_for(0, pb.B * pb.Hq, 1, [&](int64_t bh0, int64_t bh1) {
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / pb.Hq, h = bh % pb.Hq;
      for (int64_t i = 0; i < pb.q_len[b]; ++i) {
        const T* __restrict dor = p.dout + pb.q_offset(p.dos, b) + h * p.dos.h + i * p.dos.l;
        const T* __restrict orow = p.out + pb.q_offset(p.os, b) + h * p.os.h + i * p.os.l;
        double sum = 0;
        for (int64_t d = 0; d < pb.D; ++d)
          sum += static_cast<double>(dor[d]) * static_cast<double>(orow[d]);
        if (p.dlse != nullptr) sum -= static_cast<double>(p.dlse[pb.lse_row(b, h) + i]);
        delta[bh * pb.Lq + i] = static_cast<A>(sum);
      }
    }
  });
  return delta;
}

// Cost of each item: the (query, key) pairs of its chunk that take part,
// over the group's query heads (with causal or a window, each key's
// queries within them), plus clearing its padded rows.
template <typename A>
std::vector<int64_t> bwd_costs(const Problem& pb, const BwdPlan<A>& sp) {
  const int64_t chunk_keys = sp.blocks * kBlockN, group = pb.Hq / pb.Hkv;
  std::vector<int64_t> cost(static_cast<size_t>(pb.B * pb.Hkv * sp.chunks));
  for (int64_t item = 0; item < static_cast<int64_t>(cost.size()); ++item) {
    const int64_t chunk = item % sp.chunks, b = item / (sp.chunks * pb.Hkv);
    const int64_t q_len = pb.q_len[b], kv_len = pb.kv_len[b], diag = kv_len - q_len;
    const int64_t j_lo = std::min(pb.Lk, chunk * chunk_keys);
    const int64_t j_hi = std::clamp<int64_t>(kv_len, j_lo, std::min(pb.Lk, j_lo + chunk_keys));
    int64_t pairs = 0;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      // the queries i that key j is visible to: causal i >= j - diag, and
      // the window j - diag - right <= i <= j - diag + left
      int64_t i_lo = 0, i_hi = q_len;
      if (pb.causal) i_lo = std::max<int64_t>(i_lo, j - diag);
      if (pb.mods.win_right >= 0) i_lo = std::max<int64_t>(i_lo, j - diag - pb.mods.win_right);
      if (pb.mods.win_left >= 0) i_hi = std::min<int64_t>(i_hi, j - diag + pb.mods.win_left + 1);
      pairs += std::max<int64_t>(0, i_hi - i_lo);
    }
    cost[item] = group * pairs + chunk_keys;
  }
  return cost;
}

}  // namespace

template <typename T>
void attention_bwd_kernel(const BwdParams<T>& p) {
  using A = acc_t<T>;
  const auto range = FASTATTN_PICK_VARIANT(bwd, T);
  const Problem& pb = p.pb;
  const int64_t heads = pb.B * pb.Hkv;
  if (heads == 0) return;
  const int64_t n_blocks = std::max<int64_t>(1, (pb.Lk + kBlockN - 1) / kBlockN);
  BwdPlan<A> sp;
  const std::vector<A> delta = row_deltas(p);
  sp.delta = delta.data();
  sp.chunks = std::min(n_blocks, (kMinBwdItems + heads - 1) / heads);
  sp.blocks = (n_blocks + sp.chunks - 1) / sp.chunks;
  sp.chunks = (n_blocks + sp.blocks - 1) / sp.blocks;
  // Partial buffers left uninitialized (BwdPlan::stored says what is valid).
  std::unique_ptr<A[]> dq_part, b_part;
  std::unique_ptr<double[]> c_part;
  std::vector<uint8_t> stored;
  const int64_t rows = pb.B * pb.Hq * pb.Lq;
  const int64_t n_qblocks = (pb.Lq + kBlockM - 1) / kBlockM;
  std::vector<double> drel_part;
  const int64_t rel_width = 2 * pb.mods.rel_radius + 1;
  if (p.drel != nullptr) {
    drel_part.assign(static_cast<size_t>(sp.chunks * pb.B * pb.Hq * rel_width), 0.0);
    sp.drel_part = drel_part.data();
  }
  if (sp.chunks > 1) {
    const size_t n = static_cast<size_t>(sp.chunks * rows * pb.D);
    dq_part.reset(new A[n]);
    sp.dq_part = dq_part.get();
    stored.assign(static_cast<size_t>(sp.chunks * pb.B * pb.Hq * n_qblocks), 0);
    sp.stored = stored.data();
    if (p.own_delta_dq) {
      b_part.reset(new A[n]);
      c_part.reset(new double[static_cast<size_t>(sp.chunks * rows)]);
      sp.b_part = b_part.get();
      sp.c_part = c_part.get();
    }
  }
  WorkQueue queue(bwd_costs(pb, sp));
  run_workers(queue, [&] { range(p, sp, queue); });
  if (p.drel != nullptr) {
    // drel[h, r] = sum over chunks, then batch rows, in that fixed order
    at::parallel_for(0, pb.Hq, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        double* out = p.drel + h * rel_width;
        std::fill(out, out + rel_width, 0.0);
        for (int64_t c = 0; c < sp.chunks; ++c)
          for (int64_t b = 0; b < pb.B; ++b) {
            const double* part = sp.drel_part + ((c * pb.B + b) * pb.Hq + h) * rel_width;
            for (int64_t r = 0; r < rel_width; ++r) out[r] += part[r];
          }
      }
    });
  }
  if (sp.chunks == 1) return;

  // dq = scale * (sum of the chunks' stored partials, in chunk order), per
  // row (a chunk that stored none adds nothing: its keys are beyond the
  // row's reach); with own delta, plus (delta - sum of C) * (sum of B).
  // Padded rows get 0; packed sequences have none.
  const int64_t D = pb.D, stride = rows * D;
  const A scale = static_cast<A>(pb.scale);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<A> sum(static_cast<size_t>(D)), b_sum(static_cast<size_t>(D));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % pb.Lq, h = (r / pb.Lq) % pb.Hq, b = r / (pb.Lq * pb.Hq);
      if (pb.packed() && i >= pb.q_len[b]) continue;  // no such row
      T* o = p.dq + pb.q_offset(p.dqs, b) + h * p.dqs.h + i * p.dqs.l;
      if (i >= pb.q_len[b]) {
        std::fill(o, o + D, T(0));
        continue;
      }
      std::fill(sum.begin(), sum.end(), A(0));
      std::fill(b_sum.begin(), b_sum.end(), A(0));
      double c_total = 0.0;
      bool any = false;
      for (int64_t c = 0; c < sp.chunks; ++c) {
        if (!sp.stored[((c * pb.B + b) * pb.Hq + h) * n_qblocks + i / kBlockM]) continue;
        const A* part = sp.dq_part + c * stride + r * D;
        for (int64_t d = 0; d < D; ++d) sum[d] = any ? sum[d] + part[d] : part[d];
        if (p.own_delta_dq) {
          const A* bp = sp.b_part + c * stride + r * D;
          for (int64_t d = 0; d < D; ++d) b_sum[d] = any ? b_sum[d] + bp[d] : bp[d];
          c_total = any ? c_total + sp.c_part[c * rows + r] : sp.c_part[c * rows + r];
        }
        any = true;
      }
      if (p.own_delta_dq) {
        own_delta_correction(sum.data(), b_sum.data(), sp.delta + r,
                             p.dlse ? p.dlse + pb.lse_row(b, h) + i : nullptr, &c_total, 1, D);
      }
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(sum[d] * scale);
    }
  });
}

template void attention_bwd_kernel<float>(const BwdParams<float>&);
template void attention_bwd_kernel<double>(const BwdParams<double>&);
template void attention_bwd_kernel<at::Half>(const BwdParams<at::Half>&);
template void attention_bwd_kernel<at::BFloat16>(const BwdParams<at::BFloat16>&);

}  // namespace cpu
}  // namespace fastattn
