// The tile loops shared by the CUDA attention kernels (attention_fwd.cuh,
// attention_bwd.cuh, attention_simt.cuh), and the launch side that turns a
// Problem into one kernel variant:
//
//   * pipeline_next: the two-stage cp.async pipeline of the K/V (or Q/dO)
//     tiles: prefetch the next tile, commit, wait for the current one;
//   * warp-tile MMAs on mma.sync m16n8k16: scores from two shared tiles
//     (S = A B^T) and accumulator updates from a score tile held in
//     registers (acc += P B), with the A-fragment packing between the two;
//   * interior/boundary tiles: a tile whose every (query, key) pair is
//     inside the lengths and below the causal diagonal is "interior" and
//     masked without any per-element bounds or causal check (only the mask
//     itself, if the variant has one, is applied); the others ("boundary":
//     the ends of the lengths, the causal diagonal) check each pair. The
//     choice is one block-uniform branch per tile;
//   * host: launch_kernel (attribute, grid checks, launch, error), and the
//     switches from run-time values to template arguments: with_head_dim
//     (the bucket) and with_features (mask kind, causal, dropout, even).
//
// Score-tile layout of an m16n8k16 accumulator (g = lane / 4, t = lane % 4):
// c[nb][2r + e] is row g + 8r, column nb * 8 + 2t + e of the warp's tile.
#pragma once

#include <type_traits>

#include "cuda/attention_common.cuh"
#include "cuda/attention_variants.h"

