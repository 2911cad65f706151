"""Tiny Hugging Face models built from config classes (nothing downloaded),
with padded batches, for the swap_modules model tests.

Each case builds a model with random weights (a wider init than the
defaults, and perturbed norm weights and biases, so that attention scores
and norms are far from trivial), a padded batch, and says which output
positions are real tokens: padded query rows are left out of the loss and
of the comparison, since implementations legitimately differ there (a query
that may attend nothing gives zeros in fastattn and sdpa, a uniform average
in eager).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import transformers

VOCAB = 99
PAD = 1  # pad id of every case; real tokens are drawn from [3, VOCAB)
BOS = 2  # decoder start token
B, SRC_LEN, TGT_LEN = 2, 7, 5


def _lengths_mask(lengths, length, left=False):
    """(B, length) int mask, 1 = real token; padding on the right (or left)."""
    pos = torch.arange(length)[None]
    lengths = torch.tensor(lengths)[:, None]
    keep = pos >= length - lengths if left else pos < lengths
    return keep.long()


def _tokens(mask):
    ids = torch.randint(3, VOCAB, mask.shape)
    return torch.where(mask.bool(), ids, torch.full_like(ids, PAD))


def _randomize(model):
    """Perturb every 1-D parameter (norm weights, biases) so that none is
    exactly 1 or 0; matrices keep the config's (widened) init."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@dataclass
class Case:
    name: str
    build: Callable[[str], torch.nn.Module]     # attn_implementation -> model
    batch: Callable[[], dict]                   # model inputs (padded)
    valid: Callable[[dict], torch.Tensor]       # (B, L_out) bool: real output rows
    attention_calls: int                        # attention calls per forward
    decoder_attention_calls: int                # of which in the decoder (0: no generate)

    @property
    def generates(self) -> bool:
        return self.decoder_attention_calls > 0


def _encoder_batch():
    mask = _lengths_mask([SRC_LEN, 4], SRC_LEN)
    return {"input_ids": _tokens(mask), "attention_mask": mask}


def _seq2seq_batch():
    src = _lengths_mask([SRC_LEN, 4], SRC_LEN)
    tgt = _lengths_mask([TGT_LEN, 3], TGT_LEN)
    tgt_ids = _tokens(tgt)
    tgt_ids[:, 0] = BOS
    return {"input_ids": _tokens(src), "attention_mask": src,
            "decoder_input_ids": tgt_ids, "decoder_attention_mask": tgt}


def _gpt2_batch():
    # left padding, as for batched generation with a decoder-only model
    mask = _lengths_mask([SRC_LEN, 4], SRC_LEN, left=True)
    return {"input_ids": _tokens(mask), "attention_mask": mask}


def _valid_encoder(batch):
    return batch["attention_mask"].bool()


def _valid_decoder(batch):
    return batch["decoder_attention_mask"].bool()


def _bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=32, initializer_range=0.3, pad_token_id=PAD, **kw)


def _bert(impl):
    return transformers.BertForMaskedLM(_bert_config(attn_implementation=impl))


def _roberta(impl):
    config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=32, initializer_range=0.3, pad_token_id=PAD,
        attn_implementation=impl)
    return transformers.RobertaForMaskedLM(config)


def _distilbert(impl):
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=32, initializer_range=0.3,
        pad_token_id=PAD, attn_implementation=impl)
    return transformers.DistilBertForMaskedLM(config)


def _bert2bert(impl):
    encoder = _bert_config()
    decoder = _bert_config(is_decoder=True, add_cross_attention=True)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = BOS, PAD
    model = transformers.EncoderDecoderModel(config=config)
    model.set_attn_implementation(impl)
    return model


def _bart_like(config_cls, model_cls, impl):
    config = config_cls(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
        decoder_ffn_dim=37, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=32, init_std=0.3, pad_token_id=PAD, bos_token_id=BOS,
        eos_token_id=0, decoder_start_token_id=BOS, forced_eos_token_id=None,
        attn_implementation=impl)
    return model_cls(config)


def _bart(impl):
    return _bart_like(transformers.BartConfig, transformers.BartForConditionalGeneration, impl)


def _marian(impl):
    return _bart_like(transformers.MarianConfig, transformers.MarianMTModel, impl)


def _t5(impl):
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, pad_token_id=PAD, eos_token_id=0, decoder_start_token_id=BOS,
        attn_implementation=impl)
    return transformers.T5ForConditionalGeneration(config)


def _gpt2(impl):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=0, attn_implementation=impl)
    return transformers.GPT2LMHeadModel(config)


# Decoder-only models whose attention passes fastattn the variants:
# sliding_window (Mistral; Qwen2's second layer; Gemma-2's even layers) and
# softcap (Gemma-2). A window of 3 keys is shorter than the batch's rows.
# Their batch has fewer padded tokens than the window: a padded row with
# nothing to attend is NaN in the original eager models, and reaches the
# real rows through its values. Right padding, so no generation test for
# them (a right-padded prompt ends on padding).
def _window_batch():
    mask = _lengths_mask([SRC_LEN, SRC_LEN - 2], SRC_LEN)
    return {"input_ids": _tokens(mask), "attention_mask": mask}


def _llama_like(config_cls, model_cls, impl, **kw):
    config = config_cls(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
        initializer_range=0.3, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=0,
        attn_implementation=impl, **kw)
    return model_cls(config)


def _mistral(impl):
    return _llama_like(transformers.MistralConfig, transformers.MistralForCausalLM, impl,
                       sliding_window=3)


def _qwen2(impl):
    return _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, impl,
                       use_sliding_window=True, sliding_window=3, max_window_layers=1)


def _gemma2(impl):
    return _llama_like(transformers.Gemma2Config, transformers.Gemma2ForCausalLM, impl,
                       sliding_window=3, attn_logit_softcapping=2.0,
                       final_logit_softcapping=None, query_pre_attn_scalar=8)


def build(case: Case, impl: str) -> torch.nn.Module:
    model = _randomize(case.build(impl))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = PAD
    return model


CASES = {c.name: c for c in [
    Case("bert", _bert, _encoder_batch, _valid_encoder, 2, 0),
    Case("roberta", _roberta, _encoder_batch, _valid_encoder, 2, 0),
    Case("distilbert", _distilbert, _encoder_batch, _valid_encoder, 2, 0),
    # encoder-decoder: 2 encoder self + 2 decoder self + 2 cross-attention
    Case("bert2bert", _bert2bert, _seq2seq_batch, _valid_decoder, 6, 4),
    Case("bart", _bart, _seq2seq_batch, _valid_decoder, 6, 4),
    Case("marian", _marian, _seq2seq_batch, _valid_decoder, 6, 4),
    Case("t5", _t5, _seq2seq_batch, _valid_decoder, 6, 4),
    Case("gpt2", _gpt2, _gpt2_batch, _valid_encoder, 2, 2),
    Case("mistral", _mistral, _window_batch, _valid_encoder, 2, 0),
    Case("qwen2", _qwen2, _window_batch, _valid_encoder, 2, 0),
    Case("gemma2", _gemma2, _window_batch, _valid_encoder, 2, 0),
]}
