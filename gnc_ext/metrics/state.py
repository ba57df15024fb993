"""GNCAccumulator's state: per-class counts, reference points and fp64 deviation sums,
the d×d scatter; update, merge, sync, state_dict.

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

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from .. import resources
from ..ops import metrics as metrics_ops

__all__ = ["AccumulatorState"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_STATE_VERSION = 1
_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal float32, 2**-126
_F64_MAX = float(torch.finfo(torch.float64).max)


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



class AccumulatorState:
    """The state half of :class:`gnc_ext.metrics.GNCAccumulator` (construction, update,
    merge, sync, state_dict); see that class for the arguments."""

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
        resources.ensure_fits(self.num_classes * (self.dim * 12 + 32) + self.dim * self.dim * 8, device=dev,
                              what=f"GNCAccumulator(num_classes={self.num_classes}, dim={self.dim})")
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

    def load_state_dict(self, state: Dict[str, Any], *, copy: bool = True) -> "GNCAccumulator":
        """Restore a :meth:`state_dict`.

        The configuration (``num_classes``, ``dim``, ``normalize`` and ``eps``) must equal
        this accumulator's: a state is not converted, and ``eps`` is checked, not
        restored (a state accumulated with another norm floor is rejected). The tensors
        must be dense, of the dtypes and shapes :meth:`state_dict` gives, finite, with
        non-negative counts and square sums; they are copied (contiguous, on this
        accumulator's device).

        With ``copy=False`` the tensors themselves become the live state (no copy: later
        updates write into them in place): they must then already be contiguous and on
        this accumulator's device. (The torchmetrics adapter keeps its registered states
        this way.)

        Raises:
            TypeError: ``state`` is not a dict. ValueError naming ``state`` or
            ``state['<key>']``: a missing key, another configuration or a bad tensor. On
            error this accumulator is unchanged.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict, got {type(state).__name__}")
        copy = _validate.boolean(copy, "copy")
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
        if not copy:
            for key, t in new.items():
                if t.device != self.device or not t.is_contiguous():
                    raise ValueError(f"state[{key!r}]: with copy=False it must be contiguous and on {self.device}, "
                                     f"got a {'non-contiguous ' if not t.is_contiguous() else ''}tensor on {t.device}")
        else:
            # dense, contiguous copies on this device (nothing is assigned until all exist)
            new = {k: torch.empty(t.shape, dtype=t.dtype, device=self.device).copy_(t.detach())
                   for k, t in new.items()}
        self._counts, self._shift, self._dsum = new["counts"], new["shift"], new["dsum"]
        self._sqsum, self._scatter = new["sqsum"], new["scatter"]
        self._ncc_cache = None
        return self

    # -- canonical (count, mean, M2) form used by merge/sync/compute --------------------
    def _means(self) -> Tuple[Tensor, Tensor]:
        """(class means (K, d) fp64 — 0 for empty classes —, 1/n_k (K,) fp64 — 0 for
        empty classes) with one K×d temporary: μ_k = c_k + dsum_k/n_k."""
        n = self._counts.to(torch.float64)
        nz = self._counts > 0
        inv = torch.where(nz, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))
        means = self._dsum * inv[:, None]
        means.add_(self._shift)
        means.masked_fill_(~nz[:, None], 0.0)
        return means, inv

    def _canonical(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(counts, means (K,d) fp64, M2 (d,d) fp64 full, within_k (K,) fp64) on device.

        means and within_k are 0 for empty classes. M2 = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ,
        within_k = Σ_{i in k} ‖h_i − μ_k‖².
        """
        means, inv = self._means()
        M2 = self._scatter.clone()
        _syrk_upper(M2, self._dsum * inv.sqrt()[:, None], alpha=-1.0)
        M2 = _symmetrize_upper(M2)
        within = (self._sqsum - torch.einsum("kd,kd->k", self._dsum, self._dsum) * inv).clamp(min=0.0)
        return self._counts.clone(), means, M2, within

    def class_statistics(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The accumulated statistics in canonical form, float64 on the state's device:
        ``(counts (K,) int64, means (K, d), M2 (d, d), within (K,))`` with
        ``M2 = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (full, symmetric) and
        ``within_k = Σ_{i in k} ‖h_i − μ_k‖²``; means and within are 0 for empty classes.
        Fresh tensors (not the live state). Cost: one K×d×d fp64 GEMM."""
        return self._canonical()

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
        metrics_ops.update_batch(features, labels, self._shift, self._dsum, self._sqsum, self._counts, Z,
                                 self._first, self.normalize, self.eps)
        _syrk_upper(self._scatter, Z)
        self._ncc_cache = None
        return self

    # -- merge / sync --------------------------------------------------------------------
    def _check_compatible(self, other: "GNCAccumulator") -> None:
        if not isinstance(other, AccumulatorState):
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

