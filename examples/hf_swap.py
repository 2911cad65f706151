"""swap_modules on a Hugging Face model: same outputs, same generated text.

Builds a small BART from its config (random weights, nothing downloaded),
swaps a copy to fastattn, checks that the two agree on a padded batch, and
generates greedily with both. Runs on a GPU when present, else on the CPU
(where fastattn's Triton kernels need TRITON_INTERPRET=1, set below).

    python examples/hf_swap.py [--backend auto|triton|reference] [--dtype float32|bfloat16]

Needs transformers >= 5 (pip install 'fastattn[transformers]').
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

if not torch.cuda.is_available():
    # Triton kernels on CPU tensors run through the interpreter; it must be
    # set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transformers  # noqa: E402

import fastattn  # noqa: E402


def small_bart(device, dtype):
    config = transformers.BartConfig(
        vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=0, forced_eos_token_id=None, init_std=0.2,
        attn_implementation="sdpa")
    return transformers.BartForConditionalGeneration(config).to(device, dtype).eval()


def padded_batch(device, lengths=(12, 7, 3), vocab=512, pad=1):
    """Random token ids, right-padded, with the matching attention mask."""
    longest = max(lengths)
    mask = (torch.arange(longest)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(3, vocab, mask.shape)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return ids.to(device), mask.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", help="fastattn backend (default auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    original = small_bart(device, dtype)
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=args.backend)
    print(f"attention implementation: {original.config._attn_implementation} -> "
          f"{swapped.config._attn_implementation}; "
          f"{sum(isinstance(m, fastattn.nn.LayerNorm) for m in swapped.modules())} "
          f"LayerNorms swapped; device {device}, {args.dtype}, backend {args.backend}")

    ids, mask = padded_batch(device)
    decoder_ids = ids[:, :6]
    with torch.no_grad():
        a = original(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        b = swapped(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    print(f"max |logits difference| on a padded batch: {(a - b).abs().max().item():.3g} "
          f"(logits up to {a.abs().max().item():.3g})")

    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, num_beams=1)
    tokens_a = original.generate(input_ids=ids, attention_mask=mask, **settings)
    tokens_b = swapped.generate(input_ids=ids, attention_mask=mask, **settings)
    print("greedy generation, original:", tokens_a.tolist())
    print("greedy generation, fastattn:", tokens_b.tolist())
    print("same tokens:", torch.equal(tokens_a, tokens_b))


if __name__ == "__main__":
    main()
