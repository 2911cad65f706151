"""Plain-PyTorch ground truth for every fastattn op, same signatures.

Computed in float32 (float64 for float64 inputs) and returned in the input's
dtype; differentiable through ordinary autograd. Tests feed float64 inputs to
get the truth that kernels are judged against. Dropout draws its seed
exactly as the kernels do (fastattn._rng), so for the same torch seed the
reference applies the same dropout mask as every backend.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _rng


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------- norms


def _norm(x, residual, weight, bias, eps, dropout_p, is_rms, prenorm, normalized_shape):
    ct = _compute_dtype(x.dtype)
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    h = x.to(ct)
    if dropout_p > 0:
        seed = _rng.draw_seed(x.device)
        n = 1
        for d in normalized_shape:
            n *= d
        keep = _rng.keep_mask(seed, x.numel() // max(n, 1), n, dropout_p, x.device)
        h = h * keep.view(x.shape).to(ct) / (1.0 - dropout_p)
    if residual is not None:
        h = h + residual.to(ct)
    # h is rounded to the input dtype, as the kernels store it; the norm
    # reads the rounded value, like an unfused add followed by a norm.
    h_out = h.to(x.dtype)
    hc = h_out.to(ct)
    if is_rms:
        var = hc.pow(2).mean(dim=dims, keepdim=True)
        y = hc * torch.rsqrt(var + eps)
    else:
        mean = hc.mean(dim=dims, keepdim=True)
        var = (hc - mean).pow(2).mean(dim=dims, keepdim=True)
        y = (hc - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    y = y.to(x.dtype)
    if prenorm:
        return y, (h_out if (residual is not None or dropout_p > 0) else x)
    return y


def _shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(normalized_shape)


def layer_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: str = "reference") -> Tensor:
    return _norm(x, None, weight, bias, eps, 0.0, False, False, _shape(normalized_shape))


def rms_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
             eps: Optional[float] = None, *, backend: str = "reference") -> Tensor:
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return _norm(x, None, weight, None, eps, 0.0, True, False, _shape(normalized_shape))


def add_layer_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float = 1e-5, *, dropout_p: float = 0.0,
                   prenorm: bool = False, backend: str = "reference"):
    shape = tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    return _norm(x, residual, weight, bias, eps, dropout_p, False, prenorm, shape)


def add_rms_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                 eps: Optional[float] = None, *, dropout_p: float = 0.0,
                 prenorm: bool = False, backend: str = "reference"):
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    shape = tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    return _norm(x, residual, weight, None, eps, dropout_p, True, prenorm, shape)


# --------------------------------------------------------------- attention


def attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct):
    """The scaled scores (B, Hq, Lq, Lk) in dtype `ct`, bias added, -inf
    wherever API.md's rules forbid query i to attend key j."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    kc = k.to(ct).repeat_interleave(Hq // Hkv, dim=1)
    s = torch.matmul(q.to(ct), kc.transpose(-1, -2)) * scale

    dev = q.device
    i = torch.arange(Lq, device=dev).view(1, Lq, 1)
    j = torch.arange(Lk, device=dev).view(1, 1, Lk)
    q_len = (q_lengths.to(dev, torch.int64) if q_lengths is not None
             else torch.full((B,), Lq, device=dev)).view(B, 1, 1)
    kv_len = (kv_lengths.to(dev, torch.int64) if kv_lengths is not None
              else torch.full((B,), Lk, device=dev)).view(B, 1, 1)
    allowed = (i < q_len) & (j < kv_len)  # (B, Lq, Lk)
    if causal:
        allowed = allowed & (j <= i + (kv_len - q_len))
    allowed = allowed.unsqueeze(1)  # (B, 1, Lq, Lk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.to(ct)
    return s.masked_fill(~allowed, float("-inf"))


def _attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale, seed=None,
               compute_dtype=None):
    """(out, lse) of API.md's attention, materializing the scores.

    lse is float32 (float64 for float64 inputs). Dropout draws the mask the
    kernels draw: row = (b * Hq + h) * Lq + i, col = j of fastattn._rng, and
    scales kept probabilities by 1 / (1 - p); lse is taken before dropout.
    `compute_dtype` overrides the float32/float64 arithmetic (tests use the
    input's own low precision as "plain PyTorch" baseline).
    """
    ct = compute_dtype or _compute_dtype(q.dtype)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if scale is None:
        scale = D ** -0.5
    dev = q.device
    vc = v.to(ct).repeat_interleave(Hq // Hkv, dim=1)
    s = attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct)

    # A row with nothing to attend is all -inf: give it out 0, lse -inf and
    # zero gradients. Computing softmax/logsumexp on such a row would give
    # NaN (and NaN gradients), so those rows see zeros instead.
    live = (s != float("-inf")).any(dim=-1, keepdim=True)  # NaN rows stay NaN
    s_live = torch.where(live, s, torch.zeros((), dtype=ct, device=dev))
    p = torch.softmax(s_live, dim=-1) * live
    lse = torch.where(live.squeeze(-1), torch.logsumexp(s_live, dim=-1),
                      torch.full((), float("-inf"), dtype=ct, device=dev))
    if dropout_p > 0:
        if seed is None:
            seed = _rng.draw_seed(q.device)
        keep = _rng.keep_mask(seed, B * Hq * Lq, Lk, dropout_p, dev).view(B, Hq, Lq, Lk)
        p = p * keep.to(ct) / (1.0 - dropout_p)
    out = torch.matmul(p, vc)
    return out.to(q.dtype), lse.to(torch.float64 if ct == torch.float64 else torch.float32)


