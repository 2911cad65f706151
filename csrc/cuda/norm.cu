// CUDA kernels of layer norm, RMS norm and fused add & norm (pure CUDA: no
// torch headers; the torch side is norm_binding.cpp, the API is norm.h).
//
// Math (contract: fastattn/ops/norm.py), per row of N columns, in fp32:
//   h    = dropout(x) + residual, rounded to the storage type (the statistics
//          see h exactly as it is stored, like an unfused add then norm)
//   mean = sum(h) / N                          (0 for RMS norm)
//   rstd = 1 / sqrt(sum((h - mean)^2) / N + eps)
//   y    = (h - mean) * rstd * weight + bias
// Backward, with xhat = (h - mean) * rstd and g = dy * weight:
//   dh = rstd * (g - xhat * mean(g * xhat) - mean(g)) + dh_out (RMS: no mean(g))
//   dx = dh * keep / (1 - p),  dresidual = dh,
//   dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy).
//
// Work decomposition. A row is owned by blockDim.x threads: one warp for
// small N, up to a whole block of 1024 threads; blockDim.y rows share a block
// so that blocks stay >= 256 threads. Two paths per direction:
//   * register path: N <= blockDim.x * ELEMS; each thread keeps its ELEMS
//     elements of the row in registers, so x/residual/h/dy are read once and
//     the statistics are exact two-pass sums over registers;
//   * looped path (larger N, up to 65536): one block per row loops over the
//     row twice (statistics, then output), re-reading it from L2. Its forward
//     statistics use sums shifted by the row's first element, which keeps the
//     one-pass variance accurate when |mean| >> std.
// Loads and stores move VEC elements at once: 16 bytes when every pointer is
// 16-byte aligned and N and the row strides are multiples of VEC, else 1.
// Reductions: warp shuffles, then shared memory across the warps of a row;
// always in the same order, so results are bitwise reproducible.
// The backward accumulates dweight/dbias per block (register path: in
// registers, combined over the block's rows in shared memory; looped path:
// in the block's own row of the workspace) and a second small kernel sums
// those partial rows in a fixed order: deterministic, no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "common/dropout_hash.h"
#include "cuda/norm.h"

namespace fastattn {
namespace cuda {
namespace {

// Elements per thread kept in registers: forward holds h (ELEMS floats);
// backward holds xhat, g and the dweight/dbias accumulators (4 x ELEMS).
constexpr int kFwdElems = 16;
constexpr int kBwdElems = 8;
constexpr int kMaxThreads = 1024;
// Threads per block aimed at when several rows share a block.
constexpr int kRowGroupThreads = 256;
// Backward finalize kernel: 32 columns x kFinalizeSlices partial-row slices.
constexpr int kFinalizeSlices = 8;

// ------------------------------------------------------------ element I/O

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC adjacent elements moved by one aligned memory access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(pk.v[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// Optional per-column vector: `fill` where absent.
template <typename T, int VEC>
__device__ __forceinline__ void load_or(const T* p, int64_t col, float fill,
                                        float (&out)[VEC]) {
  if (p != nullptr) {
    load<T, VEC>(p + col, out);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = fill;
  }
}

// ------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
  // Butterfly: every lane ends with the same, order-fixed sum.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums K values over the blockDim.x threads that own this row (row group
// threadIdx.y); every thread gets the sums. Must be reached by all threads of
// the block. `smem` holds K floats per warp of the block (at most 32 warps).
template <int K>
__device__ __forceinline__ void row_sum(float (&v)[K], float* smem) {
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  const int warps = blockDim.x >> 5;
  if (warps == 1) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* slots = smem + threadIdx.y * warps * K;
  __syncthreads();  // the previous call's readers are done with smem
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) slots[warp * K + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < warps ? slots[lane * K + k] : 0.f);
}

// ---------------------------------------------------------------- forward

struct FwdArgs {
  NormFwdParams p;
  uint32_t threshold;  // dropout: keep iff hash bits >= threshold
  float scale;         // dropout: 1 / (1 - p)
  bool dropout;
};

// h at columns [col, col + VEC) of `row`: dropout(x) + residual, rounded to T
// when it differs from x. Stores h too if `store_h` and the caller wants it.
template <typename T, int VEC>
__device__ __forceinline__ void compute_h(const FwdArgs& a, int64_t row, int64_t col,
                                          dropout::RowKeys keys, bool store_h,
                                          float (&v)[VEC]) {
  const NormFwdParams& p = a.p;
  load<T, VEC>(static_cast<const T*>(p.x) + row * p.x_row_stride + col, v);
  if (a.dropout) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const bool kept = dropout::keep(keys, static_cast<uint32_t>(col + k), a.threshold);
      v[k] *= kept ? a.scale : 0.f;  // 0 * NaN stays NaN, as in the reference
    }
  }
  if (p.residual != nullptr) {
    float r[VEC];
    load<T, VEC>(static_cast<const T*>(p.residual) + row * p.residual_row_stride + col, r);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] += r[k];
  }
  if (a.dropout || p.residual != nullptr) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = to_float(from_float<T>(v[k]));
    if (store_h && p.h != nullptr) store<T, VEC>(static_cast<T*>(p.h) + row * p.cols + col, v);
  }
}

