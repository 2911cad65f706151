// Public launcher of the forward attention (attention.h): float16/bfloat16
// go to the tensor-core kernels (attention_fwd.cuh, compiled per head-dim
// bucket in attention_fwd_hdim<D>.cu), float32 to the CUDA-core kernels
// (attention_simt.cu).
#include "cuda/attention_kernels.h"
#include "cuda/attention_tiles.cuh"

namespace fastattn {
namespace cuda {
namespace attn {

cudaError_t attention_fwd(const FwdParams& p, cudaStream_t stream) {
  if (!head_dim_ok(p.pb.D)) return cudaErrorInvalidValue;
  if (!mask_supported(p.pb.dtype, p.pb.mask_kind)) return cudaErrorInvalidValue;
  switch (p.pb.dtype) {
    case DType::kFloat16:
      return with_head_dim(p.pb.D, [&](auto d) {
        return detail::fwd_tc<DType::kFloat16, decltype(d)::value>(p, stream);
      });
    case DType::kBFloat16:
      return with_head_dim(p.pb.D, [&](auto d) {
        return detail::fwd_tc<DType::kBFloat16, decltype(d)::value>(p, stream);
      });
    default:
      return attention_fwd_simt(p, stream);
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
