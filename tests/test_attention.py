"""fastattn.attention on every backend that runs here.

Each case runs the op in a test dtype and judges the output, the lse and
every gradient (q, k, v, a float mask that requires grad) against
fastattn.reference on float64 copies of the same inputs, by the accuracy
protocol of docs/TESTING.md (helpers.assert_close): the kernel's error may
be at most a few times the error that plain PyTorch makes computing attention in the test
dtype itself, plus a tiny floor. The loss also weighs the returned lse, so
its gradient path is checked too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastattn
from fastattn import reference

from helpers import INTERPRET, assert_close, backend_params, dtypes_for

BACKENDS = backend_params("attention")



@dataclass(frozen=True)
class Case:
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    causal: bool = False
    mask: Optional[str] = None       # None | "bool" | "float" | "float_grad"
    mask_shape: str = "BHqk"         # letters present = full dims: B, H, q (Lq), k (Lk)
    mask_rank: int = 4               # leading size-1 dims dropped below this rank
    q_lengths: bool = False
    kv_lengths: bool = False
    layout: str = "bhld"             # "blhd": q/k/v are transposed views of (B, L, H, D)

    def __str__(self) -> str:
        s = f"B{self.B}-H{self.Hq}x{self.Hkv}-q{self.Lq}-k{self.Lk}-d{self.D}"
        if self.causal:
            s += "-causal"
        if self.mask:
            s += f"-{self.mask}[{self.mask_shape}r{self.mask_rank}]"
        if self.q_lengths:
            s += "-qlen"
        if self.kv_lengths:
            s += "-kvlen"
        if self.layout != "bhld":
            s += f"-{self.layout}"
        return s


CASES = [
    Case(1, 2, 2, 1, 1, 16),
    Case(2, 2, 2, 7, 7, 40),
    Case(2, 4, 2, 33, 33, 64, causal=True),
    Case(1, 4, 1, 129, 129, 80, causal=True),
    Case(2, 2, 2, 1, 129, 96),
    Case(2, 2, 1, 33, 7, 128, causal=True),
    Case(2, 2, 2, 7, 33, 256, causal=True),
    Case(2, 2, 2, 33, 40, 32, mask="bool", mask_shape="qk", mask_rank=2),
    Case(2, 4, 2, 33, 40, 64, mask="bool", mask_shape="Bk"),
    Case(2, 2, 2, 33, 40, 40, mask="float_grad", mask_shape="Hqk"),
    Case(2, 2, 1, 17, 33, 64, causal=True, mask="float_grad", mask_shape="Bk"),
    Case(3, 2, 2, 33, 47, 32, causal=True, mask="float_grad", mask_shape="qk", mask_rank=2,
         q_lengths=True, kv_lengths=True),
    Case(3, 2, 2, 33, 47, 16, causal=True, mask="bool", mask_shape="BHqk", q_lengths=True,
         kv_lengths=True),
    Case(4, 2, 1, 33, 40, 64, q_lengths=True, kv_lengths=True),
    Case(3, 2, 2, 40, 33, 80, causal=True, kv_lengths=True),
    Case(3, 2, 2, 33, 40, 48, causal=True, q_lengths=True),
    Case(2, 4, 2, 33, 40, 64, causal=True, layout="blhd"),
    Case(2, 2, 2, 20, 33, 32, mask="float", mask_shape="qk", mask_rank=3, layout="blhd",
         kv_lengths=True),
]

# Every combination of causal, lengths and mask kind, at one small shape.
COMBO_CASES = [
    Case(3, 2, 1, 19, 23, 16, causal=c, mask=m, mask_shape="Bqk", q_lengths=ql, kv_lengths=kl)
    for c in (False, True) for m in (None, "bool", "float_grad")
    for ql in (False, True) for kl in (False, True)
]


# ------------------------------------------------------------------ inputs


def _lengths(B: int, L: int) -> torch.Tensor:
    """Random valid lengths including a full row and (for B > 2) a zero."""
    lengths = torch.randint(0, L + 1, (B,))
    lengths[0] = L
    if B > 2:
        lengths[-1] = 0
    return lengths


def _qkv(case: Case, device: str, dtype: torch.dtype):
    """q, k, v in float64 (rounded to `dtype`), laid out as the case says."""
    def make(H, L):
        if case.layout == "blhd":
            t = torch.randn(case.B, L, H, case.D, dtype=torch.float64).transpose(1, 2)
        else:
            t = torch.randn(case.B, H, L, case.D, dtype=torch.float64)
        return t.to(dtype).to(torch.float64).to(device)
    return make(case.Hq, case.Lq), make(case.Hkv, case.Lk), make(case.Hkv, case.Lk)


def _mask(case: Case, device: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if case.mask is None:
        return None
    full = {"B": case.B, "H": case.Hq, "q": case.Lq, "k": case.Lk}
    shape = [full[c] if c in case.mask_shape else 1 for c in "BHqk"]
    if case.mask == "bool":
        m = torch.rand(shape) < 0.75
        excluded = False
    else:
        m = torch.randn(shape, dtype=torch.float64).to(dtype).to(torch.float64)
        excluded = float("-inf")
    if "q" in case.mask_shape:
        m[..., 0, :] = excluded  # query row 0 has nothing to attend
    else:
        m[..., 0] = excluded  # key 0 is never attended
    while m.dim() > case.mask_rank and m.shape[0] == 1:
        m = m[0]
    return m.to(device)


def make_inputs(case: Case, device: str, dtype: torch.dtype) -> dict:
    q, k, v = _qkv(case, device, dtype)
    return dict(q=q, k=k, v=v, attn_mask=_mask(case, device, dtype),
                q_lengths=_lengths(case.B, case.Lq).to(device) if case.q_lengths else None,
                kv_lengths=_lengths(case.B, case.Lk).to(device) if case.kv_lengths else None)


def _as(t: Optional[torch.Tensor], dtype: torch.dtype, grad: bool) -> Optional[torch.Tensor]:
    """A leaf copy in `dtype` keeping t's strides (views stay views)."""
    if t is None:
        return None
    if t.is_floating_point():
        t = t.to(dtype)
    return t.detach().clone(memory_format=torch.preserve_format).requires_grad_(grad)


