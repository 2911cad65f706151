"""fastattn.scaled_dot_product_attention: torch's SDPA contract, fastattn's kernels.

The drop-in must give what torch.nn.functional.scaled_dot_product_attention
gives (outputs, gradients, errors) for every call: fastattn's kernels serve
the calls they compute exactly (checked here with torch barred from serving
them), torch serves the rest (checked to be exactly torch's result, with
the reason on the fastattn logger). Accuracy by the accuracy protocol (docs/TESTING.md): the
fp64 truth is torch itself in float64, the tolerance comes from torch's own
error in the test dtype.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import fastattn
from fastattn import _log

from helpers import assert_close, backend_params

BACKENDS = backend_params("attention")
TORCH_SDPA = torch.nn.functional.scaled_dot_product_attention


def _sdpa_inputs(N, Hq, Hkv, L, S, E, mask, device):
    q = torch.randn(N, Hq, L, E, device=device)
    k = torch.randn(N, Hkv, S, E, device=device)
    v = torch.randn(N, Hkv, S, E, device=device)
    m = None
    if mask == "bool":
        m = torch.rand(L, S, device=device) < 0.7
        m[0] = False  # a row with nothing to attend: torch gives 0 there too
    elif mask == "float":
        m = torch.randn(N, 1, L, S, device=device)
    return q, k, v, m


@pytest.fixture
def fastattn_kernels(monkeypatch, backend):
    """Route the drop-in's automatic choice to `backend` (on CPU, auto would
    otherwise never pick the interpreter), and fail if torch serves a call."""
    monkeypatch.setenv("FASTATTN_BACKEND", backend)

    def torch_sdpa(*args, **kwargs):
        raise AssertionError("the call was served by torch, not by fastattn")
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", torch_sdpa)
    return TORCH_SDPA  # for the expected results


def _check_against_torch(q, k, v, kw, expected_kw=None):
    """fastattn's SDPA (fp32) vs torch's SDPA in fp64 (truth) and fp32
    (baseline), forward and the gradients of q, k, v. `expected_kw`: the
    arguments torch gets, when they differ (a CausalBias materialized)."""
    expected_kw = expected_kw or kw
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fastattn.scaled_dot_product_attention(*leaves, **kw)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)

    def torch_run(dtype):
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        m = expected_kw.get("attn_mask")
        mk = m.to(dtype) if m is not None and m.is_floating_point() else m
        o = TORCH_SDPA(*ins, **dict(expected_kw, attn_mask=mk))
        return o, torch.autograd.grad(o, ins, dout.to(dtype))

    t_out, t_grads = torch_run(torch.float64)
    b_out, b_grads = torch_run(torch.float32)
    assert out.dtype == q.dtype and out.shape == b_out.shape
    assert_close(out, t_out, b_out, name="out")
    for name, g, t, b in zip("qkv", grads, t_grads, b_grads):
        assert_close(g, t, b, name=f"grad {name}")


SDPA_CASES = [
    # N, Hq, Hkv, L, S, E, is_causal, mask, enable_gqa, scale
    (2, 2, 2, 33, 33, 32, True, None, False, None),
    (2, 2, 2, 17, 40, 64, True, None, False, None),
    (2, 2, 2, 40, 17, 40, True, None, False, 0.2),
    (2, 4, 2, 33, 20, 16, False, "bool", True, None),
    (2, 2, 2, 20, 33, 80, False, "float", False, None),
    (1, 4, 1, 1, 33, 64, False, None, True, None),
    # head dims that are no multiple of 8 (HF test configs, small models)
    (2, 2, 2, 9, 13, 1, True, None, False, None),
    (1, 2, 1, 11, 7, 12, False, "bool", True, None),
    (2, 2, 2, 6, 21, 33, True, None, False, None),
    (1, 2, 2, 5, 9, 255, False, "float", False, None),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("N,Hq,Hkv,L,S,E,is_causal,mask,enable_gqa,scale", SDPA_CASES)
def test_sdpa_matches_torch(fastattn_kernels, backend, device, N, Hq, Hkv, L, S, E, is_causal,
                            mask, enable_gqa, scale):
    q, k, v, m = _sdpa_inputs(N, Hq, Hkv, L, S, E, mask, device)
    _check_against_torch(q, k, v, dict(attn_mask=m, is_causal=is_causal, scale=scale,
                                       enable_gqa=enable_gqa))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sdpa_float_mask_gradient(fastattn_kernels, backend, device):
    q, k, v, m = _sdpa_inputs(2, 2, 2, 9, 13, 16, "float", device)
    mask = m.clone().requires_grad_()
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (g,) = torch.autograd.grad(out, [mask], torch.ones_like(out) * 0.5)
    m64 = m.double().requires_grad_()
    t_out = TORCH_SDPA(q.double(), k.double(), v.double(), attn_mask=m64)
    (t_g,) = torch.autograd.grad(t_out, [m64], torch.full_like(t_out, 0.5))
    m32 = m.clone().requires_grad_()
    (b_g,) = torch.autograd.grad(TORCH_SDPA(q, k, v, attn_mask=m32), [m32],
                                 torch.full_like(out, 0.5))
    assert_close(g, t_g, b_g, name="grad attn_mask")


# --------------------------------------------------------- torch's CausalBias


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("make_bias", [causal_upper_left, causal_lower_right],
                         ids=["upper_left", "lower_right"])
@pytest.mark.parametrize("L,S", [(7, 19), (19, 7), (12, 12)])
def test_causal_bias_is_served_natively(fastattn_kernels, backend, device, make_bias, L, S):
    """torch.nn.attention.bias.CausalBias is one of fastattn's two causal
    alignments, never read as a float mask (it holds no elements)."""
    q, k, v, _ = _sdpa_inputs(2, 2, 2, L, S, 16, None, device)
    bias = make_bias(L, S)
    expected = dict(attn_mask=bias._materialize(device))  # a plain bool mask for torch
    _check_against_torch(q, k, v, dict(attn_mask=bias), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_causal_bias_under_compile(fastattn_kernels, backend, device):
    q, k, v, _ = _sdpa_inputs(1, 2, 2, 9, 14, 16, None, device)

    def fn(a, b, c, bias):
        return fastattn.scaled_dot_product_attention(a, b, c, attn_mask=bias)

    torch._dynamo.reset()
    # (made outside: dynamo cannot trace CausalBias' constructor, torch's own limit)
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v,
                                                                 causal_lower_right(9, 14))
    expected = TORCH_SDPA(q, k, v, attn_mask=causal_lower_right(9, 14)._materialize(device))
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()


def test_causal_bias_that_torch_refuses_is_refused():
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError):  # torch: a CausalBias together with is_causal
        fastattn.scaled_dot_product_attention(q, q, q, attn_mask=causal_lower_right(5, 5),
                                              is_causal=True)


def test_causal_bias_of_other_lengths_goes_to_torch():
    """A lower-right bias for other lengths than the inputs': torch decides
    (it materializes the bias, which then must broadcast, or raises)."""
    q, k = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 6, 16)
    bias = causal_lower_right(1, 6)  # one row, broadcast over the 4 queries
    expected = TORCH_SDPA(q, k, k, attn_mask=bias)
    assert torch.equal(fastattn.scaled_dot_product_attention(q, k, k, attn_mask=bias), expected)
    bias = causal_lower_right(3, 6)  # does not broadcast: torch's error
    with pytest.raises(RuntimeError):
        TORCH_SDPA(q, k, k, attn_mask=bias)
    with pytest.raises(RuntimeError):
        fastattn.scaled_dot_product_attention(q, k, k, attn_mask=bias)


# ----------------------------------------------------------- tensor subclasses


class _Recorded(torch.Tensor):
    """A __torch_function__ subclass that records the functions called on it."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_subclasses_are_handed_to_torch():
    """Tensor subclasses mean what their __torch_function__ says: torch's
    SDPA (and the subclass) must see the call, forward and backward."""
    q, k, v, m = _sdpa_inputs(2, 2, 2, 6, 9, 16, "float", "cpu")
    _Recorded.calls = []
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    mask = m.as_subclass(_Recorded)
    out = fastattn.scaled_dot_product_attention(*leaves, attn_mask=mask)
    assert "scaled_dot_product_attention" in _Recorded.calls
    grads = torch.autograd.grad(out.sum(), leaves)
    base = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = TORCH_SDPA(*base, attn_mask=m)
    assert torch.equal(out.as_subclass(torch.Tensor), expected)
    for g, e in zip(grads, torch.autograd.grad(expected.sum(), base)):
        assert torch.equal(g.as_subclass(torch.Tensor), e)


