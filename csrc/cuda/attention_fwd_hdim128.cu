// Forward tensor-core kernels of head-dim bucket 128, every feature variant,
// float16 and bfloat16 (one file per bucket: a parallel build compiles the
// buckets side by side).
#include "cuda/attention_fwd.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace detail {

FASTATTN_INSTANTIATE_FWD_TC(128)

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
