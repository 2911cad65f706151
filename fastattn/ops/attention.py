"""Attention: argument checks, backend choice, registration, autograd.

``fastattn.attention`` (and the SDPA drop-in of fastattn/ops/sdpa.py, which
maps torch's arguments onto it) reduces to one pair of ``torch.library`` ops:

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
      scores, float32 (float64 for float64 inputs, and on the cpu backend:
      lse_dtype); -inf where a row has nothing to attend.
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

from typing import Optional

import torch
from torch import Tensor

from .. import _backends, _checks, _log
from . import _eager
from ._eager import eager_ok, is_compiling, needs_grad
from .variants import (NO_KERNEL_VARIANTS, KernelVariants, Variants, check_variants,
                       rel_bias_grad)

MIN_HEAD_DIM = 1
MAX_HEAD_DIM = 256
LENGTH_DTYPES = (torch.int32, torch.int64)

# ---------------------------------------------------------------- dispatch


def cuda_variant_limits(variants: Variants, has_mask: bool) -> str:
    """Why the cuda kernels cannot serve these variants ("" if they can):
    they run window_size, and alibi_slopes, softcap and rel_bias without
    attn_mask only (csrc/cuda/attention_variants.h)."""
    terms = [n for n in variants.names() if n in ("alibi_slopes", "softcap", "rel_bias")]
    if has_mask and terms:
        return f"the cuda kernels do not implement {' and '.join(terms)} together with attn_mask"
    return ""


def pick_backend(requested: str, q: Tensor, variants: Optional[Variants] = None,
                 has_mask: bool = False) -> str:
    """The backend that serves this call: `auto` takes the first backend in
    the device's preference order that can; a named backend (argument or
    FASTATTN_BACKEND) that cannot raises ValueError saying why."""
    limits = None
    if variants is not None and variants.any:
        reason = cuda_variant_limits(variants, has_mask)
        if reason:
            limits = lambda b: reason if b == "cuda" else ""  # noqa: E731
    return _backends.resolve(requested, "attention", q.device, q.dtype, limits)


def _like(t: Tensor, value: Tensor) -> Tensor:
    """`value` in a new tensor with the layout the fake implementations
    promise (torch.empty_like of `t`)."""
    return torch.empty_like(t).copy_(value)


def _reference_variants(kv: KernelVariants) -> Variants:
    """The op's variant arguments as the reference takes them. The relative
    bias reaches the op as a bucket lookup, which the reference does not
    take: public calls with rel_bias run the reference outside the op
    (_attention), so only a direct call of the op with it lands here."""
    if kv.rel_table is not None:
        raise NotImplementedError("fastattn::attention_fwd with backend='reference' takes no "
                                  "rel_table; fastattn.reference.attention(rel_bias=...) does")
    return Variants((kv.window_left, kv.window_right), kv.alibi_slopes, kv.softcap)


def _reference_fwd(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p,
                   kv=NO_KERNEL_VARIANTS):
    from .. import reference
    out, lse = reference._attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths,
                                    dropout_p, scale, seed, variants=_reference_variants(kv))
    return _like(q, out), lse.contiguous()


def _reference_bwd(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed,
                   causal, scale, dropout_p, mask_grad, kv=NO_KERNEL_VARIANTS):
    from .. import reference
    dq, dk, dv, dmask, _ = reference._attention_bwd(dout, dlse, q, k, v, out, lse, attn_mask,
                                                    q_lengths, kv_lengths, causal, scale,
                                                    dropout_p, seed, mask_grad,
                                                    variants=_reference_variants(kv))
    dmask = _like(attn_mask, dmask) if mask_grad else q.new_empty((0,))
    return _like(q, dq), _like(k, dk), _like(v, dv), dmask, q.new_empty((0,))


def kernel_args(kv: KernelVariants) -> tuple:
    """KernelVariants as the ops' flat arguments (their schema's order)."""
    return (kv.window_left, kv.window_right, kv.softcap, kv.alibi_slopes, kv.rel_table,
            kv.rel_buckets, kv.rel_radius)


def kernel_variants(window_left, window_right, softcap, alibi_slopes, rel_table, rel_buckets,
                    rel_radius) -> KernelVariants:
    """The ops' flat variant arguments as a KernelVariants."""
    return KernelVariants(window_left, window_right, alibi_slopes, softcap, rel_table,
                          rel_buckets, rel_radius)


