// Torch side of the CUDA attention kernels: fastattn::attention_fwd_native /
// attention_bwd_native for CUDA tensors (contract: fastattn/ops/attention.py).
//
// Checks the arguments (csrc/common/attention_args.h), allocates the outputs
// and the backward's delta workspace, and calls the pure-CUDA launchers of
// attention.h on the current stream of the tensors' device. Inputs keep
// their strides; only a 16-bit tensor that breaks the tensor-core kernels'
// 16-byte alignment rule (attention.h) is copied to a contiguous one.
#include <ATen/ops/clamp.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>

#include "common/attention_args.h"
#include "cuda/attention.h"

namespace fastattn {
namespace cuda {
namespace attn {
namespace {

DType to_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    default:
      TORCH_CHECK(false, what, ": the cuda backend serves float16, bfloat16 and float32, got ",
                  t);
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// Stride of dim `d`, 0 for a size-1 dim (its stride is never multiplied by
// a nonzero index, and may be anything).
int64_t stride_of(const at::Tensor& t, int64_t d) { return t.size(d) == 1 ? 0 : t.stride(d); }

// `t` itself, or for 16-bit dtypes a contiguous copy when its pointer or
// strides break the 16-byte alignment the cp.async tile loads need.
at::Tensor aligned(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat || t.numel() == 0) return t;
  if (attention_strides_ok(t.data_ptr(), stride_of(t, 0), stride_of(t, 1), stride_of(t, 2))) {
    return t;
  }
  return t.clone(at::MemoryFormat::Contiguous);
}

// A freshly allocated output like `t`; contiguous instead if the layout
// empty_like chose breaks the alignment rule (only for odd dense layouts).
at::Tensor aligned_output(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat || t.numel() == 0) return t;
  if (attention_strides_ok(t.data_ptr(), stride_of(t, 0), stride_of(t, 1), stride_of(t, 2))) {
    return t;
  }
  return at::empty(t.sizes(), t.options());
}

Tensor4 view4(const at::Tensor& t) {
  Tensor4 v;
  v.ptr = t.data_ptr();
  v.stride_b = stride_of(t, 0);
  v.stride_h = stride_of(t, 1);
  v.stride_l = stride_of(t, 2);
  return v;
}

OutTensor4 out4(at::Tensor& t) {
  OutTensor4 v;
  v.ptr = t.data_ptr();
  v.stride_b = stride_of(t, 0);
  v.stride_h = stride_of(t, 1);
  v.stride_l = stride_of(t, 2);
  return v;
}

// Tensors a Problem points into; they must outlive the launches.
struct Holders {
  at::Tensor q, k, v, mask, q_lengths, kv_lengths, alibi, rel_bias;
};

// The Problem of checked inputs. Lengths become int32 (values are clamped
// in the kernels); a bias becomes float32 unless it is float32 already or in
// the data's dtype (the kernels read bool masks and biases in those two
// dtypes: attention_variants.h), converted before broadcasting so no
// full-size copy.
Problem make_problem(const attention_args::Inputs& in, const std::optional<at::Tensor>& attn_mask,
                     const std::optional<at::Tensor>& seed, bool causal, double scale,
                     double dropout_p, Holders& hold) {
  Problem pb;
  hold.q = aligned(in.q);
  hold.k = aligned(in.k);
  hold.v = aligned(in.v);
  pb.q = view4(hold.q);
  pb.k = view4(hold.k);
  pb.v = view4(hold.v);
  if (in.mask.defined()) {
    hold.mask = in.mask;
    const at::ScalarType mt = in.mask.scalar_type();
    if (mt == at::kBool) {
      pb.mask_kind = MaskKind::kBool;
    } else if (mt == at::kHalf && in.q.scalar_type() == at::kHalf) {
      pb.mask_kind = MaskKind::kFloat16;
    } else if (mt == at::kBFloat16 && in.q.scalar_type() == at::kBFloat16) {
      pb.mask_kind = MaskKind::kBFloat16;
    } else {
      if (mt != at::kFloat) {
        hold.mask = attn_mask->to(at::kFloat).expand({in.B, in.Hq, in.Lq, in.Lk});
      }
      pb.mask_kind = MaskKind::kFloat32;
    }
    pb.mask = hold.mask.data_ptr();
    pb.mask_stride_b = stride_of(hold.mask, 0);
    pb.mask_stride_h = stride_of(hold.mask, 1);
    pb.mask_stride_q = stride_of(hold.mask, 2);
    pb.mask_stride_k = stride_of(hold.mask, 3);
  }
  if (in.q_lengths.defined()) {
    hold.q_lengths = in.q_lengths.to(at::kInt).contiguous();
    pb.q_lengths = hold.q_lengths.data_ptr<int32_t>();
  }
  if (in.kv_lengths.defined()) {
    hold.kv_lengths = in.kv_lengths.to(at::kInt).contiguous();
    pb.kv_lengths = hold.kv_lengths.data_ptr<int32_t>();
  }
  pb.seed = dropout_p > 0.0 ? seed->data_ptr<int64_t>() : nullptr;
  pb.dropout_p = dropout_p;
  pb.B = in.B;
  pb.Hq = in.Hq;
  pb.Hkv = in.Hkv;
  pb.Lq = in.Lq;
  pb.Lk = in.Lk;
  pb.D = in.D;
  pb.scale = static_cast<float>(scale);
  pb.causal = causal;
  pb.dtype = to_dtype(in.q.scalar_type(), "attention (cuda)");
  return pb;
}

void check_head_dim(int64_t D) {
  TORCH_CHECK(D >= 8 && D <= 256 && D % 8 == 0,
              "the cuda attention kernels need a head dim that is a multiple of 8 in [8, 256], "
              "got ", D);
}

// T5's relative bias as the kernels read it (attention.h,
// Problem::rel_bias): the table gathered once per relative position, in log2
// units, padded with kRelPad zeros per side. The buckets are clamped into
// the table instead of checked, so no value is read on the host and no
// index can leave the table.
void set_rel_bias(Problem& pb, const attention_args::Inputs& in, const at::Tensor& table,
                  const std::optional<at::Tensor>& rel_buckets, int64_t rel_radius,
                  bool rel_per_row, Holders& hold) {
  TORCH_CHECK(!rel_per_row,
              "the cuda attention kernels take the relative bias of padded batches only "
              "(rel_per_row: backend='triton' does)");
  TORCH_CHECK(rel_buckets.has_value(), "rel_table and rel_buckets come together");
  const at::Tensor& bk = *rel_buckets;
  TORCH_CHECK(table.dim() == 2 && table.size(1) == in.Hq && table.size(0) >= 1 &&
                  table.is_floating_point(),
              "rel_table must be floating point (num_buckets, Hq), got ", table.sizes(), " ",
              table.scalar_type());
  TORCH_CHECK(table.device() == in.q.device() && bk.device() == in.q.device(),
              "rel_table and rel_buckets must be on ", in.q.device());
  TORCH_CHECK(rel_radius >= in.Lq + in.Lk, "rel_radius must be >= Lq + Lk, got ", rel_radius);
  TORCH_CHECK(bk.scalar_type() == at::kInt && bk.dim() == 1 && bk.size(0) == 2 * rel_radius + 1,
              "rel_buckets must be int32 (2 rel_radius + 1,), got ", bk.sizes());
  constexpr double kLog2e = 1.4426950408889634;
  const at::Tensor index = at::clamp(bk, 0, table.size(0) - 1).to(at::kLong);
  const at::Tensor by_position = at::index_select(table.to(at::kFloat), 0, index).t().mul(kLog2e);
  hold.rel_bias = at::constant_pad_nd(by_position, {kRelPad, kRelPad}, 0).contiguous();
  pb.rel_bias = hold.rel_bias.data_ptr<float>();
  pb.rel_stride = hold.rel_bias.size(1);
  pb.rel_radius = rel_radius;
}

// The attention variants the CUDA kernels run (attention.h): a window,
// ALiBi, softcap and T5's relative bias; the last three not together with
// attn_mask. fastattn's auto choice sends the others to triton
// (fastattn/ops/attention.py, pick_backend); a direct call is refused.
// Positions must stay below 2^30 (the kernels' unbounded band edge); a
// window side past Lq + Lk bounds nothing and is clamped to it.
void set_variants(Problem& pb, const attention_args::Inputs& in, int64_t window_left,
                  int64_t window_right, double softcap,
                  const std::optional<at::Tensor>& alibi_slopes,
                  const std::optional<at::Tensor>& rel_table,
                  const std::optional<at::Tensor>& rel_buckets, int64_t rel_radius,
                  bool rel_per_row, Holders& hold) {
  const attention_args::ScoreArgs args =
      attention_args::score_args(in, window_left, window_right, softcap, alibi_slopes);
  TORCH_CHECK(!in.mask.defined() ||
                  (!args.alibi.defined() && args.softcap == 0 && !rel_table.has_value()),
              "the cuda attention kernels do not implement alibi_slopes, softcap or rel_bias "
              "together with attn_mask (backend='triton' does)");
  TORCH_CHECK(in.Lq + in.Lk < (int64_t{1} << 30),
              "the cuda attention kernels need Lq + Lk < 2^30, got ", in.Lq + in.Lk);
  const int64_t widest = in.Lq + in.Lk;
  pb.window_left = static_cast<int>(std::min(args.window_left, widest));
  pb.window_right = static_cast<int>(std::min(args.window_right, widest));
  pb.softcap = static_cast<float>(args.softcap);
  if (args.alibi.defined()) {
    hold.alibi = args.alibi;
    pb.alibi_slopes = args.alibi.data_ptr<float>();
    pb.alibi_stride_b = args.alibi_stride_b;
  }
  if (rel_table.has_value()) {
    set_rel_bias(pb, in, *rel_table, rel_buckets, rel_radius, rel_per_row, hold);
  }
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& q_lengths,
    const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& seed,
    bool causal, double scale, double dropout_p, int64_t window_left, int64_t window_right,
    double softcap, const std::optional<at::Tensor>& alibi_slopes,
    const std::optional<at::Tensor>& rel_table, const std::optional<at::Tensor>& rel_buckets,
    int64_t rel_radius, bool rel_per_row) {
  TORCH_CHECK(q.is_cuda(), "attention_fwd_native (cuda): q must be a CUDA tensor");
  to_dtype(q.scalar_type(), "attention_fwd_native");
  const c10::cuda::CUDAGuard guard(q.device());
  const attention_args::Inputs in =
      attention_args::inputs(q, k, v, attn_mask, q_lengths, kv_lengths, seed, dropout_p);
  check_head_dim(in.D);
  auto [out, lse] =
      attention_args::fwd_outputs(in, attention_args::stat_dtype(in.q.scalar_type()));
  out = aligned_output(out);

  Holders hold;
  FwdParams p;
  p.pb = make_problem(in, attn_mask, seed, causal, scale, dropout_p, hold);
  set_variants(p.pb, in, window_left, window_right, softcap, alibi_slopes, rel_table,
               rel_buckets, rel_radius, rel_per_row, hold);
  p.out = out4(out);
  p.lse = lse.data_ptr<float>();
  check_launch(attention_fwd(p, c10::cuda::getCurrentCUDAStream()), "attention_fwd_native");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& dout, const std::optional<at::Tensor>& dlse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& q_lengths,
    const std::optional<at::Tensor>& kv_lengths, const std::optional<at::Tensor>& seed,
    bool causal, double scale, double dropout_p, bool mask_grad, int64_t window_left,
    int64_t window_right, double softcap, const std::optional<at::Tensor>& alibi_slopes,
    const std::optional<at::Tensor>& rel_table, const std::optional<at::Tensor>& rel_buckets,
    int64_t rel_radius, bool rel_per_row, bool rel_grad) {
  TORCH_CHECK(q.is_cuda(), "attention_bwd_native (cuda): q must be a CUDA tensor");
  to_dtype(q.scalar_type(), "attention_bwd_native");
  const c10::cuda::CUDAGuard guard(q.device());
  const attention_args::Inputs in =
      attention_args::inputs(q, k, v, attn_mask, q_lengths, kv_lengths, seed, dropout_p);
  check_head_dim(in.D);
  const attention_args::BwdExtras ex =
      attention_args::bwd_extras(in, dout, dlse, out, lse, mask_grad);
  auto [dq, dk, dv, dmask_full] = attention_args::bwd_outputs(in, mask_grad);
  dq = aligned_output(dq);
  dk = aligned_output(dk);
  dv = aligned_output(dv);
  const at::Tensor dout_a = aligned(ex.dout);
  const at::Tensor out_a = aligned(ex.out);
  at::Tensor delta = at::empty({in.B, in.Hq, in.Lq}, in.q.options().dtype(at::kFloat));

  Holders hold;
  BwdParams p;
  p.pb = make_problem(in, attn_mask, seed, causal, scale, dropout_p, hold);
  set_variants(p.pb, in, window_left, window_right, softcap, alibi_slopes, rel_table,
               rel_buckets, rel_radius, rel_per_row, hold);
  // The relative-bias gradient: the dQ blocks' workspace rows (zeroed) and
  // their reduction per relative position (attention.h, BwdParams::drel).
  at::Tensor drel_rows, drel = at::empty({0}, in.q.options());
  if (rel_grad && p.pb.rel_bias != nullptr) {
    const int64_t bm = drel_block_rows(p.pb.dtype);
    const int64_t width = in.Lk + bm - 1;
    const int64_t tiles_m = (in.Lq + bm - 1) / bm;
    drel_rows = at::zeros({in.B * in.Hq * tiles_m, width}, in.q.options().dtype(at::kFloat));
    drel = at::empty({in.Hq, 2 * rel_radius + 1}, in.q.options().dtype(at::kFloat));
    p.drel_rows = drel_rows.data_ptr<float>();
    p.drel_width = width;
    p.drel = drel.data_ptr<float>();
  }
  p.dout = view4(dout_a);
  p.out = view4(out_a);
  p.lse = ex.lse.data_ptr<float>();
  p.dlse = ex.dlse.defined() ? ex.dlse.data_ptr<float>() : nullptr;
  p.delta = delta.data_ptr<float>();
  p.dq = out4(dq);
  p.dk = out4(dk);
  p.dv = out4(dv);
  p.dmask = dmask_full.defined() ? dmask_full.data_ptr<float>() : nullptr;
  check_launch(attention_bwd(p, c10::cuda::getCurrentCUDAStream()), "attention_bwd_native");
  return {dq, dk, dv, attention_args::reduce_mask_grad(dmask_full, attn_mask, q), drel};
}

}  // namespace
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("attention_fwd_native", &fastattn::cuda::attn::attention_fwd_cuda);
  m.impl("attention_bwd_native", &fastattn::cuda::attn::attention_bwd_cuda);
}
