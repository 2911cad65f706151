// The score path of the C++ CPU attention kernels: everything between the
// product s = (scale q) . k and the softmax, in one place for the forward
// and the backward (attention_fwd.cpp, attention_bwd.cpp).
//
// In the order of API.md ("Attention variants"), on a key-major tile t
// (attention_tiles.h: t[j * ld + c] is query i0 + c against key j0 + j):
//   1. softcap > 0:    s = softcap * tanh(s / softcap)
//   2. additive terms: + float attn_mask, - slope |i + off - j| (ALiBi),
//                      + table[bucket(r), h] (T5's relative bias, r the
//                        relative position j - i - rel_off)
//   3. restrictions:   bool attn_mask, causal (j <= i + off), the window
//                      (i + off - left <= j <= i + off + right)
// off = kv_len[b] - q_len[b] (the alignment of causal, window and ALiBi);
// rel_off = Lk - Lq for padded batches (T5's positions of the padded
// shapes), off for packed sequences.
//
// Which keys a block of query rows visits is decided once per block
// (KeyRange): keys no row may attend (beyond the lengths, right of the
// causal diagonal, outside the window) are never loaded; tiles every row
// may attend entirely skip the per-element restrictions (`partial`); only
// tiles crossing a bound apply them. So a window's cost grows with the
// window, not with the sequence. The variants a call uses are fixed for
// the call; each step below is skipped as a whole when off.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/attention_tiles.h"

namespace fastattn {
namespace cpu {

// The variants of one call (Problem::mods). Off: softcap 0, pointers null,
// window bounds -1.
struct ScoreMods {
  double softcap = 0;
  const float* alibi = nullptr;        // slopes, slope of (b, h) = alibi[b * alibi_sb + h]
  int64_t alibi_sb = 0;                // 0 when one row of slopes serves every batch row
  const void* rel_table = nullptr;     // (num_buckets, Hq), element (k, h) at k * Hq + h
  tiles::MaskView::Kind rel_kind = tiles::MaskView::kNone;  // its dtype
  const int32_t* rel_buckets = nullptr;  // bucket of relative position r at r + rel_radius
  int64_t rel_radius = 0;
  bool rel_per_row = false;            // packed sequences: rel_off = off of the row
  int64_t win_left = -1, win_right = -1;

  bool any_additive() const { return alibi != nullptr || rel_table != nullptr; }
};

// Keys [lo, hi) that some of the query rows [i0, i0 + rows) of a batch row
// may attend (kv_len keys, causal, window), and the bounds that make a key
// tile need per-element restrictions.
struct KeyRange {
  int64_t lo = 0, hi = 0;
  int64_t full_lo = 0, full_hi = 0;  // keys [full_lo, full_hi) every row may attend

  KeyRange(int64_t i0, int64_t rows, int64_t kv_len, int64_t off, bool causal,
           const ScoreMods& mods, int64_t k_first = 0, int64_t k_last = INT64_MAX) {
    const int64_t first = i0 + off, last = i0 + rows - 1 + off;  // the rows' diagonals
    lo = k_first;
    hi = std::min(kv_len, k_last);
    full_lo = lo;
    full_hi = hi;
    if (causal) {
      hi = std::min(hi, last + 1);
      full_hi = std::min(full_hi, first + 1);
    }
    if (mods.win_right >= 0) {
      hi = std::min(hi, last + mods.win_right + 1);
      full_hi = std::min(full_hi, first + mods.win_right + 1);
    }
    if (mods.win_left >= 0) {
      lo = std::max(lo, first - mods.win_left);
      full_lo = std::max(full_lo, last - mods.win_left);
    }
    if (rows <= 0 || hi < lo) hi = lo;
  }

