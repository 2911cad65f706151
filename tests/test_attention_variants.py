"""The attention variants through the public API: fastattn.attention and
fastattn.attention_varlen with window_size, alibi_slopes, softcap and
rel_bias=fastattn.RelativePositionBias, on every backend that runs here.

Each case is judged by the accuracy protocol of docs/TESTING.md
(helpers.assert_close) against fastattn.reference on float64 copies of the
same inputs: out, and the gradients of q, k, v, a float mask and the
relative-bias table (through autograd, as a user computes them). The cuda
backend runs window_size, alibi_slopes, softcap and rel_bias (the last three
without attn_mask) on padded batches: its cases are those (they run where a
GPU is).
Also: bad variant arguments raise naming the argument before any kernel
runs, a backend that cannot serve a variant raises when named, and the
table's gradient is bitwise reproducible.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import reference
from helpers import HAS_CUDA, assert_close, backend_params

# Every backend, for the variants the cuda kernels run too (window; ALiBi,
# softcap and the relative bias without a mask).
ALL_BACKENDS = backend_params("attention")
# The backends with softcap, ALiBi or the relative bias with a mask, and
# attention_varlen (a named cuda backend raises for those: tested below).
BACKENDS = [p for p in ALL_BACKENDS if p.values[0] != "cuda"]
DTYPES = [torch.float32, torch.float16]


def _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).requires_grad_()


def _table(num_buckets, Hq, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_buckets, Hq, generator=g, dtype=torch.float64).to(device)


def _check(backend, device, dtype, B=2, Hq=4, Hkv=2, Lq=37, Lk=45, D=24, causal=False,
           lengths=None, float_mask=False, table_buckets=None, bidirectional=True,
           max_distance=20, zero_grads=(), **variants):
    """One case: fastattn (dtype) and the reference (float64 truth, and the
    reference in dtype as PyTorch's own error), forward and backward.
    `zero_grads`: gradients that are exactly 0 in the truth (a band of one
    key: p = 1, so dS = p (dP - delta) = 0); a budget scaled by the truth
    is 0 there, so they are held to the rounding a correct kernel makes in
    dP - delta instead: two float32 dot products of length D that agree in
    exact arithmetic differ by at most 2 D eps32 sum_d |dO_d v_d|, times
    scale and |k| (dq) or |q| (dk), times the GQA group (dk sums it)."""
    q, k, v = _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, device)
    g = torch.Generator().manual_seed(7)
    mask = (torch.randn(B, 1, Lq, Lk, generator=g, dtype=torch.float64).to(device)
            if float_mask else None)
    q_len = kv_len = None
    if lengths is not None:
        q_len = torch.tensor(lengths[0], dtype=torch.int32, device=device)
        kv_len = torch.tensor(lengths[1], dtype=torch.int32, device=device)
    table = _table(table_buckets, Hq, device) if table_buckets else None
    dout = torch.randn(B, Hq, Lq, D, generator=g, dtype=torch.float64).to(device)

    def run(fn, cast, **kw):
        qq, kk, vv = (_leaf(t, cast) for t in (q, k, v))
        mm = _leaf(mask, cast) if mask is not None else None
        tt = _leaf(table, cast) if table is not None else None
        rel = (fastattn.RelativePositionBias(tt, bidirectional=bidirectional,
                                             max_distance=max_distance)
               if tt is not None else None)
        extra = dict(variants)
        if "alibi_slopes" in extra:
            extra["alibi_slopes"] = extra["alibi_slopes"].to(device)
        out = fn(qq, kk, vv, causal=causal, attn_mask=mm, q_lengths=q_len, kv_lengths=kv_len,
                 rel_bias=rel, **extra, **kw)
        out.backward(dout.to(out.dtype))
        grads = [qq.grad, kk.grad, vv.grad] + ([mm.grad] if mm is not None else []) + \
            ([tt.grad] if tt is not None else [])
        return [out] + grads

    got = run(fastattn.attention, dtype, backend=backend)
    truth = run(reference.attention, torch.float64)
    base = run(reference.attention, dtype) if dtype != torch.float64 else [None] * len(got)
    names = ["out", "dq", "dk", "dv"] + (["dmask"] if float_mask else []) + \
        (["dtable"] if table is not None else [])
    for name, a, t, b in zip(names, got, truth, base):
        assert a is not None, f"{name}: no gradient"
        if name in zero_grads:
            assert t.abs().max().item() == 0, f"{name}: the truth is not 0"
            other = (k if name == "dq" else q).double()
            terms = (dout * truth[0]).abs().sum(-1).max().item()  # out = the one key's v
            bound = (2 * D * torch.finfo(torch.float32).eps * terms * D ** -0.5
                     * other.abs().max().item() * (Hq // Hkv))
            err = a.double().abs().max().item()
            assert err <= bound, f"{name}: max {err:.3g}, over the rounding bound {bound:.3g}"
        else:
            assert_close(a, t, b, name)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# (0, 1): the narrowest band with a gradient the protocol can judge; (0, 0)
# is test_window_of_one_key.
@pytest.mark.parametrize("causal,window", [(True, (7, -1)), (False, (5, 9)), (False, (0, 1)),
                                           (True, (40, 3))])
def test_window(backend, device, dtype, causal, window):
    _check(backend, device, dtype, causal=causal, window_size=window)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_window_of_one_key(backend, device, dtype, causal):
    # window (0, 0): each query sees exactly its diagonal key (out = that v,
    # dv = the dout rows that see it, judged as usual; dq, dk are 0)
    _check(backend, device, dtype, causal=causal, window_size=(0, 0), zero_grads=("dq", "dk"))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_batch", [False, True])
def test_alibi(backend, device, dtype, per_batch):
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    if per_batch:
        slopes = torch.stack([slopes, slopes * 0.5])
    _check(backend, device, dtype, causal=not per_batch, alibi_slopes=slopes)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cap", [1.5, 0.1])
def test_softcap(backend, device, dtype, causal, cap):
    # 1.5: most scores sit where tanh bends; 0.1: most of them past 9 caps,
    # where tanh saturates (the cpu kernel's clamp)
    _check(backend, device, dtype, causal=causal, softcap=cap)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softcap_with_float_mask(backend, device, dtype):
    _check(backend, device, dtype, float_mask=True, softcap=2.5)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bidirectional,causal", [(True, False), (False, True)])
def test_relative_bias_and_table_gradient(backend, device, dtype, bidirectional, causal):
    _check(backend, device, dtype, causal=causal, table_buckets=16,
           bidirectional=bidirectional, max_distance=20)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_window_alibi_softcap_with_lengths_gqa_and_odd_head_dim(backend, device, dtype):
    # a window whose band skips whole key tiles at Lk = 200, both sides bounded
    _check(backend, device, dtype, B=2, Hq=4, Hkv=2, Lq=150, Lk=200, D=40, causal=False,
           lengths=([150, 97], [200, 130]), window_size=(30, 12), softcap=6.0,
           alibi_slopes=torch.tensor([0.3, 0.2, 0.1, 0.05]))


# bfloat16: every backend but Triton's interpreter (its bf16 dot is wrong)
BF16_BACKENDS = [p for p in ALL_BACKENDS if p.values != ("triton", "cpu")]


@pytest.mark.parametrize("backend,device", BF16_BACKENDS)
def test_window_alibi_softcap_bfloat16(backend, device):
    _check(backend, device, torch.bfloat16, B=2, Hq=4, Hkv=1, Lq=90, Lk=140, D=64, causal=True,
           lengths=([90, 60], [140, 77]), window_size=(25, -1), softcap=4.0,
           alibi_slopes=torch.tensor([0.25, 0.125, 0.0625, 0.03125]))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_every_variant_with_lengths_gqa_and_odd_head_dim(backend, device):
    _check(backend, device, torch.float32, D=12, causal=True, lengths=([30, 37], [45, 21]),
           window_size=(9, 2), softcap=4.0, alibi_slopes=torch.tensor([0.3, 0.2, 0.1, 0.05]),
           table_buckets=12, bidirectional=False)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_decoding_shape(backend, device):
    # one query row over a long cache: the split-KV path of the Triton kernels
    _check(backend, device, torch.float32, B=2, Hq=4, Hkv=1, Lq=1, Lk=300, D=32, causal=True,
           window_size=(64, -1), softcap=3.0, table_buckets=8, bidirectional=False)


def _varlen_case(backend, device, dtype, **variants):
    lens_q, lens_k = [5, 17, 0, 9], [11, 17, 4, 9]
    Hq, Hkv, D = 4, 2, 16
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32,
                        device=device)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32,
                        device=device)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(sum(lens_q), Hq, D, generator=g, dtype=torch.float64).to(device)
    k = torch.randn(sum(lens_k), Hkv, D, generator=g, dtype=torch.float64).to(device)
    v = torch.randn(sum(lens_k), Hkv, D, generator=g, dtype=torch.float64).to(device)
    table = _table(10, Hq, device)
    dout = torch.randn(sum(lens_q), Hq, D, generator=g, dtype=torch.float64).to(device)

    def run(fn, cast, **kw):
        qq, kk, vv, tt = (_leaf(t, cast) for t in (q, k, v, table))
        rel = fastattn.RelativePositionBias(tt, bidirectional=False, max_distance=12)
        out = fn(qq, kk, vv, cu_q, cu_k, max(lens_q), max(lens_k), causal=True, rel_bias=rel,
                 **variants, **kw)
        out.backward(dout.to(out.dtype))
        return out, qq.grad, kk.grad, vv.grad, tt.grad

    got = run(fastattn.attention_varlen, dtype, backend=backend)
    truth = run(reference.attention_varlen, torch.float64)
    base = run(reference.attention_varlen, dtype)
    for name, a, t, b in zip(("out", "dq", "dk", "dv", "dtable"), got, truth, base):
        assert_close(a, t, b, name)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_per_sequence(backend, device, dtype):
    _varlen_case(backend, device, dtype, window_size=(6, -1), softcap=5.0,
                 alibi_slopes=torch.tensor([[0.5, 0.25, 0.1, 0.05]] * 4, device=device))


def test_reference_backend_serves_variants():
    # auto never lands here on CPU, but a named reference backend must work too
    _check("reference", "cpu", torch.float32, causal=True, window_size=(4, -1), softcap=3.0,
           table_buckets=8)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_table_gradient_is_reproducible(backend, device):
    q, k, v = _inputs(2, 4, 4, 50, 50, 16, torch.float32, device)
    grads = []
    for _ in range(2):
        table = _leaf(_table(16, 4, device).float())
        out = fastattn.attention(q, k, v, rel_bias=fastattn.RelativePositionBias(table),
                                 backend=backend)
        out.sum().backward()
        grads.append(table.grad)
    assert torch.equal(grads[0], grads[1])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(window_size=(3,)), TypeError, "window_size"),
    (dict(window_size=(1.5, 2)), TypeError, "window_size"),
    (dict(window_size=(-2, 0)), ValueError, "window_size"),
    (dict(alibi_slopes=torch.ones(3)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=torch.ones(4, dtype=torch.float64)), TypeError, "alibi_slopes"),
    (dict(alibi_slopes=[0.1] * 4), TypeError, "alibi_slopes"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("inf")), ValueError, "softcap"),
    (dict(softcap="2"), TypeError, "softcap"),
    (dict(rel_bias=torch.ones(8, 4)), TypeError, "rel_bias"),
    (dict(rel_bias="t5"), TypeError, "rel_bias"),
])
def test_bad_variant_arguments_name_the_argument(kwargs, error, text):
    q, k, v = _inputs(1, 4, 4, 8, 8, 16, torch.float32, "cpu")
    with pytest.raises(error, match=text):
        fastattn.attention(q, k, v, **kwargs)


@pytest.mark.parametrize("make,text", [
    (lambda: fastattn.RelativePositionBias(torch.ones(8, 3)), "rel_bias table"),
    (lambda: fastattn.RelativePositionBias(torch.ones(8)), "table"),
    (lambda: fastattn.RelativePositionBias(torch.ones(8, 4, dtype=torch.long)), "table"),
    (lambda: fastattn.RelativePositionBias(torch.ones(8, 4), max_distance=0), "max_distance"),
])
def test_bad_relative_bias(make, text):
    q, k, v = _inputs(1, 4, 4, 8, 8, 16, torch.float32, "cpu")
    with pytest.raises((TypeError, ValueError), match=text):
        fastattn.attention(q, k, v, rel_bias=make())


def _variants(q, window=(-1, -1), alibi=False, softcap=0.0, rel=False):
    from fastattn.ops.variants import check_variants
    slopes = torch.full((q.shape[1],), 0.25) if alibi else None
    table = fastattn.RelativePositionBias(torch.ones(8, q.shape[1])) if rel else None
    return check_variants(q, q.shape[0], window, slopes, softcap, table)


def test_what_the_cuda_kernels_serve():
    from fastattn.ops.attention import cuda_variant_limits
    q = torch.randn(1, 2, 4, 8)
    for has_mask in (False, True):
        assert cuda_variant_limits(_variants(q, window=(4, 0)), has_mask) == ""
    assert cuda_variant_limits(_variants(q, alibi=True, softcap=2.0, window=(3, 3)), False) == ""
    assert cuda_variant_limits(_variants(q, rel=True, softcap=2.0), False) == ""
    why = cuda_variant_limits(_variants(q, alibi=True, softcap=2.0), True)
    assert "alibi_slopes and softcap together with attn_mask" in why
    assert "rel_bias together with attn_mask" in cuda_variant_limits(_variants(q, rel=True), True)


@pytest.mark.parametrize("variant,has_mask,text", [
    (dict(rel=True), True, "rel_bias together with attn_mask"),
    (dict(softcap=2.0), True, "softcap together with attn_mask"),
    (dict(alibi=True), True, "alibi_slopes together with attn_mask"),
])
def test_named_backend_that_cannot_serve_a_variant_raises(monkeypatch, variant, has_mask, text):
    # named, cuda must say why (checked on the choice alone, so it runs
    # without a GPU too)
    from fastattn.ops import attention as attention_ops
    q = torch.randn(1, 2, 4, 8)
    monkeypatch.setattr(fastattn._backends, "unavailable_reason", lambda *a, **k: "")
    with pytest.raises(ValueError, match=text):
        attention_ops.pick_backend("cuda", q, _variants(q, **variant), has_mask)
    # and what it serves, it is chosen for
    assert attention_ops.pick_backend("cuda", q, _variants(q, window=(2, 2)), has_mask) == "cuda"


def _cuda_native_reason() -> str:
    if not HAS_CUDA:
        return "no CUDA device"
    return fastattn._backends.unavailable_reason("cuda", "attention", torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(bool(_cuda_native_reason()), reason=_cuda_native_reason() or "runs")
def test_cuda_native_op_refuses_what_it_does_not_serve():
    # called directly (no frontend to pick another backend), the op says why
    q, k, v = _inputs(1, 2, 2, 16, 16, 16, torch.float16, "cuda")
    op = torch.ops.fastattn.attention_fwd_native
    mask = torch.zeros(1, 1, 16, 16, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="softcap together with attn_mask"):
        op(q, k, v, mask, None, None, None, False, 0.25, 0.0, softcap=2.0)
    table = torch.zeros(8, 2, device="cuda")
    buckets = torch.zeros(65, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="rel_bias"):
        op(q, k, v, mask, None, None, None, False, 0.25, 0.0, rel_table=table,
           rel_buckets=buckets, rel_radius=32)
    with pytest.raises(RuntimeError, match="rel_per_row"):
        op(q, k, v, None, None, None, None, False, 0.25, 0.0, rel_table=table,
           rel_buckets=buckets, rel_radius=32, rel_per_row=True)
    with pytest.raises(RuntimeError, match="alibi_slopes"):  # wrong shape
        op(q, k, v, None, None, None, None, False, 0.25, 0.0,
           alibi_slopes=torch.ones(1, 3, device="cuda"))


def test_auto_passes_over_a_backend_that_cannot_serve_and_says_so(monkeypatch, caplog):
    from fastattn import _backends, _log
    from fastattn.ops import attention as attention_ops
    from fastattn.ops.variants import check_variants
    _log.reset_for_tests()
    q = torch.randn(1, 2, 4, 8)
    variants = check_variants(q, 1, (-1, -1), None, 2.0, None)
    monkeypatch.setattr(_backends, "unavailable_reason", lambda *a, **k: "")
    monkeypatch.setitem(_backends.AUTO_ORDER, "cpu", ("cuda", "cpu", "reference"))
    with caplog.at_level("INFO", logger="fastattn"):
        assert attention_ops.pick_backend("auto", q, variants, has_mask=True) == "cpu"
    assert "passes over cuda" in caplog.text and "softcap" in caplog.text
