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
//     inside the lengths and inside the band (causal, window) is "interior"
//     and masked without any per-element bounds or band check (only the
//     mask itself, if the variant has one, is applied); the others
//     ("boundary": the ends of the lengths, the band's edges) check each
//     pair. The choice is one block-uniform branch per tile; tiles wholly
//     outside the band or the lengths are never visited;
//   * host: launch_kernel (attribute, grid checks, launch, error), and the
//     switches from run-time values to template arguments: with_head_dim
//     (the bucket) and with_features (mask kind, banded, dropout, even,
//     score terms).
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
// visits the key tiles of BN keys from key_begin / BN to the key end. The
// key tiles [begin, end) (tile indices) that are interior: the row block
// lies within q_len, the tile's keys within kv_len and (banded) inside the
// band of every row: at or below the upper edge of the block's first row
// and at or above the lower edge of its last row. The other visited tiles
// are boundary.
struct TileRange {
  int begin = 0, end = 0;
  __device__ __forceinline__ bool holds(int tile) const { return tile >= begin && tile < end; }
};

template <class F, int BM, int BN>
__device__ __forceinline__ TileRange interior_key_tiles(const HeadView& hv, int m0) {
  TileRange r;
  if (!F::kEven && m0 + BM > hv.q_len) return r;
  int keys_end = hv.kv_len;  // keys [keys_begin, keys_end) pass for every row of the block
  int keys_begin = 0;
  if (F::kBanded) {
    keys_end = min(keys_end, m0 + hv.hi_off + 1);
    keys_begin = max(0, m0 + BM - 1 + hv.lo_off);
  }
  r.begin = static_cast<int>(ceil_div(keys_begin, BN));
  r.end = max(keys_end, 0) / BN;
  return r;
}

// Key-major loops (dK/dV): whether the tile of query rows [i0, i0 + BM) and
// keys [key0, key0 + BN) is interior.
template <class F, int BM, int BN>
__device__ __forceinline__ bool interior_query_tile(const HeadView& hv, int i0, int key0) {
  bool ok = F::kEven || (key0 + BN <= hv.kv_len && i0 + BM <= hv.q_len);
  if (F::kBanded) {
    ok = ok && key0 + BN - 1 <= i0 + hv.hi_off && key0 >= i0 + BM - 1 + hv.lo_off;
  }
  return ok;
}

// The bounds of a thread's two rows for its boundary tiles (query-major):
// key j of row rows[r] passes iff j < hi[r] (key_limit: lengths and the
// band's upper edge) and, banded, j - rows[r] >= lo_off (the lower edge
// i + lo_off <= j of attention_common.cuh): one register for both rows'
// lower edges, as register pressure decides these kernels' occupancy.
struct RowBand {
  int hi[2];
  int lo_off;
  template <bool BANDED>
  __device__ __forceinline__ bool pass(int r, int row, int j) const {
    return j < hi[r] && (!BANDED || j - row >= lo_off);
  }
};

template <bool BANDED>
__device__ __forceinline__ RowBand row_bands(const HeadView& hv, const int (&rows)[2]) {
  RowBand b;
  b.hi[0] = key_limit<BANDED>(hv, rows[0]);
  b.hi[1] = key_limit<BANDED>(hv, rows[1]);
  b.lo_off = hv.lo_off;
  return b;
}

// The bounds of a thread's two keys (key-major): query i of key keys[r]
// passes iff lo[r] <= i < hi[r] (query_low, query_high).
struct KeyBand {
  int lo[2], hi[2];
};

template <bool BANDED>
__device__ __forceinline__ KeyBand key_bands(const HeadView& hv, const int (&keys)[2]) {
  KeyBand b;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    b.lo[r] = query_low<BANDED>(hv, keys[r]);
    b.hi[r] = query_high<BANDED>(hv, keys[r]);
  }
  return b;
}

// Masks a query-major warp score tile in place: c[nb][2r + e] (the raw
// q.k) becomes the score in log2 units (score terms, mask, bounds) of row
// rows[r], key n0 + nb * 8 + 2t + e. band: row_bands(rows) (boundary
// tiles).
template <class F, bool BOUNDARY, int NB>
__device__ __forceinline__ void mask_rows_tile(float (&c)[NB][4], const Problem& pb,
                                               const MaskView<F::kMask>& mask,
                                               const ScoreTerms& terms, const int (&rows)[2],
                                               const RowBand& band, int n0, int t,
                                               float scale_log2) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = n0 + nb * 8 + 2 * t + e;
        const bool pass = band.pass<F::kBanded>(r, rows[r], j);
        const float x = pair_score<F::kScoreTerms>(terms, c[nb][2 * r + e], scale_log2,
                                                   rows[r], j);
        c[nb][2 * r + e] = tile_score<F, BOUNDARY>(pb, mask, rows[r], j, x, pass);
      }
    }
  }
}

