"""Numerical edge cases: huge and -inf scores, fp16 score overflow, fully
masked rows and batches, length 1, NaN/inf inputs, > 2^31 elements (GPU).

Accuracy follows the protocol of docs/TESTING.md (fp64 truth, tolerance from plain
PyTorch's own error). Non-finite inputs must propagate as PyTorch's own ops
propagate them (same non-finite positions) and never leak into other batch
rows: those must equal, to the last bit where the kernels are deterministic,
a run on the same inputs without the NaN/inf.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastattn
from fastattn import reference
from helpers import HAS_CUDA, assert_close, backend_params

ATTN = backend_params("attention")
NORM = backend_params("norm")
INF = float("inf")


def _leaves(tensors: dict, dtype) -> dict:
    return {n: (t.to(dtype).detach().clone().requires_grad_(n in "qkv" or n == "bias_grad")
                if t is not None and t.is_floating_point() else t)
            for n, t in tensors.items()}


def _run(fn, tensors: dict, dtype, seed: int = 3):
    """out, lse and the gradients of <out, dout> + <finite lse, dlse>, with
    cotangents fixed by `seed`, for inputs cast to `dtype`."""
    t = _leaves(tensors, dtype)
    out, lse = fn(t)
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    dlse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    loss = (out * dout).sum().double() + (lse.nan_to_num(neginf=0.0) * dlse).sum().double()
    names = [n for n, x in t.items() if x is not None and x.requires_grad]
    grads = torch.autograd.grad(loss, [t[n] for n in names])
    return out, lse, dict(zip(names, grads))


def _mask_of(t):
    return t.get("bias_grad", t.get("attn_mask"))


def _fastattn(backend, **kw):
    return lambda t: fastattn.attention(t["q"], t["k"], t["v"], attn_mask=_mask_of(t),
                                        return_lse=True, backend=backend, **kw)


def _reference(compute_dtype=None, **kw):
    kw.setdefault("causal", False)
    return lambda t: reference._attention(t["q"], t["k"], t["v"], kw["causal"], _mask_of(t),
                                          kw.get("q_lengths"), kw.get("kv_lengths"), 0.0,
                                          kw.get("scale"), compute_dtype=compute_dtype)


def check_attention(backend, tensors: dict, dtype=torch.float32, score_max=None, **kw):
    """Protocol check of out, lse and every gradient; returns (out, lse, grads).

    `score_max`: the largest |scaled score|. Scores of that size carry an
    absolute rounding error of about ulp(score_max) in fp32 wherever they
    are formed, and p = exp(s - lse) inherits it as a relative error; a
    kernel that forms s and lse by other roundings than plain PyTorch (log2
    domain, folded scale) cannot cancel it as PyTorch's own formulas do. The
    gradients are then held to 2 ulp(score_max) relative to their largest
    entry, the conditioning of the problem, as well as the protocol allows.
    """
    out, lse, grads = _run(_fastattn(backend, **kw), tensors, dtype)
    t_out, t_lse, t_grads = _run(_reference(**kw), tensors, torch.float64)
    b_out, b_lse, b_grads = _run(_reference(dtype, **kw), tensors, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all(), "non-finite output"
    empty = t_lse == -INF
    assert torch.equal(lse == -INF, empty), "rows with nothing to attend differ"
    assert (out[empty] == 0).all()
    assert_close(out, t_out, b_out, name="out")
    assert_close(lse.masked_fill(empty, 0), t_lse.masked_fill(empty, 0),
                 b_lse.masked_fill(empty, 0), name="lse")
    f_grads = _flash_formula_grads(tensors, dtype, **kw)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), f"non-finite grad {name}"
        # PyTorch's error: the larger of autograd's and that of the formulas
        # the kernels use (p = exp(s - lse) from an fp32 lse, which at
        # scores of 1e4 alone carries a relative error of ~1e-3).
        baseline = max(b_grads[name], f_grads[name],
                       key=lambda b: (b.double() - t_grads[name]).abs().max().item())
        if score_max is None:
            assert_close(grad, t_grads[name], baseline, name=f"grad {name}")
            continue
        ulp = 2.0 ** (math.floor(math.log2(score_max)) - 23)
        tol = 2 * ulp * t_grads[name].abs().max().item()
        torch.testing.assert_close(grad.double(), t_grads[name], rtol=0, atol=tol,
                                   msg=lambda m: f"grad {name}: {m}")
    return out, lse, grads


def _flash_formula_grads(tensors: dict, dtype, seed: int = 3, **kw):
    """The gradients of `_run`'s loss by reference._attention_bwd in `dtype`."""
    t = _leaves(tensors, dtype)
    mask = _mask_of(t)
    args = (t["q"].detach(), t["k"].detach(), t["v"].detach())
    lengths = (kw.get("q_lengths"), kw.get("kv_lengths"))
    causal, scale = kw.get("causal", False), kw.get("scale") or t["q"].shape[-1] ** -0.5
    with torch.no_grad():
        out, lse = reference._attention(*args, causal, mask, *lengths, 0.0, scale,
                                        compute_dtype=dtype)
        g = torch.Generator().manual_seed(seed)
        dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        dlse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
        mask_grad = "bias_grad" in t
        grads = reference._attention_bwd(dout, dlse, *args, out, lse,
                                         mask.detach() if mask is not None else None, *lengths,
                                         causal, scale, mask_grad=mask_grad, compute_dtype=dtype)
    names = ["q", "k", "v"] + (["bias_grad"] if mask_grad else [])
    return dict(zip(names, grads))


