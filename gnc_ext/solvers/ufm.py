"""The unconstrained feature model (UFM, Eq. 2) and the HardMax problem (Eq. 5).

UFM: classifier W (K x d) and features H (nK x d, n per class), all rows on the unit
sphere, trained jointly on the spherical cross-entropy at temperature tau (Eq. 2) or on
the HardMax loss (Eq. 5), with the fused ops :func:`gnc_ext.spherical_cross_entropy` /
:func:`gnc_ext.hardmax_loss`. Lemma 3.1: as tau -> 0 the CE minimisers approach the
HardMax minimisers (Fig. C.1 shows the minimal angle of W converging).

HardMax and Softmax Codes (Lemma C.4, Thm 3.5). For fixed W,

    min_H L_HardMax(W, H) = max_k min_{|h|=1} max_{j != k} <w_j - w_k, h> = -min_k dist_k = -rho(W),

attained (for every class and every sample) at the optimal feature
``h_k = (w_k - p_k)/|w_k - p_k|`` (p_k the projection of w_k on the hull of the other
classes). Hence ``min_{W,H} L_HardMax = -max_W rho(W)``: the W of a HardMax solution is a
Softmax Code and H collapses to the optimal features (GNC1). :func:`hardmax_problem`
therefore solves Eq. 5 exactly by :func:`gnc_ext.solvers.softmax_code` and returns
``H = feature`` (repeated n times per class); the HardMax value of that pair is
re-evaluated independently with the fused :func:`gnc_ext.hardmax_loss`. Any HardMax
minimiser's H is only pinned down for the classes attaining rho; the returned H is the
canonical choice (optimal for every class).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, List, Optional

import torch

from .. import _progress, _validate
from .. import resources
from . import _sphere
from .softmax_code import SoftmaxCodeResult, softmax_code

__all__ = ["UFMResult", "train_ufm", "HardMaxResult", "hardmax_problem"]


@dataclasses.dataclass
class UFMResult:
    """Result of :func:`train_ufm` (CPU float64 tensors).

    Attributes:
        W: (K, d) trained classifier, unit rows.  H: (nK, d) trained features, unit rows.
        labels: (nK,) int64 class of each feature row (``k`` repeated n times).
        loss: final training loss (CE at tau, or HardMax max-reduction).
        hardmax_value: HardMax value ``max_i max_{j != y_i} <w_j - w_{y_i}, h_i>`` of the
            final (W, H) (the Eq. 5 objective, whatever loss was trained).
        gnc1, gnc3: from :class:`gnc_ext.metrics.GNCAccumulator` (``compute(W)``). GNC1 is
            a trace of a product of positive semi-definite matrices, so it is >= 0; at
            collapse the computed value is round-off (~1e-32) of either sign, and a
            negative value is reported as 0.0 (``metrics.gnc1`` keeps the raw number).
        rho, rho_lower: GNC2 — certified one-vs-rest distance of W (Def. 2.1).
        max_cosine: largest pairwise cosine of W (the cosine of its minimal angle,
            the quantity of Fig. C.1).  min_angle_deg: that angle in degrees.
        metrics: the full :class:`gnc_ext.metrics.GNCResult`.
        history: (step, loss) pairs, about 50 of them.
        tau, loss_type, steps, time_s: run configuration and wall time.
    """

    W: torch.Tensor
    H: torch.Tensor
    labels: torch.Tensor
    loss: float
    hardmax_value: float
    gnc1: float
    rho: float
    rho_lower: float
    gnc3: float
    max_cosine: float
    min_angle_deg: float
    metrics: Any
    history: List[tuple]
    tau: Optional[float]
    loss_type: str
    steps: int
    time_s: float


def _max_cos(W: torch.Tensor) -> float:
    return float(_sphere.max_cos(W.detach().to(torch.float64)))


def _sizes(d, K, n):
    d = _validate.integer(d, "d", minimum=1)
    K = _validate.integer(K, "K", minimum=2)
    n = _validate.integer(n, "n", minimum=1)
    return d, K, n


def train_ufm(
    d,
    K,
    n,
    *,
    tau: Optional[float] = None,
    loss: str = "ce",
    steps: int = 3000,
    lr: float = 0.05,
    anneal: bool = True,
    seed: Optional[int] = None,
    device=None,
    dtype: torch.dtype = torch.float64,
    progress: Optional[bool] = None,
) -> UFMResult:
    """Train the unconstrained feature model of Eq. 2 on the sphere.

    ``min_{W, H unit rows} (1/nK) sum_{k,i} CE(W^T h_{k,i}/tau, y_k)`` (``loss="ce"``), or
    ``min L_HardMax(W, H)`` (``loss="hardmax"``, Eq. 5, by subgradient steps on the
    ``max``-reduced fused HardMax loss). W and H are free parameters (uniform random
    start); steps are **projected Adam** steps: the fused ops normalise rows inside
    (their gradients are tangent to the spheres), Adam updates the raw rows, and the
    rows are renormalised after every step. The learning rate decays with a cosine
    schedule from ``lr`` to ``lr/1000`` (needed to converge at small tau and for the
    non-smooth HardMax loss).

    Temperature continuation (``anneal=True``, CE only): during the first half of the
    steps the temperature decreases geometrically from ``max(1, tau)`` to ``tau``, then
    stays at ``tau``; Adam's moments are reset when the final temperature is reached.
    Without it, small tau (<= 0.05 at d=3, K=7) stalls far from a minimiser: the CE
    gradients shrink like ``exp(-margin/tau)`` faster than Adam's second moment adapts.
    The result is still a (local) minimiser of the CE at the requested ``tau``.
    For ``loss="hardmax"`` with ``anneal=True`` the first half of the steps is the same
    CE continuation (tau from 1 to 0.05) as a warm start, and the second half takes
    subgradient steps on the HardMax loss: from a random start the pure subgradient
    method on the max-reduced loss collapses W (all margins -> 0; measured at d=2, K=5).

    Args:
        d: feature dimension (>= 1).  K: classes (>= 2).  n: features per class (>= 1).
        tau: temperature >= 1e-6 for ``loss="ce"`` (default 0.05); must be None for HardMax.
        loss: ``"ce"`` or ``"hardmax"``.
        steps: optimisation steps (>= 1).  lr: peak learning rate, in (0, 1e6].
        anneal: temperature continuation / CE warm start (see above).
        seed: integer seed of the initialisation (None: nondeterministic).
        device: torch device (default CPU).  dtype: float32 or float64 (default).
        progress: tqdm bar over the steps: None (default) when stderr is a terminal,
            True always, False never.

    Returns:
        :class:`UFMResult` with GNC1/GNC2 (certified rho)/GNC3 and the minimal-angle
        cosine of W.

    Raises:
        TypeError/ValueError naming the argument (non-integer sizes, d < 1, K < 2,
        n < 1, tau <= 0, unknown loss, tau given with ``loss="hardmax"``, ...).

    Complexity: each step is one fused loss forward+backward, 6 nK*K*d flops (CE);
    memory O((n + 1) K d). Small tau needs more steps (the gradients are exponentially
    small once classes separate; Adam rescales them).
    """
    t0 = time.perf_counter()
    d, K, n = _sizes(d, K, n)
    if not isinstance(loss, str) or loss not in ("ce", "hardmax"):
        raise ValueError(f"loss: expected 'ce' or 'hardmax', got {loss!r}")
    if loss == "ce":
        tau = 0.05 if tau is None else _validate.temperature(tau, "tau")
    elif tau is not None:
        _validate.positive_float(tau, "tau")
        raise ValueError("tau: the HardMax loss has no temperature; pass tau=None with loss='hardmax'")
    steps = _validate.integer(steps, "steps", minimum=1)
    lr = _validate.positive_float(lr, "lr")
    if lr > 1e6:  # Adam steps of that size on unit rows overflow (1e300 gave zero rows)
        raise ValueError(f"lr: expected a learning rate in (0, 1e6] (rows are unit vectors), got {lr:g}")
    seed = _validate.seed(seed)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    progress = _progress.enabled(progress)
    dev = _validate.device(device)
    resources.ensure_fits(3 * K * (n + 1) * d * dtype.itemsize, what=f"train_ufm(d={d}, K={K}, n={n}) W, H and their Adam states", device=dev)

    from ..losses import hardmax_loss, spherical_cross_entropy
    from ..metrics import GNCAccumulator

    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    W = _sphere.random_points(1, K, d, generator=gen)[0].to(device=dev, dtype=dtype).requires_grad_(True)
    H = _sphere.random_points(1, K * n, d, generator=gen)[0].to(device=dev, dtype=dtype).requires_grad_(True)
    y = torch.arange(K, device=dev).repeat_interleave(n)
    opt = torch.optim.Adam([W, H], lr=lr, eps=1e-30)  # tiny eps: CE gradients at small tau are ~exp(-margin/tau)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-3)

    if not isinstance(anneal, bool):
        raise TypeError(f"anneal: expected a bool, got {type(anneal).__name__}")
    tau_end = tau if loss == "ce" else 0.05
    half = steps // 2 if (anneal and tau_end < 1.0) else 0

    def tau_at(s: int) -> float:
        if s >= half:
            return tau_end
        return math.exp(math.log(tau_end) * s / half)  # 1 -> tau geometrically

    def objective(t=None, s=None):
        if loss == "ce" or (s is not None and s < half):
            return spherical_cross_entropy(H, W, y, tau=tau_end if t is None else t)
        return hardmax_loss(H, W, y, reduction="max")

    bar = _progress.bar(progress, steps, f"ufm {loss} d={d} K={K} n={n}")
    history = []
    every = max(1, steps // 50)
    try:
        for s in range(steps):
            if half and s == half:  # final temperature reached: fresh Adam moments
                opt.state.clear()
            opt.zero_grad(set_to_none=True)
            L = objective(tau_at(s), s)
            L.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                W.copy_(_sphere.normalize(W))
                H.copy_(_sphere.normalize(H))
            if s % every == 0 or s == steps - 1:
                history.append((s, float(L.detach())))
                if bar is not None:
                    bar.set_postfix(loss=f"{history[-1][1]:.6g}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    with torch.no_grad():
        final = float(objective())
        hm = float(hardmax_loss(H, W, y, reduction="max"))
    Wd = W.detach().to("cpu", torch.float64)
    Hd = H.detach().to("cpu", torch.float64)
    acc = GNCAccumulator(K, d)
    acc.update(Hd, y.cpu())
    m = acc.compute(Wd)
    mc = _max_cos(Wd)
    return UFMResult(
        W=Wd, H=Hd, labels=y.cpu(), loss=final, hardmax_value=hm,
        gnc1=0.0 if m.gnc1 < 0.0 else m.gnc1,  # round-off below the PSD trace's 0 (NaN kept)
        rho=m.gnc2.rho if m.gnc2 is not None else math.nan,
        rho_lower=m.gnc2.rho_lower if m.gnc2 is not None else math.nan,
        gnc3=m.gnc3, max_cosine=mc, min_angle_deg=math.degrees(math.acos(max(-1.0, min(1.0, mc)))),
        metrics=m, history=history, tau=tau, loss_type=loss, steps=steps, time_s=time.perf_counter() - t0,
    )


@dataclasses.dataclass
class HardMaxResult:
    """Result of :func:`hardmax_problem` (CPU float64 tensors).

    Attributes:
        W: (K, d) the Softmax Code found (HardMax-optimal classifier).
        H: (nK, d) optimal features, ``feature_k`` repeated n times per class.
        labels: (nK,) int64.
        value: HardMax objective of (W, H) evaluated by :func:`gnc_ext.hardmax_loss`
            (``max`` reduction); equals ``-rho`` up to rounding.
        rho, rho_lower: certified one-vs-rest distance of W (so the optimum of Eq. 5
            lies in ``[-rho_star, ...]`` with ``-value = rho(W) <= rho_star``).
        max_cosine: largest pairwise cosine of W.
        code: the full :class:`SoftmaxCodeResult`.
    """

    W: torch.Tensor
    H: torch.Tensor
    labels: torch.Tensor
    value: float
    rho: float
    rho_lower: float
    max_cosine: float
    code: SoftmaxCodeResult


def hardmax_problem(d, K, n, **kwargs) -> HardMaxResult:
    """Solve the HardMax problem (Eq. 5) directly via its Softmax Code reduction.

    ``min_{W,H} max_{k,i} max_{j != k} <w_j - w_k, h_{k,i}> = -max_W rho(W)`` (module
    docstring), so this runs :func:`softmax_code` (``kwargs`` are passed to it: restarts,
    seed, progress, ...) and sets every feature of class k to the optimal feature
    ``r.feature[k]`` of the code. Global optimality holds where the code is proven
    optimal (``code.optimal``, Thm 3.3 cases); elsewhere it is the best code found.

    Raises:
        TypeError/ValueError for non-integer sizes, d < 1, K < 2, n < 1, bad kwargs.
    """
    d, K, n = _sizes(d, K, n)
    from ..losses import hardmax_loss

    r = softmax_code(d, K, **kwargs)
    H = r.feature.repeat_interleave(n, dim=0).contiguous()
    y = torch.arange(K).repeat_interleave(n)
    value = float(hardmax_loss(H, r.W, y, reduction="max"))
    return HardMaxResult(W=r.W, H=H, labels=y, value=value, rho=r.rho, rho_lower=r.rho_lower,
                         max_cosine=r.max_cosine, code=r)
