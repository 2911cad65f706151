"""The loop every benchmark part shares: gate, then time, each implementation.

An op module (ops_layernorm, ops_attention) describes one shape as a `Case`:
how to make an input set, which inputs get gradients, how much work each
mode does, and how to check a fastattn result against the reference; its
`plan` returns a `Part` whose step count is known before anything runs
(the progress bar's total). The runner does the rest, identically for
every op:

  for each shape: one input set for the gate, and a pool of copies of
  another spanning COVER x the cache (timing.input_pool), shared by every
  implementation and mode of the shape, rotated round-robin (a Case with
  cold=False, a tiny call's, keeps its one set warm);
  for each implementation:
    fastattn backends first pass the correctness gate (FAIL: never timed);
    for each mode (fwd, bwd, fwd+bwd): timing.measure (warm-up, samples,
    median and spread) over the rotating sets, peak memory, throughput,
    fraction of the ceiling -> one row.

Modes: fwd runs under torch.no_grad (inference); bwd times only
torch.autograd.grad of outputs computed (untimed) before the first use of
each set, kept with retain_graph and reused when the set comes round again;
fwd+bwd times both together. The output gradient of each set is part of the set
(key "_dy"), so it is rotated, and cold, like the inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import ceilings, shapes, timing
from .peers import Impl

MODES = ("fwd", "bwd", "fwd+bwd")
# Work per second -> the reported unit.
UNIT_SCALE = {"TFLOP/s": 1e12, "GB/s": 1e9, "tokens/s": 1.0, "calls/s": 1.0}


@dataclass
class Case:
    shape: dict
    make_inputs: Callable[[int], dict]        # seed -> one input set
    grad_names: tuple[str, ...]               # inputs that receive gradients
    work: dict[str, float]                    # mode -> FLOPs, bytes or tokens
    unit: str                                 # a key of UNIT_SCALE
    set_bytes: int                            # bytes of one input set (informative)
    gate: Callable[[Impl, dict, bool], tuple[bool, str]]  # impl, inputs, check grads
    modes: tuple[str, ...] = MODES
    dy_like: Optional[str] = None             # the input the output's shape and dtype match
    cold: bool = True                         # False: one input set, timed warm (tiny calls)


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    budget: timing.Budget
    ceilings: dict
    progress: object                          # report.Progress
    deadline: float = float("inf")            # time.monotonic() after which no shape starts
    modes: tuple[str, ...] = MODES            # the modes asked for (--modes)
    notes: set[str] = field(default_factory=set)


@dataclass
class Part:
    """One part (op) in one dtype, planned: `steps` progress steps (one per
    implementation, shape and mode), done by `run()`."""
    op: str
    ctx: Context
    steps: int
    run: Callable[[], list[dict]]


def steps_of(cases: list[tuple[Case, list[Impl]]]) -> int:
    return sum(len(c.modes) * len(impls) for c, impls in cases)


def _row(case: Case, impl: Impl, mode: str, ctx: Context, status: str, message: str = "",
         stats: dict | None = None, peak: float | None = None) -> dict:
    s = case.shape
    ms = stats["median_ms"] if stats else None
    row = {"op": s["op"], "shape": s, "label": shapes.label(s), "family": s["family"],
           "x": s["x"], "mode": mode, "dtype": ceilings.dtype_name(ctx.dtype),
           "impl": impl.name, "fastattn": impl.fastattn, "status": status,
           "message": message, "ms": ms, "timing": stats, "noisy": None,
           "work": case.work[mode], "unit": case.unit, "throughput": None,
           "ceiling_fraction": None, "above_ceiling": None, "peak_mib": peak}
    if ms:
        row["noisy"] = bool(stats.get("noisy"))
        row["throughput"] = case.work[mode] / (ms * 1e-3) / UNIT_SCALE[case.unit]
        if case.unit == "TFLOP/s":
            row["ceiling_fraction"] = row["throughput"] / ceilings.matmul_ceiling(ctx.ceilings,
                                                                                  ctx.dtype)
        elif case.unit == "GB/s":
            row["ceiling_fraction"] = row["throughput"] / ctx.ceilings["copy_GBps"]
        if row["ceiling_fraction"] is not None:
            row["above_ceiling"] = row["ceiling_fraction"] > 1.0
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _timed_call(impl: Impl, mode: str, prepared: list[dict], case: Case):
    """(call, setup): the function of the input-set index one sample runs, and
    the untimed setup of the sets about to be timed (None: nothing to do)."""
    if mode == "fwd":
        def call(i):
            with torch.no_grad():
                return impl.run(prepared[i])
        return call, None

    def grads_of(i, out):
        inputs = [prepared[i][n] for n in case.grad_names]
        return torch.autograd.grad(out, inputs, prepared[i]["_dy"], retain_graph=(mode == "bwd"))

    if mode == "bwd":
        outs: dict[int, torch.Tensor] = {}

        def setup(indices):
            """Forwards of the sets about to be timed that have none yet (a
            graph is kept, retain_graph, and reused once its set comes round
            again, cold by then); returns how many sets it touched."""
            missing = [i for i in indices if i not in outs]
            for i in missing:
                outs[i] = impl.run(prepared[i])
            return len(missing)
        return (lambda i: grads_of(i, outs[i])), setup
    return (lambda i: grads_of(i, impl.run(prepared[i]))), None


def _pool(case: Case, ctx: Context, needs_grad: bool):
    base = case.make_inputs(1)
    if needs_grad and case.dy_like:
        like = base[case.dy_like]
        g = torch.Generator(device=ctx.device).manual_seed(4242)
        base["_dy"] = torch.randn(like.shape, generator=g, device=ctx.device,
                                  dtype=torch.float32).to(like.dtype)
    if not case.cold:
        return [base], timing.warm_rotation(1)
    return timing.input_pool(base, ctx.device)


def run_case(case: Case, impls: list[Impl], ctx: Context) -> list[dict]:
    rows = []
    needs_grad = any(m != "fwd" for m in case.modes)
    gate_inputs = None
    sets, rotation = _pool(case, ctx, needs_grad)
    for impl in impls:
        why = impl.limit(case.shape) if impl.limit else ""
        if why:
            rows += [_row(case, impl, m, ctx, "skipped", why) for m in case.modes]
            ctx.progress.advance(len(case.modes))
            continue
        if impl.fastattn:
            ctx.progress.step(f"{impl.name} {shapes.label(case.shape)} check")
            try:
                if gate_inputs is None:  # its own set: the gate's traffic leaves the pool cold
                    gate_inputs = case.make_inputs(0)
                ok, message = case.gate(impl, gate_inputs, needs_grad)
                status = "ok" if ok else "FAIL"  # FAIL: a wrong result
            except Exception as exc:  # e.g. a shape the backend refuses
                status, message = "error", _first_line(exc)
            if status != "ok":
                rows += [_row(case, impl, m, ctx, status, message) for m in case.modes]
                ctx.progress.advance(len(case.modes))
                continue
        try:
            prepared = [impl.prepare(s) if impl.prepare else s for s in sets]
        except Exception as exc:
            rows += [_row(case, impl, m, ctx, "error", _first_line(exc)) for m in case.modes]
            ctx.progress.advance(len(case.modes))
            continue
        for mode in case.modes:
            if mode != "fwd" and impl.no_backward:
                rows.append(_row(case, impl, mode, ctx, "skipped", impl.no_backward))
                ctx.progress.advance(1)
                continue
            ctx.progress.step(f"{impl.name} {shapes.label(case.shape)} {mode}")
            try:
                call, setup = _timed_call(impl, mode, prepared, case)
                stats = timing.measure(call, rotation, ctx.device, ctx.budget, setup)
                peak = timing.peak_memory_mib(call, ctx.device, rotation, setup)
                rows.append(_row(case, impl, mode, ctx, "ok", stats=stats, peak=peak))
            except Exception as exc:
                rows.append(_row(case, impl, mode, ctx, "error", _first_line(exc)))
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            ctx.progress.advance(1)
        del prepared
    del sets
    return rows


def run_cases(op: str, cases: list[tuple[Case, list[Impl]]], ctx: Context) -> list[dict]:
    """Every (case, its implementations) in order until ctx.deadline; notes
    how many were left out (and moves the progress bar past their steps).
    Grids list whole families first, so a run cut short by its budget still
    has complete curves."""
    rows = []
    for n, (case, impls) in enumerate(cases):
        if time.monotonic() > ctx.deadline:
            ctx.notes.add(f"{op}: {len(cases) - n} of {len(cases)} shapes not run "
                          "(time budget, --max-minutes)")
            ctx.progress.advance(steps_of(cases[n:]))
            break
        rows += run_case(case, impls, ctx)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
