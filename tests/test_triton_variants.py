"""The attention variants in the Triton kernels (fastattn/triton/attention_scores.py).

Window, ALiBi, softcap and T5's relative bias, alone and combined with each
other, causal, masks, lengths, GQA, dropout, packed sequences and the
split-KV decoding path, through the launchers of fastattn/triton/attention.py
(the contract the ops layer calls). Each result is judged against
fastattn.reference on float64 copies of the same inputs with the same
Variants, by the accuracy protocol of docs/TESTING.md (helpers.assert_close):
the forward's out and lse, and dq, dk, dv, the float mask's gradient and the
relative-bias table's gradient (the kernels' per-position sums through
variants.rel_bias_grad). Also: windowed tiles are never visited (the loop
bounds against a brute-force classification, and NaN in keys no row may
attend), the relative-bias gradient is bitwise reproducible, and the kernels
with variants compile for sm_80 / sm_90.

Runs on CPU tensors under TRITON_INTERPRET=1 (or on a GPU), fp32 and fp16.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import triton
import triton.language as tl

from fastattn import _backends, reference
from fastattn.triton.attention_scores import key_tiles, query_tiles
from fastattn.ops.variants import (KernelVariants, RelativePositionBias, Variants,
                                   rel_bias_grad)

from helpers import assert_close

if torch.cuda.is_available():
    DEVICE = "cuda"
elif _backends.triton_interpret():
    DEVICE = "cpu"
else:
    DEVICE = None
pytestmark = pytest.mark.skipif(DEVICE is None,
                                reason="needs a GPU or TRITON_INTERPRET=1 for the Triton kernels")

DTYPES = [torch.float32, torch.float16]


@dataclass(frozen=True)
class VCase:
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    causal: bool = False
    window: tuple = (-1, -1)
    alibi: Optional[str] = None     # None | "h": (Hq,) | "bh": (B, Hq)
    softcap: float = 0.0
    rel: Optional[str] = None       # None | "bi" (encoder) | "uni" (decoder)
    mask: Optional[str] = None      # None | "bool" | "float_grad"
    lengths: bool = False
    dropout: float = 0.0

    def __str__(self) -> str:
        s = f"B{self.B}-H{self.Hq}x{self.Hkv}-q{self.Lq}-k{self.Lk}-d{self.D}"
        for name, on in (("causal", self.causal), (f"win{self.window}", self.window != (-1, -1)),
                         (f"alibi-{self.alibi}", self.alibi), (f"cap{self.softcap}", self.softcap),
                         (f"rel-{self.rel}", self.rel), (f"{self.mask}", self.mask),
                         ("len", self.lengths), (f"drop{self.dropout}", self.dropout)):
            if on:
                s += "-" + name
        return s.replace(" ", "")


CASES = [
    # each variant alone
    VCase(2, 2, 2, 70, 70, 16, window=(9, 4)),
    VCase(2, 2, 1, 33, 50, 32, window=(-1, 3)),
    VCase(2, 2, 2, 40, 40, 16, window=(0, 0)),
    VCase(2, 4, 2, 37, 45, 16, alibi="h"),
    VCase(2, 2, 2, 37, 45, 16, softcap=2.5),
    VCase(2, 2, 2, 37, 45, 16, rel="bi"),
    # combined
    VCase(2, 2, 2, 70, 70, 16, causal=True, window=(12, -1)),
    VCase(2, 2, 1, 45, 37, 16, causal=True, window=(3, 5)),
    VCase(2, 2, 2, 37, 45, 16, alibi="bh", mask="float_grad"),
    VCase(2, 2, 2, 37, 45, 16, softcap=5.0, rel="bi"),
    VCase(3, 4, 2, 37, 45, 16, causal=True, rel="uni", lengths=True),
    VCase(3, 2, 2, 45, 53, 16, window=(7, 2), lengths=True, mask="bool"),
    VCase(3, 4, 1, 37, 45, 16, causal=True, window=(10, -1), alibi="bh", softcap=4.0, rel="uni",
          mask="float_grad", lengths=True),
    # odd head dims
    VCase(2, 2, 1, 33, 40, 1, causal=True, window=(6, -1), alibi="h", rel="bi"),
    VCase(2, 2, 2, 33, 40, 12, window=(5, 9), softcap=3.0, rel="bi", lengths=True),
    VCase(2, 2, 2, 33, 40, 33, alibi="bh", softcap=2.0, mask="float_grad"),
]

DROPOUT_CASES = [
    VCase(2, 2, 1, 37, 45, 16, causal=True, window=(9, -1), alibi="h", softcap=3.0, rel="bi",
          dropout=0.3),
    VCase(3, 2, 2, 33, 40, 16, window=(4, 6), rel="uni", lengths=True, mask="float_grad",
          dropout=0.2),
]


# ------------------------------------------------------------------ inputs


def _lengths(B: int, L: int, g: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    if B > 2:
        lengths[-1] = 0
    return lengths


def make_inputs(case: VCase, dtype: torch.dtype, seed: int = 0) -> dict:
    """float64 tensors holding `dtype`-rounded values (and the lengths)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).double()
    inp = dict(q=rnd(case.B, case.Hq, case.Lq, case.D), k=rnd(case.B, case.Hkv, case.Lk, case.D),
               v=rnd(case.B, case.Hkv, case.Lk, case.D), mask=None, q_lengths=None,
               kv_lengths=None, slopes=None, table=None)
    if case.mask == "bool":
        inp["mask"] = torch.rand(case.B, 1, case.Lq, case.Lk, generator=g) < 0.8
    elif case.mask == "float_grad":
        inp["mask"] = rnd(1, case.Hq, case.Lq, case.Lk)
    if case.lengths:
        inp["q_lengths"] = _lengths(case.B, case.Lq, g)
        inp["kv_lengths"] = _lengths(case.B, case.Lk, g)
    if case.alibi:
        rows = case.B if case.alibi == "bh" else 1
        inp["slopes"] = torch.rand(rows, case.Hq, generator=g) * 0.5
    if case.rel:
        inp["table"] = rnd(8 if case.rel == "bi" else 6, case.Hq)
    return {n: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t) for n, t in inp.items()}