def cotangents(out: torch.Tensor, lse: torch.Tensor, seed: int = 7):
    """Fixed random cotangents (dout, dlse) for the loss of `fwd_bwd`."""
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    dlse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.device, lse.dtype)
    return dout, dlse


def fwd_bwd(fn, inputs: dict, dtype: torch.dtype, mask_grad: bool):
    """Run `fn` on leaf copies in `dtype`; return (out, lse, grads by name).

    The loss is <out, dout> + <lse, dlse> over finite lse entries, with
    the fixed cotangents of `cotangents`, so every run sees the same ones.
    """
    leaves = {n: _as(t, dtype, n in "qkv" or (n == "attn_mask" and mask_grad))
              for n, t in inputs.items()}
    out, lse = fn(**leaves)
    dout, dlse = cotangents(out, lse)
    finite_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    loss = (out * dout).sum().to(torch.float64) + (finite_lse * dlse).sum().to(torch.float64)
    names = [n for n, t in leaves.items() if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return out, lse, dict(zip(names, grads))


def flash_formula_grads(inputs: dict, causal: bool, dtype: torch.dtype, mask_grad: bool):
    """Plain PyTorch in `dtype` computing the gradients by the formulas the
    kernels use (reference._attention_bwd: delta = rowsum(dO * out) - dlse).
    Forming delta from the output instead of sum(p * dp), as autograd's
    softmax backward does, cancels differently; this is PyTorch's own error
    for that formulation, the fair baseline for fp32 gradients."""
    t = {n: _as(x, dtype, False) for n, x in inputs.items()}
    args = (t["q"], t["k"], t["v"])
    rest = (t["attn_mask"], t["q_lengths"], t["kv_lengths"])
    scale = t["q"].shape[-1] ** -0.5
    with torch.no_grad():
        out, lse = reference._attention(*args, causal, *rest, 0.0, scale, compute_dtype=dtype)
        dout, dlse = cotangents(out, lse)
        grads = reference._attention_bwd(dout, dlse, *args, out, lse, *rest, causal, scale,
                                         mask_grad=mask_grad, compute_dtype=dtype)
    names = ["q", "k", "v"] + (["attn_mask"] if mask_grad else [])
    return dict(zip(names, grads))


def kernel_fn(backend: str, causal: bool):
    def fn(q, k, v, attn_mask, q_lengths, kv_lengths):
        return fastattn.attention(q, k, v, causal=causal, attn_mask=attn_mask,
                                  q_lengths=q_lengths, kv_lengths=kv_lengths, return_lse=True,
                                  backend=backend)
    return fn


def reference_fn(causal: bool, compute_dtype: Optional[torch.dtype] = None):
    def fn(q, k, v, attn_mask, q_lengths, kv_lengths):
        return reference._attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, 0.0,
                                    None, compute_dtype=compute_dtype)
    return fn


