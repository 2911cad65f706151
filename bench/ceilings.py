"""Ceilings measured in the same run, so every figure has a yardstick.

copy:    a device-to-device copy of a buffer far larger than the caches;
         GB/s counts the bytes read plus the bytes written (2 x size), the
         same way the norm and decode figures count their bytes.
matmul:  a square matmul, 2*n^3 FLOPs, in bf16 on a GPU (plus each other
         dtype the run benchmarks) and fp32 on a CPU. A memory-bound kernel
         is judged against the copy, a compute-bound one against the matmul.
"""

from __future__ import annotations

import torch

from . import timing


def copy_gbps(device: torch.device, budget: timing.Budget) -> float:
    size = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = [torch.empty(size, dtype=torch.uint8, device=device).random_(0, 255)]
    dst = torch.empty_like(src[0])
    ms = timing.median_ms(lambda i: dst.copy_(src[0]), 1, device, budget)
    return 2 * size / (ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, budget: timing.Budget) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    ms = timing.median_ms(lambda i: a @ b, 1, device, budget)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def measure(device: torch.device, dtypes: list[torch.dtype], budget: timing.Budget) -> dict:
    """{"copy_GBps": float, "matmul_TFLOPs": {dtype name: float}}."""
    matmul_dtypes = [torch.bfloat16] if device.type == "cuda" else [torch.float32]
    matmul_dtypes += [d for d in dtypes if d not in matmul_dtypes]
    return {
        "copy_GBps": copy_gbps(device, budget),
        "matmul_TFLOPs": {dtype_name(d): matmul_tflops(device, d, budget)
                          for d in matmul_dtypes},
    }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def matmul_ceiling(ceilings: dict, dtype: torch.dtype) -> float:
    """The matmul TFLOP/s in `dtype` if measured, else the first measured."""
    table = ceilings["matmul_TFLOPs"]
    return table.get(dtype_name(dtype), next(iter(table.values())))
