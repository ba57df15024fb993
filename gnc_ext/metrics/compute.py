"""GNCAccumulator.compute: GNC1 (Σ_W Σ_B^†), GNC3 and GNC2 from the accumulated statistics,
and the result dataclasses."""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from ..geometry import one_vs_rest_distance
from ..ops.normalize import unit_rows_f64
from ..theory import rho_bounds, rho_closed_form
from .state import _symmetrize_upper, _syrk_upper

__all__ = ["GNCResult", "GNC2Result", "gnc2", "ComputeMixin"]


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass
class GNC2Result:
    """GNC2: the one-vs-rest margin ρ(W) of the (row-normalised) classifier.

    Attributes:
        rho: ρ_one-vs-rest(W) = min_k dist_k (the certified upper value from the hull solver).
        rho_lower: the certified lower bound on ρ (Lemma C.4 duality): ρ lies in
            ``[rho_lower, rho]``, an interval no wider than ``max_gap``.
        max_gap: the per-class worst certificate gap ``max_k (distance_k − lower_k)``
            (``gap`` is its former name, deprecated).
        distance: (K,) float64 per-class one-vs-rest distances (upper values).
        lower: (K,) float64 per-class certified lower bounds.
        rattlers: 1-D int64 indices of rattler classes (Def. 3.4).
        rho_optimum: max ρ over unit vectors where Thm 3.3 gives it in closed form, else
            None (also None when ``gnc_ext.theory`` is not available).
        rho_bounds: (lower, upper) bounds on max ρ from Thm 3.9 where they apply, else None.
    """

    rho: float
    rho_lower: float
    max_gap: float
    distance: Tensor
    lower: Tensor
    rattlers: Tensor
    rho_optimum: Optional[float] = None
    rho_bounds: Optional[Tuple[float, float]] = None

    @property
    def gap(self) -> float:
        """Deprecated: the former name of :attr:`max_gap`."""
        warnings.warn("GNC2Result.gap is deprecated; use max_gap (the same number)",
                      DeprecationWarning, stacklevel=2)
        return self.max_gap


@dataclasses.dataclass
class GNCResult:
    """What :meth:`GNCAccumulator.compute` returns (all tensors on the CPU, float64).

    Attributes:
        gnc1: (1/K')·tr(Σ_W Σ_B^†) over the K' non-empty classes (Σ_W normalised by the
            number of samples N; Σ_B uncentred as in the paper unless ``centered``).
            NaN (with a RuntimeWarning) when Σ_B has no eigenvalue above the cutoff
            (``sigma_b_rank == 0``, e.g. all class means zero).
        centered: whether Σ_B was centred by the mean of the class means.
        pinv_rtol: relative cutoff of the pseudo-inverse: eigenvalues of Σ_B at or below
            ``pinv_rtol · λ_max(Σ_B)`` are treated as zero.
        pinv_cutoff: that absolute cutoff (``pinv_rtol · λ_max``).
        sigma_b_rank: number of eigenvalues of Σ_B above the cutoff.
        trace_sigma_w, trace_sigma_b: tr(Σ_W), tr(Σ_B).
        gnc3: (1/K')Σ_k (1 − ⟨w_k/‖w_k‖, h̄_k⟩) over non-empty classes (None without W).
            h̄_k is the class mean as accumulated (of normalised features when
            ``normalize``), not re-normalised, as in the paper.
        gnc2: :class:`GNC2Result` (None without W, or when not requested/available).
        num_samples: N.  num_classes: K.  num_nonempty: K'.
        counts: (K,) int64 samples per class.
        empty_classes: 1-D int64 indices of classes with no samples (excluded everywhere).
        class_mean_norms: (K,) ‖h̄_k‖ (NaN for empty classes).
        within_class_spread: (K,) tr(Σ_W,k) = mean ‖h − h̄_k‖² over the class (NaN if empty).
        worst_by_spread: indices of the classes with the largest within-class spread
            (descending), at most ``worst`` of them.
        worst_by_distance: indices of the classes with the smallest one-vs-rest distance
            of W (ascending), when gnc2 was computed; else None.
        ncc_accuracy: nearest-class-centre accuracy, filled in by
            :func:`gnc_ext.metrics.evaluate` (None from ``compute``).
        ncc_samples: samples the NCC accuracy was measured on (0 if not measured).
        normalize: whether features were L2-normalised before accumulation.
        nc: the neural-collapse suite (:class:`gnc_ext.metrics.NCMetrics`) when
            :func:`gnc_ext.metrics.evaluate` ran with ``nc=True``, else None.
    """

    gnc1: float
    centered: bool
    pinv_rtol: float
    pinv_cutoff: float
    sigma_b_rank: int
    trace_sigma_w: float
    trace_sigma_b: float
    num_samples: int
    num_classes: int
    num_nonempty: int
    counts: Tensor
    empty_classes: Tensor
    class_mean_norms: Tensor
    within_class_spread: Tensor
    worst_by_spread: Tensor
    gnc3: Optional[float] = None
    gnc2: Optional[GNC2Result] = None
    worst_by_distance: Optional[Tensor] = None
    ncc_accuracy: Optional[float] = None
    ncc_samples: int = 0
    normalize: bool = True
    nc: Any = None


