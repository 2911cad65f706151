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
               T5's relative bias. From a model that swap_modules swapped, a
               T5Bias: the kernels compute the bias from the layer's
               relative_attention_bias table (no (., H, Lq, Lk) tensor; the
               table gets its gradient). Otherwise T5's materialized tensor
               (1 or B, H, Lq, Lk), added as fastattn's float attn_mask,
               whose gradient fastattn computes
    softcap, sliding_window
               Gemma-2's / Mistral's, Qwen2's kwargs: fastattn's softcap and
               window_size (_variants)
    returns    (output (B, Lq, Hq, D) contiguous, None): no attention weights

The mask function is transformers' own ``sdpa_mask``: it builds exactly the
boolean masks sdpa gets and returns None in the same cases, which the
attention function maps to fastattn's fast paths. Without that registration
``create_causal_mask`` would return None for an unknown name and padding
would silently be ignored.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

from .. import _log
from ..nn import unpad
from ..nn._convert import refuse_torchscript
from ..nn.attention import _trailing_valid_lengths
from . import hf_register

NAME = hf_register.NAME

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
    Computed on the device, no host sync; and once per mask: the model
    hands every layer the same mask tensor, so the lengths are kept on it
    (keyed by its version, in case it is modified in place)."""
    cache = not torch.compiler.is_compiling()
    if cache:
        kept = getattr(mask, "_fastattn_keys_bound", None)
        if kept is not None and kept[0] == (mask._version, batch):
            return kept[1]
    any_query = mask.any(dim=-2)                     # (b, h, Lk)
    any_head = any_query.any(dim=1)                  # (b, Lk)
    bound = _trailing_valid_lengths(~any_head.expand(batch, -1))
    if cache:
        mask._fastattn_keys_bound = ((mask._version, batch), bound)
    return bound


def fastattn_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor,
                               value: Tensor, attention_mask: Optional[Tensor],
                               dropout: float = 0.0, scaling: Optional[float] = None,
                               is_causal: Optional[bool] = None,
                               position_bias: Optional[Tensor] = None,
                               **kwargs) -> tuple[Tensor, None]:
    """The "fastattn" entry of transformers' AttentionInterface (see the
    module docstring for the convention)."""
    from ..ops.attention import attention_with_own_lengths

    if kwargs.get("output_attentions", False):
        _log.warn_once("hf-output-attentions", "fastattn does not return attention weights "
                       "(output_attentions=True), as sdpa does not; use "
                       "attn_implementation='eager' for them")
    if kwargs.get("s_aux") is not None:
        raise ValueError("fastattn's attention does not support attention sinks ('s_aux'); "
                         "use attn_implementation='sdpa' or 'eager' for this model")
    backend = getattr(module, "_fastattn_backend", "auto")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    variants = _variants(kwargs, is_causal)
    rel_bias = None
    if isinstance(position_bias, T5Bias):
        key, value, attention_mask, position_bias, rel_bias = _t5_relative_bias(
            position_bias, query, key, value, attention_mask)
    lq, lk = query.shape[2], key.shape[2]
    if kwargs.get("cu_seq_lens_q") is not None:
        return _packed_attention(query, key, value, kwargs, dropout, scaling, is_causal,
                                 position_bias, rel_bias, variants, backend)

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

    out = attention_with_own_lengths(query, key, value, causal=causal, attn_mask=mask,
                                     kv_lengths=kv_lengths, dropout_p=float(dropout),
                                     scale=scaling, backend=backend, rel_bias=rel_bias,
                                     **variants)
    return out.transpose(1, 2).contiguous(), None


def _variants(kwargs: dict, is_causal: bool) -> dict:
    """fastattn's variant arguments for the kwargs transformers passes:
    ``softcap`` (Gemma-2: the scaled scores become softcap * tanh(s /
    softcap) before the mask, as its eager code does) and ``sliding_window``
    (Mistral, Qwen2, Gemma-2: key j within sliding_window - 1 positions
    before query i). The window is also in the mask transformers builds, so
    here it only lets the kernels skip the tiles outside it; it is passed
    for causal layers only, whose alignment fastattn's bottom-right window
    matches (with the keys bound from a mask it can only be looser, never
    tighter, than the mask's)."""
    variants = {}
    softcap = kwargs.get("softcap")
    if softcap is not None:
        variants["softcap"] = float(softcap)
    window = kwargs.get("sliding_window")
    if window is not None and is_causal:
        variants["window_size"] = (int(window) - 1, -1)
    return variants


def _packed_attention(query: Tensor, key: Tensor, value: Tensor, kwargs: dict, dropout: float,
                      scaling: Optional[float], is_causal: bool,
                      position_bias: Optional[Tensor], rel_bias, variants: dict,
                      backend: str) -> tuple[Tensor, None]:
    """Packed sequences (1, H, T, D) delimited by cu_seq_lens_q/k: the
    flash-attention kwargs of transformers, passed by swap_modules(unpad=
    True)'s encoder layers (and by transformers' own padding-free batches).
    Each sequence attends its own tokens (causally, from its first token,
    when the module is causal)."""
    from ..ops.attention_varlen import attention_varlen_with_own_seqlens

    if position_bias is not None or query.shape[0] != 1:
        raise ValueError("fastattn: packed sequences (cu_seq_lens_q) take no position bias "
                         "and a batch of one")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))   # (T, H, D) views
    out = attention_varlen_with_own_seqlens(
        q, k, v, kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], int(kwargs["max_length_q"]),
        int(kwargs["max_length_k"]), causal=bool(is_causal) and q.shape[0] > 1,
        dropout_p=float(dropout), scale=scaling, backend=backend, rel_bias=rel_bias,
        **variants)
    return out.unsqueeze(0), None


