"""The compiled fast path of the public ops (csrc/fast_path.cpp,
fastattn/ops/_eager.py).

In plain eager execution the public functions are served by one C++ call
for the compiled backends: argument checks, the cached backend choice, the
kernels, a C++ autograd Function in training. These tests pin down

- that it serves plain eager calls of every op family, inference and
  training (the Python frontends are made to fail if reached);
- that it stays out of the way where the torch.library ops must be seen:
  torch.compile, dispatch modes (fake tensors), functorch, torch function
  modes, torch.jit.trace, autocast casts, tensor subclasses, DEBUG logging,
  the triton and reference backends, FASTATTN_BACKEND changed between
  calls, the kernels becoming unavailable;
- that it gives the same bits as the op path, outputs and gradients
  (dropout included: the same seed is drawn);
- that errors are still the Python checks' (the type, and a message
  naming the argument), raised before any random draw.
"""

from __future__ import annotations

import logging

import pytest
import torch

import fastattn
from fastattn import _backends, _extension, _log
from fastattn.ops import _eager
from fastattn.ops import attention as attention_ops
from fastattn.ops import attention_varlen as varlen_ops
from fastattn.ops import norm as norm_ops

from helpers import FastattnOpCounter

pytestmark = pytest.mark.skipif(
    _backends.unavailable_reason("cpu", "norm", torch.device("cpu")) != "",
    reason="no compiled CPU kernels here")


class _Forbidden:
    """Replaces a Python frontend function; calling it fails the test."""

    def __init__(self, monkeypatch, module, name):
        self.name = name
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"the Python path ({self.name}) was taken")


class _Spy:
    """Wraps a Python frontend function, counting its calls."""

    def __init__(self, monkeypatch, module, name):
        self.real = getattr(module, name)
        self.calls = 0
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def _python_paths(monkeypatch, cls):
    return [cls(monkeypatch, norm_ops, "_norm"), cls(monkeypatch, attention_ops, "_frontend"),
            cls(monkeypatch, varlen_ops, "_frontend")]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ calls
# Each case: name -> function(requires_grad) returning (outputs, leaves):
# a call of a public function on fresh inputs.


def _norm_inputs(shape, n, dtype=torch.float32, param_dtype=None, rg=False, seed=0):
    g = _gen(seed)
    x = torch.randn(shape, generator=g).to(dtype).requires_grad_(rg)
    r = torch.randn(shape, generator=g).to(dtype).requires_grad_(rg)
    w = torch.nn.Parameter(torch.randn(n, generator=g).to(param_dtype or dtype),
                           requires_grad=rg)
    b = torch.nn.Parameter(torch.randn(n, generator=g).to(param_dtype or dtype),
                           requires_grad=rg)
    return x, r, w, b


def _qkv(B=2, Hq=4, Hkv=2, Lq=9, Lk=13, D=16, dtype=torch.float32, rg=False, seed=0):
    g = _gen(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(dtype).requires_grad_(rg)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype).requires_grad_(rg)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype).requires_grad_(rg)
    return q, k, v


def _packed(dtype=torch.float32, rg=False, seed=0, D=16):
    g = _gen(seed)
    cu_q = torch.tensor([0, 4, 4, 11], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 9, 16], dtype=torch.int32)
    q = torch.randn(11, 4, D, generator=g).to(dtype).requires_grad_(rg)
    k = torch.randn(16, 2, D, generator=g).to(dtype).requires_grad_(rg)
    v = torch.randn(16, 2, D, generator=g).to(dtype).requires_grad_(rg)
    return q, k, v, cu_q, cu_k


def _case_layer_norm(rg):
    x, _, w, b = _norm_inputs((3, 5, 40), 40, rg=rg)
    return fastattn.layer_norm(x, (40,), w, b, eps=1e-5), (x, w, b)


def _case_layer_norm_2d_no_affine(rg):
    x, *_ = _norm_inputs((6, 40), 40, rg=rg)
    return fastattn.layer_norm(x, 40), (x,)


