"""Attention over packed sequences (``fastattn.attention_varlen``).

One pair of ``torch.library`` ops, the packed counterpart of
fastattn::attention_fwd / attention_bwd (fastattn/ops/attention.py):

    fastattn::attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seed?,
        max_seqlen_q, max_seqlen_k, causal, scale, dropout_p, backend,
        deterministic=False) -> (out, lse)
    fastattn::attention_varlen_bwd(dout, dlse?, q, k, v, out, lse, cu_seqlens_q,
        cu_seqlens_k, seed?, max_seqlen_q, max_seqlen_k, causal, scale, dropout_p,
        backend, deterministic=False) -> (dq, dk, dv)

Arguments: q (total_q, Hq, D), k/v (total_k, Hkv, D), last dim contiguous;
cu_seqlens_q/k int32 (batch + 1,) prefix sums starting at 0 and ending at
total_q/total_k; sequence b is q[cu_q[b]:cu_q[b+1]] attending
k/v[cu_k[b]:cu_k[b+1]]; max_seqlen_* bound every sequence's length.
causal is bottom-right aligned per sequence (as attention() with lengths).
Outputs: out like q; lse (Hq, total_q) float32 (float64 for float64);
rows with nothing to attend give 0 / -inf and zero gradients. Dropout draws
the mask of the padded batch these sequences form: element (b, h, i, j) at
row (b * Hq + h) * max_seqlen_q + i, col j (fastattn._rng), so varlen and
the padded path with lengths agree under the same seed.

Backends: triton and cpu run packed kernels (triton: the grid's batch axis
indexes sequences; cpu: fastattn::attention_varlen_fwd_native /
attention_varlen_bwd_native, the padded C++ kernels reading each sequence
at its cu_seqlens offset; offsets come from cu_seqlens, no padding is
materialized), reference copies the sequences into the padded batch and
runs the reference with lengths. Determinism and the
`deterministic` flag as for attention (fastattn/ops/attention.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _checks, _log
from . import _eager
from ._eager import is_compiling
from .attention import (NO_WINDOW, _check_qkv, _reference_variants, _values_checkable,
                        _variants_off, deterministic_mode, fake_drel, kernel_args,
                        kernel_variants, public_lse_dtype)
from .attention import pick_backend as _pick_attention_backend
from .variants import NO_KERNEL_VARIANTS, KernelVariants, check_variants, rel_bias_grad

VARLEN_BACKENDS = ("triton", "cpu", "reference")


def pick_backend(requested: str, q: Tensor, variants=None) -> str:
    """One of VARLEN_BACKENDS. A backend named by the argument that has no
    varlen path raises ValueError; one from FASTATTN_BACKEND falls back."""
    chosen = _pick_attention_backend(requested, q, variants)
    if chosen in VARLEN_BACKENDS:
        return chosen
    if requested != "auto":
        raise ValueError(f"backend={chosen!r} does not implement attention_varlen; "
                         f"use one of {VARLEN_BACKENDS} or 'auto'")
    if not _backends.unavailable_reason("triton", "attention", q.device, q.dtype):
        return "triton"
    _log.warn_once(f"varlen:{chosen}", "fastattn.attention_varlen: FASTATTN_BACKEND=%s has "
                   "no varlen kernels; the slow reference backend serves it", chosen)
    return "reference"


def _run_fwd(backend, q, k, v, cu_q, cu_k, seed, max_q, max_k, causal, scale, dropout_p,
             deterministic, kv: KernelVariants = NO_KERNEL_VARIANTS):
    if backend == "triton":
        from ..triton import attention as triton_attention
        return triton_attention.attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, seed,
                                                     causal, scale, dropout_p, deterministic,
                                                     kv if kv.any else None)
    if backend == "cpu":
        out, lse = torch.ops.fastattn.attention_varlen_fwd_native(
            q, k, v, cu_q, cu_k, seed, max_q, max_k, causal, scale, dropout_p, *kernel_args(kv))
        return out, lse.to(public_lse_dtype(q.dtype))
    from .. import reference
    out, lse = reference._attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal,
                                           dropout_p, scale, seed,
                                           variants=_reference_variants(kv))
    return torch.empty_like(q).copy_(out), lse.to(public_lse_dtype(q.dtype)).contiguous()


@torch.library.custom_op("fastattn::attention_varlen_fwd", mutates_args=())
def attention_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                         cu_seqlens_k: Tensor, seed: Optional[Tensor], max_seqlen_q: int,
                         max_seqlen_k: int, causal: bool, scale: float, dropout_p: float,
                         backend: str, deterministic: bool = False, window_left: int = -1,
                         window_right: int = -1, softcap: float = 0.0,
                         alibi_slopes: Optional[Tensor] = None,
                         rel_table: Optional[Tensor] = None,
                         rel_buckets: Optional[Tensor] = None,
                         rel_radius: int = 0) -> tuple[Tensor, Tensor]:
    kv = kernel_variants(window_left, window_right, softcap, alibi_slopes, rel_table,
                         rel_buckets, rel_radius)
    return _run_fwd(backend, q, k, v, cu_seqlens_q, cu_seqlens_k, seed, max_seqlen_q,
                    max_seqlen_k, causal, scale, dropout_p, deterministic, kv)


@attention_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, seed, max_seqlen_q, max_seqlen_k, causal, scale,
      dropout_p, backend, deterministic=False, *variant_args):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]),
                                            dtype=public_lse_dtype(q.dtype))


@torch.library.custom_op("fastattn::attention_varlen_bwd", mutates_args=())
def attention_varlen_bwd(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                         out: Tensor, lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                         seed: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                         causal: bool, scale: float, dropout_p: float,
                         backend: str, deterministic: bool = False, window_left: int = -1,
                         window_right: int = -1, softcap: float = 0.0,
                         alibi_slopes: Optional[Tensor] = None,
                         rel_table: Optional[Tensor] = None,
                         rel_buckets: Optional[Tensor] = None, rel_radius: int = 0,
                         rel_grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, drel); drel as for fastattn::attention_bwd."""
    kv = kernel_variants(window_left, window_right, softcap, alibi_slopes, rel_table,
                         rel_buckets, rel_radius)
    if backend == "triton":
        from ..triton import attention as triton_attention
        grads = triton_attention.attention_varlen_bwd(dout, dlse, q, k, v, out, lse,
                                                      cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                      max_seqlen_k, seed, causal, scale,
                                                      dropout_p, deterministic,
                                                      kv if kv.any else None, rel_grad)
        return grads if kv.any else (*grads, q.new_empty((0,)))
    if backend == "cpu":
        return torch.ops.fastattn.attention_varlen_bwd_native(
            dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed, max_seqlen_q,
            max_seqlen_k, causal, scale, dropout_p, *kernel_args(kv), rel_grad)
    from .. import reference
    dq, dk, dv, _ = reference._attention_varlen_bwd(
        dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        causal, scale, dropout_p, seed, variants=_reference_variants(kv))
    return (*(torch.empty_like(t).copy_(g) for t, g in zip((q, k, v), (dq, dk, dv))),
            q.new_empty((0,)))


