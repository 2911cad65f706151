"""Split-KV ("flash-decoding") attention forward for few queries over long keys.

With Lq = 1..16 the normal forward has one query tile per (batch, head):
B * Hq programs, far too few to fill a GPU when B is small, each streaming
the whole KV cache alone. Here the keys are split into chunks instead:

1. attention_decode_split_kernel, grid (splits, Hkv, B): one program takes
   one chunk of keys of one kv head, and all GROUP * Lq query rows of the
   query heads that share that kv head (so K/V are read once per chunk, not
   once per query head). It writes the chunk's normalized partial output
   o_s and its log2-sum-exp t_s = m_s + log2(l_s) (-inf for no key).
2. attention_decode_combine_kernel, grid (row blocks, Hkv, B): merges the
   partials of each row by their LSE:
       M = max_s t_s,  w_s = 2^(t_s - M),  out = sum_s w_s o_s / sum_s w_s,
       lse = (M + log2(sum_s w_s)) * ln 2,
   exact because o_s = sum_{j in s} 2^(x_j - t_s) v_j, so w_s o_s carries
   each chunk's share of the full softmax. The merge order is fixed: the
   result is deterministic.

Same semantics as the normal forward (fastattn/ops/attention.py): lengths,
bottom-right causal, bool and float masks, every variant (window, ALiBi,
softcap, relative bias: the one score path of attention_scores.py, with
the window's tiles skipped within each chunk), rows with nothing to attend
give 0 and lse -inf, padded query rows 0. No dropout (decoding is inference; the
caller keeps the normal path for dropout_p > 0). The backward of a call
served here is the normal backward: it needs only out and lse.

Row r of a program's query block is query head h = hk * GROUP + r // Lq,
query i = r % Lq.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._backends import triton_interpret
from .attention_scores import LN2, LOG2E, VariantArgs, key_tiles, score_mod, seq_bounds

# Largest Lq served, and largest query block (GROUP * Lq rows) per program.
MAX_DECODE_LQ = 16
MAX_ROWS = 128
# Keys per chunk are at least this many (fewer would make the merge dominate).
_MIN_CHUNK = 256
# Heuristic: split when Lk reaches this and the normal grid underfills the GPU.
_MIN_SPLIT_LK = 1024
# Splits under the interpreter when forced (several chunks, some partial).
_INTERPRET_SPLITS = 5


@triton.jit
def _decode_tiles(acc, l_i, m_i, q, k_base, v_base, m_rows, slope, rel_ptr, stride_kn,
                  stride_vn, stride_mn, i, r_ok, offs_d, lo, hi, q_len, kv_len, diag, rel_off,
                  LK, HEAD_DIM, qk_scale, window_left, window_right, softcap, rel_radius,
                  BLOCK_N: tl.constexpr, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
                  MASK_KIND: tl.constexpr, DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr,
                  ALIBI: tl.constexpr, REL_BIAS: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                  WINDOW_RIGHT: tl.constexpr):
    """Online-softmax update over key tiles [lo, hi) (the forward's
    _fwd_tiles for rows of several heads: query index i, row validity r_ok)."""
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if BOUNDARY:
            n_ok = offs_n < kv_len
        else:
            n_ok = offs_n < LK  # always true here; keeps the load in bounds
        kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s, _t = score_mod(s, i[:, None], offs_n[None, :], q_len, kv_len, diag, rel_off,
                          r_ok[:, None] & (offs_n[None, :] < LK),
                          m_rows + offs_n[None, :] * stride_mn, slope, rel_ptr, rel_radius,
                          window_left, window_right, softcap, BOUNDARY, CAUSAL, MASK_KIND,
                          SOFTCAP, ALIBI, REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no NaN
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_decode_split_kernel(
    Q, K, V,            # q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); last dim contiguous
    OPart,              # out: (B, Hkv, S, ROWS, D) partial outputs, ACC dtype, contiguous
    TPart,              # out: (B, Hkv, S, ROWS) partial log2-sum-exp, contiguous
    Mask,               # bool mask as uint8 or float bias, expanded; dummy if MASK_KIND == 0
    QLens, KVLens,      # (B,) int lengths; dummies unless HAS_QLENS / HAS_KVLENS
    Slopes,             # (B or 1, Hq) float32 ALiBi slopes; dummy unless ALIBI
    RelBias,            # (Hq, 2R + 1) relative bias per head and position; dummy unless REL_BIAS
    stride_qb, stride_qh, stride_qm,          # q strides (elements)
    stride_kb, stride_kh, stride_kn,          # k strides
    stride_vb, stride_vh, stride_vn,          # v strides
    stride_mb, stride_mh, stride_mm, stride_mn,  # mask strides, 0 on broadcast dims
    stride_ab,          # batch stride of Slopes (0 when shared by the batch)
    H_KV, GROUP,        # kv heads, query heads per kv head
    LQ, LK, HEAD_DIM,   # padded lengths, head dim
    ROWS,               # GROUP * LQ: query rows per program
    CHUNK,              # keys per split (a multiple of BLOCK_N)
    qk_scale,           # softmax scale * log2(e)
    window_left, window_right, softcap, rel_radius,  # the variants' values (attention_fwd)
    BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,  # 0 none, 1 bool, 2 float bias (attention_fwd.MASK_*)
    HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, REL_BIAS: tl.constexpr,  # the variants
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows, >= ROWS (power of two, >= 16)
    BLOCK_N: tl.constexpr,  # key tile
):
    split = tl.program_id(0)
    hk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    n_splits = tl.num_programs(0)
    _qs, q_len, _ks, kv_len = seq_bounds(QLens, KVLens, b, LQ, LK, HAS_QLENS, HAS_KVLENS,
                                         False)
    diag = kv_len - q_len

    r = tl.arange(0, BLOCK_M)
    h = hk * GROUP + r // LQ    # query head of each row
    i = r % LQ                  # query index of each row
    r_ok = (r < ROWS) & (i < q_len)
    in_rows = r < ROWS          # rows that exist (h < Hq)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm
                + offs_d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0)

    # This split's keys, narrowed to the tiles some row may attend (lengths,
    # causal, window: every row of every head has i in [0, q_len)); rows
    # past q_len are dropped by the combine, so they need no masking.
    lo, mid_lo, mid_hi, hi = key_tiles(0, q_len, True, diag, kv_len, window_left, window_right,
                                       BLOCK_N, CAUSAL, WINDOW_LEFT, WINDOW_RIGHT)
    c_lo = split * CHUNK  # a multiple of BLOCK_N: the tiles stay aligned
    c_hi = tl.minimum(c_lo + CHUNK, hi)
    lo = tl.maximum(lo, c_lo)
    hi = tl.maximum(c_hi, lo)
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)

    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    m_rows = Mask + b * stride_mb + h[:, None] * stride_mh + i[:, None] * stride_mm
    slope = 0.0
    if ALIBI:
        slope = tl.load(Slopes + b * stride_ab + h, mask=in_rows, other=0.0)[:, None]
    rel_ptr = RelBias + h[:, None] * (2 * rel_radius + 1)
    rel_off = LK - LQ
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC_DTYPE)
    acc, l_i, m_i = _decode_tiles(acc, l_i, m_i, q, k_base, v_base, m_rows, slope, rel_ptr,
                                  stride_kn, stride_vn, stride_mn, i, r_ok, offs_d, lo, mid_lo,
                                  q_len, kv_len, diag, rel_off, LK, HEAD_DIM, qk_scale,
                                  window_left, window_right, softcap, rel_radius, BLOCK_N, True,
                                  CAUSAL, MASK_KIND, DOT_PRECISION, SOFTCAP, ALIBI, REL_BIAS,
                                  WINDOW_LEFT, WINDOW_RIGHT)
    acc, l_i, m_i = _decode_tiles(acc, l_i, m_i, q, k_base, v_base, m_rows, slope, rel_ptr,
                                  stride_kn, stride_vn, stride_mn, i, r_ok, offs_d, mid_lo,
                                  mid_hi, q_len, kv_len, diag, rel_off, LK, HEAD_DIM, qk_scale,
                                  window_left, window_right, softcap, rel_radius, BLOCK_N,
                                  False, CAUSAL, MASK_KIND, DOT_PRECISION, SOFTCAP, ALIBI,
                                  REL_BIAS, WINDOW_LEFT, WINDOW_RIGHT)
    acc, l_i, m_i = _decode_tiles(acc, l_i, m_i, q, k_base, v_base, m_rows, slope, rel_ptr,
                                  stride_kn, stride_vn, stride_mn, i, r_ok, offs_d, mid_hi, hi,
                                  q_len, kv_len, diag, rel_off, LK, HEAD_DIM, qk_scale,
                                  window_left, window_right, softcap, rel_radius, BLOCK_N, True,
                                  CAUSAL, MASK_KIND, DOT_PRECISION, SOFTCAP, ALIBI, REL_BIAS,
                                  WINDOW_LEFT, WINDOW_RIGHT)

    seen = r_ok & (l_i != 0)
    l_safe = tl.where(seen, l_i, 1.0)
    o = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    t = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))
    part = ((b * H_KV + hk) * n_splits + split) * ROWS + r
    tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], o,
             mask=in_rows[:, None] & d_ok[None, :])
    tl.store(TPart + part, t, mask=in_rows)


@triton.jit
def attention_decode_combine_kernel(
    OPart, TPart,       # partials of the split kernel
    Out,                # out (B, Hq, Lq, D), dtype of q
    Lse,                # out (B, Hq, Lq) contiguous, natural log
    QLens,              # (B,) int query lengths; dummy unless HAS_QLENS
    stride_ob, stride_oh, stride_om,          # out strides
    H_KV, GROUP, LQ, HEAD_DIM, ROWS,          # as in the split kernel
    N_SPLITS,           # number of key chunks
    BLOCK_D: tl.constexpr, HAS_QLENS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
):
    hk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = hk * GROUP + r // LQ
    i = r % LQ
    in_rows = r < ROWS
    _qs, q_len, _ks, _kl = seq_bounds(QLens, QLens, b, LQ, 1, HAS_QLENS, False, False)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    base = (b * H_KV + hk) * N_SPLITS * ROWS + r

    t_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC_DTYPE)
    for s in range(0, N_SPLITS):
        t_max = tl.maximum(t_max, tl.load(TPart + base + s * ROWS, mask=in_rows,
                                          other=float("-inf")))
    t_safe = tl.where(t_max == float("-inf"), 0.0, t_max)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    w_sum = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    for s in range(0, N_SPLITS):
        w = tl.math.exp2(tl.load(TPart + base + s * ROWS, mask=in_rows, other=float("-inf"))
                         - t_safe)
        o = tl.load(OPart + (base + s * ROWS)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=in_rows[:, None] & d_ok[None, :], other=0.0)
        acc += w[:, None] * o
        w_sum += w

    row_ok = in_rows & (i < q_len) & (w_sum != 0)
    w_safe = tl.where(row_ok, w_sum, 1.0)
    out = tl.where(row_ok[:, None], acc / w_safe[:, None], 0.0)
    lse = tl.where(row_ok, (t_max + tl.math.log2(w_safe)) * LN2, float("-inf"))
    tl.store(Out + b * stride_ob + h[:, None] * stride_oh + i[:, None] * stride_om
             + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=in_rows[:, None] & d_ok[None, :])
    tl.store(Lse + (b * H_KV * GROUP + h) * LQ + i, lse.to(Lse.dtype.element_ty),
             mask=in_rows)


# ------------------------------------------------------------------ launcher


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_kv_plan(q: torch.Tensor, k: torch.Tensor, dropout_p: float, block_n: int) -> int:
    """Number of key chunks to split over, or 0 for the normal forward.

    FASTATTN_SPLIT_KV=1 forces the split path wherever it applies (tests),
    =0 disables it. Otherwise, on a GPU: Lq <= 16, no dropout, Lk >= 1024,
    and the normal grid (B * Hq query tiles of <= 64 rows) fills less than
    one wave of the GPU's multiprocessors. Chunks then hold >= 256 keys and
    the split grid aims at two programs per multiprocessor.
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if Lq > MAX_DECODE_LQ or (Hq // Hkv) * Lq > MAX_ROWS or dropout_p > 0 or Lk == 0 or B == 0:
        return 0
    force = os.environ.get("FASTATTN_SPLIT_KV", "")
    if force == "0":
        return 0
    if force == "1" and (triton_interpret() or q.device.type != "cuda"):
        return max(1, min(_INTERPRET_SPLITS, triton.cdiv(Lk, block_n)))
    if q.device.type != "cuda":
        return 0
    sms = _sm_count(q.device.index or 0)
    if force != "1" and (Lk < _MIN_SPLIT_LK or B * Hq * triton.cdiv(Lq, 64) >= sms):
        return 0
    return max(1, min(triton.cdiv(2 * sms, B * Hkv), triton.cdiv(Lk, _MIN_CHUNK)))


def decode_fwd(q, k, v, mask, m_strides, q_lengths, kv_lengths, scale, meta: dict,
               n_splits: int, block_n: int, variants=None):
    """(out, lse) by the split-KV kernels; `mask`/`m_strides` expanded as
    for the normal forward, `meta` its compile-time parameters (the variant
    flags included), `variants` the call's VariantArgs (attention_scores)
    or KernelVariants, or None for none."""
    if not isinstance(variants, VariantArgs):
        variants = VariantArgs(variants, q, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q)
    var = variants
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    rows = group * Lq
    chunk = triton.cdiv(triton.cdiv(Lk, n_splits), block_n) * block_n
    n_splits = triton.cdiv(Lk, chunk)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    o_part = torch.empty((B, Hkv, n_splits, rows, D), dtype=acc_dtype, device=q.device)
    t_part = torch.empty((B, Hkv, n_splits, rows), dtype=acc_dtype, device=q.device)
    out = torch.empty_like(q)
    lse = torch.empty((B, Hq, Lq), dtype=acc_dtype, device=q.device)
    ql = q_lengths if q_lengths is not None else q
    kvl = kv_lengths if kv_lengths is not None else q
    block_m = max(16, triton.next_power_of_2(rows))
    common = dict(BLOCK_D=meta["BLOCK_D"], HAS_QLENS=meta["HAS_QLENS"],
                  ACC_DTYPE=meta["ACC_DTYPE"])
    gpu = q.device.type == "cuda" and not triton_interpret()
    warps = 8 if block_m * meta["BLOCK_D"] > 64 * 128 else 4
    launch = dict(num_warps=warps, num_stages=2) if gpu else {}
    attention_decode_split_kernel[(n_splits, Hkv, B)](
        q, k, v, o_part, t_part, mask, ql, kvl, *var.pointers,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *m_strides, var.stride_ab,
        Hkv, group, Lq, Lk, D, rows, chunk, scale * LOG2E.value, *var.scalars,
        CAUSAL=meta["CAUSAL"], MASK_KIND=meta["MASK_KIND"], HAS_KVLENS=meta["HAS_KVLENS"],
        DOT_PRECISION=meta["DOT_PRECISION"], BLOCK_M=block_m, BLOCK_N=block_n,
        **var.flags, **common, **launch)
    comb_m = min(block_m, 32)
    attention_decode_combine_kernel[(triton.cdiv(rows, comb_m), Hkv, B)](
        o_part, t_part, out, lse, ql,
        out.stride(0), out.stride(1), out.stride(2),
        Hkv, group, Lq, D, rows, n_splits, BLOCK_M=comb_m, **common)
    return out, lse
