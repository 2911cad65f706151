// CPU references of the attention and norm kernels (reference.h): the math
// of fastattn/reference.py, materialized per (batch row, head).
#include "reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

#include "common/dropout_hash.h"
#include "lowp.h"

namespace check {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The arithmetic of one precision: `acc` rounds an accumulation step
// (float32 sums for the baseline and the kernel emulation, exact for the
// truth), `op` rounds the result of a PyTorch op (baseline only), `mma`
// rounds an operand entering a tensor-core MMA (kernel emulation only),
// `out` rounds a stored result.
struct Arith {
  Prec prec;
  DType dt;
  double acc(double x) const { return prec == Prec::kTruth ? x : static_cast<float>(x); }
  double op(double x) const { return prec == Prec::kBaseline ? round_to(dt, x) : acc(x); }
  double mma(double x) const {
    return prec == Prec::kKernel && dt != DType::kFloat32 ? round_to(dt, x) : x;
  }
  double out(double x) const { return prec == Prec::kTruth ? x : round_to(dt, x); }
  double exp(double x) const { return prec == Prec::kTruth ? std::exp(x) : std::exp(static_cast<float>(x)); }
  double log(double x) const { return prec == Prec::kTruth ? std::log(x) : std::log(static_cast<float>(x)); }
};

}  // namespace

