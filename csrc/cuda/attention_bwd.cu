// Backward attention: the delta preprocess kernel (every dtype), the
// reduction of the relative-bias gradient and the launchers. attention_bwd
// (attention.h) is delta, then dK/dV, then dQ, then (with p.drel) drel; the
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

constexpr int kDrelThreads = 256;

// drel[h, rr] (relative position r = rr - R) = the sum over batch rows b and
// query tiles of the dQ blocks' workspace rows (attention.h, drel_rows) at
// u = r + (Lk - Lq) + m0 + BMq - 1, in a fixed order: one thread per
// (head, relative position), consecutive threads reading consecutive u.
__global__ void __launch_bounds__(kDrelThreads) attention_bwd_drel_kernel(const BwdParams p,
                                                                          int64_t block_rows) {
  const Problem& pb = p.pb;
  const int64_t positions = 2 * pb.rel_radius + 1;
  const int64_t rr = static_cast<int64_t>(blockIdx.x) * kDrelThreads + threadIdx.x;
  const int64_t h = blockIdx.y;
  if (rr >= positions) return;
  const int64_t tiles_m = ceil_div(pb.Lq, block_rows);
  const int64_t u0 = rr - pb.rel_radius + (pb.Lk - pb.Lq) + block_rows - 1;
  float sum = 0.f;
  for (int64_t b = 0; b < pb.B; ++b) {
    const float* rows = p.drel_rows + (b * pb.Hq + h) * tiles_m * p.drel_width;
    for (int64_t mt = 0; mt < tiles_m; ++mt) {
      const int64_t u = u0 + mt * block_rows;
      if (u >= 0 && u < p.drel_width) sum += rows[mt * p.drel_width + u];
    }
  }
  p.drel[h * positions + rr] = sum;
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

cudaError_t attention_bwd_drel(const BwdParams& p, cudaStream_t stream) {
  if (p.drel == nullptr || p.pb.Hq == 0) return cudaSuccess;
  if (p.drel_rows == nullptr || p.pb.rel_bias == nullptr || p.pb.Hq > 65535) {
    return cudaErrorInvalidValue;
  }
  const int64_t positions = 2 * p.pb.rel_radius + 1;
  const dim3 grid(static_cast<unsigned>(ceil_div(positions, kDrelThreads)),
                  static_cast<unsigned>(p.pb.Hq));
  attention_bwd_drel_kernel<<<grid, kDrelThreads, 0, stream>>>(p, drel_block_rows(p.pb.dtype));
  return cudaGetLastError();
}

cudaError_t attention_bwd(const BwdParams& p, cudaStream_t stream) {
  cudaError_t err = attention_bwd_delta(p, stream);
  if (err == cudaSuccess) err = attention_bwd_dkdv(p, stream);
  if (err == cudaSuccess) err = attention_bwd_dq(p, stream);
  if (err == cudaSuccess) err = attention_bwd_drel(p, stream);
  return err;
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
