"""Speed of softmax_code on the CPU: d=3, K=30 (target <= 60 s, within 1e-6 of the
reference 0.2184481249 = certified rho of the best Tammes configuration, see
python_tests/test_softmax_code.py) and d=10, K=100 (target <= 5 min; the default call:
smoothed phase, L-BFGS continuation of the 4 best starts, LP polish of the best).

    PYTHONPATH=.:benchmarks python benchmarks/bench_softmax_speed.py [3_30] [10_100] [threads]

One torch thread by default: these problems are tiny and on a shared, loaded 2-core
machine two OpenMP threads made softmax_code(3, 30) 17x slower (108 s vs 6.4 s).
"""
import platform
import sys
import time

import torch

from gnc_ext.solvers import softmax_code
from _solvers2_md import write_section

REF_3_30 = 0.2184481249
HEAD = "| call | torch threads | restarts run | seconds | certified rho | gap | note | rattlers |\n|---|---|---|---|---|---|---|---|\n"


def main():
    args = sys.argv[1:]
    threads = int(next((a for a in args if a.isdigit()), "1"))
    torch.set_num_threads(threads)
    env = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, machine shared with other jobs."
    if not any("_" in a for a in args) or "3_30" in args:
        t = time.perf_counter()
        r = softmax_code(3, 30, seed=0, progress=False)
        dt = time.perf_counter() - t
        row = (f"| softmax_code(3, 30, seed=0) | {threads} | {r.restarts} | {dt:.1f} | {r.rho:.10f} | {r.max_gap:.1e} | "
               f"{r.rho - REF_3_30:+.1e} vs ref | {len(r.rattlers)} |")
        print(row, flush=True)
        write_section("speed_3_30", f"## Speed: d=3, K=30 (CPU)\n\n{env}\n\n{HEAD}{row}")
    if not any("_" in a for a in args) or "10_100" in args:
        t = time.perf_counter()
        r = softmax_code(10, 100, seed=0, progress=False)
        dt = time.perf_counter() - t
        vals = ", ".join(f"{v:.7f}" for v in r.restart_values)
        row = (f"| softmax_code(10, 100, seed=0) (defaults) | {threads} | {r.restarts} | {dt:.1f} | {r.rho:.10f} | "
               f"{r.max_gap:.1e} | polish_status={r.polish_status} after {r.polish_iters} LP steps; polished starts "
               f"after the continuation: {vals} | {len(r.rattlers)} |")
        print(row, flush=True)
        write_section("speed_10_100", f"## Speed: d=10, K=100 (CPU)\n\n{env}\n\n{HEAD}{row}")


if __name__ == "__main__":
    main()
