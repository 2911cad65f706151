"""The attention, cross and decode parts (fastattn.attention against peers).

FLOPs (attention, cross): 4 * D * Hq * (pairs that may attend) for the
forward (two matmuls of 2 FLOPs per multiply-add), 2.5x that for the
backward (five matmuls instead of two), 3.5x for both. Pairs are counted
exactly from the lengths and the causal mask, so a padded or causal shape
is credited only with useful work; every implementation gets the same
count, and one that computes masked pairs anyway shows a lower figure.

Bytes (decode, one query per sequence over a KV cache): the valid keys and
values read once, q read once, the output written once; reported in GB/s
against the copy bandwidth, since decoding is bound by reading the cache.

Padding: `pad` is the fraction of padded tokens. Lengths fall linearly over
the batch from L to L*(1 - 2*pad) (at least 1), so their mean is L*(1-pad);
self-attention pads queries and keys alike (a padded encoder batch),
cross-attention and decoding pad keys only.
"""

from __future__ import annotations

import torch

from . import backends, peers
from .peers import Impl
from .runner import Case, Context, Part, run_cases, steps_of

# The gate's fp64 truth covers the whole call when its scores fit in this
# many bytes; otherwise the first and last (batch, key-head group) slices,
# which the kernel computes independently of the others.
GATE_FULL_BYTES = 256 << 20


def lengths(L: int, B: int, pad: float) -> list[int]:
    if not pad:
        return [L] * B
    low = L * (1.0 - 2.0 * pad)
    if B == 1:
        return [max(1, round(L * (1.0 - pad)))]
    return [max(1, round(L - (L - low) * b / (B - 1))) for b in range(B)]


def _length_lists(s: dict) -> tuple[list[int] | None, list[int] | None]:
    """(q lengths, kv lengths), None where nothing is padded."""
    if not s["pad"]:
        return None, None
    kv = lengths(s["Lk"], s["B"], s["pad"])
    q = lengths(s["Lq"], s["B"], s["pad"]) if s["op"] == "attention" and s["Lq"] == s["Lk"] else None
    return q, kv


def pairs(s: dict) -> int:
    """Number of (query, key) pairs that may attend, over the batch, per head."""
    q_lens, kv_lens = _length_lists(s)
    total = 0
    for b in range(s["B"]):
        lq = q_lens[b] if q_lens else s["Lq"]
        lk = kv_lens[b] if kv_lens else s["Lk"]
        if not s["causal"]:
            total += lq * lk
            continue
        # query i sees keys j <= i + (lk - lq), clipped to [0, lk)
        i = torch.arange(lq, dtype=torch.int64)
        total += int((i + (lk - lq) + 1).clamp(0, lk).sum())
    return total


def _work(s: dict, e: int) -> tuple[dict[str, float], str]:
    if s["op"] == "decode":
        _, kv_lens = _length_lists(s)
        keys = sum(kv_lens) if kv_lens else s["B"] * s["Lk"]
        kv_bytes = 2 * keys * s["Hkv"] * s["D"] * e
        qo_bytes = 2 * s["B"] * s["Hq"] * s["Lq"] * s["D"] * e
        return {"fwd": kv_bytes + qo_bytes}, "GB/s"
    fwd = 4.0 * s["D"] * s["Hq"] * pairs(s)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}, "TFLOP/s"


