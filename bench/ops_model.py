"""The model part: whole models, swapped to fastattn or not.

Models, built from configs with random weights (nothing downloaded):
  transformer  torch.nn.Transformer base (6+6 layers, d=512, 8 heads) with
               token embeddings and an output projection
  bert2bert    Hugging Face EncoderDecoderModel, BERT-base encoder and
               decoder (cross-attention)
  bart         Hugging Face BartForConditionalGeneration, BART-base sizes
  t5           Hugging Face T5ForConditionalGeneration, T5-small sizes
  bert         Hugging Face BertForMaskedLM, BERT-base sizes, on a batch of
               8 x 128 tokens with 26% padding (lengths 128, 100, 64, 128,
               90, 40, 128, 77), and bert-pad50 with 50% padding
Each runs as fastattn.swap_modules made it ("fastattn"), where its encoder
can be unpadded also with swap_modules(unpad=True) ("fastattn unpad"), and
unswapped: torch's own modules for nn.Transformer, HF's "sdpa" and "eager"
attention.

Measured per model and implementation:
  train     one training step (forward, loss, backward, SGD update) on a
            padded batch (seq2seq models: lengths follow a skewed
            distribution, many short sequences, few long); tokens/s counts
            the tokens that are not padding
  infer     one forward pass of that batch without gradients (the encoder's
            and decoder's or the encoder's tokens, as train)
  generate  greedy decoding of a fixed number of new tokens (HF generate
            with its KV cache; nn.Transformer re-decodes the prefix, having
            no cache); tokens/s counts the generated tokens; not for bert
Under bf16 (fp16) autocast on a GPU; fp32 on a CPU. The gate compares the
swapped model's logits (eval mode) with the unswapped model in fp64, with
the unswapped model's own error under the same autocast as the yardstick.
Timed like the kernels (timing.measure: warm-up, at least 5 samples, median
and spread) but warm: a training loop reuses its weights, so no cache
scrubbing; the two training batches alternate.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import timing
from .peers import Impl
from .runner import Case, Context, Part, _first_line, _row

# Model timings: fewer, longer samples than the kernels'.
MODEL_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=2, min_time_s=1.0, min_reps=5,
                             max_reps=50, max_wall_s=10.0)
QUICK_GPU_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=2, min_time_s=0.5, min_reps=5,
                                 max_reps=50, max_wall_s=5.0)
QUICK_CPU_BUDGET = timing.Budget(warmup_s=0.0, warmup_calls=1, min_time_s=0.2, min_reps=5,
                                 max_reps=50, max_wall_s=2.0)
SEQ2SEQ_MODES = ("train", "infer", "generate")
ENCODER_MODES = ("train", "infer")
# The batch of the issue-sized BERT-base case: 26% of its tokens are padding.
BERT_LENGTHS = (128, 100, 64, 128, 90, 40, 128, 77)
# Models whose encoder swap_modules(unpad=True) packs.
UNPADDED = ("bert", "bert-pad50", "bart", "bert2bert")


def modes_of(name: str) -> tuple[str, ...]:
    return ENCODER_MODES if name.startswith("bert") and name != "bert2bert" else SEQ2SEQ_MODES


@dataclass
class Sizes:
    d: int            # model width
    layers: int       # encoder layers (= decoder layers)
    heads: int
    ffn: int
    vocab: int
    batch: int        # training batch
    src_len: int      # longest source sequence
    tgt_len: int      # longest target sequence
    gen_batch: int
    gen_tokens: int   # new tokens per sequence in generation


BASE = {"transformer": (512, 6, 8, 2048), "bert2bert": (768, 12, 12, 3072),
        "bart": (768, 6, 12, 3072), "t5": (512, 6, 8, 2048), "bert": (768, 12, 12, 3072),
        "bert-pad50": (768, 12, 12, 3072)}


def sizes(name: str, quick: bool, device_type: str) -> Sizes:
    encoder_only = name.startswith("bert") and name != "bert2bert"
    if quick:
        if device_type == "cpu":
            return Sizes(64, 1, 4, 128, 500, 4, 32, *((0, 0, 0) if encoder_only else (24, 2, 4)))
        return Sizes(*BASE[name], 32000, 16, 128, *((0, 0, 0) if encoder_only else (64, 8, 16)))
    if encoder_only:
        return Sizes(*BASE[name], 30522, len(BERT_LENGTHS), 128, 0, 0, 0)
    if device_type == "cpu":
        # real widths, batches a 2-core CPU steps through in seconds
        return Sizes(*BASE[name], 32000, 4, 128, 64, 2, 8)
    return Sizes(*BASE[name], 32000, 32, 256, 128, 16, 64)


# ------------------------------------------------------------------ models


class Seq2SeqTransformer(nn.Module):
    """nn.Transformer with embeddings and an output projection (pre-LN off,
    as the base model of the original paper; learned positions)."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.d)
        self.pos = nn.Embedding(max(s.src_len, s.tgt_len + s.gen_tokens) + 1, s.d)
        self.core = nn.Transformer(s.d, s.heads, s.layers, s.layers, s.ffn, dropout=0.1,
                                   batch_first=True)
        self.out = nn.Linear(s.d, s.vocab)

    def _embed(self, tokens):
        return self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))

    def encode(self, src, src_pad):
        return self.core.encoder(self._embed(src), src_key_padding_mask=src_pad)

    def decode(self, tgt, memory, src_pad, tgt_pad=None):
        causal = nn.Transformer.generate_square_subsequent_mask(
            tgt.shape[1], device=tgt.device, dtype=torch.bool)
        h = self.core.decoder(self._embed(tgt), memory, tgt_mask=causal, tgt_is_causal=True,
                              tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        return self.out(h)

    def forward(self, src, src_pad, tgt, tgt_pad):
        return self.decode(tgt, self.encode(src, src_pad), src_pad, tgt_pad)


def _hf_model(name: str, s: Sizes):
    import transformers as tf
    if name.startswith("bert") and name != "bert2bert":
        return tf.BertForMaskedLM(tf.BertConfig(
            vocab_size=s.vocab, hidden_size=s.d, num_hidden_layers=s.layers,
            num_attention_heads=s.heads, intermediate_size=s.ffn,
            max_position_embeddings=max(512, s.src_len)))
    if name == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=s.vocab, d_model=s.d, d_kv=s.d // s.heads, d_ff=s.ffn,
            num_layers=s.layers, num_heads=s.heads, decoder_start_token_id=1, pad_token_id=0,
            eos_token_id=None))
    if name == "bart":
        config = tf.BartConfig(vocab_size=s.vocab, d_model=s.d, encoder_layers=s.layers,
                               decoder_layers=s.layers, encoder_attention_heads=s.heads,
                               decoder_attention_heads=s.heads, encoder_ffn_dim=s.ffn,
                               decoder_ffn_dim=s.ffn,
                               max_position_embeddings=max(s.src_len, s.tgt_len + s.gen_tokens) + 2)
        return tf.BartForConditionalGeneration(config)
    common = dict(vocab_size=s.vocab, hidden_size=s.d, num_hidden_layers=s.layers,
                  num_attention_heads=s.heads, intermediate_size=s.ffn,
                  max_position_embeddings=max(s.src_len, s.tgt_len + s.gen_tokens) + 2)
    encoder = tf.BertConfig(**common)
    decoder = tf.BertConfig(**common, is_decoder=True, add_cross_attention=True)
    config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 1
    config.pad_token_id = 0
    config.eos_token_id = None
    return tf.EncoderDecoderModel(config=config)


