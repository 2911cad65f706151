"""fastattn.nn.MultiheadAttention against torch.nn.MultiheadAttention."""

import copy

import pytest
import torch

import fastattn
from helpers import FastattnOpCounter, assert_close, backend_params

E, H = 64, 4
BACKENDS = backend_params("attention", devices=("cpu",))


def _pair(backend="auto", **kwargs):
    """(torch module in fp64, torch module in fp32, fastattn module in fp32),
    all with the same weights."""
    torch_mha = torch.nn.MultiheadAttention(E, H, **kwargs)
    ours = fastattn.nn.MultiheadAttention(E, H, backend=backend, **kwargs)
    ours.load_state_dict(torch_mha.state_dict())
    return copy.deepcopy(torch_mha).double(), torch_mha, ours


def _inputs(batch_first, n=3, lq=7, s=9, cross=False, kdim=E, vdim=E):
    def make(length, dim):
        shape = (n, length, dim) if batch_first else (length, n, dim)
        return torch.randn(shape, requires_grad=True)
    q = make(lq, E)
    if not cross:
        return q, q, q
    return q, make(s, kdim), make(s, vdim)


def _right_padding(n, s):
    lengths = torch.randint(1, s + 1, (n,))
    lengths[0] = s
    return torch.arange(s)[None, :] >= lengths[:, None]  # True = ignore


def _run(module, q, k, v, dtype=None, **kw):
    def cast(t):  # a fresh leaf per run, so gradients never accumulate across runs
        return t.detach().to(dtype or t.dtype).requires_grad_()
    same = q is k and k is v
    q2 = cast(q)
    k2, v2 = (q2, q2) if same else (cast(k), cast(v))
    kw = {key: (val.to(dtype) if dtype and torch.is_tensor(val) and val.is_floating_point()
                else val) for key, val in kw.items()}
    out, weights = module(q2, k2, v2, **kw)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out.backward(grad.to(out.dtype))
    grads = [t.grad for t in ((q2,) if same else (q2, k2, v2))]
    grads += [p.grad for p in module.parameters()]
    return out, weights, grads


