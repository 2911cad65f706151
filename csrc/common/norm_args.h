// Torch-side argument handling shared by the CPU and CUDA bindings of
// fastattn::norm_fwd_native / norm_bwd_native (contract: fastattn/ops/norm.py).
//
// The Python layer has already validated the user's input; these checks guard
// the native ops against direct misuse, so a kernel never reads out of bounds.
// Row tensors are 2-D (M, N) with any row stride; a tensor whose last stride
// is not 1 (possible for a gradient that autograd expanded) is copied, never
// rejected. Outputs are freshly allocated and contiguous.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>
#include <tuple>

namespace fastattn {
namespace norm_args {

// `t` as a 2-D row view whose elements within a row are adjacent in memory.
inline at::Tensor rows(const at::Tensor& t, const char* name, int64_t m, int64_t n) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (rows, hidden), got ", t.dim(), " dims");
  TORCH_CHECK(t.size(0) == m && t.size(1) == n, name, " must have shape (", m, ", ", n,
              "), got ", t.sizes());
  if (n > 1 && t.stride(1) != 1) return t.contiguous();
  return t;
}

// Whether weight and bias may have dtype `param` for data of dtype `data`:
// the same dtype, or float32 parameters of float16/bfloat16 data (mixed
// precision, as torch's layer_norm takes them).
inline bool param_dtype_ok(at::ScalarType param, at::ScalarType data) {
  return param == data ||
         (param == at::kFloat && (data == at::kHalf || data == at::kBFloat16));
}

// dtype of the per-row statistics (mean, rstd): float32, float64 for float64.
inline at::ScalarType stat_dtype(at::ScalarType data) {
  return data == at::kDouble ? at::kDouble : at::kFloat;
}

// Optional per-column vector (weight or bias) of shape (N,), made contiguous;
// its dtype must be `data`'s or allowed by param_dtype_ok.
inline std::optional<at::Tensor> column_vector(const std::optional<at::Tensor>& t,
                                               const char* name, int64_t n,
                                               at::ScalarType data, at::Device device) {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, name, " must have shape (", n, "), got ",
              t->sizes());
  TORCH_CHECK(param_dtype_ok(t->scalar_type(), data), name, " must have dtype ", data,
              " (or float32 for half data), got ", t->scalar_type());
  TORCH_CHECK(t->device() == device, name, " must be on ", device, ", got ", t->device());
  return t->contiguous();
}

inline void same_kind(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ",
              t.device());
}

// The dropout seed: int64 tensor with one element on the data's device.
// Required iff dropout_p > 0.
inline void check_dropout(const std::optional<at::Tensor>& seed, double dropout_p,
                          at::Device device) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
              dropout_p);
  if (dropout_p == 0.0) return;
  TORCH_CHECK(seed.has_value(), "dropout_p > 0 needs a seed tensor");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() >= 1,
              "seed must be an int64 tensor with one element, got ", seed->scalar_type(),
              " of shape ", seed->sizes());
  TORCH_CHECK(seed->device() == device, "seed must be on ", device, ", got ", seed->device());
}

// Per-row statistic (mean or rstd) of shape (M,) in stat_dtype(data).
inline at::Tensor row_stat(const at::Tensor& t, const char* name, int64_t m,
                           at::ScalarType data, at::Device device) {
  TORCH_CHECK(t.scalar_type() == stat_dtype(data), name, " must be ", stat_dtype(data),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == m, name, " must have shape (", m, "), got ",
              t.sizes());
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  return t.contiguous();
}

// Inputs of norm_fwd_native after checks; optional tensors are undefined
// when absent.
struct FwdInputs {
  at::Tensor x, residual, weight, bias;
  int64_t m = 0, n = 0;
};

