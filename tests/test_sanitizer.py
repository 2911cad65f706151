"""compute-sanitizer memcheck and racecheck over every CUDA kernel (GPU only).

Runs dev/sanitize_kernels.py (each kernel of the cuda and triton backends
once, at small odd shapes, results checked against fastattn.reference)
under `compute-sanitizer --tool memcheck|racecheck --error-exitcode 1`: an
out-of-bounds or misaligned access, a shared-memory race hazard, or a wrong
result fails the test. Skipped without a CUDA device, without both CUDA
backends, or without compute-sanitizer (looked up on PATH, in
$CUDA_HOME/bin and /usr/local/cuda/bin). Each run takes about a minute or
two on a fresh Triton cache (its kernels compile under the sanitizer).
The script itself is also run on CPU (the cpu backend, no sanitizer), so
that its cases and its checks are exercised where no GPU is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastattn import _backends

from helpers import HAS_CUDA

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dev" / "sanitize_kernels.py"
TIMEOUT_S = 240  # per tool; a hang guard, the runs take far less


def _find_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base:
            path = Path(base) / "bin" / "compute-sanitizer"
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


SANITIZER = _find_sanitizer()


def _unavailable() -> str:
    """Why the script cannot cover both CUDA backends here (empty if it can)."""
    reasons = []
    for backend in ("cuda", "triton"):
        for family in ("attention", "norm"):
            why = _backends.unavailable_reason(backend, family, torch.device("cuda"))
            if why:
                reasons.append(f"{backend} {family}: {why}")
    return "; ".join(reasons)


def _load_script():
    spec = importlib.util.spec_from_file_location("sanitize_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _expected_calls() -> int:
    return len(list(_load_script().calls("cuda", ["native", "triton"])))


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="compute-sanitizer checks CUDA kernels: no CUDA device")
@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not found on PATH, in "
                    "$CUDA_HOME/bin or /usr/local/cuda/bin")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool):
    why = _unavailable()
    if why:
        pytest.skip(f"the script runs the cuda and triton backends: {why}")
    cmd = [
        SANITIZER, "--tool", tool, "--error-exitcode", "1",
        # Triton compiles with ptxas in child processes: nothing to check there.
        "--target-processes", "application-only",
        # torch and Triton probe the driver with calls that may fail by design;
        # those are no kernel errors, and a failed launch raises in the script.
        "--report-api-errors", "no",
        sys.executable, str(SCRIPT),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("TRITON_INTERPRET", None)
    # Own session, so that a timeout ends the sanitizer and its python child.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"compute-sanitizer --tool {tool} did not finish in {TIMEOUT_S} s; "
                    f"output so far:\n{_tail(out)}")
    assert proc.returncode == 0, (
        f"compute-sanitizer --tool {tool} exit status {proc.returncode}:\n{_tail(out)}")
    # Guard against a vacuous pass: the tool ran to its summary (racecheck
    # may count warnings, hazards it does not rate as errors), and so did
    # every call of the script.
    summary = r"^=+ (ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: \d+ hazards? displayed \(0 errors)"
    assert re.search(summary, out, re.MULTILINE), (
        f"no clean compute-sanitizer summary:\n{_tail(out)}")
    n = _expected_calls()
    assert re.search(rf"^{n} of {n} calls agree", out, re.MULTILINE), (
        f"the script did not report all {n} calls:\n{_tail(out)}")


def test_the_script_on_cpu():
    # The same calls with the cpu backend against the same references: the
    # script's own logic (inputs, pinned dropout seeds, variants, judging)
    # must agree with fastattn.reference before a GPU ever runs it.
    if _backends.unavailable_reason("cpu", "attention", torch.device("cpu")):
        pytest.skip("no compiled cpu kernels")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--backends", "native"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{_tail(out)}"
    n = sum(1 for _ in _load_script().calls("cpu", ["native"]))
    assert re.search(rf"^{n} of {n} calls agree", out, re.MULTILINE), _tail(out)
