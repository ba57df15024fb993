"""Streaming GNC accumulator: GNC1 / GNC2 / GNC3 and nearest-class-centre accuracy.

Numerics (REFERENCE.md, "Streaming GNC1")
------------------------------------------
Under neural collapse the within-class covariance Σ_W goes to zero, so the one-pass
formula ``E[hhᵀ] − μμᵀ`` cancels catastrophically (in fp32 it is useless at a spread of
1e-6; even in fp64 it keeps only ~4 digits there). The accumulator instead uses the
*shifted-data* form of the within-class scatter: every class k gets a fixed reference
point ``c_k`` (its first sample, stored in fp32), and the native kernel accumulates, in
fp64,

* ``dsum_k  = Σ_i (h_i − c_k)``                (K × d)
* ``sqsum_k = Σ_i ‖h_i − c_k‖²``               (K)
* ``S       = Σ_i (h_i − c_{y_i})(h_i − c_{y_i})ᵀ`` (d × d, a GEMM of the deviations)

Then ``μ_k = c_k + dsum_k/n_k`` and the within-class scatter is
``M2 = S − Σ_k dsum_k dsum_kᵀ / n_k``. Both terms are of the size of the spread
(``c_k`` is a sample of class k), so nothing large cancels: the result is exact to
fp64 rounding relative to Σ_W itself, whatever ‖μ_k‖ is. ``merge`` and ``sync``
combine states with Chan's pairwise formula on (count, mean, M2) and re-anchor the
reference points at the merged means.

State memory: ``K·d·(4 + 8)`` bytes (fp32 reference points, fp64 deviation sums) +
``8·d²`` + ``16·K`` bytes, i.e. O(K·d + d²), plus a reused (B_max × d) fp64 workspace
for the largest batch seen. Update cost: one O(B·d) native pass plus a symmetric rank-B update of S,
done as a block-upper-triangular series of GEMMs (about 5/8 of a full GEMM's flops
for d ≥ 512) on CPU and one GEMM on CUDA.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from .._engine import certified_argmax, chunk_size, class_bounds, similarity_chunks
from .._native import native, stream_of, view
from ..ops.normalize import unit_rows_f64

# Nearest-class-centre scoring for float32 features: "auto" (default) screens the class
# tiles with TF32 tensor-core GEMMs on CUDA and re-scores the candidates exactly in
# float64 (_engine.certified_argmax: the exact argmax, several times faster than fp32
# GEMMs on Hopper); "on" forces it (tests use it on the CPU with TF32 rounding
# emulated); "off" uses fp32 GEMM tiles everywhere (CPU default).
NCC_SCREEN = os.environ.get("GNC_NCC_SCREEN", "auto")


def _ncc_screened(dtype: torch.dtype, device: torch.device) -> bool:
    if NCC_SCREEN not in ("auto", "on", "off"):
        raise ValueError(f"gnc_ext.metrics.accumulator.NCC_SCREEN: expected 'auto', 'on' or 'off', got {NCC_SCREEN!r}")
    if dtype != torch.float32:
        return False
    return NCC_SCREEN == "on" or (NCC_SCREEN == "auto" and device.type == "cuda")

__all__ = ["GNCAccumulator", "GNCResult", "GNC2Result", "gnc2"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_STATE_VERSION = 1
_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal float32, 2**-126
_F64_MAX = float(torch.finfo(torch.float64).max)


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass
class GNC2Result:
    """GNC2: the one-vs-rest margin ρ(W) of the (row-normalised) classifier.

    Attributes:
        rho: ρ_one-vs-rest(W) = min_k dist_k (the certified upper value from the hull solver).
        rho_lower: the certified lower bound on ρ (Lemma C.4 duality); ``rho - rho_lower``
            is ``gap``.
        gap: the certificate's gap.
        distance: (K,) float64 per-class one-vs-rest distances (upper values).
        lower: (K,) float64 per-class certified lower bounds.
        rattlers: 1-D int64 indices of rattler classes (Def. 3.4).
        rho_optimum: max ρ over unit vectors where Thm 3.3 gives it in closed form, else
            None (also None when ``gnc_ext.theory`` is not available).
        rho_bounds: (lower, upper) bounds on max ρ from Thm 3.9 where they apply, else None.
    """

    rho: float
    rho_lower: float
    gap: float
    distance: Tensor
    lower: Tensor
    rattlers: Tensor
    rho_optimum: Optional[float] = None
    rho_bounds: Optional[Tuple[float, float]] = None


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


# ----------------------------------------------------------------------------- helpers
def _raise_if_bad_batch(features: Tensor, labels: Tensor, num_classes: int, check_x: bool,
                        max_abs: Optional[float] = None, why: str = "") -> None:
    """Label range and feature finiteness of a batch with one device synchronisation and
    two reductions (``aminmax`` of the labels and, if ``check_x`` or ``max_abs``, of the
    features: NaN propagates through min/max and ±Inf shows as an infinite extreme).
    ``max_abs``: also reject finite feature values beyond ±max_abs (``why`` says why, in
    the message; see :meth:`GNCAccumulator._feature_limit`). Used where the native
    kernels cannot raise (CUDA) and for that range check on the CPU; device-agnostic
    torch, tested on the CPU."""
    lo_hi = torch.stack(torch.aminmax(labels)).to(torch.float64)
    with_x = check_x or max_abs is not None
    if with_x:
        lo_hi = torch.cat((lo_hi, torch.stack(torch.aminmax(features)).to(torch.float64)))
    v = lo_hi.tolist()  # the one synchronisation
    if v[0] < 0 or v[1] >= num_classes:
        lo, hi = int(labels.min()), int(labels.max())  # exact (labels beyond 2**53)
        raise ValueError(f"labels: value {lo if lo < 0 else hi} is outside [0, num_classes={num_classes})")
    if not with_x:
        return
    finite = math.isfinite(v[2]) and math.isfinite(v[3])
    if check_x and not finite:
        raise ValueError("features: contains NaN or Inf values")
    if max_abs is not None and finite and max(-v[2], v[3]) > max_abs:
        big = v[2] if -v[2] > v[3] else v[3]
        raise ValueError(f"features: value {big:g} exceeds {max_abs:g} in magnitude ({why}); rescale the features")


def _blocks(d: int) -> List[Tuple[int, int]]:
    """Column blocks for the block-upper-triangular symmetric update (CPU)."""
    p = 1 if d < 256 else min(4, d // 128)
    edges = [round(i * d / p) for i in range(p + 1)]
    return [(edges[i], edges[i + 1]) for i in range(p)]


def _syrk_upper(S: Tensor, A: Tensor, alpha: float = 1.0) -> None:
    """S += alpha·AᵀA on the diagonal and upper blocks of S (lower blocks: don't care).

    On CPU the product is split into column blocks and only blocks i ≤ j are formed
    (p(p+1)/2 of p² GEMMs: 10/16 for d ≥ 512); on CUDA one GEMM (launch-bound there).
    """
    if A.shape[0] == 0:
        return
    if S.device.type != "cpu":
        S.addmm_(A.T, A, alpha=alpha)
        return
    bl = _blocks(S.shape[0])
    for i, (a0, a1) in enumerate(bl):
        for b0, b1 in bl[i:]:
            S[a0:a1, b0:b1].addmm_(A[:, a0:a1].T, A[:, b0:b1], alpha=alpha)


def _symmetrize_upper(S: Tensor) -> Tensor:
    """A full symmetric copy of S built from its diagonal and upper blocks."""
    out = S.clone()
    bl = _blocks(S.shape[0]) if S.device.type == "cpu" else [(0, S.shape[0])]
    for i, (a0, a1) in enumerate(bl):
        for b0, b1 in bl[i + 1:]:
            out[b0:b1, a0:a1] = S[a0:a1, b0:b1].T
        blk = out[a0:a1, a0:a1]
        out[a0:a1, a0:a1] = 0.5 * (blk + blk.T)
    return out


def gnc2(W: Tensor) -> GNC2Result:
    """GNC2 of a classifier: ρ_one-vs-rest of the row-normalised W with its certificate.

    Uses ``gnc_ext.one_vs_rest_distance``, ``gnc_ext.theory.rho_closed_form(d, K)``
    (Thm 3.3) and, for d ≥ 2, ``gnc_ext.theory.rho_bounds(d, K)`` (Thm 3.9).

    Args:
        W: (K, d) float tensor, K ≥ 2, finite, no all-zero rows; rows are L2-normalised
            here (robustly: any finite magnitude, computed in float64, then float32 unless
            W is float64).

    Returns:
        :class:`GNC2Result`.

    Raises:
        TypeError/ValueError naming ``W``: not a dense float 2-D tensor, NaN/Inf, an
        all-zero row, fewer than 2 rows.
    """
    import gnc_ext

    _check_W(W, None, None)
    K, d = W.shape
    if K < 2:
        raise ValueError(f"W: GNC2 needs at least 2 classes (rows), got shape {tuple(W.shape)}")
    Wn = unit_rows_f64(W, "W").to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    r = gnc_ext.one_vs_rest_distance(Wn)
    distance = torch.as_tensor(r.distance).detach().double().cpu()
    lower = torch.as_tensor(r.lower).detach().double().cpu()
    rho = float(r.rho)
    rho_lower = float(r.rho_lower)
    gap = float(getattr(r, "gap", rho - rho_lower))
    rattlers = torch.as_tensor(r.rattlers).detach().to(torch.int64).cpu().reshape(-1)
    v = gnc_ext.theory.rho_closed_form(d, K)
    optimum = None if v is None else float(v)
    bounds = None
    if d >= 2:
        b = gnc_ext.theory.rho_bounds(d, K)
        bounds = (float(b.lower), float(b.upper))
    return GNC2Result(rho=rho, rho_lower=rho_lower, gap=gap, distance=distance, lower=lower,
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


# ----------------------------------------------------------------------------- accumulator
class GNCAccumulator:
    """Streaming, mergeable, DDP-aware accumulator of per-class feature statistics.

    Args:
        num_classes: K ≥ 1.
        dim: feature dimension d ≥ 1.
        normalize: L2-normalise every feature row (``h / max(‖h‖, eps)``, in fp64) before
            accumulating, as in the paper (features on the unit sphere). Also decides
            whether NCC normalises the query features.
        device: where the state lives (features must be on this device): None (CPU), a
            cpu or (usable) cuda device.
        eps: norm floor used by ``normalize``. With ``normalize=True`` it must be at least
            2**-126 ≈ 1.18e-38 (the smallest normal float32), so that an all-zero row maps
            to zero (not NaN) in the float64 update and in the float32 NCC queries alike;
            with ``normalize=False`` it is unused (any value >= 0).

    Ranges: with ``normalize=False``, float64 features must lie within the float32 range
    (|x| ≤ 3.4e38, the class reference points are float32); :meth:`update` raises
    ValueError naming ``features`` otherwise.

    Methods: :meth:`update`, :meth:`merge`, :meth:`sync`, :meth:`compute`,
    :meth:`ncc_predict`, :meth:`ncc_accuracy`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`reset`.

    Memory: O(K·d + d²) (see the module docstring).
    """

    def __init__(self, num_classes: int, dim: int, *, normalize: bool = True,
                 device: Optional[Any] = None, eps: float = 1e-12):
        self.num_classes = _validate.integer(num_classes, "num_classes", minimum=1)
        self.dim = _validate.integer(dim, "dim", minimum=1)
        self.normalize = _validate.boolean(normalize, "normalize")
        self.eps = _validate.positive_float(eps, "eps", allow_zero=True)
        if normalize and self.eps < _F32_TINY:
            raise ValueError(f"eps: expected a number >= {_F32_TINY:g} (the smallest normal float32) with "
                             f"normalize=True (an all-zero feature row would become NaN), got {self.eps:g}")
        dev = _validate.device(device, "device")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        self.reset()

    # -- state -------------------------------------------------------------------------
    def reset(self) -> "GNCAccumulator":
        """Forget all samples."""
        K, d, dev = self.num_classes, self.dim, self.device
        self._counts = torch.zeros(K, dtype=torch.int64, device=dev)
        self._shift = torch.zeros(K, d, dtype=torch.float32, device=dev)
        self._dsum = torch.zeros(K, d, dtype=torch.float64, device=dev)
        self._sqsum = torch.zeros(K, dtype=torch.float64, device=dev)
        self._scatter = torch.zeros(d, d, dtype=torch.float64, device=dev)  # upper blocks valid
        self._first = (torch.full((K,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
                       if dev.type == "cuda" else torch.empty(K, dtype=torch.int64, device=dev))
        self._ncc_cache = None
        self._work = None  # per-batch deviation workspace (largest batch × d, fp64)
        return self

    @property
    def counts(self) -> Tensor:
        """(K,) int64 samples seen per class (a copy)."""
        return self._counts.clone()

    @property
    def num_samples(self) -> int:
        return int(self._counts.sum())

    def state_dict(self) -> Dict[str, Any]:
        """The full state (tensors cloned to the CPU) plus the configuration."""
        return {
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "normalize": self.normalize,
            "eps": self.eps,
            "counts": self._counts.cpu().clone(),
            "shift": self._shift.cpu().clone(),
            "dsum": self._dsum.cpu().clone(),
            "sqsum": self._sqsum.cpu().clone(),
            "scatter": _symmetrize_upper(self._scatter).cpu(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> "GNCAccumulator":
        """Restore a :meth:`state_dict`.

        The configuration (``num_classes``, ``dim``, ``normalize`` and ``eps``) must equal
        this accumulator's: a state is not converted, and ``eps`` is checked, not
        restored (a state accumulated with another norm floor is rejected). The tensors
        must be dense, of the dtypes and shapes :meth:`state_dict` gives, finite, with
        non-negative counts and square sums; they are copied (contiguous, on this
        accumulator's device).

        Raises:
            TypeError: ``state`` is not a dict. ValueError naming ``state`` or
            ``state['<key>']``: a missing key, another configuration or a bad tensor. On
            error this accumulator is unchanged.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        for key in ("version", "num_classes", "dim", "normalize", "eps", "counts", "shift", "dsum", "sqsum",
                    "scatter"):
            if key not in state:
                raise ValueError(f"state: missing key {key!r}")
        v = state["version"]
        if not (_validate._is_integral(v) and v == _STATE_VERSION):
            raise ValueError(f"state: unsupported version {v!r}")
        for key, ok in (("num_classes", _validate._is_integral), ("dim", _validate._is_integral),
                        ("normalize", lambda x: isinstance(x, bool)), ("eps", _validate._is_real)):
            if not (ok(state[key]) and state[key] == getattr(self, key)):
                raise ValueError(f"state: {key}={state[key]!r} does not match this accumulator's {getattr(self, key)!r}")
        K, d = self.num_classes, self.dim
        spec = {"counts": ((K,), torch.int64), "shift": ((K, d), torch.float32),
                "dsum": ((K, d), torch.float64), "sqsum": ((K,), torch.float64),
                "scatter": ((d, d), torch.float64)}
        new = {}
        for key, (shape, dt) in spec.items():
            t = state[key]
            name = f"state[{key!r}]"
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dt:
                raise ValueError(f"{name}: must be a {str(dt).replace('torch.', '')} tensor of shape {shape}")
            if t.layout != torch.strided:
                raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
            if t.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {t.device}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or Inf values")
            new[key] = t
        if bool((new["counts"] < 0).any()):
            raise ValueError("state['counts']: has negative entries")
        if float(new["counts"].double().sum()) >= 2.0**63:
            raise ValueError("state['counts']: the total count overflows int64")
        if bool((new["sqsum"] < 0).any()):
            raise ValueError("state['sqsum']: has negative entries (it is a sum of squares)")
        # dense, contiguous copies on this device (nothing is assigned until all exist)
        new = {k: torch.empty(t.shape, dtype=t.dtype, device=self.device).copy_(t.detach())
               for k, t in new.items()}
        self._counts, self._shift, self._dsum = new["counts"], new["shift"], new["dsum"]
        self._sqsum, self._scatter = new["sqsum"], new["scatter"]
        self._ncc_cache = None
        return self

    # -- canonical (count, mean, M2) form used by merge/sync/compute --------------------
    def _canonical(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(counts, means (K,d) fp64, M2 (d,d) fp64 full, within_k (K,) fp64) on device.

        means and within_k are 0 for empty classes. M2 = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ,
        within_k = Σ_{i in k} ‖h_i − μ_k‖².
        """
        n = self._counts.to(torch.float64)
        nz = self._counts > 0
        inv = torch.where(nz, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))
        means = torch.where(nz[:, None], self._shift.double() + self._dsum * inv[:, None],
                            torch.zeros((), dtype=torch.float64, device=self.device))
        M2 = self._scatter.clone()
        _syrk_upper(M2, self._dsum * inv.sqrt()[:, None], alpha=-1.0)
        M2 = _symmetrize_upper(M2)
        within = (self._sqsum - (self._dsum * self._dsum).sum(1) * inv).clamp(min=0.0)
        return self._counts.clone(), means, M2, within

    def _set_canonical(self, counts: Tensor, means: Tensor, M2: Tensor, within: Tensor) -> None:
        """Re-anchor the state at the given means (reference points = fp32(mean))."""
        nz = counts > 0
        shift = torch.where(nz[:, None], means, torch.zeros((), dtype=torch.float64, device=means.device)).float()
        n = counts.to(torch.float64)
        dsum = (means - shift.double()) * n[:, None]
        dsum = torch.where(nz[:, None], dsum, torch.zeros((), dtype=torch.float64, device=means.device))
        inv = torch.where(nz, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))
        S = M2.clone()
        _syrk_upper(S, dsum * inv.sqrt()[:, None], alpha=1.0)
        self._counts = counts.to(self.device, torch.int64).clone()
        self._shift = shift.to(self.device)
        self._dsum = dsum.to(self.device)
        self._sqsum = (within + (dsum * dsum).sum(1) * inv).to(self.device)
        self._scatter = S.to(self.device)
        self._ncc_cache = None

    # -- update ------------------------------------------------------------------------
    def _feature_limit(self, features: Tensor) -> Tuple[Optional[float], str]:
        """Largest |value| :meth:`update` takes from ``features`` (None: any finite value)
        and why. Without normalisation the class reference points are float32, so
        float64 features must fit the float32 range. With it, the CPU kernel reports a row
        whose float64 squared norm overflows; the CUDA kernel cannot, so there float64
        values are bounded by sqrt(max/(2·dim)) (no row's squared norm can overflow)."""
        if features.dtype != torch.float64:
            return None, ""  # float32/float16/bfloat16 values fit both
        if not self.normalize:
            return _F32_MAX, "normalize=False keeps the class reference points in float32"
        if self.device.type == "cuda":
            return math.sqrt(_F64_MAX / (2 * self.dim)), "its row's squared norm could overflow float64"
        return None, ""

    def _check_batch(self, features, labels, *, need_labels: bool = True,
                     update: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        _validate.tensor(features, "features", ndim=2, allow_empty=True)
        if features.shape[1] != self.dim:
            raise ValueError(f"features: expected width dim={self.dim}, got shape {tuple(features.shape)}")
        if features.device != self.device:
            raise ValueError(f"features: expected a tensor on {self.device} (the accumulator's device), got {features.device}")
        if not need_labels:
            return features, None
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype not in _INT_DTYPES:
            raise TypeError(f"labels: expected an integer tensor, got {str(labels.dtype).replace('torch.', '')}")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels: expected shape ({features.shape[0]},) to match features, got {tuple(labels.shape)}")
        if labels.device != self.device:
            raise ValueError(f"labels: expected a tensor on {self.device}, got {labels.device}")
        labels = labels.to(torch.int64)
        limit, why = self._feature_limit(features) if update else (None, "")
        if labels.numel() and (self.device.type == "cuda" or limit is not None):
            # the CUDA kernels cannot raise; on the CPU the kernel checks labels and
            # finiteness itself, and only the range check needs this pass
            check_x = self.device.type == "cuda" and _validate.config.check_finite and features.numel() > 0
            _raise_if_bad_batch(features, labels, self.num_classes, check_x, limit, why)
        elif labels.numel() and self.device.type == "cpu" and not update:
            lo, hi = int(labels.min()), int(labels.max())  # the NCC path: no native check
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"labels: value {lo if lo < 0 else hi} is outside "
                                 f"[0, num_classes={self.num_classes})")
        return features, labels

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> "GNCAccumulator":
        """Add a batch of features with their class labels.

        Args:
            features: (B, dim) float32/float64/float16/bfloat16 on the accumulator's
                device, any strides, finite. B may be 0.
            labels: (B,) integer tensor with values in [0, num_classes).

        Raises:
            TypeError/ValueError naming ``features``/``labels``: wrong width, dtype,
            device or length; labels out of range; NaN/Inf features or a row whose
            squared norm overflows float64 (on CUDA: float64 values above
            sqrt(1.8e308/(2·dim))); with ``normalize=False``, float64 values beyond the
            float32 range. Everything is checked before the state is written: on error
            the state is unchanged.

        Cost: O(B·d) native work + a symmetric rank-B fp64 update of the d×d scatter.
        """
        features, labels = self._check_batch(features, labels, update=True)
        B = features.shape[0]
        if B == 0:
            return self
        # a reused (B × d) fp64 workspace: a fresh 16 MiB buffer per batch costs page
        # faults on CPU comparable to the native pass itself
        if self._work is None or self._work.shape[0] < B:
            self._work = torch.empty(max(B, 1), self.dim, dtype=torch.float64, device=self.device)
        Z = self._work[:B]
        native.metrics_update_batch(view(features), view(labels), view(self._shift), view(self._dsum),
                                    view(self._sqsum), view(self._counts), view(Z), view(self._first),
                                    self.normalize, self.eps, stream_of(features))
        _syrk_upper(self._scatter, Z)
        self._ncc_cache = None
        return self

    # -- merge / sync --------------------------------------------------------------------
    def _check_compatible(self, other: "GNCAccumulator") -> None:
        if not isinstance(other, GNCAccumulator):
            raise TypeError(f"other: expected a GNCAccumulator, got {type(other).__name__}")
        for key in ("num_classes", "dim", "normalize", "eps"):
            if getattr(other, key) != getattr(self, key):
                raise ValueError(f"other: {key}={getattr(other, key)!r} differs from this accumulator's {getattr(self, key)!r}")

    @torch.no_grad()
    def merge(self, other: "GNCAccumulator") -> "GNCAccumulator":
        """Add another accumulator's samples to this one (Chan's pairwise formula, fp64).

        The result equals (to fp64 rounding) accumulating both streams in one. ``other``
        is not modified; it may live on another device. Its configuration
        (``num_classes``, ``dim``, ``normalize``, ``eps``) must equal this one's.
        """
        self._check_compatible(other)
        if other is self:
            raise ValueError("other: cannot merge an accumulator with itself")
        na, ma, Ma, wa = self._canonical()
        nb, mb, Mb, wb = (t.to(self.device) for t in other._canonical())
        n = na + nb
        fa, fb = na.double(), nb.double()
        nf = n.double().clamp(min=1.0)
        delta = mb - ma
        means = ma + delta * (fb / nf)[:, None]
        both = (na > 0) & (nb > 0)
        coef = torch.where(both, fa * fb / nf, torch.zeros_like(fa))
        M2 = Ma + Mb
        cross = torch.zeros_like(M2)
        _syrk_upper(cross, delta * coef.sqrt()[:, None])
        M2 = M2 + _symmetrize_upper(cross)
        within = wa + wb + coef * (delta * delta).sum(1)
        self._set_canonical(n, means, M2, within)
        return self

    @torch.no_grad()
    def sync(self, group=None) -> "GNCAccumulator":
        """All-reduce the state over a ``torch.distributed`` group (no-op if not initialised).

        Every rank ends with the statistics of all ranks' samples. Call it once after the
        last update of an evaluation (calling it again would count other ranks' samples
        twice). Three all-reduces: counts (K int64), class sums (K×d fp64), then the
        within-class scatter re-centred at the global means (d×d fp64) and the per-class
        spreads (K fp64), so the reduction is as cancellation-free as :meth:`merge`. The
        backend must support the state's device (gloo for CPU, nccl for CUDA).

        Raises:
            ValueError on every rank (before any state is exchanged) when the ranks'
            accumulators differ in num_classes, dim, normalize or eps.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        # every rank must hold the same kind of state: compare (K, dim, normalize, eps)
        # by a MIN and a MAX all-reduce (two 4-element reductions) and fail on every rank
        # alike, before any state is exchanged (mismatched shapes would make the state
        # all-reduces fail or hang)
        cfg = torch.tensor([float(self.num_classes), float(self.dim), float(self.normalize), self.eps],
                           dtype=torch.float64, device=self.device)
        lo, hi = cfg.clone(), cfg.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        if not torch.equal(lo, hi):
            names = ("num_classes", "dim", "normalize", "eps")
            diff = [f"{k} ranges over [{a:g}, {b:g}]" for k, a, b in zip(names, lo.tolist(), hi.tolist()) if a != b]
            raise ValueError("sync: the ranks' accumulators differ (" + "; ".join(diff) + "); every rank "
                             "must build GNCAccumulator with the same num_classes, dim, normalize and eps")
        counts, means, M2, within = self._canonical()
        g_counts = counts.clone()
        dist.all_reduce(g_counts, group=group)
        n = counts.double()
        sums = means * n[:, None]
        dist.all_reduce(sums, group=group)
        gn = g_counts.double()
        gnz = g_counts > 0
        g_means = torch.where(gnz[:, None], sums / gn.clamp(min=1.0)[:, None],
                              torch.zeros((), dtype=torch.float64, device=self.device))
        delta = torch.where((counts > 0)[:, None], means - g_means,
                            torch.zeros((), dtype=torch.float64, device=self.device))
        extra = torch.zeros_like(M2)
        _syrk_upper(extra, delta * n.sqrt()[:, None])
        M2 = M2 + _symmetrize_upper(extra)
        within = within + n * (delta * delta).sum(1)
        dist.all_reduce(M2, group=group)
        dist.all_reduce(within, group=group)
        self._set_canonical(g_counts, g_means, M2, within)
        return self

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
        empty = torch.nonzero(~nz).flatten().cpu()
        if empty.numel():
            shown = ", ".join(str(int(i)) for i in empty[:10])
            warnings.warn(f"GNCAccumulator.compute: {empty.numel()} of {K} classes have no samples and are "
                          f"excluded (first: {shown}{', ...' if empty.numel() > 10 else ''})", RuntimeWarning,
                          stacklevel=3)
        if rtol is None:
            rtol = max(d, Kp) * torch.finfo(torch.float64).eps
        Mz = means[nz]
        if centered:
            Mz = Mz - Mz.mean(0, keepdim=True)
        SB = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        _syrk_upper(SB, Mz)
        SB = _symmetrize_upper(SB) / Kp
        SW = M2 / N
        lam, V = torch.linalg.eigh(SB.cpu())
        SWc = SW.cpu()
        lmax = float(lam.max()) if lam.numel() else 0.0
        cutoff = rtol * lmax
        keep = lam > cutoff
        Vk = V[:, keep]
        quad = ((SWc @ Vk) * Vk).sum(0)  # v_jᵀ Σ_W v_j
        if bool(keep.any()):
            gnc1 = float((quad / lam[keep]).sum()) / Kp
        else:
            gnc1 = float("nan")
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
            sigma_b_rank=int(keep.sum()), trace_sigma_w=float(torch.diagonal(SWc).sum()),
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

    # -- nearest class centre --------------------------------------------------------------
    def _ncc_tables(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(means, bias) in ``dtype``, cached; the cache also keeps the largest class-mean
        norm (``self._ncc_cache[3]``, for the score bound of :meth:`_check_query_range`)."""
        key = dtype
        if self._ncc_cache is not None and self._ncc_cache[0] == key:
            return self._ncc_cache[1], self._ncc_cache[2]
        counts, means = self._canonical_means()
        if int(counts.sum()) == 0:
            raise RuntimeError("ncc: no samples accumulated yet (call update(features, labels) first)")
        nz = counts > 0
        sq = (means * means).sum(1)
        mnorm = math.sqrt(float(sq[nz].max()))
        if not 0.5 * mnorm * mnorm <= torch.finfo(dtype).max / 4:
            raise ValueError(f"features: the class means (norm up to {mnorm:g}) are too large for "
                             f"{str(dtype).replace('torch.', '')} nearest-class-centre scores (they would "
                             "overflow); pass float64 features")
        bias = torch.where(nz, -0.5 * sq, torch.full((), -math.inf, dtype=torch.float64, device=self.device))
        M = means.to(dtype).contiguous()
        b = bias.to(dtype).contiguous()
        self._ncc_cache = (key, M, b, mnorm)
        return M, b

    def _check_query_range(self, A: Tensor) -> None:
        """Without normalisation the NCC scores ⟨a, h̄_k⟩ − ‖h̄_k‖²/2 are bounded by
        √d·max|a|·max‖h̄_k‖ + max‖h̄_k‖²/2 (every partial sum of the GEMM too): refuse a
        block whose bound could overflow the score dtype (an overflowing score would give
        NaN ties or class -1). One ``aminmax`` reduction, also the finiteness check."""
        v = torch.stack(torch.aminmax(A)).to(torch.float64).tolist()
        if not (math.isfinite(v[0]) and math.isfinite(v[1])):
            if _validate.config.check_finite:
                raise ValueError("features: contains NaN or Inf values")
            return
        mnorm = self._ncc_cache[3]
        amax = max(-v[0], v[1])
        if math.sqrt(self.dim) * amax * mnorm + 0.5 * mnorm * mnorm > torch.finfo(A.dtype).max / 4:
            raise ValueError(f"features: values up to {amax:g} are too large for "
                             f"{str(A.dtype).replace('torch.', '')} nearest-class-centre scores against class "
                             f"means of norm up to {mnorm:g} (they could overflow); pass float64 features or "
                             "rescale them")

    def _canonical_means(self) -> Tuple[Tensor, Tensor]:
        """(counts, means) without the d×d scatter (cheap: O(K·d))."""
        n = self._counts.to(torch.float64)
        nz = self._counts > 0
        inv = torch.where(nz, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))
        means = torch.where(nz[:, None], self._shift.double() + self._dsum * inv[:, None],
                            torch.zeros((), dtype=torch.float64, device=self.device))
        return self._counts, means

    @torch.no_grad()
    def ncc_predict(self, features: Tensor, *, row_block: int = 8192) -> Tensor:
        """Nearest-class-centre prediction: argmin_k ‖ĥ − h̄_k‖ over non-empty classes.

        ĥ is the feature L2-normalised (in float64, as in :meth:`update`) when the
        accumulator's ``normalize`` is set (the means are those of normalised features
        and are *not* re-normalised, so this is the Euclidean nearest class mean in the
        space GNC1 is measured in). Computed as
        argmax_k (⟨ĥ, h̄_k⟩ − ‖h̄_k‖²/2) by the similarity-reduce engine: per block of
        rows, a GEMM per tile of classes (fp32; fp64 for fp64 features) and the native
        argmax epilogue, so no (B × K) matrix exists beyond one tile (64 MiB budget).
        Ties go to the lowest class index. float32 features on CUDA (``NCC_SCREEN``
        "auto"): the tiles come from TF32 tensor-core GEMMs and only the classes within
        the TF32 error bound of the running best are re-scored in float64, which gives
        the exact argmax of the float64 scores at TF32 speed (see
        ``gnc_ext._engine.certified_argmax``).

        Args:
            features: (B, dim) float tensor on the accumulator's device, finite.
            row_block: rows per block (memory: one row_block × tile fp32 tile, plus a
                row_block × dim float64 block when ``normalize``).

        Returns:
            (B,) int64 predicted classes in [0, num_classes) (never an empty class) on
            the accumulator's device.

        Raises:
            TypeError/ValueError naming ``features``/``row_block``: bad input, NaN/Inf,
            or (``normalize=False``) values or class means so large that the scores
            could overflow (float32 features: pass float64 ones). RuntimeError before
            any update.
        """
        features, _ = self._check_batch(features, None, need_labels=False)
        row_block = _validate.integer(row_block, "row_block", minimum=1)
        B = features.shape[0]
        cdt = torch.float64 if features.dtype == torch.float64 else torch.float32
        M, bias = self._ncc_tables(cdt)
        out = torch.empty(B, dtype=torch.int64, device=self.device)
        K = self.num_classes
        screen = _ncc_screened(cdt, self.device)
        bounds = class_bounds(M, bias) if screen else None  # once for all row blocks
        for r0 in range(0, B, row_block):
            A = features[r0:r0 + row_block].to(cdt)
            if self.normalize:
                _validate.finite(A, "features")  # per block: no (B × d) temporary
                # in float64 like update (a float32 norm overflows beyond |x| ~ 1e19)
                A = torch.nn.functional.normalize(A.double(), dim=1, eps=self.eps).to(cdt)
            else:
                self._check_query_range(A)
            R = A.shape[0]
            if screen and R:
                # TF32 tiles screened, candidates re-scored exactly in float64
                _, idx, _ = certified_argmax(A.contiguous(), M, bias, None, chunk=chunk_size(R, K), bounds=bounds)
                out[r0:r0 + R] = idx
                continue
            best_val = torch.full((R,), -math.inf, dtype=cdt, device=self.device)
            best_idx = out[r0:r0 + R]
            best_idx.fill_(-1)
            c = chunk_size(R, K)
            for s, tile in similarity_chunks(A, M, chunk=c, out_dtype=cdt):
                native.ncc_argmax_update(view(tile), view(bias), s, view(best_val), view(best_idx),
                                         stream_of(tile))
        return out

    @torch.no_grad()
    def ncc_accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of samples whose nearest class centre (see :meth:`ncc_predict`) is their label.

        Raises ValueError/TypeError naming ``features``/``labels`` for bad input and
        RuntimeError before any update.
        """
        features, labels = self._check_batch(features, labels)  # labels range-checked too
        if features.shape[0] == 0:
            raise ValueError("features: expected at least one row")
        pred = self.ncc_predict(features)
        return float((pred == labels).double().mean())

    def _ncc_correct(self, features: Tensor, labels: Tensor) -> int:
        """Correct NCC predictions in a batch (labels checked like :meth:`ncc_accuracy`)."""
        features, labels = self._check_batch(features, labels)
        if features.shape[0] == 0:
            return 0
        return int((self.ncc_predict(features) == labels).sum())

    def __repr__(self) -> str:
        return (f"GNCAccumulator(num_classes={self.num_classes}, dim={self.dim}, normalize={self.normalize}, "
                f"device={self.device}, samples={self.num_samples})")
