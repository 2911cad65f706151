"""The uneven-padding part: does attention's time follow the work its lengths leave?

A padded batch whose rows have uneven lengths (queries and keys alike, as
in a padded encoder batch) through `fastattn.attention(q, k, v,
q_lengths=..., kv_lengths=...)` ("padded", int32 lengths) and the same
tokens packed through `fastattn.attention_varlen` ("varlen", int32
cu_seqlens prefix sums, max_seqlen the longest row), forward and
forward+backward.

The yardstick of each row is its work-proportional time: the time of the
unpadded call of the same API (every length L, the first shape of each
family) scaled by the valid fraction of the score matrix,
sum(q_len * kv_len) / (B * L * L). A kernel that skips padded work
exactly runs in that time (ratio 1); one whose cost follows the longest
row, or the first, or that pays for repacking, shows a ratio above 1.
Goal: <= GOAL (1.1x). The ratio goes into the row (`ratio`) and into the
summary the report prints after the tables.

FLOPs: 4 * D * H * sum(len^2) forward, 3.5x that forward+backward (as the
attention part counts them). The gate compares every output and gradient
with fastattn.reference in fp64 (the padded API by the attention part's
gate; the packed one against reference.attention_varlen, with eager
PyTorch on the padded equivalent as the yardstick).
"""

from __future__ import annotations

import torch

from . import backends, ops_attention, peers
from .peers import Impl
from .runner import Case, Context, Part, run_cases, steps_of

GOAL = 1.1
MODES = ("fwd", "fwd+bwd")


def valid_fraction(s: dict) -> float:
    """Valid share of the B x L x L score matrix (queries and keys share the lengths)."""
    return sum(n * n for n in s["lengths"]) / (s["B"] * s["Lq"] * s["Lk"])


def is_unpadded(s: dict) -> bool:
    return all(n == s["Lq"] for n in s["lengths"])


def _work(s: dict) -> dict[str, float]:
    fwd = 4.0 * s["D"] * s["Hq"] * sum(n * n for n in s["lengths"])
    return {"fwd": fwd, "fwd+bwd": 3.5 * fwd}


def cu_seqlens(lengths: list[int], device: torch.device) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def positions(lengths: list[int], L: int, device: torch.device) -> torch.Tensor:
    """Flat index b * L + i of every valid token (the packed order)."""
    return torch.cat([b * L + torch.arange(n, device=device) for b, n in enumerate(lengths)])


