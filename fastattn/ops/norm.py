"""Layer norm, RMS norm and fused add & norm: checks, registration, autograd.

All four public functions reduce to one pair of ``torch.library`` ops over a
2-D view (M rows, N = prod(normalized_shape) columns):

    fastattn::norm_fwd(x, residual?, weight?, bias?, seed?, eps, dropout_p,
                       is_rms, store_h, backend) -> (y, h, mean, rstd)
    fastattn::norm_bwd(dy, dh_out?, h, weight?, bias?, mean, rstd, seed?,
                       dropout_p, is_rms, has_residual, backend)
                       -> (dx, dresidual, dweight, dbias)

Forward math, per row (statistics in fp32):
    h    = dropout(x) + residual       (h = x when neither is used)
    mean = sum(h) / N                  (layer norm only; RMS norm uses 0)
    rstd = 1 / sqrt(sum((h - mean)^2) / N + eps)
    y    = (h - mean) * rstd * weight + bias

Backward, with xhat = (h - mean) * rstd and g = dy * weight:
    dh = rstd * (g - xhat * mean(g * xhat) - mean(g)) + dh_out
    (RMS norm drops the mean(g) term; dh_out is the gradient reaching h
    directly when prenorm=True returns it)
    dresidual = dh,   dx = dh * keep / (1 - p),
    dweight = sum_rows(dy * xhat),   dbias = sum_rows(dy).

Every backend implements exactly this contract (triton: fastattn.triton.norm;
cpu/cuda: the C++ ops fastattn::norm_{fwd,bwd}_native). Unused outputs are
empty tensors of shape (0,): h unless store_h, mean for RMS norm, dresidual
unless dropout and a residual are both present (otherwise dresidual == dx),
dweight/dbias without weight/bias. The dropout mask is regenerated in the
backward from the seed (fastattn._rng), never stored.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _checks, _rng
from ._eager import eager_ok, needs_grad

# ---------------------------------------------------------------- dispatch


def _run_fwd(backend, x, residual, weight, bias, seed, eps, dropout_p, is_rms, store_h):
    if backend == "triton":
        from ..triton import norm as triton_norm
        return triton_norm.norm_fwd(x, residual, weight, bias, seed, eps, dropout_p,
                                    is_rms, store_h)
    return torch.ops.fastattn.norm_fwd_native(x, residual, weight, bias, seed, eps,
                                              dropout_p, is_rms, store_h)


def _run_bwd(backend, dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p, is_rms,
             has_residual):
    if backend == "triton":
        from ..triton import norm as triton_norm
        return triton_norm.norm_bwd(dy, dh_out, h, weight, bias, mean, rstd, seed,
                                    dropout_p, is_rms, has_residual)
    return torch.ops.fastattn.norm_bwd_native(dy, dh_out, h, weight, bias, mean, rstd,
                                              seed, dropout_p, is_rms, has_residual)


# ------------------------------------------------------------ registration


@torch.library.custom_op("fastattn::norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
             bias: Optional[Tensor], seed: Optional[Tensor], eps: float, dropout_p: float,
             is_rms: bool, store_h: bool, backend: str
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _run_fwd(backend, x, residual, weight, bias, seed, eps, dropout_p, is_rms, store_h)


@norm_fwd.register_fake
def _(x, residual, weight, bias, seed, eps, dropout_p, is_rms, store_h, backend):
    m, n = x.shape
    y = x.new_empty((m, n))
    h = x.new_empty((m, n) if store_h else (0,))
    mean = x.new_empty((0,) if is_rms else (m,), dtype=torch.float32)
    rstd = x.new_empty((m,), dtype=torch.float32)
    return y, h, mean, rstd


@torch.library.custom_op("fastattn::norm_bwd", mutates_args=())
def norm_bwd(dy: Tensor, dh_out: Optional[Tensor], h: Tensor, weight: Optional[Tensor],
             bias: Optional[Tensor], mean: Tensor, rstd: Tensor, seed: Optional[Tensor],
             dropout_p: float, is_rms: bool, has_residual: bool, backend: str
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _run_bwd(backend, dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p,
                    is_rms, has_residual)


@norm_bwd.register_fake
def _(dy, dh_out, h, weight, bias, mean, rstd, seed, dropout_p, is_rms, has_residual, backend):
    dx = h.new_empty(h.shape)
    dres = h.new_empty(h.shape if (dropout_p > 0 and has_residual) else (0,))
    dw = weight.new_empty(weight.shape) if weight is not None else h.new_empty((0,))
    db = bias.new_empty(bias.shape) if bias is not None else h.new_empty((0,))
    return dx, dres, dw, db


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, seed, eps, dropout_p, is_rms, store_h, backend = inputs
    _, h, mean, rstd = output
    normalized = h if store_h else x  # without residual or dropout, h is x itself
    ctx.save_for_backward(normalized, weight, bias, mean, rstd, seed)
    ctx.config = (dropout_p, is_rms, residual is not None, backend)
    # Outputs the caller did not use (h when not prenorm, mean, rstd) get
    # None as gradient, not a tensor of zeros to fill and then read.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_out, _dmean, _drstd, bwd=None):
    """Autograd of norm_fwd; `bwd` replaces the norm_bwd op (same arguments)
    on the eager path."""
    normalized, weight, bias, mean, rstd, seed = ctx.saved_tensors
    dropout_p, is_rms, has_residual, backend = ctx.config
    if dy is None:  # only h was used
        dy = torch.zeros_like(normalized)
    if dh_out is not None and dh_out.numel() == 0:
        dh_out = None
    dx, dres, dw, db = (bwd or norm_bwd)(dy.contiguous(), dh_out, normalized, weight, bias,
                                         mean, rstd, seed, dropout_p, is_rms, has_residual,
                                         backend)
    if has_residual and dres.numel() == 0:
        dres = dx
    return (dx, dres if has_residual else None, dw if weight is not None else None,
            db if bias is not None else None, None, None, None, None, None, None)


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _bwd_direct(*args):
    """norm_bwd's arguments, straight to the backend (no op layer)."""
    return _run_bwd(args[-1], *args[:-1])


