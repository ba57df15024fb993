"""one_vs_rest_distance(checkpoint=...): a run killed with SIGKILL part-way, or while it
writes a checkpoint part, resumes to the same result as an uninterrupted run; a
checkpoint of another problem is refused, naming what differs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gnc_ext
from conftest import package_subprocess_env

CHILD = os.path.join(os.path.dirname(__file__), "_hull_ckpt_child.py")
K, D = 6000, 24  # 12 blocks of 512 classes (the last 368)


def _child(tmp_path, **cfg):
    cfg.setdefault("K", K)
    cfg.setdefault("d", D)
    return subprocess.Popen([sys.executable, CHILD, json.dumps(cfg)], cwd=tmp_path,
                            env=package_subprocess_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p, timeout=240):
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, without a checkpoint (also one thread)."""
    d = tmp_path_factory.mktemp("ref")
    _finish(_child(d, out=str(d / "ref.pt")))
    return torch.load(d / "ref.pt", weights_only=True)


def _parts(path):
    return sorted(e for e in os.listdir(path) if e.startswith("part-")) if os.path.isdir(path) else []


def _same(a, b):
    for f in ("distance", "lower", "projection", "support", "weights"):
        assert a[f].shape == b[f].shape and torch.equal(a[f], b[f]), f
    assert a["rho"] == b["rho"]


def test_sigkill_mid_run_resumes_to_the_same_result(tmp_path, reference):
    ck = tmp_path / "ck"
    p = _child(tmp_path, checkpoint=str(ck), out=str(tmp_path / "killed.pt"), every=0.0)
    deadline = time.monotonic() + 180
    while len(_parts(ck)) < 3:
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed.pt").exists()  # really killed part-way
    n_parts = len(_parts(ck))
    assert 3 <= n_parts < 12
    _finish(_child(tmp_path, checkpoint=str(ck), out=str(tmp_path / "resumed.pt"), every=3600.0))
    res = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert 3 * 512 <= res["resumed"] < K
    _same(res, reference)
    # everything is saved now: a third run only reads
    _finish(_child(tmp_path, checkpoint=str(ck), out=str(tmp_path / "again.pt"), every=3600.0))
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again["resumed"] == K and again["writes"] == 0
    _same(again, reference)


def test_sigkill_while_writing_leaves_no_partial_part(tmp_path, reference):
    ck, marker = tmp_path / "ck", tmp_path / "writing"
    p = _child(tmp_path, checkpoint=str(ck), out=str(tmp_path / "killed.pt"), every=0.0, mode="hang_in_write",
               marker=str(marker))
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _parts(ck) == ["part-000001.pt"]
    tmp_files = [e for e in os.listdir(ck) if ".tmp." in e]
    assert len(tmp_files) == 1  # the half-written part, under its temporary name
    _finish(_child(tmp_path, checkpoint=str(ck), out=str(tmp_path / "resumed.pt"), every=3600.0))
    res = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert res["resumed"] == 512  # only the part that was renamed into place
    assert not [e for e in os.listdir(ck) if ".tmp." in e]  # the leftover was removed
    _same(res, reference)


def _W(K=700, d=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)


def test_wrong_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "ck"
    W = _W()
    a = gnc_ext.one_vs_rest_distance(W, checkpoint=ck)
    before = sorted(os.listdir(ck))
    W2 = W.clone()
    W2[0] = W[1]
    with pytest.raises(ValueError, match=r"checkpoint: .* another problem; these differ: W \("):
        gnc_ext.one_vs_rest_distance(W2, checkpoint=ck)
    with pytest.raises(ValueError, match=r"these differ: tol \(1e-10 in the checkpoint, 1e-08 now\)"):
        gnc_ext.one_vs_rest_distance(W, checkpoint=ck, tol=1e-8)
    with pytest.raises(ValueError, match=r"these differ: K \(700 in the checkpoint, 699 now\)"):
        gnc_ext.one_vs_rest_distance(W[:699], checkpoint=ck)
    with pytest.raises(ValueError, match=r"dtype \('float64' in the checkpoint, 'float32' now\)"):
        gnc_ext.one_vs_rest_distance(W.float(), checkpoint=ck)
    assert sorted(os.listdir(ck)) == before  # nothing written by a refused run
    b = gnc_ext.one_vs_rest_distance(W, checkpoint=ck)  # the right problem still resumes
    assert b.stats["resumed_classes"] == 700 and torch.equal(a.distance, b.distance)


def test_bad_checkpoint_paths(tmp_path):
    W = _W(K=50)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="checkpoint: .* exists and is not a directory"):
        gnc_ext.one_vs_rest_distance(W, checkpoint=f)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="non-empty directory without meta.json"):
        gnc_ext.one_vs_rest_distance(W, checkpoint=other)
    with pytest.raises(TypeError, match="checkpoint: expected a path"):
        gnc_ext.one_vs_rest_distance(W, checkpoint=3)
    with pytest.raises(ValueError, match="checkpoint_every"):
        gnc_ext.one_vs_rest_distance(W, checkpoint=tmp_path / "ck", checkpoint_every=-1)


def test_checkpoint_every_limits_writes(tmp_path):
    W = _W(K=1700, d=4)
    r = gnc_ext.one_vs_rest_distance(W, checkpoint=tmp_path / "a", checkpoint_every=3600)
    assert r.stats["blocks"] == 4 and r.stats["checkpoint_writes"] == 1  # only the final write
    r0 = gnc_ext.one_vs_rest_distance(W, checkpoint=tmp_path / "b", checkpoint_every=0)
    assert r0.stats["checkpoint_writes"] == 4  # one part per block
    ref = gnc_ext.one_vs_rest_distance(W)
    tol = ref.stats["tol"]
    assert (r.distance - ref.distance).abs().max() <= tol and (r.lower - ref.lower).abs().max() <= tol
    assert r.rho == pytest.approx(ref.rho, abs=tol) and int(r.distance.argmin()) == int(ref.distance.argmin())
