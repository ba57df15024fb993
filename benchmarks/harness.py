"""A small shared benchmark harness.

A benchmark script declares ``Case`` objects: a name, a ``setup(device)`` that builds
the inputs, a dict of implementations ``{name: fn(inputs)}`` (each runs one full step,
e.g. forward+backward) and the name of the baseline. ``run_cases`` then, for every
case and implementation, in the same process and run:

* warms up, then times ``repeats`` calls and reports the median (CUDA events on GPU,
  ``time.perf_counter`` on CPU);
* measures memory beyond the inputs: on GPU ``torch.cuda.max_memory_allocated``
  above what was allocated after setup; on CPU the peak RSS above the current RSS (and
  the whole process's peak RSS during the call, inputs and libraries included) in
  a **fresh process** (the script re-runs itself with ``--child CASE IMPL``; after
  one untimed call, the kernel's high-water mark is reset and a second call measured),
  since RSS is a process-wide high-water mark;
* reports the speed-up against the baseline measured in the same run
  (``ratio = baseline_ms / impl_ms``; > 1 is faster) and the memory ratio.

Results are written as JSON and as a markdown table (``--out DIR``) and printed.
``write_section`` keeps the solver benchmarks' shared page
(``results/solvers2_cpu.md``) one named section per script.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch


@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[str], Any]
    impls: Dict[str, Callable[[Any], Any]]
    baseline: str
    devices: tuple = ("cpu", "cuda")
    warmup: int = 2
    repeats: int = 7
    notes: str = ""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, warmup: int = 2, repeats: int = 7) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times)}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _status_mib(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def gpu_extra_mib(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def _child(cases: List[Case], case_name: str, impl_name: str) -> None:
    case = next(c for c in cases if c.name == case_name)
    inputs = case.setup("cpu")
    fn = case.impls[impl_name]
    # one untimed call first: lazy one-time allocations (dispatcher tables, thread
    # pools, library caches) are not memory of the op; then measure a steady-state call
    fn(inputs)
    import gc

    gc.collect()
    if _reset_peak_rss():
        base = _status_mib("VmRSS")
        fn(inputs)
        extra = _status_mib("VmHWM") - base
    else:  # no peak reset: growth of the process-wide high-water mark (a lower bound)
        base = _maxrss_mib()
        fn(inputs)
        extra = _maxrss_mib() - base
    print("@@RESULT " + json.dumps({"extra_mib": extra, "base_mib": base}))


def cpu_memory_mib(script: str, case_name: str, impl_name: str) -> Optional[Dict[str, float]]:
    """``{"extra_mib": peak RSS above the RSS before the measured call, "peak_rss_mib":
    the whole process's peak RSS during that call}`` from a fresh child process."""
    out = subprocess.run(
        [sys.executable, script, "--child", case_name, impl_name], capture_output=True, text=True, timeout=1800
    )
    for line in out.stdout.splitlines():
        if line.startswith("@@RESULT "):
            r = json.loads(line[len("@@RESULT "):])
            return {"extra_mib": r["extra_mib"], "peak_rss_mib": r["extra_mib"] + r["base_mib"]}
    sys.stderr.write(f"memory child failed for {case_name}/{impl_name}:\n{out.stderr[-2000:]}\n")
    return None


def cpu_extra_mib(script: str, case_name: str, impl_name: str) -> Optional[float]:
    r = cpu_memory_mib(script, case_name, impl_name)
    return None if r is None else r["extra_mib"]


def run_cases(cases: List[Case], device: str, script: str, *, only: Optional[str] = None,
              memory: bool = True) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for case in cases:
        if only and not any(o and o in case.name for o in only.split(";")):
            continue
        if device.split(":")[0] not in case.devices:
            continue
        inputs = case.setup(device)
        results = {}
        for impl_name, fn in case.impls.items():
            try:
                t = time_fn(lambda: fn(inputs), device, case.warmup, case.repeats)
                if memory:
                    if device.startswith("cuda"):
                        t["extra_mib"] = gpu_extra_mib(lambda: fn(inputs))
                    else:
                        t.update(cpu_memory_mib(script, case.name, impl_name) or {"extra_mib": None})
                results[impl_name] = t
            except Exception as exc:  # a peer that fails is reported, not fatal
                results[impl_name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            # progress line per implementation, so that a run stopped by a time limit
            # still leaves the numbers measured so far in its log
            r = results[impl_name]
            print(f"[{case.name}] {impl_name}: " + (r["error"] if "error" in r else
                  f"{r['ms']:.3f} ms" + (f", {r['extra_mib']:.1f} MiB extra" if r.get("extra_mib") is not None else "")),
                  flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        base = results.get(case.baseline, {})
        for impl_name, r in results.items():
            row = {"case": case.name, "impl": impl_name, "device": device, **r}
            if "ms" in r and "ms" in base:
                row["speedup_vs_baseline"] = base["ms"] / r["ms"]
            if r.get("extra_mib") is not None and base.get("extra_mib"):
                row["mem_ratio_vs_baseline"] = r["extra_mib"] / base["extra_mib"]
            if r.get("peak_rss_mib") is not None and base.get("peak_rss_mib"):
                row["peak_rss_ratio_vs_baseline"] = r["peak_rss_mib"] / base["peak_rss_mib"]
            row["baseline"] = case.baseline
            rows.append(row)
        del inputs
    return rows


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| case | impl | ms (median) | extra MiB | speed-up vs baseline | mem vs baseline | peak RSS MiB (vs baseline) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['impl']} | error: {r['error']} | | | | |")
            continue
        mem = r.get("extra_mib")
        lines.append(
            "| {case} | {impl}{b} | {ms:.3f} | {mem} | {sp} | {mr} | {pk} |".format(
                case=r["case"], impl=r["impl"], b=" (baseline)" if r["impl"] == r["baseline"] else "",
                ms=r["ms"], mem="n/a" if mem is None else f"{mem:.1f}",
                sp=f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else "",
                mr=f"{r['mem_ratio_vs_baseline']:.2f}" if "mem_ratio_vs_baseline" in r else "",
                pk="" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}" + (
                    f" ({r['peak_rss_ratio_vs_baseline']:.2f})" if "peak_rss_ratio_vs_baseline" in r else ""),
            )
        )
    return "\n".join(lines)


