"""Every CUDA kernel of fastattn once, at small odd shapes: compute-sanitizer's workload.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python dev/sanitize_kernels.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python dev/sanitize_kernels.py
    python dev/sanitize_kernels.py --device cpu    # the same calls on CPU

tests/test_sanitizer.py runs both tools over this script on a GPU.

Each call goes through the public API, forward and backward:
- attention in float16 and float32, head dims 40 and 128 (and on the cuda
  backend 16 and 256, its other compiled buckets), GQA, causal, q and
  kv lengths (one batch row without keys), a float mask with its gradient
  (one query row masked out entirely), a broadcast bool mask, dropout, the
  decode shape Lq = 1; sequences span several key and query tiles, so the
  kernels' shared-memory stages are refilled;
- attention_varlen (triton only): packed sequences, one without queries;
- layer_norm and add_rms_norm (residual, dropout, prenorm): rows held in
  registers and rows long enough for the looped kernels, with and without
  16-byte vector access.
On CUDA every call runs on the cuda backend (float16 takes the tensor-core
kernels, float32 the SIMT ones) and on the triton backend (the decode shape
forced onto the split-KV kernels). `--device cpu` runs the cpu backend and
Triton's interpreter instead: a check of this script without a GPU.

Triton runs with deterministic=True, a fixed tile configuration: autotuning
would launch every candidate many times under the sanitizer.
PYTORCH_NO_CUDA_MEMORY_CACHING=1 (unless set) gives each tensor its own
allocation, so that memcheck sees an access past a tensor's end instead of
one landing in a neighbour inside a cached block.

Outputs and gradients are judged against fastattn.reference in float64 on
CPU by fastattn.testing's protocol: the error at most a small multiple of
plain PyTorch's own error in the same dtype. Dropout seeds are pinned, so
the reference applies the kernels' masks. Exit status 1 if any call
disagrees or raises.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Optional


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: the cpu backend and Triton's interpreter (a check of "
                             "this script)")
    parser.add_argument("--backends", default="native,triton",
                        help="comma-separated subset of: native (the cuda backend, or cpu "
                             "with --device cpu), triton")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()
    # Both are read once, when torch's allocator starts and when Triton
    # defines its kernels: set them before either loads.
    os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    if ARGS.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import fastattn  # noqa: E402
from fastattn import _rng, reference  # noqa: E402
from fastattn.ops import _eager  # noqa: E402
from fastattn.ops.variants import Variants  # noqa: E402
from fastattn.testing import check_close  # noqa: E402

SEED = 20261121  # the pinned dropout seed


@contextlib.contextmanager
def pinned_seed(value: int):
    """fastattn draws a dropout seed from torch's generator of the data's
    device (fastattn._rng.draw_seed); pin it, so that the kernels on the
    device and the reference on CPU apply the same dropout mask. The
    compiled fast path (csrc/fast_path.cpp) draws its seed in C++: it is
    turned off meanwhile, so the calls take the Python path to the same
    kernels."""
    real_draw, real_fast = _rng.draw_seed, _eager.fast
    _rng.draw_seed = lambda device: torch.tensor([value], dtype=torch.int64, device=device)
    _eager.fast = _eager._NoFastPath()
    try:
        yield
    finally:
        _rng.draw_seed, _eager.fast = real_draw, real_fast


@contextlib.contextmanager
def env(name: str, value: Optional[str]):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def rounded(shape, dtype, gen) -> torch.Tensor:
    """float64 values exactly representable in `dtype`, so that every run
    sees the same inputs and differs only in its arithmetic."""
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()


def judge(problems: list, name: str, got, truth, bases) -> None:
    """fastattn.testing's protocol on CPU; `bases` are plain PyTorch's
    results in the kernel's dtype, the worst of which sets the tolerance."""
    got = got.detach().cpu()
    truth = truth.detach().cpu().double()
    bases = [b.detach().cpu().to(got.dtype) for b in bases]
    base = max(bases, key=lambda b: (b.double() - truth).abs().max().item()
               if b.numel() else 0.0)
    ok, msg = check_close(got, truth, base, name)
    if not ok:
        problems.append(msg)


# -------------------------------------------------------------- attention


