"""fastattn as transformers' users meet it: by name, across processes, in
composite models, with the head dims of transformers' own tiny configs.

- ``import fastattn`` makes attn_implementation="fastattn" valid in
  from_config / from_pretrained, without importing transformers itself;
- a swapped model saved with torch.save loads and runs in a fresh process;
- a composite model with one unsupported sub-model still gets the others
  swapped, and the logger names what was left alone;
- head dims below the kernels' tile width (8, 12) run on fastattn.
"""

import logging
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed "
                    "(optional extra: pip install 'fastattn[transformers]')")

import transformers  # noqa: E402

import fastattn  # noqa: E402
from fastattn import _log  # noqa: E402
from helpers import FastattnOpCounter  # noqa: E402


def _run_python(code: str) -> str:
    """Run `code` in a fresh interpreter; return its stdout (fail on error)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_registers_the_name_without_importing_transformers():
    out = _run_python("""
        import sys
        import fastattn
        print("imported:", "transformers" in sys.modules)
        import torch
        from transformers import AutoModel, BertConfig
        cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=20)
        model = AutoModel.from_config(cfg, attn_implementation="fastattn").eval()
        print("implementation:", model.config._attn_implementation)
        ids = torch.randint(0, 50, (2, 6))
        print("shape:", tuple(model(ids).last_hidden_state.shape))
    """)
    assert "imported: False" in out
    assert "implementation: fastattn" in out
    assert "shape: (2, 6, 16)" in out


def _bert(hidden=32, heads=2, impl="sdpa"):
    config = transformers.BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=2,
                                     num_attention_heads=heads, intermediate_size=37,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     attn_implementation=impl)
    return transformers.BertModel(config).eval()


def _t5():
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)
    return transformers.T5Model(config).eval()


@pytest.mark.parametrize("which", ["bert-attention-only", "t5"])
def test_saved_swapped_model_runs_in_a_fresh_process(which, tmp_path):
    """torch.save of a swapped model (T5's norm class is made at run time;
    an attention-only swap holds no fastattn class at all) loads and runs
    in a process that never swapped anything."""
    model = _bert() if which == "bert-attention-only" else _t5()
    fastattn.swap_modules(model, norm=which == "t5")
    ids = torch.randint(0, 99, (2, 7))
    kwargs = {"decoder_input_ids": ids[:, :5]} if which == "t5" else {}
    with torch.no_grad():
        expected = model(ids, **kwargs).last_hidden_state
    torch.save(model, tmp_path / "model.pt")
    torch.save((ids, kwargs, expected), tmp_path / "io.pt")
    out = _run_python(f"""
        import torch
        model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)
        ids, kwargs, expected = torch.load({str(tmp_path / 'io.pt')!r})
        with torch.no_grad():
            got = model(ids, **kwargs).last_hidden_state
        print("implementation:", model.config._attn_implementation)
        print("max diff:", (got - expected).abs().max().item())
    """)
    assert "implementation: fastattn" in out
    assert "max diff: 0.0" in out, out


def test_composite_model_swaps_what_it_can(caplog):
    """BERT encoder + ProphetNet decoder (whose attention does not go
    through AttentionInterface): the encoder runs fastattn, the decoder is
    left alone, and the logger says which."""
    encoder = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=37)
    decoder = transformers.ProphetNetConfig(vocab_size=99, hidden_size=32, num_encoder_layers=1,
                                            num_decoder_layers=1, num_encoder_attention_heads=2,
                                            num_decoder_attention_heads=2, encoder_ffn_dim=37,
                                            decoder_ffn_dim=37, is_decoder=True,
                                            add_cross_attention=True)
    model = transformers.EncoderDecoderModel(
        encoder=transformers.BertModel(encoder),
        decoder=transformers.ProphetNetForCausalLM(decoder)).eval()
    _log.reset_for_tests()
    with caplog.at_level(logging.WARNING, logger="fastattn"):
        fastattn.swap_modules(model)
    assert model.encoder.config._attn_implementation == "fastattn"
    assert model.decoder.config._attn_implementation != "fastattn"
    assert any("ProphetNet" in r.message for r in caplog.records), caplog.records
    ids = torch.randint(3, 99, (2, 6))
    with FastattnOpCounter() as counter, torch.no_grad():
        model.encoder(ids)
    assert counter.counts.get("attention_fwd", 0) == 2  # both encoder layers


@pytest.mark.parametrize("hidden,heads", [(16, 2), (24, 2)], ids=["head-dim-8", "head-dim-12"])
def test_small_head_dims_run_fastattn(hidden, heads):
    original = _bert(hidden, heads)
    swapped = fastattn.swap_modules(_bert(hidden, heads))
    swapped.load_state_dict(original.state_dict())
    ids = torch.randint(0, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with FastattnOpCounter() as counter, torch.no_grad():
        got = swapped(ids, attention_mask=mask).last_hidden_state
        expected = original(ids, attention_mask=mask).last_hidden_state
    assert counter.counts.get("attention_fwd", 0) == 2
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_swap_modules_says_what_it_replaced(caplog):
    _log.reset_for_tests()
    with caplog.at_level(logging.INFO, logger="fastattn"):
        fastattn.swap_modules(_bert())
        fastattn.swap_modules(torch.nn.Linear(3, 3))
    info = [r.message for r in caplog.records if r.levelno == logging.INFO]
    assert any("LayerNorm" in m and "attention" in m for m in info), info
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("replaced nothing" in m and "Linear" in m for m in warned), warned


def test_set_attn_implementation_still_reaches_every_sub_model():
    """After a swap, transformers' own set_attn_implementation("eager")
    must switch the nested sub-models back too (attention weights return)."""
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=37)
    decoder = transformers.BertConfig(**{**config.to_dict(), "is_decoder": True,
                                         "add_cross_attention": True})
    model = transformers.EncoderDecoderModel(encoder=transformers.BertModel(config),
                                             decoder=transformers.BertLMHeadModel(decoder))
    fastattn.swap_modules(model.eval())
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 99, (2, 5))
    out = model(input_ids=ids, decoder_input_ids=ids, output_attentions=True)
    # (the encoder's layers keep their implementation unswapped too: transformers' own way)
    assert len(out.decoder_attentions) == 1
    assert model.decoder.bert.encoder.layer[0].attention.self.config._attn_implementation == \
        "eager"


def test_t5_norm_of_float64_is_t5s_own():
    """T5's norm keeps float32 statistics even for float64 inputs: the
    swapped norm gives exactly what T5 gives there too."""
    original = _t5().double()
    swapped = fastattn.swap_modules(_t5().double())
    swapped.load_state_dict(original.state_dict())
    ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        a = original(ids, decoder_input_ids=ids).last_hidden_state
        b = swapped(ids, decoder_input_ids=ids).last_hidden_state
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def _host_reads(model, ids, mask) -> int:
    """Reads of tensor values on the host (aten::item and
    aten::_local_scalar_dense) in one forward: on a GPU, each is a sync."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
            torch.no_grad():
        model(ids, attention_mask=mask)
    return sum(e.count for e in prof.key_averages()
               if e.key in ("aten::item", "aten::_local_scalar_dense"))


def test_swapped_model_reads_no_more_values_than_the_original():
    """Lengths are built on the device, once per mask, and not checked by
    value in the layers: no host read beyond what the unswapped model does."""
    config = dict(hidden=32, heads=2)
    original = _bert(config["hidden"], config["heads"])
    swapped = fastattn.swap_modules(_bert(config["hidden"], config["heads"]))
    ids = torch.randint(0, 99, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 7:] = 0
    assert _host_reads(swapped, ids, mask) <= _host_reads(original, ids, mask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="device syncs need a GPU")
def test_swapped_model_forward_never_syncs():
    model = fastattn.swap_modules(_bert().cuda())
    ids = torch.randint(0, 99, (3, 9), device="cuda")
    mask = torch.ones(3, 9, dtype=torch.long, device="cuda")
    mask[1, 5:] = 0
    with torch.no_grad():
        model(ids, attention_mask=mask)  # warm-up: caches, autotuning
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(ids, attention_mask=mask)
        finally:
            torch.cuda.set_sync_debug_mode("default")
