"""Neural collapse across the layers of a small CNN and over its training, on
scikit-learn's bundled digits (8×8 images, K = 10 classes; no download).

Every epoch (or every ``--every`` epochs) one pass over the training set fills one
streaming accumulator per layer (``gnc_ext.metrics.collect``: forward hooks on four
blocks), a second pass measures each layer's nearest-class-centre accuracy and the
penultimate layer's NC4 agreement with the classifier, and the NC suite follows per
layer (``gnc_ext.metrics.layer_metrics``), recorded in an ``NCHistory`` with the
training loss and accuracies. The history is saved as JSON and plotted: curves over
epochs, one per layer (the GNC paper's Fig. 2 / B.3 style), and values across layers,
one curve per epoch (the NC toolkit's layer-wise view).

The penultimate layer has ``--dim`` features (default 4), so K = 10 > d + 1: no simplex
ETF fits, ``nc2_etf_error`` and ``nc3_duality_error`` level off at the drawn ETF floor
√(2 − 2√(d/(K − 1))), while GNC2 (ρ of the classifier) is read against the bounds on
max ρ.

    python examples/nc_layers_digits.py --epochs 40 --out nc_digits

writes nc_digits/nc_history.json, nc_digits/nc_over_epochs.png and
nc_digits/nc_across_layers.png, and prints the last epoch's suite per layer. The
convolutional blocks' maps are average-pooled by default (d = 16, 32); ``--reduce
flatten`` takes them whole (d = 1024, 512), as the NC toolkit's layer-wise example does.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict

import torch
from torch import nn

from gnc_ext.metrics import NCHistory, collect, layer_metrics

LAYERS = ["block1", "block2", "hidden", "penultimate"]


def load_digits_split(seed: int):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    perm = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))
    n_test = y.numel() // 5
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = X[tr].mean(), X[tr].std()
    X = (X - mean) / std
    return X[tr], y[tr], X[te], y[te]


def make_model(dim: int, K: int = 10) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        block1=nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),             # 16×8×8
        block2=nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU()),  # 32×4×4
        flatten=nn.Flatten(),
        hidden=nn.Sequential(nn.Linear(512, 64), nn.ReLU()),
        penultimate=nn.Linear(64, dim),
        fc=nn.Linear(dim, K),
    ))


def batches(X, y, size, generator=None):
    idx = torch.randperm(y.numel(), generator=generator) if generator is not None else torch.arange(y.numel())
    return [(X[idx[s:s + size]], y[idx[s:s + size]]) for s in range(0, y.numel(), size)]


@torch.no_grad()
def accuracy(model, X, y) -> float:
    was = model.training
    model.eval()
    acc = float((model(X).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--every", type=int, default=1, help="measure every N epochs (and after the last)")
    ap.add_argument("--dim", type=int, default=4, help="penultimate feature dimension d (K = 10)")
    ap.add_argument("--reduce", choices=["flatten", "avgpool"], default="avgpool",
                    help="how convolutional maps become feature vectors: avgpool (d = channels, default) or "
                         "flatten (d = channels x 8 x 8 / 4 x 4, the NC toolkit's layer-wise convention; slower: "
                         "d x d eigendecompositions at d = 1024)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="nc_digits")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.every < 1 or args.dim < 1:
        ap.error("--epochs, --every and --dim must be >= 1")
    torch.manual_seed(args.seed)
    Xtr, ytr, Xte, yte = load_digits_split(args.seed)
    model = make_model(args.dim)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(args.seed)
    eval_loader = batches(Xtr, ytr, 256)  # the training set, in order, for the measurements
    hist = NCHistory()
    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for xb, yb in batches(Xtr, ytr, 64, g):
            loss = crit(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * yb.numel()
        if epoch % args.every and epoch != args.epochs:
            continue
        accs = collect(model, eval_loader, LAYERS, num_classes=10, reduce=args.reduce, progress=False)
        suite = layer_metrics(accs, classifiers={"penultimate": model.fc}, model=model, loader=eval_loader,
                              reduce=args.reduce, progress=False)
        hist.append(epoch, suite, loss=total / ytr.numel(), train_acc=accuracy(model, Xtr, ytr),
                    test_acc=accuracy(model, Xte, yte))
        p = suite["penultimate"]
        print(f"epoch {epoch:3d}  loss {total / ytr.numel():.4f}  test {hist.records[-1]['scalars']['test_acc']:.3f}  "
              f"penultimate: NC1 {p.nc1_pinv:.3e}  ETF err {p.nc2_etf_error:.3f} (floor {p.nc2_etf_floor:.3f})  "
              f"rho {p.gnc2_rho:.4f} (max rho <= {p.gnc2_rho_max_upper:.4f})", flush=True)
    os.makedirs(args.out, exist_ok=True)
    hist.save(os.path.join(args.out, "nc_history.json"))
    hist.plot(["nc1_pinv", "nc1_cdnv", "nc2_etf_error", "nc3_duality_error", "gnc2_rho", "ncc_accuracy",
               "nc4_agreement", "train_acc", "test_acc"], os.path.join(args.out, "nc_over_epochs.png"),
              title=f"NC over training, digits (K = 10, penultimate d = {args.dim})")
    hist.plot(["nc1_pinv", "nc1_quotient", "nc2_equinorm", "nc2_etf_error", "ncc_accuracy"],
              os.path.join(args.out, "nc_across_layers.png"), view="layers",
              title="NC across layers (one curve per epoch)")
    print(f"\n{'layer':<12} {'d':>5} {'nc1_pinv':>10} {'nc1_cdnv':>10} {'etf_err':>8} {'floor':>6} {'NCC acc':>8}")
    last = hist.records[-1]["layers"]
    for name in LAYERS:
        r = last[name]
        print(f"{name:<12} {accs[name].dim:>5} {r['nc1_pinv']:>10.3e} {r['nc1_cdnv']:>10.3e} "
              f"{r['nc2_etf_error']:>8.3f} {r['nc2_etf_floor']:>6.3f} {r['ncc_accuracy']:>8.3f}")
    print(f"\n{time.time() - t0:.1f} s; wrote {args.out}/nc_history.json, nc_over_epochs.png, nc_across_layers.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
