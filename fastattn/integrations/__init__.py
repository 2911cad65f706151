"""swap_modules: make an existing model run fastattn, keeping every weight."""

from __future__ import annotations

import torch

from .. import _backends, _checks, _log
from .torch_nn import swap_torch_modules


def swap_modules(model: torch.nn.Module, *, attention: bool = True, norm: bool = True,
                 backend: str = "auto", unpad: bool = False) -> torch.nn.Module:
    """Replace, in place, the attention and norm modules of ``model`` by
    fastattn's, so that outputs and gradients match the original model.

    Covers torch.nn.Transformer and its encoder/decoder (layers), any
    torch.nn.MultiheadAttention / LayerNorm / RMSNorm, and Hugging Face
    transformers models (BERT, RoBERTa, DistilBERT, bert2bert
    EncoderDecoderModel, BART, Marian, T5, GPT-2) when transformers is
    installed. Returns ``model``.

    unpad=True: encoder stacks with a padding mask run on valid tokens only
    (fastattn/nn/unpad.py): the padding is removed at the stack's first
    layer and put back (as zeros) at its exit; needs attention=True.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _checks.check_flag("attention", attention)
    _checks.check_flag("norm", norm)
    _checks.check_flag("unpad", unpad)
    _backends.check_name(backend)
    if unpad and not attention:
        raise ValueError("unpad=True needs attention=True: the packed sequences run through "
                         "fastattn's attention")
    from . import hf
    done: dict[str, int] = {}
    if hf.is_hf_model(model):
        done.update(hf.swap_hf_model(model, attention=attention, norm=norm, backend=backend,
                                     unpad=unpad))
    done.update(swap_torch_modules(model, attention=attention, norm=norm, backend=backend,
                                   unpad=unpad))
    done = {kind: n for kind, n in done.items() if n}
    if done:
        _log.info("fastattn.swap_modules(%s): %s", type(model).__name__,
                  ", ".join(f"{n} {kind}" for kind, n in done.items()))
    else:
        _log.warn_once(f"swap-nothing:{type(model).__name__}",
                       "fastattn.swap_modules(%s) replaced nothing: no torch.nn.Transformer "
                       "layer, MultiheadAttention, LayerNorm or RMSNorm, and no supported "
                       "Hugging Face model (attention=%s, norm=%s)", type(model).__name__,
                       attention, norm)
    return model
