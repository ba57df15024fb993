"""The `gnc` command rejects bad input with one clear line and a non-zero exit code."""
import subprocess
import sys

import numpy as np
import pytest


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "gnc_ext.cli", *args], capture_output=True, text=True, cwd=cwd)


def _one_line_error(out, *needles):
    assert out.returncode != 0
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path):
    _one_line_error(run(["distance", "nope.npy"], tmp_path), "W", "no such file")


def test_wrong_shape(tmp_path):
    np.save(tmp_path / "w.npy", np.ones(5))
    _one_line_error(run(["distance", "w.npy"], tmp_path), "W", "2-D")


def test_non_finite(tmp_path):
    w = np.eye(3)
    w[1, 1] = np.nan
    np.save(tmp_path / "w.npy", w)
    _one_line_error(run(["distance", "w.npy"], tmp_path), "NaN")


def test_metrics_label_mismatch(tmp_path):
    np.save(tmp_path / "f.npy", np.random.randn(10, 3).astype(np.float32))
    np.save(tmp_path / "y.npy", np.zeros(9, dtype=np.int64))
    _one_line_error(run(["metrics", "--features", "f.npy", "--labels", "y.npy"], tmp_path), "labels")


def test_float_labels_rejected(tmp_path):
    np.save(tmp_path / "f.npy", np.random.randn(10, 3).astype(np.float32))
    np.save(tmp_path / "y.npy", np.zeros(10))
    _one_line_error(run(["metrics", "--features", "f.npy", "--labels", "y.npy"], tmp_path), "integer labels")


def test_bad_usage_exit_code(tmp_path):
    out = run(["design", "--classes", "abc", "--margin", "0.1"], tmp_path)
    assert out.returncode == 2


# ---- commands that succeed -------------------------------------------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

SLOANE = Path(__file__).resolve().parent / "data" / "sloane_pack_3_124.npy"


def test_distance_json_matches_library(tmp_path):
    import torch

    import gnc_ext

    out = run(["distance", str(SLOANE), "--json", "--plot", "d.png"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    W = torch.from_numpy(np.load(SLOANE))
    r = gnc_ext.one_vs_rest_distance(W, rattler_tol=1e-6)
    assert rep["classes K"] == 124 and rep["dim d"] == 3
    assert abs(rep["rho (min distance)"] - r.rho) < 1e-12
    assert rep["max certificate gap"] <= 1e-9
    assert sorted(rep["rattler_ids"]) == sorted(r.rattlers.tolist())
    assert abs(rep["one-vs-one min distance"] - 0.32926) < 5e-6  # data/README.md
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_rattler_tol_is_monotone():
    import torch

    import gnc_ext

    W = torch.from_numpy(np.load(SLOANE))
    counts = [len(gnc_ext.one_vs_rest_distance(W, rattler_tol=t).rattlers) for t in (0.0, 1e-8, 1e-6, 1e-4, 1.0)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and counts[0] > 0
    with pytest.raises(ValueError, match="rattler_tol"):
        gnc_ext.one_vs_rest_distance(W, rattler_tol=-1.0)


def test_design_json_consistent_with_theory(tmp_path):
    import gnc_ext

    out = run(["design", "--classes", "100000", "--margin", "0.3", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    d = rep["min feature dim d (Thm 3.9 lower bound reaches rho)"]
    assert gnc_ext.theory.rho_bounds(d, 100000).lower >= 0.3
    assert gnc_ext.theory.rho_bounds(d - 1, 100000).lower < 0.3


def test_solve_tammes_saves_a_code(tmp_path):
    out = run(["solve", "tammes", "--dim", "3", "--classes", "4", "--save", "c.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    W = np.load(tmp_path / "c.npy")
    assert W.shape == (4, 3)
    assert abs(rep["min angle cosine"] - (-1.0 / 3.0)) < 1e-7  # regular tetrahedron
    assert abs(rep["one-vs-rest rho"] - 4.0 / 3.0) < 1e-7      # Thm 3.3, K <= d + 1


def test_solve_polishes_an_init_code(tmp_path):
    # a perturbed cross-polytope subset in d=4, K=7 (Thm 3.3: rho = 1) is polished back
    rng = np.random.default_rng(3)
    W = np.zeros((7, 4))
    for k in range(7):
        W[k, k // 2] = 1.0 if k % 2 == 0 else -1.0
    np.save(tmp_path / "w0.npy", W + 0.01 * rng.standard_normal(W.shape))
    out = run(["solve", "softmax-code", "-d", "4", "-K", "7", "--init", "w0.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert abs(rep["one-vs-rest rho"] - 1.0) < 1e-7 and rep["closed-form rho (Thm 3.3)"] == 1.0
    _one_line_error(run(["solve", "tammes", "-d", "3", "-K", "7", "--init", "w0.npy"], tmp_path), "init", "(7, 3)")
    _one_line_error(run(["solve", "tammes", "-d", "4", "-K", "7", "--init", "w0.npy", "--time-limit", "-1"],
                        tmp_path), "time_limit")


def test_metrics_json(tmp_path):
    rng = np.random.default_rng(0)
    K, d = 12, 6
    M = rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), 4)
    F = (M[y] + 0.05 * rng.standard_normal((K * 4, d))).astype(np.float32)
    np.save(tmp_path / "f.npy", F)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", M.astype(np.float32))
    out = run(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["NCC accuracy"] == 1.0
    assert 0 <= rep["GNC1"] < 0.1 and 0 <= rep["GNC3"] < 0.1 and rep["GNC2 rho(W)"] > 0


def test_corrupt_file_and_non_unit_rows_one_line_in_cli_terms(tmp_path):
    (tmp_path / "bad.pt").write_text("garbage")
    _one_line_error(run(["distance", "bad.pt"], tmp_path), "W: cannot read", "bad.pt")
    np.save(tmp_path / "w.npy", np.diag([2.0, 1.0, 1.0]))
    out = run(["distance", "w.npy"], tmp_path)
    _one_line_error(out, "W: rows must have unit L2 norm", "pass --normalize")
    assert "normalize=True" not in out.stderr