void parallel_for(int n, const std::function<void(int)>& fn) {
  const int threads = std::max(1, std::min<int>(n, static_cast<int>(std::thread::hardware_concurrency())));
  if (threads <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

// ------------------------------------------------------------- attention

bool attention_keeps(const AttnProblem& pb, int b, int h, int i, int j) {
  const uint64_t row = (static_cast<uint64_t>(b) * pb.Hq + h) * pb.Lq + i;
  const auto keys = fastattn::dropout::row_keys(pb.seed, row);
  return fastattn::dropout::keep(keys, static_cast<uint32_t>(j),
                                 fastattn::dropout::threshold(pb.dropout_p));
}

namespace {

size_t idx4(int H, int L, int D, int b, int h, int i, int d) {
  return ((static_cast<size_t>(b) * H + h) * L + i) * D + d;
}

// Whether query i may attend key j by the lengths, causal and the window
// (off = kv_len - q_len).
bool in_band(const AttnProblem& pb, int ql, int kl, int i, int j) {
  const int off = kl - ql;
  if (i >= ql || j >= kl || (pb.causal && j > i + off)) return false;
  if (pb.window_left >= 0 && j < i + off - pb.window_left) return false;
  if (pb.window_right >= 0 && j > i + off + pb.window_right) return false;
  return true;
}

// The scaled, masked scores of (b, h) in precision `a`: s[i * Lk + j], -inf
// where query i may not attend key j (lengths, causal, window, bool mask).
// Truth: cap(q.k * scale) + bias - alibi. Baseline: each op rounded (the
// rounding points of reference.h). Kernel: float32. With a softcap, t[i *
// Lk + j] (if t is given) receives tanh(s / cap) (for the backward's
// 1 - t^2).
std::vector<double> scores(const AttnProblem& pb, const Arith& a, int b, int h,
                           std::vector<double>* t = nullptr) {
  const int hk = h / (pb.Hq / pb.Hkv);
  const int ql = pb.q_len[b], kl = pb.kv_len[b], off = kl - ql;
  std::vector<double> s(static_cast<size_t>(pb.Lq) * pb.Lk, -kInf);
  if (t != nullptr) t->assign(s.size(), 0.0);
  const double slope = pb.alibi.empty() ? 0.0 : pb.alibi[b * pb.alibi_sb + h];
  for (int i = 0; i < pb.Lq; ++i) {
    const double* qi = &pb.q[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, 0)];
    for (int j = 0; j < pb.Lk; ++j) {
      if (!in_band(pb, ql, kl, i, j)) continue;
      double m = 0.0;
      if (pb.mask_kind != MaskKind::kNone) {
        m = pb.mask[b * pb.ms_b + h * pb.ms_h + i * pb.ms_q + j * pb.ms_k];
        if (pb.mask_kind == MaskKind::kBool && m == 0.0) continue;
      }
      const double* kj = &pb.k[idx4(pb.Hkv, pb.Lk, pb.D, b, hk, j, 0)];
      double dot = 0.0;
      for (int d = 0; d < pb.D; ++d) dot = a.acc(dot + qi[d] * kj[d]);
      double x = a.op(a.op(dot) * pb.scale);
      if (pb.softcap > 0.0) {
        const double th = a.op(std::tanh(a.op(x / pb.softcap)));
        if (t != nullptr) (*t)[static_cast<size_t>(i) * pb.Lk + j] = th;
        x = a.op(th * pb.softcap);
      }
      if (pb.mask_kind != MaskKind::kNone && pb.mask_kind != MaskKind::kBool) {
        x = a.op(x + a.op(m));
      }
      if (!pb.alibi.empty()) x = a.op(x - a.op(slope * std::abs(i + off - j)));
      s[static_cast<size_t>(i) * pb.Lk + j] = x;
    }
  }
  return s;
}

double dropout_factor(const AttnProblem& pb, const Arith& a, int b, int h, int i, int j) {
  if (pb.dropout_p <= 0.0) return 1.0;
  return attention_keeps(pb, b, h, i, j) ? a.op(1.0 / (1.0 - pb.dropout_p)) : 0.0;
}

}  // namespace

AttnFwd attention_fwd_ref(const AttnProblem& pb, Prec prec) {
  const Arith a{prec, pb.dtype};
  AttnFwd r;
  r.out.assign(static_cast<size_t>(pb.B) * pb.Hq * pb.Lq * pb.D, 0.0);
  r.lse.assign(static_cast<size_t>(pb.B) * pb.Hq * pb.Lq, -kInf);
  parallel_for(pb.B * pb.Hq, [&](int bh) {
    const int b = bh / pb.Hq, h = bh % pb.Hq, hk = h / (pb.Hq / pb.Hkv);
    const std::vector<double> s = scores(pb, a, b, h);
    std::vector<double> p(pb.Lk);
    for (int i = 0; i < pb.Lq; ++i) {
      const double* si = &s[static_cast<size_t>(i) * pb.Lk];
      double mx = -kInf;
      for (int j = 0; j < pb.Lk; ++j) mx = std::max(mx, si[j]);
      if (mx == -kInf) continue;  // nothing to attend: out = 0, lse = -inf
      // softmax: p = exp(s - max) / sum (baseline: one rounding of p, as
      // torch's softmax computes in float32 internally).
      double sum = 0.0;
      for (int j = 0; j < pb.Lk; ++j) {
        p[j] = si[j] == -kInf ? 0.0 : a.exp(si[j] - mx);
        sum = a.acc(sum + p[j]);
      }
      r.lse[static_cast<size_t>(bh) * pb.Lq + i] = a.op(mx + a.log(sum));
      for (int j = 0; j < pb.Lk; ++j) {
        double pj;
        if (prec == Prec::kKernel) {
          pj = a.mma(p[j] * dropout_factor(pb, a, b, h, i, j));  // normalized at the end
        } else {
          pj = a.op(p[j] / sum);
          const double f = dropout_factor(pb, a, b, h, i, j);
          if (pb.dropout_p > 0.0) pj = f == 0.0 ? 0.0 : a.op(pj / (1.0 - pb.dropout_p));
        }
        p[j] = pj;
      }
      double* oi = &r.out[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, 0)];
      for (int d = 0; d < pb.D; ++d) {
        double acc = 0.0;
        for (int j = 0; j < pb.Lk; ++j) {
          if (p[j] != 0.0) acc = a.acc(acc + p[j] * pb.v[idx4(pb.Hkv, pb.Lk, pb.D, b, hk, j, d)]);
        }
        oi[d] = a.out(prec == Prec::kKernel ? acc / sum : acc);
      }
    }
  });
  if (prec != Prec::kTruth) {
    for (double& l : r.lse) l = static_cast<float>(l);  // lse is float32
  }
  return r;
}

std::vector<double> attention_delta_ref(const AttnProblem& pb, const std::vector<double>& out,
                                        const std::vector<double>& lse, Prec prec) {
  const Arith a{prec, pb.dtype};
  std::vector<double> delta(static_cast<size_t>(pb.B) * pb.Hq * pb.Lq, 0.0);
  for (size_t row = 0; row < delta.size(); ++row) {
    double acc = 0.0;
    for (int d = 0; d < pb.D; ++d) {
      acc = a.acc(acc + a.op(pb.dout[row * pb.D + d] * out[row * pb.D + d]));
    }
    double dl = a.op(acc);
    if (!pb.dlse.empty() && std::isfinite(lse[row])) dl = a.op(dl - a.op(pb.dlse[row]));
    delta[row] = prec == Prec::kTruth ? dl : static_cast<float>(dl);
  }
  return delta;
}

AttnBwd attention_bwd_ref(const AttnProblem& pb, const std::vector<double>& out,
                          const std::vector<double>& lse, Prec prec) {
  const Arith a{prec, pb.dtype};
  const int group = pb.Hq / pb.Hkv;
  AttnBwd r;
  r.dq.assign(pb.q.size(), 0.0);
  r.dk.assign(pb.k.size(), 0.0);
  r.dv.assign(pb.v.size(), 0.0);
  r.ds.assign(static_cast<size_t>(pb.B) * pb.Hq * pb.Lq * pb.Lk, 0.0);
  r.delta = attention_delta_ref(pb, out, lse, prec);
  // One task per (batch row, kv head): its query heads' dk / dv are summed
  // in the task (baseline: each head's rounded, then the sum rounded).
  parallel_for(pb.B * pb.Hkv, [&](int bhk) {
    const int b = bhk / pb.Hkv, hk = bhk % pb.Hkv;
    std::vector<double> dk_sum(static_cast<size_t>(pb.Lk) * pb.D, 0.0), dv_sum = dk_sum;
    std::vector<double> dk_h(dk_sum.size()), dv_h(dk_sum.size());
    std::vector<double> p(static_cast<size_t>(pb.Lq) * pb.Lk), pd(p.size());
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const size_t bh = static_cast<size_t>(b) * pb.Hq + h;
      std::vector<double> th;  // tanh(s / cap) with a softcap
      const std::vector<double> s = scores(pb, a, b, h, &th);
      double* ds = &r.ds[bh * pb.Lq * pb.Lk];
      for (int i = 0; i < pb.Lq; ++i) {
        const double l = lse[bh * pb.Lq + i];
        const double delta = r.delta[bh * pb.Lq + i];
        const double* doi = &pb.dout[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, 0)];
        for (int j = 0; j < pb.Lk; ++j) {
          const size_t ij = static_cast<size_t>(i) * pb.Lk + j;
          const double x = s[ij];
          double pij = 0.0;
          if (x != -kInf && std::isfinite(l)) {
            pij = prec == Prec::kBaseline ? a.op(a.exp(a.op(x - a.op(l)))) : a.exp(x - l);
          }
          double dp = 0.0;
          if (pij != 0.0) {
            const double* vj = &pb.v[idx4(pb.Hkv, pb.Lk, pb.D, b, hk, j, 0)];
            for (int d = 0; d < pb.D; ++d) dp = a.acc(dp + doi[d] * vj[d]);
            dp = a.op(dp);
          }
          double pdrop = pij;
          if (pb.dropout_p > 0.0) {
            const double f = dropout_factor(pb, a, b, h, i, j);
            pdrop = a.op(pij * f);
            dp = a.op(dp * f);
          }
          const double dsij = a.op(pij * a.op(dp - delta));
          ds[ij] = prec == Prec::kTruth ? dsij : static_cast<float>(dsij);
          // through the softcap: d(cap tanh(s / cap)) / ds = 1 - tanh^2
          const double dscore =
              pb.softcap > 0.0 ? a.op(dsij * a.op(1.0 - a.op(th[ij] * th[ij]))) : dsij;
          p[ij] = a.mma(dscore);
          pd[ij] = a.mma(pdrop);
        }
      }
      // dq = scale * ds k
      for (int i = 0; i < pb.Lq; ++i) {
        double* dqi = &r.dq[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, 0)];
        for (int d = 0; d < pb.D; ++d) {
          double acc = 0.0;
          for (int j = 0; j < pb.Lk; ++j) {
            const double x = p[static_cast<size_t>(i) * pb.Lk + j];
            if (x != 0.0) acc = a.acc(acc + x * pb.k[idx4(pb.Hkv, pb.Lk, pb.D, b, hk, j, d)]);
          }
          dqi[d] = a.out(a.op(pb.scale * a.op(acc)));
        }
      }
      // dk_h = scale * ds^T q, dv_h = p_dropped^T dout
      for (int j = 0; j < pb.Lk; ++j) {
        for (int d = 0; d < pb.D; ++d) {
          double ak = 0.0, av = 0.0;
          for (int i = 0; i < pb.Lq; ++i) {
            const size_t ij = static_cast<size_t>(i) * pb.Lk + j;
            if (p[ij] != 0.0) ak = a.acc(ak + p[ij] * pb.q[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, d)]);
            if (pd[ij] != 0.0) av = a.acc(av + pd[ij] * pb.dout[idx4(pb.Hq, pb.Lq, pb.D, b, h, i, d)]);
          }
          const size_t jd = static_cast<size_t>(j) * pb.D + d;
          if (prec == Prec::kKernel) {  // the kernels accumulate over the group's heads
            dk_sum[jd] = a.acc(dk_sum[jd] + ak);
            dv_sum[jd] = a.acc(dv_sum[jd] + av);
          } else {
            dk_h[jd] = a.op(pb.scale * a.op(ak));
            dv_h[jd] = a.op(av);
            dk_sum[jd] = a.acc(dk_sum[jd] + dk_h[jd]);
            dv_sum[jd] = a.acc(dv_sum[jd] + dv_h[jd]);
          }
        }
      }
    }
    for (int j = 0; j < pb.Lk; ++j) {
      for (int d = 0; d < pb.D; ++d) {
        const size_t jd = static_cast<size_t>(j) * pb.D + d;
        const size_t o = idx4(pb.Hkv, pb.Lk, pb.D, b, hk, j, d);
        r.dk[o] = a.out(prec == Prec::kKernel ? dk_sum[jd] * pb.scale : dk_sum[jd]);
        r.dv[o] = a.out(dv_sum[jd]);
      }
    }
  });
  return r;
}

