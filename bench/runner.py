"""The loop every benchmark part shares: gate, then time, each implementation.

An op module (ops_layernorm, ops_attention) describes one shape as a `Case`:
how to make an input set, which inputs get gradients, how much work each
mode does, and how to check a fastattn result against the reference. The
runner does the rest, identically for every op:

  for each shape, for each implementation:
    fastattn backends first pass the correctness gate (FAIL: never timed);
    for each mode (fwd, bwd, fwd+bwd): median time over rotating input
    sets, peak memory, throughput, fraction of the ceiling -> one row.

Modes: fwd runs under torch.no_grad (inference); bwd times only
torch.autograd.grad of an output computed beforehand (retain_graph, so the
same graph is reused); fwd+bwd times both together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import ceilings, shapes, timing
from .peers import Impl

MODES = ("fwd", "bwd", "fwd+bwd")
# Work per second -> the reported unit.
UNIT_SCALE = {"TFLOP/s": 1e12, "GB/s": 1e9, "tokens/s": 1.0}


@dataclass
class Case:
    shape: dict
    make_inputs: Callable[[int], dict]        # seed -> one input set
    grad_names: tuple[str, ...]               # inputs that receive gradients
    work: dict[str, float]                    # mode -> FLOPs, bytes or tokens
    unit: str                                 # a key of UNIT_SCALE
    set_bytes: int                            # bytes of one input set (for L2 rotation)
    gate: Callable[[Impl, dict, bool], tuple[bool, str]]  # impl, inputs, check grads
    modes: tuple[str, ...] = MODES


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


def _row(case: Case, impl: Impl, mode: str, ctx: Context, status: str, message: str = "",
         ms: float | None = None, peak: float | None = None) -> dict:
    s = case.shape
    row = {"op": s["op"], "shape": s, "label": shapes.label(s), "family": s["family"],
           "x": s["x"], "mode": mode, "dtype": ceilings.dtype_name(ctx.dtype),
           "impl": impl.name, "fastattn": impl.fastattn, "status": status,
           "message": message, "ms": ms, "work": case.work[mode], "unit": case.unit,
           "throughput": None, "ceiling_fraction": None, "peak_mib": peak}
    if ms:
        row["throughput"] = case.work[mode] / (ms * 1e-3) / UNIT_SCALE[case.unit]
        if case.unit == "TFLOP/s":
            row["ceiling_fraction"] = row["throughput"] / ceilings.matmul_ceiling(ctx.ceilings,
                                                                                  ctx.dtype)
        elif case.unit == "GB/s":
            row["ceiling_fraction"] = row["throughput"] / ctx.ceilings["copy_GBps"]
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _timed_call(impl: Impl, mode: str, prepared: list[dict], case: Case, dys: dict):
    """The function of the input-set index that one repetition runs."""
    if mode == "fwd":
        def call(i):
            with torch.no_grad():
                return impl.run(prepared[i])
        return call

    def grads_of(i, out):
        if i not in dys:
            dys[i] = torch.randn_like(out)
        inputs = [prepared[i][n] for n in case.grad_names]
        return torch.autograd.grad(out, inputs, dys[i], retain_graph=(mode == "bwd"))

    if mode == "bwd":
        outs = [impl.run(p) for p in prepared]
        return lambda i: grads_of(i, outs[i])
    return lambda i: grads_of(i, impl.run(prepared[i]))


def run_case(case: Case, impls: list[Impl], ctx: Context) -> list[dict]:
    rows = []
    n_sets = timing.n_input_sets(ctx.device, case.set_bytes)
    sets = [case.make_inputs(seed) for seed in range(n_sets)]
    needs_grad = any(m != "fwd" for m in case.modes)
    dys: dict[int, torch.Tensor] = {}
    for impl in impls:
        why = impl.limit(case.shape) if impl.limit else ""
        if why:
            rows += [_row(case, impl, m, ctx, "skipped", why) for m in case.modes]
            ctx.progress.advance(len(case.modes))
            continue
        if impl.fastattn:
            ctx.progress.step(f"{impl.name} {shapes.label(case.shape)} check")
            try:
                ok, message = case.gate(impl, sets[0], needs_grad)
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
                call = _timed_call(impl, mode, prepared, case, dys)
                ms = timing.median_ms(call, n_sets, ctx.device, ctx.budget)
                peak = timing.peak_memory_mib(call, ctx.device)
                rows.append(_row(case, impl, mode, ctx, "ok", ms=ms, peak=peak))
            except Exception as exc:
                rows.append(_row(case, impl, mode, ctx, "error", _first_line(exc)))
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            ctx.progress.advance(1)
        del prepared
    return rows


def run_cases(op: str, cases: list[tuple[Case, list[Impl]]], ctx: Context) -> list[dict]:
    """Every (case, its implementations) in order until ctx.deadline; notes
    how many were left out. Grids list whole families first, so a run cut
    short by its budget still has complete curves."""
    rows = []
    for n, (case, impls) in enumerate(cases):
        if time.monotonic() > ctx.deadline:
            ctx.notes.add(f"{op}: {len(cases) - n} of {len(cases)} shapes not run "
                          "(time budget, --max-minutes)")
            break
        rows += run_case(case, impls, ctx)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