def check_case(case: Case, backend: str, device: str, dtype: torch.dtype,
               compile_backend: Optional[str] = None):
    """The accuracy protocol (docs/TESTING.md): out, lse and every gradient
    against the fp64 truth, tolerance from plain PyTorch computing in `dtype`."""
    inputs = make_inputs(case, device, dtype)
    mask_grad = case.mask == "float_grad"
    fn = kernel_fn(backend, case.causal)
    if compile_backend is not None:
        torch._dynamo.reset()
        fn = torch.compile(fn, backend=compile_backend, fullgraph=True)
    out, lse, grads = fwd_bwd(fn, inputs, dtype, mask_grad)
    t_out, t_lse, t_grads = fwd_bwd(reference_fn(case.causal), inputs, torch.float64, mask_grad)
    b_out, b_lse, b_grads = fwd_bwd(reference_fn(case.causal, dtype), inputs, dtype, mask_grad)

    assert out.dtype == dtype and out.shape == (case.B, case.Hq, case.Lq, case.D)
    assert lse.dtype == torch.float32 and lse.shape == (case.B, case.Hq, case.Lq)
    assert_close(out, t_out, b_out, name="out")
    # Rows with nothing to attend: lse exactly -inf (and out exactly 0).
    empty = t_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty), "lse: -inf rows differ"
    assert (out[empty] == 0).all(), "out: rows with nothing to attend are not 0"
    assert_close(torch.where(empty, 0.0, lse), torch.where(empty, 0.0, t_lse),
                 torch.where(empty, 0.0, b_lse), name="lse")
    f_grads = flash_formula_grads(inputs, case.causal, dtype, mask_grad)
    assert grads.keys() == t_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == dtype
        assert grad.shape == inputs[name].shape, name
        # PyTorch's error: the larger of autograd's and the flash formulas'.
        baseline = max(b_grads[name], f_grads[name],
                       key=lambda b: (b.double() - t_grads[name]).abs().max().item())
        assert_close(grad, t_grads[name], baseline, name=f"grad {name}")
    return out, grads, t_grads


