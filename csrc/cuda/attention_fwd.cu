// Forward attention on tensor cores (float16/bfloat16), and the launcher
// that also routes float32 to the CUDA-core kernels (attention_simt.cu).
//
// One block of 4 warps owns BM = 64 query rows of one (batch row, query
// head); each warp owns 16 rows. Q is copied once into shared memory; K and
// V tiles of BN keys stream through two shared-memory stages with cp.async
// (the copy of tile n+1 overlaps the math of tile n). Per key tile a warp
// computes S = Q K^T (mma.sync m16n8k16, fp32 accumulators), masks it,
// updates the running row max m and row sum l (online softmax, log2 units),
// rescales its output accumulator by exp2(m_old - m_new) and adds P V, P
// rounded to the input type as the second MMA's operand. The key loop stops
// at the last key any of the block's rows may attend (lengths, causal), so
// fully padded or causally excluded key tiles cost nothing.
//
// Rows that attend nothing keep m = -inf and l = 0: they write out = 0 and
// lse = -inf (exp2 is evaluated against 0 instead of -inf, never NaN).
#include "cuda/attention_common.cuh"

namespace fastattn {
namespace cuda {
namespace attn {
namespace {

constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kFwdBM = 16 * kFwdWarps;

// Key tile per head-dim bucket: the per-thread accumulator holds D / 2
// floats and the score tile BN / 2, so D = 256 takes the smaller tile to
// stay within 255 registers without spilling.
template <int D>
constexpr int fwd_block_n() {
  return D >= 256 ? 16 : 64;
}

template <int D>
constexpr size_t fwd_smem_bytes() {
  return static_cast<size_t>(kFwdBM + 4 * fwd_block_n<D>()) * smem_stride<D>() * 2;
}

// p: the problem, output and lse (see attention.h). inv_keep / threshold:
// dropout constants (unused without dropout). D: head-dim bucket (>= p.D).
template <typename T, int D>
__global__ void __launch_bounds__(kFwdThreads)
    attention_fwd_tc_kernel(const FwdParams p, float inv_keep, uint32_t threshold) {
  constexpr int BN = fwd_block_n<D>();
  constexpr int SS = smem_stride<D>();
  constexpr int NB = BN / 8;  // 8-key column blocks of the score tile
  constexpr int DB = D / 8;   // 8-wide column blocks of the output tile
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kFwdBM * SS;      // 2 stages of BN x SS
  T* sV = sK + 2 * BN * SS;      // 2 stages of BN x SS

  const Problem& pb = p.pb;
  const int64_t tiles_m = ceil_div(pb.Lq, kFwdBM);
  const int m_tile = static_cast<int>(blockIdx.x % tiles_m);
  const int64_t bh = blockIdx.x / tiles_m;
  const HeadView hv = head_view(pb, bh / pb.Hq, bh % pb.Hq);
  const int d = static_cast<int>(pb.D);
  const int m0 = m_tile * kFwdBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;

  const T* q = static_cast<const T*>(pb.q.ptr) + hv.b * pb.q.stride_b + hv.h * pb.q.stride_h;
  const T* k = static_cast<const T*>(pb.k.ptr) + hv.b * pb.k.stride_b + hv.hk * pb.k.stride_h;
  const T* v = static_cast<const T*>(pb.v.ptr) + hv.b * pb.v.stride_b + hv.hk * pb.v.stride_h;

  const int n_end = key_end(hv, pb.causal, m0, m0 + kFwdBM);
  const int num_tiles = static_cast<int>(ceil_div(n_end, BN));

  load_tile_async<T, kFwdBM, D, kFwdThreads>(sQ, q, pb.q.stride_l, m0, hv.q_len, d);
  cp_async_commit();
  if (num_tiles > 0) {
    load_tile_async<T, BN, D, kFwdThreads>(sK, k, pb.k.stride_l, 0, n_end, d);
    load_tile_async<T, BN, D, kFwdThreads>(sV, v, pb.v.stride_l, 0, n_end, d);
    cp_async_commit();
  }

  // The two rows of this thread: g and g + 8 of the warp's 16.
  int rows[2];
  rows[0] = m0 + warp * 16 + g;
  rows[1] = rows[0] + 8;
  const Dropout drop = make_dropout(pb, inv_keep, threshold);
  dropout::RowKeys keys[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    keys[r] = drop.on ? dropout::row_keys(drop.seed, dropout_row(pb, hv, rows[r]))
                      : dropout::RowKeys{0u, 0u};
  }

  float acc[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};  // this thread's partial row sums (quad-reduced at the end)
  const float scale_log2 = pb.scale * kLog2e;
  const T* sQw = sQ + warp * 16 * SS;

  for (int it = 0; it < num_tiles; ++it) {
    const int stage = it & 1;
    const int n0 = it * BN;
    if (it + 1 < num_tiles) {
      const int nxt = (stage ^ 1) * BN * SS;
      load_tile_async<T, BN, D, kFwdThreads>(sK + nxt, k, pb.k.stride_l, n0 + BN, n_end, d);
      load_tile_async<T, BN, D, kFwdThreads>(sV + nxt, v, pb.v.stride_l, n0 + BN, n_end, d);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* sKs = sK + stage * BN * SS;
    const T* sVs = sV + stage * BN * SS;

    // S = Q K^T for the warp's 16 rows and the tile's BN keys.
    float s[NB][4];
#pragma unroll
    for (int i = 0; i < NB; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      load_a_frag<D>(a, sQw, kk * 16, lane);
#pragma unroll
      for (int nb = 0; nb < NB; nb += 2) {
        uint32_t b[4];
        load_bt_frag<D>(b, sKs, nb * 8, kk * 16, lane);
        mma16816<T>(s[nb], a, b[0], b[1]);
        mma16816<T>(s[nb + 1], a, b[2], b[3]);
      }
    }

    // Mask, online softmax, dropout. Element s[nb][2r + e] is row rows[r],
    // key n0 + nb * 8 + 2t + e.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = n0 + nb * 8 + 2 * t + e;
          const float x = masked_score(pb, hv, rows[r], j, s[nb][2 * r + e] * scale_log2);
          s[nb][2 * r + e] = x;
          mx = fmaxf(mx, x);
        }
      }
      const float m_new = fmaxf(m_run[r], quad_max(mx));
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_run[r] - m_use);
      m_run[r] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float pr = exp2f(s[nb][2 * r + e] - m_use);
          sum += pr;
          if (drop.on) pr *= dropout_factor(drop, keys[r], n0 + nb * 8 + 2 * t + e);
          s[nb][2 * r + e] = pr;
        }
      }
      l_run[r] = l_run[r] * alpha + sum;
#pragma unroll
      for (int db = 0; db < DB; ++db) {
        acc[db][2 * r] *= alpha;
        acc[db][2 * r + 1] *= alpha;
      }
    }

