"""normalize_rows vs torch.nn.functional.normalize, forward and forward+backward.

    python benchmarks/bench_normalize.py [--device cuda] [--out DIR]
"""
import os
import sys

import torch
import torch.nn.functional as F

import gnc_ext  # noqa: E402  (the installed package; run this script from anywhere)
from harness import Case, main  # noqa: E402  (benchmarks/ is on sys.path as the script's folder)


def _setup(n, d, dtype):
    def setup(device):
        torch.manual_seed(0)
        x = torch.randn(n, d, device=device, dtype=dtype)
        g = torch.randn(n, d, device=device, dtype=dtype)
        return x, g
    return setup


def _fwd(f):
    def run(inp):
        x, _ = inp
        with torch.no_grad():
            return f(x)
    return run


def _fwd_bwd(f):
    def run(inp):
        x, g = inp
        x = x.detach().requires_grad_(True)
        f(x).backward(g)
        return x.grad
    return run


def _torch(x):
    return F.normalize(x, dim=1)


CASES = []
for n, d, dt, devs in [(65536, 512, torch.float32, ("cpu", "cuda")),
                       (1_000_000, 512, torch.bfloat16, ("cuda",)),
                       (1_000_000, 512, torch.float32, ("cuda",))]:
    tag = f"N={n}, d={d}, {str(dt).replace('torch.', '')}"
    CASES.append(Case(f"fwd {tag}", _setup(n, d, dt), {"F.normalize": _fwd(_torch), "gnc_ext": _fwd(gnc_ext.normalize_rows)},
                      baseline="F.normalize", devices=devs))
    CASES.append(Case(f"fwd+bwd {tag}", _setup(n, d, dt), {"F.normalize": _fwd_bwd(_torch), "gnc_ext": _fwd_bwd(gnc_ext.normalize_rows)},
                      baseline="F.normalize", devices=devs))

if __name__ == "__main__":
    main(CASES, "normalize_rows vs F.normalize")