@attention_varlen_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed, max_seqlen_q,
      max_seqlen_k, causal, scale, dropout_p, backend, deterministic=False, window_left=-1,
      window_right=-1, softcap=0.0, alibi_slopes=None, rel_table=None, rel_buckets=None,
      rel_radius=0, rel_grad=False):
    drel = fake_drel(q, backend, rel_grad, rel_table, rel_radius)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), drel


# Inputs of attention_varlen_fwd: where the relative-bias table is.
_TABLE_INPUT = 17
_NUM_INPUTS = 20


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, seed, max_q, max_k, causal, scale, dropout_p, backend, det,
     *variant_args) = inputs
    kv = kernel_variants(*variant_args) if variant_args else NO_KERNEL_VARIANTS
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k, seed, kv.alibi_slopes,
                          kv.rel_table, kv.rel_buckets)
    ctx.config = (max_q, max_k, causal, scale, dropout_p, backend, det)
    ctx.window_softcap_radius = (kv.window_left, kv.window_right, kv.softcap, kv.rel_radius)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k, seed, alibi, table, buckets = ctx.saved_tensors
    left, right, softcap, radius = ctx.window_softcap_radius
    rel_grad = (table is not None and len(ctx.needs_input_grad) > _TABLE_INPUT
                and ctx.needs_input_grad[_TABLE_INPUT])
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.contiguous()
    dq, dk, dv, drel = attention_varlen_bwd(dout, dlse, q, k, v, out, lse, cu_q, cu_k, seed,
                                            *ctx.config, left, right, softcap, alibi, table,
                                            buckets, radius, rel_grad)
    grads = [dq, dk, dv] + [None] * (_NUM_INPUTS - 3)
    if rel_grad:
        grads[_TABLE_INPUT] = rel_bias_grad(drel, buckets, table.shape[0]).to(table.dtype)
    return tuple(grads[:len(ctx.needs_input_grad)])


attention_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ checks