class _NormFunction(torch.autograd.Function):
    """norm_fwd and its registered autograd, minus the op layer: the eager
    training path (fastattn/ops/_eager.py)."""

    @staticmethod
    def forward(ctx, *inputs):
        outputs = _run_fwd(inputs[-1], *inputs[:-1])
        _setup_context(ctx, inputs, outputs)
        return outputs

    @staticmethod
    def backward(ctx, dy, dh_out, dmean, drstd):
        return _backward(ctx, dy, dh_out, dmean, drstd, bwd=_bwd_direct)


# ----------------------------------------------------------------- frontend


def _norm(x, residual, weight, bias, eps, dropout_p, is_rms, prenorm, normalized_shape,
          backend):
    """Shared body of the four public functions, after argument checks."""
    n = 1
    for d in normalized_shape:
        n *= d
    out_shape = x.shape
    backend = _backends.resolve(backend, "norm", x.device, x.dtype)

    if backend == "reference" or x.numel() == 0:
        from .. import reference
        return reference._norm(x, residual, weight, bias, eps, dropout_p, is_rms, prenorm,
                               normalized_shape)

    # 2-D views; reshape copies only when the trailing dims cannot be flattened.
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    res2 = None
    if residual is not None:
        res2 = residual.reshape(-1, n)
        if res2.stride(-1) != 1:
            res2 = res2.contiguous()
    w1 = weight.reshape(n).contiguous() if weight is not None else None
    b1 = bias.reshape(n).contiguous() if bias is not None else None
    seed = _rng.draw_seed(x.device) if dropout_p > 0 else None
    uses_h = residual is not None or dropout_p > 0
    grad = needs_grad(x, residual, weight, bias)
    store_h = uses_h and (prenorm or grad)

    args = (x2, res2, w1, b1, seed, eps, dropout_p, is_rms, store_h)
    if not eager_ok(x, residual, weight, bias):
        y, h, _, _ = norm_fwd(*args, backend)
    elif grad:  # the op's autograd without its layer (_eager.py)
        y, h, _, _ = _NormFunction.apply(*args, backend)
    else:  # inference: the backend itself
        y, h, _, _ = _run_fwd(backend, *args)
    y = y.view(out_shape)
    if not prenorm:
        return y
    if not uses_h:
        return y, x
    return y, h.view(out_shape)


_AUTOCAST_LOW = (torch.float16, torch.bfloat16)