# ------------------------------------------------------------------ batches


def _lengths(n: int, longest: int, g: torch.Generator) -> torch.Tensor:
    """Skewed lengths: u^2 scaling makes short sequences common, long ones rare."""
    u = torch.rand(n, generator=g)
    return (longest * (0.2 + 0.8 * u * u)).long().clamp(2, longest)


def _tokens(lengths: torch.Tensor, longest: int, vocab: int, g: torch.Generator):
    """Right-padded token ids (pad = 0) and the padding mask (True = pad)."""
    ids = torch.randint(2, vocab, (len(lengths), longest), generator=g)
    pad = torch.arange(longest) >= lengths[:, None]
    return ids.masked_fill(pad, 0), pad


def _fixed_lengths(name: str, s: Sizes) -> torch.Tensor | None:
    """The encoder-only models' lengths: the issue's 26% padding, or 50%."""
    if not name.startswith("bert") or name == "bert2bert":
        return None
    lengths = torch.tensor(BERT_LENGTHS) * s.src_len // 128
    if name == "bert-pad50":
        lengths = (lengths * s.src_len // (2 * lengths.float().mean())).long()
    return lengths.clamp(2, s.src_len)


def _batch(s: Sizes, seed: int, device: torch.device, n: int, name: str = "") -> dict:
    g = torch.Generator().manual_seed(3000 + seed)
    fixed = _fixed_lengths(name, s)
    if fixed is not None:
        src, src_pad = _tokens(fixed[:n], s.src_len, s.vocab, g)
        return {"src": src.to(device), "src_pad": src_pad.to(device),
                "tokens": int(fixed[:n].sum())}
    src_len, tgt_len = _lengths(n, s.src_len, g), _lengths(n, s.tgt_len, g)
    src, src_pad = _tokens(src_len, s.src_len, s.vocab, g)
    tgt, tgt_pad = _tokens(tgt_len, s.tgt_len, s.vocab, g)
    to = {"device": device}
    return {"src": src.to(**to), "src_pad": src_pad.to(**to), "tgt": tgt.to(**to),
            "tgt_pad": tgt_pad.to(**to),
            "tokens": int(src_len.sum() + tgt_len.sum())}


# ------------------------------------------------------------ model calls


def _encoder_only(b: dict) -> bool:
    return "tgt" not in b


def _logits(name: str, model, b: dict):
    if name == "transformer":
        return model(b["src"], b["src_pad"], b["tgt"], b["tgt_pad"])
    if _encoder_only(b):
        return model(input_ids=b["src"], attention_mask=(~b["src_pad"]).long()).logits
    return model(input_ids=b["src"], attention_mask=(~b["src_pad"]).long(),
                 decoder_input_ids=b["tgt"],
                 decoder_attention_mask=(~b["tgt_pad"]).long()).logits


def _loss(name: str, model, b: dict):
    if _encoder_only(b):  # masked-LM loss on every real token
        logits = _logits(name, model, b)
        labels = b["src"].masked_fill(b["src_pad"], -100)
        return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1), ignore_index=-100)
    logits = _logits(name, model, b)[:, :-1]
    labels = b["tgt"][:, 1:].masked_fill(b["tgt_pad"][:, 1:], -100)
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       labels.reshape(-1), ignore_index=-100)


