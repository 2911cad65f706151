// --dump DIR (dump.h).
#include "dump.h"

#include <cstdio>
#include <vector>

namespace check {

namespace {

void write_array(const std::string& base, const char* name, const std::vector<double>& a) {
  const std::string path = base + "." + name + ".f64";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::perror(path.c_str());
    return;
  }
  if (!a.empty()) std::fwrite(a.data(), sizeof(double), a.size(), f);
  std::fclose(f);
}

std::vector<double> as_double(const std::vector<int>& v) { return {v.begin(), v.end()}; }

}  // namespace

void dump_attention(const std::string& dir, int id, const AttnCase& c, const AttnProblem& pb,
                    const AttnFwd& truth, const AttnBwd& truth_g) {
  const std::string base = dir + "/attn" + std::to_string(id);
  FILE* f = std::fopen((base + ".txt").c_str(), "w");
  if (f == nullptr) {
    std::perror(base.c_str());
    return;
  }
  std::fprintf(f, "kind = attention\nB = %d\nHq = %d\nHkv = %d\nLq = %d\nLk = %d\nD = %d\n", pb.B,
               pb.Hq, pb.Hkv, pb.Lq, pb.Lk, pb.D);
  std::fprintf(f, "mask = %s\nms = %lld %lld %lld %lld\nmask_elems = %zu\n",
               fastattn::cuda::attn::mask_kind_name(pb.mask_kind), static_cast<long long>(pb.ms_b),
               static_cast<long long>(pb.ms_h), static_cast<long long>(pb.ms_q),
               static_cast<long long>(pb.ms_k), pb.mask.size());
  std::fprintf(f, "causal = %d\nscale = %.17g\ndropout_p = %.17g\nseed = %llu\n", pb.causal ? 1 : 0,
               pb.scale, pb.dropout_p, static_cast<unsigned long long>(pb.seed));
  std::fprintf(f, "window = %d %d\nsoftcap = %.17g\nalibi_rows = %d\n", pb.window_left,
               pb.window_right, pb.softcap,
               pb.alibi.empty() ? 0 : static_cast<int>(pb.alibi.size()) / pb.Hq);
  std::fprintf(f, "lengths = %d\ndlse = %d\nlabel = %s %s\n", static_cast<int>(c.lengths),
               pb.dlse.empty() ? 0 : 1, attn_features(c).c_str(), attn_shape(c).c_str());
  std::fclose(f);
  write_array(base, "q", pb.q);
  write_array(base, "k", pb.k);
  write_array(base, "v", pb.v);
  write_array(base, "dout", pb.dout);
  write_array(base, "dlse", pb.dlse);
  write_array(base, "mask", pb.mask);
  write_array(base, "alibi", pb.alibi);
  write_array(base, "q_len", as_double(pb.q_len));
  write_array(base, "kv_len", as_double(pb.kv_len));
  write_array(base, "out", truth.out);
  write_array(base, "lse", truth.lse);
  write_array(base, "dq", truth_g.dq);
  write_array(base, "dk", truth_g.dk);
  write_array(base, "dv", truth_g.dv);
  write_array(base, "ds", truth_g.ds);
}

void dump_norm(const std::string& dir, int id, const NormCase& c, const NormProblem& np,
               const NormFwd& truth, const NormBwd& truth_g) {
  const std::string base = dir + "/norm" + std::to_string(id);
  FILE* f = std::fopen((base + ".txt").c_str(), "w");
  if (f == nullptr) {
    std::perror(base.c_str());
    return;
  }
  std::fprintf(f, "kind = norm\nrows = %d\ncols = %d\nis_rms = %d\neps = %.17g\n", np.rows,
               np.cols, np.is_rms ? 1 : 0, np.eps);
  std::fprintf(f, "dropout_p = %.17g\nseed = %llu\nprenorm = %d\nlabel = %s %s\n", np.dropout_p,
               static_cast<unsigned long long>(np.seed), np.store_h ? 1 : 0,
               norm_features(c).c_str(), norm_shape(c).c_str());
  std::fclose(f);
  write_array(base, "x", np.x);
  write_array(base, "residual", np.residual);
  write_array(base, "weight", np.weight);
  write_array(base, "bias", np.bias);
  write_array(base, "dy", np.dy);
  write_array(base, "dh_out", np.dh_out);
  write_array(base, "y", truth.y);
  write_array(base, "h", truth.h);
  write_array(base, "dx", truth_g.dx);
  write_array(base, "dres", truth_g.dres);
  write_array(base, "dweight", truth_g.dweight);
  write_array(base, "dbias", truth_g.dbias);
}

}  // namespace check