def fake_drel(q: Tensor, backend: str, rel_grad: bool, rel_table, rel_radius: int) -> Tensor:
    """The backward's score-gradient sums per relative position as the fake
    implementations promise them: (Hq, 2R + 1), float64 on the cpu backend
    and for float64 inputs, float32 otherwise; (0,) unless rel_grad."""
    if not (rel_grad and rel_table is not None):
        return q.new_empty((0,))
    dtype = torch.float64 if backend == "cpu" or q.dtype == torch.float64 else torch.float32
    return q.new_empty((q.shape[1], 2 * rel_radius + 1), dtype=dtype)


# The cuda kernels take head dims in multiples of CUDA_HEAD_DIM_STEP; others
# are zero-padded (a zero column adds nothing to q.k, and gives a zero output
# column that is cut off again).
CUDA_HEAD_DIM_STEP = 8


def _cuda_head_dim_pad(D: int) -> int:
    return -D % CUDA_HEAD_DIM_STEP


def _pad_last(t: Optional[Tensor], pad: int) -> Optional[Tensor]:
    return t if t is None else torch.nn.functional.pad(t, (0, pad))


def _run_fwd(backend, q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p,
             deterministic=False, kv=NO_KERNEL_VARIANTS):
    if backend == "cuda" and _cuda_head_dim_pad(q.shape[-1]):
        pad = _cuda_head_dim_pad(q.shape[-1])
        out, lse = torch.ops.fastattn.attention_fwd_native(
            _pad_last(q, pad), _pad_last(k, pad), _pad_last(v, pad), attn_mask, q_lengths,
            kv_lengths, seed, causal, scale, dropout_p, *kernel_args(kv))
        return _like(q, out[..., :q.shape[-1]]), lse
    if backend == "triton":
        from ..triton import attention as triton_attention
        return triton_attention.attention_fwd(q, k, v, attn_mask, q_lengths, kv_lengths,
                                              seed, causal, scale, dropout_p, deterministic,
                                              kv if kv.any else None)
    if backend == "reference":
        return _reference_fwd(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
                              dropout_p, kv)
    return torch.ops.fastattn.attention_fwd_native(q, k, v, attn_mask, q_lengths, kv_lengths,
                                                   seed, causal, scale, dropout_p,
                                                   *kernel_args(kv))


def _run_bwd(backend, dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed,
             causal, scale, dropout_p, mask_grad, deterministic=False, kv=NO_KERNEL_VARIANTS,
             rel_grad=False):
    """(dq, dk, dv, dmask, drel) on every backend; drel is (0,) unless rel_grad."""
    if backend == "cuda" and _cuda_head_dim_pad(q.shape[-1]):
        pad = _cuda_head_dim_pad(q.shape[-1])
        dq, dk, dv, dmask, drel = torch.ops.fastattn.attention_bwd_native(
            _pad_last(dout, pad), dlse, _pad_last(q, pad), _pad_last(k, pad), _pad_last(v, pad),
            _pad_last(out, pad), lse, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
            dropout_p, mask_grad, *kernel_args(kv), False, rel_grad)
        D = q.shape[-1]
        return _like(q, dq[..., :D]), _like(k, dk[..., :D]), _like(v, dv[..., :D]), dmask, drel
    if backend == "triton":
        from ..triton import attention as triton_attention
        grads = triton_attention.attention_bwd(dout, dlse, q, k, v, out, lse, attn_mask,
                                               q_lengths, kv_lengths, seed, causal, scale,
                                               dropout_p, mask_grad, deterministic,
                                               kv if kv.any else None, rel_grad)
        return grads if kv.any else (*grads, q.new_empty((0,)))
    if backend == "reference":
        return _reference_bwd(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths,
                              seed, causal, scale, dropout_p, mask_grad, kv)
    return torch.ops.fastattn.attention_bwd_native(dout, dlse, q, k, v, out, lse, attn_mask,
                                                   q_lengths, kv_lengths, seed, causal, scale,
                                                   dropout_p, mask_grad, *kernel_args(kv),
                                                   False, rel_grad)