// The same for a key-major (transposed) tile: c[mb][2r + e] is key keys[r],
// query i0 + mb * 8 + 2t + e. band: key_bands(keys) (boundary tiles).
template <class F, bool BOUNDARY, int MB>
__device__ __forceinline__ void mask_keys_tile(float (&c)[MB][4], const Problem& pb,
                                               const MaskView<F::kMask>& mask,
                                               const ScoreTerms& terms, const int (&keys)[2],
                                               const KeyBand& band, int i0, int t,
                                               float scale_log2) {
#pragma unroll
  for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = i0 + mb * 8 + 2 * t + e;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // Even tiles without a band hold no query past q_len.
        const bool pass = i >= band.lo[r] && ((F::kEven && !F::kBanded) || i < band.hi[r]);
        const float x = pair_score<F::kScoreTerms>(terms, c[mb][2 * r + e], scale_log2, i,
                                                   keys[r]);
        c[mb][2 * r + e] = tile_score<F, BOUNDARY>(pb, mask, i, keys[r], x, pass);
      }
    }
  }
}

// ------------------------------------------- relative-bias gradient

// T5's bias gradient (BwdParams::drel_rows): the dQ kernels write the dS of
// a tile of BM query rows and BN keys (before the softcap factor: the bias
// enters after the cap) into a shared (BM, BN + 1) float tile, and this
// adds its diagonal sums to the block's own workspace row: diagonal
// dd = jj - ii + BM - 1 of the tile of keys from n0 goes to row[n0 + dd]
// (u = j - i + m0 + BM - 1). One thread per diagonal sums it in a fixed
// order and successive tiles are ordered by the caller's __syncthreads, so
// the result is deterministic. Diagonals at or past `width` (= Lk + BM - 1)
// hold only keys past Lk, whose dS is 0, and are skipped. The caller syncs
// after writing the tile and before rewriting it.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void add_tile_diagonals(const float* tile, float* row, int n0,
                                                   int64_t width) {
  for (int dd = threadIdx.x; dd < BM + BN - 1; dd += THREADS) {
    const int u = n0 + dd;
    if (u >= width) continue;
    const int ii_begin = max(0, BM - 1 - dd);       // jj = ii + dd - (BM - 1) >= 0
    const int ii_end = min(BM, BN + BM - 1 - dd);   // jj < BN
    float sum = 0.f;
#pragma unroll 8
    for (int ii = ii_begin; ii < ii_end; ++ii) sum += tile[ii * (BN + 1) + ii + dd - (BM - 1)];
    row[u] += sum;
  }
}

// The calling dQ block's workspace row (block index = (b * Hq + h) *
// query tiles + query tile), formed where it is used: kept across the key
// loop, the pointer spills the D = 256 kernels.
__device__ __forceinline__ float* block_drel_row(const BwdParams& p) {
  return p.drel_rows + static_cast<int64_t>(blockIdx.x) * p.drel_width;
}

// Bytes of that shared tile.
template <int BM, int BN>
constexpr size_t drel_tile_bytes() { return static_cast<size_t>(BM) * (BN + 1) * sizeof(float); }

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
    auto go = [&](auto banded, auto dropout) -> cudaError_t {
      constexpr bool kBanded = decltype(banded)::value;
      constexpr bool kDropout = decltype(dropout)::value;
      if constexpr (score_terms_supported(M)) {
        if (v.score_terms) return fn(Features<M, kBanded, kDropout, false, true>{});
      } else {
        if (v.score_terms) return cudaErrorInvalidValue;
      }
      if constexpr (even_supported(DT, M)) {
        if (v.even) return fn(Features<M, kBanded, kDropout, true>{});
      }
      return fn(Features<M, kBanded, kDropout, false>{});
    };
    if (v.banded) {
      return v.dropout ? go(std::true_type{}, std::true_type{})
                       : go(std::true_type{}, std::false_type{});
    }
    return v.dropout ? go(std::false_type{}, std::true_type{})
                     : go(std::false_type{}, std::false_type{});
  }
}

// fn(Features<...>{}) for the variant the problem runs on (select_variant):
// the one place where mask kind, band, dropout, even tiles and score terms
// become template arguments. Mask kinds without kernels for DT, and score
// terms with a mask, give cudaErrorInvalidValue.
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
