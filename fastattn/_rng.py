"""Counter-based dropout randomness shared by every backend.

A dropout decision is a pure function of ``(seed, row, col)``: no random
state lives in a kernel, the backward pass regenerates exactly the forward's
mask, and every backend (Triton, CUDA, C++ CPU, the PyTorch reference)
draws the *same* mask for the same seed. Tests use that to compare a kernel
with dropout against the reference fed the identical mask.

The bits come from ``mix32``, a 32-bit integer hash (xor-shift /
multiply rounds, the "lowbias32" constants). It is a bijection on 32-bit
words, so within one row distinct columns get distinct words:

    a    = mix32(seed_lo ^ mix32(seed_hi ^ mix32(row)))   # once per row
    b    = mix32(a ^ 0x9E3779B9)
    bits = mix32(mix32(col ^ a) ^ b)                      # per element
    keep = bits >= threshold,   threshold = floor(p * 2**32)

so ``P(keep) = 1 - threshold / 2**32`` (p rounded to 2**-32), kept values are
scaled by ``1 / (1 - p)``. Rows and columns are logical indices of the
operation (for a norm: flattened row, hidden index), never memory offsets,
so the mask does not depend on strides. All arithmetic is modulo 2**32.

The seed is an int64 tensor of shape (1,) on the data's device, drawn from
torch's default generator for that device: ``torch.manual_seed`` makes
dropout reproducible and no host/device synchronisation is needed.
"""

from __future__ import annotations

import torch

MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
GOLDEN = 0x9E3779B9
_MASK32 = 0xFFFFFFFF
# Seeds are drawn in [0, 2**62) so that the int64 never goes negative.
SEED_HIGH = 2**62


def draw_seed(device: torch.device) -> torch.Tensor:
    """One dropout seed from torch's default generator of ``device``."""
    return torch.randint(0, SEED_HIGH, (1,), dtype=torch.int64, device=device)


def dropout_threshold(p: float) -> int:
    """Keep an element iff its 32-bit word is >= this threshold."""
    return min(int(p * 2**32), _MASK32)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # x holds values in [0, 2**32) in int64; multiplications are reduced
    # modulo 2**32 after each step (products stay below 2**63).
    x = x ^ (x >> 16)
    x = (x * MIX_MUL_1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * MIX_MUL_2) & _MASK32
    x = x ^ (x >> 16)
    return x


def row_keys(seed: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row keys (a, b) of the hash, for int64 ``rows``."""
    seed_lo = seed & _MASK32
    seed_hi = (seed >> 32) & _MASK32
    a = _mix32(seed_lo ^ _mix32(seed_hi ^ _mix32(rows & _MASK32)))
    b = _mix32(a ^ GOLDEN)
    return a, b


def dropout_bits(seed: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The 32-bit words (as int64) for broadcastable int64 ``rows``/``cols``."""
    a, b = row_keys(seed, rows)
    return _mix32(_mix32((cols & _MASK32) ^ a) ^ b)


def keep_mask(seed: torch.Tensor | int, n_rows: int, n_cols: int, p: float,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (n_rows, n_cols) mask, True = kept, as every kernel draws it."""
    if isinstance(seed, torch.Tensor):
        seed = int(seed.reshape(-1)[0].item())
    rows = torch.arange(n_rows, dtype=torch.int64, device=device)[:, None]
    cols = torch.arange(n_cols, dtype=torch.int64, device=device)[None, :]
    return dropout_bits(seed, rows, cols) >= dropout_threshold(p)
