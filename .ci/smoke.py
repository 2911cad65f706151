"""Smoke test of an installed fastattn wheel, run outside the checkout.

One call per op family on the compiled cpu backend (each checked against
fastattn.reference), python -m fastattn.info, and the quick benchmark
writing into the current directory. `--expect ORIGIN` checks where the
kernels came from ("at install" or "first use").
"""

import argparse
import os
import subprocess
import sys

import torch

import fastattn
from fastattn import _backends, _extension, reference

parser = argparse.ArgumentParser()
parser.add_argument("--expect", required=True, choices=["at install", "first use"])
parser.add_argument("--bench", action="store_true", help="also run fastattn-bench --quick")
args = parser.parse_args()

assert "site-packages" in fastattn.__file__, f"fastattn imported from {fastattn.__file__}"
status = _extension.status()
assert status.loaded and args.expect in status.origin, status
for family in _backends.OP_BACKENDS:
    assert _backends.resolve("auto", family, torch.device("cpu")) == "cpu", family

torch.manual_seed(0)
x, res = torch.randn(8, 96), torch.randn(8, 96)
w, b = torch.randn(96), torch.randn(96)
torch.testing.assert_close(fastattn.layer_norm(x, (96,), w, b), reference.layer_norm(x, (96,), w, b))
torch.testing.assert_close(fastattn.rms_norm(x, (96,), w), reference.rms_norm(x, (96,), w))
torch.testing.assert_close(fastattn.add_layer_norm(x, res, w, b),
                           reference.add_layer_norm(x, res, w, b))
q = torch.randn(2, 4, 33, 12, requires_grad=True)
out = fastattn.attention(q, q, q, causal=True)
torch.testing.assert_close(out, reference.attention(q, q, q, causal=True), atol=1e-5, rtol=1e-4)
out.sum().backward()
assert q.grad is not None and torch.isfinite(q.grad).all()
packed = torch.randn(10, 2, 16)
cu = torch.tensor([0, 4, 10], dtype=torch.int32)
torch.testing.assert_close(fastattn.attention_varlen(packed, packed, packed, cu, cu, 6, 6),
                           reference.attention_varlen(packed, packed, packed, cu, cu, 6, 6),
                           atol=1e-5, rtol=1e-4)
print("ops: ok")

subprocess.run([sys.executable, "-m", "fastattn.info"], check=True)
if args.bench:
    subprocess.run(["fastattn-bench", "--quick", "--op", "layernorm", "--no-plots"], check=True)
    outputs = [p for p in os.listdir(".") if "bench" in p.lower()]
    assert outputs, f"fastattn-bench wrote nothing into {os.getcwd()}: {os.listdir('.')}"
    print("benchmark outputs:", outputs)
print("smoke test: ok")
