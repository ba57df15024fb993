"""Shared fixtures: every test that takes ``device`` runs once per available device.
CUDA cases are skipped cleanly (with a reason) where gnc_ext has no CUDA kernels or
no GPU is visible.

Every test that uses CUDA carries the ``cuda`` marker, so ``pytest -m cuda`` selects
exactly the GPU cases (``scripts/device_check.sh`` does) and ``-m "not cuda"`` the rest:
the ``cuda`` parameter of the ``device`` fixture is marked, and
``pytest_collection_modifyitems`` marks every test that requests ``cuda_device``. A test
that reaches the GPU some other way should take ``cuda_device`` (or be marked by hand
with ``@pytest.mark.cuda``)."""
from __future__ import annotations

import pytest
import torch

import gnc_ext

_INFO = gnc_ext.build_info()
CUDA_OK = bool(_INFO["gpu_usable"])
_CUDA_REASON = (
    "no usable GPU (gnc_ext cuda_compiled=%s, torch.cuda.is_available()=%s)"
    % (_INFO["cuda_compiled"], torch.cuda.is_available())
)

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_OK, reason=_CUDA_REASON)]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def cuda_device() -> str:
    if not CUDA_OK:
        pytest.skip(_CUDA_REASON)
    return "cuda"


def package_subprocess_env(**extra: str) -> dict:
    """Environment for a child Python that must import the gnc_ext these tests import (the
    installed package, or the in-tree build on PYTHONPATH): its parent folder first on
    PYTHONPATH. Run the child with ``cwd`` outside the repository (e.g. ``tmp_path``):
    ``python -c`` puts the working directory first on sys.path, and from the repository
    root that is the uncompiled source tree."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(gnc_ext.__file__)))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "cuda: uses a GPU (select the GPU cases with -m cuda)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)


def pytest_report_header(config):
    return "gnc_ext build: " + ", ".join(
        f"{k}={_INFO[k]}" for k in ("version", "openmp", "omp_threads", "cuda_compiled", "cuda_archs", "gpu_usable")
    )


def _tf32_truncate(x):
    """float32 -> TF32 by truncation (the low 13 mantissa bits cleared): the worst case
    the certified screening's error bound allows for (round-to-nearest errs half as much)."""
    return (x.float().contiguous().view(torch.int32) & -8192).view(torch.float32)


def emulated_tf32_tile(A, Bc, bias_c):
    """CPU stand-in for gnc_ext._engine.tf32_tile: TF32-truncated inputs, exact products
    and sum (float64), one rounding to float32 (plus the bias)."""
    out = _tf32_truncate(A).double() @ _tf32_truncate(Bc).double().T
    if bias_c is not None:
        out = out + bias_c.double()
    return out.float()


@pytest.fixture
def emulate_tf32_tile(monkeypatch):
    """Run the TF32-screened argmax paths on the CPU with TF32 input rounding emulated."""
    import gnc_ext._engine

    monkeypatch.setattr(gnc_ext._engine, "tf32_tile", emulated_tf32_tile)
    return emulated_tf32_tile