@dataclass(frozen=True)
class Attn:
    dtype: torch.dtype
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    causal: bool = False
    mask: Optional[str] = None  # None | "bias" (B, 1, Lq, Lk) with grad | "bool" (B, 1, 1, Lk)
    q_lengths: Optional[tuple] = None
    kv_lengths: Optional[tuple] = None
    dropout_p: float = 0.0
    split_kv: bool = False  # triton: force the split-KV decoding kernels
    native_only: bool = False  # the other head-dim buckets of the cuda kernels
    window: tuple = (-1, -1)  # window_size
    alibi: bool = False  # alibi_slopes (Hq,): 2^(-(h + 1))
    softcap: float = 0.0

    def variants(self, device) -> Variants:
        slopes = (torch.tensor([2.0 ** -(h + 1) for h in range(self.Hq)], dtype=torch.float32,
                               device=device) if self.alibi else None)
        return Variants(self.window, slopes, self.softcap)

    def __str__(self):
        s = (f"attention {str(self.dtype)[6:]} B{self.B} H{self.Hq}x{self.Hkv} "
             f"q{self.Lq} k{self.Lk} d{self.D}")
        for flag, on in (("causal", self.causal), (f"mask={self.mask}", self.mask),
                         ("qlen", self.q_lengths), ("kvlen", self.kv_lengths),
                         (f"p={self.dropout_p}", self.dropout_p), ("split-kv", self.split_kv),
                         (f"window={self.window}", self.window != (-1, -1)),
                         ("alibi", self.alibi), (f"softcap={self.softcap}", self.softcap)):
            if on:
                s += " " + flag
        return s


ATTENTION = [
    Attn(torch.float16, 3, 4, 2, 77, 200, 40, causal=True, mask="bias",
         q_lengths=(77, 50, 9), kv_lengths=(200, 0, 131), dropout_p=0.2),
    Attn(torch.float16, 2, 2, 2, 77, 200, 128, mask="bool", kv_lengths=(200, 71)),
    Attn(torch.float32, 3, 4, 2, 77, 200, 40, causal=True, mask="bias",
         q_lengths=(77, 50, 9), kv_lengths=(200, 0, 131), dropout_p=0.2),
    Attn(torch.float32, 2, 2, 2, 77, 200, 128, mask="bool", kv_lengths=(200, 71)),
    Attn(torch.float16, 3, 4, 2, 1, 517, 128, kv_lengths=(517, 300, 1), split_kv=True),
    # The cuda kernels are compiled per head-dim bucket (32, 64, 128, 256);
    # D = 40 and 128 above take two, these the others.
    Attn(torch.float16, 2, 2, 1, 77, 150, 256, causal=True, mask="bias",
         kv_lengths=(150, 64), native_only=True),
    Attn(torch.float32, 2, 2, 2, 77, 150, 16, mask="bool", q_lengths=(77, 30), dropout_p=0.1,
         native_only=True),
    # Variants: a window whose band skips whole tiles at both ends of Lk = 300,
    # with ALiBi and softcap (the cuda kernels' score-term variants), lengths.
    Attn(torch.float16, 2, 4, 2, 130, 300, 64, q_lengths=(130, 41), kv_lengths=(300, 220),
         window=(50, 20), alibi=True, softcap=3.0, dropout_p=0.1),
    Attn(torch.float32, 2, 4, 2, 130, 300, 64, causal=True, q_lengths=(130, 41),
         kv_lengths=(300, 220), window=(70, -1), alibi=True, softcap=3.0),
    Attn(torch.float16, 2, 2, 2, 128, 256, 128, causal=True, mask="bool", window=(40, 0)),
]


def attention_inputs(c: Attn) -> dict:
    gen = torch.Generator().manual_seed(c.Lq * 1000 + c.D)
    t = dict(q=rounded((c.B, c.Hq, c.Lq, c.D), c.dtype, gen),
             k=rounded((c.B, c.Hkv, c.Lk, c.D), c.dtype, gen),
             v=rounded((c.B, c.Hkv, c.Lk, c.D), c.dtype, gen), mask=None)
    if c.mask == "bias":
        t["mask"] = rounded((c.B, 1, c.Lq, c.Lk), c.dtype, gen)
        t["mask"][0, 0, 3, :] = float("-inf")  # a query row with nothing to attend
    elif c.mask == "bool":
        t["mask"] = torch.rand((c.B, 1, 1, c.Lk), generator=gen) > 0.25
    t["q_lengths"] = torch.tensor(c.q_lengths) if c.q_lengths else None
    t["kv_lengths"] = (torch.tensor(c.kv_lengths, dtype=torch.int32) if c.kv_lengths
                       else None)
    t["dout"] = torch.randn((c.B, c.Hq, c.Lq, c.D), generator=gen, dtype=torch.float64)
    t["dlse"] = torch.randn((c.B, c.Hq, c.Lq), generator=gen, dtype=torch.float64)
    return t


def run_attention(fn, c: Attn, t: dict, dtype, device):
    """(out, lse, grads of <out, dout> + <finite lse, dlse>) of `fn` on leaf
    copies of the inputs in `dtype` on `device`."""
    names = ["q", "k", "v"] + (["mask"] if c.mask == "bias" else [])
    leaves = {n: t[n].to(device, dtype).requires_grad_() for n in names}
    args = {**{n: (x.to(device) if x is not None else None) for n, x in t.items()}, **leaves}
    with pinned_seed(SEED):
        out, lse = fn(args)
    live = torch.isfinite(lse)
    cotangents = [args["dout"].to(out.dtype), args["dlse"].to(lse.dtype) * live]
    grads = torch.autograd.grad([out, lse], list(leaves.values()), cotangents)
    return out, lse, dict(zip(names, grads))


