"""swap_modules: make an existing model run fastattn, keeping every weight."""

from __future__ import annotations

import torch

from .. import _backends, _checks
from .torch_nn import swap_torch_modules


def swap_modules(model: torch.nn.Module, *, attention: bool = True, norm: bool = True,
                 backend: str = "auto") -> torch.nn.Module:
    """Replace, in place, the attention and norm modules of ``model`` by
    fastattn's, so that outputs and gradients match the original model.

    Covers torch.nn.Transformer and its encoder/decoder (layers), any
    torch.nn.MultiheadAttention / LayerNorm / RMSNorm, and Hugging Face
    transformers models (BERT, RoBERTa, DistilBERT, bert2bert
    EncoderDecoderModel, BART, Marian, T5, GPT-2) when transformers is
    installed. Returns ``model``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _checks.check_flag("attention", attention)
    _checks.check_flag("norm", norm)
    _backends.check_name(backend)
    from . import hf
    if hf.is_hf_model(model):
        hf.swap_hf_model(model, attention=attention, norm=norm, backend=backend)
    swap_torch_modules(model, attention=attention, norm=norm, backend=backend)
    return model
