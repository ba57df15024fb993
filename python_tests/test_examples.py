"""Every example under examples/ runs, with the commands of its docstring scaled down
(CPU, small sizes; world size 2 where it has one): face_recognition_synthetic.py
(whose ``--world-size 2`` command used to hang at the end of an epoch), the InsightFace
migration's cosface command (its world sizes 1 and 2 run in test_insightface.py), and
the arcface_torch-shaped recipe, killed after a checkpoint and resumed at world sizes 1
and 2. Plus: a rank that skips a collective makes the other fail with the group's
timeout instead of hanging."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import package_subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(name, args, tmp_path, expect_ok=True, timeout=300):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], capture_output=True,
                          text=True, timeout=timeout, env=package_subprocess_env(OMP_NUM_THREADS="1"), cwd=tmp_path)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SMALL = ["--classes", "120", "--per-class", "5", "--dim", "16", "--input-dim", "16", "--epochs", "2",
         "--batch-size", "64", "--eval-every", "1", "--no-progress"]


@pytest.mark.parametrize("args", [[], ["--classifier", "cmf"], ["--world-size", "2"]],
                         ids=["single", "cmf", "world2"])
def test_face_recognition_synthetic_docstring_commands(args, tmp_path):
    # world 2: 600 samples, 300 per rank, batches of 64 leave a ragged remainder
    out = _example("face_recognition_synthetic.py", args + SMALL, tmp_path).stdout
    assert len(re.findall(r"^epoch +\d+ loss", out, re.M)) == 2, out


def test_insightface_migration_cosface_command(tmp_path):
    out = _example("insightface_migration.py", ["--margin-type", "cosface", "--margin", "0.4", "--steps", "3",
                                                "--classes", "40", "--batch", "16"], tmp_path).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3
    for _, _, a, b, _ in rows:
        assert abs(float(a) - float(b)) <= 1e-5 * abs(float(a)), out


RECIPE = ["--classes", "60", "--per-class", "5", "--batch-size", "16", "--steps", "10", "--ckpt-every", "4",
          "--dim", "32"]


def _losses(out):
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+) loss (\S+)$", out, re.M)}


@pytest.mark.parametrize("world", [1, 2])
def test_recipe_killed_after_a_checkpoint_resumes_to_the_same_losses(world, tmp_path):
    # 300 samples: 150 per rank at world 2, 9 batches of 16 and a ragged remainder per epoch
    w = ["--world-size", str(world)]
    full = _losses(_example("arcface_recipe.py", RECIPE + w + ["--ckpt-dir", "a"], tmp_path).stdout)
    assert sorted(full) == list(range(1, 11))
    killed = _example("arcface_recipe.py", RECIPE + w + ["--ckpt-dir", "b", "--kill-after", "8"], tmp_path,
                      expect_ok=False)
    assert killed.returncode != 0
    assert max(_losses(killed.stdout)) == 8  # died right after the step-8 checkpoint
    resumed = _example("arcface_recipe.py", RECIPE + w + ["--ckpt-dir", "b", "--resume"], tmp_path).stdout
    got = _losses(resumed)
    assert sorted(got) == [9, 10], resumed
    for s in (9, 10):
        assert abs(got[s] - full[s]) <= 1e-6 * abs(full[s]), (s, got[s], full[s])


def test_a_rank_that_skips_the_loss_gets_a_timeout_error_not_a_hang(tmp_path):
    script = tmp_path / "skip.py"
    script.write_text(textwrap.dedent('''
        import datetime, os, sys, torch, torch.distributed as dist
        from gnc_ext.nn import ShardedSphericalCELoss
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=3))
        crit = ShardedSphericalCELoss(10, 4)
        code = 0
        if rank == 0:
            try:
                crit(torch.randn(3, 4), torch.tensor([0, 5, 9]))
            except RuntimeError as e:
                print("timeout error:", type(e).__name__, flush=True)
                code = 3
        else:
            import time; time.sleep(8)  # never calls the loss
        # leave without interpreter finalisation: with a timed-out collective, gloo's worker
        # threads can abort the process there ("terminate called without an active exception")
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    '''))
    env = package_subprocess_env(OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "init")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 3, outs[0]
    assert "timeout error" in outs[0][0]
