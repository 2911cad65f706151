"""``fastattn.scaled_dot_product_attention``: torch's SDPA, fastattn's kernels.

An exact drop-in for ``torch.nn.functional.scaled_dot_product_attention``:
the same arguments, results, gradients and errors. fastattn's kernels serve
the calls they compute exactly; torch serves the others (and raises what
torch raises), and the ``fastattn`` logger says so once per cause.

Mapping torch's arguments onto ``fastattn.attention``:
- ``is_causal`` is aligned to the top left (query i sees keys j <= i),
  fastattn's ``causal`` to the bottom right; they agree when L == S. For
  L < S the top-left band is the bottom-right one of a batch whose keys stop
  at L, so kv_lengths = L expresses it (and the kernels skip the keys past
  L). For L > S no lengths express it (rows i >= S see every key yet must
  not be zeroed), so a bool (L, S) lower-triangular mask does.
- ``attn_mask`` may be torch's ``CausalBias`` (``causal_upper_left`` /
  ``causal_lower_right`` of ``torch.nn.attention.bias``): upper-left is
  ``is_causal``, lower-right is fastattn's own ``causal``. Any other tensor
  subclass or ``__torch_function__`` object goes to torch, which knows what
  it means.
- Rows that may attend nothing give 0, as torch's own kernels do.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

from .. import _checks, _log
from .attention import (MAX_HEAD_DIM, MIN_HEAD_DIM, _attention, _check_mask,
                        pick_backend)

# Tensor types the kernels take as they are; FakeTensor and FunctionalTensor
# are what torch.export and other tracers pass in place of plain tensors.
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# torch's own SDPA, captured at import: users (and test harnesses) may put
# fastattn's drop-in in its place in torch.nn.functional, and the calls
# fastattn hands to torch must still reach torch.
_TORCH_SDPA = torch.nn.functional.scaled_dot_product_attention


def _tracing_tensor(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    return isinstance(t, (FakeTensor, FunctionalTensor))


def _foreign(t) -> bool:
    """A tensor subclass or __torch_function__ object whose meaning only
    torch (or the subclass) knows: DTensor, nested tensors, user wrappers."""
    if not isinstance(t, Tensor):
        return True
    if type(t) in _PLAIN:
        return t.is_nested
    return not _tracing_tensor(t)


def _causal_bias_module(mask):
    """torch.nn.attention.bias if `mask` is its CausalBias, else None. Looks
    the class up only if the user imported it (the import costs 1 s)."""
    bias = sys.modules.get("torch.nn.attention.bias")
    return bias if bias is not None and isinstance(mask, bias.CausalBias) else None


def _unsupported(query, key, value, attn_mask, dropout_p, is_causal, scale,
                 enable_gqa) -> str:
    """Empty if fastattn's kernels serve this torch SDPA call exactly, else
    why not (then torch serves it, and raises whatever torch raises)."""
    ts = (query, key, value)
    if any(_foreign(t) for t in ts):
        return "query, key or value is not a plain tensor (a subclass, or not a tensor)"
    if attn_mask is not None and _foreign(attn_mask):
        return f"attn_mask is a {type(attn_mask).__name__}, which only torch interprets"
    if not isinstance(is_causal, bool) or not isinstance(enable_gqa, bool):
        return "is_causal or enable_gqa is not a bool"
    if any(t.dim() != 4 for t in ts):
        return "only 4-D (N, H, L, E) inputs are served"
    if len({t.dtype for t in ts}) != 1 or not query.is_floating_point():
        return "query, key and value do not share one floating dtype"
    if len({t.device for t in ts}) != 1:
        return "query, key and value are on different devices"
    (N, Hq, L, E), (Nk, Hkv, S, Ek) = query.shape, key.shape
    if Nk != N or tuple(value.shape) != tuple(key.shape) or Ek != E:
        return "key/value shapes differ from what the kernels take (same batch, head dim)"
    if not MIN_HEAD_DIM <= E <= MAX_HEAD_DIM:
        return f"head dim {E} is over {MAX_HEAD_DIM}"
    if Hkv == 0 or Hq % Hkv != 0 or (Hq != Hkv and not enable_gqa):
        return "query and key head counts differ without enable_gqa"
    if L == 0 or S == 0 or N == 0:
        return "empty inputs"
    if attn_mask is not None:
        if is_causal:
            return "attn_mask together with is_causal"
        if attn_mask.device != query.device:
            return "attn_mask is not on the device of query"
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            return "attn_mask is neither bool nor of query's dtype"
        if attn_mask.dim() > 4 or not all(
                s in (1, f) for s, f in zip(attn_mask.shape[::-1], (N, Hq, L, S)[::-1])):
            return "attn_mask does not broadcast to (N, H, L, S)"
    if not _checks.is_real(dropout_p) or (not _checks.is_symbolic(dropout_p)
                                          and not 0.0 <= dropout_p < 1.0):
        return "dropout_p is not a float in [0, 1)"
    if dropout_p > 0:
        # fastattn's dropout (counter-based, fastattn._rng) draws other masks
        # than torch's generator stream: only torch reproduces torch's call.
        return "dropout_p > 0 (torch's dropout masks come from its own random stream)"
    if scale is not None:
        try:
            _checks.check_scale(scale, E)
        except (TypeError, ValueError):
            return "scale is not a finite float"
    try:
        chosen = pick_backend("auto", query)
    except ValueError as exc:  # FASTATTN_BACKEND names a backend that cannot serve it
        return str(exc)
    if chosen == "reference":
        return "no fastattn kernel backend runs on these tensors"
    return ""


def _served_by_torch(why, query, key, value, attn_mask, dropout_p, is_causal, scale,
                     enable_gqa) -> Tensor:
    _log.warn_once(f"sdpa:{why}", "fastattn.scaled_dot_product_attention: torch serves calls "
                   "where %s", why)
    if _causal_bias_module(attn_mask) is not None:
        # CausalBias dispatches on torch.nn.functional's SDPA by identity,
        # which may be fastattn's now: give torch the mask it stands for.
        attn_mask = attn_mask._materialize(query.device)
    return _TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                       is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``
    (module docstring: what fastattn serves and how it maps the arguments)."""
    bias = _causal_bias_module(attn_mask)
    causal_lower_right = False
    if bias is not None:
        if is_causal:
            raise ValueError("CausalBias should not be used with causal=True")
        if attn_mask.variant == bias.CausalVariant.UPPER_LEFT \
                or attn_mask.seq_len_q == attn_mask.seq_len_kv:
            # torch too reads an upper-left bias (or a square one) as is_causal
            attn_mask, is_causal = None, True
        elif (isinstance(query, Tensor) and isinstance(key, Tensor) and query.dim() == 4
              and key.dim() == 4
              and (attn_mask.seq_len_q, attn_mask.seq_len_kv) == (query.shape[2], key.shape[2])):
            attn_mask, causal_lower_right = None, True

    why = _unsupported(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if why:
        return _served_by_torch(why, query, key, value, attn_mask, dropout_p, is_causal,
                                scale, enable_gqa)
    L, S = query.shape[2], key.shape[2]
    causal, kv_lengths = causal_lower_right, None
    if is_causal:
        if L == S:
            causal = True
        elif L < S:
            causal = True
            kv_lengths = torch.full((query.shape[0],), L, dtype=torch.int32,
                                    device=query.device)
        else:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
    N, Hq, _, E = query.shape
    mask4 = _check_mask(attn_mask, query, (N, Hq, L, S))
    chosen = pick_backend("auto", query)
    _log.debug_backend("scaled_dot_product_attention", chosen)
    return _attention(query, key, value, causal, mask4, None, kv_lengths, 0.0,
                      _checks.check_scale(scale, E), False, chosen,
                      torch.are_deterministic_algorithms_enabled())
