"""Make "fastattn" a transformers attention implementation from ``import fastattn`` on.

transformers looks attention implementations up by name in two registries:
``AttentionInterface`` (transformers.modeling_utils: the attention function)
and ``AttentionMaskInterface`` (transformers.masking_utils: the mask
builder). Registering into them is cheap, but importing those modules costs
seconds, so ``import fastattn`` never imports them: it registers at once
where they are already imported, and otherwise installs an import hook
that registers right after each is first imported. So
``AutoModel.from_config(cfg, attn_implementation="fastattn")`` and models
unpickled in a fresh process (whose config names "fastattn") just work.
"""

from __future__ import annotations

import importlib.abc
import sys

NAME = "fastattn"
MIN_TRANSFORMERS_MAJOR = 5

ATTENTION_MODULE = "transformers.modeling_utils"
MASK_MODULE = "transformers.masking_utils"


def _supported(transformers_version: str) -> bool:
    return int(transformers_version.split(".")[0]) >= MIN_TRANSFORMERS_MAJOR


def _register_attention(modeling_utils) -> None:
    from .hf import fastattn_attention_forward
    modeling_utils.AttentionInterface.register(NAME, fastattn_attention_forward)


def _register_mask(masking_utils) -> None:
    # transformers' own sdpa mask builder: the boolean masks sdpa gets, None
    # where sdpa needs none (fastattn_attention_forward maps both).
    masking_utils.AttentionMaskInterface.register(NAME, masking_utils.sdpa_mask)


_CALLBACKS = {ATTENTION_MODULE: _register_attention, MASK_MODULE: _register_mask}


def _on_import(name: str, module) -> None:
    transformers = sys.modules.get("transformers")
    if transformers is None or not _supported(getattr(transformers, "__version__", "0")):
        return  # transformers 4.x: swap_modules explains what is needed
    _CALLBACKS[name](module)


class _RegisteringLoader(importlib.abc.Loader):
    """The loader of one module, which registers fastattn once the module
    has run. Everything else is the original loader's."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _on_import(self._name, module)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds the watched modules with the other finders and wraps their loader."""

    def __init__(self):
        self.pending = set(_CALLBACKS)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader, fullname)
                return spec
        return None


_hook: _ImportHook | None = None


def register_on_import() -> None:
    """Register now into the registries that are imported; register into the
    others when they are imported (idempotent)."""
    global _hook
    waiting = False
    for name in _CALLBACKS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "ALL_ATTENTION_FUNCTIONS"
                                          if name == ATTENTION_MODULE else "sdpa_mask"):
            _on_import(name, module)
        else:
            waiting = True
    if waiting and _hook is None:
        _hook = _ImportHook()
        sys.meta_path.insert(0, _hook)


def registered() -> bool:
    """Whether both registries know "fastattn" (for swap_modules' checks)."""
    mu, ma = sys.modules.get(ATTENTION_MODULE), sys.modules.get(MASK_MODULE)
    return (mu is not None and ma is not None
            and NAME in mu.AttentionInterface._global_mapping
            and NAME in ma.AttentionMaskInterface._global_mapping)


class RegistrationMarker:
    """Held by swapped transformers models: unpickling one (torch.load in a
    fresh process) imports fastattn and registers "fastattn" before the
    model's forward looks the name up, even when nothing else in the model
    is a fastattn class (attention-only swaps)."""

    def __reduce__(self):
        return (_marker, ())


def _marker() -> RegistrationMarker:
    register_on_import()
    return RegistrationMarker()
