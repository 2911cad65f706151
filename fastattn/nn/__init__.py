"""Drop-in modules: subclasses of the torch modules, same state_dict."""

from .attention import MultiheadAttention
from .norm import LayerNorm, RMSNorm
from .transformer import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = ["LayerNorm", "MultiheadAttention", "RMSNorm", "TransformerDecoderLayer",
           "TransformerEncoderLayer"]
