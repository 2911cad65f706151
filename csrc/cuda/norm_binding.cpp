// Torch side of the CUDA norm kernels: fastattn::norm_fwd_native /
// norm_bwd_native for CUDA tensors (contract: fastattn/ops/norm.py).
//
// Checks the arguments (csrc/common/norm_args.h), allocates the outputs and
// the backward's dweight/dbias workspace, and calls the pure-CUDA launchers
// of norm.h on the current stream of the tensors' device. The stream comes
// from c10::cuda::getCurrentCUDAStream (what at::cuda::getCurrentCUDAStream
// forwards to) so that this file needs no cuBLAS/cuSPARSE headers.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "common/norm_args.h"
#include "cuda/norm.h"

namespace fastattn {
namespace cuda {
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

// Data pointer of an optional (undefined = absent) tensor.
const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* out_or_null(at::Tensor& t) { return t.numel() > 0 ? t.data_ptr() : nullptr; }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// The cuda kernels read weight and bias in the data's dtype (no float32
// parameters of half data yet: fastattn/ops/norm.py sends those elsewhere).
void check_same_param_dtype(const at::Tensor& w, const at::Tensor& b, at::ScalarType data,
                            const char* what) {
  for (const at::Tensor* t : {&w, &b}) {
    TORCH_CHECK(!t->defined() || t->scalar_type() == data, what,
                ": the cuda kernels take weight and bias in the data's dtype ", data, ", got ",
                t->scalar_type());
  }
}

// Multiprocessors of `device`: the backward sizes its grid (and so its
// dweight/dbias partial sums) by it.
int sm_count_of(const at::Device& device) {
  int count = 0;
  check_launch(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device.index()),
               "cudaDeviceGetAttribute");
  return count;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_fwd_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& seed, double eps, double dropout_p, bool is_rms,
    bool store_h) {
  TORCH_CHECK(x.is_cuda(), "norm_fwd_native (cuda): x must be a CUDA tensor");
  const DType dtype = to_dtype(x.scalar_type(), "norm_fwd_native");
  const c10::cuda::CUDAGuard guard(x.device());
  const norm_args::FwdInputs in =
      norm_args::fwd_inputs(x, residual, weight, bias, seed, eps, dropout_p);
  check_same_param_dtype(in.weight, in.bias, x.scalar_type(), "norm_fwd_native");
  auto [y, h, mean, rstd] = norm_args::fwd_outputs(in, is_rms, store_h);

  NormFwdParams p;
  p.x = in.x.data_ptr();
  p.x_row_stride = in.x.stride(0);
  p.residual = ptr_or_null(in.residual);
  p.residual_row_stride = in.residual.defined() ? in.residual.stride(0) : 0;
  p.weight = ptr_or_null(in.weight);
  p.bias = ptr_or_null(in.bias);
  p.seed = dropout_p > 0.0 ? seed->data_ptr<int64_t>() : nullptr;
  p.y = y.data_ptr();
  p.h = out_or_null(h);
  p.mean = is_rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.rows = in.m;
  p.cols = in.n;
  p.eps = static_cast<float>(eps);
  p.dropout_p = dropout_p;
  p.is_rms = is_rms;
  p.dtype = dtype;
  check_launch(norm_fwd(p, c10::cuda::getCurrentCUDAStream()), "norm_fwd_native");
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_bwd_cuda(
    const at::Tensor& dy, const std::optional<at::Tensor>& dh_out, const at::Tensor& h,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
    double dropout_p, bool is_rms, bool has_residual) {
  TORCH_CHECK(h.is_cuda(), "norm_bwd_native (cuda): h must be a CUDA tensor");
  const DType dtype = to_dtype(h.scalar_type(), "norm_bwd_native");
  const c10::cuda::CUDAGuard guard(h.device());
  const norm_args::BwdInputs in =
      norm_args::bwd_inputs(dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p, is_rms);
  check_same_param_dtype(in.weight, in.bias, h.scalar_type(), "norm_bwd_native");
  auto [dx, dres, dw, db] = norm_args::bwd_outputs(in, dropout_p, has_residual);

  const int sm_count = sm_count_of(h.device());
  at::Tensor partials;
  if (dw.numel() > 0 || db.numel() > 0) {
    partials = at::empty({norm_bwd_partial_floats(in.m, in.n, sm_count)},
                         h.options().dtype(at::kFloat));
  }

  NormBwdParams p;
  p.dy = in.dy.data_ptr();
  p.dy_row_stride = in.dy.stride(0);
  p.dh_out = ptr_or_null(in.dh_out);
  p.dh_out_row_stride = in.dh_out.defined() ? in.dh_out.stride(0) : 0;
  p.h = in.h.data_ptr();
  p.h_row_stride = in.h.stride(0);
  p.weight = ptr_or_null(in.weight);
  p.mean = is_rms ? nullptr : in.mean.data_ptr<float>();
  p.rstd = in.rstd.data_ptr<float>();
  p.seed = dropout_p > 0.0 ? seed->data_ptr<int64_t>() : nullptr;
  p.dx = dx.data_ptr();
  p.dresidual = out_or_null(dres);
  p.dweight = out_or_null(dw);
  p.dbias = out_or_null(db);
  p.partials = partials.defined() ? partials.data_ptr<float>() : nullptr;
  p.rows = in.m;
  p.cols = in.n;
  p.dropout_p = dropout_p;
  p.is_rms = is_rms;
  p.dtype = dtype;
  check_launch(norm_bwd(p, sm_count, c10::cuda::getCurrentCUDAStream()), "norm_bwd_native");
  return {dx, dres, dw, db};
}

}  // namespace
}  // namespace cuda
}  // namespace fastattn

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("norm_fwd_native", &fastattn::cuda::norm_fwd_cuda);
  m.impl("norm_bwd_native", &fastattn::cuda::norm_bwd_cuda);
}
