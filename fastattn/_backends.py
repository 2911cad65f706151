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

import importlib.machinery
import importlib.util
import os
import sys

import torch

from . import _extension, _log

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


def extension_error() -> str:
    """Empty if the compiled kernels are loaded (built on first use if need
    be: fastattn/_extension.py), else why not, with the fix."""
    return _extension.status().error


_triton_found: list[bool] = []


def triton_error() -> str:
    """Empty if triton is installed (found without importing it: the import
    costs a second, and CPU-only users may never need it)."""
    if not _triton_found:
        _triton_found.append(importlib.util.find_spec("triton") is not None)
    return "" if _triton_found[0] else "triton is not installed (pip install triton)"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_native_errors: dict[tuple[str, str], str] = {}


def _native_error(family: str, dispatch_key: str) -> str:
    """Empty if the compiled kernels of `family` are registered for
    `dispatch_key` ("CPU", "CUDA"), else why not. Computed once per pair."""
    key = (family, dispatch_key)
    if key not in _native_errors:
        why = extension_error()
        if not why:
            name = NATIVE_OPS[family]
            if not torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key):
                why = ("fastattn's kernels were built without CUDA" if dispatch_key == "CUDA"
                       else f"fastattn's kernels have no {dispatch_key} kernel for {family}")
        _native_errors[key] = why
    return _native_errors[key]


# Constants to torch.compile (dynamo cannot trace the dispatcher query nor
# importlib): what torch.compiler.assume_constant_result sets, without
# importing dynamo at import time (it costs a second).
_native_error._dynamo_marked_constant = True
triton_error._dynamo_marked_constant = True


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
        why = triton_error()
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


# Backend choices already made: (requested, FASTATTN_BACKEND, family,
# device type, dtype, TRITON_INTERPRET on CPU) -> backend, for choices of a
# kernel backend without call limits (the reference backend is never
# cached: choosing it warns, once per cause, and tests reset that). Valid
# while the objects the kernels' availability is computed from are the
# same (_resolved_under); tests replace them.
_resolved: dict = {}
_resolved_under: list = [None, None]


def _resolution_key(requested: str, family: str, device: torch.device, dtype):
    if _resolved_under[0] is not _native_errors or _resolved_under[1] is not _extension._status:
        _resolved.clear()
        _resolved_under[:] = [_native_errors, _extension._status]
    env = os.environ.get("FASTATTN_BACKEND")
    interp = os.environ.get("TRITON_INTERPRET") if device.type == "cpu" else None
    return (requested, env, family, device.type, dtype, interp)


