"""The implementations fastattn is compared with, each only where it runs.

An `Impl` turns one prepared input set (a dict of tensors and flags) into
the op's output tensor. Peers that cannot run here (a library missing, a
backend that does not exist on this device) are left out, and the reason
goes into `notes`, which the report prints; a peer that raises on a given
shape is reported as an error row for that shape only.

Norm peers (`norm_peers`):
  torch      torch.nn.functional.layer_norm / rms_norm, eager; for the
             add_* ops the unfused eager add-then-norm (what fused add &
             norm saves)
  compile    torch.compile of the same function (inductor fuses the add)
  liger      Liger-Kernel's Triton norms (liger_kernel), add unfused
  apex       apex's fused layer/RMS norm (CUDA), add unfused
Attention peers (`attention_peers`):
  sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math
             torch SDPA restricted to one backend (torch.nn.attention.
             sdpa_kernel), given the equivalent boolean mask
  flex       FlexAttention, compiled, with a block mask for causal/padding
             (fully padded blocks skipped, like fastattn's lengths)
  eager      materialized scores and softmax in the input dtype
  flash_attn flash-attn's flash_attn_func (unpadded shapes)
  xformers   xformers' memory_efficient_attention (unpadded, no GQA)
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

NORM_PEERS = ("torch", "compile", "liger", "apex")
ATTENTION_PEERS = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "eager",
                   "flash_attn", "xformers")
ALL_PEERS = NORM_PEERS + ATTENTION_PEERS

# Eager and math SDPA materialize B*Hq*Lq*Lk scores (several copies in the
# backward); above this many bytes of scores they are left out of a shape.
MAX_MATERIALIZED_BYTES = 4 << 30


@dataclass
class Impl:
    name: str                                   # row label, e.g. "fastattn[cuda]"
    run: Callable[[dict], torch.Tensor]         # prepared inputs -> output
    fastattn: bool = False                      # gated against the reference, compared
    prepare: Optional[Callable[[dict], dict]] = None  # once per input set, not timed
    limit: Optional[Callable[[dict], str]] = None     # shape -> why not ("" = runs)
    no_backward: str = ""                             # why it has no backward ("" = has one)


def _importable(module: str) -> str:
    """Empty if `module` imports, else why not."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"{module} is not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    return ""


def _cuda_peer_unavailable(module: str, label: str, device: torch.device) -> str:
    """Empty if a CUDA-only peer library can run here, else why not."""
    why = _importable(module)
    if not why and device.type != "cuda":
        why = f"{label} needs a CUDA device"
    return why


# ---------------------------------------------------------------- norms


def _torch_norm(inp: dict, is_rms: bool) -> torch.Tensor:
    h = inp["x"] if inp["residual"] is None else inp["x"] + inp["residual"]
    if is_rms:
        return F.rms_norm(h, h.shape[-1:], inp["weight"], inp["eps"])
    return F.layer_norm(h, h.shape[-1:], inp["weight"], inp["bias"], inp["eps"])


def norm_peers(wanted: tuple[str, ...], device: torch.device, is_rms: bool, is_add: bool,
               notes: set[str]) -> list[Impl]:
    add = " add+norm" if is_add else ""
    impls = []
    if "torch" in wanted:
        impls.append(Impl(f"torch eager{add}", functools.partial(_torch_norm, is_rms=is_rms)))
    if "compile" in wanted:
        compiled = torch.compile(functools.partial(_torch_norm, is_rms=is_rms))
        impls.append(Impl(f"torch.compile{add}", compiled))
    if "liger" in wanted:
        why = _cuda_peer_unavailable("liger_kernel.transformers.functional", "Liger-Kernel",
                                     device)
        if why:
            notes.add(f"peer liger skipped: {why}")
        else:
            from liger_kernel.transformers import functional as liger

            def run_liger(inp):
                h = inp["x"] if inp["residual"] is None else inp["x"] + inp["residual"]
                if is_rms:
                    return liger.liger_rms_norm(h, inp["weight"], inp["eps"], in_place=False)
                return liger.liger_layer_norm(h, inp["weight"], inp["bias"], inp["eps"])
            impls.append(Impl(f"liger{add}", run_liger))
    if "apex" in wanted:
        why = _cuda_peer_unavailable("apex.normalization.fused_layer_norm", "apex", device)
        if why:
            notes.add(f"peer apex skipped: {why}")
        else:
            from apex.normalization import fused_layer_norm as apex_ln

            def run_apex(inp):
                h = inp["x"] if inp["residual"] is None else inp["x"] + inp["residual"]
                shape = h.shape[-1:]
                if is_rms:
                    return apex_ln.fused_rms_norm_affine(h, inp["weight"], shape, inp["eps"])
                return apex_ln.fused_layer_norm_affine(h, inp["weight"], inp["bias"], shape,
                                                       inp["eps"])
            impls.append(Impl(f"apex{add}", run_apex))
    return impls


