import subprocess
import sys

import torch

import gnc_ext


def test_build_info_keys_and_types():
    info = gnc_ext.build_info()
    for key in ("version", "compiler", "openmp", "omp_threads", "cuda_compiled", "cuda_archs", "gpu_usable"):
        assert key in info, key
    assert info["version"] == gnc_ext.__version__
    assert isinstance(info["cuda_compiled"], bool)
    assert info["omp_threads"] >= 1
    if info["cuda_compiled"]:
        assert info["cuda_archs"], "CUDA compiled but no archs recorded"
    # A GPU is usable only if torch also sees one.
    assert info["gpu_usable"] == (info["cuda_compiled"] and info["cuda_device_count"] > 0 and torch.cuda.is_available())


def test_ops_are_registered():
    assert hasattr(torch.ops.gnc_ext, "normalize_rows")
    assert hasattr(torch.ops.gnc_ext, "normalize_rows_backward")


def test_cli_info_runs(tmp_path):
    # run outside the source tree so the installed package (with its _C) is imported
    out = subprocess.run(
        [sys.executable, "-m", "gnc_ext.cli", "info", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert '"cuda_compiled"' in out.stdout


def test_tensor_on_unsupported_device_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="X"):
        gnc_ext.normalize_rows(torch.randn(3, 2, device="meta"))
