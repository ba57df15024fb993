"""nc_metrics(..., group=) over gloo ranks (world sizes 2 and 3): the pairwise tiles and
the NC4 data pass split over the ranks give the single-process results; a rank with
another W makes every rank raise."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import package_subprocess_env

WORKER = os.path.join(os.path.dirname(__file__), "_nc_dist_worker.py")


def _run(world, cfg, tmp_path):
    procs, outs = [], []
    for r in range(world):
        out = tmp_path / f"out{r}.json"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(tmp_path / "init"), str(out),
                                       json.dumps(cfg)], env=package_subprocess_env(OMP_NUM_THREADS="1"),
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.parametrize("world,kernel", [(2, "log"), (3, "riesz")])
def test_nc_metrics_group_equals_single_process(world, kernel, tmp_path):
    # K = 1500 > 1024 (the pairwise tile block): 3 tiles to split
    res = _run(world, dict(K=1500, d=8, n=3, kernel=kernel), tmp_path)
    for r in res:
        got, ref = r["got"], r["ref"]
        assert got["nc4_samples"] == ref["nc4_samples"] == 4500
        assert got["nc4_agreement"] == ref["nc4_agreement"]
        for k, v in ref.items():
            if isinstance(v, float) and math.isfinite(v):
                assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-13), k
            else:
                assert got[k] == v, k
    assert res[0]["got"] == res[-1]["got"]  # every rank returns the same numbers
    for r in res:  # both tile paths, 21 tiles of 256 rows dealt to the ranks
        for impl in ("native", "torch"):
            errs = r[f"pairs_{impl}"]
            assert errs["max_cos"] == 0.0, errs
            assert max(errs.values()) < 1e-12, (impl, errs)


def test_nc_metrics_group_refuses_another_W(tmp_path):
    res = _run(2, dict(K=300, d=4, n=2, kernel="log", other_W=True), tmp_path)
    for r in res:
        assert r["error"] == "ValueError" and "W (rank 0 vs rank 1)" in r["message"], r