def _qkv(B=2, Hq=2, Hkv=1, Lq=13, Lk=21, D=16, device="cpu"):
    return dict(q=torch.randn(B, Hq, Lq, D, device=device),
                k=torch.randn(B, Hkv, Lk, D, device=device),
                v=torch.randn(B, Hkv, Lk, D, device=device))


# ------------------------------------------------------ extreme scores


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("causal", [False, True])
def test_scores_of_1e4(causal, backend, device):
    """Scaled scores reaching +-1e4: the softmax is nearly one-hot and
    exp() overflows unless the running maximum is subtracted."""
    t = _qkv(device=device)
    raw = (t["q"] @ t["k"].transpose(-1, -2)).abs().max().item()
    check_attention(backend, t, causal=causal, scale=1e4 / raw, score_max=1e4)


@pytest.mark.parametrize("backend,device", ATTN)
def test_bias_of_1e4(backend, device):
    t = _qkv(device=device)
    t["bias_grad"] = torch.randn(2, 1, 13, 21, device=device).sign() * 1e4
    check_attention(backend, t, score_max=1e4 + 10)


@pytest.mark.parametrize("backend,device", ATTN)
def test_minus_inf_bias_entries(backend, device):
    """-inf bias entries: some scattered, one whole row (-> zeros, lse -inf),
    one row with a single finite entry; the bias receives its gradient
    (zero where it is -inf)."""
    t = _qkv(device=device)
    bias = torch.randn(2, 2, 13, 21, device=device)
    bias[torch.rand(bias.shape, device=device) < 0.3] = -INF
    bias[0, 1, 4] = -INF
    bias[1, 0, 7] = -INF
    bias[1, 0, 7, 11] = 0.5
    t["bias_grad"] = bias
    out, lse, grads = check_attention(backend, t)
    assert (out[0, 1, 4] == 0).all() and lse[0, 1, 4] == -INF
    assert (grads["bias_grad"][bias == -INF] == 0).all()
    # A single finite key: out is exactly that key's value row.
    torch.testing.assert_close(out[1, 0, 7], t["v"][1, 0, 11], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", ATTN)
def test_fp16_score_overflow(backend, device):
    """q.k beyond fp16's 65504 before scaling: accumulated in fp32, the
    result stays finite and right (a kernel computing scores in fp16 gives
    inf/NaN)."""
    t = _qkv(D=64, device=device)
    # fp16 values (so that the fp64 truth sees the kernel's inputs)
    t = {n: (x * 60 if n in "qk" else x).half().float() for n, x in t.items()}
    assert (t["q"] @ t["k"].transpose(-1, -2)).abs().max() > 65504
    out, lse, grads = _run(_fastattn(backend), t, torch.float16)
    t_out, t_lse, t_grads = _run(_reference(), t, torch.float64)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    vmax = t["v"].abs().max().item()
    eps16 = torch.finfo(torch.float16).eps
    torch.testing.assert_close(out.double(), t_out, rtol=0, atol=4 * eps16 * vmax)
    torch.testing.assert_close(lse.double(), t_lse, rtol=1e-5, atol=1e-3)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        big = t_grads[name].abs().max().item()
        torch.testing.assert_close(grad.double(), t_grads[name], rtol=0, atol=2e-2 * big)


# ------------------------------------------------------------ masking


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_every_row_masked(kind, backend, device):
    t = _qkv(device=device)
    if kind == "bool":
        t["attn_mask"] = torch.zeros(1, 1, 1, 21, dtype=torch.bool, device=device)
    else:
        t["bias_grad"] = torch.full((2, 2, 13, 21), -INF, device=device)
    out, lse, grads = check_attention(backend, t)
    assert torch.equal(out, torch.zeros_like(out)) and (lse == -INF).all()
    for grad in grads.values():
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("kind", ["bool", "float", "kv_lengths"])
def test_one_batch_fully_masked(kind, backend, device):
    """Batch row 0 may attend nothing; row 1 must be unaffected."""
    t = _qkv(device=device)
    kw = {}
    allow = torch.rand(2, 1, 13, 21, device=device) < 0.7
    allow[0] = False
    if kind == "bool":
        t["attn_mask"] = allow
    elif kind == "float":
        t["bias_grad"] = torch.randn(2, 1, 13, 21, device=device).masked_fill(~allow, -INF)
    else:
        kw["kv_lengths"] = torch.tensor([0, 17], device=device)
    out, lse, grads = check_attention(backend, t, **kw)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and (lse[0] == -INF).all()
    assert torch.isfinite(lse[1]).any()
    for name in "qkv":
        assert torch.equal(grads[name][0], torch.zeros_like(grads[name][0]))


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("lq,lk,causal", [(1, 1, False), (1, 1, True), (1, 37, True),
                                          (37, 1, True), (1, 37, False), (37, 1, False)])
def test_length_one(lq, lk, causal, backend, device):
    # (37, 1, causal): bottom-right alignment lets only the last query see
    # the single key; the other 36 rows are empty.
    check_attention(backend, _qkv(Lq=lq, Lk=lk, device=device), causal=causal)


# ----------------------------------------------- NaN / inf propagation


def _poison(t: dict, name: str, value: float, index) -> dict:
    bad = {n: x.clone() for n, x in t.items()}
    bad[name][index] = value
    return bad


def _same_nonfinite(got: torch.Tensor, want: torch.Tensor, what: str):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN positions differ"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: inf positions differ"


ATTN_POISON = [("q", float("nan"), (0, 1, 3, 5)), ("k", INF, (0, 0, 6, 2)),
               ("v", -INF, (0, 0, 9, 7)), ("v", float("nan"), (0, 0, 2, 0))]


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name,value,index", ATTN_POISON,
                         ids=[f"{n}-{v}" for n, v, _ in ATTN_POISON])