namespace fastattn {
namespace cuda {
namespace attn {

// ------------------------------------------------------------- pipeline

// Two-stage pipeline over `count` tiles, tile `it` in stage it & 1: before
// the math of tile `it`, start the copy of tile it + 1 into the other stage
// (freed by the trailing __syncthreads of iteration it - 1), then wait for
// tile it's group (committed one iteration earlier, or before the loop for
// tile 0) and make it visible to the block. prefetch(tile, stage) issues the
// copies of one tile; this commits them as one group.
template <typename Prefetch>
__device__ __forceinline__ void pipeline_next(int it, int count, Prefetch&& prefetch) {
  if (it + 1 < count) {
    prefetch(it + 1, (it + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// ------------------------------------------------------ warp-tile MMAs

// The A fragment of k-chunk kk (columns 16kk .. 16kk + 15) of a warp's score
// tile held as accumulators: the accumulator layout of two adjacent 8-column
// blocks is exactly the m16n8k16 A layout, rounded to T.
template <typename T, int NB>
__device__ __forceinline__ void pack_a_frag(uint32_t (&a)[4], const float (&c)[NB][4], int kk) {
  a[0] = Elem<T>::pack2(c[2 * kk][0], c[2 * kk][1]);
  a[1] = Elem<T>::pack2(c[2 * kk][2], c[2 * kk][3]);
  a[2] = Elem<T>::pack2(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = Elem<T>::pack2(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// c += A B^T over k = 0 .. D: A is the warp's 16 rows of a shared tile sA
// (row 0 = the warp's first row), B the NB * 8 rows of a shared tile sB,
// both (rows, D) row-major. S = Q K^T, dP = dO V^T, S^T = K Q^T, ...
template <typename T, int D, int NB>
__device__ __forceinline__ void mma_abt(float (&c)[NB][4], const T* sA, const T* sB, int lane) {
  static_assert(NB % 2 == 0, "score tiles come in pairs of 8-column blocks");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    load_a_frag<D>(a, sA, kk * 16, lane);
#pragma unroll
    for (int nb = 0; nb < NB; nb += 2) {
      uint32_t b[4];
      load_bt_frag<D>(b, sB, nb * 8, kk * 16, lane);
      mma16816<T>(c[nb], a, b[0], b[1]);
      mma16816<T>(c[nb + 1], a, b[2], b[3]);
    }
  }
}

// Two such products over the same k loop (S and dP of the backward), their
// fragment loads interleaved.
template <typename T, int D, int NB>
__device__ __forceinline__ void mma_abt2(float (&c1)[NB][4], const T* sA1, const T* sB1,
                                         float (&c2)[NB][4], const T* sA2, const T* sB2,
                                         int lane) {
  static_assert(NB % 2 == 0, "score tiles come in pairs of 8-column blocks");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a1[4], a2[4];
    load_a_frag<D>(a1, sA1, kk * 16, lane);
    load_a_frag<D>(a2, sA2, kk * 16, lane);
#pragma unroll
    for (int nb = 0; nb < NB; nb += 2) {
      uint32_t b1[4], b2[4];
      load_bt_frag<D>(b1, sB1, nb * 8, kk * 16, lane);
      mma16816<T>(c1[nb], a1, b1[0], b1[1]);
      mma16816<T>(c1[nb + 1], a1, b1[2], b1[3]);
      load_bt_frag<D>(b2, sB2, nb * 8, kk * 16, lane);
      mma16816<T>(c2[nb], a2, b2[0], b2[1]);
      mma16816<T>(c2[nb + 1], a2, b2[2], b2[3]);
    }
  }
}

// acc += P B: P is a warp's score tile in registers (16 x NB * 8, rounded to
// T as the A operand), B the rows 0 .. NB * 8 of a shared (rows, D)
// row-major tile, columns col0 .. col0 + DB * 8. P V, dS K, P^T dO, dS^T Q.
template <typename T, int D, int NB, int DB>
__device__ __forceinline__ void mma_pb(float (&acc)[DB][4], const float (&p)[NB][4],
                                       const T* sB, int col0, int lane) {
  static_assert(NB % 2 == 0 && DB % 2 == 0, "tiles come in pairs of 8-column blocks");
#pragma unroll
  for (int kk = 0; kk < NB / 2; ++kk) {
    uint32_t a[4];
    pack_a_frag<T, NB>(a, p, kk);
#pragma unroll
    for (int db = 0; db < DB; db += 2) {
      uint32_t b[4];
      load_b_frag<D>(b, sB, kk * 16, col0 + db * 8, lane);
      mma16816<T>(acc[db], a, b[0], b[1]);
      mma16816<T>(acc[db + 1], a, b[2], b[3]);
    }
  }
}

// Two such products over the same k loop (dV += P^T dO and dK += dS^T Q of
// the backward), their fragment loads interleaved.
template <typename T, int D, int NB, int DB>
__device__ __forceinline__ void mma_pb2(float (&acc1)[DB][4], const float (&p1)[NB][4],
                                        const T* sB1, float (&acc2)[DB][4],
                                        const float (&p2)[NB][4], const T* sB2, int col0,
                                        int lane) {
  static_assert(NB % 2 == 0 && DB % 2 == 0, "tiles come in pairs of 8-column blocks");
#pragma unroll
  for (int kk = 0; kk < NB / 2; ++kk) {
    uint32_t a1[4], a2[4];
    pack_a_frag<T, NB>(a1, p1, kk);
    pack_a_frag<T, NB>(a2, p2, kk);
#pragma unroll
    for (int db = 0; db < DB; db += 2) {
      uint32_t b1[4], b2[4];
      load_b_frag<D>(b1, sB1, kk * 16, col0 + db * 8, lane);
      mma16816<T>(acc1[db], a1, b1[0], b1[1]);
      mma16816<T>(acc1[db + 1], a1, b1[2], b1[3]);
      load_b_frag<D>(b2, sB2, kk * 16, col0 + db * 8, lane);
      mma16816<T>(acc2[db], a2, b2[0], b2[1]);
      mma16816<T>(acc2[db + 1], a2, b2[2], b2[3]);
    }
  }
}

// ---------------------------------------------- interior / boundary tiles

// Query-major loops (forward, dQ): a block of query rows [m0, m0 + BM)
// visits key tiles 0, 1, ... of BN keys. The number of leading key tiles
// that are interior: the row block lies within q_len, the tile's keys
// within kv_len and (causal) at or below the diagonal of the block's first
// row, hence of every row. Tiles from there to the key end are boundary.
template <class F, int BM, int BN>
__device__ __forceinline__ int interior_key_tiles(const HeadView& hv, int m0) {
  if (!F::kEven && m0 + BM > hv.q_len) return 0;
  int n = hv.kv_len / BN;
  if (F::kCausal) {
    const int allowed = m0 + hv.causal_off + 1;  // keys [0, allowed) for every row >= m0
    n = min(n, allowed > 0 ? allowed / BN : 0);
  }
  return n;
}

// Key-major loops (dK/dV): whether the tile of query rows [i0, i0 + BM) and
// keys [key0, key0 + BN) is interior.
template <class F, int BM, int BN>
__device__ __forceinline__ bool interior_query_tile(const HeadView& hv, int i0, int key0) {
  bool ok = F::kEven || (key0 + BN <= hv.kv_len && i0 + BM <= hv.q_len);
  if (F::kCausal) ok = ok && key0 + BN - 1 <= i0 + hv.causal_off;
  return ok;
}

// Masks a query-major warp score tile in place: c[nb][2r + e] (the raw
// q.k) becomes the masked score in log2 units of row rows[r], key
// n0 + nb * 8 + 2t + e. key_lim[r] = key_limit(rows[r]) (boundary tiles).
template <class F, bool BOUNDARY, int NB>
__device__ __forceinline__ void mask_rows_tile(float (&c)[NB][4], const Problem& pb,
                                               const MaskView<F::kMask>& mask,
                                               const int (&rows)[2], const int (&key_lim)[2],
                                               int n0, int t, float scale_log2) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = n0 + nb * 8 + 2 * t + e;
        c[nb][2 * r + e] = tile_score<F, BOUNDARY>(pb, mask, rows[r], j,
                                                   c[nb][2 * r + e] * scale_log2, j < key_lim[r]);
      }
    }
  }
}

// The same for a key-major (transposed) tile: c[mb][2r + e] is key keys[r],
// query i0 + mb * 8 + 2t + e. q_low[r] = query_low(keys[r]), q_len: the
// row bound (boundary tiles).
template <class F, bool BOUNDARY, int MB>
__device__ __forceinline__ void mask_keys_tile(float (&c)[MB][4], const Problem& pb,
                                               const MaskView<F::kMask>& mask,
                                               const int (&keys)[2], const int (&q_low)[2],
                                               int q_len, int i0, int t, float scale_log2) {
#pragma unroll
  for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = i0 + mb * 8 + 2 * t + e;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const bool pass = i >= q_low[r] && (F::kEven || i < q_len);
        c[mb][2 * r + e] =
            tile_score<F, BOUNDARY>(pb, mask, i, keys[r], c[mb][2 * r + e] * scale_log2, pass);
      }
    }
  }
}

// ------------------------------------------------------------------ host

// Launches kernel<<<blocks, threads, smem, stream>>>(args...) on a 1-D grid
// and returns the first error; blocks == 0 (an empty dim) launches nothing.
// Dynamic shared memory above the 48 KiB default is opted into first.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), int64_t blocks, int threads,
                          size_t smem, cudaStream_t stream, const Args&... args) {
  if (blocks == 0) return cudaSuccess;
  if (blocks < 0 || blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

// fn(std::integral_constant<int, bucket>) for the head-dim bucket of D.
template <typename Fn>
cudaError_t with_head_dim(int64_t D, Fn&& fn) {
  switch (head_dim_bucket(D)) {
    case 32: return fn(std::integral_constant<int, 32>{});
    case 64: return fn(std::integral_constant<int, 64>{});
    case 96: return fn(std::integral_constant<int, 96>{});
    case 128: return fn(std::integral_constant<int, 128>{});
    case 256: return fn(std::integral_constant<int, 256>{});
    default: return cudaErrorInvalidValue;
  }
}

template <DType DT, MaskKind M, typename Fn>
cudaError_t with_flags(const Variant& v, Fn&& fn) {
  if constexpr (!mask_supported(DT, M)) {
    return cudaErrorInvalidValue;
  } else {
    auto go = [&](auto causal, auto dropout) -> cudaError_t {
      constexpr bool kCausal = decltype(causal)::value;
      constexpr bool kDropout = decltype(dropout)::value;
      if constexpr (even_supported(DT, M)) {
        if (v.even) return fn(Features<M, kCausal, kDropout, true>{});
      }
      return fn(Features<M, kCausal, kDropout, false>{});
    };
    if (v.causal) {
      return v.dropout ? go(std::true_type{}, std::true_type{})
                       : go(std::true_type{}, std::false_type{});
    }
    return v.dropout ? go(std::false_type{}, std::true_type{})
                     : go(std::false_type{}, std::false_type{});
  }
}

// fn(Features<...>{}) for the variant the problem runs on (select_variant):
// the one place where mask kind, causal, dropout and even tiles become
// template arguments. Mask kinds without kernels for DT give
// cudaErrorInvalidValue.
template <DType DT, typename Fn>
cudaError_t with_features(const Problem& pb, Fn&& fn) {
  const Variant v = select_variant(pb);
  switch (v.mask) {
    case MaskKind::kNone: return with_flags<DT, MaskKind::kNone>(v, fn);
    case MaskKind::kBool: return with_flags<DT, MaskKind::kBool>(v, fn);
    case MaskKind::kFloat16: return with_flags<DT, MaskKind::kFloat16>(v, fn);
    case MaskKind::kBFloat16: return with_flags<DT, MaskKind::kBFloat16>(v, fn);
    case MaskKind::kFloat32: return with_flags<DT, MaskKind::kFloat32>(v, fn);
  }
  return cudaErrorInvalidValue;
}

// The CUDA type of a DType.
template <DType DT> struct CudaType { using type = float; };
template <> struct CudaType<DType::kFloat16> { using type = __half; };
template <> struct CudaType<DType::kBFloat16> { using type = __nv_bfloat16; };

}  // namespace attn
}  // namespace cuda
}  // namespace fastattn
