"""fastattn.nn.LayerNorm / RMSNorm: torch's modules, fastattn's kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.norm import layer_norm, rms_norm
from ._convert import ConvertibleFromTorch


class LayerNorm(ConvertibleFromTorch, torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` with the same constructor, parameters and
    state_dict; forward runs ``fastattn.layer_norm`` on ``backend``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                          backend=self.backend)


class RMSNorm(ConvertibleFromTorch, torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` with the same constructor, parameters and
    state_dict; forward runs ``fastattn.rms_norm`` on ``backend``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps, backend=self.backend)
