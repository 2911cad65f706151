"""torch.compile with dynamic shapes, torch.autocast and CUDA graphs.

- torch.compile(fullgraph=True, dynamic=True) of the fastattn.nn modules
  and of a whole swapped nn.Transformer, forward and backward, at two
  sequence lengths served by one graph (a recompile raises here).
- torch.autocast: a swapped model runs under CPU bf16 autocast and
  matches the unswapped model under the same autocast. fastattn's norms
  run in float32 under autocast (as torch's layer_norm does under CUDA
  autocast); attention runs in the dtype its inputs arrive in (the
  projections before it already produce the autocast dtype).
- CUDA graphs: capture and replay of a forward+backward step (GPU only).
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastattn
from helpers import HAS_CUDA, backend_params

BACKENDS = backend_params("attention")
D_MODEL, HEADS = 64, 4


def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")


def _fwd_bwd(model, *inputs):
    """Output and the gradients of every parameter and input, for a fixed
    random cotangent."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = model(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    g = torch.Generator().manual_seed(5)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    params = [p for p in model.parameters() if p.requires_grad]
    floats = [x for x in leaves if x.requires_grad]
    grads = torch.autograd.grad(out, params + floats, cot)
    return out, grads


def _assert_match(got, want, rtol=1e-4, atol=1e-5):
    (out, grads), (w_out, w_grads) = got, want
    torch.testing.assert_close(out, w_out, rtol=rtol, atol=atol)
    assert len(grads) == len(w_grads)
    for g, w in zip(grads, w_grads):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


def _two_lengths(eager, compiled, make_inputs):
    """The compiled module matches eager at two lengths, with one graph."""
    inputs = make_inputs(7)
    _assert_match(_fwd_bwd(compiled, *inputs), _fwd_bwd(eager, *inputs))
    inputs = make_inputs(13)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _assert_match(_fwd_bwd(compiled, *inputs), _fwd_bwd(eager, *inputs))


def _mha_inputs(length):
    x = torch.randn(3, length, D_MODEL)
    padding = torch.arange(length) >= torch.tensor([length, length - 2, 3]).view(3, 1)
    return x, padding


