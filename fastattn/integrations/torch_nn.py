"""swap_modules for torch.nn: MultiheadAttention, LayerNorm, RMSNorm and the
Transformer layers, converted in place (same parameter objects)."""

from __future__ import annotations

import torch

from ..nn.attention import MultiheadAttention
from ..nn.norm import LayerNorm, RMSNorm
from ..nn import unpad as unpad_module
from ..nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer

_LAYERS = {
    torch.nn.TransformerEncoderLayer: TransformerEncoderLayer,
    torch.nn.TransformerDecoderLayer: TransformerDecoderLayer,
}


def swap_torch_modules(model: torch.nn.Module, *, attention: bool, norm: bool,
                       backend: str, unpad: bool = False) -> dict[str, int]:
    """Convert torch.nn modules of ``model`` in place; returns how many of
    each class."""
    swapped: dict[str, int] = {}
    for module in model.modules():
        cls = type(module)
        if attention and cls is torch.nn.MultiheadAttention:
            MultiheadAttention.from_torch(module, backend)
        elif norm and cls is torch.nn.LayerNorm:
            LayerNorm.from_torch(module, backend)
        elif norm and cls is torch.nn.RMSNorm:
            RMSNorm.from_torch(module, backend)
        elif cls in _LAYERS:
            # The fastattn layers skip torch's eval fast path (which bypasses
            # the attention modules) and fuse dropout-add-norm when `norm`.
            module.__class__ = _LAYERS[cls]
            module.backend, module.fuse_add_norm = backend, norm
        elif cls is torch.nn.TransformerEncoder:
            # Nested-tensor inputs would also bypass the swapped modules.
            module.use_nested_tensor = False
            continue
        else:
            continue
        swapped[cls.__name__] = swapped.get(cls.__name__, 0) + 1
    if unpad:
        for module in model.modules():
            if type(module) is torch.nn.TransformerEncoder and len(module.layers) \
                    and isinstance(module.layers[0], TransformerEncoderLayer):
                # the first layer packs a padded batch, the encoder unpacks
                module.layers[0].unpad_first = True
                if module.norm is not None:  # applied to the packed output
                    unpad_module.carry_packing(module.norm)
                unpad_module.unpack_at_exit(module)
                swapped["TransformerEncoder (unpadded)"] = \
                    swapped.get("TransformerEncoder (unpadded)", 0) + 1
    return swapped
