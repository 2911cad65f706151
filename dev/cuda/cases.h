// The test cases of the standalone check: attention cases that cover every
// compiled kernel variant (attention_variants.h: dtype x head-dim bucket x
// mask kind x banded (causal, window) x dropout x even x score terms (ALiBi,
// softcap)) on small odd shapes, a few medium
// shapes, exact dropout-mask probes, and norm cases that cover every norm
// kernel path (register / looped, scalar / 16-byte vector, forward /
// backward) in every dtype. Inputs are drawn from a fixed-seed generator and
// rounded to the case's dtype, so every run sees the same values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/attention_variants.h"
#include "reference.h"

namespace check {

using fastattn::cuda::attn::Variant;

// Layout of the mask in memory, viewed as (B, Hq, Lq, Lk).
enum class MaskShape {
  kNone,
  kFull,        // (B, Hq, Lq, Lk) contiguous
  kHeads1,      // (B, 1, Lq, Lk): broadcast over heads
  kBatch1,      // (1, Hq, Lq, Lk): broadcast over the batch
  kKeyRow,      // (B, 1, 1, Lk): one row per batch row (stride 0 over queries)
  kQueryCol,    // (B, 1, Lq, 1): one column (stride 0 over keys)
  kTransposed,  // (B, Hq, Lq, Lk) stored as (B, Hq, Lk, Lq): general strides
};

enum class Lengths { kNone, kQ, kKv, kBoth };

// What a case checks beyond the error budget.
enum class Probe {
  kNone,
  kDropoutMask,  // q = 0 and v one-hot: out[i, c] != 0 iff (i, c) may attend and is kept
};

struct AttnCase {
  std::string group;  // "variant", "medium", "dropout"
  DType dtype = DType::kFloat16;
  int B = 1, Hq = 1, Hkv = 1, Lq = 1, Lk = 1, D = 8;
  MaskKind mask = MaskKind::kNone;
  MaskShape mask_shape = MaskShape::kNone;
  bool causal = false;
  int window_left = -1, window_right = -1;  // -1 = unbounded
  bool alibi = false;                       // ALiBi slopes (B, Hq) or (1, Hq)
  bool alibi_per_batch = false;
  double softcap = 0.0;
  double dropout_p = 0.0;
  Lengths lengths = Lengths::kNone;
  bool strided = false;    // q, k, v, dout stored as (B, L, H, D)
  bool dlse = false;       // with a gradient of lse
  bool mask_grad = false;  // with the bias gradient (bias masks only)
  uint64_t seed = 1;       // data seed; the dropout seed derives from it
  Probe probe = Probe::kNone;
};

// The host side of a case: the reference problem plus memory layouts.
struct AttnData {
  AttnProblem pb;
  // Element strides of the stored mask (pb.mask is stored densely in its
  // own shape; these strides index it as (B, Hq, Lq, Lk)).
  int64_t mask_elems = 0;
};

AttnData make_attn_data(const AttnCase& c);
// Short descriptions for the table.
std::string attn_shape(const AttnCase& c);
std::string attn_features(const AttnCase& c);

// Every case of a run: `quick` keeps the variant cases (every instantiation
// once) and drops the medium shapes.
std::vector<AttnCase> attention_cases(bool quick);

struct NormCase {
  std::string group;  // "paths", "medium", "dropout"
  DType dtype = DType::kFloat32;
  int rows = 1, cols = 1;
  bool is_rms = false;
  bool weight = true, bias = true, residual = false, prenorm = false;
  double dropout_p = 0.0;
  int row_pad = 0;       // x / residual / dy row stride = cols + row_pad
  bool misalign = false;  // x starts one element past a 16-byte boundary
  uint64_t seed = 1;
  bool ones = false;      // x = 1 (the dropout probe: h == 0 iff dropped)
};

NormProblem make_norm_data(const NormCase& c);
std::string norm_shape(const NormCase& c);
std::string norm_features(const NormCase& c);
std::vector<NormCase> norm_cases(bool quick);

// The norm kernel paths of norm.cu (kept in sync with its launch plan:
// rows of up to 1024 * 16 columns in registers forward, 1024 * 8 backward;
// 16-byte vectors when every pointer, cols and the row strides allow).
struct NormPath {
  bool fwd_looped, bwd_looped, fwd_vec, bwd_vec;
};
NormPath norm_path(const NormCase& c);

// Deterministic generator (splitmix64 + Box-Muller).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next();
  double uniform();  // [0, 1)
  double normal();
  int below(int n) { return static_cast<int>(uniform() * n); }

 private:
  uint64_t s_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace check