inline FwdInputs fwd_inputs(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& seed, double eps,
                            double dropout_p) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (rows, hidden), got ", x.dim(), " dims");
  FwdInputs in;
  in.m = x.size(0);
  in.n = x.size(1);
  TORCH_CHECK(in.n <= 65536, "hidden size must be at most 65536, got ", in.n);
  TORCH_CHECK(eps >= 0.0, "eps must be >= 0, got ", eps);
  check_dropout(seed, dropout_p, x.device());
  in.x = rows(x, "x", in.m, in.n);
  if (residual.has_value()) {
    same_kind(*residual, "residual", x);
    in.residual = rows(*residual, "residual", in.m, in.n);
  }
  if (auto w = column_vector(weight, "weight", in.n, x.scalar_type(), x.device())) in.weight = *w;
  if (auto b = column_vector(bias, "bias", in.n, x.scalar_type(), x.device())) in.bias = *b;
  TORCH_CHECK(!in.weight.defined() || !in.bias.defined() ||
                  in.weight.scalar_type() == in.bias.scalar_type(),
              "weight and bias must share a dtype, got ", in.weight.scalar_type(), " and ",
              in.bias.scalar_type());
  return in;
}

// Outputs of norm_fwd_native: y (M, N); h (M, N) if store_h else (0,);
// mean (M,), or (0,) for RMS norm; rstd (M,); statistics in stat_dtype.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fwd_outputs(
    const FwdInputs& in, bool is_rms, bool store_h) {
  const auto opts = in.x.options();
  const auto stat = opts.dtype(stat_dtype(in.x.scalar_type()));
  at::Tensor h = store_h ? at::empty({in.m, in.n}, opts) : at::empty({0}, opts);
  at::Tensor mean = at::empty({is_rms ? 0 : in.m}, stat);
  at::Tensor rstd = at::empty({in.m}, stat);
  if (in.n == 0) {  // statistics of empty rows, as torch gives them; no kernel runs
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    rstd.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  return {at::empty({in.m, in.n}, opts), h, mean, rstd};
}

// Inputs of norm_bwd_native after checks; optional tensors are undefined
// when absent (mean too, for RMS norm).
struct BwdInputs {
  at::Tensor dy, dh_out, h, weight, bias, mean, rstd;
  int64_t m = 0, n = 0;
};

inline BwdInputs bwd_inputs(const at::Tensor& dy, const std::optional<at::Tensor>& dh_out,
                            const at::Tensor& h, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                            const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
                            double dropout_p, bool is_rms) {
  TORCH_CHECK(h.dim() == 2, "h must be 2-D (rows, hidden), got ", h.dim(), " dims");
  BwdInputs in;
  in.m = h.size(0);
  in.n = h.size(1);
  TORCH_CHECK(in.n <= 65536, "hidden size must be at most 65536, got ", in.n);
  check_dropout(seed, dropout_p, h.device());
  in.h = rows(h, "h", in.m, in.n);
  same_kind(dy, "dy", h);
  in.dy = rows(dy, "dy", in.m, in.n);
  if (dh_out.has_value()) {
    same_kind(*dh_out, "dh_out", h);
    in.dh_out = rows(*dh_out, "dh_out", in.m, in.n);
  }
  if (auto w = column_vector(weight, "weight", in.n, h.scalar_type(), h.device())) in.weight = *w;
  if (auto b = column_vector(bias, "bias", in.n, h.scalar_type(), h.device())) in.bias = *b;
  if (!is_rms) in.mean = row_stat(mean, "mean", in.m, h.scalar_type(), h.device());
  in.rstd = row_stat(rstd, "rstd", in.m, h.scalar_type(), h.device());
  return in;
}

// Outputs of norm_bwd_native: dx (M, N); dresidual (M, N) only when dropout
// and a residual are both present (otherwise it equals dx and is (0,));
// dweight/dbias (N,) in the dtype of weight/bias when they exist, else (0,).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_outputs(
    const BwdInputs& in, double dropout_p, bool has_residual) {
  const auto opts = in.h.options();
  const bool with_dres = dropout_p > 0.0 && has_residual;
  return {at::empty({in.m, in.n}, opts),
          with_dres ? at::empty({in.m, in.n}, opts) : at::empty({0}, opts),
          in.weight.defined() ? at::empty({in.n}, in.weight.options()) : at::empty({0}, opts),
          in.bias.defined() ? at::empty({in.n}, in.bias.options()) : at::empty({0}, opts)};
}

}  // namespace norm_args
}  // namespace fastattn
