"""The stored and recompute strategies of spherical_cross_entropy, interleaved.

    python benchmarks/bench_sce_strategies.py [--B 256] [--d 512] [--K 100000] [--rounds 4]

reduction="none" (no gradient-in-forward there), float32 and bfloat16, one forward +
backward per call. The two strategies alternate within each round, so a machine whose
load changes during the run slows both alike; the first round is a warm-up and the
median of the others is reported, with the ratio recompute / stored (> 1: stored faster).
"""
import argparse
import statistics
import time

import torch

import gnc_ext


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--K", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"B={a.B}, d={a.d}, K={a.K}, reduction='none', {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| dtype | stored s | recompute s | recompute / stored |\n|---|---|---|---|")
    for dt in (torch.float32, torch.bfloat16):
        H, W = torch.randn(a.B, a.d).to(dt), torch.randn(a.K, a.d).to(dt)
        y = torch.randint(0, a.K, (a.B,))
        res = {"stored": [], "recompute": []}
        for _ in range(a.rounds):
            for name in res:
                with gnc_ext.config.override(sce_strategy=name):
                    h, w = H.clone().requires_grad_(True), W.clone().requires_grad_(True)
                    t = time.perf_counter()
                    gnc_ext.spherical_cross_entropy(h, w, y, tau=0.05, reduction="none").sum().backward()
                    res[name].append(time.perf_counter() - t)
        s, r = (statistics.median(res[k][1:]) for k in ("stored", "recompute"))
        print(f"| {str(dt)[6:]} | {s:.3f} | {r:.3f} | {r / s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