def register() -> None:
    """Register "fastattn" with transformers' attention and mask interfaces
    now (idempotent); raises ImportError for transformers < 5."""
    import transformers
    if not hf_register._supported(transformers.__version__):
        raise ImportError(f"fastattn's Hugging Face integration needs transformers >= "
                          f"{hf_register.MIN_TRANSFORMERS_MAJOR}.0 (the attention and mask "
                          f"interfaces that all covered models use); found "
                          f"{transformers.__version__}")
    import transformers.masking_utils  # noqa: F401  (importing registers, hf_register)
    import transformers.modeling_utils  # noqa: F401
    hf_register.register_on_import()


# ---------------------------------------------------------------------- norms


# Norm classes whose forward is T5's RMS norm (no mean, no bias, fp32
# statistics, result cast to the weight dtype for half weights): the T5
# family's copies of one implementation (_T5_NORM_MODULES). Other "RMSNorm"
# classes cast differently (Llama) or scale by 1 + weight (Gemma).


def _t5_norm_forward(self, hidden_states: Tensor) -> Tensor:
    """T5LayerNorm.forward on fastattn.rms_norm, with T5's dtypes: statistics
    in fp32, the normalized input kept in fp32 (or fp64) unless the weight is
    half precision, then cast to the weight dtype; the product with the
    weight in the promoted dtype."""
    from .. import rms_norm

    if hidden_states.dtype == torch.float64:
        # T5 takes float32 statistics even of float64 inputs; fastattn's
        # would be float64, so such calls run T5's own code to stay equal.
        _log.warn_once("t5-norm-fp64", "fastattn: T5-style norms of float64 inputs run "
                       "transformers' own code (its statistics are float32)")
        return super(type(self), self).forward(hidden_states)
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


# Where transformers defines each T5-style norm class (to rebuild the
# fastattn subclass when a pickled model is loaded in a fresh process).
_T5_NORM_MODULES = {
    "T5LayerNorm": "transformers.models.t5.modeling_t5",
    "MT5LayerNorm": "transformers.models.mt5.modeling_mt5",
    "UMT5LayerNorm": "transformers.models.umt5.modeling_umt5",
    "LongT5LayerNorm": "transformers.models.longt5.modeling_longt5",
}
T5_STYLE_NORMS = tuple(_T5_NORM_MODULES)
_PREFIX = "Fastattn"


def _t5_norm_extra_repr(self) -> str:
    return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, " \
        f"fastattn backend={getattr(self, '_fastattn_backend', 'auto')}"


def _t5_norm_members(cls: type) -> dict:
    return {"forward": _t5_norm_forward, "extra_repr": _t5_norm_extra_repr,
            "__doc__": f"{cls.__name__} running fastattn.rms_norm."}


_subclasses: dict[type, type] = {}


def _fastattn_subclass(cls: type, members: dict) -> type:
    """A subclass of ``cls`` (so isinstance checks, e.g. in _init_weights,
    still hold) with ``members`` overridden, kept in this module's namespace
    as Fastattn<cls name> so that pickle finds it (and __getattr__ below
    makes it again in a fresh process)."""
    if cls not in _subclasses:
        name = _PREFIX + cls.__name__
        new = type(name, (cls,), {**members, "__module__": __name__, "__qualname__": name,
                                  "__prepare_scriptable__": refuse_torchscript})
        globals()[name] = new
        _subclasses[cls] = new
    return _subclasses[cls]


