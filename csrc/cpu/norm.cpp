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
// combined in a fixed order, so results do not depend on the thread count.
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
inline A lane_sum(int64_t n, F term) {
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
inline void apply_dropout(A* __restrict v, int64_t n, dropout::RowKeys keys, uint32_t thresh,
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
// so that one loop serves every combination of affine parameters.
template <typename T, typename A = acc_t<T>>
std::vector<A> widen_or_fill(const at::Tensor& t, int64_t n, A fill) {
  std::vector<A> out(static_cast<size_t>(n), fill);
  if (t.defined()) {
    const T* p = t.data_ptr<T>();
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<A>(p[j]);
  }
  return out;
}

template <typename T>
void norm_fwd_impl(const norm_args::FwdInputs& in, const std::optional<at::Tensor>& seed_t,
                   double eps, double dropout_p, bool is_rms, at::Tensor& y, at::Tensor& h,
                   at::Tensor& mean, at::Tensor& rstd) {
  using A = acc_t<T>;
  const int64_t m = in.m, n = in.n;
  const Dropout<A> drop(seed_t, dropout_p);
  const std::vector<A> w = widen_or_fill<T>(in.weight, n, A(1));
  const std::vector<A> b = widen_or_fill<T>(in.bias, n, A(0));
  const bool has_res = in.residual.defined();
  // h differs from x (and must be rounded to T) only with dropout or residual.
  const bool makes_h = has_res || drop.on;
  const bool store_h = h.numel() > 0;

  const T* x_base = in.x.data_ptr<T>();
  const T* r_base = has_res ? in.residual.data_ptr<T>() : nullptr;
  T* y_base = y.data_ptr<T>();
  T* h_base = store_h ? h.data_ptr<T>() : nullptr;
  float* mean_out = is_rms ? nullptr : mean.data_ptr<float>();
  float* rstd_out = rstd.data_ptr<float>();
  const int64_t x_stride = in.x.stride(0);
  const int64_t r_stride = has_res ? in.residual.stride(0) : 0;
  const A inv_n = A(1) / static_cast<A>(n);
  const A eps_a = static_cast<A>(eps);

  const int64_t grain = std::max<int64_t>(1, kGrainElements / n);
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> row_buf(static_cast<size_t>(n));
    A* __restrict hv = row_buf.data();
    const A* __restrict wv = w.data();
    const A* __restrict bv = b.data();
    for (int64_t row = begin; row < end; ++row) {
      const T* __restrict xr = x_base + row * x_stride;
      for (int64_t j = 0; j < n; ++j) hv[j] = static_cast<A>(xr[j]);
      if (drop.on) {
        apply_dropout(hv, n, dropout::row_keys(drop.seed, row), drop.thresh, drop.scale);
      }
      if (has_res) {
        const T* __restrict rr = r_base + row * r_stride;
        for (int64_t j = 0; j < n; ++j) hv[j] += static_cast<A>(rr[j]);
      }
      if (makes_h) {
        // Round h to T: the statistics see h exactly as it is stored.
        if constexpr (!std::is_same_v<T, A>) {
          for (int64_t j = 0; j < n; ++j) hv[j] = static_cast<A>(static_cast<T>(hv[j]));
        }
        if (store_h) {
          T* __restrict hr = h_base + row * n;
          for (int64_t j = 0; j < n; ++j) hr[j] = static_cast<T>(hv[j]);
        }
      }
      // Two passes over the cached row: exact mean first, then the centred
      // variance (no cancellation, unlike E[h^2] - E[h]^2).
      A mu = 0;
      if (!is_rms) mu = lane_sum<A>(n, [&](int64_t j) { return hv[j]; }) * inv_n;
      const A var = lane_sum<A>(n, [&](int64_t j) {
                      const A d = hv[j] - mu;
                      return d * d;
                    }) * inv_n;
      const A rs = A(1) / std::sqrt(var + eps_a);
      T* __restrict yr = y_base + row * n;
      for (int64_t j = 0; j < n; ++j) yr[j] = static_cast<T>((hv[j] - mu) * rs * wv[j] + bv[j]);
      if (mean_out) mean_out[row] = static_cast<float>(mu);
      rstd_out[row] = static_cast<float>(rs);
    }
  });
}

