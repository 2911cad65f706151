"""Timers: warm-up, repeated samples until a minimum time, robust statistics,
and cold caches (input rotation past the last-level cache, or a scrub).

`call(i)` runs the measured work on input set i (0 <= i < n_sets). How one
measurement goes (`measure`):

1. Warm-up, untimed for the result: at least `warmup_calls` calls and at
   least `warmup_s` seconds of them (compilation, autotuning, the allocator,
   page faults). Every mode, --quick included.
2. Samples, one call each (GPU: CUDA events around the call on the current
   stream, synchronized per sample; CPU: time.perf_counter), until the
   samples add up to `min_time_s` AND there are at least `min_reps` of them
   (or `max_reps` / `max_wall_s` stop it, but never before `min_reps`).
3. Statistics over the samples (`summarize`): median (the reported time),
   mean, min, max, quartiles (linear interpolation, numpy's default) and the
   relative spreads IQR/median and (max-min)/median. A row is flagged noisy
   when IQR/median > NOISY_IQR (10%).

Cold caches. Every timed call reads inputs that are not in the cache, on a
GPU (L2) and on a CPU (the last-level cache from sysfs, `llc_bytes`):
input sets are copies of one set laid out in one preallocated arena, and
calls rotate through them, so between two uses of a set at least
COVER x the cache size of other data has been touched. Where too few sets
fit (a set nearly as large as the cache, or the arena's memory cap), a
scrub buffer of COVER x the cache is written, untimed, whenever a set would
otherwise be reused warm. For the backward mode the forward outputs of the
sets about to be timed are computed first (untimed; each set's once, its
graph kept and reused when the set comes round again); when the sets just
computed are together smaller than COVER x the cache, a scrub follows, so
the backward does not read what its forward just left in cache.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

COVER = 2.0                   # rotation spans (or a scrub writes) COVER x the cache
NOISY_IQR = 0.10              # a row is noisy when IQR / median exceeds this
DEFAULT_LLC = 64 << 20        # when sysfs says nothing about the CPU's caches
SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"
ALIGN = 256                   # bytes; every tensor of an input set starts aligned
MAX_SETS = 1024               # input sets per shape at most
MEMORY_SHARE = 0.25           # the arena takes at most this share of free memory
MAX_WARMUP_CALLS = 10000


@dataclass(frozen=True)
class Budget:
    """How one measurement is repeated (see the module docstring)."""
    warmup_s: float = 0.025     # warm-up: at least this long ...
    warmup_calls: int = 2       # ... and at least this many calls
    min_time_s: float = 0.2     # samples add up to at least this ...
    min_reps: int = 5           # ... and are at least this many
    max_reps: int = 20000       # stop here even if short of min_time_s
    max_wall_s: float = 2.0     # or after this long sampling (after min_reps)


QUICK_CPU = Budget(warmup_s=0.02, warmup_calls=1, min_time_s=0.2, min_reps=5,
                   max_reps=5000, max_wall_s=2.0)
FULL_CPU = Budget(warmup_s=0.1, warmup_calls=3, min_time_s=0.5, min_reps=10,
                  max_reps=20000, max_wall_s=5.0)
QUICK_GPU = Budget(warmup_s=0.025, warmup_calls=3, min_time_s=0.2, min_reps=5,
                   max_reps=20000, max_wall_s=1.0)
FULL_GPU = Budget(warmup_s=0.05, warmup_calls=3, min_time_s=0.5, min_reps=10,
                  max_reps=50000, max_wall_s=2.5)


def budget_for(device: torch.device, quick: bool) -> Budget:
    if device.type == "cuda":
        return QUICK_GPU if quick else FULL_GPU
    return QUICK_CPU if quick else FULL_CPU


# ------------------------------------------------------------- statistics


def quartiles(samples: Iterable[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation between order statistics
    (numpy's default, statistics' "inclusive" method)."""
    s = sorted(samples)
    if not s:
        raise ValueError("no samples")
    if len(s) == 1:
        return s[0], s[0], s[0]
    q1, q2, q3 = statistics.quantiles(s, n=4, method="inclusive")
    return q1, q2, q3


def summarize(samples_ms: list[float]) -> dict:
    """Statistics of one measurement's samples (milliseconds)."""
    q1, median, q3 = quartiles(samples_ms)
    lo, hi = min(samples_ms), max(samples_ms)
    rel = (lambda x: x / median) if median > 0 else (lambda x: 0.0)
    return {"n": len(samples_ms), "median_ms": median,
            "mean_ms": statistics.fmean(samples_ms), "min_ms": lo, "max_ms": hi,
            "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "iqr_rel": rel(q3 - q1),
            "range_rel": rel(hi - lo), "total_s": sum(samples_ms) / 1e3}