// ------------------------------------------------------------------ norms

bool norm_keeps(const NormProblem& np, int row, int col) {
  const auto keys = fastattn::dropout::row_keys(np.seed, static_cast<uint64_t>(row));
  return fastattn::dropout::keep(keys, static_cast<uint32_t>(col),
                                 fastattn::dropout::threshold(np.dropout_p));
}

NormFwd norm_fwd_ref(const NormProblem& np, Prec prec) {
  const Arith a{prec, np.dtype};
  const int n = np.cols;
  NormFwd r;
  r.y.assign(static_cast<size_t>(np.rows) * n, 0.0);
  r.h = r.y;
  r.mean.assign(np.rows, 0.0);
  r.rstd.assign(np.rows, 0.0);
  const bool uses_h = np.dropout_p > 0.0 || !np.residual.empty();
  const double inv_keep = 1.0 / (1.0 - np.dropout_p);
  parallel_for(np.rows, [&](int row) {
    const size_t base = static_cast<size_t>(row) * n;
    for (int c = 0; c < n; ++c) {
      double hv = np.x[base + c];
      if (np.dropout_p > 0.0) hv = norm_keeps(np, row, c) ? a.acc(hv * a.acc(inv_keep)) : 0.0 * hv;
      if (!np.residual.empty()) hv = a.acc(hv + np.residual[base + c]);
      // h is stored in the dtype; the statistics see it as stored
      r.h[base + c] = uses_h ? a.out(hv) : hv;
    }
    double mean = 0.0;
    if (!np.is_rms) {
      double s = 0.0;
      for (int c = 0; c < n; ++c) s = a.acc(s + r.h[base + c]);
      mean = a.acc(s / n);
    }
    double sq = 0.0;
    for (int c = 0; c < n; ++c) {
      const double d = a.acc(r.h[base + c] - mean);
      sq = a.acc(sq + d * d);
    }
    const double rstd = prec == Prec::kTruth ? 1.0 / std::sqrt(sq / n + np.eps)
                                             : 1.0 / std::sqrt(static_cast<float>(sq / n + np.eps));
    r.mean[row] = a.acc(mean);
    r.rstd[row] = a.acc(rstd);
    for (int c = 0; c < n; ++c) {
      double y = a.acc(a.acc(r.h[base + c] - mean) * rstd);
      if (!np.weight.empty()) y = a.acc(y * np.weight[c]);
      if (!np.bias.empty()) y = a.acc(y + np.bias[c]);
      r.y[base + c] = a.out(y);
    }
  });
  return r;
}

