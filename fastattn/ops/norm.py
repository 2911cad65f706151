"""Layer norm, RMS norm and fused add & norm: checks, registration, autograd.

All four public functions reduce to one pair of ``torch.library`` ops over a
2-D view (M rows, N = prod(normalized_shape) columns):

    fastattn::norm_fwd(x, residual?, weight?, bias?, seed?, eps, dropout_p,
                       is_rms, store_h, backend) -> (y, h, mean, rstd)
    fastattn::norm_bwd(dy, dh_out?, h, weight?, bias?, mean, rstd, seed?,
                       dropout_p, is_rms, has_residual, backend)
                       -> (dx, dresidual, dweight, dbias)

Forward math, per row (statistics in fp32; fp64 for fp64 data):
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

weight and bias share a dtype: x's, or float32 for float16/bfloat16 x (mixed
precision, as torch's layer_norm takes them); dweight/dbias come in it.
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

from .. import _backends, _checks, _log, _rng
from . import _eager
from ._eager import eager_ok, is_compiling, needs_grad

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


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved mean and rstd: float32, float64 for float64 data."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@norm_fwd.register_fake
def _(x, residual, weight, bias, seed, eps, dropout_p, is_rms, store_h, backend):
    m, n = x.shape
    y = x.new_empty((m, n))
    h = x.new_empty((m, n) if store_h else (0,))
    mean = x.new_empty((0,) if is_rms else (m,), dtype=stat_dtype(x.dtype))
    rstd = x.new_empty((m,), dtype=stat_dtype(x.dtype))
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
    mixed = any(t is not None and t.dtype != x.dtype for t in (weight, bias))
    # (without call limits the choice is cached: _call_limits says "" unless mixed)
    backend = _backends.resolve(backend, "norm", x.device, x.dtype,
                                (lambda b: _call_limits(b, x, weight, bias)) if mixed else None)
    _log.debug_backend("rms_norm" if is_rms else "layer_norm", backend)

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


def _call_limits(backend: str, x: Tensor, weight, bias) -> str:
    """Why an available backend cannot serve this call (empty if it can)."""
    mixed = any(t is not None and t.dtype != x.dtype for t in (weight, bias))
    if backend == "cuda" and mixed:
        return "the cuda norm kernels take weight and bias in x's dtype only"
    return ""


_HALF = (torch.float16, torch.bfloat16)


def _autocast_fp32(x, *tensors):
    """Under torch.autocast, the norms run in float32 (fp16/bf16 tensors are
    cast up; the result is float32), as torch's layer_norm does under CUDA
    autocast. Autocast mixes dtypes (a bf16 branch output, an fp32 residual
    and fp32 weights), which outside autocast is an error."""
    if not (isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type)):
        return (x, *tensors)
    return tuple(t.float() if isinstance(t, Tensor) and t.dtype in _HALF else t
                 for t in (x, *tensors))


def _check_param(name: str, t, x: Tensor, shape) -> None:
    """weight or bias: a float tensor of `shape` on x's device."""
    if t is None:
        return
    _checks.check_tensor(name, t)
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise _checks.TorchValueError(f"{name} must have shape {tuple(shape)}, "
                                      f"got {tuple(t.shape)}")


def param_dtype_ok(param: torch.dtype, data: torch.dtype) -> bool:
    """The parameter dtypes the kernels take: x's, or float32 for half x."""
    return param == data or (param == torch.float32 and data in _HALF)


def _param_dtypes(x: Tensor, weight, bias, is_rms: bool):
    """(weight, bias) in dtypes the kernels take, with torch's rules.
    layer_norm: both in x's dtype, or both float32 for half x, else
    TypeError (torch raises too). rms_norm takes any weight dtype: one the
    kernels do not take is cast (exactly, bf16/fp16/fp32 -> fp32/fp64) to
    the dtype the product is computed in, as torch's rms_norm computes it."""
    if is_rms:
        if weight is not None and not param_dtype_ok(weight.dtype, x.dtype):
            weight = weight.to(torch.float32 if x.dtype in _HALF else x.dtype)
        return weight, bias
    present = [(n, t) for n, t in (("weight", weight), ("bias", bias)) if t is not None]
    for name, t in present:
        if not param_dtype_ok(t.dtype, x.dtype):
            raise _checks.TorchTypeError(f"{name} must have the dtype of x ({x.dtype}), or "
                                         f"float32 for float16/bfloat16 x, got {t.dtype}")
    if len(present) == 2 and weight.dtype != bias.dtype:
        raise _checks.TorchTypeError(f"bias must have the dtype of weight ({weight.dtype}), "
                                     f"got {bias.dtype}")
    return weight, bias