def is_noisy(stats: dict, threshold: float = NOISY_IQR) -> bool:
    """IQR / median above `threshold` (10%): the row's median is not to be trusted."""
    return stats["iqr_rel"] > threshold


def samples_needed(budget: Budget, done: int, total_s: float, estimate_ms: float) -> int:
    """How many more samples (at least) reach both min_reps and min_time_s;
    0 when done. max_reps caps it, but never below min_reps."""
    if done >= budget.min_reps and (total_s >= budget.min_time_s or done >= budget.max_reps):
        return 0
    by_time = math.ceil(max(0.0, budget.min_time_s - total_s) * 1e3 / max(estimate_ms, 1e-4))
    need = max(budget.min_reps - done, by_time, 1)
    return min(need, max(budget.max_reps - done, budget.min_reps - done, 1))


# ------------------------------------------------------------------ caches


def parse_size(text: str) -> int:
    """A sysfs cache size ("48K", "2048K", "32M", "1G", "65536") in bytes."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in "KMG" else t
    return int(digits) * scale


def llc_bytes(root: str = SYSFS_CACHE) -> tuple[int, str]:
    """(size in bytes, where it came from) of the CPU's last-level cache.

    The largest data or unified cache at the highest level >= 2 listed under
    `root` (index*/level, type, size): L3 where there is one, else L2.
    Falls back to DEFAULT_LLC (64 MiB) when sysfs says nothing.
    """
    by_level: dict[int, int] = {}
    for entry in sorted(glob.glob(os.path.join(root, "index*"))):
        try:
            with open(os.path.join(entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(entry, "size")) as f:
                size = parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or level < 2 or size <= 0:
            continue
        by_level[level] = max(by_level.get(level, 0), size)
    if by_level:
        level = max(by_level)
        return by_level[level], f"L{level} {by_level[level] >> 10} KiB from {root}"
    return DEFAULT_LLC, f"default {DEFAULT_LLC >> 20} MiB (no cache size under {root})"


@functools.lru_cache(maxsize=None)
def cache_info(device: torch.device) -> tuple[int, str]:
    """(bytes, description) of the cache a timed call must not find its inputs
    in: the GPU's L2, the CPU's last-level cache."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        size = int(getattr(props, "L2_cache_size", 0) or (50 << 20))
        return size, f"L2 {size >> 20} MiB ({props.name})"
    return llc_bytes()


def cache_bytes(device: torch.device) -> int:
    return cache_info(device)[0]


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


_ARENAS: dict[str, torch.Tensor] = {}
_LAST_SCRUB_MS: dict[str, float] = {}
_SCRUBS: dict[str, torch.Tensor] = {}


def _buffer(store: dict, device: torch.device, nbytes: int) -> torch.Tensor:
    key = str(device)
    if key not in store:
        buf = torch.empty(nbytes + ALIGN, dtype=torch.uint8, device=device)
        buf.fill_(1)  # touch every page now, not inside a timed call
        pad = (-buf.data_ptr()) % ALIGN
        store[key] = buf[pad:pad + nbytes]  # starts aligned, like every set's tensors
    return store[key]


def arena(device: torch.device) -> torch.Tensor:
    """The flat byte buffer input sets are laid out in (allocated once per run)."""
    want = int(COVER * cache_bytes(device)) + (16 << 20)
    cap = int(MEMORY_SHARE * free_memory_bytes(device))
    return _buffer(_ARENAS, device, max(1 << 20, min(want, cap)))


def scrub_buffer(device: torch.device) -> torch.Tensor:
    want = int(COVER * cache_bytes(device))
    cap = int(MEMORY_SHARE * free_memory_bytes(device))
    return _buffer(_SCRUBS, device, max(1 << 20, min(want, cap)))


def scrub(device: torch.device) -> None:
    """Evict the cache: write COVER x its size of unrelated data. On a CPU an
    add (loads and ordinary stores: memset may use non-temporal stores,
    which bypass the cache); on a GPU a fill, as triton's do_bench does."""
    buf = scrub_buffer(device)
    if device.type == "cuda":
        buf.zero_()
    else:
        buf.add_(1)


