"""fastattn.nn.LayerNorm / RMSNorm against torch.nn.LayerNorm / RMSNorm.

Same constructor, same state_dict (keys and values), and outputs and
gradients that match torch's module by the accuracy protocol (docs/TESTING.md): each is judged
against torch's module in float64, with torch's own float32 error as the
yardstick.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastattn

from helpers import assert_close, backend_params

BACKENDS = [p for p in backend_params("norm")
            if p.values[0] not in ("cpu", "cuda") or p.values[0] == p.values[1]]

LAYER_NORM_OPTIONS = [
    dict(normalized_shape=33),
    dict(normalized_shape=(129,), eps=1e-3),
    dict(normalized_shape=40, elementwise_affine=False),
    dict(normalized_shape=40, bias=False),
    dict(normalized_shape=(4, 6)),
    dict(normalized_shape=(3, 5), elementwise_affine=False, bias=False),
]
RMS_NORM_OPTIONS = [
    dict(normalized_shape=33),
    dict(normalized_shape=(129,), eps=1e-4),
    dict(normalized_shape=40, elementwise_affine=False),
    dict(normalized_shape=(4, 6)),
]


def _ids(options):
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def _randomize_(module: torch.nn.Module) -> torch.nn.Module:
    # Fresh parameters: a freshly built module has weight 1 and bias 0.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1.0)
    return module


def _check_module(ours: torch.nn.Module, theirs: torch.nn.Module, device: str):
    """ours(x) vs theirs(x): output, input gradient, parameter gradients."""
    ours, theirs = ours.to(device), theirs.to(device)
    assert isinstance(ours, type(theirs))
    shape = theirs.normalized_shape
    x = (torch.randn(6, 5, *shape, device=device) * 2 + 0.3)
    truth = copy.deepcopy(theirs).double()
    results = []
    for module, inp in ((ours, x), (truth, x.double()), (theirs, x)):
        inp = inp.clone().requires_grad_()
        y = module(inp)
        dy = torch.randn(y.shape, generator=torch.Generator(device=device).manual_seed(1),
                         device=device, dtype=torch.float64).to(y.dtype)
        params = list(module.parameters())
        grads = torch.autograd.grad(y, [inp] + params, dy)
        results.append((y, grads))
    (y, grads), (y_t, grads_t), (y_b, grads_b) = results
    assert_close(y, y_t, y_b, name="output")
    for i, (g, g_t, g_b) in enumerate(zip(grads, grads_t, grads_b)):
        assert_close(g, g_t, g_b, name=f"grad {i}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("options", LAYER_NORM_OPTIONS, ids=_ids(LAYER_NORM_OPTIONS))
def test_layer_norm_module(options, backend, device):
    theirs = _randomize_(torch.nn.LayerNorm(**options))
    ours = fastattn.nn.LayerNorm(**options, backend=backend)
    assert isinstance(ours, torch.nn.LayerNorm)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    assert (ours.eps, ours.normalized_shape, ours.elementwise_affine) == \
        (theirs.eps, theirs.normalized_shape, theirs.elementwise_affine)
    _check_module(ours, theirs, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("options", RMS_NORM_OPTIONS, ids=_ids(RMS_NORM_OPTIONS))
def test_rms_norm_module(options, backend, device):
    theirs = _randomize_(torch.nn.RMSNorm(**options))
    ours = fastattn.nn.RMSNorm(**options, backend=backend)
    assert isinstance(ours, torch.nn.RMSNorm)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    assert (ours.eps, ours.normalized_shape) == (theirs.eps, theirs.normalized_shape)
    _check_module(ours, theirs, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_from_torch_converts_in_place(backend, device):
    for module in (_randomize_(torch.nn.LayerNorm(17)), _randomize_(torch.nn.RMSNorm(17))):
        is_ln = isinstance(module, torch.nn.LayerNorm)
        cls = fastattn.nn.LayerNorm if is_ln else fastattn.nn.RMSNorm
        theirs = copy.deepcopy(module)
        weight, keys = module.weight, module.state_dict().keys()
        ours = cls.from_torch(module, backend=backend)
        assert ours is module and type(ours) is cls
        assert ours.weight is weight
        assert ours.state_dict().keys() == keys
        _check_module(ours, theirs, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_module_compiles(backend, device):
    torch._dynamo.reset()
    module = fastattn.nn.LayerNorm(24, backend=backend).to(device)
    _randomize_(module)
    x = torch.randn(3, 5, 24, device=device, requires_grad=True)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y_eager = module(x)
    torch.testing.assert_close(y, y_eager)
    g = torch.autograd.grad(y.sum(), (x, module.weight))
    g_eager = torch.autograd.grad(y_eager.sum(), (x, module.weight))
    for a, b in zip(g, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call", [
    lambda m, x: m(x[..., :-1]),                       # input of another width
    lambda m, x: m(x.half()),                          # weight fp32, input fp16: fine (mixed)
    lambda m, x: m.half()(x),                          # weight fp16, input fp32
], ids=["width", "half-input", "half-weight"])
def test_layer_norm_module_raises_what_torch_raises(call):
    """A drop-in: where torch's LayerNorm raises RuntimeError, so does
    fastattn's (its errors are also ValueError/TypeError naming the argument)."""
    x = torch.randn(3, 8)
    try:
        call(torch.nn.LayerNorm(8), x)
    except RuntimeError as torch_error:
        with pytest.raises(RuntimeError):
            call(fastattn.nn.LayerNorm(8), x)
        assert type(torch_error) is RuntimeError
    else:
        call(fastattn.nn.LayerNorm(8), x)
