// Standalone check of fastattn's CUDA kernels (no torch), in the style of
// llm.c's dev/cuda: calls the launchers of csrc/cuda/attention.h,
// attention_kernels.h and norm.h for every kernel and compiled variant,
// compares each result with a float64 CPU reference under the error budget
// of fastattn.testing (judge.h), times each kernel, and prints one table.
//
//   bash dev/cuda/check.sh                 # build for the local GPU and run
//   dev/cuda/build/<sm>/check [options]
//     --quick          the variant cases only (every instantiation once)
//     --filter STR     only cases whose row text contains STR
//     --failures-only  print failing rows only (and the summary)
//     --reps N         timed repetitions per kernel (default 5; 0: no timing)
//     --dry            no GPU: run the references and judge an emulation of
//                      the kernels' arithmetic (reference.h, kKernel) instead
//                      of the kernels: checks the harness and the budgets
//     --list           print the cases and the variant each one runs
//     --dump DIR       (with --dry) also write each case's inputs and float64
//                      truth to DIR for dev/cuda/crosscheck_reference.py
//
// Exit status: 0 if every row passed and every compiled variant was covered,
// 1 on a mismatch, 2 on a CUDA error (every CUDA call is checked).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "cases.h"
#include "cuda/attention.h"
#include "cuda/attention_kernels.h"
#include "cuda/attention_variants.h"
#include "cuda/norm.h"
#include "dump.h"
#include "judge.h"
#include "lowp.h"
#include "reference.h"

namespace check {
namespace {

namespace attn = fastattn::cuda::attn;
namespace fcuda = fastattn::cuda;

struct Options {
  bool quick = false, dry = false, list = false, failures_only = false;
  int reps = 5;
  std::string filter;
  std::string dump_dir;
};

Options g_opt;
Table* g_table = nullptr;
std::string g_where;  // the case being run, for error messages

void summary_and_exit(int code);

void cuda_check(cudaError_t err, const char* what, int line) {
  if (err == cudaSuccess) return;
  std::printf("CUDA error at main.cu:%d in %s: %s (%s)\n    while running: %s\n", line, what,
              cudaGetErrorName(err), cudaGetErrorString(err), g_where.c_str());
  summary_and_exit(2);
}
#define CK(call) cuda_check((call), #call, __LINE__)

// ------------------------------------------------------------ device data

// A device allocation, freed at scope exit; `offset_bytes` shifts the
// returned pointer (misaligned inputs).
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(size_t bytes, size_t offset_bytes = 0) : off_(offset_bytes) {
    CK(cudaMalloc(&base_, std::max<size_t>(bytes + offset_bytes, 16)));
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept { *this = std::move(o); }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(off_, o.off_);
    return *this;
  }
  ~DevBuf() {
    if (base_ != nullptr) cudaFree(base_);
  }
  void* get() const { return base_ == nullptr ? nullptr : static_cast<char*>(base_) + off_; }

