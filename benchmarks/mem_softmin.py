"""Peak RSS and time of the softmax-code smoothed phase's objective + gradient: autograd
through the full (R, K, K) matrix (the pre-2026-11-30 code, kept here as the baseline)
versus the row-blocked online log-sum-exp (`_softmin_value_and_grad`).

    python benchmarks/mem_softmin.py full      # or: blocked
    python benchmarks/mem_softmin.py full --R 2 --K 10000 --d 512 --steps 3

One configuration per fresh process (peak RSS only grows): the default is the d = 512,
K = 10,000 configuration of bench_softmax_large.py (2 restarts per batch, float32).
Prints the peak RSS growth over `steps` evaluations and the median seconds per evaluation.
"""
import argparse
import importlib
import math
import resource
import statistics
import time

import torch

scm = importlib.import_module("gnc_ext.solvers.softmax_code")


def full(W, H, s):
    R, K, _ = W.shape
    W = W.detach().requires_grad_(True)
    H = H.detach().requires_grad_(True)
    S = H @ W.transpose(1, 2)
    M = S.diagonal(dim1=1, dim2=2).unsqueeze(2) - S
    Z = (-M / s).masked_fill(torch.eye(K, dtype=torch.bool, device=W.device), -math.inf)
    f = s * torch.logsumexp(Z.reshape(R, -1), dim=1)
    gW, gH = torch.autograd.grad(f.sum(), (W, H))
    return f.detach(), gW, gH


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl", choices=("full", "blocked"))
    ap.add_argument("--R", type=int, default=2)
    ap.add_argument("--K", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(a.R, a.K, a.d, generator=g), dim=2)
    H = torch.nn.functional.normalize(W + 0.1 * torch.randn(a.R, a.K, a.d, generator=g), dim=2)
    fn = full if a.impl == "full" else scm._softmin_value_and_grad
    s = 0.05
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        f, gW, gH = fn(W, H, s)
        times.append(time.perf_counter() - t0)
        del gW, gH
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"{a.impl}: R={a.R} K={a.K} d={a.d} float32, {torch.get_num_threads()} threads: "
          f"peak RSS growth {grown:.0f} MiB, median {statistics.median(times):.2f} s per evaluation, "
          f"f[0]={float(f[0]):.6f}")


if __name__ == "__main__":
    main()
