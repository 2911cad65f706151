// Launcher API of the CUDA attention kernels (attention_fwd.cu,
// attention_bwd.cu, attention_simt.cu).
//
// Plain C++ types only (no torch headers): the kernels compile as pure CUDA
// and the torch binding (attention_binding.cpp) stays thin. Contract and
// math: fastattn/ops/attention.py and fastattn/reference.py.
//
// Tensors are described by a device pointer and their strides in elements:
// q/out/dq (B, Hq, Lq, D), k/v/dk/dv (B, Hkv, Lk, D), each with a contiguous
// last dim and any batch/head/sequence strides. For float16/bfloat16 the
// pointers must be 16-byte aligned and the batch/head/sequence strides
// multiples of 8 elements (the tensor-core kernels copy 16-byte chunks with
// cp.async); attention_strides_ok() says whether a tensor qualifies, the
// binding copies those that do not. float32 has no alignment requirement.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastattn {
namespace cuda {
namespace attn {

enum class DType { kFloat16, kBFloat16, kFloat32 };

// Element type of attn_mask: none, bool (one byte, nonzero = may attend) or
// an additive bias (converted to float32 on load). A bias must be in the
// data's dtype or in float32: the launchers return cudaErrorInvalidValue
// for other pairings (a float16 bias of bfloat16 data, a 16-bit bias of
// float32 data), which have no kernels (attention_variants.h).
enum class MaskKind { kNone, kBool, kFloat16, kBFloat16, kFloat32 };

// A (B, H, L, D) tensor with unit stride in D.
struct Tensor4 {
  const void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_l = 0;
};

// A writable (B, H, L, D) tensor with unit stride in D.
struct OutTensor4 {
  void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_l = 0;
};

// Arguments shared by the forward and the backward.
struct Problem {
  Tensor4 q, k, v;
  const void* mask = nullptr;       // (B, Hq, Lq, Lk) view, any strides (0 = broadcast)
  int64_t mask_stride_b = 0, mask_stride_h = 0, mask_stride_q = 0, mask_stride_k = 0;
  MaskKind mask_kind = MaskKind::kNone;
  const int32_t* q_lengths = nullptr;   // (B,) valid query rows per batch row, or nullptr (= Lq)
  const int32_t* kv_lengths = nullptr;  // (B,) valid keys per batch row, or nullptr (= Lk)
  const int64_t* seed = nullptr;        // dropout seed (one int64 on the device), or nullptr
  double dropout_p = 0.0;               // 0 disables dropout
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  float scale = 1.f;                    // multiplies q.k
  bool causal = false;                  // bottom-right aligned per batch row
  DType dtype = DType::kFloat32;
  // Attention variants (API.md, "Attention variants"), with off = kv_len -
  // q_len per batch row (the offset `causal` uses): key j may be attended by
  // query i only if i + off - window_left <= j <= i + off + window_right (a
  // side of -1 is unbounded; the binding clamps each side to Lq + Lk, past
  // which it bounds nothing); ALiBi adds -slope[b, h] * |i + off - j|;
  // softcap > 0 turns the scaled score s into softcap * tanh(s / softcap)
  // before ALiBi and the relative bias. ALiBi, softcap and the relative
  // bias have kernels without attn_mask only (attention_variants.h).
  int window_left = -1, window_right = -1;
  const float* alibi_slopes = nullptr;  // (B, Hq) or (1, Hq) float32 contiguous, or nullptr
  int64_t alibi_stride_b = 0;           // Hq for (B, Hq), 0 for (1, Hq)
  float softcap = 0.f;                  // 0 = off
  // T5's relative bias (a score term too), in log2 units: entry
  // rel_bias[h * rel_stride + kRelPad + R + r] is the bias of relative
  // position r = j - i - (Lk - Lq), R = rel_radius >= Lq + Lk. The kRelPad
  // zeros on either side keep the tiles' rows and keys past Lq / Lk (up to
  // one tile, at most 64) inside the array, so no pair is bounds-checked.
  const float* rel_bias = nullptr;      // (Hq, rel_stride) float32, or nullptr
  int64_t rel_stride = 0;               // 2 (kRelPad + R) + 1
  int64_t rel_radius = 0;
};

// Zeros on either side of each head's row of Problem::rel_bias.
constexpr int64_t kRelPad = 128;

// Query rows per block of the dQ kernels, which sum the score gradient per
// relative position (BwdParams::drel_rows): 64 on tensor cores, 16 for
// float32.
constexpr int64_t drel_block_rows(DType dtype) { return dtype == DType::kFloat32 ? 16 : 64; }

struct FwdParams {
  Problem pb;
  OutTensor4 out;        // (B, Hq, Lq, D) output
  float* lse = nullptr;  // (B, Hq, Lq) contiguous output, natural log, -inf for empty rows
};

struct BwdParams {
  Problem pb;
  Tensor4 dout;                 // (B, Hq, Lq, D) gradient of out
  Tensor4 out;                  // (B, Hq, Lq, D) forward output
  const float* lse = nullptr;   // (B, Hq, Lq) contiguous, from the forward
  const float* dlse = nullptr;  // (B, Hq, Lq) contiguous gradient of lse, or nullptr
  float* delta = nullptr;       // workspace (B, Hq, Lq): rowsum(dout * out) - dlse
  OutTensor4 dq, dk, dv;        // outputs like q, k, v
  float* dmask = nullptr;       // (B, Hq, Lq, Lk) contiguous, zero-filled by the caller, or
                                // nullptr: the bias gradient of every pair that may attend
  // With Problem::rel_bias: the score gradient summed per relative position.
  // drel_rows: zero-filled workspace (B * Hq * ceil(Lq / BMq), drel_width)
  // where the dQ block of query rows [m0, m0 + BMq) of (b, h)
  // adds the gradient of pair (i, j) at u = j - i + m0 + BMq - 1 of its own
  // row (BMq = drel_block_rows); drel: (Hq, 2 R + 1) float32 output, written
  // by the launcher's reduction in a fixed order (deterministic), or nullptr.
  float* drel_rows = nullptr;
  int64_t drel_width = 0;       // Lk + BMq - 1
  float* drel = nullptr;
};

// Whether a 16-bit tensor meets the tensor-core kernels' alignment rules.
inline bool attention_strides_ok(const void* ptr, int64_t sb, int64_t sh, int64_t sl) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && sb % 8 == 0 && sh % 8 == 0 &&
         sl % 8 == 0;
}

// Enqueue the kernels on `stream`; return the first launch error (cudaSuccess
// if none). D must be a multiple of 8 in [8, 256]; B, Lq or Lk may be 0
// (Lk = 0 gives out = 0 and lse = -inf, Lq = 0 gives dk = dv = 0). Each
// problem runs on one compiled variant of the kernels (head-dim bucket,
// mask kind, banded (causal or window), dropout, even tiles, ALiBi/softcap:
// attention_variants.h); the
// backward's three kernels can also be launched one by one
// (attention_kernels.h).
cudaError_t attention_fwd(const FwdParams& p, cudaStream_t stream);
cudaError_t attention_bwd(const BwdParams& p, cudaStream_t stream);

// float32 kernels on CUDA cores (exact fp32 arithmetic, no TF32); called by
// attention_fwd / attention_bwd for DType::kFloat32.
cudaError_t attention_fwd_simt(const FwdParams& p, cudaStream_t stream);
cudaError_t attention_bwd_simt(const BwdParams& p, cudaStream_t stream);

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
