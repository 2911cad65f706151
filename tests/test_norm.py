"""layer_norm, rms_norm, add_layer_norm, add_rms_norm on every backend.

Each case runs the op on a backend in a low precision and judges the output
and every gradient against fastattn.reference on float64 copies of the same
inputs, by the accuracy protocol (docs/TESTING.md) (tests/helpers.assert_close): the kernel's
error may be at most a few times the error of the reference computed in the
kernel's own dtype (plain PyTorch), plus a tiny floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastattn
from fastattn import _rng, reference
from fastattn._backends import unavailable_reason

from helpers import HAS_CUDA, INTERPRET, assert_close, backend_params, dtypes_for


def _runnable(params):
    # The compiled backends are tied to one device each (cpu / cuda).
    return [p for p in params if p.values[0] not in ("cpu", "cuda") or p.values[0] == p.values[1]]


BACKENDS = _runnable(backend_params("norm"))
CPU_BACKENDS = _runnable(backend_params("norm", devices=("cpu",)))



@dataclass(frozen=True)
class Case:
    op: str                       # layer_norm | rms_norm | add_layer_norm | add_rms_norm
    shape: tuple[int, ...]        # shape of x
    norm_dims: int = 1            # trailing dims normalized
    weight: bool = True
    bias: bool = True             # layer norms only
    residual: bool = True         # add_* only
    prenorm: bool = False         # add_* only
    dropout_p: float = 0.0        # add_* only
    row_pad: int = 0              # >0: x (and residual) are column slices of wider rows

    @property
    def is_add(self) -> bool:
        return self.op.startswith("add_")

    @property
    def is_rms(self) -> bool:
        return "rms" in self.op

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.norm_dims:]

    def __str__(self) -> str:
        flags = [f"{self.op}", "x".join(map(str, self.shape)), f"nd{self.norm_dims}"]
        flags += [name for name, on in (("w", self.weight), ("b", self.bias and not self.is_rms),
                                         ("res", self.residual and self.is_add),
                                         ("pre", self.prenorm), ("pad", self.row_pad)) if on]
        if self.dropout_p:
            flags.append(f"p{self.dropout_p}")
        return "-".join(flags)


CASES = [
    Case("layer_norm", (4, 1)),
    Case("layer_norm", (3, 7), weight=False, bias=False),
    Case("layer_norm", (70, 33), row_pad=5),
    Case("layer_norm", (2, 3, 129), bias=False),
    Case("layer_norm", (5, 1000), weight=False),
    Case("layer_norm", (3, 4099), row_pad=3),
    Case("layer_norm", (2, 65536)),
    Case("layer_norm", (2, 3, 6, 7), norm_dims=2),
    # More row blocks than backward programs: each program loops over rows.
    Case("layer_norm", (10, 30, 40), row_pad=2),
    Case("rms_norm", (4, 1)),
    Case("rms_norm", (9, 7), weight=False),
    Case("rms_norm", (33, 129), row_pad=7),
    Case("rms_norm", (2, 5, 1000)),
    Case("rms_norm", (3, 4099)),
    Case("rms_norm", (2, 65536), row_pad=16),
    Case("rms_norm", (4, 5, 8, 3), norm_dims=3),
    Case("add_layer_norm", (6, 7)),
    Case("add_layer_norm", (40, 33), prenorm=True, row_pad=3),
    Case("add_layer_norm", (2, 3, 129), residual=False, prenorm=True),
    Case("add_layer_norm", (5, 1000), weight=False, bias=False, prenorm=True),
    Case("add_layer_norm", (2, 4099), prenorm=True),
    Case("add_layer_norm", (2, 20000), prenorm=True, row_pad=8),
    Case("add_layer_norm", (3, 4, 6), norm_dims=2, prenorm=True),
    Case("add_rms_norm", (6, 1), prenorm=True),
    Case("add_rms_norm", (33, 33), row_pad=1),
    Case("add_rms_norm", (4, 129), weight=False, prenorm=True),
    Case("add_rms_norm", (5, 1000), prenorm=True),
    Case("add_rms_norm", (2, 65536), prenorm=True),
    Case("add_rms_norm", (257, 129), prenorm=True),
    Case("add_layer_norm", (9, 20000), row_pad=5),
    Case("add_rms_norm", (2, 5, 4, 6), norm_dims=2),
]

# One per op (and per prenorm flavour) for the torch.compile variant.
COMPILE_CASES = [
    Case("layer_norm", (5, 33), row_pad=3),
    Case("rms_norm", (4, 2, 7), norm_dims=2),
    Case("add_layer_norm", (6, 129), prenorm=True),
    Case("add_rms_norm", (3, 40)),
]

DROPOUT_CASES = [
    Case("add_layer_norm", (16, 129), prenorm=True, dropout_p=0.3),
    Case("add_layer_norm", (5, 1000), residual=False, prenorm=True, dropout_p=0.1),
    Case("add_rms_norm", (7, 33), dropout_p=0.5, row_pad=3),
    Case("add_rms_norm", (2, 20000), prenorm=True, dropout_p=0.2),
]


# ---------------------------------------------------------------- helpers


def call(mod, case: Case, x, residual, weight, bias, eps, **kw):
    """Runs `case`'s op from module `mod` (fastattn or fastattn.reference)."""
    if case.op == "layer_norm":
        return mod.layer_norm(x, case.normalized_shape, weight, bias, eps, **kw)
    if case.op == "rms_norm":
        return mod.rms_norm(x, case.normalized_shape, weight, eps, **kw)
    extra = dict(dropout_p=case.dropout_p, prenorm=case.prenorm, **kw)
    if case.op == "add_layer_norm":
        return mod.add_layer_norm(x, residual, weight, bias, eps, **extra)
    return mod.add_rms_norm(x, residual, weight, eps, **extra)