 private:
  void* base_ = nullptr;
  size_t off_ = 0;
};

// Host bits of `vals` in dtype `dt`.
std::vector<unsigned char> to_bits(const std::vector<double>& vals, DType dt) {
  std::vector<unsigned char> bits(vals.size() * dtype_size(dt));
  for (size_t i = 0; i < vals.size(); ++i) store_elem(dt, bits.data(), i, vals[i]);
  return bits;
}

DevBuf upload_bytes(const void* src, size_t bytes, size_t offset = 0) {
  DevBuf d(bytes, offset);
  if (bytes) CK(cudaMemcpy(d.get(), src, bytes, cudaMemcpyHostToDevice));
  return d;
}

DevBuf filled(size_t bytes, int byte) {
  DevBuf d(bytes);
  CK(cudaMemset(d.get(), byte, std::max<size_t>(bytes, 1)));
  return d;
}

std::vector<double> download(const void* src, size_t n, DType dt) {
  std::vector<unsigned char> bits(n * dtype_size(dt));
  if (n) CK(cudaMemcpy(bits.data(), src, bits.size(), cudaMemcpyDeviceToHost));
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = load_elem(dt, bits.data(), i);
  return out;
}

std::vector<unsigned char> download_raw(const void* src, size_t bytes) {
  std::vector<unsigned char> out(bytes);
  if (bytes) CK(cudaMemcpy(out.data(), src, bytes, cudaMemcpyDeviceToHost));
  return out;
}

// A (B, H, L, D) tensor on the device: contiguous, or stored as (B, L, H, D)
// (`strided`). Element strides as the launchers take them.
struct Dev4 {
  DevBuf buf;
  int64_t sb = 0, sh = 0, sl = 0;
  int B = 0, H = 0, L = 0, D = 0;
  bool strided = false;
  size_t mem_index(int b, int h, int i, int d) const {
    return static_cast<size_t>(b) * sb + static_cast<size_t>(h) * sh + static_cast<size_t>(i) * sl + d;
  }
  size_t numel() const { return static_cast<size_t>(B) * H * L * D; }
};

Dev4 make4(int B, int H, int L, int D, bool strided) {
  Dev4 t;
  t.B = B;
  t.H = H;
  t.L = L;
  t.D = D;
  t.strided = strided;
  if (strided) {
    t.sb = static_cast<int64_t>(L) * H * D;
    t.sh = D;
    t.sl = static_cast<int64_t>(H) * D;
  } else {
    t.sb = static_cast<int64_t>(H) * L * D;
    t.sh = static_cast<int64_t>(L) * D;
    t.sl = D;
  }
  return t;
}

// Uploads logical (B, H, L, D) doubles into t's layout.
void upload4(Dev4& t, const std::vector<double>& vals, DType dt) {
  std::vector<double> mem(t.numel());
  for (int b = 0; b < t.B; ++b)
    for (int h = 0; h < t.H; ++h)
      for (int i = 0; i < t.L; ++i)
        for (int d = 0; d < t.D; ++d)
          mem[t.mem_index(b, h, i, d)] = vals[((static_cast<size_t>(b) * t.H + h) * t.L + i) * t.D + d];
  const auto bits = to_bits(mem, dt);
  t.buf = upload_bytes(bits.data(), bits.size());
}

// Allocates t's memory filled with NaN bits (0xff bytes): an element a
// kernel fails to write shows up as NaN.
void alloc4(Dev4& t, DType dt) { t.buf = filled(t.numel() * dtype_size(dt), 0xff); }

std::vector<double> download4(const Dev4& t, DType dt) {
  const std::vector<double> mem = download(t.buf.get(), t.numel(), dt);
  std::vector<double> vals(t.numel());
  for (int b = 0; b < t.B; ++b)
    for (int h = 0; h < t.H; ++h)
      for (int i = 0; i < t.L; ++i)
        for (int d = 0; d < t.D; ++d)
          vals[((static_cast<size_t>(b) * t.H + h) * t.L + i) * t.D + d] = mem[t.mem_index(b, h, i, d)];
  return vals;
}

attn::Tensor4 view(const Dev4& t) {
  attn::Tensor4 v;
  v.ptr = t.buf.get();
  v.stride_b = t.sb;
  v.stride_h = t.sh;
  v.stride_l = t.sl;
  return v;
}
attn::OutTensor4 out_view(const Dev4& t) {
  attn::OutTensor4 v;
  v.ptr = t.buf.get();
  v.stride_b = t.sb;
  v.stride_h = t.sh;
  v.stride_l = t.sl;
  return v;
}

// Mean time of `reps` calls of fn (after one warm-up call), in microseconds.
double time_us(const std::function<cudaError_t()>& fn) {
  if (g_opt.reps <= 0) return -1.0;
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  CK(fn());
  CK(cudaEventRecord(start));
  for (int r = 0; r < g_opt.reps; ++r) CK(fn());
  CK(cudaEventRecord(stop));
  CK(cudaEventSynchronize(stop));
  float ms = 0.f;
  CK(cudaEventElapsedTime(&ms, start, stop));
  CK(cudaEventDestroy(start));
  CK(cudaEventDestroy(stop));
  return 1000.0 * ms / g_opt.reps;
}

// ----------------------------------------------------------- bookkeeping

std::vector<Variant> g_covered;
std::set<std::string> g_norm_paths;
int g_cases = 0;
auto g_start = std::chrono::steady_clock::now();

std::string variant_text(const Variant& v) {
  std::string s = attn::mask_kind_name(v.mask);
  s = "mask=" + s;
  if (v.banded) s += " banded";
  if (v.dropout) s += " drop";
  if (v.even) s += " even";
  if (v.score_terms) s += " terms";
  return s;
}

bool selected(const std::string& text) {
  return g_opt.filter.empty() || text.find(g_opt.filter) != std::string::npos;
}

// -------------------------------------------------------------- attention

attn::Problem device_problem(const AttnCase& c, const AttnProblem& pb, const Dev4& q,
                             const Dev4& k, const Dev4& v, const void* mask,
                             const int32_t* q_len, const int32_t* kv_len, const int64_t* seed,
                             const float* alibi) {
  attn::Problem p;
  p.q = view(q);
  p.k = view(k);
  p.v = view(v);
  p.mask = mask;
  p.mask_kind = c.mask;
  p.mask_stride_b = pb.ms_b;
  p.mask_stride_h = pb.ms_h;
  p.mask_stride_q = pb.ms_q;
  p.mask_stride_k = pb.ms_k;
  p.q_lengths = q_len;
  p.kv_lengths = kv_len;
  p.seed = seed;
  p.dropout_p = c.dropout_p;
  p.B = c.B;
  p.Hq = c.Hq;
  p.Hkv = c.Hkv;
  p.Lq = c.Lq;
  p.Lk = c.Lk;
  p.D = c.D;
  p.scale = static_cast<float>(pb.scale);
  p.causal = c.causal;
  p.dtype = c.dtype;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.softcap = static_cast<float>(c.softcap);
  p.alibi_slopes = alibi;
  p.alibi_stride_b = pb.alibi_sb;
  return p;
}

// The variant a case runs on (a host-only Problem: pointers only matter
// for being null or not).
Variant case_variant(const AttnCase& c) {
  static const int32_t dummy = 0;
  attn::Problem p;
  p.B = c.B;
  p.Hq = c.Hq;
  p.Hkv = c.Hkv;
  p.Lq = c.Lq;
  p.Lk = c.Lk;
  p.D = c.D;
  p.mask_kind = c.mask;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.softcap = static_cast<float>(c.softcap);
  if (c.alibi) p.alibi_slopes = reinterpret_cast<const float*>(&dummy);
  p.dropout_p = c.dropout_p;
  p.dtype = c.dtype;
  if (c.lengths == Lengths::kQ || c.lengths == Lengths::kBoth) p.q_lengths = &dummy;
  if (c.lengths == Lengths::kKv || c.lengths == Lengths::kBoth) p.kv_lengths = &dummy;
  return attn::select_variant(p);
}

// out[i, c] != 0 iff query i may attend key c and the dropout keeps it
// (the probe's q = 0, v = one-hot): mismatches over every (b, h, i, c < D).
size_t dropout_probe_mismatches(const AttnProblem& pb, const std::vector<double>& out) {
  size_t bad = 0;
  for (int b = 0; b < pb.B; ++b) {
    const int ql = pb.q_len[b], kl = pb.kv_len[b], off = kl - ql;
    for (int h = 0; h < pb.Hq; ++h) {
      for (int i = 0; i < pb.Lq; ++i) {
        for (int col = 0; col < pb.D; ++col) {
          const bool allowed = i < ql && col < kl && (!pb.causal || col <= i + off);
          const bool want = allowed && attention_keeps(pb, b, h, i, col);
          const double o = out[((static_cast<size_t>(b) * pb.Hq + h) * pb.Lq + i) * pb.D + col];
          if ((o != 0.0) != want) ++bad;
        }
      }
    }
  }
  return bad;
}

// Rows whose truth has nothing to attend (lse = -inf) must give out exactly 0.
size_t empty_row_violations(const AttnProblem& pb, const std::vector<double>& truth_lse,
                            const std::vector<double>& out) {
  size_t bad = 0;
  for (size_t row = 0; row < truth_lse.size(); ++row) {
    if (truth_lse[row] != -INFINITY) continue;
    for (int d = 0; d < pb.D; ++d) bad += out[row * pb.D + d] != 0.0;
  }
  return bad;
}

void run_attention_case(const AttnCase& c) {
  const Variant var = case_variant(c);
  const bool simt = c.dtype == DType::kFloat32;
  const std::string path = simt ? ".simt" : ".tc";
  const std::string dt = attn::dtype_name(c.dtype);
  const std::string dcol = std::to_string(c.D) + "/" + std::to_string(var.head_dim);
  const std::string feats = attn_features(c) + (var.even ? " even" : "");
  const std::string shape = attn_shape(c);
  if (!selected("attn " + dt + " " + dcol + " " + feats + " " + shape + " " + c.group)) return;
  if (!attn::variant_exists(var)) {
    Row r{"attn", dt, dcol, feats, shape, "variant", Verdict{}, -1};
    r.v.ok = false;
    r.v.detail = "the case's variant is not compiled";
    g_table->add(r);
    return;
  }
  g_where = "attention " + dt + " D=" + dcol + " " + feats + " " + shape;
  if (g_opt.list) {
    std::printf("%-8s %-5s %-7s %-52s %s\n", c.group.c_str(), dt.c_str(), dcol.c_str(),
                feats.c_str(), shape.c_str());
    g_covered.push_back(var);
    return;
  }
  ++g_cases;
  const AttnData data = make_attn_data(c);
  const AttnProblem& pb = data.pb;

  // References: the truth, the low-precision baseline.
  const AttnFwd truth = attention_fwd_ref(pb, Prec::kTruth);
  const AttnFwd base = attention_fwd_ref(pb, Prec::kBaseline);
  const AttnBwd truth_g = attention_bwd_ref(pb, truth.out, truth.lse, Prec::kTruth);
  const AttnBwd base_g = attention_bwd_ref(pb, base.out, base.lse, Prec::kBaseline);
  if (!g_opt.dump_dir.empty()) dump_attention(g_opt.dump_dir, g_cases, c, pb, truth, truth_g);

  AttnFwd got;
  AttnBwd got_g;
  bool deterministic = true;
  double t_fwd = -1, t_delta = -1, t_dkdv = -1, t_dq = -1;
  const size_t n_rows = static_cast<size_t>(c.B) * c.Hq * c.Lq;
  const size_t n_ds = n_rows * c.Lk;
  if (g_opt.dry) {
    got = attention_fwd_ref(pb, Prec::kKernel);
    got_g = attention_bwd_ref(pb, got.out, got.lse, Prec::kKernel);
  } else {
    Dev4 q = make4(c.B, c.Hq, c.Lq, c.D, c.strided), k = make4(c.B, c.Hkv, c.Lk, c.D, c.strided);
    Dev4 v = make4(c.B, c.Hkv, c.Lk, c.D, c.strided), dout = make4(c.B, c.Hq, c.Lq, c.D, c.strided);
    Dev4 out = make4(c.B, c.Hq, c.Lq, c.D, c.strided), dq = make4(c.B, c.Hq, c.Lq, c.D, c.strided);
    Dev4 dk = make4(c.B, c.Hkv, c.Lk, c.D, c.strided), dv = make4(c.B, c.Hkv, c.Lk, c.D, c.strided);
    upload4(q, pb.q, c.dtype);
    upload4(k, pb.k, c.dtype);
    upload4(v, pb.v, c.dtype);
    upload4(dout, pb.dout, c.dtype);
    alloc4(out, c.dtype);
    alloc4(dq, c.dtype);
    alloc4(dk, c.dtype);
    alloc4(dv, c.dtype);
    DevBuf lse = filled(n_rows * 4, 0xff), delta = filled(n_rows * 4, 0xff);
    DevBuf dlse, dmask, mask, qlen, kvlen, seed;
    if (!pb.dlse.empty()) {
      const auto bits = to_bits(pb.dlse, DType::kFloat32);
      dlse = upload_bytes(bits.data(), bits.size());
    }
    if (c.mask != MaskKind::kNone) {
      if (c.mask == MaskKind::kBool) {
        std::vector<unsigned char> m(pb.mask.size());
        for (size_t i = 0; i < m.size(); ++i) m[i] = pb.mask[i] != 0.0;
        mask = upload_bytes(m.data(), m.size());
      } else {
        const DType mdt = c.mask == MaskKind::kFloat16 ? DType::kFloat16
                          : c.mask == MaskKind::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
        const auto bits = to_bits(pb.mask, mdt);
        mask = upload_bytes(bits.data(), bits.size());
      }
    }
    if (c.mask_grad) dmask = filled(n_ds * 4, 0);  // the caller zero-fills it (attention.h)
    if (c.lengths != Lengths::kNone) {
      std::vector<int32_t> ql(pb.q_len.begin(), pb.q_len.end()), kl(pb.kv_len.begin(), pb.kv_len.end());
      if (c.lengths == Lengths::kQ || c.lengths == Lengths::kBoth) qlen = upload_bytes(ql.data(), ql.size() * 4);
      if (c.lengths == Lengths::kKv || c.lengths == Lengths::kBoth) kvlen = upload_bytes(kl.data(), kl.size() * 4);
    }
    if (c.dropout_p > 0) {
      const int64_t s = static_cast<int64_t>(pb.seed);
      seed = upload_bytes(&s, 8);
    }
    DevBuf alibi;
    if (c.alibi) {
      const std::vector<float> slopes(pb.alibi.begin(), pb.alibi.end());
      alibi = upload_bytes(slopes.data(), slopes.size() * 4);
    }

    attn::FwdParams fp;
    fp.pb = device_problem(c, pb, q, k, v, mask.get(), static_cast<const int32_t*>(qlen.get()),
                           static_cast<const int32_t*>(kvlen.get()),
                           static_cast<const int64_t*>(seed.get()),
                           static_cast<const float*>(alibi.get()));
    fp.out = out_view(out);
    fp.lse = static_cast<float*>(lse.get());
    CK(attn::attention_fwd(fp, 0));
    CK(cudaDeviceSynchronize());
    got.out = download4(out, c.dtype);
    got.lse = download(lse.get(), n_rows, DType::kFloat32);

    attn::BwdParams bp;
    bp.pb = fp.pb;
    bp.dout = view(dout);
    bp.out = view(out);
    bp.lse = static_cast<const float*>(lse.get());
    bp.dlse = static_cast<const float*>(dlse.get());
    bp.delta = static_cast<float*>(delta.get());
    bp.dq = out_view(dq);
    bp.dk = out_view(dk);
    bp.dv = out_view(dv);
    bp.dmask = static_cast<float*>(dmask.get());
    CK(attn::attention_bwd(bp, 0));
    CK(cudaDeviceSynchronize());
    got_g.delta = download(delta.get(), n_rows, DType::kFloat32);
    got_g.dq = download4(dq, c.dtype);
    got_g.dk = download4(dk, c.dtype);
    got_g.dv = download4(dv, c.dtype);
    if (c.mask_grad) got_g.ds = download(dmask.get(), n_ds, DType::kFloat32);
    // Determinism: a second backward gives the same bits.
    const auto bits_dq = download_raw(dq.buf.get(), dq.numel() * dtype_size(c.dtype));
    const auto bits_dk = download_raw(dk.buf.get(), dk.numel() * dtype_size(c.dtype));
    const auto bits_dv = download_raw(dv.buf.get(), dv.numel() * dtype_size(c.dtype));
    const auto bits_ds = c.mask_grad ? download_raw(dmask.get(), n_ds * 4) : std::vector<unsigned char>();
    CK(attn::attention_bwd(bp, 0));
    CK(cudaDeviceSynchronize());
    deterministic = bits_dq == download_raw(dq.buf.get(), bits_dq.size()) &&
                    bits_dk == download_raw(dk.buf.get(), bits_dk.size()) &&
                    bits_dv == download_raw(dv.buf.get(), bits_dv.size()) &&
                    (!c.mask_grad || bits_ds == download_raw(dmask.get(), bits_ds.size()));

    t_fwd = time_us([&] { return attn::attention_fwd(fp, 0); });
    t_delta = time_us([&] { return attn::attention_bwd_delta(bp, 0); });
    t_dkdv = time_us([&] { return attn::attention_bwd_dkdv(bp, 0); });
    t_dq = time_us([&] { return attn::attention_bwd_dq(bp, 0); });
    CK(cudaGetLastError());
  }

  auto add = [&](const std::string& kernel, const std::string& output, Verdict v, double us) {
    g_table->add(Row{kernel, dt, dcol, feats, shape, output, std::move(v), us});
  };
  Verdict vout = judge(got.out, truth.out, base.out, c.dtype);
  if (const size_t bad = empty_row_violations(pb, truth.lse, got.out)) {
    vout.ok = false;
    vout.detail += (vout.detail.empty() ? "" : "; ") + std::to_string(bad) +
                   " elements of rows with nothing to attend are not exactly 0";
  }
  add("attn.fwd" + path, "out", vout, t_fwd);
  add("attn.fwd" + path, "lse", judge(got.lse, truth.lse, base.lse, DType::kFloat32), -1);
  if (c.probe == Probe::kDropoutMask) {
    add("attn.fwd" + path, "dropmask",
        exact(dropout_probe_mismatches(pb, got.out), got.out.size(), "elements disagree with the hash"),
        -1);
  }
  // delta from the kernel's own out and lse (what the delta kernel read).
  const std::vector<double> delta_truth = attention_delta_ref(pb, got.out, got.lse, Prec::kTruth);
  const std::vector<double> delta_base = attention_delta_ref(pb, got.out, got.lse, Prec::kBaseline);
  add("attn.bwd.delta", "delta", judge(got_g.delta, delta_truth, delta_base, DType::kFloat32), t_delta);
  auto grad = [&](const std::vector<double>& a, const std::vector<double>& t,
                  const std::vector<double>& b, DType floor) {
    Verdict v = judge(a, t, b, floor);
    if (!deterministic) {
      v.ok = false;
      v.detail += (v.detail.empty() ? "" : "; ") + std::string("backward not bitwise deterministic");
    }
    return v;
  };
  add("attn.bwd.dkdv" + path, "dk", grad(got_g.dk, truth_g.dk, base_g.dk, c.dtype), t_dkdv);
  add("attn.bwd.dkdv" + path, "dv", grad(got_g.dv, truth_g.dv, base_g.dv, c.dtype), -1);
  add("attn.bwd.dq" + path, "dq", grad(got_g.dq, truth_g.dq, base_g.dq, c.dtype), t_dq);
  if (c.mask_grad) {
    const DType mdt = c.mask == MaskKind::kFloat16 ? DType::kFloat16
                      : c.mask == MaskKind::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
    add("attn.bwd.dq" + path, "dmask", grad(got_g.ds, truth_g.ds, base_g.ds, mdt), -1);
  }
  g_covered.push_back(var);
}

// ------------------------------------------------------------------ norms

void run_norm_case(const NormCase& c) {
  const std::string dt = attn::dtype_name(c.dtype);
  const std::string feats = norm_features(c);
  const std::string shape = norm_shape(c);
  if (!selected("norm " + dt + " " + feats + " " + shape + " " + c.group)) return;
  const NormPath path = norm_path(c);
  g_where = "norm " + dt + " " + feats + " " + shape;
  const std::string fwd_key = dt + std::string(path.fwd_looped ? " fwd loop" : " fwd reg") + (path.fwd_vec ? " vec" : " scalar");
  const std::string bwd_key = dt + std::string(path.bwd_looped ? " bwd loop" : " bwd reg") + (path.bwd_vec ? " vec" : " scalar");
  if (g_opt.list) {
    std::printf("%-8s %-5s %-7s %-52s %s\n", c.group.c_str(), dt.c_str(), "-", feats.c_str(), shape.c_str());
    g_norm_paths.insert(fwd_key);
    g_norm_paths.insert(bwd_key);
    return;
  }
  ++g_cases;
  const NormProblem np = make_norm_data(c);
  const NormFwd truth = norm_fwd_ref(np, Prec::kTruth);
  const NormFwd base = norm_fwd_ref(np, Prec::kBaseline);
  const NormBwd truth_g = norm_bwd_ref(np, truth, Prec::kTruth);
  const NormBwd base_g = norm_bwd_ref(np, base, Prec::kBaseline);
  if (!g_opt.dump_dir.empty()) dump_norm(g_opt.dump_dir, g_cases, c, np, truth, truth_g);
  const bool uses_h = c.dropout_p > 0 || c.residual;
  const size_t n = static_cast<size_t>(c.rows) * c.cols;
  const int stride = c.cols + c.row_pad;

  NormFwd got;
  NormBwd got_g;
  double t_fwd = -1, t_bwd = -1;
  if (g_opt.dry) {
    got = norm_fwd_ref(np, Prec::kKernel);
    got_g = norm_bwd_ref(np, got, Prec::kKernel);
  } else {
    const size_t es = dtype_size(c.dtype);
    // Row-strided inputs: x, residual, dy with row stride cols + row_pad.
    auto strided_bits = [&](const std::vector<double>& t) {
      std::vector<double> mem(static_cast<size_t>(c.rows) * stride, 0.0);
      for (int r = 0; r < c.rows; ++r)
        for (int col = 0; col < c.cols; ++col) mem[static_cast<size_t>(r) * stride + col] = t[static_cast<size_t>(r) * c.cols + col];
      return to_bits(mem, c.dtype);
    };
    const auto xb = strided_bits(np.x);
    DevBuf x = upload_bytes(xb.data(), xb.size(), c.misalign ? es : 0);
    DevBuf res, w, b, dyb, dho, seed;
    if (c.residual) {
      const auto bits = strided_bits(np.residual);
      res = upload_bytes(bits.data(), bits.size());
    }
    if (!np.weight.empty()) {
      const auto bits = to_bits(np.weight, c.dtype);
      w = upload_bytes(bits.data(), bits.size());
    }
    if (!np.bias.empty()) {
      const auto bits = to_bits(np.bias, c.dtype);
      b = upload_bytes(bits.data(), bits.size());
    }
    const auto dyb_bits = strided_bits(np.dy);
    dyb = upload_bytes(dyb_bits.data(), dyb_bits.size());
    if (!np.dh_out.empty()) {
      const auto bits = to_bits(np.dh_out, c.dtype);
      dho = upload_bytes(bits.data(), bits.size());
    }
    if (c.dropout_p > 0) {
      const int64_t s = static_cast<int64_t>(np.seed);
      seed = upload_bytes(&s, 8);
    }
    DevBuf y = filled(n * es, 0xff), h = filled(uses_h ? n * es : 0, 0xff);
    DevBuf mean = filled(c.is_rms ? 0 : c.rows * 4, 0xff), rstd = filled(c.rows * 4, 0xff);

    fcuda::NormFwdParams p;
    p.x = x.get();
    p.x_row_stride = stride;
    p.residual = res.get();
    p.residual_row_stride = c.residual ? stride : 0;
    p.weight = w.get();
    p.bias = b.get();
    p.seed = static_cast<const int64_t*>(seed.get());
    p.y = y.get();
    p.h = uses_h ? h.get() : nullptr;
    p.mean = c.is_rms ? nullptr : static_cast<float*>(mean.get());
    p.rstd = static_cast<float*>(rstd.get());
    p.rows = c.rows;
    p.cols = c.cols;
    p.eps = static_cast<float>(np.eps);
    p.dropout_p = c.dropout_p;
    p.is_rms = c.is_rms;
    p.dtype = static_cast<fcuda::DType>(c.dtype);
    CK(fcuda::norm_fwd(p, 0));
    CK(cudaDeviceSynchronize());
    got.y = download(y.get(), n, c.dtype);
    got.h = uses_h ? download(h.get(), n, c.dtype) : np.x;
    got.mean = c.is_rms ? std::vector<double>(c.rows, 0.0) : download(mean.get(), c.rows, DType::kFloat32);
    got.rstd = download(rstd.get(), c.rows, DType::kFloat32);

    int device = 0, sms = 0;
    CK(cudaGetDevice(&device));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const bool with_dres = c.dropout_p > 0 && c.residual;
    DevBuf dx = filled(n * es, 0xff), dres = filled(with_dres ? n * es : 0, 0xff);
    DevBuf dw = filled(np.weight.size() * es, 0xff), db = filled(np.bias.size() * es, 0xff);
    DevBuf partials;
    if (!np.weight.empty() || !np.bias.empty()) {
      partials = DevBuf(fcuda::norm_bwd_partial_floats(c.rows, c.cols, sms) * sizeof(float));
    }
    fcuda::NormBwdParams bp;
    bp.dy = dyb.get();
    bp.dy_row_stride = stride;
    bp.dh_out = dho.get();
    bp.dh_out_row_stride = c.cols;
    bp.h = uses_h ? h.get() : x.get();
    bp.h_row_stride = uses_h ? c.cols : stride;
    bp.weight = w.get();
    bp.mean = c.is_rms ? nullptr : static_cast<const float*>(mean.get());
    bp.rstd = static_cast<const float*>(rstd.get());
    bp.seed = static_cast<const int64_t*>(seed.get());
    bp.dx = dx.get();
    bp.dresidual = with_dres ? dres.get() : nullptr;
    bp.dweight = np.weight.empty() ? nullptr : dw.get();
    bp.dbias = np.bias.empty() ? nullptr : db.get();
    bp.partials = static_cast<float*>(partials.get());
    bp.rows = c.rows;
    bp.cols = c.cols;
    bp.dropout_p = c.dropout_p;
    bp.is_rms = c.is_rms;
    bp.dtype = p.dtype;
    CK(fcuda::norm_bwd(bp, sms, 0));
    CK(cudaDeviceSynchronize());
    got_g.dx = download(dx.get(), n, c.dtype);
    if (with_dres) got_g.dres = download(dres.get(), n, c.dtype);
    if (!np.weight.empty()) got_g.dweight = download(dw.get(), c.cols, c.dtype);
    if (!np.bias.empty()) got_g.dbias = download(db.get(), c.cols, c.dtype);
    t_fwd = time_us([&] { return fcuda::norm_fwd(p, 0); });
    t_bwd = time_us([&] { return fcuda::norm_bwd(bp, sms, 0); });
    CK(cudaGetLastError());
  }

  auto add = [&](const std::string& kernel, const std::string& output, Verdict v, double us) {
    g_table->add(Row{kernel, dt, "-", feats, shape, output, std::move(v), us});
  };
  add("norm.fwd", "y", judge(got.y, truth.y, base.y, c.dtype), t_fwd);
  if (uses_h) add("norm.fwd", "h", judge(got.h, truth.h, base.h, c.dtype), -1);
  if (!c.is_rms) add("norm.fwd", "mean", judge(got.mean, truth.mean, base.mean, DType::kFloat32), -1);
  add("norm.fwd", "rstd", judge(got.rstd, truth.rstd, base.rstd, DType::kFloat32), -1);
  if (c.ones && c.dropout_p > 0) {
    size_t bad = 0;
    for (int r = 0; r < c.rows; ++r)
      for (int col = 0; col < c.cols; ++col)
        bad += (got.h[static_cast<size_t>(r) * c.cols + col] != 0.0) != norm_keeps(np, r, col);
    add("norm.fwd", "dropmask", exact(bad, n, "elements disagree with the hash"), -1);
  }
  add("norm.bwd", "dx", judge(got_g.dx, truth_g.dx, base_g.dx, c.dtype), t_bwd);
  if (c.dropout_p > 0 && c.residual) {
    add("norm.bwd", "dres", judge(got_g.dres, truth_g.dres, base_g.dres, c.dtype), -1);
  }
  if (!np.weight.empty()) add("norm.bwd", "dweight", judge(got_g.dweight, truth_g.dweight, base_g.dweight, c.dtype), -1);
  if (!np.bias.empty()) add("norm.bwd", "dbias", judge(got_g.dbias, truth_g.dbias, base_g.dbias, c.dtype), -1);
  g_norm_paths.insert(fwd_key);
  g_norm_paths.insert(bwd_key);
}

// ---------------------------------------------------------------- summary

int coverage_failures(bool print) {
  int missing = 0, total = 0;
  attn::for_each_variant([&](const Variant& v) {
    ++total;
    const bool hit = std::find(g_covered.begin(), g_covered.end(), v) != g_covered.end();
    if (!hit) {
      ++missing;
      if (print && missing <= 20) {
        std::printf("  not covered: attention %s D=%d %s\n", attn::dtype_name(v.dtype), v.head_dim,
                    variant_text(v).c_str());
      }
    }
  });
  int norm_missing = 0;
  const char* dts[] = {"fp16", "bf16", "fp32"};
  for (const char* d : dts) {
    for (const char* dir : {" fwd", " bwd"}) {
      for (const char* kind : {" reg", " loop"}) {
        for (const char* vec : {" vec", " scalar"}) {
          const std::string key = std::string(d) + dir + kind + vec;
          if (!g_norm_paths.count(key)) {
            ++norm_missing;
            if (print) std::printf("  not covered: norm %s\n", key.c_str());
          }
        }
      }
    }
  }
  if (print) {
    std::printf("attention variants covered: %d of %d; norm paths covered: %d of 24\n",
                total - missing, total, 24 - norm_missing);
  }
  return missing + norm_missing;
}

void summary_and_exit(int code) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  const int failures = g_table ? g_table->failures() : 0;
  const int rows = g_table ? g_table->rows() : 0;
  const int uncovered = coverage_failures(true);
  // A filtered run checks a subset: coverage is reported, not required.
  const bool coverage_required = g_opt.filter.empty();
  std::printf("%d cases, %d rows: %d passed, %d failed%s (%.1f s)\n", g_cases, rows,
              rows - failures, failures, g_opt.dry ? " [dry: CPU emulation, no GPU]" : "", secs);
  if (code == 0 && (failures > 0 || (coverage_required && uncovered > 0))) code = 1;
  std::printf("%s\n", code == 0 ? "PASS" : (code == 2 ? "CUDA ERROR" : "FAIL"));
  std::fflush(stdout);
  std::exit(code);
}

