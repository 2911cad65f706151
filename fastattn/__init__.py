"""fastattn: fused attention and layer-norm kernels for encoder-decoder Transformers.

Public API (see README.md): attention ops, normalization ops, drop-in modules
(fastattn.nn), swap_modules, and fastattn.reference, the plain-PyTorch ground
truth. Every op runs on the backends reported by fastattn.backends().
"""

from . import _extension, reference
from ._backends import backends
from .ops.attention import attention
from .ops.sdpa import scaled_dot_product_attention
from .ops.attention_varlen import attention_varlen
from .ops.variants import RelativePositionBias
from .ops.padding import pad_input, unpad_input
from .ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm
from . import nn
from .integrations import swap_modules
from .integrations.hf_register import register_on_import as _register_with_transformers

__version__ = "0.1.0"

# The compiled kernels if they fit this torch (else built on first use, or a
# warning now if they cannot be); and attn_implementation="fastattn" in
# transformers, without importing it here.
_extension.check_at_import()
_register_with_transformers()

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "attention",
    "attention_varlen",
    "backends",
    "layer_norm",
    "nn",
    "pad_input",
    "RelativePositionBias",
    "reference",
    "rms_norm",
    "scaled_dot_product_attention",
    "swap_modules",
    "unpad_input",
]
