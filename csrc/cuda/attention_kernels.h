// Per-kernel launchers of the CUDA attention passes (plain C++, no torch or
// CUDA device headers). The public launchers of attention.h are made of
// these: attention_fwd is one kernel, attention_bwd is delta, then dK/dV,
// then dQ. They are exposed for tests and timing (dev/cuda's standalone
// check times each kernel on its own); same arguments and rules as
// attention.h's, and the same kernel variants (attention_variants.h).
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/attention.h"
#include "cuda/attention_variants.h"

namespace fastattn {
namespace cuda {
namespace attn {

// delta = rowsum(dout * out) - dlse (every dtype). Needs p.dout, p.out,
// p.lse, p.dlse (or nullptr), p.delta.
cudaError_t attention_bwd_delta(const BwdParams& p, cudaStream_t stream);
// dK and dV (tensor cores for float16/bfloat16, CUDA cores for float32);
// reads the delta that attention_bwd_delta wrote.
cudaError_t attention_bwd_dkdv(const BwdParams& p, cudaStream_t stream);
// dQ and, when p.dmask is set, the bias gradient; reads delta too.
cudaError_t attention_bwd_dq(const BwdParams& p, cudaStream_t stream);
// With p.drel: the relative-bias gradient per relative position, from the
// workspace rows attention_bwd_dq filled (a no-op without p.drel).
cudaError_t attention_bwd_drel(const BwdParams& p, cudaStream_t stream);

namespace detail {

// Entry points of one (dtype, head-dim bucket): each dispatches over the
// features of the problem and launches. Defined in attention_fwd.cuh,
// attention_bwd.cuh and attention_simt.cuh; explicitly instantiated in the
// attention_{fwd,bwd_dkdv,bwd_dq,simt}_hdim<D>.cu files, one file per bucket
// and pass so that a parallel build compiles them side by side.
template <DType DT, int D>
cudaError_t fwd_tc(const FwdParams& p, cudaStream_t stream);
template <DType DT, int D>
cudaError_t bwd_dkdv_tc(const BwdParams& p, cudaStream_t stream);
template <DType DT, int D>
cudaError_t bwd_dq_tc(const BwdParams& p, cudaStream_t stream);
template <int D>
cudaError_t fwd_simt(const FwdParams& p, cudaStream_t stream);
template <int D>
cudaError_t bwd_dkdv_simt(const BwdParams& p, cudaStream_t stream);
template <int D>
cudaError_t bwd_dq_simt(const BwdParams& p, cudaStream_t stream);

}  // namespace detail
}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