def resolve(requested: str, family: str, device: torch.device,
            dtype: torch.dtype | None = None, call_limits=None) -> str:
    """The backend that will run; raises ValueError if `requested` (the
    argument, or FASTATTN_BACKEND for "auto") cannot serve the call.

    call_limits(backend) -> str: why an available backend cannot serve this
    particular call (features beyond device and dtype), "" if it can; `auto`
    skips such backends. When `auto` can only serve with the slow reference
    backend, the fastattn logger warns once with why the others cannot.

    Without call_limits the answer is cached (a dict lookup on later
    calls; FASTATTN_BACKEND is read on every call)."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str, got {type(requested).__name__}")
    if call_limits is not None or torch.compiler.is_compiling():
        return _resolve(requested, family, device, dtype, call_limits)
    key = _resolution_key(requested, family, device, dtype)
    chosen = _resolved.get(key)
    if chosen is None:
        chosen = _resolve(requested, family, device, dtype, None)
        if chosen != "reference":
            _resolved[key] = chosen
    return chosen


def fast_resolve(requested, family: str, device: torch.device, dtype: torch.dtype):
    """resolve() for the compiled fast path (csrc/fast_path.cpp, which
    caches the answer): the backend, or None where resolve raises (the
    Python path then raises it)."""
    try:
        return resolve(requested, family, device, dtype)
    except (TypeError, ValueError):
        return None


def fast_module():
    """The compiled module of the fast path (fastattn._C, or the kernels
    built on first use, imported as the Python module they also are), or
    None while no compiled kernels are loaded. Never loads or builds them."""
    status = _extension._status
    if status is None or not status.loaded:
        return None
    module = sys.modules.get("fastattn._C")
    if module is not None:
        return module
    module = sys.modules.get(_extension.JIT_MODULE)
    if module is not None:
        return module
    suffix = importlib.machinery.EXTENSION_SUFFIXES[-1]  # ".so": what cpp_extension builds
    path = os.path.join(_extension.cache_dir(), _extension.JIT_MODULE + suffix)
    if not os.path.isfile(path):
        return None
    try:  # already loaded as a library (torch.ops.load_library): this only runs its init
        spec = importlib.util.spec_from_file_location(_extension.JIT_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    sys.modules[_extension.JIT_MODULE] = module
    return module


def _resolve(requested: str, family: str, device: torch.device, dtype, call_limits) -> str:
    from_env = requested == "auto"
    if from_env:
        requested = env_backend()

    def why_not(backend: str) -> str:
        return (unavailable_reason(backend, family, device, dtype)
                or (call_limits(backend) if call_limits is not None else ""))

    if requested == "auto":
        reasons = []
        passed_over = []  # available backends whose call limits rule this call out
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            why = why_not(candidate)
            if not why:
                if candidate == "reference":
                    _warn_reference(family, device, dtype, reasons)
                elif passed_over:
                    _log.info_once(f"passed-over:{family}:{candidate}:{passed_over}",
                                   "fastattn: %s on %s: auto passes over %s; %s serves it",
                                   family, device.type, "; ".join(passed_over), candidate)
                return candidate
            reasons.append(f"{candidate}: {why}")
            if not unavailable_reason(candidate, family, device, dtype):
                passed_over.append(f"{candidate} ({why})")
        _warn_reference(family, device, dtype, reasons)
        return "reference"
    why = why_not(requested)
    if why:
        source = "FASTATTN_BACKEND" if from_env else "backend"
        raise ValueError(f"{source}={requested!r} cannot serve this {family} call: {why}")
    return requested


def _warn_reference(family: str, device: torch.device, dtype, reasons: list[str]) -> None:
    # The missing kernels' own warning (fastattn/_extension.py) already gave
    # their cause and fix in full.
    no_kernels = extension_error()
    reasons = [r.replace(no_kernels, "no compiled kernels (see the warning above)")
               if no_kernels else r for r in reasons]
    _log.warn_once(f"reference:{family}:{device.type}:{dtype}",
                   "fastattn: %s on %s %s runs on the slow plain-PyTorch reference backend "
                   "(%s); python -m fastattn.info shows what is available", family, device.type,
                   str(dtype).replace("torch.", ""),
                   "; ".join(reasons) or "no compiled backend for this device")


def cpu_isa() -> str:
    """The instruction-set variant the CPU kernels run, or why none."""
    if _native_error("norm", "CPU"):
        return "none (no compiled kernels)"
    return torch.ops.fastattn.cpu_isa_native()


def backends() -> dict[str, dict[str, str]]:
    """Per backend and op family: "available" or the reason it is not.

    Reported for the device a user would run on: CUDA if present, else CPU.
    Two more entries: "auto", the backend auto picks per family there
    (FASTATTN_BACKEND honoured, float32), and "build": where the compiled
    kernels come from ("kernels"), the torch they were built for
    ("built_for"), the CUDA architectures ("cuda_archs") and the CPU
    instruction-set variant ("cpu_isa").
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, dict[str, str]] = {}
    for backend in BACKENDS:
        report[backend] = {
            family: (unavailable_reason(backend, family, device) or "available")
            for family in OP_BACKENDS
        }
    auto = {}
    for family in OP_BACKENDS:
        try:
            auto[family] = resolve("auto", family, device, torch.float32)
        except ValueError as exc:  # FASTATTN_BACKEND names a backend that cannot serve it
            auto[family] = f"error: {exc}"
    report["auto"] = auto
    status = _extension.status()
    info = status.build_info or {}
    report["build"] = {
        "kernels": status.origin if status.loaded else f"none: {status.error}",
        "built_for": (f"torch {info.get('torch')}, CUDA {info.get('cuda') or 'none'}"
                      if info else "unknown"),
        "cuda_archs": info.get("cuda_archs") or "none (CPU kernels only)",
        "cpu_isa": cpu_isa(),
    }
    return report