def variants_of(case: VCase, inp: dict, dtype: torch.dtype) -> Variants:
    """The call's Variants with the table in `dtype` (slopes stay float32)."""
    rel = None
    if case.rel:
        rel = RelativePositionBias(inp["table"].to(dtype), bidirectional=case.rel == "bi",
                                   max_distance=12)
    return Variants(case.window, inp["slopes"], case.softcap, rel)


def cotangents(case: VCase, lse_finite: torch.Tensor):
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(case.B, case.Hq, case.Lq, case.D, generator=g, dtype=torch.float64)
    dlse = torch.randn(case.B, case.Hq, case.Lq, generator=g, dtype=torch.float64)
    return dout.to(DEVICE), torch.where(lse_finite, dlse.to(DEVICE), 0.0)


def _cast(inp: dict, dtype: torch.dtype) -> dict:
    return {n: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point()
                and n != "slopes" else t) for n, t in inp.items()}


# ------------------------------------------------------------------ runs


def run_triton(case: VCase, inp: dict, dtype: torch.dtype, seed_t=None):
    """(out, lse, grads by name) from the launchers, in `dtype`."""
    from fastattn.triton import attention as tri
    t = _cast(inp, dtype)
    var = variants_of(case, inp, dtype)
    kv = KernelVariants.of(var, case.Lq, case.Lk, DEVICE)
    scale = case.D ** -0.5
    out, lse = tri.attention_fwd(t["q"], t["k"], t["v"], t["mask"], t["q_lengths"],
                                 t["kv_lengths"], seed_t, case.causal, scale, case.dropout,
                                 False, kv)
    dout, dlse = cotangents(case, torch.isfinite(lse))
    mask_grad = case.mask == "float_grad"
    dq, dk, dv, dmask, drel = tri.attention_bwd(
        dout.to(dtype), dlse.float(), t["q"], t["k"], t["v"], out, lse, t["mask"],
        t["q_lengths"], t["kv_lengths"], seed_t, case.causal, scale, case.dropout, mask_grad,
        False, kv, rel_grad=True)
    grads = dict(q=dq, k=dk, v=dv)
    if mask_grad:
        grads["mask"] = dmask
    if case.rel:
        assert drel.shape == (case.Hq, 2 * kv.rel_radius + 1) and drel.dtype == torch.float32
        grads["table"] = rel_bias_grad(drel, kv.rel_buckets, var.rel_bias.num_buckets)
    else:
        assert drel.shape == (0,)
    return out, lse, grads