# ------------------------------------------------------------ registration


def public_lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the lse that attention() returns: float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_dtype(dtype: torch.dtype, backend: str) -> torch.dtype:
    """dtype of the op's lse: the public one, but float64 on the cpu
    backend, whose backward needs lse exact to well below a float's rounding
    at |lse| (csrc/cpu/attention_cpu.h)."""
    return torch.float64 if backend == "cpu" else public_lse_dtype(dtype)


@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                  q_lengths: Optional[Tensor], kv_lengths: Optional[Tensor],
                  seed: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
                  backend: str, deterministic: bool = False, window_left: int = -1,
                  window_right: int = -1, softcap: float = 0.0,
                  alibi_slopes: Optional[Tensor] = None, rel_table: Optional[Tensor] = None,
                  rel_buckets: Optional[Tensor] = None,
                  rel_radius: int = 0) -> tuple[Tensor, Tensor]:
    kv = kernel_variants(window_left, window_right, softcap, alibi_slopes, rel_table,
                         rel_buckets, rel_radius)
    return _run_fwd(backend, q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
                    dropout_p, deterministic, kv)


@attention_fwd.register_fake
def _(q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p, backend,
      deterministic=False, *variant_args):
    B, Hq, Lq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, Lq), dtype=lse_dtype(q.dtype, backend))


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def attention_bwd(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                  out: Tensor, lse: Tensor, attn_mask: Optional[Tensor],
                  q_lengths: Optional[Tensor], kv_lengths: Optional[Tensor],
                  seed: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
                  mask_grad: bool, backend: str, deterministic: bool = False,
                  window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
                  alibi_slopes: Optional[Tensor] = None, rel_table: Optional[Tensor] = None,
                  rel_buckets: Optional[Tensor] = None, rel_radius: int = 0,
                  rel_grad: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    kv = kernel_variants(window_left, window_right, softcap, alibi_slopes, rel_table,
                         rel_buckets, rel_radius)
    return _run_bwd(backend, dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths,
                    seed, causal, scale, dropout_p, mask_grad, deterministic, kv, rel_grad)


@attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
      dropout_p, mask_grad, backend, deterministic=False, window_left=-1, window_right=-1,
      softcap=0.0, alibi_slopes=None, rel_table=None, rel_buckets=None, rel_radius=0,
      rel_grad=False):
    dmask = attn_mask.new_empty(attn_mask.shape) if mask_grad else q.new_empty((0,))
    drel = fake_drel(q, backend, rel_grad, rel_table, rel_radius)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dmask, drel


# Inputs of attention_fwd: where the mask and the relative-bias table are.
_MASK_INPUT = 3
_TABLE_INPUT = 16
_NUM_INPUTS = 19


def _setup_context(ctx, inputs, output):
    (q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p, backend,
     deterministic, *variant_args) = inputs
    kv = kernel_variants(*variant_args) if variant_args else NO_KERNEL_VARIANTS
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed,
                          kv.alibi_slopes, kv.rel_table, kv.rel_buckets)
    ctx.config = (causal, scale, dropout_p, backend, deterministic)
    ctx.window_softcap_radius = (kv.window_left, kv.window_right, kv.softcap, kv.rel_radius)


