"""Speed of softmax_code on the CPU: d=3, K=30 (target <= 60 s, within 1e-6 of the
reference 0.2184481249 = certified rho of the best Tammes configuration, see
python_tests/test_softmax_code.py) and d=10, K=100 (target <= 5 min).

    PYTHONPATH=. python benchmarks/bench_softmax_speed.py
"""
import platform
import time

import torch

from gnc_ext.solvers import softmax_code
from _solvers2_md import write_section

REF_3_30 = 0.2184481249


def main():
    torch.set_num_threads(2)
    rows = []
    t = time.perf_counter()
    r = softmax_code(3, 30, seed=0, progress=False)
    dt = time.perf_counter() - t
    rows.append(f"| softmax_code(3, 30) | {r.restarts} | {dt:.1f} | {r.rho:.10f} | {r.gap:.1e} | "
                f"{r.rho - REF_3_30:+.1e} vs ref | {len(r.rattlers)} |")
    print(rows[-1], flush=True)
    t = time.perf_counter()
    r = softmax_code(10, 100, seed=0, progress=False, restarts=8, batch=4, polish_top=1, time_limit=200.0)
    dt = time.perf_counter() - t
    rows.append(f"| softmax_code(10, 100, restarts=8, batch=4, polish_top=1, time_limit=200) | {r.restarts} | {dt:.1f} | "
                f"{r.rho:.10f} | {r.gap:.1e} | restart rhos {', '.join(f'{v:.6f}' for v in r.restart_values)} | "
                f"{len(r.rattlers)} |")
    print(rows[-1], flush=True)
    text = ("## Speed (CPU, 2 threads, machine shared with other jobs)\n\n"
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}.\n\n"
            "| call | restarts run | seconds | certified rho | gap | note | rattlers |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows))
    write_section("speed", text)


if __name__ == "__main__":
    main()
