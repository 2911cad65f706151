"""Cross-check of the standalone CUDA check's float64 reference (dev/cuda/reference.cpp)
against fastattn.reference (float64 PyTorch), on the CPU: no GPU needed.

    bash dev/cuda/check.sh --dry --quick --dump /tmp/fa-dump   # writes the cases' truth
    python dev/cuda/crosscheck_reference.py /tmp/fa-dump

For every dumped case (dev/cuda/dump.cpp) it rebuilds the inputs as float64
tensors (the mask from its stored buffer and strides, lengths, the dropout
seed), recomputes out, lse, dq, dk, dv and the full bias gradient
(reference._attention / _attention_bwd), or y, h and the norm gradients
(reference._norm and autograd, with the dropout seed pinned), and compares
them with the C++ truth. Exit status 1 if any differs by more than 1e-9
(relative to the tensor's largest magnitude).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch

from fastattn import _rng, reference
from fastattn.ops.variants import Variants

TOL = 1e-9


def read_case(path: str) -> dict:
    meta = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" = ")
            meta[key.strip()] = value.strip()
    return meta


def array(base: str, name: str, shape=None) -> torch.Tensor:
    a = np.fromfile(f"{base}.{name}.f64", dtype="<f8")
    t = torch.from_numpy(a.copy())
    return t.view(shape) if shape is not None and t.numel() else t


def compare(problems: list, label: str, name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.detach().double().reshape(-1), want.detach().double().reshape(-1)
    if got.shape != want.shape:
        problems.append(f"{label}: {name} has {got.numel()} elements, reference {want.numel()}")
        return
    both_inf = torch.isinf(got) & torch.isinf(want) & (got == want)
    diff = torch.where(both_inf, torch.zeros_like(got), (got - want).abs())
    finite = want[torch.isfinite(want)]
    scale = max(float(finite.abs().max()) if finite.numel() else 0.0, 1.0)
    err = float(diff.max()) if diff.numel() else 0.0
    if not err <= TOL * scale:  # also catches NaN
        problems.append(f"{label}: {name} differs by {err:.3g} (scale {scale:.3g})")


def check_attention(base: str, meta: dict, problems: list) -> None:
    B, Hq, Hkv = int(meta["B"]), int(meta["Hq"]), int(meta["Hkv"])
    Lq, Lk, D = int(meta["Lq"]), int(meta["Lk"]), int(meta["D"])
    q = array(base, "q", (B, Hq, Lq, D))
    k = array(base, "k", (B, Hkv, Lk, D))
    v = array(base, "v", (B, Hkv, Lk, D))
    dout = array(base, "dout", (B, Hq, Lq, D))
    dlse = array(base, "dlse", (B, Hq, Lq)) if meta["dlse"] == "1" else None
    mask = None
    if meta["mask"] != "none":
        strides = [int(s) for s in meta["ms"].split()]
        stored = array(base, "mask")
        mask = torch.as_strided(stored, (B, Hq, Lq, Lk), strides)
        if meta["mask"] == "bool":
            mask = mask != 0
    lengths = int(meta["lengths"])  # cases.h Lengths: 0 none, 1 q, 2 kv, 3 both
    q_len = array(base, "q_len").long() if lengths in (1, 3) else None
    kv_len = array(base, "kv_len").long() if lengths in (2, 3) else None
    causal = meta["causal"] == "1"
    scale = float(meta["scale"])
    p = float(meta["dropout_p"])
    seed = torch.tensor([int(meta["seed"])], dtype=torch.int64) if p > 0 else None
    window = tuple(int(w) for w in meta["window"].split())
    alibi_rows = int(meta["alibi_rows"])
    slopes = array(base, "alibi", (alibi_rows, Hq)) if alibi_rows else None
    variants = Variants(window, slopes, float(meta["softcap"]))
    out, lse = reference._attention(q, k, v, causal, mask, q_len, kv_len, p, scale, seed,
                                    variants=variants)
    mask_grad = mask is not None and mask.is_floating_point()
    grads = reference._attention_bwd(dout, dlse, q, k, v, out, lse, mask, q_len, kv_len, causal,
                                     scale, p, seed, mask_grad, variants=variants)
    dq, dk, dv, ds = grads[:4]  # (a later element: gradients of attention variants)
    label = os.path.basename(base) + " " + meta["label"]
    compare(problems, label, "out", array(base, "out"), out)
    compare(problems, label, "lse", array(base, "lse"), lse)
    compare(problems, label, "dq", array(base, "dq"), dq)
    compare(problems, label, "dk", array(base, "dk"), dk)
    compare(problems, label, "dv", array(base, "dv"), dv)
    if mask_grad:  # the full (B, Hq, Lq, Lk) gradient: the mask is passed expanded
        compare(problems, label, "ds", array(base, "ds"), ds)


def check_norm(base: str, meta: dict, problems: list) -> None:
    rows, cols = int(meta["rows"]), int(meta["cols"])
    is_rms, prenorm = meta["is_rms"] == "1", meta["prenorm"] == "1"
    eps, p = float(meta["eps"]), float(meta["dropout_p"])
    seed = int(meta["seed"])

    def opt(name, shape):
        t = array(base, name)
        return t.view(shape).requires_grad_() if t.numel() else None

    x = array(base, "x", (rows, cols)).requires_grad_()
    residual = opt("residual", (rows, cols))
    weight = opt("weight", (cols,))
    bias = opt("bias", (cols,))
    real = _rng.draw_seed
    _rng.draw_seed = lambda device: torch.tensor([seed], dtype=torch.int64)
    try:
        outs = reference._norm(x, residual, weight, bias, eps, p, is_rms, prenorm, (cols,))
    finally:
        _rng.draw_seed = real
    outs = outs if isinstance(outs, tuple) else (outs,)
    label = os.path.basename(base) + " " + meta["label"]
    compare(problems, label, "y", array(base, "y"), outs[0])
    if prenorm:
        compare(problems, label, "h", array(base, "h"), outs[1])
    cots = [array(base, "dy", (rows, cols))]
    if prenorm:
        cots.append(array(base, "dh_out", (rows, cols)))
    leaves = [t for t in (x, residual, weight, bias) if t is not None]
    grads = dict(zip([n for n, t in zip(("dx", "dres", "dweight", "dbias"),
                                        (x, residual, weight, bias)) if t is not None],
                     torch.autograd.grad(outs, leaves, cots)))
    compare(problems, label, "dx", array(base, "dx"), grads["dx"])
    if residual is not None and p > 0:  # dresidual is only its own output with dropout
        compare(problems, label, "dres", array(base, "dres"), grads["dres"])
    if weight is not None:
        compare(problems, label, "dweight", array(base, "dweight"), grads["dweight"])
    if bias is not None:
        compare(problems, label, "dbias", array(base, "dbias"), grads["dbias"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="the directory of check --dump")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    problems: list = []
    cases = sorted(glob.glob(os.path.join(args.dir, "*.txt")))
    for path in cases:
        meta = read_case(path)
        base = path[:-4]
        if meta["kind"] == "attention":
            check_attention(base, meta, problems)
        else:
            check_norm(base, meta, problems)
    for p in problems:
        print("MISMATCH " + p)
    print(f"{len(cases) - len({p.split(':')[0] for p in problems})} passed, "
          f"{len({p.split(':')[0] for p in problems})} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
