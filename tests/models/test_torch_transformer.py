"""swap_modules on torch.nn.Transformer: same outputs and gradients."""

import copy

import pytest
import torch

import fastattn
from helpers import FastattnOpCounter, assert_close, backend_params

BACKENDS = backend_params("attention", devices=("cpu",))
D_MODEL, NHEAD = 64, 4


def _model(batch_first, norm_first):
    return torch.nn.Transformer(d_model=D_MODEL, nhead=NHEAD, num_encoder_layers=2,
                                num_decoder_layers=2, dim_feedforward=48, dropout=0.0,
                                batch_first=batch_first, norm_first=norm_first)


def _batch(batch_first, n=3, src_len=9, tgt_len=6):
    def seq(length):
        shape = (n, length, D_MODEL) if batch_first else (length, n, D_MODEL)
        return torch.randn(shape)
    src_lengths = torch.tensor([src_len, 5, 2])
    tgt_lengths = torch.tensor([tgt_len, 4, 3])
    return dict(
        src=seq(src_len), tgt=seq(tgt_len),
        src_key_padding_mask=torch.arange(src_len)[None] >= src_lengths[:, None],
        memory_key_padding_mask=torch.arange(src_len)[None] >= src_lengths[:, None],
        tgt_key_padding_mask=torch.arange(tgt_len)[None] >= tgt_lengths[:, None],
        tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(tgt_len),
        tgt_is_causal=True,
    )


def _step(model, batch, dtype):
    model = model.to(dtype)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) if torch.is_tensor(v) else v
              for k, v in batch.items()}
    out = model(**inputs)
    # padded query rows are excluded: torch leaves them to attend padding only
    out.float().square().mean().backward()
    return out, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_swapped_transformer_matches(backend, device, batch_first, norm_first, train):
    original = _model(batch_first, norm_first).train(train)
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend)
    batch = _batch(batch_first)

    truth = _step(copy.deepcopy(original), batch, torch.float64)
    base = _step(original, batch, torch.float32)
    with FastattnOpCounter() as counter:
        got = _step(swapped, batch, torch.float32)
    # 2 encoder self-attn + 2 decoder self-attn + 2 cross-attn, forward and backward
    assert counter.counts.get("attention_fwd") == 6, counter.counts
    assert counter.counts.get("attention_bwd") == 6, counter.counts
    assert counter.counts.get("norm_fwd", 0) >= 10, counter.counts

    assert_close(got[0], truth[0], base[0], "output")
    names = [n for n, _ in original.named_parameters()]
    for name, g, t, b in zip(names, got[1], truth[1], base[1]):
        assert_close(g, t, b, f"grad of {name}")


def test_swap_keeps_parameters_and_state_dict():
    original = _model(True, False)
    params = {n: p for n, p in original.named_parameters()}
    keys = original.state_dict().keys()
    swapped = fastattn.swap_modules(original)
    assert swapped is original
    assert swapped.state_dict().keys() == keys
    for n, p in swapped.named_parameters():
        assert p is params[n]
    assert isinstance(swapped.encoder.layers[0].self_attn, fastattn.nn.MultiheadAttention)
    assert isinstance(swapped.decoder.layers[0].norm1, fastattn.nn.LayerNorm)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_compiled_swapped_encoder(backend, device):
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, NHEAD, 48, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    swapped = fastattn.swap_modules(copy.deepcopy(encoder), backend=backend)
    x = torch.randn(2, 7, D_MODEL)
    mask = torch.arange(7)[None] >= torch.tensor([7, 4])[:, None]
    expected = encoder(x, src_key_padding_mask=mask)
    compiled = torch.compile(swapped, backend="aot_eager", fullgraph=True)
    got = compiled(x, src_key_padding_mask=mask)
    valid = ~mask
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=1e-4)


def _encoder_step(model, x, mask, dtype):
    model = model.to(dtype)
    out = model(x.to(dtype), src_key_padding_mask=mask)
    valid = ~mask if model.layers[0].self_attn.batch_first else (~mask).t()
    (out[valid].float().square().mean()).backward()
    return out, valid, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("final_norm", [False, True], ids=["", "final-norm"])
def test_unpadded_encoder_matches(backend, device, batch_first, norm_first, final_norm):
    """swap_modules(unpad=True) on a TransformerEncoder with a key padding
    mask: outputs at valid positions and every gradient as the original,
    attention on packed sequences, zeros at padded positions. With a final
    norm (as nn.Transformer's encoder has) too."""
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, NHEAD, 48, dropout=0.0,
                                             batch_first=batch_first, norm_first=norm_first)
    norm = torch.nn.LayerNorm(D_MODEL) if final_norm else None
    original = torch.nn.TransformerEncoder(layer, num_layers=2, norm=norm,
                                           enable_nested_tensor=False)
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend, unpad=True)
    lengths = torch.tensor([9, 5, 2])
    mask = torch.arange(9)[None] >= lengths[:, None]
    x = torch.randn((3, 9, D_MODEL) if batch_first else (9, 3, D_MODEL))

    truth = _encoder_step(copy.deepcopy(original), x, mask, torch.float64)
    base = _encoder_step(original, x, mask, torch.float32)
    with FastattnOpCounter() as counter:
        got = _encoder_step(swapped, x, mask, torch.float32)
    assert counter.counts.get("attention_varlen_fwd") == 2, counter.counts
    valid = got[1]
    assert_close(got[0][valid], truth[0][valid], base[0][valid], "output")
    assert (got[0][~valid] == 0).all()
    names = [n for n, _ in original.named_parameters()]
    for name, g, t, b in zip(names, got[2], truth[2], base[2]):
        assert_close(g, t, b, f"grad of {name}")
