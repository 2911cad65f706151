"""Bad calls to fastattn.attention raise TypeError/ValueError naming the
argument, before any kernel runs (the reference backend would otherwise
compute something or fail deep inside torch)."""

from __future__ import annotations

import pytest
import torch

import fastattn

B, HQ, HKV, LQ, LK, D = 2, 4, 2, 5, 7, 16


def _good():
    return dict(q=torch.randn(B, HQ, LQ, D), k=torch.randn(B, HKV, LK, D),
                v=torch.randn(B, HKV, LK, D))


def _with(**changes):
    kw = _good()
    kw.update(changes)
    return kw


BAD_CALLS = [
    # (id, kwargs, exception type, text the message must contain)
    ("q-not-tensor", _with(q=[[1.0]]), TypeError, "q"),
    ("q-rank3", _with(q=torch.randn(HQ, LQ, D)), ValueError, "q"),
    ("k-rank5", _with(k=torch.randn(1, B, HKV, LK, D)), ValueError, "k"),
    ("v-rank2", _with(v=torch.randn(LK, D)), ValueError, "v"),
    ("q-int", _with(q=torch.randint(0, 3, (B, HQ, LQ, D))), TypeError, "q"),
    ("k-dtype-mismatch", _with(k=torch.randn(B, HKV, LK, D, dtype=torch.float64)), TypeError,
     "k"),
    ("v-dtype-mismatch", _with(v=torch.randn(B, HKV, LK, D, dtype=torch.float16)), TypeError,
     "v"),
    ("k-batch", _with(k=torch.randn(B + 1, HKV, LK, D), v=torch.randn(B + 1, HKV, LK, D)),
     ValueError, "batch"),
    ("k-head-dim", _with(k=torch.randn(B, HKV, LK, D + 8), v=torch.randn(B, HKV, LK, D + 8)),
     ValueError, "head dim"),
    ("v-shape", _with(v=torch.randn(B, HKV, LK + 1, D)), ValueError, "v"),
    ("heads-not-multiple", _with(k=torch.randn(B, 3, LK, D), v=torch.randn(B, 3, LK, D)),
     ValueError, "heads"),
    ("head-dim-zero", _with(q=torch.randn(B, HQ, LQ, 0), k=torch.randn(B, HKV, LK, 0),
                            v=torch.randn(B, HKV, LK, 0)), ValueError, "head dim"),
    ("head-dim-too-large",
     _with(q=torch.randn(1, 1, 2, 264), k=torch.randn(1, 1, 2, 264),
           v=torch.randn(1, 1, 2, 264)), ValueError, "head dim"),
    ("mask-not-tensor", _with(attn_mask=[[True]]), TypeError, "attn_mask"),
    ("mask-int", _with(attn_mask=torch.ones(LQ, LK, dtype=torch.int32)), TypeError, "attn_mask"),
    ("mask-wrong-lk", _with(attn_mask=torch.ones(LQ, LK + 1, dtype=torch.bool)), ValueError,
     "attn_mask"),
    ("mask-wrong-heads", _with(attn_mask=torch.randn(B, 3, LQ, LK)), ValueError, "attn_mask"),
    ("mask-rank5", _with(attn_mask=torch.randn(1, B, HQ, LQ, LK)), ValueError, "attn_mask"),
    ("mask-kv-heads", _with(attn_mask=torch.randn(B, HKV, LQ, LK)), ValueError, "attn_mask"),
    ("q-lengths-float", _with(q_lengths=torch.tensor([1.0, 2.0])), TypeError, "q_lengths"),
    ("q-lengths-shape", _with(q_lengths=torch.tensor([1, 2, 3])), ValueError, "q_lengths"),
    ("kv-lengths-2d", _with(kv_lengths=torch.tensor([[1, 2]])), ValueError, "kv_lengths"),
    ("kv-lengths-list", _with(kv_lengths=[1, 2]), TypeError, "kv_lengths"),
    ("kv-lengths-too-long", _with(kv_lengths=torch.tensor([LK, LK + 1])), ValueError,
     "kv_lengths"),
    ("q-lengths-negative", _with(q_lengths=torch.tensor([-1, 2], dtype=torch.int32)),
     ValueError, "q_lengths"),
    ("dropout-negative", _with(dropout_p=-0.1), ValueError, "dropout_p"),
    ("dropout-one", _with(dropout_p=1.0), ValueError, "dropout_p"),
    ("dropout-str", _with(dropout_p="0.1"), TypeError, "dropout_p"),
    ("scale-str", _with(scale="0.5"), TypeError, "scale"),
    ("scale-tensor", _with(scale=torch.tensor(0.5)), TypeError, "scale"),
    ("scale-nan", _with(scale=float("nan")), ValueError, "scale"),
    ("causal-str", _with(causal="yes"), TypeError, "causal"),
    ("return-lse-int", _with(return_lse=1), TypeError, "return_lse"),
    ("backend-unknown", _with(backend="fast"), ValueError, "backend"),
    ("backend-not-str", _with(backend=3), TypeError, "backend"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("kwargs,exc,text", [pytest.param(*c[1:], id=c[0]) for c in BAD_CALLS])
def test_bad_input(kwargs, exc, text, backend):
    kwargs = dict(kwargs)
    kwargs.setdefault("backend", backend)
    with pytest.raises(exc, match=text):
        fastattn.attention(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for mixed devices")
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["k", "v", "attn_mask", "q_lengths"])
def test_mixed_devices(name):
    kw = {n: t.cuda() for n, t in _good().items()}
    cpu = dict(k=torch.randn(B, HKV, LK, D), v=torch.randn(B, HKV, LK, D),
               attn_mask=torch.ones(LQ, LK, dtype=torch.bool),
               q_lengths=torch.tensor([1, 2]))
    kw[name] = cpu[name]
    with pytest.raises(ValueError, match=name):
        fastattn.attention(**kw)


def test_mixed_devices_meta():
    # Without a GPU, a meta tensor stands in for "another device".
    kw = _good()
    kw["k"] = torch.randn(B, HKV, LK, D, device="meta")
    with pytest.raises(ValueError, match="k"):
        fastattn.attention(**kw)
    kw = _good()
    kw["kv_lengths"] = torch.tensor([1, 2], device="meta")
    with pytest.raises(ValueError, match="kv_lengths"):
        fastattn.attention(**kw)

