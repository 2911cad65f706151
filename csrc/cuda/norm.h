// Launcher API of the CUDA norm kernels (csrc/cuda/norm.cu).
//
// Plain C++ types only (no torch headers), so the kernels compile as pure
// CUDA and the torch binding (norm_binding.cpp) stays thin. Contract and math:
// fastattn/ops/norm.py. Matrices are (rows, cols) with unit column stride and
// the given row stride (in elements); outputs are contiguous. Device pointers
// throughout; an optional input or output is nullptr when absent.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastattn {
namespace cuda {

enum class DType { kFloat16, kBFloat16, kFloat32 };

struct NormFwdParams {
  const void* x = nullptr;         // (rows, cols) input
  int64_t x_row_stride = 0;
  const void* residual = nullptr;  // (rows, cols) or nullptr
  int64_t residual_row_stride = 0;
  const void* weight = nullptr;    // (cols,) or nullptr (= 1)
  const void* bias = nullptr;      // (cols,) or nullptr (= 0)
  const int64_t* seed = nullptr;   // dropout seed, one int64 on the device
  void* y = nullptr;               // (rows, cols) output
  void* h = nullptr;               // (rows, cols) output of dropout(x) + residual, or nullptr
  float* mean = nullptr;           // (rows,) output, nullptr for RMS norm
  float* rstd = nullptr;           // (rows,) output
  int64_t rows = 0, cols = 0;
  float eps = 0.f;
  double dropout_p = 0.0;          // 0 disables dropout (seed may then be nullptr)
  bool is_rms = false;
  DType dtype = DType::kFloat32;
};

struct NormBwdParams {
  const void* dy = nullptr;        // (rows, cols) gradient of y
  int64_t dy_row_stride = 0;
  const void* dh_out = nullptr;    // (rows, cols) gradient reaching h directly, or nullptr
  int64_t dh_out_row_stride = 0;
  const void* h = nullptr;         // (rows, cols) the normalized input
  int64_t h_row_stride = 0;
  const void* weight = nullptr;    // (cols,) or nullptr
  const float* mean = nullptr;     // (rows,), nullptr for RMS norm
  const float* rstd = nullptr;     // (rows,)
  const int64_t* seed = nullptr;   // dropout seed (device)
  void* dx = nullptr;              // (rows, cols) output
  void* dresidual = nullptr;       // (rows, cols) output, or nullptr
  void* dweight = nullptr;         // (cols,) output, or nullptr
  void* dbias = nullptr;           // (cols,) output, or nullptr
  float* partials = nullptr;       // workspace: norm_bwd_partial_floats() floats
  int64_t rows = 0, cols = 0;
  double dropout_p = 0.0;
  bool is_rms = false;
  DType dtype = DType::kFloat32;
};

// Number of floats of the backward's dweight/dbias workspace (per-block
// partial sums, reduced in a fixed order: deterministic for a given GPU).
// `sm_count`: multiprocessors of the device the backward runs on.
int64_t norm_bwd_partial_floats(int64_t rows, int64_t cols, int sm_count);

// Enqueue the kernels on `stream`; return the launch error (cudaSuccess if none).
cudaError_t norm_fwd(const NormFwdParams& p, cudaStream_t stream);
cudaError_t norm_bwd(const NormBwdParams& p, int sm_count, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastattn
