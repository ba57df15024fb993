"""softmax_code: time and certified rho, at large K and (``--speed``) at the two small
sizes with CPU time targets.

Large K (the default run; "report d=512, K=10,000 on the GPU"): at this size the LP polish is skipped (2K(d-1)+1 > 20,000 variables): the result comes
from the batched smoothed phase and the float64 L-BFGS continuation, both on --device;
the value is certified on the CPU by one_vs_rest_distance. Reported next to the Thm 3.9
bounds (gnc_ext.theory.rho_bounds) and a random code's certified rho.

    python benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --out OUT
    python benchmarks/bench_softmax_large.py --device cpu --d 16 --K 400   # small dry run

Writes OUT/softmax_large_<device>.md and prints the table row.

Speed (``--speed 3_30,10_100``, CPU): d=3, K=30 (target <= 60 s, within 1e-6 of the
reference 0.2184481249 = certified rho of the best Tammes configuration, see
python_tests/test_softmax_code.py) and d=10, K=100 (target <= 5 min; the default call:
smoothed phase, L-BFGS continuation of the 4 best starts, LP polish of the best), with
``--threads`` torch threads (default 1: these problems are tiny, and on a shared, loaded
2-core machine two OpenMP threads made softmax_code(3, 30) 17x slower, 108 s vs 6.4 s).
Writes the sections speed_3_30 / speed_10_100 of results/solvers2_cpu.md.

    PYTHONPATH=.:benchmarks python benchmarks/bench_softmax_large.py --speed 3_30,10_100 [--threads 1]
"""
import argparse
import os
import platform
import time

import torch

from gnc_ext import theory
from gnc_ext.solvers import certify_code, softmax_code

REF_3_30 = 0.2184481249
SPEED_HEAD = ("| call | torch threads | restarts run | seconds | certified rho | max_gap | note | rattlers |\n"
              "|---|---|---|---|---|---|---|---|\n")


def speed(cases, threads: int) -> None:
    """The small-size CPU timings (``--speed``), one section each in results/solvers2_cpu.md."""
    from harness import write_section

    torch.set_num_threads(threads)
    env = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, machine shared with other jobs."
    if "3_30" in cases:
        t = time.perf_counter()
        r = softmax_code(3, 30, seed=0, progress=False)
        dt = time.perf_counter() - t
        row = (f"| softmax_code(3, 30, seed=0) | {threads} | {r.restarts} | {dt:.1f} | {r.rho:.10f} | {r.max_gap:.1e} | "
               f"{r.rho - REF_3_30:+.1e} vs ref | {r.rattlers.numel()} |")
        print(row, flush=True)
        write_section("speed_3_30", f"## Speed: d=3, K=30 (CPU)\n\n{env}\n\n{SPEED_HEAD}{row}")
    if "10_100" in cases:
        t = time.perf_counter()
        r = softmax_code(10, 100, seed=0, progress=False)
        dt = time.perf_counter() - t
        vals = ", ".join(f"{v:.7f}" for v in r.restart_values)
        row = (f"| softmax_code(10, 100, seed=0) (defaults) | {threads} | {r.restarts} | {dt:.1f} | {r.rho:.10f} | "
               f"{r.max_gap:.1e} | polish_status={r.polish_status} after {r.polish_iters} LP steps; polished starts "
               f"after the continuation: {vals} | {r.rattlers.numel()} |")
        print(row, flush=True)
        write_section("speed_10_100", f"## Speed: d=10, K=100 (CPU)\n\n{env}\n\n{SPEED_HEAD}{row}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--K", type=int, default=10000)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=240.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--speed", default=None, metavar="3_30,10_100",
                    help="run the small-size CPU timings instead of the large-K run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --speed")
    a = ap.parse_args()
    if a.speed:
        speed(a.speed.split(","), a.threads)
        return
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
    head = ("| d | K | device | restarts | smoothed iters | seconds | certified rho_lower | max_gap | Thm 3.9 lower | "
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