def _make_inputs(s: dict, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(2000 + seed)

    def randn(*size):
        t = torch.randn(*size, generator=g, device=device, dtype=torch.float32)
        return t.to(dtype).requires_grad_()
    q_lens, kv_lens = _length_lists(s)

    def as_tensor(values):
        return None if values is None else torch.tensor(values, dtype=torch.int32, device=device)
    return {"q": randn(s["B"], s["Hq"], s["Lq"], s["D"]),
            "k": randn(s["B"], s["Hkv"], s["Lk"], s["D"]),
            "v": randn(s["B"], s["Hkv"], s["Lk"], s["D"]),
            "q_lengths": as_tensor(q_lens), "kv_lengths": as_tensor(kv_lens),
            "causal": s["causal"], "scale": s["D"] ** -0.5}


def _fastattn_impl(backend: str) -> Impl:
    import fastattn

    def run(inp):
        return fastattn.attention(inp["q"], inp["k"], inp["v"], causal=inp["causal"],
                                  q_lengths=inp["q_lengths"], kv_lengths=inp["kv_lengths"],
                                  scale=inp["scale"], backend=backend)
    return Impl(f"fastattn[{backend}]", run, fastattn=True)


def _slices(s: dict) -> list[tuple[slice, slice, slice]]:
    """(batch, query heads, key heads) slices the gate compares."""
    every = (slice(None), slice(None), slice(None))
    if s["B"] * s["Hq"] * s["Lq"] * s["Lk"] * 8 <= GATE_FULL_BYTES:
        return [every]
    groups = s["Hq"] // s["Hkv"]
    out = []
    for b, hk in dict.fromkeys(((0, 0), (s["B"] - 1, s["Hkv"] - 1))):
        out.append((slice(b, b + 1), slice(hk * groups, (hk + 1) * groups), slice(hk, hk + 1)))
    return out


def _gate(s: dict):
    """The accuracy protocol (docs/TESTING.md): fastattn vs fastattn.reference
    in fp64, with eager PyTorch's error in the same dtype as the yardstick;
    forward and dq/dk/dv."""
    from fastattn import reference
    from fastattn.testing import check_close

    def gate(impl: Impl, inp: dict, with_grad: bool):
        out = impl.run(inp)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, [inp["q"], inp["k"], inp["v"]], dout) if with_grad else ()
        checks = 0
        for bs, hqs, hks in _slices(s):
            part = dict(inp, q=inp["q"][bs, hqs], k=inp["k"][bs, hks], v=inp["v"][bs, hks],
                        q_lengths=None if inp["q_lengths"] is None else inp["q_lengths"][bs],
                        kv_lengths=None if inp["kv_lengths"] is None else inp["kv_lengths"][bs])
            results = {}
            for kind, dtype in (("truth", torch.float64), ("baseline", None)):
                leaves = {n: part[n].detach().to(dtype or part[n].dtype).requires_grad_()
                          for n in ("q", "k", "v")}
                if kind == "truth":
                    y = reference.attention(leaves["q"], leaves["k"], leaves["v"],
                                            causal=part["causal"], q_lengths=part["q_lengths"],
                                            kv_lengths=part["kv_lengths"], scale=part["scale"])
                else:
                    y = peers.eager_attention(peers._with_mask(dict(part, **leaves)))
                d = dout[bs, hqs].to(y.dtype)
                results[kind] = (y.detach(), torch.autograd.grad(
                    y, list(leaves.values()), d) if with_grad else ())
                del y
            named = [("out", out.detach()[bs, hqs], results["truth"][0], results["baseline"][0])]
            for n, (name, idx) in enumerate((("dq", hqs), ("dk", hks), ("dv", hks))):
                if with_grad:
                    named.append((name, grads[n][bs, idx], results["truth"][1][n],
                                  results["baseline"][1][n]))
            for name, actual, truth, base in named:
                ok, message = check_close(actual, truth, base, name)
                if not ok:
                    return False, message
                checks += 1
        return True, f"{checks} checks passed"
    return gate


def plan(op: str, shape_list: list[dict], wanted_backends, wanted_peers,
         ctx: Context) -> Part | None:
    """The attention, cross or decode part (None, with a note, if nothing can be timed)."""
    import fastattn
    if not hasattr(fastattn, "attention"):
        ctx.notes.add(f"{op}: fastattn.attention is not available in this build; part skipped")
        return None
    chosen = backends.timeable("attention", wanted_backends, ctx.device, ctx.dtype, ctx.notes)
    if not chosen:
        ctx.notes.add(f"{op}: no fastattn attention backend can be timed on "
                      f"{ctx.device.type}; part skipped")
        return None
    e = torch.empty((), dtype=ctx.dtype).element_size()
    impls = [_fastattn_impl(b) for b in chosen]
    impls += peers.attention_peers(wanted_peers, ctx.device, ctx.notes)
    cases = []
    for s in shape_list:
        work, unit = _work(s, e)
        cases.append(Case(
            shape=s, make_inputs=lambda seed, s=s: _make_inputs(s, ctx.device, ctx.dtype, seed),
            grad_names=("q", "k", "v"), work=work, unit=unit,
            set_bytes=(s["B"] * s["Hq"] * s["Lq"] + 2 * s["B"] * s["Hkv"] * s["Lk"]) * s["D"] * e,
            gate=_gate(s), modes=tuple(m for m in work if m in ctx.modes), dy_like="q"))
    cases = [(c, impls) for c in cases if c.modes]
    return Part(op, ctx, steps_of(cases), lambda: run_cases(op, cases, ctx))
