// Torch binding of the C++ CPU attention kernels:
// fastattn::attention_fwd_native / attention_bwd_native (padded batches) and
// attention_varlen_fwd_native / attention_varlen_bwd_native (packed
// sequences) for CPU tensors.
//
// Contracts: fastattn/ops/attention.py, fastattn/ops/attention_varlen.py.
// Checks and output allocation of the padded ops are shared with the CUDA
// binding (common/attention_args.h); this file turns tensors into the raw
// views of attention_cpu.h (lengths clamped to [0, L], the mask with its
// broadcast strides, dropout constants, the packed sequences' offsets) and
// dispatches on the dtype. The packed ops run the same kernels on the
// (total, H, D) tensors in place: nothing is copied into a padded batch.
// Kernels: attention_fwd.cpp, attention_bwd.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/attention_args.h"
#include "common/dropout_hash.h"
#include "cpu/attention_cpu.h"
#include "cpu/dispatch.h"

namespace fastattn {
namespace cpu {
namespace {

// Per batch row lengths clamped to [0, limit]; `limit` everywhere when absent.
std::vector<int64_t> clamped_lengths(const at::Tensor& t, int64_t batch, int64_t limit) {
  std::vector<int64_t> out(static_cast<size_t>(batch), limit);
  if (!t.defined()) return out;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t raw = t.scalar_type() == at::kInt ? t.data_ptr<int32_t>()[b]
                                                    : t.data_ptr<int64_t>()[b];
    out[b] = std::clamp<int64_t>(raw, 0, limit);
  }
  return out;
}

// How the kernels read a float tensor of this dtype (a mask, the rel table).
tiles::MaskView::Kind kind_of(at::ScalarType dtype, const char* name) {
  switch (dtype) {
    case at::kBool: return tiles::MaskView::kBool;
    case at::kFloat: return tiles::MaskView::kFloat;
    case at::kDouble: return tiles::MaskView::kDouble;
    case at::kHalf: return tiles::MaskView::kHalf;
    case at::kBFloat16: return tiles::MaskView::kBFloat16;
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype);
  }
}

tiles::MaskView mask_view(const at::Tensor& mask) {
  tiles::MaskView mv;
  if (!mask.defined()) return mv;
  mv.kind = kind_of(mask.scalar_type(), "attn_mask");
  mv.ptr = mask.data_ptr();  // bool is one byte per element, read as uint8
  mv.sb = mask.stride(0);
  mv.sh = mask.stride(1);
  mv.sm = mask.stride(2);
  mv.sn = mask.stride(3);
  return mv;
}

DropoutCfg dropout_cfg(const std::optional<at::Tensor>& seed, double p) {
  DropoutCfg cfg;
  if (p <= 0.0) return cfg;
  cfg.on = true;
  cfg.seed = static_cast<uint64_t>(seed->data_ptr<int64_t>()[0]);
  cfg.thresh = dropout::threshold(p);
  cfg.scale = 1.0 / (1.0 - p);
  return cfg;
}

// The variant arguments (fastattn/ops/variants.py, KernelVariants) as the
// kernels read them, checked so that no value can index out of bounds: the
// native op may be called directly.
ScoreMods score_mods(const attention_args::Inputs& in, int64_t window_left,
                     int64_t window_right, double softcap,
                     const std::optional<at::Tensor>& alibi_slopes,
                     const std::optional<at::Tensor>& rel_table,
                     const std::optional<at::Tensor>& rel_buckets, int64_t rel_radius,
                     bool rel_per_row) {
  ScoreMods mods;
  const attention_args::ScoreArgs args =
      attention_args::score_args(in, window_left, window_right, softcap, alibi_slopes);
  mods.win_left = args.window_left;
  mods.win_right = args.window_right;
  mods.softcap = args.softcap;
  if (args.alibi.defined()) {
    mods.alibi = args.alibi.data_ptr<float>();
    mods.alibi_sb = args.alibi_stride_b;
  }
  TORCH_CHECK(rel_table.has_value() == rel_buckets.has_value(),
              "rel_table and rel_buckets come together");
  if (rel_table.has_value()) {
    const at::Tensor& t = *rel_table;
    const at::Tensor& bk = *rel_buckets;
    TORCH_CHECK(t.dim() == 2 && t.size(1) == in.Hq && t.size(0) >= 1 && t.is_contiguous(),
                "rel_table must be contiguous (num_buckets, Hq), got ", t.sizes());
    TORCH_CHECK(rel_radius >= in.Lq + in.Lk, "rel_radius must be >= Lq + Lk, got ", rel_radius);
    TORCH_CHECK(bk.scalar_type() == at::kInt && bk.dim() == 1 && bk.is_contiguous() &&
                    bk.size(0) == 2 * rel_radius + 1,
                "rel_buckets must be int32 contiguous (2 rel_radius + 1,), got ", bk.sizes());
    if (bk.numel()) {
      const auto [lo, hi] = std::minmax_element(bk.data_ptr<int32_t>(),
                                                bk.data_ptr<int32_t>() + bk.numel());
      TORCH_CHECK(*lo >= 0 && *hi < t.size(0), "rel_buckets must hold buckets in [0, ",
                  t.size(0), "), got [", *lo, ", ", *hi, "]");
    }
    mods.rel_table = t.data_ptr();
    TORCH_CHECK(t.is_floating_point(), "rel_table must be floating point, got ", t.scalar_type());
    mods.rel_kind = kind_of(t.scalar_type(), "rel_table");
    mods.rel_buckets = bk.data_ptr<int32_t>();
    mods.rel_radius = rel_radius;
    mods.rel_per_row = rel_per_row;
  }
  return mods;
}

// Of a padded (B, H, L, D) tensor, or a packed (total, H, D) one.
Strides strides_of(const at::Tensor& t) {
  if (t.dim() == 3) return {0, t.stride(1), t.stride(0)};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// Problem of a call; the lengths vectors must outlive it.
Problem problem(const attention_args::Inputs& in, const std::vector<int64_t>& q_len,
                const std::vector<int64_t>& kv_len, const std::optional<at::Tensor>& seed,
                bool causal, double scale, double dropout_p) {
  Problem pb;
  pb.B = in.B;
  pb.Hq = in.Hq;
  pb.Hkv = in.Hkv;
  pb.Lq = in.Lq;
  pb.Lk = in.Lk;
  pb.D = in.D;
  pb.q_len = q_len.data();
  pb.kv_len = kv_len.data();
  pb.mask = mask_view(in.mask);
  pb.causal = causal;
  pb.scale = scale;
  pb.drop = dropout_cfg(seed, dropout_p);
  return pb;
}

// The forward kernel on checked inputs, into out and lse (float64).
void run_fwd(const attention_args::Inputs& in, const Problem& pb, at::Tensor& out,
             at::Tensor& lse, const char* op) {
  dispatch_float(in.q.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    FwdParams<T> p;
    p.pb = pb;
    p.q = in.q.data_ptr<T>();
    p.k = in.k.data_ptr<T>();
    p.v = in.v.data_ptr<T>();
    p.out = out.data_ptr<T>();
    p.lse = lse.data_ptr<double>();
    p.qs = strides_of(in.q);
    p.ks = strides_of(in.k);
    p.vs = strides_of(in.v);
    p.os = strides_of(out);
    attention_fwd_kernel<T>(p);
  });
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& q_lengths,
    const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& seed,
    bool causal, double scale, double dropout_p, int64_t window_left, int64_t window_right,
    double softcap, const std::optional<at::Tensor>& alibi_slopes,
    const std::optional<at::Tensor>& rel_table, const std::optional<at::Tensor>& rel_buckets,
    int64_t rel_radius, bool rel_per_row) {
  const attention_args::Inputs in =
      attention_args::inputs(q, k, v, attn_mask, q_lengths, kv_lengths, seed, dropout_p);
  // lse in float64: see FwdParams::lse (attention_cpu.h).
  auto [out, lse] = attention_args::fwd_outputs(in, at::kDouble);
  const std::vector<int64_t> q_len = clamped_lengths(in.q_lengths, in.B, in.Lq);
  const std::vector<int64_t> kv_len = clamped_lengths(in.kv_lengths, in.B, in.Lk);
  Problem pb = problem(in, q_len, kv_len, seed, causal, scale, dropout_p);
  pb.mods = score_mods(in, window_left, window_right, softcap, alibi_slopes, rel_table,
                       rel_buckets, rel_radius, rel_per_row);
  run_fwd(in, pb, out, lse, "attention_fwd_native");
  return {out, lse};
}

// The relative bias table's gradient by relative position (KernelVariants):
// (Hq, 2 R + 1) float64 when asked for and a table is given, else (0,).
at::Tensor rel_grad_buffer(const attention_args::Inputs& in, const Problem& pb, bool rel_grad) {
  if (!rel_grad || pb.mods.rel_table == nullptr) return at::empty({0}, in.q.options());
  return at::empty({in.Hq, 2 * pb.mods.rel_radius + 1}, in.q.options().dtype(at::kDouble));
}

// The backward kernel on checked inputs, into dq, dk, dv, dbias (mask_grad:
// the full bias gradient, else undefined) and drel (rel_grad, else empty).
void run_bwd(const attention_args::Inputs& in, const attention_args::BwdExtras& ex,
             const Problem& pb, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dbias,
             const at::Tensor& drel, const char* op) {
  // dlse only where lse is finite: rows with lse = -inf have p = 0 and must
  // not pick up NaN from it. (The kernel forms delta_i = dout_i . out_i - dlse_i.)
  const at::ScalarType sd = attention_args::stat_dtype(in.q.scalar_type());
  at::Tensor dlse_finite;
  if (ex.dlse.defined()) {
    dlse_finite = at::where(at::isfinite(ex.lse), ex.dlse, 0).to(sd).contiguous();
  }
  // A float32 lse (attention_varlen packs the padded one) is read as float64.
  const at::Tensor lse64 = ex.lse.to(at::kDouble);

  dispatch_float(in.q.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = tiles::acc_t<T>;
    BwdParams<T> p;
    p.pb = pb;
    p.q = in.q.data_ptr<T>();
    p.k = in.k.data_ptr<T>();
    p.v = in.v.data_ptr<T>();
    p.dout = ex.dout.data_ptr<T>();
    p.out = ex.out.data_ptr<T>();
    p.lse = lse64.data_ptr<double>();
    p.dq = dq.data_ptr<T>();
    p.dk = dk.data_ptr<T>();
    p.dv = dv.data_ptr<T>();
    p.dbias = dbias.defined() ? dbias.data_ptr<A>() : nullptr;
    // float32 with an additive mask: where the bias concentrates attention,
    // delta's rounding would dominate dq (attention_bwd.cpp). Half inputs
    // compute in float32, far beyond their own precision; float64 needs none.
    p.own_delta_dq = std::is_same_v<T, float> && in.mask.defined() && !in.mask_is_bool;
    p.dlse = dlse_finite.defined() ? dlse_finite.data_ptr<A>() : nullptr;
    p.qs = strides_of(in.q);
    p.ks = strides_of(in.k);
    p.vs = strides_of(in.v);
    p.dos = strides_of(ex.dout);
    p.os = strides_of(ex.out);
    p.dqs = strides_of(dq);
    p.dks = strides_of(dk);
    p.dvs = strides_of(dv);
    p.drel = drel.numel() ? drel.data_ptr<double>() : nullptr;
    attention_bwd_kernel<T>(p);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& dout, const std::optional<at::Tensor>& dlse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& q_lengths,
    const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& seed,
    bool causal, double scale, double dropout_p, bool mask_grad, int64_t window_left,
    int64_t window_right, double softcap, const std::optional<at::Tensor>& alibi_slopes,
    const std::optional<at::Tensor>& rel_table, const std::optional<at::Tensor>& rel_buckets,
    int64_t rel_radius, bool rel_per_row, bool rel_grad) {
  const attention_args::Inputs in =
      attention_args::inputs(q, k, v, attn_mask, q_lengths, kv_lengths, seed, dropout_p);
  const attention_args::BwdExtras ex =
      attention_args::bwd_extras(in, dout, dlse, out, lse, mask_grad);
  auto [dq, dk, dv, dbias] = attention_args::bwd_outputs(in, mask_grad);
  const std::vector<int64_t> q_len = clamped_lengths(in.q_lengths, in.B, in.Lq);
  const std::vector<int64_t> kv_len = clamped_lengths(in.kv_lengths, in.B, in.Lk);
  Problem pb = problem(in, q_len, kv_len, seed, causal, scale, dropout_p);
  pb.mods = score_mods(in, window_left, window_right, softcap, alibi_slopes, rel_table,
                       rel_buckets, rel_radius, rel_per_row);
  const at::Tensor drel = rel_grad_buffer(in, pb, rel_grad);
  run_bwd(in, ex, pb, dq, dk, dv, dbias, drel, "attention_bwd_native");
  return {dq, dk, dv, attention_args::reduce_mask_grad(dbias, attn_mask, in.q), drel};
}

// ------------------------------------------------------- packed sequences

// Offsets and lengths of the sequences of cu_seqlens (int32 (B + 1,) prefix
// sums from 0 to `total`, non-decreasing, none longer than max_seqlen),
// checked here: the native op may be called directly, and no value may
// index out of bounds.
struct Packing {
  std::vector<int64_t> start, len;
};

Packing packing(const at::Tensor& cu, const char* name, int64_t total, int64_t max_seqlen,
                const char* max_name) {
  TORCH_CHECK(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.numel() >= 1, name,
              " must be int32 of shape (batch + 1,), got ", cu.scalar_type(), " of shape ",
              cu.sizes());
  TORCH_CHECK(cu.is_cpu(), name, " must be on the CPU, got ", cu.device());
  TORCH_CHECK(max_seqlen >= 0, max_name, " must be >= 0, got ", max_seqlen);
  const at::Tensor c = cu.contiguous();
  const int32_t* v = c.const_data_ptr<int32_t>();
  const int64_t B = c.numel() - 1;
  TORCH_CHECK(v[0] == 0 && v[B] == total, name,
              " must start at 0 and end at the number of packed tokens (", total, "), got ",
              v[0], " ... ", v[B]);
  Packing pk;
  pk.start.resize(static_cast<size_t>(B));
  pk.len.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = static_cast<int64_t>(v[b + 1]) - v[b];
    TORCH_CHECK(len >= 0, name, " must be non-decreasing");
    TORCH_CHECK(len <= max_seqlen, max_name, "=", max_seqlen,
                " is smaller than the longest sequence of ", name, " (", len, ")");
    pk.start[b] = v[b];
    pk.len[b] = len;
  }
  return pk;
}

// Inputs of the packed ops: q (total_q, Hq, D), k and v (total_k, Hkv, D);
// B the number of sequences, Lq / Lk the longest ones allowed.
attention_args::Inputs packed_inputs(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& cu_q,
                                     const at::Tensor& cu_k, const std::optional<at::Tensor>& seed,
                                     int64_t max_q, int64_t max_k, double dropout_p) {
  TORCH_CHECK(q.dim() == 3, "q must be 3-D (total_q, Hq, D), got ", q.dim(), " dims");
  TORCH_CHECK(k.dim() == 3, "k must be 3-D (total_k, Hkv, D), got ", k.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q must be floating point, got ",
              q.scalar_type());
  attention_args::same_kind(k, "k", q);
  attention_args::same_kind(v, "v", q);
  attention_args::Inputs in;
  in.Hq = q.size(1);
  in.D = q.size(2);
  in.Hkv = k.size(1);
  TORCH_CHECK(k.size(2) == in.D, "k must have shape (total_k, Hkv, ", in.D, "), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ",
              v.sizes());
  TORCH_CHECK(in.Hkv > 0 && in.Hq % in.Hkv == 0, "the query heads (", in.Hq,
              ") must be a multiple of the kv heads (", in.Hkv, ")");
  TORCH_CHECK(in.D >= 1 && in.D <= 256, "head dim must be in [1, 256], got ", in.D);
  TORCH_CHECK(cu_k.numel() == cu_q.numel(), "cu_seqlens_k must have the shape of cu_seqlens_q (",
              cu_q.numel(), ",), got ", cu_k.sizes());
  norm_args::check_dropout(seed, dropout_p, q.device());
  in.B = cu_q.numel() - 1;
  in.Lq = max_q;
  in.Lk = max_k;
  in.q = attention_args::last_dim_contiguous(q);
  in.k = attention_args::last_dim_contiguous(k);
  in.v = attention_args::last_dim_contiguous(v);
  return in;
}

// The Problem of packed sequences: the padded one with the sequences'
// offsets (Problem::q_start); `qp`, `kp` must outlive it.
Problem packed_problem(const attention_args::Inputs& in, const Packing& qp, const Packing& kp,
                       const std::optional<at::Tensor>& seed, bool causal, double scale,
                       double dropout_p) {
  Problem pb = problem(in, qp.len, kp.len, seed, causal, scale, dropout_p);
  pb.q_start = qp.start.data();
  pb.k_start = kp.start.data();
  pb.total_q = in.q.size(0);
  return pb;
}

std::tuple<at::Tensor, at::Tensor> attention_varlen_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
    const at::Tensor& cu_k, const std::optional<at::Tensor>& seed, int64_t max_q, int64_t max_k,
    bool causal, double scale, double dropout_p, int64_t window_left, int64_t window_right,
    double softcap, const std::optional<at::Tensor>& alibi_slopes,
    const std::optional<at::Tensor>& rel_table, const std::optional<at::Tensor>& rel_buckets,
    int64_t rel_radius) {
  const attention_args::Inputs in =
      packed_inputs(q, k, v, cu_q, cu_k, seed, max_q, max_k, dropout_p);
  const Packing qp = packing(cu_q, "cu_seqlens_q", in.q.size(0), max_q, "max_seqlen_q");
  const Packing kp = packing(cu_k, "cu_seqlens_k", in.k.size(0), max_k, "max_seqlen_k");
  Problem pb = packed_problem(in, qp, kp, seed, causal, scale, dropout_p);
  pb.mods = score_mods(in, window_left, window_right, softcap, alibi_slopes, rel_table,
                       rel_buckets, rel_radius, /*rel_per_row=*/true);
  // Every row of out and lse belongs to a sequence and is written.
  at::Tensor out = at::empty_like(in.q);
  at::Tensor lse = at::empty({in.Hq, in.q.size(0)}, in.q.options().dtype(at::kDouble));
  run_fwd(in, pb, out, lse, "attention_varlen_fwd_native");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_varlen_bwd_cpu(
    const at::Tensor& dout, const std::optional<at::Tensor>& dlse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& cu_q, const at::Tensor& cu_k, const std::optional<at::Tensor>& seed,
    int64_t max_q, int64_t max_k, bool causal, double scale, double dropout_p,
    int64_t window_left, int64_t window_right, double softcap,
    const std::optional<at::Tensor>& alibi_slopes, const std::optional<at::Tensor>& rel_table,
    const std::optional<at::Tensor>& rel_buckets, int64_t rel_radius, bool rel_grad) {
  const attention_args::Inputs in =
      packed_inputs(q, k, v, cu_q, cu_k, seed, max_q, max_k, dropout_p);
  const Packing qp = packing(cu_q, "cu_seqlens_q", in.q.size(0), max_q, "max_seqlen_q");
  const Packing kp = packing(cu_k, "cu_seqlens_k", in.k.size(0), max_k, "max_seqlen_k");
  const attention_args::BwdExtras ex = attention_args::bwd_extras(
      in, dout, dlse, out, lse, /*mask_grad=*/false, {in.Hq, in.q.size(0)}, "(Hq, total_q)");
  Problem pb = packed_problem(in, qp, kp, seed, causal, scale, dropout_p);
  pb.mods = score_mods(in, window_left, window_right, softcap, alibi_slopes, rel_table,
                       rel_buckets, rel_radius, /*rel_per_row=*/true);
  // Every row belongs to a sequence and is written (no padded rows to clear).
  at::Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  at::Tensor no_dbias;
  const at::Tensor drel = rel_grad_buffer(in, pb, rel_grad);
  run_bwd(in, ex, pb, dq, dk, dv, no_dbias, drel, "attention_varlen_bwd_native");
  return {dq, dk, dv, drel};
}

}  // namespace
}  // namespace cpu
}  // namespace fastattn

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("attention_fwd_native", &fastattn::cpu::attention_fwd_cpu);
  m.impl("attention_bwd_native", &fastattn::cpu::attention_bwd_cpu);
  m.impl("attention_varlen_fwd_native", &fastattn::cpu::attention_varlen_fwd_cpu);
  m.impl("attention_varlen_bwd_native", &fastattn::cpu::attention_varlen_bwd_cpu);
}
