"""Drop-in modules: subclasses of the torch modules, same state_dict."""

from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
