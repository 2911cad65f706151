"""Timers: median time of a call, and its peak memory.

`call(i)` runs the measured work on input set i (0 <= i < n_sets). The
benchmark makes several input sets when one is smaller than the GPU's L2
cache and rotates through them, so a kernel is not timed reading data the
previous repetition left in cache.

GPU: each repetition is bracketed by CUDA events on the current stream; the
events measure device time, including any idle gap the host's launch
overhead leaves, which is a real cost of small ops. Warm-up first (it also
triggers autotuning and compilation), then repetitions until a time budget
or a count is reached; the median is reported.
CPU: the same loop with time.perf_counter.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Budget:
    """How long to spend per measurement (seconds) and its repetition bounds."""
    warmup_s: float = 0.025
    measure_s: float = 0.1
    min_reps: int = 5
    max_reps: int = 200


QUICK_CPU = Budget(warmup_s=0.0, measure_s=0.15, min_reps=3, max_reps=20)
FULL_CPU = Budget(warmup_s=0.05, measure_s=0.5, min_reps=3, max_reps=50)
QUICK_GPU = Budget(warmup_s=0.02, measure_s=0.05, min_reps=5, max_reps=100)
FULL_GPU = Budget(warmup_s=0.025, measure_s=0.1, min_reps=10, max_reps=200)


def budget_for(device: torch.device, quick: bool) -> Budget:
    if device.type == "cuda":
        return QUICK_GPU if quick else FULL_GPU
    return QUICK_CPU if quick else FULL_CPU


def l2_bytes(device: torch.device) -> int:
    """The device's L2 size (0 on CPU, where caches are far smaller than our inputs)."""
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 50 << 20))


def n_input_sets(device: torch.device, set_bytes: int, cap: int = 8) -> int:
    """How many input sets to rotate so that together they span 4x the L2."""
    l2 = l2_bytes(device)
    if l2 == 0 or set_bytes <= 0:
        return 1
    return max(1, min(cap, math.ceil(4 * l2 / set_bytes)))


def _cpu_time_one(call: Callable[[int], object], i: int) -> float:
    start = time.perf_counter()
    call(i)
    return (time.perf_counter() - start) * 1e3


def _gpu_time_one(call: Callable[[int], object], i: int) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    call(i)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(call: Callable[[int], object], n_sets: int, device: torch.device,
              budget: Budget) -> float:
    """Median milliseconds of `call` over rotating input sets, after warm-up."""
    one = _gpu_time_one if device.type == "cuda" else _cpu_time_one
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # Warm-up: at least one call per input set (compilation, autotuning,
    # allocator), then until the warm-up budget is spent.
    first = [one(call, i) for i in range(n_sets)]
    spent = sum(first) / 1e3
    i = 0
    while spent < budget.warmup_s:
        spent += one(call, i % n_sets) / 1e3
        i += 1
    estimate = max(min(first), 1e-3)
    reps = int(budget.measure_s * 1e3 / estimate)
    reps = max(budget.min_reps, min(budget.max_reps, reps))
    times = [one(call, (i + r) % n_sets) for r in range(reps)]
    return statistics.median(times)


def peak_memory_mib(call: Callable[[int], object], device: torch.device) -> float | None:
    """Extra device memory one call needs at its peak, in MiB (None on CPU).

    The allocator's peak during the call minus what was allocated before it
    (inputs, and for a backward the forward's saved tensors, are excluded).
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = call(0)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - before) / (1 << 20)