def _check_norm_args(x, normalized_shape, weight, bias, eps, residual=None, dropout_p=0.0,
                     is_rms=False):
    """(shape, weight, bias, eps, dropout_p) after checks; rms_norm's eps=None
    is _checks.default_rms_eps(x.dtype), as torch's."""
    _checks.check_tensor("x", x)
    shape = _checks.normalize_shape("normalized_shape", normalized_shape, x)
    _check_param("weight", weight, x, shape)
    _check_param("bias", bias, x, shape)
    weight, bias = _param_dtypes(x, weight, bias, is_rms)
    _checks.check_like("residual", residual, "x", x, shape=x.shape)
    if eps is None and is_rms:
        eps = _checks.default_rms_eps(x.dtype)
    eps = _checks.check_eps("eps", eps)
    dropout_p = _checks.check_probability("dropout_p", dropout_p)
    return shape, weight, bias, eps, dropout_p


def _shape_from_weight(x: Tensor, weight) -> tuple[int, ...]:
    """The normalized shape of the add_* ops: weight's shape (x's last dim
    without weight), which must equal x's trailing dims. Checked here so the
    message names `weight`, the argument the caller actually passed."""
    _checks.check_tensor("x", x)
    if not isinstance(weight, Tensor):
        return tuple(x.shape[-1:])
    shape = tuple(weight.shape)
    if len(shape) == 0 or len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise _checks.TorchValueError(f"weight of shape {shape} must equal the trailing "
                                      f"dimensions of x {tuple(x.shape)}")
    return shape


def layer_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: str = "auto") -> Tensor:
    """Same as ``torch.nn.functional.layer_norm`` (bf16/fp16 x may have
    float32 weight and bias: the result is in x's dtype); statistics in fp32
    (fp64 for fp64 x)."""
    if not is_compiling():  # the compiled fast path (_eager.py)
        out = _eager.fast.layer_norm(x, normalized_shape, weight, bias, eps, backend)
        if out is not NotImplemented:
            return out
    x, weight, bias = _autocast_fp32(x, weight, bias)
    shape, weight, bias, eps, _ = _check_norm_args(x, normalized_shape, weight, bias, eps)
    return _norm(x, None, weight, bias, eps, 0.0, False, False, shape, backend)


def rms_norm(x: Tensor, normalized_shape, weight: Optional[Tensor] = None,
             eps: Optional[float] = None, *, backend: str = "auto") -> Tensor:
    """Same as ``torch.nn.functional.rms_norm`` (eps=None: the machine epsilon
    of float32 for half inputs, of x's dtype otherwise, as torch computes it)."""
    if not is_compiling():  # the compiled fast path (_eager.py)
        out = _eager.fast.rms_norm(x, normalized_shape, weight, eps, backend)
        if out is not NotImplemented:
            return out
    x, weight = _autocast_fp32(x, weight)
    shape, weight, _, eps, _ = _check_norm_args(x, normalized_shape, weight, None, eps,
                                                is_rms=True)
    return _norm(x, None, weight, None, eps, 0.0, True, False, shape, backend)


def add_layer_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float = 1e-5, *, dropout_p: float = 0.0,
                   prenorm: bool = False, backend: str = "auto"):
    """``h = dropout(x) + residual``; returns ``layer_norm(h)``, or
    ``(layer_norm(h), h)`` when ``prenorm=True``. One pass over memory.

    The norm is over the last dimension (the shape of ``weight``, or the
    last dim of ``x`` when weight is None).
    """
    if not is_compiling():  # the compiled fast path (_eager.py)
        out = _eager.fast.add_layer_norm(x, residual, weight, bias, eps, dropout_p, prenorm,
                                         backend)
        if out is not NotImplemented:
            return out
    x, residual, weight, bias = _autocast_fp32(x, residual, weight, bias)
    shape, weight, bias, eps, dropout_p = _check_norm_args(
        x, _shape_from_weight(x, weight), weight, bias, eps, residual, dropout_p)
    prenorm = _checks.check_flag("prenorm", prenorm)
    return _norm(x, residual, weight, bias, eps, dropout_p, False, prenorm, shape, backend)


def add_rms_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                 eps: Optional[float] = None, *, dropout_p: float = 0.0,
                 prenorm: bool = False, backend: str = "auto"):
    """``h = dropout(x) + residual``; returns ``rms_norm(h)``, or
    ``(rms_norm(h), h)`` when ``prenorm=True``."""
    if not is_compiling():  # the compiled fast path (_eager.py)
        out = _eager.fast.add_rms_norm(x, residual, weight, eps, dropout_p, prenorm, backend)
        if out is not NotImplemented:
            return out
    x, residual, weight = _autocast_fp32(x, residual, weight)
    shape, weight, _, eps, dropout_p = _check_norm_args(
        x, _shape_from_weight(x, weight), weight, None, eps, residual, dropout_p, is_rms=True)
    prenorm = _checks.check_flag("prenorm", prenorm)
    return _norm(x, residual, weight, None, eps, dropout_p, True, prenorm, shape, backend)