def _check_max(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_cu_seqlens(name: str, cu: Tensor, q: Tensor, total: int, max_name: str,
                      max_seqlen: int, batch: Optional[int], check_values: bool = True) -> Tensor:
    if not isinstance(cu, Tensor):
        raise TypeError(f"{name} must be an int32 tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must have shape (batch + 1,), got {tuple(cu.shape)}")
    if batch is not None and cu.numel() != batch + 1:
        raise ValueError(f"{name} must have shape (batch + 1,) = ({batch + 1},) like "
                         f"cu_seqlens_q, got {tuple(cu.shape)}")
    if cu.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {cu.device}")
    if check_values and _values_checkable(cu):
        values = cu.tolist()
        if values[0] != 0 or values[-1] != total:
            raise ValueError(f"{name} must start at 0 and end at the number of packed tokens "
                             f"({total}), got {values[0]} ... {values[-1]}")
        lens = [b - a for a, b in zip(values, values[1:])]
        if lens and min(lens) < 0:
            raise ValueError(f"{name} must be non-decreasing")
        if lens and max(lens) > max_seqlen:
            raise ValueError(f"{max_name}={max_seqlen} is smaller than the longest sequence "
                             f"of {name} ({max(lens)})")
    return cu.contiguous()


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                     cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                     causal: bool = False, dropout_p: float = 0.0,
                     scale: Optional[float] = None, return_lse: bool = False,
                     backend: str = "auto", deterministic: bool = False,
                     window_size=NO_WINDOW, alibi_slopes: Optional[Tensor] = None,
                     softcap: float = 0.0, rel_bias=None):
    """Attention over packed sequences (no padding): q (total_q, Hq, D),
    k/v (total_k, Hkv, D), cu_seqlens_* int32 (batch + 1,) prefix sums.
    Returns out (total_q, Hq, D), and lse (Hq, total_q) when return_lse.
    deterministic as for attention(); the variants as for attention(), per
    sequence (alibi_slopes (B, Hq): one row per sequence)."""
    if not is_compiling() and _variants_off(window_size, alibi_slopes, softcap, rel_bias):
        out = _eager.fast.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, causal, dropout_p, scale, return_lse,
                                           backend, deterministic)
        if out is not NotImplemented:  # the compiled fast path (_eager.py)
            return out
    return _frontend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     dropout_p, scale, return_lse, backend, deterministic, True, window_size,
                     alibi_slopes, softcap, rel_bias)


def attention_varlen_with_own_seqlens(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                                      cu_seqlens_k: Tensor, max_seqlen_q: int,
                                      max_seqlen_k: int, *, causal: bool = False,
                                      dropout_p: float = 0.0, scale: Optional[float] = None,
                                      backend: str = "auto", window_size=NO_WINDOW,
                                      alibi_slopes: Optional[Tensor] = None,
                                      softcap: float = 0.0, rel_bias=None) -> Tensor:
    """attention_varlen() for fastattn's own integrations, which pack the
    sequences themselves (swap_modules(unpad=True)): every check but reading
    cu_seqlens' values (a device sync in every layer on a GPU)."""
    if not is_compiling() and _variants_off(window_size, alibi_slopes, softcap, rel_bias):
        out = _eager.fast.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, causal, dropout_p, scale, False,
                                           backend, False)
        if out is not NotImplemented:  # the compiled fast path (_eager.py; it reads them on CPU)
            return out
    return _frontend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                     dropout_p, scale, False, backend, False, False, window_size, alibi_slopes,
                     softcap, rel_bias)


def _frontend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
              dropout_p, scale, return_lse, backend, deterministic, check_values: bool,
              window_size=NO_WINDOW, alibi_slopes=None, softcap=0.0, rel_bias=None):
    _check_qkv(q, k, v, packed=True)
    max_seqlen_q = _check_max("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _check_max("max_seqlen_k", max_seqlen_k)
    cu_seqlens_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q, q.shape[0],
                                     "max_seqlen_q", max_seqlen_q, None, check_values)
    cu_seqlens_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q, k.shape[0],
                                     "max_seqlen_k", max_seqlen_k, cu_seqlens_q.numel() - 1,
                                     check_values)
    causal = _checks.check_flag("causal", causal)
    return_lse = _checks.check_flag("return_lse", return_lse)
    dropout_p = _checks.check_probability("dropout_p", dropout_p)
    scale = _checks.check_scale(scale, q.shape[2])
    deterministic = deterministic_mode(deterministic)
    variants = check_variants(q, cu_seqlens_q.numel() - 1, window_size, alibi_slopes, softcap,
                              rel_bias)
    chosen = pick_backend(backend, q, variants)
    _log.debug_backend("attention_varlen", chosen)

    from .. import _rng
    seed = _rng.draw_seed(q.device) if dropout_p > 0 else None
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if chosen == "reference" and variants.any:
        # plain PyTorch with autograd: the reference computes T5's buckets itself
        from .. import reference
        out, lse = reference._attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                               max_seqlen_q, max_seqlen_k, causal, dropout_p,
                                               scale, seed, variants=variants)
        return (out, lse) if return_lse else out
    kv = (KernelVariants.of(variants, max_seqlen_q, max_seqlen_k, q.device) if variants.any
          else NO_KERNEL_VARIANTS)
    out, lse = attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seed, max_seqlen_q,
                                    max_seqlen_k, causal, scale, dropout_p, chosen,
                                    deterministic, *kernel_args(kv))
    return (out, lse) if return_lse else out
