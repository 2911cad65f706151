// C++ CPU kernels of layer norm, RMS norm and fused add & norm:
// fastattn::norm_fwd_native / norm_bwd_native for CPU tensors.
//
// Contract and math: fastattn/ops/norm.py. Per row of N columns:
//   h    = dropout(x) + residual, rounded to x's dtype (the norm reads h as stored)
//   mean = sum(h) / N                         (0 for RMS norm)
//   rstd = 1 / sqrt(sum((h - mean)^2) / N + eps)
//   y    = (h - mean) * rstd * weight + bias
// Backward, with xhat = (h - mean) * rstd and g = dy * weight:
//   dh = rstd * (g - xhat * mean(g * xhat) - mean(g)) + dh_out  (RMS: no mean(g))
//   dx = dh * keep / (1 - p),  dresidual = dh,
//   dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy).
//
// Work is split over rows with at::parallel_for. Each row is first widened
// into a scratch buffer of the accumulation type (float; double for double
// inputs), so every inner loop runs over plain contiguous arrays that gcc -O3
// vectorizes. Reductions keep kLanes independent partial sums: that is what
// lets the compiler vectorize them without -ffast-math, and the lanes are
// combined in a fixed order, so results do not depend on the thread count
// (nor on the instruction set: the row loops are compiled for SSE2, AVX2 and
// AVX-512 as the attention kernels are, cpu_isa.h, and the widest one the
// CPU supports runs).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/dropout_hash.h"
#include "common/norm_args.h"
#include "cpu/cpu_isa.h"
#include "cpu/dispatch.h"

namespace fastattn {
namespace cpu {
namespace {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Independent partial sums per reduction (a multiple of any SIMD width).
constexpr int kLanes = 16;

// Rows per parallel task are chosen so that a task touches about this many
// elements: small problems stay on one thread.
constexpr int64_t kGrainElements = 1 << 15;

// Backward: rows are cut into at most this many blocks, each with its own
// dweight/dbias partial sums. The cut depends only on M, never on the number
// of threads, so dweight/dbias are bitwise reproducible on any machine.
constexpr int64_t kMaxPartialBlocks = 32;

// sum_{j < n} term(j), with kLanes partial sums combined in a fixed order.
template <typename A, typename F>
FASTATTN_INLINE A lane_sum(int64_t n, F term) {
  A part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += term(j + l);
  }
  for (int l = 0; j < n; ++j, ++l) part[l] += term(j);
  A s = 0;
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

// In-place dropout of one row: v[j] *= keep ? scale : 0. Multiplying by 0
// (rather than writing 0) propagates NaN/inf as the reference does.
template <typename A>
FASTATTN_INLINE void apply_dropout(A* __restrict v, int64_t n, dropout::RowKeys keys, uint32_t thresh,
                          A scale) {
  for (int64_t j = 0; j < n; ++j) {
    const bool kept = dropout::keep(keys, static_cast<uint32_t>(j), thresh);
    v[j] *= kept ? scale : A(0);
  }
}

// Shared by forward and backward: the seed and the constants of dropout.
template <typename A>
struct Dropout {
  bool on = false;
  uint64_t seed = 0;
  uint32_t thresh = 0;
  A scale = 1;

  Dropout(const std::optional<at::Tensor>& seed_t, double p) {
    if (p <= 0.0) return;
    on = true;
    seed = static_cast<uint64_t>(seed_t->data_ptr<int64_t>()[0]);
    thresh = dropout::threshold(p);
    scale = static_cast<A>(1.0 / (1.0 - p));
  }
};

// weight (or bias) widened to the accumulation type; `fill` where absent,
// so that one loop serves every combination of affine parameters. The
// parameters are in the data's dtype T or in float32 (norm_args.h).
template <typename T, typename A = acc_t<T>>
std::vector<A> widen_or_fill(const at::Tensor& t, int64_t n, A fill) {
  std::vector<A> out(static_cast<size_t>(n), fill);
  if (!t.defined()) return out;
  auto widen = [&](auto tag) {
    using P = decltype(tag);
    const P* p = t.data_ptr<P>();
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<A>(p[j]);
  };
  if (t.scalar_type() == at::kFloat) {
    widen(float{});
  } else {
    widen(T{});
  }
  return out;
}

// Everything the forward's row loop reads, set up once per call.
template <typename T>
struct FwdCtx {
  using A = acc_t<T>;
  int64_t n = 0;
  Dropout<A> drop;
  std::vector<A> w, b;     // weight, bias (1 and 0 where absent)
  bool has_res = false, makes_h = false, store_h = false;
  const T* x = nullptr;
  const T* res = nullptr;
  T* y = nullptr;
  T* h = nullptr;
  A* mean = nullptr;       // null for RMS norm (statistics in A: norm_args::stat_dtype)
  A* rstd = nullptr;
  int64_t x_stride = 0, r_stride = 0;
  A inv_n = 0, eps = 0;
  bool is_rms = false;

