"""Which backend serves a call.

Backends:
  triton     Triton kernels (fastattn/triton/); CUDA tensors, or CPU tensors
             under the Triton interpreter (TRITON_INTERPRET=1).
  cuda       compiled CUDA kernels in fastattn._C (CUDA tensors).
  cpu        compiled C++ kernels in fastattn._C (CPU tensors).
  reference  plain PyTorch (fastattn.reference); always available.

Each op family lists the backends that implement it (``OP_BACKENDS``); a
compiled backend is further available only if fastattn._C registered a
kernel for that family's native op on the device's dispatch key. ``auto``
(or the FASTATTN_BACKEND environment variable, which overrides it) picks the
first available backend in the family's preference order for the device.
"""

from __future__ import annotations

import functools
import os

import torch

from . import _log

BACKENDS = ("triton", "cuda", "cpu", "reference")

# op family -> native op in fastattn._C that the cpu/cuda backends call.
NATIVE_OPS = {
    "norm": "fastattn::norm_fwd_native",
    "attention": "fastattn::attention_fwd_native",
}

# op family -> backends with an implementation (compiled ones still need _C).
OP_BACKENDS = {
    "norm": ("triton", "cuda", "cpu", "reference"),
    "attention": ("triton", "cuda", "cpu", "reference"),
}

# Preference of `auto` per device type. On CUDA it is provisional until GPU
# measurements decide it (README, "Performance"): Triton first, because its
# kernels are the ones exercised end to end by the test suite (through the
# interpreter), while the CUDA kernels have so far only been compiled.
AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}


@functools.lru_cache(maxsize=None)
def _load_extension() -> tuple[bool, str]:
    try:
        import fastattn._C  # noqa: F401  (loading registers the native ops)
    except ImportError as exc:  # not built, or built against another torch
        return False, f"fastattn._C could not be imported ({exc})"
    return True, ""


def extension_error() -> str:
    """Empty if fastattn._C loaded, else why not."""
    return _load_extension()[1]


@functools.lru_cache(maxsize=None)
def _triton_error() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return ""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
# A constant to torch.compile: dynamo cannot trace the dispatcher query.
@torch.compiler.assume_constant_result
def _native_error(family: str, dispatch_key: str) -> str:
    ok, why = _load_extension()
    if not ok:
        return why
    name = NATIVE_OPS.get(family)
    if name is None:
        return f"no compiled {family} kernels exist yet"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key):
        if dispatch_key == "CUDA":
            return "fastattn._C was built without CUDA kernels"
        return f"fastattn._C has no {dispatch_key} kernel for {family}"
    return ""


def unavailable_reason(backend: str, family: str, device: torch.device,
                       dtype: torch.dtype | None = None) -> str:
    """Empty string if `backend` can serve `family` on `device`, else why not."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}"
    if backend not in OP_BACKENDS[family]:
        return f"the {backend} backend does not implement {family}"
    if backend == "reference":
        return ""
    if backend == "triton":
        why = _triton_error()
        if why:
            return why
        if device.type == "cpu" and not triton_interpret():
            return "triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
        if device.type == "cpu" and dtype == torch.bfloat16:
            # The interpreter's bf16 tl.dot returns garbage (values ~1e9).
            return "the Triton interpreter (TRITON_INTERPRET=1) computes bfloat16 wrongly"
        if device.type not in ("cpu", "cuda"):
            return f"triton does not run on {device.type} tensors"
        if dtype == torch.float64 and device.type != "cpu":
            return "triton on GPU serves float16, bfloat16 and float32"
        return ""
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got {device.type}"
        if dtype == torch.float64:
            return "the cuda backend serves float16, bfloat16 and float32"
        return _native_error(family, "CUDA")
    # cpu
    if device.type != "cpu":
        return f"the cpu backend needs CPU tensors, got {device.type}"
    return _native_error(family, "CPU")


def check_name(backend) -> str:
    """`backend` must name a backend (or "auto"): for arguments stored now and
    resolved later (swap_modules), so a typo fails at once."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    return backend


def env_backend() -> str:
    """FASTATTN_BACKEND ("auto" when unset or empty); a value that names no
    backend raises ValueError naming the variable."""
    value = os.environ.get("FASTATTN_BACKEND", "") or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ValueError(f"the environment variable FASTATTN_BACKEND={value!r} names no "
                         f"backend; expected one of {BACKENDS + ('auto',)}")
    return value


def resolve(requested: str, family: str, device: torch.device,
            dtype: torch.dtype | None = None, call_limits=None) -> str:
    """The backend that will run; raises ValueError if `requested` (the
    argument, or FASTATTN_BACKEND for "auto") cannot serve the call.

    call_limits(backend) -> str: why an available backend cannot serve this
    particular call (features beyond device and dtype), "" if it can; `auto`
    skips such backends. When `auto` can only serve with the slow reference
    backend, the fastattn logger warns once with why the others cannot."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str, got {type(requested).__name__}")
    from_env = requested == "auto"
    if from_env:
        requested = env_backend()

    def why_not(backend: str) -> str:
        return (unavailable_reason(backend, family, device, dtype)
                or (call_limits(backend) if call_limits is not None else ""))

    if requested == "auto":
        reasons = []
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            why = why_not(candidate)
            if not why:
                if candidate == "reference":
                    _warn_reference(family, device, dtype, reasons)
                return candidate
            reasons.append(f"{candidate}: {why}")
        _warn_reference(family, device, dtype, reasons)
        return "reference"
    why = why_not(requested)
    if why:
        source = "FASTATTN_BACKEND" if from_env else "backend"
        raise ValueError(f"{source}={requested!r} cannot serve this {family} call: {why}")
    return requested


def _warn_reference(family: str, device: torch.device, dtype, reasons: list[str]) -> None:
    _log.warn_once(f"reference:{family}:{device.type}:{dtype}",
                   "fastattn: %s on %s %s runs on the slow plain-PyTorch reference backend "
                   "(%s). %s", family, device.type, str(dtype).replace("torch.", ""),
                   "; ".join(reasons) or "no compiled backend for this device",
                   _fix_hint(reasons))


def _fix_hint(reasons: list[str]) -> str:
    if any("fastattn._C" in r for r in reasons):
        return ("Rebuild the extension for this torch: pip install --no-build-isolation "
                "--force-reinstall fastattn (python -m fastattn.info shows the cause).")
    return "python -m fastattn.info shows what is available."


def backends() -> dict[str, dict[str, str]]:
    """Per backend and op family: "available" or the reason it is not.

    Reported for the device a user would run on: CUDA if present, else CPU.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, dict[str, str]] = {}
    for backend in BACKENDS:
        report[backend] = {
            family: (unavailable_reason(backend, family, device) or "available")
            for family in OP_BACKENDS
        }
    return report