  // Whether the key tile [j0, j0 + n) needs per-element restrictions.
  bool partial(int64_t j0, int64_t n) const { return j0 < full_lo || j0 + n > full_hi; }
};

// tanh for the softcap, vectorizable: the rational function
//     tanh x ~ x P(x^2) / Q(x^2),  P, Q of degree 4, P(0) = Q(0) = 1,
// fitted for the least maximum relative error on [0, 9] (the fit and its
// error: dev/fit_tanh_rational.py; 2e-8 in exact arithmetic, at most 6
// float32 ulp, 3.6e-7 relative, as evaluated here by Horner's rule). tanh
// is odd and so is x P / Q, so no sign handling is needed; |x| is clamped
// to 9, where tanh x = 1 - 3e-8 rounds to within an ulp of 1 (infinities
// give +-1, NaN stays NaN: both clamps pass it). 9 multiply-adds and one
// division: about half the time of the tanh from expm1 it replaced (the
// softcap's cost over plain attention is mostly this function).
FASTATTN_INLINE float tanh_fast(float x) {
  const float clamp = 9.0f;
  float xc = x > clamp ? clamp : x;
  xc = xc < -clamp ? -clamp : xc;
  const float u = xc * xc;
  float p = 1.33548097e-08f;
  p = p * u + 2.06092009e-05f;
  p = p * u + 3.49559565e-03f;
  p = p * u + 1.33810326e-01f;
  p = p * u + 1.0f;
  float q = 7.77662251e-07f;
  q = q * u + 3.28564696e-04f;
  q = q * u + 2.58770119e-02f;
  q = q * u + 4.67143476e-01f;
  q = q * u + 1.0f;
  return xc * p / q;
}
FASTATTN_INLINE float tanh_acc(float x) { return tanh_fast(x); }
FASTATTN_INLINE double tanh_acc(double x) { return std::tanh(x); }

// t = c tanh(t / c) on the tile's ncols x nkeys scores; `tanh_out` (if not
// null, same layout) keeps tanh(t / c) for the backward's factor 1 - tanh^2.
template <typename A>
FASTATTN_INLINE void apply_softcap(A* t, A* tanh_out, int64_t ld, int64_t nkeys, int64_t ncols,
                                   A cap) {
  const A inv = A(1) / cap;
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    if (tanh_out != nullptr) {
      A* __restrict tr = tanh_out + j * ld;
      for (int64_t c = 0; c < ncols; ++c) {
        tr[c] = tanh_acc(row[c] * inv);
        row[c] = cap * tr[c];
      }
    } else {
      for (int64_t c = 0; c < ncols; ++c) row[c] = cap * tanh_acc(row[c] * inv);
    }
  }
}

// The softcap's factor d(capped)/d(raw) = 1 - tanh^2, in place of the kept tanh.
template <typename A>
FASTATTN_INLINE void softcap_factor(A* t, int64_t ld, int64_t nkeys, int64_t ncols) {
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    for (int64_t c = 0; c < ncols; ++c) row[c] = A(1) - row[c] * row[c];
  }
}

// ALiBi: t[j, c] -= slope |i0 + c + off - (j0 + j)|.
template <typename A>
FASTATTN_INLINE void add_alibi(A* t, int64_t ld, int64_t nkeys, int64_t ncols, A slope,
                               int64_t i0, int64_t j0, int64_t off) {
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    const A base = static_cast<A>(i0 + off - (j0 + j));  // distance for c = 0, minus c
    for (int64_t c = 0; c < ncols; ++c) {
      const A d = base + static_cast<A>(c);
      row[c] -= slope * (d < 0 ? -d : d);
    }
  }
}

template <typename A>
FASTATTN_INLINE A table_value(const ScoreMods& mods, int64_t index) {
  switch (mods.rel_kind) {
    case tiles::MaskView::kFloat: return static_cast<A>(static_cast<const float*>(mods.rel_table)[index]);
    case tiles::MaskView::kDouble: return static_cast<A>(static_cast<const double*>(mods.rel_table)[index]);
    case tiles::MaskView::kHalf: return static_cast<A>(static_cast<const at::Half*>(mods.rel_table)[index]);
    case tiles::MaskView::kBFloat16: return static_cast<A>(static_cast<const at::BFloat16*>(mods.rel_table)[index]);
    default: return A(0);
  }
}

// Relative bias: t[j, c] += table[bucket(r), h], r = j0 + j - (i0 + c) - rel_off.
// Along a tile the bias depends on c - j only: it is looked up once per
// diagonal into `diag` (nkeys + ncols - 1 values, by increasing c - j, so
// that each row of the tile adds a contiguous run of it), then added.
template <typename A>
FASTATTN_INLINE void add_rel_bias(A* t, A* diag, int64_t ld, int64_t nkeys, int64_t ncols,
                                  const ScoreMods& mods, int64_t hq, int64_t h, int64_t i0,
                                  int64_t j0, int64_t rel_off) {
  // diag[e] for e = c - j + nkeys - 1: r = j0 - i0 - rel_off + nkeys - 1 - e
  const int64_t r_first = j0 - i0 - rel_off + nkeys - 1;
  const int64_t radius = mods.rel_radius;
  for (int64_t e = 0; e < nkeys + ncols - 1; ++e) {
    const int64_t r = std::clamp<int64_t>(r_first - e, -radius, radius);
    diag[e] = table_value<A>(mods, static_cast<int64_t>(mods.rel_buckets[r + radius]) * hq + h);
  }
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    const A* __restrict dj = diag + nkeys - 1 - j;  // dj[c]: diagonal c - j
    for (int64_t c = 0; c < ncols; ++c) row[c] += dj[c];
  }
}