def test_attention_nonfinite_input(name, value, index, backend, device):
    """One NaN/inf in batch row 0: the output's non-finite positions are
    PyTorch's (SDPA on the same inputs), and batch row 1's output and
    gradients equal those of a clean run."""
    clean = _qkv(device=device)
    bad = _poison(clean, name, value, index)
    out, _, grads = _run(_fastattn(backend), bad, torch.float32)
    c_out, _, c_grads = _run(_fastattn(backend), clean, torch.float32)
    want = torch.nn.functional.scaled_dot_product_attention(
        bad["q"], bad["k"], bad["v"], enable_gqa=True)
    _same_nonfinite(out, want, "out")
    assert not torch.isfinite(out[0]).all()
    torch.testing.assert_close(out[1], c_out[1], rtol=0, atol=0)
    for n in "qkv":
        torch.testing.assert_close(grads[n][1], c_grads[n][1], rtol=1e-6, atol=1e-6)


NORM_OPS = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]


def _norm_call(op, backend):
    def call(x, res, w, b):
        if op == "layer_norm":
            return fastattn.layer_norm(x, x.shape[-1], w, b, backend=backend)
        if op == "rms_norm":
            return fastattn.rms_norm(x, x.shape[-1], w, backend=backend)
        if op == "add_layer_norm":
            return fastattn.add_layer_norm(x, res, w, b, backend=backend)
        return fastattn.add_rms_norm(x, res, w, backend=backend)
    return call


def _torch_norm(op):
    def call(x, res, w, b):
        h = x + res if op.startswith("add") else x
        if op.endswith("layer_norm"):
            return torch.nn.functional.layer_norm(h, h.shape[-1:], w, b, 1e-5)
        return torch.nn.functional.rms_norm(h, h.shape[-1:], w)
    return call


