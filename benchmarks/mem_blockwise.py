"""Peak RSS of one loss step with W normalised whole (the old path) or block by block.

    python benchmarks/mem_blockwise.py ce whole        # or: ce blockwise, hm whole, hm blockwise

One configuration per fresh process (peak RSS only grows): B=64, d=128, K=400,000, fp32,
one forward + backward. "ce": spherical_cross_entropy(reduction="none") (the recompute
path); "hm": the HardMax op on normalize_rows(W) ("whole") or on raw W ("blockwise").
"""
import resource
import sys

import torch

import gnc_ext


def main(kind: str, path: str) -> None:
    torch.manual_seed(0)
    B, d, K = 64, 128, 400_000
    H = torch.randn(B, d, requires_grad=True)
    W = torch.randn(K, d, requires_grad=True)
    y = torch.randint(0, K, (B,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "ce":
        if path == "whole":  # normalize_rows(W) first (the path before 2026-11-30)
            Hn, Wn = gnc_ext.normalize_rows(H), gnc_ext.normalize_rows(W)
            gnc_ext.spherical_cross_entropy(Hn, Wn, y, reduction="none", normalize=False).sum().backward()
        else:
            gnc_ext.spherical_cross_entropy(H, W, y, reduction="none").sum().backward()
    else:
        Hn = gnc_ext.normalize_rows(H)
        if path == "whole":
            v, _ = torch.ops.gnc_ext.hardmax_rows(Hn, gnc_ext.normalize_rows(W), y, 0)
        else:
            v, _ = torch.ops.gnc_ext.hardmax_rows_nw(Hn, W, y, 0)
        v.max().backward()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"{kind} {path}: peak RSS growth {grown:.0f} MiB (W {W.numel() * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("ce", "hm") or sys.argv[2] not in ("whole", "blockwise"):
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