def check_attention(c: Attn, backend: str, device: str) -> list:
    t = attention_inputs(c)

    def kernel(a):
        var = c.variants(a["q"].device)
        return fastattn.attention(a["q"], a["k"], a["v"], causal=c.causal,
                                  attn_mask=a["mask"], q_lengths=a["q_lengths"],
                                  kv_lengths=a["kv_lengths"], dropout_p=c.dropout_p,
                                  return_lse=True, backend=backend, deterministic=True,
                                  window_size=var.window, alibi_slopes=var.alibi_slopes,
                                  softcap=var.softcap)

    def plain(compute_dtype):
        def fn(a):
            return reference._attention(a["q"], a["k"], a["v"], c.causal, a["mask"],
                                        a["q_lengths"], a["kv_lengths"], c.dropout_p, None,
                                        torch.tensor([SEED]), compute_dtype=compute_dtype,
                                        variants=c.variants("cpu"))
        return fn

    with env("FASTATTN_SPLIT_KV", "1" if c.split_kv else None):
        out, lse, grads = run_attention(kernel, c, t, c.dtype, device)
    t_out, t_lse, t_grads = run_attention(plain(None), c, t, torch.float64, "cpu")
    b_out, b_lse, b_grads = run_attention(plain(c.dtype), c, t, c.dtype, "cpu")
    # Plain PyTorch's gradients by the kernels' formulas (delta from the
    # output), whose rounding differs from autograd's: the fairer baseline
    # where it errs more.
    low = {n: (x.to(c.dtype) if x is not None and x.is_floating_point() else x)
           for n, x in t.items()}
    live = torch.isfinite(b_lse)
    f_grads = reference._attention_bwd(
        low["dout"], t["dlse"].float() * live, low["q"], low["k"], low["v"], b_out.detach(),
        b_lse.detach(), low["mask"], t["q_lengths"], t["kv_lengths"], c.causal, c.D ** -0.5,
        c.dropout_p, torch.tensor([SEED]), c.mask == "bias", compute_dtype=c.dtype,
        variants=c.variants("cpu"))

    problems = []
    empty = torch.isinf(t_lse)
    if not torch.equal(torch.isinf(lse).cpu(), empty):
        problems.append("lse: the rows with nothing to attend (-inf) differ from the reference")
    judge(problems, "out", out, t_out, [b_out])
    judge(problems, "lse", torch.where(empty, 0.0, lse.cpu()), torch.where(empty, 0.0, t_lse),
          [torch.where(empty, 0.0, b_lse)])
    for (name, g), f in zip(grads.items(), f_grads):
        judge(problems, f"grad {name}", g, t_grads[name], [b_grads[name], f])
    return problems


# ----------------------------------------------------------------- varlen


@dataclass(frozen=True)
class Varlen:
    dtype: torch.dtype
    lengths_q: tuple
    lengths_k: tuple
    Hq: int = 4
    Hkv: int = 2
    D: int = 40
    causal: bool = True
    dropout_p: float = 0.1

    def __str__(self):
        return (f"attention_varlen {str(self.dtype)[6:]} q{list(self.lengths_q)} "
                f"k{list(self.lengths_k)} H{self.Hq}x{self.Hkv} d{self.D}"
                + (" causal" if self.causal else "") + f" p={self.dropout_p}")


VARLEN = [Varlen(torch.float16, (9, 0, 77, 1), (12, 5, 200, 17))]


