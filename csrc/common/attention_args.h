// Torch-side argument handling shared by the CPU and CUDA bindings of
// fastattn::attention_fwd_native / attention_bwd_native
// (contract: fastattn/ops/attention.py).
//
// The Python layer has already validated the user's input; these checks
// guard the native ops against direct misuse, so a kernel never reads out of
// bounds. Tensors keep their strides (only the last dim must be contiguous:
// a gradient whose last stride is not 1 is copied, never rejected); the mask
// keeps its broadcast strides, expanded to (B, Hq, Lq, Lk) without a copy.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/norm_args.h"

namespace fastattn {
namespace attention_args {

// Dtype of lse and of the backward's internal row statistics: float32, or
// float64 for float64 inputs.
inline at::ScalarType stat_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// `t` with a contiguous last dim (copied only if it is not).
inline at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return (t.size(-1) > 1 && t.stride(-1) != 1) ? t.contiguous() : t;
}

inline void same_kind(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ",
              t.device());
}

// Inputs shared by forward and backward, after checks. mask is undefined or
// expanded to (B, Hq, Lq, Lk) (stride 0 on broadcast dims); lengths are
// undefined or contiguous (B,) int32/int64 (kernels clamp their values).
struct Inputs {
  at::Tensor q, k, v, mask, q_lengths, kv_lengths;
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  bool mask_is_bool = false;
};

inline at::Tensor lengths_arg(const std::optional<at::Tensor>& t, const char* name,
                              const at::Tensor& q) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kInt || t->scalar_type() == at::kLong, name,
              " must be int32 or int64, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == q.size(0), name, " must have shape (",
              q.size(0), "), got ", t->sizes());
  TORCH_CHECK(t->device() == q.device(), name, " must be on ", q.device(), ", got ",
              t->device());
  return t->contiguous();
}

inline Inputs inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& attn_mask,
                     const std::optional<at::Tensor>& q_lengths,
                     const std::optional<at::Tensor>& kv_lengths,
                     const std::optional<at::Tensor>& seed, double dropout_p) {
  TORCH_CHECK(q.dim() == 4, "q must be 4-D (B, Hq, Lq, D), got ", q.dim(), " dims");
  TORCH_CHECK(k.dim() == 4, "k must be 4-D (B, Hkv, Lk, D), got ", k.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q must be floating point, got ",
              q.scalar_type());
  same_kind(k, "k", q);
  same_kind(v, "v", q);
  Inputs in;
  in.B = q.size(0);
  in.Hq = q.size(1);
  in.Lq = q.size(2);
  in.D = q.size(3);
  in.Hkv = k.size(1);
  in.Lk = k.size(2);
  TORCH_CHECK(k.size(0) == in.B && k.size(3) == in.D, "k must have shape (", in.B,
              ", Hkv, Lk, ", in.D, "), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ",
              v.sizes());
  TORCH_CHECK(in.Hkv > 0 && in.Hq % in.Hkv == 0, "the query heads (", in.Hq,
              ") must be a multiple of the kv heads (", in.Hkv, ")");
  TORCH_CHECK(in.D >= 1 && in.D <= 256, "head dim must be in [1, 256], got ", in.D);
  norm_args::check_dropout(seed, dropout_p, q.device());
  in.q = last_dim_contiguous(q);
  in.k = last_dim_contiguous(k);
  in.v = last_dim_contiguous(v);
  if (attn_mask.has_value()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()),
                "attn_mask must be bool or floating point, got ", m.scalar_type());
    TORCH_CHECK(m.device() == q.device(), "attn_mask must be on ", q.device(), ", got ",
                m.device());
    TORCH_CHECK(m.dim() == 4, "attn_mask must be 4-D, got ", m.dim(), " dims");
    const int64_t full[4] = {in.B, in.Hq, in.Lq, in.Lk};
    for (int d = 0; d < 4; ++d) {
      TORCH_CHECK(m.size(d) == 1 || m.size(d) == full[d], "attn_mask of shape ", m.sizes(),
                  " does not broadcast to (B, Hq, Lq, Lk) = (", in.B, ", ", in.Hq, ", ", in.Lq,
                  ", ", in.Lk, ")");
    }
    in.mask = m.expand({in.B, in.Hq, in.Lq, in.Lk});
    in.mask_is_bool = m.scalar_type() == at::kBool;
  }
  in.q_lengths = lengths_arg(q_lengths, "q_lengths", q);
  in.kv_lengths = lengths_arg(kv_lengths, "kv_lengths", q);
  return in;
}

// Outputs of attention_fwd_native: out like q (its layout when q is dense),
// lse (B, Hq, Lq) contiguous in `lse_dtype` (stat_dtype, or float64 where a
// backend keeps it exact: the cpu backend).
// The window, softcap and ALiBi arguments of the native ops
// (fastattn/ops/variants.py, KernelVariants), checked so that no value can
// index out of bounds: the ops may be called directly. alibi: the (1 or B,
// Hq) float32 slopes or undefined; alibi_stride_b: Hq for (B, Hq), 0 for
// (1, Hq).
struct ScoreArgs {
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  at::Tensor alibi;
  int64_t alibi_stride_b = 0;
};