def gnc2(W: Tensor, *, group=None, checkpoint=None, checkpoint_every: float = 60.0) -> GNC2Result:
    """GNC2 of a classifier: ρ_one-vs-rest of the row-normalised W with its certificate.

    Uses ``gnc_ext.one_vs_rest_distance``, ``gnc_ext.theory.rho_closed_form(d, K)``
    (Thm 3.3) and, for d ≥ 2, ``gnc_ext.theory.rho_bounds(d, K)`` (Thm 3.9).

    Args:
        W: (K, d) float tensor, K ≥ 2, finite, no all-zero rows; rows are L2-normalised
            here (robustly: any finite magnitude, computed in float64, then float32 unless
            W is float64).
        group, checkpoint, checkpoint_every: passed to ``one_vs_rest_distance``: the
            classes solved over the ranks of a ``torch.distributed`` process group (every
            rank passes the same W and gets the same result), and/or saved to and resumed
            from a checkpoint folder.

    Returns:
        :class:`GNC2Result`.

    Raises:
        TypeError/ValueError naming ``W``: not a dense float 2-D tensor, NaN/Inf, an
        all-zero row, fewer than 2 rows.
    """
    _check_W(W, None, None)
    K, d = W.shape
    if K < 2:
        raise ValueError(f"W: GNC2 needs at least 2 classes (rows), got shape {tuple(W.shape)}")
    Wn = unit_rows_f64(W, "W").to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    kw = {} if checkpoint is None else {"checkpoint": checkpoint, "checkpoint_every": checkpoint_every}
    r = one_vs_rest_distance(Wn, group=group, **kw)
    distance = torch.as_tensor(r.distance).detach().double().cpu()
    lower = torch.as_tensor(r.lower).detach().double().cpu()
    rho = float(r.rho)
    rho_lower = float(r.rho_lower)
    max_gap = float(r.max_gap)
    rattlers = torch.as_tensor(r.rattlers).detach().to(torch.int64).cpu().reshape(-1)
    v = rho_closed_form(d, K)
    optimum = None if v is None else float(v)
    bounds = None
    if d >= 2:
        b = rho_bounds(d, K)
        bounds = (float(b.lower), float(b.upper))
    return GNC2Result(rho=rho, rho_lower=rho_lower, max_gap=max_gap, distance=distance, lower=lower,
                      rattlers=rattlers, rho_optimum=optimum, rho_bounds=bounds)


_gnc2_of = gnc2  # compute() has a parameter named gnc2


