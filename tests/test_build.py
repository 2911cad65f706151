"""The package imports, reports its backends, and (in CI) has its extension."""

import logging
import os

import pytest
import torch

import fastattn
from fastattn import _backends


def test_backends_report_every_backend_and_family():
    report = fastattn.backends()
    assert set(report) == set(_backends.BACKENDS) | {"auto", "build"}
    assert set(report["build"]) == {"kernels", "built_for", "cuda_archs", "cpu_isa"}
    for backend, families in report.items():
        if backend in ("auto", "build"):
            continue
        assert set(families) == set(_backends.OP_BACKENDS)
        for family, status in families.items():
            # "available", or a reason that agrees with backend resolution
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            assert status == (_backends.unavailable_reason(backend, family, device)
                              or "available"), (backend, family)
    assert report["reference"]["norm"] == "available"
    assert report["reference"]["attention"] == "available"


@pytest.mark.skipif(os.environ.get("FASTATTN_EXPECT_EXTENSION") != "1",
                    reason="set FASTATTN_EXPECT_EXTENSION=1 where the extension must be built")
def test_extension_was_built():
    # CI sets FASTATTN_EXPECT_EXTENSION=1, so a failed build cannot hide
    # behind skipped cpu-backend tests.
    assert _backends.extension_error() == ""
    assert _backends.resolve("auto", "norm", torch.device("cpu")) == "cpu"


def test_unknown_backend_is_rejected_by_name():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="backend"):
        fastattn.layer_norm(x, 8, backend="fortran")
    with pytest.raises(TypeError, match="backend"):
        fastattn.layer_norm(x, 8, backend=3)


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FASTATTN_BACKEND", "reference")
    assert _backends.resolve("auto", "norm", torch.device("cpu")) == "reference"
    # an explicit request is not overridden
    monkeypatch.setenv("FASTATTN_BACKEND", "cpu")
    assert _backends.resolve("reference", "norm", torch.device("cpu")) == "reference"


def test_cuda_backend_refuses_cpu_tensors_with_reason():
    with pytest.raises(ValueError, match="CUDA tensors"):
        fastattn.layer_norm(torch.randn(2, 8), 8, backend="cuda")


def test_backends_report_what_auto_picks(monkeypatch):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for family in _backends.OP_BACKENDS:
        assert fastattn.backends()["auto"][family] == _backends.resolve("auto", family, device)
    monkeypatch.setenv("FASTATTN_BACKEND", "reference")
    assert set(fastattn.backends()["auto"].values()) == {"reference"}


def test_unknown_environment_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTATTN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTATTN_BACKEND"):
        fastattn.layer_norm(torch.randn(2, 8), 8)


def test_info_runs():
    from fastattn import info
    rows = dict(info.report())
    assert rows["fastattn"] == fastattn.__version__
    assert "compiled kernels" in rows and "  CPU variant" in rows


def test_debug_log_names_the_backend_of_each_call(caplog):
    x = torch.randn(2, 8)
    q = torch.randn(1, 2, 4, 8)
    with caplog.at_level(logging.DEBUG, logger="fastattn"):
        fastattn.layer_norm(x, (8,), backend="reference")
        fastattn.attention(q, q, q, backend="reference")
    said = [r.message for r in caplog.records if r.levelno == logging.DEBUG]
    assert "layer_norm: backend reference" in said and "attention: backend reference" in said
