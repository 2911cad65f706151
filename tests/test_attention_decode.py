"""The split-KV decoding forward (fastattn/triton/attention_decode.py).

Under the interpreter FASTATTN_SPLIT_KV=1 forces the split path (the shape
heuristic only splits on a GPU); on a GPU the heuristic chooses it by
itself for the long-key cases. Output and lse are judged against the fp64
reference by the accuracy protocol (docs/TESTING.md); gradients go through the normal backward
from the split forward's out and lse.
"""

from __future__ import annotations

import pytest
import torch

from fastattn.triton import attention_decode

from helpers import backend_params
from test_attention import Case, check_case, make_inputs

TRITON = [p for p in backend_params("attention") if p.values[0] == "triton"]

DECODE_CASES = [
    Case(2, 4, 2, 1, 300, 64),
    Case(3, 8, 2, 3, 217, 32, causal=True, q_lengths=True, kv_lengths=True),
    Case(2, 4, 4, 16, 150, 40, causal=True, mask="bool", mask_shape="Bqk"),
    Case(2, 4, 1, 2, 190, 16, mask="float_grad", mask_shape="Hk", kv_lengths=True),
    Case(1, 2, 1, 5, 2500, 64, causal=True),
]


@pytest.mark.parametrize("backend,device", TRITON)
@pytest.mark.parametrize("case", DECODE_CASES, ids=str)
def test_split_kv_matches_reference(case, backend, device, monkeypatch):
    monkeypatch.setenv("FASTATTN_SPLIT_KV", "1")
    inputs = make_inputs(case, device, torch.float32)
    assert attention_decode.split_kv_plan(inputs["q"], inputs["k"], 0.0, 16) > 1
    dtype = torch.float16 if case.Lk < 1000 else torch.float32
    check_case(case, backend, device, dtype)


@pytest.mark.parametrize("backend,device", [p for p in TRITON if p.id.endswith("cuda")])
@pytest.mark.parametrize("Lk", [4096, 32768])
def test_split_kv_long_cache_on_gpu(backend, device, Lk, monkeypatch):
    # The heuristic alone picks the split path here (B * Hq programs are
    # far fewer than the GPU's multiprocessors).
    monkeypatch.delenv("FASTATTN_SPLIT_KV", raising=False)
    case = Case(1, 8, 2, 4, Lk, 128, causal=True, kv_lengths=True)
    inputs = make_inputs(case, device, torch.bfloat16)
    assert attention_decode.split_kv_plan(inputs["q"], inputs["k"], 0.0, 64) > 1
    check_case(case, backend, device, torch.bfloat16)


def test_split_kv_heuristic(monkeypatch):
    monkeypatch.delenv("FASTATTN_SPLIT_KV", raising=False)
    q = torch.randn(1, 4, 2, 16)
    k = torch.randn(1, 2, 4096, 16)
    plan = attention_decode.split_kv_plan
    if not torch.cuda.is_available():
        assert plan(q, k, 0.0, 16) == 0  # CPU tensors: only when forced
    monkeypatch.setenv("FASTATTN_SPLIT_KV", "1")
    assert plan(q, k, 0.0, 16) > 1
    assert plan(q, k, 0.1, 16) == 0                         # dropout: normal path
    assert plan(torch.randn(1, 4, 17, 16), k, 0.0, 16) == 0  # too many queries
    monkeypatch.setenv("FASTATTN_SPLIT_KV", "0")
    assert plan(q, k, 0.0, 16) == 0