def _backward(ctx, dout, dlse, bwd=None):
    """Autograd of attention_fwd; `bwd` replaces the attention_bwd op (same
    arguments) on the eager path. The relative-bias table's gradient is the
    kernels' score gradient summed per relative position, reduced per bucket
    (variants.rel_bias_grad)."""
    (q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed, alibi, table,
     buckets) = ctx.saved_tensors
    causal, scale, dropout_p, backend, deterministic = ctx.config
    left, right, softcap, radius = ctx.window_softcap_radius
    mask_grad = (attn_mask is not None and attn_mask.is_floating_point()
                 and ctx.needs_input_grad[_MASK_INPUT])
    rel_grad = (table is not None and len(ctx.needs_input_grad) > _TABLE_INPUT
                and ctx.needs_input_grad[_TABLE_INPUT])
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.contiguous()
    dq, dk, dv, dmask, drel = (bwd or attention_bwd)(
        dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
        dropout_p, mask_grad, backend, deterministic, left, right, softcap, alibi, table,
        buckets, radius, rel_grad)
    grads = [dq, dk, dv, dmask if mask_grad else None] + [None] * (_NUM_INPUTS - 4)
    if rel_grad:
        grads[_TABLE_INPUT] = rel_bias_grad(drel, buckets, table.shape[0]).to(table.dtype)
    return tuple(grads[:len(ctx.needs_input_grad)])


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _bwd_direct(*args):
    """attention_bwd's arguments, straight to the backend (no op layer)."""
    (dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths, seed, causal, scale,
     dropout_p, mask_grad, backend, deterministic, *variant_args, rel_grad) = args
    return _run_bwd(backend, dout, dlse, q, k, v, out, lse, attn_mask, q_lengths, kv_lengths,
                    seed, causal, scale, dropout_p, mask_grad, deterministic,
                    kernel_variants(*variant_args), rel_grad)


class _AttentionFunction(torch.autograd.Function):
    """attention_fwd and its registered autograd, minus the op layer: the
    eager training path (fastattn/ops/_eager.py). Inputs: attention_fwd's."""

    @staticmethod
    def forward(ctx, *inputs):
        (q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal, scale, dropout_p, backend,
         deterministic, *variant_args) = inputs
        out, lse = _run_fwd(backend, q, k, v, attn_mask, q_lengths, kv_lengths, seed, causal,
                            scale, dropout_p, deterministic, kernel_variants(*variant_args))
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
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim of q must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], "
                         f"got shape {tuple(q.shape)}")


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


def _check_lengths(name: str, lengths, q: Tensor, limit: int, limit_name: str,
                   check_values: bool = True):
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
    if check_values and lengths.numel() and _values_checkable(lengths):
        lo, hi = (int(x) for x in torch.aminmax(lengths))
        if lo < 0 or hi > limit:
            raise ValueError(f"{name} must hold values in [0, {limit_name}={limit}], "
                             f"got values in [{lo}, {hi}]")
    return lengths.contiguous()


# ----------------------------------------------------------------- frontend


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


NO_WINDOW = (-1, -1)


def _variants_off(window_size, alibi_slopes, softcap, rel_bias) -> bool:
    """No variant asked for (what the compiled fast path serves)."""
    return (alibi_slopes is None and rel_bias is None and isinstance(softcap, (int, float))
            and softcap == 0 and window_size == NO_WINDOW)


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              attn_mask: Optional[Tensor] = None, q_lengths: Optional[Tensor] = None,
              kv_lengths: Optional[Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: str = "auto", deterministic: bool = False, window_size=NO_WINDOW,
              alibi_slopes: Optional[Tensor] = None, softcap: float = 0.0, rel_bias=None):
    """Softmax attention, memory linear in the sequence lengths.

    q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D) with Hq % Hkv == 0. Returns out
    (B, Hq, Lq, D), and lse (B, Hq, Lq) float32 natural log when
    return_lse. causal is bottom-right aligned (per batch row with
    lengths); attn_mask is bool (True = may attend) or an additive float
    bias broadcastable to (B, Hq, Lq, Lk); q_lengths/kv_lengths (B,) mark
    the valid prefix of each batch row. deterministic=True (or
    torch.use_deterministic_algorithms(True)) makes results bitwise
    reproducible across processes too (module docstring). window_size,
    alibi_slopes, softcap and rel_bias (a fastattn.RelativePositionBias):
    fastattn/ops/variants.py. See API.md for the full contract.
    """
    if not is_compiling() and _variants_off(window_size, alibi_slopes, softcap, rel_bias):
        out = _eager.fast.attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths,
                                    dropout_p, scale, return_lse, backend, deterministic, True)
        if out is not NotImplemented:  # the compiled fast path (_eager.py)
            return out
    return _frontend(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale,
                     return_lse, backend, deterministic, True, window_size, alibi_slopes,
                     softcap, rel_bias)


