"""`gnc demo` (the README's first command) end to end, at the default settings for
the small temperature: GNC2 within 10% of the d=2 optimum and NCC accuracy >= 95%
on the training set (issue: "Must show")."""
import math

import pytest

pytest.importorskip("sklearn")

from gnc_ext.demo import run_demo  # noqa: E402


def test_demo_small_tau_reaches_gnc(tmp_path):
    s = run_demo(str(tmp_path), taus=(0.05,), plots=True, log=lambda *a: None)
    rho_opt = 1 - math.cos(2 * math.pi / 10)
    assert abs(s["rho_opt"] - rho_opt) < 1e-12
    fin = s["runs"][0]["final"]
    assert fin["gnc2"] >= 0.9 * rho_opt, fin
    assert fin["gnc2"] <= rho_opt + 1e-6 + fin["gnc2_gap"], fin  # cannot beat the optimum
    assert fin["ncc_acc"] >= 0.95, fin
    assert fin["train_acc"] >= 0.95, fin
    for f in s["files"]:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        run_demo(str(tmp_path), epochs=0)
    with pytest.raises(ValueError, match="taus"):
        run_demo(str(tmp_path), taus=(0.0,))
