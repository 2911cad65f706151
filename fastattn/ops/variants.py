"""Attention variants: sliding windows, ALiBi, softcapping, T5's relative bias.

Arguments of attention() / attention_varlen() beyond the masks (API.md,
"Attention variants"). With off = Lk - Lq (per batch row kv_len[b] - q_len[b]
when lengths are given, per sequence for packed sequences), for query i and
key j, in this order:

    s = scale * q_i . k_j
    softcap > 0:        s = softcap * tanh(s / softcap)
    additive terms:     + float attn_mask                   (the mask)
                        - slope_h * |i + off - j|           (alibi_slopes)
                        + table[bucket(j - (i + Lk - Lq)), h]   (rel_bias)
    restrictions:       bool mask, causal (j <= i + off), lengths, and the
                        window i + off - left <= j <= i + off + right

T5's buckets depend on the relative position r = j - (i + Lk - Lq) only
(the padded shapes' positions; per sequence for packed ones). They are
computed once per call with transformers' own formula (`t5_bucket`, in
float32 as T5 computes them) into a table over r in [-R, R], R = Lq + Lk,
which the kernels index: `bucket_index`. The table's gradient is the
kernels' score gradient summed per relative position (`rel_bias_grad`),
reduced per bucket by a fixed matrix product, never an (., H, Lq, Lk)
tensor, and deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import _checks


class RelativePositionBias:
    """T5's bucketed relative-position bias, computed inside the kernels.

    table: (num_buckets, Hq) float, e.g. T5Attention.relative_attention_bias
    .weight; it receives its gradient. bidirectional (an encoder) and
    max_distance as in transformers' T5Attention._relative_position_bucket.
    """

    def __init__(self, table: Tensor, *, bidirectional: bool = True, max_distance: int = 128):
        if not isinstance(table, Tensor):
            raise TypeError(f"table must be a torch.Tensor of shape (num_buckets, Hq), got "
                            f"{type(table).__name__}")
        if not table.is_floating_point():
            raise TypeError(f"table must be floating point, got {table.dtype}")
        if table.dim() != 2 or table.shape[0] < 1:
            raise ValueError(f"table must have shape (num_buckets, Hq), got {tuple(table.shape)}")
        _checks.check_flag("bidirectional", bidirectional)
        if isinstance(max_distance, bool) or not isinstance(max_distance, int):
            raise TypeError(f"max_distance must be an int, got {type(max_distance).__name__}")
        if max_distance < 1:
            raise ValueError(f"max_distance must be >= 1, got {max_distance}")
        # T5's formula divides by log(max_distance / max_exact): both must be sound
        max_exact = (table.shape[0] // 2 if bidirectional else table.shape[0]) // 2
        if max_exact < 1:
            raise ValueError(f"rel_bias table needs at least {4 if bidirectional else 2} "
                             f"buckets (num_buckets = table.shape[0]), got {table.shape[0]}")
        if max_distance <= max_exact:
            raise ValueError(f"max_distance must exceed the exact buckets ({max_exact}), "
                             f"got {max_distance}")
        self.table = table
        self.bidirectional = bidirectional
        self.max_distance = max_distance

    @property
    def num_buckets(self) -> int:
        return self.table.shape[0]

    def __repr__(self) -> str:
        return (f"RelativePositionBias(table {tuple(self.table.shape)}, "
                f"bidirectional={self.bidirectional}, max_distance={self.max_distance})")


def t5_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int,
              max_distance: int) -> Tensor:
    """transformers' T5Attention._relative_position_bucket, the same
    operations in the same dtypes (so the same buckets at every boundary)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    if_large = max_exact + (torch.log(relative_position.float() / max_exact)
                            / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact)).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, if_large)


def bucket_radius(lq: int, lk: int) -> int:
    """R: the bucket table covers relative positions r in [-R, R]."""
    return lq + lk


def bucket_index(rel: RelativePositionBias, lq: int, lk: int, device) -> Tensor:
    """int32 (2R + 1,): entry r + R is the bucket of relative position r."""
    radius = bucket_radius(lq, lk)
    r = torch.arange(-radius, radius + 1, dtype=torch.long, device=device)
    return t5_bucket(r, rel.bidirectional, rel.num_buckets, rel.max_distance).to(torch.int32)


def rel_bias_grad(grad_by_position: Tensor, buckets: Tensor, num_buckets: int) -> Tensor:
    """(num_buckets, Hq) table gradient from (Hq, 2R + 1) score-gradient sums
    per relative position: each bucket sums its positions, as one product
    with a 0/1 (num_buckets, 2R + 1) matrix (fixed order: deterministic)."""
    onehot = torch.nn.functional.one_hot(buckets.long(), num_buckets).to(grad_by_position.dtype)
    return (grad_by_position @ onehot).t()


