"""Ceilings measured in the same run, so every figure has a yardstick.

copy:    device-to-device copies, GB/s counting the bytes read plus the
         bytes written (2 x size), the same way the norm and decode figures
         count their bytes; the best of
           - one copy of a buffer far larger than the caches (1 GiB on a
             GPU; on a CPU COVER x the last-level cache, at least 64 MiB),
             source and destination both cold;
           - copies of CHUNKS-sized sources rotated past the cache exactly
             as every row's inputs are (timing.input_pool), into one
             destination reused call after call, as a kernel's output is
             recycled by the allocator.
         The second is the yardstick the rows are measured like: with the
         big copy alone, a kernel whose recycled output stays in cache
         beats "the ceiling" (a CPU norm by 1.5x). On a CPU the chunked
         copies run with torch's thread count and with one thread: on a
         busy machine a parallel region waits for its slowest thread, and
         a two-thread copy was measured 25x slower than a one-thread one.
matmul:  a square matmul, 2*n^3 FLOPs, in bf16 on a GPU (plus each other
         dtype the run benchmarks) and fp32 on a CPU (there also with one
         thread, the better counting). A memory-bound kernel is judged
         against the copy, a compute-bound one against the matmul.
Both are timed like every row (timing.measure: warm-up, samples), but a
ceiling is an upper bound: it is computed from the fastest sample (as
STREAM reports its best rate), so one preempted sample cannot lower it;
the statistics of all samples are kept in `measurements`.
"""

from __future__ import annotations

import contextlib

import torch

from . import timing


CHUNKS = {"cpu": (4 << 20, 16 << 20), "cuda": (16 << 20, 64 << 20)}


def copy_bytes(device: torch.device) -> int:
    """The size of the big copy."""
    if device.type == "cuda":
        return 1 << 30
    return max(64 << 20, int(timing.COVER * timing.cache_bytes(device)))


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _thread_counts(device: torch.device) -> list[int]:
    return [1] if device.type == "cuda" else list(dict.fromkeys([torch.get_num_threads(), 1]))


def copy_gbps(device: torch.device, budget: timing.Budget) -> tuple[float, dict]:
    """The best copy rate, and the statistics of that copy (with `variants`:
    every pattern's GB/s)."""
    results = []
    size = copy_bytes(device)
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(7)
    dst = torch.empty_like(src).fill_(0)
    stats = timing.measure(lambda i: dst.copy_(src), timing.warm_rotation(1), device, budget)
    stats.update(bytes=size, pattern="one big copy, source and destination cold",
                 cold=size >= timing.COVER * timing.cache_bytes(device))
    results.append(stats)
    del src, dst
    for chunk in CHUNKS.get(device.type, ()):
        base = {"src": torch.empty(chunk, dtype=torch.uint8, device=device).fill_(7)}
        sets, rotation = timing.input_pool(base, device)
        dst = torch.empty_like(base["src"]).fill_(0)
        for threads in _thread_counts(device):
            with _threads(threads) if device.type == "cpu" else contextlib.nullcontext():
                stats = timing.measure(lambda i: dst.copy_(sets[i]["src"]), rotation, device,
                                       budget)
            stats.update(bytes=chunk, threads=threads if device.type == "cpu" else None,
                         pattern=f"{chunk >> 20} MiB sources rotated past the cache into a "
                                 "reused destination"
                                 + (f", {threads} thread(s)" if device.type == "cpu" else ""))
            results.append(stats)
        del sets, dst, base
    for stats in results:
        stats["GBps"] = 2 * stats["bytes"] / (stats["min_ms"] * 1e-3) / 1e9
    best = max(results, key=lambda st: st["GBps"])
    best = dict(best, variants={st["pattern"]: round(st["GBps"], 2) for st in results})
    return best["GBps"], best


def matmul_tflops(device: torch.device, dtype: torch.dtype,
                  budget: timing.Budget) -> tuple[float, dict]:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    results = []
    for threads in _thread_counts(device):
        with _threads(threads) if device.type == "cpu" else contextlib.nullcontext():
            stats = timing.measure(lambda i: a @ b, timing.warm_rotation(1), device, budget)
        stats.update(matrix_n=n, threads=threads if device.type == "cpu" else None)
        stats["TFLOPs"] = 2 * n ** 3 / (stats["min_ms"] * 1e-3) / 1e12
        results.append(stats)
    best = max(results, key=lambda st: st["TFLOPs"])
    best = dict(best, variants={f"{st['threads']} thread(s)" if st["threads"] else "device":
                                round(st["TFLOPs"], 4) for st in results})
    return best["TFLOPs"], best


def measure(device: torch.device, dtypes: list[torch.dtype], budget: timing.Budget) -> dict:
    """{"copy_GBps": float, "matmul_TFLOPs": {dtype name: float},
    "measurements": {"copy": stats, "matmul <dtype>": stats}}."""
    matmul_dtypes = [torch.bfloat16] if device.type == "cuda" else [torch.float32]
    matmul_dtypes += [d for d in dtypes if d not in matmul_dtypes]
    copy, copy_stats = copy_gbps(device, budget)
    matmuls, measurements = {}, {"copy": copy_stats}
    for d in matmul_dtypes:
        matmuls[dtype_name(d)], measurements[f"matmul {dtype_name(d)}"] = matmul_tflops(
            device, d, budget)
    return {"copy_GBps": copy, "matmul_TFLOPs": matmuls, "measurements": measurements}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def matmul_ceiling(ceilings: dict, dtype: torch.dtype) -> float:
    """The matmul TFLOP/s in `dtype` if measured, else the first measured."""
    table = ceilings["matmul_TFLOPs"]
    return table.get(dtype_name(dtype), next(iter(table.values())))
