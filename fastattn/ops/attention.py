"""Attention: argument checks, backend choice, registration, autograd.

``fastattn.attention`` (and the SDPA drop-in, which maps torch's arguments
onto it) reduces to one pair of ``torch.library`` ops:

    fastattn::attention_fwd(q, k, v, attn_mask?, q_lengths?, kv_lengths?, seed?,
                            causal, scale, dropout_p, backend,
                            deterministic=False) -> (out, lse)
    fastattn::attention_bwd(dout, dlse?, q, k, v, out, lse, attn_mask?, q_lengths?,
                            kv_lengths?, seed?, causal, scale, dropout_p,
                            mask_grad, backend, deterministic=False) -> (dq, dk, dv, dmask)

Arguments, as every backend receives them (the frontend guarantees them):
  q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); Hq % Hkv == 0; one float dtype;
      any strides with a contiguous last dim (views are not copied).
  attn_mask  4-D, each dim 1 or the full (B, Hq, Lq, Lk) size; bool
      (True = may attend) or floating (added to the scaled scores), any
      strides. Broadcasting is the backend's job (stride 0, never a copy).
  q_lengths, kv_lengths  int32/int64 (B,), values in [0, Lq] / [0, Lk];
      backends also clamp them, so a bad value can never reach memory.
  seed  int64 (1,) dropout seed (fastattn._rng) or None when dropout_p == 0.
  causal  bottom-right aligned, per batch row with lengths:
      query i may attend key j iff j <= i + (kv_len[b] - q_len[b]).
  scale  multiplies q.k (already resolved from the 1/sqrt(D) default).
  dropout_p  probability of dropping an attention probability, in [0, 1).
      Drawn by the hash of fastattn._rng from `seed`, element (b, h, i, j)
      at row = (b * Hq + h) * Lq + i, col = j; kept probabilities are scaled
      by 1 / (1 - dropout_p). Applied after the softmax statistics: lse is
      that of the undropped scores. The backward regenerates the same mask
      from the same seed; every backend draws the identical mask.
Outputs:
  out  like q (dtype, and memory layout when q is dense); rows with no key
      to attend and rows i >= q_len are 0.
  lse  (B, Hq, Lq) contiguous, natural-log logsumexp of the scaled, masked
      scores, float32 (float64 for float64 inputs); -inf where a row has
      nothing to attend.
  dq, dk, dv  like q, k, v; zero for rows/keys that take no part.
  dmask  the mask's shape and dtype, the gradient of a floating mask summed
      over its broadcast dims, when mask_grad; otherwise shape (0,).
  dlse  the gradient of lse (None when lse was not used); it enters the
      backward as delta_i = dout_i . out_i - dlse_i.

Backends: triton (fastattn.triton.attention), reference (plain PyTorch,
autograd), and the compiled ones through ``fastattn::attention_fwd_native`` /
``attention_bwd_native`` with the same arguments minus ``backend`` and
``deterministic``.

Determinism. The triton kernels use no atomics: every output element
(out, lse, dq, dk, dv, dmask) is written by one program that sums in a
fixed order (dQ has its own pass, see fastattn/triton/attention_bwd.py);
the split-KV decoding forward merges its partials in a fixed order too.
So, for one tile configuration, results are bitwise reproducible run to
run. What can vary between processes on a GPU is the configuration the
autotuner times best; ``deterministic=True`` (argument of attention /
attention_varlen, or ``torch.use_deterministic_algorithms(True)``) pins
it to a fixed choice. The native ops receive no flag: the cpu and cuda
backends must be deterministic by construction (no atomics in their
backward). Dropout masks depend only on the seed. The reference is
deterministic as PyTorch's CPU matmuls are.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _checks
from ._eager import eager_ok, needs_grad

log = logging.getLogger("fastattn")

MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
LENGTH_DTYPES = (torch.int32, torch.int64)

# ---------------------------------------------------------------- dispatch


def call_unsupported_reason(backend: str, dtype: torch.dtype, dropout_p: float) -> str:
    """Empty if `backend` (available on the device) serves this particular
    call, else why not. Per-call limits beyond fastattn._backends' device
    and dtype checks live here."""
    return ""


def pick_backend(requested: str, q: Tensor, dropout_p: float) -> str:
    """The backend that serves this call. `auto` takes the first backend in
    the device's preference order that can; a named backend (argument or
    FASTATTN_BACKEND) that cannot raises ValueError saying why."""
    chosen = _backends.resolve(requested, "attention", q.device, q.dtype)
    why = call_unsupported_reason(chosen, q.dtype, dropout_p)
    if not why:
        return chosen
    explicit = requested != "auto" or bool(os.environ.get("FASTATTN_BACKEND", ""))
    if explicit:
        raise ValueError(f"backend={chosen!r} cannot serve this attention call: {why}")
    for candidate in _backends.AUTO_ORDER.get(q.device.type, ()):
        if (not _backends.unavailable_reason(candidate, "attention", q.device, q.dtype)
                and not call_unsupported_reason(candidate, q.dtype, dropout_p)):
            return candidate
    return "reference"


def _like(t: Tensor, value: Tensor) -> Tensor:
    """`value` in a new tensor with the layout the fake implementations
    promise (torch.empty_like of `t`)."""
    return torch.empty_like(t).copy_(value)


def _reference_fwd(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p):
    from .. import reference
    out, lse = reference._attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths,
                                    dropout_p, scale, seed)
    return _like(q, out), lse.contiguous()


def _reference_bwd(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed,
                   causal, scale, dropout_p, mask_grad):
    from .. import reference
    dq, dk, dv, dmask = reference._attention_bwd(dout, dlse, q, k, v, out, lse, attn_mask,
                                                 q_lengths, kv_lengths, causal, scale,
                                                 dropout_p, seed, mask_grad)
    dmask = _like(attn_mask, dmask) if mask_grad else q.new_empty((0,))
    return _like(q, dq), _like(k, dk), _like(v, dv), dmask


def _run_fwd(backend, q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p,
             deterministic=False):
    if backend == "triton":
        from ..triton import attention as triton_attention
        return triton_attention.attention_fwd(q, k, v, attn_mask, q_lengths, kv_lengths,
                                              seed, causal, scale, dropout_p, deterministic)
    if backend == "reference":
        return _reference_fwd(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
                              dropout_p)
    return torch.ops.fastattn.attention_fwd_native(q, k, v, attn_mask, q_lengths, kv_lengths,
                                                   seed, causal, scale, dropout_p)


def _run_bwd(backend, dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed,
             causal, scale, dropout_p, mask_grad, deterministic=False):
    if backend == "triton":
        from ..triton import attention as triton_attention
        return triton_attention.attention_bwd(dout, dlse, q, k, v, out, lse, attn_mask,
                                              q_lengths, kv_lengths, seed, causal, scale,
                                              dropout_p, mask_grad, deterministic)
    if backend == "reference":
        return _reference_bwd(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths,
                              seed, causal, scale, dropout_p, mask_grad)
    return torch.ops.fastattn.attention_bwd_native(dout, dlse, q, k, v, out, lse, attn_mask,
                                                   q_lengths, kv_lengths, seed, causal, scale,
                                                   dropout_p, mask_grad)


# ------------------------------------------------------------ registration


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                  q_lengths: Optional[Tensor], kv_lengths: Optional[Tensor],
                  seed: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
                  backend: str, deterministic: bool = False) -> tuple[Tensor, Tensor]:
    return _run_fwd(backend, q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
                    dropout_p, deterministic)


@attention_fwd.register_fake
def _(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p, backend,
      deterministic=False):
    B, Hq, Lq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, Lq), dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                  out: Tensor, lse: Tensor, attn_mask: Optional[Tensor],
                  q_lengths: Optional[Tensor], kv_lengths: Optional[Tensor],
                  seed: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
                  mask_grad: bool, backend: str,
                  deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _run_bwd(backend, dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths,
                    seed, causal, scale, dropout_p, mask_grad, deterministic)


@attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
      dropout_p, mask_grad, backend, deterministic=False):
    dmask = attn_mask.new_empty(attn_mask.shape) if mask_grad else q.new_empty((0,))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dmask


def _setup_context(ctx, inputs, output):
    (q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p, backend,
     deterministic) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed)
    ctx.config = (causal, scale, dropout_p, backend, deterministic)


def _backward(ctx, dout, dlse, bwd=None):
    """Autograd of attention_fwd; `bwd` replaces the attention_bwd op (same
    arguments) on the eager path."""
    q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed = ctx.saved_tensors
    causal, scale, dropout_p, backend, deterministic = ctx.config
    mask_grad = (attn_mask is not None and attn_mask.is_floating_point()
                 and ctx.needs_input_grad[3])
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.contiguous()
    dq, dk, dv, dmask = (bwd or attention_bwd)(dout, dlse, q, k, v, out, lse, attn_mask,
                                               q_lengths, kv_lengths, seed, causal, scale,
                                               dropout_p, mask_grad, backend, deterministic)
    return (dq, dk, dv, dmask if mask_grad else None,
            None, None, None, None, None, None, None, None)


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _bwd_direct(*args):
    """attention_bwd's arguments, straight to the backend (no op layer)."""
    *rest, backend, deterministic = args
    return _run_bwd(backend, *rest, deterministic)


