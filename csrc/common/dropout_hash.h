// Counter-based dropout decisions shared by the C++ CPU and CUDA kernels.
//
// Bit-exact mirror of fastattn/_rng.py (read its docstring for the design):
// a dropout decision is a pure function of (seed, row, col), so the backward
// regenerates the forward's mask and every backend draws the same mask.
//
//   a    = mix32(seed_lo ^ mix32(seed_hi ^ mix32(row)))   // once per row
//   b    = mix32(a ^ 0x9E3779B9)
//   bits = mix32(mix32(col ^ a) ^ b)                      // per element
//   keep = bits >= threshold,  threshold = min(floor(p * 2^32), 2^32 - 1)
//
// All arithmetic is on uint32_t, i.e. modulo 2^32 as in the Python version.
// This header includes no torch header so that pure-CUDA .cu files can use it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTATTN_HD __host__ __device__ __forceinline__
#else
#define FASTATTN_HD inline
#endif

namespace fastattn {
namespace dropout {

// 32-bit xor-shift / multiply mixer ("lowbias32" constants); a bijection.
FASTATTN_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The two per-row keys of the hash. `row` is the logical (flattened) row
// index of the operation; only its low 32 bits enter, as in _rng.row_keys.
struct RowKeys {
  uint32_t a;
  uint32_t b;
};

FASTATTN_HD RowKeys row_keys(uint64_t seed, uint64_t row) {
  const uint32_t seed_lo = static_cast<uint32_t>(seed);
  const uint32_t seed_hi = static_cast<uint32_t>(seed >> 32);
  RowKeys k;
  k.a = mix32(seed_lo ^ mix32(seed_hi ^ mix32(static_cast<uint32_t>(row))));
  k.b = mix32(k.a ^ 0x9E3779B9u);
  return k;
}

// The 32-bit word of element (row, col); `col` is the logical column index.
FASTATTN_HD uint32_t bits(RowKeys k, uint32_t col) { return mix32(mix32(col ^ k.a) ^ k.b); }

// Keep an element iff bits >= threshold. Same rounding as
// _rng.dropout_threshold: p * 2^32 is exact in double, then truncated.
FASTATTN_HD uint32_t threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

FASTATTN_HD bool keep(RowKeys k, uint32_t col, uint32_t thresh) { return bits(k, col) >= thresh; }

}  // namespace dropout
}  // namespace fastattn
