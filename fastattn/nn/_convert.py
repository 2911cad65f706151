"""In-place conversion of a torch module into its fastattn subclass, and
what the subclasses share."""

from __future__ import annotations

import torch


def refuse_torchscript(module: torch.nn.Module):
    """``__prepare_scriptable__`` of fastattn's modules: torch.jit.script
    calls it before compiling a module. TorchScript cannot call fastattn's
    kernels (Python frontends over torch.library ops), so say which paths
    keep them instead of failing later on an unrelated annotation."""
    raise RuntimeError(
        f"torch.jit.script cannot compile {type(module).__name__} (fastattn): TorchScript "
        "cannot call fastattn's kernels. Use torch.compile(model) or torch.export.export(model, "
        "args), which keep them; or script the model before fastattn.swap_modules.")


class ConvertibleFromTorch:
    backend: str

    @classmethod
    def from_torch(cls, module: torch.nn.Module, backend: str = "auto"):
        """Turn torch's ``module`` into this fastattn module in place (same
        parameter objects, no copy) and return it."""
        module.__class__ = cls
        module.backend = backend
        return module

    __prepare_scriptable__ = refuse_torchscript

    def extra_repr(self) -> str:
        """torch's description of the module, and which fastattn backend runs it."""
        own = super().extra_repr()
        return f"{own}, fastattn backend={self.backend}" if own else \
            f"fastattn backend={self.backend}"