def _case_layer_norm_two_dims(rg):
    g = _gen(4)
    x = torch.randn(3, 4, 10, generator=g).requires_grad_(rg)
    w = torch.randn(4, 10, generator=g).requires_grad_(rg)
    return fastattn.layer_norm(x, [4, 10], w, None, 1e-6), (x, w)


def _case_layer_norm_strided(rg):
    g = _gen(5)
    base = torch.randn(6, 80, generator=g).requires_grad_(rg)
    w = torch.randn(160, generator=g)[::4].requires_grad_(rg)  # non-contiguous weight
    x = base[:, ::2]  # last stride 2: copied
    return fastattn.layer_norm(x, (40,), w, None), (base, w)


def _case_layer_norm_half_fp32_params(rg):
    x, _, w, b = _norm_inputs((6, 40), 40, dtype=torch.float16, param_dtype=torch.float32, rg=rg)
    return fastattn.layer_norm(x, (40,), w, b), (x, w, b)


def _case_layer_norm_float64(rg):
    x, _, w, b = _norm_inputs((6, 40), 40, dtype=torch.float64, rg=rg)
    return fastattn.layer_norm(x, (40,), w, b), (x, w, b)


def _case_rms_norm(rg):
    x, _, w, _ = _norm_inputs((2, 7, 40), 40, rg=rg)
    return fastattn.rms_norm(x, (40,), w), (x, w)


def _case_rms_norm_eps_and_cast_weight(rg):
    # an fp16 weight of float32 data: rms_norm casts it (differentiably)
    x, _, w, _ = _norm_inputs((6, 40), 40, param_dtype=torch.float16, rg=rg)
    return fastattn.rms_norm(x, [40], w, eps=1e-3), (x, w)


def _case_rms_norm_bf16(rg):
    x, _, w, _ = _norm_inputs((6, 40), 40, dtype=torch.bfloat16, rg=rg)
    return fastattn.rms_norm(x, (40,), w), (x, w)


def _case_add_layer_norm(rg):
    x, r, w, b = _norm_inputs((4, 3, 40), 40, rg=rg)
    return fastattn.add_layer_norm(x, r, w, b, 1e-5), (x, r, w, b)


def _case_add_layer_norm_prenorm_dropout(rg):
    x, r, w, b = _norm_inputs((6, 40), 40, rg=rg)
    return fastattn.add_layer_norm(x, r, w, b, dropout_p=0.3, prenorm=True), (x, r, w, b)


def _case_add_layer_norm_no_residual_prenorm(rg):
    x, _, w, b = _norm_inputs((6, 40), 40, rg=rg)
    y, h = fastattn.add_layer_norm(x, None, w, b, prenorm=True)
    assert h is x
    return (y, h), (x, w, b)


def _case_add_rms_norm(rg):
    x, r, w, _ = _norm_inputs((6, 40), 40, rg=rg)
    return fastattn.add_rms_norm(x, r, w), (x, r, w)


def _case_add_rms_norm_prenorm_dropout(rg):
    x, r, w, _ = _norm_inputs((2, 3, 40), 40, dtype=torch.float16, rg=rg)
    return fastattn.add_rms_norm(x, r, w, 1e-6, dropout_p=0.2, prenorm=True), (x, r, w)


def _case_attention(rg):
    q, k, v = _qkv(rg=rg)
    return fastattn.attention(q, k, v), (q, k, v)


def _case_attention_everything(rg):
    q, k, v = _qkv(rg=rg)
    mask = torch.randn(9, 13, generator=_gen(2)).requires_grad_(rg)
    lengths = torch.tensor([5, 13])
    out = fastattn.attention(q, k, v, causal=True, attn_mask=mask, kv_lengths=lengths,
                             q_lengths=torch.tensor([9, 7], dtype=torch.int32),
                             scale=0.3, return_lse=True)
    return out, (q, k, v, mask)


