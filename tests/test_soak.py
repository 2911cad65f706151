"""Soak: many forward+backward iterations over random small shapes
(attention with random masks, lengths, causality, GQA; the four norms)
must not grow memory: neither Python objects, nor Python allocations
(tracemalloc), nor the process's resident memory (CPU), nor the CUDA
allocator's live bytes (GPU).

CI runs a short variant (1000 iterations on the CPU kernels, seconds); set
FASTATTN_SOAK_ITERS (e.g. 10000) for the full soak, which also runs on the
GPU when one is present.
"""

from __future__ import annotations

import gc
import os
import random
import tracemalloc

import pytest
import torch

import fastattn
from helpers import HAS_CUDA

ITERS = int(os.environ.get("FASTATTN_SOAK_ITERS", "1000"))
WARMUP = 40


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _attention_step(rng: random.Random, device):
    B, Hkv, group = rng.randint(1, 3), rng.randint(1, 2), rng.choice([1, 2])
    Lq, Lk, D = rng.randint(1, 40), rng.randint(1, 40), rng.choice([16, 24, 40, 64])
    q = torch.randn(B, Hkv * group, Lq, D, device=device, requires_grad=True)
    k = torch.randn(B, Hkv, Lk, D, device=device, requires_grad=True)
    v = torch.randn(B, Hkv, Lk, D, device=device, requires_grad=True)
    kw = {"causal": rng.random() < 0.5}
    mask = rng.choice([None, "bool", "bias"])
    if mask == "bool":
        kw["attn_mask"] = torch.rand(B, 1, Lq, Lk, device=device) < 0.8
    elif mask == "bias":
        kw["attn_mask"] = torch.randn(1, Hkv * group, Lq, Lk, device=device,
                                      requires_grad=True)
    if rng.random() < 0.5:
        kw["kv_lengths"] = torch.randint(0, Lk + 1, (B,), device=device)
    out, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
    loss = out.square().sum() + lse.nan_to_num(neginf=0.0).sum()
    loss.backward()
    return loss.item()


def _norm_step(rng: random.Random, device):
    rows, n = rng.randint(0, 50), rng.randint(1, 300)
    x = torch.randn(rows, n, device=device, requires_grad=True)
    res = torch.randn(rows, n, device=device, requires_grad=True)
    w = torch.randn(n, device=device, requires_grad=True)
    b = torch.randn(n, device=device, requires_grad=True)
    op = rng.choice(["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
    p = rng.choice([0.0, 0.1])
    if op == "layer_norm":
        y = fastattn.layer_norm(x, n, w, b)
    elif op == "rms_norm":
        y = fastattn.rms_norm(x, n, w)
    elif op == "add_layer_norm":
        y, _ = fastattn.add_layer_norm(x, res, w, b, dropout_p=p, prenorm=True)
    else:
        y = fastattn.add_rms_norm(x, res, w, dropout_p=p)
    loss = y.square().sum()
    loss.backward()
    return loss.item()


def _snapshot(device):
    gc.collect()
    snap = {"objects": len(gc.get_objects()), "traced": tracemalloc.get_traced_memory()[0],
            "rss": _rss_bytes()}
    if device.type == "cuda":
        torch.cuda.synchronize()
        snap["cuda"] = torch.cuda.memory_allocated(device)
    return snap


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_soak_no_memory_growth(device):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device")
    if device == "cuda" and "FASTATTN_SOAK_ITERS" not in os.environ:
        pytest.skip("the GPU soak runs with FASTATTN_SOAK_ITERS set")
    device = torch.device(device)
    rng = random.Random(1234)
    steps = (_attention_step, _norm_step)
    for i in range(WARMUP):  # caches (backend choice, autotuning) fill here
        steps[i % 2](rng, device)
    tracemalloc.start()
    try:
        first = _snapshot(device)
        for i in range(ITERS // 2):
            assert torch.isfinite(torch.tensor(steps[i % 2](rng, device)))
        middle = _snapshot(device)
        for i in range(ITERS - ITERS // 2):
            assert torch.isfinite(torch.tensor(steps[i % 2](rng, device)))
        last = _snapshot(device)
    finally:
        tracemalloc.stop()
    # Python objects: flat (a clean run gains none in its second half; one
    # tensor kept every other step would add ITERS / 4 there).
    assert last["objects"] - middle["objects"] < 100, (middle, last)
    assert last["objects"] - first["objects"] < 200, (first, last)
    # Python allocations: torch's autograd machinery keeps a few bytes per
    # step in its own caches; a leak of our tensors or buffers is far more.
    assert last["traced"] - first["traced"] < 1 << 20, (first, last)
    # Resident memory may settle during the first half (allocator pools);
    # the second half must not keep growing.
    assert last["rss"] - middle["rss"] < 32 << 20, (middle, last)
    if device.type == "cuda":
        assert last["cuda"] == first["cuda"], (first, last)
