"""Counter-based dropout randomness for Triton kernels.

Bit-exact mirror of fastattn/_rng.py (read that file for the scheme): a
dropout decision is a pure function of (seed, row, col), so a backward
kernel regenerates the forward's mask and every backend agrees. All values
here are uint32 and every operation wraps modulo 2**32, which is exactly the
``& 0xFFFFFFFF`` after each step of the PyTorch version.

Typical use inside a kernel:

    seed_lo, seed_hi = load_seed(SEED)           # once per program
    a, b = row_keys(seed_lo, seed_hi, rows)       # once per row (vector of rows)
    keep = dropout_keep(a[:, None], b[:, None], cols[None, :], threshold)

``threshold`` is the int32 that ``threshold_arg(p)`` returns on the host
(the uint32 threshold of _rng.dropout_threshold, reinterpreted as int32 so
that Triton always passes it as a 32-bit scalar).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import _rng

_MUL_1: tl.constexpr = tl.constexpr(_rng.MIX_MUL_1)
_MUL_2: tl.constexpr = tl.constexpr(_rng.MIX_MUL_2)
_GOLDEN: tl.constexpr = tl.constexpr(_rng.GOLDEN)


def threshold_arg(p: float) -> int:
    """_rng.dropout_threshold(p) as the int32 with the same 32 bits."""
    t = _rng.dropout_threshold(p)
    return t - 2**32 if t >= 2**31 else t


@triton.jit
def mix32(x):
    """The lowbias32 hash of _rng._mix32; `x` is uint32 (scalar or block)."""
    x = x ^ (x >> 16)
    x = x * tl.full([], _MUL_1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], _MUL_2, tl.uint32)
    x = x ^ (x >> 16)
    return x


@triton.jit
def load_seed(seed_ptr):
    """Low and high 32-bit words (uint32) of the int64 seed at `seed_ptr`."""
    seed = tl.load(seed_ptr)
    seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    seed_hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return seed_lo, seed_hi


@triton.jit
def row_keys(seed_lo, seed_hi, row):
    """Per-row keys (a, b) for integer `row` (int32 or int64, >= 0); only its
    low 32 bits count, as in _rng.row_keys."""
    r = (row.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    a = mix32(seed_lo ^ mix32(seed_hi ^ mix32(r)))
    b = mix32(a ^ tl.full([], _GOLDEN, tl.uint32))
    return a, b


@triton.jit
def dropout_bits(a, b, col):
    """The uint32 random word of element (row, col), from that row's keys."""
    c = (col.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    return mix32(mix32(c ^ a) ^ b)


@triton.jit
def dropout_keep(a, b, col, threshold):
    """True where the element is kept; `threshold` from threshold_arg(p)."""
    return dropout_bits(a, b, col) >= threshold.to(tl.uint32, bitcast=True)
