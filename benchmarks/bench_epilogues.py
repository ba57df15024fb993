"""Bandwidth of the loss epilogue kernels on a GPU, in GB/s, against the card's copy rate.

    python benchmarks/bench_epilogues.py [--rows 512] [--cols 65536] [--d 512] [--out DIR]

Each native epilogue runs on one (rows × cols) fp32 tile of the headline shape (B = 512,
one CUDA tile of 65,536 classes); its time is the median of CUDA-event timings of
``--repeats`` launches after a warm-up, and its rate is the bytes it must move divided
by that time: ``sce_fold`` and ``masked_argmax_fold`` read the tile (4 B per entry),
``sce_grad`` reads and rewrites it (8 B), ``sce_stored_exp`` reads it and writes E
(4 + 2 B for a bfloat16 store, 4 + 4 B for float32), ``sce_stored_dw`` reads X (fp32)
and W and writes dW (4 + 2 + 2 B per entry of a (cols × d) block in bfloat16). The
baseline is ``Tensor.copy_`` of an fp32 tile of the same size (8 B per entry), measured
in the same run; the issue's bar is 70% of it. CUDA only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch


def _time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--cols", type=int, default=65536)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_epilogues: needs a CUDA device")
    import gnc_ext  # noqa: F401
    from gnc_ext._native import native, stream_of, view
    from gnc_ext.ops.sce_stored import exp_workspace

    dev = "cuda"
    R, c, d = a.rows, a.cols, a.d
    g = torch.Generator(device=dev).manual_seed(0)
    tile = (torch.rand((R, c), generator=g, device=dev) * 2 - 1).contiguous()
    work = tile.clone()
    y = torch.randint(0, c, (R,), generator=g, device=dev)
    st = stream_of(tile)
    f64 = dict(dtype=torch.float64, device=dev)
    state = torch.zeros((R, 4), **f64)
    lse = torch.full((R,), 5.0, **f64)
    q = torch.full((R,), 0.5, **f64)
    scale = torch.ones(R, **f64)
    best = torch.full((R,), -1e300, **f64)
    arg = torch.zeros(R, dtype=torch.int64, device=dev)
    tgt = torch.zeros(R, **f64)
    inv_n = torch.rand(c, generator=g, device=dev) + 0.5
    shift = torch.zeros(R, **f64)
    E16 = torch.empty((R, c), dtype=torch.bfloat16, device=dev)
    E32 = torch.empty((R, c), dtype=torch.float32, device=dev)
    X = torch.randn((c, d), generator=g, device=dev)
    Wb = torch.randn((c, d), generator=g, device=dev).bfloat16()
    dWb = torch.empty_like(Wb)
    v = torch.randn(d, generator=g, device=dev)
    dst = torch.empty_like(tile)
    ws = exp_workspace(R, c, dev)  # sce_stored_exp's workspace, allocated once (as a pass does)

    n = R * c
    kernels = {
        "copy_ (baseline)": (lambda: dst.copy_(tile), 8 * n),
        "sce_fold": (lambda: native.sce_fold(view(tile), view(y), 0, view(state), 0.05, 1, 0.35, -100, st), 4 * n),
        "sce_grad (in place)": (lambda: native.sce_grad(view(work), view(y), 0, c, view(lse), view(q), view(scale),
                                                        0.05, 1, 0.35, 0.1, -100, st), 8 * n),
        "masked_argmax_fold": (lambda: native.masked_argmax_fold(view(tile), view(y), 0, view(best), view(arg),
                                                                 view(tgt), st), 4 * n),
        "sce_stored_exp (bf16 E)": (lambda: native.sce_stored_exp(view(tile), view(inv_n), view(y), 0, view(shift),
                                                                  view(E16), view(state), 0.05, -100, view(ws), st), 6 * n),
        "sce_stored_exp (fp32 E)": (lambda: native.sce_stored_exp(view(tile), view(inv_n), view(y), 0, view(shift),
                                                                  view(E32), view(state), 0.05, -100, view(ws), st), 8 * n),
        "sce_stored_dw (bf16 W)": (lambda: native.sce_stored_dw(view(X), view(Wb), view(inv_n), view(v), view(dWb),
                                                                1e-12, True, st), 8 * c * d),
    }
    rows = []
    for name, (fn, nbytes) in kernels.items():
        ms = _time_ms(fn, a.repeats)
        rows.append({"kernel": name, "ms": ms, "GB/s": nbytes / ms / 1e6})
    copy_rate = rows[0]["GB/s"]
    for r in rows:
        r["of copy rate"] = r["GB/s"] / copy_rate
    head = f"{torch.cuda.get_device_name()}, tile {R} x {c} fp32, d = {d} (torch {torch.__version__})"
    lines = [head, "", "| kernel | ms (median) | GB/s | of copy rate |", "|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['ms']:.3f} | {r['GB/s']:.0f} | {r['of copy rate']:.0%} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_epilogues.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(a.out, "bench_epilogues.json"), "w") as f:
            json.dump({"device": head, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
