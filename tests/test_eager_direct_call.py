"""Inference calls skip the torch.library op layer (fastattn/ops/_eager.py).

Without autograd, compile, dispatch modes or special tensors, the frontends
call their backend directly (the op layer's Python wrapper costs more than
a small kernel). These tests pin down when that happens and that it
changes nothing: the same bits as through the op.
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


def _forbid(monkeypatch, module, name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was called")
    monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("backend,device", ATTN)
def test_attention_inference_is_direct_and_identical(backend, device, monkeypatch):
    q, k, v = _qkv(device)
    lengths = torch.tensor([5, 13], device=device)
    kw = dict(causal=True, kv_lengths=lengths, return_lse=True, backend=backend)
    via_op = attention_ops.attention_fwd(q, k, v, None, None, lengths, None, True,
                                         16 ** -0.5, 0.0, backend, False)
    _forbid(monkeypatch, attention_ops, "attention_fwd")
    out, lse = fastattn.attention(q, k, v, **kw)
    assert torch.equal(out, via_op[0]) and torch.equal(lse, via_op[1])
    with torch.no_grad():
        fastattn.attention(*_qkv(device, requires_grad=True), **kw)


@pytest.mark.parametrize("backend,device", ATTN)
def test_attention_goes_through_the_op_when_needed(backend, device, monkeypatch):
    _forbid(monkeypatch, attention_ops, "attention_fwd")
    with pytest.raises(AssertionError, match="attention_fwd was called"):
        fastattn.attention(*_qkv(device, requires_grad=True), backend=backend)
    with FastattnOpCounter(), pytest.raises(AssertionError, match="attention_fwd was called"):
        fastattn.attention(*_qkv(device), backend=backend)
    mask = torch.zeros(9, 13, device=device, requires_grad=True)
    with pytest.raises(AssertionError, match="attention_fwd was called"):
        fastattn.attention(*_qkv(device), attn_mask=mask, backend=backend)


@pytest.mark.parametrize("backend,device", NORM)
def test_norm_inference_is_direct_and_identical(backend, device, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, r = (torch.randn(6, 40, generator=g).to(device) for _ in range(2))
    w = torch.nn.Parameter(torch.randn(40, generator=g).to(device), requires_grad=False)
    via_op = norm_ops.norm_fwd(x, r, w, None, None, 1e-5, 0.0, False, True, backend)
    _forbid(monkeypatch, norm_ops, "norm_fwd")
    y, h = fastattn.add_layer_norm(x, r, w, None, eps=1e-5, prenorm=True, backend=backend)
    assert torch.equal(y, via_op[0]) and torch.equal(h, via_op[1])
    w.requires_grad_(True)
    with pytest.raises(AssertionError, match="norm_fwd was called"):
        fastattn.add_layer_norm(x, r, w, None, eps=1e-5, backend=backend)
    with torch.no_grad():
        fastattn.add_layer_norm(x, r, w, None, eps=1e-5, backend=backend)
