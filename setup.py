"""Build of fastattn and its compiled extension fastattn._C.

    pip install --no-build-isolation .

builds against the torch already installed (as flash-attention does). The C++
CPU kernels are always built; the CUDA kernels too when the installed torch
has CUDA and nvcc is found. Environment switches:

    FASTATTN_SKIP_CUDA_BUILD=1    build the CPU kernels only
    FASTATTN_FORCE_CUDA_BUILD=1   build the CUDA kernels even without a visible
                                  GPU (needs a CUDA torch and nvcc)
    TORCH_CUDA_ARCH_LIST          default "8.0;9.0+PTX"
    MAX_JOBS                      parallel compile jobs (ninja)
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("fastattn: torch is not installed; building without fastattn._C "
              "(install torch first, then pip install --no-build-isolation .)")
        return [], {}

    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    # No -std flag: torch's BuildExtension adds the standard its headers need.
    # -fno-trapping-math: floating-point exceptions stay masked (as torch
    # leaves them), so gcc may turn the selects of the CPU kernels' loops
    # (clamps, masking, the softmax's exp) into vector blends; without it
    # only AVX-512's masked ops vectorize them and the SSE2/AVX2 variants
    # run those loops scalar (5x slower, measured). Values are unchanged.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    include_dirs = [os.path.join(ROOT, "csrc")]

    has_cuda_toolchain = torch.version.cuda is not None and CUDA_HOME is not None
    if _flag("FASTATTN_FORCE_CUDA_BUILD") and not has_cuda_toolchain:
        raise RuntimeError("FASTATTN_FORCE_CUDA_BUILD=1 needs a CUDA build of torch and nvcc "
                           f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
    # No GPU needs to be visible: the architectures come from TORCH_CUDA_ARCH_LIST.
    want_cuda = has_cuda_toolchain and not _flag("FASTATTN_SKIP_CUDA_BUILD")
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*_binding.cpp")
        nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo",
                      "--expt-relaxed-constexpr", "-Xptxas=--warn-on-spills"]
        ext = CUDAExtension("fastattn._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags + ["-DFASTATTN_WITH_CUDA"],
                                                "nvcc": nvcc_flags},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("fastattn._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["fastattn", "fastattn.*", "bench", "bench.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
