"""torch.library.opcheck on every fastattn:: op: schema, fake (meta)
implementation against the real one (shapes, strides, dtypes), autograd
registration, and tracing with dynamic shapes, on every backend that runs
here (CPU; GPU when present).

The native ops (``*_native``, registered by fastattn._C) are called only
from inside the Python custom ops, never traced themselves, so they carry no
fake implementation: their schema is checked against what they do.
"""

from __future__ import annotations

import dataclasses
import pytest
import torch

import fastattn  # noqa: F401  (registers the ops)
from fastattn import _backends
from fastattn.ops import attention as attn_ops
from fastattn.ops import norm as norm_ops
from helpers import backend_params

NORM = backend_params("norm")
ATTN = [pytest.param("reference", "cpu", id="reference-cpu")] + backend_params("attention")

# Every op this file checks; test_every_op_is_checked fails on a new one.
CHECKED = {"norm_fwd", "norm_bwd", "attention_fwd", "attention_bwd", "attention_varlen_fwd",
           "attention_varlen_bwd", "norm_fwd_native", "norm_bwd_native", "attention_fwd_native",
           "attention_bwd_native", "attention_varlen_fwd_native", "attention_varlen_bwd_native",
           "cpu_isa_native"}


def _registered_ops() -> set[str]:
    _backends.extension_error()  # loads fastattn._C when built
    return {name.split("::")[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("fastattn::")}


def test_every_op_is_checked():
    missing = _registered_ops() - CHECKED
    assert not missing, f"fastattn:: ops without an opcheck here: {sorted(missing)}"


def _norm_inputs(device, rows=7, n=40, residual=True, weight=True, bias=True, dropout=0.0):
    def leaf(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)
    seed = torch.tensor([1234], dtype=torch.int64, device=device) if dropout else None
    return (leaf(rows, n), leaf(rows, n) if residual else None, leaf(n) if weight else None,
            leaf(n) if bias else None, seed)


NORM_VARIANTS = [
    # (id, is_rms, residual, weight, bias, dropout_p, store_h)
    ("layer-full-dropout", False, True, True, True, 0.25, True),
    ("layer-plain", False, False, True, True, 0.0, False),
    ("rms-residual", True, True, True, False, 0.0, True),
    ("rms-no-weight", True, False, False, False, 0.0, False),
]


@pytest.mark.parametrize("backend,device", NORM)
@pytest.mark.parametrize("is_rms,residual,weight,bias,dropout_p,store_h",
                         [pytest.param(*v[1:], id=v[0]) for v in NORM_VARIANTS])
def test_norm_ops(is_rms, residual, weight, bias, dropout_p, store_h, backend, device):
    x, res, w, b, seed = _norm_inputs(device, residual=residual, weight=weight, bias=bias,
                                      dropout=dropout_p)
    args = (x, res, w, b, seed, 1e-5, dropout_p, is_rms, store_h, backend)
    torch.library.opcheck(norm_ops.norm_fwd, args)
    with torch.no_grad():
        y, h, mean, rstd = norm_ops.norm_fwd(*args)
    saved = h if store_h else x.detach()
    dh_out = torch.randn_like(y) if store_h else None
    torch.library.opcheck(norm_ops.norm_bwd,
                          (torch.randn_like(y), dh_out, saved, w.detach() if weight else None,
                           b.detach() if bias else None, mean, rstd, seed, dropout_p, is_rms,
                           residual, backend))


def _attn_inputs(device, B=2, Hq=4, Hkv=2, Lq=9, Lk=13, D=24):
    q = torch.randn(B, Hq, Lq, D, device=device, requires_grad=True)
    # k, v: strided views of one packed (B, Lk, 2, Hkv, D) tensor
    kv = torch.randn(B, Lk, 2, Hkv, D, device=device)
    k = kv[:, :, 0].transpose(1, 2).detach().requires_grad_()
    v = kv[:, :, 1].transpose(1, 2).detach().requires_grad_()
    return q, k, v


ATTN_VARIANTS = [
    # (id, mask kind, q_lengths, kv_lengths, causal, with dlse)
    ("gqa-bool-mask-causal", "bool", False, True, True, False),
    ("gqa-q-lengths", None, True, False, False, True),
    ("gqa-bias-no-grad", "float", True, True, True, True),
]


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("mask,q_len,kv_len,causal,dlse",
                         [pytest.param(*v[1:], id=v[0]) for v in ATTN_VARIANTS])
def test_attention_ops(mask, q_len, kv_len, causal, dlse, backend, device):
    """Variants that test_attention.py's opcheck (floating bias with grad,
    MHA) does not take: GQA, strided k/v, bool masks, q_lengths, no dlse."""
    q, k, v = _attn_inputs(device)
    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(B, 1, Lq, Lk, device=device) < 0.8
    elif mask == "float":
        attn_mask = torch.randn(1, Hq, 1, Lk, device=device)
    q_lengths = torch.tensor([Lq, 4], device=device) if q_len else None
    kv_lengths = torch.tensor([6, Lk], dtype=torch.int32, device=device) if kv_len else None
    args = (q, k, v, attn_mask, q_lengths, kv_lengths, None, causal, 0.2, 0.0, backend)
    torch.library.opcheck(attn_ops.attention_fwd, args)
    with torch.no_grad():
        out, lse = attn_ops.attention_fwd(*args)
    torch.library.opcheck(attn_ops.attention_bwd,
                          (torch.randn_like(out), torch.randn_like(lse) if dlse else None,
                           q.detach(), k.detach(), v.detach(), out, lse, attn_mask, q_lengths,
                           kv_lengths, None, causal, 0.2, 0.0, False, backend))


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen_ops(causal, backend, device):
    """Packed sequences of lengths (5, 0, 9) over (7, 3, 12) keys: GQA,
    an empty sequence, cross lengths."""
    from fastattn.ops import attention_varlen as varlen_ops
    if backend not in varlen_ops.VARLEN_BACKENDS:
        pytest.skip(f"attention_varlen has no {backend} backend")
    cu_q = torch.tensor([0, 5, 5, 14], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 7, 10, 22], dtype=torch.int32, device=device)
    q = torch.randn(14, 4, 24, device=device, requires_grad=True)
    k = torch.randn(22, 2, 24, device=device, requires_grad=True)
    v = torch.randn(22, 2, 24, device=device, requires_grad=True)
    args = (q, k, v, cu_q, cu_k, None, 9, 12, causal, 0.2, 0.0, backend)
    torch.library.opcheck(varlen_ops.attention_varlen_fwd, args)
    with torch.no_grad():
        out, lse = varlen_ops.attention_varlen_fwd(*args)
    torch.library.opcheck(varlen_ops.attention_varlen_bwd,
                          (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(),
                           v.detach(), out, lse, cu_q, cu_k, None, 9, 12, causal, 0.2, 0.0,
                           backend))


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_attention_ops_with_variants(packed, backend, device):
    """Every variant at once (window, softcap, ALiBi, a relative-bias table
    that requires grad) through the padded and the packed ops: the table's
    gradient path (the fifth / fourth backward output) included."""
    from fastattn.ops import attention_varlen as varlen_ops
    from fastattn.ops.variants import KernelVariants, RelativePositionBias, Variants
    if backend == "reference":
        pytest.skip("the reference serves rel_bias outside the ops (ops/attention.py)")
    table = torch.randn(8, 4, device=device, requires_grad=True)
    variants = Variants((5, 2), torch.full((1, 4), 0.3, device=device), 3.0,
                        RelativePositionBias(table, bidirectional=False, max_distance=12))
    if packed:
        cu_q = torch.tensor([0, 5, 14], dtype=torch.int32, device=device)
        cu_k = torch.tensor([0, 7, 19], dtype=torch.int32, device=device)
        q = torch.randn(14, 4, 24, device=device, requires_grad=True)
        k = torch.randn(19, 2, 24, device=device, requires_grad=True)
        v = torch.randn(19, 2, 24, device=device, requires_grad=True)
        kv = KernelVariants.of(variants, 9, 12, device)
        head = (q, k, v, cu_q, cu_k, None, 9, 12, True, 0.2, 0.0, backend, False)
        fwd, bwd = varlen_ops.attention_varlen_fwd, varlen_ops.attention_varlen_bwd
    else:
        q, k, v = _attn_inputs(device)
        kv = KernelVariants.of(variants, q.shape[2], k.shape[2], device)
        head = (q, k, v, None, None, None, None, True, 0.2, 0.0, backend, False)
        fwd, bwd = attn_ops.attention_fwd, attn_ops.attention_bwd
    args = head + attn_ops.kernel_args(kv)
    torch.library.opcheck(fwd, args)
    with torch.no_grad():
        out, lse = fwd(*args)
    grads = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(),
             out, lse)
    if packed:
        rest = (cu_q, cu_k, None, 9, 12, True, 0.2, 0.0, backend, False)
    else:
        rest = (None, None, None, None, True, 0.2, 0.0, False, backend, False)
    detached = dataclasses.replace(kv, rel_table=kv.rel_table.detach())
    torch.library.opcheck(bwd, grads + rest + attn_ops.kernel_args(detached) + (True,))