def _norm_grads(fn, x, res, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, res, w, b)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad((y * dy).sum(), leaves, allow_unused=True))


@pytest.mark.parametrize("backend,device", NORM)
@pytest.mark.parametrize("op", NORM_OPS)
@pytest.mark.parametrize("value", [float("nan"), INF], ids=["nan", "inf"])
def test_norm_nonfinite_row(value, op, backend, device):
    """A NaN/inf in row 2 of x: y's non-finite positions are torch's; every
    other row's output and dx equal a clean run's; weight/bias gradients
    (sums over rows) are non-finite exactly where torch's are."""
    rows, n = 6, 40
    x, res, dy = (torch.randn(rows, n, device=device) for _ in range(3))
    w, b = torch.randn(n, device=device), torch.randn(n, device=device)
    bad = x.clone()
    bad[2, 17] = value
    got = _norm_grads(_norm_call(op, backend), bad, res, w, b, dy)
    clean = _norm_grads(_norm_call(op, backend), x, res, w, b, dy)
    want = _norm_grads(_torch_norm(op), bad, res, w, b, dy)
    _same_nonfinite(got[0], want[0], "y")
    assert not torch.isfinite(got[0][2]).all()
    others = [i for i in range(rows) if i != 2]
    torch.testing.assert_close(got[0][others], clean[0][others], rtol=0, atol=0)
    torch.testing.assert_close(got[1][others], clean[1][others], rtol=1e-6, atol=1e-6)
    for g, wg, name in zip(got[3:], want[3:], ("weight", "bias")):
        if wg is None:
            continue
        _same_nonfinite(g, wg, f"grad {name}")
        finite = torch.isfinite(wg)
        torch.testing.assert_close(g[finite], wg[finite], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------- > 2^31 elements


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="tensors of > 2^31 elements need a GPU with > 24 GB")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_attention_over_2_31_elements(backend):
    """k and v of 2^31 + 2^17 elements each (fp16, 4 GiB): offsets past
    2^31 need 64-bit arithmetic. Every query of a head equals one vector and
    the head's last key is a large multiple of it, so each output row is
    (almost exactly) the value of the head's last key, which for the last
    heads lies beyond element 2^31: a wrapped offset reads something else."""
    why = fastattn._backends.unavailable_reason(backend, "attention", torch.device("cuda"))
    if why:
        pytest.skip(why)
    H, D, lk = 16, 128, 2 ** 20 + 64
    q = torch.randn(1, H, 1, D, device="cuda", dtype=torch.float16).expand(1, H, 64, D)
    k = torch.randn(1, H, lk, D, device="cuda", dtype=torch.float16)
    v = torch.randn(1, H, lk, D, device="cuda", dtype=torch.float16)
    k[:, :, -1] = 4 * q[:, :, 0]  # its score ~45 above the others' maximum (~5)
    assert k.numel() > 2 ** 31
    out = fastattn.attention(q.contiguous(), k, v, backend=backend)
    want = v[:, :, -1:].expand(1, H, 64, D)
    torch.testing.assert_close(out, want, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="tensors of > 2^31 elements need a GPU with > 24 GB")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_norm_over_2_31_elements(backend):
    why = fastattn._backends.unavailable_reason(backend, "norm", torch.device("cuda"))
    if why:
        pytest.skip(why)
    n = 4096
    rows = 2 ** 31 // n + 3
    x = torch.randn(rows, n, device="cuda", dtype=torch.float16, requires_grad=True)
    w = torch.randn(n, device="cuda", dtype=torch.float16, requires_grad=True)
    y = fastattn.layer_norm(x, n, w, None, backend=backend)
    tail = slice(rows - 5, rows)  # rows whose offsets pass 2^31
    want = torch.nn.functional.layer_norm(x[tail].float(), (n,), w.float()).half()
    torch.testing.assert_close(y[tail], want, rtol=2e-3, atol=2e-3)
    dy = torch.randn_like(y)
    y.backward(dy)
    xt = x[tail].detach().float().requires_grad_()
    torch.nn.functional.layer_norm(xt, (n,), w.detach().float()).backward(dy[tail].float())
    torch.testing.assert_close(x.grad[tail].float(), xt.grad, rtol=5e-3, atol=5e-3)