def run_reference(case: VCase, inp: dict, dtype: torch.dtype, seed_t=None, autograd=False):
    """(out, lse, grads) of fastattn.reference computing in `dtype`
    (float64: the truth): the flash formulas of _attention_bwd, or autograd
    through _attention (`autograd`)."""
    t = _cast(inp, dtype)
    mask_grad = case.mask == "float_grad"
    names = ["q", "k", "v"] + (["mask"] if mask_grad else []) + (["table"] if case.rel else [])
    if autograd:
        t = {n: (x.detach().clone().requires_grad_() if n in names else x) for n, x in t.items()}
    var = variants_of(case, t, dtype)
    if case.rel:
        var = Variants(var.window, var.alibi_slopes, var.softcap,
                       RelativePositionBias(t["table"], bidirectional=case.rel == "bi",
                                            max_distance=12))
    scale = case.D ** -0.5
    args = (t["q"], t["k"], t["v"])
    rest = (t["mask"], t["q_lengths"], t["kv_lengths"])
    with torch.set_grad_enabled(autograd):
        out, lse = reference._attention(*args, case.causal, *rest, case.dropout, scale, seed_t,
                                        compute_dtype=dtype, variants=var)
        dout, dlse = cotangents(case, torch.isfinite(lse))
        if autograd:
            finite = torch.where(torch.isfinite(lse), lse, 0.0)
            loss = (out * dout.to(dtype)).sum() + (finite * dlse.to(lse.dtype)).sum()
            grads = dict(zip(names, torch.autograd.grad(loss, [t[n] for n in names])))
            return out.detach(), lse.detach(), grads
        dq, dk, dv, dmask, dtable = reference._attention_bwd(
            dout.to(dtype), dlse, *args, out, lse, *rest, case.causal, scale, case.dropout,
            seed_t, mask_grad=mask_grad, compute_dtype=dtype, variants=var)
    grads = dict(q=dq, k=dk, v=dv)
    if mask_grad:
        grads["mask"] = dmask
    if case.rel:
        grads["table"] = dtable
    return out, lse, grads


def check_case(case: VCase, dtype: torch.dtype):
    inp = make_inputs(case, dtype)
    seed_t = (torch.tensor([1234567], dtype=torch.int64, device=DEVICE)
              if case.dropout > 0 else None)
    out, lse, grads = run_triton(case, inp, dtype, seed_t)
    t_out, t_lse, t_grads = run_reference(case, inp, torch.float64, seed_t)
    b_out, b_lse, f_grads = run_reference(case, inp, dtype, seed_t)
    _, _, a_grads = run_reference(case, inp, dtype, seed_t, autograd=True)

    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, t_out, b_out, name="out")
    empty = t_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty), "lse: -inf rows differ"
    assert (out[empty] == 0).all()
    assert_close(torch.where(empty, 0.0, lse), torch.where(empty, 0.0, t_lse),
                 torch.where(empty, 0.0, b_lse.double()), name="lse")
    assert grads.keys() == t_grads.keys()
    for name, g in grads.items():
        truth = t_grads[name].double()
        baseline = max(f_grads[name], a_grads[name],
                       key=lambda b: (b.double() - truth).abs().max().item())
        assert g.shape == truth.shape, name
        assert not g.isnan().any(), f"grad {name}: NaN"
        assert_close(g.to(baseline.dtype), truth, baseline, name=f"grad {name}")


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_variants_match_reference(case, dtype):
    check_case(case, dtype)


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=str)
def test_variants_with_dropout(case):
    # Same seed tensor for the kernels and the reference: the same mask.
    check_case(case, torch.float32)


def test_return_signatures():
    from fastattn.triton import attention as tri
    case = VCase(1, 2, 2, 5, 7, 16, rel="bi")
    inp = _cast(make_inputs(case, torch.float32), torch.float32)
    q, k, v = inp["q"], inp["k"], inp["v"]
    out, lse = tri.attention_fwd(q, k, v, None, None, None, None, False, 0.25)
    legacy = tri.attention_bwd(out, None, q, k, v, out, lse, None, None, None, None, False,
                               0.25, 0.0, False)
    assert len(legacy) == 4
    kv = KernelVariants.of(variants_of(case, inp, torch.float32), 5, 7, DEVICE)
    grads = tri.attention_bwd(out, None, q, k, v, out, lse, None, None, None, None, False,
                              0.25, 0.0, False, variants=kv)
    assert len(grads) == 5 and grads[4].shape == (0,)  # no rel_grad: no drel
    empty = tri.attention_bwd(out, None, q, k, v, out, lse, None, None, None, None, False,
                              0.25, 0.0, False, variants=KernelVariants())
    assert len(empty) == 5 and empty[4].shape == (0,)
    for a, b in zip(legacy[:3], empty[:3]):
        assert torch.equal(a, b)