def _dtype_params(params):
    out = []
    for p in params:
        backend, device = p.values
        for dtype in dtypes_for(device):
            out.append(pytest.param(backend, device, dtype, marks=p.marks,
                                    id=f"{p.id}-{str(dtype)[6:]}"))
    return out


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("backend,device,dtype", _dtype_params(BACKENDS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_accuracy(case, backend, device, dtype):
    check_case(case, backend, device, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", COMBO_CASES, ids=str)
def test_mask_length_causal_combinations(case, backend, device):
    check_case(case, backend, device, torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_long_sequence(backend, device, monkeypatch):
    # A ~1000-long causal case with padding: many tiles, many of them skipped.
    # Under the interpreter it runs with larger tiles than the other tests
    # (time), which also covers a second tiling of every kernel.
    from fastattn.triton import attention as triton_attention
    monkeypatch.setattr(triton_attention, "_INTERPRET_TILES", {
        "fwd": dict(BLOCK_M=64, BLOCK_N=32), "bwd_kv": dict(BLOCK_M=32, BLOCK_N=64),
        "bwd_q": dict(BLOCK_M=64, BLOCK_N=32)})
    case = Case(2, 2, 1, 1000, 1003, 64, causal=True, q_lengths=True, kv_lengths=True)
    check_case(case, backend, device, torch.float32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_rows_have_zero_gradients(backend, device):
    # Every row masked in batch 0, nothing valid in batch 1 (zero lengths):
    # zeros, lse -inf, and exactly zero (not NaN) gradients there.
    case = Case(2, 2, 2, 9, 11, 32, causal=True, mask="float_grad", mask_shape="BHqk")
    inputs = make_inputs(case, device, torch.float32)
    inputs["attn_mask"][0] = float("-inf")
    inputs["q_lengths"] = torch.tensor([9, 0], device=device)
    inputs["kv_lengths"] = torch.tensor([11, 0], device=device)
    out, lse, grads = fwd_bwd(kernel_fn(backend, True), inputs, torch.float32, True)
    assert (out[0] == 0).all() and (out[1] == 0).all()
    assert (lse == float("-inf")).all()
    for name, g in grads.items():
        assert (g == 0).all(), f"grad {name} is not exactly 0"


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_padding_is_never_read(backend, device):
    # NaN beyond the lengths (queries, keys, values, bias) must not reach any
    # result: padded tiles are skipped and boundary tiles masked on load.
    case = Case(3, 2, 2, 33, 40, 32, causal=True, mask="float_grad", mask_shape="BHqk",
                q_lengths=True, kv_lengths=True)
    inputs = make_inputs(case, device, torch.float32)
    ql, kl = inputs["q_lengths"].tolist(), inputs["kv_lengths"].tolist()
    clean = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in inputs.items()}
    for b in range(case.B):
        for name, cut, dim in (("q", ql[b], 1), ("k", kl[b], 1), ("v", kl[b], 1),
                               ("attn_mask", ql[b], 1), ("attn_mask", kl[b], 2)):
            inputs[name][b].narrow(dim, cut, inputs[name].shape[dim + 1] - cut).fill_(float("nan"))
            clean[name][b].narrow(dim, cut, clean[name].shape[dim + 1] - cut).fill_(0.0)
    out, lse, grads = fwd_bwd(kernel_fn(backend, True), inputs, torch.float32, True)
    t_out, _, t_grads = fwd_bwd(reference_fn(True), clean, torch.float64, True)
    b_out, _, b_grads = fwd_bwd(reference_fn(True), clean, torch.float32, True)
    assert not lse.isnan().any()
    assert_close(out, t_out, b_out, name="out")
    for name, g in grads.items():
        assert_close(g, t_grads[name], b_grads[name], name=f"grad {name}")


# ----------------------------------------------------------- poisoned outputs


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_every_output_element_is_written(backend, device, monkeypatch):
    # Allocations inside the op start as NaN: an element a kernel forgets to
    # write (a skipped tile, a padded row, the head-dim tail) shows up as NaN.
    case = Case(3, 4, 2, 33, 40, 40, causal=True, mask="float_grad", mask_shape="Bk",
                q_lengths=True, kv_lengths=True)
    inputs = make_inputs(case, device, torch.float32)
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poisoned(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poisoned(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poisoned(real_empty_like(*a, **kw)))
    out, lse, grads = fwd_bwd(kernel_fn(backend, True), inputs, torch.float32, True)
    monkeypatch.undo()
    assert not lse.isnan().any()
    t_out, _, t_grads = fwd_bwd(reference_fn(True), inputs, torch.float64, True)
    b_out, _, b_grads = fwd_bwd(reference_fn(True), inputs, torch.float32, True)
    assert_close(out, t_out, b_out, name="out")
    for name, g in grads.items():
        assert_close(g, t_grads[name], b_grads[name], name=f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_float_mask_of_another_dtype(backend, device):
    # A float32 bias with float16 q/k/v (e.g. a bias kept in fp32 under
    # autocast): added in fp32, and its gradient comes back in float32.
    case = Case(2, 2, 2, 17, 20, 32, causal=True, mask="float_grad", mask_shape="Hqk")
    inputs = make_inputs(case, device, torch.float16)
    q, k, v = (inputs[n].half() for n in "qkv")
    bias = inputs["attn_mask"].float().requires_grad_()
    out = fastattn.attention(q, k, v, causal=True, attn_mask=bias, backend=backend)
    (g,) = torch.autograd.grad(out.float().square().sum(), [bias])
    assert out.dtype == torch.float16 and g.dtype == torch.float32

    def ref(dtype, mask_dtype):
        m = bias.detach().to(mask_dtype).requires_grad_()
        o = reference._attention(q.double(), k.double(), v.double(), True, m, None, None, 0.0,
                                 None, compute_dtype=dtype)[0]
        return o, torch.autograd.grad(o.square().sum(), [m])[0]
    t_out, t_g = ref(torch.float64, torch.float64)
    b_out, b_g = ref(torch.float16, torch.float32)
    assert_close(out, t_out, b_out.half(), name="out")
    assert_close(g, t_g, b_g, name="grad attn_mask")


# ------------------------------------------------------------ empty tensors


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("B,Lq,Lk", [(0, 5, 6), (2, 0, 6), (2, 5, 0)])
def test_empty_tensors(backend, device, B, Lq, Lk):
    q = torch.randn(B, 2, Lq, 16, device=device, requires_grad=True)
    k = torch.randn(B, 1, Lk, 16, device=device, requires_grad=True)
    v = torch.randn(B, 1, Lk, 16, device=device, requires_grad=True)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (B, 2, Lq, 16) and lse.shape == (B, 2, Lq)
    assert (out == 0).all() and (lse == float("-inf")).all()
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad.shape == t.shape and (t.grad == 0).all()


# --------------------------------------------------------------- layouts


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_views_are_not_copied(backend, device):
    # q/k/v as head views of packed projections (B, L, H*D): the output keeps
    # q's memory layout, so it reshapes back to (B, L, H*D) without a copy.
    B, L, H, D = 2, 33, 4, 40
    x = torch.randn(B, L, 3 * H * D, device=device)
    q, k, v = (t.view(B, L, H, D).transpose(1, 2) for t in x.split(H * D, dim=-1))
    out = fastattn.attention(q, k, v, causal=True, backend=backend)
    assert out.stride() == torch.empty(B, L, H, D).transpose(1, 2).stride()
    expected = reference.attention(q.double(), k.double(), v.double(), causal=True)
    assert_close(out, expected, reference.attention(q, k, v, causal=True))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_scale(backend, device):
    q, k, v = (torch.randn(2, 2, 17, 32, device=device) for _ in range(3))
    out = fastattn.attention(q, k, v, scale=0.3, backend=backend)
    expected = reference.attention(q.double(), k.double(), v.double(), scale=0.3)
    assert_close(out, expected, reference.attention(q, k, v, scale=0.3))


# ------------------------------------------------------------- gradcheck


GRADCHECK_CASES = [
    Case(1, 2, 1, 3, 5, 16, causal=True, mask="float_grad", mask_shape="Hqk"),
    Case(2, 2, 2, 4, 3, 16, causal=True, mask="bool", mask_shape="qk", q_lengths=True,
         kv_lengths=True),
    Case(2, 4, 2, 1, 6, 24, mask="float_grad", mask_shape="Bk", layout="blhd"),
    Case(2, 2, 1, 6, 4, 16, causal=True, mask="float_grad", mask_shape="BHqk",
         kv_lengths=True),
]


@pytest.mark.parametrize("backend,device", backend_params("attention", devices=("cpu",)))
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case, backend, device):
    inputs = make_inputs(case, device, torch.float64)
    # lengths that leave every batch row something to attend (padded rows are
    # covered by the accuracy tests)
    if case.q_lengths:
        inputs["q_lengths"] = torch.tensor([case.Lq, case.Lq - 1])
    if case.kv_lengths:
        inputs["kv_lengths"] = torch.tensor([case.Lk - 1, case.Lk])
    names = ["q", "k", "v"] + (["attn_mask"] if case.mask == "float_grad" else [])
    if case.mask == "float_grad":
        # gradcheck perturbs entries: keep the bias finite (masking is tested elsewhere)
        inputs["attn_mask"] = torch.randn_like(inputs["attn_mask"])
    leaves = [inputs[n].detach().clone().requires_grad_() for n in names]

    def fn(*tensors):
        kw = dict(inputs, **dict(zip(names, tensors)))
        out, lse = kernel_fn(backend, case.causal)(**kw)
        return out, torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

    # fast_mode checks a random projection of the Jacobian (a full Jacobian
    # would take one backward per output element through the interpreter).
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# -------------------------------------------------------------- compile


COMPILE_CASES = [
    Case(2, 4, 2, 33, 40, 32, causal=True, mask="float_grad", mask_shape="Bk",
         q_lengths=True, kv_lengths=True),
    Case(2, 2, 2, 17, 17, 64, mask="bool", mask_shape="qk", mask_rank=2, layout="blhd"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", COMPILE_CASES, ids=str)
def test_compiled(case, backend, device):
    check_case(case, backend, device, torch.float32, compile_backend="aot_eager")


def _opcheck_params():
    ref = [pytest.param("reference", "cpu", id="reference-cpu")]
    return ref + list(BACKENDS)


@pytest.mark.parametrize("backend,device", _opcheck_params())
def test_opcheck(backend, device):
    # Registration, fake implementations (shapes and strides) and autograd of
    # both ops, for a view input, a bias that requires grad and lengths.
    from fastattn.ops import attention as ops
    B, L, H, D = 2, 9, 2, 16
    x = torch.randn(B, L, 3 * H * D, device=device)
    q, k, v = (t.view(B, L, H, D).transpose(1, 2) for t in x.split(H * D, dim=-1))
    q = q.clone().requires_grad_()
    k, v = k.contiguous().requires_grad_(), v.contiguous().requires_grad_()
    bias = torch.randn(1, H, L, L, device=device, requires_grad=True)
    lengths = torch.tensor([L, 5], device=device)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, bias, None, lengths, None, True, 0.25,
                                              0.0, backend))
    with torch.no_grad():
        out, lse = ops.attention_fwd(q, k, v, bias, None, lengths, None, True, 0.25, 0.0,
                                     backend)
    torch.library.opcheck(ops.attention_bwd, (torch.randn_like(out), torch.randn_like(lse),
                                              q.detach(), k.detach(), v.detach(), out, lse,
                                              bias.detach(), None, lengths, None, True, 0.25,
                                              0.0, True, backend))


# ------------------------------------------------------------- property


@pytest.mark.parametrize("backend,device", BACKENDS)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(B=st.integers(1, 3), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2]),
       Lq=st.integers(1, 40), Lk=st.integers(1, 40), D=st.sampled_from([16, 24, 40, 64]),
       causal=st.booleans(), mask=st.sampled_from([None, "bool", "float", "float_grad"]),
       mask_shape=st.sampled_from(["BHqk", "qk", "Bk", "Hq"]), q_lengths=st.booleans(),
       kv_lengths=st.booleans(), layout=st.sampled_from(["bhld", "blhd"]),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_property(backend, device, B, Hkv, group, Lq, Lk, D, causal, mask, mask_shape,
                  q_lengths, kv_lengths, layout, dtype):
    if device == "cuda" and dtype == torch.float16:
        dtype = torch.bfloat16  # cover bf16 on the GPU instead
    case = Case(B, Hkv * group, Hkv, Lq, Lk, D, causal=causal, mask=mask,
                mask_shape=mask_shape, q_lengths=q_lengths, kv_lengths=kv_lengths,
                layout=layout)
    check_case(case, backend, device, dtype)


# ------------------------------------------------------------- head dims

# Any head dim from 1 to 256 (API.md): the kernels round D up to their tile
# width inside (masked loads); the cuda backend pads it to a multiple of 8.
HEAD_DIM_CASES = [
    Case(2, 2, 1, 9, 13, 1, causal=True),
    Case(1, 2, 2, 7, 7, 3, mask="float_grad", mask_shape="qk", mask_rank=2),
    Case(2, 2, 2, 11, 5, 8, kv_lengths=True),
    Case(2, 4, 2, 9, 17, 12, causal=True, mask="bool", mask_shape="Bk"),
    Case(1, 2, 2, 33, 20, 33, q_lengths=True, kv_lengths=True, causal=True),
    Case(1, 2, 1, 5, 40, 100, layout="blhd"),
    Case(1, 1, 1, 6, 9, 255, causal=True),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=str)
def test_any_head_dim(case, backend, device):
    check_case(case, backend, device, torch.float32)


@pytest.mark.parametrize("D", [0, 257, 512])
def test_head_dim_out_of_range_names_it(D):
    q = torch.randn(1, 2, 3, D)
    with pytest.raises(ValueError, match="head dim"):
        fastattn.attention(q, q, q)


# ----------------------------------------------- bf16 under the interpreter


@pytest.mark.skipif(not INTERPRET, reason="only the Triton interpreter computes bf16 wrongly")
def test_interpreter_refuses_bf16_and_auto_avoids_it():
    """The interpreter's bf16 tl.dot returns garbage (values near 1e9): a
    named triton backend refuses, auto picks a backend that computes it."""
    q = torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        fastattn.attention(q, q, q, backend="triton")
    out = fastattn.attention(q, q, q)
    expected = reference.attention(q.double(), q.double(), q.double())
    assert (out.double() - expected).abs().max() < 0.05


# ------------------------------------------- flash-attention's error budget

# flash-attention's own tests judge a kernel against plain PyTorch through
# autograd (softmax backward), allowing 2x its error: a stricter baseline
# than check_case's, whose PyTorch error is the larger of autograd's and
# the flash formulas'. With an additive float mask that concentrates
# attention (ALiBi as a mask, flash-attention's alibi_slopes ~ U(0, 0.3))
# the flash formulas lose accuracy where dp - delta cancels; the cpu
# backend keeps lse in float64 and forms dq from the row's own sum of
# p * dp (csrc/cpu/attention_bwd.cpp) to stay within the budget.
ALIBI_CASES = [(113, 203, 59, False), (128, 217, 32, True), (108, 256, 64, True),
               (256, 128, 40, False)]


def _alibi(B, H, L, S, device):
    slopes = torch.rand(B, H, 1, 1, dtype=torch.float64) * 0.3
    rel = torch.arange(L).view(L, 1) + (S - L) - torch.arange(S).view(1, S)
    return (-slopes * rel.abs()).to(device)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id == "cpu-cpu"])
@pytest.mark.parametrize("L,S,D,causal", ALIBI_CASES)
def test_alibi_mask_within_flash_attention_budget(backend, device, L, S, D, causal):
    B, H = 2, 3
    q, k, v = (torch.randn(B, H, n, D, dtype=torch.float64) for n in (L, S, S))
    dout = torch.randn(B, H, L, D, dtype=torch.float64)
    bias = _alibi(B, H, L, S, device)
    allowed = (torch.arange(S).view(1, S) <= torch.arange(L).view(L, 1) + S - L) if causal \
        else torch.ones(L, S, dtype=torch.bool)

    def plain(a, b, c, m):  # plain PyTorch, differentiated by autograd
        s = (a @ b.transpose(-1, -2)) * D ** -0.5 + m
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        return p @ c

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, bias.to(dtype))
        return (out, *torch.autograd.grad(out, leaves, dout.to(dtype)))

    truth = run(plain, torch.float64)
    torch32 = run(plain, torch.float32)
    ours = run(lambda a, b, c, m: fastattn.attention(a, b, c, attn_mask=m, causal=causal,
                                                     backend=backend), torch.float32)
    for name, o, t, b in zip(("out", "dq", "dk", "dv"), ours, truth, torch32):
        assert_close(o, t, b, name=name, multiple=2.0)