class _AttentionFunction(torch.autograd.Function):
    """attention_fwd and its registered autograd, minus the op layer: the
    eager training path (fastattn/ops/_eager.py)."""

    @staticmethod
    def forward(ctx, *inputs):
        out, lse = _run_fwd(inputs[-2], *inputs[:-2], inputs[-1])
        _setup_context(ctx, inputs, (out, lse))
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        return _backward(ctx, dout, dlse, bwd=_bwd_direct)


# ------------------------------------------------------------------ checks


def _check_qkv(q, k, v, *, packed: bool = False):
    """q, k, v of one attention call: (B, H, L, D), or (total, H, D) when
    `packed` (attention_varlen). Heads are dim 1 and the head dim is last in
    both layouts."""
    if packed:
        rank, q_layout, kv_layout = 3, "(total_q, Hq, D)", "(total_k, Hkv, D)"
    else:
        rank, q_layout, kv_layout = 4, "(B, Hq, Lq, D)", "(B, Hkv, Lk, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(name, t)
        if t.dim() != rank:
            layout = q_layout if name == "q" else kv_layout
            raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    Hq, D = q.shape[1], q.shape[-1]
    if not packed and k.shape[0] != q.shape[0]:
        raise ValueError(f"k must have the batch size of q ({q.shape[0]}), "
                         f"got shape {tuple(k.shape)}")
    if k.shape[-1] != D:
        raise ValueError(f"k must have the head dim of q ({D}), got shape {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[1] == 0 or Hq % k.shape[1] != 0:
        raise ValueError(f"the number of query heads of q ({Hq}) must be a multiple of the "
                         f"number of kv heads of k ({k.shape[1]})")
    if not (MIN_HEAD_DIM <= D <= MAX_HEAD_DIM and D % 8 == 0):
        raise ValueError(f"head dim of q must be a multiple of 8 in [{MIN_HEAD_DIM}, "
                         f"{MAX_HEAD_DIM}], got {D}")


def _check_mask(attn_mask, q, full_shape) -> Optional[Tensor]:
    """The mask as a 4-D view (leading 1s added), checked against (B, Hq, Lq, Lk)."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = may attend) or floating point "
                        f"(added to the scores), got {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on the device of q ({q.device}), "
                         f"got {attn_mask.device}")
    shape = tuple(attn_mask.shape)
    ok = attn_mask.dim() <= 4 and all(
        s in (1, f) for s, f in zip(shape[::-1], full_shape[::-1]))
    if not ok:
        raise ValueError(f"attn_mask of shape {shape} is not broadcastable to "
                         f"(B, Hq, Lq, Lk) = {tuple(full_shape)}")
    return attn_mask.view((1,) * (4 - attn_mask.dim()) + shape)


def _values_checkable(t: Tensor) -> bool:
    """Reading tensor values is possible (and allowed) here: not while
    torch.compile traces, nor while a CUDA graph is being captured."""
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_lengths(name: str, lengths, q: Tensor, limit: int, limit_name: str):
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{name} must be an int tensor of shape (B,) or None, "
                        f"got {type(lengths).__name__}")
    if lengths.dtype not in LENGTH_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {lengths.dtype}")
    if tuple(lengths.shape) != (q.shape[0],):
        raise ValueError(f"{name} must have shape (B,) = ({q.shape[0]},), "
                         f"got {tuple(lengths.shape)}")
    if lengths.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {lengths.device}")
    if lengths.numel() and _values_checkable(lengths):
        lo, hi = (int(x) for x in torch.aminmax(lengths))
        if lo < 0 or hi > limit:
            raise ValueError(f"{name} must hold values in [0, {limit_name}={limit}], "
                             f"got values in [{lo}, {hi}]")
    return lengths.contiguous()


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


# ----------------------------------------------------------------- frontend


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              attn_mask: Optional[Tensor] = None, q_lengths: Optional[Tensor] = None,
              kv_lengths: Optional[Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: str = "auto", deterministic: bool = False):
    """Softmax attention, memory linear in the sequence lengths.

    q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D) with Hq % Hkv == 0. Returns out
    (B, Hq, Lq, D), and lse (B, Hq, Lq) float32 natural log when
    return_lse. causal is bottom-right aligned (per batch row with
    lengths); attn_mask is bool (True = may attend) or an additive float
    bias broadcastable to (B, Hq, Lq, Lk); q_lengths/kv_lengths (B,) mark
    the valid prefix of each batch row. deterministic=True (or
    torch.use_deterministic_algorithms(True)) makes results bitwise
    reproducible across processes too (module docstring). See API.md for
    the full contract.
    """
    _check_qkv(q, k, v)
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    causal = _checks.check_flag("causal", causal)
    return_lse = _checks.check_flag("return_lse", return_lse)
    mask4 = _check_mask(attn_mask, q, (B, Hq, Lq, Lk))
    q_lengths = _check_lengths("q_lengths", q_lengths, q, Lq, "Lq")
    kv_lengths = _check_lengths("kv_lengths", kv_lengths, q, Lk, "Lk")
    dropout_p = _checks.check_probability("dropout_p", dropout_p)
    scale = _check_scale(scale, D)
    deterministic = deterministic_mode(deterministic)
    chosen = pick_backend(backend, q, dropout_p)
    return _attention(q, k, v, causal, mask4, q_lengths, kv_lengths, dropout_p, scale,
                      return_lse, chosen, deterministic)


def deterministic_mode(deterministic) -> bool:
    """The argument, or torch's global deterministic-algorithms switch."""
    _checks.check_flag("deterministic", deterministic)
    return deterministic or torch.are_deterministic_algorithms_enabled()