def __getattr__(name: str):
    """Fastattn<T5 norm or attention> classes on demand: how unpickling a
    swapped T5 model finds its classes in a process that has not swapped one."""
    base = name[len(_PREFIX):] if name.startswith(_PREFIX) else None
    for modules, members in ((_T5_NORM_MODULES, _t5_norm_members),
                             (_T5_ATTENTION_MODULES, _t5_attention_members)):
        if base in modules:
            import importlib
            cls = getattr(importlib.import_module(modules[base]), base)
            return _fastattn_subclass(cls, members(cls))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _swap_norms(model: torch.nn.Module, backend: str) -> int:
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in T5_STYLE_NORMS and hasattr(module, "variance_epsilon") \
                and isinstance(getattr(module, "weight", None), torch.Tensor):
            module.__class__ = _fastattn_subclass(cls, _t5_norm_members(cls))
            module._fastattn_backend = backend
            swapped += 1
        elif cls in _subclasses.values():
            module._fastattn_backend = backend
    return swapped


# ------------------------------------------------- T5's relative bias in the kernels

# T5's attention layers, as transformers defines them (MT5's is a copy).
# UMT5 and LongT5 do not call the AttentionInterface: they keep theirs.
_T5_ATTENTION_MODULES = {
    "T5Attention": "transformers.models.t5.modeling_t5",
    "MT5Attention": "transformers.models.mt5.modeling_mt5",
}


class T5Bias:
    """What a swapped T5 attention layer hands on as ``position_bias``
    instead of T5's materialized (1, H, Lq, Lk) tensor: the layer whose
    ``relative_attention_bias`` table fastattn's kernels read (None for the
    layers T5 gives zeros: cross-attention), and the cache length the
    queries start at. T5's stack passes its first layer's position_bias to
    every later layer unchanged; fastattn_attention_forward turns it into
    ``fastattn.RelativePositionBias`` (the table receives its gradient)."""

    __slots__ = ("module", "past")

    def __init__(self, module: Optional[torch.nn.Module], past):
        self.module = module
        self.past = past

    def __repr__(self) -> str:
        return f"T5Bias({'table' if self.module is not None else 'none'}, past={self.past})"


def _on_fastattn(module: torch.nn.Module) -> bool:
    return getattr(module.config, "_attn_implementation", None) == NAME


def _t5_attention_members(cls: type) -> dict:
    def compute_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
        if not _on_fastattn(self):  # the model went back to eager/sdpa after the swap
            return cls.compute_bias(self, query_length, key_length, device, past_seen_tokens)
        return T5Bias(self, past_seen_tokens)

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None,
                past_key_values=None, **kwargs):
        if position_bias is None and not self.has_relative_attention_bias \
                and _on_fastattn(self):
            position_bias = T5Bias(None, 0)  # T5 would add a zero (1, H, Lq, Lk) tensor
        return cls.forward(self, hidden_states, mask, key_value_states, position_bias,
                           past_key_values, **kwargs)

    return {"compute_bias": compute_bias, "forward": forward,
            "__doc__": f"{cls.__name__} whose relative bias fastattn's kernels compute."}


def _swap_t5_attention(model: torch.nn.Module) -> int:
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in _T5_ATTENTION_MODULES \
                and cls.__module__ == _T5_ATTENTION_MODULES[cls.__name__]:
            module.__class__ = _fastattn_subclass(cls, _t5_attention_members(cls))
            swapped += 1
    return swapped


def _t5_relative_bias(bias: T5Bias, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Optional[Tensor]):
    """(key, value, attention_mask, position_bias tensor or None,
    RelativePositionBias or None) for a T5Bias. The kernels place query i at
    relative position j - (i + Lk - Lq) from key j; T5 places it at
    j - (i + past). They agree when the keys end at past + Lq, as in every
    call without a static cache; a static cache's keys beyond past + Lq are
    never attended (causal) and are cut off. A cache length held as a tensor
    (read on the host only at a sync) gets T5's own materialized bias."""
    from ..ops.variants import RelativePositionBias

    module = bias.module
    if module is None:
        return key, value, attention_mask, None, None
    lq, lk = query.shape[2], key.shape[2]
    past = bias.past
    if isinstance(past, Tensor):
        _log.warn_once("t5-bias-tensor-past", "fastattn: T5's relative bias is materialized "
                       "when the cache length is a tensor (static caches)")
        materialized = super(type(module), module).compute_bias(lq, lk, query.device, past)
        return key, value, attention_mask, materialized, None
    if past + lq < lk:
        end = past + lq
        key, value = key[:, :, :end], value[:, :, :end]
        if attention_mask is not None:
            attention_mask = attention_mask[..., :end]
    rel = RelativePositionBias(module.relative_attention_bias.weight,
                               bidirectional=not module.is_decoder,
                               max_distance=module.relative_attention_max_distance)
    return key, value, attention_mask, None, rel


