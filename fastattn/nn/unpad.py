"""swap_modules(model, unpad=True): encoder stacks that compute valid tokens only.

A padded batch (B, L, E) spends most of an encoder layer's time in its linear
layers and norms, on every token, padding included. Here the padding is
removed once, at the stack's first layer: its valid tokens are packed into
one sequence (1, T, E) (T = number of valid tokens), every layer runs on
that (linear layers and norms on T rows instead of B * L), attention runs on
the packed sequences (fastattn.attention_varlen, each sequence attending
only its own tokens), and the last layer scatters its output back to
(B, L, E), zeros at padded positions. Outputs at valid positions and every
gradient are the unpadded model's, because a padded key is never attended
and a padded query's output is discarded; any padding pattern (right, left,
gaps) packs the same way, since attention here is bidirectional.

Mechanics: each layer of the stack gets a wrapper around its forward. The
packed hidden states carry their packing (`Packing`, as an attribute of the
tensor) from layer to layer; a layer that receives one runs it with the
varlen attention arguments (transformers' flash-attention kwargs
cu_seq_lens_q/k and max_length_q/k, which fastattn's attention function
takes, and which the models pass through to it) and no mask. Deciding and
packing costs two reads of values on the host per stack forward (whether
the mask is a padding mask, and the valid token count), as unpadding does
in flash-attention.

The stack runs padded, as before, wherever packing would not be exact or
possible: no mask (nothing to remove), a mask that is not a padding mask
(rows differ: causal, or custom), cross-attention or a KV cache, while
transformers records per-layer outputs (output_hidden_states or
output_attentions) or under torch.compile.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..ops.padding import pad_input, unpad_input

ATTR = "_fastattn_packing"


@dataclass(frozen=True)
class Packing:
    """Where the valid tokens of a (B, L) batch went in the packed sequence."""
    indices: Tensor          # (T,) int64: flat positions b * L + i of the valid tokens
    cu_seqlens: Tensor       # (B + 1,) int32 prefix sums of the valid counts
    max_seqlen: int          # the longest sequence's valid count
    batch: int
    seqlen: int
    seq_first: bool = False  # the padded layout is (L, B, ...) (torch's batch_first=False)

    @staticmethod
    def of(hidden: Tensor, valid: Tensor, seq_first: bool = False) -> tuple["Packing", Tensor]:
        """The packing of a (B, L) bool mask of the valid tokens, and the
        (B, L, ...) (or (L, B, ...)) hidden states packed to (1, T, ...) and
        marked with it."""
        if seq_first:
            hidden = hidden.transpose(0, 1)
        packed, indices, cu, max_seqlen, _ = unpad_input(hidden, valid)  # one host read
        packing = Packing(indices, cu, max_seqlen, valid.shape[0], valid.shape[1], seq_first)
        return packing, packing.mark(packed.unsqueeze(0))

    def unpack(self, packed: Tensor) -> Tensor:
        """(1, T, ...) -> (B, L, ...) (or (L, B, ...)), zeros at padded positions."""
        padded = pad_input(packed[0], self.indices, self.batch, self.seqlen)
        return padded.transpose(0, 1) if self.seq_first else padded

    def mark(self, packed: Tensor) -> Tensor:
        setattr(packed, ATTR, self)
        return packed

    def attention_kwargs(self) -> dict:
        """What the layers pass on to the attention function (the names of
        transformers' flash-attention kwargs)."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                "max_length_q": self.max_seqlen, "max_length_k": self.max_seqlen}


def packing_of(hidden: Tensor) -> Optional[Packing]:
    return getattr(hidden, ATTR, None)


def _recording_layer_outputs() -> bool:
    """transformers collects per-layer outputs (hidden states, attentions)
    through hooks while its collector is set: they must stay padded."""
    capturing = sys.modules.get("transformers.utils.output_capturing")
    collector = getattr(capturing, "_active_collector", None)
    if collector is None:
        return False
    collected = collector.get()
    return bool(collected)


def has_padding(valid: Tensor) -> bool:
    """Whether a (B, L) valid-token mask leaves out any token (one host read)."""
    return not bool(valid.all())


def padding_of_mask(mask: Optional[Tensor]) -> Optional[Tensor]:
    """The (B, L) valid-token mask of a 4-D bool attention mask (B, 1, L, L)
    that is a padding mask (every query row the same, some key masked), or
    None when packing would not be exact or gains nothing."""
    if mask is None or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 \
            or mask.shape[-1] != mask.shape[-2]:
        return None
    valid = mask[:, 0, 0, :]
    uniform = (mask == valid[:, None, None, :]).all()
    padded = ~valid.all()
    ok, has_padding = (bool(x) for x in torch.stack([uniform, padded]).tolist())  # one read
    return valid if ok and has_padding else None


def _self_attention_only(args: tuple, kwargs: dict) -> bool:
    """A layer call that may run packed: no cross-attention inputs, no KV
    cache (every argument after the mask is None)."""
    return (all(a is None for a in args[2:])
            and kwargs.get("encoder_hidden_states") is None
            and kwargs.get("past_key_values") is None)


def unpack_at_exit(stack: torch.nn.Module) -> None:
    """Make `stack`'s forward scatter a packed output back to the padded
    layout (its layers pack and run packed themselves)."""
    if not getattr(stack, "_fastattn_unpad", False):
        stack.forward = functools.partial(_stack_forward, stack.forward)
        stack._fastattn_unpad = True


def carry_packing(module: torch.nn.Module) -> None:
    """Make `module`'s output keep its input's packing: a module a stack
    applies to the packed hidden states after its layers (nn.TransformerEncoder's
    final norm), so that the stack's exit still finds what to unpack."""
    if not getattr(module, "_fastattn_carries_packing", False):
        module.forward = functools.partial(_carrying_forward, module.forward)
        module._fastattn_carries_packing = True


def _carrying_forward(forward, hidden, *args, **kwargs):
    out = forward(hidden, *args, **kwargs)
    packing = packing_of(hidden) if isinstance(hidden, Tensor) else None
    return packing.mark(out) if packing is not None else out


def wrap_stack(stack: torch.nn.Module, layers, mask_arg: str = "attention_mask",
               mask_pos: int = 1) -> int:
    """Unpad the encoder stack `stack`, whose forward runs the modules
    `layers` in order, each taking the hidden states first and the 4-D mask
    as `mask_arg` (or at position `mask_pos`). Its first layer packs, every
    layer runs packed, the stack's forward unpacks its output (so a layer
    skipped by LayerDrop, even the last, changes nothing). Returns how many
    layers were wrapped (0 if the stack already was)."""
    if getattr(stack, "_fastattn_unpad", False):
        return 0
    layers = list(layers)
    for index, layer in enumerate(layers):
        layer.forward = functools.partial(_layer_forward, layer.forward, index == 0, mask_arg,
                                          mask_pos)
    unpack_at_exit(stack)
    return len(layers)


def _split_mask(args: tuple, kwargs: dict, mask_arg: str, mask_pos: int):
    """(mask, a function putting a new mask in place of it)."""
    if mask_arg in kwargs:
        return kwargs[mask_arg], lambda m: (args, {**kwargs, mask_arg: m})
    if len(args) > mask_pos:
        def put(m):
            new = list(args)
            new[mask_pos] = m
            return tuple(new), kwargs
        return args[mask_pos], put
    return None, lambda m: (args, {**kwargs, mask_arg: m})


def _layer_forward(forward, first: bool, mask_arg: str, mask_pos: int, *args, **kwargs):
    hidden = args[0]
    packing = packing_of(hidden) if isinstance(hidden, Tensor) else None
    if packing is None:
        if not first or torch.compiler.is_compiling() or _recording_layer_outputs() \
                or not _self_attention_only(args, kwargs):
            return forward(*args, **kwargs)
        mask, _ = _split_mask(args, kwargs, mask_arg, mask_pos)
        valid = padding_of_mask(mask)
        if valid is None:
            return forward(*args, **kwargs)
        packing, packed = Packing.of(hidden, valid)
        args = (packed,) + args[1:]
    _, put = _split_mask(args, kwargs, mask_arg, mask_pos)
    args, kwargs = put(None)
    out = forward(*args, **kwargs, **packing.attention_kwargs())
    if isinstance(out, tuple):
        return (packing.mark(out[0]), *out[1:])
    return packing.mark(out)


def _stack_forward(forward, *args, **kwargs):
    """The stack's forward, its packed output scattered back to (B, L, E)."""
    out = forward(*args, **kwargs)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state \
        if hasattr(out, "last_hidden_state") else out
    packing = packing_of(hidden) if isinstance(hidden, Tensor) else None
    if packing is None:
        return out
    padded = packing.unpack(hidden)
    if isinstance(out, tuple):
        return (padded, *out[1:])
    if hasattr(out, "last_hidden_state"):
        out.last_hidden_state = padded
        return out
    return padded