# ---------------------------------------------------------- input rotation


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def set_bytes(inputs: dict) -> int:
    return sum(tensor_bytes(v) for v in inputs.values() if isinstance(v, torch.Tensor))


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Rotation:
    """Which input set each call uses, and when the cache must be scrubbed.

    Calls take sets round-robin. `covers(k)`: k consecutive sets span at
    least COVER x the cache, so a set's data is evicted before its next use.
    When the whole pool does not cover, a scrub runs before a set would be
    reused since the last scrub.
    """
    n_sets: int
    set_bytes: int
    cache_bytes: int                          # 0: no cold-cache handling (warm timing)
    scrub: Callable[[], None] | None = None
    cursor: int = 0
    since_scrub: int = 0                      # sets used since the last scrub (or creation)
    scrubs: int = 0
    scrub_ms: float | None = None             # how long a scrub took (the last one)

    def covers(self, k: int | None = None) -> bool:
        k = self.n_sets if k is None else k
        return self.cache_bytes == 0 or k * self.set_bytes >= COVER * self.cache_bytes

    @property
    def cold(self) -> bool:
        """Every timed call reads data not in the cache (as far as this can tell)."""
        return self.cache_bytes > 0 and (self.covers() or self.scrub is not None)

    def _scrub(self) -> None:
        if self.scrub is not None:
            start = time.perf_counter()
            self.scrub()
            self.scrub_ms = _LAST_SCRUB_MS["any"] = (time.perf_counter() - start) * 1e3
            self.scrubs += 1
        self.since_scrub = 0

    def covering_sets(self) -> int:
        """The fewest consecutive sets that span COVER x the cache (capped at n_sets)."""
        if not self.cache_bytes or not self.set_bytes:
            return 1
        return min(self.n_sets, math.ceil(COVER * self.cache_bytes / self.set_bytes))

    def setup_cycle(self, need: int, setup_ms: float) -> int:
        """How many sets a cycle with an untimed setup (setup_ms per set) should
        take: `need`, or enough to span the cache when those extra setups cost
        less than the scrub that a smaller cycle needs."""
        cover = self.covering_sets()
        if need >= cover or not self.covers(cover) or self.scrub is None:
            return need
        scrub_ms = self.scrub_ms if self.scrub_ms is not None else _LAST_SCRUB_MS.get(
            "any", COVER * self.cache_bytes / 5e9 * 1e3)  # a guess (5 GB/s) before any scrub
        return cover if (cover - need) * setup_ms < scrub_ms else need

    def take(self, k: int) -> list[int]:
        """The next k set indices, scrubbing first if needed: at most n_sets
        when caches are handled; a warm rotation wraps round (so a cycle of
        samples over one warm set is not one sample long, which would make
        the sampling loop's bookkeeping per cycle quadratic in the count)."""
        k = max(1, k if self.cache_bytes == 0 else min(k, self.n_sets))
        if not self.covers() and self.since_scrub + k > self.n_sets:
            self._scrub()
        idx = [(self.cursor + j) % self.n_sets for j in range(k)]
        self.cursor = (self.cursor + k) % self.n_sets
        self.since_scrub += k
        return idx

    def after_setup(self, k: int) -> None:
        """An untimed setup just touched k sets (the backward's forwards): scrub
        unless those k sets alone span COVER x the cache."""
        if self.cache_bytes and not self.covers(k):
            self._scrub()
            self.since_scrub = k

    def describe(self) -> dict:
        return {"n_sets": self.n_sets, "set_bytes": self.set_bytes,
                "cache_bytes": self.cache_bytes, "cold": self.cold,
                "rotation_covers_cache": self.cache_bytes > 0 and self.covers(),
                "scrubs": self.scrubs}


def warm_rotation(n_sets: int = 1) -> Rotation:
    """Plain round-robin over n_sets with no cold-cache handling (whole models,
    compute-bound ceilings)."""
    return Rotation(n_sets=n_sets, set_bytes=0, cache_bytes=0)