def _case_attention_bool_mask_dropout(rg):
    q, k, v = _qkv(rg=rg)
    mask = torch.rand(2, 1, 9, 13, generator=_gen(3)) > 0.3
    return fastattn.attention(q, k, v, attn_mask=mask, dropout_p=0.25), (q, k, v)


def _case_attention_lse_only(rg):
    q, k, v = _qkv(rg=rg, Lq=1)  # decoding: one query
    _, lse = fastattn.attention(q, k, v, return_lse=True)
    return lse, (q, k, v)


def _case_attention_views_fp16(rg):
    g = _gen(6)
    base = torch.randn(2, 9, 4, 32, generator=g).to(torch.float16).requires_grad_(rg)
    q = base.transpose(1, 2)[..., :16]  # (B, H, L, D) view, last dim contiguous
    kv = torch.randn(2, 13, 2, 16, generator=g).to(torch.float16).requires_grad_(rg)
    k = v = kv.transpose(1, 2)
    return fastattn.attention(q, k, v, causal=True), (base, kv)


def _case_attention_float64_mask_grad(rg):
    q, k, v = _qkv(dtype=torch.float64, rg=rg, Lq=5, Lk=5)
    mask = torch.randn(4, 5, 5, dtype=torch.float64, generator=_gen(7)).requires_grad_(rg)
    return fastattn.attention(q, k, v, attn_mask=mask, return_lse=True), (q, k, v, mask)


def _case_attention_own_lengths(rg):
    from fastattn.ops.attention import attention_with_own_lengths
    q, k, v = _qkv(rg=rg)
    out = attention_with_own_lengths(q, k, v, causal=True, kv_lengths=torch.tensor([3, 11]))
    return out, (q, k, v)


def _case_varlen(rg):
    q, k, v, cu_q, cu_k = _packed(rg=rg)
    return fastattn.attention_varlen(q, k, v, cu_q, cu_k, 7, 7), (q, k, v)


def _case_varlen_causal_lse_dropout(rg):
    q, k, v, cu_q, cu_k = _packed(rg=rg)
    out = fastattn.attention_varlen(q, k, v, cu_q, cu_k, 8, 9, causal=True, dropout_p=0.2,
                                    return_lse=True)
    return out, (q, k, v)


def _case_varlen_fp16_views(rg):
    g = _gen(8)
    q, _, _, cu_q, cu_k = _packed(rg=False)
    base = torch.randn(16, 2, 48, generator=g).to(torch.float16).requires_grad_(rg)
    k, v = base[..., :16], base[..., 16:32]  # views, row stride 48
    q = q.to(torch.float16).requires_grad_(rg)
    return fastattn.attention_varlen(q, k, v, cu_q, cu_k, 7, 7, scale=0.5), (q, base)


def _case_varlen_own_seqlens(rg):
    from fastattn.ops.attention_varlen import attention_varlen_with_own_seqlens
    q, k, v, cu_q, cu_k = _packed(rg=rg)
    return attention_varlen_with_own_seqlens(q, k, v, cu_q, cu_k, 7, 7, causal=True), (q, k, v)


CASES = {name[len("_case_"):]: fn for name, fn in dict(globals()).items()
         if name.startswith("_case_")}


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


