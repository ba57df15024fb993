"""The neural-collapse metric suite (NC1–NC5) from a :class:`GNCAccumulator`, at large K.

Conventions (those of the NC toolkit researchers use, rhubarbwu/neural-collapse): μ_k
are the accumulated class means (of L2-normalised features when the accumulator
normalises, its default; the toolkit works on raw features, so pass
``GNCAccumulator(..., normalize=False)`` to reproduce its numbers; every result says
which in ``normalized``), μ_G the *unweighted* mean of the non-empty class means,
μ̃_k = μ_k − μ_G, K the number of non-empty classes (empty ones are excluded with a
warning, as in :meth:`GNCAccumulator.compute`); pairwise statistics are means over the
pairs i < j, variances and standard deviations are population ones.

How each quantity is computed (never a K × K tensor; memory O(K·d + d² + one tile)):

- closed forms through d × d Gram matrices where they exist — NC1 (Σ_W, Σ_B and one
  d × d eigendecomposition), the mean and spread of the pairwise cosines (from ‖Σ_k x_k‖²
  and ‖XᵀX‖_F²), the simplex-ETF error (from the eigenvalues of M̃ᵀM̃: G = M̃M̃ᵀ
  commutes with the centring projector, so the error is a sum of squares, without the
  cancellation of 2 − 2⟨Ĝ, E⟩), and the self-duality error (from ⟨WᵀW, M̃ᵀM̃⟩_F);
- streamed fp64 tiles of the K × K Gram for the truly pairwise ones (CDNV, the maximal
  angle, the kernel statistics): ``gnc_ext.ops.metrics.pairwise_class_stats``;
- a data pass for NC4 (:meth:`GNCAccumulator.nc4_agreement_count`).

For K > d + 1 no arrangement of K class means in d dimensions is a simplex ETF, and the
ETF and duality errors cannot go below ``nc2_etf_floor`` = √(2 − 2√(d/(K − 1)))
(:func:`etf_error_floor`); there GNC2 — the one-vs-rest margin ρ of the classifier,
with its certificate, against the bounds on max ρ (``gnc2_*`` fields) — is the quantity
that reaches its optimum.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, Iterable, Optional, Union

import torch
from torch import Tensor

from .. import _validate
from .. import distributed as _dist_helpers
from .. import resources
from ..ops import metrics as metrics_ops
from .compute import GNC2Result, default_pinv_rtol, empty_classes, pinv_trace
from .compute import gnc2 as _classifier_gnc2
from .ncc import check_classifier
from .state import AccumulatorState, _symmetrize_upper, _syrk_upper

__all__ = ["NCMetrics", "nc_metrics", "etf_error_floor", "KERNELS"]

KERNELS = metrics_ops.KERNELS


@dataclasses.dataclass
class NCMetrics:
    """What :func:`nc_metrics` returns: the neural-collapse suite (plain Python numbers).

    Notation: μ̃_k = μ_k − μ_G over the K non-empty classes, x_k = μ̃_k/‖μ̃_k‖,
    E = (I − 11ᵀ/K)/√(K − 1) the normalised simplex ETF Gram, pairs i < j, population
    variances and standard deviations.

    Attributes:
        nc1_pinv: tr(Σ_W Σ_B^†)/K, Σ_B = (1/K)Σ μ̃_k μ̃_kᵀ, Σ_W = (1/N)Σ (h − μ_y)(h − μ_y)ᵀ
            (Papyan, Han & Donoho 2020). Equals ``compute(centered=True).gnc1``.
        nc1_quotient: tr Σ_W / tr Σ_B (Tirer, Huang & Niles-Weed 2023).
        nc1_cdnv: mean over pairs of (σ_i² + σ_j²)/(2‖μ_i − μ_j‖^(2p)), σ_k² the mean
            squared distance of class k's samples to μ_k, p = ``cdnv_exponent``
            (Galanti, György & Hutter 2022).
        nc2_equinorm: std/mean of ‖μ̃_k‖ (Papyan et al. 2020).
        nc2_equiangular: std over pairs of cos(μ̃_i, μ̃_j) (Papyan et al. 2020).
        nc2_max_angle: mean over k of |max_{j≠k} cos(μ̃_k, μ̃_j) + 1/(K − 1)|
            (Papyan et al. 2020).
        nc2_etf_error: ‖G/‖G‖_F − E‖_F with G = M̃M̃ᵀ (Kothapalli 2023).
        nc2_kernel_mean, nc2_kernel_var: mean and variance over pairs of the kernel on the
            x_k: "log" = log(1/‖x_i − x_j‖), "riesz" = ‖x_i − x_j‖^−(d−2), "distance" =
            ‖x_i − x_j‖ (hyperspherical uniformity, Liu et al. 2023).
        w_equinorm, w_equiangular, w_max_angle: the NC2 statistics on the rows w_k of the
            classifier (as given, not centred) of the non-empty classes; None without W.
        nc3_duality_error: ‖P/‖P‖_F − E‖_F with P = W M̃ᵀ (self-duality, Papyan et al.
            2020; the toolkit's "alignment error"). None without W.
        nc3_uniform_duality: variance over k of ⟨w_k, μ̃_k⟩ (uniform duality). None
            without W.
        nc4_agreement: fraction of samples whose linear prediction
            argmax_k(⟨w_k, h⟩ + bias_k) equals their nearest-class-centre prediction
            (Papyan et al. 2020, NC4); None unless a data pass measured it
            (``features=`` here, or ``evaluate(..., nc=True)`` with W).
        nc5_ood: mean over k of |cos(μ_k, μ_G^ood)| with the class means μ_k as
            accumulated (not centred) and the OoD global mean (ID/OoD orthogonality,
            Ammar et al. 2024; the toolkit's ``orthogonality_deviation(means, mG_ood)``);
            None without ``ood_mean``.
        nc5_ood_centered: the same with the centred means μ̃_k; None without ``ood_mean``.
        kernel, cdnv_exponent: the options used.
        num_classes, num_nonempty, num_samples: K (all), K (non-empty), N.
        nc4_samples: rows the NC4 agreement was measured on (0 if not measured).
        normalized: whether the accumulator L2-normalised the features before
            accumulating (``GNCAccumulator(normalize=...)``, True by default); the
            toolkit's numbers are those of ``normalized=False``.
        nc2_etf_floor: the smallest value any K class means (K non-empty) in d
            dimensions can give ``nc2_etf_error`` and W, M̃ can give
            ``nc3_duality_error``: √(2 − 2√(d/(K − 1))) for K > d + 1 (no simplex ETF
            exists there), 0 for K ≤ d + 1 (:func:`etf_error_floor`).
        gnc2_rho, gnc2_rho_lower: GNC2, the one-vs-rest margin ρ of the row-normalised
            classifier (all ``num_classes`` rows, as :func:`gnc_ext.metrics.gnc2`) and
            its certified lower bound; None without W or with ``gnc2=False``.
        gnc2_rho_max_lower, gnc2_rho_max_upper: the bounds on max ρ over K unit
            vectors in d dimensions (``gnc_ext.theory.rho_bounds(d, K)``; equal where
            Thm 3.3 gives max ρ exactly); ρ/max ρ → 1 is GNC2's collapse. None where
            ``gnc2_rho`` is None or d = 1.
        ncc_accuracy: nearest-class-centre accuracy of a labelled data pass
            (:func:`gnc_ext.metrics.evaluate`, :func:`gnc_ext.metrics.layer_metrics`);
            None if not measured. ncc_samples: its rows (0 if not measured).

    A value is ``inf`` where a pairwise term is infinite (two classes with coinciding
    means or directions) and NaN where it is undefined (a class mean equal to μ_G has no
    direction); both come with a RuntimeWarning.
    """

    nc1_pinv: float
    nc1_quotient: float
    nc1_cdnv: float
    nc2_equinorm: float
    nc2_equiangular: float
    nc2_max_angle: float
    nc2_etf_error: float
    nc2_kernel_mean: float
    nc2_kernel_var: float
    w_equinorm: Optional[float] = None
    w_equiangular: Optional[float] = None
    w_max_angle: Optional[float] = None
    nc3_duality_error: Optional[float] = None
    nc3_uniform_duality: Optional[float] = None
    nc4_agreement: Optional[float] = None
    nc5_ood: Optional[float] = None
    kernel: str = "log"
    cdnv_exponent: float = 1.0
    num_classes: int = 0
    num_nonempty: int = 0
    num_samples: int = 0
    nc4_samples: int = 0
    normalized: bool = True
    nc2_etf_floor: float = 0.0
    nc5_ood_centered: Optional[float] = None
    gnc2_rho: Optional[float] = None
    gnc2_rho_lower: Optional[float] = None
    gnc2_rho_max_lower: Optional[float] = None
    gnc2_rho_max_upper: Optional[float] = None
    ncc_accuracy: Optional[float] = None
    ncc_samples: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict: the field names above as keys (snake_case), values plain
        ``float`` / ``int`` / ``str`` / ``bool`` or None; a non-finite value (inf/NaN, see above)
        becomes None, so ``json.dumps`` gives strict JSON."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[f.name] = v
        return out


# ----------------------------------------------------------------------------- pieces
def etf_error_floor(num_classes: int, dim: int) -> float:
    """The smallest simplex-ETF error ‖G/‖G‖_F − E‖_F that K class means in d dimensions
    can reach (also the floor of the self-duality error ‖P/‖P‖_F − E‖_F, P = W M̃ᵀ):
    √(2 − 2√(d/(K − 1))) for K > d + 1, 0 for K ≤ d + 1.

    Why: G (or P) has rank ≤ d, and with c = 1/√(K − 1), ‖Ĝ − cP_1‖² = 2 − 2c⟨Ĝ, P_1⟩
    (P_1 the centring projector, ‖cP_1‖ = 1) where ⟨Ĝ, P_1⟩ ≤ ‖Ĝ‖_* ≤ √d·‖Ĝ‖_F = √d.
    Equality holds for G proportional to the projector on any d-dimensional subspace of
    range(P_1) (the top-d eigenspace of the ETF Gram), so the floor is attained.

    Args:
        num_classes: K ≥ 2 (the non-empty classes). dim: d ≥ 1.
    """
    K = _validate.integer(num_classes, "num_classes", minimum=2)
    d = _validate.integer(dim, "dim", minimum=1)
    if K <= d + 1:
        return 0.0
    return math.sqrt(max(2.0 - 2.0 * math.sqrt(d / (K - 1)), 0.0))


def _centred_dev2(lam: Tensor, K: int, t: float) -> float:
    """Σ (λ − t)² over the K − 1 eigenvalues, on the range of P = I − 11ᵀ/K, of a
    symmetric K×K matrix A with A1 = 0 whose non-zero eigenvalues are among ``lam``
    (any order; e.g. those of a d×d Gram BᵀB for A = BBᵀ with centred rows B): the
    largest min(len(lam), K − 1) in magnitude, padded with zeros (the remaining ones are
    zero up to rounding and add their squares). A and tP commute, so this is
    ‖A − tP‖_F² as a sum of squares: no cancellation."""
    lam = lam.double().cpu()
    lam = lam[torch.argsort(lam.abs(), descending=True)]
    m = min(lam.numel(), K - 1)
    top, rest = lam[:m], lam[m:]
    return float(((top - t) ** 2).sum()) + (K - 1 - m) * t * t + float((rest * rest).sum())


def _cosine_spread(X: Tensor) -> float:
    """Population std of c_ij = ⟨x_i, x_j⟩ over pairs i < j of K unit rows, without
    E[c²] − E[c]² cancellation (which floors it at ~1e-8 near a simplex ETF):
    with s = Σx_k, X̃ the centred rows and m the mean,
    Σ_{i≠j} (c_ij − m)² = ‖X̃X̃ᵀ − (1 − m)P‖² + 2‖X̃s‖²/K + (‖s‖²/K − 1 − m(K − 1))²
    (the blocks of XXᵀ − (1 − m)I − m11ᵀ on range(P) and 1), each a sum of squares
    from d×d quantities (X̃ᵀX̃ = XᵀX − ssᵀ/K)."""
    K, d = X.shape
    s = X.sum(0)
    ss = float(s @ s)
    sq = float(torch.einsum("kd,kd->k", X, X).sum())
    Gc = X.T @ X - torch.outer(s, s) / K
    m = (ss - sq) / (K * (K - 1))
    lam = torch.linalg.eigvalsh(Gc.cpu())
    dev2 = (_centred_dev2(lam, K, 1.0 - m) + 2.0 * float(s @ (Gc @ s)) / K
            + (ss / K - 1.0 - m * (K - 1)) ** 2)
    return math.sqrt(max(dev2 / (K * (K - 1)), 0.0))


def _equinorm(norms: Tensor) -> float:
    return float(norms.std(unbiased=False) / norms.mean())


def _max_angle(max_cos: Tensor, K: int) -> float:
    return float((max_cos + 1.0 / (K - 1)).abs().mean())


def _etf_error(lam: Tensor, K: int) -> float:
    """‖G/‖G‖_F − E‖_F from the eigenvalues ``lam`` of M̃ᵀM̃ (d of them, any order):
    G = M̃M̃ᵀ maps 1 to 0, so with E = cP, c = 1/√(K−1), :func:`_centred_dev2` applies."""
    lam = lam.double().cpu()
    return math.sqrt(max(_centred_dev2(lam / torch.linalg.vector_norm(lam), K, 1.0 / math.sqrt(K - 1)), 0.0))


def _duality_error(Wz: Tensor, Mt: Tensor) -> float:
    """‖P/‖P‖_F − E‖_F for P = W M̃ᵀ (K non-empty rows) from d×d and 2d×2d matrices,
    as sums of squares (no 2 − 2⟨P̂, E⟩ cancellation, which floors it at ~1.5e-8).

    With W̃ the centred rows of W, w = Σw_k and Q = W̃M̃ᵀ/‖P‖ (= P·P̂ restricted):
    ‖P̂ − E‖² = ‖sym Q − cP‖² + ‖skew Q‖² + ‖M̃w‖²/(K‖P‖²). With U = [W̃, M̃] and
    R = (UᵀU)^½ (2d×2d), sym Q and skew Q have the spectrum / Frobenius norm of
    R S R/‖P‖ and R S′R/‖P‖, S = [[0, I], [I, 0]]/2, S′ = [[0, I], [−I, 0]]/2; sym Q
    maps 1 to 0, so :func:`_centred_dev2` gives the first term. The two blocks of U are
    scaled to unit Frobenius norm first (P̂ does not depend on their scales), and the
    eigenvalues of UᵀU below 2d·eps·λ_max are taken as zero."""
    K, d = Mt.shape
    w = Wz.sum(0)
    Gww = Wz.T @ Wz - torch.outer(w, w) / K          # W̃ᵀW̃
    Gwm = Wz.T @ Mt - torch.outer(w, Mt.sum(0)) / K   # W̃ᵀM̃ (Σμ̃ = 0 up to rounding)
    Gmm = Mt.T @ Mt
    a, b = float(torch.trace(Gww)), float(torch.trace(Gmm))
    left = float(w @ (Gmm @ w)) / K                    # ‖1ᵀP‖²/K = ‖M̃w‖²/K
    fro2 = float((Gww * Gmm).sum()) + left             # ‖P‖_F²
    if not (fro2 > 0.0 and a > 0.0 and b > 0.0):
        return float("nan")
    G = torch.cat([torch.cat([Gww / a, Gwm / math.sqrt(a * b)], 1),
                   torch.cat([Gwm.T / math.sqrt(a * b), Gmm / b], 1)]).cpu()
    lam, V = torch.linalg.eigh(0.5 * (G + G.T))
    # eigenvalues at rounding level (pinv's cutoff) are zero: their square roots (~1e-8)
    # would be noise in R
    lam = torch.where(lam > 2 * d * torch.finfo(torch.float64).eps * float(lam.max()), lam, torch.zeros_like(lam))
    R = (V * lam.sqrt()) @ V.T
    g = math.sqrt(a * b / fro2)                        # Q in the scaled blocks
    Z, I = torch.zeros(d, d, dtype=torch.float64), 0.5 * torch.eye(d, dtype=torch.float64)
    S = torch.cat([torch.cat([Z, I], 1), torch.cat([I, Z], 1)])
    S_skew = torch.cat([torch.cat([Z, I], 1), torch.cat([-I, Z], 1)])
    mu = torch.linalg.eigvalsh(R @ S @ R) * g
    skew2 = float(((R @ S_skew @ R) ** 2).sum()) * g * g
    err2 = _centred_dev2(mu, K, 1.0 / math.sqrt(K - 1)) + skew2 + left / fro2
    return math.sqrt(max(err2, 0.0))




def _check_exponent(p) -> float:
    p = _validate.real(p, "cdnv_exponent")
    if not (p > 0.0 and math.isfinite(p)):
        raise ValueError(f"cdnv_exponent: expected a finite number > 0, got {p!r}")
    return p


def check_ood_mean(ood_mean, dim: Optional[int]) -> None:
    """``ood_mean``: a finite, non-zero (dim,) float tensor (dim None: any length)."""
    _validate.tensor(ood_mean, "ood_mean", ndim=1)
    if dim is not None and ood_mean.shape[0] != dim:
        raise ValueError(f"ood_mean: expected shape ({dim},) (the feature dimension), got {tuple(ood_mean.shape)}")
    _validate.finite(ood_mean, "ood_mean")
    if not bool((ood_mean != 0).any()):
        raise ValueError("ood_mean: is all zeros (it has no direction)")


def check_nc_options(kernel, cdnv_exponent) -> tuple:
    """Validated ``(kernel, cdnv_exponent)`` (errors name the argument)."""
    return _validate.choice(kernel, "kernel", KERNELS), _check_exponent(cdnv_exponent)


def _feature_batches(features, batch_size: int) -> Iterable[Tensor]:
    if isinstance(features, Tensor):
        for s in range(0, features.shape[0], batch_size):
            yield features[s:s + batch_size]
        return
    for item in features:
        yield item[0] if isinstance(item, (tuple, list)) else item


# ----------------------------------------------------------------------------- the suite
@torch.no_grad()
def nc_metrics(acc: AccumulatorState, W: Optional[Tensor] = None, *, bias: Optional[Tensor] = None,
               ood_mean: Optional[Tensor] = None, kernel: str = "log", cdnv_exponent: float = 1.0,
               features: Union[Tensor, Iterable, None] = None, batch_size: int = 8192,
               gnc2: Any = "auto", group=None) -> NCMetrics:
    """The neural-collapse suite NC1–NC5 from an accumulator (see :class:`NCMetrics` for
    every field, its formula and its source).

    Args:
        acc: a :class:`GNCAccumulator` holding at least two non-empty classes.
        W: optional (num_classes, dim) classifier (NC2 on W, NC3, NC4).
        bias: optional (num_classes,) classifier bias, for NC4 (needs ``features``).
        ood_mean: optional (dim,) global mean of out-of-distribution features, computed
            like the accumulated ones: the mean of the L2-normalised OoD features when
            ``acc.normalize`` (the default), of the raw ones otherwise; for NC5.
        kernel: "log" (default), "riesz" or "distance" for the kernel statistics.
        cdnv_exponent: p > 0 in the CDNV's ‖μ_i − μ_j‖^(2p) (default 1).
        features: optional data for NC4 (needs W): a (N, dim) tensor on the accumulator's
            device (streamed in ``batch_size`` rows) or an iterable of (B, dim) tensors or
            of (features, labels) pairs.
        batch_size: rows per NC4 step for a features tensor.
        gnc2: "auto" (default) or True: with W, also GNC2 (ρ of W with its certificate,
            :func:`gnc_ext.metrics.gnc2`, the expensive part at large K) and the bounds
            on max ρ; False: skip it; or a :class:`GNC2Result` already computed for this
            W (e.g. ``acc.compute(W).gnc2``), whose values are used.
        group: a ``torch.distributed`` process group. Every rank passes the same
            accumulator statistics (e.g. after ``acc.sync(group)``), ``W``, ``bias`` and
            options (checked by digest: a mismatch raises on every rank); the pairwise
            tiles are split over the ranks and NC4 counts each rank's own ``features``
            (pass every rank its share of the data, or None on every rank). Every rank
            returns the result one process would give for all the data.

    Returns:
        :class:`NCMetrics`.

    Raises:
        TypeError/ValueError naming ``acc``, ``W``, ``bias``, ``ood_mean``, ``kernel``,
        ``cdnv_exponent``, ``features``, ``batch_size`` or ``gnc2``; RuntimeError when nothing was
        accumulated.

    Cost: a few K×d×d fp64 GEMMs, a few d×d (2d×2d for NC3) eigendecompositions, and
    K²·d fp64 flops for the streamed pairwise tiles (twice with W); memory
    O(K·d + d² + one 64 MiB tile).
    """
    if not isinstance(acc, AccumulatorState):
        raise TypeError(f"acc: expected a GNCAccumulator, got {type(acc).__name__}")
    kernel, p = check_nc_options(kernel, cdnv_exponent)
    K_all, d = acc.num_classes, acc.dim
    if W is not None:
        check_classifier(W, bias, K_all, d)
    elif bias is not None:
        raise ValueError("bias: given without W (it is the classifier's bias, used by nc4_agreement)")
    if bias is not None and features is None:
        raise ValueError("bias: only nc4_agreement uses it, which needs features= (a data pass)")
    if features is not None and W is None:
        raise ValueError("features: nc4_agreement needs the classifier W")
    if features is not None and not isinstance(features, Tensor) and not hasattr(features, "__iter__"):
        raise TypeError(f"features: expected a tensor or an iterable of tensors, got {type(features).__name__}")
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    if ood_mean is not None:
        check_ood_mean(ood_mean, d)
    if isinstance(gnc2, str):
        if gnc2 != "auto":
            raise ValueError(f"gnc2: expected 'auto', True, False or a GNC2Result, got {gnc2!r}")
    elif not isinstance(gnc2, (bool, GNC2Result)):
        raise TypeError(f"gnc2: expected 'auto', a bool or a GNC2Result, got {type(gnc2).__name__}")
    if isinstance(gnc2, GNC2Result) and W is None:
        raise ValueError("gnc2: a GNC2Result was given without W (it is GNC2 of the classifier W)")

    counts, means, M2, within = acc.class_statistics()
    resources.ensure_fits(2 * K_all * d * 8 + 4 * d * d * 8, what=f"nc_metrics(K={K_all}, d={d})", device=means.device)
    if group is not None:  # the ranks must hold the same problem
        _dist_helpers.agree({"acc": torch.cat([counts.double().flatten(), means.flatten(), M2.flatten()]), "W": W,
                             "bias": bias, "ood_mean": ood_mean, "kernel": kernel, "cdnv_exponent": p,
                             "features given": features is not None}, group, "nc_metrics")
    N = int(counts.sum())
    if N == 0:
        raise RuntimeError("nc_metrics: no samples accumulated yet (call acc.update(features, labels) first)")
    nz = counts > 0
    K = int(nz.sum())
    if K < 2:
        raise ValueError(f"acc: the NC metrics need at least 2 non-empty classes, got {K}")
    if W is not None:
        zero = (W == 0).all(dim=1) & nz.to(W.device)
        if bool(zero.any()):
            raise ValueError(f"W: row {int(zero.nonzero()[0])} (a class with samples) is all zeros (it has no "
                             "direction)")
    empty_classes(nz, "nc_metrics", stacklevel=4)
    dev = means.device
    # K×d float64 working copies are the memory that matters at large K: M̃ is formed in
    # place in the means (a copy only when classes are empty) and becomes X in place
    Mt = means if K == K_all else means[nz]
    del means
    ood_raw = None
    if ood_mean is not None:  # NC5 with the class means as accumulated, before centring
        u = ood_mean.to(dev, torch.float64)
        u = u / torch.linalg.vector_norm(u)
        raw_norms = torch.linalg.vector_norm(Mt, dim=1)
        ood_raw = (Mt @ u).abs() / raw_norms
    Mt.sub_(Mt.mean(0, keepdim=True))
    r = torch.linalg.vector_norm(Mt, dim=1)
    spreads = within[nz] / counts[nz].double()

    # NC1: Σ_W, Σ_B (centred) and one d×d eigendecomposition
    SB = torch.zeros(d, d, dtype=torch.float64, device=dev)
    _syrk_upper(SB, Mt)
    SB = _symmetrize_upper(SB) / K
    SW = M2 / N
    rtol = default_pinv_rtol(d, K)
    tr_pinv, _, rank, lam = pinv_trace(SW, SB, rtol)
    if rank == 0:
        warnings.warn("nc_metrics: Σ_B is zero (all class means coincide), so nc1_pinv is NaN", RuntimeWarning,
                      stacklevel=3)
    tr_sb = float(torch.diagonal(SB).sum())
    nc1_quotient = float(torch.diagonal(SW).sum()) / tr_sb if tr_sb > 0 else float("inf")
    res = NCMetrics(
        nc1_pinv=tr_pinv / K, nc1_quotient=nc1_quotient, nc1_cdnv=math.nan, nc2_equinorm=_equinorm(r),
        nc2_equiangular=math.nan, nc2_max_angle=math.nan, nc2_etf_error=_etf_error(lam * K, K),
        nc2_kernel_mean=math.nan, nc2_kernel_var=math.nan, kernel=kernel, cdnv_exponent=p, num_classes=K_all,
        num_nonempty=K, num_samples=N, normalized=bool(acc.normalize), nc2_etf_floor=etf_error_floor(K, d),
    )

    # with the classifier: NC3 (needs M̃), then NC2 on W
    if W is not None:
        Wz = W.detach().to(dev, torch.float64, copy=True)
        if K < K_all:
            Wz = Wz[nz]
        dots = torch.einsum("kd,kd->k", Wz, Mt)  # ⟨w_k, μ̃_k⟩
        res.nc3_duality_error = _duality_error(Wz, Mt)
        res.nc3_uniform_duality = float(dots.var(unbiased=False))
        wn = torch.linalg.vector_norm(Wz, dim=1)
        Xw = Wz.div_(wn[:, None])
        res.w_equinorm = _equinorm(wn)
        res.w_equiangular = _cosine_spread(Xw)
        res.w_max_angle = _max_angle(metrics_ops.pairwise_class_stats(Xw, group=group).max_cos, K)
        del Wz, Xw
        g2 = gnc2 if isinstance(gnc2, GNC2Result) else _classifier_gnc2(W, group=group) if gnc2 is not False else None
        if g2 is not None:
            res.gnc2_rho, res.gnc2_rho_lower = float(g2.rho), float(g2.rho_lower)
            if g2.rho_bounds is not None:
                res.gnc2_rho_max_lower, res.gnc2_rho_max_upper = (float(b) for b in g2.rho_bounds)

    # NC2 on the class means: X = M̃/‖M̃‖ in place
    zero_dir = r == 0
    X = Mt.div_(torch.where(zero_dir, torch.ones_like(r), r)[:, None])
    del Mt
    pairs = metrics_ops.pairwise_class_stats(X, radii=r, spreads=spreads, cdnv_exponent=p, kernel=kernel, group=group)
    cdnv = float(pairs.cdnv_mean)
    k_mean, k_var = float(pairs.kernel_mean), float(pairs.kernel_var)
    if float(pairs.min_dist2) == 0.0 and (kernel == "log" or (kernel == "riesz" and d > 2)):
        k_mean, k_var = math.inf, float("nan")
        warnings.warn(f"nc_metrics: two class-mean directions coincide, so the {kernel!r} kernel mean is "
                      "infinite and its variance NaN", RuntimeWarning, stacklevel=3)
    if not math.isfinite(cdnv):
        cdnv = math.inf
        warnings.warn("nc_metrics: two class means coincide, so nc1_cdnv is infinite", RuntimeWarning,
                      stacklevel=3)
    res.nc1_cdnv, res.nc2_kernel_mean, res.nc2_kernel_var = cdnv, k_mean, k_var
    res.nc2_equiangular = _cosine_spread(X)
    res.nc2_max_angle = _max_angle(pairs.max_cos, K)
    if ood_mean is not None:
        res.nc5_ood_centered = float((X @ u).abs().mean())
        if bool((raw_norms == 0).any()):
            k0 = int(torch.nonzero(raw_norms == 0)[0])
            warnings.warn(f"nc_metrics: the mean of class {int(torch.nonzero(nz).flatten()[k0])} is zero (no "
                          "direction), so nc5_ood is NaN", RuntimeWarning, stacklevel=3)
            res.nc5_ood = float("nan")
        else:
            res.nc5_ood = float(ood_raw.mean())
    if bool(zero_dir.any()):
        k0 = int(torch.nonzero(zero_dir)[0])
        warnings.warn(f"nc_metrics: the mean of class {int(torch.nonzero(nz).flatten()[k0])} equals the global "
                      "mean (no direction), so the angle statistics (nc2_equiangular, nc2_max_angle, kernel, "
                      "nc5_ood_centered) are NaN", RuntimeWarning, stacklevel=3)
        nan = float("nan")
        res.nc2_equiangular = res.nc2_max_angle = res.nc2_kernel_mean = res.nc2_kernel_var = nan
        if res.nc5_ood_centered is not None:
            res.nc5_ood_centered = nan

    # NC4: a data pass
    if features is not None:
        agree = seen = 0
        for h in _feature_batches(features, batch_size):
            agree += acc.nc4_agreement_count(h, W, bias)
            seen += h.shape[0]
        if group is not None:  # each rank counted its own share of the data
            agree, seen = _dist_helpers.sum_ints([agree, seen], group, "nc_metrics")
        if seen == 0:
            raise ValueError("features: no rows (NC4 needs a data pass)")
        res.nc4_agreement = agree / seen
        res.nc4_samples = seen
    return res
