// Kernel variants of the CUDA attention launchers: which compiled kernel a
// Problem runs on.
//
// Every attention kernel is a template over its head-dim bucket and its
// features (mask kind, banded, dropout, even tiles, score terms); the
// launchers turn the
// run-time flags of a Problem into those template arguments once per launch
// (attention_tiles.cuh, with_features), so the kernels' score loops hold no
// run-time switch over features. This header holds the selection rules as
// plain C++ (no CUDA device code): the launchers and dev/cuda's standalone
// check (which must cover every variant) use the same functions.
//
// Features:
//   banded: each query row attends a band of keys narrower than the
//       lengths: causal, a sliding window, or both. The band's edges are
//       run-time values of the Problem (no kernel per window size), so a
//       window costs no extra variant;
//   score terms (ALiBi, softcap and/or T5's relative bias, their values at
//       run time): kernels of problems without attn_mask only; with a mask
//       such a call goes to another backend (fastattn/ops/attention.py says
//       why).
// Variants that exist (per pass: forward, dK/dV, dQ):
//   tensor cores, float16/bfloat16:  5 buckets x {none, bool, bias in the
//       data's dtype, float32 bias} x banded x dropout, not even; the even
//       variants of the unmasked kernels (x banded x dropout); the score-term
//       variants of the unmasked kernels, not even (x banded x dropout);
//   CUDA cores, float32 (no even variants: plain predicated loads):
//       5 buckets x {none, bool, float32 bias} x banded x dropout, plus the
//       score-term variants of the unmasked ones (x banded x dropout).
#pragma once

#include <cstdint>

#include "cuda/attention.h"

namespace fastattn {
namespace cuda {
namespace attn {

// Head-dim buckets: the kernels of bucket D serve the head dims in
// (previous bucket, D], zero-filling the columns past p.D in shared memory.
constexpr int kHeadDimBuckets[] = {32, 64, 96, 128, 256};
constexpr int kNumHeadDimBuckets = 5;

// The bucket of head dim D (0 if D is out of [1, 256]).
inline int head_dim_bucket(int64_t D) {
  if (D < 1) return 0;
  for (int b : kHeadDimBuckets) {
    if (D <= b) return b;
  }
  return 0;
}

// Whether the launchers accept head dim D: a multiple of 8 in [8, 256].
inline bool head_dim_ok(int64_t D) { return D >= 8 && D <= 256 && D % 8 == 0; }

// Whether a mask kind has kernels for data of `dtype`: none, bool, and an
// additive bias in the data's own dtype or in float32. The binding converts
// other biases (a float16 bias of bfloat16 data, say) to float32; the
// launchers reject them with cudaErrorInvalidValue.
constexpr bool mask_supported(DType dtype, MaskKind mask) {
  return mask == MaskKind::kNone || mask == MaskKind::kBool || mask == MaskKind::kFloat32 ||
         (mask == MaskKind::kFloat16 && dtype == DType::kFloat16) ||
         (mask == MaskKind::kBFloat16 && dtype == DType::kBFloat16);
}

// Whether "even" kernels exist: tensor-core kernels without a mask or
// score terms only. They skip every bounds check (loads, stores, the
// key/query tile ends) and mask only the band's edge tiles. Masked
// problems, whose score loop reads the mask anyway, and those with score
// terms run the general kernels (their interior tiles skip the bounds
// checks too, see attention_tiles.cuh).
constexpr bool even_supported(DType dtype, MaskKind mask, bool score_terms = false) {
  return dtype != DType::kFloat32 && mask == MaskKind::kNone && !score_terms;
}

// Whether score-term (ALiBi, softcap, relative bias) kernels exist for a mask kind: only
// without a mask (every dtype).
constexpr bool score_terms_supported(MaskKind mask) { return mask == MaskKind::kNone; }

// Whether a problem has score terms / a band.
inline bool has_score_terms(const Problem& pb) {
  return pb.alibi_slopes != nullptr || pb.softcap > 0.f || pb.rel_bias != nullptr;
}
inline bool is_banded(const Problem& pb) {
  return pb.causal || pb.window_left >= 0 || pb.window_right >= 0;
}

// Every tile size of every tensor-core kernel (64, 32, 16 rows or keys)
// divides this, so one rule serves all the kernels of a problem.
constexpr int64_t kEvenMultiple = 64;

// Whether a problem's tiles are "even": no lengths, Lq and Lk multiples of
// kEvenMultiple (possibly 0), and a head dim equal to its bucket.
inline bool even_tiles(const Problem& pb) {
  return pb.q_lengths == nullptr && pb.kv_lengths == nullptr && pb.Lq % kEvenMultiple == 0 &&
         pb.Lk % kEvenMultiple == 0 && pb.D == head_dim_bucket(pb.D);
}

// One compiled variant: the same for the forward and both backward kernels
// of a problem (the delta kernel is per dtype only).
struct Variant {
  DType dtype = DType::kFloat32;
  int head_dim = 0;  // the bucket
  MaskKind mask = MaskKind::kNone;
  bool banded = false;
  bool dropout = false;
  bool even = false;
  bool score_terms = false;
};

inline bool operator==(const Variant& a, const Variant& b) {
  return a.dtype == b.dtype && a.head_dim == b.head_dim && a.mask == b.mask &&
         a.banded == b.banded && a.dropout == b.dropout && a.even == b.even &&
         a.score_terms == b.score_terms;
}

// Whether `v` is compiled (what the launchers can run).
inline bool variant_exists(const Variant& v) {
  bool bucket = false;
  for (int b : kHeadDimBuckets) bucket = bucket || v.head_dim == b;
  return bucket && mask_supported(v.dtype, v.mask) &&
         (!v.even || even_supported(v.dtype, v.mask, v.score_terms)) &&
         (!v.score_terms || score_terms_supported(v.mask));
}

// The variant the launchers run `pb` on (check variant_exists: an
// unsupported mask kind, head dim or score terms with a mask give a variant
// that does not exist).
inline Variant select_variant(const Problem& pb) {
  Variant v;
  v.dtype = pb.dtype;
  v.head_dim = head_dim_bucket(pb.D);
  v.mask = pb.mask_kind;
  v.banded = is_banded(pb);
  v.dropout = pb.dropout_p > 0.0;
  v.score_terms = has_score_terms(pb);
  v.even = even_supported(pb.dtype, pb.mask_kind, v.score_terms) && even_tiles(pb);
  return v;
}

// Calls fn(const Variant&) for every compiled variant, in a fixed order.
template <typename Fn>
void for_each_variant(Fn&& fn) {
  const DType dtypes[] = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  const MaskKind masks[] = {MaskKind::kNone, MaskKind::kBool, MaskKind::kFloat16,
                            MaskKind::kBFloat16, MaskKind::kFloat32};
  for (DType dt : dtypes) {
    for (int d : kHeadDimBuckets) {
      for (MaskKind m : masks) {
        for (int flags = 0; flags < 16; ++flags) {
          Variant v;
          v.dtype = dt;
          v.head_dim = d;
          v.mask = m;
          v.banded = (flags & 1) != 0;
          v.dropout = (flags & 2) != 0;
          v.even = (flags & 4) != 0;
          v.score_terms = (flags & 8) != 0;
          if (variant_exists(v)) fn(v);
        }
      }
    }
  }
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    default: return "fp32";
  }
}

inline const char* mask_kind_name(MaskKind m) {
  switch (m) {
    case MaskKind::kNone: return "none";
    case MaskKind::kBool: return "bool";
    case MaskKind::kFloat16: return "fp16";
    case MaskKind::kBFloat16: return "bf16";
    default: return "fp32";
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