  FwdCtx(const norm_args::FwdInputs& in, const std::optional<at::Tensor>& seed_t, double eps_d,
         double dropout_p, bool rms, at::Tensor& y_t, at::Tensor& h_t, at::Tensor& mean_t,
         at::Tensor& rstd_t)
      : n(in.n), drop(seed_t, dropout_p), w(widen_or_fill<T>(in.weight, in.n, A(1))),
        b(widen_or_fill<T>(in.bias, in.n, A(0))), is_rms(rms) {
    has_res = in.residual.defined();
    // h differs from x (and must be rounded to T) only with dropout or residual.
    makes_h = has_res || drop.on;
    store_h = h_t.numel() > 0;
    x = in.x.data_ptr<T>();
    res = has_res ? in.residual.data_ptr<T>() : nullptr;
    y = y_t.data_ptr<T>();
    h = store_h ? h_t.data_ptr<T>() : nullptr;
    mean = rms ? nullptr : mean_t.data_ptr<A>();
    rstd = rstd_t.data_ptr<A>();
    x_stride = in.x.stride(0);
    r_stride = has_res ? in.residual.stride(0) : 0;
    inv_n = A(1) / static_cast<A>(n);
    eps = static_cast<A>(eps_d);
  }
};

// The row loops below carry `#pragma GCC ivdep`: their arrays are distinct
// by construction (outputs are freshly allocated, scratch rows are private),
// and without it gcc guards each vectorized loop with a run-time overlap
// check that sends the rows down the scalar path (2-3x slower, measured).

// Statistics and output of one row, h its values in the accumulation type.
template <typename T>
FASTATTN_INLINE void norm_row(const FwdCtx<T>& cx, int64_t row, const acc_t<T>* __restrict hv,
                              const acc_t<T>* __restrict wv, const acc_t<T>* __restrict bv) {
  using A = acc_t<T>;
  const int64_t n = cx.n;
  // Two passes over the row: exact mean first, then the centred variance
  // (no cancellation, unlike E[h^2] - E[h]^2).
  A mu = 0;
  if (!cx.is_rms) mu = lane_sum<A>(n, [&](int64_t j) { return hv[j]; }) * cx.inv_n;
  const A var = lane_sum<A>(n, [&](int64_t j) {
                  const A d = hv[j] - mu;
                  return d * d;
                }) * cx.inv_n;
  const A rs = A(1) / std::sqrt(var + cx.eps);
  T* __restrict yr = cx.y + row * n;
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) yr[j] = static_cast<T>((hv[j] - mu) * rs * wv[j] + bv[j]);
  if (cx.mean) cx.mean[row] = mu;
  cx.rstd[row] = rs;
}

// Forward of rows [begin, end).
template <typename T>
FASTATTN_INLINE void fwd_rows(const FwdCtx<T>& cx, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const int64_t n = cx.n;
  std::vector<A> row_buf(static_cast<size_t>(n));
  A* __restrict hv = row_buf.data();
  const A* __restrict wv = cx.w.data();
  const A* __restrict bv = cx.b.data();
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict xr = cx.x + row * cx.x_stride;
    if constexpr (std::is_same_v<T, A>) {
      if (!cx.makes_h) {  // h is x itself: read it in place, no copy
        norm_row(cx, row, xr, wv, bv);
        continue;
      }
    }
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) hv[j] = static_cast<A>(xr[j]);
    if (cx.drop.on) {
      apply_dropout(hv, n, dropout::row_keys(cx.drop.seed, row), cx.drop.thresh, cx.drop.scale);
    }
    if (cx.has_res) {
      const T* __restrict rr = cx.res + row * cx.r_stride;
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) hv[j] += static_cast<A>(rr[j]);
    }
    if (cx.makes_h) {
      // Round h to T: the statistics see h exactly as it is stored.
      if constexpr (!std::is_same_v<T, A>) {
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) hv[j] = static_cast<A>(static_cast<T>(hv[j]));
      }
      if (cx.store_h) {
        T* __restrict hr = cx.h + row * n;
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) hr[j] = static_cast<T>(hv[j]);
      }
    }
    norm_row(cx, row, static_cast<const A*>(hv), wv, bv);
  }
}

