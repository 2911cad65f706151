"""The C++ CPU attention kernels' instruction-set variants.

csrc/cpu/cpu_isa.h compiles the hot loops for SSE2 (the default target),
AVX2 and AVX-512 and runs the widest one the CPU supports; the shared
suite (test_attention.py, test_attention_dropout.py) therefore only sees
that one. FASTATTN_CPU_ISA lowers the choice, so here every narrower
variant runs the accuracy protocol on cases that reach their different
code paths: head dims that leave a column remainder in the tile products,
odd lengths, masks, causal, GQA, float16 and dropout.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import _backends

from test_attention import Case, check_case
from test_attention_dropout import _kernel

pytestmark = pytest.mark.skipif(
    bool(_backends.unavailable_reason("cpu", "attention", torch.device("cpu"))),
    reason=_backends.unavailable_reason("cpu", "attention", torch.device("cpu")) or "")

ISAS = ["default", "avx2"]

CASES = [
    Case(2, 4, 2, 67, 131, 40, causal=True, mask="float_grad", mask_shape="Hqk",
         q_lengths=True, kv_lengths=True),
    Case(1, 2, 2, 9, 70, 24, mask="bool", mask_shape="Bqk"),
    Case(2, 2, 1, 65, 64, 128, causal=True, layout="blhd"),
    # a few query rows: scores as dot products (decoding), one-query fast path
    Case(2, 4, 2, 3, 131, 40, causal=True, mask="float_grad", mask_shape="Hqk",
         kv_lengths=True),
    Case(1, 2, 1, 1, 300, 64, mask="bool", mask_shape="Bqk"),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_isa_variant_accuracy(isa, case, dtype, monkeypatch):
    monkeypatch.setenv("FASTATTN_CPU_ISA", isa)
    check_case(case, "cpu", "cpu", dtype)


@pytest.mark.parametrize("isa", ISAS)
def test_isa_variants_draw_the_same_dropout(isa, monkeypatch):
    # Same seed: the variant's output (and gradient) equals the widest
    # variant's up to rounding, so it applied the identical mask.
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 4, 37, 40, generator=g).requires_grad_() for _ in range(3))
    run = _kernel("cpu", True, 0.3)
    results = []
    for chosen in (None, isa):
        if chosen is None:
            monkeypatch.delenv("FASTATTN_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("FASTATTN_CPU_ISA", chosen)
        torch.manual_seed(11)
        out, _ = run(q, k, v, None, None, None)
        (dq,) = torch.autograd.grad(out.square().sum(), [q])
        results.append((out.detach(), dq))
    (o1, g1), (o2, g2) = results
    assert (o1 == 0).eq(o2 == 0).all()
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)


def test_auto_picks_cpu_backend():
    q = torch.randn(1, 2, 5, 16)
    assert fastattn.ops.attention.pick_backend("auto", q) == "cpu"


# The backward splits the keys of each (batch, kv head) into chunks when there
# are fewer than 32 such heads (partial dq summed in a final pass) and lets
# each item write dq itself otherwise: both ways, with causal, lengths, GQA
# and a bias gradient.
SPLIT_CASES = [
    Case(1, 2, 1, 130, 300, 64, causal=True, mask="float_grad", mask_shape="Hqk",
         q_lengths=True, kv_lengths=True),  # one kv head, 5 key blocks: 5 chunks
    Case(4, 16, 8, 70, 129, 32, causal=True, mask="bool", mask_shape="Bqk",
         q_lengths=True, kv_lengths=True),  # 32 kv heads: one chunk each
]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=str)
def test_backward_key_split(case):
    check_case(case, "cpu", "cpu", torch.float32)


@pytest.mark.parametrize("heads", [1, 32])
def test_result_independent_of_thread_count(heads):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, heads, 150, 32, generator=g).requires_grad_() for _ in range(3))
    dout = torch.randn(1, heads, 150, 32, generator=g)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            out = fastattn.attention(q, k, v, causal=True, backend="cpu")
            results.append((out, *torch.autograd.grad(out, (q, k, v), dout)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# Query blocks of up to 4 rows form their scores as dot products (16 keys at
# a time plus single ones), one row takes the contiguous one-query path, more
# rows round their columns up to a vector: every count from 1 to 17 rows,
# with causal, a float mask, odd key counts and a head dim off the lane width.
@pytest.mark.parametrize("lq", [1, 2, 4, 5, 17])
def test_few_query_rows(lq):
    check_case(Case(2, 3, 3, lq, 83, 24, causal=True, mask="float_grad", mask_shape="Bqk",
                    kv_lengths=True), "cpu", "cpu", torch.float32)


def test_kernels_leave_the_callers_subnormal_mode_alone():
    # The kernels flush subnormals while they run (csrc/cpu/work_queue.h)
    # and restore the thread's mode: with one thread they run on the caller's.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.set_flush_denormal(False)
        q = torch.randn(1, 2, 70, 16, requires_grad=True)
        out = fastattn.attention(q, q, q, alibi_slopes=torch.full((2,), 4.0), backend="cpu")
        out.sum().backward()
        tiny = torch.tensor([1e-39], dtype=torch.float32)
        assert (tiny * 1.5).item() != 0.0  # still computed as a subnormal
    finally:
        torch.set_num_threads(previous)
