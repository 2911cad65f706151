// Backward dK/dV tensor-core kernels of head-dim bucket 96, every feature
// variant, float16 and bfloat16 (one file per pass and bucket: a parallel
// build compiles them side by side).
#include "cuda/attention_bwd.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

FASTATTN_INSTANTIATE_BWD_DKDV_TC(96)

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
