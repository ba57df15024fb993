"""Thm 3.9 bounds against the certified rho of solved Softmax Codes, d = 3..10 at K = 30
(the paper's Fig. 3 shape: rho versus d at fixed K). K = 30 satisfies the theorem's
condition K >= sqrt(2 pi sqrt(e) d) for every d <= 10 (K_min(10) = 10.2).

    PYTHONPATH=.:benchmarks python benchmarks/thm39_plot.py [time_limit_per_d_seconds]
"""
import os
import sys
import time

import torch

from gnc_ext import theory
from gnc_ext.solvers import softmax_code
from harness import write_section

K = 30
DIMS = range(3, 11)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "solvers2_thm39.png")


def main():
    torch.set_num_threads(1)
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    rows, pts = [], []
    for d in DIMS:
        b = theory.rho_bounds(d, K)
        t = time.perf_counter()
        r = softmax_code(d, K, seed=0, progress=False, restarts=16, batch=8, time_limit=limit)
        dt = time.perf_counter() - t
        ok = b.lower <= r.rho_lower and r.rho <= b.upper
        pts.append((d, r.rho, b.lower, b.upper))
        rows.append(f"| {d} | {b.lower:.5f} | {r.rho:.8f} | {b.upper:.5f} | {b.valid} | {ok} | {r.restarts} | {dt:.1f} |")
        print(rows[-1], flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ds = [p[0] for p in pts]
    ax.plot(ds, [p[1] for p in pts], "o-", label="certified rho of softmax_code")
    ax.plot(ds, [p[2] for p in pts], "--", label="Thm 3.9 lower bound")
    ax.plot(ds, [p[3] for p in pts], "--", label="Thm 3.9 upper bound")
    ax.set_xlabel("feature dimension d")
    ax.set_ylabel("rho_one-vs-rest")
    ax.set_title(f"K = {K} (paper Fig. 3 shape)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=120)
    text = (f"## Thm 3.9 bounds vs solved codes, K = {K}\n\n"
            f"softmax_code(d, {K}, seed=0, restarts=16, batch=8, time_limit={limit:g} s); 'inside' = "
            "lower bound <= certified rho_lower and rho <= upper bound.\n\n"
            "| d | Thm 3.9 lower | certified rho | Thm 3.9 upper | theorem applies | inside | restarts run | s |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nPlot: `solvers2_thm39.png`.")
    write_section("thm39", text)


if __name__ == "__main__":
    main()
