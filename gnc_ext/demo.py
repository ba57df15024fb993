"""``gnc demo``: GNC on a real (small, bundled) data set in under a few minutes on CPU.

scikit-learn's handwritten digits (1,797 8×8 images, 10 classes; shipped with
scikit-learn, no download) are fed to a small MLP whose feature layer has d = 2, so
K = 10 > d + 1 and the GNC regime applies (no simplex ETF exists). The network is
trained with :class:`gnc_ext.nn.SphericalCELoss` at a small and a large temperature.
Every epoch prints train/test accuracy, NCC accuracy and GNC1/GNC2/GNC3; GNC2 is the
one-vs-rest margin ρ(W) of the learned classifier compared with the d = 2 optimum
1 − cos(2π/K) (Thm 3.3, regular polygon). PNGs: features and classifier on the circle
per temperature (paper Fig. 4 style) and the GNC curves over epochs (Fig. 2 style).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


def _load_digits(seed: int):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("gnc demo needs scikit-learn: pip install 'gnc_ext[demo]'") from exc
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    # stratified 80/20 split
    train_idx, test_idx = [], []
    for k in range(10):
        idx = torch.nonzero(y == k).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = idx.numel() // 5
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    mean, std = X[tr].mean(0), X[tr].std(0).clamp_min(1e-3)
    X = (X - mean) / std
    return X[tr], y[tr], X[te], y[te]


class _Net(nn.Module):
    def __init__(self, d_in: int, d_feat: int, width: int = 256):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, d_feat),
        )

    def forward(self, x):
        return self.body(x)


@torch.no_grad()
def _evaluate(net, crit, Xtr, ytr, Xte, yte, K: int) -> Dict[str, float]:
    import gnc_ext

    net.eval()
    Htr, Hte = net(Xtr), net(Xte)
    W = crit.weight.detach()
    out: Dict[str, float] = {}
    out["train_acc"] = float((crit.predict(Htr) == ytr).float().mean())
    out["test_acc"] = float((crit.predict(Hte) == yte).float().mean())
    acc = gnc_ext.metrics.GNCAccumulator(K, Htr.shape[1], normalize=True, device=Htr.device)
    acc.update(Htr, ytr)
    res = acc.compute(W=W, gnc2=True)  # GNC2: certified one-vs-rest rho of the normalised W
    out["gnc1"] = float(res.gnc1)
    out["gnc3"] = float(res.gnc3)
    out["gnc2"] = float(res.gnc2.rho)
    out["gnc2_gap"] = float(res.gnc2.max_gap)
    out["ncc_acc"] = float(acc.ncc_accuracy(Htr, ytr))
    net.train()
    return out


def train_one(tau: float, *, epochs: int, seed: int, device: str, data, lr: float = 3e-3,
              classifier_lr: float = 5e-2, batch_size: int = 128, log=print,
              on_epoch=None) -> Dict[str, object]:
    """Train the MLP + SphericalCELoss at temperature ``tau``; metrics every epoch
    (``log``'s line, then ``on_epoch()`` when given).

    The classifier gets a larger learning rate than the network (``classifier_lr``):
    the class weights then settle into the evenly spread arrangement within the
    demo's budget instead of lagging behind the features.
    """
    import gnc_ext

    Xtr, ytr, Xte, yte = (t.to(device) for t in data)
    K, d = 10, 2
    torch.manual_seed(seed)
    net = _Net(Xtr.shape[1], d).to(device)
    crit = gnc_ext.nn.SphericalCELoss(K, d, tau=tau).to(device)
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": lr},
                            {"params": crit.parameters(), "lr": classifier_lr}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(seed)
    history: List[Dict[str, float]] = []
    n = Xtr.shape[0]
    for ep in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g).to(device)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            if idx.numel() < 2:
                continue
            loss = crit(net(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * idx.numel()
        sched.step()
        m = _evaluate(net, crit, Xtr, ytr, Xte, yte, K)
        m["loss"] = total / n
        history.append(m)
        log(f"tau={tau:<5g} epoch {ep:3d}  loss {m['loss']:.4f}  train {m['train_acc']:.3f}  test "
            f"{m['test_acc']:.3f}  NCC {m['ncc_acc']:.3f}  GNC1 {m['gnc1']:.3e}  GNC2 {m['gnc2']:.4f}  "
            f"GNC3 {m['gnc3']:.3e}")
        if on_epoch is not None:
            on_epoch()
    net.eval()
    with torch.no_grad():
        H = net(Xtr).cpu()
    return {"tau": tau, "history": history, "features": H, "labels": ytr.cpu(), "W": crit.weight.detach().cpu()}


def run_demo(out_dir: str = "gnc_demo", *, taus: Sequence[float] = (0.05, 1.0), epochs: int = 150,
             seed: int = 0, device: Optional[str] = None, plots: bool = True, log=print,
             progress: Optional[bool] = None) -> Dict[str, object]:
    """Train on the digits at each temperature, print metrics, write PNGs and a JSON summary.

    ``progress``: a bar over the epochs (None: on a terminal, once the run has taken a
    moment; True: always; False: never). While a bar shows, ``log`` lines are written
    above it.

    Returns a dict with per-temperature histories and final metrics, the d=2 optimum
    ``rho_opt`` and the paths written.
    """
    from . import _progress, _validate

    epochs = _validate.integer(epochs, "epochs", minimum=1)
    if progress is not None:
        progress = _progress.enabled(progress)
    for t in taus:
        _validate.positive_float(t, "taus")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    K = 10
    rho_opt = 1.0 - math.cos(2.0 * math.pi / K)
    data = _load_digits(seed)
    log(f"gnc demo: digits ({data[0].shape[0]} train / {data[2].shape[0]} test, K={K}, d=2), device={device}; "
        f"d=2 optimum rho = 1 - cos(2*pi/K) = {rho_opt:.4f}")
    t0 = time.time()
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)  # the model is tiny: one thread beats the threading overhead
    bar = _progress.bar(progress, epochs * len(taus), "gnc demo")
    say = log if bar is None or log is not print else bar.write  # lines above the bar
    tick = None if bar is None else (lambda: bar.update(1))
    try:
        runs = [train_one(t, epochs=epochs, seed=seed, device=device, data=data, log=say, on_epoch=tick)
                for t in taus]
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    os.makedirs(out_dir, exist_ok=True)
    written: List[str] = []
    if plots:
        from . import plot

        for r in runs:
            p = os.path.join(out_dir, f"circle_tau{r['tau']:g}.png")
            plot.plot_circle(r["features"], r["labels"], r["W"], path=p,
                             title=f"digits, d=2, tau={r['tau']:g}: features and classifier")
            written.append(p)
        p = os.path.join(out_dir, "gnc_curves.png")
        plot.plot_gnc_curves([], histories={f"tau={r['tau']:g}": r["history"] for r in runs},
                             reference={"gnc2": rho_opt}, path=p, title="GNC over training (digits, d=2)")
        written.append(p)
    summary = {
        "rho_opt": rho_opt,
        "seconds": time.time() - t0,
        "runs": [{"tau": r["tau"], "final": r["history"][-1],
                  "gnc2_over_opt": r["history"][-1]["gnc2"] / rho_opt} for r in runs],
        "files": written,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("")
    log(f"{'tau':>6} {'train':>6} {'test':>6} {'NCC':>6} {'GNC1':>10} {'GNC2':>8} {'GNC2/opt':>8} {'GNC3':>10}")
    for r in summary["runs"]:
        fm = r["final"]
        log(f"{r['tau']:>6g} {fm['train_acc']:>6.3f} {fm['test_acc']:>6.3f} {fm['ncc_acc']:>6.3f} "
            f"{fm['gnc1']:>10.3e} {fm['gnc2']:>8.4f} {r['gnc2_over_opt']:>8.3f} {fm['gnc3']:>10.3e}")
    log(f"wrote {', '.join(written + [os.path.join(out_dir, 'summary.json')])} in {summary['seconds']:.1f} s")
    summary["histories"] = {r["tau"]: r["history"] for r in runs}
    return summary