// y at columns [col, col + VEC) from h.
template <typename T, int VEC>
__device__ __forceinline__ void write_y(const NormFwdParams& p, int64_t row, int64_t col,
                                        float mean, float rstd, const float* hv) {
  float w[VEC], b[VEC], y[VEC];
  load_or<T, VEC>(static_cast<const T*>(p.weight), col, 1.f, w);
  load_or<T, VEC>(static_cast<const T*>(p.bias), col, 0.f, b);
#pragma unroll
  for (int k = 0; k < VEC; ++k) y[k] = (hv[k] - mean) * rstd * w[k] + b[k];
  store<T, VEC>(static_cast<T*>(p.y) + row * p.cols + col, y);
}

// Register path. Thread threadIdx.x of a row owns columns
// (i * blockDim.x + threadIdx.x) * VEC + [0, VEC) for i < ELEMS / VEC.
template <typename T, int VEC, int ELEMS>
__global__ void __launch_bounds__(kMaxThreads) norm_fwd_reg_kernel(const FwdArgs a) {
  constexpr int kLoads = ELEMS / VEC;
  __shared__ float smem[32];
  const NormFwdParams& p = a.p;
  const int64_t n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const uint64_t seed = a.dropout ? static_cast<uint64_t>(*p.seed) : 0;

  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * blockDim.y; row0 < p.rows;
       row0 += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t row = row0 + threadIdx.y;
    const bool row_ok = row < p.rows;  // such threads still join the reductions
    const dropout::RowKeys keys = dropout::row_keys(seed, static_cast<uint64_t>(row));

    float hv[ELEMS];
    float sum[1] = {0.f};
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      float v[VEC];
      if (row_ok && col < n) {
        compute_h<T, VEC>(a, row, col, keys, true, v);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = 0.f;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        hv[i * VEC + k] = v[k];
        sum[0] += v[k];
      }
    }
    float mean = 0.f;
    if (!p.is_rms) {
      row_sum<1>(sum, smem);
      mean = sum[0] * inv_n;
    }
    float sq[1] = {0.f};
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (col < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = hv[i * VEC + k] - mean;
          sq[0] += d * d;
        }
      }
    }
    row_sum<1>(sq, smem);
    const float rstd = rsqrtf(sq[0] * inv_n + p.eps);
    if (!row_ok) continue;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (col < n) write_y<T, VEC>(p, row, col, mean, rstd, hv + i * VEC);
    }
    if (threadIdx.x == 0) {
      if (p.mean != nullptr) p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
  }
}