# ----------------------------------------------------------------- selection


def _set_implementation(model: torch.nn.Module, backend: str) -> list[str]:
    """Select "fastattn" on the model, its sub-models and their sub-configs
    (an EncoderDecoderModel holds its encoder's and decoder's configs
    apart). Sub-models whose attention does not go through transformers'
    AttentionInterface keep theirs; returns their class names."""
    from transformers import PreTrainedConfig, PreTrainedModel

    register()
    submodels = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    left_alone = [m for m in submodels if not m._can_set_attn_implementation()]
    # transformers' own setter skips (and logs) the sub-models that cannot
    # take it; its checks raise for a name it does not know.
    model.set_attn_implementation(NAME)

    # Modules of the sub-models left alone keep their configs; every other
    # module's config is selected (attention layers may hold their own
    # config object: EncoderDecoderModel replaces its sub-models' configs
    # after their layers were built).
    skipped = {id(m) for sub in left_alone for m in sub.modules()}
    skipped_configs = {id(getattr(m, "config", None)) for sub in left_alone
                       for m in sub.modules()}

    def select(config) -> None:
        if not isinstance(config, PreTrainedConfig) or id(config) in skipped_configs:
            return
        config._attn_implementation_internal = NAME
        for key in getattr(config, "sub_configs", {}):
            select(getattr(config, key, None))

    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(module) in skipped:
            continue
        select(config)
        # transformers' setter marks the configs it reached; it clears the
        # mark only on the root's sub-configs, and a config left marked is
        # skipped by every later set_attn_implementation (a user going back
        # to "eager" would leave nested sub-models on fastattn).
        if isinstance(config, PreTrainedConfig) and hasattr(config, "_attn_was_changed"):
            del config._attn_was_changed
        # Read by the attention function: which fastattn backend runs.
        module._fastattn_backend = backend
    # Unpickling the model registers "fastattn" before its forward needs it.
    model._fastattn_registration = hf_register.RegistrationMarker()
    return sorted({type(m).__name__ for m in left_alone})


# Encoder stacks that unpad=True packs: the class of the stack, the
# attribute holding its layers (each layer takes the hidden states, then the
# 4-D mask). Decoder stacks (config.is_decoder) are left padded.
UNPAD_STACKS = {
    "transformers.models.bert.modeling_bert.BertEncoder": "layer",
    "transformers.models.roberta.modeling_roberta.RobertaEncoder": "layer",
    "transformers.models.distilbert.modeling_distilbert.Transformer": "layer",
    "transformers.models.bart.modeling_bart.BartEncoder": "layers",
    "transformers.models.marian.modeling_marian.MarianEncoder": "layers",
}


def _unpad_stacks(model: torch.nn.Module) -> int:
    stacks = 0
    for module in model.modules():
        cls = type(module)
        layers_attr = UNPAD_STACKS.get(f"{cls.__module__}.{cls.__qualname__}")
        config = getattr(module, "config", None)
        if layers_attr is None or getattr(config, "is_decoder", False):
            continue
        if unpad.wrap_stack(module, getattr(module, layers_attr)):
            stacks += 1
    return stacks


def swap_hf_model(model: torch.nn.Module, *, attention: bool, norm: bool,
                  backend: str, unpad: bool = False) -> dict[str, int]:
    """Make a transformers model run fastattn, in place, keeping every weight.

    attention: select the "fastattn" attention implementation (model, its
    sub-models and sub-configs). norm: turn T5-style RMS norms into fastattn
    ones here; nn.LayerNorm modules are converted by the torch.nn swap that
    swap_modules runs next. Returns what it replaced, per kind.
    """
    from transformers import PreTrainedModel

    done: dict[str, int] = {}
    if attention:
        left_alone = _set_implementation(model, backend)
        if left_alone:
            _log.warn_once(f"hf-unsupported:{','.join(left_alone)}",
                           "fastattn.swap_modules: %s do not call transformers' "
                           "AttentionInterface; their attention is left as is (their norms "
                           "are still swapped)", ", ".join(left_alone))
        switched = sum(1 for m in model.modules()
                       if isinstance(m, PreTrainedModel) and type(m).__name__ not in left_alone)
        done["transformers model (attention implementation)"] = switched
        t5_layers = _swap_t5_attention(model)
        if t5_layers:
            done["T5 attention (relative bias computed in the kernels)"] = t5_layers
    if norm:
        done["T5-style RMS norm"] = _swap_norms(model, backend)
    if unpad:
        done["encoder stack (unpadded)"] = _unpad_stacks(model)
    return done

