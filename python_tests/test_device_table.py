"""scripts/device_table.py (the closing table of scripts/device_check.sh) on sample
benchmark outputs written here: the numbers of the H200 run of 2026-11-30
(benchmarks/results/loss_cuda_h200_run3.md, hull_cuda_h200_run3.md) plus made-up rows that
meet or miss each bar, so that every verdict is exercised. Runs the command of the
script's docstring in a child Python."""
import json
import os
import subprocess
import sys

from conftest import package_subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "device_table.py")


def _row(case, impl, ms, mib, baseline="torch eager"):
    return {"case": case, "impl": impl, "ms": ms, "extra_mib": mib, "baseline": baseline}


def _write_samples(d):
    ce = "CE B=512, d=512, K=1000000, bfloat16"
    lm = "CE B=8192, d=2048, K=131072, bfloat16"
    loss = [_row(ce, "torch.compile", 5.340, 2932.6), _row(ce, "gnc_ext", 16.730, 3918.2),
            _row(ce, "gnc_ext stored", 3.5, 2500.0),
            {"case": ce, "impl": "gnc_ext recompute", "error": "RuntimeError: boom", "baseline": "torch eager"},
            _row(lm, "torch.compile", 23.858, 4640.3), _row(lm, "gnc_ext", 21.0, 4700.0)]
    with open(os.path.join(d, "bench_loss_cuda.json"), "w") as f:
        json.dump({"title": "t", "machine": "NVIDIA H200", "rows": loss}, f)
    epi = [{"kernel": "copy_ (baseline)", "ms": 0.1, "GB/s": 3000.0, "of copy rate": 1.0},
           {"kernel": "sce_fold", "ms": 0.12, "GB/s": 2400.0, "of copy rate": 0.8},
           {"kernel": "sce_stored_exp (bf16 E)", "ms": 0.2, "GB/s": 1500.0, "of copy rate": 0.5}]
    with open(os.path.join(d, "bench_epilogues.json"), "w") as f:
        json.dump({"device": "NVIDIA H200, tile 512 x 65536 fp32", "rows": epi}, f)
    base = "torch index_add fp64"
    met = [_row("update K=100k d=512 n=10 B=4096", base, 10.0, 100.0, base),
           dict(_row("update K=100k d=512 n=10 B=4096", "gnc_ext", 10.5, 90.0, base), speedup_vs_baseline=10 / 10.5),
           _row("ncc N=1M K=100k d=512 fp32", "gnc_ext", 800.0, 150.0, "torch chunked addmm+max")]
    with open(os.path.join(d, "bench_metrics_cuda.json"), "w") as f:
        json.dump({"rows": met}, f)
    with open(os.path.join(d, "hull_cuda.md"), "w") as f:
        f.write("| K | d | method | time (s) | iterations | ρ upper | ρ lower (certified) | max gap | ρ_lower − ρ* "
                "| speed-up | GPU MiB beyond W |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
                "| 100000 | 512 | gnc_ext | 5.50 | 5 | 0.835583795 | 0.835583795 | 9.30e-08 | -4.44e-16 |  | 2763 |\n")


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=tmp_path, env=package_subprocess_env(),
                          capture_output=True, text=True, timeout=60)


def test_closing_table_from_sample_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write_samples(out)
    md = tmp_path / "table.md"
    r = _run(tmp_path, str(out), "--md", str(md))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| family | case | implementation | time |")
    assert md.read_text().startswith("## device_check closing table")

    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[2:]]
    assert all(len(r) == 7 for r in rows)

    def row(case, impl):
        """the one row whose case cell contains `case` and whose implementation is `impl`"""
        hit = [" | ".join(r) for r in rows if case in r[1] and r[2] == impl]
        assert len(hit) == 1, (case, impl, lines)
        return hit[0]

    ce = "CE B=512, d=512, K=1000000, bfloat16"
    assert "5.340 ms" in row(ce, "torch.compile")
    r1 = row(ce, "gnc_ext")
    assert "16.730 ms" in r1 and "3.13x time" in r1 and "1.34x memory" in r1 and "misses <= 4 ms" in r1
    assert "meets <= 4 ms" in row(ce, "gnc_ext stored")
    assert "error: RuntimeError: boom" in row(ce, "gnc_ext recompute")
    # 21 ms meets the time bar but not the memory bar (4700 > 4640.3 MiB)
    assert "misses <= 22 ms" in row("CE B=8192, d=2048, K=131072, bfloat16", "gnc_ext")
    hm = row("HardMax B=512, d=512, K=1000000, bfloat16", "gnc_ext")
    assert "not measured" in hm and "FAIL" in hm
    fold = row("NVIDIA H200", "sce_fold")
    assert "80% of copy_" in fold and "meets >= 70% of copy_" in fold
    assert "misses >= 70%" in row("NVIDIA H200", "sce_stored_exp (bf16 E)")
    upd = row("update K=100k", "gnc_ext")
    assert "1.05x baseline time" in upd and "meets <= 1.10x baseline time" in upd
    assert "(baseline)" in row("update K=100k", "torch index_add fp64 (baseline)")
    assert not any("ncc" in r[1] for r in rows)
    h = row("K=100000, d=512", "gnc_ext")
    assert "5.50 s" in h and "2763 MiB" in h and "gap 9.30e-08" in h


def test_missing_outputs_are_reported_not_fatal(tmp_path):
    r = _run(tmp_path, str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("not measured") >= 5  # three loss shapes, epilogues, metrics, hull
    r = _run(tmp_path, str(tmp_path / "nope"))
    assert r.returncode == 2 and "out: " in r.stderr and "is not a folder" in r.stderr
