"""swap_modules for Hugging Face transformers models.

Supported: transformers 5.x (tested with 5.17). Since 5.0 the models fastattn
covers (BERT, RoBERTa, DistilBERT, bert2bert EncoderDecoderModel, BART,
Marian, T5, GPT-2) call attention through ``AttentionInterface``, chosen by
``config._attn_implementation``, and build their masks through
``AttentionMaskInterface`` under the same name. fastattn therefore registers
one name, "fastattn", in both interfaces and selects it on the model; no
model code is patched. Models whose attention modules do not use the
interface keep their own attention (a warning says so); their norms are
still swapped.

The attention function follows the calling convention of transformers'
``sdpa_attention_forward`` (integrations/sdpa_attention.py):

    module     the model's attention module (reads .is_causal,
               ._fastattn_backend set by swap_hf_model)
    query      (B, Hq, Lq, D);  key, value: (B, Hkv, Lk, D)
    attention_mask
               the output of the mask function below: a bool 4-D mask
               (True = may attend) broadcastable to (B, 1, Lq, Lk), a float
               additive mask passed by the user, or None when the mask was
               skipped (no padding: full attention, or plain causal that
               ``is_causal`` describes)
    dropout    attention-probability dropout (0 in eval mode)
    scaling    softmax scale (None: 1/sqrt(D); T5 uses 1)
    is_causal  overrides module.is_causal when given
    position_bias
               T5's learned relative bias (1 or B, H, Lq, Lk), added to the
               scores; it becomes fastattn's float attn_mask, whose gradient
               fastattn computes, so relative_attention_bias trains
    returns    (output (B, Lq, Hq, D) contiguous, None): no attention weights

The mask function is transformers' own ``sdpa_mask``: it builds exactly the
boolean masks sdpa gets and returns None in the same cases, which the
attention function maps to fastattn's fast paths. Without that registration
``create_causal_mask`` would return None for an unknown name and padding
would silently be ignored.
"""

from __future__ import annotations

import sys
import warnings
from typing import Optional

import torch
from torch import Tensor

from ..nn.attention import _trailing_valid_lengths

NAME = "fastattn"
MIN_TRANSFORMERS_MAJOR = 5

# Norm classes whose forward is T5's RMS norm (no mean, no bias, fp32
# statistics, result cast to the weight dtype for half weights). These are
# the T5 family's copies of one implementation; other "RMSNorm" classes cast
# differently (Llama) or scale by 1 + weight (Gemma), so they are not listed.
T5_STYLE_NORMS = ("T5LayerNorm", "MT5LayerNorm", "UMT5LayerNorm", "LongT5LayerNorm")

_registered = False


