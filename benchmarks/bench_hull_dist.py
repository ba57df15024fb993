"""one_vs_rest_distance on one process and over gloo ranks, with and without a checkpoint,
and the cost model of docs/SCALING.md against the measured times.

    PYTHONPATH=. python benchmarks/bench_hull_dist.py [--K 100000] [--d 128] [--cal-K 10000]
                                                       [--ranks 2] [--out FILE.json]

Runs (each a fresh child process on the same seeded float32 unit W):
* ``1 process, 1 thread`` (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), the baseline;
* ``N gloo ranks, 1 thread each`` (group= over a file-initialised gloo group);
* ``N gloo ranks + checkpoint`` (checkpoint_every = 60 s, the default) — its overhead;
* ``1 process, N threads``.
Before them a calibration run at ``--cal-K`` (1 thread) fits the cost model's constants
(seconds per K·d of the fp32 candidate pass, per K·d of an fp64 pricing pass, per class
solve, and the pricing passes per class), which then predicts the baseline's time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time, datetime
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
import gnc_ext
import torch.distributed as dist
group = None
if cfg.get("world", 1) > 1:
    dist.init_process_group("gloo", init_method="file://" + cfg["init"], rank=cfg["rank"],
                            world_size=cfg["world"], timeout=datetime.timedelta(seconds=3600))
    group = dist.group.WORLD
g = torch.Generator().manual_seed(0)
W = torch.randn(cfg["K"], cfg["d"], generator=g)
W = W / W.norm(dim=1, keepdim=True)
t, c = time.perf_counter(), time.process_time()
r = gnc_ext.one_vs_rest_distance(W, group=group, checkpoint=cfg.get("checkpoint"), progress=False)
wall, cpu = time.perf_counter() - t, time.process_time() - c
keys = ("rounds", "classes_solved_per_round", "time_candidates_s", "time_solve_s", "time_pricing_s",
        "rank_busy_s", "rank_classes", "steps", "checkpoint_writes", "checkpoint_write_s", "converged")
out = {"wall_s": wall, "cpu_s": cpu, "rho": r.rho, "rho_lower": r.rho_lower, "max_gap": r.max_gap, "argmin": int(r.distance.argmin()),
       "stats": {k: r.stats.get(k) for k in keys}}
with open(cfg["out"] + f".{cfg.get('rank', 0)}", "w") as f:
    json.dump(out, f)
if group is not None:
    dist.barrier()
sys.stdout.flush()
os._exit(0)
"""


def run(K, d, threads=1, world=1, checkpoint=None, tmp="."):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = os.path.join(tmp, f"out-{K}-{threads}-{world}-{int(checkpoint is not None)}.json")
    init = os.path.join(tmp, f"init-{time.time_ns()}")
    procs = []
    t0 = time.perf_counter()
    for rank in range(world):
        cfg = dict(K=K, d=d, threads=threads, world=world, rank=rank, init=init, out=out, checkpoint=checkpoint)
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"child failed with {p.returncode}")
    res = json.load(open(out + ".0"))
    res["process_wall_s"] = time.perf_counter() - t0
    res["rank_cpu_s"] = [json.load(open(out + f".{r}"))["cpu_s"] for r in range(world)]
    return res


def fit(cal, K, d):
    """Cost-model constants from one single-thread run (see docs/SCALING.md)."""
    s = cal["stats"]
    solved = sum(s["classes_solved_per_round"])
    return {
        "c_cand": s["time_candidates_s"] / (K * K * d),      # s per (class × class × dim), fp32 pass
        "c_price": s["time_pricing_s"] / (solved * K * d),   # s per (class-round × class × dim), fp64 pass
        "c_solve": s["time_solve_s"] / solved,               # s per class solve
        "passes": solved / K,                                # pricing passes per class
    }


def predict(m, K, d, ranks=1):
    return (m["c_cand"] * K * K * d + m["passes"] * (m["c_price"] * K * K * d + m["c_solve"] * K)) / ranks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--cal-K", type=int, default=10_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    N = a.ranks
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cal = run(a.cal_K, a.d, tmp=tmp)
        model = fit(cal, a.cal_K, a.d)
        print("calibration", json.dumps(cal), json.dumps(model), flush=True)
        for name, kw in [("1 process, 1 thread", dict()),
                         (f"{N} gloo ranks, 1 thread each", dict(world=N)),
                         (f"{N} gloo ranks, 1 thread each, checkpoint every 60 s",
                          dict(world=N, checkpoint=os.path.join(tmp, "ck"))),
                         (f"1 process, {N} threads", dict(threads=N))]:
            rows[name] = run(a.K, a.d, tmp=tmp, **kw)
            print(name, json.dumps(rows[name]), flush=True)
    base = rows["1 process, 1 thread"]["wall_s"]
    pred = predict(model, a.K, a.d)
    base_cpu = rows["1 process, 1 thread"]["cpu_s"]
    print("\n| run | wall s | speed-up (wall) | CPU s per process | speed-up (CPU: 1-thread CPU s / "
          "largest rank CPU s) | rank busy s | rho | max_gap |\n|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        busy = r["stats"].get("rank_busy_s")
        busy_s = ", ".join(f"{b:.1f}" for b in busy) if busy and len(busy) > 1 else "-"
        cpus = r["rank_cpu_s"]
        cpu_sp = f"{base_cpu / max(cpus):.2f}x" if "threads" not in name else "-"
        print(f"| {name} | {r['wall_s']:.1f} | {base / r['wall_s']:.2f}x | {', '.join(f'{c:.1f}' for c in cpus)} | "
              f"{cpu_sp} | {busy_s} | {r['rho']:.12f} | {r['max_gap']:.1e} |")
    ck = rows[f"{N} gloo ranks, 1 thread each, checkpoint every 60 s"]
    plain = rows[f"{N} gloo ranks, 1 thread each"]
    print(f"\ncheckpoint overhead: {100 * (ck['wall_s'] / plain['wall_s'] - 1):+.1f} % "
          f"({ck['stats']['checkpoint_writes']} writes, {ck['stats']['checkpoint_write_s']:.1f} s writing)")
    print(f"cost model (fitted at K={a.cal_K}): predicted {pred:.0f} s for K={a.K}, d={a.d} on 1 thread; "
          f"measured {base:.0f} s (ratio {base / pred:.2f})")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"K": a.K, "d": a.d, "calibration": cal, "model": model, "rows": rows,
                       "predicted_1thread_s": pred}, f, indent=1)


if __name__ == "__main__":
    main()
