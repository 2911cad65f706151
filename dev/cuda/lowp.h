// Host-side float16 / bfloat16 / float32 storage and rounding (no CUDA
// headers): the check keeps every tensor as exact doubles on the host and
// as bits of its dtype on the device, and emulates low-precision arithmetic
// by rounding to the dtype where PyTorch would (reference.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda/attention.h"

namespace check {

using fastattn::cuda::attn::DType;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float -> IEEE binary16, round to nearest even (subnormals, inf, NaN).
inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | (absx > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (absx < 0x33000000u) return static_cast<uint16_t>(sign);              // < 2^-25: +-0
  const int exp = static_cast<int>(absx >> 23);                            // biased float exponent
  uint32_t mant = (absx & 0x7fffffu) | 0x800000u;                          // 24-bit significand
  int shift;                                                               // bits to drop
  uint32_t hexp;
  if (exp < 113) {  // half subnormal: value = mant * 2^(exp - 150), unit 2^-24
    shift = 126 - exp;
    hexp = 0;
  } else {
    shift = 13;
    hexp = static_cast<uint32_t>(exp - 112);
  }
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  // q holds the significand with its implicit bit (normal) or the subnormal
  // count; carries propagate into the exponent field naturally.
  uint32_t h = (hexp == 0) ? q : ((hexp << 10) + (q - 0x400u));
  return static_cast<uint16_t>(sign | h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

// float -> bfloat16, round to nearest even.
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// x rounded to `dt` (through float: double -> float -> dtype, as a float32
// computation stored in the dtype).
inline double round_to(DType dt, double x) {
  const float f = static_cast<float>(x);
  switch (dt) {
    case DType::kFloat16: return half_bits_to_float(float_to_half_bits(f));
    case DType::kBFloat16: return bf16_bits_to_float(float_to_bf16_bits(f));
    default: return f;
  }
}

inline size_t dtype_size(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }

// Machine epsilon and the absolute floor of fastattn.testing.ABS_FLOOR.
inline double dtype_eps(DType dt) {
  switch (dt) {
    case DType::kFloat16: return 0.0009765625;  // 2^-10
    case DType::kBFloat16: return 0.0078125;    // 2^-7
    default: return 1.1920928955078125e-07;     // 2^-23
  }
}
inline double abs_floor(DType dt) {
  switch (dt) {
    case DType::kFloat16: return 1e-4;
    case DType::kBFloat16: return 1e-3;
    default: return 1e-6;
  }
}

// Stores `v` (already representable in `dt`) as its bits at `dst`.
inline void store_elem(DType dt, void* dst, size_t idx, double v) {
  const float f = static_cast<float>(v);
  if (dt == DType::kFloat32) {
    static_cast<float*>(dst)[idx] = f;
  } else {
    static_cast<uint16_t*>(dst)[idx] =
        dt == DType::kFloat16 ? float_to_half_bits(f) : float_to_bf16_bits(f);
  }
}
inline double load_elem(DType dt, const void* src, size_t idx) {
  if (dt == DType::kFloat32) return static_cast<const float*>(src)[idx];
  const uint16_t b = static_cast<const uint16_t*>(src)[idx];
  return dt == DType::kFloat16 ? half_bits_to_float(b) : bf16_bits_to_float(b);
}

}  // namespace check