def _native(name: str):
    if _backends.extension_error():
        pytest.skip(_backends.extension_error())
    if not hasattr(torch.ops.fastattn, name):
        pytest.skip(f"fastattn._C does not define {name}")
    return getattr(torch.ops.fastattn, name).default


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_native_norm_schema(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fwd, bwd = _native("norm_fwd_native"), _native("norm_bwd_native")
    key = "CUDA" if device == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(fwd.name(), key):
        pytest.skip(f"fastattn._C has no {key} norm kernel")
    x, res, w, b, seed = (t.detach() if t is not None else None
                          for t in _norm_inputs(device, dropout=0.25))
    args = (x, res, w, b, seed, 1e-5, 0.25, False, True)
    torch.library.opcheck(fwd, args, test_utils="test_schema")
    y, h, mean, rstd = fwd(*args)
    torch.library.opcheck(bwd, (torch.randn_like(y), None, h, w, b, mean, rstd, seed, 0.25,
                                False, True), test_utils="test_schema")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_native_attention_schema(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fwd, bwd = _native("attention_fwd_native"), _native("attention_bwd_native")
    key = "CUDA" if device == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(fwd.name(), key):
        pytest.skip(f"fastattn._C has no {key} attention kernel")
    q, k, v = (t.detach() for t in _attn_inputs(device))
    kv_lengths = torch.tensor([6, k.shape[2]], dtype=torch.int32, device=device)
    args = (q, k, v, None, None, kv_lengths, None, True, 0.2, 0.0)
    torch.library.opcheck(fwd, args, test_utils="test_schema")
    out, lse = fwd(*args)
    torch.library.opcheck(bwd, (torch.randn_like(out), None, q, k, v, out, lse, None, None,
                                kv_lengths, None, True, 0.2, 0.0, False),
                          test_utils="test_schema")


def test_native_varlen_schema():
    """The packed cpu ops (no CUDA kernel: attention_varlen on cuda runs on
    triton), with dropout, every variant and the table's gradient."""
    from fastattn.ops.variants import KernelVariants, RelativePositionBias, Variants
    fwd, bwd = _native("attention_varlen_fwd_native"), _native("attention_varlen_bwd_native")
    cu_q = torch.tensor([0, 5, 5, 14], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 10, 19], dtype=torch.int32)
    q, k, v = torch.randn(14, 4, 24), torch.randn(19, 2, 24), torch.randn(19, 2, 24)
    variants = Variants((5, 2), torch.full((1, 4), 0.3), 3.0,
                        RelativePositionBias(torch.randn(8, 4), bidirectional=False,
                                             max_distance=12))
    kv = attn_ops.kernel_args(KernelVariants.of(variants, 9, 12, torch.device("cpu")))
    seed = torch.tensor([77], dtype=torch.int64)
    args = (q, k, v, cu_q, cu_k, seed, 9, 12, True, 0.2, 0.1) + kv
    torch.library.opcheck(fwd, args, test_utils="test_schema")
    out, lse = fwd(*args)
    assert lse.shape == (4, 14) and lse.dtype == torch.float64
    torch.library.opcheck(bwd, (torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse,
                                cu_q, cu_k, seed, 9, 12, True, 0.2, 0.1) + kv + (True,),
                          test_utils="test_schema")


def test_native_cpu_isa_schema():
    # No tensor in or out, so nothing for opcheck to trace: the schema is
    # checked as written, and the answer against the ISAs cpu_isa.h compiles.
    op = _native("cpu_isa_native")
    assert str(op._schema) == "fastattn::cpu_isa_native() -> str"
    assert op() in ("avx512", "avx2", "default")
