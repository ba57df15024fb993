"""The one closing table of scripts/device_check.sh, assembled from the benchmark outputs
it leaves in a folder (missing inputs give "not measured" rows, never an error):

* bench_loss_cuda.json (benchmarks/harness.py): at each headline shape, every loss
  strategy's median time and extra peak memory next to torch.compile's, with the
  issue's time bar;
* bench_epilogues.json: each epilogue's GB/s as a fraction of ``copy_``'s (bar 70 %);
* bench_metrics_cuda.json: the metrics update against its index_add + fp64 baseline
  (bar: within 10 %);
* hull_cuda.md / hull_cuda_1m.md (benchmarks/bench_hull.py): one_vs_rest_distance's time
  at K = 100k and 1M.

    python scripts/device_table.py OUT_DIR [--md FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

# headline loss shapes and the time each must meet (ms), from issue 22's must-show list
LOSS_BARS = {
    "CE B=512, d=512, K=1000000, bfloat16": 4.0,
    "CE B=8192, d=2048, K=131072, bfloat16": 22.0,
    "HardMax B=512, d=512, K=1000000, bfloat16": 3.0,
}
LOSS_IMPLS = ("gnc_ext", "gnc_ext stored", "gnc_ext stored bf16", "gnc_ext recompute")
EPILOGUE_BAR = 0.70
METRICS_CASE = "update K=100k"
METRICS_BAR = 1.10  # time at most 1.10 x the baseline's


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fmt(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def loss_rows(out: str) -> List[List[str]]:
    data = _load_json(os.path.join(out, "bench_loss_cuda.json"))
    rows = []
    by = {}
    for r in (data or {}).get("rows", []):
        by[(r.get("case"), r.get("impl"))] = r
    for case, bar in LOSS_BARS.items():
        ref = by.get((case, "torch.compile"), {})
        ref_ms, ref_mib = ref.get("ms"), ref.get("extra_mib")
        rows.append(["loss", case, "torch.compile", _fmt(ref_ms, ".3f") + " ms", _fmt(ref_mib, ".0f") + " MiB",
                     "reference", ""])
        for impl in LOSS_IMPLS:
            r = by.get((case, impl))
            if r is None:
                if impl == "gnc_ext":
                    rows.append(["loss", case, impl, "not measured", "", "", "FAIL (no result)"])
                continue
            if "error" in r:
                rows.append(["loss", case, impl, "error: " + str(r["error"])[:80], "", "", "FAIL"])
                continue
            ms, mib = r.get("ms"), r.get("extra_mib")
            rel = (f"{ms / ref_ms:.2f}x time" if ms and ref_ms else "") + (
                f", {mib / ref_mib:.2f}x memory" if mib is not None and ref_mib else "")
            ok = ms is not None and ms <= bar and (mib is None or ref_mib is None or mib <= ref_mib)
            rows.append(["loss", case, impl, _fmt(ms, ".3f") + " ms", _fmt(mib, ".0f") + " MiB", rel,
                         f"{'meets' if ok else 'misses'} <= {bar:g} ms, memory <= torch.compile"])
    return rows


def epilogue_rows(out: str) -> List[List[str]]:
    data = _load_json(os.path.join(out, "bench_epilogues.json"))
    if not data:
        return [["epilogue", "bench_epilogues", "", "not measured", "", "", ""]]
    rows = []
    for r in data.get("rows", []):
        frac = r.get("of copy rate")
        base = r.get("kernel", "").startswith("copy_")
        verdict = "" if base or frac is None else ("meets" if frac >= EPILOGUE_BAR else "misses") + \
            f" >= {EPILOGUE_BAR:.0%} of copy_"
        rows.append(["epilogue", str(data.get("device", ""))[:40], r.get("kernel", ""),
                     _fmt(r.get("ms"), ".3f") + " ms", _fmt(r.get("GB/s"), ".0f") + " GB/s",
                     "" if frac is None else f"{frac:.0%} of copy_", verdict])
    return rows


def metrics_rows(out: str) -> List[List[str]]:
    data = _load_json(os.path.join(out, "bench_metrics_cuda.json"))
    rows = []
    for r in (data or {}).get("rows", []):
        if METRICS_CASE not in str(r.get("case", "")):
            continue
        base = r.get("impl") == r.get("baseline")
        sp = r.get("speedup_vs_baseline")
        verdict = ""
        if not base and r.get("impl") == "gnc_ext":
            verdict = "n/a" if sp is None else ("meets" if 1.0 / sp <= METRICS_BAR else "misses") + \
                " <= 1.10x baseline time"
        rows.append(["metrics", r.get("case", ""), r.get("impl", "") + (" (baseline)" if base else ""),
                     ("error: " + str(r["error"])[:60]) if "error" in r else _fmt(r.get("ms"), ".3f") + " ms",
                     _fmt(r.get("extra_mib"), ".0f") + " MiB", "" if sp is None else f"{1.0 / sp:.2f}x baseline time",
                     verdict])
    return rows or [["metrics", METRICS_CASE, "", "not measured", "", "", ""]]


def hull_rows(out: str) -> List[List[str]]:
    rows = []
    for name in ("hull_cuda.md", "hull_cuda_1m.md"):
        try:
            with open(os.path.join(out, name)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 8 and cells[2] == "gnc_ext" and cells[0].isdigit():
                rows.append(["one-vs-rest", f"K={cells[0]}, d={cells[1]}", "gnc_ext", f"{cells[3]} s",
                             (cells[10] + " MiB") if len(cells) > 10 and cells[10] else "",
                             f"gap {cells[7]}", ""])
    return rows or [["one-vs-rest", "K=100000", "gnc_ext", "not measured", "", "", ""]]


def table(out: str) -> str:
    head = ["family", "case", "implementation", "time", "memory / rate", "relative", "bar"]
    body = loss_rows(out) + epilogue_rows(out) + metrics_rows(out) + hull_rows(out)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="the closing table of scripts/device_check.sh")
    p.add_argument("out", help="the folder the benchmarks wrote to")
    p.add_argument("--md", default=None, help="also write the table to this file")
    a = p.parse_args(argv)
    if not os.path.isdir(a.out):
        p.error(f"out: {a.out!r} is not a folder")
    text = table(a.out)
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write("## device_check closing table\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
