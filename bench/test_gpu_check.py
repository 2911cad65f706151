"""bench/gpu_check.sh's own logic, without a GPU: its dry mode.

The dry mode runs every step's CPU-side part (the standalone check's CPU
emulation, the kernels this checkout has, the pytest selections collected,
a CPU benchmark); --cheap cuts each to seconds. These tests check the
files it leaves, the summary table, the budget arithmetic and a stop by a
signal. Not collected by default (testpaths = tests):

    pytest bench/test_gpu_check.py              # about a minute on 2 cores
    pytest bench/test_gpu_check.py -m "not slow"  # seconds
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["cuda_check", "build", "tests_cuda", "tests_triton", "tests_guards", "tests_graphs",
         "tests_syncs", "bench"]
# Every file the script may write; the device machine returns at most 8.
ALLOWED = {"summary.txt", "cuda_check.txt", "build.txt", "tests.txt", "bench.txt",
           "bench.json", "bench.md", "attention.png"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout (coreutils)")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def _run(out: Path, *args: str, timeout: float = 170, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args, str(out)], env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _rows(summary: str) -> dict[str, tuple[str, str, str]]:
    """step -> (status, seconds, detail), from the table under its header line."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"step\s+status\s+seconds", line))
    rows = {}
    for line in lines[start + 1:]:
        m = re.match(r"^(\w+)\s+(\S+)\s+(\S+)\s*(.*)$", line)
        if m and m.group(1) in STEPS:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_bad_arguments(tmp_path):
    assert _run(tmp_path, "--bogus").returncode == 2
    assert _run(tmp_path, "--dry", GPU_CHECK_BUDGET="soon").returncode == 2
    assert subprocess.run(["bash", str(SCRIPT)], env=_env(), capture_output=True,
                          text=True).returncode == 2


def test_no_budget_left_skips_every_step(tmp_path):
    """A budget too short for any step: each row says no-time, exit status 1,
    and the summary is still written and printed."""
    (tmp_path / "bench.txt").write_text("left by an earlier run\n")
    (tmp_path / "mine.txt").write_text("not the script's\n")
    proc = _run(tmp_path, "--dry", GPU_CHECK_BUDGET="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert summary in proc.stdout
    rows = _rows(summary)
    assert list(rows) == STEPS
    assert {status for status, _, _ in rows.values()} == {"no-time"}, summary
    assert "budget 1 s" in summary
    # An earlier run's files are removed; files of other names are left alone.
    assert not (tmp_path / "bench.txt").exists()
    assert (tmp_path / "mine.txt").exists()
    assert _files(tmp_path) - {"mine.txt"} <= ALLOWED


def test_signal_stops_the_run_and_keeps_the_summary(tmp_path):
    """SIGTERM mid-run: the running steps are stopped, the summary written
    with the step it was in as running and those not reached as pending,
    exit status 1, and no step's
    command left running."""
    proc = subprocess.Popen(["bash", str(SCRIPT), "--cheap", str(tmp_path)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    tests = tmp_path / "tests.txt"
    while time.monotonic() < deadline and not (tests.exists() and tests.stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    rows = _rows((tmp_path / "summary.txt").read_text())
    assert list(rows) == STEPS
    assert rows["bench"][0] == "pending", output
    assert [r[0] for r in rows.values()].count("running") == 1, output
    assert "stopped by a signal" in output
    # The pytest that was running got the signal too: nothing writes any more.
    size = tests.stat().st_size
    time.sleep(3)
    assert tests.stat().st_size == size


def test_short_budget_keeps_the_priority_order(tmp_path):
    """A budget for part of the steps: they run in order, and once one is
    left out for lack of time no later test step runs."""
    proc = _run(tmp_path, "--cheap", GPU_CHECK_BUDGET="24")
    rows = _rows((tmp_path / "summary.txt").read_text())
    assert list(rows) == STEPS, proc.stdout
    statuses = [rows[s][0] for s in STEPS[2:7]]
    assert "no-time" in statuses + [rows["bench"][0]], proc.stdout
    first_skip = statuses.index("no-time") if "no-time" in statuses else len(statuses)
    assert all(s in ("ok", "timeout") for s in statuses[:first_skip]), proc.stdout
    assert all(s == "no-time" for s in statuses[first_skip:]), proc.stdout
    assert rows["build"][0] == "ok", proc.stdout
    assert proc.returncode == 1


@pytest.mark.slow
def test_cheap_dry_run(tmp_path):
    """Every step's CPU-side part, cut short: the files, one ok row per step
    (the standalone check may time out instead, when its objects are stale
    and the build does not fit its 30 s), a budget above 540 s capped."""
    start = time.monotonic()
    proc = _run(tmp_path, "--cheap", GPU_CHECK_BUDGET="9999")
    took = time.monotonic() - start
    output = proc.stdout + proc.stderr
    summary_path = tmp_path / "summary.txt"
    assert summary_path.exists(), output
    summary = summary_path.read_text()
    assert summary in proc.stdout
    assert "budget 540 s" in summary and "mode: dry (cheap)" in summary
    rows = _rows(summary)
    assert list(rows) == STEPS, summary
    for step, (status, seconds, detail) in rows.items():
        allowed = {"ok", "timeout"} if step == "cuda_check" else {"ok"}
        if step == "cuda_check" and shutil.which(os.environ.get("NVCC", "nvcc")) is None:
            allowed = {"skipped"}
        assert status in allowed, f"{step}: {status} {detail}\n{output}"
        assert int(seconds) <= took + 1
    assert proc.returncode == (0 if all(r[0] == "ok" for r in rows.values()) else 1), output
    for step in STEPS[2:7]:
        assert re.search(r"dry: \d+(/\d+)? tests? collected", rows[step][2]), rows[step]
    files = _files(tmp_path)
    assert len(files) <= 8 and files <= ALLOWED, files
    assert {"summary.txt", "build.txt", "tests.txt", "bench.txt", "bench.json",
            "bench.md"} <= files, files
    tests = (tmp_path / "tests.txt").read_text()
    for step in STEPS[2:7]:
        assert f"{step}: python -m pytest" in tests
    assert "kept bench.json bench.md" in rows["bench"][2]
