"""The ``fastattn`` logger: what runs, and every slow path, said once.

- DEBUG names the backend of each call (``debug_backend``). Only formatted
  when DEBUG is enabled, so the cost per call is one level check.
- A WARNING, once per cause, when a call leaves fastattn's fast kernels:
  ``auto`` serving with the plain-PyTorch ``reference`` backend, or a
  drop-in handing a call to torch (``warn_once``). The message says why and
  how to avoid it; later calls with the same cause stay quiet.

Nothing is logged while torch.compile traces: a trace is not a call.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("fastattn")

_warned: set[str] = set()


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def warn_once(cause: str, message: str, *args) -> None:
    """WARNING `message % args` the first time `cause` happens in this process."""
    if _tracing() or cause in _warned:
        return
    _warned.add(cause)
    log.warning(message, *args)


def info(message: str, *args) -> None:
    log.info(message, *args)


def info_once(cause: str, message: str, *args) -> None:
    """INFO `message % args` the first time `cause` happens in this process:
    a choice worth knowing that is not a slow path (auto passing over a
    backend that cannot serve one call's features)."""
    if _tracing() or cause in _warned:
        return
    _warned.add(cause)
    log.info(message, *args)


def debug_backend(op: str, backend: str) -> None:
    """DEBUG: which backend serves one call of `op`."""
    if not _tracing() and log.isEnabledFor(logging.DEBUG):
        log.debug("%s: backend %s", op, backend)


def reset_for_tests() -> None:
    """Forget which causes were already reported (tests check the first report)."""
    _warned.clear()
