"""GNC metrics at large K: GNCAccumulator.update and the NCC pass vs pure PyTorch.

    python benchmarks/bench_metrics.py [--device cpu|cuda] [--only update] [--out DIR]

Cases (same run, same inputs, median time; memory in a fresh process on CPU):

* ``update``: K classes, d=512, ``n`` samples per class in shuffled order, streamed in
  batches of 4,096; one timed call = the whole stream into a fresh accumulator (so the
  state allocation is included). Baselines: a straightforward pure-PyTorch index_add
  accumulator of per-class sums and the global second moment hᵀh, in fp64 (the
  baseline) and in fp32 (faster, but its E[hhᵀ] − μμᵀ GNC1 is wrong under collapse;
  see python_tests/test_metrics.py). Features are normalised in every implementation.
  To keep the input small, the stream reuses a pool of 16 feature batches (labels are
  the real shuffled stream).
* ``ncc``: NCC pass of N features against K class means (d=512): gnc_ext (torch GEMM per
  tile of classes + native argmax epilogue) vs pure PyTorch chunked ``addmm`` +
  ``max(dim=1)`` + running update, with the same tile budget (64 MiB).
"""
import math

import torch
import torch.nn.functional as F

import gnc_ext  # noqa: F401
from gnc_ext._engine import chunk_size
from gnc_ext.metrics import GNCAccumulator
from harness import Case, main

BATCH = 4096
POOL = 16


def _update_setup(K, d, n):
    def setup(device):
        g = torch.Generator().manual_seed(0)
        pool = torch.randn(POOL, BATCH, d, generator=g).to(device)
        labels = torch.arange(K).repeat_interleave(n)[torch.randperm(K * n, generator=g)].to(device)
        return {"K": K, "d": d, "pool": pool, "labels": labels, "device": device}
    return setup


def _stream(inp):
    labels, pool = inp["labels"], inp["pool"]
    for i, s in enumerate(range(0, labels.numel(), BATCH)):
        y = labels[s:s + BATCH]
        yield pool[i % POOL][: y.numel()], y


def run_gnc_ext(inp):
    acc = GNCAccumulator(inp["K"], inp["d"], device=inp["device"])
    for h, y in _stream(inp):
        acc.update(h, y)
    return acc


def _torch_accumulator(dtype):
    def run(inp):
        K, d, dev = inp["K"], inp["d"], inp["device"]
        sums = torch.zeros(K, d, dtype=dtype, device=dev)
        counts = torch.zeros(K, dtype=torch.int64, device=dev)
        second = torch.zeros(d, d, dtype=dtype, device=dev)
        for h, y in _stream(inp):
            hn = F.normalize(h.to(dtype), dim=1)
            sums.index_add_(0, y, hn)
            counts.index_add_(0, y, torch.ones_like(y))
            second.addmm_(hn.T, hn)
        return sums, counts, second
    return run


def _ncc_setup(N, K, d):
    def setup(device):
        g = torch.Generator().manual_seed(1)
        means = F.normalize(torch.randn(K, d, generator=g), dim=1).to(device)
        X = torch.randn(N, d, generator=g).to(device)
        acc = GNCAccumulator(K, d, device=device)
        st = acc.state_dict()
        st["shift"] = means.cpu()
        st["counts"] = torch.ones(K, dtype=torch.int64)
        acc.load_state_dict(st)
        acc.ncc_predict(X[:8])  # builds the fp32 means/bias tables once
        return {"acc": acc, "X": X, "means": means, "bias": -0.5 * (means * means).sum(1)}
    return setup


def run_ncc_gnc_ext(inp):
    return inp["acc"].ncc_predict(inp["X"])


def run_ncc_torch(inp, row_block=8192):
    X, M, bias = inp["X"], inp["means"], inp["bias"]
    K = M.shape[0]
    out = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
    for r0 in range(0, X.shape[0], row_block):
        A = F.normalize(X[r0:r0 + row_block], dim=1)
        best = torch.full((A.shape[0],), -math.inf, device=X.device)
        arg = out[r0:r0 + A.shape[0]]
        c = chunk_size(A.shape[0], K)
        for s in range(0, K, c):
            tile = torch.addmm(bias[s:s + c], A, M[s:s + c].T)
            v, i = tile.max(dim=1)
            better = v > best
            best = torch.where(better, v, best)
            arg.copy_(torch.where(better, i + s, arg))
    return out


CASES = [
    Case("update K=100k d=512 n=10 B=4096", _update_setup(100_000, 512, 10),
         {"torch index_add fp64": _torch_accumulator(torch.float64),
          "torch index_add fp32 (naive numerics)": _torch_accumulator(torch.float32),
          "gnc_ext": run_gnc_ext},
         baseline="torch index_add fp64", devices=("cpu", "cuda"), warmup=1, repeats=3),
    Case("update K=10k d=512 n=10 B=4096 (scaled)", _update_setup(10_000, 512, 10),
         {"torch index_add fp64": _torch_accumulator(torch.float64),
          "torch index_add fp32 (naive numerics)": _torch_accumulator(torch.float32),
          "gnc_ext": run_gnc_ext},
         baseline="torch index_add fp64", devices=("cpu",), warmup=1, repeats=5),
    Case("ncc N=1024 K=100k d=512 fp32", _ncc_setup(1024, 100_000, 512),
         {"torch chunked addmm+max": run_ncc_torch, "gnc_ext": run_ncc_gnc_ext},
         baseline="torch chunked addmm+max", devices=("cpu",), warmup=1, repeats=3),
    Case("ncc N=1M K=100k d=512 fp32", _ncc_setup(1_000_000, 100_000, 512),
         {"torch chunked addmm+max": run_ncc_torch, "gnc_ext": run_ncc_gnc_ext},
         baseline="torch chunked addmm+max", devices=("cuda",), warmup=1, repeats=3),
]

def interleaved(case_names, rounds=5):
    """Noise-robust addendum for a shared CPU: implementations alternate round by round
    (so load changes hit all of them alike) and both wall and process CPU time are
    recorded; prints a markdown table of medians."""
    import statistics
    import time

    lines = ["| case | impl | wall ms (median) | CPU ms (median) | speed-up (wall) | speed-up (CPU) |",
             "|---|---|---|---|---|---|"]
    for case in CASES:
        if not any(n in case.name for n in case_names) or "cpu" not in case.devices:
            continue
        inp = case.setup("cpu")
        for fn in case.impls.values():
            fn(inp)  # warm-up
        wall = {k: [] for k in case.impls}
        cpu = {k: [] for k in case.impls}
        for _ in range(rounds):
            for name, fn in case.impls.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(inp)
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
        bw, bc = statistics.median(wall[case.baseline]), statistics.median(cpu[case.baseline])
        for name in case.impls:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            lines.append(f"| {case.name} | {name}{' (baseline)' if name == case.baseline else ''} | {w:.0f} | "
                         f"{c:.0f} | {bw / w:.2f}x | {bc / c:.2f}x |")
        del inp
    print("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--interleaved" in sys.argv:
        i = sys.argv.index("--interleaved")
        names = sys.argv[i + 1].split(",") if len(sys.argv) > i + 1 else ["update"]
        interleaved(names)
    else:
        main(CASES, "GNC metrics: GNCAccumulator.update and NCC vs pure PyTorch")
