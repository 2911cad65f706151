"""What fastattn's compiled extension is built from, and how.

Shared by setup.py (the extension built at install time) and
fastattn/_extension.py (the same extension built on first use, against the
running torch). Plain Python without imports beyond the standard library,
so setup.py can load it before torch exists.
"""

from __future__ import annotations

import glob
import os

# Sources relative to the csrc/ folder.
CPU_SOURCES = ("*.cpp", "cpu/*.cpp")
CUDA_SOURCES = ("cuda/*.cu", "cuda/*_binding.cpp")

# No -std flag: torch's build helpers add the standard its headers need.
# -fno-trapping-math: floating-point exceptions stay masked (as torch leaves
# them), so gcc may turn the selects of the CPU kernels' loops (clamps,
# masking, the softmax's exp) into vector blends; without it only AVX-512's
# masked ops vectorize them and the SSE2/AVX2 variants run those loops
# scalar (5x slower, measured). Values are unchanged.
CXX_FLAGS = ("-O3", "-fopenmp", "-fno-trapping-math")
LINK_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
              "-Xptxas=--warn-on-spills")
CUDA_DEFINE = "-DFASTATTN_WITH_CUDA"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def sources(csrc: str, with_cuda: bool) -> list[str]:
    """Absolute paths of the sources to compile, sorted."""
    patterns = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    found: list[str] = []
    for pattern in patterns:
        found += glob.glob(os.path.join(csrc, pattern))
    return sorted(found)


def flag(name: str) -> bool:
    """An environment switch: set and not 0/false."""
    return os.environ.get(name, "0") not in ("", "0", "false", "False")
