"""Pictures for GNC: features and classifiers on the circle (paper Fig. 4 style), GNC
curves over training (Fig. 2 style), the NC suite per layer over training
(:func:`plot_nc_history`), one-vs-rest distance profiles, and the feature-dimension
design curve of Thm 3.9.

matplotlib is an optional dependency (``pip install 'gnc_ext[plot]'``). Every function
returns the matplotlib Figure and, with ``path=``, also saves a PNG.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from . import _validate


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gnc_ext.plot needs matplotlib: pip install 'gnc_ext[plot]' (or pip install matplotlib)"
        ) from exc
    return plt


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    import numpy as np

    return np.asarray(x, dtype=float)


def _save(fig, path: Optional[str]):
    if path:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return fig


def plot_circle(features, labels, W=None, *, title: str = "", path: Optional[str] = None,
                max_points: int = 5000):
    """Features (N, 2) coloured by class and classifier rows W (K, 2) on the unit circle.

    Features are normalised to the circle (the spherical setting); class weights are
    drawn as arrows from the origin in the colour of their class.
    """
    import numpy as np

    plt = _plt()
    max_points = _validate.integer(max_points, "max_points", minimum=1)
    H = _np(features)
    yf = _np(labels)
    if H.ndim != 2 or H.shape[1] != 2 or H.shape[0] == 0:
        raise ValueError(f"features: expected shape (N, 2) with N >= 1, got {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("features: contains NaN or Inf values")
    if yf.shape != (H.shape[0],):
        raise ValueError(f"labels: expected shape ({H.shape[0]},), got {yf.shape}")
    if not (np.isfinite(yf).all() and (yf == np.round(yf)).all() and yf.min() >= 0):
        raise ValueError("labels: expected non-negative integer class indices")
    y = yf.astype(int)
    if H.shape[0] > max_points:
        idx = np.random.default_rng(0).choice(H.shape[0], max_points, replace=False)
        H, y = H[idx], y[idx]
    Hn = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
    K = int(max(y.max() + 1, 0 if W is None else _np(W).shape[0]))
    cmap = plt.get_cmap("tab10" if K <= 10 else "tab20" if K <= 20 else "hsv")
    colors = [cmap(k % cmap.N if K <= 20 else k / K) for k in range(K)]
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    t = np.linspace(0, 2 * math.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="0.8", lw=1, zorder=0)
    jitter = 1.0 + 0.04 * np.random.default_rng(1).standard_normal(Hn.shape[0])
    ax.scatter(Hn[:, 0] * jitter, Hn[:, 1] * jitter, s=6, c=[colors[k] for k in y], alpha=0.6, lw=0)
    if W is not None:
        Wn = _np(W)
        if Wn.ndim != 2 or Wn.shape[1] != 2:
            raise ValueError(f"W: expected shape (K, 2), got {Wn.shape}")
        Wn = Wn / np.maximum(np.linalg.norm(Wn, axis=1, keepdims=True), 1e-12)
        for k in range(Wn.shape[0]):
            ax.annotate("", xy=(Wn[k, 0] * 1.25, Wn[k, 1] * 1.25), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=colors[k], lw=1.8))
            ax.text(Wn[k, 0] * 1.38, Wn[k, 1] * 1.38, str(k), ha="center", va="center", fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlim(-1.55, 1.55)
    ax.set_ylim(-1.55, 1.55)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "features (dots) and classifier (arrows) on the circle")
    return _save(fig, path)


def plot_gnc_curves(history: Sequence[Dict[str, float]], *, labels: Optional[Sequence[str]] = None,
                    histories: Optional[Dict[str, Sequence[Dict[str, float]]]] = None,
                    reference: Optional[Dict[str, float]] = None, path: Optional[str] = None, title: str = ""):
    """GNC1, GNC2 (one-vs-rest ρ), GNC3 and accuracies over epochs.

    ``history``: a list of per-epoch dicts with any of the keys ``gnc1``, ``gnc2``,
    ``gnc3``, ``train_acc``, ``test_acc``, ``ncc_acc`` (values: numbers or None; the
    bookkeeping keys ``gnc2_gap``, ``loss``, ``lr`` and ``epoch``, which ``gnc demo``
    and training loops record alongside, are accepted and not drawn). To
    overlay several runs (e.g. temperatures), pass ``histories={"tau=0.05": [...],
    "tau=1": [...]}`` instead. ``reference`` may give e.g. ``{"gnc2": rho_opt}`` drawn as a
    dashed line. Only the panels with data are drawn.

    Raises:
        ValueError naming ``history``/``histories``: an entry with another key (the NC
        suite's fields, e.g. ``nc1_pinv``, are drawn by :func:`plot_nc_history` /
        ``NCHistory.plot``) or no value of any of these keys at all (nothing to draw);
        TypeError for an entry that is not a dict.
    """
    runs = dict(histories) if histories else {"": list(history)}
    what = "histories" if histories else "history"
    acc_keys = ("train_acc", "test_acc", "ncc_acc")
    known = ("gnc1", "gnc2", "gnc3") + acc_keys
    for run_name, hist in runs.items():
        where = f"{what}[{run_name!r}]" if histories else what
        for i, h in enumerate(hist):
            if not isinstance(h, dict):
                raise TypeError(f"{where}: entry {i} is a {type(h).__name__}, expected a dict of metric values")
            unknown = sorted(set(h) - set(known) - {"gnc2_gap", "loss", "lr", "epoch"})
            if unknown:
                raise ValueError(f"{where}: entry {i} has key {unknown[0]!r}; plot_gnc_curves draws "
                                 f"{', '.join(known)} (NC-suite fields: gnc_ext.plot.plot_nc_history or "
                                 "NCHistory.plot)")
    has = {k for hist in runs.values() for h in hist for k, v in h.items() if v is not None}
    panels = [p for p in [("gnc1", "GNC1 (within-class variability)", True),
                          ("gnc2", "GNC2: one-vs-rest ρ(W)", False),
                          ("gnc3", "GNC3 (self-duality)", True),
                          ("acc", "accuracy", False)]
              if (p[0] in has if p[0] != "acc" else bool(has & set(acc_keys)))]
    if not panels:
        raise ValueError(f"{what}: no values of {', '.join(known)} to draw")
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.75 * len(panels), 3.4), squeeze=False)
    axes = axes[0]
    for ax, (key, name, logy) in zip(axes, panels):
        for run_name, hist in runs.items():
            ep = list(range(1, len(hist) + 1))
            if key == "acc":
                for k, ls in (("train_acc", "-"), ("test_acc", "--"), ("ncc_acc", ":")):
                    vals = [h.get(k) for h in hist]
                    if any(v is not None for v in vals):
                        ax.plot(ep, [float("nan") if v is None else v for v in vals], ls,
                                label=f"{run_name} {k}".strip())
            else:
                vals = [h.get(key) for h in hist]
                if any(v is not None for v in vals):
                    vals = [float("nan") if v is None else max(v, 1e-12) if logy else v for v in vals]
                    ax.plot(ep, vals, label=run_name or key)
        if reference and key in reference and reference[key] is not None:
            ax.axhline(reference[key], color="k", ls="--", lw=1, label="optimum")
        if logy:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_nc_history(history, fields, *, path: Optional[str] = None, **kwargs):
    """The NC suite per layer over training: ``history.plot(fields, path, **kwargs)`` for
    a :class:`gnc_ext.metrics.NCHistory` (curves over epochs, one per layer, or
    ``view="layers"`` for values across layers, one curve per epoch). Unknown fields,
    and fields without values, are refused with a ValueError naming ``fields``."""
    if not (hasattr(history, "plot") and hasattr(history, "fields") and hasattr(history, "records")):
        raise TypeError(f"history: expected a gnc_ext.metrics.NCHistory, got {type(history).__name__}")
    return history.plot(fields, path, **kwargs)


def plot_distances(result, *, path: Optional[str] = None, title: str = ""):
    """Sorted one-vs-rest distances of a ``one_vs_rest_distance`` result with their
    certified lower bounds; ρ and the rattlers (classes strictly above ρ) are marked."""
    import numpy as np

    if not (hasattr(result, "distance") and hasattr(result, "lower") and hasattr(result, "rho")):
        raise TypeError(f"result: expected a one_vs_rest_distance result (with distance, lower and rho), "
                        f"got {type(result).__name__}")
    plt = _plt()
    dist = _np(result.distance)
    low = _np(result.lower)
    order = np.argsort(dist)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(dist[order], label="distance (upper bound)")
    ax.plot(low[order], "--", label="certified lower bound")
    ax.axhline(float(result.rho), color="k", lw=0.8, ls=":", label=f"ρ = {float(result.rho):.6g}")
    ax.set_xlabel("classes, sorted by distance")
    ax.set_ylabel("distance to hull of the others")
    n_r = int(len(result.rattlers)) if getattr(result, "rattlers", None) is not None else 0
    ax.set_title(title or f"one-vs-rest distances (K={dist.shape[0]}, rattlers: {n_r})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_design_curve(K: int, rho: Optional[float] = None, *, dims: Optional[Sequence[int]] = None,
                      solved: Optional[Dict[int, float]] = None, path: Optional[str] = None, title: str = ""):
    """Thm 3.9 lower and upper bounds on max ρ as a function of d at fixed K, with an
    optional target margin ``rho`` and certified ρ of solved codes ``{d: rho}``."""
    import numpy as np

    from . import theory

    K = _validate.integer(K, "K", minimum=2)
    if rho is not None:
        rho = _validate.positive_float(rho, "rho")
    ds = [_validate.integer(d, "dims", minimum=1) for d in dims] if dims is not None else list(range(2, 65))
    if not ds:
        raise ValueError("dims: expected at least one dimension")
    plt = _plt()
    lo, up = [], []
    for d in ds:
        b = theory.rho_bounds(d, K)
        lo.append(b.lower)
        up.append(b.upper)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(ds, lo, label="Thm 3.9 lower bound on max ρ")
    ax.plot(ds, np.minimum(up, 2.0), label="Thm 3.9 upper bound (capped at 2)")
    if solved:
        xs = sorted(solved)
        ax.plot(xs, [solved[x] for x in xs], "o", label="certified ρ of solved codes")
    if rho is not None:
        ax.axhline(rho, color="k", ls=":", lw=1, label=f"target ρ = {rho:g}")
    ax.set_xlabel("feature dimension d")
    ax.set_ylabel("one-vs-rest margin ρ")
    ax.set_title(title or f"feature-dimension design, K = {K:,}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


