"""Argument checks shared by the public ops.

Every check raises before any kernel runs, with a message that names the
offending argument and what was expected. The checks read only shapes,
dtypes and devices (never tensor data), so torch.compile traces through them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TorchValueError(ValueError, RuntimeError):
    """A ValueError (fastattn's contract) that is also the RuntimeError torch
    raises for the same call: what the drop-ins raise where torch's own op
    would raise RuntimeError (a norm's shapes), so code written against
    torch (``except RuntimeError``) keeps working."""


class TorchTypeError(TypeError, RuntimeError):
    """The TypeError counterpart of TorchValueError (a norm's dtypes)."""


def check_tensor(name: str, t, *, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        expected = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({expected}), got {t.dtype}")


def check_like(name: str, t: Optional[torch.Tensor], ref_name: str, ref: torch.Tensor,
               *, shape: Optional[Sequence[int]] = None) -> None:
    """`t` (if given) must share `ref`'s dtype and device, and have `shape`."""
    if t is None:
        return
    check_tensor(name, t)
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def is_real(x) -> bool:
    """A Python number (not a bool), or the symbolic number torch.compile
    traces in its place (dynamic shapes turn float arguments into SymFloat)."""
    return not isinstance(x, bool) and isinstance(x, (int, float, torch.SymInt, torch.SymFloat))


def is_symbolic(x) -> bool:
    return isinstance(x, (torch.SymInt, torch.SymFloat))


def check_probability(name: str, p) -> float:
    if not is_real(p):
        raise TypeError(f"{name} must be a float, got {type(p).__name__}")
    if is_symbolic(p) or torch.compiler.is_compiling():  # value known at run time only
        return p
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


def check_scale(scale, head_dim: int):
    """The softmax scale: 1/sqrt(head_dim) by default, else a finite number.
    Under torch.compile the value is not checked: dynamo traces a float
    argument as a symbolic value (dynamic shapes), and reading it would
    specialize the graph on it (or fail)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not is_real(scale):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if is_symbolic(scale) or torch.compiler.is_compiling():
        return scale
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_flag(name: str, value) -> bool:
    """A strict bool: truthy stand-ins ("yes", 1, None) are mistakes."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def default_rms_eps(dtype: torch.dtype) -> float:
    """rms_norm's eps when None, as torch computes it: the machine epsilon
    of the arithmetic dtype, float32 for float16/bfloat16 inputs (torch
    uses its opmath type, not finfo(input.dtype), whatever its docs say)."""
    arith = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return torch.finfo(arith).eps


def check_eps(name: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(eps).__name__}")
    if not eps >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {eps}")
    return float(eps)


def normalize_shape(name: str, normalized_shape, x: torch.Tensor) -> tuple[int, ...]:
    """`normalized_shape` as a tuple; it must match x's trailing dims."""
    if isinstance(normalized_shape, (int, torch.SymInt)) and not isinstance(normalized_shape, bool):
        shape = (normalized_shape,)
    elif isinstance(normalized_shape, (tuple, list, torch.Size)):
        shape = tuple(normalized_shape)
    else:
        raise TypeError(f"{name} must be an int or a sequence of ints, "
                        f"got {type(normalized_shape).__name__}")
    if not all(isinstance(d, (int, torch.SymInt)) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {shape}")
    if len(shape) == 0:
        raise ValueError(f"{name} must name at least one dimension")
    if len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise TorchValueError(f"{name} {shape} must equal the trailing dimensions of x "
                         f"{tuple(x.shape)}")
    return shape
