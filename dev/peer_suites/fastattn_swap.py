"""pytest plugin: run a peer project's own test suite with fastattn swapped in.

    PYTHONPATH=<fastattn>/dev/peer_suites python -m pytest -p fastattn_swap <their tests>

What is swapped (FASTATTN_SWAP, comma-separated; default "sdpa,mha,norm,hf"):
  sdpa  torch.nn.functional.scaled_dot_product_attention -> fastattn's drop-in
  mha   torch.nn.MultiheadAttention and the Transformer layers -> fastattn.nn's
  norm  torch.nn.functional.layer_norm / rms_norm -> fastattn.layer_norm / rms_norm
  hf    every transformers PreTrainedModel -> fastattn.swap_modules(model) at the
        end of its post_init (so every model a test builds runs fastattn)

Run the same tests without the plugin for the baseline; a failure only the
swapped run has is either a fastattn defect or a test that cannot hold
(it asserts the implementation's name, or needs attention weights).
"""

from __future__ import annotations

import os
import sys

import torch

import fastattn

_WHAT = set(filter(None, os.environ.get("FASTATTN_SWAP", "sdpa,mha,norm,hf").split(",")))


def _swap_torch() -> None:
    F = torch.nn.functional
    if "sdpa" in _WHAT:
        F.scaled_dot_product_attention = fastattn.scaled_dot_product_attention
    if "norm" in _WHAT:
        F.layer_norm = fastattn.layer_norm
        F.rms_norm = fastattn.rms_norm
    if "mha" in _WHAT:
        for name in ("MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer"):
            ours = getattr(fastattn.nn, name)
            setattr(torch.nn, name, ours)
            for module in (torch.nn.modules.activation, torch.nn.modules.transformer):
                if hasattr(module, name):
                    setattr(module, name, ours)


def _swap_transformers() -> None:
    """Only where the tests imported transformers themselves (importing it
    for a whole run changes what torch's own tests see)."""
    if "hf" not in _WHAT or "transformers" not in sys.modules:
        return
    from transformers import PreTrainedModel
    post_init = PreTrainedModel.post_init

    def post_init_then_swap(self, *args, **kwargs):
        result = post_init(self, *args, **kwargs)
        fastattn.swap_modules(self)
        return result

    PreTrainedModel.post_init = post_init_then_swap


def pytest_configure(config):
    _swap_torch()


def pytest_collection_finish(session):
    # after collection: the test modules have imported what they use
    _swap_transformers()


def pytest_report_header(config):
    return f"fastattn swapped in: {', '.join(sorted(_WHAT))} (fastattn {fastattn.__version__})"