// Looped path: one block (blockDim.y == 1) per row, two passes over the row.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) norm_fwd_loop_kernel(const FwdArgs a) {
  __shared__ float smem[64];
  const NormFwdParams& p = a.p;
  const int64_t n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const uint64_t seed = a.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;

  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const dropout::RowKeys keys = dropout::row_keys(seed, static_cast<uint64_t>(row));
    // Shift: h of column 0 for layer norm (any sample of the row works;
    // one near the mean avoids cancellation), 0 for RMS norm.
    float shift = 0.f;
    if (!p.is_rms) {
      float h0[1];
      compute_h<T, 1>(a, row, 0, keys, false, h0);
      shift = h0[0];
    }
    // Pass 1: shifted sums s1 = sum(h - K), s2 = sum((h - K)^2).
    float s[2] = {0.f, 0.f};
    for (int64_t col = static_cast<int64_t>(threadIdx.x) * VEC; col < n; col += step) {
      float v[VEC];
      compute_h<T, VEC>(a, row, col, keys, true, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = v[k] - shift;
        s[0] += d;
        s[1] += d * d;
      }
    }
    row_sum<2>(s, smem);
    const float m1 = s[0] * inv_n;
    const float mean = p.is_rms ? 0.f : shift + m1;
    const float var = p.is_rms ? s[1] * inv_n : fmaxf(s[1] * inv_n - m1 * m1, 0.f);
    const float rstd = rsqrtf(var + p.eps);
    // Pass 2: recompute h (bitwise the same values) and write y.
    for (int64_t col = static_cast<int64_t>(threadIdx.x) * VEC; col < n; col += step) {
      float v[VEC];
      compute_h<T, VEC>(a, row, col, keys, false, v);
      write_y<T, VEC>(p, row, col, mean, rstd, v);
    }
    if (threadIdx.x == 0) {
      if (p.mean != nullptr) p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
  }
}

// --------------------------------------------------------------- backward

struct BwdArgs {
  NormBwdParams p;
  uint32_t threshold;
  float scale;
  bool dropout;
  int64_t num_partials;  // rows of the dweight/dbias workspace (= gridDim.x)
};

// Loads xhat and g = dy * weight at columns [col, col + VEC) of `row`, and dy.
template <typename T, int VEC>
__device__ __forceinline__ void load_bwd(const NormBwdParams& p, int64_t row, int64_t col,
                                         float mean, float rstd, float* xh, float* g,
                                         float* dy) {
  float hv[VEC], dyv[VEC], w[VEC];
  load<T, VEC>(static_cast<const T*>(p.h) + row * p.h_row_stride + col, hv);
  load<T, VEC>(static_cast<const T*>(p.dy) + row * p.dy_row_stride + col, dyv);
  load_or<T, VEC>(static_cast<const T*>(p.weight), col, 1.f, w);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    xh[k] = (hv[k] - mean) * rstd;
    g[k] = dyv[k] * w[k];
    dy[k] = dyv[k];
  }
}

// dh from (xhat, g) and the row constants; writes dresidual and dx.
template <typename T, int VEC>
__device__ __forceinline__ void write_dx(const BwdArgs& a, int64_t row, int64_t col,
                                         dropout::RowKeys keys, float rstd, float c_gx,
                                         float c_g, const float* xh, const float* g) {
  const NormBwdParams& p = a.p;
  float dh[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) dh[k] = rstd * (g[k] - xh[k] * c_gx - c_g);
  if (p.dh_out != nullptr) {
    float d[VEC];
    load<T, VEC>(static_cast<const T*>(p.dh_out) + row * p.dh_out_row_stride + col, d);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dh[k] += d[k];
  }
  if (p.dresidual != nullptr) store<T, VEC>(static_cast<T*>(p.dresidual) + row * p.cols + col, dh);
  if (a.dropout) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const bool kept = dropout::keep(keys, static_cast<uint32_t>(col + k), a.threshold);
      dh[k] *= kept ? a.scale : 0.f;
    }
  }
  store<T, VEC>(static_cast<T*>(p.dx) + row * p.cols + col, dh);
}

