"""Dropout inside the attention kernels.

The reference draws the identical mask from the same torch seed
(fastattn._rng, row = (b * Hq + h) * Lq + i, col = j), so a kernel with
dropout is judged against the reference exactly like one without: output,
lse and every gradient, by the accuracy protocol (docs/TESTING.md). The mask itself is read
back from the kernel with an identity V (out = the dropped probabilities)
and compared with the hash, which also checks the keep rate and the
1 / (1 - p) scaling.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import _rng, reference

from helpers import assert_close, backend_params
from test_attention import Case, fwd_bwd, make_inputs

BACKENDS = backend_params("attention")

DROPOUT_CASES = [
    Case(2, 2, 2, 33, 40, 32),
    Case(2, 4, 2, 17, 33, 16, causal=True),
    Case(3, 2, 1, 19, 23, 16, causal=True, q_lengths=True, kv_lengths=True),
    Case(2, 2, 2, 20, 33, 40, mask="bool", mask_shape="Bqk"),
    Case(2, 2, 1, 17, 20, 16, causal=True, mask="float_grad", mask_shape="Hqk",
         kv_lengths=True, layout="blhd"),
]


def _seeded(fn, seed: int):
    """`fn` run right after torch.manual_seed(seed): the same dropout seed
    is drawn on every call."""
    def run(**kw):
        torch.manual_seed(seed)
        return fn(**kw)
    return run


def _kernel(backend, causal, p):
    def fn(q, k, v, attn_mask, q_lengths, kv_lengths):
        return fastattn.attention(q, k, v, causal=causal, attn_mask=attn_mask,
                                  q_lengths=q_lengths, kv_lengths=kv_lengths, dropout_p=p,
                                  return_lse=True, backend=backend)
    return fn


def _reference(causal, p, compute_dtype=None):
    def fn(q, k, v, attn_mask, q_lengths, kv_lengths):
        return reference._attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, p,
                                    None, compute_dtype=compute_dtype)
    return fn


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=str)
def test_dropout_matches_reference(case, backend, device):
    p = 0.3
    inputs = make_inputs(case, device, torch.float32)
    mask_grad = case.mask == "float_grad"
    seed = int(torch.randint(0, 2**31, ()))
    out, lse, grads = fwd_bwd(_seeded(_kernel(backend, case.causal, p), seed), inputs,
                              torch.float32, mask_grad)
    t_out, t_lse, t_grads = fwd_bwd(_seeded(_reference(case.causal, p), seed), inputs,
                                    torch.float64, mask_grad)
    b_out, b_lse, b_grads = fwd_bwd(_seeded(_reference(case.causal, p, torch.float32), seed),
                                    inputs, torch.float32, mask_grad)
    assert_close(out, t_out, b_out, name="out")
    finite = torch.isfinite(t_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert_close(lse[finite], t_lse[finite], b_lse[finite], name="lse")
    for name, g in grads.items():
        assert_close(g, t_grads[name], b_grads[name], name=f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_keep_rate_and_scaling(backend, device, p):
    # V = identity over the keys makes out the (dropped) probability matrix:
    # out_drop / out_nodrop is 0 where dropped and 1 / (1 - p) where kept.
    B, H, Lq, Lk = 2, 2, 64, 64
    q = torch.randn(B, H, Lq, Lk, device=device, dtype=torch.float64)
    k = torch.randn(B, H, Lk, Lk, device=device, dtype=torch.float64)
    v = torch.eye(Lk, device=device, dtype=torch.float64).expand(B, H, Lk, Lk)
    seed = _rng.draw_seed(torch.device(device))
    torch.manual_seed(11)
    expected_seed = _rng.draw_seed(torch.device(device))
    torch.manual_seed(11)
    dropped = fastattn.attention(q, k, v, dropout_p=p, backend=backend)
    full = fastattn.attention(q, k, v, backend=backend)
    ratio = dropped / full
    kept = ratio != 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)), rtol=1e-12)
    expected = _rng.keep_mask(expected_seed, B * H * Lq, Lk, p, device).view(B, H, Lq, Lk)
    assert torch.equal(kept, expected)
    n = kept.numel()
    tolerance = 5 * (p * (1 - p) / n) ** 0.5  # five standard deviations
    assert abs(kept.double().mean().item() - (1 - p)) < tolerance
    assert not torch.equal(expected, _rng.keep_mask(seed, B * H * Lq, Lk, p, device)
                           .view(B, H, Lq, Lk))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dropout_same_seed_same_result(backend, device):
    q = torch.randn(2, 4, 21, 32, device=device, requires_grad=True)
    k = torch.randn(2, 2, 30, 32, device=device, requires_grad=True)
    v = torch.randn(2, 2, 30, 32, device=device, requires_grad=True)

    def run(seed):
        torch.manual_seed(seed)
        out = fastattn.attention(q, k, v, causal=True, dropout_p=0.2, backend=backend)
        return (out, *torch.autograd.grad(out.square().sum(), [q, k, v]))

    first, again, other = run(1), run(1), run(2)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    for a, b in zip(first, other):
        assert not torch.equal(a, b)
    no_dropout = fastattn.attention(q, k, v, causal=True, backend=backend)
    assert not torch.equal(first[0], no_dropout)


@pytest.mark.parametrize("backend,device", backend_params("attention", devices=("cpu",)))
def test_dropout_gradcheck(backend, device):
    # The seed is fixed inside the function, so every evaluation of gradcheck
    # sees the same mask (a fresh draw per call would not be a function).
    q = torch.randn(1, 2, 5, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 7, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 7, 16, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v):
        torch.manual_seed(5)
        out, lse = fastattn.attention(q, k, v, causal=True, dropout_p=0.4, return_lse=True,
                                      backend=backend)
        return out, lse

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)