# ------------------------------------------------------------ torch serves


FALLBACK_CALLS = [
    # (id, inputs builder, kwargs, the reason's words)
    ("dropout", lambda: [torch.randn(1, 2, 5, 16)] * 3, dict(dropout_p=0.3), "dropout"),
    ("value-head-dim", lambda: [torch.randn(1, 2, 5, 16), torch.randn(1, 2, 6, 16),
                                torch.randn(1, 2, 6, 32)], {}, "head dim"),
    ("3-d", lambda: [torch.randn(2, 5, 16)] * 3, {}, "4-D"),
    ("head-dim-264", lambda: [torch.randn(1, 2, 5, 264)] * 3, {}, "head dim"),
    ("mask-and-causal", lambda: [torch.randn(1, 2, 5, 16)] * 3,
     dict(attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True), "is_causal"),
    ("gqa-without-flag", lambda: [torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16),
                                  torch.randn(1, 2, 5, 16)], {}, "enable_gqa"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("build,kwargs,words", [pytest.param(*c[1:], id=c[0])
                                                for c in FALLBACK_CALLS])
def test_sdpa_falls_back_to_torch(backend, device, build, kwargs, words, monkeypatch, caplog):
    monkeypatch.setenv("FASTATTN_BACKEND", backend)
    inputs = [t.to(device) for t in build()]
    kwargs = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in kwargs.items()}
    torch.manual_seed(3)
    try:
        expected = TORCH_SDPA(*inputs, **kwargs)
    except RuntimeError as exc:  # torch refuses the call: so must the drop-in
        with pytest.raises(type(exc)):
            fastattn.scaled_dot_product_attention(*inputs, **kwargs)
        return
    torch.manual_seed(3)
    _log.reset_for_tests()
    with caplog.at_level(logging.WARNING, logger="fastattn"):
        out = fastattn.scaled_dot_product_attention(*inputs, **kwargs)
        out_again = fastattn.scaled_dot_product_attention(*inputs, **kwargs) \
            if not kwargs.get("dropout_p") else out
    assert torch.equal(out, expected)
    assert out_again.shape == out.shape
    said = [r.message for r in caplog.records if "torch serves" in r.message]
    assert len(said) == 1 and words in said[0], said  # once, with the reason