class _SelfAttention(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.mha = fastattn.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True,
                                                  backend=backend)

    def forward(self, x, key_padding_mask):
        return self.mha(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("module", ["LayerNorm", "RMSNorm", "MultiheadAttention"])
def test_module_dynamic(module, backend, device):
    if module == "MultiheadAttention":
        eager, make = _SelfAttention(backend), _mha_inputs
    else:
        eager = getattr(fastattn.nn, module)(D_MODEL, backend=backend)
        with torch.no_grad():  # not the default ones and zeros
            for p in eager.parameters():
                p.copy_(torch.randn_like(p))

        def make(length):
            return (torch.randn(2, length, D_MODEL),)
    eager = eager.to(device)
    _two_lengths(eager, _compile(copy.deepcopy(eager)), make)


def _transformer():
    return torch.nn.Transformer(D_MODEL, HEADS, num_encoder_layers=1, num_decoder_layers=1,
                                dim_feedforward=96, dropout=0.0, batch_first=True)


def _seq2seq_inputs(length):
    src = torch.randn(2, length, D_MODEL)
    tgt = torch.randn(2, length - 2, D_MODEL)
    src_pad = torch.arange(length) >= torch.tensor([length, length - 3]).view(2, 1)
    return src, tgt, src_pad


class _Seq2Seq(torch.nn.Module):
    """nn.Transformer with a causal decoder and a padded source."""

    def __init__(self, transformer):
        super().__init__()
        self.t = transformer

    def forward(self, src, tgt, src_pad):
        mask = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.t(src, tgt, tgt_mask=mask, tgt_is_causal=True,
                      src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_swapped_transformer_dynamic(backend, device):
    """A whole swapped model, compiled dynamic, against the unswapped model
    in eager mode: outputs and every parameter and input gradient."""
    original = _Seq2Seq(_transformer()).to(device)
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend)
    _two_lengths(original, _compile(swapped), _seq2seq_inputs)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_swapped_transformer_autocast_cpu_bf16(compiled):
    """Under CPU bf16 autocast the swapped model runs (the norms see a bf16
    branch output beside an fp32 residual) and matches the unswapped model
    under the same autocast to bf16 accuracy; the output dtype is the
    unswapped model's."""
    original = _Seq2Seq(_transformer())
    swapped = fastattn.swap_modules(copy.deepcopy(original))  # auto: CPU kernels
    run = _compile(swapped) if compiled else swapped
    inputs = _seq2seq_inputs(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _fwd_bwd(run, *inputs)
        want = _fwd_bwd(original, *inputs)
    assert got[0].dtype == want[0].dtype
    assert all(g.dtype == w.dtype for g, w in zip(got[1], want[1]))
    # Both compute in bf16 where autocast says so, but round differently
    # (fastattn's norms in fp32, torch's CPU layer_norm in bf16); a ReLU
    # then turns tiny differences into single large ones. Judge each
    # tensor by its relative error in norm: bf16 (eps 2^-8) over two layers.
    for g, w in zip((got[0],) + got[1], (want[0],) + want[1]):
        rel = ((g.double() - w.double()).norm() / w.double().norm()).item()
        assert rel < 0.05, f"relative error {rel:.3g} of a tensor of shape {tuple(w.shape)}"


def test_norm_autocast_policy():
    """fastattn's norms under autocast: float32 out of bf16/fp16 in; mixed
    input dtypes accepted (outside autocast a residual of another dtype than
    x raises TypeError; float32 weights of bf16 x are fine, as in torch)."""
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    res, w, b = torch.randn(4, 32), torch.randn(32), torch.randn(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastattn.add_layer_norm(x, res, w, b)
        z = fastattn.rms_norm(x, 32, w)
    assert y.dtype == z.dtype == torch.float32
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x.float() + res, (32,), w, b))
    torch.testing.assert_close(z, torch.nn.functional.rms_norm(x.float(), (32,), w))
    with pytest.raises(TypeError, match="residual"):
        fastattn.add_layer_norm(x, res, w, b)
    assert fastattn.add_layer_norm(x, res.bfloat16(), w, b).dtype == torch.bfloat16


# ------------------------------------------------------------ CUDA graphs


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_forward_backward(backend):
    """Capture one forward+backward step of attention (with lengths, whose
    values are not read during capture) and a fused add & norm; replay it
    on new inputs copied into the static buffers; compare with eager."""
    dev = torch.device("cuda")
    for family in ("attention", "norm"):
        why = fastattn._backends.unavailable_reason(backend, family, dev)
        if why:
            pytest.skip(why)
    B, H, L, D = 2, 4, 40, 64
    static = {
        "q": torch.randn(B, H, L, D, device=dev, requires_grad=True),
        "k": torch.randn(B, H, L, D, device=dev, requires_grad=True),
        "v": torch.randn(B, H, L, D, device=dev, requires_grad=True),
        "res": torch.randn(B, L, H * D, device=dev, requires_grad=True),
    }
    lengths = torch.tensor([L, 17], device=dev, dtype=torch.int32)
    w = torch.randn(H * D, device=dev, requires_grad=True)

    def step():
        o = fastattn.attention(static["q"], static["k"], static["v"], causal=True,
                               kv_lengths=lengths, backend=backend)
        y = fastattn.add_layer_norm(o.transpose(1, 2).reshape(B, L, H * D), static["res"], w,
                                    None, backend=backend)
        y.square().sum().backward()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: autotuning and allocations
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for t in list(static.values()) + [w]:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()

    for _ in range(2):
        fresh = {n: torch.randn_like(t) for n, t in static.items()}
        for n, t in fresh.items():
            static[n].data.copy_(t)
        graph.replay()
        torch.cuda.synchronize()
        leaves = {n: t.clone().requires_grad_() for n, t in fresh.items()}
        w_eager = w.detach().clone().requires_grad_()
        o = fastattn.attention(leaves["q"], leaves["k"], leaves["v"], causal=True,
                               kv_lengths=lengths, backend=backend)
        y = fastattn.add_layer_norm(o.transpose(1, 2).reshape(B, L, H * D), leaves["res"],
                                    w_eager, None, backend=backend)
        y.square().sum().backward()
        torch.testing.assert_close(y_static, y)
        for n in static:
            torch.testing.assert_close(static[n].grad, leaves[n].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(w.grad, w_eager.grad, rtol=1e-4, atol=1e-3)