NormBwd norm_bwd_ref(const NormProblem& np, const NormFwd& fwd, Prec prec) {
  const Arith a{prec, np.dtype};
  const int n = np.cols;
  NormBwd r;
  r.dx.assign(static_cast<size_t>(np.rows) * n, 0.0);
  r.dres = r.dx;
  // xhat and dy per element for the column sums, filled per row
  std::vector<double> xhat(r.dx.size());
  const double inv_keep = 1.0 / (1.0 - np.dropout_p);
  parallel_for(np.rows, [&](int row) {
    const size_t base = static_cast<size_t>(row) * n;
    const double mean = fwd.mean[row], rstd = fwd.rstd[row];
    double sgx = 0.0, sg = 0.0;
    for (int c = 0; c < n; ++c) {
      const double xh = a.acc(a.acc(fwd.h[base + c] - mean) * rstd);
      xhat[base + c] = xh;
      const double g = np.weight.empty() ? np.dy[base + c] : a.acc(np.dy[base + c] * np.weight[c]);
      sgx = a.acc(sgx + g * xh);
      sg = a.acc(sg + g);
    }
    const double c_gx = a.acc(sgx / n), c_g = np.is_rms ? 0.0 : a.acc(sg / n);
    for (int c = 0; c < n; ++c) {
      const double g = np.weight.empty() ? np.dy[base + c] : a.acc(np.dy[base + c] * np.weight[c]);
      double dh = a.acc(rstd * a.acc(a.acc(g - a.acc(xhat[base + c] * c_gx)) - c_g));
      dh = a.op(dh);  // baseline: the gradient reaching the stored h is in the dtype
      if (!np.dh_out.empty()) dh = a.op(dh + np.dh_out[base + c]);
      r.dres[base + c] = a.out(dh);
      double dx = dh;
      if (np.dropout_p > 0.0) dx = norm_keeps(np, row, c) ? a.acc(dh * a.acc(inv_keep)) : 0.0;
      r.dx[base + c] = a.out(dx);
    }
  });
  if (!np.weight.empty()) r.dweight.assign(n, 0.0);
  if (!np.bias.empty()) r.dbias.assign(n, 0.0);
  parallel_for(n, [&](int c) {
    double sw = 0.0, sb = 0.0;
    for (int row = 0; row < np.rows; ++row) {
      const size_t e = static_cast<size_t>(row) * n + c;
      sw = a.acc(sw + np.dy[e] * xhat[e]);
      sb = a.acc(sb + np.dy[e]);
    }
    if (!np.weight.empty()) r.dweight[c] = a.out(sw);
    if (!np.bias.empty()) r.dbias[c] = a.out(sb);
  });
  return r;
}

}  // namespace check
