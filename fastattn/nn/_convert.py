"""In-place conversion of a torch module into its fastattn subclass."""

from __future__ import annotations

import torch


class ConvertibleFromTorch:
    backend: str

    @classmethod
    def from_torch(cls, module: torch.nn.Module, backend: str = "auto"):
        """Turn torch's ``module`` into this fastattn module in place (same
        parameter objects, no copy) and return it."""
        module.__class__ = cls
        module.backend = backend
        return module