def _attention_bwd(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, causal,
                   scale, dropout_p=0.0, seed=None, mask_grad=False, compute_dtype=None):
    """(dq, dk, dv, dmask) by the formulas the kernels use, materialized:
        p = exp(s - lse),   dp = dout v^T (times keep / (1 - p_drop) with dropout),
        delta = rowsum(dout * out) - dlse,   ds = p (dp - delta),
        dq = scale ds k,   dk = scale ds^T q,   dv = p_dropped^T dout,
        dmask = ds summed to the mask's shape (None unless mask_grad).
    Rows with lse = -inf get p = 0, hence zero gradients.
    """
    ct = compute_dtype or _compute_dtype(q.dtype)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    s = attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct)
    finite = torch.isfinite(lse)
    p = torch.exp(s - torch.where(finite, lse.to(ct), float("inf"))[..., None])
    do = dout.to(ct)
    kr = k.to(ct).repeat_interleave(group, dim=1)
    vr = v.to(ct).repeat_interleave(group, dim=1)
    dp = torch.matmul(do, vr.transpose(-1, -2))
    p_dropped = p
    if dropout_p > 0:
        keep = _rng.keep_mask(seed, B * Hq * Lq, Lk, dropout_p, q.device).view(B, Hq, Lq, Lk)
        keep = keep.to(ct) / (1.0 - dropout_p)
        p_dropped, dp = p * keep, dp * keep
    delta = (do * out.to(ct)).sum(-1)
    if dlse is not None:
        delta = delta - torch.where(finite, dlse.to(ct), torch.zeros((), dtype=ct,
                                                                     device=q.device))
    ds = p * (dp - delta[..., None])
    dq = scale * torch.matmul(ds, kr)
    dk = (scale * torch.matmul(ds.transpose(-1, -2), q.to(ct))).view(B, Hkv, group, Lk, D)
    dv = torch.matmul(p_dropped.transpose(-1, -2), do).view(B, Hkv, group, Lk, D)
    dmask = ds.sum_to_size(attn_mask.shape).to(attn_mask.dtype) if mask_grad else None
    return dq.to(q.dtype), dk.sum(2).to(k.dtype), dv.sum(2).to(v.dtype), dmask


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              attn_mask: Optional[Tensor] = None, q_lengths: Optional[Tensor] = None,
              kv_lengths: Optional[Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: str = "reference"):
    out, lse = _attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale)
    return (out, lse) if return_lse else out


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                     cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                     causal: bool = False, dropout_p: float = 0.0,
                     scale: Optional[float] = None, return_lse: bool = False,
                     backend: str = "reference"):
    """Packed sequences: each sequence is attended on its own (no dropout
    mask correspondence with the padded layout)."""
    outs, lses = [], []
    bounds_q = cu_seqlens_q.tolist()
    bounds_k = cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        qs = q[bounds_q[b]:bounds_q[b + 1]].transpose(0, 1).unsqueeze(0)
        ks = k[bounds_k[b]:bounds_k[b + 1]].transpose(0, 1).unsqueeze(0)
        vs = v[bounds_k[b]:bounds_k[b + 1]].transpose(0, 1).unsqueeze(0)
        o, lse = _attention(qs, ks, vs, causal, None, None, None, dropout_p, scale)
        outs.append(o[0].transpose(0, 1))
        lses.append(lse[0])
    out = torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)
    lse = torch.cat(lses, dim=1) if lses else q.new_empty((q.shape[1], 0), dtype=torch.float32)
    return (out, lse) if return_lse else out


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention's math: top-left
    ``is_causal``, any leading batch dims, value head dim may differ;
    rows with nothing to attend give 0. Dropout uses torch's RNG."""
    ct = _compute_dtype(query.dtype)
    L, S = query.shape[-2], key.shape[-2]
    if scale is None:
        scale = query.shape[-1] ** -0.5
    k, v = key.to(ct), value.to(ct)
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        k = k.repeat_interleave(rep, dim=-3)
        v = v.repeat_interleave(rep, dim=-3)
    s = torch.matmul(query.to(ct), k.transpose(-1, -2)) * scale
    if is_causal:
        tril = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        s = s.masked_fill(~tril, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, float("-inf"))
        else:
            s = s + attn_mask.to(ct)
    live = (s != float("-inf")).any(dim=-1, keepdim=True)  # NaN rows stay NaN
    s = torch.where(live, s, torch.zeros((), dtype=ct, device=query.device))
    p = torch.softmax(s, dim=-1) * live
    if dropout_p > 0:
        p = torch.nn.functional.dropout(p, dropout_p)
    return torch.matmul(p, v).to(query.dtype)