// Window: scores outside i + off - left <= j <= i + off + right become -inf.
template <typename A>
FASTATTN_INLINE void apply_window(A* t, int64_t ld, int64_t nkeys, int64_t ncols,
                                  const ScoreMods& mods, int64_t i0, int64_t j0, int64_t off) {
  for (int64_t j = 0; j < nkeys; ++j) {
    A* __restrict row = t + j * ld;
    // query c sees key j0 + j iff  j0 + j - off - right <= i0 + c <= j0 + j - off + left
    int64_t c_lo = 0, c_hi = ncols;
    if (mods.win_right >= 0) c_lo = std::max<int64_t>(0, j0 + j - off - mods.win_right - i0);
    if (mods.win_left >= 0) c_hi = std::min<int64_t>(ncols, j0 + j - off + mods.win_left - i0 + 1);
    if (c_hi < c_lo) c_hi = c_lo;
    std::fill(row, row + std::min<int64_t>(c_lo, ncols), tiles::kNegInf<A>);
    if (c_hi < ncols) std::fill(row + c_hi, row + ncols, tiles::kNegInf<A>);
  }
}

// out[base + j - c] += t[j, c] for j < nkeys, c < ncols: a tile's scores
// summed per diagonal (the relative bias table's gradient, by relative
// position), in double. The tile's sums gather first in `sums` (nkeys +
// ncols - 1 doubles, by increasing c - j: each row adds to a contiguous
// run of them), then join out in one pass.
template <typename A>
FASTATTN_INLINE void add_by_diagonal(const A* t, int64_t ld, int64_t nkeys, int64_t ncols,
                                     double* out, int64_t base, double* sums) {
  const int64_t n = nkeys + ncols - 1;
  std::fill(sums, sums + n, 0.0);
  for (int64_t j = 0; j < nkeys; ++j) {
    const A* __restrict row = t + j * ld;
    double* __restrict sj = sums + nkeys - 1 - j;  // sj[c]: diagonal c - j
    for (int64_t c = 0; c < ncols; ++c) sj[c] += static_cast<double>(row[c]);
  }
  // sums[e] is diagonal d = e - (nkeys - 1) = c - j, which goes to out[base - d]
  double* __restrict o = out + base + nkeys - 1;
  for (int64_t e = 0; e < n; ++e) o[-e] += sums[e];
}

// The whole score path on one tile of queries [i0, i0 + ncols) (`rows` of
// them real) and keys [j0, j0 + nkeys) of head (b, h). `partial`: the tile
// crosses a causal or window bound (KeyRange::partial). tanh_out and diag:
// scratch for the softcap's tanh (null: not kept) and the relative bias.
template <typename A>
FASTATTN_INLINE void score_path(A* t, A* tanh_out, A* diag, int64_t ld, int64_t nkeys,
                                int64_t ncols, int64_t rows, const tiles::MaskView& mask,
                                bool causal, const ScoreMods& mods, int64_t hq, int64_t lq,
                                int64_t lk, int64_t b, int64_t h, int64_t i0, int64_t j0,
                                int64_t off, bool partial) {
  if (mods.softcap > 0) apply_softcap(t, tanh_out, ld, nkeys, ncols, static_cast<A>(mods.softcap));
  tiles::apply_mask(t, ld, nkeys, rows, mask, b, h, i0, j0);
  if (mods.alibi != nullptr)
    add_alibi(t, ld, nkeys, ncols, static_cast<A>(mods.alibi[b * mods.alibi_sb + h]), i0, j0, off);
  if (mods.rel_table != nullptr)
    add_rel_bias(t, diag, ld, nkeys, ncols, mods, hq, h, i0, j0,
                 mods.rel_per_row ? off : lk - lq);
  if (!partial) return;
  if (causal && tiles::crosses_diagonal(i0, j0, nkeys, off))
    tiles::apply_causal(t, ld, nkeys, ncols, i0, j0, off);
  if (mods.win_left >= 0 || mods.win_right >= 0)
    apply_window(t, ld, nkeys, ncols, mods, i0, j0, off);
}

}  // namespace cpu
}  // namespace fastattn