void usage() {
  std::printf(
      "usage: check [--quick] [--dry] [--list] [--failures-only] [--filter STR] [--reps N]"
      " [--dump DIR]\n");
}

}  // namespace
}  // namespace check

int main(int argc, char** argv) {
  using namespace check;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") g_opt.quick = true;
    else if (a == "--dry") g_opt.dry = true;
    else if (a == "--list") g_opt.list = true;
    else if (a == "--failures-only") g_opt.failures_only = true;
    else if (a == "--filter" && i + 1 < argc) g_opt.filter = argv[++i];
    else if (a == "--reps" && i + 1 < argc) g_opt.reps = std::atoi(argv[++i]);
    else if (a == "--dump" && i + 1 < argc) g_opt.dump_dir = argv[++i];
    else {
      usage();
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (g_opt.dry || g_opt.list) g_opt.reps = 0;
  Table table(g_opt.failures_only);
  g_table = &table;
  if (!g_opt.dry && !g_opt.list) {
    int count = 0;
    CK(cudaGetDeviceCount(&count));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount);
  }
  const std::vector<AttnCase> acases = attention_cases(g_opt.quick);
  const std::vector<NormCase> ncases = norm_cases(g_opt.quick);
  if (!g_opt.list) table.header();
  for (const AttnCase& c : acases) run_attention_case(c);
  for (const NormCase& c : ncases) run_norm_case(c);
  summary_and_exit(0);
}