def make_inputs(case: Case, device: str) -> dict[str, Optional[torch.Tensor]]:
    """Fresh float64 inputs (x and residual with a row stride if row_pad)."""
    def rows(scale, shift):
        shape = list(case.shape)
        shape[-1] += case.row_pad
        t = torch.randn(shape, dtype=torch.float64, device=device) * scale + shift
        return t[..., :case.shape[-1]] if case.row_pad else t

    # A mean offset makes layer norm's centring matter.
    x = rows(2.0, 0.5)
    wshape = case.normalized_shape
    return {
        "x": x,
        "residual": rows(1.0, -0.25) if case.is_add and case.residual else None,
        "weight": torch.randn(wshape, dtype=torch.float64, device=device) + 1.0
        if case.weight else None,
        "bias": torch.randn(wshape, dtype=torch.float64, device=device)
        if case.bias and not case.is_rms else None,
    }


def cast(inputs, dtype):
    """Inputs in `dtype`, as fresh leaves that require grad (strides kept)."""
    out = {}
    for name, t in inputs.items():
        if t is None:
            out[name] = None
            continue
        c = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device)
        c.copy_(t)
        out[name] = c.requires_grad_()
    return out


def op_fn(mod, case, eps, **kw):
    """`case`'s op from `mod` as a function of (x, residual, weight, bias)."""
    def fn(x, residual, weight, bias):
        return call(mod, case, x, residual, weight, bias, eps, **kw)
    return fn


def fwd_bwd(fn, inputs, cotangent_seed, seed=1234):
    """(outputs, grads by input name) of fn on `inputs`; dropout seeded with
    `seed`, cotangents drawn in float64 from `cotangent_seed` and rounded to
    the output dtype."""
    torch.manual_seed(seed)
    outs = fn(inputs["x"], inputs["residual"], inputs["weight"], inputs["bias"])
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator(device=outs[0].device).manual_seed(cotangent_seed)
    cots = [torch.randn(o.shape, dtype=torch.float64, device=o.device, generator=g)
            .to(inputs["x"].dtype) for o in outs]
    names = [n for n, t in inputs.items() if t is not None]
    grads = torch.autograd.grad(outs, [inputs[n] for n in names], cots)
    return outs, dict(zip(names, grads))


def default_eps(case):
    return 1e-6 if case.is_rms else 1e-5


