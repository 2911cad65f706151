// Test cases of the standalone check (cases.h).
#include "cases.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "lowp.h"

namespace check {

using fastattn::cuda::attn::for_each_variant;
using fastattn::cuda::attn::head_dim_bucket;

uint64_t Rng::next() {
  uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u = uniform(), v = uniform();
  if (u < 1e-300) u = 1e-300;
  const double r = std::sqrt(-2.0 * std::log(u)), t = 6.283185307179586 * v;
  spare_ = r * std::sin(t);
  has_spare_ = true;
  return r * std::cos(t);
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

DType mask_dtype(MaskKind m) {
  switch (m) {
    case MaskKind::kFloat16: return DType::kFloat16;
    case MaskKind::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

std::vector<double> normal_tensor(Rng& rng, size_t n, DType dt, double scale = 1.0) {
  std::vector<double> t(n);
  for (double& x : t) x = round_to(dt, rng.normal() * scale);
  return t;
}

// Dropout seeds use both 32-bit halves (the hash mixes seed_hi too) and stay
// below 2^62, as fastattn._rng draws them.
uint64_t dropout_seed(uint64_t case_seed) {
  return ((case_seed * 0x9E3779B97F4A7C15ull) ^ 0x2545F4914F6CDD1Dull) & ((1ull << 62) - 1);
}

}  // namespace

AttnData make_attn_data(const AttnCase& c) {
  AttnData data;
  AttnProblem& pb = data.pb;
  Rng rng(c.seed);
  pb.dtype = c.dtype;
  pb.B = c.B;
  pb.Hq = c.Hq;
  pb.Hkv = c.Hkv;
  pb.Lq = c.Lq;
  pb.Lk = c.Lk;
  pb.D = c.D;
  pb.causal = c.causal;
  pb.window_left = c.window_left;
  pb.window_right = c.window_right;
  pb.softcap = c.softcap;
  if (c.alibi) {  // ALiBi's geometric slopes 2^(-8 (h + 1) / Hq), halved per batch row
    pb.alibi_sb = c.alibi_per_batch ? c.Hq : 0;
    for (int b = 0; b < (c.alibi_per_batch ? c.B : 1); ++b) {
      for (int h = 0; h < c.Hq; ++h) {
        pb.alibi.push_back(static_cast<float>(std::exp2(-8.0 * (h + 1) / c.Hq - b)));
      }
    }
  }
  pb.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  pb.dropout_p = c.dropout_p;
  pb.seed = dropout_seed(c.seed);
  const size_t nq = static_cast<size_t>(c.B) * c.Hq * c.Lq * c.D;
  const size_t nk = static_cast<size_t>(c.B) * c.Hkv * c.Lk * c.D;
  if (c.probe == Probe::kDropoutMask) {
    // q = 0: every allowed score is 0, p uniform over the allowed keys;
    // v[j] = e_j: out[i, c] = p_ic * keep_ic / (1 - p_drop).
    pb.q.assign(nq, 0.0);
    pb.k = normal_tensor(rng, nk, c.dtype);
    pb.v.assign(nk, 0.0);
    for (int b = 0; b < c.B; ++b) {
      for (int h = 0; h < c.Hkv; ++h) {
        for (int j = 0; j < c.Lk && j < c.D; ++j) {
          pb.v[((static_cast<size_t>(b) * c.Hkv + h) * c.Lk + j) * c.D + j] = 1.0;
        }
      }
    }
  } else {
    pb.q = normal_tensor(rng, nq, c.dtype);
    pb.k = normal_tensor(rng, nk, c.dtype);
    pb.v = normal_tensor(rng, nk, c.dtype);
  }
  pb.dout = normal_tensor(rng, nq, c.dtype);
  if (c.dlse) pb.dlse = normal_tensor(rng, static_cast<size_t>(c.B) * c.Hq * c.Lq, DType::kFloat32);

  // Lengths: one batch row keeps the full length, one (of several) has no keys.
  pb.q_len.assign(c.B, c.Lq);
  pb.kv_len.assign(c.B, c.Lk);
  for (int b = 0; b < c.B; ++b) {
    if (c.lengths == Lengths::kQ || c.lengths == Lengths::kBoth) {
      pb.q_len[b] = b == 0 ? c.Lq : rng.below(c.Lq + 1);
    }
    if (c.lengths == Lengths::kKv || c.lengths == Lengths::kBoth) {
      pb.kv_len[b] = (c.B > 1 && b == c.B - 1) ? 0 : rng.below(c.Lk + 1);
      if (b == 0 && c.B > 1) pb.kv_len[b] = c.Lk;
    }
  }

  // Mask: stored densely in its own shape, viewed as (B, Hq, Lq, Lk).
  pb.mask_kind = c.mask;
  if (c.mask != MaskKind::kNone) {
    int sb = c.B, sh = c.Hq, sq = c.Lq, sk = c.Lk;  // stored dims
    const int64_t LqLk = static_cast<int64_t>(c.Lq) * c.Lk;
    switch (c.mask_shape) {
      case MaskShape::kHeads1: sh = 1; pb.ms_b = LqLk; pb.ms_h = 0; pb.ms_q = c.Lk; pb.ms_k = 1; break;
      case MaskShape::kBatch1: sb = 1; pb.ms_b = 0; pb.ms_h = LqLk; pb.ms_q = c.Lk; pb.ms_k = 1; break;
      case MaskShape::kKeyRow: sh = 1; sq = 1; pb.ms_b = c.Lk; pb.ms_h = 0; pb.ms_q = 0; pb.ms_k = 1; break;
      case MaskShape::kQueryCol: sh = 1; sk = 1; pb.ms_b = c.Lq; pb.ms_h = 0; pb.ms_q = 1; pb.ms_k = 0; break;
      case MaskShape::kTransposed:
        pb.ms_b = c.Hq * LqLk; pb.ms_h = LqLk; pb.ms_q = 1; pb.ms_k = c.Lq; break;
      default: pb.ms_b = c.Hq * LqLk; pb.ms_h = LqLk; pb.ms_q = c.Lk; pb.ms_k = 1; break;
    }
    data.mask_elems = static_cast<int64_t>(sb) * sh * sq * sk;
    pb.mask.assign(data.mask_elems, 0.0);
    const bool is_bool = c.mask == MaskKind::kBool;
    for (double& m : pb.mask) m = is_bool ? (rng.uniform() < 0.7 ? 1.0 : 0.0) : round_to(mask_dtype(c.mask), rng.normal());
    // One query row that attends nothing: batch row 0, query 1 % Lq (every
    // head it covers): all false (bool) or all -inf (bias).
    const int i = 1 % c.Lq;
    for (int h = 0; h < sh; ++h) {
      for (int j = 0; j < sk; ++j) {
        if (c.mask_shape == MaskShape::kKeyRow || c.mask_shape == MaskShape::kQueryCol) continue;
        pb.mask[0 * pb.ms_b + h * pb.ms_h + i * pb.ms_q + j * pb.ms_k] = is_bool ? 0.0 : -kInf;
      }
    }
  }
  return data;
}

std::string attn_shape(const AttnCase& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "B%d H%d/%d L%dx%d", c.B, c.Hq, c.Hkv, c.Lq, c.Lk);
  return buf;
}

std::string attn_features(const AttnCase& c) {
  static const char* shapes[] = {"", "full", "h1", "b1", "krow", "qcol", "T"};
  std::string s = "mask=";
  s += fastattn::cuda::attn::mask_kind_name(c.mask);
  if (c.mask != MaskKind::kNone) {
    s += "/";
    s += shapes[static_cast<int>(c.mask_shape)];
  }
  if (c.causal) s += " causal";
  if (c.window_left >= 0 || c.window_right >= 0) {
    s += " win=(" + std::to_string(c.window_left) + "," + std::to_string(c.window_right) + ")";
  }
  if (c.alibi) s += c.alibi_per_batch ? " alibi/b" : " alibi";
  if (c.softcap > 0) s += " softcap";
  if (c.dropout_p > 0) s += " drop";
  if (c.lengths == Lengths::kQ) s += " qlen";
  if (c.lengths == Lengths::kKv) s += " kvlen";
  if (c.lengths == Lengths::kBoth) s += " q+kvlen";
  if (c.strided) s += " strided";
  if (c.dlse) s += " dlse";
  if (c.mask_grad) s += " dmask";
  return s;
}

namespace {

struct Shape {
  int B, Hq, Hkv, Lq, Lk;
  Lengths len;
  bool strided;
};

// Shapes of the general variants: odd lengths (partial tiles), GQA, cross
// (Lq != Lk both ways), decode (Lq = 1), lengths (one batch row without
// keys), strided layouts.
const Shape kGeneral[] = {
    {2, 4, 2, 129, 129, Lengths::kNone, false},  {2, 2, 1, 70, 200, Lengths::kBoth, false},
    {3, 4, 4, 1, 257, Lengths::kKv, false},      {1, 3, 1, 150, 33, Lengths::kQ, true},
    {2, 2, 2, 65, 100, Lengths::kBoth, true},    {1, 2, 1, 17, 9, Lengths::kNone, false},
};
// Shapes of the even variants: Lq, Lk multiples of 64, no lengths.
const Shape kEven[] = {
    {2, 4, 2, 128, 128, Lengths::kNone, false},
    {1, 2, 1, 64, 192, Lengths::kNone, true},
    {2, 2, 2, 192, 64, Lengths::kNone, false},  // causal: the first 128 rows attend nothing
};

int pick_head_dim(int bucket, int n, bool even) {
  if (even) return bucket;
  switch (bucket) {
    case 32: { const int d[] = {32, 24, 8, 16}; return d[n % 4]; }
    case 64: { const int d[] = {64, 40, 56}; return d[n % 3]; }
    case 96: { const int d[] = {96, 80, 72}; return d[n % 3]; }
    case 128: { const int d[] = {128, 104, 120}; return d[n % 3]; }
    default: { const int d[] = {256, 136, 200, 248}; return d[n % 4]; }
  }
}

AttnCase variant_case(const Variant& v, int n) {
  AttnCase c;
  c.group = "variant";
  c.dtype = v.dtype;
  c.mask = v.mask;
  // Banded variants rotate through causal, a two-sided window (narrow enough
  // to skip whole key and query tiles of the larger shapes) and both.
  if (v.banded) {
    switch (n % 3) {
      case 0: c.causal = true; break;
      case 1: c.window_left = 40; c.window_right = 17; break;
      default: c.causal = true; c.window_left = 70; break;
    }
  }
  // Score-term variants rotate through ALiBi, softcap and both.
  if (v.score_terms) {
    c.alibi = n % 3 != 1;
    c.alibi_per_batch = n % 2 == 0;
    if (n % 3 != 0) c.softcap = 2.0;
  }
  c.dropout_p = v.dropout ? 0.2 : 0.0;
  const Shape& s = v.even ? kEven[n % 3] : kGeneral[n % 6];
  c.B = s.B;
  c.Hq = s.Hq;
  c.Hkv = s.Hkv;
  c.Lq = s.Lq;
  c.Lk = s.Lk;
  c.lengths = s.len;
  c.strided = s.strided;
  c.D = pick_head_dim(v.head_dim, n / 6, v.even);
  if (c.mask == MaskKind::kBool) {
    const MaskShape shapes[] = {MaskShape::kHeads1, MaskShape::kFull, MaskShape::kKeyRow,
                                MaskShape::kBatch1};
    c.mask_shape = shapes[n % 4];
  } else if (c.mask != MaskKind::kNone) {
    const MaskShape shapes[] = {MaskShape::kFull,     MaskShape::kBatch1,     MaskShape::kKeyRow,
                                MaskShape::kQueryCol, MaskShape::kTransposed, MaskShape::kHeads1};
    c.mask_shape = shapes[(n / 2) % 6];
    c.mask_grad = n % 3 != 2;
  }
  c.dlse = n % 2 == 0;
  c.seed = 1000 + n;
  return c;
}

}  // namespace

std::vector<AttnCase> attention_cases(bool quick) {
  std::vector<AttnCase> cases;
  int n = 0;
  for_each_variant([&](const Variant& v) { cases.push_back(variant_case(v, n++)); });

  // Exact dropout masks: every dtype, causal or not (Lk <= D: v one-hot).
  const DType dtypes[] = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  for (DType dt : dtypes) {
    for (int causal = 0; causal < 2; ++causal) {
      AttnCase c;
      c.group = "dropout";
      c.dtype = dt;
      c.B = 2;
      c.Hq = 2;
      c.Hkv = 1;
      c.Lq = 100;
      c.Lk = 61;
      c.D = 64;
      c.causal = causal != 0;
      c.dropout_p = 0.3;
      c.seed = 77 + causal;
      c.probe = Probe::kDropoutMask;
      cases.push_back(c);
    }
  }
  if (quick) return cases;

  auto medium = [&](DType dt, int B, int Hq, int Hkv, int Lq, int Lk, int D, MaskKind m,
                    MaskShape ms, bool causal, double p, Lengths len) {
    AttnCase c;
    c.group = "medium";
    c.dtype = dt;
    c.B = B;
    c.Hq = Hq;
    c.Hkv = Hkv;
    c.Lq = Lq;
    c.Lk = Lk;
    c.D = D;
    c.mask = m;
    c.mask_shape = ms;
    c.causal = causal;
    c.dropout_p = p;
    c.lengths = len;
    c.mask_grad = m != MaskKind::kNone && m != MaskKind::kBool;
    c.dlse = true;
    c.seed = 5000 + static_cast<uint64_t>(cases.size());
    cases.push_back(c);
  };
  using MK = MaskKind;
  using MS = MaskShape;
  medium(DType::kFloat16, 2, 8, 2, 1024, 1024, 128, MK::kNone, MS::kNone, true, 0.0, Lengths::kNone);
  medium(DType::kBFloat16, 2, 4, 4, 777, 1000, 64, MK::kNone, MS::kNone, false, 0.1, Lengths::kKv);
  medium(DType::kFloat16, 1, 4, 1, 512, 512, 256, MK::kBool, MS::kHeads1, true, 0.0, Lengths::kNone);
  medium(DType::kFloat32, 2, 4, 2, 512, 512, 128, MK::kNone, MS::kNone, true, 0.0, Lengths::kNone);
  medium(DType::kBFloat16, 2, 4, 4, 640, 640, 80, MK::kFloat32, MS::kBatch1, false, 0.0, Lengths::kNone);
  medium(DType::kFloat16, 8, 16, 2, 1, 4096, 64, MK::kNone, MS::kNone, false, 0.0, Lengths::kKv);
  return cases;
}

// ------------------------------------------------------------------ norms

NormProblem make_norm_data(const NormCase& c) {
  NormProblem np;
  Rng rng(c.seed);
  np.dtype = c.dtype;
  np.rows = c.rows;
  np.cols = c.cols;
  np.is_rms = c.is_rms;
  np.eps = c.is_rms ? 1e-6 : 1e-5;
  np.dropout_p = c.dropout_p;
  np.seed = dropout_seed(c.seed);
  np.store_h = c.prenorm;
  const size_t n = static_cast<size_t>(c.rows) * c.cols;
  np.x.resize(n);
  for (double& x : np.x) x = c.ones ? 1.0 : round_to(c.dtype, rng.normal() * 2.0 + 0.5);
  if (c.residual) np.residual = normal_tensor(rng, n, c.dtype);
  if (c.weight) {
    np.weight.resize(c.cols);
    for (double& w : np.weight) w = round_to(c.dtype, rng.normal() + 1.0);
  }
  if (c.bias && !c.is_rms) np.bias = normal_tensor(rng, c.cols, c.dtype);
  np.dy = normal_tensor(rng, n, c.dtype);
  if (c.prenorm) np.dh_out = normal_tensor(rng, n, c.dtype);
  return np;
}

std::string norm_shape(const NormCase& c) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%dx%d", c.rows, c.cols);
  std::string s = buf;
  if (c.row_pad) s += " pad" + std::to_string(c.row_pad);
  if (c.misalign) s += " misal";
  return s;
}

std::string norm_features(const NormCase& c) {
  std::string s = c.is_rms ? "rms" : "ln";
  if (c.weight) s += " w";
  if (c.bias && !c.is_rms) s += " b";
  if (c.residual) s += " res";
  if (c.dropout_p > 0) s += " drop";
  if (c.prenorm) s += " prenorm";
  const NormPath p = norm_path(c);
  s += p.fwd_looped ? " fwd:loop" : " fwd:reg";
  s += p.fwd_vec ? "/v" : "/1";
  s += p.bwd_looped ? " bwd:loop" : " bwd:reg";
  s += p.bwd_vec ? "/v" : "/1";
  return s;
}

NormPath norm_path(const NormCase& c) {
  const int vec = 16 / static_cast<int>(dtype_size(c.dtype));
  const int stride = c.cols + c.row_pad;
  // Every pointer is a fresh allocation (aligned) except a misaligned x;
  // cols and the input row strides must be multiples of the vector width.
  const bool vec_ok = c.cols % vec == 0 && stride % vec == 0;
  NormPath p;
  p.fwd_looped = c.cols > 1024 * 16;
  p.bwd_looped = c.cols > 1024 * 8;
  p.fwd_vec = vec_ok && !c.misalign;
  p.bwd_vec = vec_ok;  // the backward reads h (the forward's output or x)
  if (c.misalign && !(c.residual || c.dropout_p > 0)) p.bwd_vec = false;  // h is x itself
  return p;
}

std::vector<NormCase> norm_cases(bool quick) {
  std::vector<NormCase> cases;
  const DType dtypes[] = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  uint64_t seed = 300;
  for (DType dt : dtypes) {
    auto add = [&](int rows, int cols, bool rms, bool w, bool b, bool res, bool prenorm,
                   double p, int pad = 0, bool misalign = false) {
      NormCase c;
      c.group = "paths";
      c.dtype = dt;
      c.rows = rows;
      c.cols = cols;
      c.is_rms = rms;
      c.weight = w;
      c.bias = b;
      c.residual = res;
      c.prenorm = prenorm;
      c.dropout_p = p;
      c.row_pad = pad;
      c.misalign = misalign;
      c.seed = seed++;
      cases.push_back(c);
    };
    add(33, 1000, false, true, true, false, false, 0.0);           // reg, vector
    add(7, 129, true, true, false, true, true, 0.25);             // reg, scalar, prenorm
    add(3, 20001, false, true, true, false, false, 0.0);          // looped, scalar
    add(5, 24576, true, true, false, true, false, 0.1);           // looped, vector
    add(100, 64, false, false, false, false, false, 0.0);         // several rows per block
    add(4, 12000, false, true, true, true, true, 0.0);            // fwd reg, bwd looped
    add(64, 4096, false, true, false, false, false, 0.0, 8);      // padded row stride
    add(9, 2048, true, true, false, true, false, 0.0, 0, true);   // misaligned x: scalar
    // The exact dropout probe: x = 1, RMS without weight: h = keep / (1 - p).
    NormCase probe;
    probe.group = "dropout";
    probe.dtype = dt;
    probe.rows = 16;
    probe.cols = 300;
    probe.is_rms = true;
    probe.weight = probe.bias = false;
    probe.prenorm = true;
    probe.dropout_p = 0.3;
    probe.ones = true;
    probe.seed = seed++;
    cases.push_back(probe);
    if (!quick) {
      NormCase m;
      m.group = "medium";
      m.dtype = dt;
      m.rows = 4096;
      m.cols = 4096;
      m.residual = true;
      m.prenorm = true;
      m.seed = seed++;
      cases.push_back(m);
    }
  }
  return cases;
}

}  // namespace check