def is_hf_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel``. A model can
    only be one once transformers is imported, so this never imports it
    (which takes seconds) and is False when it is not installed."""
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    return isinstance(model, transformers.PreTrainedModel)


# ----------------------------------------------------------------- attention


def _allowed_keys_bound(mask: Tensor, batch: int) -> Tensor:
    """kv_lengths for a bool mask (True = may attend): per batch row, 1 + the
    last key any query of any head may attend. Keys beyond it are masked for
    every query, so fastattn may skip their tiles (right padding) while the
    mask still handles everything before that point (left padding, causal).
    Computed on the device, no host sync."""
    any_query = mask.any(dim=-2)                     # (b, h, Lk)
    any_head = any_query.any(dim=1)                  # (b, Lk)
    return _trailing_valid_lengths(~any_head.expand(batch, -1))


def fastattn_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor,
                               value: Tensor, attention_mask: Optional[Tensor],
                               dropout: float = 0.0, scaling: Optional[float] = None,
                               is_causal: Optional[bool] = None,
                               position_bias: Optional[Tensor] = None,
                               **kwargs) -> tuple[Tensor, None]:
    """The "fastattn" entry of transformers' AttentionInterface (see the
    module docstring for the convention)."""
    from .. import attention

    if kwargs.get("output_attentions", False):
        warnings.warn("fastattn does not return attention weights (output_attentions=True); "
                      "use attn_implementation='eager' for them", stacklevel=2)
    for name in ("s_aux", "softcap"):
        if kwargs.get(name) is not None:
            raise ValueError(f"fastattn's attention does not support {name!r}; "
                             "use attn_implementation='sdpa' or 'eager' for this model")
    backend = getattr(module, "_fastattn_backend", "auto")
    lq, lk = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)

    causal = False
    mask: Optional[Tensor] = None
    kv_lengths: Optional[Tensor] = None
    if attention_mask is None:
        # The mask function skipped the mask. is_causal then means a plain
        # causal mask aligned to the top left (transformers' and sdpa's
        # convention): query i may attend key j iff j <= i. A single query
        # (decoding with a KV cache) attends every key.
        if is_causal and lq > 1:
            if lk > lq:
                # Keys past Lq are never attended (a prefill into a static
                # cache): drop them, and the remaining square causal mask is
                # fastattn's bottom-right one.
                key, value = key[:, :, :lq], value[:, :, :lq]
                if position_bias is not None:
                    position_bias = position_bias[..., :lq]
                causal = True
            elif lk == lq:
                causal = True
            else:
                mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()
    elif attention_mask.dtype == torch.bool:
        mask = attention_mask
        kv_lengths = _allowed_keys_bound(mask, query.shape[0])
    else:
        mask = attention_mask.to(query.dtype)

    if position_bias is not None:
        bias = position_bias.to(query.dtype)
        if mask is None:
            mask = bias
        elif mask.dtype == torch.bool:
            # One additive mask: the bias where attending is allowed, -inf
            # elsewhere. The gradient flows to the bias through torch.where.
            mask = torch.where(mask, bias, float("-inf"))
        else:
            mask = mask + bias

    out = attention(query, key, value, causal=causal, attn_mask=mask, kv_lengths=kv_lengths,
                    dropout_p=float(dropout), scale=scaling, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "fastattn" with transformers' attention and mask interfaces
    (idempotent)."""
    global _registered
    if _registered:
        return
    import transformers
    major = int(transformers.__version__.split(".")[0])
    if major < MIN_TRANSFORMERS_MAJOR:
        raise ImportError(f"fastattn's Hugging Face integration needs transformers >= "
                          f"{MIN_TRANSFORMERS_MAJOR}.0 (the attention and mask interfaces "
                          f"that all covered models use); found {transformers.__version__}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, fastattn_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


# ---------------------------------------------------------------------- norms


def _t5_norm_forward(self, hidden_states: Tensor) -> Tensor:
    """T5LayerNorm.forward on fastattn.rms_norm, with T5's dtypes: statistics
    in fp32, the normalized input kept in fp32 (or fp64) unless the weight is
    half precision, then cast to the weight dtype; the product with the
    weight in the promoted dtype."""
    from .. import rms_norm

    weight = self.weight
    normalized_dtype = torch.promote_types(hidden_states.dtype, torch.float32)
    if weight.dtype in (torch.float16, torch.bfloat16):
        normalized_dtype = weight.dtype
    out_dtype = torch.promote_types(weight.dtype, normalized_dtype)
    # One kernel in the widest dtype involved; casts are no-ops in the usual
    # case where input and weight share a dtype.
    compute = torch.promote_types(hidden_states.dtype, weight.dtype)
    y = rms_norm(hidden_states.to(compute), (hidden_states.shape[-1],), weight.to(compute),
                 self.variance_epsilon, backend=self._fastattn_backend)
    return y.to(out_dtype)


_norm_classes: dict[type, type] = {}


def _fastattn_norm_class(cls: type) -> type:
    """A subclass of ``cls`` (so isinstance checks, e.g. in _init_weights,
    still hold) whose forward runs fastattn.rms_norm. Kept in this module's
    namespace under its own name so pickling finds it."""
    if cls not in _norm_classes:
        name = f"Fastattn{cls.__name__}"
        new = type(name, (cls,), {"forward": _t5_norm_forward, "__module__": __name__,
                                  "__doc__": f"{cls.__name__} running fastattn.rms_norm."})
        globals()[name] = new
        _norm_classes[cls] = new
    return _norm_classes[cls]


def _swap_norms(model: torch.nn.Module, backend: str) -> int:
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in T5_STYLE_NORMS and hasattr(module, "variance_epsilon") \
                and isinstance(getattr(module, "weight", None), torch.Tensor):
            module.__class__ = _fastattn_norm_class(cls)
            module._fastattn_backend = backend
            swapped += 1
        elif cls in _norm_classes.values():
            module._fastattn_backend = backend
    return swapped


# ----------------------------------------------------------------- selection


def _set_implementation(model: torch.nn.Module, backend: str) -> None:
    """Select "fastattn" on the model, its sub-models and every sub-config
    (an EncoderDecoderModel holds its encoder's and decoder's configs apart)."""
    from transformers import PreTrainedConfig, PreTrainedModel

    register()
    unsupported = sorted({type(m).__name__ for m in model.modules()
                          if isinstance(m, PreTrainedModel) and not m._can_set_attn_implementation()})
    if unsupported:
        warnings.warn(f"{', '.join(unsupported)} do not call transformers' AttentionInterface; "
                      "their attention is left as is (norms are still swapped)", stacklevel=3)
        return
    model.set_attn_implementation(NAME)

    def select(config) -> None:
        if not isinstance(config, PreTrainedConfig):
            return
        config._attn_implementation_internal = NAME
        for key in getattr(config, "sub_configs", {}):
            select(getattr(config, key, None))

    for module in model.modules():
        config = getattr(module, "config", None)
        select(config)
        if config is not None:
            # Read by the attention function: which fastattn backend runs.
            module._fastattn_backend = backend


def swap_hf_model(model: torch.nn.Module, *, attention: bool, norm: bool, backend: str) -> None:
    """Make a transformers model run fastattn, in place, keeping every weight.

    attention: select the "fastattn" attention implementation (model, its
    sub-models and sub-configs). norm: turn T5-style RMS norms into fastattn
    ones here; nn.LayerNorm modules are converted by the torch.nn swap that
    swap_modules runs next.
    """
    if attention:
        _set_implementation(model, backend)
    if norm:
        _swap_norms(model, backend)