# ------------------------------------------------------------ attention


def attend_mask(inp: dict) -> Optional[torch.Tensor]:
    """The boolean mask (B, 1, Lq, Lk) equivalent to fastattn's arguments
    (True = may attend), or None when there is none.

    Keys at positions >= kv_lengths[b] are masked; causal is bottom-right
    aligned per row, query i attending key j iff j <= i + (kv_len - q_len).
    Padded query rows are not masked (their output is discarded, as a
    padded batch's is), so no row of this mask is empty unless a length is 0.
    """
    q, k = inp["q"], inp["k"]
    lq, lk = q.shape[2], k.shape[2]
    kv_len, q_len = inp["kv_lengths"], inp["q_lengths"]
    if kv_len is None and not inp["causal"]:
        return None
    B = q.shape[0]
    j = torch.arange(lk, device=q.device)
    mask = torch.ones(B, 1, lq, lk, dtype=torch.bool, device=q.device)
    if kv_len is not None:
        mask &= (j < kv_len.view(B, 1, 1, 1))
    if inp["causal"]:
        i = torch.arange(lq, device=q.device).view(1, 1, lq, 1)
        klen = kv_len.view(B, 1, 1, 1) if kv_len is not None else lk
        qlen = q_len.view(B, 1, 1, 1) if q_len is not None else lq
        mask &= j <= i + (klen - qlen)
    return mask


def eager_attention(inp: dict) -> torch.Tensor:
    """Attention with materialized scores and softmax, in the input dtype.

    Rows whose every key is masked, and padded query rows, give zeros (the
    fastattn contract), multiplying by a 0/1 row flag so gradients stay finite.
    """
    q, k, v = inp["q"], inp["k"], inp["v"]
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * inp["scale"]
    mask = inp["mask"]
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores, dim=-1) @ v
    if mask is not None:
        out = out * mask.any(dim=-1, keepdim=True).to(out.dtype)
    if inp["q_lengths"] is not None:
        lq = q.shape[2]
        valid = torch.arange(lq, device=q.device) < inp["q_lengths"].view(-1, 1, 1, 1)
        out = out * valid.transpose(-2, -1).to(out.dtype).view(-1, 1, lq, 1)
    return out


def _with_mask(inp: dict) -> dict:
    return dict(inp, mask=attend_mask(inp))


def _scores_bytes(s: dict) -> int:
    return s["B"] * s["Hq"] * s["Lq"] * s["Lk"] * 4


def _materialize_limit(s: dict) -> str:
    if _scores_bytes(s) > MAX_MATERIALIZED_BYTES:
        return f"would materialize {_scores_bytes(s) / 2**30:.1f} GiB of scores"
    return ""


def _sdpa_impl(name: str, backend) -> Impl:
    from torch.nn.attention import sdpa_kernel

    def prepare(inp):
        inp = _with_mask(inp)
        # Plain is_causal (top-left) equals fastattn's causal when Lq == Lk
        # and there are no lengths; it keeps the flash backend eligible.
        plain_causal = (inp["causal"] and inp["kv_lengths"] is None
                        and inp["q"].shape[2] == inp["k"].shape[2])
        return dict(inp, sdpa_mask=None if plain_causal else inp["mask"],
                    sdpa_causal=plain_causal)

    def run(inp):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(
                inp["q"], inp["k"], inp["v"], attn_mask=inp["sdpa_mask"],
                is_causal=inp["sdpa_causal"], scale=inp["scale"],
                enable_gqa=inp["q"].shape[1] != inp["k"].shape[1])
    limit = _materialize_limit if name == "sdpa-math" else None
    return Impl(name, run, prepare=prepare, limit=limit)


