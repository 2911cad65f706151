// CPU references of the attention and norm kernels, in three precisions:
//
//   kTruth     float64 everywhere, from the exact inputs: the ground truth
//              (fastattn.reference on float64 inputs);
//   kBaseline  "plain PyTorch in the low precision" (fastattn.testing's
//              baseline, reference.py run with compute_dtype = the dtype):
//              every tensor op accumulates in float32 and rounds its result
//              to the dtype, as PyTorch's CPU ops do for float16/bfloat16
//              (and computes in float32 for float32). The rounding points:
//                attention fwd  s = q k^T, s * scale, (softcap: s / cap,
//                               tanh, * cap), s + bias (the bias itself
//                               rounded to the dtype), ALiBi's term and
//                               s - term, softmax p,
//                               p / (1 - p_drop), out = p v; lse rounded;
//                attention bwd  s - lse, p = exp(.), dp = dout v^T,
//                               keep / (1 - p_drop), p * f, dp * f,
//                               dout * out, delta = rowsum(.) (- dlse),
//                               dp - delta, ds = p (.), (softcap: t * t,
//                               1 - ., ds * .), ds k, scale * (.),
//                               ds^T q, p^T dout, the GQA sum over heads;
//                norm fwd       float32 math, h and y rounded;
//                norm bwd       float32 math, dh rounded (+ dh_out rounded),
//                               dx, dresidual, dweight, dbias rounded.
//   kKernel    an emulation of the kernels' own precision (float32 math,
//              the probabilities and dS rounded to the dtype where they enter
//              a tensor-core MMA, outputs rounded): only for --dry, to show
//              that the error budget is within reach of such arithmetic.
//
// The error budget (judge.h) compares a result's max error vs kTruth with
// kBaseline's. All tensors are dense row-major doubles holding values that
// are exactly representable in their dtype.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cuda/attention.h"

namespace check {

using fastattn::cuda::attn::DType;
using fastattn::cuda::attn::MaskKind;

enum class Prec { kTruth, kBaseline, kKernel };

// One attention problem, as the reference sees it: q (B, Hq, Lq, D),
// k/v (B, Hkv, Lk, D), dout like q, dlse (B, Hq, Lq) or empty. The mask is
// `mask` read at b * ms_b + h * ms_h + i * ms_q + j * ms_k (0 = broadcast);
// bool masks hold 0/1. q_len / kv_len: per batch row, clamped.
struct AttnProblem {
  DType dtype = DType::kFloat32;
  int B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  std::vector<double> q, k, v, dout, dlse;
  MaskKind mask_kind = MaskKind::kNone;
  std::vector<double> mask;
  int64_t ms_b = 0, ms_h = 0, ms_q = 0, ms_k = 0;
  std::vector<int> q_len, kv_len;
  bool causal = false;
  double scale = 1.0;
  double dropout_p = 0.0;
  uint64_t seed = 0;
  // Variants (API.md): query i may attend key j only if
  // i + off - window_left <= j <= i + off + window_right (-1 = unbounded,
  // off = kv_len - q_len); softcap > 0: s = softcap * tanh(s / softcap)
  // before the bias and ALiBi; ALiBi adds -alibi[b * alibi_sb + h] *
  // |i + off - j| (alibi empty: none; alibi_sb = 0 for (1, Hq) slopes).
  int window_left = -1, window_right = -1;
  double softcap = 0.0;
  std::vector<double> alibi;
  int alibi_sb = 0;
};

struct AttnFwd {
  std::vector<double> out;  // (B, Hq, Lq, D)
  std::vector<double> lse;  // (B, Hq, Lq), -inf for empty rows
};

struct AttnBwd {
  std::vector<double> dq, dk, dv;  // like q, k, v
  std::vector<double> ds;          // (B, Hq, Lq, Lk): the full bias gradient
  std::vector<double> delta;       // (B, Hq, Lq)
};

// out and lse of `pb` in precision `prec`.
AttnFwd attention_fwd_ref(const AttnProblem& pb, Prec prec);
// Gradients of `pb` given the forward's out and lse (each precision's own).
AttnBwd attention_bwd_ref(const AttnProblem& pb, const std::vector<double>& out,
                          const std::vector<double>& lse, Prec prec);
// delta = rowsum(dout * out) - (dlse where lse is finite), for the delta
// kernel's check (out, lse: the kernel's forward outputs).
std::vector<double> attention_delta_ref(const AttnProblem& pb, const std::vector<double>& out,
                                        const std::vector<double>& lse, Prec prec);

// Whether the dropout of `pb` keeps element (b, h, i, j) (the hash of
// csrc/common/dropout_hash.h, row (b * Hq + h) * Lq + i, col j).
bool attention_keeps(const AttnProblem& pb, int b, int h, int i, int j);

// One norm problem: x, residual (or empty), weight/bias (or empty) in the
// dtype; dy, dh_out (or empty) for the backward. Rows are contiguous.
struct NormProblem {
  DType dtype = DType::kFloat32;
  int rows = 0, cols = 0;
  bool is_rms = false;
  double eps = 1e-5;
  double dropout_p = 0.0;
  uint64_t seed = 0;
  bool store_h = false;
  std::vector<double> x, residual, weight, bias, dy, dh_out;
};

struct NormFwd {
  std::vector<double> y, h;      // (rows, cols); h = dropout(x) + residual (x if neither)
  std::vector<double> mean, rstd;  // (rows,)
};

struct NormBwd {
  std::vector<double> dx, dres, dweight, dbias;
};

NormFwd norm_fwd_ref(const NormProblem& np, Prec prec);
// Gradients given h, mean and rstd of a forward (each precision's own).
NormBwd norm_bwd_ref(const NormProblem& np, const NormFwd& fwd, Prec prec);
bool norm_keeps(const NormProblem& np, int row, int col);

// Runs fn(i) for i in [0, n) on all hardware threads (each i once).
void parallel_for(int n, const std::function<void(int)>& fn);

}  // namespace check