@torch.no_grad()
def _generate(name: str, model, b: dict, new_tokens: int):
    if name != "transformer":
        return model.generate(input_ids=b["src"], attention_mask=(~b["src_pad"]).long(),
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, num_beams=1, decoder_start_token_id=1,
                              pad_token_id=0)
    memory = model.encode(b["src"], b["src_pad"])
    out = torch.ones(b["src"].shape[0], 1, dtype=torch.long, device=b["src"].device)
    for _ in range(new_tokens):
        nxt = model.decode(out, memory, b["src_pad"])[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out


# ---------------------------------------------------------------- variants


def variant_names(name: str, wanted_peers) -> list[str]:
    """The implementations a model is timed in (known before it is built)."""
    if name == "transformer":
        return ["fastattn", "fastattn unpad", "torch"]
    return (["fastattn"] + (["fastattn unpad"] if name in UNPADDED else []) + ["hf sdpa"]
            + (["hf eager"] if "eager" in wanted_peers else []))


def _variants(name: str, s: Sizes, device: torch.device, wanted_peers, notes: set[str]):
    """{impl name: model}: fastattn-swapped and unswapped copies, same weights."""
    import fastattn
    torch.manual_seed(0)
    base = (Seq2SeqTransformer(s) if name == "transformer" else _hf_model(name, s)).to(device)
    variants = {}
    for impl in variant_names(name, wanted_peers):
        if impl == "fastattn":
            variants[impl] = fastattn.swap_modules(copy.deepcopy(base))
        elif impl == "fastattn unpad":
            variants[impl] = fastattn.swap_modules(copy.deepcopy(base), unpad=True)
        elif impl == "torch":
            variants[impl] = base
        else:
            model = copy.deepcopy(base)
            model.set_attn_implementation(impl.removeprefix("hf "))
            variants[impl] = model
    return variants, base


def _gate(name: str, base, autocast, variants: dict):
    from fastattn.testing import check_close

    def gate(impl: Impl, b: dict, with_grad: bool):
        model = variants[impl.name]
        truth_model = copy.deepcopy(base).double().eval()
        with torch.no_grad():
            truth = _logits(name, truth_model, b)
            model.eval()
            base.eval()
            with autocast():
                actual = _logits(name, model, b).float()
                baseline = _logits(name, base, b).float()
        model.train()
        base.train()
        valid = ~b["src_pad"] if _encoder_only(b) else ~b["tgt_pad"]
        return check_close(actual[valid], truth[valid], baseline[valid], "logits")
    return gate


def plan(quick: bool, wanted_peers, ctx: Context) -> Part | None:
    """The model part (None, with a note, if fastattn cannot swap modules)."""
    import fastattn
    if not hasattr(fastattn, "swap_modules"):
        ctx.notes.add("model benchmark needs fastattn.swap_modules, which this build lacks; "
                      "part skipped")
        return None
    names = ["transformer"]
    try:
        import transformers  # noqa: F401
        names += ["bert", "bert-pad50", "bart", "t5", "bert2bert"]
    except ImportError:
        ctx.notes.add("model: transformers is not installed; the Hugging Face models are "
                      "left out")
    steps = sum(len(modes_of(n)) * len(variant_names(n, wanted_peers)) for n in names)
    return Part("model", ctx, steps, lambda: run(names, quick, wanted_peers, ctx))


def run(names: list[str], quick: bool, wanted_peers, ctx: Context) -> list[dict]:
    dev = ctx.device
    if dev.type == "cuda" and ctx.dtype != torch.float32:
        def autocast():
            return torch.autocast("cuda", dtype=ctx.dtype)
    else:
        autocast = contextlib.nullcontext
        if ctx.dtype != torch.float32:
            ctx.notes.add(f"model on CPU runs in float32 (no {ctx.dtype} autocast timed on CPU)")
    if dev.type == "cpu":
        budget = QUICK_CPU_BUDGET if quick else MODEL_BUDGET
    else:
        budget = QUICK_GPU_BUDGET if quick else MODEL_BUDGET
    from fastattn import _backends
    serving = {f: _backends.resolve("auto", f, dev) for f in ("attention", "norm")}
    ctx.notes.add(f"model: the swapped models run fastattn's auto backends on {dev.type}: "
                  f"attention {serving['attention']}, norms {serving['norm']}")
    rows = []
    for n, name in enumerate(names):
        modes = modes_of(name)
        steps = len(modes) * len(variant_names(name, wanted_peers))
        if time.monotonic() > ctx.deadline:
            ctx.notes.add(f"model: {', '.join(names[n:])} not run (time budget, --max-minutes)")
            ctx.progress.advance(sum(len(modes_of(m)) * len(variant_names(m, wanted_peers))
                                     for m in names[n:]))
            break
        s = sizes(name, quick, dev.type)
        try:
            variants, base = _variants(name, s, dev, wanted_peers, ctx.notes)
        except Exception as exc:
            ctx.notes.add(f"model {name}: could not be built ({_first_line(exc)})")
            ctx.progress.advance(steps)
            continue
        train_batches = [_batch(s, i, dev, s.batch, name) for i in range(2)]
        gen_batch = _batch(s, 9, dev, s.gen_batch, name) if "generate" in modes else None
        shape = {"op": "model", "model": name, "family": f"model {name}", "x": s.src_len,
                 "batch": s.batch, "src_len": s.src_len, "tgt_len": s.tgt_len,
                 "d": s.d, "layers": s.layers, "gen_batch": s.gen_batch,
                 "gen_tokens": s.gen_tokens,
                 "pad": 1 - train_batches[0]["tokens"] / (s.batch * s.src_len)
                 if "tgt" not in train_batches[0] else None}
        case = Case(shape=shape, make_inputs=None, grad_names=(), unit="tokens/s",
                    work={"train": sum(b["tokens"] for b in train_batches) / 2,
                          "infer": sum(b["tokens"] for b in train_batches) / 2,
                          "generate": s.gen_batch * s.gen_tokens},
                    set_bytes=0, gate=_gate(name, base, autocast, variants),
                    modes=modes)
        for impl_name, model in variants.items():
            impl = Impl(impl_name, run=None, fastattn=impl_name == "fastattn")
            if impl.fastattn:
                ctx.progress.step(f"{name} {impl_name} check")
                try:
                    ok, message = case.gate(impl, train_batches[0], False)
                    status = "ok" if ok else "FAIL"
                except Exception as exc:
                    status, message = "error", _first_line(exc)
                if status != "ok":
                    rows += [_row(case, impl, m, ctx, status, message) for m in case.modes]
                    ctx.progress.advance(len(case.modes))
                    continue
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

            def train_step(i, model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = _loss(name, model, train_batches[i])
                loss.backward()
                optimizer.step()

            def infer(i, model=model):
                model.eval()
                with autocast(), torch.no_grad():
                    _logits(name, model, train_batches[i])
                model.train()

            def generate(i, model=model):
                model.eval()
                with autocast():
                    _generate(name, model, gen_batch, s.gen_tokens)
                model.train()

            calls = {"train": (train_step, 2), "infer": (infer, 2), "generate": (generate, 1)}
            for mode in modes:
                call, n_sets = calls[mode]
                ctx.progress.step(f"{name} {impl_name} {mode}")
                try:
                    rotation = timing.warm_rotation(n_sets)
                    stats = timing.measure(call, rotation, dev, budget)
                    peak = timing.peak_memory_mib(call, dev, rotation)
                    rows.append(_row(case, impl, mode, ctx, "ok", stats=stats, peak=peak))
                except Exception as exc:
                    rows.append(_row(case, impl, mode, ctx, "error", _first_line(exc)))
                ctx.progress.advance(1)
        del variants, base
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows
