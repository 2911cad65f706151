"""Shared test helpers: the accuracy protocol of docs/TESTING.md and backend parametrization.

A kernel's output in a low precision is judged against the float64 truth
(fastattn.reference on float64 inputs): its error must be at most a small
multiple of the error plain PyTorch makes computing the same thing in that
precision, plus a tiny absolute floor. This adapts to shape and dtype without
hand-tuned tolerances. On failure the first mismatching elements are printed.
The protocol itself lives in fastattn.testing, shared with the benchmark's
correctness gate.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastattn import _backends
from fastattn.testing import (ABS_FLOOR, ERROR_MULTIPLE, assert_close,  # noqa: F401
                              describe_mismatch, max_err)

HAS_CUDA = torch.cuda.is_available()
INTERPRET = _backends.triton_interpret()


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so an unwritten element cannot pass as correct."""
    return t.fill_(float("nan"))


def backend_params(family: str, devices=("cpu", "cuda")):
    """pytest params (backend, device) for every backend of `family`, each
    skipped with the reason when it cannot run here."""
    params = []
    for device in devices:
        for backend in _backends.OP_BACKENDS[family]:
            if backend == "reference":
                continue
            if device == "cuda" and not HAS_CUDA:
                why = "no CUDA device"
            else:
                why = _backends.unavailable_reason(backend, family, torch.device(device))
            marks = [pytest.mark.skip(reason=why)] if why else []
            if device == "cuda":
                marks.append(pytest.mark.gpu)
            params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def seeded(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class FastattnOpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts calls of fastattn:: ops, to prove a model really runs them."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastattn":
            name = func._schema.name.split("::")[-1]
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def dtypes_for(device: str) -> list[torch.dtype]:
    """Dtypes a kernel test runs in on `device`: bf16 only on a GPU, because
    the Triton interpreter's bf16 tl.dot is not trustworthy (and the CPU
    backend's bf16 takes the same code path as its fp16)."""
    if device == "cuda":
        return [torch.float16, torch.bfloat16, torch.float32]
    return [torch.float32, torch.float16]
