"""Eager calls bypass the torch.library op layer (fastattn/ops/_eager.py).

In plain eager execution the frontends call their backend directly
(inference) or through an autograd.Function equivalent to the op's
registered autograd (training), because the op layer's Python wrapper
costs more than a small kernel. These tests pin down when that happens and
that it changes nothing: outputs and gradients are the same bits as
through the op, which torch.compile, dispatch modes and functorch keep
seeing.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn.ops import attention as attention_ops
from fastattn.ops import norm as norm_ops

from helpers import FastattnOpCounter, backend_params

ATTN = backend_params("attention")
NORM = backend_params("norm")


def _qkv(device, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 16, generator=g).to(device)
    k = torch.randn(2, 2, 13, 16, generator=g).to(device)
    v = torch.randn(2, 2, 13, 16, generator=g).to(device)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


class _Forbidden:
    """Replaces a custom op in its module; calling it fails the test."""

    def __init__(self, monkeypatch, module, name):
        self.real = getattr(module, name)
        self.name = name
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.name} was called")


def _attention_run(q, k, v, mask, backend, via_op):
    """out, lse and the gradients of every leaf, through the op or not."""
    lengths = torch.tensor([5, 13], device=q.device)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(q.device)
    if via_op:  # a dispatch mode active: the frontend must take the op
        with FastattnOpCounter() as counter:
            out, lse = fastattn.attention(q, k, v, causal=True, attn_mask=mask,
                                          kv_lengths=lengths, return_lse=True,
                                          backend=backend)
        assert counter.counts.get("attention_fwd") == 1
    else:
        out, lse = fastattn.attention(q, k, v, causal=True, attn_mask=mask, kv_lengths=lengths,
                                      return_lse=True, backend=backend)
    leaves = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out * dout).sum() + lse.sum(), leaves) if leaves else ()
    return (out.detach(), lse.detach(), *grads)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("backend,device", ATTN)
def test_attention_eager_path_equals_the_op(backend, device, training, monkeypatch):
    def inputs():
        q, k, v = _qkv(device, requires_grad=training)
        mask = torch.randn(9, 13, generator=torch.Generator().manual_seed(2)).to(device)
        mask.requires_grad_(training)
        return q, k, v, mask
    want = _attention_run(*inputs(), backend, via_op=True)
    forbidden = _Forbidden(monkeypatch, attention_ops, "attention_fwd")
    got = _attention_run(*inputs(), backend, via_op=False)
    monkeypatch.setattr(attention_ops, "attention_fwd", forbidden.real)
    assert len(got) == len(want) == (6 if training else 2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("backend,device", NORM)
def test_norm_eager_path_equals_the_op(backend, device, training, monkeypatch):
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(6, 40, generator=g).to(device) for _ in range(2)]
    w0 = torch.randn(40, generator=g).to(device)
    dy = torch.randn(6, 40, generator=g).to(device)

    def run(via_op):
        x, r = (t.clone().requires_grad_(training) for t in base)
        w = torch.nn.Parameter(w0.clone(), requires_grad=training)
        if via_op:
            with FastattnOpCounter() as counter:
                y, h = fastattn.add_layer_norm(x, r, w, None, eps=1e-5, prenorm=True,
                                               backend=backend)
            assert counter.counts.get("norm_fwd") == 1
        else:
            y, h = fastattn.add_layer_norm(x, r, w, None, eps=1e-5, prenorm=True,
                                           backend=backend)
        grads = torch.autograd.grad((y * dy).sum() + h.sum(), (x, r, w)) if training else ()
        return (y.detach(), h.detach(), *grads)
    want = run(via_op=True)
    forbidden = _Forbidden(monkeypatch, norm_ops, "norm_fwd")
    got = run(via_op=False)
    monkeypatch.setattr(norm_ops, "norm_fwd", forbidden.real)
    assert len(got) == len(want) == (5 if training else 2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", ATTN)
def test_compile_and_functorch_keep_the_op(backend, device):
    """The op stays where tracing or transforms need it."""
    q, k, v = _qkv(device)
    torch._dynamo.reset()
    with FastattnOpCounter() as counter:  # (also a dispatch mode: the op is taken)
        fastattn.attention(q, k, v, backend=backend)
    assert counter.counts == {"attention_fwd": 1}
    from fastattn.ops import _eager
    assert _eager.eager_ok(q)

    def probe(x):
        assert not _eager.eager_ok(x)
        return x.sum()
    torch.func.grad(probe)(q)
    seen = []

    def traced(x):
        seen.append(_eager.eager_ok(x))
        return x + 1
    torch.compile(traced, backend="eager", fullgraph=True)(q)
    assert seen == [False]