    // acc += P V: the score accumulators of key columns 16kk..16kk+15 are
    // exactly the A fragment of the k-chunk kk.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = Elem<T>::pack2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Elem<T>::pack2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Elem<T>::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Elem<T>::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int db = 0; db < DB; db += 2) {
        uint32_t b[4];
        load_b_frag<D>(b, sVs, kk * 16, db * 8, lane);
        mma16816<T>(acc[db], a, b[0], b[1]);
        mma16816<T>(acc[db + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  // Epilogue: out = acc / l (0 for empty rows), lse in natural log.
  T* out = static_cast<T*>(p.out.ptr) + hv.b * p.out.stride_b + hv.h * p.out.stride_h;
  float* lse = p.lse + (hv.b * pb.Hq + hv.h) * pb.Lq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const float inv = l != 0.f ? 1.f / l : 0.f;  // NaN scores propagate, as in torch
    const int i = rows[r];
    if (i >= pb.Lq) continue;
    if (t == 0) lse[i] = l != 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
    T* orow = out + static_cast<int64_t>(i) * p.out.stride_l;
#pragma unroll
    for (int db = 0; db < DB; ++db) {
      const int col = db * 8 + 2 * t;
      if (col < d) {
        const uint32_t pair = Elem<T>::pack2(acc[db][2 * r] * inv, acc[db][2 * r + 1] * inv);
        *reinterpret_cast<uint32_t*>(orow + col) = pair;
      }
    }
  }
}

template <typename T, int D>
cudaError_t launch_fwd_tc(const FwdParams& p, cudaStream_t stream) {
  constexpr size_t smem = fwd_smem_bytes<D>();
  auto kernel = attention_fwd_tc_kernel<T, D>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t blocks = ceil_div(p.pb.Lq, kFwdBM) * p.pb.B * p.pb.Hq;
  if (blocks == 0) return cudaSuccess;  // nothing to compute (an empty dim)
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), kFwdThreads, smem, stream>>>(
      p, dropout_inv_keep(p.pb.dropout_p), dropout_threshold(p.pb.dropout_p));
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_fwd_tc(const FwdParams& p, cudaStream_t stream) {
  if (p.pb.D <= 32) return launch_fwd_tc<T, 32>(p, stream);
  if (p.pb.D <= 64) return launch_fwd_tc<T, 64>(p, stream);
  if (p.pb.D <= 128) return launch_fwd_tc<T, 128>(p, stream);
  return launch_fwd_tc<T, 256>(p, stream);
}

}  // namespace

cudaError_t attention_fwd(const FwdParams& p, cudaStream_t stream) {
  if (p.pb.D < 8 || p.pb.D > 256 || p.pb.D % 8 != 0) return cudaErrorInvalidValue;
  switch (p.pb.dtype) {
    case DType::kFloat16: return dispatch_fwd_tc<__half>(p, stream);
    case DType::kBFloat16: return dispatch_fwd_tc<__nv_bfloat16>(p, stream);
    default: return attention_fwd_simt(p, stream);
  }
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