def attention_with_own_lengths(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                               attn_mask: Optional[Tensor] = None,
                               q_lengths: Optional[Tensor] = None,
                               kv_lengths: Optional[Tensor] = None, dropout_p: float = 0.0,
                               scale: Optional[float] = None, backend: str = "auto",
                               window_size=NO_WINDOW, alibi_slopes: Optional[Tensor] = None,
                               softcap: float = 0.0, rel_bias=None) -> Tensor:
    """attention() for fastattn's own modules and integrations, whose lengths
    they derive from a padding mask themselves (always in range): every
    check but reading the lengths' values, which on a GPU is a device sync
    in every layer. (The kernels clamp lengths whatever they hold.)"""
    if not is_compiling() and _variants_off(window_size, alibi_slopes, softcap, rel_bias):
        out = _eager.fast.attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths,
                                    dropout_p, scale, False, backend, False, False)
        if out is not NotImplemented:  # the compiled fast path (_eager.py)
            return out
    return _frontend(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale,
                     False, backend, False, False, window_size, alibi_slopes, softcap, rel_bias)


def _frontend(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p, scale, return_lse,
              backend, deterministic, check_length_values: bool, window_size=NO_WINDOW,
              alibi_slopes=None, softcap=0.0, rel_bias=None):
    """The checks of attention(), the backend choice, then the call."""
    _check_qkv(q, k, v)
    B, Hq, Lq, D = q.shape
    Lk = k.shape[2]
    causal = _checks.check_flag("causal", causal)
    return_lse = _checks.check_flag("return_lse", return_lse)
    mask4 = _check_mask(attn_mask, q, (B, Hq, Lq, Lk))
    q_lengths = _check_lengths("q_lengths", q_lengths, q, Lq, "Lq", check_length_values)
    kv_lengths = _check_lengths("kv_lengths", kv_lengths, q, Lk, "Lk", check_length_values)
    dropout_p = _checks.check_probability("dropout_p", dropout_p)
    scale = _checks.check_scale(scale, D)
    deterministic = deterministic_mode(deterministic)
    variants = check_variants(q, B, window_size, alibi_slopes, softcap, rel_bias)
    chosen = pick_backend(backend, q, variants, mask4 is not None)
    _log.debug_backend("attention", chosen)
    return _attention(q, k, v, causal, mask4, q_lengths, kv_lengths, dropout_p, scale,
                      return_lse, chosen, deterministic, variants)


def deterministic_mode(deterministic) -> bool:
    """The argument, or torch's global deterministic-algorithms switch."""
    _checks.check_flag("deterministic", deterministic)
    return deterministic or torch.are_deterministic_algorithms_enabled()


def _attention(q, k, v, causal, mask4, q_lengths, kv_lengths, dropout_p, scale, return_lse,
               chosen, deterministic=False, variants: Optional[Variants] = None):
    """attention() after its checks; mask4 is the mask's 4-D view."""
    if chosen == "reference":
        from .. import reference
        out, lse = reference._attention(q, k, v, causal, mask4, q_lengths, kv_lengths,
                                        dropout_p, scale, variants=variants or Variants())
        return (out, lse) if return_lse else out

    from .. import _rng
    seed = _rng.draw_seed(q.device) if dropout_p > 0 else None
    kv = (KernelVariants.of(variants, q.shape[2], k.shape[2], q.device)
          if variants is not None and variants.any else NO_KERNEL_VARIANTS)
    table = kv.rel_table
    args = (_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), mask4,
            q_lengths, kv_lengths, seed, causal, scale, dropout_p, chosen, deterministic,
            *kernel_args(kv))
    if not eager_ok(q, k, v, mask4, *(t for t in (kv.alibi_slopes, table) if t is not None)):
        out, lse = attention_fwd(*args)
    elif needs_grad(q, k, v, mask4, table):  # the op's autograd without its layer (_eager.py)
        out, lse = _AttentionFunction.apply(*args)
    else:  # inference: the backend itself
        out, lse = _run_fwd(chosen, *args[:10], deterministic, kv)
    if not return_lse:
        return out
    return out, lse.to(public_lse_dtype(q.dtype))
