"""The per-call part: what one tiny call of each op family costs, against torch.

At these sizes the arithmetic is a few hundred nanoseconds; what is timed
is the call itself (argument checks, backend choice, dispatch, autograd
bookkeeping, allocations). Each family against the torch call a user would
otherwise make:
  attention (1,2,16,32)  fastattn.attention vs F.scaled_dot_product_attention
  layer_norm (8,64)      fastattn.layer_norm vs F.layer_norm
  rms_norm (8,64)        fastattn.rms_norm vs F.rms_norm
  add_layer_norm (8,64)  fastattn.add_layer_norm vs x + residual, then F.layer_norm
inference (`fwd`, under torch.no_grad) and forward+backward (`fwd+bwd`).
Reported in microseconds per call, and each fastattn row's time over the
torch row's (`ratio`; goal <= GOAL, 1.5x).

Timed like every row (timing.measure: warm-up, samples to a minimum time
and count, median and spread; the cap on the count raised to MAX_REPS so
microsecond calls reach the minimum time), but warm, as ceilings and models are: a
few KiB of inputs rotated past the last-level cache would only add a
scrub of twice that cache every 1024 calls, and a per-call cost is not a
memory cost. On a CPU with one thread (torch.set_num_threads(1), as the
one-thread ceilings run): tiny ops never split over threads, and a busy
core elsewhere must not decide the figure. The gate is the attention and
norm parts' own (fp64 reference, plain PyTorch's error as the yardstick).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from . import backends, ceilings, ops_attention, ops_layernorm, peers
from .peers import Impl
from .runner import Case, Context, Part, run_cases, steps_of

GOAL = 1.5
MAX_REPS = 100000             # samples at most (the timing budget's cap, raised)
MODES = ("fwd", "fwd+bwd")
FAMILY = {"attention": "attention", "layer_norm": "norm", "rms_norm": "norm",
          "add_layer_norm": "norm"}


def inner_shape(s: dict) -> dict:
    """The attention or layernorm part's shape the tiny call is."""
    if s["kind"] == "attention":
        B, H, L, D = s["size"]
        return {"op": "attention", "B": B, "Hq": H, "Hkv": H, "Lq": L, "Lk": L, "D": D,
                "causal": False, "pad": 0.0}
    rows, hidden = s["size"]
    return {"op": "layernorm", "norm": s["kind"], "rows": rows, "hidden": hidden}


def _sdpa(inp):
    return F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"])


def _impls(s: dict, chosen: list[str], ctx: Context) -> list[Impl]:
    if s["kind"] == "attention":
        return [ops_attention._fastattn_impl(b) for b in chosen] + [Impl("torch sdpa", _sdpa)]
    is_add, is_rms = s["kind"].startswith("add_"), s["kind"].endswith("rms_norm")
    return ([ops_layernorm._fastattn_impl(s["kind"], b) for b in chosen]
            + peers.norm_peers(("torch",), ctx.device, is_rms, is_add, ctx.notes))


def _set_bytes(s: dict, e: int) -> int:
    if s["kind"] == "attention":
        B, H, L, D = s["size"]
        return 3 * B * H * L * D * e
    rows, hidden = s["size"]
    return (2 if s["kind"].startswith("add_") else 1) * rows * hidden * e


def add_ratios(rows: list[dict]) -> None:
    """Each fastattn row's time over the torch row of its shape and mode."""
    torch_rows = {(r["label"], r["mode"], r["dtype"]): r for r in rows
                  if r["op"] == "percall" and not r["fastattn"] and r["ms"]}
    for r in rows:
        peer = torch_rows.get((r["label"], r["mode"], r["dtype"]))
        if r["op"] == "percall" and r["fastattn"] and r["ms"] and peer:
            r["ratio"] = {"what": f"vs {peer['impl']}", "value": r["ms"] / peer["ms"],
                          "goal": GOAL, "peer_us": peer["ms"] * 1e3}


def plan(shape_list: list[dict], wanted_backends, ctx: Context) -> Part | None:
    """The per-call part (None, with a note, if nothing can be timed)."""
    e = torch.empty((), dtype=ctx.dtype).element_size()
    modes = tuple(m for m in MODES if m in ctx.modes)
    chosen = {f: backends.timeable(f, wanted_backends, ctx.device, ctx.dtype, ctx.notes)
              for f in ("attention", "norm")}
    cases = []
    for s in shape_list:
        if not chosen[FAMILY[s["kind"]]]:
            ctx.notes.add(f"percall {s['kind']}: no fastattn backend can be timed here; "
                          "left out")
            continue
        inner = inner_shape(s)
        if s["kind"] == "attention":
            make = ops_attention._make_inputs
            gate, grads, like = ops_attention._gate(inner), ("q", "k", "v"), "q"
        else:
            make = ops_layernorm._make_inputs
            gate, grads, like = ops_layernorm._gate(inner), ops_layernorm._grad_names(inner), "x"
        case = Case(
            shape=s, make_inputs=lambda seed, m=make, i=inner: m(i, ctx.device, ctx.dtype, seed),
            grad_names=grads, work={m: 1.0 for m in MODES}, unit="calls/s",
            set_bytes=_set_bytes(s, e), gate=gate, modes=modes, dy_like=like, cold=False)
        cases.append((case, _impls(s, chosen[FAMILY[s["kind"]]], ctx)))
    cases = [(c, i) for c, i in cases if c.modes]
    if not cases:
        return None

    def run():
        # Microsecond calls: enough samples to reach the minimum time.
        c = dataclasses.replace(ctx, budget=dataclasses.replace(
            ctx.budget, max_reps=max(ctx.budget.max_reps, MAX_REPS)))
        if c.device.type == "cpu":
            c.notes.add("percall: timed with one CPU thread (torch.set_num_threads(1)), warm")
            with ceilings._threads(1):
                rows = run_cases("percall", cases, c)
        else:
            rows = run_cases("percall", cases, c)
        add_ratios(rows)
        return rows
    return Part("percall", ctx, steps_of(cases), run)