template <typename T>
void norm_bwd_impl(const norm_args::BwdInputs& in, const std::optional<at::Tensor>& seed_t,
                   double dropout_p, bool is_rms, at::Tensor& dx, at::Tensor& dres,
                   at::Tensor& dw, at::Tensor& db) {
  using A = acc_t<T>;
  const int64_t m = in.m, n = in.n;
  const Dropout<A> drop(seed_t, dropout_p);
  const std::vector<A> w = widen_or_fill<T>(in.weight, n, A(1));
  const bool has_dh_out = in.dh_out.defined();
  const bool store_dres = dres.numel() > 0;
  const bool want_dw = dw.numel() > 0, want_db = db.numel() > 0;

  const T* h_base = in.h.data_ptr<T>();
  const T* dy_base = in.dy.data_ptr<T>();
  const T* dho_base = has_dh_out ? in.dh_out.data_ptr<T>() : nullptr;
  const float* mean_in = is_rms ? nullptr : in.mean.data_ptr<float>();
  const float* rstd_in = in.rstd.data_ptr<float>();
  T* dx_base = dx.data_ptr<T>();
  T* dres_base = store_dres ? dres.data_ptr<T>() : nullptr;
  const int64_t h_stride = in.h.stride(0), dy_stride = in.dy.stride(0);
  const int64_t dho_stride = has_dh_out ? in.dh_out.stride(0) : 0;
  const A inv_n = A(1) / static_cast<A>(n);

  // Fixed row blocks with private dweight/dbias partial sums (see
  // kMaxPartialBlocks); block k covers rows [k*M/blocks, (k+1)*M/blocks).
  if (m == 0) {  // empty sums
    if (want_dw) dw.zero_();
    if (want_db) db.zero_();
    return;
  }
  const int64_t blocks = std::min(m, kMaxPartialBlocks);
  const bool partials = want_dw || want_db;
  std::vector<A> dw_part(partials ? static_cast<size_t>(blocks * n) : 0, A(0));
  std::vector<A> db_part(partials ? static_cast<size_t>(blocks * n) : 0, A(0));
  const int64_t block_grain = std::max<int64_t>(1, kGrainElements / ((m / blocks) * n));

  at::parallel_for(0, blocks, block_grain, [&](int64_t blk_begin, int64_t blk_end) {
    std::vector<A> buf(static_cast<size_t>(3 * n));
    A* __restrict xhat = buf.data();
    A* __restrict g = buf.data() + n;
    A* __restrict dyv = buf.data() + 2 * n;
    const A* __restrict wv = w.data();
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      A* __restrict dwp = partials ? dw_part.data() + blk * n : nullptr;
      A* __restrict dbp = partials ? db_part.data() + blk * n : nullptr;
      const int64_t row_end = (blk + 1) * m / blocks;
      for (int64_t row = blk * m / blocks; row < row_end; ++row) {
        const T* __restrict hr = h_base + row * h_stride;
        const T* __restrict dyr = dy_base + row * dy_stride;
        A mu = mean_in ? static_cast<A>(mean_in[row]) : A(0);
        if constexpr (std::is_same_v<A, double>) {
          // The saved mean is float32 (contract); for double inputs take the
          // exact mean again from the cached row, so that xhat is exact when
          // h is constant (e.g. N = 1). rstd cannot be recomputed (no eps).
          if (mean_in) mu = lane_sum<A>(n, [&](int64_t j) { return static_cast<A>(hr[j]); }) * inv_n;
        }
        const A rs = static_cast<A>(rstd_in[row]);
        for (int64_t j = 0; j < n; ++j) {
          xhat[j] = (static_cast<A>(hr[j]) - mu) * rs;
          dyv[j] = static_cast<A>(dyr[j]);
          g[j] = dyv[j] * wv[j];
        }
        const A c_gx = lane_sum<A>(n, [&](int64_t j) { return g[j] * xhat[j]; }) * inv_n;
        const A c_g = is_rms ? A(0) : lane_sum<A>(n, [&](int64_t j) { return g[j]; }) * inv_n;
        // g now becomes dh.
        for (int64_t j = 0; j < n; ++j) g[j] = rs * (g[j] - xhat[j] * c_gx - c_g);
        if (has_dh_out) {
          const T* __restrict dhor = dho_base + row * dho_stride;
          for (int64_t j = 0; j < n; ++j) g[j] += static_cast<A>(dhor[j]);
        }
        if (store_dres) {
          T* __restrict dresr = dres_base + row * n;
          for (int64_t j = 0; j < n; ++j) dresr[j] = static_cast<T>(g[j]);
        }
        if (drop.on) {
          apply_dropout(g, n, dropout::row_keys(drop.seed, row), drop.thresh, drop.scale);
        }
        T* __restrict dxr = dx_base + row * n;
        for (int64_t j = 0; j < n; ++j) dxr[j] = static_cast<T>(g[j]);
        if (partials) {
          for (int64_t j = 0; j < n; ++j) {
            dwp[j] += dyv[j] * xhat[j];
            dbp[j] += dyv[j];
          }
        }
      }
    }
  });

  // Sum the block partials in block order: deterministic.
  auto finish = [&](const std::vector<A>& part, at::Tensor& out) {
    T* o = out.data_ptr<T>();
    at::parallel_for(0, n, std::max<int64_t>(1, kGrainElements / blocks),
                     [&](int64_t c0, int64_t c1) {
                       std::vector<A> acc(part.begin() + c0, part.begin() + c1);
                       for (int64_t blk = 1; blk < blocks; ++blk) {
                         const A* __restrict p = part.data() + blk * n;
                         for (int64_t c = c0; c < c1; ++c) acc[c - c0] += p[c];
                       }
                       for (int64_t c = c0; c < c1; ++c) o[c] = static_cast<T>(acc[c - c0]);
                     });
  };
  if (want_dw) finish(dw_part, dw);
  if (want_db) finish(db_part, db);
}

// Runs `f` with the C++ type of `dtype` (float, double, Half, BFloat16).
template <typename F>
void dispatch_float(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", dtype,
                         " (expected float16, bfloat16, float32 or float64)");
  }
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
