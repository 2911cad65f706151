"""Shared test helpers: GUIDE.md's accuracy protocol and backend parametrization.

A kernel's output in a low precision is judged against the float64 truth
(fastattn.reference on float64 inputs): its error must be at most a small
multiple of the error plain PyTorch makes computing the same thing in that
precision, plus a tiny absolute floor. This adapts to shape and dtype without
hand-tuned tolerances. On failure the first mismatching elements are printed.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastattn import _backends

ERROR_MULTIPLE = 3.0
ABS_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-4,
             torch.bfloat16: 1e-3}

HAS_CUDA = torch.cuda.is_available()
INTERPRET = _backends.triton_interpret()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def describe_mismatch(actual: torch.Tensor, expected: torch.Tensor, tol: float, k: int = 5) -> str:
    diff = (actual.double() - expected.double()).abs()
    bad = (diff > tol) | diff.isnan()
    idx = bad.nonzero()[:k]
    lines = [f"{int(bad.sum())} of {diff.numel()} elements off (tol {tol:.3g}):"]
    for i in idx.tolist():
        i = tuple(i)
        lines.append(f"  at {i}: got {actual[i].item():.6g}, expected {expected[i].item():.6g}")
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, truth: torch.Tensor, baseline: torch.Tensor | None,
                 name: str = "output", multiple: float = ERROR_MULTIPLE) -> None:
    """`actual`'s error vs `truth` (fp64) is <= multiple x `baseline`'s + floor.

    `baseline` is plain PyTorch's result in actual's dtype (None: compare
    with the floor alone, for float64 results).
    """
    assert actual.shape == truth.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert not actual.isnan().any() or truth.isnan().any(), f"{name}: NaN in the result"
    floor = ABS_FLOOR[actual.dtype]
    # relative floor: rounding of the result itself in its own dtype
    scale = truth.abs().max().item() if truth.numel() else 0.0
    floor = max(floor, scale * torch.finfo(actual.dtype).eps)
    base_err = max_err(baseline, truth) if baseline is not None else 0.0
    tol = multiple * base_err + floor
    err = max_err(actual, truth)
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g} " \
        f"(PyTorch's own error {base_err:.3g})\n" + describe_mismatch(actual, truth, tol)


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