template <typename T>
void fwd_rows_default(const FwdCtx<T>& cx, int64_t begin, int64_t end) {
  fwd_rows<T>(cx, begin, end);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void fwd_rows_avx2(const FwdCtx<T>& cx, int64_t begin, int64_t end) {
  fwd_rows<T>(cx, begin, end);
}
template <typename T>
FASTATTN_TARGET_AVX512 void fwd_rows_avx512(const FwdCtx<T>& cx, int64_t begin, int64_t end) {
  fwd_rows<T>(cx, begin, end);
}
#endif

template <typename T>
void norm_fwd_impl(const norm_args::FwdInputs& in, const std::optional<at::Tensor>& seed_t,
                   double eps, double dropout_p, bool is_rms, at::Tensor& y, at::Tensor& h,
                   at::Tensor& mean, at::Tensor& rstd) {
  const FwdCtx<T> cx(in, seed_t, eps, dropout_p, is_rms, y, h, mean, rstd);
  const auto rows = FASTATTN_PICK_VARIANT(fwd_rows, T);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / in.n);
  at::parallel_for(0, in.m, grain, [&](int64_t begin, int64_t end) { rows(cx, begin, end); });
}

// Everything the backward's row loop reads and writes, set up once per call.
template <typename T>
struct BwdCtx {
  using A = acc_t<T>;
  int64_t m = 0, n = 0;
  Dropout<A> drop;
  std::vector<A> w;         // weight (1 where absent)
  bool has_dh_out = false, store_dres = false, partials = false, is_rms = false;
  const T* h = nullptr;
  const T* dy = nullptr;
  const T* dh_out = nullptr;
  const A* mean = nullptr;  // null for RMS norm
  const A* rstd = nullptr;
  T* dx = nullptr;
  T* dres = nullptr;
  int64_t h_stride = 0, dy_stride = 0, dho_stride = 0;
  A inv_n = 0;
  int64_t blocks = 0;       // row blocks, each with its dweight/dbias partials
  A* dw_part = nullptr;     // (blocks, n)
  A* db_part = nullptr;     // (blocks, n)

  BwdCtx(const norm_args::BwdInputs& in, const std::optional<at::Tensor>& seed_t,
         double dropout_p, bool rms, at::Tensor& dx_t, at::Tensor& dres_t)
      : m(in.m), n(in.n), drop(seed_t, dropout_p), w(widen_or_fill<T>(in.weight, in.n, A(1))),
        is_rms(rms) {
    has_dh_out = in.dh_out.defined();
    store_dres = dres_t.numel() > 0;
    h = in.h.data_ptr<T>();
    dy = in.dy.data_ptr<T>();
    dh_out = has_dh_out ? in.dh_out.data_ptr<T>() : nullptr;
    mean = rms ? nullptr : in.mean.data_ptr<A>();
    rstd = in.rstd.data_ptr<A>();
    dx = dx_t.data_ptr<T>();
    dres = store_dres ? dres_t.data_ptr<T>() : nullptr;
    h_stride = in.h.stride(0);
    dy_stride = in.dy.stride(0);
    dho_stride = has_dh_out ? in.dh_out.stride(0) : 0;
    inv_n = A(1) / static_cast<A>(n);
  }
};