def main(cases: List[Case], title: str, argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    p = argparse.ArgumentParser(description=title)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default=None,
                   help="run only cases whose name contains this (several: separate them with ';')")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for JSON + markdown results")
    p.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    script = os.path.abspath(sys.argv[0])
    if args.child:
        _child(cases, *args.child)
        return []
    rows = run_cases(cases, args.device, script, only=args.only, memory=not args.no_memory)
    header = (f"## {title}\n\nDate: {_dt.date.today().isoformat()}; machine: {machine_description(args.device)}; "
              f"command: `python {os.path.relpath(script)} {' '.join(a for a in (argv or sys.argv[1:]))}`\n")
    table = markdown_table(rows)
    print(header)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.splitext(os.path.basename(script))[0] + "_" + args.device.split(":")[0]
        with open(os.path.join(args.out, stem + ".json"), "w") as f:
            json.dump({"title": title, "machine": machine_description(args.device), "rows": rows}, f, indent=1)
        with open(os.path.join(args.out, stem + ".md"), "w") as f:
            f.write(header + "\n" + table + "\n")
    return rows


SOLVERS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "solvers2_cpu.md")


def write_section(name: str, text: str, path: str = SOLVERS_MD) -> None:
    """Write (or replace) the section ``name`` of the markdown page ``path``; the other
    sections are kept. Used by the solver benchmarks, which share one results page."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.exists(path) else "# solvers2 (Softmax Codes, UFM, HardMax) — CPU results\n\n"
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->\n"
    pat = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n", re.S)
    new = pat.sub(lambda m: block, old) if pat.search(old) else old.rstrip() + "\n\n" + block
    with open(path, "w") as f:
        f.write(new)