def _run(case, training, via_op, seed=1234):
    """Outputs and the gradients of every leaf for a fixed cotangent,
    through the op (under a dispatch mode) or through the fast path."""
    torch.manual_seed(seed)  # the same dropout seed on both paths
    if via_op:
        with FastattnOpCounter() as counter:
            out, leaves = CASES[case](training)
        assert counter.counts, "the op path was not taken"
    else:
        out, leaves = CASES[case](training)
    outs = _flat(out)
    if not training:
        return [o.detach() for o in outs]
    g = _gen(99)
    loss = sum((o * torch.randn(o.shape, generator=g).to(o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
    return [o.detach() for o in outs] + list(grads)


# ------------------------------------------------------------------ tests


def test_fast_path_is_active_here():
    """The fast path exists in the kernels loaded here and accepts calls
    made here (a mismatch of its native schemas would turn it off)."""
    assert _eager.fast_path_active()
    assert _backends.fast_module().plain_eager()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_serves_plain_eager_calls(case, training, monkeypatch):
    _python_paths(monkeypatch, _Forbidden)
    outs = _run(case, training, via_op=False)
    assert all(isinstance(t, torch.Tensor) for t in outs)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_equals_the_op_bitwise(case, training):
    want = _run(case, training, via_op=True)
    got = _run(case, training, via_op=False)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(
            a.nan_to_num(), b.nan_to_num())


def test_training_outputs_and_graph():
    """Outputs of a recorded call require grad and backward twice needs
    retain_graph, as through the op."""
    x, r, w, b = _norm_inputs((6, 40), 40, rg=True)
    y, h = fastattn.add_layer_norm(x, r, w, b, prenorm=True)
    assert y.requires_grad and h.requires_grad and y.grad_fn is not None
    (y.sum() + h.sum()).backward(retain_graph=True)
    (y.sum() + h.sum()).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (y.sum() + h.sum()).backward()
    q, k, v = _qkv(rg=True)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert out.requires_grad and lse.requires_grad and lse.dtype == torch.float32
    with torch.no_grad():
        assert not fastattn.attention(q, k, v).requires_grad


def test_saved_tensor_hooks_and_inplace_checks_apply():
    x, _, w, b = _norm_inputs((6, 40), 40, rg=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = fastattn.layer_norm(x, (40,), w, b)
    assert packed
    y.sum().backward()
    q, k, v = _qkv(rg=True)
    q2 = q * 1  # a non-leaf saved for backward, then modified in place
    out = fastattn.attention(q2, k, v)
    q2.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_dispatch_mode_takes_the_op(monkeypatch):
    spies = _python_paths(monkeypatch, _Spy)
    x, *_ = _norm_inputs((6, 40), 40)
    q, k, v = _qkv()
    pq, pk, pv, cu_q, cu_k = _packed()
    with FastattnOpCounter() as counter:
        fastattn.layer_norm(x, (40,))
        fastattn.attention(q, k, v)
        fastattn.attention_varlen(pq, pk, pv, cu_q, cu_k, 7, 7)
    assert counter.counts == {"norm_fwd": 1, "attention_fwd": 1, "attention_varlen_fwd": 1}
    assert [s.calls for s in spies] == [1, 1, 1]


def test_fake_tensors_take_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.randn(6, 40)
        y = fastattn.layer_norm(x, (40,))
        out = fastattn.attention(*_qkv())
    assert y.shape == (6, 40) and out.shape == (2, 4, 9, 16)


def test_compile_takes_the_op():
    """torch.compile never reaches the fast path (fullgraph: dynamo could
    not trace it), and the graph holds the torch.library ops."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def fn(x, q, k, v):
        return fastattn.layer_norm(x, (40,)), fastattn.attention(q, k, v)

    torch._dynamo.reset()
    x, *_ = _norm_inputs((6, 40), 40)
    q, k, v = _qkv()
    got = torch.compile(fn, backend=backend, fullgraph=True)(x, q, k, v)
    want = fn(x, q, k, v)
    assert any("fastattn.norm_fwd" in s for s in seen), seen
    assert any("fastattn.attention_fwd" in s for s in seen), seen
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    torch._dynamo.reset()


def test_functorch_takes_the_python_path(monkeypatch):
    module = _backends.fast_module()
    seen = []

    def probe(x):
        seen.append(module.plain_eager())
        return x.sum()
    x = torch.randn(3, 40)
    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(x)
    assert seen == [False, False]
    spies = _python_paths(monkeypatch, _Spy)
    try:  # (the op's autograd has no functorch rule: it may raise, as it did before)
        torch.func.grad(lambda t: fastattn.layer_norm(t, (40,)).square().sum())(x)
    except RuntimeError:
        pass
    assert spies[0].calls == 1


def test_torch_function_mode_and_jit_trace_take_the_python_path(monkeypatch):
    spies = _python_paths(monkeypatch, _Spy)

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x, *_ = _norm_inputs((6, 40), 40)
    with Mode():
        fastattn.layer_norm(x, (40,))
    assert spies[0].calls == 1
    torch.jit.trace(lambda t: fastattn.layer_norm(t, (40,)), (x,), check_trace=False)
    assert spies[0].calls == 2


def test_subclass_and_autocast_take_the_python_path(monkeypatch):
    spies = _python_paths(monkeypatch, _Spy)

    class Sub(torch.Tensor):
        pass

    x, *_ = _norm_inputs((6, 40), 40)
    fastattn.layer_norm(x.as_subclass(Sub), (40,))
    assert spies[0].calls == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastattn.layer_norm(x.bfloat16(), (40,))  # cast to float32 by the Python path
    assert spies[0].calls == 2 and y.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fastattn.layer_norm(x, (40,))  # nothing to cast: served fast
    assert spies[0].calls == 2


def test_other_backends_and_the_environment_are_honoured(monkeypatch):
    spies = _python_paths(monkeypatch, _Spy)
    x, *_ = _norm_inputs((6, 40), 40)
    q, k, v = _qkv()
    fastattn.layer_norm(x, (40,))
    fastattn.attention(q, k, v)
    assert [s.calls for s in spies[:2]] == [0, 0]
    fastattn.layer_norm(x, (40,), backend="reference")
    fastattn.attention(q, k, v, backend="reference")
    assert [s.calls for s in spies[:2]] == [1, 1]
    monkeypatch.setenv("FASTATTN_BACKEND", "reference")
    fastattn.layer_norm(x, (40,))
    fastattn.attention(q, k, v)
    assert [s.calls for s in spies[:2]] == [2, 2]
    monkeypatch.setenv("FASTATTN_BACKEND", "cpu")
    fastattn.layer_norm(x, (40,))
    fastattn.attention(q, k, v)
    assert [s.calls for s in spies[:2]] == [2, 2]
    monkeypatch.setenv("FASTATTN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTATTN_BACKEND"):
        fastattn.layer_norm(x, (40,))
    monkeypatch.delenv("FASTATTN_BACKEND")
    with pytest.raises(ValueError, match="backend"):
        fastattn.attention(q, k, v, backend="cuda")
    fastattn.layer_norm(x, (40,))
    assert spies[0].calls == 3


def test_kernels_becoming_unavailable_are_honoured(monkeypatch, caplog):
    """What tests/test_extension.py does: the cached choice is dropped."""
    x, *_ = _norm_inputs((6, 40), 40)
    fastattn.layer_norm(x, (40,))  # cached: cpu
    monkeypatch.setattr(_extension, "_status", None)
    monkeypatch.setattr(_backends, "_native_errors", {})
    monkeypatch.setattr(_extension, "_has_prebuilt", lambda: False)
    monkeypatch.setenv("FASTATTN_JIT", "0")
    _log.reset_for_tests()
    spies = _python_paths(monkeypatch, _Spy)
    with caplog.at_level(logging.WARNING, logger="fastattn"):
        fastattn.layer_norm(x, (40,))
    assert spies[0].calls == 1
    assert any("reference backend" in r.message for r in caplog.records)
    _log.reset_for_tests()


def test_debug_logging_is_the_python_paths(monkeypatch, caplog):
    spies = _python_paths(monkeypatch, _Spy)
    x, *_ = _norm_inputs((6, 40), 40)
    with caplog.at_level(logging.DEBUG, logger="fastattn"):
        fastattn.layer_norm(x, (40,))
        fastattn.attention(*_qkv())
    assert [s.calls for s in spies[:2]] == [1, 1]
    assert ["layer_norm: backend cpu", "attention: backend cpu"] == [
        r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    fastattn.layer_norm(x, (40,))
    assert spies[0].calls == 1


def test_errors_are_the_python_checks_and_draw_nothing(monkeypatch):
    """Every bad call of tests/test_hardening_inputs.py's table raises the
    same exception, message and all, as with the fast path switched off
    (the Python checks raise it), and draws the same random numbers (none
    more: the fast path declines before any draw)."""
    from test_hardening_inputs import BAD_CALLS

    def outcome(fn, exc):
        torch.manual_seed(0)
        with pytest.raises(exc) as info:
            fn()
        return type(info.value), str(info.value), torch.random.get_rng_state()

    for name, fn, exc, arg in BAD_CALLS:
        got = outcome(fn, exc)
        with monkeypatch.context() as m:
            m.setattr(_eager, "fast", _eager._NoFastPath())
            want = outcome(fn, exc)
        assert got[:2] == want[:2], name
        assert torch.equal(got[2], want[2]), name
        assert arg in got[1], (name, got[1])
    module = _backends.fast_module()
    x = torch.randn(3, 8)
    # the fast path's own answer to a few bad calls: declined
    assert module.layer_norm(x, (9,), None, None, 1e-5, "auto") is NotImplemented
    assert module.layer_norm(x, (8,), None, None, -1.0, "auto") is NotImplemented
    assert module.layer_norm(x, (8,), None, None, 1e-5, 3) is NotImplemented
    assert module.add_layer_norm(x, x, None, None, 1e-5, 1.5, False, "auto") is NotImplemented
    assert module.add_layer_norm(x, x, None, None, 1e-5, 0.1, 1, "auto") is NotImplemented


def test_bad_dropout_call_draws_no_seed():
    x, r, w, b = _norm_inputs((6, 40), 40)
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="residual"):
        fastattn.add_layer_norm(x, r[:3], w, b, dropout_p=0.5)
    with pytest.raises(ValueError, match="q_lengths"):
        fastattn.attention(*_qkv(), q_lengths=torch.tensor([10, 1]), dropout_p=0.5)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_signatures_are_what_the_fast_path_takes():
    """The fast path receives these parameters, in this order
    (csrc/fast_path.cpp): a parameter added to a public function must
    reach it too (or make it decline), never be dropped silently. The
    attention variants (last four) make it decline: the wrappers call it
    only when every variant is off (ops/attention.py, _variants_off), and
    tests/test_attention_variants.py checks that they take effect."""
    import inspect

    from fastattn.ops.attention import attention_with_own_lengths
    from fastattn.ops.attention_varlen import attention_varlen_with_own_seqlens
    expected = {
        fastattn.layer_norm: "x normalized_shape weight bias eps backend",
        fastattn.rms_norm: "x normalized_shape weight eps backend",
        fastattn.add_layer_norm: "x residual weight bias eps dropout_p prenorm backend",
        fastattn.add_rms_norm: "x residual weight eps dropout_p prenorm backend",
        fastattn.attention: "q k v causal attn_mask q_lengths kv_lengths dropout_p scale "
                            "return_lse backend deterministic window_size alibi_slopes softcap rel_bias",
        attention_with_own_lengths: "q k v causal attn_mask q_lengths kv_lengths dropout_p "
                                    "scale backend window_size alibi_slopes softcap rel_bias",
        fastattn.attention_varlen: "q k v cu_seqlens_q cu_seqlens_k max_seqlen_q max_seqlen_k "
                                   "causal dropout_p scale return_lse backend deterministic window_size alibi_slopes softcap rel_bias",
        attention_varlen_with_own_seqlens: "q k v cu_seqlens_q cu_seqlens_k max_seqlen_q "
                                           "max_seqlen_k causal dropout_p scale backend window_size alibi_slopes softcap rel_bias",
    }
    for fn, names in expected.items():
        assert list(inspect.signature(fn).parameters) == names.split(), fn.__name__
