"""fastattn.attention_varlen, unpad_input and pad_input.

The property test packs a random padded batch with unpad_input, runs the
packed kernels, and compares with fastattn.attention on the padded batch
with the same lengths: on the valid rows, forward, lse and the gradients of
the padded leaves (which flow back through unpad_input / pad_input) agree,
causal or not, GQA, cross-attention (other lengths for keys), with dropout
too (both draw the padded layout's mask from the same seed).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastattn
from fastattn import _backends, reference

from helpers import assert_close, backend_params

from fastattn.ops.attention_varlen import VARLEN_BACKENDS

# Backends with packed kernels (others refuse attention_varlen).
BACKENDS = [p for p in backend_params("attention") if p.values[0] in VARLEN_BACKENDS]


def _padded(B, L, H, D, lengths, device):
    x = torch.randn(B, L, H, D, device=device, dtype=torch.float64).float()
    mask = torch.arange(L, device=device)[None, :] < lengths[:, None]
    return x, mask


def _varlen_path(qp, kp, vp, mq, mk, causal, p, seed, backend):
    """Padded leaves -> packed -> attention_varlen -> padded (out, lse)."""
    B, Lq = mq.shape
    q, idx_q, cu_q, max_q, _ = fastattn.unpad_input(qp, mq)
    k, idx_k, cu_k, max_k, _ = fastattn.unpad_input(kp, mk)
    v = fastattn.unpad_input(vp, mk)[0]
    torch.manual_seed(seed)
    out, lse = fastattn.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal,
                                         dropout_p=p, return_lse=True, backend=backend)
    assert out.shape == q.shape and lse.shape == (q.shape[1], q.shape[0])
    out_p = fastattn.pad_input(out, idx_q, B, Lq)
    lse_p = fastattn.pad_input(lse.transpose(0, 1), idx_q, B, Lq)
    return out_p, lse_p


def _padded_path(qp, kp, vp, mq, mk, causal, p, seed, backend):
    torch.manual_seed(seed)
    out, lse = fastattn.attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                  causal=causal, q_lengths=mq.sum(1), kv_lengths=mk.sum(1),
                                  dropout_p=p, return_lse=True, backend=backend)
    return out.transpose(1, 2), lse.transpose(1, 2)


@pytest.mark.parametrize("backend,device", BACKENDS)
@settings(max_examples=10, deadline=None, derandomize=True)
@given(B=st.integers(1, 4), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2]),
       D=st.sampled_from([16, 40]), causal=st.booleans(), cross=st.booleans(),
       dropout=st.sampled_from([0.0, 0.0, 0.25]), data=st.data())
def test_varlen_equals_padded(backend, device, B, Hkv, group, D, causal, cross, dropout, data):
    Hq = Hkv * group
    lq = data.draw(st.lists(st.integers(0, 37), min_size=B, max_size=B))
    lk = data.draw(st.lists(st.integers(0, 41), min_size=B, max_size=B)) if cross else lq
    lq = torch.tensor(lq, device=device)
    lk = torch.tensor(lk, device=device)
    Lq, Lk = max(int(lq.max()), 1), max(int(lk.max()), 1)
    qp, mq = _padded(B, Lq, Hq, D, lq, device)
    kp, mk = _padded(B, Lk, Hkv, D, lk, device)
    vp, _ = _padded(B, Lk, Hkv, D, lk, device)
    valid = mq[:, :, None]
    dout = torch.randn(B, Lq, Hq, D, device=device) * valid[..., None]
    dlse = torch.randn(B, Lq, Hq, device=device) * valid

    def run(path):
        leaves = [t.clone().requires_grad_() for t in (qp, kp, vp)]
        out, lse = path(*leaves, mq, mk, causal, dropout, 123, backend)
        finite = torch.where(torch.isfinite(lse) & valid, lse, 0.0)
        loss = (out * dout).sum() + (finite * dlse).sum()
        return out, finite, torch.autograd.grad(loss, leaves)

    out, lse, grads = run(_varlen_path)
    p_out, p_lse, p_grads = run(_padded_path)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, p_out * valid[..., None], **tol)
    torch.testing.assert_close(lse, p_lse, **tol)
    for name, g, pg in zip("qkv", grads, p_grads):
        torch.testing.assert_close(g, pg, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_against_reference(backend, device, causal):
    # The accuracy protocol (docs/TESTING.md) against the fp64 reference: fp16
    # inputs, GQA, cross.
    lq, lk = [9, 0, 33, 1], [12, 5, 30, 17]
    cu_q = torch.tensor([0, 9, 9, 42, 43], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 12, 17, 47, 64], dtype=torch.int32, device=device)
    q = torch.randn(sum(lq), 4, 32, device=device, dtype=torch.float64).half().double()
    k = torch.randn(sum(lk), 2, 32, device=device, dtype=torch.float64).half().double()
    v = torch.randn(sum(lk), 2, 32, device=device, dtype=torch.float64).half().double()
    dout = torch.randn(q.shape, device=device, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, cu_q, cu_k, 33, 30, causal=causal)
        return out, torch.autograd.grad(out, leaves, dout.to(dtype))

    out, grads = run(lambda *a, **kw: fastattn.attention_varlen(*a, **kw, backend=backend),
                     torch.float16)
    t_out, t_grads = run(reference.attention_varlen, torch.float64)
    b_out, b_grads = run(reference.attention_varlen, torch.float16)
    assert_close(out, t_out, b_out, name="out")
    assert (out[9:9] == 0).all()
    for name, g, t, b in zip("qkv", grads, t_grads, b_grads):
        assert_close(g, t, b, name=f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_varlen_writes_every_row_and_only_its_rows(backend, device, monkeypatch):
    # Allocations inside the op start as NaN (an unwritten row shows up), and
    # a program storing past its sequence's end would overwrite the next
    # sequence's rows: both would break the comparison with the reference.
    cu_q = torch.tensor([0, 7, 20, 21], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 3, 19, 30], dtype=torch.int32, device=device)
    q = torch.randn(21, 2, 16, device=device)
    k = torch.randn(30, 1, 16, device=device)
    v = torch.randn(30, 1, 16, device=device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poisoned(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poisoned(real_empty_like(*a, **kw)))
    out = fastattn.attention_varlen(*leaves, cu_q, cu_k, 13, 16, causal=True, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    monkeypatch.undo()

    def ref(dtype):
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        o = reference.attention_varlen(*ins, cu_q, cu_k, 13, 16, causal=True)
        return o, torch.autograd.grad(o.square().sum(), ins)
    (t_out, t_grads), (b_out, b_grads) = ref(torch.float64), ref(torch.float32)
    assert_close(out, t_out, b_out, name="out")
    for name, g, t, b in zip("qkv", grads, t_grads, b_grads):
        assert_close(g, t, b, name=f"grad {name}")


def test_unpad_pad_roundtrip_and_gradient():
    x = torch.randn(3, 6, 2, 4, requires_grad=True)
    mask = torch.rand(3, 6) < 0.6
    mask[1] = False  # an empty row
    packed, idx, cu, max_len, used = fastattn.unpad_input(x, mask)
    assert packed.shape == (int(mask.sum()), 2, 4)
    assert cu.dtype == torch.int32 and cu.tolist()[-1] == packed.shape[0]
    assert used.tolist() == mask.sum(1).tolist() and max_len == int(used.max())
    back = fastattn.pad_input(packed, idx, 3, 6)
    assert torch.equal(back, x.detach() * mask[..., None, None])
    w = torch.randn_like(back)
    (g,) = torch.autograd.grad((back * w).sum(), [x])
    assert torch.equal(g, w * mask[..., None, None])


def _bad_calls():
    q = torch.randn(10, 2, 16)
    k = torch.randn(8, 2, 16)
    cu_q = torch.tensor([0, 4, 10], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 8], dtype=torch.int32)
    ok = (q, k, k, cu_q, cu_k, 6, 5)
    return [
        ("q", ValueError, (torch.randn(1, 10, 2, 16),) + ok[1:], {}),
        ("cu_seqlens_q", TypeError, ok[:3] + (cu_q.long(),) + ok[4:], {}),
        ("cu_seqlens_k", ValueError, ok[:4] + (torch.tensor([0, 8], dtype=torch.int32),)
         + ok[5:], {}),
        ("cu_seqlens_q", ValueError, ok[:3] + (torch.tensor([0, 4, 9], dtype=torch.int32),)
         + ok[4:], {}),
        ("cu_seqlens_k", ValueError, ok[:4] + (torch.tensor([0, 9, 8], dtype=torch.int32),)
         + ok[5:], {}),
        ("max_seqlen_q", ValueError, ok[:5] + (5, 5), {}),
        ("max_seqlen_k", TypeError, ok[:6] + (5.0,), {}),
        ("dropout_p", ValueError, ok, dict(dropout_p=1.0)),
        ("backend", ValueError, ok, dict(backend="cuda")),
    ]


@pytest.mark.parametrize("name,exc,args,kwargs", [pytest.param(*c, id=f"{c[0]}-{i}")
                                                  for i, c in enumerate(_bad_calls())])
def test_varlen_bad_input(name, exc, args, kwargs):
    with pytest.raises(exc, match=name):
        fastattn.attention_varlen(*args, **kwargs)


def _opcheck_params():
    return [pytest.param("reference", "cpu", id="reference-cpu")] + list(BACKENDS)


@pytest.mark.parametrize("backend,device", _opcheck_params())
def test_varlen_opcheck(backend, device):
    from fastattn.ops import attention_varlen as ops
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 6, 7], dtype=torch.int32, device=device)
    q = torch.randn(8, 4, 16, device=device, requires_grad=True)
    k = torch.randn(7, 2, 16, device=device, requires_grad=True)
    v = torch.randn(7, 2, 16, device=device, requires_grad=True)
    torch.library.opcheck(ops.attention_varlen_fwd,
                          (q, k, v, cu_q, cu_k, None, 5, 6, True, 0.25, 0.0, backend))


@pytest.mark.skipif(bool(_backends.unavailable_reason("cpu", "attention", torch.device("cpu"))),
                    reason="the C++ cpu backend is not built")
def test_auto_uses_the_cpu_kernels_on_cpu(monkeypatch):
    from fastattn.ops import attention_varlen as ops
    monkeypatch.delenv("FASTATTN_BACKEND", raising=False)
    assert ops.pick_backend("auto", torch.randn(4, 2, 16)) == "cpu"