CASES = [
    dict(batch_first=True),
    dict(batch_first=False),
    dict(batch_first=True, bias=False),
    dict(batch_first=True, add_bias_kv=True),
    dict(batch_first=True, add_zero_attn=True),
    dict(batch_first=False, kdim=24, vdim=40),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("masks", ["none", "key_padding", "bool_mask", "float_mask", "causal"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_matches_torch(kwargs, masks, backend, device):
    truth_mod, base_mod, ours = _pair(backend, **kwargs)
    cross = "kdim" in kwargs or masks == "key_padding"
    q, k, v = _inputs(kwargs["batch_first"], cross=cross, kdim=kwargs.get("kdim", E),
                      vdim=kwargs.get("vdim", E))
    n, lq = 3, 7
    s = 9 if cross else lq
    call = dict(need_weights=False)
    if masks == "key_padding":
        call["key_padding_mask"] = _right_padding(n, s)
    elif masks == "bool_mask":
        m = torch.rand(lq, s) < 0.3
        m[:, 0] = False  # every query keeps a key
        call["attn_mask"] = m
    elif masks == "float_mask":
        call["attn_mask"] = torch.randn(lq, s)
    elif masks == "causal":
        if cross:
            pytest.skip("causal hint is for self-attention")
        call["attn_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(lq)
        call["is_causal"] = True
    truth = _run(truth_mod, q, k, v, torch.float64, **call)
    base = _run(base_mod, q, k, v, **call)
    with FastattnOpCounter() as counter:
        got = _run(ours, q, k, v, **call)
    assert counter.counts.get("attention_fwd", 0) == 1, counter.counts
    assert counter.counts.get("attention_bwd", 0) == 1, counter.counts
    assert got[1] is None
    assert_close(got[0], truth[0], base[0], "output")
    for i, (g, t, b) in enumerate(zip(got[2], truth[2], base[2])):
        assert_close(g, t, b, f"grad {i}")


def test_need_weights_and_state_dict_are_torchs():
    truth_mod, base_mod, ours = _pair(batch_first=True)
    assert ours.state_dict().keys() == base_mod.state_dict().keys()
    q, k, v = _inputs(True, cross=True)
    out, w = ours(q, k, v, need_weights=True)
    ref_out, ref_w = base_mod(q, k, v, need_weights=True)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


def test_unbatched_input():
    truth_mod, base_mod, ours = _pair(batch_first=True)
    x = torch.randn(5, E)
    got, _ = ours(x, x, x, need_weights=False)
    ref, _ = truth_mod(x.double(), x.double(), x.double(), need_weights=False)
    base, _ = base_mod(x, x, x, need_weights=False)
    assert_close(got, ref, base)


def test_self_attention_projection_is_not_copied():
    _, _, ours = _pair(batch_first=True)
    x = torch.randn(2, 5, E)
    q, k, v = ours._project(x, x, x)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == \
        v.untyped_storage().data_ptr()


# ------------------------------------------------- torch's contract, not ours


def _twins(embed=E, heads=H, **kwargs):
    """torch's module and fastattn's, same weights, fp32."""
    torch_mha = torch.nn.MultiheadAttention(embed, heads, **kwargs)
    ours = fastattn.nn.MultiheadAttention(embed, heads, **kwargs)
    ours.load_state_dict(torch_mha.state_dict())
    return torch_mha.eval(), ours.eval()


def test_causal_hint_drops_the_mask_as_torch_does():
    """is_causal=True with need_weights=False and no key padding mask: torch
    ignores attn_mask whatever its shape and applies a causal mask."""
    torch_mha, ours = _twins(batch_first=True)
    x = torch.randn(2, 6, E)
    odd_mask = torch.zeros(3, 4)  # no valid shape at all: torch never looks at it
    expected, _ = torch_mha(x, x, x, attn_mask=odd_mask, is_causal=True, need_weights=False)
    with FastattnOpCounter() as counter:
        got, _ = ours(x, x, x, attn_mask=odd_mask, is_causal=True, need_weights=False)
    assert counter.counts.get("attention_fwd", 0) == 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _bad_calls():
    x = torch.randn(2, 6, E)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    return [
        ("is-causal-without-mask", (x, x, x), dict(is_causal=True)),
        ("query-4d", (x[None], x[None], x[None]), {}),
        ("key-2d", (x, x[0], x[0]), {}),
        ("embed-dim", (x[..., :E - 8], x[..., :E - 8], x[..., :E - 8]), {}),
        ("key-value-shape", (x, x, x[:, :5]), {}),
        ("mask-2d-shape", (x, x, x), dict(attn_mask=torch.zeros(5, 6))),
        ("mask-3d-shape", (x, x, x), dict(attn_mask=torch.zeros(3, 6, 6))),
        ("mask-4d", (x, x, x), dict(attn_mask=torch.zeros(2, H, 6, 6))),
        ("mask-int", (x, x, x), dict(attn_mask=torch.zeros(6, 6, dtype=torch.int64))),
        ("kpm-int", (x, x, x), dict(key_padding_mask=kpm.long())),
        ("kpm-shape", (x, x, x), dict(key_padding_mask=kpm[:, :5])),
        ("kpm-3d", (x, x, x), dict(key_padding_mask=kpm[None])),
        ("key-batch", (x, torch.randn(3, 6, E), torch.randn(3, 6, E)), {}),
        ("query-list", ([[0.0] * E], x, x), {}),
        ("query-int", (x.long(), x.long(), x.long()), {}),
    ]


@pytest.mark.parametrize("args,kwargs", [pytest.param(a, k, id=i) for i, a, k in _bad_calls()])
def test_bad_input_raises_what_torch_raises(args, kwargs):
    """Code written against torch's module (``except AssertionError``
    included) keeps working after the swap."""
    torch_mha, ours = _twins(batch_first=True)
    with pytest.raises(Exception) as torch_error:
        torch_mha(*args, need_weights=False, **kwargs)
    with pytest.raises(Exception) as our_error:
        ours(*args, need_weights=False, **kwargs)
    assert type(our_error.value) is type(torch_error.value), (our_error.value, torch_error.value)
    # Where fastattn words the message, it names the argument (or quotes torch's).
    words = ("query", "key", "value", "attn_mask", "key_padding_mask", "is_causal")
    assert any(w in str(our_error.value) for w in words) or \
        str(our_error.value) == str(torch_error.value), our_error.value


def test_torchscript_names_the_supported_paths():
    _, ours = _twins()
    with pytest.raises(RuntimeError, match="torch.compile"):
        torch.jit.script(ours)
    layer = fastattn.swap_modules(torch.nn.TransformerEncoderLayer(E, H, batch_first=True))
    with pytest.raises(RuntimeError, match="torch.export"):
        torch.jit.script(layer)


def test_need_weights_default_warns_once_with_the_fix(caplog):
    """attn(x, x, x) (need_weights=True, torch's default) gets torch's
    result, computed by torch; the fastattn logger says so once, and how
    to run fastattn instead."""
    from fastattn import _log
    torch_mha, ours = _twins(batch_first=True)
    x = torch.randn(2, 5, E)
    _log.reset_for_tests()
    with caplog.at_level("WARNING", logger="fastattn"):
        out, weights = ours(x, x, x)
        ours(x, x, x)
    expected, expected_weights = torch_mha(x, x, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    said = [r.message for r in caplog.records if "need_weights" in r.message]
    assert len(said) == 1 and "need_weights=False" in said[0], said


@pytest.mark.parametrize("embed,heads", [(16, 2), (36, 3), (8, 8)])
def test_small_head_dims_run_fastattn(embed, heads):
    """Head dims 8, 12 and 1 (below the kernels' tile width) are fastattn's
    to compute, not torch's."""
    torch_mha, ours = _twins(embed, heads, batch_first=True)
    x = torch.randn(2, 7, embed)
    kpm = _right_padding(2, 7)
    with FastattnOpCounter() as counter:
        got, _ = ours(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert counter.counts.get("attention_fwd", 0) == 1
    expected, _ = torch_mha(x, x, x, key_padding_mask=kpm, need_weights=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_dim_over_256_is_torchs(caplog):
    torch_mha, ours = _twins(2 * 272, 2, batch_first=True)
    x = torch.randn(1, 3, 2 * 272)
    with caplog.at_level("WARNING", logger="fastattn"):
        got, _ = ours(x, x, x, need_weights=False)
    expected, _ = torch_mha(x, x, x, need_weights=False)
    torch.testing.assert_close(got, expected)


def test_nested_encoder_input_is_torchs():
    """torch.nn.TransformerEncoder(enable_nested_tensor=True) feeds its
    layers nested tensors (torch's fast path): a fastattn layer used there
    directly hands them to torch's layer."""
    torch_layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, batch_first=True)
    ours = fastattn.nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, batch_first=True)
    ours.load_state_dict(torch_layer.state_dict())
    x = torch.randn(2, 3, 16)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    outs = []
    for layer in (torch_layer, ours):
        encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=True).eval()
        with torch.no_grad():
            outs.append(encoder(x, src_key_padding_mask=pad))
    torch.testing.assert_close(outs[1], outs[0])


def test_repr_names_the_backend():
    layer = fastattn.swap_modules(torch.nn.TransformerEncoderLayer(E, H), backend="cpu")
    text = repr(layer)
    assert "fastattn backend=cpu" in text  # the layer, its attention and its norms
    assert text.count("fastattn backend=cpu") == 4, text
