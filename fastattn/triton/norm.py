"""Triton kernels for layer norm, RMS norm and fused add & norm.

Implements the contract of fastattn/ops/norm.py (read its docstring: inputs,
outputs, empty (0,) tensors for unused outputs). Inputs are 2-D (M rows,
N columns) with unit column stride and any row stride; outputs are
contiguous. Row offsets are int64, so M * N may exceed 2**31.

Forward, per row (in fp32, or fp64 for fp64 inputs):
    h    = dropout(x) + residual, rounded to x's dtype (what is stored, and
           what an unfused add followed by a norm would normalize)
    mean = sum(h) / N                        (0 for RMS norm)
    rstd = 1 / sqrt(sum((h - mean)^2) / N + eps)
    y    = (h - mean) * rstd * weight + bias

Backward. Write xhat = (h - mean) * rstd and g = dy * weight (the gradient
reaching xhat). For layer norm, d mean / d h_j = 1/N and
d rstd / d h_j = -rstd^3 (h_j - mean) / N = -rstd * xhat_j / N, so

    d xhat_i / d h_j = rstd * (delta_ij - 1/N - xhat_i * xhat_j / N)
    dh_j = sum_i g_i * d xhat_i / d h_j
         = rstd * (g_j - mean(g) - xhat_j * mean(g * xhat)).

RMS norm has mean = 0, so the 1/N term vanishes:
    dh_j = rstd * (g_j - xhat_j * mean(g * xhat)).

When prenorm returns h, its own gradient dh_out adds to dh. Then
    dresidual = dh,   dx = dh * keep / (1 - p)   (dh without dropout),
    dweight = sum over rows of dy * xhat,   dbias = sum over rows of dy.

Two kernel shapes, chosen by N:
  * whole rows in registers (N <= a limit): a program loads a tile of
    BLOCK_M rows once, reduces, writes once: the minimum memory traffic.
  * long rows: BLOCK_M = 1 and a loop over column chunks of BLOCK_N. The
    forward makes two passes (statistics, then output), the backward two
    (row sums, then gradients); the second pass re-reads a row the first one
    has just read, which on a GPU comes from L2.

dweight/dbias: the backward runs a fixed grid of programs, each taking row
blocks pid, pid + G, pid + 2G, ...; a program accumulates its rows' sums in
fp32 into its own row of a (G, N) buffer, and the G rows are summed by torch
afterwards. No atomics, so gradients are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import on_device_of
from .rng import dropout_keep, load_seed, row_keys, threshold_arg

# ----------------------------------------------------------- launch table
#
# Rows up to these many elements are held whole in registers. The backward
# keeps more values live per element (h, dy, weight, xhat, g and the
# dweight/dbias accumulators), so its limit is lower to avoid spilling.
FWD_MAX_ROW = 16384
BWD_MAX_ROW = 8192
# Column chunk of the long-row loop.
LOOP_BLOCK_N = 4096
# Elements per thread (see _launch_config).
FWD_PER_THREAD = 16
BWD_PER_THREAD = 8
# Short rows are packed BLOCK_M to a tile of about this many elements, so
# that a program moves enough bytes to amortize its fixed cost (loading the
# weight, index math) and the grid is not millions of tiny programs.
TILE_ELEMENTS = 2048
MAX_BLOCK_M = 64


def _launch_config(m: int, n: int, max_row: int, per_thread: int
                   ) -> tuple[int, int, int, bool]:
    """(BLOCK_M, BLOCK_N, num_warps, whole_row) for an (m, n) problem.

    num_warps gives each thread about `per_thread` elements of a tile: 16 in
    the forward (one or two 16-byte accesses per tensor in flight, few
    registers), 8 in the backward, which keeps about twice as many values
    live per element. Capped at 16 warps, at least 1 for tiny tiles.
    """
    block_n = triton.next_power_of_2(n)
    if block_n > max_row:
        block_m, block_n, whole_row = 1, LOOP_BLOCK_N, False
    else:
        block_m = max(1, min(TILE_ELEMENTS // block_n, MAX_BLOCK_M,
                             triton.next_power_of_2(m)))
        whole_row = True
    num_warps = min(16, max(1, block_m * block_n // (32 * per_thread)))
    return block_m, block_n, num_warps, whole_row


def _acc_dtype(dtype: torch.dtype):
    """Statistics and arithmetic in fp32; fp64 inputs stay in fp64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved mean and rstd: float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bwd_grid_size(num_blocks: int, num_warps: int, device: torch.device) -> int:
    """Programs of the backward grid: enough to fill the GPU, no more, since
    each program adds a row of N partial sums to reduce afterwards."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = sms * max(1, 16 // num_warps)
    else:  # interpreter: a few programs, so the strided row loop is exercised
        target = 4
    return max(1, min(num_blocks, target))


def _unit_stride(t):
    """2-D tensor with unit column stride (a copy only when it has none)."""
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


# ------------------------------------------------------------------ forward


@triton.jit
def _load_h(X, R, x_rows, r_rows, cols, mask, a, b, threshold, keep_scale,
            HAS_R: tl.constexpr, HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr):
    """h = dropout(x) + residual for one tile, rounded to x's dtype, in ACC.

    x_rows/r_rows: int64 offsets of each row's start ([BLOCK_M, 1]); cols:
    column indices ([1, BLOCK_N]); a, b: the rows' dropout keys ([BLOCK_M, 1]).
    Masked-out elements are 0, so they add nothing to row sums.
    """
    h = tl.load(X + x_rows + cols, mask=mask, other=0.0).to(ACC)
    if HAS_DROPOUT:
        h = tl.where(dropout_keep(a, b, cols, threshold), h * keep_scale, 0.0)
    if HAS_R:
        h += tl.load(R + r_rows + cols, mask=mask, other=0.0).to(ACC)
    if HAS_R or HAS_DROPOUT:
        h = h.to(X.dtype.element_ty).to(ACC)
    return h


@triton.jit
def _norm_fwd_kernel(
    X,            # (M, N) input, row stride stride_x
    R,            # (M, N) residual, row stride stride_r (read iff HAS_R)
    W,            # (N,) weight, x's dtype or float32 (read iff HAS_W)
    B,            # (N,) bias, dtype of W (read iff HAS_B)
    SEED,         # (1,) int64 dropout seed (read iff HAS_DROPOUT)
    Y,            # (M, N) contiguous output, x's dtype
    H,            # (M, N) contiguous h = dropout(x) + residual (written iff STORE_H)
    MEAN,         # (M,) row means, fp32 (fp64 for fp64 x); written unless IS_RMS
    RSTD,         # (M,) reciprocal standard deviations, dtype of MEAN
    stride_x,     # row stride of X, in elements
    stride_r,     # row stride of R, in elements
    M,            # number of rows
    N,            # number of columns (normalized elements per row)
    eps,          # added to the variance
    threshold,    # dropout threshold, int32 bits of a uint32 (rng.threshold_arg)
    keep_scale,   # 1 / (1 - dropout_p)
    HAS_R: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, IS_RMS: tl.constexpr, STORE_H: tl.constexpr,
    ACC: tl.constexpr,         # arithmetic dtype: fp32, or fp64 for fp64 inputs
    BLOCK_M: tl.constexpr,     # rows per program
    BLOCK_N: tl.constexpr,     # columns per tile (>= N when WHOLE_ROW)
    WHOLE_ROW: tl.constexpr,   # True: rows held in registers; False: column loop
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    x_rows = (rows64 * stride_x)[:, None]
    r_rows = (rows64 * stride_r)[:, None]
    y_rows = (rows64 * N)[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
    a = rows
    b = rows
    if HAS_DROPOUT:
        seed_lo, seed_hi = load_seed(SEED)
        a, b = row_keys(seed_lo, seed_hi, rows64)
        a = a[:, None]
        b = b[:, None]

    if WHOLE_ROW:
        mask = row_ok[:, None] & (cols < N)
        h = _load_h(X, R, x_rows, r_rows, cols, mask, a, b, threshold, keep_scale,
                    HAS_R, HAS_DROPOUT, ACC)
        if STORE_H:
            tl.store(H + y_rows + cols, h.to(H.dtype.element_ty), mask=mask)
        if IS_RMS:
            mean = tl.zeros([BLOCK_M], ACC)
            var = tl.sum(h * h, axis=1) / N
        else:
            mean = tl.sum(h, axis=1) / N
            d = tl.where(mask, h - mean[:, None], 0.0)
            var = tl.sum(d * d, axis=1) / N
    else:
        # Statistics chunk by chunk, merged with the parallel-variance rule
        # (Chan et al.): for running (count n_a, mean m_a, squared deviations
        # s_a) and a chunk (n_b, m_b, s_b), delta = m_b - m_a,
        # m = m_a + delta n_b / n, s = s_a + s_b + delta^2 n_a n_b / n.
        # Unlike sum and sum of squares, it does not cancel when |mean| >> std.
        count = tl.zeros([BLOCK_M], ACC)
        mean = tl.zeros([BLOCK_M], ACC)
        m2 = tl.zeros([BLOCK_M], ACC)
        for start in tl.range(0, N, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < N)
            h = _load_h(X, R, x_rows, r_rows, c, mask, a, b, threshold, keep_scale,
                        HAS_R, HAS_DROPOUT, ACC)
            if STORE_H:
                tl.store(H + y_rows + c, h.to(H.dtype.element_ty), mask=mask)
            if IS_RMS:
                m2 += tl.sum(h * h, axis=1)
            else:
                n_b = tl.minimum(N - start, BLOCK_N).to(ACC)
                mean_b = tl.sum(h, axis=1) / n_b
                d = tl.where(mask, h - mean_b[:, None], 0.0)
                m2_b = tl.sum(d * d, axis=1)
                total = count + n_b
                delta = mean_b - mean
                mean += delta * (n_b / total)
                m2 += m2_b + delta * delta * (count * n_b / total)
                count = total
        var = m2 / N
    rstd = 1.0 / tl.sqrt(var + eps)
    if not IS_RMS:
        tl.store(MEAN + rows, mean.to(MEAN.dtype.element_ty), mask=row_ok)
    tl.store(RSTD + rows, rstd.to(RSTD.dtype.element_ty), mask=row_ok)

    if WHOLE_ROW:
        col_ok = cols < N
        y = (h - mean[:, None]) * rstd[:, None]
        if HAS_W:
            y *= tl.load(W + cols, mask=col_ok, other=0.0).to(ACC)
        if HAS_B:
            y += tl.load(B + cols, mask=col_ok, other=0.0).to(ACC)
        tl.store(Y + y_rows + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        for start in tl.range(0, N, BLOCK_N):
            c = start + cols
            col_ok = c < N
            mask = row_ok[:, None] & col_ok
            # Recomputed exactly as in the first pass (deterministic), rather
            # than re-read from H, which may not be stored.
            h = _load_h(X, R, x_rows, r_rows, c, mask, a, b, threshold, keep_scale,
                        HAS_R, HAS_DROPOUT, ACC)
            y = (h - mean[:, None]) * rstd[:, None]
            if HAS_W:
                y *= tl.load(W + c, mask=col_ok, other=0.0).to(ACC)
            if HAS_B:
                y += tl.load(B + c, mask=col_ok, other=0.0).to(ACC)
            tl.store(Y + y_rows + c, y.to(Y.dtype.element_ty), mask=mask)


@on_device_of("x")
def norm_fwd(x, residual, weight, bias, seed, eps: float, dropout_p: float, is_rms: bool,
             store_h: bool):
    """Forward of fastattn::norm_fwd on the triton backend -> (y, h, mean, rstd)."""
    x = _unit_stride(x)
    residual = _unit_stride(residual)
    m, n = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    h = torch.empty((m, n) if store_h else (0,), dtype=x.dtype, device=x.device)
    stat = stat_dtype(x.dtype)
    mean = torch.empty((0,) if is_rms else (m,), dtype=stat, device=x.device)
    rstd = torch.empty((m,), dtype=stat, device=x.device)
    if m == 0 or n == 0:
        mean.fill_(float("nan"))  # statistics of an empty row, as torch gives
        rstd.fill_(float("nan"))
        return y, h, mean, rstd
    has_dropout = dropout_p > 0
    block_m, block_n, num_warps, whole_row = _launch_config(m, n, FWD_MAX_ROW, FWD_PER_THREAD)
    grid = (triton.cdiv(m, block_m),)
    _norm_fwd_kernel[grid](
        x, residual if residual is not None else x,
        weight.contiguous() if weight is not None else x,
        bias.contiguous() if bias is not None else x,
        seed if has_dropout else x,
        y, h if store_h else y, mean if not is_rms else rstd, rstd,
        x.stride(0), residual.stride(0) if residual is not None else 0,
        m, n, eps, threshold_arg(dropout_p), 1.0 / (1.0 - dropout_p),
        HAS_R=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_DROPOUT=has_dropout, IS_RMS=is_rms, STORE_H=store_h,
        ACC=_acc_dtype(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, WHOLE_ROW=whole_row,
        num_warps=num_warps,
    )
    return y, h, mean, rstd


# ----------------------------------------------------------------- backward


@triton.jit
def _bwd_load(DY, H, MEAN, RSTD, rows, cols, mask, w, stride_dy, stride_h, M,
              HAS_W: tl.constexpr, IS_RMS: tl.constexpr, ACC: tl.constexpr):
    """dy, xhat, g = dy * weight and rstd of one [BLOCK_M, BLOCK_N] tile, in ACC.

    rows: [BLOCK_M] row indices; cols: [1, BLOCK_N] column indices; w: the
    tile's weight ([1, BLOCK_N]). Masked-out elements give 0 everywhere.
    """
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    h = tl.load(H + (rows64 * stride_h)[:, None] + cols, mask=mask, other=0.0).to(ACC)
    dy = tl.load(DY + (rows64 * stride_dy)[:, None] + cols, mask=mask, other=0.0).to(ACC)
    rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0).to(ACC)[:, None]
    if IS_RMS:
        xhat = h * rstd
    else:
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0).to(ACC)[:, None]
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
    if HAS_W:
        g = dy * w
    else:
        g = dy
    return dy, xhat, g, rstd


@triton.jit
def _bwd_store(DH_OUT, DX, DRES, rows, cols, mask, dh, seed_lo, seed_hi, threshold,
               keep_scale, stride_dho, N, HAS_DH_OUT: tl.constexpr,
               HAS_DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr, ACC: tl.constexpr):
    """Adds dh_out to the tile's dh, writes dresidual = dh and
    dx = dh * keep / (1 - p) (dx = dh without dropout)."""
    rows64 = rows.to(tl.int64)
    out = (rows64 * N)[:, None] + cols
    if HAS_DH_OUT:
        dh += tl.load(DH_OUT + (rows64 * stride_dho)[:, None] + cols, mask=mask,
                      other=0.0).to(ACC)
    if STORE_DRES:
        tl.store(DRES + out, dh.to(DRES.dtype.element_ty), mask=mask)
    if HAS_DROPOUT:
        a, b = row_keys(seed_lo, seed_hi, rows64)
        dh = tl.where(dropout_keep(a[:, None], b[:, None], cols, threshold), dh * keep_scale,
                      0.0)
    tl.store(DX + out, dh.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    DY,           # (M, N) gradient of y, row stride stride_dy
    DH_OUT,       # (M, N) gradient of the returned h, row stride stride_dho (iff HAS_DH_OUT)
    H,            # (M, N) normalized input h (x when no residual/dropout), row stride stride_h
    W,            # (N,) weight, x's dtype or float32 (read iff HAS_W)
    SEED,         # (1,) int64 dropout seed (read iff HAS_DROPOUT)
    MEAN,         # (M,) row means from the forward (read unless IS_RMS)
    RSTD,         # (M,) reciprocal standard deviations from the forward
    DX,           # (M, N) contiguous gradient of x
    DRES,         # (M, N) contiguous gradient of the residual (written iff STORE_DRES)
    DW_PART,      # (G, N) ACC partial sums of dweight, one row per program (iff HAS_W)
    DB_PART,      # (G, N) ACC partial sums of dbias, one row per program (iff HAS_DB)
    stride_dy,    # row strides, in elements
    stride_dho,
    stride_h,
    M,            # number of rows
    N,            # number of columns
    threshold,    # dropout threshold (rng.threshold_arg)
    keep_scale,   # 1 / (1 - dropout_p)
    HAS_DH_OUT: tl.constexpr, HAS_W: tl.constexpr, HAS_DB: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr, IS_RMS: tl.constexpr,
    ACC: tl.constexpr,         # arithmetic dtype: fp32, or fp64 for fp64 inputs
    BLOCK_M: tl.constexpr,     # rows per tile
    BLOCK_N: tl.constexpr,     # columns per tile (>= N when WHOLE_ROW)
    WHOLE_ROW: tl.constexpr,   # True: rows held in registers; False: column loop
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_blocks = tl.cdiv(M, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)[None, :]
    seed_lo = pid.to(tl.uint32)
    seed_hi = pid.to(tl.uint32)
    if HAS_DROPOUT:
        seed_lo, seed_hi = load_seed(SEED)
    part = pid.to(tl.int64) * N  # this program's row of DW_PART / DB_PART

    if WHOLE_ROW:
        col_ok = cols < N
        w = cols
        if HAS_W:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(ACC)
        dw = tl.zeros([BLOCK_N], ACC)
        db = tl.zeros([BLOCK_N], ACC)
        for blk in tl.range(pid, n_blocks, n_programs):
            rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
            mask = (rows < M)[:, None] & col_ok
            dy, xhat, g, rstd = _bwd_load(DY, H, MEAN, RSTD, rows, cols, mask, w, stride_dy,
                                          stride_h, M, HAS_W, IS_RMS, ACC)
            # dh = rstd * (g - xhat * mean(g * xhat) - mean(g)); RMS: no mean(g)
            dh = g - xhat * (tl.sum(g * xhat, axis=1) / N)[:, None]
            if not IS_RMS:
                dh -= (tl.sum(g, axis=1) / N)[:, None]
            _bwd_store(DH_OUT, DX, DRES, rows, cols, mask, dh * rstd, seed_lo, seed_hi,
                       threshold, keep_scale, stride_dho, N, HAS_DH_OUT, HAS_DROPOUT,
                       STORE_DRES, ACC)
            dw += tl.sum(dy * xhat, axis=0)
            db += tl.sum(dy, axis=0)
        c = tl.arange(0, BLOCK_N)
        if HAS_W:
            tl.store(DW_PART + part + c, dw, mask=c < N)
        if HAS_DB:
            tl.store(DB_PART + part + c, db, mask=c < N)
    else:
        for blk in tl.range(pid, n_blocks, n_programs):
            rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = (rows < M)[:, None]
            # Pass 1: the row sums of g * xhat and g.
            s_gx = tl.zeros([BLOCK_M], ACC)
            s_g = tl.zeros([BLOCK_M], ACC)
            for start in tl.range(0, N, BLOCK_N):
                c = start + cols
                col_ok = c < N
                w = c
                if HAS_W:
                    w = tl.load(W + c, mask=col_ok, other=0.0).to(ACC)
                dy, xhat, g, rstd = _bwd_load(DY, H, MEAN, RSTD, rows, c, row_ok & col_ok, w,
                                              stride_dy, stride_h, M, HAS_W, IS_RMS, ACC)
                s_gx += tl.sum(g * xhat, axis=1)
                s_g += tl.sum(g, axis=1)
            mean_gx = (s_gx / N)[:, None]
            mean_g = (s_g / N)[:, None]
            # Pass 2: the gradients, chunk by chunk.
            for start in tl.range(0, N, BLOCK_N):
                c = start + cols
                col_ok = c < N
                mask = row_ok & col_ok
                w = c
                if HAS_W:
                    w = tl.load(W + c, mask=col_ok, other=0.0).to(ACC)
                dy, xhat, g, rstd = _bwd_load(DY, H, MEAN, RSTD, rows, c, mask, w, stride_dy,
                                              stride_h, M, HAS_W, IS_RMS, ACC)
                dh = g - xhat * mean_gx
                if not IS_RMS:
                    dh -= mean_g
                _bwd_store(DH_OUT, DX, DRES, rows, c, mask, dh * rstd, seed_lo, seed_hi,
                           threshold, keep_scale, stride_dho, N, HAS_DH_OUT, HAS_DROPOUT,
                           STORE_DRES, ACC)
                # Read-modify-write of this program's own partial row: no
                # other program touches it, so no atomics are needed.
                c1 = start + tl.arange(0, BLOCK_N)
                ok1 = c1 < N
                if HAS_W:
                    prev = tl.load(DW_PART + part + c1, mask=ok1, other=0.0)
                    tl.store(DW_PART + part + c1, prev + tl.sum(dy * xhat, axis=0), mask=ok1)
                if HAS_DB:
                    prev = tl.load(DB_PART + part + c1, mask=ok1, other=0.0)
                    tl.store(DB_PART + part + c1, prev + tl.sum(dy, axis=0), mask=ok1)


@on_device_of("h")
def norm_bwd(dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p: float, is_rms: bool,
             has_residual: bool):
    """Backward of fastattn::norm_bwd on the triton backend
    -> (dx, dresidual, dweight, dbias)."""
    dy = _unit_stride(dy)
    dh_out = _unit_stride(dh_out)
    h = _unit_stride(h)
    m, n = h.shape
    has_dropout = dropout_p > 0
    store_dres = has_dropout and has_residual
    dx = torch.empty((m, n), dtype=h.dtype, device=h.device)
    dres = torch.empty((m, n) if store_dres else (0,), dtype=h.dtype, device=h.device)
    acc = stat_dtype(h.dtype)
    block_m, block_n, num_warps, whole_row = _launch_config(m, n, BWD_MAX_ROW, BWD_PER_THREAD)
    n_blocks = triton.cdiv(m, block_m)
    g = _bwd_grid_size(n_blocks, num_warps, h.device)
    dw_part = torch.zeros((g, n) if weight is not None else (0,), dtype=acc, device=h.device)
    db_part = torch.zeros((g, n) if bias is not None else (0,), dtype=acc, device=h.device)
    if m > 0 and n > 0:
        _norm_bwd_kernel[(g,)](
            dy, dh_out if dh_out is not None else dy, h,
            weight.contiguous() if weight is not None else h,
            seed if has_dropout else h,
            mean if not is_rms else rstd, rstd,
            dx, dres if store_dres else dx,
            dw_part if weight is not None else dx, db_part if bias is not None else dx,
            dy.stride(0), dh_out.stride(0) if dh_out is not None else 0, h.stride(0),
            m, n, threshold_arg(dropout_p), 1.0 / (1.0 - dropout_p),
            HAS_DH_OUT=dh_out is not None, HAS_W=weight is not None, HAS_DB=bias is not None,
            HAS_DROPOUT=has_dropout, STORE_DRES=store_dres, IS_RMS=is_rms,
            ACC=_acc_dtype(h.dtype), BLOCK_M=block_m, BLOCK_N=block_n, WHOLE_ROW=whole_row,
            num_warps=num_warps,
        )
    dw = dw_part.sum(0).to(weight.dtype) if weight is not None else h.new_empty((0,))
    db = db_part.sum(0).to(bias.dtype) if bias is not None else h.new_empty((0,))
    return dx, dres, dw, db
