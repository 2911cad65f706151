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
