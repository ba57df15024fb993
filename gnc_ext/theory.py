"""Closed forms, bounds and constructions from the theory of Softmax Codes.

Everything here is exact or analytic; nothing is optimised numerically.

Definitions (the paper, "Generalized Neural Collapse for a Large Number of Classes"):

* ``rho_one-vs-rest(W) = min_k dist(w_k, conv{w_j : j != k})`` (Def. 2.1, Eq. 3) is a
  **Euclidean distance** (not a squared distance) from a unit vector to the convex hull
  of the other unit vectors. A Softmax Code maximises it over K unit vectors in R^d.
* ``rho_one-vs-one(W) = min_{k != k'} ||w_k - w_k'||`` (Eq. 11); maximising it is the
  Tammes problem. Its value is the minimal *chord*; the cosine of the minimal angle is
  ``1 - chord**2 / 2``.

Public functions
----------------
``rho_closed_form(d, K)``           exact ``max rho_one-vs-rest`` where Thm 3.3 gives it.
``one_vs_one_closed_form(d, K)``    exact Tammes optimum (minimal chord) where proven.
``rho_bounds(d, K)``                tightest known bounds on max rho (Thm 3.3, Thm 3.9, ...),
                                    each with its source.
``fejes_toth_chord(K)``             Fejes Toth's bound on the Tammes optimum on S^2.
``design_dim(K, rho)``              ``min_feature_dim`` with the construction or bound behind it.
``min_feature_dim(K, rho)``         smallest d for which theory guarantees a code.
``max_classes(d, rho)``             largest K for which theory guarantees a code.
``simplex_etf(K, d)``, ``cross_polytope(K, d)``, ``polygon(K)``  the optimal codes.

Inputs are validated: sizes must be Python/numpy integers (``TypeError`` otherwise,
also for ``3.0`` and ``True``), ``d >= 1`` and ``K >= 2`` (``ValueError``), ``rho``
must be a finite real in ``(0, 2]`` (the largest one-vs-rest distance of two unit
vectors is 2).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import torch

from . import _validate

__all__ = [
    "rho_closed_form",
    "one_vs_one_closed_form",
    "RhoBounds",
    "rho_bounds",
    "bounds_min_K",
    "fejes_toth_chord",
    "DimDesign",
    "design_dim",
    "min_feature_dim",
    "max_classes",
    "simplex_etf",
    "cross_polytope",
    "polygon",
]

_SQRT_E = math.exp(0.5)


# ----------------------------------------------------------------------------- checks
def _d(d) -> int:
    return _validate.integer(d, "d", minimum=1)


def _K(K) -> int:
    return _validate.integer(K, "K", minimum=2)


def _rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"rho: expected a real number, got {type(rho).__name__}")
    rho = float(rho)
    if not math.isfinite(rho) or rho <= 0.0 or rho > 2.0:
        raise ValueError(
            f"rho: expected a finite one-vs-rest distance in (0, 2] (2 is the largest "
            f"possible, attained by K=2 antipodal points), got {rho}"
        )
    return rho


# ----------------------------------------------------------------------- closed forms
def rho_closed_form(d, K) -> Optional[float]:
    """Exact ``max_W rho_one-vs-rest(W)`` over K unit vectors in R^d, where known.

    Cases (Thm 3.3 of the paper, with the values worked out from its constructions;
    ``rho`` is a Euclidean distance):

    * ``K <= d + 1``: simplex ETF, ``rho = K / (K - 1)``. (The hull of the others has
      its nearest point at their centroid ``-w_k/(K-1)``.)
    * ``d == 2``: regular K-gon, ``rho = 1 - cos(2*pi/K)``. (The nearest point of the
      hull of the others is the midpoint of the chord between the two neighbours.)
      Agrees with the simplex value for K = 2, 3.
    * ``d + 1 < K <= 2d``: ``rho = 1`` (a subset of cross-polytope vertices).
    * ``d == 1, K >= 3`` (not in Thm 3.3; elementary): two of the K points in {-1, +1}
      coincide, so ``rho = 0``.

    Returns ``None`` elsewhere (``d >= 3`` and ``K > 2d``), where no closed form is known.

    Raises ``TypeError`` for non-integer sizes, ``ValueError`` for ``d < 1`` or ``K < 2``.
    """
    d, K = _d(d), _K(K)
    if K <= d + 1:
        return K / (K - 1)
    if d == 1:
        return 0.0
    if K <= 2 * d:
        return 1.0
    if d == 2:
        return 2.0 * math.sin(math.pi / K) ** 2  # = 1 - cos(2 pi/K) without cancellation
    return None


def _cubic_root_in(coeffs, lo, hi) -> float:
    """The unique real root in (lo, hi) of a polynomial (bisection, float64)."""
    def f(x):
        v = 0.0
        for c in coeffs:
            v = v * x + c
        return v

    a, b = lo, hi
    fa = f(a)
    if fa * f(b) > 0:
        raise RuntimeError("internal: no sign change")  # pragma: no cover
    for _ in range(200):
        m = 0.5 * (a + b)
        fm = f(m)
        if fa * fm <= 0:
            b = m
        else:
            a, fa = m, fm
    return 0.5 * (a + b)


def one_vs_one_closed_form(d, K) -> Optional[float]:
    """Proven optimum of the Tammes problem: ``max_W min_{k != k'} ||w_k - w_k'||``.

    Returns the minimal chord (a distance; the cosine of the minimal angle is
    ``1 - c**2/2``), or ``None`` where no optimum is proven (this function only knows
    the cases below). Proven cases:

    * ``K <= d + 1``: simplex, cosine ``-1/(K-1)`` (Rankin 1955).
    * ``d + 1 < K <= 2d``: cosine 0 (Rankin 1955), e.g. cross-polytope vertices.
    * ``d == 1``: ``K = 2`` gives 2, ``K >= 3`` gives 0.
    * ``d == 2``: regular polygon, chord ``2 sin(pi/K)``.
    * ``d == 3``: K = 7, 8, 9 (Schuette & van der Waerden 1951; cosines are the roots of
      3x^3 - 9x^2 - 3x + 1, 7x^2 + 2x - 1 and 3x - 1 in (0, 1)); K = 11 and 12
      (cosine 1/sqrt(5): Fejes Toth 1943 for 12; Danzer 1963 / Boeroeczky 1983 for 11).
      K = 10, 13, 14, 24 are proven too but their values are not stored here.

    Note: the 24-cell (d=4, K=24, cosine 1/2) solves the 4-d kissing problem but is
    *not* known to be an optimal 24-point code (Cohn et al. 2024, arXiv:2403.16874), so
    it is not returned here.
    """
    d, K = _d(d), _K(K)
    if K <= d + 1:
        return math.sqrt(2.0 * K / (K - 1))
    if d == 1:
        return 0.0
    if K <= 2 * d:
        return math.sqrt(2.0)
    if d == 2:
        return 2.0 * math.sin(math.pi / K)
    if d == 3:
        cos = None
        if K == 7:
            cos = _cubic_root_in([3.0, -9.0, -3.0, 1.0], 0.0, 0.5)
        elif K == 8:
            cos = (2.0 * math.sqrt(2.0) - 1.0) / 7.0
        elif K == 9:
            cos = 1.0 / 3.0
        elif K in (11, 12):
            cos = 1.0 / math.sqrt(5.0)
        if cos is not None:
            return math.sqrt(2.0 - 2.0 * cos)
    return None


# ---------------------------------------------------------------------------- bounds
@dataclasses.dataclass(frozen=True)
class RhoBounds:
    """Bounds on ``max_W rho_one-vs-rest(W)`` over K unit vectors in R^d.

    ``lower <= max rho <= upper`` always holds: each is the tightest of the valid
    bounds this module knows, and ``lower_source`` / ``upper_source`` name the one used
    (see :func:`rho_bounds`). Where an exact value is known, ``lower == upper``.

    The raw Thm 3.9 values are kept as ``thm39_lower`` / ``thm39_upper``; they are a
    proof only when ``valid`` is True, i.e. when ``K >= K_min = sqrt(2*pi*sqrt(e)*d)``
    (the theorem's assumption). ``valid`` describes Thm 3.9 only: ``lower`` and
    ``upper`` never use Thm 3.9 outside that range.
    """

    lower: float
    upper: float
    valid: bool
    K_min: float
    d: int
    K: int
    lower_source: str = ""
    upper_source: str = ""
    thm39_lower: float = math.nan
    thm39_upper: float = math.nan


def bounds_min_K(d) -> float:
    """The smallest K for which Thm 3.9 holds: ``sqrt(2*pi*sqrt(e)*d)`` (a real number;
    the theorem needs the integer K to be at least this)."""
    d = _d(d)
    return math.sqrt(2.0 * math.pi * _SQRT_E * d)


def _log_lower(d: int, K: int) -> float:
    # log of 1/2 [ (sqrt(pi)/K) Gamma((d+1)/2) / Gamma(d/2+1) ]^(2/(d-1))
    inner = 0.5 * math.log(math.pi) - math.log(K) + math.lgamma((d + 1) / 2.0) - math.lgamma(d / 2.0 + 1.0)
    return math.log(0.5) + 2.0 / (d - 1) * inner


def _log_upper(d: int, K: int) -> float:
    # log of 2 [ (2 sqrt(pi)/K) Gamma((d+1)/2) / Gamma(d/2) ]^(1/(d-1))
    inner = math.log(2.0) + 0.5 * math.log(math.pi) - math.log(K) + math.lgamma((d + 1) / 2.0) - math.lgamma(d / 2.0)
    return math.log(2.0) + inner / (d - 1)


def _closed_form_source(d: int, K: int) -> str:
    if K <= d + 1:
        return "exact: simplex ETF, K/(K-1) (Thm 3.3, K <= d+1)"
    if K <= 2 * d:
        return "exact: cross-polytope vertices, 1 (Thm 3.3, d+1 < K <= 2d)"
    return "exact: regular polygon, 1 - cos(2 pi/K) (Thm 3.3, d = 2)"


def fejes_toth_chord(K) -> float:
    """L. Fejes Toth's (1943) upper bound on the smallest pairwise distance (chord) of K
    points on the sphere S^2 (d = 3): ``sqrt(4 - csc^2(omega))`` with
    ``omega = K pi / (6 (K - 2))``, for K >= 3. It is attained for K = 3, 4, 6, 12.

    Since ``dist(w_k, conv{w_j : j != k}) <= ||w_k - w_j||`` for every j, the one-vs-rest
    distance never exceeds the one-vs-one distance, so this also bounds ``max rho`` at
    d = 3 (:func:`rho_bounds` uses it).
    """
    K = _validate.integer(K, "K", minimum=3)
    omega = K * math.pi / (6.0 * (K - 2))
    return math.sqrt(max(0.0, 4.0 - 1.0 / math.sin(omega) ** 2))


def rho_bounds(d, K) -> RhoBounds:
    """The tightest valid bounds this module knows on ``max_W rho_one-vs-rest(W)``.

    Upper bounds considered (the smallest is returned, its source in ``upper_source``):

    * exact values where Thm 3.3 gives them (``K <= 2d`` or ``d = 2``; then
      ``lower == upper``);
    * ``1`` for ``K > d + 1`` (d >= 2): Thm 3.3 gives ``max rho = 1`` at ``K = d + 2``,
      and ``max rho`` is non-increasing in K (dropping a vector from a code only shrinks
      the hulls of the others). In particular no code with ``K > 2d`` exceeds 1 (< sqrt 2,
      the bound from Rankin's theorem on the one-vs-one distance);
    * Thm 3.9's upper bound, where the theorem holds (``K >= sqrt(2 pi sqrt(e) d)``)::

          max rho <= 2 [ (2 sqrt(pi)/K) G((d+1)/2)/G(d/2) ]^(1/(d-1))

    * for d = 3: Fejes Toth's bound on the one-vs-one distance (:func:`fejes_toth_chord`),
      since ``rho_one-vs-rest <= rho_one-vs-one`` for every code.

    Lower bound (``lower_source``): the exact value where known, else Thm 3.9's::

          1/2 [ (sqrt(pi)/K) G((d+1)/2)/G(d/2+1) ]^(2/(d-1))  <=  max rho

    (for d >= 3 every K > 2d satisfies the theorem's condition, so one of the two
    always applies).

    Numerics: Thm 3.9 is evaluated in the log domain with ``math.lgamma`` and
    ``math.log(K)`` (exact for Python ints of any size), so K up to 1e9 and beyond and
    d up to 4096 and beyond neither overflow nor underflow. O(1) time.

    Args:
        d: feature dimension, an integer >= 2 (Thm 3.9's exponents 1/(d-1) need d >= 2;
            for d = 1 use :func:`rho_closed_form`).
        K: number of classes, an integer >= 2.
    Returns:
        :class:`RhoBounds`: ``lower``, ``upper`` and their sources, the raw Thm 3.9 values
        ``thm39_lower`` / ``thm39_upper``, ``valid`` (whether Thm 3.9 holds) and ``K_min``.
    Raises:
        TypeError for non-integers, ValueError for d < 2 or K < 2.
    """
    d, K = _d(d), _K(K)
    if d < 2:
        raise ValueError("d: Thm 3.9 needs d >= 2 (its exponents are 1/(d-1)); for d = 1 use rho_closed_form")
    kmin = bounds_min_K(d)
    valid = K >= kmin
    t_lo, t_up = math.exp(_log_lower(d, K)), math.exp(_log_upper(d, K))
    cf = rho_closed_form(d, K)
    if cf is not None:
        src = _closed_form_source(d, K)
        lower, lower_src, upper, upper_src = cf, src, cf, src
    else:  # d >= 3 and K > 2d: Thm 3.9 holds there (2d >= sqrt(2 pi sqrt(e) d) for d >= 3)
        lower, lower_src = (t_lo, "Thm 3.9 lower bound") if valid else (0.0, "none known")
        upper, upper_src = 1.0, "1: Thm 3.3 at K = d+2, and max rho is non-increasing in K"
        if valid and t_up < upper:
            upper, upper_src = t_up, "Thm 3.9 upper bound"
        if d == 3:
            ft = fejes_toth_chord(K)
            if ft < upper:
                upper, upper_src = ft, "Fejes Toth (1943) bound on the one-vs-one distance (d = 3)"
    return RhoBounds(lower=lower, upper=upper, valid=valid, K_min=kmin, d=d, K=K,
                     lower_source=lower_src, upper_source=upper_src, thm39_lower=t_lo, thm39_upper=t_up)


def _bound_valid(d: int, K: int) -> bool:
    return K >= math.sqrt(2.0 * math.pi * _SQRT_E * d)


@dataclasses.dataclass(frozen=True)
class DimDesign:
    """The answer of :func:`design_dim`: the smallest feature dimension ``d`` that theory
    guarantees, and ``source``, the construction or bound that guarantees it."""

    d: int
    source: str


def min_feature_dim(K, rho) -> int:
    """Smallest feature dimension d for which theory *guarantees* that K unit vectors
    in R^d with ``rho_one-vs-rest >= rho`` exist (i.e. ``max rho(d, K) >= rho``).
    ``design_dim(K, rho).d``; see :func:`design_dim` for the conditions used and for
    which of them gives the answer."""
    return design_dim(K, rho).d


def design_dim(K, rho) -> DimDesign:
    """Smallest feature dimension d for which theory *guarantees* that K unit vectors
    in R^d with ``rho_one-vs-rest >= rho`` exist, and the reason.

    Sufficient conditions used (the answer is the smallest d meeting any of them; since
    ``max rho`` is non-decreasing in d — a code embeds into more dimensions unchanged —
    every larger d works too). ``source`` names the one that gives the answer:

    * ``"antipodal pair (K = 2)"``: d = 1 when K = 2 (rho = 2);
    * ``"regular polygon (Thm 3.3, d = 2)"``: d = 2 when ``1 - cos(2 pi/K) >= rho``;
    * ``"cross-polytope construction (Thm 3.3, rho = 1)"``: ``d = ceil(K/2)`` when
      ``rho <= 1``;
    * ``"simplex ETF (Thm 3.3, rho = K/(K-1))"``: ``d = K - 1``;
    * ``"Thm 3.9 lower bound"``: the smallest d with ``lower(d, K) >= rho`` among the d
      where the theorem holds (``K >= sqrt(2 pi sqrt(e) d)``). The lower bound, not the
      upper one, because only a lower bound on the optimum proves that a code reaching
      rho exists. It is increasing in d and below 1/2 for every d, so it only ever helps
      for ``rho < 1/2``. (The upper bound gives the converse, a *necessary* dimension;
      it is not what this function returns.)

    When two conditions give the same d, the construction is named (it is explicit).
    This is a guarantee, not the true minimum: the true smallest d can be smaller
    because the Thm 3.9 lower bound is loose (by a factor of ~2-20 at d = 3).

    Args:
        K: number of classes, integer >= 2 (any size; O(log) time by bisection).
        rho: target one-vs-rest distance in (0, 2].
    Returns:
        :class:`DimDesign` (``d`` an int >= 1, ``source`` a str).
    Raises:
        TypeError/ValueError for bad arguments; ValueError when ``rho > K/(K-1)``, the
        largest one-vs-rest distance K unit vectors can have in any dimension.
    """
    K, rho = _K(K), _rho(rho)
    best = K / (K - 1)
    if rho > best * (1.0 + 1e-15):
        raise ValueError(
            f"rho: {rho} exceeds K/(K-1) = {best}, the largest one-vs-rest distance of K={K} "
            "unit vectors in any dimension (simplex ETF); no feature dimension reaches it"
        )
    if K == 2:
        return DimDesign(1, "antipodal pair (K = 2)")
    # (d, source) candidates, constructions first so that they win ties
    cands = []
    if 2.0 * math.sin(math.pi / K) ** 2 >= rho:
        cands.append((2, "regular polygon (Thm 3.3, d = 2)"))
    if rho <= 1.0:
        cands.append(((K + 1) // 2, "cross-polytope construction (Thm 3.3, rho = 1)"))
    cands.append((K - 1, "simplex ETF (Thm 3.3, rho = K/(K-1))"))
    # Thm 3.9 lower bound: valid for 2 <= d <= K^2/(2 pi sqrt(e)); the lower bound is
    # increasing in d. Dimensions >= K-1 need not be searched (the simplex is optimal
    # there), which also keeps the float rounding of K^2 harmless for huge K.
    d_max = min(int(math.floor(K * K / (2.0 * math.pi * _SQRT_E))), K - 1)
    while d_max >= 2 and not _bound_valid(d_max, K):
        d_max -= 1  # guard against floating rounding at the boundary (small K only)
    log_rho = math.log(rho)
    if d_max >= 2 and _log_lower(d_max, K) >= log_rho:
        lo, hi = 2, d_max  # invariant: lower(hi) >= rho
        if _log_lower(lo, K) >= log_rho:
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _log_lower(mid, K) >= log_rho:
                hi = mid
            else:
                lo = mid
        cands.append((hi, "Thm 3.9 lower bound"))
    d, source = min(cands, key=lambda c: c[0])  # min keeps the first of equal d
    return DimDesign(int(d), source)


def max_classes(d, rho) -> int:
    """Largest number of classes K for which theory *guarantees* that K unit vectors in
    R^d with ``rho_one-vs-rest >= rho`` exist.

    Since removing a vector can only increase the distances to the hulls of the others,
    ``max rho(d, K)`` is non-increasing in K, so every K' <= the returned K works too.
    Sufficient conditions used (the answer is the largest K meeting any of them):

    * Thm 3.3: the simplex (K <= d+1, rho = K/(K-1)), the cross-polytope
      (K <= 2d, rho >= 1) and, for d = 2, the regular polygon (exact: for d = 2 the
      answer is the true maximum ``floor(2 pi / arccos(1 - rho))``).
    * Thm 3.9 **lower** bound, solved for K in closed form:
      ``lower(d, K) >= rho  <=>  K <= sqrt(pi) G((d+1)/2)/G(d/2+1) * (2 rho)^(-(d-1)/2)``,
      used only where the theorem holds (``K >= sqrt(2 pi sqrt(e) d)``).

    Numerics: the Thm 3.9 value is computed in the log domain; it can be astronomically
    large (e.g. d = 512, rho = 0.1 gives ~4e178), so it is returned as an exact Python
    int of the float64 value ``exp(log K)`` (relative accuracy ~1e-13 from the logarithm;
    the last digits of a huge result carry no meaning). Moderate results (< 2^52) are
    checked against the bound with +-1 corrections so the integer is exact.

    Args:
        d: feature dimension, integer >= 1.
        rho: target one-vs-rest distance in (0, 2].
    Returns:
        an int >= 2 (K = 2 always works: rho(2 antipodal points) = 2).
    """
    d, rho = _d(d), _rho(rho)
    cands = [2]
    # simplex: K/(K-1) >= rho  <=>  K <= rho/(rho-1) for rho > 1
    if rho <= 1.0:
        cands.append(d + 1)
        cands.append(2 * d)
    else:
        kk = 2
        while kk + 1 <= d + 1 and (kk + 1) / kk >= rho:
            kk += 1
        cands.append(kk)
    if d == 2:
        # largest K with 1 - cos(2 pi/K) = 2 sin^2(pi/K) >= rho (exact optimum for d = 2)
        kk = int(math.floor(math.pi / math.asin(min(1.0, math.sqrt(rho / 2.0))))) + 2
        while kk > 2 and 2.0 * math.sin(math.pi / kk) ** 2 < rho:
            kk -= 1
        cands.append(kk)
    if d >= 2:
        logK = (
            0.5 * math.log(math.pi) + math.lgamma((d + 1) / 2.0) - math.lgamma(d / 2.0 + 1.0)
            - 0.5 * (d - 1) * math.log(2.0 * rho)
        )
        kmin = bounds_min_K(d)
        if logK >= math.log(kmin):
            if logK < 36.0:  # < 2^52: make the integer exact against the bound
                kk = int(math.floor(math.exp(logK)))
                while kk >= 2 and _log_lower(d, kk) < math.log(rho):
                    kk -= 1
                while _log_lower(d, kk + 1) >= math.log(rho):
                    kk += 1
            else:
                kk = _exp_to_int(logK)
            if kk >= kmin:
                cands.append(kk)
    return int(max(cands))


def _exp_to_int(logv: float) -> int:
    """floor(exp(logv)) as a Python int, for logv possibly beyond float range."""
    if logv < 700.0:
        return int(math.exp(logv))
    # exp(logv) = m * 2^e with logv = e*ln2 + log m
    e = int(logv / math.log(2.0)) - 52
    m = math.exp(logv - e * math.log(2.0))
    return int(m) << e


# ---------------------------------------------------------------------- constructions
def _rotation(d: int, seed: Optional[int]) -> Optional[torch.Tensor]:
    if seed is None:
        return None
    seed = _validate.seed(seed)
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    return Q * torch.sign(torch.diagonal(R))  # Haar-distributed orthogonal matrix


def _finish(W: torch.Tensor, seed) -> torch.Tensor:
    Q = _rotation(W.shape[1], seed)
    if Q is not None:
        W = W @ Q.T
    return W / W.norm(dim=1, keepdim=True)


def simplex_etf(K, d=None, *, seed=None) -> torch.Tensor:
    """The simplex equiangular tight frame: K unit vectors with all pairwise inner
    products ``-1/(K-1)``, in R^d (default ``d = K - 1``, the smallest possible).

    Optimal for both the Softmax Code (rho = K/(K-1)) and the Tammes problem when
    ``K <= d + 1``. Construction: centred standard basis of R^K, scaled by
    sqrt(K/(K-1)), expressed in an orthonormal basis of the sum-zero hyperplane (so the
    first K-1 coordinates carry it), zero-padded to d, then optionally rotated by a
    random orthogonal matrix drawn from ``seed``.

    Returns a float64 CPU tensor (K, d) with unit rows. Raises for K < 2, d < K - 1.
    """
    K = _K(K)
    d = K - 1 if d is None else _d(d)
    if d < K - 1:
        raise ValueError(f"d: a simplex ETF of K={K} vectors needs d >= K-1 = {K - 1}, got {d}")
    M = torch.eye(K, dtype=torch.float64) - 1.0 / K
    M = M * math.sqrt(K / (K - 1))
    # orthonormal basis of the hyperplane sum(x) = 0 (columns), via QR of the centred basis
    B, _ = torch.linalg.qr(torch.eye(K, dtype=torch.float64)[:, : K - 1] - 1.0 / K)
    X = M @ B  # (K, K-1) coordinates
    W = torch.zeros(K, d, dtype=torch.float64)
    W[:, : K - 1] = X
    return _finish(W, seed)


def cross_polytope(K, d, *, seed=None) -> torch.Tensor:
    """K vertices of the cross-polytope in R^d, in the order e1, -e1, e2, -e2, ...

    For ``d + 1 < K <= 2d`` this attains the Thm 3.3 optimum rho_one-vs-rest = 1 (every
    vertex is at distance exactly 1 from the hull of the others, which contains the
    origin) and the Tammes optimum (largest cosine 0). For ``3 <= K`` the minimum
    one-vs-rest distance is 1; for K = 2 the two points are antipodal.

    Returns a float64 CPU tensor (K, d) with unit rows, optionally rotated by a random
    orthogonal matrix drawn from ``seed``. Raises for K < 2, d < 1, K > 2d.
    """
    K, d = _K(K), _d(d)
    if K > 2 * d:
        raise ValueError(f"K: a cross-polytope in R^{d} has only 2d = {2 * d} vertices, got K={K}")
    W = torch.zeros(K, d, dtype=torch.float64)
    idx = torch.arange(K)
    W[idx, idx // 2] = torch.where(idx % 2 == 0, 1.0, -1.0).to(torch.float64)
    return _finish(W, seed)


def polygon(K, *, phase: float = 0.0, seed=None) -> torch.Tensor:
    """The regular K-gon on the unit circle: rows ``(cos(2 pi k/K + phase), sin(...))``.

    Optimal for d = 2 (Thm 3.3: rho = 1 - cos(2 pi/K); Tammes chord 2 sin(pi/K)).
    ``seed`` (optional) draws a random phase instead. Returns float64 (K, 2).
    """
    K = _K(K)
    phase = _validate.real(phase, "phase")
    if seed is not None:
        g = torch.Generator().manual_seed(_validate.seed(seed))
        phase = float(torch.rand((), generator=g, dtype=torch.float64)) * 2.0 * math.pi
    t = torch.arange(K, dtype=torch.float64) * (2.0 * math.pi / K) + phase
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1)
