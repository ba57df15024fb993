"""Checkpoints of the sharded loss that reshard (torch.distributed.checkpoint): saved at
world size 3, loaded at 2, at 1, and into a single-process SphericalCELoss; full weights
bitwise equal, next-step losses (after an SGD step with the loaded momentum) equal to
1e-6. Bad input: a checkpoint of another K, embedding_dim or sub-centre count."""
import json
import os
import subprocess
import sys

import pytest
import torch

from gnc_ext.nn import ShardedSphericalCELoss, SphericalCELoss
from gnc_ext.nn.checkpoint import load_loss_checkpoint, save_loss_checkpoint

WORKER = os.path.join(os.path.dirname(__file__), "_checkpoint_worker.py")


def _run(world, ckpt, mode, modules, tmp_path):
    from conftest import package_subprocess_env
    init = tmp_path / f"init-{mode}-{world}"
    out = tmp_path / f"out-{mode}-{world}.json"
    env = dict(package_subprocess_env(), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(init), str(ckpt), str(out), mode,
                               modules], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


def test_save_at_3_load_at_2_and_1_and_single_process(tmp_path):
    ckpt = tmp_path / "ckpt"
    ref = _run(3, ckpt, "save", "sharded", tmp_path)["sharded"]
    runs = {2: _run(2, ckpt, "load", "sharded", tmp_path), 1: _run(1, ckpt, "load", "sharded,single", tmp_path)}
    for world, res in runs.items():
        for module, got in res.items():
            assert got["bitwise"], (world, module)
            for key in ("loss2", "loss3"):
                assert abs(got[key] - ref[key]) <= 1e-6 * max(1.0, abs(ref[key])), (world, module, got, ref)


def test_checkpoint_of_another_classifier_is_refused(tmp_path):
    crit = ShardedSphericalCELoss(12, 5, num_subcenters=2)
    opt = torch.optim.SGD(crit.parameters(), lr=0.1, momentum=0.9)
    crit(torch.randn(4, 5), torch.tensor([0, 3, 7, 11])).backward()
    opt.step()
    save_loss_checkpoint(tmp_path / "c", crit, opt)
    for kw, name in ((dict(num_classes=13), "num_classes=12 in the checkpoint, 13 here"),
                     (dict(embedding_dim=6), "embedding_dim=5 in the checkpoint, 6 here"),
                     (dict(num_subcenters=3), "num_subcenters=2 in the checkpoint, 3 here")):
        args = {**dict(num_classes=12, embedding_dim=5, num_subcenters=2), **kw}
        other = ShardedSphericalCELoss(args.pop("num_classes"), args.pop("embedding_dim"), **args)
        with pytest.raises(ValueError, match=name):
            load_loss_checkpoint(tmp_path / "c", other)
    # the same classifier loads, weights and momentum included
    same = SphericalCELoss(12, 5, num_subcenters=2)
    opt2 = torch.optim.SGD(same.parameters(), lr=0.1, momentum=0.9)
    load_loss_checkpoint(tmp_path / "c", same, opt2)
    assert torch.equal(same.weight, crit.weight)
    assert torch.equal(opt2.state[same.weight]["momentum_buffer"], opt.state[crit.weight]["momentum_buffer"])
    # no optimizer state saved, but one asked for
    save_loss_checkpoint(tmp_path / "n", crit)
    with pytest.raises(ValueError, match="^optimizer: the checkpoint holds no optimizer state"):
        load_loss_checkpoint(tmp_path / "n", same, opt2)
    with pytest.raises(TypeError, match="^loss: expected"):
        save_loss_checkpoint(tmp_path / "x", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^optimizer: does not hold"):
        save_loss_checkpoint(tmp_path / "x", crit, torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


def test_adam_state_round_trip(tmp_path):
    crit = SphericalCELoss(9, 4)
    opt = torch.optim.Adam(crit.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        crit(torch.randn(5, 4), torch.randint(0, 9, (5,))).backward()
        opt.step()
    save_loss_checkpoint(tmp_path / "a", crit, opt)
    other = ShardedSphericalCELoss(9, 4, seed=5)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.01)
    load_loss_checkpoint(tmp_path / "a", other, opt2)
    s1, s2 = opt.state[crit.weight], opt2.state[other.weight]
    assert set(s1) == set(s2)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
