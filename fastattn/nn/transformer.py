"""torch.nn.Transformer{Encoder,Decoder}Layer with fused add & norm.

A Transformer layer is a chain of residual branches (self-attention, cross-
attention, feed-forward), each ``x + dropout(branch(x))`` followed (post-norm)
or preceded (pre-norm) by a LayerNorm. These subclasses compute every
"dropout, add, norm" in one fastattn.add_layer_norm pass:

  post-norm:  x <- norm_i(x + dropout(f_i(x)))
  pre-norm:   h <- h + dropout(f_i(norm_i(h))); the add of branch i is fused
              with norm_{i+1}, which reads the new h (prenorm=True returns it).

They also never take torch's eval-mode encoder "fast path", which reads the
weights directly and would bypass the swapped attention modules. Same
constructor, parameters and state_dict as torch's layers.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _log
from . import unpad
from ..ops.norm import add_layer_norm
from ._convert import refuse_torchscript


def _extra_repr(layer) -> str:
    return (f"fastattn backend={layer.backend}, fused add & norm="
            f"{'on' if layer.fuse_add_norm else 'off'}")

Branch = Callable[[Tensor], Tensor]


def _dropout_p(layer: torch.nn.Module, dropout: torch.nn.Dropout) -> float:
    return dropout.p if layer.training else 0.0


def _add_norm(layer, branch_out: Tensor, residual: Tensor, norm: torch.nn.Module,
              dropout: torch.nn.Dropout, prenorm: bool):
    """norm(residual + dropout(branch_out)), and the sum when prenorm."""
    if layer.fuse_add_norm and isinstance(norm, torch.nn.LayerNorm) \
            and len(norm.normalized_shape) == 1:
        return add_layer_norm(branch_out, residual, norm.weight, norm.bias, norm.eps,
                              dropout_p=_dropout_p(layer, dropout), prenorm=prenorm,
                              backend=layer.backend)
    h = residual + dropout(branch_out)
    return (norm(h), h) if prenorm else norm(h)


def _residual_chain(layer, x: Tensor,
                    branches: list[tuple[Branch, torch.nn.Module, torch.nn.Dropout]]) -> Tensor:
    """Apply the residual branches [(f_i, norm_i, dropout_i)] of a layer."""
    if not layer.norm_first:
        for branch, norm, dropout in branches:
            x = _add_norm(layer, branch(x), x, norm, dropout, prenorm=False)
        return x
    h, y = x, branches[0][1](x)
    for i, (branch, _, dropout) in enumerate(branches):
        out = branch(y)
        if i + 1 == len(branches):
            return h + dropout(out)
        y, h = _add_norm(layer, out, h, branches[i + 1][1], dropout, prenorm=True)
    raise AssertionError("a layer has at least one branch")


def _feed_forward(layer) -> Branch:
    return lambda y: layer.linear2(layer.dropout(layer.activation(layer.linear1(y))))


class TransformerEncoderLayer(torch.nn.TransformerEncoderLayer):
    """``torch.nn.TransformerEncoderLayer`` with fused dropout-add-norm.

    With ``unpad_first`` (set by swap_modules(unpad=True) on the first layer
    of a TransformerEncoder) a padded batch with a key padding mask is packed
    to its valid tokens (fastattn/integrations/unpad.py): this and the
    following layers then run on those only, self-attention on packed
    sequences, and the encoder's forward scatters the result back.
    """

    backend = "auto"
    fuse_add_norm = True
    unpad_first = False
    __prepare_scriptable__ = refuse_torchscript
    extra_repr = _extra_repr

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        packing = unpad.packing_of(src)
        if packing is None and self.unpad_first:
            packing, src = self._pack(src, src_mask, src_key_padding_mask, is_causal)
        if packing is not None:
            return packing.mark(self._packed_forward(src, packing))
        if src.is_nested:
            # torch.nn.TransformerEncoder(enable_nested_tensor=True) packs its
            # input for its own fast path; only torch's layer takes that.
            _log.warn_once("encoder-nested", "fastattn.nn.TransformerEncoderLayer: torch "
                           "computes nested-tensor inputs (build the encoder with "
                           "enable_nested_tensor=False, as swap_modules does, to run fastattn)")
            return torch.nn.TransformerEncoderLayer.forward(self, src, src_mask,
                                                            src_key_padding_mask, is_causal)

        def self_attention(y):
            return self.self_attn(y, y, y, attn_mask=src_mask,
                                  key_padding_mask=src_key_padding_mask,
                                  need_weights=False, is_causal=is_causal)[0]

        return _residual_chain(self, src, [
            (self_attention, self.norm1, self.dropout1),
            (_feed_forward(self), self.norm2, self.dropout2),
        ])


    def _pack(self, src, src_mask, key_padding_mask, is_causal):
        """(packing, packed src), or (None, src) where this call must run padded."""
        if (src_mask is not None or key_padding_mask is None or is_causal or src.dim() != 3
                or src.is_nested or torch.compiler.is_compiling()
                or not self.self_attn.can_pack()):
            return None, src
        if key_padding_mask.dtype == torch.bool:
            valid = ~key_padding_mask
        else:  # torch's encoder turns it into an additive mask (-inf = padding)
            valid = key_padding_mask != float("-inf")
        if not unpad.has_padding(valid):
            return None, src
        return unpad.Packing.of(src, valid, seq_first=not self.self_attn.batch_first)

    def _packed_forward(self, src: Tensor, packing) -> Tensor:
        """The layer on packed tokens (1, T, E)."""
        def self_attention(y):
            return self.self_attn.packed_self_attention(y[0], packing.cu_seqlens,
                                                        packing.max_seqlen).unsqueeze(0)

        return _residual_chain(self, src, [
            (self_attention, self.norm1, self.dropout1),
            (_feed_forward(self), self.norm2, self.dropout2),
        ])


class TransformerDecoderLayer(torch.nn.TransformerDecoderLayer):
    """``torch.nn.TransformerDecoderLayer`` with fused dropout-add-norm."""

    backend = "auto"
    fuse_add_norm = True
    __prepare_scriptable__ = refuse_torchscript
    extra_repr = _extra_repr

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None,
                tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> Tensor:
        def self_attention(y):
            return self.self_attn(y, y, y, attn_mask=tgt_mask,
                                  key_padding_mask=tgt_key_padding_mask,
                                  need_weights=False, is_causal=tgt_is_causal)[0]

        def cross_attention(y):
            return self.multihead_attn(y, memory, memory, attn_mask=memory_mask,
                                       key_padding_mask=memory_key_padding_mask,
                                       need_weights=False, is_causal=memory_is_causal)[0]

        return _residual_chain(self, tgt, [
            (self_attention, self.norm1, self.dropout1),
            (cross_attention, self.norm2, self.dropout2),
            (_feed_forward(self), self.norm3, self.dropout3),
        ])
