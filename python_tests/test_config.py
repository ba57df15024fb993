"""gnc_ext.config: one validated settings object, refused when set if invalid."""
import os
import subprocess
import sys

import pytest

import gnc_ext
from conftest import package_subprocess_env
from gnc_ext.settings import ConfigError

DEFAULTS = {"check_finite": True, "sce_strategy": "auto", "sce_stored_budget_bytes": 2**30,
            "sce_stored_dtype": "auto",
            "lowp_grad_gemm": "auto", "cuda_fp32_mode": "ieee", "hardmax_screen": "auto", "ncc_screen": "auto"}


def test_defaults_and_keys():
    assert gnc_ext.config.as_dict() == DEFAULTS
    assert gnc_ext.config is gnc_ext._validate.config


@pytest.mark.parametrize("key,bad,exc", [
    ("check_finite", 1, TypeError), ("check_finite", "yes", TypeError),
    ("sce_strategy", "fused", ValueError), ("sce_strategy", None, TypeError),
    ("sce_stored_budget_bytes", 0, ValueError), ("sce_stored_budget_bytes", -5, ValueError),
    ("sce_stored_budget_bytes", 1.5e9, TypeError), ("sce_stored_budget_bytes", True, TypeError),
    ("sce_stored_dtype", "float16", ValueError),
    ("lowp_grad_gemm", "yes", ValueError), ("cuda_fp32_mode", "3xtf32", ValueError),
    ("hardmax_screen", "bogus", ValueError), ("ncc_screen", 1, TypeError),
])
def test_bad_values_refused_when_set(key, bad, exc):
    before = gnc_ext.config.as_dict()
    with pytest.raises(exc, match=rf"gnc_ext\.config\.{key}"):
        setattr(gnc_ext.config, key, bad)
    with pytest.raises(exc, match=rf"gnc_ext\.config\.{key}"):
        with gnc_ext.config.override(**{key: bad}):
            pass
    assert gnc_ext.config.as_dict() == before


def test_unknown_key_refused():
    with pytest.raises(ValueError, match="unknown key 'hardmax_scren'"):
        gnc_ext.config.hardmax_scren = "off"
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        with gnc_ext.config.override(nope=1):
            pass
    with pytest.raises(AttributeError):
        gnc_ext.config.nope
    with pytest.raises(ValueError):
        del gnc_ext.config.check_finite


def test_override_restores_even_on_error():
    with pytest.raises(RuntimeError):
        with gnc_ext.config.override(hardmax_screen="off", sce_stored_budget_bytes=123):
            assert gnc_ext.config.hardmax_screen == "off"
            assert gnc_ext.config.sce_stored_budget_bytes == 123
            raise RuntimeError("boom")
    assert gnc_ext.config.as_dict() == DEFAULTS
    # a bad key among good ones applies none of them
    with pytest.raises(ValueError):
        with gnc_ext.config.override(hardmax_screen="off", lowp_grad_gemm="bogus"):
            pass
    assert gnc_ext.config.hardmax_screen == "auto"


def test_set_and_reset():
    try:
        gnc_ext.config.sce_stored_budget_bytes = 4096
        gnc_ext.config.cuda_fp32_mode = "tf32"
        assert gnc_ext.config.sce_stored_budget_bytes == 4096 and gnc_ext.config.cuda_fp32_mode == "tf32"
        assert "tf32" in repr(gnc_ext.config)
    finally:
        gnc_ext.config.reset()
    assert gnc_ext.config.as_dict() == DEFAULTS


def test_environment_is_not_read_at_import(tmp_path):
    """The former environment switches change nothing: settings come only from
    gnc_ext.config (checked in a fresh interpreter)."""
    env = package_subprocess_env(GNC_HARDMAX_SCREEN="bogus", GNC_LOSS_LOWP_GRAD_GEMM="on", GNC_LOSS_CUDA_FP32="tf32",
                                 GNC_LOSS_CUDA_FORWARD="fused", GNC_CERTIFIED_SPLITS="7", GNC_NCC_SCREEN="on")
    code = "import gnc_ext, json; print(json.dumps(gnc_ext.config.as_dict()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    import json
    assert json.loads(out.stdout.strip().splitlines()[-1]) == DEFAULTS
