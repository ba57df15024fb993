"""The neural-collapse suite (gnc_ext.metrics.nc_metrics) at large K vs a dense brute force.

    python benchmarks/bench_nc_metrics.py [--K 100000] [--brute-K 10000] [--d 512] [--out DIR]

Each measurement runs in a fresh process (peak RSS is a process-wide high-water mark):
the process builds a GNCAccumulator from n = 2 samples per class (features around random
class means, W random), then times ONE call (the suite takes minutes at K = 100k; the
machine is shared, so no repeats) and reports its wall time and the process's peak RSS
(``VmHWM``: the peak of its own address space; ``ru_maxrss`` would carry the parent's
peak across the exec), with the RSS just before the call.

* ``gnc_ext``: ``nc_metrics(acc, W, ood_mean=...)`` — every field but NC4 (closed forms
  through d × d Grams, streamed fp64 tiles for CDNV, max angle and kernel statistics,
  twice K²·d flops with W). NC4 is a data pass: ``nc4_agreement_count`` on 8,192 rows is
  timed separately (``gnc_ext NC4 pass``).
* ``dense torch``: the same fields written directly in torch float64 with explicit K × K
  matrices (Gram, cosines, squared distances, CDNV and kernel grids, P = W M̃ᵀ), as a
  toolkit that forms the grid does; run at the largest K that fits the memory budget
  we allow ourselves on this shared machine (``--brute-K``).

The speed ratio is brute-force time / gnc_ext time at the same K (> 1: gnc_ext faster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(K, d):
    from gnc_ext.metrics import GNCAccumulator

    g = torch.Generator().manual_seed(0)
    mu = torch.nn.functional.normalize(torch.randn(K, d, generator=g), dim=1)
    acc = GNCAccumulator(K, d)
    y_all = torch.arange(K).repeat(2)
    for s in range(0, y_all.numel(), 8192):
        y = y_all[s:s + 8192]
        acc.update(mu[y] + 0.3 * torch.randn(y.numel(), d, generator=g) / math.sqrt(d), y)
    W = mu + 0.1 * torch.randn(K, d, generator=g) / math.sqrt(d)
    ood = torch.randn(d, generator=g)
    return acc, W, ood, mu


def dense_suite(acc, W, ood):
    """The suite with explicit K × K float64 matrices (independent of gnc_ext's algebra)."""
    counts, means, M2, within = acc.class_statistics()
    nz = counts > 0
    M = means[nz]
    K, d = M.shape
    N = int(counts.sum())
    Mt = M - M.mean(0)
    SW = M2 / N
    SB = Mt.T @ Mt / K
    out = {"nc1_pinv": float(torch.trace(SW @ torch.linalg.pinv(SB, hermitian=True))) / K,
           "nc1_quotient": float(torch.trace(SW) / torch.trace(SB))}
    sig2 = within[nz] / counts[nz].double()
    iu = torch.triu_indices(K, K, offset=1)
    G = Mt @ Mt.T                                            # K × K
    sq = torch.diagonal(G)
    D2 = sq[:, None] + sq[None, :] - 2 * G                   # K × K
    out["nc1_cdnv"] = float(((sig2[:, None] + sig2[None, :]) / (2 * D2))[iu[0], iu[1]].mean())
    r = Mt.norm(dim=1)
    out["nc2_equinorm"] = float(r.std(unbiased=False) / r.mean())
    C = G / (r[:, None] * r[None, :])                        # K × K
    cu = C[iu[0], iu[1]]
    out["nc2_equiangular"] = float(cu.std(unbiased=False))
    C.fill_diagonal_(-math.inf)
    out["nc2_max_angle"] = float((C.max(1).values + 1 / (K - 1)).abs().mean())
    E = (torch.eye(K, dtype=torch.float64) - 1.0 / K) / math.sqrt(K - 1)
    out["nc2_etf_error"] = float(torch.linalg.matrix_norm(G / torch.linalg.matrix_norm(G) - E))
    kv = torch.log(1.0 / (2 - 2 * cu).clamp(min=0).sqrt())
    out["nc2_kernel_mean"], out["nc2_kernel_var"] = float(kv.mean()), float(kv.var(unbiased=False))
    Wz = W.double()[nz]
    wn = Wz.norm(dim=1)
    out["w_equinorm"] = float(wn.std(unbiased=False) / wn.mean())
    Cw = (Wz / wn[:, None]) @ (Wz / wn[:, None]).T           # K × K
    out["w_equiangular"] = float(Cw[iu[0], iu[1]].std(unbiased=False))
    Cw.fill_diagonal_(-math.inf)
    out["w_max_angle"] = float((Cw.max(1).values + 1 / (K - 1)).abs().mean())
    P = Wz @ Mt.T                                            # K × K
    out["nc3_duality_error"] = float(torch.linalg.matrix_norm(P / torch.linalg.matrix_norm(P) - E))
    out["nc3_uniform_duality"] = float(torch.diagonal(P).var(unbiased=False))
    u = ood.double() / ood.double().norm()
    out["nc5_ood"] = float(((M @ u) / M.norm(dim=1)).abs().mean())  # raw class means (the toolkit's NC5)
    out["nc5_ood_centered"] = float(((Mt @ u) / r).abs().mean())
    return out


def child(impl, K, d):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from gnc_ext.metrics import nc_metrics

    acc, W, ood, mu = _setup(K, d)
    rss0 = _status_mib("VmRSS")
    t = time.perf_counter()
    if impl == "gnc_ext":
        # the NC suite only: GNC2 (the hull solve, benchmarks/bench_hull.py) is not part of what is compared
        vals = {k: v for k, v in nc_metrics(acc, W, ood_mean=ood, gnc2=False).to_dict().items()
                if isinstance(v, float)}
    elif impl == "gnc_ext NC4 pass":
        H = mu[torch.arange(8192) % K] + 0.3 * torch.randn(8192, d) / math.sqrt(d)
        vals = {"nc4_agree_rows": acc.nc4_agreement_count(H, W), "rows": 8192}
    else:
        vals = dense_suite(acc, W, ood)
    dt = time.perf_counter() - t
    peak = _status_mib("VmHWM")  # this address space's peak (ru_maxrss would include the parent's)
    print(json.dumps({"impl": impl, "K": K, "d": d, "time_s": dt, "peak_rss_mib": peak, "rss_before_mib": rss0,
                      "values": vals}))


def run(impl, K, d):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(K), str(d)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=100_000)
    ap.add_argument("--brute-K", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=3, default=None)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), int(a.child[2]))
        return
    rows = [run("dense torch", a.brute_K, a.d), run("gnc_ext", a.brute_K, a.d), run("gnc_ext", a.K, a.d),
            run("gnc_ext NC4 pass", a.K, a.d)]
    ref = rows[0]["values"]
    worst = max(abs(rows[1]["values"][k] - v) / max(abs(v), 1e-300) for k, v in ref.items())
    lines = ["| implementation | K | d | time (s) | peak RSS (MiB) | RSS before the call (MiB) | speed vs dense |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{rows[0]['time_s'] / r['time_s']:.2f}x" if r["K"] == a.brute_K else "—"
        lines.append(f"| {r['impl']} | {r['K']:,} | {r['d']} | {r['time_s']:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['rss_before_mib']:.0f} | {ratio} |")
    lines.append(f"\nlargest relative difference gnc_ext vs dense torch at K = {a.brute_K:,} over "
                 f"{len(ref)} fields: {worst:.1e}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_nc_metrics.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(a.out, "bench_nc_metrics.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
