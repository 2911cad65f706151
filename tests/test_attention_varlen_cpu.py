"""The packed C++ CPU kernels: attention_varlen on the cpu backend.

fastattn::attention_varlen_fwd_native / attention_varlen_bwd_native run the
padded kernels on the (total, H, D) tensors in place, each sequence read at
its cu_seqlens offset. What differs from the padded batch is what could go
wrong only there: sequences longer than one query block (64 rows) and than
one key chunk of the backward, several chunks per (sequence, kv head) (few
sequences: the partial-dq pass), empty sequences on either side, causal
with more queries than keys, a window, dlse, the variants and dropout. The
cases run in float64 against fastattn.reference in float64, so any row
read or written at the wrong offset shows as an error far above rounding.
Direct misuse of the native ops raises naming the argument.
"""

from __future__ import annotations

import pytest
import torch

import fastattn
from fastattn import _backends, reference

pytestmark = pytest.mark.skipif(
    bool(_backends.unavailable_reason("cpu", "attention", torch.device("cpu"))),
    reason=_backends.unavailable_reason("cpu", "attention", torch.device("cpu")) or "")


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


CASES = [
    # (id, q lengths, kv lengths, Hq, Hkv, D, kwargs)
    ("long-few-seqs", [130, 0, 70, 1], [65, 3, 200, 0], 2, 1, 24, dict(causal=True)),
    ("self-many-heads", [100, 37, 64], [100, 37, 64], 8, 8, 16, dict()),
    ("window-gqa", [150, 20], [150, 90], 4, 2, 32, dict(causal=True, window_size=(40, 0))),
    ("alibi-softcap", [66, 129], [70, 128], 2, 2, 8,
     dict(alibi_slopes=torch.tensor([[0.5, 0.25], [0.125, 1.0]]), softcap=4.0)),
]


@pytest.mark.parametrize("lq,lk,Hq,Hkv,D,kwargs", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_packed_kernels_match_the_reference(lq, lk, Hq, Hkv, D, kwargs):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(sum(lq), Hq, D, generator=g, dtype=torch.float64)
    k = torch.randn(sum(lk), Hkv, D, generator=g, dtype=torch.float64)
    v = torch.randn(sum(lk), Hkv, D, generator=g, dtype=torch.float64)
    dout = torch.randn(q.shape, generator=g, dtype=torch.float64)
    dlse = torch.randn(Hq, q.shape[0], generator=g, dtype=torch.float64)
    cu_q, cu_k = _cu(lq), _cu(lk)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = fn(*leaves, cu_q, cu_k, max(lq), max(lk), return_lse=True, **kwargs)
        loss = (out * dout).sum() + torch.where(torch.isfinite(lse), lse * dlse, 0.0).sum()
        return (out, lse) + torch.autograd.grad(loss, leaves)

    got = run(lambda *a, **kw: fastattn.attention_varlen(*a, backend="cpu", **kw))
    want = run(reference.attention_varlen)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_packed_dropout_draws_the_padded_mask():
    # Dropout's row of (b, h, i) is (b Hq + h) max_seqlen_q + i in both
    # layouts, so the packed call equals the padded one with lengths.
    lq, lk = [70, 5, 33], [40, 66, 1]
    q = torch.randn(sum(lq), 2, 16, dtype=torch.float64)
    k = torch.randn(sum(lk), 2, 16, dtype=torch.float64)
    v = torch.randn(sum(lk), 2, 16, dtype=torch.float64)
    torch.manual_seed(3)
    out = fastattn.attention_varlen(q, k, v, _cu(lq), _cu(lk), 70, 66, dropout_p=0.3,
                                    backend="cpu")
    qp, kp, vp = (torch.zeros(3, 2, L, 16, dtype=torch.float64) for L in (70, 66, 66))
    for b in range(3):
        qp[b, :, :lq[b]] = q[sum(lq[:b]):sum(lq[:b + 1])].transpose(0, 1)
        kp[b, :, :lk[b]] = k[sum(lk[:b]):sum(lk[:b + 1])].transpose(0, 1)
        vp[b, :, :lk[b]] = v[sum(lk[:b]):sum(lk[:b + 1])].transpose(0, 1)
    torch.manual_seed(3)
    padded = fastattn.attention(qp, kp, vp, q_lengths=torch.tensor(lq), dropout_p=0.3,
                                kv_lengths=torch.tensor(lk), backend="cpu")
    for b in range(3):
        torch.testing.assert_close(out[sum(lq[:b]):sum(lq[:b + 1])],
                                   padded[b, :, :lq[b]].transpose(0, 1), rtol=0, atol=0)


def _native_args(cu_q=None, cu_k=None, max_q=9, max_k=12, q=None):
    q = torch.randn(14, 4, 8) if q is None else q
    k, v = torch.randn(19, 2, 8), torch.randn(19, 2, 8)
    cu_q = torch.tensor([0, 5, 14], dtype=torch.int32) if cu_q is None else cu_q
    cu_k = torch.tensor([0, 7, 19], dtype=torch.int32) if cu_k is None else cu_k
    return (q, k, v, cu_q, cu_k, None, max_q, max_k, False, 0.3, 0.0)


@pytest.mark.parametrize("change,message", [
    (dict(cu_q=torch.tensor([0, 5, 13], dtype=torch.int32)), "cu_seqlens_q must start at 0"),
    (dict(cu_k=torch.tensor([0, 12, 11, 19], dtype=torch.int32)), "cu_seqlens_k must have the"),
    (dict(cu_k=torch.tensor([0, 20, 19], dtype=torch.int32), max_k=30), "must be non-decr"),
    (dict(cu_q=torch.tensor([0, 5, 14])), "cu_seqlens_q must be int32"),
    (dict(cu_k=torch.tensor([0, 19], dtype=torch.int32)), "cu_seqlens_k must have the shape"),
    (dict(max_q=8), "max_seqlen_q=8 is smaller than the longest sequence"),
    (dict(max_k=-1), "max_seqlen_k must be >= 0"),
    (dict(q=torch.randn(2, 14, 4, 8)), "q must be 3-D"),
])
def test_native_packed_op_refuses_bad_arguments(change, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastattn.attention_varlen_fwd_native(*_native_args(**change))


def test_native_packed_backward_checks_lse_shape():
    args = _native_args()
    out, lse = torch.ops.fastattn.attention_varlen_fwd_native(*args)
    q, k, v, cu_q, cu_k = args[:5]
    with pytest.raises(RuntimeError, match=r"lse must be .* of shape \(Hq, total_q\)"):
        torch.ops.fastattn.attention_varlen_bwd_native(out, None, q, k, v, out, lse[:, :3],
                                                       cu_q, cu_k, *args[5:])
