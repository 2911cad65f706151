"""Flash-attention backward kernels (Triton), by recomputation.

Nothing of size Lq x Lk is stored by the forward: the backward recomputes
the probabilities tile by tile from the saved logsumexp,
    p_ij = exp(s_ij - lse_i)      (in the log2 domain: 2^(c q_i.k_j + log2e b_ij - log2e lse_i)),
and, with dO the output gradient and x_ij = scale * q_i.k_j + bias_ij the
score whose softmax is p:
    dV_j   = sum_i p_ij dO_i
    dp_ij  = dO_i . v_j
    dx_ij  = p_ij (dp_ij - delta_i),   delta_i = sum_j p_ij dp_ij = dO_i . out_i - dlse_i
    dQ_i   = scale * sum_j dx_ij k_j
    dK_j   = scale * sum_i dx_ij q_i
    dbias  = dx                        (for a float mask that requires grad)
delta is computed once per row by a small preprocess kernel. The optional
gradient of the returned lse enters only through delta, because
d lse_i / d x_ij = p_ij.

Dropout. The forward computes out_i = sum_j z_ij v_j with the dropped
probabilities z_ij = p_ij keep_ij / (1 - q) (q the dropout probability,
keep_ij regenerated here from the seed, exactly as the forward drew it).
So dV_j = sum_i z_ij dO_i, and the gradient reaching p is
    dp~_ij = dO_i . v_j * keep_ij / (1 - q)       (dp masked and rescaled).
The softmax backward is unchanged with dp~ in place of dp:
    dx_ij = p_ij (dp~_ij - delta_i),  delta_i = sum_j p_ij dp~_ij
                                             = sum_j z_ij (dO_i . v_j) = dO_i . out_i,
so delta still comes from the output, and it is the undropped p (from
the saved lse, which dropout does not touch) that multiplies.

Work split: dK/dV are accumulated per key tile by one program that iterates
over the query tiles (and, for grouped-query attention, over all query heads
sharing the kv head); dQ is accumulated per query tile by a separate pass
over the key tiles. The alternative, one pass that adds dQ contributions
with atomics from every key-tile program, saves recomputing q.k and dO.v
once more but makes dQ's summation order depend on scheduling: results
would differ bitwise from run to run. With the separate pass every output
element is written by exactly one program in a fixed order, so the backward
is deterministic (bitwise reproducible on the same GPU and config), and dQ
needs no fp32 scratch buffer or zero-initialization.

Packed sequences (VARLEN) as in the forward (attention_fwd.py): sequence
b's tokens start at cu_seqlens[b], lse and delta are (Hq, total_q), and
nothing is stored past a sequence's end.

Rows with lse = -inf (nothing to attend, or padded) get p = 0 everywhere:
their lse is replaced by +inf before subtracting (2^(s - inf) = 0), so
their gradients are exactly 0, never NaN.

Variants: the scores come from the forward's score path (`score_mod` of
attention_scores.py). With x the final score (softcapped, biased), the
softmax backward gives dx as above; the float mask's gradient and the
relative bias's are dx (the additive terms enter x unscaled), and with
softcap the raw score's gradient is dx * (1 - tanh^2), which is what dQ
and dK use:
    ds_raw = dx * (1 - t^2),   t = tanh(s_raw / softcap).
The relative bias's gradient per relative position r (STORE_DREL):
    drel[h, r] = sum over b, i, j with j - i - rel_off = r of dx_bhij,
written by the dQ pass without atomics: each program (b, h, query tile)
keeps the diagonal sums of its tiles in registers (`rel_carry_step`) and
stores every relative position of its own scratch row exactly once; the
launcher sums the rows in a fixed order.

Tiles are classified by loop bounds as in the forward (`key_tiles` for the
dQ pass, its mirror `query_tiles` for the dK/dV pass): tiles outside the
lengths, the causal band or the window are never visited, interior tiles
(full tiles every element of which is attendable) skip the per-element
geometric checks, boundary tiles apply them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .attention_scores import (LOG2E, key_tiles, query_tiles, rel_carry_flush,
                               rel_carry_step, score_mod, seq_bounds)
from .rng import dropout_keep, load_seed, row_keys


@triton.jit
def attention_bwd_preprocess_kernel(
    Out, DOut,          # forward output and its gradient, (B, Hq, Lq, D), last dim contiguous
    DLse,               # gradient of lse (B, Hq, Lq) contiguous; dummy unless HAS_DLSE
    Delta,              # output (B, Hq, Lq) contiguous: rowsum(dO * out) - dlse
    stride_ob, stride_oh, stride_om,     # out strides
    stride_db, stride_dh, stride_dm,     # dout strides
    H_Q, LQ, HEAD_DIM,  # query heads, query length, head dim
    BLOCK_D: tl.constexpr, HAS_DLSE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    pid_bh = b * H_Q + h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < LQ) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=ok, other=0.0).to(ACC_DTYPE)
    do = tl.load(DOut + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm
                 + offs_d[None, :], mask=ok, other=0.0).to(ACC_DTYPE)
    delta = tl.sum(o * do, 1)
    row = pid_bh * LQ + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLse + row, mask=offs_m < LQ, other=0.0).to(ACC_DTYPE)
    tl.store(Delta + row, delta, mask=offs_m < LQ)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse, Delta, row_base, mask_base, slope, rel_ptr,
                seed_lo, seed_hi, drop_base, stride_qm, stride_dm, stride_mm, stride_mn,
                offs_n, offs_d, lo, hi, q_len, kv_len, diag, rel_off, LQ, LK, HEAD_DIM,
                qk_scale, drop_threshold, drop_scale,
                window_left, window_right, softcap, rel_radius,
                BLOCK_M: tl.constexpr, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
                MASK_KIND: tl.constexpr, ACC_DTYPE: tl.constexpr,
                DOT_PRECISION: tl.constexpr, DROPOUT: tl.constexpr, SOFTCAP: tl.constexpr,
                ALIBI: tl.constexpr, REL_BIAS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                WINDOW_RIGHT: tl.constexpr):
    """dK/dV contributions of query tiles [lo, hi) of one query head to the
    key tile (k, v) (BLOCK_N, BLOCK_D). BOUNDARY: apply the geometric
    checks element-wise (else every element of the tiles is attendable)."""
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        qt = tl.load(q_base + offs_m[None, :] * stride_qm + offs_d[:, None],
                     mask=d_ok[:, None] & m_ok[None, :], other=0.0)   # (BLOCK_D, BLOCK_M)
        # Scores transposed, (keys, queries), so that P^T feeds dV directly.
        st = tl.dot(k, qt, input_precision=DOT_PRECISION) * qk_scale
        st, tt = score_mod(st, offs_m[None, :], offs_n[:, None], q_len, kv_len, diag, rel_off,
                           (offs_n[:, None] < LK) & (offs_m[None, :] < LQ),
                           mask_base + offs_m[None, :] * stride_mm + offs_n[:, None] * stride_mn,
                           slope, rel_ptr, rel_radius, window_left, window_right, softcap,
                           BOUNDARY, CAUSAL, MASK_KIND, SOFTCAP, ALIBI, REL_BIAS,
                           WINDOW_LEFT, WINDOW_RIGHT)
        lse = tl.load(Lse + row_base + offs_m, mask=m_ok, other=float("-inf")).to(ACC_DTYPE)
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
        pt = tl.math.exp2(st - lse2[None, :])                            # (BLOCK_N, BLOCK_M)
        do = tl.load(do_base + offs_m[:, None] * stride_dm + offs_d[None, :],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)    # (BLOCK_M, BLOCK_D)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if DROPOUT:
            # the forward's mask, transposed: rows are queries, columns keys
            drop_a, drop_b = row_keys(seed_lo, seed_hi, drop_base + offs_m)
            keep = dropout_keep(drop_a[None, :], drop_b[None, :], offs_n[:, None],
                                drop_threshold)
            dv += tl.dot(tl.where(keep, pt * drop_scale, 0.0).to(do.dtype), do,
                         input_precision=DOT_PRECISION)
            dpt = tl.where(keep, dpt * drop_scale, 0.0)
        else:
            dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
        delta = tl.load(Delta + row_base + offs_m, mask=m_ok, other=0.0)
        dst = pt * (dpt - delta[None, :])
        if SOFTCAP:
            dst = dst * (1.0 - tt * tt)
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, DOut,      # q, dout (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); last dim contiguous
    Lse, Delta,         # (B, Hq, Lq) ((Hq, total_q) if VARLEN): forward logsumexp and delta
    DK, DV,             # outputs (B, Hkv, Lk, D)
    Mask,               # bool mask as uint8 or float bias, expanded; dummy if MASK_KIND == 0
    QLens, KVLens,      # (B,) int lengths, dummies unless HAS_QLENS / HAS_KVLENS;
                        # (B + 1,) cu_seqlens when VARLEN
    Seed,               # (1,) int64 dropout seed; dummy unless DROPOUT
    Slopes,             # (B or 1, Hq) float32 ALiBi slopes; dummy unless ALIBI
    RelBias,            # (Hq, 2R + 1) relative bias per head and position; dummy unless REL_BIAS
    stride_qb, stride_qh, stride_qm,          # q strides (elements)
    stride_kb, stride_kh, stride_kn,          # k strides
    stride_vb, stride_vh, stride_vn,          # v strides
    stride_db, stride_dh, stride_dm,          # dout strides
    stride_dkb, stride_dkh, stride_dkn,       # dk strides
    stride_dvb, stride_dvh, stride_dvn,       # dv strides
    stride_mb, stride_mh, stride_mm, stride_mn,  # mask strides, 0 on broadcast dims
    stride_lb, stride_lh,                     # lse/delta strides of batch and head
    stride_ab,          # batch stride of Slopes (0 when shared by the batch)
    H_KV,               # number of kv heads
    GROUP,              # query heads per kv head
    LQ, LK, HEAD_DIM,   # padded lengths, head dim
    qk_scale,           # softmax scale * log2(e)
    scale,              # softmax scale
    drop_threshold,     # dropout threshold, int32 bits of a uint32 (rng.threshold_arg)
    drop_scale,         # 1 / (1 - dropout_p)
    LEN_BUCKET,         # autotuning key only
    window_left, window_right, softcap, rel_radius,  # the variants' values (as in the forward)
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,  # regenerate the forward's dropout mask
    VARLEN: tl.constexpr,   # packed sequences delimited by cu_seqlens
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,  # the variants
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query tile iterated over
    BLOCK_N: tl.constexpr,  # key tile owned by this program
):
    pid_n = tl.program_id(0)
    hk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_start, q_len, k_start, kv_len = seq_bounds(QLens, KVLens, b, LQ, LK, HAS_QLENS,
                                                 HAS_KVLENS, VARLEN)
    diag = kv_len - q_len
    rel_off = LK - LQ
    if VARLEN:
        rel_off = diag
    k_rows = LK  # key rows of (b, hk) in memory (see the forward's q_rows)
    if VARLEN:
        k_rows = kv_len
    q_off = q_start.to(tl.int64)
    k_off = k_start.to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < kv_len
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * stride_kb + hk * stride_kh + (k_off + offs_n[:, None]) * stride_kn
                + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + (k_off + offs_n[:, None]) * stride_vn
                + offs_d[None, :], mask=kv_mask, other=0.0)

    # Query tiles that may attend a key of this tile (lengths, causal band,
    # window), and the interior ones that attend all of a full key tile.
    # A tile with no valid key visits nothing and writes zeros.
    keys_end = tl.minimum(start_n + BLOCK_N, kv_len)
    lo, mid_lo, mid_hi, hi = query_tiles(start_n, keys_end, keys_end == start_n + BLOCK_N,
                                         diag, q_len, window_left, window_right, BLOCK_M,
                                         CAUSAL, WINDOW_LEFT, WINDOW_RIGHT)

    seed_lo = 0
    seed_hi = 0
    if DROPOUT:
        seed_lo, seed_hi = load_seed(Seed)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_DTYPE)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC_DTYPE)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh + q_off * stride_qm
        do_base = DOut + b * stride_db + h * stride_dh + q_off * stride_dm
        row_base = b * stride_lb + h * stride_lh + q_off  # (b, h)'s row 0 in Lse / Delta
        drop_base = (b * H_KV * GROUP + h) * LQ  # (b, h)'s row 0 for the dropout hash
        mask_base = Mask + b * stride_mb + h * stride_mh
        slope = 0.0
        if ALIBI:
            slope = tl.load(Slopes + b * stride_ab + h)
        rel_ptr = RelBias + h * (2 * rel_radius + 1)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse, Delta, row_base, mask_base,
                             slope, rel_ptr, seed_lo, seed_hi, drop_base, stride_qm, stride_dm,
                             stride_mm, stride_mn, offs_n, offs_d, lo, mid_lo, q_len, kv_len,
                             diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                             drop_scale, window_left, window_right, softcap, rel_radius,
                             BLOCK_M, True, CAUSAL, MASK_KIND, ACC_DTYPE, DOT_PRECISION,
                             DROPOUT, SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse, Delta, row_base, mask_base,
                             slope, rel_ptr, seed_lo, seed_hi, drop_base, stride_qm, stride_dm,
                             stride_mm, stride_mn, offs_n, offs_d, mid_lo, mid_hi, q_len,
                             kv_len, diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                             drop_scale, window_left, window_right, softcap, rel_radius,
                             BLOCK_M, False, CAUSAL, MASK_KIND, ACC_DTYPE, DOT_PRECISION,
                             DROPOUT, SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse, Delta, row_base, mask_base,
                             slope, rel_ptr, seed_lo, seed_hi, drop_base, stride_qm, stride_dm,
                             stride_mm, stride_mn, offs_n, offs_d, mid_hi, hi, q_len, kv_len,
                             diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                             drop_scale, window_left, window_right, softcap, rel_radius,
                             BLOCK_M, True, CAUSAL, MASK_KIND, ACC_DTYPE, DOT_PRECISION,
                             DROPOUT, SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
    dk *= scale

    out_mask = (offs_n[:, None] < k_rows) & d_ok[None, :]
    tl.store(DK + b * stride_dkb + hk * stride_dkh + (k_off + offs_n[:, None]) * stride_dkn
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + (k_off + offs_n[:, None]) * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _dq_tiles(dq, carry, q, do, lse2, delta, k_base, v_base, mask_base, dbias_base, drel_ptr,
              drel_width, slope, rel_ptr, drop_a, drop_b, stride_kn, stride_vn, stride_mm,
              stride_mn,
              offs_m, offs_d, start_m, lo, hi, q_len, kv_len, diag, rel_off, LQ, LK, HEAD_DIM,
              qk_scale, drop_threshold, drop_scale,
              window_left, window_right, softcap, rel_radius,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPAN: tl.constexpr,
              BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
              DOT_PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
              STORE_DBIAS: tl.constexpr, STORE_DREL: tl.constexpr, SOFTCAP: tl.constexpr,
              ALIBI: tl.constexpr, REL_BIAS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
              WINDOW_RIGHT: tl.constexpr):
    """dQ contributions of key tiles [lo, hi) to the query tile q; with
    STORE_DBIAS the tiles' bias gradient, with STORE_DREL the running
    per-position sums `carry` (see attention_scores.rel_carry_step)."""
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if BOUNDARY:
            n_ok = offs_n < kv_len
        else:
            n_ok = offs_n < LK  # always true here; keeps the load in bounds
        col_mask = d_ok[:, None] & n_ok[None, :]
        kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=col_mask,
                     other=0.0)
        vt = tl.load(v_base + offs_n[None, :] * stride_vn + offs_d[:, None], mask=col_mask,
                     other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        in_bounds = (offs_m[:, None] < LQ) & (offs_n[None, :] < LK)
        s, t = score_mod(s, offs_m[:, None], offs_n[None, :], q_len, kv_len, diag, rel_off,
                         in_bounds,
                         mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                         slope, rel_ptr, rel_radius, window_left, window_right, softcap,
                         BOUNDARY, CAUSAL, MASK_KIND, SOFTCAP, ALIBI, REL_BIAS,
                         WINDOW_LEFT, WINDOW_RIGHT)
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = dropout_keep(drop_a[:, None], drop_b[:, None], offs_n[None, :],
                                drop_threshold)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if STORE_DBIAS:
            tl.store(dbias_base + offs_m[:, None] * LK + offs_n[None, :],
                     ds.to(dbias_base.dtype.element_ty), mask=in_bounds)
        if STORE_DREL:
            carry = rel_carry_step(carry, ds, drel_ptr, start_n, drel_width, BLOCK_M, BLOCK_N,
                                   SPAN)
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=DOT_PRECISION)
    return dq, carry


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, DOut,      # q, dout (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); last dim contiguous
    Lse, Delta,         # (B, Hq, Lq) ((Hq, total_q) if VARLEN): forward logsumexp and delta
    DQ,                 # output (B, Hq, Lq, D)
    DBias,              # output (B, Hq, Lq, Lk) contiguous, zero-filled; dummy unless STORE_DBIAS
    Mask,               # bool mask as uint8 or float bias, expanded; dummy if MASK_KIND == 0
    QLens, KVLens,      # (B,) int lengths, dummies unless HAS_QLENS / HAS_KVLENS;
                        # (B + 1,) cu_seqlens when VARLEN
    Seed,               # (1,) int64 dropout seed; dummy unless DROPOUT
    Slopes,             # (B or 1, Hq) float32 ALiBi slopes; dummy unless ALIBI
    RelBias,            # (Hq, 2R + 1) relative bias per head and position; dummy unless REL_BIAS
    DRel,               # output (B, Hq, drel_tiles, drel_width) contiguous, zero-filled:
                        # per-position score-gradient sums of each query tile (row l is
                        # relative position l - (BLOCK_M - 1) - start_m - rel_off, see
                        # attention_scores.rel_carry_step); dummy unless STORE_DREL
    stride_qb, stride_qh, stride_qm,          # q strides (elements)
    stride_kb, stride_kh, stride_kn,          # k strides
    stride_vb, stride_vh, stride_vn,          # v strides
    stride_db, stride_dh, stride_dm,          # dout strides
    stride_dqb, stride_dqh, stride_dqm,       # dq strides
    stride_mb, stride_mh, stride_mm, stride_mn,  # mask strides, 0 on broadcast dims
    stride_lb, stride_lh,                     # lse/delta strides of batch and head
    stride_ab,          # batch stride of Slopes (0 when shared by the batch)
    drel_tiles,         # DRel's dims 2 and 3: >= the query tiles,
    drel_width,         # >= Lk + BLOCK_M + 2 * BLOCK_N
    H_Q,                # number of query heads
    GROUP,              # query heads per kv head
    LQ, LK, HEAD_DIM,   # padded lengths, head dim
    qk_scale,           # softmax scale * log2(e)
    scale,              # softmax scale
    drop_threshold,     # dropout threshold, int32 bits of a uint32 (rng.threshold_arg)
    drop_scale,         # 1 / (1 - dropout_p)
    LEN_BUCKET,         # autotuning key only
    window_left, window_right, softcap, rel_radius,  # the variants' values (as in the forward)
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,  # regenerate the forward's dropout mask
    VARLEN: tl.constexpr,   # packed sequences delimited by cu_seqlens
    STORE_DBIAS: tl.constexpr,  # write dx (the bias gradient) for every visited tile
    STORE_DREL: tl.constexpr,   # write the per-position sums of dx (REL_BIAS's gradient)
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,  # the variants
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query tile owned by this program
    BLOCK_N: tl.constexpr,  # key tile iterated over
):
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    pid_bh = b * H_Q + h
    q_start, q_len, k_start, kv_len = seq_bounds(QLens, KVLens, b, LQ, LK, HAS_QLENS,
                                                 HAS_KVLENS, VARLEN)
    diag = kv_len - q_len
    rel_off = LK - LQ
    if VARLEN:
        rel_off = diag
    q_rows = LQ  # query rows of (b, h) in memory (see the forward)
    if VARLEN:
        q_rows = q_len
    q_off = q_start.to(tl.int64)
    k_off = k_start.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < q_len
    row_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + (q_off + offs_m[:, None]) * stride_qm
                + offs_d[None, :], mask=row_mask, other=0.0)
    do = tl.load(DOut + b * stride_db + h * stride_dh + (q_off + offs_m[:, None]) * stride_dm
                 + offs_d[None, :], mask=row_mask, other=0.0)
    row = b * stride_lb + h * stride_lh + q_off + offs_m  # in Lse / Delta
    lse = tl.load(Lse + row, mask=m_ok, other=float("-inf")).to(ACC_DTYPE)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(Delta + row, mask=m_ok, other=0.0)

    # The forward's key tiles, except that a block with rows past q_len has
    # no interior: those rows' gradients must come out exactly 0.
    rows_end = tl.minimum(start_m + BLOCK_M, q_len)
    lo, mid_lo, mid_hi, hi = key_tiles(start_m, rows_end, rows_end == start_m + BLOCK_M, diag,
                                       kv_len, window_left, window_right, BLOCK_N, CAUSAL,
                                       WINDOW_LEFT, WINDOW_RIGHT)

    k_base = K + b * stride_kb + hk * stride_kh + k_off * stride_kn
    v_base = V + b * stride_vb + hk * stride_vh + k_off * stride_vn
    mask_base = Mask + b * stride_mb + h * stride_mh
    dbias_base = DBias + pid_bh * LQ * LK
    slope = 0.0
    if ALIBI:
        slope = tl.load(Slopes + b * stride_ab + h)
    rel_ptr = RelBias + h * (2 * rel_radius + 1)
    # this program's scratch row of per-position sums, and the running sums
    SPAN: tl.constexpr = 2 * BLOCK_M if BLOCK_M >= BLOCK_N else 2 * BLOCK_N
    drel_ptr = DRel + (pid_bh * drel_tiles + pid_m) * drel_width
    carry = tl.zeros([SPAN], dtype=ACC_DTYPE)
    drop_a = offs_m  # unused without dropout
    drop_b = offs_m
    if DROPOUT:
        seed_lo, seed_hi = load_seed(Seed)
        drop_a, drop_b = row_keys(seed_lo, seed_hi, pid_bh * LQ + offs_m)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    dq, carry = _dq_tiles(dq, carry, q, do, lse2, delta, k_base, v_base, mask_base, dbias_base,
                          drel_ptr, drel_width, slope, rel_ptr, drop_a, drop_b, stride_kn,
                          stride_vn, stride_mm, stride_mn, offs_m, offs_d,
                          start_m, lo, mid_lo, q_len,
                          kv_len, diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                          drop_scale, window_left, window_right, softcap, rel_radius,
                          BLOCK_M, BLOCK_N, SPAN, True, CAUSAL, MASK_KIND, DOT_PRECISION,
                          DROPOUT, STORE_DBIAS, STORE_DREL, SOFTCAP, ALIBI, REL_BIAS,
                          WINDOW_LEFT, WINDOW_RIGHT)
    dq, carry = _dq_tiles(dq, carry, q, do, lse2, delta, k_base, v_base, mask_base, dbias_base,
                          drel_ptr, drel_width, slope, rel_ptr, drop_a, drop_b, stride_kn,
                          stride_vn, stride_mm, stride_mn, offs_m, offs_d,
                          start_m, mid_lo, mid_hi, q_len,
                          kv_len, diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                          drop_scale, window_left, window_right, softcap, rel_radius,
                          BLOCK_M, BLOCK_N, SPAN, False, CAUSAL, MASK_KIND, DOT_PRECISION,
                          DROPOUT, STORE_DBIAS, STORE_DREL, SOFTCAP, ALIBI, REL_BIAS,
                          WINDOW_LEFT, WINDOW_RIGHT)
    dq, carry = _dq_tiles(dq, carry, q, do, lse2, delta, k_base, v_base, mask_base, dbias_base,
                          drel_ptr, drel_width, slope, rel_ptr, drop_a, drop_b, stride_kn,
                          stride_vn, stride_mm, stride_mn, offs_m, offs_d,
                          start_m, mid_hi, hi, q_len,
                          kv_len, diag, rel_off, LQ, LK, HEAD_DIM, qk_scale, drop_threshold,
                          drop_scale, window_left, window_right, softcap, rel_radius,
                          BLOCK_M, BLOCK_N, SPAN, True, CAUSAL, MASK_KIND, DOT_PRECISION,
                          DROPOUT, STORE_DBIAS, STORE_DREL, SOFTCAP, ALIBI, REL_BIAS,
                          WINDOW_LEFT, WINDOW_RIGHT)
    if STORE_DREL:
        # the positions of the last tile's diagonals that no tile follows
        n_next = lo + (hi - lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N
        rel_carry_flush(carry, drel_ptr, n_next, drel_width, BLOCK_M, SPAN)
    dq *= scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + (q_off + offs_m[:, None]) * stride_dqm
             + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < q_rows) & d_ok[None, :])


@triton.jit
def attention_bwd_drel_reduce_kernel(
    Rows,               # (B, Hq, drel_tiles, drel_width): the dQ pass's DRel
    Out,                # output (Hq, 2R + 1) contiguous: sums per relative position
    QLens, KVLens,      # (B + 1,) cu_seqlens when VARLEN, else dummies
    B, H_Q,             # sequences, query heads
    n_tiles,            # query tiles of the launch that wrote Rows (<= drel_tiles)
    drel_tiles, drel_width,
    LQ, LK, rel_radius,
    TILE_M,             # BLOCK_M of that launch
    VARLEN: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Out[h, g] = sum over b, then query tile t, of Rows[b, h, t, l] at the
    l holding relative position g - R: a fixed order, no atomics."""
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1).to(tl.int64)
    g_ok = g <= 2 * rel_radius
    acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for b in range(0, B):
        _qs, q_len, _ks, kv_len = seq_bounds(QLens, KVLens, b, LQ, LK, False, False, VARLEN)
        rel_off = LK - LQ
        if VARLEN:
            rel_off = kv_len - q_len
        row = Rows + (b * H_Q + h) * drel_tiles * drel_width
        for t in range(0, n_tiles):
            # r = l - (TILE_M - 1) - t * TILE_M - rel_off and g = r + R
            l = g - rel_radius + (TILE_M - 1) + t * TILE_M + rel_off
            acc += tl.load(row + t * drel_width + l, mask=g_ok & (l >= 0) & (l < drel_width),
                           other=0.0)
    tl.store(Out + h * (2 * rel_radius + 1) + g, acc, mask=g_ok)
