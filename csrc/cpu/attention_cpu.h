// Parameters and entry points of the C++ CPU attention kernels: forward in
// attention_fwd.cpp, backward in attention_bwd.cpp, torch binding in
// attention.cpp. Contract and math: fastattn/ops/attention.py and
// fastattn/reference.py (_attention, _attention_bwd).
#pragma once

#include <cstdint>

#include "cpu/attention_scores.h"
#include "cpu/attention_tiles.h"

namespace fastattn {
namespace cpu {

// Query rows and keys per tile. A tile's score block (64 x 64 floats, 16 KiB)
// and its q, k, v, output slices (64 x D each) stay in L2 for every D <= 256.
constexpr int64_t kBlockM = 64;
constexpr int64_t kBlockN = 64;

// Query columns a key-major score tile computes for `rows` valid query rows:
// rounded up to whole vectors of the target (VB bytes), so the products run
// on full vectors; the extra columns hold zero queries and are never stored.
template <int VB, typename A>
constexpr int64_t tile_columns(int64_t rows) {
  constexpr int64_t w = VB / static_cast<int64_t>(sizeof(A));
  const int64_t cols = (rows + w - 1) / w * w;
  return cols < kBlockM ? cols : kBlockM;
}

// Strides (elements) of a (B, H, L, D) tensor whose last dim is contiguous;
// of a packed (total, H, D) one, b is unused (Problem::q_start, k_start).
struct Strides {
  int64_t b = 0, h = 0, l = 0;
};

// Dropout constants (fastattn._rng): keep iff bits >= thresh, kept values
// scaled by 1 / (1 - p).
struct DropoutCfg {
  bool on = false;
  uint64_t seed = 0;
  uint32_t thresh = 0;
  double scale = 1.0;
};

// Shapes, lengths, mask and flags of one call, shared by forward and backward.
struct Problem {
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  const int64_t* q_len = nullptr;   // (B,) valid query rows, clamped to [0, Lq]
  const int64_t* kv_len = nullptr;  // (B,) valid keys, clamped to [0, Lk]
  tiles::MaskView mask;             // (B, Hq, Lq, Lk) with broadcast strides
  bool causal = false;              // bottom-right: j <= i + kv_len - q_len
  double scale = 1.0;               // multiplies q . k
  DropoutCfg drop;
  ScoreMods mods;                   // windows, ALiBi, softcap, relative bias (attention_scores.h)
  // Packed sequences (attention_varlen): q, out, dout, dq are (total_q, H,
  // D) and k, v, dk, dv (total_k, H, D), sequence b's rows starting at token
  // q_start[b] / k_start[b]; lse and dlse (Hq, total_q). There are no
  // padded rows to write. Null for a padded batch.
  const int64_t* q_start = nullptr;
  const int64_t* k_start = nullptr;
  int64_t total_q = 0;

  bool packed() const { return q_start != nullptr; }
  // Element offset of batch row b in a query-side / key-side tensor.
  int64_t q_offset(const Strides& s, int64_t b) const {
    return packed() ? q_start[b] * s.l : b * s.b;
  }
  int64_t k_offset(const Strides& s, int64_t b) const {
    return packed() ? k_start[b] * s.l : b * s.b;
  }
  // Index of row 0 of (b, h) in lse and dlse.
  int64_t lse_row(int64_t b, int64_t h) const {
    return packed() ? h * total_q + q_start[b] : (b * Hq + h) * Lq;
  }
};

// Forward: T the input dtype, A = tiles::acc_t<T>.
template <typename T>
struct FwdParams {
  Problem pb;
  const T* q = nullptr;    // (B, Hq, Lq, D)
  const T* k = nullptr;    // (B, Hkv, Lk, D)
  const T* v = nullptr;    // (B, Hkv, Lk, D)
  T* out = nullptr;        // (B, Hq, Lq, D)
  // (B, Hq, Lq) contiguous (packed: (Hq, total_q)), natural log, float64 whatever T: the backward
  // recomputes p = e^(s - lse) and needs lse exact to far below a float's
  // rounding at |lse| (attention_bwd.cpp).
  double* lse = nullptr;
  Strides qs, ks, vs, os;
};

template <typename T>
struct BwdParams {
  Problem pb;
  const T* q = nullptr;     // (B, Hq, Lq, D)
  const T* k = nullptr;     // (B, Hkv, Lk, D)
  const T* v = nullptr;     // (B, Hkv, Lk, D)
  const T* dout = nullptr;  // (B, Hq, Lq, D)
  const T* out = nullptr;   // (B, Hq, Lq, D) the forward's output
  const double* lse = nullptr;             // like FwdParams::lse, float64
  const tiles::acc_t<T>* dlse = nullptr;   // like lse: dlse_i (0 where lse = -inf), or null
  T* dq = nullptr;          // (B, Hq, Lq, D)
  T* dk = nullptr;          // (B, Hkv, Lk, D)
  T* dv = nullptr;          // (B, Hkv, Lk, D)
  tiles::acc_t<T>* dbias = nullptr;  // (B, Hq, Lq, Lk) contiguous, or null
  // dq from each row's own sum of p dp instead of delta (attention_bwd.cpp)
  bool own_delta_dq = false;
  // (Hq, 2 R + 1) score gradient summed per relative position r (index
  // r + R) over the batch, for the relative bias table's gradient; or null
  double* drel = nullptr;
  Strides qs, ks, vs, dos, os, dqs, dks, dvs;
};

// Run the kernels over the whole problem (at::parallel_for inside).
template <typename T>
void attention_fwd_kernel(const FwdParams<T>& p);
template <typename T>
void attention_bwd_kernel(const BwdParams<T>& p);

}  // namespace cpu
}  // namespace fastattn
