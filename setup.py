"""Build of fastattn and its compiled extension fastattn._C.

    pip install --no-build-isolation .     # kernels built now, for the installed torch
    pip install .                          # kernels built on first use (see below)

With torch importable at build time (--no-build-isolation, as for
flash-attention) the C++ CPU kernels are compiled into fastattn._C, and the
CUDA kernels too when torch has CUDA and nvcc is found; the torch they were
built for is recorded in fastattn/_build_info.py. Without torch (pip's
default build isolation) the package is built without fastattn._C but with
the kernel sources, and fastattn compiles them on first use against the
running torch (fastattn/_extension.py). Either way the wheel carries the
sources, so a torch upgrade rebuilds the kernels instead of breaking them.

Environment switches:
    FASTATTN_SKIP_CUDA_BUILD=1    build the CPU kernels only
    FASTATTN_FORCE_CUDA_BUILD=1   build the CUDA kernels even without a visible
                                  GPU (needs a CUDA torch and nvcc)
    TORCH_CUDA_ARCH_LIST          default "8.0;9.0+PTX"
    MAX_JOBS                      parallel compile jobs (ninja)
"""

import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _load_build_config():
    """fastattn/_build.py without importing fastattn (which needs torch)."""
    spec = importlib.util.spec_from_file_location("fastattn_build",
                                                  os.path.join(ROOT, "fastattn", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_config()


def _write_build_info(torch, with_cuda: bool) -> None:
    """fastattn/_build_info.py: what fastattn._C is built for (read at import,
    so an extension of another torch is rebuilt rather than loaded)."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
            "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
            "built": "at install"}
    with open(os.path.join(ROOT, "fastattn", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py: what fastattn._C was built for."""\n\n'
                f"BUILD_INFO = {info!r}\n")


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        stale = os.path.join(ROOT, "fastattn", "_build_info.py")
        if os.path.exists(stale):  # from an earlier build in this checkout: not this wheel's
            os.remove(stale)
        print("fastattn: torch is not importable here (pip's build isolation); building "
              "without fastattn._C: the kernels are compiled on first use. To build them now: "
              "pip install --no-build-isolation .", file=sys.stderr)
        return [], {}

    has_cuda_toolchain = torch.version.cuda is not None and CUDA_HOME is not None
    if build.flag("FASTATTN_FORCE_CUDA_BUILD") and not has_cuda_toolchain:
        raise RuntimeError("FASTATTN_FORCE_CUDA_BUILD=1 needs a CUDA build of torch and nvcc "
                           f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
    # No GPU needs to be visible: the architectures come from TORCH_CUDA_ARCH_LIST.
    want_cuda = has_cuda_toolchain and not build.flag("FASTATTN_SKIP_CUDA_BUILD")
    sources = [os.path.relpath(p, ROOT) for p in build.sources(CSRC, want_cuda)]
    cxx_flags = list(build.CXX_FLAGS)
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", build.DEFAULT_CUDA_ARCHS)
        ext = CUDAExtension("fastattn._C", sources, include_dirs=[CSRC],
                            extra_compile_args={"cxx": cxx_flags + [build.CUDA_DEFINE],
                                                "nvcc": list(build.NVCC_FLAGS)},
                            extra_link_args=list(build.LINK_FLAGS))
    else:
        ext = CppExtension("fastattn._C", sources, include_dirs=[CSRC],
                           extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=list(build.LINK_FLAGS))
    _write_build_info(torch, want_cuda)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

# The benchmark ships as fastattn.bench (its source stays in bench/), and the
# kernel sources as fastattn/_csrc, for building on first use.
CSRC_PACKAGES = ["fastattn._csrc"] + [f"fastattn._csrc.{d}"
                                      for d in ("common", "cpu", "cuda")]
setup(
    packages=(find_packages(include=["fastattn", "fastattn.*"], exclude=["fastattn.bench"])
              + ["fastattn.bench"] + CSRC_PACKAGES),
    package_dir={"fastattn.bench": "bench", "fastattn._csrc": "csrc"},
    package_data={"fastattn.bench": ["*.sh"],
                  **{p: ["*.cpp", "*.h", "*.cu", "*.cuh"] for p in CSRC_PACKAGES}},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