inline ScoreArgs score_args(const Inputs& in, int64_t window_left, int64_t window_right,
                            double softcap, const std::optional<at::Tensor>& alibi_slopes) {
  TORCH_CHECK(window_left >= -1 && window_right >= -1,
              "window_size must hold ints >= -1, got (", window_left, ", ", window_right, ")");
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0, "softcap must be finite and >= 0, got ",
              softcap);
  ScoreArgs a;
  a.window_left = window_left;
  a.window_right = window_right;
  a.softcap = softcap;
  if (alibi_slopes.has_value()) {
    const at::Tensor& t = *alibi_slopes;
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous() &&
                    (t.size(0) == 1 || t.size(0) == in.B) && t.size(1) == in.Hq,
                "alibi_slopes must be float32 contiguous (1 or B, Hq), got ", t.sizes());
    TORCH_CHECK(t.device() == in.q.device(), "alibi_slopes must be on ", in.q.device(),
                ", got ", t.device());
    a.alibi = t;
    a.alibi_stride_b = t.size(0) == 1 ? 0 : in.Hq;
  }
  return a;
}

inline std::tuple<at::Tensor, at::Tensor> fwd_outputs(const Inputs& in,
                                                      at::ScalarType lse_dtype) {
  return {at::empty_like(in.q), at::empty({in.B, in.Hq, in.Lq}, in.q.options().dtype(lse_dtype))};
}

// The backward's extra inputs after checks: dout and out with a contiguous
// last dim, lse contiguous (stat_dtype or float64), dlse undefined or
// contiguous in stat_dtype.
struct BwdExtras {
  at::Tensor dout, dlse, out, lse;
};

// `row_shape` / `row_dims`: the shape of lse and dlse, (B, Hq, Lq) by
// default; packed sequences pass (Hq, total_q).
inline BwdExtras bwd_extras(const Inputs& in, const at::Tensor& dout,
                            const std::optional<at::Tensor>& dlse, const at::Tensor& out,
                            const at::Tensor& lse, bool mask_grad,
                            std::vector<int64_t> row_shape = {},
                            const char* row_dims = "(B, Hq, Lq)") {
  BwdExtras ex;
  same_kind(dout, "dout", in.q);
  same_kind(out, "out", in.q);
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "dout must have the shape of q ", in.q.sizes(),
              ", got ", dout.sizes());
  TORCH_CHECK(out.sizes() == in.q.sizes(), "out must have the shape of q ", in.q.sizes(),
              ", got ", out.sizes());
  const at::ScalarType sd = stat_dtype(in.q.scalar_type());
  if (row_shape.empty()) row_shape = {in.B, in.Hq, in.Lq};
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(row_shape) &&
                  (lse.scalar_type() == sd || lse.scalar_type() == at::kDouble) &&
                  lse.device() == in.q.device(),
              "lse must be ", sd, " (or float64) of shape ", row_dims, " on ", in.q.device(),
              ", got ", lse.scalar_type(), " of shape ", lse.sizes(), " on ", lse.device());
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->sizes() == at::IntArrayRef(row_shape) && dlse->device() == in.q.device(),
                "dlse must have the shape of lse ", row_dims, " on ", in.q.device(), ", got ",
                dlse->sizes(), " on ", dlse->device());
    ex.dlse = dlse->to(sd).contiguous();
  }
  TORCH_CHECK(!mask_grad || (in.mask.defined() && !in.mask_is_bool),
              "mask_grad needs a floating attn_mask");
  ex.dout = last_dim_contiguous(dout);
  ex.out = last_dim_contiguous(out);
  ex.lse = lse.contiguous();
  return ex;
}

// Outputs of attention_bwd_native: dq, dk, dv like q, k, v; and, when
// mask_grad, the full (B, Hq, Lq, Lk) gradient of the bias in stat_dtype,
// zero-filled (kernels write only the pairs that may attend), which
// reduce_mask_grad turns into dmask. Without mask_grad the last is undefined.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_outputs(
    const Inputs& in, bool mask_grad) {
  at::Tensor full;
  if (mask_grad) {
    full = at::zeros({in.B, in.Hq, in.Lq, in.Lk},
                     in.q.options().dtype(stat_dtype(in.q.scalar_type())));
  }
  return {at::empty_like(in.q), at::empty_like(in.k), at::empty_like(in.v), full};
}

// dmask of the contract: the full bias gradient summed over the dims the
// mask broadcasts over, in the mask's dtype and shape; (0,) without mask_grad.
inline at::Tensor reduce_mask_grad(const at::Tensor& full, const std::optional<at::Tensor>& mask,
                                   const at::Tensor& q) {
  if (!full.defined()) return at::empty({0}, q.options());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < 4; ++d) {
    if ((*mask).size(d) == 1 && full.size(d) != 1) dims.push_back(d);
  }
  at::Tensor summed = dims.empty() ? full : full.sum(dims, /*keepdim=*/true);
  return summed.to((*mask).scalar_type()).reshape((*mask).sizes());
}

}  // namespace attention_args
}  // namespace fastattn
