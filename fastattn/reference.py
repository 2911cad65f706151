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

from . import _checks, _rng
from .ops.variants import NONE as NO_VARIANTS
from .ops.variants import Variants, check_variants, t5_bucket


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
        eps = _checks.default_rms_eps(x.dtype)
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
        eps = _checks.default_rms_eps(x.dtype)
    shape = tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    return _norm(x, residual, weight, None, eps, dropout_p, True, prenorm, shape)


# --------------------------------------------------------------- attention


def attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct,
                     variants: Variants = NO_VARIANTS, rel_per_row: bool = False,
                     cap_grad: bool = False):
    """The scaled scores (B, Hq, Lq, Lk) in dtype `ct`, softcapped, bias,
    ALiBi and relative bias added, -inf wherever API.md's rules forbid query
    i to attend key j. With cap_grad, also d(capped)/d(raw) = 1 - tanh^2
    (None without softcap). rel_per_row: the relative bias's positions are
    each row's own (packed sequences), not the padded shapes'."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    kc = k.to(ct).repeat_interleave(Hq // Hkv, dim=1)
    s = torch.matmul(q.to(ct), kc.transpose(-1, -2)) * scale
    cap_factor = None
    if variants.softcap > 0:
        t = torch.tanh(s / variants.softcap)
        s = variants.softcap * t
        cap_factor = 1 - t * t

    dev = q.device
    i = torch.arange(Lq, device=dev).view(1, Lq, 1)
    j = torch.arange(Lk, device=dev).view(1, 1, Lk)
    q_len = (q_lengths.to(dev, torch.int64) if q_lengths is not None
             else torch.full((B,), Lq, device=dev)).view(B, 1, 1)
    kv_len = (kv_lengths.to(dev, torch.int64) if kv_lengths is not None
              else torch.full((B,), Lk, device=dev)).view(B, 1, 1)
    off = kv_len - q_len  # (B, 1, 1): the alignment of causal, window and ALiBi
    allowed = (i < q_len) & (j < kv_len)  # (B, Lq, Lk)
    if causal:
        allowed = allowed & (j <= i + off)
    left, right = variants.window
    if left >= 0:
        allowed = allowed & (j >= i + off - left)
    if right >= 0:
        allowed = allowed & (j <= i + off + right)
    allowed = allowed.unsqueeze(1)  # (B, 1, Lq, Lk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.to(ct)
    if variants.alibi_slopes is not None:
        slopes = variants.alibi_slopes.to(ct).expand(B, Hq).view(B, Hq, 1, 1)
        s = s - slopes * (i + off - j).abs().unsqueeze(1).to(ct)
    if variants.rel_bias is not None:
        rel = variants.rel_bias
        r = j - i - (off if rel_per_row else Lk - Lq)  # (B or 1, Lq, Lk)
        buckets = t5_bucket(r, rel.bidirectional, rel.num_buckets, rel.max_distance)
        s = s + rel.table.to(ct)[buckets].permute(0, 3, 1, 2)  # (B, Hq, Lq, Lk)
    s = s.masked_fill(~allowed, float("-inf"))
    return (s, cap_factor) if cap_grad else s


def _attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale, seed=None,
               compute_dtype=None, variants: Variants = NO_VARIANTS, rel_per_row: bool = False):
    """(out, lse) of API.md's attention, materializing the scores.

    lse is float32 (float64 for float64 inputs). Dropout draws the mask the
    kernels draw: row = (b * Hq + h) * Lq + i, col = j of fastattn._rng, and
    scales kept probabilities by 1 / (1 - p); lse is taken before dropout.
    `compute_dtype` overrides the float32/float64 arithmetic (tests use the
    input's own low precision as "plain PyTorch" baseline). `variants`:
    windows, ALiBi, softcapping, relative bias (fastattn/ops/variants.py).
    """
    ct = compute_dtype or _compute_dtype(q.dtype)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if scale is None:
        scale = D ** -0.5
    dev = q.device
    vc = v.to(ct).repeat_interleave(Hq // Hkv, dim=1)
    s = attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct, variants,
                         rel_per_row)

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
                   scale, dropout_p=0.0, seed=None, mask_grad=False, compute_dtype=None,
                   variants: Variants = NO_VARIANTS, rel_per_row: bool = False):
    """(dq, dk, dv, dmask, dtable) by the formulas the kernels use, materialized:
        p = exp(s - lse),   dp = dout v^T (times keep / (1 - p_drop) with dropout),
        delta = rowsum(dout * out) - dlse,   ds = p (dp - delta),
        dq = scale ds' k,   dk = scale ds'^T q,   dv = p_dropped^T dout,
        ds' = ds (1 - tanh^2(s_raw / softcap)) with softcap, else ds,
        dmask = ds summed to the mask's shape (None unless mask_grad),
        dtable = ds summed per relative-position bucket (None without rel_bias).
    Rows with lse = -inf get p = 0, hence zero gradients.
    """
    ct = compute_dtype or _compute_dtype(q.dtype)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    s, cap_factor = attention_scores(q, k, causal, attn_mask, q_lengths, kv_lengths, scale, ct,
                                     variants, rel_per_row, cap_grad=True)
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
    dmask = ds.sum_to_size(attn_mask.shape).to(attn_mask.dtype) if mask_grad else None
    dtable = None
    if variants.rel_bias is not None:
        rel = variants.rel_bias
        i = torch.arange(Lq, device=q.device).view(1, Lq, 1)
        j = torch.arange(Lk, device=q.device).view(1, 1, Lk)
        off = ((kv_lengths.view(B, 1, 1) - q_lengths.view(B, 1, 1)) if rel_per_row
               and kv_lengths is not None and q_lengths is not None else Lk - Lq)
        buckets = t5_bucket(j - i - off, rel.bidirectional, rel.num_buckets, rel.max_distance)
        buckets = buckets.expand(B, Lq, Lk).unsqueeze(1).expand(B, Hq, Lq, Lk)
        heads = torch.arange(Hq, device=q.device).view(1, Hq, 1, 1).expand(B, Hq, Lq, Lk)
        dtable = torch.zeros(rel.table.shape, dtype=ct, device=q.device).index_put_(
            (buckets.reshape(-1), heads.reshape(-1)), ds.reshape(-1), accumulate=True)
        dtable = dtable.to(rel.table.dtype)
    if cap_factor is not None:
        ds = ds * cap_factor
    dq = scale * torch.matmul(ds, kr)
    dk = (scale * torch.matmul(ds.transpose(-1, -2), q.to(ct))).view(B, Hkv, group, Lk, D)
    dv = torch.matmul(p_dropped.transpose(-1, -2), do).view(B, Hkv, group, Lk, D)
    return dq.to(q.dtype), dk.sum(2).to(k.dtype), dv.sum(2).to(v.dtype), dmask, dtable


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              attn_mask: Optional[Tensor] = None, q_lengths: Optional[Tensor] = None,
              kv_lengths: Optional[Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: str = "reference", window_size=(-1, -1), alibi_slopes=None,
              softcap: float = 0.0, rel_bias=None):
    variants = check_variants(q, q.shape[0], window_size, alibi_slopes, softcap, rel_bias)
    out, lse = _attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale,
                          variants=variants)
    return (out, lse) if return_lse else out


def _varlen_positions(cu_seqlens: Tensor, max_seqlen: int, total: int) -> Tensor:
    """For each of the `total` packed tokens, its flat position
    b * max_seqlen + i in the padded (B, max_seqlen) layout (computed on the
    device: the total comes from the packed tensor, not from cu_seqlens)."""
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(lens.numel(), device=cu.device), lens,
                                  output_size=total)
    return seq * max_seqlen + torch.arange(total, device=cu.device) - cu[seq]


def _to_padded(t: Tensor, pos: Tensor, batch: int, max_seqlen: int) -> Tensor:
    """Packed (total, H, ...) -> padded (B, H, max_seqlen, ...), zeros elsewhere."""
    full = t.new_zeros((batch * max_seqlen, *t.shape[1:])).index_put((pos,), t)
    return full.view(batch, max_seqlen, *t.shape[1:]).transpose(1, 2)


def _to_packed(t: Tensor, pos: Tensor) -> Tensor:
    """Padded (B, H, L, ...) -> packed (total, H, ...)."""
    return t.transpose(1, 2).reshape(t.shape[0] * t.shape[2], t.shape[1],
                                      *t.shape[3:])[pos]


def _varlen_padded(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """(q, k, v, q_lengths, kv_lengths, pos_q, pos_k) of the padded batch
    that the packed sequences are: sequence b is batch row b."""
    B = cu_seqlens_q.numel() - 1
    pos_q = _varlen_positions(cu_seqlens_q, max_seqlen_q, q.shape[0])
    pos_k = _varlen_positions(cu_seqlens_k, max_seqlen_k, k.shape[0])
    qp = _to_padded(q, pos_q, B, max_seqlen_q)
    kp = _to_padded(k, pos_k, B, max_seqlen_k)
    vp = _to_padded(v, pos_k, B, max_seqlen_k)
    q_lengths = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).to(torch.int64)
    kv_lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.int64)
    return qp, kp, vp, q_lengths, kv_lengths, pos_q, pos_k


def _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                      dropout_p, scale, seed=None, variants: Variants = NO_VARIANTS):
    """(out (total_q, Hq, D), lse (Hq, total_q)) of packed sequences, as the
    padded batch with per-row lengths: causal is bottom-right per sequence,
    and dropout draws the padded layout's mask (row (b * Hq + h) *
    max_seqlen_q + i), which is what the kernels draw for packed inputs;
    the variants per sequence (rel_per_row)."""
    qp, kp, vp, ql, kl, pos_q, _ = _varlen_padded(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                  max_seqlen_q, max_seqlen_k)
    out, lse = _attention(qp, kp, vp, causal, None, ql, kl, dropout_p, scale, seed,
                          variants=variants, rel_per_row=True)
    lse_packed = _to_packed(lse.unsqueeze(-1), pos_q)[..., 0].transpose(0, 1)
    return _to_packed(out, pos_q), lse_packed


def _attention_varlen_bwd(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                          max_seqlen_q, max_seqlen_k, causal, scale, dropout_p=0.0, seed=None,
                          variants: Variants = NO_VARIANTS):
    """(dq, dk, dv, drel) of _attention_varlen by _attention_bwd on the
    padded batch; drel is its fifth output (the rel_bias table's gradient)."""
    qp, kp, vp, ql, kl, pos_q, pos_k = _varlen_padded(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                      max_seqlen_q, max_seqlen_k)
    B = qp.shape[0]
    outp = _to_padded(out, pos_q, B, max_seqlen_q)
    lsep = _to_padded(lse.transpose(0, 1).unsqueeze(-1), pos_q, B, max_seqlen_q)[..., 0]
    lsep = torch.where(torch.arange(max_seqlen_q, device=q.device) < ql.view(-1, 1, 1), lsep,
                       float("-inf"))
    doutp = _to_padded(dout, pos_q, B, max_seqlen_q)
    dlsep = (None if dlse is None else
             _to_padded(dlse.transpose(0, 1).unsqueeze(-1), pos_q, B, max_seqlen_q)[..., 0])
    dq, dk, dv, _, drel = _attention_bwd(doutp, dlsep, qp, kp, vp, outp, lsep, None, ql, kl,
                                         causal, scale, dropout_p, seed, variants=variants,
                                         rel_per_row=True)
    return _to_packed(dq, pos_q), _to_packed(dk, pos_k), _to_packed(dv, pos_k), drel


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                     cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                     causal: bool = False, dropout_p: float = 0.0,
                     scale: Optional[float] = None, return_lse: bool = False,
                     backend: str = "reference", window_size=(-1, -1), alibi_slopes=None,
                     softcap: float = 0.0, rel_bias=None):
    """Packed sequences, each attended on its own; lse is (Hq, total_q).
    The variants apply per sequence (relative positions too)."""
    variants = check_variants(q, cu_seqlens_q.numel() - 1, window_size, alibi_slopes, softcap,
                              rel_bias)
    out, lse = _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                 max_seqlen_k, causal, dropout_p, scale, variants=variants)
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
