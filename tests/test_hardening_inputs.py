"""Bad input across every public function, empty tensors, and checks that
stay out of torch.compile's way.

One table of bad calls covers what the per-op files (test_norm.py,
test_attention_bad_input.py) do not: each must raise the stated exception
type with a message that names the offending argument, before any kernel
runs. `scaled_dot_product_attention` is a drop-in for torch's, so its bad
calls must raise exactly what torch raises for the same call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastattn
from helpers import HAS_CUDA, backend_params, poison_

B, HQ, HKV, LQ, LK, D = 2, 4, 2, 5, 7, 16


def _qkv():
    return (torch.randn(B, HQ, LQ, D), torch.randn(B, HKV, LK, D), torch.randn(B, HKV, LK, D))


def _attn(**changes):
    q, k, v = _qkv()
    kw = dict(q=q, k=k, v=v)
    kw.update(changes)
    return lambda: fastattn.attention(**kw)


def _varlen_calls():
    """Bad calls to attention_varlen, once it exists (API.md signature)."""
    if not hasattr(fastattn, "attention_varlen"):
        return []
    q, k = torch.randn(9, HQ, D), torch.randn(11, HKV, D)
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 11], dtype=torch.int32)

    def call(**changes):
        kw = dict(q=q, k=k, v=k.clone(), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                  max_seqlen_q=5, max_seqlen_k=6)
        kw.update(changes)
        return lambda: fastattn.attention_varlen(**kw)

    return [
        ("varlen-q-4d", call(q=q[None]), ValueError, "q"),
        ("varlen-cu-q-float", call(cu_seqlens_q=cu_q.float()), TypeError, "cu_seqlens_q"),
        ("varlen-cu-k-2d", call(cu_seqlens_k=cu_k[None]), ValueError, "cu_seqlens_k"),
        ("varlen-dropout", call(dropout_p=1.5), ValueError, "dropout_p"),
    ]


def _bad_calls():
    x, w, b = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    q, k, v = _qkv()
    sq = torch.randn(B, HQ, LQ, D)  # SDPA self-attention
    calls = [
        # --- fastattn.attention: what test_attention_bad_input.py leaves out
        ("attn-mask-uint8", _attn(attn_mask=torch.ones(LQ, LK, dtype=torch.uint8)), TypeError,
         "attn_mask"),
        ("attn-mask-int64", _attn(attn_mask=torch.ones(LQ, LK, dtype=torch.int64)), TypeError,
         "attn_mask"),
        ("attn-mask-complex", _attn(attn_mask=torch.ones(LQ, LK, dtype=torch.complex64)),
         TypeError, "attn_mask"),
        ("attn-mask-numpy", _attn(attn_mask=np.ones((LQ, LK), dtype=bool)), TypeError,
         "attn_mask"),
        ("attn-mask-wrong-lq", _attn(attn_mask=torch.randn(LQ - 1, LK)), ValueError, "attn_mask"),
        ("attn-mask-meta", _attn(attn_mask=torch.ones(LQ, LK, dtype=torch.bool, device="meta")),
         ValueError, "attn_mask"),
        ("attn-kv-lengths-bool", _attn(kv_lengths=torch.tensor([True, False])), TypeError,
         "kv_lengths"),
        ("attn-kv-lengths-int16", _attn(kv_lengths=torch.tensor([1, 2], dtype=torch.int16)),
         TypeError, "kv_lengths"),
        ("attn-kv-lengths-float", _attn(kv_lengths=torch.tensor([3.0, 2.0])), TypeError,
         "kv_lengths"),
        ("attn-kv-lengths-negative", _attn(kv_lengths=torch.tensor([-3, 1])), ValueError,
         "kv_lengths"),
        ("attn-q-lengths-too-long", _attn(q_lengths=torch.tensor([LQ + 1, 1])), ValueError,
         "q_lengths"),
        ("attn-q-lengths-0d", _attn(q_lengths=torch.tensor(3)), ValueError, "q_lengths"),
        ("attn-q-lengths-meta", _attn(q_lengths=torch.tensor([1, 2], device="meta")), ValueError,
         "q_lengths"),
        ("attn-scale-inf", _attn(scale=float("inf")), ValueError, "scale"),
        ("attn-scale-complex", _attn(scale=1j), TypeError, "scale"),
        ("attn-scale-bool", _attn(scale=True), TypeError, "scale"),
        ("attn-dropout-nan", _attn(dropout_p=float("nan")), ValueError, "dropout_p"),
        ("attn-dropout-none", _attn(dropout_p=None), TypeError, "dropout_p"),
        ("attn-q-complex", _attn(q=torch.randn(B, HQ, LQ, D, dtype=torch.complex64)), TypeError,
         "q"),
        ("attn-q-bool", _attn(q=q > 0), TypeError, "q"),
        ("attn-k-numpy", _attn(k=k.numpy()), TypeError, "k"),
        ("attn-v-none", _attn(v=None), TypeError, "v"),
        ("attn-v-meta", _attn(v=torch.randn(B, HKV, LK, D, device="meta")), ValueError, "v"),
        ("attn-kv-heads-zero", _attn(k=torch.randn(B, 0, LK, D), v=torch.randn(B, 0, LK, D)),
         ValueError, "heads"),
        ("attn-hq-not-multiple", _attn(q=torch.randn(B, 3, LQ, D)), ValueError, "heads"),
        ("attn-head-dim-zero", _attn(q=q[..., :0], k=k[..., :0], v=v[..., :0]), ValueError,
         "head dim"),
        ("attn-head-dim-257", _attn(q=torch.randn(B, HQ, LQ, 257), k=torch.randn(B, HKV, LK, 257),
                                    v=torch.randn(B, HKV, LK, 257)), ValueError, "head dim"),
        ("attn-q-3d", _attn(q=q[0]), ValueError, "q"),
        ("attn-causal-none", _attn(causal=None), TypeError, "causal"),
        ("attn-causal-tensor", _attn(causal=torch.tensor(True)), TypeError, "causal"),
        ("attn-return-lse-str", _attn(return_lse="yes"), TypeError, "return_lse"),
        ("attn-backend-empty", _attn(backend=""), ValueError, "backend"),
        ("attn-backend-cuda-on-cpu", _attn(backend="cuda"), ValueError, "backend"),
        # --- norms
        ("ln-normalized-shape-float", lambda: fastattn.layer_norm(x, 8.0), TypeError,
         "normalized_shape"),
        ("ln-normalized-shape-bool", lambda: fastattn.layer_norm(x, True), TypeError,
         "normalized_shape"),
        ("ln-normalized-shape-float-list", lambda: fastattn.layer_norm(x, [8.0]), TypeError,
         "normalized_shape"),
        ("ln-normalized-shape-empty", lambda: fastattn.layer_norm(x, ()), ValueError,
         "normalized_shape"),
        ("ln-normalized-shape-too-long", lambda: fastattn.layer_norm(x, (2, 3, 8)), ValueError,
         "normalized_shape"),
        ("ln-x-0d", lambda: fastattn.layer_norm(torch.tensor(1.0), 1), ValueError,
         "normalized_shape"),
        ("ln-x-complex", lambda: fastattn.layer_norm(x.to(torch.complex64), 8), TypeError, "x"),
        ("ln-eps-none", lambda: fastattn.layer_norm(x, 8, w, b, eps=None), TypeError, "eps"),
        ("ln-eps-tensor", lambda: fastattn.layer_norm(x, 8, w, b, eps=torch.tensor(1e-5)),
         TypeError, "eps"),
        ("ln-weight-numpy", lambda: fastattn.layer_norm(x, 8, w.numpy()), TypeError, "weight"),
        ("ln-weight-meta", lambda: fastattn.layer_norm(x, 8, w.to("meta")), ValueError, "weight"),
        ("ln-backend-unknown", lambda: fastattn.layer_norm(x, 8, backend="tpu"), ValueError,
         "backend"),
        ("rms-x-none", lambda: fastattn.rms_norm(None, 8), TypeError, "x"),
        ("rms-eps-nan", lambda: fastattn.rms_norm(x, 8, w, eps=float("nan")), ValueError, "eps"),
        ("aln-weight-shape", lambda: fastattn.add_layer_norm(x, x, torch.randn(7), None),
         ValueError, "weight"),
        ("aln-weight-list", lambda: fastattn.add_layer_norm(x, x, w.tolist(), None), TypeError,
         "weight"),
        ("aln-prenorm-str", lambda: fastattn.add_layer_norm(x, x, w, b, prenorm="yes"),
         TypeError, "prenorm"),
        ("aln-bias-shape", lambda: fastattn.add_layer_norm(x, x, w, torch.randn(4)), ValueError,
         "bias"),
        ("arn-dropout-nan", lambda: fastattn.add_rms_norm(x, x, w, dropout_p=float("nan")),
         ValueError, "dropout_p"),
        ("arn-residual-meta", lambda: fastattn.add_rms_norm(x, x.to("meta"), w), ValueError,
         "residual"),
        ("arn-residual-list", lambda: fastattn.add_rms_norm(x, x.tolist(), w), TypeError,
         "residual"),
        ("arn-eps-negative", lambda: fastattn.add_rms_norm(x, x, w, eps=-1.0), ValueError, "eps"),
        ("arn-prenorm-none", lambda: fastattn.add_rms_norm(x, x, w, prenorm=None), TypeError,
         "prenorm"),
        # (fastattn.nn.MultiheadAttention raises what torch's module raises:
        # tests/test_nn_attention.py::test_bad_input_raises_what_torch_raises)
        # --- swap_modules
        ("swap-model-list", lambda: fastattn.swap_modules([torch.nn.LayerNorm(4)]), TypeError,
         "model"),
        ("swap-backend-unknown", lambda: fastattn.swap_modules(torch.nn.LayerNorm(4),
                                                               backend="nope"),
         ValueError, "backend"),
        ("swap-backend-int", lambda: fastattn.swap_modules(torch.nn.LayerNorm(4), backend=3),
         TypeError, "backend"),
        ("swap-attention-str", lambda: fastattn.swap_modules(torch.nn.LayerNorm(4),
                                                             attention="yes"),
         TypeError, "attention"),
        ("swap-norm-none", lambda: fastattn.swap_modules(torch.nn.LayerNorm(4), norm=None),
         TypeError, "norm"),
        # --- scaled_dot_product_attention: torch's own type checks, same messages
        ("sdpa-query-list", lambda: fastattn.scaled_dot_product_attention([[1.0]], sq, sq),
         TypeError, "query"),
        ("sdpa-dropout-str", lambda: fastattn.scaled_dot_product_attention(sq, sq, sq,
                                                                           dropout_p="0.1"),
         TypeError, "dropout_p"),
        ("sdpa-scale-str", lambda: fastattn.scaled_dot_product_attention(sq, sq, sq, scale="1"),
         TypeError, "scale"),
        ("sdpa-is-causal-str", lambda: fastattn.scaled_dot_product_attention(sq, sq, sq,
                                                                             is_causal="yes"),
         TypeError, "is_causal"),
    ]
    return calls + _varlen_calls()


BAD_CALLS = _bad_calls()


def test_table_is_large_and_distinct():
    ids = [c[0] for c in BAD_CALLS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("fn,exc,name", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_call(fn, exc, name):
    with pytest.raises(exc) as info:
        fn()
    # The stated type and not the other one: a ValueError must not pass for
    # a TypeError's subclass or the other way round. (The norms' shape and
    # dtype errors are also RuntimeErrors, as torch's: _checks.TorchValueError.)
    assert isinstance(info.value, exc)
    assert not isinstance(info.value, TypeError if exc is ValueError else ValueError)
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


def test_bad_call_runs_no_kernel():
    """Checks come before any fastattn:: op is dispatched."""
    from helpers import FastattnOpCounter
    with FastattnOpCounter() as counter:
        for _, fn, exc, _ in BAD_CALLS:
            with pytest.raises(exc):
                fn()
    assert counter.counts == {}


SDPA_TORCH_ERRORS = [
    # (id, kwargs changes) where torch raises RuntimeError: the drop-in does too.
    ("mask-int64", dict(attn_mask=torch.ones(LQ, LQ, dtype=torch.int64))),
    ("key-dtype", dict(key=torch.randn(B, HQ, LQ, D, dtype=torch.float64))),
    ("gqa-without-flag", dict(key=torch.randn(B, HKV, LQ, D), value=torch.randn(B, HKV, LQ, D))),
    ("mask-shape", dict(attn_mask=torch.ones(3, LQ, dtype=torch.bool))),
]


@pytest.mark.parametrize("changes", [pytest.param(c[1], id=c[0]) for c in SDPA_TORCH_ERRORS])
def test_sdpa_raises_what_torch_raises(changes):
    q = torch.randn(B, HQ, LQ, D)
    kw = dict(query=q, key=q.clone(), value=q.clone())
    kw.update(changes)
    with pytest.raises(Exception) as expected:
        torch.nn.functional.scaled_dot_product_attention(**kw)
    with pytest.raises(type(expected.value)) as got:
        fastattn.scaled_dot_product_attention(**kw)
    assert str(got.value) == str(expected.value)


@pytest.mark.skipif(not HAS_CUDA, reason="another device needs a GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["q_lengths", "kv_lengths", "attn_mask"])
def test_cpu_side_tensor_with_cuda_q(name):
    q, k, v = (t.cuda() for t in _qkv())
    extra = dict(q_lengths=torch.tensor([1, 2]), kv_lengths=torch.tensor([3, 4]),
                 attn_mask=torch.randn(LQ, LK))
    with pytest.raises(ValueError, match=name):
        fastattn.attention(q, k, v, **{name: extra[name]})


# ------------------------------------------------------------ backends


ATTN_BACKENDS = [pytest.param("reference", "cpu", id="reference-cpu")] + backend_params(
    "attention")
NORM_BACKENDS = [pytest.param("reference", "cpu", id="reference-cpu")] + backend_params("norm")


# ------------------------------------------------------------ compile


@pytest.mark.parametrize("backend,device", ATTN_BACKENDS)
def test_checks_do_not_break_fullgraph_compile(backend, device):
    """Valid calls with every checked argument trace without graph breaks
    (length values are only read eagerly), and match eager."""
    q, k, v = (t.to(device) for t in _qkv())
    bias = torch.randn(1, HQ, LQ, LK, device=device)
    kv_len = torch.tensor([LK, 3], dtype=torch.int32, device=device)
    x, w, b = (torch.randn(*s, device=device) for s in ((3, 5, 8), (8,), (8,)))

    def f(q, k, v, bias, kv_len, x, w, b):
        out, lse = fastattn.attention(q, k, v, causal=True, attn_mask=bias, kv_lengths=kv_len,
                                      scale=0.3, return_lse=True, backend=backend)
        y = fastattn.layer_norm(x, [8], w, b, eps=1e-6)
        z, h = fastattn.add_rms_norm(x, y, w, dropout_p=0.0, prenorm=True)
        return out, lse, y, z, h

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (q, k, v, bias, kv_len, x, w, b)
    for got, want in zip(compiled(*args), f(*args)):
        torch.testing.assert_close(got, want)



# -------------------------------------------------------- empty tensors


def _leaf(*shape, device):
    return torch.randn(*shape, device=device, dtype=torch.float32).requires_grad_()


@pytest.mark.parametrize("backend,device", ATTN_BACKENDS)
@pytest.mark.parametrize("b,lq,lk", [(0, 5, 7), (2, 0, 7), (2, 5, 0), (0, 0, 0)],
                         ids=["B0", "Lq0", "Lk0", "all0"])
def test_attention_empty(b, lq, lk, backend, device):
    q, k, v = _leaf(b, HQ, lq, D, device=device), _leaf(b, HKV, lk, D, device=device), \
        _leaf(b, HKV, lk, D, device=device)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (b, HQ, lq, D) and lse.shape == (b, HQ, lq)
    # No keys: every row attends nothing -> output 0, lse -inf (API.md).
    assert torch.equal(out, torch.zeros_like(out))
    assert bool((lse == float("-inf")).all())
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert t.grad.shape == t.shape and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("backend,device", ATTN_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_all_kv_lengths_zero(causal, backend, device):
    q, k, v = _leaf(B, HQ, LQ, D, device=device), _leaf(B, HKV, LK, D, device=device), \
        _leaf(B, HKV, LK, D, device=device)
    kv_len = torch.zeros(B, dtype=torch.int32, device=device)
    out, lse = fastattn.attention(q, k, v, causal=causal, kv_lengths=kv_len, return_lse=True,
                                  backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    assert bool((lse == float("-inf")).all())
    (out.sum() + 0 * lse.nan_to_num().sum()).backward()
    for t in (q, k, v):
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("backend,device", NORM_BACKENDS)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
@pytest.mark.parametrize("shape", [(0, 33), (2, 0, 33), (4, 0)], ids=["rows0", "3d-rows0",
                                                                      "cols0"])
def test_norm_empty(op, shape, backend, device):
    x, res = _leaf(*shape, device=device), _leaf(*shape, device=device)
    w, bias = _leaf(shape[-1], device=device), _leaf(shape[-1], device=device)
    n = shape[-1]
    calls = {
        "layer_norm": lambda: fastattn.layer_norm(x, n, w, bias, backend=backend),
        "rms_norm": lambda: fastattn.rms_norm(x, n, w, backend=backend),
        "add_layer_norm": lambda: fastattn.add_layer_norm(x, res, w, bias, backend=backend),
        "add_rms_norm": lambda: fastattn.add_rms_norm(x, res, w, backend=backend),
    }
    y = calls[op]()
    assert y.shape == shape and y.dtype == x.dtype
    y.backward(poison_(torch.empty_like(y)))
    for t in (x, w) + ((res,) if op.startswith("add") else ()):
        assert t.grad.shape == t.shape and torch.equal(t.grad, torch.zeros_like(t))
