"""Flash-attention forward kernel (Triton).

One program computes a BLOCK_M x D tile of the output for one (batch, query
head): it streams the key/value tiles of that head's kv head through an
online softmax and never materializes the Lq x Lk score matrix.

Math (per query row i, log2 domain, c = scale * log2(e)):
    s_ij = c * q_i . k_j + log2(e) * bias_ij       (-inf where i may not attend j)
    m_i  = max_j s_ij,   l_i = sum_j 2^(s_ij - m_i)
    out_i = sum_j 2^(s_ij - m_i) v_j / l_i
    lse_i = (m_i + log2(l_i)) * ln(2)              (natural log, for the backward)
m and l are updated tile by tile: when a new tile raises the running max
from m to m', the partial sums are rescaled by alpha = 2^(m - m').
Folding log2(e) into the scale turns every exponential into exp2.

Which keys a row may attend (b = batch row, with qL/kL its q/kv lengths,
defaulting to Lq/Lk):
    j < kL,  i < qL,  causal: j <= i + (kL - qL)  (bottom-right aligned),
    bool mask: mask[b, h, i, j],  float mask: adds bias (-inf excludes).
Dropout (DROPOUT): the softmax statistics m, l and the lse are those of
the undropped probabilities; only the product with V sees the mask:
    out_i = sum_j keep_ij 2^(s_ij - m_i) v_j / l_i / (1 - p)
keep_ij comes from the counter-based hash of fastattn/_rng.py with
row = (b * Hq + h) * Lq + i and col = j (i, j within the sequence), so the
backward regenerates it and the reference draws the same mask. The
1 / (1 - p) factor is applied once to the normalized output.

Rows with no key they may attend get out = 0 and lse = -inf: the running
max stays -inf, so it is replaced by 0 before subtracting (a guard against
-inf - -inf = NaN) and l stays 0.

Packed sequences (VARLEN): the batch axis of the grid indexes sequences of
a packed (total, H, D) layout; QLens/KVLens are then cu_seqlens (B + 1,)
prefix sums, sequence b occupies tokens [cu[b], cu[b + 1]), LQ/LK are the
longest sequences, and the batch strides are 0 (the start token's offset
takes their place). Rows and keys past the sequence end belong to the next
sequence: nothing is stored there. The lse is laid out (H, total).

Variants (window_size, ALiBi, softcap, T5's relative bias) and every
mask are applied by the one score path of attention_scores.py
(`score_mod`), shared with the backward and decoding kernels.

Tiles are skipped by loop bounds, not masked: key tiles at or beyond kL,
with causal right of the diagonal of the block's last valid row, and with
a window outside the band of the block's rows are never visited
(`key_tiles`), so the cost grows with the window, not with Lk. The visited
range is split in three: "interior" tiles that every row of the block may
fully attend (no per-element bound checks), and "boundary" tiles before
and after them (the band's edges, the partial last key tile) with the checks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention_scores import (LN2, LOG2E, MASK_BIAS, MASK_BOOL, MASK_NONE,  # noqa: F401
                               key_tiles, score_mod, seq_bounds)
from .rng import dropout_keep, load_seed, row_keys


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, slope, rel_ptr,
               stride_kn, stride_vn, stride_mm, stride_mn,
               offs_m, offs_d, lo, hi, q_len, kv_len, diag, rel_off, LQ, LK, HEAD_DIM,
               qk_scale, drop_a, drop_b, drop_threshold,
               window_left, window_right, softcap, rel_radius,
               BLOCK_N: tl.constexpr, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
               MASK_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr,
               DROPOUT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
               REL_BIAS: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) over key tiles [lo, hi).

    acc: (BLOCK_M, BLOCK_D) unnormalized output; l_i, m_i: (BLOCK_M,) running
    sum and max (log2 domain); q: (BLOCK_M, BLOCK_D) query tile;
    k_base/v_base/mask_base: pointers at this (batch, head)'s key 0 / mask
    row 0; slope / rel_ptr: the head's ALiBi slope and relative-bias vector;
    offs_m/offs_d: row and head-dim indices of the tile; q_len/kv_len/diag/
    rel_off: this batch row's lengths, alignment kL - qL and relative-bias
    offset; BOUNDARY: apply the geometric checks element-wise (else the
    caller guarantees every element of [lo, hi) is attendable);
    drop_a/drop_b: the rows' dropout keys (BLOCK_M,), drop_threshold:
    rng.threshold_arg(p), used iff DROPOUT.
    """
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if BOUNDARY:
            n_ok = offs_n < kv_len
        else:
            n_ok = offs_n < LK  # always true here; keeps the load in bounds
        # K^T tile (BLOCK_D, BLOCK_N): strided load, no copy of k.
        kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s, _t = score_mod(s, offs_m[:, None], offs_n[None, :], q_len, kv_len, diag, rel_off,
                          (offs_m[:, None] < LQ) & (offs_n[None, :] < LK),
                          mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                          slope, rel_ptr, rel_radius, window_left, window_right, softcap,
                          BOUNDARY, CAUSAL, MASK_KIND, SOFTCAP, ALIBI, REL_BIAS,
                          WINDOW_LEFT, WINDOW_RIGHT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Guard: a row that has seen only -inf keeps m = -inf; subtract 0
        # instead so that 2^(-inf - 0) = 0 rather than NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:  # after the statistics: only the product with V is dropped
            p = tl.where(dropout_keep(drop_a[:, None], drop_b[:, None], offs_n[None, :],
                                      drop_threshold), p, 0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_fwd_kernel(
    Q, K, V,            # inputs: q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D); last dim contiguous
    Out,                # output (B, Hq, Lq, D), dtype of q
    Lse,                # output (B, Hq, Lq) contiguous, natural-log logsumexp (fp32; fp64 for fp64)
                        # ((Hq, total_q) when VARLEN)
    Mask,               # bool mask viewed as uint8, or float bias; dummy if MASK_KIND == 0
    QLens, KVLens,      # (B,) int lengths, dummies unless HAS_QLENS / HAS_KVLENS;
                        # (B + 1,) cu_seqlens of q / k when VARLEN
    Seed,               # (1,) int64 dropout seed; dummy unless DROPOUT
    Slopes,             # (B or 1, Hq) float32 ALiBi slopes; dummy unless ALIBI
    RelBias,            # (Hq, 2R + 1) relative bias per head and position; dummy unless REL_BIAS
    stride_qb, stride_qh, stride_qm,          # q strides (elements)
    stride_kb, stride_kh, stride_kn,          # k strides
    stride_vb, stride_vh, stride_vn,          # v strides
    stride_ob, stride_oh, stride_om,          # out strides
    stride_mb, stride_mh, stride_mm, stride_mn,  # mask strides, 0 on broadcast dims
    stride_lb, stride_lh,                     # lse strides of batch and head (token stride 1)
    stride_ab,          # batch stride of Slopes (0 when shared by the batch)
    H_Q,                # number of query heads
    GROUP,              # query heads per kv head (Hq // Hkv)
    LQ, LK,             # padded sequence lengths of q and k (longest sequences when VARLEN)
    HEAD_DIM,           # D (BLOCK_D is D rounded up to a power of two)
    qk_scale,           # softmax scale * log2(e)
    drop_threshold,     # dropout threshold, int32 bits of a uint32 (rng.threshold_arg)
    drop_scale,         # 1 / (1 - dropout_p)
    LEN_BUCKET,         # autotuning key only: log2 bucket of max(Lq, Lk)
    window_left, window_right,  # the window (used iff WINDOW_LEFT / WINDOW_RIGHT)
    softcap,            # the cap (used iff SOFTCAP)
    rel_radius,         # R of RelBias (used iff REL_BIAS)
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
    DROPOUT: tl.constexpr,        # apply in-kernel dropout to the probabilities
    VARLEN: tl.constexpr,         # packed sequences delimited by cu_seqlens
    ACC_DTYPE: tl.constexpr,      # tl.float32 (tl.float64 for float64 inputs)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32 inputs
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,  # the variants
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL:
        # Blocks further down the diagonal do more work: start them first.
        pid_m = tl.num_programs(0) - 1 - pid_m
    # Grid (query tiles, Hq, B): heads and batch on their own axes, so that
    # neither is bound by the 65535 limit of a grid's y/z dims alone.
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    pid_bh = b * H_Q + h  # dropout rows of (b, h) start at pid_bh * LQ

    q_start, q_len, k_start, kv_len = seq_bounds(QLens, KVLens, b, LQ, LK, HAS_QLENS,
                                                 HAS_KVLENS, VARLEN)
    # Rows that exist in memory for this (b, h): padded rows are written
    # (zeros), but with VARLEN the rows past q_len are the next sequence's.
    q_rows = LQ
    if VARLEN:
        q_rows = q_len
    diag = kv_len - q_len  # causal: row i may attend j <= i + diag
    rel_off = LK - LQ      # relative positions: the padded shapes', per sequence when packed
    if VARLEN:
        rel_off = diag

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_base = Q + b * stride_qb + h * stride_qh + q_start.to(tl.int64) * stride_qm
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=(offs_m[:, None] < q_len) & d_ok[None, :], other=0.0)

    # Key tiles [lo, hi) that some valid row of this block may attend, the
    # interior [mid_lo, mid_hi) that every row may attend. Rows past q_len
    # are never stored, so they need not be masked: rows_full = True.
    rows_end = tl.minimum(start_m + BLOCK_M, q_len)  # <= start_m: no valid row
    lo, mid_lo, mid_hi, hi = key_tiles(start_m, rows_end, True, diag, kv_len, window_left,
                                       window_right, BLOCK_N, CAUSAL, WINDOW_LEFT,
                                       WINDOW_RIGHT)

    k_base = K + b * stride_kb + hk * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b * stride_vb + hk * stride_vh + k_start.to(tl.int64) * stride_vn
    mask_base = Mask + b * stride_mb + h * stride_mh
    slope = 0.0
    if ALIBI:
        slope = tl.load(Slopes + b * stride_ab + h)
    rel_ptr = RelBias + h * (2 * rel_radius + 1)

    if DROPOUT:
        seed_lo, seed_hi = load_seed(Seed)
        drop_a, drop_b = row_keys(seed_lo, seed_hi, pid_bh * LQ + offs_m)
    else:
        drop_a = offs_m  # unused
        drop_b = offs_m

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC_DTYPE)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, slope, rel_ptr,
                               stride_kn, stride_vn, stride_mm, stride_mn,
                               offs_m, offs_d, lo, mid_lo, q_len, kv_len, diag, rel_off, LQ, LK,
                               HEAD_DIM, qk_scale, drop_a, drop_b, drop_threshold,
                               window_left, window_right, softcap, rel_radius,
                               BLOCK_N, True, CAUSAL, MASK_KIND, DOT_PRECISION, DROPOUT,
                               SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, slope, rel_ptr,
                               stride_kn, stride_vn, stride_mm, stride_mn,
                               offs_m, offs_d, mid_lo, mid_hi, q_len, kv_len, diag, rel_off,
                               LQ, LK, HEAD_DIM, qk_scale, drop_a, drop_b, drop_threshold,
                               window_left, window_right, softcap, rel_radius,
                               BLOCK_N, False, CAUSAL, MASK_KIND, DOT_PRECISION, DROPOUT,
                               SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, slope, rel_ptr,
                               stride_kn, stride_vn, stride_mm, stride_mn,
                               offs_m, offs_d, mid_hi, hi, q_len, kv_len, diag, rel_off, LQ, LK,
                               HEAD_DIM, qk_scale, drop_a, drop_b, drop_threshold,
                               window_left, window_right, softcap, rel_radius,
                               BLOCK_N, True, CAUSAL, MASK_KIND, DOT_PRECISION, DROPOUT,
                               SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)

    # Normalize; rows that attended nothing (l = 0) and padded rows give 0 / -inf.
    row_ok = (offs_m < q_len) & (l_i != 0)  # NaN rows stay NaN, as in torch
    l_safe = tl.where(row_ok, l_i, 1.0)
    denom = l_safe
    if DROPOUT:
        denom = l_safe / drop_scale  # folds the 1 / (1 - p) factor into the division
    out = tl.where(row_ok[:, None], acc / denom[:, None], 0.0)
    lse = tl.where(row_ok, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))

    in_rows = offs_m < q_rows
    o_base = Out + b * stride_ob + h * stride_oh + q_start.to(tl.int64) * stride_om
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=in_rows[:, None] & d_ok[None, :])
    lse_base = Lse + b * stride_lb + h * stride_lh + q_start
    tl.store(lse_base + offs_m, lse.to(Lse.dtype.element_ty), mask=in_rows)