// Register path; same column ownership as the forward. Grid-stride over row
// groups; dweight/dbias partials stay in registers until the end, then the
// block's row groups are combined in shared memory (in threadIdx.y order)
// into row blockIdx.x of the workspace.
template <typename T, int VEC, int ELEMS>
__global__ void __launch_bounds__(kMaxThreads) norm_bwd_reg_kernel(const BwdArgs a) {
  constexpr int kLoads = ELEMS / VEC;
  __shared__ float smem[64];
  __shared__ float combine[kRowGroupThreads * ELEMS];
  const NormBwdParams& p = a.p;
  const int64_t n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const uint64_t seed = a.dropout ? static_cast<uint64_t>(*p.seed) : 0;

  float dw[ELEMS], db[ELEMS];
#pragma unroll
  for (int e = 0; e < ELEMS; ++e) dw[e] = db[e] = 0.f;

  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * blockDim.y; row0 < p.rows;
       row0 += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t row = row0 + threadIdx.y;
    const bool row_ok = row < p.rows;
    const float mean = (row_ok && p.mean != nullptr) ? p.mean[row] : 0.f;
    const float rstd = row_ok ? p.rstd[row] : 0.f;
    float xh[ELEMS], g[ELEMS];
    float s[2] = {0.f, 0.f};  // sum(g * xhat), sum(g)
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      float dy[VEC];
      if (row_ok && col < n) {
        load_bwd<T, VEC>(p, row, col, mean, rstd, xh + i * VEC, g + i * VEC, dy);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) xh[i * VEC + k] = g[i * VEC + k] = dy[k] = 0.f;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const int e = i * VEC + k;
        s[0] += g[e] * xh[e];
        s[1] += g[e];
        dw[e] += dy[k] * xh[e];
        db[e] += dy[k];
      }
    }
    row_sum<2>(s, smem);
    const float c_gx = s[0] * inv_n;
    const float c_g = p.is_rms ? 0.f : s[1] * inv_n;
    if (!row_ok) continue;
    const dropout::RowKeys keys = dropout::row_keys(seed, static_cast<uint64_t>(row));
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (col < n) write_dx<T, VEC>(a, row, col, keys, rstd, c_gx, c_g, xh + i * VEC, g + i * VEC);
    }
  }

  if (p.dweight == nullptr && p.dbias == nullptr) return;
  float* dw_out = p.partials + static_cast<int64_t>(blockIdx.x) * n;
  float* db_out = p.partials + (a.num_partials + blockIdx.x) * n;
  if (blockDim.y == 1) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
      if (col < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          dw_out[col + k] = dw[i * VEC + k];
          db_out[col + k] = db[i * VEC + k];
        }
      }
    }
    return;
  }
  // Several row groups (blockDim.x * blockDim.y <= kRowGroupThreads): sum
  // them in threadIdx.y order, once for dweight and once for dbias.
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int which = 0; which < 2; ++which) {
    float* out = which == 0 ? dw_out : db_out;
    __syncthreads();
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) combine[e * kRowGroupThreads + tid] = which == 0 ? dw[e] : db[e];
    __syncthreads();
    if (threadIdx.y == 0) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int64_t col = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * VEC;
        if (col < n) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const int e = i * VEC + k;
            float acc = 0.f;
            for (int y = 0; y < static_cast<int>(blockDim.y); ++y) {
              acc += combine[e * kRowGroupThreads + y * blockDim.x + threadIdx.x];
            }
            out[col + k] = acc;
          }
        }
      }
    }
  }
}

// Looped path: one block per row, two passes (row sums, then dx). The
// dweight/dbias partials live in workspace row blockIdx.x; each column is
// only ever touched by the same thread, so no synchronisation is needed.
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) norm_bwd_loop_kernel(const BwdArgs a) {
  __shared__ float smem[64];
  const NormBwdParams& p = a.p;
  const int64_t n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const uint64_t seed = a.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const int64_t step = static_cast<int64_t>(blockDim.x) * VEC;
  const bool partials = p.dweight != nullptr || p.dbias != nullptr;
  float* dw_part = p.partials + static_cast<int64_t>(blockIdx.x) * n;
  float* db_part = p.partials + (a.num_partials + blockIdx.x) * n;
  if (partials) {
    for (int64_t col = static_cast<int64_t>(threadIdx.x) * VEC; col < n; col += step) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) dw_part[col + k] = db_part[col + k] = 0.f;
    }
  }

  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const float mean = p.mean != nullptr ? p.mean[row] : 0.f;
    const float rstd = p.rstd[row];
    float s[2] = {0.f, 0.f};
    for (int64_t col = static_cast<int64_t>(threadIdx.x) * VEC; col < n; col += step) {
      float xh[VEC], g[VEC], dy[VEC];
      load_bwd<T, VEC>(p, row, col, mean, rstd, xh, g, dy);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        s[0] += g[k] * xh[k];
        s[1] += g[k];
      }
    }
    row_sum<2>(s, smem);
    const float c_gx = s[0] * inv_n;
    const float c_g = p.is_rms ? 0.f : s[1] * inv_n;
    const dropout::RowKeys keys = dropout::row_keys(seed, static_cast<uint64_t>(row));
    for (int64_t col = static_cast<int64_t>(threadIdx.x) * VEC; col < n; col += step) {
      float xh[VEC], g[VEC], dy[VEC];
      load_bwd<T, VEC>(p, row, col, mean, rstd, xh, g, dy);
      write_dx<T, VEC>(a, row, col, keys, rstd, c_gx, c_g, xh, g);
      if (partials) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          dw_part[col + k] += dy[k] * xh[k];
          db_part[col + k] += dy[k];
        }
      }
    }
  }
}