def pack(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (tokens, H, D): the valid tokens, batch row after batch row."""
    B, H, L, D = t.shape
    return t.transpose(1, 2).reshape(B * L, H, D)[pos]


def unpack(t: torch.Tensor, pos: torch.Tensor, B: int, L: int) -> torch.Tensor:
    """(tokens, H, D) -> (B, H, L, D), zeros at the padded positions (differentiable)."""
    full = t.new_zeros((B * L, *t.shape[1:])).index_put((pos,), t)
    return full.view(B, L, *t.shape[1:]).transpose(1, 2)


def _make_inputs(s: dict, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(5000 + seed)
    B, H, L, D = s["B"], s["Hq"], s["Lq"], s["D"]
    lens = torch.tensor(s["lengths"], dtype=torch.int32, device=device)
    padded = {}
    for name in ("q", "k", "v"):
        t = torch.randn(B, H, L, D, generator=g, device=device, dtype=torch.float32)
        padded[name] = t.to(dtype)
    if s["api"] == "padded":
        return {**{n: t.requires_grad_() for n, t in padded.items()},
                "q_lengths": lens, "kv_lengths": lens.clone(), "causal": False,
                "scale": D ** -0.5}
    pos = positions(s["lengths"], L, device)
    return {**{n: pack(t, pos).contiguous().requires_grad_() for n, t in padded.items()},
            "cu_seqlens": cu_seqlens(s["lengths"], device), "max_seqlen": max(s["lengths"]),
            "scale": D ** -0.5}


def _varlen_impl(backend: str) -> Impl:
    import fastattn

    def run(inp):
        cu, m = inp["cu_seqlens"], inp["max_seqlen"]
        return fastattn.attention_varlen(inp["q"], inp["k"], inp["v"], cu, cu, m, m,
                                         scale=inp["scale"], backend=backend)
    return Impl(f"fastattn[{backend}]", run, fastattn=True)


def _varlen_gate(s: dict):
    """fastattn.attention_varlen vs reference.attention_varlen in fp64, with
    eager PyTorch on the padded equivalent (in the input dtype) as the
    yardstick; out, dq, dk, dv."""
    from fastattn import reference
    from fastattn.testing import check_close
    B, L = s["B"], s["Lq"]

    def gate(impl: Impl, inp: dict, with_grad: bool):
        out = impl.run(inp)
        dout = torch.randn_like(out)
        names = ("q", "k", "v")
        grads = torch.autograd.grad(out, [inp[n] for n in names], dout) if with_grad else ()
        pos = positions(s["lengths"], L, out.device)
        lens = torch.tensor(s["lengths"], dtype=torch.int32, device=out.device)
        results = {}
        for kind, dtype in (("truth", torch.float64), ("baseline", None)):
            leaves = [inp[n].detach().to(dtype or inp[n].dtype).requires_grad_() for n in names]
            if kind == "truth":
                cu = inp["cu_seqlens"]
                y = reference.attention_varlen(*leaves, cu, cu, inp["max_seqlen"],
                                               inp["max_seqlen"], scale=inp["scale"])
            else:
                padded = dict(zip(names, (unpack(t, pos, B, L) for t in leaves)),
                              q_lengths=lens, kv_lengths=lens, causal=False, scale=inp["scale"])
                y = pack(peers.eager_attention(peers._with_mask(padded)), pos)
            results[kind] = (y.detach(), torch.autograd.grad(y, leaves, dout.to(y.dtype))
                             if with_grad else ())
        checks = [("out", out.detach(), results["truth"][0], results["baseline"][0])]
        for n, name in enumerate(names if with_grad else ()):
            checks.append((f"d{name}", grads[n], results["truth"][1][n],
                           results["baseline"][1][n]))
        for name, actual, truth, base in checks:
            ok, message = check_close(actual, truth, base, name)
            if not ok:
                return False, message
        return True, f"{len(checks)} checks passed"
    return gate


def add_ratios(rows: list[dict]) -> None:
    """Each timed row's time over its work-proportional time: the unpadded
    row of the same API, implementation, mode, size and dtype, scaled by
    the row's valid fraction (`ratio`; none where that row is missing)."""
    def key(r):
        s = r["shape"]
        return (s["api"], s["B"], s["Hq"], s["Lq"], s["D"], r["impl"], r["mode"], r["dtype"])
    base = {key(r): r for r in rows if r["op"] == "uneven" and r["ms"]
            and is_unpadded(r["shape"])}
    for r in rows:
        if r["op"] != "uneven" or not r["ms"] or key(r) not in base:
            continue
        fraction = valid_fraction(r["shape"])
        expected = base[key(r)]["ms"] * fraction
        r["ratio"] = {"what": "work-proportional", "value": r["ms"] / expected,
                      "goal": GOAL, "expected_ms": expected, "valid_fraction": fraction}


def plan(shape_list: list[dict], wanted_backends, ctx: Context) -> Part | None:
    """The uneven-padding part (None, with a note, if nothing can be timed)."""
    import fastattn
    if not hasattr(fastattn, "attention_varlen"):
        ctx.notes.add("uneven: fastattn.attention_varlen is not available in this build; "
                      "part skipped")
        return None
    chosen = backends.timeable("attention", wanted_backends, ctx.device, ctx.dtype, ctx.notes)
    if not chosen:
        ctx.notes.add(f"uneven: no fastattn attention backend can be timed on "
                      f"{ctx.device.type}; part skipped")
        return None
    impls = {"padded": [ops_attention._fastattn_impl(b) for b in chosen],
             "varlen": [_varlen_impl(b) for b in chosen]}
    e = torch.empty((), dtype=ctx.dtype).element_size()
    modes = tuple(m for m in MODES if m in ctx.modes)
    cases = []
    for s in shape_list:
        tokens = sum(s["lengths"]) if s["api"] == "varlen" else s["B"] * s["Lq"]
        case = Case(
            shape=s, make_inputs=lambda seed, s=s: _make_inputs(s, ctx.device, ctx.dtype, seed),
            grad_names=("q", "k", "v"), work=_work(s), unit="TFLOP/s",
            set_bytes=3 * tokens * s["Hq"] * s["D"] * e,
            gate=ops_attention._gate(s) if s["api"] == "padded" else _varlen_gate(s),
            modes=modes, dy_like="q")
        cases.append((case, impls[s["api"]]))
    cases = [(c, i) for c, i in cases if c.modes]
    if not cases:
        return None

    def run():
        rows = run_cases("uneven", cases, ctx)
        add_ratios(rows)
        return rows
    return Part("uneven", ctx, steps_of(cases), run)
