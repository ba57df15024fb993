"""softmax_code at large K (issue: "report d=512, K=10,000 on the GPU").

At this size the LP polish is skipped (2K(d-1)+1 > 20,000 variables): the result comes
from the batched smoothed phase and the float64 L-BFGS continuation, both on --device;
the value is certified on the CPU by one_vs_rest_distance. Reported next to the Thm 3.9
bounds (gnc_ext.theory.rho_bounds) and a random code's certified rho.

    python benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --out OUT
    python benchmarks/bench_softmax_large.py --device cpu --d 16 --K 400   # small dry run

Writes OUT/softmax_large_<device>.md and prints the table row.
"""
import argparse
import os
import platform
import time

import torch

from gnc_ext import theory
from gnc_ext.solvers import certify_code, softmax_code


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--K", type=int, default=10000)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=240.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = ap.parse_args()
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    g = torch.Generator().manual_seed(1)
    rand = certify_code(torch.nn.functional.normalize(torch.randn(a.K, a.d, generator=g, dtype=torch.float64), dim=1))
    t0 = time.perf_counter()
    r = softmax_code(a.d, a.K, seed=0, restarts=a.restarts, batch=a.restarts, max_iter=a.max_iter, device=dev,
                     progress=False, time_limit=a.time_limit)
    dt = time.perf_counter() - t0
    bounds = theory.rho_bounds(a.d, a.K)
    lo, hi = bounds.lower, bounds.upper
    head = ("| d | K | device | restarts | smoothed iters | seconds | certified rho_lower | gap | Thm 3.9 lower | "
            "Thm 3.9 upper | random code rho | polish |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    row = (f"| {a.d} | {a.K} | {name} | {r.restarts} | {a.max_iter} | {dt:.1f} | {r.rho_lower:.8f} | {r.max_gap:.1e} | "
           f"{lo:.5f} | {hi:.5f} | {rand['rho_lower']:.6f} | {r.polish_status} |")
    print(head + row, flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"softmax_large_{dev.type}.md"), "w") as f:
        f.write(f"## softmax_code at large K ({dev.type})\n\n"
                f"`python benchmarks/bench_softmax_large.py --device {a.device} --d {a.d} --K {a.K} "
                f"--restarts {a.restarts} --max-iter {a.max_iter} --time-limit {a.time_limit}`\n\n{head}{row}\n")


if __name__ == "__main__":
    main()