@dataclass(frozen=True)
class Variants:
    """The variant arguments of one call, checked and normalized."""
    window: tuple[int, int] = (-1, -1)
    alibi_slopes: Optional[Tensor] = None      # (B or 1, Hq) float32
    softcap: float = 0.0
    rel_bias: Optional[RelativePositionBias] = None

    @property
    def any(self) -> bool:
        return (self.window != (-1, -1) or self.alibi_slopes is not None or self.softcap > 0
                or self.rel_bias is not None)

    def names(self) -> list[str]:
        return [name for name, on in (("window_size", self.window != (-1, -1)),
                                      ("alibi_slopes", self.alibi_slopes is not None),
                                      ("softcap", self.softcap > 0),
                                      ("rel_bias", self.rel_bias is not None)) if on]


NONE = Variants()


def check_variants(q: Tensor, batch: int, window_size, alibi_slopes, softcap,
                   rel_bias) -> Variants:
    """The variant arguments as a Variants, or a TypeError/ValueError naming
    the argument. q: (B, Hq, ...) or packed (total, Hq, D); batch: B (the
    number of sequences when packed)."""
    hq = q.shape[1]
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2 or any(
            isinstance(w, bool) or not isinstance(w, int) for w in window_size):
        raise TypeError(f"window_size must be a pair of ints (left, right), -1 for unbounded, "
                        f"got {window_size!r}")
    window = (int(window_size[0]), int(window_size[1]))
    if min(window) < -1:
        raise ValueError(f"window_size must hold ints >= -1 (-1 = unbounded), got {window}")
    slopes = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor):
            raise TypeError(f"alibi_slopes must be a float32 tensor of shape (Hq,) or (B, Hq), "
                            f"got {type(alibi_slopes).__name__}")
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(f"alibi_slopes must have dtype float32, got {alibi_slopes.dtype}")
        if alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes must be on the device of q ({q.device}), got "
                             f"{alibi_slopes.device}")
        if tuple(alibi_slopes.shape) not in ((hq,), (batch, hq)):
            raise ValueError(f"alibi_slopes must have shape (Hq,) = ({hq},) or (B, Hq) = "
                             f"({batch}, {hq}), got {tuple(alibi_slopes.shape)}")
        slopes = alibi_slopes.reshape(-1, hq).contiguous()
    if not _checks.is_real(softcap):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    traced = _checks.is_symbolic(softcap) or torch.compiler.is_compiling()  # value at run time
    if not traced and not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be finite and >= 0 (0 = off), got {softcap}")
    if rel_bias is not None:
        if not isinstance(rel_bias, RelativePositionBias):
            raise TypeError(f"rel_bias must be a fastattn.RelativePositionBias, got "
                            f"{type(rel_bias).__name__}")
        table = rel_bias.table
        if table.shape[1] != hq:
            raise ValueError(f"rel_bias table must have shape (num_buckets, Hq) = (., {hq}), got "
                             f"{tuple(table.shape)}")
        if table.device != q.device:
            raise ValueError(f"rel_bias table must be on the device of q ({q.device}), got "
                             f"{table.device}")
    return Variants(window, slopes, softcap if traced else float(softcap), rel_bias)


@dataclass(frozen=True)
class KernelVariants:
    """What a backend's kernels receive for the variants of one call.

    window_left/right: -1 = unbounded. alibi_slopes: (B or 1, Hq) float32
    contiguous, or None. softcap: 0 = off. rel_table: (num_buckets, Hq) in
    its own float dtype, or None; rel_buckets: int32 (2R + 1,), the bucket of
    relative position r at index r + R (R = rel_radius); the relative
    position of (i, j) is r = j - i - (Lk - Lq) for padded batches, and
    j - i - (kv_len_b - q_len_b) per sequence for packed ones. The backward
    returns, when the table requires grad, the score gradient summed per
    relative position: (Hq, 2R + 1) float32 (rel_bias_grad turns it into the
    table's gradient)."""
    window_left: int = -1
    window_right: int = -1
    alibi_slopes: Optional[Tensor] = None
    softcap: float = 0.0
    rel_table: Optional[Tensor] = None
    rel_buckets: Optional[Tensor] = None
    rel_radius: int = 0

    @staticmethod
    def of(variants: Variants, lq: int, lk: int, device) -> "KernelVariants":
        rel = variants.rel_bias
        buckets = bucket_index(rel, lq, lk, device) if rel is not None else None
        return KernelVariants(variants.window[0], variants.window[1], variants.alibi_slopes,
                              variants.softcap, rel.table if rel is not None else None,
                              buckets, bucket_radius(lq, lk) if rel is not None else 0)

    @property
    def any(self) -> bool:
        return (self.window_left >= 0 or self.window_right >= 0
                or self.alibi_slopes is not None or self.softcap > 0
                or self.rel_table is not None)


NO_KERNEL_VARIANTS = KernelVariants()
