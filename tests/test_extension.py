"""Where the compiled kernels come from (fastattn/_extension.py), and what a
user sees when they cannot be had: one WARNING naming the cause and the
fix, never a silent fall to the slow reference backend.

The real first-use build runs in CI (.ci/run installs a wheel built
without torch into a fresh environment); here its decisions are checked
with the pieces it looks at replaced.
"""

import logging
import os

import pytest
import torch

import fastattn
from fastattn import _backends, _extension, _log


@pytest.fixture
def fresh_status(monkeypatch):
    """Forget the loaded status (and what was warned) for one test; both
    come back afterwards."""
    monkeypatch.setattr(_extension, "_status", None)
    monkeypatch.setattr(_backends, "_native_errors", {})
    _log.reset_for_tests()
    yield
    _log.reset_for_tests()


def test_loaded_kernels_say_where_they_come_from():
    status = _extension.status()
    if not status.loaded:
        pytest.skip(f"no compiled kernels here: {status.error}")
    assert status.origin
    # (a checkout's extension built before setup.py recorded its torch says nothing)
    assert status.build_info is None or status.build_info["torch"] == torch.__version__
    assert fastattn.backends()["build"]["cpu_isa"] in ("avx512", "avx2", "default")


def test_no_kernels_and_no_build_warn_at_import_with_the_fix(fresh_status, monkeypatch,
                                                             caplog):
    monkeypatch.setattr(_extension, "_has_prebuilt", lambda: False)
    monkeypatch.setenv("FASTATTN_JIT", "0")
    with caplog.at_level(logging.WARNING, logger="fastattn"):
        _extension.check_at_import()
        x = torch.randn(4, 16)
        y = fastattn.layer_norm(x, (16,))  # served, slowly, and said so
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (16,)))
    warnings = [r.message for r in caplog.records]
    assert any("no compiled kernels" in w and "Fix:" in w for w in warnings), warnings
    assert any("reference backend" in w for w in warnings), warnings
    assert _backends.resolve("auto", "norm", torch.device("cpu")) == "reference"


def test_kernels_of_another_torch_are_not_loaded(fresh_status, monkeypatch):
    """An extension built for another torch may crash rather than fail to
    import: it is rebuilt for this torch instead (or, here, refused)."""
    monkeypatch.setattr(_extension, "_installed_build_info", lambda: {"torch": "1.0.0"})
    monkeypatch.setattr(_extension, "_has_prebuilt", lambda: True)
    monkeypatch.setenv("FASTATTN_JIT", "0")
    status = _extension.status()
    assert not status.loaded
    assert "built for torch 1.0.0" in status.error and torch.__version__ in status.error


def test_build_needs_sources_compiler_and_ninja(monkeypatch):
    monkeypatch.delenv("FASTATTN_JIT", raising=False)
    monkeypatch.setattr(_extension, "csrc_dir", lambda: None)
    assert "sources" in _extension.build_unavailable_reason()
    monkeypatch.setenv("FASTATTN_JIT", "0")
    assert "FASTATTN_JIT" in _extension.build_unavailable_reason()


def test_sources_are_found_in_a_checkout_or_a_wheel():
    csrc = _extension.csrc_dir()
    assert csrc is not None and os.path.isfile(os.path.join(csrc, "ops.cpp"))


def test_cache_is_per_torch_version_and_abi(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTATTN_CACHE_DIR", str(tmp_path))
    path = _extension.cache_dir()
    assert path.startswith(str(tmp_path)) and torch.__version__ in path and "cxx11abi" in path