// Backward of row blocks [blk_begin, blk_end); block k covers rows
// [k*M/blocks, (k+1)*M/blocks).
template <typename T>
FASTATTN_INLINE void bwd_blocks(const BwdCtx<T>& cx, int64_t blk_begin, int64_t blk_end) {
  using A = acc_t<T>;
  const int64_t m = cx.m, n = cx.n;
  const A* __restrict wv = cx.w.data();
  std::vector<A> g_row(static_cast<size_t>(n));
  A* __restrict g = g_row.data();
  for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
    A* __restrict dwp = cx.partials ? cx.dw_part + blk * n : nullptr;
    A* __restrict dbp = cx.partials ? cx.db_part + blk * n : nullptr;
    const int64_t row_end = (blk + 1) * m / cx.blocks;
    for (int64_t row = blk * m / cx.blocks; row < row_end; ++row) {
      const T* __restrict hr = cx.h + row * cx.h_stride;
      const T* __restrict dyr = cx.dy + row * cx.dy_stride;
      const A mu = cx.mean ? cx.mean[row] : A(0);
      const A rs = cx.rstd[row];
      // Two passes over the row's h and dy, nothing materialized: the
      // row means of g * xhat and g (g = dy * weight, xhat = (h - mean) rstd),
      // then dh and the weight/bias partial sums.
      const A c_gx = lane_sum<A>(n, [&](int64_t j) {
                       return static_cast<A>(dyr[j]) * wv[j] * ((static_cast<A>(hr[j]) - mu) * rs);
                     }) * cx.inv_n;
      const A c_g = cx.is_rms ? A(0)
                              : lane_sum<A>(n, [&](int64_t j) {
                                  return static_cast<A>(dyr[j]) * wv[j];
                                }) * cx.inv_n;
      T* __restrict dxr = cx.dx + row * n;
      // dh = rstd (g - xhat mean(g xhat) - mean(g)) into the scratch row,
      // then the optional steps, each its own vectorized loop.
      if (cx.partials) {
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) {
          const A dy = static_cast<A>(dyr[j]);
          const A xhat = (static_cast<A>(hr[j]) - mu) * rs;
          g[j] = rs * (dy * wv[j] - xhat * c_gx - c_g);
          dwp[j] += dy * xhat;
          dbp[j] += dy;
        }
      } else {
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) {
          const A xhat = (static_cast<A>(hr[j]) - mu) * rs;
          g[j] = rs * (static_cast<A>(dyr[j]) * wv[j] - xhat * c_gx - c_g);
        }
      }
      if (cx.has_dh_out) {
        const T* __restrict dhor = cx.dh_out + row * cx.dho_stride;
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) g[j] += static_cast<A>(dhor[j]);
      }
      if (cx.store_dres) {
        T* __restrict dresr = cx.dres + row * n;
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) dresr[j] = static_cast<T>(g[j]);
      }
      if (cx.drop.on) {
        apply_dropout(g, n, dropout::row_keys(cx.drop.seed, row), cx.drop.thresh, cx.drop.scale);
      }
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) dxr[j] = static_cast<T>(g[j]);
    }
  }
}

template <typename T>
void bwd_blocks_default(const BwdCtx<T>& cx, int64_t begin, int64_t end) {
  bwd_blocks<T>(cx, begin, end);
}

#if FASTATTN_X86_VARIANTS
template <typename T>
FASTATTN_TARGET_AVX2 void bwd_blocks_avx2(const BwdCtx<T>& cx, int64_t begin, int64_t end) {
  bwd_blocks<T>(cx, begin, end);
}
template <typename T>
FASTATTN_TARGET_AVX512 void bwd_blocks_avx512(const BwdCtx<T>& cx, int64_t begin, int64_t end) {
  bwd_blocks<T>(cx, begin, end);
}
#endif