def check_case(case: Case, backend: str, device: str, dtype: torch.dtype,
               compile_backend: Optional[str] = None):
    """The accuracy protocol (docs/TESTING.md) for one case: output(s) and every gradient, the
    kernel run eagerly or under torch.compile(fullgraph=True)."""
    eps = default_eps(case)
    base = make_inputs(case, device)
    # Round the inputs to the test dtype first, so that all three runs see
    # the same values and differ only in their arithmetic.
    base = {n: (t.to(dtype).to(torch.float64) if t is not None else None)
            for n, t in base.items()}
    kernel = op_fn(fastattn, case, eps, backend=backend)
    if compile_backend is not None:
        torch._dynamo.reset()
        kernel = torch.compile(kernel, backend=compile_backend, fullgraph=True)
    outs, grads = fwd_bwd(kernel, cast(base, dtype), 7)
    truth_outs, truth_grads = fwd_bwd(op_fn(reference, case, eps), cast(base, torch.float64), 7)
    base_outs, base_grads = fwd_bwd(op_fn(reference, case, eps), cast(base, dtype), 7)
    assert len(outs) == len(truth_outs)
    for i, (o, t, b) in enumerate(zip(outs, truth_outs, base_outs)):
        assert o.dtype == dtype
        assert_close(o, t, b, name=["y", "h"][i])
    assert grads.keys() == truth_grads.keys()
    for name in grads:
        assert grads[name].dtype == dtype
        assert_close(grads[name], truth_grads[name], base_grads[name], name=f"grad {name}")


# ------------------------------------------------------------- accuracy


def _dtype_params():
    params = []
    for p in BACKENDS:
        backend, device = p.values
        for dtype in dtypes_for(device):
            params.append(pytest.param(backend, device, dtype, marks=p.marks,
                                       id=f"{p.id}-{str(dtype)[6:]}"))
    return params


