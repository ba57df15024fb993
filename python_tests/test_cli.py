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
