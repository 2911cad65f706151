// Public launchers of the float32 CUDA-core attention kernels (attention.h):
// the kernels are in attention_simt.cuh, compiled per head-dim bucket in
// attention_simt_hdim<D>.cu. attention_fwd / attention_bwd route float32
// here; attention_bwd_simt expects the delta workspace filled already
// (attention_bwd_delta, attention_kernels.h).
#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {

cudaError_t attention_fwd_simt(const FwdParams& p, cudaStream_t stream) {
  if (!head_dim_ok(p.pb.D) || !mask_supported(DType::kFloat32, p.pb.mask_kind)) {
    return cudaErrorInvalidValue;
  }
  return with_head_dim(p.pb.D, [&](auto d) {
    return detail::fwd_simt<decltype(d)::value>(p, stream);
  });
}

cudaError_t attention_bwd_simt(const BwdParams& p, cudaStream_t stream) {
  if (!head_dim_ok(p.pb.D) || !mask_supported(DType::kFloat32, p.pb.mask_kind)) {
    return cudaErrorInvalidValue;
  }
  return with_head_dim(p.pb.D, [&](auto d) {
    constexpr int D = decltype(d)::value;
    const cudaError_t err = detail::bwd_dkdv_simt<D>(p, stream);
    return err != cudaSuccess ? err : detail::bwd_dq_simt<D>(p, stream);
  });
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