def _autocast_fp32(x, *tensors):
    """Under torch.autocast, the norms run in float32 (fp16/bf16 tensors are
    cast up; the result is float32), as torch's layer_norm does under CUDA
    autocast. Autocast mixes dtypes (a bf16 branch output, an fp32 residual
    and fp32 weights), which outside autocast is an error."""
    if not (isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type)):
        return (x, *tensors)
    return tuple(t.float() if isinstance(t, Tensor) and t.dtype in _AUTOCAST_LOW else t
                 for t in (x, *tensors))


def _check_norm_args(x, normalized_shape, weight, bias, eps, residual=None, dropout_p=0.0,
                     eps_default_from_dtype=False):
    _checks.check_tensor("x", x)
    shape = _checks.normalize_shape("normalized_shape", normalized_shape, x)
    _checks.check_like("weight", weight, "x", x, shape=shape)
    _checks.check_like("bias", bias, "x", x, shape=shape)
    _checks.check_like("residual", residual, "x", x, shape=x.shape)
    if eps is None and eps_default_from_dtype:
        eps = torch.finfo(x.dtype).eps
    eps = _checks.check_eps("eps", eps)
    dropout_p = _checks.check_probability("dropout_p", dropout_p)
    return shape, eps, dropout_p


def _shape_from_weight(x: Tensor, weight) -> tuple[int, ...]:
    """The normalized shape of the add_* ops: weight's shape (x's last dim
    without weight), which must equal x's trailing dims. Checked here so the
    message names `weight`, the argument the caller actually passed."""
    _checks.check_tensor("x", x)
    if not isinstance(weight, Tensor):
        return tuple(x.shape[-1:])
    shape = tuple(weight.shape)
    if len(shape) == 0 or len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"weight of shape {shape} must equal the trailing dimensions of x "
                         f"{tuple(x.shape)}")
    return shape


def layer_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: str = "auto") -> Tensor:
    """Same as ``torch.nn.functional.layer_norm``; statistics in fp32."""
    x, weight, bias = _autocast_fp32(x, weight, bias)
    shape, eps, _ = _check_norm_args(x, normalized_shape, weight, bias, eps)
    return _norm(x, None, weight, bias, eps, 0.0, False, False, shape, backend)


def rms_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
             eps: Optional[float] = None, *, backend: str = "auto") -> Tensor:
    """Same as ``torch.nn.functional.rms_norm`` (eps=None: finfo(x.dtype).eps)."""
    x, weight = _autocast_fp32(x, weight)
    shape, eps, _ = _check_norm_args(x, normalized_shape, weight, None, eps,
                                     eps_default_from_dtype=True)
    return _norm(x, None, weight, None, eps, 0.0, True, False, shape, backend)


def add_layer_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float = 1e-5, *, dropout_p: float = 0.0,
                   prenorm: bool = False, backend: str = "auto"):
    """``h = dropout(x) + residual``; returns ``layer_norm(h)``, or
    ``(layer_norm(h), h)`` when ``prenorm=True``. One pass over memory.

    The norm is over the last dimension (the shape of ``weight``, or the
    last dim of ``x`` when weight is None).
    """
    x, residual, weight, bias = _autocast_fp32(x, residual, weight, bias)
    shape, eps, dropout_p = _check_norm_args(x, _shape_from_weight(x, weight), weight, bias,
                                             eps, residual, dropout_p)
    prenorm = _checks.check_flag("prenorm", prenorm)
    return _norm(x, residual, weight, bias, eps, dropout_p, False, prenorm, shape, backend)


def add_rms_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                 eps: Optional[float] = None, *, dropout_p: float = 0.0,
                 prenorm: bool = False, backend: str = "auto"):
    """``h = dropout(x) + residual``; returns ``rms_norm(h)``, or
    ``(rms_norm(h), h)`` when ``prenorm=True``."""
    x, residual, weight = _autocast_fp32(x, residual, weight)
    shape, eps, dropout_p = _check_norm_args(x, _shape_from_weight(x, weight), weight, None,
                                             eps, residual, dropout_p,
                                             eps_default_from_dtype=True)
    prenorm = _checks.check_flag("prenorm", prenorm)
    return _norm(x, residual, weight, None, eps, dropout_p, True, prenorm, shape, backend)
