"""Launchers of the Triton attention kernels (attention_fwd.py, attention_bwd.py).

They implement the op contract of fastattn/ops/attention.py:

    attention_fwd(q, k, v, mask, q_lengths, kv_lengths, seed, causal, scale,
                  dropout_p=0.0, deterministic=False, variants=None) -> (out, lse)
    attention_bwd(dout, dlse, q, k, v, out, lse, mask, q_lengths, kv_lengths, seed,
                  causal, scale, dropout_p, mask_grad, deterministic=False,
                  variants=None, rel_grad=False)
        -> (dq, dk, dv, dmask)              when variants is None (as before)
        -> (dq, dk, dv, dmask, drel)        when a KernelVariants is passed
    attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, seed, causal, scale,
                         dropout_p=0.0, deterministic=False, variants=None) -> (out, lse)
    attention_varlen_bwd(dout, dlse, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, seed,
                         causal, scale, dropout_p, deterministic=False, variants=None,
                         rel_grad=False)
        -> (dq, dk, dv)                     when variants is None
        -> (dq, dk, dv, drel)               when a KernelVariants is passed

variants: a fastattn.ops.variants.KernelVariants (window, ALiBi slopes,
softcap, T5's relative bias as table + buckets over [-R, R]), or None for
none; they reach every kernel through one score path
(attention_scores.py). With a KernelVariants the backward launchers return
one more tensor, drel: with rel_grad and variants.rel_table, the score
gradient summed per relative position, (Hq, 2R + 1) float32 (float64 for
float64 inputs), summed over the batch, from which the caller forms the
table's gradient, variants.rel_bias_grad(drel, rel_buckets, num_buckets);
else shape (0,). Without atomics: the dQ pass writes, per (batch, query
head, query tile), a row of per-position sums into a zero-filled scratch
of B * Hq * ceil(Lq / BLOCK_M_min) * (Lk + BLOCK_M_max + 2 BLOCK_N_max)
elements in the accumulator dtype (over the dQ configs of the GPU
generation: 32 / 128 / 64 on Hopper and 32 / 128 / 32 on Ampere for 16-bit
inputs, 16 / 32 / 32 for float32; 32 / 32 / 16 under the interpreter),
which a small kernel then sums per position in a fixed order (bitwise
reproducible). That is about Lq * (Lk + 256) / 8 bytes per (batch, head)
for 16-bit inputs: 1/32 of the (B, Hq, Lq, Lk) float32 gradient a
materialized bias would need (1/16 for float32). It is allocated only when
rel_grad asks for it.

Tensors are passed with their strides (only the last dim must be
contiguous): no copies. A mask arrives 4-D with every dim either 1 or full;
it is expanded to (B, Hq, Lq, Lk), which only sets the broadcast strides to 0.

Tile sizes: on a GPU, autotuned per head-dim bucket, mask kind, causal,
variant set, sequence-length bucket and dtype over a small per-generation config set
(Ampere sm_8x, Hopper sm_9x); the choice is cached for the process. Under
the Triton interpreter one small fixed configuration is used: autotuning
there would only time the interpreter.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .._backends import triton_interpret
from . import on_device_of
from . import attention_bwd as bwd
from . import attention_decode as decode
from . import attention_fwd as fwd
from .attention_scores import VariantArgs
from .rng import threshold_arg

# ------------------------------------------------------------------ configs

# Under the interpreter: small tiles (several tiles per test sequence, so the
# tile-boundary logic is exercised) but not so small that Python overhead
# per tile dominates. BLOCK_M != BLOCK_N on purpose, to catch mixed-up bounds.
_INTERPRET_TILES = {
    "fwd": dict(BLOCK_M=32, BLOCK_N=16),
    "bwd_kv": dict(BLOCK_M=16, BLOCK_N=32),
    "bwd_q": dict(BLOCK_M=32, BLOCK_N=16),
}
# Key tile of the split-KV decoding forward on a GPU (not autotuned yet).
_DECODE_BLOCK_N = 64
# Rows per program of the delta preprocess kernel.
_PRE_BLOCK_M = 32
# Relative positions per program of the relative-bias gradient's reduction.
_DREL_BLOCK = 128


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# (forward, backward dK/dV, backward dQ) candidates per GPU generation for
# 16-bit inputs, and one small set for float32 (its exact "ieee" tl.dot runs
# on FMA units and needs far more registers per tile). In the dK/dV kernel
# BLOCK_N is the key tile a program owns and BLOCK_M the query tile it
# iterates over; in the others BLOCK_M is the owned query tile. _pruner
# drops, per head dim, the configs that would spill or overflow shared memory.
_GPU_CONFIGS = {
    "hopper": (
        [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 64, 8, 2),
         _cfg(128, 32, 8, 2), _cfg(64, 32, 8, 2)],
        [_cfg(32, 128, 8, 3), _cfg(64, 128, 8, 2), _cfg(32, 64, 8, 3), _cfg(32, 64, 4, 2),
         _cfg(32, 32, 8, 2), _cfg(16, 32, 8, 2)],
        [_cfg(128, 64, 8, 2), _cfg(128, 32, 8, 3), _cfg(64, 32, 4, 3), _cfg(64, 32, 8, 2),
         _cfg(32, 32, 8, 2)],
    ),
    "ampere": (
        [_cfg(128, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 64, 8, 2),
         _cfg(128, 32, 8, 2), _cfg(64, 32, 8, 2)],
        [_cfg(32, 64, 8, 3), _cfg(32, 64, 4, 2), _cfg(64, 128, 8, 2), _cfg(32, 32, 8, 2),
         _cfg(16, 32, 8, 2)],
        [_cfg(128, 32, 8, 2), _cfg(64, 32, 4, 3), _cfg(64, 32, 8, 2), _cfg(32, 32, 8, 2)],
    ),
    "float32": (
        [_cfg(32, 32, 8, 2), _cfg(16, 32, 4, 2), _cfg(32, 16, 4, 2)],
        [_cfg(16, 16, 4, 1), _cfg(16, 32, 8, 2), _cfg(16, 32, 4, 2)],
        [_cfg(32, 16, 4, 2), _cfg(16, 16, 4, 2), _cfg(32, 32, 4, 2)],
    ),
}


@functools.lru_cache(maxsize=None)
def _generation(device_index: int) -> str:
    major, _ = torch.cuda.get_device_capability(device_index)
    return "hopper" if major >= 9 else "ampere"


@functools.lru_cache(maxsize=None)
def _smem_limit(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return getattr(props, "shared_memory_per_block_optin", 96 * 1024)


# Registers per thread a config needs for the tiles it keeps live across the
# key/query loop (fp32 accumulators, the resident operand tiles) plus the
# fp32 score and probability tiles of one iteration. Configs above the
# budget spill (checked with ptxas -v for sm_80/sm_90: e.g. a 128x128(D)
# forward tile at 4 warps spills kilobytes, at 8 warps it does not).
_REG_BUDGET = 168


def _regs_per_thread(kernel_name: str, bm: int, bn: int, bd: int, elt: int, warps: int,
                     has_mask: bool) -> float:
    scores = bm * bn * 4 * (2 if has_mask else 1)  # plus the loaded mask/bias tile
    if kernel_name == "fwd":      # q tile + output accumulator
        live = bm * bd * (elt + 4)
    elif kernel_name == "bwd_kv":  # k, v tiles + dk, dv accumulators
        live = bn * bd * 2 * (elt + 4)
    else:                          # q, do tiles + dq accumulator
        live = bm * bd * (2 * elt + 4)
    return (live + scores) / (warps * 32 * 4)


def _pruner(kernel_name: str):
    """early_config_prune for one kernel: drop configs that would spill
    registers or cannot fit their pipelined tiles in shared memory, keeping
    at least the smallest config."""
    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        elt = q.element_size()
        bd = kwargs["BLOCK_D"]
        limit = _smem_limit(q.device.index or 0)
        kept = []
        for c in configs:
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            smem = elt * bd * (2 * max(bm, bn) + 2 * c.num_stages * min(bm, bn))
            regs = _regs_per_thread(kernel_name, bm, bn, bd, elt, c.num_warps,
                                    kwargs["MASK_KIND"] != 0)
            if smem <= limit and regs <= _REG_BUDGET:
                kept.append(c)
        return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"],
                                                     -c.num_warps))]
    return prune


_AUTOTUNE_KEY = ["BLOCK_D", "CAUSAL", "MASK_KIND", "LEN_BUCKET", "SOFTCAP", "ALIBI",
                 "REL_BIAS", "WINDOW_LEFT", "WINDOW_RIGHT", "STORE_DREL"]


_KERNELS = {"fwd": fwd.attention_fwd_kernel, "bwd_kv": bwd.attention_bwd_dkdv_kernel,
            "bwd_q": bwd.attention_bwd_dq_kernel}
_CONFIG_INDEX = {"fwd": 0, "bwd_kv": 1, "bwd_q": 2}


@functools.lru_cache(maxsize=None)
def _tuned(kernel_name: str, config_set: str, device_index: int):
    """The autotuned wrapper of one kernel over one config set on one device
    (cached, and so is the config each wrapper picks per key). One per
    device: Triton's autotuner caches its pick by key alone, and the pruner
    keeps what fits the shared memory of the device it first runs on, so
    two different GPUs of one generation must not share a pick."""
    configs = _GPU_CONFIGS[config_set][_CONFIG_INDEX[kernel_name]]
    # DRel's rows are per query tile: what a benchmarked config leaves in
    # rows the chosen one does not write must not be summed.
    reset = ["DRel"] if kernel_name == "bwd_q" else None
    return triton.autotune(configs=configs, key=_AUTOTUNE_KEY, reset_to_zero=reset,
                           prune_configs_by={"early_config_prune": _pruner(kernel_name)})(
                               _KERNELS[kernel_name])


def _tile_bounds(kernel_name: str, q: torch.Tensor) -> tuple[int, int, int]:
    """(smallest BLOCK_M, largest BLOCK_M, largest BLOCK_N) that a launch of
    `kernel_name` on q may use."""
    if triton_interpret() or q.device.type != "cuda":
        t = _INTERPRET_TILES[kernel_name]
        return t["BLOCK_M"], t["BLOCK_M"], t["BLOCK_N"]
    config_set = "float32" if q.dtype == torch.float32 else _generation(q.device.index or 0)
    configs = _GPU_CONFIGS[config_set][_CONFIG_INDEX[kernel_name]]
    bms = [c.kwargs["BLOCK_M"] for c in configs]
    return min(bms), max(bms), max(c.kwargs["BLOCK_N"] for c in configs)


def _launch(kernel_name: str, grid_of, args: tuple, meta: dict, device,
            deterministic: bool = False):
    """Run a kernel: fixed tiles under the interpreter, autotuned on a GPU.
    `grid_of(BLOCK_M, BLOCK_N)` gives the launch grid for a config.

    deterministic: no autotuning on a GPU either; the first config that the
    pruner keeps (a fixed function of head dim, dtype and GPU) runs, so the
    tiling, hence every summation order, cannot depend on timings: results
    are bitwise reproducible across processes, not only within one."""
    if triton_interpret() or device.type != "cuda":
        tiles = _INTERPRET_TILES[kernel_name]
        _KERNELS[kernel_name][grid_of(tiles["BLOCK_M"], tiles["BLOCK_N"])](*args, **meta, **tiles)
        return tiles["BLOCK_M"], tiles["BLOCK_N"]
    q = args[0]
    config_set = "float32" if q.dtype == torch.float32 else _generation(device.index or 0)
    if deterministic:
        configs = _GPU_CONFIGS[config_set][_CONFIG_INDEX[kernel_name]]
        names = _KERNELS[kernel_name].arg_names
        c = _pruner(kernel_name)(configs, dict(zip(names, args)), **meta)[0]
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        _KERNELS[kernel_name][grid_of(bm, bn)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                                               num_warps=c.num_warps, num_stages=c.num_stages)
        return bm, bn
    tuned = _tuned(kernel_name, config_set, device.index)
    tuned[lambda m: grid_of(m["BLOCK_M"], m["BLOCK_N"])](*args, **meta)
    return tuned.best_config.kwargs["BLOCK_M"], tuned.best_config.kwargs["BLOCK_N"]


# ------------------------------------------------------------------ helpers


def _kernel_meta(q: torch.Tensor, causal: bool, mask: Optional[torch.Tensor],
                 q_lengths, kv_lengths, dropout_p: float, varlen: bool = False,
                 var: Optional[VariantArgs] = None) -> dict:
    """Compile-time parameters shared by the kernels."""
    D = q.shape[-1]
    if q.dtype in (torch.float32, torch.float64):
        # float32 follows PyTorch's own matmul setting (exact unless TF32 is allowed)
        tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        precision = "tf32" if tf32 else "ieee"
    else:
        precision = "tf32"  # Triton's default; 16-bit operands use the 16-bit MMA either way
    if mask is None:
        kind = fwd.MASK_NONE
    elif mask.dtype == torch.bool:
        kind = fwd.MASK_BOOL
    else:
        kind = fwd.MASK_BIAS
    return dict(
        BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=bool(causal), MASK_KIND=kind,
        HAS_QLENS=q_lengths is not None, HAS_KVLENS=kv_lengths is not None,
        DROPOUT=dropout_p > 0, VARLEN=varlen,
        ACC_DTYPE=tl.float64 if q.dtype == torch.float64 else tl.float32,
        DOT_PRECISION=precision,
        **(var.flags if var is not None else dict(SOFTCAP=False, ALIBI=False, REL_BIAS=False,
                                                  WINDOW_LEFT=False, WINDOW_RIGHT=False)),
    )


def _mask_arg(mask: Optional[torch.Tensor], shape, dummy: torch.Tensor):
    """(tensor, strides) of the mask expanded to (B, Hq, Lq, Lk) with no copy;
    a bool mask is reinterpreted as uint8 (same bytes)."""
    if mask is None:
        return dummy, (0, 0, 0, 0)
    full = mask.expand(shape)
    if full.dtype == torch.bool:
        full = full.view(torch.uint8)
    return full, tuple(full.stride())


def _len_bucket(lq: int, lk: int) -> int:
    return max(lq, lk, 1).bit_length()


def _dropout_args(seed: Optional[torch.Tensor], dropout_p: float, dummy: torch.Tensor):
    """(seed tensor, threshold, 1 / (1 - p)) kernel arguments."""
    if dropout_p > 0:
        return seed, threshold_arg(dropout_p), 1.0 / (1.0 - dropout_p)
    return dummy, 0, 1.0


# ------------------------------------------------------------------ layouts


class _Layout:
    """How the kernels see q/k/v: (B, H, L, D) tensors, or packed
    (total, H, D) sequences delimited by cu_seqlens (VARLEN). For packed
    inputs the batch stride is 0 (the kernels add the sequence's start
    token instead), L is the longest sequence, and the lse is (H, total)."""

    def __init__(self, q, k, q_lengths, kv_lengths, cu_q=None, cu_k=None, max_q=0, max_k=0):
        self.varlen = cu_q is not None
        if self.varlen:
            self.B = cu_q.numel() - 1
            self.Hq, self.Hkv, self.D = q.shape[1], k.shape[1], q.shape[2]
            self.Lq, self.Lk = max_q, max_k
            self.lens = (cu_q, cu_k)
            self.lse_shape = (self.Hq, q.shape[0])
        else:
            self.B, self.Hq, self.Lq, self.D = q.shape
            self.Hkv, self.Lk = k.shape[1], k.shape[2]
            self.lens = (q_lengths, kv_lengths)
            self.lse_shape = (self.B, self.Hq, self.Lq)

    def strides(self, t: torch.Tensor) -> tuple:
        """(batch, head, token) strides of q/k/v/out-like tensors."""
        if self.varlen:
            return (0, t.stride(1), t.stride(0))
        return (t.stride(0), t.stride(1), t.stride(2))

    def lse_strides(self) -> tuple:
        """(batch, head) strides of lse/delta (tokens are contiguous)."""
        if self.varlen:
            return (0, self.lse_shape[1])
        return (self.Hq * self.Lq, self.Lq)

    def variant_args(self, variants, q) -> VariantArgs:
        return VariantArgs(variants, q, self.B, self.Hq, self.Lq, self.Lk, q)

    def meta(self, q, causal, mask, dropout_p, var: VariantArgs) -> dict:
        if self.varlen:
            return _kernel_meta(q, causal, None, None, None, dropout_p, varlen=True, var=var)
        return _kernel_meta(q, causal, mask, *self.lens, dropout_p, var=var)


# ------------------------------------------------------------------ forward


@on_device_of("q")
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: Optional[torch.Tensor], q_lengths: Optional[torch.Tensor],
                  kv_lengths: Optional[torch.Tensor], seed: Optional[torch.Tensor],
                  causal: bool, scale: float, dropout_p: float = 0.0,
                  deterministic: bool = False, variants=None):
    """(out, lse); variants: a KernelVariants or None (module docstring)."""
    return _forward(q, k, v, mask, seed, causal, scale, dropout_p,
                    _Layout(q, k, q_lengths, kv_lengths), deterministic, variants)


@on_device_of("q")
def attention_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         max_seqlen_q: int, max_seqlen_k: int, seed: Optional[torch.Tensor],
                         causal: bool, scale: float, dropout_p: float = 0.0,
                         deterministic: bool = False, variants=None):
    """Packed q (total_q, Hq, D), k/v (total_k, Hkv, D) -> out like q, lse
    (Hq, total_q). Variants per sequence: off = kv_len_b - q_len_b for the
    window, ALiBi and causal, and relative positions j - i - off too;
    alibi_slopes (B or 1, Hq) with B the number of sequences."""
    layout = _Layout(q, k, None, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return _forward(q, k, v, None, seed, causal, scale, dropout_p, layout, deterministic,
                    variants)


def _forward(q, k, v, mask, seed, causal, scale, dropout_p, lay: _Layout, deterministic,
             variants=None):
    out = torch.empty_like(q)  # keeps q's memory layout (e.g. B, L, H, D)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.empty(lay.lse_shape, dtype=lse_dtype, device=q.device)
    if out.numel() == 0 or lay.B == 0 or lay.Lq == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    if lay.varlen and lay.Lk == 0:  # every sequence is empty of keys
        return out.zero_(), lse.fill_(float("-inf"))
    B, Hq, Hkv, Lq, Lk = lay.B, lay.Hq, lay.Hkv, lay.Lq, lay.Lk
    m, m_strides = _mask_arg(mask, (B, Hq, Lq, Lk), q)
    ql, kvl = (t if t is not None else q for t in lay.lens)
    var = lay.variant_args(variants, q)
    meta = lay.meta(q, causal, mask, dropout_p, var)
    if not lay.varlen:
        block_n = _DECODE_BLOCK_N if q.device.type == "cuda" and not triton_interpret() else 16
        n_splits = decode.split_kv_plan(q, k, dropout_p, block_n)
        if n_splits:
            return decode.decode_fwd(q, k, v, m, m_strides, *lay.lens, scale, meta, n_splits,
                                     block_n, var)
    seed_t, threshold, drop_scale = _dropout_args(seed, dropout_p, q)
    args = (q, k, v, out, lse, m, ql, kvl, seed_t, *var.pointers,
            *lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(out),
            *m_strides, *lay.lse_strides(), var.stride_ab,
            Hq, Hq // Hkv, Lq, Lk, lay.D, scale * fwd.LOG2E.value, threshold, drop_scale,
            _len_bucket(Lq, Lk), *var.scalars)
    _launch("fwd", lambda bm, bn: (triton.cdiv(Lq, bm), Hq, B), args, meta, q.device,
            deterministic)
    return out, lse


# ----------------------------------------------------------------- backward


@on_device_of("q")
def attention_bwd(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
                  k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  mask: Optional[torch.Tensor], q_lengths: Optional[torch.Tensor],
                  kv_lengths: Optional[torch.Tensor], seed: Optional[torch.Tensor],
                  causal: bool, scale: float, dropout_p: float, mask_grad: bool,
                  deterministic: bool = False, variants=None, rel_grad: bool = False):
    """(dq, dk, dv, dmask), and drel after them when `variants` (a
    KernelVariants) is passed; dmask has the mask's shape and dtype when
    mask_grad, else shape (0,); drel: see the module docstring.

    The bias gradient is written in full, (B, Hq, Lq, Lk) in float32
    (float64 for float64 inputs), then summed over the mask's broadcast
    dims: O(B Hq Lq Lk) extra memory, spent only when a float mask requires
    grad. Tiles the kernels skip keep their zeros.
    """
    lay = _Layout(q, k, q_lengths, kv_lengths)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    want_dbias = mask_grad and mask is not None and mask.dtype != torch.bool
    dbias = (torch.zeros((lay.B, lay.Hq, lay.Lq, lay.Lk), dtype=acc_dtype, device=q.device)
             if want_dbias else None)
    dq, dk, dv, drel = _backward(dout, dlse, q, k, v, out, lse, mask, seed, causal, scale,
                                 dropout_p, dbias, lay, deterministic, variants, rel_grad)
    grads = (dq, dk, dv, _reduce_dbias(dbias, mask, want_dbias, q))
    return grads if variants is None else (*grads, drel)


@on_device_of("q")
def attention_varlen_bwd(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor,
                         k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                         seed: Optional[torch.Tensor], causal: bool, scale: float,
                         dropout_p: float, deterministic: bool = False, variants=None,
                         rel_grad: bool = False):
    """(dq, dk, dv) of attention_varlen_fwd, and drel after them when
    `variants` is passed (module docstring)."""
    layout = _Layout(q, k, None, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    dq, dk, dv, drel = _backward(dout, dlse, q, k, v, out, lse, None, seed, causal, scale,
                                 dropout_p, None, layout, deterministic, variants, rel_grad)
    return (dq, dk, dv) if variants is None else (dq, dk, dv, drel)


def _backward(dout, dlse, q, k, v, out, lse, mask, seed, causal, scale, dropout_p, dbias,
              lay: _Layout, deterministic: bool, variants=None, rel_grad: bool = False):
    """(dq, dk, dv, drel); drel is (0,) unless rel_grad and a relative bias."""
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    var = lay.variant_args(variants, q)
    want_drel = rel_grad and var.flags["REL_BIAS"]
    B, Hq, Hkv, Lq, Lk, D = lay.B, lay.Hq, lay.Hkv, lay.Lq, lay.Lk, lay.D
    drel = (torch.zeros((Hq, 2 * var.rel_radius + 1), dtype=acc_dtype, device=q.device)
            if want_drel else q.new_empty((0,), dtype=acc_dtype))
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0 or lay.B == 0 or lay.Lq == 0 or lay.Lk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), drel
    meta = lay.meta(q, causal, mask, dropout_p, var)
    seed_t, threshold, drop_scale = _dropout_args(seed, dropout_p, q)
    m, m_strides = _mask_arg(mask, (B, Hq, Lq, Lk), q)
    ql, kvl = (t if t is not None else q for t in lay.lens)
    has_dlse = dlse is not None
    dlse = dlse.contiguous() if has_dlse else lse

    # delta has lse's layout; packed rows are one batch of total_q tokens.
    delta = torch.empty(lay.lse_shape, dtype=acc_dtype, device=q.device)
    pre_b, pre_l = (1, lay.lse_shape[1]) if lay.varlen else (B, Lq)
    bwd.attention_bwd_preprocess_kernel[(triton.cdiv(pre_l, _PRE_BLOCK_M), Hq, pre_b)](
        out, dout, dlse, delta, *lay.strides(out), *lay.strides(dout),
        Hq, pre_l, D,
        BLOCK_D=meta["BLOCK_D"], HAS_DLSE=has_dlse, ACC_DTYPE=meta["ACC_DTYPE"],
        BLOCK_M=_PRE_BLOCK_M)

    common_strides = (*lay.strides(q), *lay.strides(k), *lay.strides(v), *lay.strides(dout))
    qk_scale = scale * fwd.LOG2E.value
    bucket = _len_bucket(Lq, Lk)
    ql_kvl_seed = (ql, kvl, seed_t, *var.pointers)
    tail = (Lq, Lk, D, qk_scale, scale, threshold, drop_scale, bucket, *var.scalars)

    args = (q, k, v, dout, lse, delta, dk, dv, m, *ql_kvl_seed, *common_strides,
            *lay.strides(dk), *lay.strides(dv), *m_strides, *lay.lse_strides(), var.stride_ab,
            Hkv, Hq // Hkv, *tail)
    _launch("bwd_kv", lambda bm, bn: (triton.cdiv(Lk, bn), Hkv, B), args, meta, q.device,
            deterministic)

    # Per-position sums of the score gradient: one zero-filled row per
    # (b, h, query tile) for the smallest BLOCK_M any config may use, long
    # enough for the positions of any query tile (see rel_carry_step).
    drel_tiles = drel_width = 0
    if want_drel:
        bm_min, bm_max, bn_max = _tile_bounds("bwd_q", q)
        drel_tiles = triton.cdiv(Lq, bm_min)
        drel_width = Lk + bm_max + 2 * bn_max
    drel_rows = torch.zeros((B, Hq, drel_tiles, drel_width) if want_drel else (1,),
                            dtype=acc_dtype, device=q.device)
    want_dbias = dbias is not None
    args = (q, k, v, dout, lse, delta, dq, dbias if want_dbias else q, m, *ql_kvl_seed,
            drel_rows, *common_strides, *lay.strides(dq), *m_strides, *lay.lse_strides(),
            var.stride_ab, drel_tiles, drel_width, Hq, Hq // Hkv, *tail)
    bm, _ = _launch("bwd_q", lambda bm, bn: (triton.cdiv(Lq, bm), Hq, B), args,
                    dict(meta, STORE_DBIAS=want_dbias, STORE_DREL=want_drel), q.device,
                    deterministic)
    if want_drel:  # sum the rows per relative position, in a fixed order
        R = var.rel_radius
        bwd.attention_bwd_drel_reduce_kernel[(triton.cdiv(2 * R + 1, _DREL_BLOCK), Hq)](
            drel_rows, drel, ql, kvl, B, Hq, triton.cdiv(Lq, bm), drel_tiles, drel_width,
            Lq, Lk, R, bm, VARLEN=lay.varlen, ACC_DTYPE=meta["ACC_DTYPE"], BLOCK=_DREL_BLOCK)
    return dq, dk, dv, drel


def _reduce_dbias(dbias, mask, want_dbias, q):
    """Sum the full bias gradient over the dims the mask broadcasts over."""
    if not want_dbias:
        return q.new_empty((0,))
    dims = [d for d in range(4) if mask.shape[d] == 1 and dbias.shape[d] != 1]
    if dims:
        dbias = dbias.sum(dim=dims, keepdim=True)
    return dbias.to(mask.dtype)
