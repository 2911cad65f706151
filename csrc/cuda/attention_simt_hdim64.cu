// float32 CUDA-core kernels (forward, dK/dV, dQ) of head-dim bucket 64,
// every feature variant (one file per bucket: a parallel build compiles the
// buckets side by side).
#include "cuda/attention_simt.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

FASTATTN_INSTANTIATE_SIMT(64)

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