def input_pool(base: dict, device: torch.device) -> tuple[list[dict], Rotation]:
    """Copies of the input set `base` (a dict of tensors and plain values),
    enough to span COVER x the cache, laid out in the shared arena; and the
    Rotation over them. Tensors keep their dtype, shape and requires_grad.
    A set at least COVER x the cache needs no copy: [base] is returned."""
    nbytes = set_bytes(base)
    cache = cache_bytes(device)
    tensors = {k: v for k, v in base.items() if isinstance(v, torch.Tensor)}
    scrubber = functools.partial(scrub, device)
    if cache == 0 or nbytes == 0:
        return [base], Rotation(1, nbytes, 0)
    want = math.ceil(COVER * cache / nbytes)
    if want <= 1:
        return [base], Rotation(1, nbytes, cache, scrubber)
    if not all(t.is_contiguous() for t in tensors.values()):
        sets = [base] + [{k: (v.detach().clone().requires_grad_(v.requires_grad)
                              if isinstance(v, torch.Tensor) else v) for k, v in base.items()}
                         for _ in range(min(want, 8) - 1)]
        return sets, Rotation(len(sets), nbytes, cache, scrubber)
    buf = arena(device)
    offsets, per_set = {}, 0
    for key, t in tensors.items():
        offsets[key] = per_set
        per_set += _aligned(tensor_bytes(t))
    n = min(want, MAX_SETS, buf.numel() // max(per_set, 1))
    if n <= 1:
        return [base], Rotation(1, nbytes, cache, scrubber)
    # Set 0 from `base`, then doubling copies of whole sets: a few large
    # copies instead of one per tensor and set.
    for key, t in tensors.items():
        _view(buf, offsets[key], t).copy_(t.detach())
    done = 1
    while done < n:
        m = min(done, n - done)
        buf[done * per_set:(done + m) * per_set].copy_(buf[:m * per_set])
        done += m
    sets = []
    for j in range(n):
        sets.append({k: (_view(buf, j * per_set + offsets[k], v).requires_grad_(v.requires_grad)
                         if k in tensors else v) for k, v in base.items()})
    return sets, Rotation(n, nbytes, cache, scrubber)


def _view(buf: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped and typed like `like`, over buf[offset:...]."""
    return buf[offset:offset + tensor_bytes(like)].view(like.dtype).view(like.shape)


# ------------------------------------------------------------------ timers


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


def _cycle(rotation: Rotation, k: int, setup: Callable[[list[int]], int | None] | None,
           cold: bool = True) -> list[int]:
    idx = rotation.take(k)
    if setup is not None:
        touched = setup(idx)
        touched = len(idx) if touched is None else touched
        if cold and touched:  # the warm-up needs no cold data
            rotation.after_setup(touched)
    return idx


def measure(call: Callable[[int], object], rotation: Rotation, device: torch.device,
            budget: Budget, setup: Callable[[list[int]], None] | None = None) -> dict:
    """Warm-up, then samples of `call` over the rotation until the budget is
    met; `summarize`'s statistics plus how the samples were taken.

    `setup(indices)` (optional) runs untimed before the calls on those input
    sets (the backward mode computes its forwards there) and returns how
    many of them it touched (None: all); touching fewer sets than span
    COVER x the cache is followed by a scrub."""
    one = _gpu_time_one if device.type == "cuda" else _cpu_time_one
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    scrubs_before = rotation.scrubs
    start = time.perf_counter()
    warm: list[float] = []
    while (len(warm) < budget.warmup_calls
           or (sum(warm) / 1e3 < budget.warmup_s and len(warm) < MAX_WARMUP_CALLS)):
        (i,) = _cycle(rotation, 1, setup, cold=False)
        warm.append(one(call, i))
    warmup_s = time.perf_counter() - start
    # The steady-state estimate: the warm-up's later calls (the first may compile).
    estimate = statistics.median(warm[1:] if len(warm) > 1 else warm)
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        need = samples_needed(budget, len(samples), sum(samples) / 1e3, estimate)
        if need == 0 or (len(samples) >= budget.min_reps
                         and time.perf_counter() - start >= budget.max_wall_s):
            break
        total = sum(samples)
        if setup is not None:  # a backward's forward costs about half of it
            need = rotation.setup_cycle(need, 0.5 * estimate)
        for i in _cycle(rotation, need, setup):
            samples.append(one(call, i))
            total += samples[-1]
            # stop mid-cycle once both minimums are met (the estimate may be off)
            if len(samples) >= budget.min_reps and total >= budget.min_time_s * 1e3:
                break
        estimate = statistics.median(samples)
    stats = summarize(samples)
    stats.update(noisy=is_noisy(stats), min_time_reached=stats["total_s"] >= budget.min_time_s,
                 warmup_calls=len(warm), warmup_s=warmup_s,
                 sampling_wall_s=time.perf_counter() - start,
                 **rotation.describe())
    stats["scrubs"] = rotation.scrubs - scrubs_before
    return stats


def median_ms(call: Callable[[int], object], n_sets: int, device: torch.device,
              budget: Budget) -> float:
    """Median milliseconds of `call` over n_sets sets, warm (no cache handling)."""
    return measure(call, warm_rotation(n_sets), device, budget)["median_ms"]


def peak_memory_mib(call: Callable[[int], object], device: torch.device,
                    rotation: Rotation | None = None,
                    setup: Callable[[list[int]], None] | None = None) -> float | None:
    """Extra device memory one call needs at its peak, in MiB (None on CPU).

    The allocator's peak during the call minus what was allocated before it
    (inputs, and for a backward the forward's saved tensors, are excluded).
    """
    if device.type != "cuda":
        return None
    (i,) = rotation.take(1) if rotation is not None else (0,)
    if setup is not None:
        setup([i])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = call(i)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - before) / (1 << 20)