def _check_W(W, num_classes: Optional[int], dim: Optional[int]) -> None:
    _validate.tensor(W, "W", ndim=2)
    if num_classes is not None and W.shape[0] != num_classes:
        raise ValueError(f"W: expected shape ({num_classes}, {dim}) (num_classes, dim), got {tuple(W.shape)}")
    if dim is not None and W.shape[1] != dim:
        raise ValueError(f"W: expected shape ({num_classes}, {dim}) (num_classes, dim), got {tuple(W.shape)}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError("W: contains NaN or Inf values")
    zero = (W == 0).all(dim=1)  # exact: a norm can underflow to 0 for a non-zero row
    if bool(zero.any()):
        raise ValueError(f"W: row {int(zero.nonzero()[0])} is all zeros and cannot be normalised")


def _check_gnc2(gnc2: Any) -> None:
    if isinstance(gnc2, str):
        if gnc2 != "auto":
            raise ValueError(f"gnc2: expected 'auto', True or False, got {gnc2!r}")
    elif not isinstance(gnc2, bool):
        raise TypeError(f"gnc2: expected 'auto' or a bool, got {type(gnc2).__name__}")


def _check_pinv_rtol(pinv_rtol: Optional[float]) -> Optional[float]:
    if pinv_rtol is None:
        return None
    rtol = _validate.positive_float(pinv_rtol, "pinv_rtol", allow_zero=True)
    if rtol >= 1.0:
        raise ValueError(f"pinv_rtol: expected a number in [0, 1) (relative to λ_max), got {rtol}")
    return rtol



def pinv_trace(SW: Tensor, SB: Tensor, rtol: float) -> Tuple[float, float, int, Tensor]:
    """tr(Σ_W Σ_B^†) for symmetric d×d fp64 Σ_W, Σ_B, with Σ_B's eigenvalues at or below
    ``rtol·λ_max`` treated as zero (one d×d eigendecomposition, on the CPU).

    Returns:
        (trace — NaN when no eigenvalue is above the cutoff —, the absolute cutoff, the
        number of eigenvalues kept, all eigenvalues of Σ_B ascending (CPU float64)).
    """
    lam, V = torch.linalg.eigh(SB.cpu())
    lmax = float(lam.max()) if lam.numel() else 0.0
    cutoff = rtol * lmax
    keep = lam > cutoff
    Vk = V[:, keep]
    quad = ((SW.cpu() @ Vk) * Vk).sum(0)  # v_jᵀ Σ_W v_j
    value = float((quad / lam[keep]).sum()) if bool(keep.any()) else float("nan")
    return value, cutoff, int(keep.sum()), lam


def empty_classes(nonempty: Tensor, who: str, stacklevel: int = 4) -> Tensor:
    """Indices (CPU int64) of the classes without samples, with a RuntimeWarning naming
    ``who`` when there are any (they are excluded from every average)."""
    empty = torch.nonzero(~nonempty).flatten().cpu()
    if empty.numel():
        shown = ", ".join(str(int(i)) for i in empty[:10])
        warnings.warn(f"{who}: {empty.numel()} of {nonempty.numel()} classes have no samples and are excluded "
                      f"(first: {shown}{', ...' if empty.numel() > 10 else ''})", RuntimeWarning,
                      stacklevel=stacklevel)
    return empty


def default_pinv_rtol(d: int, k: int) -> float:
    """numpy/torch ``pinv``'s default relative cutoff, ``max(d, K')·eps``."""
    return max(d, k) * torch.finfo(torch.float64).eps


class ComputeMixin:
    """:meth:`compute` of :class:`gnc_ext.metrics.GNCAccumulator` (uses the state's
    canonical (count, mean, M2) form)."""

    # -- compute -------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, W: Optional[Tensor] = None, *, centered: bool = False,
                pinv_rtol: Optional[float] = None, worst: int = 10, gnc2: Any = "auto") -> GNCResult:
        """GNC1 (and GNC2/GNC3 given the classifier W) from the accumulated statistics.

        Args:
            W: optional (num_classes, dim) classifier; rows are L2-normalised for GNC2/GNC3.
            centered: bool; centre Σ_B by the mean of the class means (default False: the
                paper's uncentred Σ_B = (1/K')Σ_k h̄_k h̄_kᵀ).
            pinv_rtol: relative cutoff of Σ_B^†, in [0, 1): eigenvalues ≤
                pinv_rtol·λ_max are dropped. Default ``max(d, K')·2.2e-16`` (numpy/torch
                ``pinv``'s default).
            worst: how many worst classes to list (by spread and by one-vs-rest distance).
            gnc2: ``"auto"`` or True (compute GNC2 when W is given), False (skip it; it is
                the expensive part at large K). Only these three values (no other truthy
                value).

        Returns:
            :class:`GNCResult`. Empty classes are excluded from every average (with a
            warning) and listed in ``empty_classes``. ``gnc1`` is NaN, with a
            RuntimeWarning, when no eigenvalue of Σ_B is above the cutoff.

        Raises:
            RuntimeError: nothing accumulated yet.
            ValueError/TypeError naming ``W``, ``centered``, ``pinv_rtol``, ``worst`` or
            ``gnc2``.

        Cost: two K×d×d fp64 GEMMs (scatter correction, Σ_B) and one d×d eigendecomposition.
        """
        K, d = self.num_classes, self.dim
        if W is not None:
            _check_W(W, K, d)
        centered = _validate.boolean(centered, "centered")
        rtol = _check_pinv_rtol(pinv_rtol)
        _check_gnc2(gnc2)
        worst = _validate.integer(worst, "worst", minimum=0)
        counts, means, M2, within = self._canonical()
        N = int(counts.sum())
        if N == 0:
            raise RuntimeError("compute: no samples accumulated yet (call update(features, labels) first)")
        nz = counts > 0
        Kp = int(nz.sum())
        empty = empty_classes(nz, "GNCAccumulator.compute")
        if rtol is None:
            rtol = default_pinv_rtol(d, Kp)
        Mz = means[nz]
        if centered:
            Mz = Mz - Mz.mean(0, keepdim=True)
        SB = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        _syrk_upper(SB, Mz)
        SB = _symmetrize_upper(SB) / Kp
        SW = M2 / N
        SWc = SW.cpu()
        gnc1, cutoff, rank, lam = pinv_trace(SWc, SB, rtol)
        gnc1 /= Kp
        if rank == 0:
            lmax = float(lam.max()) if lam.numel() else 0.0
            warnings.warn(f"GNCAccumulator.compute: Σ_B has no eigenvalue above the cutoff {cutoff:g} "
                          f"(pinv_rtol={rtol:g} · λ_max={lmax:g}), so gnc1 is NaN (class means all zero "
                          "or indistinguishable from zero)", RuntimeWarning, stacklevel=3)

        n = counts.double()
        nan = torch.full((), float("nan"), dtype=torch.float64, device=self.device)
        norms = torch.where(nz, means.norm(dim=1), nan).cpu()
        spread = torch.where(nz, within / n.clamp(min=1.0), nan).cpu()
        sp = torch.where(torch.isnan(spread), torch.full_like(spread, -math.inf), spread)
        m = min(worst, Kp)
        worst_spread = torch.argsort(sp, descending=True, stable=True)[:m]

        res = GNCResult(
            gnc1=gnc1, centered=bool(centered), pinv_rtol=float(rtol), pinv_cutoff=float(cutoff),
            sigma_b_rank=rank, trace_sigma_w=float(torch.diagonal(SWc).sum()),
            trace_sigma_b=float(torch.diagonal(SB).sum()), num_samples=N, num_classes=K, num_nonempty=Kp,
            counts=counts.cpu(), empty_classes=empty, class_mean_norms=norms, within_class_spread=spread,
            worst_by_spread=worst_spread, normalize=self.normalize,
        )
        if W is not None:
            Wn = unit_rows_f64(W.to(self.device), "W")
            dots = (Wn * means).sum(1)
            res.gnc3 = float((1.0 - dots[nz]).sum()) / Kp
            if gnc2 is not False:
                g2 = _gnc2_of(W)
                res.gnc2 = g2
                res.worst_by_distance = torch.argsort(g2.distance, stable=True)[: min(worst, K)]
        return res

