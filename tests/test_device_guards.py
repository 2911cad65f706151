"""Kernels run on their tensors' device and on its current stream (GPU only).

Every CUDA-capable backend (triton, cuda), for attention (kv_lengths and a
float mask with its gradient; the decode shape Lq = 1), attention_varlen,
layer_norm and add_rms_norm with dropout, forward and backward:

- test_other_device_is_current (two GPUs): tensors on one device while the
  other is current, both ways round. Results are judged against
  fastattn.reference on the same device (the accuracy protocol, docs/TESTING.md), outputs and
  gradients must live on the inputs' device, the current device must be
  unchanged afterwards.
- test_side_stream (one GPU): the same inside `torch.cuda.stream(s)`; the
  current stream must still be `s` afterwards.

Both also run `_check_stream_order`, which catches a kernel launched on any
other stream or device: its inputs, and then the backward's cotangents, are
buffers holding NaN whose values are copied in on the data device's current
stream behind a busy kernel (`_late`). A kernel queued elsewhere runs during
that wait and reads NaN. The results must equal, bitwise, those of the same
call on ready inputs (no atomics and one tile configuration per process:
repeated calls give the same bits). A probe from another stream confirms
that the buffers were still NaN when the call was issued, so the check
cannot pass for want of a wait.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable

import pytest
import torch

import fastattn
from fastattn import reference
from fastattn.ops.attention_varlen import VARLEN_BACKENDS

import test_attention
import test_norm
from helpers import HAS_CUDA, assert_close, backend_params

pytestmark = pytest.mark.gpu

DTYPE = torch.float16
N_DEVICES = torch.cuda.device_count() if HAS_CUDA else 0

# Busy-wait of the data device's stream before late values arrive: about
# 0.1 s at 2 GHz (longer at lower clocks), far more than the host needs to
# issue one call once its kernels are compiled and tuned.
_SLEEP_CYCLES = 200_000_000


# ------------------------------------------------------------ stream order


def _late(tensors: list[torch.Tensor], device: torch.device):
    """(copies of `tensors` that hold NaN until the data device's current
    stream has slept, a device flag: were they all still NaN as seen from
    another stream right after the copies were queued)."""
    bufs = [torch.full_like(t, float("nan")) for t in tensors]
    torch.cuda.synchronize(device)  # the NaN fill lands before the probe looks
    with torch.cuda.device(device):
        torch.cuda._sleep(_SLEEP_CYCLES)
    with torch.no_grad():
        for b, t in zip(bufs, tensors):
            b.copy_(t)  # the data device's current stream, behind the sleep
    with torch.cuda.stream(torch.cuda.Stream(device)):
        still_nan = torch.stack([b.isnan().all() for b in bufs]).all()
    return [b.requires_grad_(t.requires_grad) for b, t in zip(bufs, tensors)], still_nan


def _check_stream_order(step: Callable, inputs: dict, device: torch.device):
    """`step(tensors by name) -> outputs` on late inputs and late
    cotangents equals, bitwise, the same step on ready ones.

    Floating inputs become leaves that require grad; the others (bool
    masks, cu_seqlens) pass unchanged. Inputs that the argument checks read
    (lengths, cu_seqlens) synchronize the host with the stream, so a
    forward reading them waits for its late inputs whatever stream it used;
    the backward, which reads none, is still checked by its cotangents.
    """
    names = [n for n, t in inputs.items() if t is not None and t.is_floating_point()]

    def run(leaves, cotangents):
        torch.manual_seed(0)  # the same dropout seed in both runs
        outs = step({**inputs, **dict(zip(names, leaves))})
        if cotangents is None:
            cotangents = [torch.randn_like(o) for o in outs]
            probe = None
        else:
            cotangents, probe = _late(cotangents, device)
        return outs, torch.autograd.grad(outs, leaves, cotangents), cotangents, probe

    ready = [inputs[n].detach().clone().requires_grad_() for n in names]
    want, want_grads, cotangents, _ = run(ready, None)
    torch.cuda.synchronize(device)

    late, probe_inputs = _late(ready, device)
    got, got_grads, _, probe_cotangents = run(late, cotangents)
    torch.cuda.synchronize(device)

    assert probe_inputs.item() and probe_cotangents.item(), (
        "late buffers were no longer NaN when the call was issued: the sleep is too short "
        "for this check to see a kernel on the wrong stream")
    labels = [f"output {i}" for i in range(len(want))] + [f"grad {n}" for n in names]
    for label, g, w in zip(labels, list(got) + list(got_grads), list(want) + list(want_grads)):
        assert g.device == device, f"{label} is on {g.device}, its inputs on {device}"
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m: (
            f"{label} differs when its inputs arrive late on the current stream of "
            f"{device}: a kernel ran on another stream or device\n{m}"))


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {n: (t.to(dtype) if t is not None and t.is_floating_point() else t)
            for n, t in inputs.items()}


# ------------------------------------------------------------------- ops


@dataclass(frozen=True)
class Op:
    family: str  # the backend family of fastattn._backends
    # (backend, device): assert the op's accuracy against fastattn.reference
    accuracy: Callable[[str, str], None]
    # (backend, device) -> (step, inputs) for _check_stream_order
    ordering: Callable[[str, str], tuple[Callable, dict]]
    backends: tuple[str, ...] = ("triton", "cuda")
    split_kv: bool = False  # force the split-KV decoding kernels (triton)


def _attention(case: test_attention.Case, split_kv: bool = False) -> Op:
    def accuracy(backend, device):
        test_attention.check_case(case, backend, device, DTYPE)

    def ordering(backend, device):
        # No lengths: their eager check would synchronize (_check_stream_order).
        plain = replace(case, q_lengths=False, kv_lengths=False)
        inputs = _cast(test_attention.make_inputs(plain, device, DTYPE), DTYPE)

        def step(t):
            return (fastattn.attention(t["q"], t["k"], t["v"], causal=case.causal,
                                       attn_mask=t["attn_mask"], backend=backend),)
        return step, inputs
    return Op("attention", accuracy, ordering, split_kv=split_kv)


def _varlen_inputs(device: str) -> dict:
    # Four packed sequences, one without queries; GQA (4 query, 2 kv heads).
    g = torch.Generator().manual_seed(0)

    def packed(total, heads):
        return torch.randn(total, heads, 40, generator=g, dtype=torch.float64).to(DTYPE).to(
            device=device, dtype=torch.float64)
    return dict(q=packed(43, 4), k=packed(64, 2), v=packed(64, 2),
                cu_q=torch.tensor([0, 9, 9, 42, 43], dtype=torch.int32, device=device),
                cu_k=torch.tensor([0, 12, 17, 47, 64], dtype=torch.int32, device=device))


def _varlen_call(fn, t, **kw):
    return fn(t["q"], t["k"], t["v"], t["cu_q"], t["cu_k"], 33, 30, causal=True, **kw)


def _varlen_accuracy(backend, device):
    inputs = _varlen_inputs(device)
    dout = torch.randn(inputs["q"].shape, dtype=torch.float64, device=device)

    def run(fn, dtype, **kw):
        leaves = {n: inputs[n].to(dtype, copy=True).requires_grad_() for n in "qkv"}
        out = _varlen_call(fn, {**inputs, **leaves}, **kw)
        return out, torch.autograd.grad(out, list(leaves.values()), dout.to(dtype))

    out, grads = run(fastattn.attention_varlen, DTYPE, backend=backend)
    t_out, t_grads = run(reference.attention_varlen, torch.float64)
    b_out, b_grads = run(reference.attention_varlen, DTYPE)
    assert_close(out, t_out, b_out, name="out")
    for name, g, t, b in zip("qkv", grads, t_grads, b_grads):
        assert_close(g, t, b, name=f"grad {name}")


def _varlen_ordering(backend, device):
    return (lambda t: (_varlen_call(fastattn.attention_varlen, t, backend=backend),),
            _cast(_varlen_inputs(device), DTYPE))


def _norm(case: test_norm.Case) -> Op:
    eps = test_norm.default_eps(case)

    def accuracy(backend, device):
        test_norm.check_case(case, backend, device, DTYPE)

    def ordering(backend, device):
        def step(t):
            out = test_norm.call(fastattn, case, t["x"], t["residual"], t["weight"],
                                 t["bias"], eps, backend=backend)
            return out if isinstance(out, tuple) else (out,)
        return step, _cast(test_norm.make_inputs(case, device), DTYPE)
    return Op("norm", accuracy, ordering)


Case = test_attention.Case
OPS = {
    "attention": _attention(Case(2, 4, 2, 37, 45, 64, causal=True, mask="float_grad",
                                 mask_shape="Bqk", kv_lengths=True)),
    "attention_decode": _attention(Case(2, 4, 2, 1, 1500, 128, mask="bool", mask_shape="Bk",
                                        kv_lengths=True), split_kv=True),
    "attention_varlen": Op("attention", _varlen_accuracy, _varlen_ordering,
                           backends=VARLEN_BACKENDS),
    "layer_norm": _norm(test_norm.Case("layer_norm", (33, 1000))),
    "add_rms_norm": _norm(test_norm.Case("add_rms_norm", (7, 129), prenorm=True,
                                         dropout_p=0.25, row_pad=3)),
}


def _params():
    params = []
    for name, op in OPS.items():
        for p in backend_params(op.family, devices=("cuda",)):
            backend = p.values[0]
            if backend in op.backends:
                params.append(pytest.param(name, backend, marks=p.marks, id=f"{name}-{backend}"))
    return params


def _setup(op: Op, backend: str, device: str, monkeypatch):
    if op.split_kv:
        monkeypatch.setenv("FASTATTN_SPLIT_KV", "1")
        if backend == "triton":  # the case must really take the split-KV kernels
            from fastattn.triton import attention_decode
            _, inputs = op.ordering(backend, device)
            assert attention_decode.split_kv_plan(inputs["q"], inputs["k"], 0.0, 64) > 1


@contextlib.contextmanager
def _current_device(index: int):
    """Make `index` the current device, and check the block leaves it so."""
    with torch.cuda.device(index):
        yield
        assert torch.cuda.current_device() == index, (
            f"the current device changed from {index} to {torch.cuda.current_device()}")


# ------------------------------------------------------------------ tests


@pytest.mark.skipif(N_DEVICES < 2, reason=f"needs two CUDA devices, found {N_DEVICES}")
@pytest.mark.parametrize("data,current", [(1, 0), (0, 1)], ids=["data1-current0",
                                                                 "data0-current1"])
@pytest.mark.parametrize("name,backend", _params())
def test_other_device_is_current(name, backend, data, current, monkeypatch):
    op = OPS[name]
    device = torch.device("cuda", data)
    _setup(op, backend, str(device), monkeypatch)
    with _current_device(current):
        op.accuracy(backend, str(device))
        _check_stream_order(*op.ordering(backend, str(device)), device)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("name,backend", _params())
def test_side_stream(name, backend, monkeypatch):
    op = OPS[name]
    device = torch.device("cuda", torch.cuda.current_device())
    _setup(op, backend, str(device), monkeypatch)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        op.accuracy(backend, str(device))
        _check_stream_order(*op.ordering(backend, str(device)), device)
        assert torch.cuda.current_stream(device) == side, "the current stream changed"
    torch.cuda.synchronize(device)
