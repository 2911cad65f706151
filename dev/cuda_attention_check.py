"""Self-check of the CUDA attention kernels against fastattn.reference (GPU only).

    python dev/cuda_attention_check.py            # full grid (a minute or two)
    python dev/cuda_attention_check.py --quick    # a few cases
    compute-sanitizer --tool memcheck  python dev/cuda_attention_check.py --quick
    compute-sanitizer --tool racecheck python dev/cuda_attention_check.py --quick

(dev/sanitize_kernels.py is the smaller workload that tests/test_sanitizer.py
runs under both tools: every kernel of the cuda and triton backends once,
norms included.)

Calls the native ops (fastattn::attention_fwd_native / attention_bwd_native)
directly on CUDA tensors, so it exercises exactly the cuda backend, over
head-dim buckets and odd head dims, self/cross/decode lengths, GQA, causal,
lengths, bool and additive masks (full and broadcast, with their gradient),
dropout, strided (B, L, H, D) layouts and float16/bfloat16/float32. Each
result is judged by fastattn.testing's protocol: the error against the
float64 reference at most a small multiple of plain PyTorch's own error in
the same dtype. Also checks that padded rows are exactly 0 with lse -inf,
that the backward is bitwise deterministic, and one autograd round trip
through fastattn.attention(backend="cuda"). Exit status 1 on any failure.
`--device cpu` runs the same harness on the C++ CPU backend (a check of the
harness itself on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch

import fastattn
import fastattn._C  # noqa: F401  (registers the native ops; build the extension first)
from fastattn import reference
from fastattn.testing import check_close

# Device of the checked tensors: "cuda" (the point of this script); "cpu"
# runs the same harness on the C++ CPU backend (a check of the harness).
DEVICE = "cuda"


def _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, strided, gen):
    def make(H, L):
        if strided:  # (B, L, H, D) memory viewed as (B, H, L, D)
            return torch.randn(B, L, H, D, generator=gen, device=DEVICE).to(dtype).transpose(1, 2)
        return torch.randn(B, H, L, D, generator=gen, device=DEVICE).to(dtype)
    return make(Hq, Lq), make(Hkv, Lk), make(Hkv, Lk)


def _mask(kind, B, Hq, Lq, Lk, dtype, gen):
    if kind == "none":
        return None
    if kind == "bool":
        m = torch.rand(B, 1, Lq, Lk, generator=gen, device=DEVICE) > 0.3
        m[0, 0, 0, :] = False  # one row with nothing to attend
        return m
    shape = (B, Hq, Lq, Lk) if kind == "bias" else (1, Hq, Lq, Lk)
    bias = torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)
    if kind == "bias_bcast":
        bias[0, 0, 1 % Lq, :] = float("-inf")  # a row masked out by the bias alone
    return bias


def _lengths(kind, B, Lq, Lk, gen):
    ql = kl = None
    if kind in ("q", "both"):
        ql = torch.randint(0, Lq + 1, (B,), generator=gen, device=DEVICE)
        ql[0] = Lq
    if kind in ("kv", "both"):
        kl = torch.randint(0, Lk + 1, (B,), generator=gen, device=DEVICE).to(torch.int32)
        kl[-1] = 0 if B > 1 else Lk  # a batch row with no keys
    return ql, kl


def run_case(B, Hq, Hkv, Lq, Lk, D, dtype, causal, mask_kind, len_kind, dropout_p, strided,
             seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v = _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, strided, gen)
    mask = _mask(mask_kind, B, Hq, Lq, Lk, dtype if mask_kind != "bias_bcast" else torch.float32,
                 gen)
    ql, kl = _lengths(len_kind, B, Lq, Lk, gen)
    seed_t = (torch.randint(0, 2**62, (1,), generator=gen, device=DEVICE)
              if dropout_p > 0 else None)
    scale = D ** -0.5
    mask_grad = mask is not None and mask.is_floating_point()
    dout = torch.randn(B, Hq, Lq, D, generator=gen, device=DEVICE).to(dtype)
    dlse = torch.randn(B, Hq, Lq, generator=gen, device=DEVICE)

    ops = torch.ops.fastattn
    out, lse = ops.attention_fwd_native(q, k, v, mask, ql, kl, seed_t, causal, scale, dropout_p)
    grads = ops.attention_bwd_native(dout, dlse, q, k, v, out, lse, mask, ql, kl, seed_t, causal,
                                     scale, dropout_p, mask_grad)
    again = ops.attention_bwd_native(dout, dlse, q, k, v, out, lse, mask, ql, kl, seed_t, causal,
                                     scale, dropout_p, mask_grad)
    if DEVICE == "cuda":
        torch.cuda.synchronize()

    d64 = [t.double() for t in (q, k, v)]
    m64 = mask.double() if mask_grad else mask
    out64, lse64 = reference._attention(*d64, causal, m64, ql, kl, dropout_p, scale, seed_t)
    base_out, base_lse = reference._attention(q, k, v, causal, mask, ql, kl, dropout_p, scale,
                                              seed_t, compute_dtype=dtype)
    truth_g = reference._attention_bwd(dout.double(), dlse.double(), *d64, out64, lse64, m64,
                                       ql, kl, causal, scale, dropout_p, seed_t, mask_grad)
    base_g = reference._attention_bwd(dout, dlse, q, k, v, base_out, base_lse, mask, ql, kl,
                                      causal, scale, dropout_p, seed_t, mask_grad,
                                      compute_dtype=dtype)

    problems = []
    checks = [("out", out, out64, base_out)]
    empty = torch.isinf(lse64)
    if not torch.equal(torch.isinf(lse), empty):
        problems.append("lse: -inf pattern differs from the reference")
    checks.append(("lse", torch.where(empty, 0.0, lse).float(),
                   torch.where(empty, 0.0, lse64), torch.where(empty, 0.0, base_lse).float()))
    names = ("dq", "dk", "dv", "dmask")
    for name, got, truth, base in zip(names, grads, truth_g, base_g):
        if name == "dmask" and not mask_grad:
            if got.numel() != 0:
                problems.append("dmask: expected an empty tensor without mask_grad")
            continue
        checks.append((name, got, truth, base.to(got.dtype)))
    for name, got, truth, base in checks:
        ok, msg = check_close(got, truth.to(torch.float64), base, name)
        if not ok:
            problems.append(msg)
    if empty.any() and out[empty].abs().max().item() != 0.0:
        problems.append("out: rows with nothing to attend are not exactly 0")
    for name, a, b in zip(names, grads, again):
        if not torch.equal(a, b):
            problems.append(f"{name}: backward not bitwise deterministic")
    return problems


def autograd_round_trip(dtype):
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    q, k, v = (torch.randn(2, 4, 77, 64, generator=gen, device=DEVICE).to(dtype)
               .requires_grad_() for _ in range(3))
    bias = torch.randn(1, 4, 77, 77, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    problems = []
    outs = {}
    native = "cuda" if DEVICE == "cuda" else "cpu"
    for backend in (native, "reference"):
        for t in (q, k, v, bias):
            t.grad = None
        o = fastattn.attention(q, k, v, causal=True, attn_mask=bias, backend=backend)
        o.float().square().sum().backward()
        outs[backend] = [o.detach()] + [t.grad.clone() for t in (q, k, v, bias)]
    for name, a, b in zip(("out", "dq", "dk", "dv", "dbias"), outs[native], outs["reference"]):
        tol = 2e-2 if dtype != torch.float32 else 1e-4
        err = (a.double() - b.double()).abs().max().item() / (b.abs().max().item() + 1e-12)
        if not math.isfinite(err) or err > tol:
            problems.append(f"autograd {name}: relative error {err:.3g} > {tol}")
    return problems


def cases(quick: bool):
    shapes = [  # (B, Hq, Hkv, Lq, Lk, D)
        (2, 4, 4, 129, 129, 64), (3, 8, 2, 33, 1000, 128), (2, 2, 1, 1, 257, 80),
        (1, 3, 3, 200, 70, 40), (2, 2, 2, 65, 65, 256), (2, 4, 1, 7, 16, 32),
        (1, 2, 2, 300, 300, 96), (2, 2, 2, 64, 128, 16),
    ]
    if quick:
        shapes = shapes[:3]
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    for shape, dtype in itertools.product(shapes, dtypes):
        variants = [
            dict(causal=False, mask_kind="none", len_kind="none", dropout_p=0.0, strided=False),
            dict(causal=True, mask_kind="none", len_kind="both", dropout_p=0.0, strided=True),
            dict(causal=False, mask_kind="bool", len_kind="kv", dropout_p=0.0, strided=False),
            dict(causal=True, mask_kind="bias", len_kind="q", dropout_p=0.0, strided=False),
            dict(causal=False, mask_kind="bias_bcast", len_kind="none", dropout_p=0.0,
                 strided=True),
            dict(causal=True, mask_kind="none", len_kind="none", dropout_p=0.2, strided=False),
        ]
        if quick:
            variants = variants[1:2] + variants[3:4] + variants[5:]
        for var in variants:
            yield dict(zip(("B", "Hq", "Hkv", "Lq", "Lk", "D"), shape), dtype=dtype, **var)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: run the harness on the C++ CPU backend instead")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    backend = "cuda" if DEVICE == "cuda" else "cpu"
    print(f"device: {name}  {backend} backend: {fastattn.backends()[backend]['attention']}")
    failures = 0
    total = 0
    for case in cases(args.quick):
        total += 1
        label = " ".join(f"{k}={v}" for k, v in case.items()).replace("torch.", "")
        try:
            problems = run_case(**case)
        except Exception as exc:  # a launch error or a crash is a failure, keep going
            problems = [f"{type(exc).__name__}: {exc}"]
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {label}")
        for p in problems:
            print("     " + p.replace("\n", "\n     "))
        failures += bool(problems)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        total += 1
        problems = autograd_round_trip(dtype)
        print(f"{'ok  ' if not problems else 'FAIL'} autograd round trip {dtype}")
        for p in problems:
            print("     " + p)
        failures += bool(problems)
    print(f"{total - failures} of {total} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
