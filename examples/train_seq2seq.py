"""Train a small encoder-decoder on a synthetic translation task, with and
without fastattn, and show that the two loss curves agree.

The task, generated on the fly (nothing downloaded): the source is a random
sequence of tokens of random length; the target is the source reversed with
every token mapped through a fixed permutation of the vocabulary, so the
model must learn alignment (cross-attention) and a lexicon. Batches are
padded to their longest sequence, so padding masks are exercised.

    python examples/train_seq2seq.py --steps 200            # CPU or GPU
    python examples/train_seq2seq.py --steps 500 --bf16     # GPU, autocast
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

import fastattn

PAD, BOS, EOS = 0, 1, 2
SPECIAL = 3


class Seq2Seq(torch.nn.Module):
    def __init__(self, vocab: int, d_model: int, nhead: int, layers: int, max_len: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d_model, padding_idx=PAD)
        self.pos = torch.nn.Embedding(max_len, d_model)
        self.transformer = torch.nn.Transformer(
            d_model, nhead, layers, layers, dim_feedforward=4 * d_model, dropout=0.0,
            batch_first=True)
        self.head = torch.nn.Linear(d_model, vocab)

    def embed_tokens(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.embed(tokens) + self.pos(positions)

    def forward(self, src, tgt_in):
        tgt_len = tgt_in.shape[1]
        causal = torch.nn.Transformer.generate_square_subsequent_mask(tgt_len,
                                                                       device=src.device)
        hidden = self.transformer(
            self.embed_tokens(src), self.embed_tokens(tgt_in), tgt_mask=causal,
            tgt_is_causal=True, src_key_padding_mask=src == PAD,
            tgt_key_padding_mask=tgt_in == PAD, memory_key_padding_mask=src == PAD)
        return self.head(hidden)


def make_batch(generator, lexicon, batch, max_len, vocab, device):
    lengths = torch.randint(max_len // 4, max_len - 1, (batch,), generator=generator)
    src = torch.full((batch, max_len), PAD, dtype=torch.long)
    tgt = torch.full((batch, max_len + 1), PAD, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens = torch.randint(SPECIAL, vocab, (n,), generator=generator)
        src[i, :n] = tokens
        tgt[i, 0] = BOS
        tgt[i, 1:n + 1] = lexicon[tokens.flip(0)]
        tgt[i, n + 1] = EOS
    return src.to(device), tgt.to(device)


def progress(step, total, loss, tokens_per_s, label):
    width = 30
    filled = int(width * step / total)
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r{label:>9} [{bar}] {step}/{total} loss {loss:.4f} "
                     f"{tokens_per_s:,.0f} tok/s")
    if step == total:
        sys.stderr.write("\n")


def train(model, args, device, label):
    generator = torch.Generator().manual_seed(args.seed)
    lexicon = torch.randperm(args.vocab - SPECIAL, generator=generator) + SPECIAL
    lexicon = torch.cat([torch.arange(SPECIAL), lexicon])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses, tokens, start = [], 0, time.perf_counter()
    for step in range(1, args.steps + 1):
        src, tgt = make_batch(generator, lexicon, args.batch, args.max_len, args.vocab, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(src, tgt[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, args.vocab), tgt[:, 1:].reshape(-1),
                ignore_index=PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        tokens += int((src != PAD).sum() + (tgt != PAD).sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        progress(step, args.steps, losses[-1], tokens / (time.perf_counter() - start), label)
    return losses, tokens / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    baseline = Seq2Seq(args.vocab, args.d_model, args.heads, args.layers, args.max_len + 1)
    swapped = fastattn.swap_modules(copy.deepcopy(baseline))
    print(f"device {device}; fastattn backends: "
          f"attention={fastattn._backends.resolve('auto', 'attention', device)}, "
          f"norm={fastattn._backends.resolve('auto', 'norm', device)}")

    base_losses, base_speed = train(baseline.to(device), args, device, "torch")
    fast_losses, fast_speed = train(swapped.to(device), args, device, "fastattn")

    print(f"{'step':>6} {'torch':>10} {'fastattn':>10}")
    for step in sorted({0, len(base_losses) // 4, len(base_losses) // 2, len(base_losses) - 1}):
        print(f"{step + 1:>6} {base_losses[step]:>10.4f} {fast_losses[step]:>10.4f}")
    worst = max(abs(a - b) for a, b in zip(base_losses, fast_losses))
    print(f"largest loss difference over {args.steps} steps: {worst:.2e}")
    print(f"tokens/s: torch {base_speed:,.0f}, fastattn {fast_speed:,.0f}")


if __name__ == "__main__":
    main()
