"""Which of fastattn's backends the benchmark times on this device.

Default: the compiled `cuda` backend and `triton` on a GPU, the compiled
`cpu` backend on a CPU. The Triton interpreter (triton on CPU tensors) is
an exact emulator for tests, thousands of times slower than a GPU: it is
never timed. `reference` is plain PyTorch, timed only when asked for.
"""

from __future__ import annotations

import torch

DEFAULT = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def timeable(family: str, wanted: tuple[str, ...] | None, device: torch.device,
             dtype: torch.dtype, notes: set[str]) -> list[str]:
    """The backends of `family` to time; each left-out one adds a note saying why."""
    from fastattn import _backends
    if wanted is None:
        wanted = DEFAULT.get(device.type, ())
    chosen = []
    for backend in wanted:
        if backend == "triton" and device.type == "cpu":
            notes.add(f"fastattn[triton] {family} not timed: on CPU it runs only in the "
                      "Triton interpreter, which is never timed")
            continue
        if family not in _backends.OP_BACKENDS:
            why = f"fastattn has no {family} op yet"
        else:
            why = _backends.unavailable_reason(backend, family, device, dtype)
        if why:
            notes.add(f"fastattn[{backend}] {family} not timed: {why}")
            continue
        chosen.append(backend)
    return chosen
