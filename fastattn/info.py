"""python -m fastattn.info: what fastattn finds on this machine.

Versions, whether the compiled kernels loaded (and why not), what they were
built for, the CPU instruction-set variant, and per device and op family
the backend that ``auto`` picks (FASTATTN_BACKEND honoured).
``python -m fastattn.info --kernels`` only loads (or builds) the kernels.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

import fastattn
from fastattn import _backends, _extension


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> list[tuple[str, str]]:
    """(label, value) rows; the kernels are loaded (built if need be) first."""
    rows = [("fastattn", fastattn.__version__),
            ("python", platform.python_version()),
            ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
            ("triton", _version("triton")),
            ("transformers", _version("transformers"))]
    status = _extension.status()
    rows.append(("compiled kernels", status.origin if status.loaded else f"none: {status.error}"))
    build = fastattn.backends()["build"]
    rows.append(("  built for", build["built_for"]))
    rows.append(("  CUDA architectures", build["cuda_archs"]))
    rows.append(("  CPU variant", build["cpu_isa"]))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        rows.append(("GPU", torch.cuda.get_device_name(0)))
    for device in devices:
        for family in _backends.OP_BACKENDS:
            for dtype in (torch.float32, torch.bfloat16):
                try:
                    chosen = _backends.resolve("auto", family, torch.device(device), dtype)
                except ValueError as exc:
                    chosen = f"error: {exc}"
                rows.append((f"auto: {family} on {device} {str(dtype)[6:]}", chosen))
    for backend, families in fastattn.backends().items():
        if backend in _backends.BACKENDS:
            for family, why in families.items():
                rows.append((f"{backend}: {family}", why))
    return rows


def main(argv=None) -> int:
    """`--kernels`: only load (or build) the compiled kernels and say where
    they come from; exit status 1 if there are none (run.sh uses it)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--kernels"]:
        status = _extension.status()
        print(f"fastattn kernels: {status.origin}" if status.loaded
              else f"fastattn kernels: none ({status.error})")
        return 0 if status.loaded else 1
    rows = report()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