# ------------------------------------------------------------------ compile


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sdpa_compiled(fastattn_kernels, backend, device):
    q, k, v, _ = _sdpa_inputs(2, 2, 2, 17, 23, 32, None, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def fn(a, b, c):
        return fastattn.scaled_dot_product_attention(a, b, c, is_causal=True)

    torch._dynamo.reset()
    out = torch.compile(fn, backend="aot_eager", fullgraph=True)(*leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    t_out = fastattn_kernels(*ref, is_causal=True)
    t_grads = torch.autograd.grad(t_out.square().sum(), ref)
    base = [t.clone().requires_grad_() for t in (q, k, v)]
    b_out = fastattn_kernels(*base, is_causal=True)
    b_grads = torch.autograd.grad(b_out.square().sum(), base)
    assert_close(out, t_out, b_out)
    for g, t, b in zip(grads, t_grads, b_grads):
        assert_close(g, t, b)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_symbolic_scale_under_dynamic_compile(fastattn_kernels, backend, device):
    """With dynamic=True, dynamo traces a float argument as a SymFloat: the
    scale checks must not read its value (math.isfinite would fail)."""
    q, k, v, _ = _sdpa_inputs(1, 2, 2, 9, 9, 16, None, device)

    def fn(a, b, c, scale):
        x = fastattn.scaled_dot_product_attention(a, b, c, scale=scale)
        return x + fastattn.attention(a, b, c, scale=scale, causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    for scale in (0.25, 0.5):
        expected = TORCH_SDPA(q, k, v, scale=scale) + TORCH_SDPA(q, k, v, scale=scale,
                                                                is_causal=True)
        assert torch.allclose(compiled(q, k, v, scale), expected, atol=1e-5)


# ------------------------------------------ with the drop-in in torch's place


@pytest.fixture
def swapped_into_torch(monkeypatch):
    """fastattn's SDPA as torch.nn.functional.scaled_dot_product_attention
    (what users and peer test suites do): what fastattn hands to torch must
    reach torch's own function, not come back."""
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        fastattn.scaled_dot_product_attention)


def test_fallback_reaches_torch_when_swapped(swapped_into_torch):
    q = torch.randn(2, 3, 4)  # 3-D: torch's to serve
    torch.testing.assert_close(fastattn.scaled_dot_product_attention(q, q, q),
                               TORCH_SDPA(q, q, q))
    mha = torch.nn.MultiheadAttention(8, 2, dropout=0.1).train()  # torch's module: SDPA, dropout
    x = torch.randn(5, 2, 8)
    assert mha(x, x, x, need_weights=False)[0].shape == (5, 2, 8)


def test_causal_bias_when_swapped(swapped_into_torch):
    """CausalBias recognizes torch's SDPA by identity; swapped, fastattn
    must raise torch's error itself and materialize the bias for torch."""
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="CausalBias"):
        fastattn.scaled_dot_product_attention(q, q, q, attn_mask=causal_upper_left(8, 8),
                                              is_causal=True)
    q3 = torch.randn(2, 4, 16)  # 3-D with a lower-right bias: torch serves it
    bias = causal_lower_right(4, 6)
    k3 = torch.randn(2, 6, 16)
    expected = TORCH_SDPA(q3, k3, k3, attn_mask=bias._materialize())
    torch.testing.assert_close(fastattn.scaled_dot_product_attention(q3, k3, k3, attn_mask=bias),
                               expected)
