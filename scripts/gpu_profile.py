"""Kernel-level profile of a few gnc_ext GPU paths (for the device check; needs CUDA).

    python scripts/gpu_profile.py [--out DIR]

Prints, per scenario, torch.profiler's top kernels by total CUDA time, plus whether
torch.mm(..., out_dtype=float32) works for bf16 on this torch (the 16-bit fp32-output
GEMM the loss relies on).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import gnc_ext
from gnc_ext.metrics import GNCAccumulator


def probe_out_dtype():
    a = torch.randn(64, 32, device="cuda", dtype=torch.bfloat16)
    try:
        return f"ok ({torch.mm(a, a.T, out_dtype=torch.float32).dtype})"
    except Exception as exc:  # noqa: BLE001  (report any failure)
        return f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"


def ce_step(dtype, K=1_000_000, B=512, d=512):
    torch.manual_seed(0)
    H = torch.randn(B, d, device="cuda", dtype=dtype)
    W = torch.randn(K, d, device="cuda", dtype=dtype)
    y = torch.randint(0, K, (B,), device="cuda")

    def run():
        h, w = H.detach().requires_grad_(True), W.detach().requires_grad_(True)
        gnc_ext.spherical_cross_entropy(h, w, y, tau=0.05).backward()
    return run


def update_loop(n=20, K=100_000, d=512, B=4096):
    acc = GNCAccumulator(K, d, device="cuda")
    X = torch.randn(B, d, device="cuda")
    Y = torch.randint(0, K, (B,), device="cuda")

    def run():
        for _ in range(n):
            acc.update(X, Y)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    lines = [f"torch {torch.__version__}; mm(out_dtype=float32) for bf16: {probe_out_dtype()}"]
    for name, fn in (("CE bf16 B=512 d=512 K=1M fwd+bwd", ce_step(torch.bfloat16)),
                     ("CE fp32 B=512 d=512 K=1M fwd+bwd", ce_step(torch.float32)),
                     ("GNCAccumulator.update x20, B=4096 d=512 K=100k", update_loop())):
        fn()
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        lines.append(f"\n### {name}\n")
        lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    text = "\n".join(lines)
    print(text)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_profile.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