@pytest.mark.parametrize("backend,device,dtype", _dtype_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_accuracy(case, backend, device, dtype):
    check_case(case, backend, device, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", COMPILE_CASES, ids=str)
def test_accuracy_compiled(case, backend, device):
    check_case(case, backend, device, torch.float32, compile_backend="aot_eager")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_accuracy_compiled_inductor(backend, device):
    case = Case("add_layer_norm", (6, 33), prenorm=True, row_pad=2)
    check_case(case, backend, device, torch.float32, compile_backend="inductor")


@pytest.mark.parametrize("backend,device", BACKENDS)
@settings(max_examples=12, deadline=None)
@given(op=st.sampled_from(["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]),
       rows=st.integers(1, 40), n=st.integers(1, 300), weight=st.booleans(),
       bias=st.booleans(), residual=st.booleans(), prenorm=st.booleans(),
       row_pad=st.sampled_from([0, 0, 3]), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_property(backend, device, op, rows, n, weight, bias, residual, prenorm, row_pad, dtype):
    is_add = op.startswith("add_")
    case = Case(op, (rows, n), weight=weight, bias=bias,
                residual=residual, prenorm=prenorm and is_add, row_pad=row_pad)
    check_case(case, backend, device, dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
def test_rms_norm_default_eps(backend, device, dtype):
    # eps=None is the machine epsilon of the arithmetic: float32's for half
    # inputs too (torch's opmath, not finfo(x.dtype), whatever its docs say).
    if dtype == torch.bfloat16 and backend == "triton" and INTERPRET:
        pytest.skip("the Triton interpreter refuses bfloat16")
    x = (torch.randn(5, 33, device=device) * 1e-3).to(dtype)
    w = torch.randn(33, device=device).to(dtype)
    out = fastattn.rms_norm(x, (33,), w, backend=backend)
    expected = torch.nn.functional.rms_norm(x.double(), (33,), w.double(),
                                            eps=torch.finfo(torch.float32).eps)
    assert_close(out, expected, torch.nn.functional.rms_norm(x, (33,), w))


# ----------------------------------------------------------- gradcheck


GRADCHECK_CASES = [
    Case("layer_norm", (3, 7)),
    Case("layer_norm", (2, 3, 4), norm_dims=2, weight=False),
    Case("rms_norm", (4, 5), row_pad=2),
    Case("add_layer_norm", (2, 6), prenorm=True),
    Case("add_layer_norm", (2, 5), prenorm=True, dropout_p=0.3),
    Case("add_rms_norm", (3, 4), prenorm=True, dropout_p=0.2),
    Case("add_rms_norm", (2, 9)),
]


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case, backend, device):
    inputs = cast(make_inputs(case, device), torch.float64)
    names = [n for n, t in inputs.items() if t is not None]

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        torch.manual_seed(99)  # same dropout mask at every evaluation
        return call(fastattn, case, kw["x"], kw.get("residual"), kw.get("weight"),
                    kw.get("bias"), default_eps(case), backend=backend)

    assert torch.autograd.gradcheck(fn, [inputs[n] for n in names], eps=1e-6, atol=1e-5,
                                    rtol=1e-3)


# The C++ CPU norms run the widest of their SSE2/AVX2/AVX-512 variants
# (csrc/cpu/cpu_isa.h); FASTATTN_CPU_ISA lowers the choice so the narrower
# ones are checked too, on cases with odd widths, padding, residual, dropout.
ISA_CASES = [CASES[2], CASES[3], DROPOUT_CASES[0], DROPOUT_CASES[2],
             Case("add_rms_norm", (9, 517), prenorm=True)]


@pytest.mark.skipif(bool(unavailable_reason("cpu", "norm", torch.device("cpu"))),
                    reason=unavailable_reason("cpu", "norm", torch.device("cpu")) or "")
@pytest.mark.parametrize("isa", ["default", "avx2"])
@pytest.mark.parametrize("case", ISA_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cpu_isa_variants(isa, case, dtype, monkeypatch):
    monkeypatch.setenv("FASTATTN_CPU_ISA", isa)
    check_case(case, "cpu", "cpu", dtype)


# --------------------------------------------------------------- dropout


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=str)
def test_dropout_matches_reference(case, backend, device):
    # The reference draws the same seed from torch's generator and the same
    # counter-based mask, so outputs and gradients must agree.
    check_case(case, backend, device, torch.float32)


def _h_with_dropout(backend, device, p, seed, m=48, n=1000):
    g = torch.Generator(device=device).manual_seed(5)
    x = torch.randn(m, n, device=device, generator=g) + 3.0  # never 0
    torch.manual_seed(seed)
    _, h = fastattn.add_layer_norm(x, None, None, None, dropout_p=p, prenorm=True,
                                   backend=backend)
    return x, h


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dropout_keep_rate_and_scale(backend, device):
    p = 0.25
    x, h = _h_with_dropout(backend, device, p, seed=3)
    kept = h != 0
    n = kept.numel()
    rate = kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate}, expected {1 - p}"
    torch.testing.assert_close(h[kept], x[kept] / (1 - p))
    # The mask is the one fastattn._rng defines for this seed.
    torch.manual_seed(3)
    seed = _rng.draw_seed(torch.device(device))
    torch.testing.assert_close(kept, _rng.keep_mask(seed, *x.shape, p, device))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dropout_seeding(backend, device):
    _, h1 = _h_with_dropout(backend, device, 0.4, seed=11)
    _, h2 = _h_with_dropout(backend, device, 0.4, seed=11)
    _, h3 = _h_with_dropout(backend, device, 0.4, seed=12)
    assert torch.equal(h1, h2)
    assert not torch.equal(h1 != 0, h3 != 0)
    # Different rows and columns do not repeat one pattern.
    mask = h1 != 0
    assert not torch.equal(mask[0], mask[1])
    assert not torch.equal(mask[:, 0], mask[:, 1])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dropout_backward_uses_forward_mask(backend, device):
    p = 0.3
    x = torch.randn(9, 129, device=device, requires_grad=True)
    r = torch.randn(9, 129, device=device, requires_grad=True)
    w = torch.randn(129, device=device, requires_grad=True)
    torch.manual_seed(21)
    y, h = fastattn.add_rms_norm(x, r, w, dropout_p=p, prenorm=True, backend=backend)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    dx, dr = torch.autograd.grad((y, h), (x, r), (dy, dh))
    kept = (h - r).abs() > 1e-6 * x.abs().max()  # h = dropout(x) + r
    torch.testing.assert_close(dx, torch.where(kept, dr / (1 - p), torch.zeros_like(dr)))
    assert (dx[~kept] == 0).all()


if HAS_CUDA or INTERPRET:
    import triton
    import triton.language as tl

    from fastattn.triton import rng

    @triton.jit
    def _bits_kernel(SEED, OUT, KEEP, row0, n_cols, threshold, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
        # The words and keep flags of rows row0 .. row0 + BLOCK_M - 1.
        rows = row0 + tl.arange(0, BLOCK_M).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        seed_lo, seed_hi = rng.load_seed(SEED)
        a, b = rng.row_keys(seed_lo, seed_hi, rows)
        bits = rng.dropout_bits(a[:, None], b[:, None], cols[None, :])
        keep = rng.dropout_keep(a[:, None], b[:, None], cols[None, :], threshold)
        out = tl.arange(0, BLOCK_M)[:, None] * n_cols + cols[None, :]
        tl.store(OUT + out, bits.to(tl.int64))
        tl.store(KEEP + out, keep.to(tl.int8))


@pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="triton needs a GPU or TRITON_INTERPRET=1")
def test_triton_rng_matches_python():
    device = "cuda" if HAS_CUDA else "cpu"
    for seed, row0, p in [(0, 0, 0.5), (2**62 - 1, 3, 0.1), (123456789012345, 2**32 - 5, 0.9)]:
        seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
        out = torch.full((8, 64), -1, dtype=torch.int64, device=device)
        keep = torch.full((8, 64), 2, dtype=torch.int8, device=device)
        _bits_kernel[(1,)](seed_t, out, keep, row0, 64, rng.threshold_arg(p), BLOCK_M=8,
                           BLOCK_N=64)
        rows = torch.arange(row0, row0 + 8, dtype=torch.int64, device=device)[:, None]
        cols = torch.arange(64, dtype=torch.int64, device=device)[None, :]
        expected = _rng.dropout_bits(seed, rows, cols)
        assert torch.equal(out, expected)
        assert torch.equal(keep.bool(), expected >= _rng.dropout_threshold(p))


# ------------------------------------------------------- empty and direct


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_empty_rows(op, backend, device):
    case = Case(op, (0, 33), prenorm=True)
    inputs = cast(make_inputs(case, device), torch.float32)
    outs, grads = fwd_bwd(op_fn(fastattn, case, default_eps(case), backend=backend), inputs, 0)
    assert all(o.shape == (0, 33) for o in outs)
    assert grads["x"].shape == (0, 33)
    assert torch.equal(grads["weight"], torch.zeros_like(grads["weight"]))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("is_rms", [False, True])
def test_native_op_contract(is_rms, backend, device):
    """fastattn::norm_fwd/norm_bwd return what fastattn/ops/norm.py promises:
    shapes, dtypes, empty (0,) tensors for unused outputs, M = 0."""
    ops = torch.ops.fastattn
    for m in (0, 5):
        x = torch.randn(m, 33, device=device)
        r = torch.randn(m, 33, device=device)
        w = torch.randn(33, device=device)
        seed = torch.tensor([7], dtype=torch.int64, device=device)
        y, h, mean, rstd = ops.norm_fwd(x, r, w, None, seed, 1e-5, 0.25, is_rms, True, backend)
        assert y.shape == h.shape == (m, 33) and y.dtype == h.dtype == x.dtype
        assert mean.shape == ((0,) if is_rms else (m,)) and rstd.shape == (m,)
        assert mean.dtype == rstd.dtype == torch.float32
        dy = torch.randn(m, 33, device=device)
        dx, dres, dw, db = ops.norm_bwd(dy, None, h, w, None, mean, rstd, seed, 0.25, is_rms,
                                        True, backend)
        assert dx.shape == dres.shape == (m, 33) and dw.shape == (33,) and db.shape == (0,)
        if m:
            # dx = dres * keep / (1 - p), keep drawn from the same seed.
            keep = _rng.keep_mask(seed, m, 33, 0.25, device)
            torch.testing.assert_close(dx, torch.where(keep, dres / 0.75, 0.0))
        else:
            assert torch.equal(dw, torch.zeros_like(dw))
        # Without dropout, dresidual is dx and comes back empty.
        y, h, mean, rstd = ops.norm_fwd(x, None, None, None, None, 1e-5, 0.0, is_rms, False,
                                        backend)
        assert h.shape == (0,)
        dx, dres, dw, db = ops.norm_bwd(dy, None, x, None, None, mean, rstd, None, 0.0, is_rms,
                                        False, backend)
        assert dx.shape == (m, 33) and dres.shape == dw.shape == db.shape == (0,)


# ------------------------------------------------------------ bad input


def _bad_calls():
    x = torch.randn(3, 8)
    w, b = torch.randn(8), torch.randn(8)
    calls = [
        ("weight", ValueError, lambda: fastattn.layer_norm(x, 8, torch.randn(7), b)),
        ("bias", ValueError, lambda: fastattn.layer_norm(x, 8, w, torch.randn(8, 1))),
        ("weight", ValueError, lambda: fastattn.rms_norm(x, (8,), torch.randn(3, 8))),
        ("residual", ValueError, lambda: fastattn.add_layer_norm(x, torch.randn(3, 9), w, b)),
        ("residual", ValueError, lambda: fastattn.add_rms_norm(x, torch.randn(8), w)),
        ("weight", TypeError, lambda: fastattn.layer_norm(x, 8, w.double(), b)),
        ("bias", TypeError, lambda: fastattn.layer_norm(x, 8, w, b.half())),
        ("residual", TypeError, lambda: fastattn.add_rms_norm(x, x.half(), w)),
        ("x", TypeError, lambda: fastattn.layer_norm(torch.arange(8).view(1, 8), 8)),
        ("x", TypeError, lambda: fastattn.add_rms_norm(torch.ones(2, 8, dtype=torch.int32),
                                                        None, None)),
        ("weight", TypeError, lambda: fastattn.rms_norm(x, 8, torch.arange(8))),
        ("x", TypeError, lambda: fastattn.layer_norm([[1.0, 2.0]], 2)),
        ("x", TypeError, lambda: fastattn.add_layer_norm(x.tolist(), None, w, b)),
        ("eps", ValueError, lambda: fastattn.layer_norm(x, 8, w, b, eps=-1e-5)),
        ("eps", ValueError, lambda: fastattn.rms_norm(x, 8, w, eps=float("nan"))),
        ("eps", TypeError, lambda: fastattn.rms_norm(x, 8, w, eps="small")),
        ("dropout_p", ValueError, lambda: fastattn.add_layer_norm(x, x, w, b, dropout_p=1.0)),
        ("dropout_p", ValueError, lambda: fastattn.add_rms_norm(x, x, w, dropout_p=-0.1)),
        ("dropout_p", TypeError, lambda: fastattn.add_rms_norm(x, x, w, dropout_p=None)),
        ("backend", ValueError, lambda: fastattn.layer_norm(x, 8, w, b, backend="fastest")),
        ("backend", ValueError, lambda: fastattn.add_rms_norm(x, x, w, backend="cuda")),
        ("backend", TypeError, lambda: fastattn.rms_norm(x, 8, w, backend=None)),
        ("normalized_shape", ValueError, lambda: fastattn.layer_norm(x, (3, 7))),
        ("normalized_shape", TypeError, lambda: fastattn.rms_norm(x, "8")),
    ]
    return calls


@pytest.mark.parametrize("name,exc,fn", [pytest.param(*c, id=f"{c[0]}-{i}")
                                         for i, c in enumerate(_bad_calls())])
def test_bad_input(name, exc, fn):
    with pytest.raises(exc, match=rf"^{name}\b"):
        fn()


@pytest.mark.skipif(not HAS_CUDA, reason="mixed devices need a GPU")
@pytest.mark.parametrize("name", ["weight", "bias", "residual"])
def test_bad_input_mixed_devices(name):
    x = torch.randn(3, 8, device="cuda")
    args = {"residual": torch.randn(3, 8, device="cuda"), "weight": torch.randn(8, device="cuda"),
            "bias": torch.randn(8, device="cuda")}
    args[name] = args[name].cpu()
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        fastattn.add_layer_norm(x, args["residual"], args["weight"], args["bias"])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_prenorm_only_h_used(backend, device):
    # The normalized output unused: its gradient reaches the backward as None
    # (outputs' gradients are not materialized), h's gradient flows to x and
    # the residual alone.
    g = torch.Generator().manual_seed(4)
    x, r = (torch.randn(5, 24, generator=g).to(device).requires_grad_() for _ in range(2))
    w = torch.randn(24, generator=g).to(device).requires_grad_()
    y, h = fastattn.add_layer_norm(x, r, w, None, prenorm=True, backend=backend)
    dh = torch.randn(5, 24, generator=g).to(device)
    gx, gr = torch.autograd.grad((h * dh).sum(), (x, r))
    assert torch.equal(gx, dh) and torch.equal(gr, dh)


# --------------------------------------------------------- mixed precision

# torch.nn.functional.layer_norm takes float32 weight and bias with a
# float16/bfloat16 input and returns the input's dtype (a bf16 model whose
# norms stay in fp32); rms_norm takes any weight dtype. The gradients of the
# weight and bias come back in their own dtype.
MIXED_CASES = [
    Case("layer_norm", (33, 96)),
    Case("rms_norm", (7, 3, 40)),
    Case("add_layer_norm", (20, 129)),
    Case("add_rms_norm", (9, 64)),
]


def _mixed_op(case: Case, impl: str):
    """The case's op as fastattn computes it (impl = a backend) or as plain
    torch.nn.functional does (impl = "torch": the add, then the norm)."""
    shape = case.normalized_shape
    F = torch.nn.functional

    def run(x, residual, weight, bias):
        if impl == "torch":
            h = x + residual if residual is not None else x
            return (F.rms_norm(h, shape, weight) if case.is_rms
                    else F.layer_norm(h, shape, weight, bias))
        if case.op == "layer_norm":
            return fastattn.layer_norm(x, shape, weight, bias, backend=impl)
        if case.op == "rms_norm":
            return fastattn.rms_norm(x, shape, weight, backend=impl)
        if case.op == "add_layer_norm":
            return fastattn.add_layer_norm(x, residual, weight, bias, backend=impl)
        return fastattn.add_rms_norm(x, residual, weight, backend=impl)
    return run


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", MIXED_CASES, ids=str)
def test_half_input_with_float32_parameters(case, x_dtype, backend, device):
    if x_dtype == torch.bfloat16 and INTERPRET and backend == "triton":
        pytest.skip("the Triton interpreter refuses bfloat16")
    inputs = dict(
        x=torch.randn(case.shape, dtype=torch.float64).to(x_dtype),
        residual=(torch.randn(case.shape, dtype=torch.float64).to(x_dtype)
                  if case.is_add else None),
        weight=(1 + 0.3 * torch.randn(case.normalized_shape, dtype=torch.float64)).float(),
        bias=(None if case.is_rms
              else (0.3 * torch.randn(case.normalized_shape, dtype=torch.float64)).float()),
    )
    names = [n for n, t in inputs.items() if t is not None]
    dy = torch.randn(case.shape, dtype=torch.float64)

    def run(impl, cast=None):
        leaves = {n: (t.to(cast) if cast else t).to(device).requires_grad_()
                  for n, t in inputs.items() if t is not None}
        y = _mixed_op(case, impl)(*(leaves.get(n) for n in ("x", "residual", "weight", "bias")))
        grads = torch.autograd.grad(y, [leaves[n] for n in names], dy.to(device, y.dtype))
        return y, dict(zip(names, grads))

    y, grads = run(backend)
    t_y, t_grads = run("torch", torch.float64)
    b_y, b_grads = run("torch")
    assert y.dtype == x_dtype
    assert_close(y, t_y, b_y, name="y")
    for n in names:
        assert grads[n].dtype == inputs[n].dtype
        assert_close(grads[n], t_grads[n], b_grads[n], name=f"grad {n}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_parameters_of_another_dtype_are_refused_as_torch_does(backend, device):
    x = torch.randn(4, 8, device=device)
    w16 = torch.randn(8, device=device).half()
    with pytest.raises(TypeError, match="weight"):  # torch: RuntimeError, "mixed dtype"
        fastattn.layer_norm(x, (8,), w16, None, backend=backend)
    with pytest.raises(TypeError, match="bias"):
        fastattn.layer_norm(x.half(), (8,), w16.float(), w16, backend=backend)
    # rms_norm takes any weight dtype, computing in the wider one (as torch does)
    y = fastattn.rms_norm(x, (8,), w16, backend=backend)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.nn.functional.rms_norm(x, (8,), w16.float()))


# ---------------------------------------------------- float64 statistics


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[1] == "cpu"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm"])
def test_float64_keeps_float64_statistics(op, backend, device):
    """float64 inputs: statistics in float64 (API.md), so gradients are
    float64-accurate (1e-16 relative), not float32's 1e-8 (which gradcheck's
    default tolerances would not notice)."""
    case = Case(op, (17, 33), prenorm=op.startswith("add_"))
    inputs = make_inputs(case, device)
    eps = default_eps(case)
    outs, grads = fwd_bwd(op_fn(fastattn, case, eps, backend=backend), cast(inputs, torch.float64),
                          cotangent_seed=3)
    t_outs, t_grads = fwd_bwd(op_fn(reference, case, eps), cast(inputs, torch.float64),
                              cotangent_seed=3)
    for name, t in [("y", t_outs[0])] + list(t_grads.items()):
        got = outs[0] if name == "y" else grads[name]
        rel = ((got - t).abs().max() / t.abs().max().clamp_min(1e-300)).item()
        assert rel < 1e-12, f"{name}: relative error {rel:.3g}"
