// Backward attention: the delta preprocess kernel (every dtype) and the
// launchers. attention_bwd (attention.h) is delta, then dK/dV, then dQ; the
// tensor-core kernels are in attention_bwd.cuh (compiled per head-dim bucket
// in attention_bwd_{dkdv,dq}_hdim<D>.cu), the float32 ones in
// attention_simt.cuh.
#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace {

constexpr int kDeltaWarps = 8;

// delta[row] = sum_d dout * out - (dlse[row] where lse is finite), one warp
// per (b, h, i) row. p: strides of dout/out, lse/dlse, the delta output.
template <typename T>
__global__ void __launch_bounds__(kDeltaWarps * 32) attention_bwd_delta_kernel(const BwdParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kDeltaWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const Problem& pb = p.pb;
  if (row >= pb.B * pb.Hq * pb.Lq) return;
  const int64_t i = row % pb.Lq, bh = row / pb.Lq;
  const int64_t b = bh / pb.Hq, h = bh % pb.Hq;
  const T* dout = static_cast<const T*>(p.dout.ptr) + b * p.dout.stride_b +
                  h * p.dout.stride_h + i * p.dout.stride_l;
  const T* out = static_cast<const T*>(p.out.ptr) + b * p.out.stride_b + h * p.out.stride_h +
                 i * p.out.stride_l;
  float sum = 0.f;
  for (int c = lane; c < pb.D; c += 32) {
    sum = fmaf(Elem<T>::to_float(dout[c]), Elem<T>::to_float(out[c]), sum);
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    const float lse = p.lse[row];
    const bool finite = lse != -INFINITY && lse != INFINITY && lse == lse;
    p.delta[row] = sum - (p.dlse != nullptr && finite ? p.dlse[row] : 0.f);
  }
}

template <typename T>
cudaError_t launch_delta(const BwdParams& p, cudaStream_t stream) {
  const int64_t rows = p.pb.B * p.pb.Hq * p.pb.Lq;
  return launch_kernel(attention_bwd_delta_kernel<T>, ceil_div(rows, kDeltaWarps),
                       kDeltaWarps * 32, 0, stream, p);
}

bool args_ok(const BwdParams& p) {
  return head_dim_ok(p.pb.D) && mask_supported(p.pb.dtype, p.pb.mask_kind);
}

}  // namespace

cudaError_t attention_bwd_delta(const BwdParams& p, cudaStream_t stream) {
  if (!args_ok(p)) return cudaErrorInvalidValue;
  switch (p.pb.dtype) {
    case DType::kFloat16: return launch_delta<__half>(p, stream);
    case DType::kBFloat16: return launch_delta<__nv_bfloat16>(p, stream);
    default: return launch_delta<float>(p, stream);
  }
}

cudaError_t attention_bwd_dkdv(const BwdParams& p, cudaStream_t stream) {
  if (!args_ok(p)) return cudaErrorInvalidValue;
  return with_head_dim(p.pb.D, [&](auto d) {
    constexpr int D = decltype(d)::value;
    switch (p.pb.dtype) {
      case DType::kFloat16: return detail::bwd_dkdv_tc<DType::kFloat16, D>(p, stream);
      case DType::kBFloat16: return detail::bwd_dkdv_tc<DType::kBFloat16, D>(p, stream);
      default: return detail::bwd_dkdv_simt<D>(p, stream);
    }
  });
}

cudaError_t attention_bwd_dq(const BwdParams& p, cudaStream_t stream) {
  if (!args_ok(p)) return cudaErrorInvalidValue;
  return with_head_dim(p.pb.D, [&](auto d) {
    constexpr int D = decltype(d)::value;
    switch (p.pb.dtype) {
      case DType::kFloat16: return detail::bwd_dq_tc<DType::kFloat16, D>(p, stream);
      case DType::kBFloat16: return detail::bwd_dq_tc<DType::kBFloat16, D>(p, stream);
      default: return detail::bwd_dq_simt<D>(p, stream);
    }
  });
}

cudaError_t attention_bwd(const BwdParams& p, cudaStream_t stream) {
  cudaError_t err = attention_bwd_delta(p, stream);
  if (err == cudaSuccess) err = attention_bwd_dkdv(p, stream);
  if (err == cudaSuccess) err = attention_bwd_dq(p, stream);
  return err;
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
