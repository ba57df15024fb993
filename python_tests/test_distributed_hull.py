"""one_vs_rest_distance(W, group=...) over gloo ranks (world sizes 2 and 3, spawned here)
equals the single-process call within the certified tolerance (same rho and argmin);
a rank holding another W or other options makes every rank raise; a rank that dies
part-way makes the others raise within the group's timeout."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import gnc_ext
from conftest import package_subprocess_env

WORKER = os.path.join(os.path.dirname(__file__), "_hull_dist_worker.py")


def _run(world, cfg, tmp_path, timeout=120):
    init = tmp_path / "init"
    procs, outs = [], []
    env = package_subprocess_env(OMP_NUM_THREADS="1")
    for r in range(world):
        out = tmp_path / f"out{r}.json"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(init), str(out),
                                       json.dumps(cfg)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    codes = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung")
        codes.append((p.returncode, err[-3000:]))
    return codes, [json.loads(o.read_text()) if o.exists() else None for o in outs]


@pytest.mark.parametrize("world", [2, 3])
def test_group_equals_single_process(world, tmp_path):
    # K = 1700 gives 4 blocks of 512 classes (the last 164): uneven blocks over 2 and 3 ranks
    codes, res = _run(world, dict(mode="equal", K=1700, d=8), tmp_path)
    assert all(c == 0 for c, _ in codes), codes
    digests = {r["digest"] for r in res}
    assert len(digests) == 1  # every rank returns the same numbers
    for r in res:
        tol = r["tol"]
        assert r["stats"]["world_size"] == world and r["stats"]["blocks"] == 4
        assert sum(r["stats"]["rank_classes"]) == 1700
        assert all(n > 0 for n in r["stats"]["rank_classes"])  # every rank solved a share
        assert r["stats"]["converged"] and r["gap"] <= tol
        assert r["dist_err"] <= tol and r["lower_err"] <= tol, r
        assert r["proj_err"] <= 1e-6, r
        assert abs(r["rho"] - r["rho_ref"]) <= tol and abs(r["rho_lower"] - r["rho_lower_ref"]) <= tol
        assert r["argmin"] == r["argmin_ref"]


@pytest.mark.parametrize("world,mode,what", [
    (2, "other_W", "W (rank 0 vs rank 1)"),
    (3, "other_W", "W (rank 0 vs rank 2)"),
    (2, "other_option", "tol (rank 0 vs rank 1)"),
])
def test_mismatch_raises_on_every_rank(world, mode, what, tmp_path):
    t0 = time.monotonic()
    codes, res = _run(world, dict(mode=mode, K=600, d=6, timeout=30), tmp_path)
    assert all(c == 0 for c, _ in codes), codes
    for r in res:
        assert r["error"] == "ValueError", r
        assert what in r["message"], r
    assert time.monotonic() - t0 < 30  # raised at once, not at the group's timeout


@pytest.mark.parametrize("world", [2, 3])
def test_dead_rank_makes_the_others_raise(world, tmp_path):
    t0 = time.monotonic()
    codes, res = _run(world, dict(mode="die", K=1700, d=8, timeout=10), tmp_path, timeout=60)
    assert codes[-1][0] == 3 and res[-1] is None  # the dying rank
    for r in res[:-1]:
        assert r["error"] == "CollectiveError" and "RuntimeError" in r["mro"], r
        assert "rank" in r["message"]
    assert time.monotonic() - t0 < 45  # within the 10 s group timeout plus start-up


def test_group_not_initialised():
    import torch.distributed as dist

    W = torch.nn.functional.normalize(torch.randn(10, 3, dtype=torch.float64), dim=1)
    if dist.is_available() and dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="group: torch.distributed is not initialised"):
        gnc_ext.one_vs_rest_distance(W, group=object())


def test_split_by_rate_is_proportional():
    from gnc_ext.geometry.one_vs_rest import _split_by_rate

    sizes = [100] * 12
    out = _split_by_rate(sizes, [1.0, 2.0, 3.0])
    assert [len(o) for o in out] == [2, 4, 6]
    assert sorted(sum(out, [])) == list(range(12))
    assert [len(o) for o in _split_by_rate(sizes, [None, None])] == [6, 6]
    assert [len(o) for o in _split_by_rate([10, 10, 10, 10], [5.0, None])] == [2, 2]


def _torchrun(tmp_path, *args, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=package_subprocess_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=timeout)


def _gnc(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "gnc_ext.cli", *args], cwd=tmp_path,
                          env=package_subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=180)


def test_cli_distance_under_torchrun(tmp_path):
    import numpy as np

    g = torch.Generator().manual_seed(2)
    W = torch.nn.functional.normalize(torch.randn(1200, 6, generator=g, dtype=torch.float64), dim=1)
    np.save(tmp_path / "W.npy", W.numpy())
    one = _gnc(tmp_path, "distance", "W.npy", "--json")
    assert one.returncode == 0, one.stderr
    ref = json.loads(one.stdout)
    # torchrun runs a console script as a Python file: the same wrapper pip writes for `gnc`
    (tmp_path / "gnc").write_text("import sys\nfrom gnc_ext.cli import main\nsys.exit(main())\n")
    for launch in (["-m", "gnc_ext.cli"], ["gnc"]):
        p = _torchrun(tmp_path, *launch, "distance", "W.npy", "--json", "--checkpoint", "ck")
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(p.stdout)  # one JSON document: only rank 0 printed
        tol = 1e-9
        assert abs(got["rho"] - ref["rho"]) <= tol and got["argmin_class"] == ref["argmin_class"]
        assert max(abs(a - b) for a, b in zip(got["distance"], ref["distance"])) <= tol
        assert got["rattlers"] == ref["rattlers"]
        assert (tmp_path / "ck" / "meta.json").exists()  # written by the first launch, read by the second


def test_cli_metrics_under_torchrun(tmp_path):
    import numpy as np

    g = torch.Generator().manual_seed(4)
    K, d, n = 1100, 6, 3
    M = torch.randn(K, d, generator=g)
    y = torch.arange(K).repeat_interleave(n)
    H = M[y] + 0.2 * torch.randn(K * n, d, generator=g)
    np.save(tmp_path / "H.npy", H.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    np.save(tmp_path / "W.npy", (M + 0.05 * torch.randn(K, d, generator=g)).numpy())
    args = ["metrics", "--features", "H.npy", "--labels", "y.npy", "--weights", "W.npy", "--nc", "--json"]
    one = _gnc(tmp_path, *args)
    assert one.returncode == 0, one.stderr
    ref = json.loads(one.stdout)
    p = _torchrun(tmp_path, "-m", "gnc_ext.cli", *args)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    assert got["gnc2"]["rho"] == pytest.approx(ref["gnc2"]["rho"], abs=1e-7)
    assert got["gnc2"]["rattlers"] == ref["gnc2"]["rattlers"]
    assert got["gnc1"] == ref["gnc1"] and got["gnc3"] == ref["gnc3"]
    for k, v in ref["nc"].items():
        if isinstance(v, float):
            assert got["nc"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert got["nc"][k] == v, k