template <typename T>
void norm_bwd_impl(const norm_args::BwdInputs& in, const std::optional<at::Tensor>& seed_t,
                   double dropout_p, bool is_rms, at::Tensor& dx, at::Tensor& dres,
                   at::Tensor& dw, at::Tensor& db) {
  using A = acc_t<T>;
  const int64_t m = in.m, n = in.n;
  const bool want_dw = dw.numel() > 0, want_db = db.numel() > 0;
  if (m == 0) {  // empty sums
    if (want_dw) dw.zero_();
    if (want_db) db.zero_();
    return;
  }
  BwdCtx<T> cx(in, seed_t, dropout_p, is_rms, dx, dres);
  // Fixed row blocks with private dweight/dbias partial sums (see
  // kMaxPartialBlocks).
  cx.blocks = std::min(m, kMaxPartialBlocks);
  cx.partials = want_dw || want_db;
  std::vector<A> dw_part(cx.partials ? static_cast<size_t>(cx.blocks * n) : 0, A(0));
  std::vector<A> db_part(cx.partials ? static_cast<size_t>(cx.blocks * n) : 0, A(0));
  cx.dw_part = dw_part.data();
  cx.db_part = db_part.data();
  const int64_t blocks = cx.blocks;
  const int64_t block_grain = std::max<int64_t>(1, kGrainElements / ((m / blocks) * n));
  const auto run = FASTATTN_PICK_VARIANT(bwd_blocks, T);
  at::parallel_for(0, blocks, block_grain, [&](int64_t b0, int64_t b1) { run(cx, b0, b1); });

  // Sum the block partials in block order: deterministic. The sums go out
  // in the parameters' dtype (T, or float32 for half data).
  auto finish = [&](const std::vector<A>& part, at::Tensor& out, auto tag) {
    using P = decltype(tag);
    P* o = out.data_ptr<P>();
    at::parallel_for(0, n, std::max<int64_t>(1, kGrainElements / blocks),
                     [&](int64_t c0, int64_t c1) {
                       std::vector<A> acc(part.begin() + c0, part.begin() + c1);
                       for (int64_t blk = 1; blk < blocks; ++blk) {
                         const A* __restrict p = part.data() + blk * n;
                         for (int64_t c = c0; c < c1; ++c) acc[c - c0] += p[c];
                       }
                       for (int64_t c = c0; c < c1; ++c) o[c] = static_cast<P>(acc[c - c0]);
                     });
  };
  auto finish_as_param = [&](const std::vector<A>& part, at::Tensor& out) {
    if (out.scalar_type() == at::kFloat) {
      finish(part, out, float{});
    } else {
      finish(part, out, T{});
    }
  };
  if (want_dw) finish_as_param(dw_part, dw);
  if (want_db) finish_as_param(db_part, db);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_fwd_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& seed, double eps, double dropout_p, bool is_rms,
    bool store_h) {
  const norm_args::FwdInputs in =
      norm_args::fwd_inputs(x, residual, weight, bias, seed, eps, dropout_p);
  auto [y, h, mean, rstd] = norm_args::fwd_outputs(in, is_rms, store_h);
  if (in.m > 0 && in.n > 0) {
    dispatch_float(x.scalar_type(), "norm_fwd_native", [&](auto tag) {
      using T = decltype(tag);
      norm_fwd_impl<T>(in, seed, eps, dropout_p, is_rms, y, h, mean, rstd);
    });
  }
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_bwd_cpu(
    const at::Tensor& dy, const std::optional<at::Tensor>& dh_out, const at::Tensor& h,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
    double dropout_p, bool is_rms, bool has_residual) {
  const norm_args::BwdInputs in =
      norm_args::bwd_inputs(dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p, is_rms);
  auto [dx, dres, dw, db] = norm_args::bwd_outputs(in, dropout_p, has_residual);
  if (in.n > 0) {
    dispatch_float(h.scalar_type(), "norm_bwd_native", [&](auto tag) {
      using T = decltype(tag);
      norm_bwd_impl<T>(in, seed, dropout_p, is_rms, dx, dres, dw, db);
    });
  }
  return {dx, dres, dw, db};
}

}  // namespace
}  // namespace cpu
}  // namespace fastattn

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("norm_fwd_native", &fastattn::cpu::norm_fwd_cpu);
  m.impl("norm_bwd_native", &fastattn::cpu::norm_bwd_cpu);
}