def _attention(q, k, v, causal, mask4, q_lengths, kv_lengths, dropout_p, scale, return_lse,
               chosen, deterministic=False):
    """attention() after its checks; mask4 is the mask's 4-D view."""
    if chosen == "reference":
        from .. import reference
        return reference.attention(q, k, v, causal=causal, attn_mask=mask4,
                                   q_lengths=q_lengths, kv_lengths=kv_lengths,
                                   dropout_p=dropout_p, scale=scale, return_lse=return_lse)

    from .. import _rng
    seed = _rng.draw_seed(q.device) if dropout_p > 0 else None
    args = (_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), mask4,
            q_lengths, kv_lengths, seed, causal, scale, dropout_p)
    if not eager_ok(q, k, v, mask4):
        out, lse = attention_fwd(*args, chosen, deterministic)
    elif needs_grad(q, k, v, mask4):  # the op's autograd without its layer (_eager.py)
        out, lse = _AttentionFunction.apply(*args, chosen, deterministic)
    else:  # inference: the backend itself
        out, lse = _run_fwd(chosen, *args, deterministic)
    return (out, lse) if return_lse else out


# ------------------------------------------------------ SDPA drop-in


def _sdpa_unsupported(query, key, value, attn_mask, dropout_p, is_causal, scale,
                      enable_gqa) -> str:
    """Empty if fastattn's kernels serve this torch SDPA call exactly, else
    why not (then torch serves it, and raises whatever torch raises)."""
    ts = (query, key, value)
    if not all(isinstance(t, Tensor) for t in ts):
        return "query, key and value are not all tensors"
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
    if not (MIN_HEAD_DIM <= E <= MAX_HEAD_DIM and E % 8 == 0):
        return f"head dim {E} is not a multiple of 8 in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
    if Hkv == 0 or Hq % Hkv != 0 or (Hq != Hkv and not enable_gqa):
        return "query and key head counts differ without enable_gqa"
    if L == 0 or S == 0 or N == 0:
        return "empty inputs"
    if attn_mask is not None:
        if is_causal:
            return "attn_mask together with is_causal"
        if not isinstance(attn_mask, Tensor) or attn_mask.device != query.device:
            return "attn_mask is not a tensor on the device of query"
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            return "attn_mask is neither bool nor of query's dtype"
        if attn_mask.dim() > 4 or not all(
                s in (1, f) for s, f in zip(attn_mask.shape[::-1], (N, Hq, L, S)[::-1])):
            return "attn_mask does not broadcast to (N, H, L, S)"
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not (
            0.0 <= dropout_p < 1.0):
        return "dropout_p is not a float in [0, 1)"
    if dropout_p > 0:
        # fastattn's dropout (counter-based, fastattn._rng) draws other masks
        # than torch's generator stream: only torch reproduces torch's call.
        return "dropout_p > 0 (torch's dropout masks come from its own random stream)"
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        return "scale is not a finite float"
    try:
        chosen = pick_backend("auto", query, float(dropout_p))
    except ValueError as exc:  # FASTATTN_BACKEND names a backend that cannot serve it
        return str(exc)
    if chosen == "reference":
        why = call_unsupported_reason("triton", query.dtype, float(dropout_p))
        return why or "no fastattn kernel backend runs on these tensors"
    return ""


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    Served by fastattn's kernels when they support the call, otherwise by
    torch (the reason is logged at debug level on the "fastattn" logger).
    torch's ``is_causal`` is aligned to the top left (query i sees keys
    j <= i), fastattn's causal to the bottom right; they agree when L == S.
    For L < S the top-left band is the bottom-right one of a batch whose
    keys stop at L, so kv_lengths = L expresses it (and the kernels skip the
    keys beyond L). For L > S no lengths express it (rows i >= S see every
    key yet must not be zeroed), so a bool (L, S) lower-triangular mask,
    broadcast over batch and heads, does.
    """
    why = _sdpa_unsupported(query, key, value, attn_mask, dropout_p, is_causal, scale,
                            enable_gqa)
    if why:
        if log.isEnabledFor(logging.DEBUG) and not torch.compiler.is_compiling():
            log.debug("scaled_dot_product_attention served by torch: %s", why)
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=scale, enable_gqa=enable_gqa)
    L, S = query.shape[2], key.shape[2]
    causal, kv_lengths = False, None
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
    return _attention(query, key, value, causal, mask4, None, kv_lengths, float(dropout_p),
                      _check_scale(scale, E), False, pick_backend("auto", query, dropout_p),
                      torch.are_deterministic_algorithms_enabled())