def _flex_impl(device: torch.device) -> Impl:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = torch.compile(flex_attention)

    def prepare(inp):
        q, k = inp["q"], inp["k"]
        B, lq, lk = q.shape[0], q.shape[2], k.shape[2]
        kv_len = inp["kv_lengths"] if inp["kv_lengths"] is not None else torch.full(
            (B,), lk, device=device)
        q_len = inp["q_lengths"] if inp["q_lengths"] is not None else torch.full(
            (B,), lq, device=device)
        causal = inp["causal"]

        def mask_mod(b, h, qi, kj):
            ok = (kj < kv_len[b]) & (qi < q_len[b])
            if causal:
                ok = ok & (kj <= qi + kv_len[b] - q_len[b])
            return ok
        block_mask = create_block_mask(mask_mod, B, None, lq, lk, device=device)
        return dict(inp, block_mask=block_mask)

    def run(inp):
        q, k, v = inp["q"], inp["k"], inp["v"]
        if not torch.is_grad_enabled():  # inference: FlexAttention checks requires_grad
            q, k, v = q.detach(), k.detach(), v.detach()
        return compiled(q, k, v, block_mask=inp["block_mask"], scale=inp["scale"],
                        enable_gqa=q.shape[1] != k.shape[1])
    no_backward = "FlexAttention has no backward on CPU" if device.type == "cpu" else ""
    return Impl("flex", run, prepare=prepare, no_backward=no_backward)


def _unpadded_only(s: dict) -> str:
    return "padded shapes need its varlen API; not benchmarked" if s["pad"] else ""


def _flash_attn_impl() -> Impl:
    from flash_attn import flash_attn_func

    def run(inp):
        # flash-attn takes (B, L, H, D); these are views, no copy.
        out = flash_attn_func(inp["q"].transpose(1, 2), inp["k"].transpose(1, 2),
                              inp["v"].transpose(1, 2), softmax_scale=inp["scale"],
                              causal=inp["causal"])
        return out.transpose(1, 2)
    return Impl("flash_attn", run, limit=_unpadded_only)


def _xformers_impl() -> Impl:
    import xformers.ops as xops

    def limit(s):
        if s["Hq"] != s["Hkv"]:
            return "grouped-query shapes need its 5-D layout; not benchmarked"
        return _unpadded_only(s)

    def run(inp):
        bias = xops.LowerTriangularFromBottomRightMask() if inp["causal"] else None
        out = xops.memory_efficient_attention(
            inp["q"].transpose(1, 2), inp["k"].transpose(1, 2), inp["v"].transpose(1, 2),
            attn_bias=bias, scale=inp["scale"])
        return out.transpose(1, 2)
    return Impl("xformers", run, limit=limit)


def attention_peers(wanted: tuple[str, ...], device: torch.device,
                    notes: set[str]) -> list[Impl]:
    from torch.nn.attention import SDPBackend
    sdpa = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
            "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
    impls = []
    for name in ATTENTION_PEERS:
        if name not in wanted:
            continue
        if name in sdpa:
            if device.type == "cpu" and name in ("sdpa-efficient", "sdpa-cudnn"):
                notes.add(f"peer {name} skipped: no such SDPA backend on CPU")
                continue
            impls.append(_sdpa_impl(name, sdpa[name]))
        elif name == "flex":
            impls.append(_flex_impl(device))
        elif name == "eager":
            impls.append(Impl("eager", eager_attention, prepare=_with_mask,
                              limit=_materialize_limit))
        else:
            why = _importable(name if name == "flash_attn" else "xformers.ops")
            if not why and device.type != "cuda":
                why = f"{name} needs a CUDA device"
            if why:
                notes.add(f"peer {name} skipped: {why}")
                continue
            impls.append(_flash_attn_impl() if name == "flash_attn" else _xformers_impl())
    return impls
