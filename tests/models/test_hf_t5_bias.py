"""Swapped T5 computes its relative-position bias inside the kernels.

T5's attention normally materializes its bias as a (1, H, Lq, Lk) tensor
(and its gradient) for every forward. After swap_modules, the attention
layers hand fastattn the layer's relative_attention_bias table instead
(fastattn.RelativePositionBias): no (., H, Lq, Lk) tensor reaches attention
in forward or backward, the table still gets its gradient (the model
comparison of test_hf_models.py checks its value), and the model still
pickles and loads its checkpoint.
"""

import copy
import io

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed "
                    "(optional extra: pip install 'fastattn[transformers]')")

import fastattn  # noqa: E402
from fastattn.ops import attention as attention_ops  # noqa: E402
from hf_cases import CASES, build  # noqa: E402


def _spy(monkeypatch):
    """Records, per attention call of the integration, what it passed."""
    calls = []
    real = attention_ops.attention_with_own_lengths

    def spy(q, k, v, **kwargs):
        calls.append(kwargs)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention_ops, "attention_with_own_lengths", spy)
    return calls


def test_no_materialized_bias_reaches_attention(monkeypatch):
    case = CASES["t5"]
    model = fastattn.swap_modules(build(case, "eager").train())
    calls = _spy(monkeypatch)
    out = model(**case.batch())
    out.logits.sum().backward()
    assert len(calls) == case.attention_calls
    for kwargs in calls:
        mask = kwargs.get("attn_mask")
        # a padding or causal mask may remain; never a float (., H, Lq, Lk) bias
        assert mask is None or mask.dtype == torch.bool, (mask.dtype, tuple(mask.shape))
    with_table = [kw for kw in calls if kw.get("rel_bias") is not None]
    # encoder and decoder self-attention carry the table; cross-attention has none
    assert len(with_table) == 4
    for layer in (model.encoder.block[0].layer[0].SelfAttention,
                  model.decoder.block[0].layer[0].SelfAttention):
        table = layer.relative_attention_bias.weight
        assert table.grad is not None and table.grad.abs().sum() > 0


def test_swapped_t5_pickles_and_loads_its_state():
    case = CASES["t5"]
    model = fastattn.swap_modules(build(case, "eager").eval())
    batch = case.batch()
    with torch.no_grad():
        expected = model(**batch).logits
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
    # a checkpoint of the unswapped model loads into the swapped one
    fresh = fastattn.swap_modules(build(case, "eager").eval())
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, expected)


def test_back_on_eager_t5_uses_its_own_bias(monkeypatch):
    # switching the implementation back after the swap restores T5's own code
    case = CASES["t5"]
    original = build(case, "eager").eval()
    model = fastattn.swap_modules(copy.deepcopy(original))
    model.set_attn_implementation("eager")
    batch = case.batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, original(**batch).logits)
