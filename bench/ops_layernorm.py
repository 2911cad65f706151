"""The layernorm part: layer_norm, rms_norm, add_layer_norm, add_rms_norm.

Bytes moved (M rows, N hidden, e bytes per element; the minimum any
implementation must move, so GB/s compares them fairly with the copy):
  fwd       read x (and residual), weight (and bias); write y
  bwd       read dy, the normalized input h, weight, the fp32 row statistics
            (mean and rstd; RMS norm only rstd); write dh (which is both dx
            and dresidual), dweight (and dbias)
  fwd+bwd   forward with training outputs (h when a residual is added, the
            statistics), then the backward
"""

from __future__ import annotations

import torch

from . import backends, peers
from .peers import Impl
from .runner import MODES, Case, Context, Part, run_cases, steps_of

EPS = 1e-5
# The fp64 truth of the gate is computed over at most this many elements at a time.
GATE_CHUNK = 1 << 24


def _bytes(s: dict, e: int) -> dict[str, float]:
    M, N = s["rows"], s["hidden"]
    is_add, is_rms = s["norm"].startswith("add_"), s["norm"].endswith("rms_norm")
    params = N * e * (1 if is_rms else 2)            # weight (and bias)
    stats = M * 4 * (1 if is_rms else 2)             # rstd (and mean), fp32
    fwd = (2 if is_add else 1) * M * N * e + params + M * N * e
    bwd = 2 * M * N * e + N * e + stats + M * N * e + params
    train_fwd = fwd + stats + (M * N * e if is_add else 0)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": train_fwd + bwd}


def _make_inputs(s: dict, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(1000 + seed)
    M, N = s["rows"], s["hidden"]
    is_add, is_rms = s["norm"].startswith("add_"), s["norm"].endswith("rms_norm")

    def randn(*size, scale=1.0, shift=0.0):
        t = torch.randn(*size, generator=g, device=device, dtype=torch.float32) * scale + shift
        return t.to(dtype).requires_grad_()
    return {"x": randn(M, N), "residual": randn(M, N) if is_add else None,
            "weight": randn(N, scale=0.1, shift=1.0),
            "bias": None if is_rms else randn(N, scale=0.1), "eps": EPS}


def _fastattn_impl(norm: str, backend: str) -> Impl:
    import fastattn

    def run(inp):
        x, res, w, b = inp["x"], inp["residual"], inp["weight"], inp["bias"]
        if norm == "layer_norm":
            return fastattn.layer_norm(x, x.shape[-1:], w, b, EPS, backend=backend)
        if norm == "rms_norm":
            return fastattn.rms_norm(x, x.shape[-1:], w, EPS, backend=backend)
        if norm == "add_layer_norm":
            return fastattn.add_layer_norm(x, res, w, b, EPS, backend=backend)
        return fastattn.add_rms_norm(x, res, w, EPS, backend=backend)
    return Impl(f"fastattn[{backend}]", run, fastattn=True)


def _grad_names(s: dict) -> tuple[str, ...]:
    names = ("x",) + (("residual",) if s["norm"].startswith("add_") else ()) + ("weight",)
    return names + (() if s["norm"].endswith("rms_norm") else ("bias",))


def _gate(s: dict):
    """The accuracy protocol (docs/TESTING.md) over row chunks: fastattn vs the
    fp64 reference, with plain PyTorch's error in the same dtype as the
    yardstick."""
    from fastattn import reference
    from fastattn.testing import check_close
    names = _grad_names(s)
    ref_fn = getattr(reference, s["norm"])
    is_add, is_rms = s["norm"].startswith("add_"), s["norm"].endswith("rms_norm")

    def call_reference(inp):
        x, res, w, b = inp["x"], inp["residual"], inp["weight"], inp["bias"]
        if is_add:
            return ref_fn(x, res, w, EPS) if is_rms else ref_fn(x, res, w, b, EPS)
        return ref_fn(x, x.shape[-1:], w, EPS) if is_rms else ref_fn(x, x.shape[-1:], w, b, EPS)

    def gate(impl: Impl, inp: dict, with_grad: bool):
        out = impl.run(inp)
        dy = torch.randn_like(out)
        got = dict(zip(names, torch.autograd.grad(out, [inp[n] for n in names], dy))
                   ) if with_grad else {}
        out = out.detach()
        rows = max(1, GATE_CHUNK // s["hidden"])
        sums = {n: [0, 0] for n in ("weight", "bias") if n in names}  # truth, baseline
        messages = []
        for start in range(0, s["rows"], rows):
            part = {k: (v[start:start + rows] if k in ("x", "residual") and v is not None else v)
                    for k, v in inp.items()}
            versions = {}
            for kind, dtype in (("truth", torch.float64), ("baseline", None)):
                leaves = {k: (v.detach().to(dtype or v.dtype).requires_grad_()
                              if isinstance(v, torch.Tensor) else v) for k, v in part.items()}
                y = call_reference(leaves) if kind == "truth" else peers._torch_norm(
                    leaves, is_rms)
                grads = dict(zip(names, torch.autograd.grad(
                    y, [leaves[n] for n in names], dy[start:start + rows].to(y.dtype)))
                ) if with_grad else {}
                versions[kind] = (y.detach(), grads)
            checks = [("y", out[start:start + rows], versions["truth"][0],
                       versions["baseline"][0])]
            for n in names if with_grad else ():
                if n in sums:
                    sums[n][0] = sums[n][0] + versions["truth"][1][n]
                    sums[n][1] = sums[n][1] + versions["baseline"][1][n].double()
                else:
                    checks.append((f"d{n}", got[n][start:start + rows],
                                   versions["truth"][1][n], versions["baseline"][1][n]))
            for name, actual, truth, base in checks:
                ok, message = check_close(actual, truth, base, f"{name} rows {start}+")
                if not ok:
                    return False, message
                messages.append(message)
        if with_grad:
            for n, (truth, base) in sums.items():
                ok, message = check_close(got[n], truth, base.to(got[n].dtype), f"d{n}")
                if not ok:
                    return False, message
        return True, f"{len(messages)} checks passed"
    return gate


def plan(shape_list: list[dict], wanted_backends, wanted_peers, ctx: Context) -> Part | None:
    """The layernorm part over `shape_list` (None, with a note, if nothing can be timed)."""
    e = torch.empty((), dtype=ctx.dtype).element_size()
    chosen = backends.timeable("norm", wanted_backends, ctx.device, ctx.dtype, ctx.notes)
    if not chosen:
        ctx.notes.add("layernorm: no fastattn backend can be timed here; part skipped")
        return None
    # Shapes of one norm kind share their implementations (and compiled peers).
    impls = {}
    for norm in dict.fromkeys(s["norm"] for s in shape_list):
        is_add, is_rms = norm.startswith("add_"), norm.endswith("rms_norm")
        impls[norm] = [_fastattn_impl(norm, b) for b in chosen]
        impls[norm] += peers.norm_peers(wanted_peers, ctx.device, is_rms, is_add, ctx.notes)
    cases = []
    for s in shape_list:
        case = Case(
            shape=s, make_inputs=lambda seed, s=s: _make_inputs(s, ctx.device, ctx.dtype, seed),
            grad_names=_grad_names(s), work=_bytes(s, e), unit="GB/s",
            set_bytes=(2 if s["norm"].startswith("add_") else 1) * s["rows"] * s["hidden"] * e,
            gate=_gate(s), modes=tuple(m for m in MODES if m in ctx.modes), dy_like="x")
        cases.append((case, impls[s["norm"]]))
    return Part("layernorm", ctx, steps_of(cases), lambda: run_cases("layernorm", cases, ctx))
