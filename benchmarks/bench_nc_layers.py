"""Layer-wise neural-collapse statistics: one data pass over four layers
(``gnc_ext.metrics.collect`` with four hooks) against four separate passes (one layer
each), on the CPU, K = 10,000 classes.

    python benchmarks/bench_nc_layers.py [--out DIR]

The model is a small CNN on 1×8×8 inputs: four conv blocks (16, 32, 64, 128 channels;
8×8, 4×4, 2×2, 1×1 maps) and a linear head to the K classes, each hooked and average-pooled (``reduce="avgpool"``:
d = 16, 32, 64, 128). The data: N = 20,000 random inputs, two per class. Time: median
of 3 calls after one warm-up (``benchmarks/harness.py``); memory: peak RSS of a fresh
process above its RSS before the measured call (the harness's method), so the
accumulators (four of them either way: the separate passes keep every layer's result)
and the activations count.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Case, main  # noqa: E402

from gnc_ext.metrics import collect  # noqa: E402

K, N, BATCH = 10_000, 20_000, 500
LAYERS = ["block1", "block2", "block3", "block4"]


def setup(device):
    torch.manual_seed(0)
    model = nn.Sequential()
    c_in = 1
    for i, c in enumerate((16, 32, 64, 128)):
        model.add_module(f"block{i + 1}", nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, stride=1 if i == 0 else 2),
                                                        nn.BatchNorm2d(c), nn.ReLU()))
        c_in = c
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(128, K))
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(K).repeat(N // K)[torch.randperm(N, generator=g)]
    X = torch.randn(N, 1, 8, 8, generator=g) + (y % 97).float()[:, None, None, None] * 0.01
    loader = [(X[s:s + BATCH], y[s:s + BATCH]) for s in range(0, N, BATCH)]
    return model, loader


def one_pass(inputs):
    model, loader = inputs
    return collect(model, loader, LAYERS, num_classes=K, reduce="avgpool", progress=False)


def separate_passes(inputs):
    model, loader = inputs
    out = {}
    for layer in LAYERS:
        out.update(collect(model, loader, [layer], num_classes=K, reduce="avgpool", progress=False))
    return out


CASES = [Case(name=f"4 layers, K={K}, N={N}", setup=setup,
              impls={"4 separate passes": separate_passes, "collect: one pass, 4 hooks": one_pass},
              baseline="4 separate passes", devices=("cpu",), warmup=1, repeats=3)]

if __name__ == "__main__":
    torch.set_num_threads(2)
    main(CASES, "collect: one pass over 4 layers vs 4 separate passes (CPU)")