def test_rel_bias_gradient_is_deterministic():
    case = VCase(2, 2, 1, 40, 45, 16, causal=True, rel="bi", softcap=3.0)
    inp = make_inputs(case, torch.float32)
    first = run_triton(case, inp, torch.float32)[2]["table"]
    second = run_triton(case, inp, torch.float32)[2]["table"]
    assert torch.equal(first, second)


def test_bad_variant_arguments_are_refused():
    from fastattn.triton import attention as tri
    q = torch.randn(1, 2, 5, 16, device=DEVICE)
    with pytest.raises(ValueError, match="alibi_slopes"):
        tri.attention_fwd(q, q, q, None, None, None, None, False, 0.25, 0.0, False,
                          KernelVariants(alibi_slopes=torch.ones(3, 2, device=DEVICE)))
    table = torch.randn(8, 2, device=DEVICE)
    buckets = torch.zeros(5, dtype=torch.int32, device=DEVICE)  # R = 2 < Lq - 1
    with pytest.raises(ValueError, match="rel_buckets"):
        tri.attention_fwd(q, q, q, None, None, None, None, False, 0.25, 0.0, False,
                          KernelVariants(rel_table=table, rel_buckets=buckets, rel_radius=2))


# ------------------------------------------------------------ packed sequences


def _pack_case(lens_q, lens_k, Hq, Hkv, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).double().to(DEVICE)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32,
                        device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32,
                        device=DEVICE)
    return (rnd(sum(lens_q), Hq, D), rnd(sum(lens_k), Hkv, D), rnd(sum(lens_k), Hkv, D),
            cu_q, cu_k, max(lens_q), max(lens_k), rnd(8, Hq))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_variants_per_sequence(dtype, causal):
    # Relative positions, window, ALiBi and causal all per sequence:
    # off = kv_len_b - q_len_b; judged against the reference on the padded
    # batch with lengths and per-row relative positions.
    from fastattn.triton import attention as tri
    lens_q, lens_k = [17, 40, 1, 33], [30, 40, 9, 20]
    Hq, Hkv, D = 4, 2, 16
    q, k, v, cu_q, cu_k, mq, mk, table = _pack_case(lens_q, lens_k, Hq, Hkv, D, dtype)
    slopes = torch.rand(len(lens_q), Hq, device=DEVICE) * 0.5
    scale = D ** -0.5

    def var(dt):
        return Variants((8, 3), slopes, 3.0,
                        RelativePositionBias(table.to(dt), bidirectional=True, max_distance=12))
    kv = KernelVariants.of(var(dtype), mq, mk, DEVICE)
    qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
    out, lse = tri.attention_varlen_fwd(qd, kd, vd, cu_q, cu_k, mq, mk, None, causal, scale,
                                        0.0, False, kv)
    assert out.shape == q.shape and lse.shape == (Hq, q.shape[0])
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(q.shape, generator=g, dtype=torch.float64).to(DEVICE)
    dq, dk, dv, drel = tri.attention_varlen_bwd(dout.to(dtype), None, qd, kd, vd, out, lse,
                                                cu_q, cu_k, mq, mk, None, causal, scale, 0.0,
                                                False, kv, rel_grad=True)
    dtable = rel_bias_grad(drel, kv.rel_buckets, 8)

    def ref(ct):
        qp, kp, vp, ql, kl, pos_q, pos_k = reference._varlen_padded(
            q.to(ct), k.to(ct), v.to(ct), cu_q, cu_k, mq, mk)
        o, l_ = reference._attention(qp, kp, vp, causal, None, ql, kl, 0.0, scale,
                                     compute_dtype=ct, variants=var(ct), rel_per_row=True)
        dop = reference._to_padded(dout.to(ct), pos_q, len(lens_q), mq)
        grads = reference._attention_bwd(dop, None, qp, kp, vp, o, l_, None, ql, kl, causal,
                                         scale, compute_dtype=ct, variants=var(ct),
                                         rel_per_row=True)
        packed = [reference._to_packed(grads[0], pos_q), reference._to_packed(grads[1], pos_k),
                  reference._to_packed(grads[2], pos_k)]
        lse_p = reference._to_packed(l_.unsqueeze(-1), pos_q)[..., 0].transpose(0, 1)
        return reference._to_packed(o, pos_q), lse_p, packed + [grads[4]]
    t_out, t_lse, t_grads = ref(torch.float64)
    b_out, b_lse, b_grads = ref(dtype)
    assert_close(out, t_out, b_out, name="out")
    fin = torch.isfinite(t_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert_close(torch.where(fin, lse, 0.0), torch.where(fin, t_lse, 0.0),
                 torch.where(fin, b_lse.double(), 0.0), name="lse")
    for name, got, truth, base in zip(("dq", "dk", "dv", "dtable"), (dq, dk, dv, dtable),
                                      t_grads, b_grads):
        assert_close(got.to(base.dtype), truth, base, name=name)


# ---------------------------------------------------------------- decoding


DECODE_CASES = [
    VCase(2, 4, 2, 1, 150, 32, window=(40, -1), alibi="bh", softcap=3.0),
    VCase(3, 4, 1, 3, 120, 16, causal=True, window=(30, 0), rel="uni", lengths=True),
    VCase(2, 2, 2, 4, 100, 33, rel="bi", alibi="h", mask="float_grad"),
    VCase(2, 2, 1, 2, 90, 12, causal=True, window=(20, -1), mask="bool", softcap=2.0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", DECODE_CASES, ids=str)
def test_split_kv_decoding_with_variants(case, dtype, monkeypatch):
    from fastattn.triton import attention as tri
    from fastattn.triton import attention_decode
    monkeypatch.setenv("FASTATTN_SPLIT_KV", "1")
    inp = make_inputs(case, dtype)
    t = _cast(inp, dtype)
    assert attention_decode.split_kv_plan(t["q"], t["k"], 0.0, 16) > 1
    called = []
    real = attention_decode.decode_fwd
    monkeypatch.setattr(attention_decode, "decode_fwd",
                        lambda *a, **kw: called.append(1) or real(*a, **kw))
    kv = KernelVariants.of(variants_of(case, inp, dtype), case.Lq, case.Lk, DEVICE)
    out, lse = tri.attention_fwd(t["q"], t["k"], t["v"], t["mask"], t["q_lengths"],
                                 t["kv_lengths"], None, case.causal, case.D ** -0.5, 0.0, False,
                                 kv)
    assert called, "the split-KV path did not run"
    t_out, t_lse, _ = run_reference(case, inp, torch.float64)
    b_out, b_lse, _ = run_reference(case, inp, dtype)
    assert_close(out, t_out, b_out, name="out")
    fin = torch.isfinite(t_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert_close(torch.where(fin, lse, 0.0), torch.where(fin, t_lse, 0.0),
                 torch.where(fin, b_lse.double(), 0.0), name="lse")


# ------------------------------------------------------------ tile skipping


@triton.jit
def _bounds_kernel(P, Out, N, BLOCK: tl.constexpr, TILE: tl.constexpr, KEYS: tl.constexpr,
                   CAUSAL: tl.constexpr, WL: tl.constexpr, WR: tl.constexpr):
    # one case per lane: (start, end, full, off, len, left, right) -> (lo, mid_lo, mid_hi, hi)
    c = tl.arange(0, BLOCK)
    ok = c < N
    start = tl.load(P + c * 7, mask=ok, other=0)
    end = tl.load(P + c * 7 + 1, mask=ok, other=0)
    full = tl.load(P + c * 7 + 2, mask=ok, other=0) != 0
    off = tl.load(P + c * 7 + 3, mask=ok, other=0)
    length = tl.load(P + c * 7 + 4, mask=ok, other=0)
    left = tl.load(P + c * 7 + 5, mask=ok, other=0)
    right = tl.load(P + c * 7 + 6, mask=ok, other=0)
    if KEYS:
        lo, mid_lo, mid_hi, hi = key_tiles(start, end, full, off, length, left, right, TILE,
                                           CAUSAL, WL, WR)
    else:
        lo, mid_lo, mid_hi, hi = query_tiles(start, end, full, off, length, left, right, TILE,
                                             CAUSAL, WL, WR)
    tl.store(Out + c * 4, lo, mask=ok)
    tl.store(Out + c * 4 + 1, mid_lo, mask=ok)
    tl.store(Out + c * 4 + 2, mid_hi, mask=ok)
    tl.store(Out + c * 4 + 3, hi, mask=ok)


def _allowed(i, j, off, causal, left, right, wl, wr):
    ok = True
    if causal:
        ok = ok and j <= i + off
    if wl:
        ok = ok and j >= i + off - left
    if wr:
        ok = ok and j <= i + off + right
    return ok


@pytest.mark.parametrize("keys", [True, False], ids=["key_tiles", "query_tiles"])
@pytest.mark.parametrize("causal,wl,wr", [(c, l_, r) for c in (False, True)
                                          for l_ in (False, True) for r in (False, True)])
def test_tile_bounds_match_brute_force(keys, causal, wl, wr):
    # For random blocks: [lo, hi) covers every tile with an attendable
    # element and starts/ends at the first/last one (so with a window the
    # visited tiles are those of the band: cost ~ window, not L), and every
    # tile in [mid_lo, mid_hi) is attendable in full by the block's valid
    # rows (none unless `full`).
    tile, n_cases = 8, 64
    g = torch.Generator().manual_seed(int(keys) * 8 + causal * 4 + wl * 2 + wr)
    rows, cases = [], []
    for _ in range(n_cases):
        n_self = int(torch.randint(0, 6, (1,), generator=g)) * tile  # block start
        other_len = int(torch.randint(0, 60, (1,), generator=g))
        self_len = int(torch.randint(0, 60, (1,), generator=g))
        end = min(n_self + tile, self_len)
        full = int(torch.rand(1, generator=g) < 0.7)
        off = (other_len - self_len) if keys else (self_len - other_len)
        left, right = (int(x) for x in torch.randint(0, 20, (2,), generator=g))
        cases.append((n_self, end, full, off, other_len, left, right))
        rows.append(cases[-1])
    P = torch.tensor(rows, dtype=torch.int32, device=DEVICE)
    out = torch.zeros(n_cases, 4, dtype=torch.int32, device=DEVICE)
    _bounds_kernel[(1,)](P, out, n_cases, BLOCK=64, TILE=tile, KEYS=keys, CAUSAL=causal,
                           WL=wl, WR=wr)
    for (start, end, full, off, other_len, left, right), (lo, mid_lo, mid_hi, hi) in zip(
            cases, out.tolist()):
        # tile-aligned (or at the end): three loops walk one contiguous run of tiles
        assert lo % tile == 0 and all(m % tile == 0 or m == hi for m in (mid_lo, mid_hi))
        assert lo <= mid_lo <= mid_hi <= hi
        own = range(start, max(end, start))

        def ok(a, b):  # a in this block, b in the other dim
            if keys:
                return _allowed(a, b, off, causal, left, right, wl, wr)
            return _allowed(b, a, off, causal, left, right, wl, wr)
        # as seen from the other dim: which of its indices some own index may use
        used = [b for b in range(other_len) if any(ok(a, b) for a in own)]
        if used:
            assert lo <= used[0] and hi > used[-1], (cases, lo, hi, used)
            assert used[0] - lo < tile and hi - used[-1] <= tile
        else:
            assert hi - lo <= tile
        if not full:
            assert mid_lo == mid_hi
        for t0 in range(mid_lo, mid_hi, tile):
            for b in range(t0, t0 + tile):
                assert b < other_len and all(ok(a, b) for a in own), \
                    (start, end, off, other_len, left, right, mid_lo, mid_hi)


def test_window_never_reads_keys_outside_the_band():
    # Queries 0..19 with Lk = 200 (off = 180) and window (10, 2) attend keys
    # >= 170 only: NaN in keys and values below 160 (whole tiles of every
    # kernel) must reach no result, so those tiles are never loaded.
    from fastattn.triton import attention as tri
    case = VCase(1, 2, 1, 20, 200, 16, window=(10, 2))
    inp = make_inputs(case, torch.float32)
    t = _cast(inp, torch.float32)
    k, v = t["k"].clone(), t["v"].clone()
    k[:, :, :160] = float("nan")
    v[:, :, :160] = float("nan")
    kv = KernelVariants.of(variants_of(case, inp, torch.float32), 20, 200, DEVICE)
    out, lse = tri.attention_fwd(t["q"], k, v, None, None, None, None, False, 0.25, 0.0, False,
                                 kv)
    dq, dk, dv, _, _ = tri.attention_bwd(out, None, t["q"], k, v, out, lse, None, None, None,
                                         None, False, 0.25, 0.0, False, False, kv)
    for name, x in (("out", out), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not x.isnan().any(), f"{name}: a tile outside the window was read"
    assert (dk[:, :, :170] == 0).all() and (dv[:, :, :170] == 0).all()
    t_out = reference._attention(t["q"].double(), t["k"].double(), t["v"].double(), False, None,
                                 None, None, 0.0, 0.25, variants=Variants((10, 2)))[0]
    b_out = reference._attention(t["q"], t["k"], t["v"], False, None, None, None, 0.0, 0.25,
                                 variants=Variants((10, 2)))[0]
    assert_close(out, t_out, b_out, name="out")


# ------------------------------------------------------------ GPU targets


COMPILE_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton, triton.language as tl
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from fastattn.triton import attention_fwd as F, attention_bwd as Bw, attention_decode as Dc

    arch, dt, D, mask_kind = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    on = set(sys.argv[5].split(","))
    P = "*" + dt
    var = dict(SOFTCAP="softcap" in on, ALIBI="alibi" in on, REL_BIAS="rel" in on,
               WINDOW_LEFT="window" in on, WINDOW_RIGHT="window" in on)
    dropout = mask_kind != 0
    common = dict(BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=True, MASK_KIND=mask_kind,
                  HAS_QLENS=True, HAS_KVLENS=True, ACC_DTYPE=tl.float32,
                  DOT_PRECISION="ieee" if dt == "fp32" else "tf32", **var)
    seq = dict(DROPOUT=dropout, VARLEN=not dropout)
    base = dict(Q=P, K=P, V=P, Lse="*fp32", Mask="*u8" if mask_kind == 1 else P,
                QLens="*i32", KVLens="*i32", Seed="*i64", Slopes="*fp32", RelBias="*fp32")
    kernels = [
        (F.attention_fwd_kernel, dict(base, Out=P), dict(common, **seq, BLOCK_M=64, BLOCK_N=32)),
        (Bw.attention_bwd_dkdv_kernel, dict(base, DOut=P, Delta="*fp32", DK=P, DV=P),
         dict(common, **seq, BLOCK_M=16, BLOCK_N=32)),
        (Bw.attention_bwd_dq_kernel,
         dict(base, DOut=P, Delta="*fp32", DQ=P, DBias="*fp32", DRel="*fp32"),
         dict(common, **seq, STORE_DBIAS=mask_kind == 2, STORE_DREL=var["REL_BIAS"],
              BLOCK_M=32, BLOCK_N=16)),
        (Dc.attention_decode_split_kernel, dict(base, OPart="*fp32", TPart="*fp32"),
         dict(common, BLOCK_M=16, BLOCK_N=64)),
        (Bw.attention_bwd_drel_reduce_kernel,
         dict(Rows="*fp32", Out="*fp32", QLens="*i32", KVLens="*i32"),
         dict(VARLEN=True, ACC_DTYPE=tl.float32, BLOCK=128)),
    ]
    floats = ("qk_scale", "scale", "drop_scale", "softcap")
    for fn, ptrs, consts in kernels:
        consts = {n: c for n, c in consts.items() if n in fn.arg_names}
        sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32")
               for n in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=4, num_stages=2))
        assert k.metadata.shared <= 160 * 1024, (fn.__name__, k.metadata.shared)
        print(fn.__name__, "ok", k.metadata.shared)
''')


@pytest.mark.parametrize("arch,dtype,head_dim,mask_kind,variants", [
    (90, "fp16", 128, 2, "softcap,alibi,rel,window"),
    (80, "fp32", 40, 1, "window,alibi"),
])
def test_variant_kernels_compile_for_gpu_targets(arch, dtype, head_dim, mask_kind, variants,
                                                 tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(arch), dtype,
                             str(head_dim), str(mask_kind), variants], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(" ok ") == 5, result.stdout
