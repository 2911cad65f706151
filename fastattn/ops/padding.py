"""Moving between a padded batch and packed sequences (attention_varlen).

A padded batch x (B, L, ...) with a bool mask (B, L), True = valid token,
packs into (total, ...) by keeping the valid tokens in row-major order;
sequence b then occupies [cu_seqlens[b], cu_seqlens[b + 1]). Both directions
are index operations, so gradients flow through them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def unpad_input(x: Tensor, mask: Tensor):
    """(packed, indices, cu_seqlens, max_seqlen, seqused) of a padded batch.

    x (B, L, ...); mask (B, L) bool, True = valid token (anywhere in the
    row, not only a prefix). packed (total, ...) holds the valid tokens;
    indices (total,) int64 their flat positions in (B * L); cu_seqlens
    (B + 1,) int32 prefix sums of the per-row counts seqused (B,) int32;
    max_seqlen a Python int (reading it synchronizes with the device).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor (True = valid token)")
    if x.dim() < 2 or mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must have shape (B, L) = x.shape[:2], got mask "
                         f"{tuple(mask.shape)} for x {tuple(x.shape)}")
    if mask.device != x.device:
        raise ValueError(f"mask must be on the device of x ({x.device}), got {mask.device}")
    seqused = mask.sum(dim=1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqused, 0, dtype=torch.int32), (1, 0))
    indices = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1)
    packed = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).index_select(0, indices)
    max_seqlen = int(seqused.max()) if seqused.numel() else 0
    return packed, indices, cu_seqlens, max_seqlen, seqused


def pad_input(packed: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    """Inverse of unpad_input: (batch, seqlen, ...) with the packed tokens
    at `indices` and zeros elsewhere."""
    if not isinstance(packed, Tensor):
        raise TypeError(f"packed must be a torch.Tensor, got {type(packed).__name__}")
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError("indices must be an int64 tensor (from unpad_input)")
    if indices.dim() != 1 or indices.numel() != packed.shape[0]:
        raise ValueError(f"indices must have shape (total,) = ({packed.shape[0]},), "
                         f"got {tuple(indices.shape)}")
    for name, value in (("batch", batch), ("seqlen", seqlen)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    out = packed.new_zeros((batch * seqlen, *packed.shape[1:]))
    out = out.index_put((indices,), packed)
    return out.view(batch, seqlen, *packed.shape[1:])