def check_varlen(c: Varlen, backend: str, device: str) -> list:
    gen = torch.Generator().manual_seed(7)
    tq, tk = sum(c.lengths_q), sum(c.lengths_k)
    t = dict(q=rounded((tq, c.Hq, c.D), c.dtype, gen), k=rounded((tk, c.Hkv, c.D), c.dtype, gen),
             v=rounded((tk, c.Hkv, c.D), c.dtype, gen))
    dout = torch.randn((tq, c.Hq, c.D), generator=gen, dtype=torch.float64)
    cu_q = torch.tensor([0, *torch.tensor(c.lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(c.lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    mq, mk = max(c.lengths_q), max(c.lengths_k)

    def run(fn, dtype, dev, **kw):
        leaves = [t[n].to(dev, dtype).requires_grad_() for n in "qkv"]
        with pinned_seed(SEED):
            out = fn(*leaves, cu_q.to(dev), cu_k.to(dev), mq, mk, causal=c.causal,
                     dropout_p=c.dropout_p, **kw)
        return out, torch.autograd.grad(out, leaves, dout.to(dev, dtype))

    out, grads = run(fastattn.attention_varlen, c.dtype, device, backend=backend,
                     deterministic=True)
    t_out, t_grads = run(reference.attention_varlen, torch.float64, "cpu")
    b_out, b_grads = run(reference.attention_varlen, c.dtype, "cpu")
    problems = []
    judge(problems, "out", out, t_out, [b_out])
    for name, g, tg, bg in zip("qkv", grads, t_grads, b_grads):
        judge(problems, f"grad {name}", g, tg, [bg])
    return problems


# ------------------------------------------------------------------ norms


@dataclass(frozen=True)
class Norm:
    op: str  # layer_norm | add_rms_norm
    dtype: torch.dtype
    rows: int
    cols: int
    dropout_p: float = 0.0
    prenorm: bool = False

    def __str__(self):
        s = f"{self.op} {str(self.dtype)[6:]} {self.rows}x{self.cols}"
        if self.dropout_p:
            s += f" p={self.dropout_p}"
        return s + (" prenorm" if self.prenorm else "")


# The cuda kernels hold rows of up to 16384 (forward) / 8192 (backward)
# elements in registers and loop over longer ones (so do the Triton ones);
# 16-byte vectors need the row length to be a multiple of 8 (fp16) / 4.
NORMS = [
    Norm("layer_norm", torch.float16, 33, 1000),
    Norm("add_rms_norm", torch.float32, 7, 129, dropout_p=0.25, prenorm=True),
    Norm("layer_norm", torch.float16, 3, 20001),
    Norm("add_rms_norm", torch.float16, 5, 12000, dropout_p=0.1),
]


def check_norm(c: Norm, backend: str, device: str) -> list:
    gen = torch.Generator().manual_seed(c.cols)
    t = dict(x=rounded((c.rows, c.cols), c.dtype, gen) * 2 + 0.5,
             weight=rounded((c.cols,), c.dtype, gen) + 1)
    if c.op == "layer_norm":
        t["bias"] = rounded((c.cols,), c.dtype, gen)
    else:
        t["residual"] = rounded((c.rows, c.cols), c.dtype, gen)
    t = {n: x.to(c.dtype).double() for n, x in t.items()}  # representable after the shifts
    n_out = 2 if c.prenorm else 1
    cots = [torch.randn((c.rows, c.cols), generator=gen, dtype=torch.float64)
            for _ in range(n_out)]

    def run(mod, dtype, dev, **kw):
        a = {n: x.to(dev, dtype).requires_grad_() for n, x in t.items()}
        with pinned_seed(SEED):
            if c.op == "layer_norm":
                outs = mod.layer_norm(a["x"], (c.cols,), a["weight"], a["bias"], 1e-5, **kw)
            else:
                outs = mod.add_rms_norm(a["x"], a["residual"], a["weight"], 1e-6,
                                        dropout_p=c.dropout_p, prenorm=c.prenorm, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(outs, list(a.values()), [g.to(dev, dtype) for g in cots])
        return outs, dict(zip(a, grads))

    outs, grads = run(fastattn, c.dtype, device, backend=backend)
    t_outs, t_grads = run(reference, torch.float64, "cpu")
    b_outs, b_grads = run(reference, c.dtype, "cpu")
    problems = []
    for name, o, to, bo in zip(("y", "h"), outs, t_outs, b_outs):
        judge(problems, name, o, to, [bo])
    for name, g in grads.items():
        judge(problems, f"grad {name}", g, t_grads[name], [b_grads[name]])
    return problems


# ------------------------------------------------------------------- main


def calls(device: str, backends: list[str]):
    """(label, check, case, backend) of every call to make."""
    native = "cuda" if device == "cuda" else "cpu"
    for b in backends:
        backend = native if b == "native" else b
        for c in ATTENTION:
            if b == "native" or not c.native_only:
                yield f"{backend}: {c}", check_attention, c, backend
        if backend == "triton":  # the only backend with packed kernels
            for c in VARLEN:
                yield f"{backend}: {c}", check_varlen, c, backend
        for c in NORMS:
            yield f"{backend}: {c}", check_norm, c, backend


def main(args) -> int:
    device = args.device
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"native", "triton"}
    if unknown or not backends:
        print(f"--backends takes native and/or triton, got {args.backends!r}")
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}  backends: {fastattn.backends()}", flush=True)
    total = failures = 0
    for label, check, case, backend in calls(device, backends):
        total += 1
        try:
            problems = check(case, backend, device)
        except Exception as exc:  # a launch error or a crash is a failure; go on
            problems = [f"{type(exc).__name__}: {exc}"]
        print(f"{'ok  ' if not problems else 'FAIL'} {label}", flush=True)
        for p in problems:
            print("     " + p.replace("\n", "\n     "))
        failures += bool(problems)
    print(f"{total - failures} of {total} calls agree with fastattn.reference")
    return 1 if failures or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
