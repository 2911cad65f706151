"""the accuracy protocol of docs/TESTING.md, importable by the tests and the benchmark.

A kernel's output in a low precision is judged against the float64 truth
(fastattn.reference on float64 inputs): its error must be at most a small
multiple of the error plain PyTorch makes computing the same thing in that
precision, plus a tiny absolute floor. This adapts to shape and dtype without
hand-tuned tolerances. `check_close` returns a verdict (the benchmark's
correctness gate); `assert_close` raises it (the tests).
"""

from __future__ import annotations

from typing import Optional

import torch

ERROR_MULTIPLE = 3.0
ABS_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-4,
             torch.bfloat16: 1e-3}


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


def check_close(actual: torch.Tensor, truth: torch.Tensor, baseline: Optional[torch.Tensor],
                name: str = "output", multiple: float = ERROR_MULTIPLE) -> tuple[bool, str]:
    """(ok, message): is `actual`'s error vs `truth` (fp64) <= multiple x
    `baseline`'s error + floor?

    `baseline` is plain PyTorch's result in actual's dtype (None: compare
    with the floor alone, for float64 results). The message states both
    errors and, on failure, the first mismatching elements.
    """
    if actual.shape != truth.shape:
        return False, f"{name}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    if actual.isnan().any() and not truth.isnan().any():
        return False, f"{name}: NaN in the result"
    floor = ABS_FLOOR[actual.dtype]
    # relative floor: rounding of the result itself in its own dtype
    scale = truth.abs().max().item() if truth.numel() else 0.0
    floor = max(floor, scale * torch.finfo(actual.dtype).eps)
    base_err = max_err(baseline, truth) if baseline is not None else 0.0
    tol = multiple * base_err + floor
    err = max_err(actual, truth)
    message = f"{name}: max error {err:.3g}, tolerance {tol:.3g} (PyTorch's own error {base_err:.3g})"
    if err <= tol:
        return True, message
    return False, message + "\n" + describe_mismatch(actual, truth, tol)


def assert_close(actual: torch.Tensor, truth: torch.Tensor, baseline: Optional[torch.Tensor],
                 name: str = "output", multiple: float = ERROR_MULTIPLE) -> None:
    """`check_close` as an assertion (for tests)."""
    ok, message = check_close(actual, truth, baseline, name, multiple)
    assert ok, message
