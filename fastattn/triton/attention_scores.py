"""The one score path of the Triton attention kernels, and their tile bounds.

Every kernel (forward, both backward passes, split-KV decoding) computes a
tile of scaled scores s = c * q_i . k_j (c = scale * log2(e): log2 units,
so that exponentials are exp2) and hands it to `score_mod`, which applies
the attention variants in API.md's order ("Attention variants"):

    1. softcap > 0 (SOFTCAP):  x = softcap * tanh(x / softcap) on the natural
       score x = s * ln 2 (back to log2 units afterwards),
    2. additive terms: float mask (MASK_KIND == 2), ALiBi (ALIBI)
       -slope_h * |i + off - j|, T5's relative bias (REL_BIAS)
       bias_h[j - i - rel_off] (the table looked up through the buckets),
    3. boolean restrictions: bool mask (MASK_KIND == 1) and, on partial
       tiles only (BOUNDARY), the lengths (i < q_len, j < kv_len), causal
       (j <= i + off) and the window i + off - left <= j <= i + off + right
       (WINDOW_LEFT / WINDOW_RIGHT).

off = kv_len - q_len of the batch row (Lk - Lq without lengths, per
sequence when packed); rel_off = Lk - Lq for padded batches even with
lengths, kv_len - q_len per packed sequence. The variant set is a handful of
tl.constexpr flags fixed at launch: a kernel compiled without a variant has
no trace of it.

Tiles are classified once per program, by loop bounds (`key_tiles` for a
block of query rows, `query_tiles` for a block of keys): tiles no row/key of
the block may use are never visited (cost grows with the window, not L),
"interior" tiles are attended in full by every valid row (no per-element
geometric checks: only the data-dependent masks and the additive terms),
the rest are "boundary" tiles with the checks. The bounds are multiples of
the tile size (but the last, and those clamped to it), so a program walks
one contiguous run of tiles [lo, hi) as three loops: boundary [lo, mid_lo),
interior [mid_lo, mid_hi), boundary [mid_hi, hi).

The relative bias arrives as a per-head vector over relative positions,
RelBias[h, r + R] = table[bucket[r + R], h] (Hq, 2R + 1), formed by the
launcher with one small gather ((Hq, 2R + 1) elements, never an
(., Hq, Lq, Lk) tensor): one load per score instead of two dependent ones.
Its gradient is the score gradient summed per relative position (`rel_tile_sums`).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# MASK_KIND values: no mask, bool mask (True = may attend), additive float bias.
MASK_NONE = 0
MASK_BOOL = 1
MASK_BIAS = 2


@triton.jit
def seq_bounds(QLens, KVLens, b, LQ, LK, HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
               VARLEN: tl.constexpr):
    """(q_start, q_len, k_start, kv_len) of batch row / sequence b: the
    first token and the count, clamped into [0, L] so that a bad value can
    never reach memory beyond the row."""
    q_start = 0
    k_start = 0
    q_len = LQ
    kv_len = LK
    if VARLEN:
        q_start = tl.load(QLens + b).to(tl.int32)
        k_start = tl.load(KVLens + b).to(tl.int32)
        q_len = tl.minimum(tl.maximum(tl.load(QLens + b + 1).to(tl.int32) - q_start, 0), LQ)
        kv_len = tl.minimum(tl.maximum(tl.load(KVLens + b + 1).to(tl.int32) - k_start, 0), LK)
    if HAS_QLENS:
        q_len = tl.minimum(tl.maximum(tl.load(QLens + b).to(tl.int32), 0), LQ)
    if HAS_KVLENS:
        kv_len = tl.minimum(tl.maximum(tl.load(KVLens + b).to(tl.int32), 0), LK)
    return q_start, q_len, k_start, kv_len


@triton.jit
def key_tiles(start_m, rows_end, rows_full, off, kv_len, window_left, window_right,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr,
              WINDOW_RIGHT: tl.constexpr):
    """(lo, mid_lo, mid_hi, hi): the key tiles of a block of query rows.

    The block's valid rows are [start_m, rows_end) (none if rows_end <=
    start_m). Keys [lo, hi) hold every key some valid row may attend; the
    tiles [mid_lo, mid_hi) are attended in full by every valid row (and
    hold only keys < kv_len). rows_full: every row of the block is valid
    (else nothing is interior: a caller whose invalid rows must come out
    exactly zero passes rows_end == start_m + BLOCK_M). lo <= mid_lo <=
    mid_hi <= hi; lo is a multiple of BLOCK_N, and so are mid_lo and
    mid_hi unless they equal hi: the three loops [lo, mid_lo), [mid_lo,
    mid_hi), [mid_hi, hi) in steps of BLOCK_N walk one contiguous run of
    tiles.
    """
    last = rows_end - 1
    lo = 0
    hi = kv_len
    mid_lo = 0
    mid_hi = kv_len
    if WINDOW_LEFT:
        lo = tl.maximum(start_m + off - window_left, 0)
        mid_lo = tl.maximum(last + off - window_left, 0)
    if CAUSAL:
        hi = tl.minimum(hi, last + off + 1)
        mid_hi = tl.minimum(mid_hi, start_m + off + 1)
    if WINDOW_RIGHT:
        hi = tl.minimum(hi, last + off + window_right + 1)
        mid_hi = tl.minimum(mid_hi, start_m + off + window_right + 1)
    lo = lo // BLOCK_N * BLOCK_N  # lo >= 0: // is floor
    hi = tl.where(rows_end > start_m, tl.maximum(hi, lo), lo)
    mid_lo = tl.minimum(tl.maximum((mid_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(mid_hi, 0) // BLOCK_N * BLOCK_N
    mid_hi = tl.where(rows_full, tl.maximum(tl.minimum(mid_hi, hi), mid_lo), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def query_tiles(start_n, keys_end, keys_full, off, q_len, window_left, window_right,
                BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                WINDOW_RIGHT: tl.constexpr):
    """(lo, mid_lo, mid_hi, hi): the query tiles of a block of keys, the
    mirror of `key_tiles`: row i may attend key j iff (causal) i >= j - off,
    (window) j - off - right <= i <= j - off + left, and i < q_len. The
    block's valid keys are [start_n, keys_end); keys_full: all of the
    block's keys are valid (else nothing is interior)."""
    last = keys_end - 1
    lo = 0
    hi = q_len
    mid_lo = 0
    mid_hi = q_len
    if CAUSAL:
        lo = tl.maximum(start_n - off, 0)
        mid_lo = tl.maximum(last - off, 0)
    if WINDOW_RIGHT:
        lo = tl.maximum(lo, start_n - off - window_right)
        mid_lo = tl.maximum(mid_lo, last - off - window_right)
    if WINDOW_LEFT:
        hi = tl.minimum(hi, last - off + window_left + 1)
        mid_hi = tl.minimum(mid_hi, start_n - off + window_left + 1)
    lo = lo // BLOCK_M * BLOCK_M
    hi = tl.where(keys_end > start_n, tl.maximum(hi, lo), lo)
    mid_lo = tl.minimum(tl.maximum((mid_lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo), hi)
    mid_hi = tl.maximum(mid_hi, 0) // BLOCK_M * BLOCK_M
    mid_hi = tl.where(keys_full, tl.maximum(tl.minimum(mid_hi, hi), mid_lo), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def tanh(x):
    """tanh for float32/float64 blocks, to a few ulp: an odd polynomial near
    0 (float32; where 1 - e^(-2|x|) would cancel), (1 - e)/(1 + e) with
    e = e^(-2|x|) elsewhere (never overflows)."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    if x.dtype != tl.float64:
        # Taylor series to x^9: relative error < 1e-8 for |x| < 1/4
        a2 = a * a
        small = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333 + a2 * (
            -0.05396825396825397 + a2 * 0.021869488536155203))))
        t = tl.where(a < 0.25, small, t)
    return tl.where(x < 0, -t, t)


@triton.jit
def score_mod(s, qi, kj, q_len, kv_len, off, rel_off, load_ok, mask_ptrs, slope, rel_ptr,
              rel_radius, window_left, window_right, softcap,
              BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
              SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,
              WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
    """(s, t): the score tile with every variant applied, and tanh of the
    softcap (t, for the backward's 1 - t^2; s itself without SOFTCAP).

    s: scaled scores in log2 units, a (rows, cols) tile in the accumulator
    dtype. qi / kj: query and key index of each element (int tensors that
    broadcast to the tile: rows or columns of either kind, so the backward's
    transposed tiles use it too), within the sequence. load_ok: where the
    mask and the per-row operands may be read (in bounds). mask_ptrs: the
    mask element of each score (MASK_KIND != 0). slope: ALiBi slope of the
    row's head (scalar or broadcastable). rel_ptr: the head's relative-bias
    vector (RelBias + h * (2R + 1)), R = rel_radius. BOUNDARY: apply the
    geometric restrictions (lengths, causal, window) element-wise; interior
    tiles skip them (the caller's loop bounds guarantee them).
    """
    t = s
    if SOFTCAP:
        t = tanh(s * (LN2 / softcap))
        s = t * (softcap * LOG2E)
    if MASK_KIND == 2:
        s += tl.load(mask_ptrs, mask=load_ok, other=0.0).to(s.dtype) * LOG2E
    if ALIBI:
        s -= tl.abs(qi + off - kj).to(s.dtype) * (slope.to(s.dtype) * LOG2E)
    if REL_BIAS:
        # entry r + R of the head's vector, r = j - i - rel_off; clamped for
        # padded rows/keys (whose scores are never used)
        idx = tl.minimum(tl.maximum(kj - qi - rel_off + rel_radius, 0), 2 * rel_radius)
        s += tl.load(rel_ptr + idx, mask=load_ok, other=0.0).to(s.dtype) * LOG2E
    if MASK_KIND == 1:
        s = tl.where(tl.load(mask_ptrs, mask=load_ok, other=0) != 0, s, float("-inf"))
    if BOUNDARY:
        ok = (kj < kv_len) & (qi < q_len)
        if CAUSAL:
            ok = ok & (kj <= qi + off)
        if WINDOW_LEFT:
            ok = ok & (kj >= qi + off - window_left)
        if WINDOW_RIGHT:
            ok = ok & (kj <= qi + off + window_right)
        s = tl.where(ok, s, float("-inf"))
    return s, t


@triton.jit
def rel_tile_sums(ds, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPAN: tl.constexpr):
    """(SPAN,) sums of a (BLOCK_M, BLOCK_N) tile along its diagonals: entry
    x = c - a + BLOCK_M - 1 sums ds[a, c] (one relative position per
    diagonal); entries x >= BLOCK_M + BLOCK_N - 1 are 0. SPAN: a power of
    two >= BLOCK_M + BLOCK_N - 1."""
    a = tl.arange(0, BLOCK_M)
    x = tl.arange(0, SPAN)
    col = x[None, :] - (BLOCK_M - 1) + a[:, None]                 # (BLOCK_M, SPAN)
    inside = (col >= 0) & (col < BLOCK_N)
    skew = tl.gather(ds, tl.minimum(tl.maximum(col, 0), BLOCK_N - 1), 1)
    return tl.sum(tl.where(inside, skew, 0.0), 0)


@triton.jit
def rel_carry_step(carry, ds, row_ptr, start_n, width, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, SPAN: tl.constexpr):
    """Add one key tile's diagonal sums to the running per-position sums of
    a query block, store the positions no later tile touches, shift.

    A query block's row of sums is indexed by l = n + x for the tile at key
    n and its diagonal x = c - a + BLOCK_M - 1 (a row, c key within the
    tile): relative position r = l - (BLOCK_M - 1) - start_m - rel_off, so
    one row holds the block's positions with no gaps (width >= Lk rounded
    up to BLOCK_N, + BLOCK_M + BLOCK_N). carry[x] is entry start_n + x; the
    next tile starts BLOCK_N further, so entries x < BLOCK_N are final. Each
    entry of a program's row is stored once (no read-modify-write, no
    atomics). Returns the carry for the next tile."""
    carry += rel_tile_sums(ds, BLOCK_M, BLOCK_N, SPAN)
    x = tl.arange(0, SPAN)
    l = start_n + x
    tl.store(row_ptr + l, carry, mask=(x < BLOCK_N) & (l < width))
    shifted = tl.gather(carry, tl.minimum(x + BLOCK_N, SPAN - 1), 0)
    return tl.where(x + BLOCK_N < SPAN, shifted, 0.0)


@triton.jit
def rel_carry_flush(carry, row_ptr, start_n, width, BLOCK_M: tl.constexpr,
                    SPAN: tl.constexpr):
    """Store what the last tile left in the carry (entries start_n + x,
    x < BLOCK_M - 1, start_n the key after the last tile)."""
    x = tl.arange(0, SPAN)
    l = start_n + x
    tl.store(row_ptr + l, carry, mask=(x < BLOCK_M - 1) & (l < width))


# ------------------------------------------------------------------ host side


class VariantArgs:
    """The kernel arguments of one call's variants (a KernelVariants, or
    None for none), checked so that no user value can make a kernel read
    out of bounds.

    flags: the constexprs (SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT,
    WINDOW_RIGHT); pointers: (Slopes, RelBias); stride_ab: Slopes' batch
    stride; scalars: (window_left, window_right, softcap, rel_radius).
    RelBias[h, r + R] = table[buckets[r + R], h] in the accumulator dtype,
    (Hq, 2R + 1): the table seen through the buckets, one small gather.
    """

    def __init__(self, variants, q, batch: int, hq: int, lq: int, lk: int, dummy):
        import torch
        wl = wr = -1
        softcap = 0.0
        slopes = table = buckets = None
        radius = 0
        if variants is not None:
            wl, wr = variants.window_left, variants.window_right
            softcap, slopes = variants.softcap, variants.alibi_slopes
            table, buckets, radius = variants.rel_table, variants.rel_buckets, variants.rel_radius
        for name, w in (("window_left", wl), ("window_right", wr)):
            if isinstance(w, bool) or not isinstance(w, int) or w < -1:
                raise ValueError(f"{name} must be an int >= -1 (-1 = unbounded), got {w!r}")
        if not (isinstance(softcap, (int, float)) and softcap >= 0 and softcap < float("inf")):
            raise ValueError(f"softcap must be a finite float >= 0 (0 = off), got {softcap!r}")
        if slopes is not None:
            if (slopes.dtype != torch.float32 or slopes.dim() != 2
                    or slopes.shape[0] not in (1, batch) or slopes.shape[1] != hq
                    or slopes.device != q.device):
                raise ValueError(f"alibi_slopes must be float32 (B or 1, Hq) = ({batch} or 1, "
                                 f"{hq}) on {q.device}, got {slopes.dtype} "
                                 f"{tuple(slopes.shape)} on {slopes.device}")
            slopes = slopes.contiguous()
        rel_bias = None
        if table is not None:
            if (table.dim() != 2 or table.shape[1] != hq or not table.is_floating_point()
                    or table.device != q.device):
                raise ValueError(f"rel_table must be a float (num_buckets, Hq = {hq}) tensor on "
                                 f"{q.device}, got {table.dtype} {tuple(table.shape)}")
            if (buckets is None or buckets.dim() != 1 or buckets.numel() != 2 * radius + 1
                    or buckets.device != q.device or radius < max(lq, lk) - 1):
                raise ValueError(f"rel_buckets must be (2R + 1,) with R = rel_radius >= "
                                 f"max(Lq, Lk) - 1 = {max(lq, lk) - 1}, got R = {radius} and "
                                 f"{None if buckets is None else tuple(buckets.shape)}")
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            rel_bias = table.detach().to(acc).t()[:, buckets.long()].contiguous()
        self.flags = dict(SOFTCAP=softcap > 0, ALIBI=slopes is not None,
                          REL_BIAS=rel_bias is not None, WINDOW_LEFT=wl >= 0,
                          WINDOW_RIGHT=wr >= 0)
        self.pointers = (slopes if slopes is not None else dummy,
                         rel_bias if rel_bias is not None else dummy)
        self.stride_ab = 0 if slopes is None or slopes.shape[0] == 1 else slopes.stride(0)
        self.scalars = (max(wl, 0), max(wr, 0), float(softcap) if softcap > 0 else 1.0,
                        radius if rel_bias is not None else 0)
        self.rel_radius = radius if rel_bias is not None else 0
