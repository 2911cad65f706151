"""fastattn's compiled kernels: the extension built at install, or the same
sources built on first use against the running torch.

Where the C++/CUDA kernels come from, in order:

1. ``fastattn._C``, built by ``pip install --no-build-isolation`` (or a
   wheel built that way) for one torch. It is used when the torch it was
   built for (recorded in ``fastattn/_build_info.py``) is the running one;
   an extension of another torch is not even loaded (a C++ ABI mismatch can
   crash rather than fail to import).
2. Otherwise (a plain ``pip install .`` builds in an isolated environment
   without torch, so without kernels; or torch was upgraded since) the same
   sources are compiled on first use with ``torch.utils.cpp_extension.load``
   (ninja) into a cache per torch version, CUDA version and C++ ABI
   (``~/.cache/fastattn``, or ``FASTATTN_CACHE_DIR``), one line on stderr
   saying so and how long it took; later processes load the cached build.
   ``FASTATTN_JIT=0`` turns this off.
3. If neither can be had, the ``fastattn`` logger warns at import, once,
   with the cause and the fix; the Triton and reference backends remain.

``status()`` says which one serves (``python -m fastattn.info`` prints it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from . import _build, _log

# The module name of the kernels built on first use (also a Python module:
# fastattn/_backends.py, fast_module).
JIT_MODULE = "fastattn_kernels"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FIX = ("pip install --no-build-isolation --force-reinstall fastattn (with torch installed "
       "first), or install a C++ compiler and ninja so fastattn can build its kernels itself")


@dataclass(frozen=True)
class Status:
    loaded: bool
    origin: str        # "fastattn._C (built at install)", "built on first use in <dir>", ""
    error: str = ""    # why no compiled kernels, with the fix
    build_info: Optional[dict] = None  # torch/CUDA/archs the kernels were built for


def _torch_tag() -> str:
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return f"torch{torch.__version__}-{cuda}-cxx11abi{abi}-py{sys.version_info[0]}{sys.version_info[1]}"


def _installed_build_info() -> Optional[dict]:
    """What fastattn._C was built for (setup.py writes it), or None."""
    try:
        from . import _build_info
    except ImportError:
        return None
    return dict(_build_info.BUILD_INFO)


def _has_prebuilt() -> bool:
    return importlib.util.find_spec("fastattn._C") is not None


def csrc_dir() -> Optional[str]:
    """The kernel sources: inside the package (wheels), or the checkout's csrc/."""
    for path in (os.path.join(PACKAGE_DIR, "_csrc"), os.path.join(PACKAGE_DIR, "..", "csrc")):
        if os.path.isfile(os.path.join(path, "ops.cpp")):
            return os.path.normpath(path)
    return None


def cache_dir() -> str:
    root = os.environ.get("FASTATTN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastattn")
    from . import __version__
    return os.path.join(root, f"fastattn{__version__}-{_torch_tag()}")


def _with_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME
    return (torch.version.cuda is not None and CUDA_HOME is not None
            and torch.cuda.is_available() and not _build.flag("FASTATTN_SKIP_CUDA_BUILD"))


def build_unavailable_reason() -> str:
    """Empty if the kernels can be built here on first use, else why not."""
    if os.environ.get("FASTATTN_JIT", "1") in ("0", "false", "False"):
        return "FASTATTN_JIT=0 forbids building them on first use"
    if csrc_dir() is None:
        return "the kernel sources are not installed with this fastattn"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401  (the PyPI package puts the binary on PATH lazily)
        except ImportError:
            return "ninja is not installed (pip install ninja)"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++) was found"
    if importlib.util.find_spec("setuptools") is None:  # torch.utils.cpp_extension needs it
        return "setuptools is not installed (pip install setuptools)"
    return ""


def _compile() -> None:
    """Compile the kernels for the running torch into cache_dir() and load
    them (their static registrations add the native ops)."""
    from torch.utils import cpp_extension
    csrc = csrc_dir()
    with_cuda = _with_cuda()
    build_dir = cache_dir()
    os.makedirs(build_dir, exist_ok=True)
    cached = any(f.endswith(".so") for f in os.listdir(build_dir))
    start = time.monotonic()
    if not cached:
        print(f"fastattn: building its C++{'/CUDA' if with_cuda else ''} kernels for torch "
              f"{torch.__version__} (first use; cached in {build_dir}) ...", file=sys.stderr,
              flush=True)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _build.DEFAULT_CUDA_ARCHS)
    cflags = list(_build.CXX_FLAGS) + ([_build.CUDA_DEFINE] if with_cuda else [])
    cpp_extension.load(name=JIT_MODULE, sources=_build.sources(csrc, with_cuda),
                       extra_cflags=cflags, extra_cuda_cflags=list(_build.NVCC_FLAGS),
                       extra_ldflags=list(_build.LINK_FLAGS), extra_include_paths=[csrc],
                       build_directory=build_dir, with_cuda=with_cuda, is_python_module=False,
                       verbose=False)
    if not cached:
        print(f"fastattn: kernels built in {time.monotonic() - start:.0f} s", file=sys.stderr,
              flush=True)


_status: Optional[Status] = None


def status(build: bool = True) -> Status:
    """Load the kernels (building them on first use when `build`); cached."""
    global _status
    if _status is not None:
        return _status
    info = _installed_build_info()
    if not _has_prebuilt():
        why_not_prebuilt = "fastattn was installed without its compiled extension fastattn._C"
    elif not _prebuilt_fits():
        why_not_prebuilt = (f"fastattn._C was built for torch {info.get('torch')}, "
                            f"this is torch {torch.__version__}")
    else:
        try:
            import fastattn._C  # noqa: F401  (loading registers the native ops)
            _status = Status(True, "fastattn._C (built at install)", build_info=info)
            return _status
        except ImportError as exc:
            why_not_prebuilt = f"fastattn._C could not be imported ({exc})"

    why_no_build = build_unavailable_reason()
    if why_no_build:
        return _fail(f"{why_not_prebuilt}, and {why_no_build}")
    if not build:
        return Status(False, "", f"{why_not_prebuilt}; they are built on first use")
    try:
        _compile()
    except Exception as exc:  # compiler errors, a broken toolchain
        return _fail(f"{why_not_prebuilt}, and building it here failed: "
                     f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}")
    _status = Status(True, f"built on first use in {cache_dir()}",
                     build_info={"torch": torch.__version__, "cuda": torch.version.cuda,
                                 "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST", "")
                                 if _with_cuda() else "", "built": "on first use"})
    return _status


def _fail(why: str) -> Status:
    global _status
    _status = Status(False, "", f"{why}. Fix: {FIX}")
    _log.warn_once("extension", "fastattn: no compiled kernels (the cpu and cuda backends are "
                   "unavailable): %s", _status.error)
    return _status


def _prebuilt_fits() -> bool:
    """fastattn._C exists and was built for the running torch (or says nothing)."""
    if not _has_prebuilt():
        return False
    info = _installed_build_info()
    return info is None or info.get("torch") == torch.__version__


def check_at_import() -> None:
    """At import: load fitting prebuilt kernels now; if none fit and none can
    be built on first use either, warn now. (Building waits for first use, so
    the import stays fast.)"""
    if _prebuilt_fits() or build_unavailable_reason():
        status(build=False)