// dweight/dbias = sum of the workspace's partial rows. Block: 32 columns x
// kFinalizeSlices slices of partial rows; the slices are combined in order.
template <typename T>
__global__ void __launch_bounds__(32 * kFinalizeSlices)
    norm_bwd_finalize_kernel(const float* partials,  // (2, num_partials, n): dw then db
                             int64_t num_partials, int64_t n,
                             T* dweight,  // (n,) or nullptr
                             T* dbias) {  // (n,) or nullptr
  __shared__ float red[2][kFinalizeSlices][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float sw = 0.f, sb = 0.f;
  if (col < n) {
    for (int64_t q = threadIdx.y; q < num_partials; q += kFinalizeSlices) {
      sw += partials[q * n + col];
      sb += partials[(num_partials + q) * n + col];
    }
  }
  red[0][threadIdx.y][threadIdx.x] = sw;
  red[1][threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y != 0 || col >= n) return;
  for (int y = 1; y < kFinalizeSlices; ++y) {
    sw += red[0][y][threadIdx.x];
    sb += red[1][y][threadIdx.x];
  }
  if (dweight != nullptr) dweight[col] = from_float<T>(sw);
  if (dbias != nullptr) dbias[col] = from_float<T>(sb);
}

// ------------------------------------------------------------ launch plans

int round_up_warp(int64_t v) { return static_cast<int>((v + 31) / 32 * 32); }

// Threads per row (blockDim.x), rows per block (blockDim.y), looped or not.
struct Shape {
  int threads;
  int rows_per_block;
  bool looped;
};

Shape plan_shape(int64_t cols, int elems) {
  if (cols > static_cast<int64_t>(kMaxThreads) * elems) return {kMaxThreads, 1, true};
  const int threads = round_up_warp((cols + elems - 1) / elems);
  const int rows = threads >= kRowGroupThreads ? 1 : kRowGroupThreads / threads;
  return {threads, rows, false};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Backward grid: enough blocks to fill the GPU (2048 resident threads per
// SM), no more, since each block adds one partial row to reduce.
int64_t bwd_grid(int64_t rows, int64_t cols, int sm_count) {
  const Shape s = plan_shape(cols, kBwdElems);
  const int64_t block_threads = static_cast<int64_t>(s.threads) * s.rows_per_block;
  const int64_t resident = static_cast<int64_t>(sm_count > 0 ? sm_count : 1) *
                           (2048 / block_threads > 0 ? 2048 / block_threads : 1);
  const int64_t needed = ceil_div(rows, s.rows_per_block);
  return needed < resident ? needed : resident;
}

// 16-byte vectors when every pointer and stride allows it.
bool aligned(const void* ptr, int vec, size_t elem) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % (vec * elem) == 0;
}

template <typename T>
int pick_vec(int64_t cols, std::initializer_list<const void*> ptrs,
             std::initializer_list<int64_t> strides) {
  constexpr int kVec = 16 / sizeof(T);
  if (cols % kVec != 0) return 1;
  for (const void* ptr : ptrs) {
    if (!aligned(ptr, kVec, sizeof(T))) return 1;
  }
  for (int64_t s : strides) {
    if (s % kVec != 0) return 1;
  }
  return kVec;
}

unsigned grid_size(int64_t blocks) {
  return static_cast<unsigned>(blocks < 0x7fffffff ? blocks : 0x7fffffff);
}

template <typename T, int VEC>
void launch_fwd(const FwdArgs& a, cudaStream_t stream) {
  const Shape s = plan_shape(a.p.cols, kFwdElems);
  if (s.looped) {
    norm_fwd_loop_kernel<T, VEC><<<grid_size(a.p.rows), s.threads, 0, stream>>>(a);
  } else {
    const dim3 block(s.threads, s.rows_per_block);
    norm_fwd_reg_kernel<T, VEC, kFwdElems>
        <<<grid_size(ceil_div(a.p.rows, s.rows_per_block)), block, 0, stream>>>(a);
  }
}

template <typename T>
cudaError_t norm_fwd_typed(const NormFwdParams& p, cudaStream_t stream) {
  FwdArgs a;
  a.p = p;
  a.dropout = p.dropout_p > 0.0;
  a.threshold = dropout::threshold(p.dropout_p);
  a.scale = static_cast<float>(1.0 / (1.0 - p.dropout_p));
  const int vec = pick_vec<T>(p.cols, {p.x, p.residual, p.weight, p.bias, p.y, p.h},
                              {p.x_row_stride, p.residual_row_stride});
  if (vec == 1) {
    launch_fwd<T, 1>(a, stream);
  } else {
    launch_fwd<T, 16 / sizeof(T)>(a, stream);
  }
  return cudaGetLastError();
}

template <typename T, int VEC>
void launch_bwd(const BwdArgs& a, cudaStream_t stream) {
  const Shape s = plan_shape(a.p.cols, kBwdElems);
  const unsigned grid = grid_size(a.num_partials);
  if (s.looped) {
    norm_bwd_loop_kernel<T, VEC><<<grid, s.threads, 0, stream>>>(a);
  } else {
    norm_bwd_reg_kernel<T, VEC, kBwdElems>
        <<<grid, dim3(s.threads, s.rows_per_block), 0, stream>>>(a);
  }
}

template <typename T>
cudaError_t norm_bwd_typed(const NormBwdParams& p, int sm_count, cudaStream_t stream) {
  BwdArgs a;
  a.p = p;
  a.dropout = p.dropout_p > 0.0;
  a.threshold = dropout::threshold(p.dropout_p);
  a.scale = static_cast<float>(1.0 / (1.0 - p.dropout_p));
  a.num_partials = bwd_grid(p.rows, p.cols, sm_count);
  if (p.rows > 0) {
    const int vec =
        pick_vec<T>(p.cols, {p.dy, p.dh_out, p.h, p.weight, p.dx, p.dresidual},
                    {p.dy_row_stride, p.dh_out_row_stride, p.h_row_stride});
    if (vec == 1) {
      launch_bwd<T, 1>(a, stream);
    } else {
      launch_bwd<T, 16 / sizeof(T)>(a, stream);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (p.dweight != nullptr || p.dbias != nullptr) {
    const dim3 block(32, kFinalizeSlices);
    norm_bwd_finalize_kernel<T><<<grid_size(ceil_div(p.cols, 32)), block, 0, stream>>>(
        p.partials, a.num_partials, p.cols, static_cast<T*>(p.dweight),
        static_cast<T*>(p.dbias));
  }
  return cudaGetLastError();
}

}  // namespace

int64_t norm_bwd_partial_floats(int64_t rows, int64_t cols, int sm_count) {
  return 2 * bwd_grid(rows, cols, sm_count) * cols;
}

cudaError_t norm_fwd(const NormFwdParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat16: return norm_fwd_typed<__half>(p, stream);
    case DType::kBFloat16: return norm_fwd_typed<__nv_bfloat16>(p, stream);
    case DType::kFloat32: return norm_fwd_typed<float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t norm_bwd(const NormBwdParams& p, int sm_count, cudaStream_t stream) {
  if (p.cols == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat16: return norm_bwd_typed<__half>(p, sm_count, stream);
    case DType::kBFloat16: return norm_bwd_typed<__nv_bfloat16>(p, sm_count, stream);
    case DType::kFloat32: return norm_bwd_typed<float>(p, sm_count, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastattn
