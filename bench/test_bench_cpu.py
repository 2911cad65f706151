"""CPU regression benchmarks with pytest-benchmark (not part of the test suite).

    pytest bench/test_bench_cpu.py --benchmark-autosave        # record a run
    pytest bench/test_bench_cpu.py --benchmark-compare         # against the last one

Times fastattn's compiled `cpu` backend (norms; attention once that backend
implements it) on fixed shapes, so a slowdown between commits shows up in
the comparison. Each benchmarked result is also checked against the fp64
reference, so a fast wrong kernel fails here too. Skipped, with the reason,
where the cpu backend is not built. The default `pytest` run (testpaths =
tests) does not collect this file.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import _backends, reference
from fastattn.testing import assert_close

CPU = torch.device("cpu")
NORM_SHAPES = [(4096, 768), (1024, 4096), (257, 1000)]
ATTENTION_SHAPES = [(4, 12, 128, 64), (2, 12, 512, 64), (1, 8, 1000, 80)]


def _skip_unless_cpu(family: str):
    why = (_backends.unavailable_reason("cpu", family, CPU)
           if family in _backends.OP_BACKENDS else f"fastattn has no {family} op")
    return pytest.mark.skipif(bool(why), reason=why or "available")


def _norm_call(norm: str, x, residual, weight, bias):
    if norm == "layer_norm":
        return lambda m: m.layer_norm(x, x.shape[-1:], weight, bias, **_cpu(m))
    if norm == "rms_norm":
        return lambda m: m.rms_norm(x, x.shape[-1:], weight, 1e-6, **_cpu(m))
    if norm == "add_layer_norm":
        return lambda m: m.add_layer_norm(x, residual, weight, bias, **_cpu(m))
    return lambda m: m.add_rms_norm(x, residual, weight, 1e-6, **_cpu(m))


def _cpu(module) -> dict:
    return {"backend": "cpu"} if module is fastattn else {}


@_skip_unless_cpu("norm")
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_norm_forward(benchmark, norm, rows, hidden):
    x = torch.randn(rows, hidden)
    residual = torch.randn(rows, hidden)
    weight = 1 + 0.1 * torch.randn(hidden)
    bias = 0.1 * torch.randn(hidden)
    call = _norm_call(norm, x, residual, weight, bias)
    out = benchmark(call, fastattn)
    truth = _norm_call(norm, x.double(), residual.double(), weight.double(), bias.double())(
        reference)
    baseline = _norm_call(norm, x, residual, weight, bias)(reference)
    assert_close(out, truth, baseline)


@_skip_unless_cpu("norm")
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES[:2], ids=lambda v: str(v))
def test_layer_norm_forward_backward(benchmark, rows, hidden):
    x = torch.randn(rows, hidden, requires_grad=True)
    weight = (1 + 0.1 * torch.randn(hidden)).requires_grad_()
    bias = (0.1 * torch.randn(hidden)).requires_grad_()
    dy = torch.randn(rows, hidden)

    def step():
        y = fastattn.layer_norm(x, (hidden,), weight, bias, backend="cpu")
        return torch.autograd.grad(y, (x, weight, bias), dy)
    dx, _, _ = benchmark(step)
    x64 = x.detach().double().requires_grad_()
    y64 = reference.layer_norm(x64, (hidden,), weight.detach().double(), bias.detach().double())
    (truth,) = torch.autograd.grad(y64, x64, dy.double())
    x32 = x.detach().requires_grad_()
    (baseline,) = torch.autograd.grad(
        torch.nn.functional.layer_norm(x32, (hidden,), weight.detach(), bias.detach()), x32, dy)
    assert_close(dx, truth, baseline, "dx")


@_skip_unless_cpu("attention")
@pytest.mark.parametrize("B,H,L,D", ATTENTION_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward(benchmark, B, H, L, D, causal):
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    out = benchmark(lambda: fastattn.attention(q, k, v, causal=causal, backend="cpu"))
    truth = reference.attention(q.double(), k.double(), v.double(), causal=causal)
    baseline = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert_close(out, truth, baseline)
