"""Deterministic mode: bitwise-identical results from run to run.

The triton kernels use no atomics (fastattn/ops/attention.py, "Determinism"),
so two runs agree bit for bit; deterministic=True, or torch's global
switch, additionally pins the GPU tile configuration (no autotuning), which
the launcher must receive.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn.ops.attention_varlen import VARLEN_BACKENDS

from helpers import backend_params

BACKENDS = backend_params("attention")
VARLEN = [p for p in BACKENDS if p.values[0] in VARLEN_BACKENDS]
TRITON = [p for p in BACKENDS if p.values[0] == "triton"]


def _twice(fn, *leaves):
    """(outputs and gradients) of two identical runs."""
    runs = []
    for _ in range(2):
        ls = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(*ls)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        runs.append((out, *torch.autograd.grad((out * w).sum(), ls)))
    return runs


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bitwise_identical_gradients(backend, device):
    q = torch.randn(2, 4, 45, 32, device=device)
    k = torch.randn(2, 2, 51, 32, device=device)
    v = torch.randn(2, 2, 51, 32, device=device)
    bias = torch.randn(1, 4, 45, 51, device=device)
    lengths = torch.tensor([51, 30], device=device)

    def fn(q, k, v, bias):
        return fastattn.attention(q, k, v, causal=True, attn_mask=bias, kv_lengths=lengths,
                                  backend=backend, deterministic=True)

    first, second = _twice(fn, q, k, v, bias)
    for name, a, b in zip(["out", "q", "k", "v", "bias"], first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("backend,device", VARLEN)
def test_varlen_bitwise_identical_gradients(backend, device):
    cu_q = torch.tensor([0, 20, 21, 47], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 9, 40, 60], dtype=torch.int32, device=device)
    q = torch.randn(47, 4, 16, device=device)
    k = torch.randn(60, 1, 16, device=device)
    v = torch.randn(60, 1, 16, device=device)

    def fn(q, k, v):
        torch.manual_seed(0)
        return fastattn.attention_varlen(q, k, v, cu_q, cu_k, 26, 31, causal=True,
                                         dropout_p=0.1, backend=backend, deterministic=True)

    first, second = _twice(fn, q, k, v)
    for name, a, b in zip(["out", "q", "k", "v"], first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("backend,device", TRITON)
def test_global_switch_reaches_the_launcher(backend, device, monkeypatch):
    from fastattn.triton import attention as triton_attention
    seen = []
    real = triton_attention._launch

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("deterministic", False))
        return real(*args, **kwargs)
    monkeypatch.setattr(triton_attention, "_launch", spy)
    q = torch.randn(1, 2, 9, 16, device=device, requires_grad=True)
    kv = torch.randn(1, 2, 11, 16, device=device)
    fastattn.attention(q, kv, kv, backend=backend).sum().backward()
    assert seen == [False, False, False]
    seen.clear()
    torch.use_deterministic_algorithms(True)
    try:
        fastattn.attention(q, kv, kv, backend=backend).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [True, True, True]  # forward, dK/dV, dQ


def test_deterministic_must_be_bool():
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(TypeError, match="deterministic"):
        fastattn.attention(q, q, q, deterministic="yes")
